//! End-to-end behaviour of the engine against smoltcp peers on an in-memory wire.

mod common;

use std::collections::HashMap;

use common::*;
use fulcrum_model::ProxyProtocol;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;

/// Opens `n` client connections from ports 40000.., each sending one request
/// line; returns (port, response) pairs once every response is complete.
fn request_many(w: &mut Wire, n: u16, backends: usize) -> Vec<(u16, String)> {
    let socks: Vec<_> = (0..n)
        .map(|i| (40000 + i, w.client().connect((VIP, VIP_PORT), 40000 + i)))
        .collect();
    let mut sent = vec![false; socks.len()];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); socks.len()];
    let mut done = vec![false; socks.len()];
    let mut seen = HashMap::new();
    let ok = w.run_until(Duration::from_secs(20), |w| {
        for (i, &(port, s)) in socks.iter().enumerate() {
            let sock = w.client().sock(s);
            if !sent[i] && sock.may_send() {
                sock.send_slice(format!("hello from {port}\n").as_bytes())
                    .unwrap();
                sent[i] = true;
            }
            read_all(sock, &mut got[i]);
            if !sock.may_recv() && sent[i] && !done[i] {
                done[i] = true;
                sock.close();
            }
        }
        serve_lines(w, backends, &mut seen);
        done.iter().all(|&d| d)
    });
    assert!(
        ok,
        "not all responses completed: {} of {}",
        done.iter().filter(|d| **d).count(),
        n
    );
    socks
        .iter()
        .zip(got)
        .map(|(&(port, _), g)| (port, String::from_utf8(g).unwrap()))
        .collect()
}

fn settle(w: &mut Wire) {
    let ok = w.run_until(Duration::from_secs(5), |w| w.engine.connections() == 0);
    assert!(
        ok,
        "engine still holds {} connections",
        w.engine.connections()
    );
}

#[test]
fn request_response_through_vip() {
    let mut w = Setup::new(1).build();
    let r = request_many(&mut w, 1, 1);
    assert_eq!(r[0].1, "0:hello from 40000\n");
    settle(&mut w);
    let vip = *w.engine.vip_counters(0).unwrap();
    assert_eq!(vip.accepted, 1);
    assert_eq!(vip.active, 0);
    assert_eq!(vip.bytes_from_clients, "hello from 40000\n".len() as u64);
    assert_eq!(vip.bytes_to_clients, "0:hello from 40000\n".len() as u64);
    let be = *w.engine.backend_counters(0, 0).unwrap();
    assert_eq!(
        (be.attempts, be.opened, be.active, be.connect_failures),
        (1, 1, 0, 0)
    );
    assert_eq!(w.engine.socket_count(), 0);
    assert_eq!(
        w.engine.spare_connections(),
        1,
        "released slot is kept for reuse"
    );
}

#[test]
fn spreads_over_backends_per_maglev() {
    let mut w = Setup::new(3).build();
    let r = request_many(&mut w, 90, 3);
    let mut per = [0usize; 3];
    for (port, resp) in &r {
        let b: usize = resp[..1].parse().unwrap();
        assert_eq!(b, expected_backend(&[1, 1, 1], *port, VIP_PORT), "port {port}");
        assert_eq!(&resp[2..], format!("hello from {port}\n"));
        per[b] += 1;
    }
    assert!(per.iter().all(|&n| n > 15), "{per:?}");
    settle(&mut w);
    let snap = w.engine.snapshot();
    let opened: Vec<u64> = snap[0].backends.iter().map(|b| b.counters.opened).collect();
    assert_eq!(opened, per.iter().map(|&n| n as u64).collect::<Vec<_>>());
}

#[test]
fn weights_two_one_one() {
    let mut s = Setup::new(3);
    s.weights = vec![2, 1, 1];
    let mut w = s.build();
    let r = request_many(&mut w, 400, 3);
    let mut per = [0usize; 3];
    for (port, resp) in &r {
        let b: usize = resp[..1].parse().unwrap();
        assert_eq!(b, expected_backend(&[2, 1, 1], *port, VIP_PORT), "port {port}");
        per[b] += 1;
    }
    // 200/100/100 expected; binomial spread at n=400 is ~10.
    assert!((160..=240).contains(&per[0]), "{per:?}");
    assert!(
        (65..=135).contains(&per[1]) && (65..=135).contains(&per[2]),
        "{per:?}"
    );
}

