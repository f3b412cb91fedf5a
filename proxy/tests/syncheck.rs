//! At the edge: a SYN costs nothing until it is plausible. Frozen frames
//! (literal bytes, `src/testdata.rs`) are put on the engine's wire by hand:
//! a valid SYN is admitted and a backend connection attempted; the same bytes
//! with a bad checksum, or segments with impossible flags, are dropped and
//! counted before admission, with no backend attempt and no reply.

mod common;
#[path = "../src/testdata.rs"]
mod testdata;

use common::*;
use fulcrum_proxy::EngineCounters;
use smoltcp::time::Duration;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet};
use testdata::{flipped, SEQ_LOW_AT, TCP_FLAGS_AT, TTL_AT, VALID_SYN};

/// Puts `frame` on the wire to the engine, runs 2 s of simulated time.
fn inject(frame: &[u8]) -> Wire {
    let mut w = Setup::new(1).build();
    w.engine_tx_log = Some(Vec::new());
    w.engine_dev.rx.push_back(frame.to_vec());
    w.run_for(Duration::from_secs(2), |_| {});
    w
}

/// TCP segments the engine sent (to anyone).
fn tcp_sent(w: &Wire) -> usize {
    w.engine_tx_log
        .as_ref()
        .unwrap()
        .iter()
        .filter(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            eth.ethertype() == EthernetProtocol::Ipv4
                && Ipv4Packet::new_checked(eth.payload())
                    .unwrap()
                    .next_header()
                    == IpProtocol::Tcp
        })
        .count()
}

fn attempts(w: &Wire) -> u64 {
    w.engine.backend_counters(0, 0).unwrap().attempts
}

/// Nothing spent: no admission, no backend attempt, no connection, no reply
/// (not even a RST), no other counter moved.
fn assert_nothing_spent(w: &Wire, what: &str) {
    let vip = *w.engine.vip_counters(0).unwrap();
    assert_eq!(vip.accepted, 0, "{what}: admitted");
    assert_eq!(attempts(w), 0, "{what}: backend attempted");
    assert_eq!(w.engine.connections(), 0, "{what}: connection held");
    assert_eq!(tcp_sent(w), 0, "{what}: engine answered");
    assert_eq!(
        w.engine.counters().unknown_flow,
        0,
        "{what}: reached the flow lookup"
    );
}

#[test]
fn valid_syn_is_admitted() {
    let w = inject(&VALID_SYN);
    let c: EngineCounters = *w.engine.counters();
    assert_eq!((c.drop_bad_checksum, c.drop_bad_flags), (0, 0));
    assert_eq!(w.engine.vip_counters(0).unwrap().accepted, 1);
    assert!(attempts(&w) >= 1, "no backend connection attempted");
}

#[test]
fn syn_with_bad_tcp_checksum_is_dropped_and_counted() {
    let w = inject(&flipped(SEQ_LOW_AT));
    assert_eq!(w.engine.counters().drop_bad_checksum, 1);
    assert_eq!(w.engine.counters().drop_bad_flags, 0);
    assert_nothing_spent(&w, "bad TCP checksum");
}

#[test]
fn syn_with_bad_ipv4_checksum_is_dropped_and_counted() {
    let w = inject(&flipped(TTL_AT));
    assert_eq!(w.engine.counters().drop_bad_checksum, 1);
    assert_nothing_spent(&w, "bad IPv4 header checksum");
}

/// Impossible flag sets to the VIP, dropped before anything else (the
/// checksum is not even looked at: the flags byte changed, it is wrong).
#[test]
fn impossible_flags_to_the_vip_are_dropped_and_counted() {
    let cases: [(&str, u8); 6] = [
        ("SYN+FIN", 0x03),
        ("SYN+RST", 0x06),
        ("FIN", 0x01),
        ("null", 0x00),
        ("xmas FIN+PSH+URG", 0x29),
        ("SYN+FIN+PSH+URG", 0x2b),
    ];
    for (what, flags) in cases {
        let mut f = VALID_SYN;
        f[TCP_FLAGS_AT] = flags;
        let w = inject(&f);
        assert_eq!(w.engine.counters().drop_bad_flags, 1, "{what}");
        assert_eq!(w.engine.counters().drop_bad_checksum, 0, "{what}");
        assert_nothing_spent(&w, what);
    }
}

/// To the engine's own address (a local port, where backends answer), the
/// same: a null scan is dropped and counted, not answered.
#[test]
fn impossible_flags_to_a_local_port_are_dropped_and_counted() {
    let mut f = VALID_SYN;
    f[TCP_FLAGS_AT] = 0x00;
    f[30..34].copy_from_slice(&ENGINE_IP.octets()); // IPv4 destination
    let w = inject(&f);
    assert_eq!(w.engine.counters().drop_bad_flags, 1);
    assert_nothing_spent(&w, "null scan to a local port");
}

/// Legitimate segments of an unknown connection are not taken for
/// impossible ones: they reach the flow lookup (and are answered with RST
/// by smoltcp, as before), whatever their checksum.
#[test]
fn legitimate_flags_are_not_dropped() {
    for (what, flags) in [
        ("RST", 0x04),
        ("RST+ACK", 0x14),
        ("ACK", 0x10),
        ("FIN+ACK", 0x11),
        ("PSH+ACK", 0x18),
        ("URG+ACK", 0x30),
    ] {
        let mut f = VALID_SYN;
        f[TCP_FLAGS_AT] = flags;
        let w = inject(&f);
        let c = *w.engine.counters();
        assert_eq!((c.drop_bad_flags, c.drop_bad_checksum), (0, 0), "{what}");
        assert_eq!(c.unknown_flow, 1, "{what}");
        assert_eq!(attempts(&w), 0, "{what}");
    }
}
