//! Proxy mode end to end: the real dataplane terminates TCP on VIP 198.18.1.1:80 and
//! proxies each connection to a backend picked by weighted Maglev. Real kernel TCP on
//! both sides: clients in P-cli, nginx or Rust servers (tests/src/servers.rs) in
//! P-be1..3, all inside the test's namespaces.
//!
//! `toolkit_without_dataplane` checks the client and server tools themselves, straight
//! from the client to the backends (no dataplane involved).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fulcrum_tests::client::{self, Pace};
use fulcrum_tests::pattern::checksum_of;
use fulcrum_tests::servers::{start_backend_processes, start_backends, start_nginx_backends, Mode, Nginx, NginxOptions, Server};
use fulcrum_tests::tcp::{self, End};
use fulcrum_model::{ProxyProtocol, Vip};
use fulcrum_tests::vip::*;
use fulcrum_tests::*;

const BACKEND_PORT: u16 = 8080;
const BACKENDS: [&str; 3] = ["be1", "be2", "be3"];
const MIB: u64 = 1024 * 1024;
/// This crate's server binary (tests/src/bin/test_server.rs).
const TEST_SERVER: &str = env!("CARGO_BIN_EXE_fulcrum-test-server");

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn vip() -> SocketAddr {
    sa(VIP_IP, VIP_PORT)
}

/// Run `f` in the client namespace.
fn on_client<T: Send>(topo: &Topology, f: impl FnOnce() -> T + Send) -> T {
    in_netns(&topo.ns("cli"), f)
}

fn backend_ip(name: &str) -> &'static str {
    BACKEND_IPS[BACKENDS.iter().position(|b| *b == name).expect("backend name")]
}

/// Start the dataplane with one proxy VIP (198.18.1.1:80) in front of the three
/// backends on `BACKEND_PORT` with `weights`, adjusted by `tweak`.
fn start_proxy(
    topo: &Topology,
    weights: [u32; 3],
    buffer_size: Option<usize>,
    tweak: impl FnOnce(&mut Vip),
) -> Dataplane {
    let mut v = three_backends(proxy_vip(VIP_IP, VIP_PORT), BACKEND_PORT, weights);
    tweak(&mut v);
    let dp = Dataplane::start(topo, &proxy_config(buffer_size, &[v]));
    // The stats file must describe the VIP: fail early and clearly if it does not.
    dp.wait_stats(Duration::from_secs(5), "the stats file to list VIP 198.18.1.1:80", |s| {
        vip_stats(s, VIP_IP, VIP_PORT).map(|_| ()).ok_or_else(|| "no vips[] entry for 198.18.1.1:80".to_string())
    });
    dp
}

/// Per-backend `opened` counters minus a baseline.
fn opened_since(stats: &Value, before: &Value) -> Vec<u64> {
    BACKEND_IPS
        .iter()
        .map(|ip| {
            backend_counter(stats, VIP_IP, VIP_PORT, ip, "opened")
                .saturating_sub(backend_counter(before, VIP_IP, VIP_PORT, ip, "opened"))
        })
        .collect()
}

// ---------------------------------------------------------------------------- spread

/// Each backend's share of the VIP's Maglev table, in percent: the table the
/// dataplane builds for `start_proxy`'s VIP (default size), built here again.
fn maglev_table_shares(weights: [u32; 3]) -> Vec<f64> {
    let vip = three_backends(proxy_vip(VIP_IP, VIP_PORT), BACKEND_PORT, weights);
    let table = fulcrum_maglev::MaglevTable::build(&vip.maglev_backends(), vip.table_size)
        .expect("the test VIP's Maglev table");
    let slots = table.slot_counts();
    let total: u32 = slots.iter().sum();
    slots.iter().map(|&n| 100.0 * f64::from(n) / f64::from(total)).collect()
}

fn spread_test(weights: [u32; 3], connections: u64) {
    let topo = Topology::up();
    let _nginx = start_nginx_backends(&topo, BACKEND_PORT);
    let mut dp = start_proxy(&topo, weights, None, |_| {});
    let before = dp.stats();

    let spread = on_client(&topo, || client::http_spread(vip(), connections, 16, Duration::from_secs(10)));
    let table_share = maglev_table_shares(weights);
    let total_w: u32 = weights.iter().sum();
    eprintln!(
        "{connections} connections in {:.2?} ({:.0} conn/s), {} failed",
        spread.elapsed,
        connections as f64 / spread.elapsed.as_secs_f64(),
        spread.failed
    );
    for ((name, w), table) in BACKENDS.iter().zip(weights).zip(&table_share) {
        eprintln!(
            "  {name}: {:5} answers, share {:5.2}% (Maglev table share {table:5.2}%, weight share {:5.2}%)",
            spread.counts.get(*name).unwrap_or(&0),
            spread.share(name),
            100.0 * w as f64 / total_w as f64
        );
    }
    assert_eq!(spread.failed, 0, "failed requests: {:#?}", spread.failures);
    assert_eq!(spread.total_ok(), connections, "answers: {:?}", spread.counts);
    for k in spread.counts.keys() {
        assert!(BACKENDS.contains(&k.as_str()), "unexpected answer {k:?}: {:?}", spread.counts);
    }
    for (name, want) in BACKENDS.iter().zip(table_share) {
        let got = spread.share(name);
        assert!(
            (got - want).abs() <= 3.0,
            "{name}: share {got:.2}% is more than 3 points from its Maglev table share {want:.2}%: {:?}",
            spread.counts
        );
    }

    // The dataplane's per-backend `opened` counters agree with what the client saw.
    let seen: Vec<u64> = BACKENDS.iter().map(|b| *spread.counts.get(*b).unwrap_or(&0)).collect();
    let after = dp.wait_stats(Duration::from_secs(10), "per-backend `opened` to match the client's counts", |s| {
        let opened = opened_since(s, &before);
        if opened == seen {
            Ok(s.clone())
        } else {
            Err(format!("opened (since start) {opened:?}, client saw {seen:?}"))
        }
    });
    let accepted =
        vip_counter(&after, VIP_IP, VIP_PORT, "accepted") - vip_counter(&before, VIP_IP, VIP_PORT, "accepted");
    eprintln!(
        "dataplane: accepted {accepted}, opened per backend {:?}\n{}",
        opened_since(&after, &before),
        format_vips(&after)
    );
    assert_eq!(accepted, connections, "VIP accepted counter");
    dp.assert_running();
}

