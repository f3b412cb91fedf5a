//! The software devices the dataplane creates itself: `af_packet` and `af_xdp`
//! on a veth pair (kernel side `P-dp` on the bridge, DPDK side `P-dp-d`),
//! whatever `FULCRUM_SOFT_DEVICE` says for the other tests.
//!
//! Issue 14's failure: `software = { vdev = "net_af_packet0,iface=<veth>" }`
//! on a veth of the bridge saw ARP and SYNs but no connection ever reached a
//! backend. The kernel TCP stacks on the bridge send with transmit checksum
//! offload (CHECKSUM_PARTIAL: the TCP checksum field holds only the
//! pseudo-header sum) and TSO, and a veth hands such skbs to its peer, and so
//! to AF_PACKET's ring and to XDP, unfinished. The dataplane now turns those
//! offloads off on the kernel side of the veth it creates, so the kernel
//! finishes every frame before it crosses; a frame that still arrives
//! unfinished is dropped and counted (`drop_bad_checksum`).
//! [`af_packet_unfinished_checksums_are_counted_drops`] turns the offload back
//! on to show exactly that, and off again to show the cure.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_tests::client;
use fulcrum_tests::servers::{start_backends, start_nginx_backends, Mode};
use fulcrum_tests::vip::*;
use fulcrum_tests::*;

const HTTP_PORT: u16 = 8080;
const ECHO_VIP: &str = "198.18.1.2";
const ECHO_PORT: u16 = 9000;

/// The dataplane on `device` with two proxy VIPs: 198.18.1.1:80 to nginx on
/// the three backends, 198.18.1.2:9000 to echo servers.
fn start_on(topo: &Topology, device: SoftDevice) -> Dataplane {
    let http = three_backends(proxy_vip(VIP_IP, VIP_PORT), HTTP_PORT, [1, 1, 1]);
    let echo = three_backends(proxy_vip(ECHO_VIP, ECHO_PORT), ECHO_PORT, [1, 1, 1]);
    let opts = StartOptions { extra_config: proxy_config(None, &[http, echo]), device: Some(device), ..Default::default() };
    let dp = Dataplane::start_with(topo, opts);
    let says = format!("software mode on {} {}", device.key(), topo.tap());
    assert!(dp.ready_line().contains(&says), "ready line {:?} should say {says:?}", dp.ready_line());
    dp
}

/// `curl http://VIP/` from the client namespace, `seconds` at most: the body,
/// or the failure.
fn curl(topo: &Topology, seconds: u32) -> Result<String, String> {
    let secs = seconds.to_string();
    let out = topo.exec("cli", &["curl", "-sS", "-m", &secs, &format!("http://{VIP_IP}:{VIP_PORT}/")]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(describe(&out))
    }
}

fn bad_checksum_drops(dp: &Dataplane) -> u64 {
    proxy_counter(&dp.stats(), "drop_bad_checksum").unwrap_or(0)
}

/// Waits (bounded) until `drop_bad_checksum` is above `before`.
fn wait_bad_checksum_drops_above(dp: &Dataplane, before: u64, what: &str) {
    dp.wait_stats(Duration::from_secs(10), what, |s| {
        let now = proxy_counter(s, "drop_bad_checksum").unwrap_or(0);
        if now > before {
            Ok(())
        } else {
            Err(format!("drop_bad_checksum {now}, {before} before"))
        }
    });
}

