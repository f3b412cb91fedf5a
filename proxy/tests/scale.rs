//! Per-request engine cost with 100, 1 000 and 10 000 open connections.
//!
//! The engine must not walk its connections per packet: the work counter
//! (sockets smoltcp iterates, ingress + egress + poll_at) per request must
//! stay flat, and so, roughly, must the time spent inside `Engine::poll`.

mod common;

use common::*;

struct Cost {
    visits_per_request: f64,
    micros_per_request: f64,
}

fn cost_with_open_connections(n: u16) -> Cost {
    let (mut w, socks) = scale_open_connections(n);
    // Sequential echo requests spread over the open connections.
    let c = scale_echo_requests(&mut w, &socks, 1_000);
    Cost {
        visits_per_request: c.sockets_visited as f64 / c.requests as f64,
        micros_per_request: c.engine_time.as_secs_f64() * 1e6 / c.requests as f64,
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

/// A new connection's whole life (SYN to release, backend connection
/// included) costs the same work with 100 or 2 000 other connections open:
/// the engine does not walk its connections to admit, connect or release.
#[test]
fn new_connection_cost_is_flat_in_open_connections() {
    let mut visits = Vec::new();
    for n in [100u16, 2_000] {
        let (mut w, _socks) = scale_open_connections(n);
        // Warm-up (spare pool, flow table), then the measured ones.
        scale_new_connections(&mut w, SCALE_NEW_FIRST_PORT, 100);
        let c = scale_new_connections(&mut w, SCALE_NEW_FIRST_PORT + 100, 200);
        let v = c.sockets_visited as f64 / c.requests as f64;
        println!("open connections {n:>6}: {v:.1} sockets visited per new connection");
        assert_eq!(w.engine.connections(), usize::from(n), "every new connection released");
        visits.push(v);
    }
    assert!(
        visits[1] <= 1.5 * visits[0],
        "work per new connection grew from {:.1} to {:.1}",
        visits[0],
        visits[1]
    );
}
