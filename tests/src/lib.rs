//! Test harness for Fulcrum's integration tests.
//!
//! The integration tests (in `tests/tests/*.rs`) run the real DPDK dataplane binary on
//! a software device ([`SoftDevice`]: af_packet, af_xdp or net_tap, chosen by
//! `FULCRUM_SOFT_DEVICE`) and real kernel tools inside network namespaces built by
//! `scripts/topology.sh`:
//!
//! ```text
//!   P-cli  198.18.0.10 ─┐            namespace P-fab
//!   P-be1  198.18.0.21 ─┤  br0 198.18.0.1/24 ── P-dp (tap or veth) ── fulcrum-dataplane 198.18.0.2
//!   P-be2  198.18.0.22 ─┤
//!   P-be3  198.18.0.23 ─┘   (P-cli routes 198.18.1.0/24, the VIPs, via 198.18.0.2)
//! ```
//!
//! * [`Topology::up`] builds a topology with a unique prefix and tears it down on drop
//!   (success, failure and panic alike). It also holds a process-wide lock, so tests
//!   that use a topology (and so a dataplane) run one at a time even when the test
//!   runner uses threads. Hold at most one `Topology` per thread at a time.
//! * [`Dataplane::start`] starts `fulcrum-dataplane` inside `P-fab`, waits for it to be
//!   ready and attaches its tap to the bridge; it is killed on drop, and its log tail is
//!   printed when the test is panicking.
//! * [`wait_until`] / [`wait_for`] poll a condition with a bounded timeout: never use a
//!   fixed sleep as synchronisation.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub mod client;
pub mod cp;
pub mod ecmp;
pub mod flood;
pub mod forward_util;
pub mod netns;
pub mod pattern;
pub mod rawframe;
pub mod servers;
pub mod tcp;
pub mod vip;

pub use netns::{in_netns, raise_nofile_limit, spawn_in_netns};
pub use nix::sys::signal::Signal;
pub use serde_json::{self, Value};

// ---------------------------------------------------------------------------- device

/// The software device a test's dataplane runs on: the key of
/// `[dataplane] software` (the dataplane's `SoftDevice`, less `vdev`). Every
/// one of them has its kernel interface named `P-dp` where `topology.sh
/// attach` finds it, so tests do not depend on which it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftDevice {
    Tap,
    AfPacket,
    AfXdp,
}

/// The device tests run on unless `FULCRUM_SOFT_DEVICE` says otherwise: the
/// fastest that works here with several lcores (`scripts/bench.sh devices`
/// measures them); `scripts/test.sh` runs a smoke set on tap after the suite.
pub const DEFAULT_SOFT_DEVICE: SoftDevice = SoftDevice::AfPacket;

impl SoftDevice {
    pub const ALL: [SoftDevice; 3] = [SoftDevice::Tap, SoftDevice::AfPacket, SoftDevice::AfXdp];

    /// Its key in `[dataplane] software` (and its `FULCRUM_SOFT_DEVICE` value).
    pub fn key(self) -> &'static str {
        match self {
            SoftDevice::Tap => "tap",
            SoftDevice::AfPacket => "af_packet",
            SoftDevice::AfXdp => "af_xdp",
        }
    }

    /// `FULCRUM_SOFT_DEVICE` (`tap`, `af_packet`, `af_xdp`), else
    /// [`DEFAULT_SOFT_DEVICE`]. Panics on any other value: a typo must not
    /// silently test the default.
    pub fn from_env() -> SoftDevice {
        match std::env::var("FULCRUM_SOFT_DEVICE") {
            Err(_) => DEFAULT_SOFT_DEVICE,
            Ok(v) if v.is_empty() => DEFAULT_SOFT_DEVICE,
            Ok(v) => Self::ALL
                .into_iter()
                .find(|d| d.key() == v)
                .unwrap_or_else(|| panic!("FULCRUM_SOFT_DEVICE={v:?}: not one of tap, af_packet, af_xdp")),
        }
    }

    /// `software = { <key> = "<iface>"[, mac = "<mac>"] }`.
    pub fn config_line(self, iface: &str, mac: Option<&str>) -> String {
        match mac {
            None => format!("software = {{ {} = \"{iface}\" }}", self.key()),
            Some(m) => format!("software = {{ {} = \"{iface}\", mac = \"{m}\" }}", self.key()),
        }
    }
}

/// The device this test process runs dataplanes on ([`SoftDevice::from_env`]).
pub fn soft_device() -> SoftDevice {
    SoftDevice::from_env()
}

