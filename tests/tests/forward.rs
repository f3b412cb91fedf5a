//! Packet-forwarding VIP modes end to end: DSR (L2, the VIP on the backends'
//! loopback, the return path bypassing the dataplane) and FullNAT (source and
//! destination rewritten, both directions through the dataplane), with real kernel
//! TCP/UDP peers (curl, python's http.server, iperf3), tcpdump captures in the
//! backends, one test on two lcores, and crafted frames that the forwarder must
//! drop and count.
//!
//! Figures (throughput, byte counts, per-lcore packets) are printed, never asserted
//! against thresholds: run with `--nocapture` to see them.

use fulcrum_tests::forward_util::*;
use fulcrum_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

const DSR_VIP: &str = "198.18.1.2";
const FNAT_VIP: &str = "198.18.1.3";
const BACKENDS: [&str; 3] = ["be1", "be2", "be3"];

/// One `[[vip]]` table with the three backends on `backend_port`.
fn vip(
    address: &str,
    port: u16,
    proto: &str,
    mode: &str,
    affinity: &str,
    backend_port: u16,
) -> String {
    let backends: Vec<String> = BACKEND_IPS
        .iter()
        .map(|b| format!("{{ address = \"{b}\", port = {backend_port} }}"))
        .collect();
    format!(
        "[[vip]]\naddress = \"{address}\"\nport = {port}\nproto = \"{proto}\"\nmode = \"{mode}\"\n\
         affinity = \"{affinity}\"\nbackends = [ {} ]\n",
        backends.join(", ")
    )
}

fn forward_section(snat: bool) -> String {
    let snat = if snat {
        format!("snat_addresses = [\"{SNAT_IP}\"]\n")
    } else {
        String::new()
    };
    format!("[forward]\n{snat}conntrack_entries = 65536\n")
}

fn mbit(bps: f64) -> f64 {
    bps / 1e6
}

/// Which backends of a VIP got packets between two stats snapshots.
fn backends_with_traffic(
    before: &Value,
    after: &Value,
    addr: &str,
    port: u16,
    proto: &str,
) -> Vec<(String, u64, u64)> {
    let b0 = vip_backends(before, addr, port, proto);
    vip_backends(after, addr, port, proto)
        .into_iter()
        .filter_map(|(a, p, bytes, _)| {
            let (p0, by0) = b0
                .iter()
                .find(|x| x.0 == a)
                .map(|x| (x.1, x.2))
                .unwrap_or((0, 0));
            (p > p0).then(|| (a, p - p0, bytes - by0))
        })
        .collect()
}

/// Per backend leaf, the `(source, destination)` of each captured packet.
type Seen = Vec<(String, Vec<(String, String)>)>;

/// Captures on every backend while `run` runs; returns `run`'s result and, per
/// backend leaf, the packets seen.
fn with_captures<T>(
    topo: &Topology,
    filter: &str,
    count: u32,
    run: impl FnOnce() -> T,
) -> (T, Seen) {
    let caps: Vec<Capture> = BACKENDS
        .iter()
        .map(|be| Capture::start(topo, be, filter, count))
        .collect();
    let r = run();
    let seen = caps
        .into_iter()
        .map(|c| (c.leaf.clone(), c.finish()))
        .collect();
    (r, seen)
}

/// What the backends captured during a UDP upload, and the dataplane's stats
/// around it.
struct UdpUpload {
    seen: Seen,
    before: serde_json::Value,
    after: serde_json::Value,
}

/// A 3 s iperf3 UDP upload at 50 Mbit/s to `vip`:5201 through `mode`,
/// captured in every backend with `filter`: prints the figures and asserts
/// that bytes arrived and the VIP forwarded datagrams.
fn udp_upload_through(topo: &Topology, dp: &Dataplane, mode: &str, vip: &str, filter: &str) -> UdpUpload {
    let before = fresh_stats(dp);
    let (result, seen) = with_captures(topo, filter, 20, || {
        iperf3(topo, vip, &["-u", "-b", "50M", "-t", "3"])
    });
    let (bytes, bps, lost, datagrams) = iperf3_udp(&result);
    let after = fresh_stats(dp);
    let vip_pkts = vip_counter(&after, vip, 5201, "udp", "packets")
        - vip_counter(&before, vip, 5201, "udp", "packets");
    eprintln!(
        "{mode} iperf3 UDP 50M: {:.1} Mbit/s, {bytes} bytes, {datagrams} datagrams, lost {lost:.2} %; VIP forwarded {vip_pkts} datagrams",
        mbit(bps)
    );
    assert!(bytes > 0 && vip_pkts > 0, "UDP through {mode} moved nothing: {result}");
    UdpUpload { seen, before, after }
}

