//! The kernel-free load generator (`tools/loadgen`, `fulcrum-loadgen`) against
//! the real dataplane over net_memif: every mode completes its requests through
//! the proxy VIP with every byte of every request and response verified (by
//! the generator, which exits non-zero on a single bad byte or a short count),
//! no connection failed or timed out, and the dataplane returns every mbuf at
//! exit. Correctness only: no rates are asserted (scripts/bench.sh capacity
//! prints them).
//!
//! No namespaces: the two DPDK processes meet on a memif socket under /run
//! (unique per run) and shared memory; both run --no-huge with unique file
//! prefixes, removed at the end with the socket, also on failure.

use fulcrum_tests::{bin_dir, dataplane_bin, serial, tail, wait_until, Guarded, Signal};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// Removes the memif socket and the EAL runtime dirs (declared before the
/// processes, so dropped after them: they are killed first).
struct Paths(Vec<PathBuf>);

impl Drop for Paths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
        }
    }
}

fn stop(p: &mut Guarded) -> ExitStatus {
    p.signal(Signal::SIGINT);
    p.wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{} did not stop within 30 s of SIGINT:\n{}", p.name(), tail(p.log_path(), 10)))
}

fn field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in the generator's summary: {summary}"))
}

/// Runs one generator (mode, args) against a fresh dataplane; returns the
/// generator's summary line.
fn run(tag: &str, mode: &str, args: &[&str]) -> String {
    let loadgen = bin_dir().join("fulcrum-loadgen");
    assert!(loadgen.is_file(), "{} not found: cargo build --release -p fulcrum-loadgen", loadgen.display());
    assert!(dataplane_bin().is_file(), "{} not found", dataplane_bin().display());
    let pid = std::process::id();
    let dir = tempfile::Builder::new().prefix(&format!("fulcrum-loadgen-{tag}-")).tempdir().unwrap();
    let sock = format!("/run/fulcrum-lgt-{pid}-{tag}.sock");
    let (dp_prefix, gen_prefix) = (format!("lgt-dp-{pid}-{tag}"), format!("lgt-gen-{pid}-{tag}"));
    let _paths = Paths(vec![
        PathBuf::from(&sock),
        Path::new("/var/run/dpdk").join(&dp_prefix),
        Path::new("/var/run/dpdk").join(&gen_prefix),
    ]);
    let config = dir.path().join("fulcrum.toml");
    fs::write(
        &config,
        format!(
            r#"[dataplane]
address = "198.18.0.2/24"
lcores = "1"
file_prefix = "{dp_prefix}"
software = {{ vdev = "net_memif0,role=server,socket={sock},socket-abstract=no,mac=02:00:00:00:00:02", hugepages = "off", no_huge_memory_mb = 384 }}

[forward]
conntrack_entries = 1024

[[vip]]
address = "198.18.1.1"
port = 80
mode = "proxy"
backends = [
  {{ address = "198.18.0.21", port = 8080 }},
  {{ address = "198.18.0.22", port = 8080 }},
  {{ address = "198.18.0.23", port = 8080 }},
]
"#
        ),
    )
    .unwrap();
    let dp_log = dir.path().join("dataplane.log");
    let mut cmd = Command::new(dataplane_bin());
    cmd.arg("--config").arg(&config);
    let mut dp = Guarded::spawn("fulcrum-dataplane", cmd, &dp_log);
    wait_until(Duration::from_secs(60), "the dataplane's ready line", || {
        fs::read_to_string(&dp_log).is_ok_and(|t| t.contains(" ready: "))
    });

    let gen_log = dir.path().join("gen.log");
    let mut cmd = Command::new(&loadgen);
    cmd.args(["--socket", &sock, "--file-prefix", &gen_prefix, "--lcore", "0", "--no-huge", "--memory-mb", "384"])
        .args(["--mbufs", "8191", "--mode", mode, "--linger", "60"])
        .args(args);
    let mut generator = Guarded::spawn("fulcrum-loadgen", cmd, &gen_log);
    // The run is over once the summary is printed (the generator then
    // lingers, not polling, so the dataplane can stop first: a memif peer
    // leaving under a polling lcore can crash it).
    wait_until(Duration::from_secs(90), "the generator's summary", || {
        generator.output().lines().any(|l| l.starts_with("loadgen: ")) || !generator.is_running()
    });
    let dp_status = stop(&mut dp);
    let gen_status = stop(&mut generator);
    let summary = generator.output();
    assert!(
        gen_status.success(),
        "fulcrum-loadgen {mode} failed ({gen_status}):\n{}\n--- dataplane ---\n{}",
        tail(&gen_log, 12),
        tail(&dp_log, 10)
    );
    assert!(dp_status.success(), "the dataplane exited with {dp_status}:\n{}", tail(&dp_log, 20));
    let log = fs::read_to_string(&dp_log).unwrap_or_default();
    assert!(log.contains("mbufs in use: 0 of"), "the dataplane did not return every mbuf:\n{}", tail(&dp_log, 10));
    let line = summary.lines().find(|l| l.starts_with("loadgen: ")).expect("a summary line").to_owned();
    for zero in ["bad_responses", "bad_requests", "failed", "timeouts"] {
        assert_eq!(field(&line, zero), 0, "{zero} in {line}");
    }
    line
}

#[test]
fn loadgen_completes_verified_requests_through_the_proxy_over_memif() {
    let _lock = serial();

    // Keep-alive: 2000 responses over 32 connections, each checked byte for byte.
    let ka = run("ka", "keepalive", &["--connections", "32", "--requests", "2000", "--duration", "60"]);
    assert!(field(&ka, "responses") >= 2000, "{ka}");
    assert!(field(&ka, "served") >= field(&ka, "responses"), "backends served fewer than the clients got: {ka}");
    assert_eq!(field(&ka, "connects"), 32, "keep-alive connections were reopened: {ka}");

    // One request per connection: 500 connections, each through the VIP to a
    // backend and back, closed cleanly.
    let conn = run("conn", "conn", &["--connections", "16", "--requests", "500", "--duration", "60"]);
    assert!(field(&conn, "responses") >= 500, "{conn}");
    assert!(field(&conn, "accepted") >= 500, "the backends accepted fewer connections than completed: {conn}");
    assert!(field(&conn, "closed_ok") + 16 >= 500, "connections did not close cleanly: {conn}");

    // Bulk: two seconds of pattern through the VIP, every byte at its offset.
    let bulk = run("bulk", "bulk", &["--connections", "4", "--duration", "2"]);
    assert!(field(&bulk, "bulk_bytes") > 1_000_000, "{bulk}");
}