#[test]
fn http_spread_equal_weights() {
    spread_test([1, 1, 1], 3000);
}

#[test]
fn http_spread_weights_2_1_1() {
    spread_test([2, 1, 1], 3000);
}

// ---------------------------------------------------------------------------- bulk

/// 500 concurrent 1 MiB echoes, every byte checked both ways
/// (`FULCRUM_BULK_CONNS` selects another size).
///
/// All 500 clients start writing at the same instant: 500 initial windows of
/// 10 segments reach the tap at once. With the kernel's default tap queue
/// (1000 frames) two in three connections lost their whole first window
/// there, fell back to backed-off retransmission timeouts, and a few lost
/// every retransmission for over a minute, so the proxy reset them at its
/// idle timeout. The dataplane deepens its tap's kernel queue
/// (`software.tap_queue_len`); on tap the test checks that it did (and
/// [`tap_kernel_queue_deepened`] does on every run); af_packet and af_xdp
/// receive into rings of their own instead.
/// The tap's kernel queue is the dataplane's default `tap_queue_len` (see
/// [`bulk_echo_concurrent`] for why).
fn assert_tap_queue_deepened(topo: &Topology, dp: &Dataplane) {
    let path = format!("/sys/class/net/{}/tx_queue_len", topo.tap());
    let text = topo.exec_ok("fab", &["cat", &path]);
    assert_eq!(
        text.trim(),
        "16384",
        "the dataplane did not deepen its tap's kernel queue (see the log: {})",
        dp.log_path().display()
    );
}

/// Only a tap has a kernel queue as its whole receive buffer: on tap whatever
/// the default device, the dataplane sets it deep.
#[test]
fn tap_kernel_queue_deepened() {
    let topo = Topology::up();
    let v = three_backends(proxy_vip(VIP_IP, VIP_PORT), BACKEND_PORT, [1, 1, 1]);
    let opts = StartOptions { extra_config: proxy_config(None, &[v]), device: Some(SoftDevice::Tap), ..Default::default() };
    let dp = Dataplane::start_with(&topo, opts);
    assert_tap_queue_deepened(&topo, &dp);
}