/// The sources of the packets captured in any backend.
fn sources(seen: &Seen) -> BTreeSet<String> {
    seen.iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0.clone()))
        .collect()
}

// ---------------------------------------------------------------------------- DSR

#[test]
fn dsr_http_and_iperf3() {
    let topo = Topology::up();
    let mut servers = Vec::new();
    for be in BACKENDS {
        dsr_backend(&topo, be, DSR_VIP);
        servers.push(http_server(&topo, be, DSR_VIP, 80));
        servers.push(iperf3_server(&topo, be, DSR_VIP));
    }
    let config = format!(
        "{}{}{}{}",
        forward_section(false),
        vip(DSR_VIP, 80, "tcp", "dsr", "flow", 80),
        vip(DSR_VIP, 5201, "tcp", "dsr", "client", 5201),
        vip(DSR_VIP, 5201, "udp", "dsr", "client", 5201)
    );
    let mut dp = Dataplane::start(&topo, &config);

    // The dataplane, not a backend, answers ARP for the VIP (asked from a backend's
    // neighbour on the segment: the client routes the VIPs via 198.18.0.2).
    let mac = dp.mac();
    let out = topo.exec(
        "be1",
        &["arping", "-c", "1", "-w", "3", "-I", "eth0", DSR_VIP],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "arping for the VIP from be1: {}",
        describe(&out)
    );
    assert!(
        text.to_lowercase().contains(&mac),
        "ARP for {DSR_VIP} answered by someone else than {mac}: {text}"
    );

    // HTTP, affinity "flow": spread over backends.
    http_check(&topo, &dp, DSR_VIP, 30);

    // iperf3 TCP upload, with captures in the backends: the serving backend sees the
    // client's own address as the source of packets to the VIP.
    let before = fresh_stats(&dp);
    let filter = format!("dst host {DSR_VIP} and tcp dst port 5201");
    let (up, seen) = with_captures(&topo, &filter, 20, || iperf3(&topo, DSR_VIP, &["-t", "3"]));
    let (bytes, bps) = iperf3_tcp_received(&up);
    eprintln!(
        "DSR iperf3 TCP upload: {:.0} Mbit/s, {bytes} bytes received by the backend",
        mbit(bps)
    );
    let after = fresh_stats(&dp);
    let serving = backends_with_traffic(&before, &after, DSR_VIP, 5201, "tcp");
    eprintln!("DSR TCP 5201 backends with traffic (addr, packets, bytes): {serving:?}");
    assert_eq!(
        serving.len(),
        1,
        "affinity \"client\": one backend for the client's connections: {serving:?}"
    );
    let serving_leaf = leaf_of(&serving[0].0).expect("a backend address");
    for (leaf, pkts) in &seen {
        eprintln!(
            "capture in {leaf}: {} packets to {DSR_VIP}:5201, sources {:?}",
            pkts.len(),
            pkts.iter().map(|p| &p.0).collect::<BTreeSet<_>>()
        );
        if leaf == serving_leaf {
            assert!(
                !pkts.is_empty(),
                "capture in the serving backend {leaf} saw nothing"
            );
            for (src, dst) in pkts {
                assert_eq!(
                    src, CLIENT_IP,
                    "DSR: a packet to the VIP in {leaf} came from {src} (to {dst})"
                );
                assert_eq!(dst, DSR_VIP, "captured a packet to {dst}");
            }
        } else {
            assert!(
                pkts.is_empty(),
                "non-serving backend {leaf} captured traffic: {pkts:?}"
            );
        }
    }

    // iperf3 TCP download: the data flows backend -> client directly; the dataplane
    // sees only the client's ACKs.
    let Download { result: down, rx_bytes, bps, vip_bytes, vip_pkts, dp_rx, dp_tx } =
        download_through(&topo, &dp, DSR_VIP);
    eprintln!(
        "DSR iperf3 TCP download: {:.0} Mbit/s; client received {rx_bytes} bytes; through the dataplane: \
         VIP {vip_pkts} packets / {vip_bytes} bytes ({:.2} % of the received bytes), port rx {dp_rx} tx {dp_tx} bytes",
        mbit(bps),
        100.0 * vip_bytes as f64 / rx_bytes.max(1) as f64
    );
    assert!(rx_bytes > 0, "download received nothing: {down}");
    assert!(
        vip_pkts > 0,
        "no packets counted on the DSR VIP during the download"
    );
    assert!(
        vip_bytes < rx_bytes / 2,
        "DSR: the return path should bypass the dataplane, but the VIP forwarded {vip_bytes} bytes \
         for {rx_bytes} bytes the client received"
    );
    assert!(
        dp_tx < rx_bytes / 2,
        "DSR: the dataplane transmitted {dp_tx} bytes for a {rx_bytes}-byte download"
    );

    // iperf3 UDP upload at 50 Mbit/s.
    let filter = format!("dst host {DSR_VIP} and udp dst port 5201");
    let UdpUpload { seen, before, after } = udp_upload_through(&topo, &dp, "DSR", DSR_VIP, &filter);
    let udp_serving = backends_with_traffic(&before, &after, DSR_VIP, 5201, "udp");
    eprintln!("DSR UDP backends with traffic: {udp_serving:?}");
    assert_eq!(
        udp_serving.len(),
        1,
        "UDP affinity \"client\": {udp_serving:?}"
    );
    let srcs = sources(&seen);
    assert!(
        !srcs.is_empty(),
        "no UDP datagram to the VIP captured in any backend"
    );
    assert_eq!(
        srcs,
        BTreeSet::from([CLIENT_IP.to_string()]),
        "UDP sources seen by the backends"
    );

    let s = dp.stats();
    eprintln!("forward: {}", s["forward"]);
    eprintln!("lcore drops: {}", format_drops(&s));
    dp.assert_running();
    drop(servers);
}

