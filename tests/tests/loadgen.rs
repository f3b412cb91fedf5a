//! The kernel-free load generator (`tools/loadgen`, `fulcrum-loadgen`) against
//! the real dataplane over net_memif: every mode completes its requests through
//! the proxy VIP with every byte of every request and response verified (by
//! the generator, which exits non-zero on a single bad byte or a short count),
//! no connection failed or timed out, and the dataplane returns every mbuf at
//! exit. Correctness only: no rates are asserted (scripts/bench.sh capacity
//! prints them). And a generator killed (SIGKILL) mid-bulk does not take the
//! dataplane down: it goes on serving the next generator.
//!
//! The dataplane's configuration is tools/loadgen/dataplane.toml (bench.sh's
//! too); the generator's summary and status file are its `Status` record
//! (fulcrum-loadgen-status), read here with the same type.
//!
//! No namespaces: the two DPDK processes meet on a memif socket under /run
//! (unique per run) and shared memory; both run --no-huge with unique file
//! prefixes, removed at the end with the socket, also on failure.

use fulcrum_loadgen_status::Status;
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

/// The generator's summary: the one JSON line it prints on stdout at exit
/// (its log holds stderr too), the record its status file holds.
fn summary(generator: &Guarded) -> Option<Status> {
    generator.output().lines().find_map(|l| serde_json::from_str(l).ok())
}

