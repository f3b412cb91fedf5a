//! Rate limits (per VIP, per client) and bandwidth limits, on the fake clock.

mod common;

use std::net::Ipv4Addr;

use common::*;
use fulcrum_model::Rate;
use fulcrum_proxy::VipCounters;
use smoltcp::socket::tcp::State;
use smoltcp::time::{Duration, Instant};

/// Opens one connection from `host` every `every` for `span`; returns the
/// sockets.
fn offer(w: &mut Wire, host: usize, first_port: u16, every: Duration, span: Duration) -> Vec<Sock> {
    let mut socks = Vec::new();
    let mut next = w.now;
    let end = w.now + span;
    let mut port = first_port;
    w.run_for(span, |w| {
        while next <= w.now && next < end {
            socks.push(w.hosts[host].connect((VIP, VIP_PORT), port));
            port += 1;
            next += every;
        }
    });
    socks
}

fn count(w: &mut Wire, host: usize, socks: &[Sock], state: State) -> usize {
    socks
        .iter()
        .filter(|&&s| w.hosts[host].sock(s).state() == state)
        .count()
}

/// Offers SYNs from one client every `every` for 2 s of simulated time to a VIP
/// limited to `rate` on the engine of lcore 0 of `lcores`; returns the world,
/// the offered sockets and the VIP's counters.
fn offer_rate_limited(lcores: usize, rate: Rate, every: Duration) -> (Wire, Vec<Sock>, VipCounters) {
    let mut s = Setup::new(1);
    s.shards = 64;
    s.config.buffer_size = 4096;
    s.config.lcores = lcores;
    s.vip.new_conn_rate = Some(rate);
    let mut w = s.build();
    for h in &mut w.hosts {
        h.set_buffer(4096);
    }
    let socks = offer(&mut w, 0, 10000, every, Duration::from_secs(2));
    w.run_for(Duration::from_millis(200), |_| {});
    let vip = *w.engine.vip_counters(0).unwrap();
    (w, socks, vip)
}

/// Accepted within 10 % of `expected`, and every offer accepted or refused.
fn assert_rate(vip: &VipCounters, offered: usize, expected: f64) {
    let accepted = vip.accepted as f64;
    assert!((accepted - expected).abs() <= expected * 0.1, "accepted {accepted}, expected ~{expected}");
    assert_eq!(vip.accepted + vip.drop_rate, offered as u64, "{vip:?}");
}

#[test]
fn vip_new_connection_rate_with_burst() {
    // ~1000/s for 2 s of simulated time.
    let (mut w, socks, vip) = offer_rate_limited(1, Rate::new(200, 20), Duration::from_millis(1));
    assert_eq!(socks.len(), 2000);
    assert_rate(&vip, 2000, 200.0 * 2.0 + 20.0);
    assert_eq!((vip.drop_limit, vip.drop_client_rate), (0, 0));
    assert_eq!(count(&mut w, 0, &socks, State::Established) as u64, vip.accepted);
    assert_eq!(count(&mut w, 0, &socks, State::Closed) as u64, vip.drop_rate);
}

/// The VIP's limit is split between lcores: the engine of lcore 0 of 2
/// enforces half the rate and half the burst (rounded up).
#[test]
fn vip_rate_is_split_between_lcores() {
    let (_w, socks, vip) = offer_rate_limited(2, Rate::new(200, 21), Duration::from_millis(2));
    assert_eq!(socks.len(), 1000);
    assert_rate(&vip, 1000, 100.0 * 2.0 + 11.0);
}

#[test]
fn client_over_its_rate_is_throttled_other_client_is_not() {
    let mut s = Setup::new(1);
    s.shards = 16;
    s.vip.client_rate = Some(Rate::new(10, 5));
    let mut w = s.build();
    let b = w.add_client(Ipv4Addr::new(198, 18, 0, 11));
    // A: 500/s; B: 5/s, interleaved over 2 s.
    let (mut a_socks, mut b_socks) = (Vec::new(), Vec::new());
    let start = w.now;
    let (mut next_a, mut next_b) = (start, start);
    let (mut port_a, mut port_b) = (10000u16, 20000u16);
    w.run_for(Duration::from_secs(2), |w| {
        while next_a <= w.now {
            a_socks.push(w.hosts[0].connect((VIP, VIP_PORT), port_a));
            port_a += 1;
            next_a += Duration::from_millis(2);
        }
        while next_b <= w.now {
            b_socks.push(w.hosts[b].connect((VIP, VIP_PORT), port_b));
            port_b += 1;
            next_b += Duration::from_millis(200);
        }
    });
    w.run_for(Duration::from_millis(100), |_| {});
    let vip = *w.engine.vip_counters(0).unwrap();
    let b_ok = count(&mut w, b, &b_socks, State::Established);
    assert_eq!(b_ok, b_socks.len(), "client B never rejected");
    let a_ok = count(&mut w, 0, &a_socks, State::Established);
    // 5 burst + 10/s over ~2 s.
    assert!((22..=27).contains(&a_ok), "client A accepted {a_ok}");
    assert_eq!(
        vip.drop_client_rate as usize,
        a_socks.len() - a_ok,
        "{vip:?}"
    );
    assert_eq!(vip.accepted as usize, a_ok + b_ok);
    assert_eq!((vip.drop_rate, vip.client_table_evictions), (0, 0));
}