#[test]
fn one_mib_each_way_intact() {
    const N: usize = 1 << 20;
    let up: Vec<u8> = (0..N).map(|i| (i * 7 + i / 1000) as u8).collect();
    let down: Vec<u8> = (0..N).map(|i| (i * 13 + i / 777) as u8).collect();
    let mut w = Setup::new(1).build();
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let (mut up_sent, mut down_sent) = (0, 0);
    let (mut at_backend, mut at_client) = (Vec::new(), Vec::new());
    let ok = w.run_until(Duration::from_secs(60), |w| {
        let cs = w.client().sock(c);
        if cs.may_send() && up_sent < N {
            up_sent += cs.send_slice(&up[up_sent..]).unwrap();
        }
        read_all(cs, &mut at_client);
        if let Some(b) = w.backend(0).connections().first().copied() {
            let bs = w.backend(0).sock(b);
            read_all(bs, &mut at_backend);
            if bs.may_send() && down_sent < N {
                down_sent += bs.send_slice(&down[down_sent..]).unwrap();
            }
        }
        at_backend.len() == N && at_client.len() == N
    });
    assert!(
        ok,
        "moved {} up, {} down",
        at_backend.len(),
        at_client.len()
    );
    assert_eq!(checksum(&at_backend), checksum(&up));
    assert_eq!(checksum(&at_client), checksum(&down));
    assert!(at_backend == up && at_client == down);
    let vip = *w.engine.vip_counters(0).unwrap();
    assert_eq!(
        (vip.bytes_from_clients, vip.bytes_to_clients),
        (N as u64, N as u64)
    );
}

#[test]
fn slow_reader_does_not_grow_memory() {
    let mut s = Setup::new(1);
    s.config.buffer_size = 16 * 1024;
    let mut w = s.build();
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let chunk = vec![0x5a; 64 * 1024];
    let mut offered = 0usize;
    let mut peak = 0usize;
    // The client never reads; the backend writes as fast as it is allowed.
    w.run_for(Duration::from_secs(3), |w| {
        if let Some(b) = w.backend(0).connections().first().copied() {
            let bs = w.backend(0).sock(b);
            if bs.may_send() {
                offered += bs.send_slice(&chunk).unwrap();
            }
        }
        peak = peak.max(w.engine.buffered_bytes());
    });
    let client_rx = w.client().sock(c).recv_queue();
    // The engine holds at most its four 16 KiB buffers; the client's 256 KiB
    // window filled; everything else is still in the backend's own buffer.
    assert!(peak <= 4 * 16 * 1024, "engine buffered {peak}");
    assert!(
        peak >= 2 * 16 * 1024 - 4096,
        "engine buffers should be full, got {peak}"
    );
    // Window scaling rounds the advertised window down to its unit.
    assert!(
        client_rx > 256 * 1024 - 64,
        "client window should be full: {client_rx}"
    );
    let relayed = w.engine.vip_counters(0).unwrap().bytes_to_clients as usize;
    assert!(relayed <= client_rx + 16 * 1024, "relayed {relayed}");
    assert!(
        offered > relayed + 16 * 1024,
        "backend must be blocked: offered {offered}"
    );
    // Once the client reads, everything flows and nothing is lost.
    let mut got = Vec::new();
    let target = offered;
    let ok = w.run_until(Duration::from_secs(20), |w| {
        read_all(w.client().sock(c), &mut got);
        got.len() >= target
    });
    assert!(ok, "got {} of {target}", got.len());
    assert!(got.iter().all(|&b| b == 0x5a));
}

#[test]
fn half_close_keeps_the_other_direction() {
    let mut w = Setup::new(1).build();
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let mut sent = false;
    let mut request = Vec::new();
    let mut response = Vec::new();
    let body = vec![b'r'; 100_000];
    let mut answered = 0usize;
    let ok = w.run_until(Duration::from_secs(20), |w| {
        let cs = w.client().sock(c);
        if !sent && cs.may_send() {
            cs.send_slice(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            cs.close(); // shutdown(SHUT_WR)
            sent = true;
        }
        read_all(cs, &mut response);
        if let Some(b) = w.backend(0).connections().first().copied() {
            let bs = w.backend(0).sock(b);
            read_all(bs, &mut request);
            // Answer only after seeing the client's FIN, as an HTTP/1.0 server may.
            if bs.state() == State::CloseWait && answered < body.len() {
                answered += bs.send_slice(&body[answered..]).unwrap();
                if answered == body.len() {
                    bs.close();
                }
            }
        }
        !w.client().sock(c).may_recv() && response.len() == body.len()
    });
    assert!(ok, "response {} of {}", response.len(), body.len());
    assert_eq!(request, b"GET / HTTP/1.0\r\n\r\n");
    settle(&mut w);
    let vip = *w.engine.vip_counters(0).unwrap();
    assert_eq!((vip.client_resets, vip.backend_resets), (0, 0));
}

/// Opens one connection and waits until both ends are established.
fn open_one(w: &mut Wire) -> (Sock, Sock) {
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.client().sock(c).state() == State::Established && !w.backend(0).connections().is_empty()
    });
    assert!(ok);
    let b = w.backend(0).connections()[0];
    (c, b)
}

