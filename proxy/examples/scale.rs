//! Engine cost per request, and per new connection, with N open connections,
//! for `scripts/bench.sh scale`.
//!
//!     scale N K          K keep-alive requests
//!     scale --new N K    K new connections
//!
//! Opens N idle client connections through the engine on the in-memory wire
//! of tests/common (the scenario of tests/scale.rs). Then either sends K
//! sequential echo requests round-robin over them and prints
//!
//!     scale_result connections=N requests=K sockets_visited_per_request=V us_per_request=T
//!
//! or (`--new`) runs K new connections one after the other, each a whole
//! life (SYN, backend connection, one request and its answer, both sides
//! closed, released: `common::scale_new_connections`), beside the N idle
//! ones, after as many again not measured (warm-up: the spare pool, the flow
//! table and the peers' listeners reach their steady state), and prints
//!
//!     scale_new_result connections=N new=K sockets_visited_per_connection=V us_per_connection=T
//!
//! T is wall time inside `Engine::poll`. The measured phase runs inside
//! `scale_measured` alone, so an instruction counter can count that phase
//! only, without the set-up: `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*Engine::poll*' --zero-before='*scale_measured*'`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{
    scale_echo_requests, scale_new_connections, scale_open_connections, ScaleCost, Sock, Wire,
    SCALE_NEW_FIRST_PORT,
};

/// The measured phase (keep-alive requests): nothing else runs inside it.
#[inline(never)]
fn scale_measured(w: &mut Wire, socks: &[Sock], requests: usize) -> ScaleCost {
    scale_echo_requests(w, socks, requests)
}

/// The measured phase (new connections): nothing else runs inside it.
#[inline(never)]
fn scale_measured_new(w: &mut Wire, first_port: u16, count: usize) -> ScaleCost {
    scale_new_connections(w, first_port, count)
}

const USAGE: &str = "usage: scale [--new] N K   (N open connections 1..=50000, K requests or new connections >= 1; \
                     with --new, N < 20000 and 2K <= 30000)";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let new = args.first().is_some_and(|a| a == "--new");
    if new {
        args.remove(0);
    }
    let parse = |i: usize| -> Option<u64> { args.get(i)?.parse().ok() };
    let (Some(n), Some(k)) = (parse(0), parse(1)) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    if args.len() != 2 || !(1..=50_000).contains(&n) || k == 0 || (new && (2 * k > 30_000 || n >= 20_000)) {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let (mut w, socks) = scale_open_connections(n as u16);
    if new {
        let k = k as usize;
        // Warm-up, not measured: as many connections as will be measured.
        scale_new_connections(&mut w, SCALE_NEW_FIRST_PORT, k);
        let c = scale_measured_new(&mut w, SCALE_NEW_FIRST_PORT + k as u16, k);
        println!(
            "scale_new_result connections={n} new={k} sockets_visited_per_connection={:.2} us_per_connection={:.3}",
            c.sockets_visited as f64 / c.requests as f64,
            c.engine_time.as_secs_f64() * 1e6 / c.requests as f64,
        );
        return;
    }
    let c = scale_measured(&mut w, &socks, k as usize);
    println!(
        "scale_result connections={n} requests={k} sockets_visited_per_request={:.2} us_per_request={:.3}",
        c.sockets_visited as f64 / c.requests as f64,
        c.engine_time.as_secs_f64() * 1e6 / c.requests as f64,
    );
}
