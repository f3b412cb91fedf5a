//! Jumbo frames: `[dataplane] mtu = 9000` on a fabric whose links all carry
//! 9000-byte packets (`topology.sh up --mtu 9000`), on af_packet (its ring
//! frames and the packet buffers grow to 10 KiB, the dataplane gives its veth
//! the MTU), the one software device of DPDK 22.11 here that can carry them;
//! tap and af_xdp refuse to start, saying why.
//!
//! What shows that frames really were jumbo, not merely that traffic flowed:
//! the kernel side of the dataplane's interface counts every frame and byte
//! that crossed it, and a mean frame above 1514 bytes (the largest frame at
//! MTU 1500) is impossible without frames above 1514. The proxy's own TCP
//! (smoltcp) must have advertised and used MSS 8960 on both sides for it; the
//! DSR VIP's counters show the forwarder passing client segments of that
//! size unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_model::{Affinity, Backend, Mode as VipMode};
use fulcrum_tests::client;
use fulcrum_tests::forward_util::{dsr_backend, fresh_stats, iperf3, iperf3_server, iperf3_tcp_received, vip_counter as fwd_counter};
use fulcrum_tests::servers::{start_backends, Mode};
use fulcrum_tests::vip::*;
use fulcrum_tests::*;

const MTU: u16 = 9000;
/// The largest frame at MTU 1500.
const STANDARD_FRAME: u64 = 1514;
const ECHO_VIP: &str = "198.18.1.2";
const ECHO_PORT: u16 = 9000;
const DSR_VIP: &str = "198.18.1.3";

/// Frames and bytes that crossed the dataplane's interface in direction `dir`
/// of its kernel side (`rx`: sent by the dataplane; `tx`: sent to it).
fn crossed(topo: &Topology, dir: &str) -> (u64, u64) {
    let get = |field| iface_stat(topo, "fab", &topo.tap(), dir, field).unwrap_or_else(|| panic!("{dir} {field} of {}", topo.tap()));
    (get("packets"), get("bytes"))
}

fn mean_frame(before: (u64, u64), after: (u64, u64)) -> u64 {
    (after.1 - before.1) / (after.0 - before.0).max(1)
}