/// Real curl through a proxy VIP, 1 MiB echoed on each of 8 connections
/// (frames of full size both ways, so the kernel segments what its TCP stacks
/// hand down as super-frames), nothing dropped for a checksum, and the veth
/// gone with the dataplane.
fn serves_http_and_bulk(device: SoftDevice) {
    let topo = Topology::up();
    let _nginx = start_nginx_backends(&topo, HTTP_PORT);
    let _echo = start_backends(&topo, ECHO_PORT, Mode::Echo, &[]);
    let mut dp = start_on(&topo, device);
    const REQUESTS: usize = 30;
    for i in 0..REQUESTS {
        let body = curl(&topo, 5).unwrap_or_else(|e| panic!("request {i} through {VIP_IP} on {device:?}: {e}"));
        assert!(["be1", "be2", "be3"].contains(&body.trim()), "request {i}: body {body:?} is no backend's name");
    }
    let echo: SocketAddr = format!("{ECHO_VIP}:{ECHO_PORT}").parse().unwrap();
    let rep = in_netns(&topo.ns("cli"), || client::bulk_echo(echo, 8, 1 << 20, 77, Duration::from_secs(120)));
    assert_eq!((rep.ok, rep.failed), (8, 0), "bulk echo on {device:?}: {:?}", rep.failures);
    assert_eq!(rep.bytes_received, 8 << 20);
    let stats = dp.wait_stats(Duration::from_secs(10), "the VIPs' counters to show every connection", |s| {
        let (http, bulk) = (vip_counter(s, VIP_IP, VIP_PORT, "accepted"), vip_counter(s, ECHO_VIP, ECHO_PORT, "accepted"));
        if http as usize >= REQUESTS && bulk >= 8 {
            Ok(s.clone())
        } else {
            Err(format!("accepted: {http} of {REQUESTS} (http), {bulk} of 8 (echo)"))
        }
    });
    let opened: u64 = BACKEND_IPS.iter().map(|b| backend_counter(&stats, VIP_IP, VIP_PORT, b, "opened")).sum();
    assert_eq!(opened as usize, REQUESTS, "every accepted connection reached a backend\n{}", format_vips(&stats));
    assert_eq!(proxy_counter(&stats, "drop_bad_checksum"), Some(0), "{}", format_vips(&stats));
    let (status, _) = dp.stop_sigint();
    assert!(status.success(), "exit {status}\n{}", dp.log());
    assert!(dp.log().contains("mbufs in use: 0 "), "{}", dp.log());
    let gone = !topo.exec("fab", &["ip", "link", "show", "dev", &topo.tap()]).status.success();
    assert!(gone, "{} still exists after the dataplane exited", topo.tap());
}

#[test]
fn af_packet_serves_http_and_bulk() {
    serves_http_and_bulk(SoftDevice::AfPacket);
}

#[test]
fn af_xdp_serves_http_and_bulk() {
    serves_http_and_bulk(SoftDevice::AfXdp);
}

/// The cause of issue 14's failure, shown on the device it was reported on:
/// with transmit checksum offload back on on the veth's kernel side, the
/// client's SYNs reach the dataplane with the TCP checksum unfinished; each is
/// dropped and counted, and curl times out. Off again, curl works.
#[test]
fn af_packet_unfinished_checksums_are_counted_drops() {
    let topo = Topology::up();
    let _nginx = start_nginx_backends(&topo, HTTP_PORT);
    let dp = start_on(&topo, SoftDevice::AfPacket);
    curl(&topo, 5).expect("a request with the dataplane's offload settings");
    let tap = topo.tap();
    topo.exec_ok("fab", &["ethtool", "-K", &tap, "tx", "on"]);
    let before = bad_checksum_drops(&dp);
    let failed = curl(&topo, 2);
    assert!(failed.is_err(), "a request succeeded with CHECKSUM_PARTIAL frames: {failed:?}");
    wait_bad_checksum_drops_above(&dp, before, "the SYNs with unfinished checksums to be counted");
    let accepted_before = vip_counter(&dp.stats(), VIP_IP, VIP_PORT, "accepted");
    topo.exec_ok("fab", &["ethtool", "-K", &tap, "tx", "off"]);
    let body = curl(&topo, 5).expect("a request once the kernel finishes checksums again");
    assert!(body.starts_with("be"), "{body:?}");
    dp.wait_stats(Duration::from_secs(10), "the request to be accepted", |s| {
        let a = vip_counter(s, VIP_IP, VIP_PORT, "accepted");
        if a > accepted_before {
            Ok(())
        } else {
            Err(format!("accepted {a}"))
        }
    });
}