// ---------------------------------------------------------------------------- FullNAT

#[test]
fn fullnat_http_and_iperf3() {
    let topo = Topology::up();
    let mut servers = Vec::new();
    for (be, ip) in BACKENDS.iter().zip(BACKEND_IPS) {
        servers.push(http_server(&topo, be, ip, 8080));
        servers.push(iperf3_server(&topo, be, ip));
    }
    let config = format!(
        "{}{}{}{}",
        forward_section(true),
        vip(FNAT_VIP, 80, "tcp", "fullnat", "flow", 8080),
        vip(FNAT_VIP, 5201, "tcp", "fullnat", "client", 5201),
        vip(FNAT_VIP, 5201, "udp", "fullnat", "client", 5201)
    );
    let mut dp = Dataplane::start(&topo, &config);

    // HTTP, port 80 on the VIP -> 8080 on the backends.
    http_check(&topo, &dp, FNAT_VIP, 30);

    // TCP upload with captures: the backends see the SNAT address, never the client.
    let before = fresh_stats(&dp);
    let (up, seen) = with_captures(&topo, "tcp dst port 5201", 20, || {
        iperf3(&topo, FNAT_VIP, &["-t", "3"])
    });
    let (bytes, bps) = iperf3_tcp_received(&up);
    let after = fresh_stats(&dp);
    let serving = backends_with_traffic(&before, &after, FNAT_VIP, 5201, "tcp");
    eprintln!(
        "FullNAT iperf3 TCP upload: {:.0} Mbit/s, {bytes} bytes; backends with traffic {serving:?}",
        mbit(bps)
    );
    assert_eq!(serving.len(), 1, "affinity \"client\": {serving:?}");
    let serving_leaf = leaf_of(&serving[0].0).expect("a backend address");
    for (leaf, pkts) in &seen {
        eprintln!(
            "capture in {leaf}: {} packets, sources {:?}",
            pkts.len(),
            pkts.iter().map(|p| &p.0).collect::<BTreeSet<_>>()
        );
        if leaf == serving_leaf {
            assert!(
                !pkts.is_empty(),
                "capture in the serving backend {leaf} saw nothing"
            );
            let own = BACKEND_IPS[BACKENDS.iter().position(|b| b == leaf).unwrap()];
            for (src, dst) in pkts {
                assert_eq!(src, SNAT_IP, "FullNAT: a packet in {leaf} came from {src}");
                assert_eq!(dst, own, "FullNAT: a packet in {leaf} went to {dst}");
            }
        } else {
            assert!(
                pkts.is_empty(),
                "non-serving backend {leaf} captured traffic: {pkts:?}"
            );
        }
    }

    // TCP download: both directions go through the dataplane.
    let Download { result: down, rx_bytes, bps, vip_bytes, vip_pkts, dp_tx, .. } =
        download_through(&topo, &dp, FNAT_VIP);
    eprintln!(
        "FullNAT iperf3 TCP download: {:.0} Mbit/s; client received {rx_bytes} bytes; VIP {vip_pkts} packets / \
         {vip_bytes} bytes ({:.1} % of the received bytes); port tx {dp_tx} bytes",
        mbit(bps),
        100.0 * vip_bytes as f64 / rx_bytes.max(1) as f64
    );
    assert!(rx_bytes > 0, "download received nothing: {down}");
    assert!(
        vip_bytes >= rx_bytes,
        "FullNAT: the VIP counted {vip_bytes} bytes (both directions) for {rx_bytes} bytes the client received"
    );
    assert!(
        dp_tx >= rx_bytes,
        "FullNAT: the port transmitted {dp_tx} bytes for a {rx_bytes}-byte download"
    );

    // UDP upload, captured: SNAT source too.
    let UdpUpload { seen, .. } = udp_upload_through(&topo, &dp, "FullNAT", FNAT_VIP, "udp dst port 5201");
    let srcs = sources(&seen);
    assert_eq!(
        srcs,
        BTreeSet::from([SNAT_IP.to_string()]),
        "UDP sources seen by the backends"
    );

    let s = dp.stats();
    eprintln!("forward: {}", s["forward"]);
    eprintln!("lcore drops: {}", format_drops(&s));
    dp.assert_running();
    drop(servers);
}