/// The dataplane's address in every topology.
pub const DATAPLANE_IP: &str = "198.18.0.2";
/// The control plane's address (on br0 in P-fab).
pub const FABRIC_IP: &str = "198.18.0.1";
/// The client's address (eth0 in P-cli).
pub const CLIENT_IP: &str = "198.18.0.10";
/// Backend addresses (eth0 in P-be1, P-be2, P-be3).
pub const BACKEND_IPS: [&str; 3] = ["198.18.0.21", "198.18.0.22", "198.18.0.23"];
/// The router's address on the fabric (eth0 in P-rtr): the dataplane's gateway
/// in [`base_config`] and the backends' default route.
pub const ROUTER_IP: &str = "198.18.0.254";
/// The router's address on the outside network (eth1 in P-rtr).
pub const ROUTER_OUTSIDE_IP: &str = "198.19.0.1";
/// The outside client's address (eth0 in P-out), beyond the router.
pub const OUTSIDE_CLIENT_IP: &str = "198.19.0.10";
/// The leaf namespaces of a topology on the fabric's bridge (besides `fab`; the
/// router `rtr` and the outside client `out` are not among them).
pub const LEAVES: [&str; 4] = ["cli", "be1", "be2", "be3"];
/// Python with scapy (Debian's; a `python3` earlier on PATH may lack scapy).
pub const PYTHON: &str = "/usr/bin/python3";

/// Default bound for [`Topology::exec`] commands.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------- paths

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().expect("tests/ has a parent").to_path_buf()
}

/// `<repo>/scripts/<name>`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("scripts").join(name)
}

/// `<repo>/tests/tools/<name>`.
pub fn tool(name: &str) -> PathBuf {
    repo_root().join("tests").join("tools").join(name)
}

/// Directory holding the release binaries: `$FULCRUM_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/release`, else `<repo>/target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FULCRUM_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        let d = if d.is_absolute() { d } else { repo_root().join(d) };
        return d.join("release");
    }
    repo_root().join("target").join("release")
}

/// Path of the `fulcrum-dataplane` binary (see [`bin_dir`]).
pub fn dataplane_bin() -> PathBuf {
    bin_dir().join("fulcrum-dataplane")
}

// ---------------------------------------------------------------------------- lock

static SERIAL: Mutex<()> = Mutex::new(());

/// The process-wide lock that serialises tests using a topology/dataplane.
/// Poison-tolerant: a test that panicked while holding it does not fail the others.
/// [`Topology::up`] takes it; call this directly only for tests without a topology
/// that still must not overlap with dataplane tests.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------- waiting

/// Poll `cond` (short steps, growing to 100 ms) until it is true; panic with `what`
/// after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || if cond() { Ok(()) } else { Err(String::new()) })
}

/// Poll `f` until it returns `Ok(v)`, and return `v`. On timeout, panic with `what` and
/// the message of the last `Err` (use it to say what was seen instead).
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut step = Duration::from_millis(5);
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            if last.is_empty() {
                panic!("timed out after {timeout:?} waiting for: {what}");
            }
            panic!("timed out after {timeout:?} waiting for: {what}\nlast seen: {last}");
        }
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------- commands

/// Run a command to completion and return its output (panics only if it can't start).
pub fn run(program: impl AsRef<OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"))
}