#[test]
fn backend_rst_reaches_client() {
    let mut w = Setup::new(1).build();
    let (c, b) = open_one(&mut w);
    w.backend(0).sock(b).abort();
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.client().sock(c).state() == State::Closed
    });
    assert!(ok, "client state {}", w.client().sock(c).state());
    settle(&mut w);
    assert_eq!(w.engine.vip_counters(0).unwrap().backend_resets, 1);
    assert_eq!(w.engine.backend_counters(0, 0).unwrap().resets, 1);
}

#[test]
fn client_rst_reaches_backend() {
    let mut w = Setup::new(1).build();
    let (c, b) = open_one(&mut w);
    w.client().sock(c).abort();
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.backend(0).sock(b).state() == State::Closed
    });
    assert!(ok, "backend state {}", w.backend(0).sock(b).state());
    settle(&mut w);
    assert_eq!(w.engine.vip_counters(0).unwrap().client_resets, 1);
}

#[test]
fn closed_backend_port_fails_over() {
    let mut s = Setup::new(3);
    s.listening = vec![true, false, true];
    let mut w = s.build();
    let r = request_many(&mut w, 30, 3);
    let first_choice_dead = r
        .iter()
        .filter(|(p, _)| expected_backend(&[1, 1, 1], *p, VIP_PORT) == 1)
        .count();
    assert!(
        first_choice_dead > 0,
        "test needs flows whose first choice is backend 1"
    );
    for (_, resp) in &r {
        assert!(!resp.starts_with("1:"), "{resp}");
    }
    let dead = *w.engine.backend_counters(0, 1).unwrap();
    assert_eq!(dead.connect_failures, first_choice_dead as u64);
    assert_eq!(dead.opened, 0);
    assert_eq!(w.engine.vip_counters(0).unwrap().drop_connect_failed, 0);
}

#[test]
fn all_backends_down_resets_client() {
    let mut s = Setup::new(2);
    s.listening = vec![false, false];
    let mut w = s.build();
    w.engine_tx_log = Some(Vec::new());
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let ok = w.run_until(Duration::from_secs(10), |w| {
        w.client().sock(c).state() == State::Closed
    });
    assert!(ok);
    settle(&mut w);
    // Never accepted: on the wire, the VIP answered the client's SYN with a RST
    // and never with a SYN-ACK (an accept followed by a reset would also end
    // the client socket Closed).
    let to_client: Vec<TcpSeen> = w
        .engine_tx_log
        .take()
        .unwrap()
        .iter()
        .filter_map(|f| tcp_seen(f))
        .filter(|t| t.src == (VIP, VIP_PORT) && t.dst == (CLIENT_IP, 40000))
        .collect();
    let synacks = to_client.iter().filter(|t| t.syn && t.ack).count();
    let rsts = to_client.iter().filter(|t| t.rst).count();
    assert_eq!(
        synacks, 0,
        "the VIP sent the client {synacks} SYN-ACK(s) although no backend was up: {to_client:?}"
    );
    assert!(rsts >= 1, "the VIP never sent the client a RST: {to_client:?}");
    let vip = *w.engine.vip_counters(0).unwrap();
    assert_eq!(vip.drop_connect_failed, 1);
    let failures: u64 = (0..2)
        .map(|b| w.engine.backend_counters(0, b).unwrap().connect_failures)
        .sum();
    assert_eq!(failures, 2, "two backends, each tried once");
}

#[test]
fn connection_limit_resets_and_counts() {
    let mut s = Setup::new(1);
    s.vip.max_connections = 2;
    let mut w = s.build();
    let socks: Vec<_> = (0..4)
        .map(|i| w.client().connect((VIP, VIP_PORT), 40000 + i))
        .collect();
    w.run_until(Duration::from_secs(3), |_| false);
    let states: Vec<State> = socks.iter().map(|&s| w.client().sock(s).state()).collect();
    assert_eq!(
        states.iter().filter(|&&s| s == State::Established).count(),
        2,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|&&s| s == State::Closed).count(),
        2,
        "{states:?}"
    );
    let vip = *w.engine.vip_counters(0).unwrap();
    assert_eq!((vip.accepted, vip.active), (2, 2));
    assert!(vip.drop_limit >= 2);
}

