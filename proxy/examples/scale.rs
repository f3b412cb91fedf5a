//! Engine cost per request with N open connections, for `scripts/bench.sh scale`.
//!
//!     scale N K
//!
//! Opens N idle client connections through the engine on the in-memory wire
//! of tests/common (the scenario of tests/scale.rs), then sends K sequential
//! echo requests round-robin over them, and prints one line:
//!
//!     scale_result connections=N requests=K sockets_visited_per_request=V us_per_request=T
//!
//! T is wall time inside `Engine::poll`. The requests run inside
//! `scale_measured` alone, so an instruction counter can count that phase
//! only, without the set-up: `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*scale_measured*'`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{scale_echo_requests, scale_open_connections, ScaleCost, Sock, Wire};

/// The measured phase: nothing else runs inside it.
#[inline(never)]
fn scale_measured(w: &mut Wire, socks: &[Sock], requests: usize) -> ScaleCost {
    scale_echo_requests(w, socks, requests)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize| -> Option<u64> { args.get(i)?.parse().ok() };
    let (Some(n), Some(k)) = (parse(0), parse(1)) else {
        eprintln!("usage: scale N K   (N open connections 1..=50000, K requests >= 1)");
        std::process::exit(2);
    };
    if args.len() != 2 || !(1..=50_000).contains(&n) || k == 0 {
        eprintln!("usage: scale N K   (N open connections 1..=50000, K requests >= 1)");
        std::process::exit(2);
    }
    let (mut w, socks) = scale_open_connections(n as u16);
    let c = scale_measured(&mut w, &socks, k as usize);
    println!(
        "scale_result connections={n} requests={k} sockets_visited_per_request={:.2} us_per_request={:.3}",
        c.sockets_visited as f64 / c.requests as f64,
        c.engine_time.as_secs_f64() * 1e6 / c.requests as f64,
    );
}
