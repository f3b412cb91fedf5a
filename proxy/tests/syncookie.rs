//! SYN cookies end to end through the engine: crafted SYNs and ACKs (and
//! real smoltcp clients) on the in-process wire. In flood mode a SYN gets a
//! SYN-ACK whose sequence number is a cookie and costs the engine nothing; the
//! ACK that returns it becomes an established connection relaying to a
//! backend; forged, expired and foreign cookies are reset; half-open
//! connections below the threshold time out.

mod common;
#[path = "../src/testdata.rs"]
mod testdata;

use std::net::Ipv4Addr;

use common::*;
use fulcrum_proxy::syncookie::{
    emit_tcp, encode, epoch_of, frame_len, mss_index, ts_decode, window_shift, EpochKey, Flow,
    Keys, Seed, TsOptions,
};
use fulcrum_proxy::{SynCookies, VipCounters};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, IpAddress, Ipv4Packet, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, TcpTimestampRepr,
};
use testdata::VALID_SYN;

const SEED: Seed = Seed([0x5a; 32]);
/// A client no host on the wire owns: what the engine sends it is only logged.
const GHOST_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x99]);
const ENGINE_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
/// Engine buffers (64 KiB): the client socket's window-scale shift.
const BUFFER: usize = 64 * 1024;

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_ms() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u32
}

fn setup(mode: SynCookies, seed: Seed) -> Setup {
    let mut s = Setup::new(1);
    s.config.syn_cookies = mode;
    s.config.syn_cookie_seed = Some(seed);
    s.config.buffer_size = BUFFER;
    s
}

fn vip(w: &Wire) -> VipCounters {
    *w.engine.vip_counters(0).unwrap()
}

fn attempts(w: &Wire) -> u64 {
    w.engine.backend_counters(0, 0).unwrap().attempts
}

/// TCP options of a crafted client segment.
#[derive(Clone, Copy, Default)]
struct Opts {
    mss: Option<u16>,
    wscale: Option<u8>,
    sack: bool,
    ts: Option<(u32, u32)>,
}

/// A segment from a ghost client (`GHOST_MAC`, `ip:port`) to the VIP.
fn client_frame(
    ip: Ipv4Addr,
    port: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    o: Opts,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: port,
        dst_port: VIP_PORT,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64240,
        window_scale: o.wscale,
        max_seg_size: o.mss,
        sack_permitted: o.sack,
        sack_ranges: [None; 3],
        timestamp: o.ts.map(|(v, e)| TcpTimestampRepr::new(v, e)),
        payload,
    };
    let mut buf = vec![0; frame_len(&repr)];
    let caps = ChecksumCapabilities::default();
    emit_tcp(&mut buf, GHOST_MAC, ENGINE_MAC, ip, VIP, &repr, &caps);
    buf
}

/// A segment the engine sent: destination MAC, IPv4 source/destination, TCP.
struct Sent {
    mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tcp: TcpRepr<'static>,
    payload: Vec<u8>,
}

fn parse_sent(frame: &[u8]) -> Option<Sent> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let t = TcpPacket::new_checked(ip.payload()).ok()?;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let caps = ChecksumCapabilities::default();
    let r = TcpRepr::parse(&t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps)
        .expect("engine frames have good checksums");
    let payload = r.payload.to_vec();
    let tcp = TcpRepr { payload: &[], ..r };
    Some(Sent {
        mac: eth.dst_addr(),
        src,
        dst,
        tcp,
        payload,
    })
}

/// Polls the engine once with `frame`; returns the TCP segments it sent to
/// ghost clients (frames for the wire's hosts stay queued for them).
fn feed(w: &mut Wire, frame: Vec<u8>) -> Vec<Sent> {
    w.engine_dev.rx.push_back(frame);
    w.engine.poll(w.now, &mut w.engine_dev);
    let (ghost, hosts): (Vec<_>, Vec<_>) = w
        .engine_dev
        .tx
        .drain(..)
        .partition(|f| EthernetFrame::new_unchecked(&f[..]).dst_addr() == GHOST_MAC);
    w.engine_dev.tx.extend(hosts);
    ghost.iter().filter_map(|f| parse_sent(f)).collect()
}