/// Run a command; panic with its output unless it exits 0. Returns stdout.
pub fn run_ok(program: impl AsRef<OsStr>, args: &[&str]) -> String {
    let program = program.as_ref();
    let out = run(program, args);
    if !out.status.success() {
        panic!("`{} {}` failed: {}", program.to_string_lossy(), args.join(" "), describe(&out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A human-readable summary of an `Output` (status, stdout, stderr).
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read_lossy(path: &Path) -> String {
    let mut v = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut v);
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// Last `n` lines of a file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut v = Vec::new();
    let _ = f.read_to_end(&mut v);
    let s = String::from_utf8_lossy(&v);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn send_signal(pid: u32, sig: Signal) -> bool {
    i32::try_from(pid).is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok())
}

// ---------------------------------------------------------------------------- guarded child

/// A long-running child process, killed (SIGKILL) on drop. Its stdout and stderr go to a
/// log file; when the test is panicking, drop prints the log's tail.
pub struct Guarded {
    child: Child,
    name: String,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Guarded {
    /// Spawn `cmd` with stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Guarded {
        let f = File::create(log).unwrap_or_else(|e| panic!("cannot create {log:?}: {e}"));
        let f2 = f.try_clone().expect("clone log fd");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name} ({cmd:?}): {e}"));
        Guarded { child, name: name.to_string(), log: log.to_path_buf(), status: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far.
    pub fn output(&self) -> String {
        read_lossy(&self.log)
    }

    /// Exit status if it has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Send a signal (e.g. `Signal::SIGINT`). Returns false if it could not be sent.
    pub fn signal(&mut self, sig: Signal) -> bool {
        self.is_running() && send_signal(self.pid(), sig)
    }

    /// Wait up to `timeout` for exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL (if still running) and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.is_running() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "==== {} (pid {}) output, last 40 lines ({}) ====\n{}\n==== end of {} ====",
                self.name,
                self.child.id(),
                self.log.display(),
                tail(&self.log, 40),
                self.name
            );
        }
    }
}

// ---------------------------------------------------------------------------- topology

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Directory of `<prefix>.owner` files (pid of the test process that made a topology).
pub const OWNER_DIR: &str = "/run/fulcrum-tests";

fn owner_file(prefix: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{prefix}.owner"))
}

/// A software-mode topology (see the crate docs), removed on drop.
pub struct Topology {
    prefix: String,
    dir: tempfile::TempDir,
    torn_down: bool,
    /// The instances of a topology built with [`Topology::up_instances`] (empty
    /// otherwise).
    instances: Vec<ecmp::Instance>,
    // Dropped last (fields drop after `Drop::drop`): teardown happens under the lock.
    _lock: MutexGuard<'static, ()>,
}

impl Topology {
    /// Build a topology with a fresh prefix `t` + 5 hex digits (taking the global lock).
    pub fn up() -> Topology {
        let lock = serial();
        assert_root();
        Self::up_with(Self::fresh_prefix(), lock, None, None)
    }

    /// [`Topology::up`] with every link at IP MTU `mtu` (`topology.sh up --mtu`:
    /// jumbo frames at 9000).
    pub fn up_mtu(mtu: u16) -> Topology {
        let lock = serial();
        assert_root();
        Self::up_with(Self::fresh_prefix(), lock, None, Some(mtu))
    }

    /// A fresh prefix (`t` + 5 hex digits) no namespace or owner file uses.
    fn fresh_prefix() -> String {
        let pid = std::process::id();
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let prefix = format!("t{:05x}", (pid.wrapping_mul(64).wrapping_add(n)) & 0xfffff);
            if Path::new("/var/run/netns").join(format!("{prefix}-fab")).exists()
                || owner_file(&prefix).exists()
                || Path::new(ecmp::RUN_DIR).join(&prefix).exists()
            {
                continue;
            }
            return prefix;
        }
        panic!("no free topology prefix found");
    }

    /// Build a topology with `n` (1..9) Fulcrum instances announcing VIPs over BGP to
    /// the router (`topology.sh up --instances n`, see [`ecmp`]), with a fresh prefix,
    /// taking the global lock like [`Topology::up`]. Dropping it stops every BIRD and
    /// removes everything, as for `up`.
    pub fn up_instances(n: usize) -> Topology {
        assert!((1..=9).contains(&n), "1..9 instances, not {n}");
        let lock = serial();
        assert_root();
        let prefix = Self::fresh_prefix();
        Self::up_with(prefix, lock, Some(n), None)
    }

    /// Build a topology with a given prefix (1..8 chars of [a-z0-9]).
    pub fn up_prefix(prefix: &str) -> Topology {
        let lock = serial();
        assert_root();
        Self::up_with(prefix.to_string(), lock, None, None)
    }

    fn up_with(prefix: String, lock: MutexGuard<'static, ()>, instances: Option<usize>, mtu: Option<u16>) -> Topology {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fulcrum-{prefix}-"))
            .tempdir()
            .expect("create temp dir");
        // Mark the prefix as ours, so scripts/test.sh's cleanup of leftovers leaves a
        // topology alone while the process that made it is alive.
        let _ = fs::create_dir_all(OWNER_DIR);
        let _ = fs::write(owner_file(&prefix), format!("{}\n", std::process::id()));
        let mut topo = Topology { prefix, dir, torn_down: false, instances: Vec::new(), _lock: lock };
        let n = instances.map(|n| n.to_string());
        let mtu = mtu.map(|m| m.to_string());
        let mut args = vec!["up"];
        if let Some(n) = &n {
            args.extend(["--instances", n.as_str()]);
        }
        if let Some(m) = &mtu {
            args.extend(["--mtu", m.as_str()]);
        }
        let out = topo.script(&args);
        if !out.status.success() {
            panic!("topology.sh {} --prefix {} failed: {}", args.join(" "), topo.prefix, describe(&out));
        }
        if let Some(n) = instances {
            let text = String::from_utf8_lossy(&out.stdout);
            topo.instances = text.lines().filter_map(ecmp::Instance::parse).collect();
            assert_eq!(
                topo.instances.len(),
                n,
                "topology.sh up --instances {n} printed {} instance lines:\n{}",
                topo.instances.len(),
                describe(&out)
            );
        }
        topo
    }

    fn script(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--prefix", &self.prefix]);
        run(script("topology.sh"), &all)
    }

    /// The prefix, e.g. `t1a2b3`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Full namespace name for a short name: `ns("cli")` == `"P-cli"`. A name that
    /// already starts with `P-` is returned as is.
    pub fn ns(&self, leaf: &str) -> String {
        if leaf.starts_with(&format!("{}-", self.prefix)) {
            leaf.to_string()
        } else {
            format!("{}-{}", self.prefix, leaf)
        }
    }

    /// The dataplane's tap interface name, `P-dp`.
    pub fn tap(&self) -> String {
        format!("{}-dp", self.prefix)
    }

    /// A scratch directory that lives as long as the topology.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `Command` for `ip netns exec P-<leaf> <program>` (add args, env, ... yourself).
    pub fn command(&self, leaf: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(self.ns(leaf)).arg(program);
        c
    }

    /// Run `args` in namespace `leaf`, bounded by [`EXEC_TIMEOUT`]; returns its output
    /// (exit status 124 means it was timed out).
    pub fn exec(&self, leaf: &str, args: &[&str]) -> Output {
        self.exec_timeout(leaf, args, EXEC_TIMEOUT)
    }

    /// Like [`exec`](Self::exec) with an explicit bound.
    pub fn exec_timeout(&self, leaf: &str, args: &[&str], timeout: Duration) -> Output {
        assert!(!args.is_empty(), "exec: empty command");
        let secs = format!("{:.1}", timeout.as_secs_f64().max(0.1));
        let mut c = self.command(leaf, "timeout");
        c.args(["--kill-after=5", &secs]).args(args).stdin(Stdio::null());
        c.output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
    }

    /// Run `args` in `leaf`; panic with the output unless it exits 0. Returns stdout.
    pub fn exec_ok(&self, leaf: &str, args: &[&str]) -> String {
        let out = self.exec(leaf, args);
        if !out.status.success() {
            panic!("`{}` in {} failed: {}", args.join(" "), self.ns(leaf), describe(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Spawn a long-running command in `leaf` as a guarded child (killed on drop; output
    /// in a log file under [`dir`](Self::dir)).
    pub fn spawn(&self, leaf: &str, args: &[&str]) -> Guarded {
        assert!(!args.is_empty(), "spawn: empty command");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prog = Path::new(args[0]).file_name().map(|s| s.to_string_lossy().into_owned());
        let name = format!("{}:{}", leaf, prog.unwrap_or_default());
        let log = self.dir().join(format!("{leaf}-{n}.log"));
        let mut c = self.command(leaf, args[0]);
        c.args(&args[1..]);
        Guarded::spawn(&name, c, &log)
    }

    /// `topology.sh attach --prefix P --tap NAME` (panics if it fails).
    pub fn attach(&self, tap: &str) {
        let out = self.script(&["attach", "--tap", tap]);
        if !out.status.success() {
            panic!("topology.sh attach --prefix {} --tap {tap} failed: {}", self.prefix, describe(&out));
        }
    }

    /// Tear down now (also done by drop). Panics if `topology.sh down` fails.
    pub fn down(mut self) {
        self.torn_down = true;
        let out = self.script(&["down"]);
        let _ = fs::remove_file(owner_file(&self.prefix));
        if !out.status.success() {
            panic!("topology.sh down --prefix {} failed: {}", self.prefix, describe(&out));
        }
    }

    /// What a dataplane started with file prefix `prefix` leaves behind by itself: its
    /// EAL runtime directory `/var/run/dpdk/P` and hugepage files `/dev/hugepages/Pmap_*`.
    /// Check it after the dataplane exits and before the topology is torn down
    /// (`topology.sh down` removes the runtime directory too).
    pub fn dataplane_leftovers(prefix: &str) -> Vec<String> {
        let mut left = Vec::new();
        let rt = Path::new("/var/run/dpdk").join(prefix);
        if rt.exists() {
            left.push(format!("{}", rt.display()));
        }
        if let Ok(rd) = fs::read_dir("/dev/hugepages") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{prefix}map_")) {
                    left.push(format!("/dev/hugepages/{n}"));
                }
            }
        }
        left
    }

    /// What of this prefix is left on the machine (namespaces, root-namespace tap,
    /// /var/run/dpdk/P, hugepage files); empty when clean.
    pub fn leftovers(prefix: &str) -> Vec<String> {
        let mut left = Vec::new();
        if let Ok(rd) = fs::read_dir("/var/run/netns") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{prefix}-")) {
                    left.push(format!("namespace {n}"));
                }
            }
        }
        // The tap, or a veth's kernel side (`P-dp`) and DPDK side (`P-dp-d`).
        for tap in [format!("{prefix}-dp"), format!("{prefix}-dp-d")] {
            if Path::new("/sys/class/net").join(&tap).exists() {
                left.push(format!("interface {tap} in the root namespace"));
            }
        }
        left.extend(Self::dataplane_leftovers(prefix));
        // What `up --instances` adds: taps P-dp2.., EAL prefixes P-<suffix> (any
        // further dataplane a test starts here), BIRD's files.
        for k in 2..=9 {
            let t = format!("{prefix}-dp{k}");
            if Path::new("/sys/class/net").join(&t).exists() {
                left.push(format!("interface {t} in the root namespace"));
            }
        }
        if let Ok(rd) = fs::read_dir("/var/run/dpdk") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{prefix}-")) {
                    left.extend(Self::dataplane_leftovers(&n));
                }
            }
        }
        let run = Path::new(ecmp::RUN_DIR).join(prefix);
        if run.exists() {
            left.push(format!("{}", run.display()));
        }
        left
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        // Never panic here: this runs while unwinding from a failed test.
        let out = Command::new(script("topology.sh"))
            .args(["down", "--prefix", &self.prefix])
            .stdin(Stdio::null())
            .output();
        let _ = fs::remove_file(owner_file(&self.prefix));
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("topology.sh down --prefix {} failed: {}", self.prefix, describe(&out)),
            Err(e) => eprintln!("cannot run topology.sh down --prefix {}: {e}", self.prefix),
        }
    }
}