#[test]
fn idle_timeout_closes_both_and_reclaims() {
    let mut s = Setup::new(1);
    s.vip.idle_timeout_ms = 30_000;
    let mut w = s.build();
    let baseline = w.engine.socket_count();
    let ports = w.engine.free_ports();
    let (c, b) = open_one(&mut w);
    assert_eq!(w.engine.socket_count(), baseline + 2);
    assert_eq!(w.engine.vip_counters(0).unwrap().active, 1);
    w.advance(Duration::from_secs(31));
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.client().sock(c).state() == State::Closed && w.backend(0).sock(b).state() == State::Closed
    });
    assert!(
        ok,
        "client {} backend {} engine {:?} conns {}",
        w.client().sock(c).state(),
        w.backend(0).sock(b).state(),
        w.engine.vip_counters(0),
        w.engine.connections()
    );
    assert_eq!(w.engine.connections(), 0);
    assert_eq!(w.engine.socket_count(), baseline);
    assert_eq!(w.engine.buffered_bytes(), 0);
    assert_eq!(w.engine.free_ports(), ports, "backend port returned");
    assert_eq!(w.engine.spare_connections(), 1);
    assert_eq!(
        w.engine.allocated_buffer_bytes(),
        4 * 64 * 1024,
        "one spare slot's buffers"
    );
    let vip = *w.engine.vip_counters(0).unwrap();
    assert_eq!((vip.active, vip.drop_idle_timeout), (0, 1));
    assert_eq!(w.engine.backend_counters(0, 0).unwrap().active, 0);
    assert!(
        w.engine.poll_at().unwrap() >= w.now + Duration::from_secs(1),
        "only the neighbour refresh is left to wake up for"
    );
}

fn first_bytes_at_backend(kind: ProxyProtocol) -> Vec<u8> {
    let mut s = Setup::new(1);
    s.vip.proxy_protocol = kind;
    let mut w = s.build();
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let mut sent = false;
    let mut got = Vec::new();
    w.run_until(Duration::from_secs(5), |w| {
        let cs = w.client().sock(c);
        if !sent && cs.may_send() {
            cs.send_slice(b"DATA").unwrap();
            sent = true;
        }
        if let Some(b) = w.backend(0).connections().first().copied() {
            read_all(w.backend(0).sock(b), &mut got);
        }
        got.ends_with(b"DATA")
    });
    got
}

#[test]
fn proxy_protocol_v1_first() {
    assert_eq!(
        first_bytes_at_backend(ProxyProtocol::V1),
        b"PROXY TCP4 198.18.0.10 198.18.1.1 40000 80\r\nDATA"
    );
}

#[test]
fn proxy_protocol_v2_first() {
    let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    want.extend_from_slice(&[198, 18, 0, 10, 198, 18, 1, 1, 0x9c, 0x40, 0x00, 0x50]);
    want.extend_from_slice(b"DATA");
    assert_eq!(first_bytes_at_backend(ProxyProtocol::V2), want);
}

#[test]
fn proxy_protocol_off_sends_client_bytes_only() {
    assert_eq!(first_bytes_at_backend(ProxyProtocol::Off), b"DATA");
}

#[test]
fn no_weighted_backend_resets_syn() {
    let mut s = Setup::new(1);
    s.weights = vec![0];
    let mut w = s.build();
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let ok = w.run_until(Duration::from_secs(3), |w| {
        w.client().sock(c).state() == State::Closed
    });
    assert!(ok);
    assert!(w.engine.vip_counters(0).unwrap().drop_no_backend >= 1);
    assert_eq!(w.engine.connections(), 0);
}

/// A client that gives up while its SYN-ACK is held (wrk closing mid-connect)
/// answers the SYN-ACK with RST, which smoltcp turns into LISTEN, not CLOSED:
/// the connection must still be released at once, not at the idle timeout.
#[test]
fn client_gone_before_synack_is_released() {
    let mut w = Setup::new(1).build();
    let c = w.client().connect((VIP, VIP_PORT), 40000);
    let ok = w.run_until(Duration::from_secs(5), |w| !w.backend(0).connections().is_empty());
    assert!(ok, "the engine never connected to the backend");
    assert_ne!(w.client().sock(c).state(), State::Established);
    w.client().sock(c).abort();
    let ok = w.run_until(Duration::from_secs(5), |w| w.engine.connections() == 0);
    assert!(ok, "connection still held: {} live", w.engine.connections());
    settle(&mut w);
    assert_eq!(w.engine.vip_counters(0).unwrap().client_resets, 1);
    assert_eq!(w.engine.vip_counters(0).unwrap().drop_idle_timeout, 0);
}
