//! `fulcrum-test-server`: one of the test servers (tests/src/servers.rs) as its own
//! process, started inside a backend namespace by the integration tests
//! (`ServerProcess`) when the test process cannot hold all the sockets itself.
//!
//! ```text
//! fulcrum-test-server --listen 198.18.0.21:8080 --name be1 --mode hold \
//!     --status /tmp/status.json [--max-seconds 3600]
//! ```
//! Modes: http, echo, send:BYTES:SEED, reply-after-eof:BYTES:SEED, reset, hold.
//! It rewrites the status file (JSON: accepted, active, ends, errors) every 100 ms and
//! exits after --max-seconds (default 3600), or when killed.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fulcrum_tests::servers::{Mode, Server};

fn usage(msg: &str) -> ! {
    eprintln!("fulcrum-test-server: {msg}");
    eprintln!(
        "usage: fulcrum-test-server --listen ADDR:PORT --mode MODE [--name NAME] [--status FILE] [--max-seconds N]"
    );
    std::process::exit(2);
}

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut mode: Option<Mode> = None;
    let mut name = String::from("server");
    let mut status: Option<PathBuf> = None;
    let mut max_seconds: u64 = 3600;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--listen" => listen = Some(val().parse().unwrap_or_else(|e| usage(&format!("--listen: {e}")))),
            "--mode" => mode = Some(Mode::parse(&val()).unwrap_or_else(|e| usage(&e))),
            "--name" => name = val(),
            "--status" => status = Some(PathBuf::from(val())),
            "--max-seconds" => max_seconds = val().parse().unwrap_or_else(|e| usage(&format!("--max-seconds: {e}"))),
            "-h" | "--help" => usage("help"),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let listen = listen.unwrap_or_else(|| usage("--listen is required"));
    let mode = mode.unwrap_or_else(|| usage("--mode is required"));
    let soft = fulcrum_tests::raise_nofile_limit(65536);
    let mut server = Server::start_in(None, listen, &name, mode.clone());
    eprintln!("fulcrum-test-server {name}: listening on {listen}, mode {}, RLIMIT_NOFILE {soft}", mode.arg());
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(max_seconds) {
        if let Some(path) = &status {
            let tmp = path.with_extension("tmp");
            let text = server.status_json().to_string();
            if std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)).is_err() {
                eprintln!("fulcrum-test-server: cannot write {}", path.display());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}
