//! Per-request engine cost with 100, 1 000 and 10 000 open connections.
//!
//! The engine must not walk its connections per packet: the work counter
//! (sockets smoltcp iterates, ingress + egress + poll_at) per request must
//! stay flat, and so, roughly, must the time spent inside `Engine::poll`.

mod common;

use common::*;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;

struct Cost {
    visits_per_request: f64,
    micros_per_request: f64,
}

fn cost_with_open_connections(n: u16) -> Cost {
    let mut s = Setup::new(3);
    s.shards = 256;
    s.config.buffer_size = 2048;
    s.vip.max_connections = u32::from(n) + 10;
    let mut w = s.build();
    for h in &mut w.hosts {
        h.set_buffer(2048);
    }

    // Open n idle connections, in batches.
    let mut socks = Vec::new();
    let mut next_port = 10_000u16;
    while socks.len() < usize::from(n) {
        let batch: Vec<_> = (0..500.min(usize::from(n) - socks.len()))
            .map(|_| {
                next_port += 1;
                w.client().connect((VIP, VIP_PORT), next_port)
            })
            .collect();
        let ok = w.run_until(Duration::from_secs(10), |w| {
            batch
                .iter()
                .all(|&s| w.client().sock(s).state() == State::Established)
        });
        assert!(ok, "batch did not establish");
        socks.extend(batch);
    }
    // Let the last ACKs land.
    w.run_until(Duration::from_millis(50), |_| false);
    assert_eq!(w.engine.connections(), usize::from(n));
    for h in &mut w.hosts {
        h.timer_scan = false;
    }

    // Sequential echo requests over 100 of the open connections.
    const REQUESTS: usize = 100;
    let visits0 = w.engine.counters().sockets_visited;
    let time0 = w.engine_time;
    for (i, &c) in socks
        .iter()
        .step_by(socks.len() / REQUESTS)
        .take(REQUESTS)
        .enumerate()
    {
        w.client().sock(c).send_slice(b"ping\n").unwrap();
        let mut got = Vec::new();
        let ok = w.run_until(Duration::from_secs(2), |w| {
            for b in 0..3 {
                for s in w.backend(b).touched_connections() {
                    let sock = w.backend(b).sock(s);
                    if sock.can_recv() {
                        let mut req = Vec::new();
                        read_all(sock, &mut req);
                        sock.send_slice(&req).unwrap();
                    }
                }
            }
            read_all(w.client().sock(c), &mut got);
            got == b"ping\n"
        });
        assert!(ok, "request {i} not echoed");
    }
    // Include the trailing ACKs of the last request.
    w.run_until(Duration::from_millis(20), |_| false);
    let visits = w.engine.counters().sockets_visited - visits0;
    let time = w.engine_time - time0;
    Cost {
        visits_per_request: visits as f64 / REQUESTS as f64,
        micros_per_request: time.as_secs_f64() * 1e6 / REQUESTS as f64,
    }
}

#[test]
fn per_request_cost_is_flat_in_open_connections() {
    let mut rows = Vec::new();
    for n in [100u16, 1_000, 10_000] {
        let c = cost_with_open_connections(n);
        println!(
            "open connections {n:>6}: {:.1} sockets visited/request, {:.1} us in Engine::poll/request",
            c.visits_per_request, c.micros_per_request
        );
        rows.push(c);
    }
    let (small, large) = (&rows[0], &rows[2]);
    assert!(
        large.visits_per_request <= 2.0 * small.visits_per_request,
        "work per request grew from {:.1} to {:.1}",
        small.visits_per_request,
        large.visits_per_request
    );
    // Wall time is noisy (and cache misses grow with memory), so only catch
    // a per-connection walk, which would be ~100x here.
    assert!(
        large.micros_per_request <= 5.0 * small.micros_per_request,
        "time per request grew from {:.1} us to {:.1} us",
        small.micros_per_request,
        large.micros_per_request
    );
}