fn assert_root() {
    let euid = nix::unistd::geteuid();
    assert!(euid.is_root(), "integration tests need root (network namespaces, DPDK, taps)");
}

// ---------------------------------------------------------------------------- dataplane

/// Options for [`Dataplane::start_with`].
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// TOML merged (deeply, overriding) into the base config, e.g.
    /// `"[dataplane]\nlcores = \"0,1\"\n"` or extra tables.
    pub extra_config: String,
    /// Extra EAL arguments (passed after `--`).
    pub eal_args: Vec<String>,
    /// Extra environment for the process (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Bound on waiting for the `ready` line.
    pub ready_timeout: Duration,
    /// Run `topology.sh attach` after ready (default true).
    pub attach: bool,
    /// Give the port this MAC (`xx:xx:xx:xx:xx:xx`, `software.mac`), so that a
    /// restarted dataplane keeps its MAC as a restarted machine keeps its NIC's,
    /// and neighbours' ARP caches stay right. None (default): the device's own.
    pub mac: Option<String>,
    /// The software device; None (default): [`soft_device`]. Tests of what only
    /// one device has (a tap's kernel queue) name it here.
    pub device: Option<SoftDevice>,
    /// Start instance k's dataplane of a topology built with
    /// [`Topology::up_instances`] ([`instance_base_config`]: its address, tap, EAL
    /// file prefix and lcore). None (default): the topology's single dataplane.
    pub instance: Option<usize>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            extra_config: String::new(),
            eal_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            attach: true,
            mac: None,
            device: None,
            instance: None,
        }
    }
}