/// Tells the engine (by an ARP reply) that `ip` is at `GHOST_MAC`, as a
/// client's ARP would have: the engine can then answer it with RST.
fn introduce_ghost(w: &mut Wire, ip: Ipv4Addr) {
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetProtocol, EthernetRepr};
    let mut buf = vec![0u8; 42];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: GHOST_MAC,
        dst_addr: ENGINE_MAC,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: GHOST_MAC,
        source_protocol_addr: ip,
        target_hardware_addr: ENGINE_MAC,
        target_protocol_addr: ENGINE_IP,
    }
    .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    w.engine_dev.rx.push_back(buf);
    w.engine.poll(w.now, &mut w.engine_dev);
}

/// Sends a ghost SYN, returns the engine's SYN-ACK.
fn cookie_synack(w: &mut Wire, ip: Ipv4Addr, port: u16, isn: u32, o: Opts) -> Sent {
    let mut sent = feed(
        w,
        client_frame(ip, port, TcpControl::Syn, isn, None, o, &[]),
    );
    assert_eq!(sent.len(), 1, "one SYN-ACK");
    let s = sent.pop().unwrap();
    assert_eq!(s.tcp.control, TcpControl::Syn);
    assert_eq!(s.tcp.ack_number, Some(TcpSeqNumber(isn as i32) + 1));
    s
}

fn flow(ip: Ipv4Addr, port: u16) -> Flow {
    Flow {
        client: ip,
        vip: VIP,
        client_port: port,
        vip_port: VIP_PORT,
    }
}

/// (a) `always`: the literal SYN gets a SYN-ACK whose sequence number is a
/// valid cookie, with MSS only (the SYN has no timestamp), to the SYN's
/// source MAC; the engine holds nothing.
#[test]
fn always_mode_answers_a_literal_syn_with_a_cookie_and_keeps_nothing() {
    let mut w = setup(SynCookies::Always, SEED).build();
    w.engine_dev.rx.push_back(VALID_SYN.to_vec());
    w.engine.poll(w.now, &mut w.engine_dev);
    let sent: Vec<Sent> = w
        .engine_dev
        .tx
        .drain(..)
        .filter_map(|f| parse_sent(&f))
        .collect();
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert_eq!(
        s.mac,
        EthernetAddress([2, 0, 0, 0, 0, 0x0a]),
        "to the SYN's source MAC"
    );
    assert_eq!((s.src, s.dst), (VIP, CLIENT_IP));
    assert_eq!(s.tcp.control, TcpControl::Syn);
    assert_eq!(s.tcp.ack_number, Some(TcpSeqNumber(0x1234_5679)));
    assert_eq!(s.tcp.max_seg_size, Some(1460));
    assert_eq!(s.tcp.window_len, 65535);
    assert_eq!(
        (s.tcp.window_scale, s.tcp.sack_permitted, s.tcp.timestamp),
        (None, false, None)
    );
    let cookie = s.tcp.seq_number.0 as u32;
    let keys = Keys::new(SEED, unix_secs());
    assert_eq!(
        keys.check(&flow(CLIENT_IP, 40000), 0x1234_5678, cookie),
        Some(1460)
    );

    let v = vip(&w);
    assert_eq!(
        (v.syns, v.cookies_sent, v.accepted, v.half_open),
        (1, 1, 0, 0)
    );
    assert_eq!(w.engine.connections(), 0);
    assert_eq!(attempts(&w), 0, "no backend SYN");
    assert!(
        w.engine.snapshot()[0].flood_since.is_some(),
        "always: flood mode on"
    );
}

