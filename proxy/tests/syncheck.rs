//! At the edge: a SYN costs nothing until it is plausible. Frozen frames
//! (literal bytes, `src/testdata.rs`) are put on the engine's wire by hand:
//! a valid SYN is admitted and a backend connection attempted; the same bytes
//! with a bad checksum, or segments with impossible flags, are dropped and
//! counted before admission, with no backend attempt and no reply. Every
//! other segment is verified the same way (smoltcp does not verify again):
//! a corrupted data segment of an established connection is dropped and
//! counted, the intact one is delivered.

mod common;
#[path = "../src/testdata.rs"]
mod testdata;

use common::*;
use fulcrum_proxy::EngineCounters;
use smoltcp::time::Duration;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket};
use testdata::{flipped, SEQ_LOW_AT, TCP_FLAGS_AT, TTL_AT, VALID_SYN};

/// [`VALID_SYN`] with the TCP flags `flags` and its TCP checksum made right
/// again.
fn with_flags(flags: u8) -> [u8; 60] {
    let mut f = VALID_SYN;
    f[TCP_FLAGS_AT] = flags;
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    let (src, dst, end) = (ip.src_addr(), ip.dst_addr(), 14 + usize::from(ip.total_len()));
    let mut tcp = TcpPacket::new_unchecked(&mut f[14 + 20..end]);
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    f
}

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
/// impossible ones: with good checksums they reach the flow lookup (and are
/// answered with RST by smoltcp, as before); with the checksum left as it
/// was for the SYN (wrong now), each is a bad checksum.
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
        let w = inject(&with_flags(flags));
        let c = *w.engine.counters();
        assert_eq!((c.drop_bad_flags, c.drop_bad_checksum), (0, 0), "{what}");
        assert_eq!(c.unknown_flow, 1, "{what}");
        assert_eq!(attempts(&w), 0, "{what}");
        let mut f = VALID_SYN;
        f[TCP_FLAGS_AT] = flags;
        let w = inject(&f);
        let c = *w.engine.counters();
        assert_eq!((c.drop_bad_flags, c.drop_bad_checksum, c.unknown_flow), (0, 1, 0), "{what}, bad checksum");
        assert_nothing_spent(&w, what);
    }
}

/// An established connection: the client's next data segment, taken off
/// the wire, reaches the engine first with a payload byte flipped (TCP
/// checksum wrong), then with the TTL flipped (IPv4 header checksum wrong):
/// each is dropped and counted before smoltcp, which would not verify it
/// again, and nothing is relayed to the backend nor acknowledged. The
/// intact segment then passes and its data reaches the backend.
#[test]
fn corrupted_segments_of_an_established_connection_are_dropped_and_counted() {
    let mut w = Setup::new(1).build();
    let s = w.client().connect((VIP, VIP_PORT), 40000);
    let up = w.run_until(Duration::from_secs(2), |w| {
        w.client().sock(s).may_send() && !w.backend(0).connections().is_empty()
    });
    assert!(up, "connection through the engine not established");
    w.run_for(Duration::from_millis(50), |_| {});
    assert_eq!(w.engine.counters().drop_bad_checksum, 0);
    w.client().sock(s).send_slice(b"hello\n").unwrap();
    let now = w.now;
    w.client().poll(now, true);
    let sent: Vec<Vec<u8>> = w.client().dev.tx.drain(..).collect();
    assert_eq!(sent.len(), 1, "one data segment");
    let good = sent[0].clone();
    let payload_at = good.len() - 1; // the '\n': frames here carry no padding
    assert_eq!(good[payload_at], b'\n');
    for (i, at) in [payload_at, TTL_AT].into_iter().enumerate() {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        w.engine_dev.rx.push_back(bad);
        w.engine.poll(now, &mut w.engine_dev);
        assert_eq!(w.engine.counters().drop_bad_checksum, i as u64 + 1, "byte {at} flipped");
        assert!(w.engine_dev.tx.is_empty(), "byte {at} flipped: the engine relayed or acknowledged it");
    }
    w.engine_dev.rx.push_back(good);
    let mut got = Vec::new();
    let delivered = w.run_until(Duration::from_secs(2), |w| {
        for b in w.backend(0).connections() {
            read_all(w.backend(0).sock(b), &mut got);
        }
        got.ends_with(b"hello\n")
    });
    assert!(delivered, "the intact segment's data did not reach the backend: {got:?}");
    assert_eq!(w.engine.counters().drop_bad_checksum, 2);
}