#[test]
fn client_table_evicts_when_full() {
    let mut s = Setup::new(1);
    s.config.client_table_capacity = 2;
    s.vip.client_rate = Some(Rate::new(100, 100));
    let mut w = s.build();
    let hosts: Vec<usize> = std::iter::once(0)
        .chain((11..14).map(|i| w.add_client(Ipv4Addr::new(198, 18, 0, i))))
        .collect();
    let mut socks = Vec::new();
    for round in 0..3u16 {
        for &h in &hosts {
            let s = w.hosts[h].connect((VIP, VIP_PORT), 30000 + round);
            socks.push((h, s));
            w.run_for(Duration::from_millis(5), |_| {});
        }
    }
    w.run_for(Duration::from_millis(100), |_| {});
    for &(h, s) in &socks {
        assert_eq!(w.hosts[h].sock(s).state(), State::Established);
    }
    let vip = *w.engine.vip_counters(0).unwrap();
    // 4 clients round-robin through 2 entries: every insert after the first
    // two evicts.
    assert_eq!(vip.client_table_evictions, 12 - 2, "{vip:?}");
    assert_eq!(
        w.engine.counters().client_table_evictions,
        vip.client_table_evictions
    );
    assert_eq!((vip.accepted, vip.drop_client_rate), (12, 0));
}

#[test]
fn bandwidth_limit_paces_a_transfer() {
    const N: usize = 3_000_000;
    let data: Vec<u8> = (0..N).map(|i| (i * 7 + i / 1001) as u8).collect();
    let mut s = Setup::new(1);
    s.vip.bandwidth_bytes_per_sec = Some(1_000_000);
    let mut w = s.build();
    // The engine is polled only for frames or at its `poll_at`: a throttled
    // connection must be woken by the engine's own deadline (the refill).
    w.lazy_engine = true;
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let mut sent = 0usize;
    let mut got = Vec::new();
    let mut start: Option<Instant> = None;
    let ok = w.run_until(Duration::from_secs(10), |w| {
        if let Some(b) = w.backend(0).connections().first().copied() {
            start.get_or_insert(w.now);
            let bs = w.backend(0).sock(b);
            if bs.may_send() && sent < N {
                sent += bs.send_slice(&data[sent..]).unwrap();
            }
        }
        read_all(w.client().sock(c), &mut got);
        got.len() == N
    });
    assert!(ok, "got {} of {N}", got.len());
    let elapsed = (w.now - start.unwrap()).total_millis() as f64 / 1000.0;
    assert!(
        (2.7..=3.3).contains(&elapsed),
        "3 MB at 1 MB/s took {elapsed} s"
    );
    assert!(got == data, "data corrupted");
    let vip = *w.engine.vip_counters(0).unwrap();
    assert!(vip.throttled_splices > 0, "{vip:?}");
    assert_eq!(vip.bytes_to_clients, N as u64);
    eprintln!(
        "3 MB in {elapsed} s, {} throttled splices",
        vip.throttled_splices
    );
}

#[test]
fn unlimited_vip_is_not_paced() {
    // Same transfer without a limit: far below a second (the limit is what
    // slows the test above).
    const N: usize = 3_000_000;
    let mut w = Setup::new(1).build();
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let data = vec![0xa5u8; N];
    let (mut sent, mut got) = (0usize, Vec::new());
    let start = w.now;
    let ok = w.run_until(Duration::from_secs(10), |w| {
        if let Some(b) = w.backend(0).connections().first().copied() {
            let bs = w.backend(0).sock(b);
            if bs.may_send() && sent < N {
                sent += bs.send_slice(&data[sent..]).unwrap();
            }
        }
        read_all(w.client().sock(c), &mut got);
        got.len() == N
    });
    assert!(ok);
    assert!(
        w.now - start < Duration::from_millis(500),
        "took {}",
        w.now - start
    );
    assert_eq!(w.engine.vip_counters(0).unwrap().throttled_splices, 0);
}