/// (a) The options: window scale (the client socket's shift) and SACK only
/// with a timestamp, the options coded in TSval, TSecr echoing the client.
#[test]
fn cookie_synack_options_follow_the_clients() {
    let mut w = setup(SynCookies::Always, SEED).build();
    let ip = Ipv4Addr::new(198, 18, 0, 99);
    let ts = Opts {
        mss: Some(1400),
        wscale: Some(7),
        sack: true,
        ts: Some((777, 0)),
    };
    let before = now_ms();
    let s = cookie_synack(&mut w, ip, 1000, 5, ts);
    let after = now_ms();
    assert_eq!(s.tcp.window_scale, Some(window_shift(BUFFER)));
    assert_eq!(window_shift(BUFFER), 1);
    assert!(s.tcp.sack_permitted);
    let t = s.tcp.timestamp.expect("timestamp echoed");
    assert_eq!(t.tsecr, 777);
    assert_eq!(
        ts_decode(t.tsval),
        Some(TsOptions {
            wscale: Some(7),
            sack: true
        })
    );
    assert!(
        after.wrapping_sub(t.tsval) as i32 >= 0,
        "TSval ahead of the socket clock"
    );
    assert!(
        t.tsval.wrapping_sub((before & !0x3f).wrapping_sub(64)) as i32 >= 0,
        "TSval too old"
    );
    let keys = Keys::new(SEED, unix_secs());
    assert_eq!(
        keys.check(&flow(ip, 1000), 5, s.tcp.seq_number.0 as u32),
        Some(1300)
    );

    // No timestamp: neither window scale nor SACK, whatever was offered.
    let s = cookie_synack(&mut w, ip, 1001, 5, Opts { ts: None, ..ts });
    assert_eq!(
        (s.tcp.window_scale, s.tcp.sack_permitted, s.tcp.timestamp),
        (None, false, None)
    );
    // Timestamp without window scale: SACK yes, window scale no.
    let s = cookie_synack(&mut w, ip, 1002, 5, Opts { wscale: None, ..ts });
    assert_eq!((s.tcp.window_scale, s.tcp.sack_permitted), (None, true));
    assert_eq!(
        ts_decode(s.tcp.timestamp.unwrap().tsval).unwrap().wscale,
        None
    );
    assert_eq!(w.engine.connections(), 0);
}

/// Opens one connection from a real smoltcp client through the cookie path
/// and exchanges a line with the backend; checks nothing was reset.
fn real_client_exchange(timestamps: bool, client_buffer: usize) {
    let mut w = setup(SynCookies::Always, SEED).build();
    w.client().set_buffer(client_buffer);
    let sock = w.client().connect((VIP, VIP_PORT), 40100);
    if timestamps {
        w.client()
            .sock(sock)
            .set_tsval_generator(Some(|| 4_000_000));
    }
    w.engine_tx_log = Some(Vec::new());
    let mut ex = Exchange::new(0, vec![(40100, sock)]);
    let got = ex_run(&mut w, &mut ex);
    assert_eq!(got, "0:hello from 40100\n");
    let v = vip(&w);
    assert_eq!(
        (v.cookies_sent, v.cookies_validated, v.cookies_rejected),
        (1, 1, 0)
    );
    assert_eq!((v.client_resets, v.backend_resets, v.half_open), (0, 0, 0));
    let log = w.engine_tx_log.take().unwrap();
    let to_client: Vec<Sent> = log
        .iter()
        .filter_map(|f| parse_sent(f))
        .filter(|s| s.dst == CLIENT_IP)
        .collect();
    assert!(
        to_client.iter().all(|s| s.tcp.control != TcpControl::Rst),
        "engine reset the client"
    );
    // One SYN-ACK (the cookie); every later segment continues its sequence.
    let synacks: Vec<_> = to_client
        .iter()
        .filter(|s| s.tcp.control == TcpControl::Syn)
        .collect();
    assert_eq!(synacks.len(), 1);
    let isn = synacks[0].tcp.seq_number;
    let data = to_client
        .iter()
        .find(|s| !s.payload.is_empty())
        .expect("response data");
    assert_eq!(
        data.tcp.seq_number,
        isn + 1,
        "client socket's ISN is the cookie"
    );
    assert_eq!(data.tcp.timestamp.is_some(), timestamps);
    settle(&mut w);
}

/// Runs an exchange (backend 0 serving lines) to completion; the response.
fn ex_run(w: &mut Wire, ex: &mut Exchange) -> String {
    let mut seen = std::collections::HashMap::new();
    let ok = w.run_until(Duration::from_secs(20), |w| {
        let done = ex.drive(w);
        serve_lines(w, 1, &mut seen);
        done
    });
    assert!(ok, "exchange did not complete");
    String::from_utf8(ex.got[0].clone()).unwrap()
}