/// A dataplane with a net_memif server port (tools/loadgen/dataplane.toml)
/// for generators to connect to, and everything to remove after it.
struct Setup {
    sock: String,
    gen_prefix: String,
    dp_log: PathBuf,
    dp: Guarded,
    // Dropped after the processes (fields drop in order): they are killed first.
    _paths: Paths,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start(tag: &str) -> Setup {
        assert!(loadgen_bin().is_file(), "{} not found: cargo build --release -p fulcrum-loadgen", loadgen_bin().display());
        assert!(dataplane_bin().is_file(), "{} not found", dataplane_bin().display());
        let pid = std::process::id();
        let dir = tempfile::Builder::new().prefix(&format!("fulcrum-loadgen-{tag}-")).tempdir().unwrap();
        let sock = format!("/run/fulcrum-lgt-{pid}-{tag}.sock");
        let (dp_prefix, gen_prefix) = (format!("lgt-dp-{pid}-{tag}"), format!("lgt-gen-{pid}-{tag}"));
        // Each generator run gets its own prefix (gen_prefix-N): all removed here.
        let mut paths = vec![PathBuf::from(&sock), Path::new("/var/run/dpdk").join(&dp_prefix)];
        paths.extend((0..4).map(|n| Path::new("/var/run/dpdk").join(format!("{gen_prefix}-{n}"))));
        let paths = Paths(paths);
        let config = dir.path().join("fulcrum.toml");
        let template = fs::read_to_string(repo_root().join("tools/loadgen/dataplane.toml")).unwrap();
        fs::write(
            &config,
            template
                .replace("@FILE_PREFIX@", &dp_prefix)
                .replace("@SOCKET@", &sock)
                .replace("@LCORES@", "1")
                .replace("@MEMORY@", r#"hugepages = "off", no_huge_memory_mb = 384"#),
        )
        .unwrap();
        let dp_log = dir.path().join("dataplane.log");
        let mut cmd = Command::new(dataplane_bin());
        cmd.arg("--config").arg(&config);
        let dp = Guarded::spawn("fulcrum-dataplane", cmd, &dp_log);
        wait_until(Duration::from_secs(60), "the dataplane's ready line", || {
            fs::read_to_string(&dp_log).is_ok_and(|t| t.contains(" ready: "))
        });
        Setup { sock, gen_prefix, dp_log, dp, _paths: paths, dir }
    }

    /// Starts generator number `n` (0..4) in `mode` with `args`.
    fn generator(&self, n: usize, mode: &str, args: &[&str]) -> Guarded {
        let log = self.dir.path().join(format!("gen{n}.log"));
        let prefix = format!("{}-{n}", self.gen_prefix);
        let mut cmd = Command::new(loadgen_bin());
        cmd.args(["--socket", &self.sock, "--file-prefix", &prefix, "--lcore", "0", "--no-huge", "--memory-mb", "384"])
            .args(["--mbufs", "8191", "--mode", mode, "--linger", "60"])
            .args(args);
        Guarded::spawn("fulcrum-loadgen", cmd, &log)
    }

    /// Waits for the generator's summary (it then lingers, not polling), stops
    /// the dataplane and then the generator, and checks both exited cleanly,
    /// every byte was verified and the dataplane returned every mbuf.
    fn finish(mut self, mut generator: Guarded, mode: &str) -> Status {
        wait_until(Duration::from_secs(90), "the generator's summary", || {
            summary(&generator).is_some() || !generator.is_running()
        });
        let dp_status = stop(&mut self.dp);
        let gen_status = stop(&mut generator);
        assert!(
            gen_status.success(),
            "fulcrum-loadgen {mode} failed ({gen_status}):\n{}\n--- dataplane ---\n{}",
            tail(generator.log_path(), 12),
            tail(&self.dp_log, 10)
        );
        assert!(dp_status.success(), "the dataplane exited with {dp_status}:\n{}", tail(&self.dp_log, 20));
        let log = fs::read_to_string(&self.dp_log).unwrap_or_default();
        assert!(log.contains("mbufs in use: 0 of"), "the dataplane did not return every mbuf:\n{}", tail(&self.dp_log, 10));
        let s = summary(&generator).expect("a summary");
        let c = &s.counters;
        assert_eq!((c.bad_responses, c.bad_requests, c.failed, c.timeouts), (0, 0, 0, 0), "{s:?}");
        s
    }
}

fn loadgen_bin() -> PathBuf {
    bin_dir().join("fulcrum-loadgen")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repository").to_path_buf()
}

/// Runs one generator (mode, args) against a fresh dataplane; returns the
/// generator's summary.
fn run(tag: &str, mode: &str, args: &[&str]) -> Status {
    let setup = Setup::start(tag);
    let generator = setup.generator(0, mode, args);
    setup.finish(generator, mode)
}

#[test]
fn loadgen_completes_verified_requests_through_the_proxy_over_memif() {
    let _lock = serial();

    // Keep-alive: 2000 responses over 32 connections, each checked byte for byte.
    let ka = run("ka", "keepalive", &["--connections", "32", "--requests", "2000", "--duration", "60"]).counters;
    assert!(ka.responses >= 2000, "{ka:?}");
    assert!(ka.served >= ka.responses, "backends served fewer than the clients got: {ka:?}");
    assert_eq!(ka.connects, 32, "keep-alive connections were reopened: {ka:?}");

    // One request per connection: 500 connections, each through the VIP to a
    // backend and back, closed cleanly.
    let conn = run("conn", "conn", &["--connections", "16", "--requests", "500", "--duration", "60"]).counters;
    assert!(conn.responses >= 500, "{conn:?}");
    assert!(conn.accepted >= 500, "the backends accepted fewer connections than completed: {conn:?}");
    assert!(conn.closed_ok + 16 >= 500, "connections did not close cleanly: {conn:?}");

    // Bulk: two seconds of pattern through the VIP, every byte at its offset.
    let bulk = run("bulk", "bulk", &["--connections", "4", "--duration", "2"]).counters;
    assert!(bulk.bulk_bytes > 1_000_000, "{bulk:?}");
}

/// A memif peer killed (SIGKILL) in the middle of bulk traffic does not take
/// the dataplane down: DPDK's memif unmaps the peer's shared memory on the
/// interrupt thread when the control socket closes, and the dataplane's
/// disconnect guard keeps its lcore out of that memory first. The dataplane
/// logs the disconnect, keeps running, serves a second generator whose every
/// byte is verified, and returns every mbuf at exit.
#[test]
fn dataplane_survives_a_memif_peer_killed_mid_bulk() {
    let _lock = serial();
    let mut setup = Setup::start("kill");
    let status = setup.dir.path().join("gen0.json");
    let status_arg = status.to_str().unwrap().to_owned();
    let mut first = setup.generator(0, "bulk", &["--connections", "8", "--duration", "60", "--status-file", &status_arg]);
    // Bulk bytes verified by the generator: traffic flows both ways through the dataplane.
    wait_until(Duration::from_secs(60), "bulk bytes through the dataplane", || {
        fs::read_to_string(&status).ok().and_then(|t| serde_json::from_str::<Status>(&t).ok()).is_some_and(|s| s.counters.bulk_bytes > 1_000_000)
    });
    assert!(first.signal(Signal::SIGKILL), "the first generator exited before it was killed");
    first.wait_timeout(Duration::from_secs(10)).expect("SIGKILL ends the generator");
    wait_until(Duration::from_secs(30), "the dataplane's disconnect line", || {
        fs::read_to_string(&setup.dp_log).is_ok_and(|t| t.contains("memif peer disconnected")) || !setup.dp.is_running()
    });
    assert!(setup.dp.is_running(), "the dataplane died with its memif peer:\n{}", tail(&setup.dp_log, 20));

    let second = setup.generator(1, "bulk", &["--connections", "4", "--duration", "2"]);
    let s = setup.finish(second, "bulk");
    assert!(s.counters.bulk_bytes > 1_000_000, "the second generator's bulk run: {s:?}");
}
