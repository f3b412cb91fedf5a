//! `fulcrum-keepalive-load`: HTTP/1.1 keep-alive requests round-robin over many
//! open connections, for `scripts/bench.sh proxy` (CPU per request against
//! the number of open connections).
//!
//! ```text
//! fulcrum-keepalive-load --connect 198.18.1.1:80 --connections 10000 \
//!     --window 64 --threads 2 --seconds 10 --go /tmp/go
//! ```
//! Opens the connections (each thread its share), prints `open N`, then waits
//! for the file named by --go to exist, so the caller can read its cost
//! counters with every connection open and none of the set-up in the window.
//! Each thread then keeps `--window` requests in flight: it sends one request
//! on each of its next `window` connections, reads the `window` responses,
//! and moves on round-robin, so that the load in flight is the same whatever
//! the number of connections, and a connection is used again only after all
//! of that thread's others. Prints `done requests=R errors=E seconds=S` and
//! exits 0 when no request failed, 1 otherwise. Bounded: connect and read
//! timeouts of 5 s, a wait for --go of at most 60 s.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: fulcrum\r\n\r\n";

struct Args {
    connect: SocketAddr,
    connections: usize,
    window: usize,
    threads: usize,
    seconds: u64,
    go: PathBuf,
}

fn usage(msg: &str) -> ! {
    eprintln!("fulcrum-keepalive-load: {msg}");
    eprintln!(
        "usage: fulcrum-keepalive-load --connect ADDR:PORT --connections N --seconds S --go FILE [--window W] [--threads T]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut connect, mut connections, mut seconds, mut go) = (None, None, None, None);
    let (mut window, mut threads) = (64usize, 2usize);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")));
        match flag.as_str() {
            "--connect" => connect = Some(value.parse().unwrap_or_else(|_| usage(&format!("--connect: not ADDR:PORT: {value}")))),
            "--connections" => connections = Some(number(&value)),
            "--seconds" => seconds = Some(number(&value) as u64),
            "--window" => window = number(&value),
            "--threads" => threads = number(&value),
            "--go" => go = Some(PathBuf::from(value)),
            _ => usage(&format!("unknown argument {flag}")),
        }
    }
    let args = Args {
        connect: connect.unwrap_or_else(|| usage("--connect is required")),
        connections: connections.unwrap_or_else(|| usage("--connections is required")),
        window,
        threads,
        seconds: seconds.unwrap_or_else(|| usage("--seconds is required")),
        go: go.unwrap_or_else(|| usage("--go is required")),
    };
    if !(1..=60_000).contains(&args.connections) {
        usage("--connections: 1..60000");
    }
    if !(1..=64).contains(&args.threads) || args.threads > args.connections {
        usage("--threads: 1..64, at most --connections");
    }
    if !(1..=1024).contains(&args.window) {
        usage("--window: 1..1024");
    }
    if !(1..=3600).contains(&args.seconds) {
        usage("--seconds: 1..3600");
    }
    args
}

/// Reads one HTTP response (headers, then Content-Length bytes of body).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
            let len = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .ok_or("response without Content-Length")?;
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn main() {
    let a = parse_args();
    let opened = AtomicU64::new(0);
    let (requests, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    let failed = AtomicBool::new(false);
    let started = Barrier::new(a.threads + 1);
    let stop = AtomicBool::new(false);
    let mut t0 = None;
    std::thread::scope(|scope| {
        for t in 0..a.threads {
            let share = a.connections / a.threads + usize::from(t < a.connections % a.threads);
            let (a, opened, requests, errors, failed, started, stop) =
                (&a, &opened, &requests, &errors, &failed, &started, &stop);
            scope.spawn(move || {
                let mut conns = Vec::with_capacity(share);
                for _ in 0..share {
                    match TcpStream::connect_timeout(&a.connect, TIMEOUT) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            let _ = s.set_read_timeout(Some(TIMEOUT));
                            conns.push(s);
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("connect: {e}");
                            failed.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                started.wait();
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let window = a.window.min(conns.len());
                let mut next = 0;
                let mut buf = Vec::with_capacity(4096);
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<usize> = (0..window).map(|i| (next + i) % conns.len()).collect();
                    next = (next + window) % conns.len();
                    let sent: Vec<usize> = batch.into_iter().filter(|&i| conns[i].write_all(REQUEST).is_ok()).collect();
                    errors.fetch_add((window - sent.len()) as u64, Ordering::Relaxed);
                    for i in sent {
                        match read_response(&mut conns[i], &mut buf) {
                            Ok(()) => requests.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("connection {i}: {e}");
                                errors.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    if errors.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                }
            });
        }
        started.wait();
        if failed.load(Ordering::Relaxed) {
            return;
        }
        println!("open {}", opened.load(Ordering::Relaxed));
        let waited = Instant::now();
        while !a.go.exists() {
            if waited.elapsed() > Duration::from_secs(60) {
                eprintln!("no {} within 60 s", a.go.display());
                failed.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let start = *t0.insert(Instant::now());
        let deadline = start + Duration::from_secs(a.seconds);
        while Instant::now() < deadline && errors.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Until the last thread's last batch: those requests are counted too.
    let measured = t0.map_or(Duration::ZERO, |t| t.elapsed());
    if failed.load(Ordering::Relaxed) {
        eprintln!("fulcrum-keepalive-load: opened only {} of {} connections", opened.load(Ordering::Relaxed), a.connections);
        std::process::exit(1);
    }
    let (r, e) = (requests.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!("done requests={r} errors={e} seconds={:.3}", measured.as_secs_f64());
    std::process::exit(i32::from(e > 0));
}