/// (b) A real smoltcp client (it checks sequence numbers, windows and, with
/// timestamps on, PAWS for real) through the cookie path, relaying both ways.
#[test]
fn real_client_through_a_cookie_with_timestamps_and_window_scale_7() {
    // 4 MiB receive buffer: smoltcp offers window scale 7.
    real_client_exchange(true, 4 << 20);
}

#[test]
fn real_client_through_a_cookie_without_timestamps() {
    real_client_exchange(false, 256 * 1024);
}

/// (b) Crafted: the ACK carries the request; window scale none or 7; with
/// and without timestamps. The engine's segments continue the cookie's
/// sequence, acknowledge the payload and advertise their window with the
/// shift the SYN-ACK announced.
#[test]
fn cookie_ack_with_payload_relays_both_ways() {
    for (i, o) in [
        Opts {
            mss: Some(1460),
            ..Opts::default()
        },
        Opts {
            mss: Some(1460),
            wscale: Some(7),
            sack: true,
            ts: Some((1000, 0)),
        },
        Opts {
            mss: Some(1460),
            wscale: None,
            sack: false,
            ts: Some((1000, 0)),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut w = setup(SynCookies::Always, SEED).build();
        let ip = Ipv4Addr::new(198, 18, 0, 99);
        let port = 2000 + i as u16;
        let isn = 0xffff_fff0;
        let synack = cookie_synack(&mut w, ip, port, isn, o);
        let cookie = synack.tcp.seq_number;
        let ts = synack.tcp.timestamp.map(|t| (1001, t.tsval));
        let ack = client_frame(
            ip,
            port,
            TcpControl::Psh,
            isn.wrapping_add(1),
            Some((cookie + 1).0 as u32),
            Opts {
                ts,
                ..Opts::default()
            },
            b"hello\n",
        );
        w.engine_tx_log = Some(Vec::new());
        w.engine_dev.rx.push_back(ack);
        let mut seen = std::collections::HashMap::new();
        let ok = w.run_until(Duration::from_secs(5), |w| {
            serve_lines(w, 1, &mut seen);
            w.engine_tx_log
                .as_ref()
                .unwrap()
                .iter()
                .filter_map(|f| parse_sent(f))
                .any(|s| !s.payload.is_empty() && s.dst == ip)
        });
        assert!(
            ok,
            "case {i}: no response to the client: {:?}, seen {seen:?}",
            vip(&w)
        );
        assert_eq!(
            seen.values().next().unwrap(),
            b"hello\n",
            "case {i}: backend got the ACK's payload"
        );
        let v = vip(&w);
        assert_eq!(
            (v.cookies_validated, v.accepted, v.half_open),
            (1, 1, 0),
            "case {i}"
        );
        let to_client: Vec<Sent> = w
            .engine_tx_log
            .take()
            .unwrap()
            .iter()
            .filter_map(|f| parse_sent(f))
            .filter(|s| s.dst == ip)
            .collect();
        assert!(
            to_client.iter().all(|s| s.tcp.control != TcpControl::Rst),
            "case {i}: RST"
        );
        let data = to_client.iter().find(|s| !s.payload.is_empty()).unwrap();
        assert_eq!(data.payload, b"0:hello\n");
        assert_eq!(data.tcp.seq_number, cookie + 1, "case {i}: ISN = cookie");
        assert_eq!(
            data.tcp.ack_number,
            Some(TcpSeqNumber(isn.wrapping_add(7) as i32)),
            "case {i}: payload acknowledged"
        );
        assert_eq!(data.mac, GHOST_MAC, "case {i}: to whom it came from");
        assert_eq!(data.tcp.timestamp.is_some(), ts.is_some(), "case {i}");
        if let Some(t) = data.tcp.timestamp {
            assert_eq!(t.tsecr, 1001, "case {i}: echoes the ACK's TSval");
            assert!(
                t.tsval.wrapping_sub(synack.tcp.timestamp.unwrap().tsval) as i32 >= 0,
                "case {i}: TSval went back"
            );
        }
        // Window: scaled by the shift announced in the SYN-ACK iff both sides
        // agreed on scaling (the socket computed the same shift).
        let shift = if synack.tcp.window_scale.is_some() {
            window_shift(BUFFER)
        } else {
            0
        };
        let window = usize::from(data.tcp.window_len) << shift;
        assert!(
            window > BUFFER / 2 && window <= BUFFER,
            "case {i}: window {window} (field {}, shift {shift})",
            data.tcp.window_len
        );
        if shift == 0 {
            assert_eq!(data.tcp.window_len, u16::MAX, "case {i}: unscaled window");
        }
    }
}

/// (c) auto: spoofed SYNs; the first `threshold` become half-open
/// connections, later ones get cookies and cost nothing; once the half-open
/// ones time out (f: counted, both sides aborted) and a second passes with
/// few SYNs, flood mode ends.
#[test]
fn auto_mode_turns_on_at_the_threshold_and_off_after_a_quiet_second() {
    const THRESHOLD: u32 = 8;
    let mut s = setup(SynCookies::Auto, SEED);
    s.config.syn_cookie_threshold = THRESHOLD;
    s.config.half_open_timeout = std::time::Duration::from_secs(2);
    let mut w = s.build();
    let spoofed = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 100)) + i);
    for i in 0..THRESHOLD {
        w.engine_dev.rx.push_back(client_frame(
            spoofed(i),
            3000,
            TcpControl::Syn,
            i,
            None,
            Opts::default(),
            &[],
        ));
    }
    // Let the half-open connections reach their backend (SYN-ACKs released to nobody).
    w.run_until(Duration::from_millis(50), |_| false);
    assert_eq!(w.engine.connections(), THRESHOLD as usize);
    assert_eq!(vip(&w).half_open, u64::from(THRESHOLD));
    assert_eq!(attempts(&w), u64::from(THRESHOLD));
    assert!(w.engine.snapshot()[0].flood_since.is_none());
    for i in THRESHOLD..5 * THRESHOLD {
        w.engine_dev.rx.push_back(client_frame(
            spoofed(i),
            3000,
            TcpControl::Syn,
            i,
            None,
            Opts::default(),
            &[],
        ));
    }
    w.run_until(Duration::from_millis(50), |_| false);
    let v = vip(&w);
    assert_eq!(v.syns, u64::from(5 * THRESHOLD));
    assert_eq!(v.cookies_sent, u64::from(4 * THRESHOLD));
    assert_eq!(
        (v.accepted, v.half_open),
        (u64::from(THRESHOLD), u64::from(THRESHOLD))
    );
    assert_eq!(
        w.engine.connections(),
        THRESHOLD as usize,
        "connections stopped growing"
    );
    assert_eq!(
        attempts(&w),
        u64::from(THRESHOLD),
        "backend attempts stopped growing"
    );
    let since = w.engine.snapshot()[0].flood_since.expect("flood mode on");

    // (f) The half-open connections time out, both sides aborted.
    let ok = w.run_until(Duration::from_secs(3), |w| w.engine.connections() == 0);
    assert!(ok, "half-open connections did not time out");
    let v = vip(&w);
    assert_eq!(
        (v.drop_half_open_timeout, v.half_open),
        (u64::from(THRESHOLD), 0)
    );
    w.run_until(Duration::from_millis(20), |_| false);
    let backend_open = w
        .backend(0)
        .connections()
        .into_iter()
        .filter(|&s| {
            w.hosts[1].sets[s.shard]
                .get::<tcp::Socket>(s.handle)
                .state()
                == tcp::State::Established
        })
        .count();
    assert_eq!(backend_open, 0, "backend side not reset");
    // Spoofed SYNs kept coming at a flood rate meanwhile? Not here: quiet, so
    // flood mode ends within two ticks.
    let ok = w.run_until(Duration::from_secs(3), |w| {
        w.engine.snapshot()[0].flood_since.is_none()
    });
    assert!(ok, "flood mode did not end");
    assert!(w.now > since);
    // Below the threshold again: a SYN is admitted as before.
    w.engine_dev.rx.push_back(client_frame(
        spoofed(99),
        3000,
        TcpControl::Syn,
        1,
        None,
        Opts::default(),
        &[],
    ));
    w.step();
    assert_eq!(vip(&w).accepted, u64::from(THRESHOLD) + 1);
}