#[test]
fn bulk_echo_concurrent() {
    let conns: usize = std::env::var("FULCRUM_BULK_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    const BYTES: u64 = MIB;
    raise_nofile_limit(65536);
    let topo = Topology::up();
    let servers = start_backends(&topo, BACKEND_PORT, Mode::Echo, &[]);
    let mut dp = start_proxy(&topo, [1, 1, 1], None, |_| {});
    // The dataplane's interface: a tap, or the kernel side of its veth.
    let tap_sys = |file: &str| {
        let path = format!("/sys/class/net/{}/{file}", topo.tap());
        let text = topo.exec_ok("fab", &["cat", &path]);
        text.trim().parse::<u64>().unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
    };
    if soft_device() == SoftDevice::Tap {
        assert_tap_queue_deepened(&topo, &dp);
    }
    let tap_drops_before = tap_sys("statistics/tx_dropped");
    let before = dp.stats();

    let rep = on_client(&topo, || client::bulk_echo(vip(), conns, BYTES, 1000, Duration::from_secs(420)));
    let secs = rep.transfer.as_secs_f64().max(1e-9);
    eprintln!(
        "{} connections ({} concurrently established): {} ok, {} failed; sent {} B, echoed back {} B; \
         transfer {:.2?} ({:.1} MB/s each way), total {:.2?}",
        conns,
        rep.concurrent,
        rep.ok,
        rep.failed,
        rep.bytes_sent,
        rep.bytes_received,
        rep.transfer,
        rep.bytes_received as f64 / secs / 1e6,
        rep.elapsed
    );
    eprintln!(
        "frames the kernel dropped at the full tap queue (not an error: TCP recovers): {}",
        tap_sys("statistics/tx_dropped") - tap_drops_before
    );
    for s in &servers {
        let recs = s.records();
        let idle = recs.iter().filter(|r| r.bytes_in == 0).count();
        eprintln!("{}: {} connections, ends {:?}, {idle} received nothing", s.name(), recs.len(), s.ends());
    }
    if rep.failed > 0 {
        let st = dp.stats();
        eprintln!("after failures: {}", format_vips(&st));
    }
    assert_eq!(rep.failed, 0, "failures: {:#?}", rep.failures);
    assert_eq!(rep.concurrent, conns as u64, "not all connections were established at once");
    assert_eq!(rep.bytes_sent, conns as u64 * BYTES);
    assert_eq!(rep.bytes_received, conns as u64 * BYTES);

    // The VIP's byte counters saw exactly the payload both ways.
    let want = conns as u64 * BYTES;
    let after = dp.wait_stats(Duration::from_secs(10), "VIP byte counters to account for the payload", |s| {
        let from = vip_counter(s, VIP_IP, VIP_PORT, "bytes_from_clients")
            - vip_counter(&before, VIP_IP, VIP_PORT, "bytes_from_clients");
        let to = vip_counter(s, VIP_IP, VIP_PORT, "bytes_to_clients")
            - vip_counter(&before, VIP_IP, VIP_PORT, "bytes_to_clients");
        if from == want && to == want {
            Ok(s.clone())
        } else {
            Err(format!("bytes_from_clients +{from}, bytes_to_clients +{to}, payload {want} each way"))
        }
    });
    eprintln!("{}", format_vips(&after));
    dp.assert_running();
}

// ---------------------------------------------------------------------------- slow reader

/// Base config defaults (tests/src/lib.rs writes none of these, so the dataplane's
/// documented defaults apply).
const TX_DESCRIPTORS: u64 = 1024;
const BURST: u64 = 32;

#[test]
fn slow_reader_bounded_memory() {
    const TOTAL: u64 = 50_000_000;
    const SEED: u64 = 0x51_0e;
    const BUFFER: u64 = 65536;
    const PACE: Pace = Pace { rate: 100_000, duration: Duration::from_secs(20) };
    let topo = Topology::up();
    let servers = start_backends(&topo, BACKEND_PORT, Mode::Send { bytes: TOTAL, seed: SEED }, &[]);
    let mut dp = start_proxy(&topo, [1, 1, 1], Some(BUFFER as usize), |_| {});
    let base = dp.stats();
    let base_mbufs = base["mbufs_in_use"].as_u64().expect("mbufs_in_use in stats");
    let base_buffered = proxy_counter(&base, "buffered_bytes").expect("proxy.buffered_bytes in stats");
    eprintln!("baseline: mbufs_in_use {base_mbufs}, proxy {}", base["proxy"]);

    // Bounds from the configuration:
    // * one connection has four socket buffers (receive and send on the client side
    //   and on the backend side) of `buffer_size` bytes each;
    // * the proxy copies payload into those buffers, so beyond the idle level (the RX
    //   ring, refilled at once) only frames in flight hold mbufs: at most a TX ring's
    //   worth not yet reclaimed plus one RX and one TX burst in the lcore.
    let max_buffered_bound = base_buffered + 4 * BUFFER;
    let max_mbufs_bound = base_mbufs + TX_DESCRIPTORS + 2 * BURST;

    let progress = AtomicU64::new(0);
    let t0 = Instant::now();
    let (report, samples, max_mbufs, max_buffered, max_mbufs_paced, max_buffered_paced, sent_at_pace_end) =
        thread::scope(|s| {
            let progress = &progress;
            let ns = topo.ns("cli");
            let h = thread::Builder::new()
                .name("slow-reader".into())
                .spawn_scoped(s, move || {
                    netns::enter_netns(&ns).unwrap();
                    client::receive_stream(
                        vip(),
                        b"GET /big\n",
                        TOTAL,
                        SEED,
                        Some(PACE),
                        progress,
                        Duration::from_secs(240),
                    )
                })
                .unwrap();
            let (mut n, mut max_m, mut max_b, mut max_m_p, mut max_b_p) = (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut sent_at_pace_end = None;
            // Sample the stats file while the transfer runs (bounded by the reader's
            // own deadline, and by this loop's).
            while !h.is_finished() && t0.elapsed() < Duration::from_secs(260) {
                if let Some(st) = dp.try_stats() {
                    n += 1;
                    let m = st["mbufs_in_use"].as_u64().unwrap_or(0);
                    let b = proxy_counter(&st, "buffered_bytes").unwrap_or(0);
                    max_m = max_m.max(m);
                    max_b = max_b.max(b);
                    if t0.elapsed() < PACE.duration {
                        max_m_p = max_m_p.max(m);
                        max_b_p = max_b_p.max(b);
                    }
                }
                if sent_at_pace_end.is_none() && t0.elapsed() >= PACE.duration {
                    sent_at_pace_end = Some((
                        progress.load(Ordering::Relaxed),
                        servers.iter().fold(0u64, |n, s| n.saturating_add(s.active())),
                        dp.try_stats().map(|st| vip_counter(&st, VIP_IP, VIP_PORT, "bytes_to_clients")),
                    ));
                }
                thread::sleep(Duration::from_millis(100));
            }
            let r = h.join().expect("reader thread");
            (r, n, max_m, max_b, max_m_p, max_b_p, sent_at_pace_end)
        });
    let report = report.unwrap_or_else(|e| panic!("slow reader: {e}"));
    eprintln!(
        "read {} B in {:.2?}: paced phase {} B in {:.2?} ({:.0} B/s), end {:?}; checksum {:016x} (expected {:016x})",
        report.bytes,
        report.elapsed,
        report.paced_bytes,
        report.paced_for,
        report.paced_bytes as f64 / report.paced_for.as_secs_f64().max(1e-9),
        report.end,
        report.checksum,
        report.expected_checksum
    );
    if let Some((read, active, to_clients)) = sent_at_pace_end {
        eprintln!("at the end of the paced phase: client had read {read} B; VIP bytes_to_clients {to_clients:?}; backend conns open {active}");
    }
    eprintln!(
        "{samples} stats samples: max mbufs_in_use {max_mbufs} (paced phase {max_mbufs_paced}; baseline {base_mbufs}, bound {max_mbufs_bound}); \
         max proxy.buffered_bytes {max_buffered} (paced phase {max_buffered_paced}; bound {max_buffered_bound})"
    );
    assert!(report.intact(TOTAL), "transfer not intact: {report:?}");
    assert!(samples >= 5, "only {samples} stats samples taken");
    assert!(
        max_buffered <= max_buffered_bound,
        "proxy.buffered_bytes reached {max_buffered}, above 4 x buffer_size ({max_buffered_bound}) for one connection"
    );
    assert!(
        max_mbufs <= max_mbufs_bound,
        "mbufs_in_use reached {max_mbufs}, above baseline {base_mbufs} + TX ring {TX_DESCRIPTORS} + 2 bursts"
    );
    dp.assert_running();
}

// ---------------------------------------------------------------------------- failover

#[test]
fn closed_backend_port_fails_over() {
    // be2 has nothing listening on the port: its kernel answers SYNs with RST.
    failover_test(300, |_| None, |_| {});
}

#[test]
fn unanswered_backend_times_out_and_fails_over() {
    // be2 serves, but everything it sends to the dataplane is discarded (a
    // blackhole route): SYNs go unanswered and each try ends at the connect
    // timeout, not on a RST.
    failover_test(
        60,
        |topo| {
            let nginx = Nginx::start(topo, "be2", sa(BACKEND_IPS[1], BACKEND_PORT), "be2");
            topo.exec_ok("be2", &["ip", "route", "add", "blackhole", &format!("{DATAPLANE_IP}/32")]);
            Some(nginx)
        },
        |v| {
            v.connect_timeout_ms = 200;
            v.connect_tries = 3;
        },
    );
}

/// Every connection attempt to be2 fails (`break_be2` arranges how); the
/// clients still all succeed, through be1 and be3 (the next backends in each
/// flow's Maglev preference order), and each failure is counted against be2.
fn failover_test(conns: u64, break_be2: impl FnOnce(&Topology) -> Option<Nginx>, tweak: impl FnOnce(&mut Vip)) {
    let topo = Topology::up();
    let _be1 = Nginx::start(&topo, "be1", sa(BACKEND_IPS[0], BACKEND_PORT), "be1");
    let _be3 = Nginx::start(&topo, "be3", sa(BACKEND_IPS[2], BACKEND_PORT), "be3");
    let _be2 = break_be2(&topo);
    let mut dp = start_proxy(&topo, [1, 1, 1], None, tweak);
    // The working backends' ARP requests teach the dataplane their MACs, so
    // no first connection to them waits on address resolution (smoltcp asks
    // at most once a second), which a short connect timeout would count as
    // their failure.
    for b in ["be1", "be3"] {
        topo.exec_ok(b, &["ping", "-c", "1", "-W", "1", DATAPLANE_IP]);
    }
    let before = dp.stats();

    let spread = on_client(&topo, || client::http_spread(vip(), conns, 8, Duration::from_secs(10)));
    eprintln!("{conns} connections in {:.2?}: {:?}, {} failed", spread.elapsed, spread.counts, spread.failed);
    assert_eq!(spread.failed, 0, "failed requests: {:#?}", spread.failures);
    assert_eq!(spread.total_ok(), conns);
    assert_eq!(spread.counts.get("be2"), None, "be2 cannot be reached, yet answered");

    let be = |s: &Value, b: &str, f: &str| {
        backend_counter(s, VIP_IP, VIP_PORT, backend_ip(b), f).saturating_sub(backend_counter(
            &before,
            VIP_IP,
            VIP_PORT,
            backend_ip(b),
            f,
        ))
    };
    let after = dp.wait_stats(Duration::from_secs(10), "opened counters to account for every connection", |s| {
        let opened: u64 = BACKENDS.iter().map(|b| be(s, b, "opened")).sum();
        if opened == conns {
            Ok(s.clone())
        } else {
            Err(format!("opened +{opened}, {conns} connections made"))
        }
    });
    for b in BACKENDS {
        eprintln!(
            "  {b}: attempts {} opened {} connect_failures {}",
            be(&after, b, "attempts"),
            be(&after, b, "opened"),
            be(&after, b, "connect_failures")
        );
    }
    eprintln!("{}", format_vips(&after));
    assert!(be(&after, "be2", "connect_failures") > 0, "be2 connect_failures did not grow");
    assert_eq!(
        be(&after, "be2", "connect_failures"),
        be(&after, "be2", "attempts"),
        "every attempt on be2 must fail and be counted"
    );
    assert_eq!(be(&after, "be1", "connect_failures"), 0, "be1 connect_failures");
    assert_eq!(be(&after, "be3", "connect_failures"), 0, "be3 connect_failures");
    assert_eq!(be(&after, "be2", "opened"), 0, "be2 opened");
    dp.assert_running();
}

// ---------------------------------------------------------------------------- two lcores

/// Two lcores on a two-queue tap. The kernel spreads frames over the queues by
/// its own flow hash (net_tap has no RSS to program), so a connection's
/// frames, client side and backend side, land on either queue; each
/// connection is owned by one engine, and a frame that arrives on the other
/// lcore is handed over through that lcore's ring. Every byte must arrive
/// intact, both engines must own connections, and both must have handed
/// frames over.
#[test]
fn two_lcores_hand_over_and_keep_every_byte() {
    const CONNS: usize = 200;
    const BYTES: u64 = 256 * 1024;
    let topo = Topology::up();
    let _servers = start_backends(&topo, BACKEND_PORT, Mode::Echo, &[]);
    let v = three_backends(proxy_vip(VIP_IP, VIP_PORT), BACKEND_PORT, [1, 1, 1]);
    let config = format!("[dataplane]\nlcores = \"0-1\"\n{}", proxy_config(None, &[v]));
    let mut dp = Dataplane::start(&topo, &config);
    let before = dp.wait_stats(Duration::from_secs(5), "two lcores with an engine each", |s| {
        let lcores = s["lcores"].as_array().map_or(0, Vec::len);
        let engines = s["proxy"]["per_lcore"].as_array().map_or(0, Vec::len);
        if (lcores, engines) == (2, 2) {
            Ok(s.clone())
        } else {
            Err(format!("{lcores} lcores, {engines} engines"))
        }
    });

    let rep = on_client(&topo, || client::bulk_echo(vip(), CONNS, BYTES, 7, Duration::from_secs(120)));
    eprintln!(
        "{CONNS} connections x {BYTES} B echoed: {} ok, {} failed; sent {} B, received {} B",
        rep.ok, rep.failed, rep.bytes_sent, rep.bytes_received
    );
    assert_eq!((rep.ok, rep.failed), (CONNS as u64, 0), "echo results: {:?}", rep.failures);
    assert_eq!(rep.bytes_received, CONNS as u64 * BYTES, "bytes echoed back intact");

    let lcore = |s: &Value, i: usize, f: &str| s["lcores"][i][f].as_u64().unwrap_or(0);
    let engine = |s: &Value, i: usize, f: &str| s["proxy"]["per_lcore"][i][f].as_u64().unwrap_or(0);
    let accepted = |s: &Value| engine(s, 0, "accepted") + engine(s, 1, "accepted");
    let accepted_before = accepted(&before);
    let after = dp.wait_stats(Duration::from_secs(10), "per-lcore accepted to add up", |s| {
        let new = accepted(s) - accepted_before;
        if new == CONNS as u64 {
            Ok(s.clone())
        } else {
            Err(format!("accepted +{new} of {CONNS}"))
        }
    });
    for i in 0..2 {
        eprintln!(
            "lcore {i}: rx_packets +{}, handed_over +{}, taken_over +{}; engine accepted +{}, frames_in +{}",
            lcore(&after, i, "rx_packets") - lcore(&before, i, "rx_packets"),
            lcore(&after, i, "handed_over") - lcore(&before, i, "handed_over"),
            lcore(&after, i, "taken_over") - lcore(&before, i, "taken_over"),
            engine(&after, i, "accepted") - engine(&before, i, "accepted"),
            engine(&after, i, "frames_in") - engine(&before, i, "frames_in"),
        );
    }
    for i in 0..2 {
        assert!(engine(&after, i, "accepted") > engine(&before, i, "accepted"), "engine {i} owns no connection");
        assert!(
            lcore(&after, i, "handed_over") > lcore(&before, i, "handed_over"),
            "lcore {i} handed nothing over: every frame reached its owner's queue, so the handover was not exercised"
        );
    }
    for reason in ["handover_full", "engine_inbox_full"] {
        assert_eq!(drop_count(&after, reason), drop_count(&before, reason), "{reason} drops");
    }
    dp.assert_running();
}

// ---------------------------------------------------------------------------- PROXY protocol

/// PROXY protocol v1 (VIP port 80) and v2 (port 81) read by a real parser:
/// nginx listening with `proxy_protocol` answers with the client address the
/// header named, which must be the client's own address and port.
#[test]
fn proxy_protocol_v1_and_v2_name_the_client_to_nginx() {
    const PER_VERSION: usize = 30;
    let topo = Topology::up();
    let opts = NginxOptions { proxy_protocol: true, ..NginxOptions::default() };
    let _nginx: Vec<Nginx> = BACKENDS
        .iter()
        .zip(BACKEND_IPS)
        .map(|(b, ip)| Nginx::start_with(&topo, b, sa(ip, BACKEND_PORT), b, &opts))
        .collect();
    let vips: Vec<Vip> = [(VIP_PORT, "v1"), (VIP_PORT + 1, "v2")]
        .into_iter()
        .map(|(port, version)| {
            let mut v = three_backends(proxy_vip(VIP_IP, port), BACKEND_PORT, [1, 1, 1]);
            v.proxy_protocol = if version == "v1" { ProxyProtocol::V1 } else { ProxyProtocol::V2 };
            v
        })
        .collect();
    let mut dp = Dataplane::start(&topo, &proxy_config(None, &vips));
    for (port, version) in [(VIP_PORT, "v1"), (VIP_PORT + 1, "v2")] {
        let answers = on_client(&topo, || {
            (0..PER_VERSION)
                .map(|_| client::http_get_from(sa(VIP_IP, port), Duration::from_secs(5)))
                .collect::<Vec<_>>()
        });
        let mut by = std::collections::BTreeMap::new();
        for a in answers {
            let (local, body) = a.unwrap_or_else(|e| panic!("PROXY {version}: request failed: {e}"));
            let (name, named) = body.split_once(' ').unwrap_or_else(|| panic!("PROXY {version}: answer {body:?}"));
            assert_eq!(named, local.to_string(), "PROXY {version}: {name} was told the client is {named}, it is {local}");
            *by.entry(name.to_string()).or_insert(0) += 1;
        }
        eprintln!("PROXY {version}: {PER_VERSION} requests, nginx saw each client's own address and port; by backend {by:?}");
    }
    dp.assert_running();
}

// ---------------------------------------------------------------------------- connection limit

/// `max_connections` over real TCP: up to the limit every SYN is accepted;
/// beyond it the client's connect is refused (RST) and counted; when one
/// connection closes there is room again.
#[test]
fn connection_limit_refuses_beyond_and_counts() {
    const LIMIT: usize = 20;
    const EXTRA: u64 = 10;
    let topo = Topology::up();
    let _servers = start_backends(&topo, BACKEND_PORT, Mode::Echo, &[]);
    let mut dp = start_proxy(&topo, [1, 1, 1], None, |v| v.max_connections = LIMIT as u32);
    let before = dp.stats();
    let vip_delta = |s: &Value, f: &str| vip_counter(s, VIP_IP, VIP_PORT, f) - vip_counter(&before, VIP_IP, VIP_PORT, f);

    let (mut held, errors, failed) =
        on_client(&topo, || client::open_idle(vip(), LIMIT, 4, None, Duration::from_secs(20)));
    assert_eq!((held.len(), failed), (LIMIT, 0), "opening {LIMIT} under the limit: {errors:?}");
    dp.wait_stats(Duration::from_secs(5), "the VIP to count every held connection active", |s| {
        let active = vip_counter(s, VIP_IP, VIP_PORT, "active");
        if active == LIMIT as u64 { Ok(()) } else { Err(format!("active {active}")) }
    });

    let refused = on_client(&topo, || {
        (0..EXTRA)
            .map(|_| match std::net::TcpStream::connect_timeout(&vip(), Duration::from_secs(5)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                Err(e) => Err(format!("not refused but {e}")),
                Ok(_) => Err("accepted beyond the limit".to_string()),
            })
            .collect::<Vec<_>>()
    });
    for r in &refused {
        assert_eq!(r, &Ok(()), "connect beyond the limit of {LIMIT}");
    }
    let after = dp.wait_stats(Duration::from_secs(5), "drop_limit to count the refused SYNs", |s| {
        let d = vip_delta(s, "drop_limit");
        if d >= EXTRA { Ok(s.clone()) } else { Err(format!("drop_limit +{d}")) }
    });
    eprintln!("{LIMIT} held, {EXTRA} refused: drop_limit +{}, accepted +{}", vip_delta(&after, "drop_limit"), vip_delta(&after, "accepted"));
    assert_eq!(vip_delta(&after, "accepted"), LIMIT as u64, "accepted");

    // One closes: room for exactly one more.
    drop(held.pop());
    dp.wait_stats(Duration::from_secs(5), "the closed connection to leave the active count", |s| {
        let active = vip_counter(s, VIP_IP, VIP_PORT, "active");
        if active == LIMIT as u64 - 1 { Ok(()) } else { Err(format!("active {active}")) }
    });
    let mut s = on_client(&topo, || client::connect_and_roundtrip(vip(), b"ping\n", Duration::from_secs(5)))
        .expect("a connection once there is room again");
    let _ = std::io::Write::write_all(&mut s, b"bye\n");
    dp.assert_running();
}

// ---------------------------------------------------------------------------- half close

#[test]
fn half_close_gets_whole_response() {
    const REQUEST: u64 = 100_000;
    const REPLY: u64 = MIB;
    const REQ_SEED: u64 = 0xa11;
    const REPLY_SEED: u64 = 0xb0b;
    const ROUNDS: usize = 6;
    let topo = Topology::up();
    let servers = start_backends(&topo, BACKEND_PORT, Mode::ReplyAfterEof { bytes: REPLY, seed: REPLY_SEED }, &[]);
    let mut dp = start_proxy(&topo, [1, 1, 1], None, |_| {});

    for round in 0..ROUNDS {
        let rep = on_client(&topo, || {
            client::half_close_request(vip(), REQUEST, REQ_SEED, REPLY, REPLY_SEED, Duration::from_secs(30))
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        eprintln!(
            "round {round}: sent {REQUEST} B then FIN; got {} B in {:.2?}, end {:?}",
            rep.bytes, rep.elapsed, rep.end
        );
        assert!(rep.intact(REPLY), "round {round}: reply not intact: {rep:?}");
    }
    // Every backend connection received the whole request, intact, before its EOF.
    let want_sum = checksum_of(REQ_SEED, REQUEST);
    wait_until(Duration::from_secs(10), "the servers to record every connection", || {
        servers.iter().map(|s| s.records().len()).sum::<usize>() >= ROUNDS
    });
    for s in &servers {
        for r in s.records() {
            assert_eq!(r.bytes_in, REQUEST, "{}: request bytes at the backend: {r:?}", s.name());
            assert_eq!(r.in_checksum, want_sum, "{}: request checksum at the backend: {r:?}", s.name());
            assert_eq!(r.end, End::Eof, "{}: {r:?}", s.name());
        }
        eprintln!("{}: {} connections", s.name(), s.records().len());
    }
    dp.assert_running();
}

// ---------------------------------------------------------------------------- idle

#[test]
fn idle_connections_reclaimed() {
    const K: u64 = 10_000;
    const IDLE_MS: u32 = 4000;
    // The client's sockets are in this process; the backends' are in their own
    // processes (the hard RLIMIT_NOFILE may not allow both here).
    let limit = raise_nofile_limit(65536);
    assert!(limit >= K + 1000, "RLIMIT_NOFILE {limit} is too low for {K} client connections");
    let topo = Topology::up();
    let servers = start_backend_processes(&topo, Path::new(TEST_SERVER), BACKEND_PORT, Mode::Hold);
    let mut dp = start_proxy(&topo, [1, 1, 1], None, |v| {
        v.idle_timeout_ms = IDLE_MS;
        v.max_connections = 20_000;
    });
    let base = dp.stats();
    let base_sockets = proxy_counter(&base, "sockets").expect("proxy.sockets in stats");
    let base_mbufs = base["mbufs_in_use"].as_u64().expect("mbufs_in_use");
    let base_idle = vip_counter(&base, VIP_IP, VIP_PORT, "drop_idle_timeout");
    eprintln!("baseline: proxy {}, mbufs_in_use {base_mbufs}", base["proxy"]);

    // Open them, keeping every open one alive meanwhile (one byte per connection per
    // KEEPALIVE), so the idle timeout counts from the end of the opening, however
    // long that takes; the sweep below keeps the same pace, so no connection goes
    // more than 2 * KEEPALIVE untouched.
    const KEEPALIVE: Duration = Duration::from_millis(IDLE_MS as u64 / 4);
    let t0 = Instant::now();
    let (conns, errors, nerr) =
        on_client(&topo, || client::open_idle(vip(), K as usize, 16, Some(KEEPALIVE), Duration::from_secs(180)));
    eprintln!("opened {} connections in {:.2?} ({nerr} failed)", conns.len(), t0.elapsed());
    assert_eq!(nerr, 0, "connect failures: {errors:#?}");

    // Poll until the dataplane counts all of them active, keeping them alive
    // meanwhile, spread evenly (10 ms steps), not as bursts of K segments.
    const STEP: Duration = Duration::from_millis(10);
    let mut sweeper = client::Sweeper::default();
    let mut reached = 0;
    let mut last_poll = Instant::now();
    let wait0 = Instant::now();
    while wait0.elapsed() < Duration::from_secs(60) {
        sweeper.keep_alive(&conns, KEEPALIVE);
        if last_poll.elapsed() >= Duration::from_millis(200) {
            last_poll = Instant::now();
            if let Some(s) = dp.try_stats() {
                let active = vip_counter(&s, VIP_IP, VIP_PORT, "active");
                reached = reached.max(active);
                if active >= K {
                    break;
                }
            }
        }
        thread::sleep(STEP);
    }
    let held: Vec<String> = servers.iter().map(|s| format!("{} {}", s.name(), s.active())).collect();
    eprintln!(
        "dataplane active reached {reached} (of {K}) after {:.2?}; backends hold {held:?}; keep-alive writes {} ({} failed)\n{}",
        wait0.elapsed(),
        sweeper.touched,
        sweeper.failed,
        dp.try_stats().map(|s| format_vips(&s)).unwrap_or_default()
    );
    assert!(reached >= K, "VIP active reached only {reached} of {K} open client connections");
    assert_eq!(sweeper.failed, 0, "keep-alive writes on open connections failed");

    // Now idle: the dataplane must reclaim every connection.
    let idle_from = Instant::now();
    let after = dp.wait_stats(Duration::from_secs(60), "every idle connection to be reclaimed", |s| {
        let active = vip_counter(s, VIP_IP, VIP_PORT, "active");
        let idle = vip_counter(s, VIP_IP, VIP_PORT, "drop_idle_timeout") - base_idle;
        if active == 0 && idle >= K {
            Ok(s.clone())
        } else {
            Err(format!("active {active}, drop_idle_timeout +{idle}"))
        }
    });
    eprintln!(
        "reclaimed {:.2?} after the last keep-alive (idle timeout {IDLE_MS} ms)\n{}",
        idle_from.elapsed(),
        format_vips(&after)
    );
    dp.wait_stats(Duration::from_secs(30), "proxy.sockets and mbufs_in_use back to their baselines", |s| {
        let sockets = proxy_counter(s, "sockets").unwrap_or(u64::MAX);
        let mbufs = s["mbufs_in_use"].as_u64().unwrap_or(u64::MAX);
        if sockets <= base_sockets && mbufs <= base_mbufs {
            Ok(())
        } else {
            Err(format!(
                "proxy.sockets {sockets} (baseline {base_sockets}), mbufs_in_use {mbufs} (baseline {base_mbufs}), proxy {}",
                s["proxy"]
            ))
        }
    });

    // Every client socket sees the reset or close. A RST lost on the way (the
    // kernel's backlog can overflow when 20 000 of them leave at once) is not
    // retransmitted: for connections still open after a while, send one byte, which
    // the dataplane, having forgotten the flow, must answer with a RST.
    let closed = client::wait_closed(&conns, Duration::from_secs(15));
    eprintln!(
        "client side, passively: {} reset, {} EOF, {} other, {} still open",
        closed.reset, closed.eof, closed.other, closed.still_open
    );
    assert_eq!(closed.other, 0, "client connections ended with unexpected errors: {closed:?}");
    if closed.still_open > 0 {
        let mut probe = client::Sweeper::default();
        for &i in &closed.open {
            probe.touch_next(std::slice::from_ref(&conns[i]), 1);
        }
        let again = client::wait_closed_subset(&conns, &closed.open, Duration::from_secs(15));
        eprintln!(
            "client side, after probing the {} still open: {} reset, {} EOF, {} other, {} still open",
            closed.still_open, again.reset, again.eof, again.other, again.still_open
        );
        assert_eq!(again.still_open, 0, "client connections the dataplane neither closed nor reset when probed");
    }
    wait_until(Duration::from_secs(30), "backend servers to see every connection closed", || {
        servers.iter().fold(0u64, |n, s| n.saturating_add(s.active())) == 0
    });
    for s in &servers {
        eprintln!("{}: {}", s.name(), s.status());
    }
    drop(conns);
    dp.assert_running();
}

// ---------------------------------------------------------------------------- resets

#[test]
fn rst_propagates() {
    const RESET_PORT: u16 = 8081;
    const VIP_RESET_PORT: u16 = 81;
    let topo = Topology::up();
    let echo = start_backends(&topo, BACKEND_PORT, Mode::Echo, &[]);
    let resetters = start_backends(&topo, RESET_PORT, Mode::Reset, &[]);
    let vips = [
        three_backends(proxy_vip(VIP_IP, VIP_PORT), BACKEND_PORT, [1, 1, 1]),
        three_backends(proxy_vip(VIP_IP, VIP_RESET_PORT), RESET_PORT, [1, 1, 1]),
    ];
    let mut dp = Dataplane::start(&topo, &proxy_config(None, &vips));
    let before = dp.stats();

    // Client RST -> the backend's connection ends (reset or EOF).
    for round in 0..3u64 {
        let s = on_client(&topo, || {
            client::connect_and_roundtrip(vip(), b"hello through the proxy\n", Duration::from_secs(10))
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        tcp::reset(s).unwrap();
        wait_until(
            Duration::from_secs(10),
            &format!("round {round}: the backend connection to end after the client's RST"),
            || echo.iter().map(|s| s.records().len() as u64).sum::<u64>() > round,
        );
        let ends: Vec<(String, End)> =
            echo.iter().flat_map(|s| s.records().into_iter().map(|r| (s.name().to_string(), r.end))).collect();
        eprintln!("round {round}: backend connection ends so far: {ends:?}");
        assert!(ends.iter().all(|(_, e)| e.is_eof_or_reset()), "backend saw {ends:?}");
    }
    wait_until(Duration::from_secs(5), "no backend connection left open", || echo.iter().all(|s| s.active() == 0));
    let s = dp.wait_stats(Duration::from_secs(5), "client_resets to count the client RSTs", |s| {
        let n =
            vip_counter(s, VIP_IP, VIP_PORT, "client_resets") - vip_counter(&before, VIP_IP, VIP_PORT, "client_resets");
        if n >= 3 {
            Ok(s.clone())
        } else {
            Err(format!("client_resets +{n}"))
        }
    });
    eprintln!("after client resets: {}", format_vips(&s));

    // Backend RST -> the client sees ECONNRESET.
    let reset_vip = sa(VIP_IP, VIP_RESET_PORT);
    for round in 0..3 {
        let (end, n) = on_client(&topo, || {
            let mut s = tcp::connect(reset_vip, Duration::from_secs(10), Duration::from_millis(100))
                .unwrap_or_else(|e| panic!("round {round}: connect: {e}"));
            use std::io::Write;
            s.write_all(b"please reset me\n").unwrap_or_else(|e| panic!("round {round}: send: {e}"));
            client::read_to_end_or_error(&mut s, Duration::from_secs(10))
        });
        eprintln!("round {round}: client saw {end:?} after {n} bytes");
        assert_eq!(end, End::Reset, "round {round}: the client did not see ECONNRESET after the backend's RST");
    }
    let s = dp.wait_stats(Duration::from_secs(5), "backend_resets to count the backend RSTs", |s| {
        let n = vip_counter(s, VIP_IP, VIP_RESET_PORT, "backend_resets")
            - vip_counter(&before, VIP_IP, VIP_RESET_PORT, "backend_resets");
        if n >= 3 {
            Ok(s.clone())
        } else {
            Err(format!("backend_resets +{n}"))
        }
    });
    eprintln!("after backend resets: {}", format_vips(&s));
    drop(resetters);
    dp.assert_running();
}

// ---------------------------------------------------------------------------- tools

/// The client and server tools against the backends directly (no dataplane): what
/// the proxy tests rely on works on plain kernel TCP.
#[test]
fn toolkit_without_dataplane() {
    let topo = Topology::up();
    let cli = topo.ns("cli");

    // nginx answers with its name.
    let _nginx = Nginx::start(&topo, "be1", sa(BACKEND_IPS[0], 8080), "be1");
    let spread = in_netns(&cli, || client::http_spread(sa(BACKEND_IPS[0], 8080), 200, 8, Duration::from_secs(5)));
    assert_eq!(spread.failed, 0, "{:?}", spread.failures);
    assert_eq!(spread.counts.get("be1"), Some(&200));
    eprintln!("nginx: 200 GETs in {:.2?}", spread.elapsed);

    // Rust HTTP answers with its name.
    let http = Server::start(&topo.ns("be2"), sa(BACKEND_IPS[1], 8080), "be2", Mode::Http);
    let name = in_netns(&cli, || client::http_get(http.addr(), Duration::from_secs(5))).unwrap();
    assert_eq!(name, "be2");

    // Echo: concurrent bulk, checked.
    let echo = Server::start(&topo.ns("be2"), sa(BACKEND_IPS[1], 9000), "echo", Mode::Echo);
    let rep = in_netns(&cli, || client::bulk_echo(echo.addr(), 50, MIB, 7, Duration::from_secs(60)));
    assert_eq!(rep.failed, 0, "{:?}", rep.failures);
    assert_eq!(rep.bytes_received, 50 * MIB);
    eprintln!("echo: 50 x 1 MiB in {:.2?}", rep.transfer);

    // Send: paced then fast, intact.
    let send =
        Server::start(&topo.ns("be3"), sa(BACKEND_IPS[2], 9001), "send", Mode::Send { bytes: 5_000_000, seed: 3 });
    let progress = AtomicU64::new(0);
    let pace = Pace { rate: 1_000_000, duration: Duration::from_secs(1) };
    let rep = in_netns(&cli, || {
        client::receive_stream(send.addr(), b"GET\n", 5_000_000, 3, Some(pace), &progress, Duration::from_secs(30))
    })
    .unwrap();
    assert!(rep.intact(5_000_000), "{rep:?}");
    assert!(rep.paced_bytes <= 1_100_000, "pacing did not hold: {rep:?}");
    eprintln!("send: {rep:?}");

    // Reply after half-close.
    let rae =
        Server::start(&topo.ns("be1"), sa(BACKEND_IPS[0], 9002), "rae", Mode::ReplyAfterEof { bytes: MIB, seed: 4 });
    let rep =
        in_netns(&cli, || client::half_close_request(rae.addr(), 12345, 5, MIB, 4, Duration::from_secs(10))).unwrap();
    assert!(rep.intact(MIB), "{rep:?}");
    wait_until(Duration::from_secs(5), "rae record", || rae.records().len() == 1);
    assert_eq!(rae.records()[0].in_checksum, checksum_of(5, 12345));

    // Server reset -> client ECONNRESET.
    let rst = Server::start(&topo.ns("be2"), sa(BACKEND_IPS[1], 9003), "rst", Mode::Reset);
    let (end, _) = in_netns(&cli, || {
        let mut s = tcp::connect(rst.addr(), Duration::from_secs(5), Duration::from_millis(100)).unwrap();
        use std::io::Write;
        s.write_all(b"x\n").unwrap();
        client::read_to_end_or_error(&mut s, Duration::from_secs(5))
    });
    assert_eq!(end, End::Reset);

    // Client reset -> the server records a reset.
    let s = in_netns(&cli, || client::connect_and_roundtrip(echo.addr(), b"abc", Duration::from_secs(5))).unwrap();
    let before = echo.records().len();
    tcp::reset(s).unwrap();
    wait_until(Duration::from_secs(5), "echo server to record the reset", || echo.records().len() > before);
    assert_eq!(echo.records().last().unwrap().end, End::Reset);

    // Hold: many idle connections; stopping the server closes them all.
    let mut hold = Server::start(&topo.ns("be3"), sa(BACKEND_IPS[2], 9004), "hold", Mode::Hold);
    let (conns, errs, nerr) = in_netns(&cli, || client::open_idle(hold.addr(), 500, 4, None, Duration::from_secs(30)));
    assert_eq!(nerr, 0, "{errs:?}");
    assert_eq!(conns.len(), 500);
    wait_until(Duration::from_secs(5), "hold server to hold 500", || hold.active() == 500);
    assert_eq!(client::touch(&conns), 0);
    hold.stop();
    let closed = client::wait_closed(&conns, Duration::from_secs(10));
    assert_eq!(closed.still_open, 0, "{closed:?}");
    eprintln!("hold: {closed:?}");

    // A port with nothing listening refuses.
    let refused =
        in_netns(&cli, || std::net::TcpStream::connect_timeout(&sa(BACKEND_IPS[1], 9999), Duration::from_secs(2)));
    assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
}