#[test]
fn fullnat_two_lcores() {
    const N: usize = 200;
    let topo = Topology::up();
    let mut servers = Vec::new();
    for (be, ip) in BACKENDS.iter().zip(BACKEND_IPS) {
        servers.push(http_server(&topo, be, ip, 8080));
    }
    let config = format!(
        "[dataplane]\nlcores = \"0-1\"\n{}{}",
        forward_section(true),
        vip(FNAT_VIP, 80, "tcp", "fullnat", "flow", 8080)
    );
    let mut dp = Dataplane::start(&topo, &config);
    let before = fresh_stats(&dp);
    assert_eq!(
        before["lcores"].as_array().map(Vec::len),
        Some(2),
        "two lcores in the stats: {before}"
    );

    let res = http_gets(&topo, &format!("http://{FNAT_VIP}:80/"), N);
    let by = served_by(&res);
    eprintln!("2 lcores: {N} GETs through FullNAT, all 200; served by {by:?}");
    assert_eq!(by.values().sum::<usize>(), N);

    let after = fresh_stats(&dp);
    let d = |s: &Value, f: &str| vip_counter(s, FNAT_VIP, 80, "tcp", f);
    let (vpk, vfl) = (
        d(&after, "packets") - d(&before, "packets"),
        d(&after, "new_flows") - d(&before, "new_flows"),
    );
    let bs0 = vip_backends(&before, FNAT_VIP, 80, "tcp");
    let bs1 = vip_backends(&after, FNAT_VIP, 80, "tcp");
    let bsum = |bs: &[(String, u64, u64, u64)], k: usize| -> u64 {
        bs.iter().map(|b| [b.1, b.2, b.3][k]).sum()
    };
    let (bpk, bfl) = (bsum(&bs1, 0) - bsum(&bs0, 0), bsum(&bs1, 2) - bsum(&bs0, 2));
    let lc = |s: &Value| -> Vec<(u64, u64, u64)> {
        s["lcores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["lcore"].as_u64().unwrap_or(0),
                    l["rx_packets"].as_u64().unwrap_or(0),
                    l["tx_packets"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let (l0, l1) = (lc(&before), lc(&after));
    let mut rx_total = 0;
    for (a, b) in l0.iter().zip(&l1) {
        eprintln!(
            "lcore {}: rx_packets +{} tx_packets +{}",
            b.0,
            b.1 - a.1,
            b.2 - a.2
        );
        rx_total += b.1 - a.1;
    }
    let hand = |s: &Value| drop_count(s, "handover_full");
    eprintln!(
        "VIP: packets +{vpk} new_flows +{vfl}; backends: packets +{bpk} new_flows +{bfl}; port rx +{rx_total}; \
         handover_full {}; forward: {}",
        hand(&after),
        after["forward"]
    );
    assert_eq!(vfl, N as u64, "one new flow per connection");
    assert_eq!(bfl, vfl, "backends' new flows add up to the VIP's");
    assert_eq!(bpk, vpk, "backends' packets add up to the VIP's");
    assert!(
        rx_total >= vpk,
        "the lcores received {rx_total} packets, fewer than the {vpk} the VIP forwarded"
    );
    dp.assert_running();
    drop(servers);
}

// ---------------------------------------------------------------------------- drops

#[test]
fn forwarding_drops_are_counted() {
    const N: u32 = 5;
    let topo = Topology::up();
    let mut servers = Vec::new();
    for (be, ip) in BACKENDS.iter().zip(BACKEND_IPS) {
        dsr_backend(&topo, be, DSR_VIP);
        servers.push(http_server(&topo, be, DSR_VIP, 80));
        servers.push(http_server(&topo, be, ip, 8080));
    }
    let config = format!(
        "{}{}{}",
        forward_section(true),
        vip(DSR_VIP, 80, "tcp", "dsr", "flow", 80),
        vip(FNAT_VIP, 80, "tcp", "fullnat", "flow", 8080)
    );
    let mut dp = Dataplane::start(&topo, &config);
    let mac = dp.mac();

    // Both VIPs forward; the VIPs and the SNAT address answer ping.
    http_gets(&topo, &format!("http://{DSR_VIP}:80/"), 5);
    http_gets(&topo, &format!("http://{FNAT_VIP}:80/"), 5);
    topo.exec_ok("cli", &["ping", "-c", "2", "-i", "0.2", "-W", "1", DSR_VIP]);
    topo.exec_ok(
        "cli",
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", FNAT_VIP],
    );
    topo.exec_ok("be1", &["ping", "-c", "2", "-i", "0.2", "-W", "1", SNAT_IP]);

    let base = fresh_stats(&dp);
    // Counted by the forwarder or, for frames it does not claim, by the lcore's
    // classifier (fragments carry no ports, so the worker never hands them to the
    // forwarder: they land in the lcore's `ipv4_fragment`, not `forward.drops.fragment`).
    let bad_csum =
        |s: &Value| forward_drop(s, "ipv4_bad_checksum") + drop_count(s, "ipv4_bad_checksum");
    let fragment = |s: &Value| forward_drop(s, "fragment") + drop_count(s, "ipv4_fragment");

    // TTL 1 through FullNAT (a router hop): dropped. Through DSR (an L2 hop): forwarded
    // unchanged, so the backend sees it.
    craft(&topo, &mac, "ttl1", N, FNAT_VIP, 80);
    let filter = format!("dst host {DSR_VIP} and ip[8] = 1");
    let caps: Vec<Capture> = BACKENDS
        .iter()
        .map(|be| Capture::start(&topo, be, &filter, N))
        .collect();
    craft(&topo, &mac, "ttl1", N, DSR_VIP, 80);
    wait_for(
        Duration::from_secs(10),
        "the TTL-1 SYNs to the DSR VIP to reach the backends",
        || {
            let n: usize = caps.iter().map(|c| c.packets().len()).sum();
            if n >= N as usize {
                Ok(())
            } else {
                Err(format!(
                    "{n} of {N} captured; forward drops: {}",
                    dp.try_stats()
                        .map(|s| format_forward_drops(&s))
                        .unwrap_or_default()
                ))
            }
        },
    );
    let seen: Seen = caps
        .into_iter()
        .map(|c| (c.leaf.clone(), c.finish()))
        .collect();
    // Fragments (first and later) to a VIP; a bad IPv4 header checksum to a VIP.
    // af_packet never delivers a fragment: DPDK's af_packet PMD joins its
    // sockets to a PACKET_FANOUT group with PACKET_FANOUT_FLAG_DEFRAG (even with
    // one queue), so the kernel reassembles IPv4 fragments before the ring, and
    // an incomplete datagram waits in its reassembly queue. There the fragments
    // are sent all the same and none may be counted.
    let fragments_expected = if soft_device() == SoftDevice::AfPacket { 0 } else { 2 * u64::from(N) };
    craft(&topo, &mac, "frag_first", N, DSR_VIP, 80);
    craft(&topo, &mac, "frag_later", N, DSR_VIP, 80);
    craft(&topo, &mac, "bad_csum", N, DSR_VIP, 80);
    craft(&topo, &mac, "bad_csum", N, FNAT_VIP, 80);

    let want = [("ttl_exceeded", u64::from(N))];
    dp.wait_stats(
        Duration::from_secs(10),
        "the forwarder to count every crafted frame",
        |s| {
            let mut missing = Vec::new();
            for (r, n) in want {
                let d = forward_drop(s, r) - forward_drop(&base, r);
                if d < n {
                    missing.push(format!("{r} +{d} < {n}"));
                }
            }
            let d = bad_csum(s) - bad_csum(&base);
            if d < 2 * u64::from(N) {
                missing.push(format!("ipv4_bad_checksum +{d} < {}", 2 * N));
            }
            let d = fragment(s) - fragment(&base);
            if d < fragments_expected {
                missing.push(format!("fragment + ipv4_fragment +{d} < {fragments_expected}"));
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{}; forward drops: {}; lcore drops: {}",
                    missing.join("; "),
                    format_forward_drops(s),
                    format_drops(s)
                ))
            }
        },
    );
    let after = fresh_stats(&dp);
    for (r, n) in want {
        assert_eq!(
            forward_drop(&after, r) - forward_drop(&base, r),
            n,
            "forward.drops.{r}: {}",
            format_forward_drops(&after)
        );
    }
    assert_eq!(
        bad_csum(&after) - bad_csum(&base),
        2 * u64::from(N),
        "ipv4_bad_checksum (forwarder + lcores)"
    );
    assert_eq!(
        fragment(&after) - fragment(&base),
        fragments_expected,
        "fragments (forward.drops.fragment + lcores' ipv4_fragment) on {:?}",
        soft_device()
    );
    eprintln!(
        "fragments: forward.drops.fragment +{}, lcores' ipv4_fragment +{}; bad checksums: forwarder +{}, lcores +{}",
        forward_drop(&after, "fragment") - forward_drop(&base, "fragment"),
        drop_count(&after, "ipv4_fragment") - drop_count(&base, "ipv4_fragment"),
        forward_drop(&after, "ipv4_bad_checksum") - forward_drop(&base, "ipv4_bad_checksum"),
        drop_count(&after, "ipv4_bad_checksum") - drop_count(&base, "ipv4_bad_checksum"),
    );
    eprintln!(
        "after the crafted frames: forward drops {} (before: {}); lcore drops {}",
        format_forward_drops(&after),
        format_forward_drops(&base),
        format_drops(&after)
    );
    let ttl1_seen: usize = seen.iter().map(|(_, p)| p.len()).sum();
    eprintln!("TTL-1 SYNs to the DSR VIP captured in the backends: {ttl1_seen} of {N} ({seen:?})");
    assert_eq!(
        ttl1_seen, N as usize,
        "DSR leaves TTL alone: every TTL-1 SYN reaches a backend"
    );
    for (_, pkts) in &seen {
        for (src, _) in pkts {
            assert_eq!(src, CLIENT_IP);
        }
    }

    // Still running and forwarding.
    dp.assert_running();
    let a = http_gets(&topo, &format!("http://{DSR_VIP}:80/"), 10);
    let b = http_gets(&topo, &format!("http://{FNAT_VIP}:80/"), 10);
    eprintln!(
        "after the drops: DSR served by {:?}, FullNAT served by {:?}",
        served_by(&a),
        served_by(&b)
    );
    topo.exec_ok("cli", &["ping", "-c", "1", "-W", "1", DATAPLANE_IP]);
    dp.assert_running();
    drop(servers);
}