/// (c) Hysteresis: as long as SYNs keep coming at `threshold` per second,
/// flood mode stays on even after the half-open connections are gone.
#[test]
fn flood_mode_holds_while_syns_keep_coming() {
    const THRESHOLD: u32 = 4;
    let mut s = setup(SynCookies::Auto, SEED);
    s.config.syn_cookie_threshold = THRESHOLD;
    s.config.half_open_timeout = std::time::Duration::from_millis(500);
    let mut w = s.build();
    let mut n = 0u32;
    let mut syn = |w: &mut Wire| {
        n += 1;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 100)) + n);
        w.engine_dev.rx.push_back(client_frame(
            ip,
            3000,
            TcpControl::Syn,
            n,
            None,
            Opts::default(),
            &[],
        ));
    };
    for _ in 0..=THRESHOLD {
        syn(&mut w);
    }
    w.step();
    assert!(w.engine.snapshot()[0].flood_since.is_some());
    // 4 s at 10 SYNs per second (above the threshold of 4).
    for _ in 0..40 {
        syn(&mut w);
        w.run_until(Duration::from_millis(100), |_| false);
        assert!(
            w.engine.snapshot()[0].flood_since.is_some(),
            "flood mode ended under a flood at {}",
            w.now
        );
    }
    assert_eq!(vip(&w).half_open, 0, "half-open connections timed out");
    assert_eq!(
        vip(&w).accepted,
        u64::from(THRESHOLD),
        "no spoofed SYN reached admission in flood mode"
    );
}