/// The base config the harness writes for a topology (before merging extra TOML),
/// on [`soft_device`].
pub fn base_config(topo: &Topology) -> String {
    base_config_on(topo, soft_device(), None)
}

/// [`base_config`] on `device`, with the port's MAC set if `mac` is given.
pub fn base_config_on(topo: &Topology, device: SoftDevice, mac: Option<&str>) -> String {
    format!(
        "[dataplane]\n\
         address = \"{DATAPLANE_IP}/24\"\n\
         lcores = \"0\"\n\
         mbufs = 8191\n\
         file_prefix = \"{p}\"\n\
         gateway = \"{ROUTER_IP}\"\n\
         {software}\n",
        p = topo.prefix(),
        software = device.config_line(&topo.tap(), mac)
    )
}

/// The base config of instance `k` of a topology built with
/// [`Topology::up_instances`]: [`base_config`] with the instance's address
/// (198.18.0.2, 198.18.0.42, ...), tap (`P-dp`, `P-dp2`, ...) and EAL file prefix
/// (`P`, `P-dp2`, ...), so that several dataplanes run side by side; instance k polls
/// lcore (k-1) modulo the machine's CPUs, so two instances do not share a core.
pub fn instance_base_config(topo: &Topology, k: usize) -> String {
    instance_base_config_on(topo, k, soft_device(), None)
}

/// [`instance_base_config`] on `device`, with the port's MAC set if `mac` is given.
pub fn instance_base_config_on(topo: &Topology, k: usize, device: SoftDevice, mac: Option<&str>) -> String {
    let i = topo.instance(k);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "[dataplane]\n\
         address = \"{addr}/24\"\n\
         lcores = \"{lcore}\"\n\
         mbufs = 8191\n\
         file_prefix = \"{fp}\"\n\
         gateway = \"{ROUTER_IP}\"\n\
         {software}\n",
        addr = i.dataplane_ip,
        lcore = (k - 1) % cpus,
        fp = i.file_prefix,
        software = device.config_line(&i.tap, mac)
    )
}

/// Deep-merge TOML `extra` over `base` (tables merge, other values replace).
pub fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(dst: &mut toml::Table, src: toml::Table) {
        for (k, v) in src {
            match (dst.get_mut(&k), v) {
                (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
                (_, v) => {
                    dst.insert(k, v);
                }
            }
        }
    }
    let mut b: toml::Table = base.parse().unwrap_or_else(|e| panic!("base config: {e}\n{base}"));
    let e: toml::Table = extra.parse().unwrap_or_else(|e| panic!("extra config: {e}\n{extra}"));
    merge(&mut b, e);
    toml::to_string(&b).expect("serialise config")
}