/// Not only SYNs: a segment of an established connection that reaches the
/// dataplane with its checksum unfinished is dropped and counted too
/// (`drop_bad_checksum`; smoltcp, which verified it before, silently, no
/// longer does). A TCP connection from the client to the echo VIP echoes
/// `a`; with transmit checksum offload turned back on on the veth's kernel
/// side, the client's `b` (and its retransmissions) arrive unfinished and
/// are counted; off again, a retransmission arrives finished and `b` comes
/// back: the connection survived.
#[test]
fn af_packet_unfinished_segments_of_a_connection_are_counted_drops() {
    use std::io::{Read, Write};
    let topo = Topology::up();
    let _echo = start_backends(&topo, ECHO_PORT, Mode::Echo, &[]);
    let dp = start_on(&topo, SoftDevice::AfPacket);
    let echo: SocketAddr = format!("{ECHO_VIP}:{ECHO_PORT}").parse().unwrap();
    let mut stream = in_netns(&topo.ns("cli"), || std::net::TcpStream::connect_timeout(&echo, Duration::from_secs(5)))
        .expect("a connection to the echo VIP");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut byte = [0u8; 1];
    stream.write_all(b"a").unwrap();
    stream.read_exact(&mut byte).expect("the echo of a");
    assert_eq!(&byte, b"a");
    let tap = topo.tap();
    topo.exec_ok("fab", &["ethtool", "-K", &tap, "tx", "on"]);
    let before = bad_checksum_drops(&dp);
    stream.write_all(b"b").unwrap();
    wait_bad_checksum_drops_above(&dp, before, "the connection's unfinished segment to be counted");
    topo.exec_ok("fab", &["ethtool", "-K", &tap, "tx", "off"]);
    stream.read_exact(&mut byte).expect("the echo of b, retransmitted finished");
    assert_eq!(&byte, b"b");
}

/// The veth goes with the process however it ends (SIGKILL included), as a
/// tap does, and a dataplane started again on the same name comes up.
#[test]
fn af_packet_veth_goes_with_a_killed_dataplane() {
    let topo = Topology::up();
    let _nginx = start_nginx_backends(&topo, HTTP_PORT);
    let mut dp = start_on(&topo, SoftDevice::AfPacket);
    let (tap, peer) = (topo.tap(), format!("{}-d", topo.tap()));
    assert!(topo.exec("fab", &["ip", "link", "show", "dev", &peer]).status.success(), "no {peer}");
    dp.stop(Signal::SIGKILL);
    wait_until(Duration::from_secs(10), "the veth of the killed dataplane to disappear", || {
        !topo.exec("fab", &["ip", "link", "show", "dev", &tap]).status.success()
            && !topo.exec("fab", &["ip", "link", "show", "dev", &peer]).status.success()
    });
    drop(dp);
    let _dp = start_on(&topo, SoftDevice::AfPacket);
    wait_until(Duration::from_secs(10), "a request through the restarted dataplane", || curl(&topo, 2).is_ok());
}