/// (d) ACKs whose cookie is forged, expired or from another secret: counted,
/// answered with RST, nothing created.
#[test]
fn bad_cookies_are_rejected_and_reset() {
    let ip = Ipv4Addr::new(198, 18, 0, 99);
    let isn = 4242u32;
    let epoch = epoch_of(unix_secs());
    let f = flow(ip, 4000);
    let cases = [
        ("forged", 0x1357_9bdfu32),
        (
            "expired",
            encode(
                &EpochKey::derive(&SEED, epoch - 2),
                &f,
                isn,
                mss_index(Some(1460)),
            ),
        ),
        (
            "future",
            encode(
                &EpochKey::derive(&SEED, epoch + 1),
                &f,
                isn,
                mss_index(Some(1460)),
            ),
        ),
        (
            "other seed",
            encode(&EpochKey::derive(&Seed([1; 32]), epoch), &f, isn, 3),
        ),
    ];
    for mode in [SynCookies::Auto, SynCookies::Always] {
        for (what, cookie) in cases {
            let mut w = setup(mode, SEED).build();
            introduce_ghost(&mut w, ip);
            let ack = client_frame(
                ip,
                4000,
                TcpControl::None,
                isn + 1,
                Some(cookie.wrapping_add(1)),
                Opts::default(),
                &[],
            );
            let sent = feed(&mut w, ack);
            let v = vip(&w);
            assert_eq!(
                (v.cookies_rejected, v.cookies_validated, v.accepted),
                (1, 0, 0),
                "{what}"
            );
            assert_eq!(w.engine.connections(), 0, "{what}");
            assert_eq!(attempts(&w), 0, "{what}");
            assert_eq!(sent.len(), 1, "{what}");
            assert_eq!(
                sent[0].tcp.control,
                TcpControl::Rst,
                "{what}: answered with RST"
            );
            assert_eq!(
                sent[0].tcp.seq_number,
                TcpSeqNumber(cookie.wrapping_add(1) as i32),
                "{what}"
            );
        }
    }
    // Cookies off: not even looked at (RST as before, nothing counted).
    let mut w = setup(SynCookies::Off, SEED).build();
    introduce_ghost(&mut w, ip);
    let sent = feed(
        &mut w,
        client_frame(ip, 4000, TcpControl::None, 1, Some(2), Opts::default(), &[]),
    );
    assert_eq!(vip(&w).cookies_rejected, 0);
    assert_eq!(sent[0].tcp.control, TcpControl::Rst);
}