/// A running `fulcrum-dataplane` inside `P-fab`. Killed on drop.
pub struct Dataplane {
    proc: Guarded,
    dir: tempfile::TempDir,
    config: PathBuf,
    stats_file: PathBuf,
    mac: String,
    ready_line: String,
    /// What it was started with (for [`Dataplane::restart`]).
    opts: Option<StartOptions>,
}

impl Dataplane {
    /// Start with the base config plus `extra_config_toml` (may be empty), wait for
    /// `ready`, attach its interface (tap, or veth kernel side) to br0.
    pub fn start(topo: &Topology, extra_config_toml: &str) -> Dataplane {
        Self::start_with(topo, StartOptions { extra_config: extra_config_toml.to_string(), ..Default::default() })
    }

    /// Writes the config and spawns the process: `(the dataplane, not yet
    /// ready; its interface's name)`.
    fn launch(topo: &Topology, opts: &StartOptions) -> (Dataplane, String) {
        let bin = dataplane_bin();
        assert!(
            bin.is_file(),
            "{} not found: build it with `cargo build --release --workspace --bins` \
             (or set FULCRUM_BIN_DIR)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("fulcrum-dp-{}-", topo.prefix()))
            .tempdir()
            .expect("create temp dir");
        let config = dir.path().join("fulcrum.toml");
        let stats_file = dir.path().join("stats.json");
        let log = dir.path().join("dataplane.log");
        let device = opts.device.unwrap_or_else(soft_device);
        let mac = opts.mac.as_deref();
        let (base, tap) = match opts.instance {
            None => (base_config_on(topo, device, mac), topo.tap()),
            Some(k) => (instance_base_config_on(topo, k, device, mac), topo.instance(k).tap.clone()),
        };
        let text = if opts.extra_config.trim().is_empty() {
            base
        } else {
            merge_toml(&base, &opts.extra_config)
        };
        fs::write(&config, &text).expect("write config");

        let mut cmd = topo.command("fab", &bin);
        cmd.arg("--config").arg(&config).arg("--stats-file").arg(&stats_file);
        if !opts.eal_args.is_empty() {
            cmd.arg("--").args(&opts.eal_args);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let proc = Guarded::spawn("fulcrum-dataplane", cmd, &log);
        (Dataplane { proc, dir, config, stats_file, mac: String::new(), ready_line: String::new(), opts: None }, tap)
    }

    /// Starts a dataplane that must refuse to start (bad configuration, a
    /// device that cannot do what is asked): waits (bounded) for it to exit
    /// unsuccessfully, and returns its log. Panics if it gets ready.
    pub fn start_failing(topo: &Topology, opts: StartOptions) -> String {
        let (mut dp, _) = Self::launch(topo, &opts);
        let status = dp.proc.wait_timeout(opts.ready_timeout);
        let log = dp.log();
        assert!(!log.lines().any(|l| has_word(l, "ready")), "the dataplane got ready; it should have refused:\n{log}");
        match status {
            Some(s) => assert!(!s.success(), "the dataplane exited successfully; it should have failed:\n{log}"),
            None => panic!("the dataplane neither failed nor got ready in {:?}:\n{log}", opts.ready_timeout),
        }
        log
    }

    pub fn start_with(topo: &Topology, opts: StartOptions) -> Dataplane {
        let (mut dp, tap) = Self::launch(topo, &opts);
        // Wait for the ready line; fail early if the process exits.
        let start = Instant::now();
        loop {
            let text = dp.log();
            if let Some(line) = text.lines().find(|l| has_word(l, "ready")) {
                dp.ready_line = line.to_string();
                break;
            }
            if let Some(status) = dp.proc.try_status() {
                panic!(
                    "fulcrum-dataplane exited ({status}) before it was ready.\nconfig:\n{text_cfg}\n\
                     ==== log ====\n{log}\n==== end of log ====",
                    text_cfg = read_lossy(&dp.config),
                    log = dp.log()
                );
            }
            if start.elapsed() > opts.ready_timeout {
                panic!(
                    "fulcrum-dataplane not ready after {:?}.\n==== log ====\n{}\n==== end of log ====",
                    opts.ready_timeout,
                    dp.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        dp.mac = find_mac(&dp.ready_line)
            .or_else(|| dp.log().lines().find_map(|l| l.find("mac ").and_then(|i| find_mac(&l[i..]))))
            .unwrap_or_default();
        if opts.attach {
            topo.attach(&tap);
        }
        dp.opts = Some(opts);
        dp
    }

    /// Stops this dataplane (SIGTERM, bounded) and starts another with the same
    /// options and config; returns `(time to stop, time from stop to ready and
    /// attached)`. Its counters start from zero. Keep the MAC across the restart
    /// with [`StartOptions::mac`].
    pub fn restart(&mut self, topo: &Topology) -> (Duration, Duration) {
        let opts = self.opts.clone().expect("started by start_with");
        let (_, stopped) = self.stop_sigterm();
        let t = Instant::now();
        *self = Dataplane::start_with(topo, opts);
        (stopped, t.elapsed())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The DPDK port's MAC (lowercase `xx:xx:xx:xx:xx:xx`), parsed from the log's ready
    /// line (or a `mac <addr>` line). Panics if none was logged.
    pub fn mac(&self) -> String {
        assert!(!self.mac.is_empty(), "dataplane logged no MAC; ready line: {:?}", self.ready_line);
        self.mac.clone()
    }

    /// The first log line containing the word `ready`.
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// The whole log so far (stdout+stderr).
    pub fn log(&self) -> String {
        self.proc.output()
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn stats_path(&self) -> &Path {
        &self.stats_file
    }

    /// Scratch directory of this dataplane (config, log, stats).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Panic with the log unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.proc.try_status() {
            panic!("fulcrum-dataplane is not running ({s})\n==== log ====\n{}\n==== end of log ====", self.log());
        }
    }

    /// Send `sig`, wait up to 10 s for exit; returns the status and how long it took.
    /// Panics (after SIGKILL) if the process does not exit in 10 s or was not running.
    pub fn stop(&mut self, sig: Signal) -> (ExitStatus, Duration) {
        self.assert_running();
        let t0 = Instant::now();
        assert!(self.proc.signal(sig), "could not signal pid {}", self.pid());
        match self.proc.wait_timeout(Duration::from_secs(10)) {
            Some(s) => (s, t0.elapsed()),
            None => {
                self.proc.kill();
                panic!(
                    "fulcrum-dataplane did not exit within 10 s of signal {sig}\n==== log ====\n{}\n==== end of log ====",
                    self.log()
                );
            }
        }
    }

    /// SIGINT, bounded wait: `(exit status, time to exit)`.
    pub fn stop_sigint(&mut self) -> (ExitStatus, Duration) {
        self.stop(Signal::SIGINT)
    }

    /// SIGTERM, bounded wait: `(exit status, time to exit)`.
    pub fn stop_sigterm(&mut self) -> (ExitStatus, Duration) {
        self.stop(Signal::SIGTERM)
    }

    /// The stats file, if it exists and parses.
    pub fn try_stats(&self) -> Option<Value> {
        let text = fs::read_to_string(&self.stats_file).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The stats file (waits up to 5 s for it to appear; panics with the log if not).
    pub fn stats(&self) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.try_stats() {
                return v;
            }
            if start.elapsed() > Duration::from_secs(5) {
                panic!(
                    "no readable stats file at {} after 5 s\n==== log ====\n{}\n==== end of log ====",
                    self.stats_file.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sum of drop reason `reason` over lcores, from a fresh read of the stats file.
    pub fn drops(&self, reason: &str) -> u64 {
        drop_count(&self.stats(), reason)
    }

    /// Poll the stats file until `f(stats)` is `Ok`; on timeout panic with `what`, the
    /// last `Err` message and the last stats. The stats file is rewritten about once a
    /// second: give it a few seconds.
    #[track_caller]
    pub fn wait_stats<T>(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Value) -> Result<T, String>) -> T {
        wait_for(timeout, what, || match self.try_stats() {
            None => Err("no stats file yet".to_string()),
            Some(v) => f(&v).map_err(|e| format!("{e}\nstats: {v}")),
        })
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // Guarded's drop kills the process and prints the log tail when panicking.
        if std::thread::panicking() {
            eprintln!(
                "==== fulcrum-dataplane config ({}) ====\n{}",
                self.config.display(),
                read_lossy(&self.config)
            );
            if let Some(s) = self.try_stats() {
                eprintln!("==== last stats ====\n{s}");
            }
        }
    }
}

/// Sum of `drops.<reason>` over `lcores[]` (0 when absent).
pub fn drop_count(stats: &Value, reason: &str) -> u64 {
    sum_lcores(stats, |l| l.get("drops").and_then(|d| d.get(reason)))
}

/// Sum of a per-lcore counter (`rx_packets`, `tx_bytes`, ...) over `lcores[]`.
pub fn lcore_sum(stats: &Value, field: &str) -> u64 {
    sum_lcores(stats, |l| l.get(field))
}

/// All drop reasons, summed over lcores, sorted by name.
pub fn all_drops(stats: &Value) -> Vec<(String, u64)> {
    let mut m = std::collections::BTreeMap::<String, u64>::new();
    for l in stats.get("lcores").and_then(Value::as_array).into_iter().flatten() {
        if let Some(d) = l.get("drops").and_then(Value::as_object) {
            for (k, v) in d {
                *m.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    m.into_iter().collect()
}

/// `"name=N name=N ..."` for messages.
pub fn format_drops(stats: &Value) -> String {
    let mut s = String::new();
    for (k, v) in all_drops(stats) {
        let _ = write!(s, "{k}={v} ");
    }
    s.trim_end().to_string()
}

fn sum_lcores<'a>(stats: &'a Value, get: impl Fn(&'a Value) -> Option<&'a Value>) -> u64 {
    stats
        .get("lcores")
        .and_then(Value::as_array)
        .map(|ls| ls.iter().filter_map(|l| get(l).and_then(Value::as_u64)).sum())
        .unwrap_or(0)
}

/// True if `line` contains `word` delimited by non-alphanumeric characters.
pub fn has_word(line: &str, word: &str) -> bool {
    line.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').any(|w| w.eq_ignore_ascii_case(word))
}

/// The first `xx:xx:xx:xx:xx:xx` in `s`, lowercased.
pub fn find_mac(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 17 {
        return None;
    }
    (0..=b.len() - 17).find_map(|i| {
        let c = &b[i..i + 17];
        let ok = (0..17).all(|j| if j % 3 == 2 { c[j] == b':' } else { c[j].is_ascii_hexdigit() });
        let bounded = (i == 0 || !b[i - 1].is_ascii_hexdigit() && b[i - 1] != b':')
            && (i + 17 == b.len() || !b[i + 17].is_ascii_hexdigit() && b[i + 17] != b':');
        (ok && bounded).then(|| String::from_utf8_lossy(c).to_lowercase())
    })
}

/// Neighbour (ARP) entry for `ip` in namespace `leaf`: `(lladdr, state)`, e.g.
/// `(Some("02:..."), "REACHABLE")`; `None` if there is no entry.
pub fn neighbour(topo: &Topology, leaf: &str, ip: &str) -> Option<(Option<String>, String)> {
    let out = topo.exec_ok(leaf, &["ip", "neigh", "show", ip]);
    let line = out.lines().find(|l| l.split_whitespace().next() == Some(ip))?;
    let mac = find_mac(line);
    let state = line.split_whitespace().last().unwrap_or("").to_string();
    Some((mac, state))
}

/// Counters of an interface (`ip -s -j link show`) in namespace `leaf`:
/// e.g. `iface_stat(&topo, "fab", "P-dp", "tx", "dropped")`.
pub fn iface_stat(topo: &Topology, leaf: &str, iface: &str, dir: &str, field: &str) -> Option<u64> {
    let out = topo.exec(leaf, &["ip", "-s", "-j", "link", "show", "dev", iface]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?.get("stats64")?.get(dir)?.get(field)?.as_u64()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(find_mac("port 0 ready mac 0A:1b:2c:3d:4e:5f lcores 1").as_deref(), Some("0a:1b:2c:3d:4e:5f"));
        assert_eq!(find_mac("mac=02:00:00:00:00:01").as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(find_mac("no mac here 12:34"), None);
        assert_eq!(find_mac("aa:bb:cc:dd:ee:ff:00"), None);
    }

    #[test]
    fn words() {
        assert!(has_word("INFO fulcrum: port 0 ready, mac x", "ready"));
        assert!(has_word("ready", "ready"));
        assert!(!has_word("already configured", "ready"));
        assert!(!has_word("not_ready yet", "ready"));
    }

    #[test]
    fn drop_sums() {
        let v: Value = serde_json::from_str(
            r#"{"lcores":[{"lcore":0,"rx_packets":5,"drops":{"eth_truncated":2,"tcp_malformed":1}},
                          {"lcore":1,"rx_packets":7,"drops":{"eth_truncated":3}}],
                "mbufs_in_use":0,"mbufs_total":8191}"#,
        )
        .unwrap();
        assert_eq!(drop_count(&v, "eth_truncated"), 5);
        assert_eq!(drop_count(&v, "tcp_malformed"), 1);
        assert_eq!(drop_count(&v, "udp_malformed"), 0);
        assert_eq!(lcore_sum(&v, "rx_packets"), 12);
        assert_eq!(format_drops(&v), "eth_truncated=5 tcp_malformed=1");
    }

    #[test]
    fn config_merge() {
        let base = "[dataplane]\naddress = \"198.18.0.2/24\"\nlcores = \"0\"\nsoftware = { tap = \"x-dp\" }\n";
        let m = merge_toml(base, "[dataplane]\nlcores = \"0,1\"\n[[vip]]\naddress = \"198.18.1.1\"\n");
        let t: toml::Table = m.parse().unwrap();
        assert_eq!(t["dataplane"]["lcores"].as_str(), Some("0,1"));
        assert_eq!(t["dataplane"]["address"].as_str(), Some("198.18.0.2/24"));
        assert_eq!(t["dataplane"]["software"]["tap"].as_str(), Some("x-dp"));
        assert_eq!(t["vip"][0]["address"].as_str(), Some("198.18.1.1"));
    }
}