fn jumbo_frames_through_proxy_and_dsr(device: SoftDevice, mtu: u16) {
    let topo = Topology::up_mtu(mtu);
    let _echo = start_backends(&topo, ECHO_PORT, Mode::Echo, &[]);
    let mut iperf = Vec::new();
    for be in ["be1", "be2", "be3"] {
        dsr_backend(&topo, be, DSR_VIP);
        iperf.push(iperf3_server(&topo, be, DSR_VIP));
    }
    let echo = three_backends(proxy_vip(ECHO_VIP, ECHO_PORT), ECHO_PORT, [1, 1, 1]);
    let mut dsr = fulcrum_model::Vip::new(DSR_VIP.parse().unwrap(), 5201, VipMode::Dsr);
    // iperf3's control and data connections must meet the same server.
    dsr.affinity = Affinity::Client;
    for ip in BACKEND_IPS {
        dsr.backends.push(Backend::new(ip.parse().unwrap(), 5201, 1));
    }
    let extra = format!("[dataplane]\nmtu = {mtu}\n[forward]\nconntrack_entries = 65536\n{}", vips_toml(&[echo, dsr]));
    let opts = StartOptions { extra_config: extra, device: Some(device), ..Default::default() };
    let mut dp = Dataplane::start_with(&topo, opts);
    assert!(dp.ready_line().contains(&format!(", mtu {mtu},")), "{}", dp.ready_line());
    let iface_mtu = topo.exec_ok("fab", &["cat", &format!("/sys/class/net/{}/mtu", topo.tap())]);
    assert_eq!(iface_mtu.trim(), mtu.to_string(), "the dataplane's interface {} on {device:?}", topo.tap());

    // Proxy: 8 connections echo 2 MiB each, every byte checked.
    let before = (crossed(&topo, "rx"), crossed(&topo, "tx"));
    let addr: SocketAddr = format!("{ECHO_VIP}:{ECHO_PORT}").parse().unwrap();
    let rep = in_netns(&topo.ns("cli"), || client::bulk_echo(addr, 8, 2 << 20, 9, Duration::from_secs(120)));
    assert_eq!((rep.ok, rep.failed), (8, 0), "bulk echo at MTU {mtu} on {device:?}: {:?}", rep.failures);
    assert_eq!(rep.bytes_received, 16 << 20);
    let after = (crossed(&topo, "rx"), crossed(&topo, "tx"));
    let (sent, received) = (mean_frame(before.0, after.0), mean_frame(before.1, after.1));
    eprintln!("proxy on {device:?} at MTU {mtu}: mean frame {sent} bytes sent by the dataplane, {received} received");
    assert!(sent > STANDARD_FRAME, "the dataplane sent no jumbo frames: mean {sent} bytes");
    assert!(received > STANDARD_FRAME, "the dataplane received no jumbo frames: mean {received} bytes");

    // DSR: an iperf3 upload's segments pass the forwarder whole.
    let s0 = fresh_stats(&dp);
    let up = iperf3(&topo, DSR_VIP, &["-n", "8M"]);
    let (bytes, bps) = iperf3_tcp_received(&up);
    // (iperf3's receiver stops counting when the sender says it is done.)
    assert!(bytes > 1 << 20, "iperf3 through the DSR VIP: the backend received {bytes} bytes");
    let s1 = fresh_stats(&dp);
    let packets = fwd_counter(&s1, DSR_VIP, 5201, "tcp", "packets") - fwd_counter(&s0, DSR_VIP, 5201, "tcp", "packets");
    let vip_bytes = fwd_counter(&s1, DSR_VIP, 5201, "tcp", "bytes") - fwd_counter(&s0, DSR_VIP, 5201, "tcp", "bytes");
    let mean = vip_bytes / packets.max(1);
    eprintln!("DSR on {device:?} at MTU {mtu}: {packets} packets, mean {mean} bytes, {:.0} Mbit/s", bps / 1e6);
    assert!(mean > STANDARD_FRAME, "the forwarder passed no jumbo packets: mean {mean} bytes");

    assert_eq!(drop_count(&dp.stats(), "tx_no_mbuf"), 0, "{}", format_drops(&dp.stats()));
    dp.assert_running();
    let (status, _) = dp.stop_sigint();
    assert!(status.success(), "dataplane exit: {status:?}\n{}", tail(dp.log_path(), 20));
    drop(iperf);
}

#[test]
fn jumbo_frames_on_af_packet() {
    jumbo_frames_through_proxy_and_dsr(SoftDevice::AfPacket, MTU);
}

/// A device that cannot carry the MTU refuses to start, saying which
/// figures are wrong, instead of dropping big frames later: DPDK 22.11's
/// net_tap declares 1522-byte frames at most (and its transmit drops anything
/// longer than its MTU allows); its af_xdp keeps each packet buffer in one
/// page of its UMEM, which the buffers of frames above 1514 bytes outgrow
/// (refused by the configuration check, before EAL starts).
#[test]
fn tap_and_af_xdp_refuse_jumbo_frames_with_the_figures() {
    let topo = Topology::up_mtu(MTU);
    let says = [
        (SoftDevice::Tap, format!("MTU {MTU} requested, the device takes 46 to 1504 (its largest frame: 1522 bytes)")),
        (SoftDevice::AfXdp, format!("dataplane.mtu: {MTU} with af_xdp")),
    ];
    for (device, says) in says {
        let opts = StartOptions {
            extra_config: format!("[dataplane]\nmtu = {MTU}\n"),
            device: Some(device),
            attach: false,
            ..Default::default()
        };
        let log = Dataplane::start_failing(&topo, opts);
        let line = log.lines().find(|l| l.contains(&says)).unwrap_or_else(|| panic!("{device:?}: no {says:?} in\n{log}"));
        eprintln!("{device:?}: {line}");
    }
    assert!(Topology::dataplane_leftovers(topo.prefix()).is_empty(), "{:?}", Topology::dataplane_leftovers(topo.prefix()));
}