/// (e) A cookie minted by engine A is valid on engine B sharing A's seed
/// (whatever B's flood mode), and rejected by engine C with another seed.
#[test]
fn engines_sharing_a_seed_validate_each_others_cookies() {
    let ip = Ipv4Addr::new(198, 18, 0, 99);
    let mut a = setup(SynCookies::Always, SEED).build();
    let synack = cookie_synack(
        &mut a,
        ip,
        5000,
        77,
        Opts {
            mss: Some(1460),
            ..Opts::default()
        },
    );
    let ack = client_frame(
        ip,
        5000,
        TcpControl::None,
        78,
        Some((synack.tcp.seq_number + 1).0 as u32),
        Opts::default(),
        &[],
    );

    let mut b = setup(SynCookies::Auto, SEED).build();
    // Its backend resolved (ARP), as in any engine that has been running.
    b.run_until(Duration::from_millis(10), |_| false);
    let sent = feed(&mut b, ack.clone());
    assert!(sent.iter().all(|s| s.tcp.control != TcpControl::Rst));
    assert_eq!((vip(&b).cookies_validated, vip(&b).accepted), (1, 1));
    assert_eq!(b.engine.connections(), 1);
    let ok = b.run_until(Duration::from_secs(1), |w| {
        w.backend(0).connections().len() == 1
    });
    assert!(ok, "B connected to its backend");

    let mut c = setup(SynCookies::Auto, Seed([0xa5; 32])).build();
    introduce_ghost(&mut c, ip);
    let sent = feed(&mut c, ack);
    assert_eq!((vip(&c).cookies_rejected, vip(&c).accepted), (1, 0));
    assert_eq!(c.engine.connections(), 0);
    assert_eq!(sent[0].tcp.control, TcpControl::Rst);
}

/// (g) A valid cookie still goes through admission: beyond
/// `max_connections` the client (established from its point of view) is
/// reset and nothing is kept.
#[test]
fn admission_refusal_after_a_valid_cookie_resets_the_client() {
    let mut s = setup(SynCookies::Always, SEED);
    s.vip.max_connections = 1;
    let mut w = s.build();
    let ip = Ipv4Addr::new(198, 18, 0, 99);
    for (port, isn) in [(6000u16, 10u32), (6001, 20)] {
        let synack = cookie_synack(&mut w, ip, port, isn, Opts::default());
        let ack = client_frame(
            ip,
            port,
            TcpControl::None,
            isn + 1,
            Some((synack.tcp.seq_number + 1).0 as u32),
            Opts::default(),
            &[],
        );
        let sent = feed(&mut w, ack);
        if port == 6000 {
            assert_eq!(w.engine.connections(), 1);
        } else {
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].tcp.control, TcpControl::Rst, "refused client reset");
            assert_eq!(sent[0].dst, ip);
        }
    }
    let v = vip(&w);
    assert_eq!((v.cookies_validated, v.accepted, v.drop_limit), (2, 1, 1));
    assert_eq!(w.engine.connections(), 1);
}

/// Every backend down after a valid cookie: the established client is reset.
#[test]
fn dead_pool_after_a_cookie_resets_the_established_client() {
    let mut s = setup(SynCookies::Always, SEED);
    s.listening = vec![false];
    s.vip.connect_tries = 1;
    let mut w = s.build();
    let sock = w.client().connect((VIP, VIP_PORT), 40200);
    let ok = w.run_until(Duration::from_secs(2), |w| {
        w.client().sock(sock).state() == tcp::State::Established
    });
    assert!(ok, "cookie handshake completes at once");
    let ok = w.run_until(Duration::from_secs(10), |w| {
        w.client().sock(sock).state() == tcp::State::Closed
    });
    assert!(ok, "client not reset");
    let v = vip(&w);
    assert_eq!((v.cookies_validated, v.drop_connect_failed), (1, 1));
    settle(&mut w);
}

/// The half-open gauge never leaks: connections admitted below the
/// threshold, completed, then closed, leave it at zero.
#[test]
fn half_open_gauge_returns_to_zero() {
    let mut w = setup(SynCookies::Auto, SEED).build();
    let ex = Exchange::open(&mut w, 0, (VIP, VIP_PORT), 41000..41020);
    let got = ex.run(&mut w, 1);
    assert_eq!(got.len(), 20);
    settle(&mut w);
    let v = vip(&w);
    assert_eq!((v.accepted, v.half_open, v.cookies_sent), (20, 0, 0));
}