/// The kernel's drops at a full af_packet RX ring are counted
/// (`rx_ring_full`, and the kernel's frame count `rx_ring_frames`), which
/// DPDK 22.11's PMD never reads: a full ring once silently lost backends'
/// SYN-ACKs.
///
/// How the ring is made to overflow, reliably: the smallest ring
/// (`af_packet_frames = 16`) and a burst far larger than it, 200 000 frames
/// from `fulcrum-synflood` in the client namespace as fast as it can send
/// them, in `sendmmsg` batches of 64. Each batch crosses the bridge and the
/// veth in the sender's own softirq, into the ring, faster than one lcore
/// (which also backs off when idle, software mode) empties 16 slots; the
/// flooder and the lcore share this machine's two cores. The frames are TCP
/// SYNs to an address that is not the dataplane's (198.18.0.99) but to the
/// port's MAC: the engine drops each (`frames_not_ours`) without answering,
/// so nothing but the ring is exercised.
///
/// Checked: drops are counted (`rx_ring_full` > 0); at rest, the kernel's
/// count of frames offered to the ring (`tp_packets`) is exactly the frames
/// the lcore received plus those counted dropped: nothing lost uncounted,
/// nothing counted twice (the frames the kernel dropped before the ring, in
/// a full backlog on the way, are not the ring's and not compared with the
/// flood's count); the exit report shows the counts; and the service works
/// afterwards (curl through a proxy VIP).
#[test]
fn af_packet_full_rx_ring_drops_are_counted() {
    let topo = Topology::up();
    let _nginx = start_nginx_backends(&topo, HTTP_PORT);
    let http = three_backends(proxy_vip(VIP_IP, VIP_PORT), HTTP_PORT, [1, 1, 1]);
    let extra = format!("{}\n[dataplane.software]\naf_packet_frames = 16\n", proxy_config(None, &[http]));
    let opts = StartOptions { extra_config: extra, device: Some(SoftDevice::AfPacket), ..Default::default() };
    let mut dp = Dataplane::start_with(&topo, opts);
    curl(&topo, 5).expect("a request before the flood");
    let bin = fulcrum_tests::flood::synflood_bin();
    assert!(bin.is_file(), "{} not found: build it with `cargo build --release --workspace`", bin.display());
    const FRAMES: u64 = 200_000;
    let count = FRAMES.to_string();
    let mac = dp.mac();
    let mut flood = topo.spawn(
        "cli",
        &[
            bin.to_str().expect("utf-8 path"),
            "--syn",
            "--dst-mac",
            &mac,
            "--src",
            "198.18.128.0/17",
            "--dst",
            "198.18.0.99",
            "--dport",
            "80",
            "--count",
            &count,
            "--duration",
            "60",
            "--batch",
            "64",
        ],
    );
    let status = flood.wait_timeout(Duration::from_secs(90));
    let out = flood.output();
    let sent = match (status, fulcrum_tests::flood::parse_flood_line(&out)) {
        (Some(s), Some(r)) if s.success() => r.sent,
        _ => panic!("fulcrum-synflood failed ({status:?}):\n{out}"),
    };
    assert_eq!(sent, FRAMES, "{out}");
    let (frames, received, dropped) = dp.wait_stats(
        Duration::from_secs(30),
        "the ring's counts to add up at rest: kernel frames = received + rx_ring_full",
        |s| {
            let frames = lcore_sum(s, "rx_ring_frames");
            let received = lcore_sum(s, "rx_packets");
            let dropped = drop_count(s, "rx_ring_full");
            if dropped > 0 && frames == received + dropped {
                Ok((frames, received, dropped))
            } else {
                Err(format!("rx_ring_frames {frames}, rx_packets {received}, rx_ring_full {dropped}"))
            }
        },
    );
    eprintln!(
        "flood of {FRAMES} frames into a 16-frame ring: the kernel offered {frames}, the lcore received \
         {received}, {dropped} counted dropped full"
    );
    let body = curl(&topo, 5).expect("a request after the flood");
    assert!(["be1", "be2", "be3"].contains(&body.trim()), "{body:?}");
    let (status, _) = dp.stop_sigint();
    assert!(status.success(), "exit {status}\n{}", dp.log());
    let log = dp.log();
    let port_line = log.lines().find(|l| l.contains("af_packet RX rings:")).unwrap_or_else(|| panic!("{log}"));
    assert!(port_line.contains("dropped full (rx_ring_full)"), "{port_line}");
    assert!(log.lines().any(|l| l.contains("lcore 0:") && l.contains("rx_ring_full=")), "{log}");
}
