//! The control plane in the integration tests: `fulcrum-controlplane` run inside
//! `P-fab` (so its health checks, from 198.18.0.1, reach the backends) and driven with
//! `fulcrumctl` over its unix socket, plus client helpers for the control-plane end to
//! end tests (background traffic with per-request records, paced connection offers
//! from an optional source address, raw access to the shared-memory file).
//!
//! Files: a temporary directory per [`ControlPlane`] (config, socket, state file,
//! logs) and the segment at `/dev/shm/fulcrum-test-<prefix>-<n>`; both are removed on
//! drop, and the daemon (a [`Guarded`] child) is killed on drop.

use std::fs::{self, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::time::TimeVal;
use serde_json::Value;

use crate::netns::{spawn_in_netns, IO_THREAD_STACK};
use crate::tcp::{self, read_until, write_all_until, Until};
use crate::{bin_dir, describe, wait_for, Guarded, Topology};

/// `fulcrum-controlplane` next to the dataplane binary (see [`bin_dir`]).
pub fn controlplane_bin() -> PathBuf {
    bin_dir().join("fulcrum-controlplane")
}

/// `fulcrumctl` next to the dataplane binary.
pub fn fulcrumctl_bin() -> PathBuf {
    bin_dir().join("fulcrumctl")
}

static SHM_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A `fulcrum-controlplane` inside `P-fab`. Killed on drop; its files are removed.
pub struct ControlPlane {
    proc: Option<Guarded>,
    dir: tempfile::TempDir,
    shm: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    state_file: PathBuf,
    fab: String,
    starts: u32,
}

impl ControlPlane {
    /// Write `[controlplane]` (unique shm/socket/state paths, Prometheus off, health
    /// checks from 198.18.0.1) plus `vips_toml` (`[[vip]]` tables), start the daemon in
    /// `P-fab` and wait until it answers `fulcrumctl status`.
    pub fn start(topo: &Topology, vips_toml: &str) -> ControlPlane {
        Self::start_with_prometheus(topo, vips_toml, "")
    }

    /// Like [`start`](Self::start), with Prometheus on `prometheus` (an address
    /// inside `P-fab`, e.g. `127.0.0.1:9469`; read it with `curl` in `fab`).
    pub fn start_with_prometheus(topo: &Topology, vips_toml: &str, prometheus: &str) -> ControlPlane {
        Self::start_in(topo, &topo.ns("fab"), crate::FABRIC_IP, vips_toml, prometheus)
    }

    /// Instance `inst`'s control plane ([`Topology::up_instances`]): it runs in the
    /// instance's own namespace (P-lbk), health-checks from its kernel address and
    /// announces through the instance's BIRD (`[bgp]`: its socket, its routes file,
    /// next hop its dataplane's address). `vips_toml` is the VIPs (the same on every
    /// instance of a pool).
    pub fn start_for_instance(topo: &Topology, inst: &crate::ecmp::Instance, vips_toml: &str) -> ControlPlane {
        let bgp = format!(
            "[bgp]\nbird_socket = {:?}\nroutes_file = {:?}\nnext_hop = \"{}\"\n\n",
            inst.bird_socket, inst.routes_file, inst.dataplane_ip
        );
        Self::start_in(topo, &inst.netns, &inst.kernel_ip, &format!("{bgp}{vips_toml}"), "")
    }

    fn start_in(topo: &Topology, netns: &str, health_source: &str, vips_toml: &str, prometheus: &str) -> ControlPlane {
        let bin = controlplane_bin();
        assert!(bin.is_file(), "{} not found: build with `cargo build --release --bins`", bin.display());
        assert!(fulcrumctl_bin().is_file(), "{} not found", fulcrumctl_bin().display());
        let dir = tempfile::Builder::new()
            .prefix(&format!("fulcrum-cp-{}-", topo.prefix()))
            .tempdir()
            .expect("create temp dir");
        let n = SHM_COUNTER.fetch_add(1, Ordering::Relaxed);
        let shm = PathBuf::from(format!("/dev/shm/fulcrum-test-{}-{}-{n}", topo.prefix(), std::process::id()));
        let _ = fs::remove_file(&shm);
        let config = dir.path().join("controlplane.toml");
        let socket = dir.path().join("run/control.sock");
        let state_file = dir.path().join("state/controlplane.json");
        let text = format!(
            "[controlplane]\nshm = {shm:?}\nsocket = {socket:?}\nstate_file = {state_file:?}\n\
             prometheus = \"{prometheus}\"\nhealth_source = \"{health_source}\"\n\n{vips_toml}"
        );
        fs::write(&config, text).expect("write controlplane.toml");
        let mut cp = ControlPlane { proc: None, dir, shm, config, socket, state_file, fab: netns.to_string(), starts: 0 };
        cp.spawn();
        cp
    }

    /// Start the daemon (again) on the same files; waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.proc.as_mut().is_none_or(|p| !p.is_running()), "control plane already running");
        self.starts += 1;
        let log = self.dir.path().join(format!("controlplane-{}.log", self.starts));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.fab]).arg(controlplane_bin()).arg("--config").arg(&self.config);
        let mut proc = Guarded::spawn("fulcrum-controlplane", cmd, &log);
        let pid = u64::from(proc.pid());
        let sock = self.socket.clone();
        wait_for(Duration::from_secs(20), "fulcrum-controlplane to answer `fulcrumctl status`", || {
            if let Some(st) = proc.try_status() {
                panic!("fulcrum-controlplane exited ({st}):\n{}", proc.output());
            }
            let out = ctl_at(&sock, &["--json", "status"]);
            let v: Value = serde_json::from_slice(&out.stdout).map_err(|_| describe(&out))?;
            if v["controlplane"]["pid"].as_u64() == Some(pid) {
                Ok(())
            } else {
                Err(format!("status answered by pid {}", v["controlplane"]["pid"]))
            }
        });
        self.proc = Some(proc);
    }

    /// SIGKILL the daemon (no clean shutdown: its socket file and heartbeat stay).
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// Send `sig` (SIGTERM or SIGINT: a clean stop) and wait up to 10 s for the daemon
    /// to exit; returns its exit status and how long it took. Panics with its log if
    /// it was not running or does not exit in time (it is then killed).
    pub fn stop(&mut self, sig: crate::Signal) -> (std::process::ExitStatus, Duration) {
        let p = self.proc.as_mut().expect("control plane was never started");
        assert!(p.is_running(), "control plane not running before {sig}:\n{}", p.output());
        let t0 = Instant::now();
        assert!(p.signal(sig), "could not send {sig} to pid {}", p.pid());
        match p.wait_timeout(Duration::from_secs(10)) {
            Some(status) => (status, t0.elapsed()),
            None => {
                p.kill();
                panic!("fulcrum-controlplane did not exit within 10 s of {sig}:\n{}", p.output());
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Guarded::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Guarded::is_running)
    }

    /// Everything the current daemon wrote so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Guarded::output).unwrap_or_default()
    }

    pub fn shm_path(&self) -> &Path {
        &self.shm
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Extra dataplane config: subscribe to this control plane's segment, no VIPs.
    pub fn dataplane_toml(&self) -> String {
        format!("[dataplane]\nshm = {:?}\n", self.shm)
    }

    /// Run `fulcrumctl --socket S ARGS...` (bounded by `timeout`).
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.socket, args)
    }

    /// Like [`ctl`](Self::ctl); panics unless it exits 0. Returns stdout.
    #[track_caller]
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        if !out.status.success() {
            panic!("fulcrumctl {args:?} failed: {}\n==== control plane log ====\n{}", describe(&out), self.log());
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `fulcrumctl --json ARGS...`, parsed (panics if it fails or is not JSON).
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let text = self.ctl_ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("fulcrumctl {args:?}: not JSON ({e}): {text}"))
    }

    /// `fulcrumctl --json ARGS...` without panicking (for polling).
    pub fn try_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(&a);
        if !out.status.success() {
            return Err(describe(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", describe(&out)))
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// Wait until the dataplane is `up` and has applied what is published; returns
    /// the generation.
    #[track_caller]
    pub fn wait_applied(&self, timeout: Duration) -> u64 {
        wait_for(timeout, "the dataplane to be up and apply the published generation", || {
            let s = self.try_json(&["status"])?;
            let (p, a) = (s["generation"]["published"].as_u64(), s["generation"]["applied"].as_u64());
            match p {
                Some(p) if s["dataplane"]["state"] == "up" && a == Some(p) && p != 0 => Ok(p),
                _ => Err(s.to_string()),
            }
        })
    }

    /// Wait until the dataplane has applied at least generation `g`.
    #[track_caller]
    pub fn wait_applied_at_least(&self, g: u64, timeout: Duration) -> Value {
        wait_for(timeout, &format!("the dataplane to apply generation {g}"), || {
            let s = self.try_json(&["status"])?;
            if s["generation"]["applied"].as_u64().unwrap_or(0) >= g {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
    }

    /// The `fulcrumctl health --json` entry of `backend` (`"198.18.0.22:8080"`).
    pub fn health_of(&self, backend: &str) -> Result<Value, String> {
        let h = self.try_json(&["health"])?;
        h.as_array()
            .and_then(|a| a.iter().find(|e| e["backend"] == backend).cloned())
            .ok_or_else(|| format!("no health entry for {backend}: {h}"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Kill first (Guarded prints the log tail when panicking), then remove files.
        if let Some(mut p) = self.proc.take() {
            p.kill();
            if thread::panicking() {
                eprintln!("==== controlplane config ====\n{}", fs::read_to_string(&self.config).unwrap_or_default());
                eprintln!("==== state file ====\n{}", fs::read_to_string(&self.state_file).unwrap_or_default());
            }
        }
        let _ = fs::remove_file(&self.shm);
    }
}

/// `fulcrumctl --socket <sock> ARGS` with a 20 s bound.
pub fn ctl_at(sock: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("timeout");
    c.args(["--kill-after=2", "20"]).arg(fulcrumctl_bin()).arg("--socket").arg(sock).args(args);
    c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run fulcrumctl: {e}"))
}

// ---------------------------------------------------------------------------- raw segment

/// Raw little-endian u64 access to the segment file with std file I/O (to corrupt it
/// on purpose; never used to read configuration the normal way).
pub struct RawSegment {
    f: fs::File,
}

impl RawSegment {
    pub fn open(path: &Path) -> RawSegment {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        RawSegment { f }
    }

    pub fn read_u64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.f.read_exact_at(&mut b, off).unwrap_or_else(|e| panic!("read at {off}: {e}"));
        u64::from_le_bytes(b)
    }

    pub fn write_u64(&self, off: u64, v: u64) {
        self.f.write_all_at(&v.to_le_bytes(), off).unwrap_or_else(|e| panic!("write at {off}: {e}"));
    }

    pub fn write_bytes(&self, off: u64, b: &[u8]) {
        self.f.write_all_at(b, off).unwrap_or_else(|e| panic!("write at {off}: {e}"));
    }
}

/// Byte offsets of the segment, from `fulcrum_shm::layout` (the one
/// definition; a copy here once went stale when the layout changed).
pub mod layout {
    use fulcrum_shm::layout as l;
    pub const CFG_ACTIVE: u64 = l::CFG_ACTIVE as u64;
    pub const DP_REJECTED_COUNT: u64 = l::DP_REJECTED_COUNT as u64;
    pub const DP_APPLIED_GEN: u64 = l::DP_APPLIED_GEN as u64;
    pub const SLOT_OFF: [u64; 2] = [l::SLOT0_OFF as u64, l::SLOT1_OFF as u64];
    pub const SLOT_SEQ: u64 = l::SLOT_SEQ as u64;
    pub const SLOT_GEN: u64 = l::SLOT_GEN as u64;
    pub const SLOT_LEN: u64 = l::SLOT_LEN as u64;
    pub const SLOT_SUM: u64 = l::SLOT_SUM as u64;
    pub const SLOT_PAYLOAD: u64 = l::SLOT_HDR as u64;
}

/// Deterministic garbage bytes (xorshift).
pub fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------- requests

/// One request of [`Traffic`].
#[derive(Clone, Debug)]
pub struct Req {
    pub start: Instant,
    pub end: Instant,
    /// The backend's answer (its name) or "ok", or what went wrong.
    pub result: Result<String, String>,
}

/// A request function: one fresh connection to `addr`.
pub type RequestFn = fn(SocketAddr) -> Result<String, String>;

/// `GET /` (the backend's name), 5 s bound.
pub fn http_request(addr: SocketAddr) -> Result<String, String> {
    crate::client::http_get(addr, Duration::from_secs(5))
}

/// Connect, echo a line back, close: `"ok"`. 5 s bound.
pub fn echo_request(addr: SocketAddr) -> Result<String, String> {
    crate::client::connect_and_roundtrip(addr, b"ping fulcrum\n", Duration::from_secs(5)).map(|_| "ok".to_string())
}

/// Background short-connection traffic from a namespace: `workers` threads each run
/// `request` in a loop (with `pause` between requests) until stopped or `max` elapsed.
/// Stopped and joined on drop.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Req>>>,
    handles: Vec<JoinHandle<()>>,
}

impl Traffic {
    pub fn start(
        ns: &str,
        addr: SocketAddr,
        workers: usize,
        pause: Duration,
        max: Duration,
        request: RequestFn,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + max;
        let handles = (0..workers)
            .map(|w| {
                let (stop, records) = (stop.clone(), records.clone());
                spawn_in_netns(ns, &format!("traffic-{w}"), move || {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let start = Instant::now();
                        let result = request(addr);
                        let end = Instant::now();
                        {
                            let mut r = records.lock().unwrap_or_else(|e| e.into_inner());
                            if r.len() < 2_000_000 {
                                r.push(Req { start, end, result });
                            }
                        }
                        // Load shaping, not synchronisation.
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Traffic { stop, records, handles }
    }

    /// The requests finished so far.
    pub fn records(&self) -> Vec<Req> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop, join, and return every request.
    pub fn finish(mut self) -> Vec<Req> {
        self.halt();
        self.records()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------- offers

/// Result of [`offer_connections`].
#[derive(Debug, Default, Clone)]
pub struct Offer {
    pub offered: u64,
    /// Connections accepted (and answered, if a request was sent).
    pub ok: u64,
    /// Refused: RST to the SYN (ECONNREFUSED) or reset right after.
    pub refused: u64,
    /// Anything else (timeouts, bad answers); the first 20 kept.
    pub other: u64,
    pub other_errors: Vec<String>,
    /// From the first to the last attempt started (measured).
    pub window: Duration,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// The latest an attempt started behind its schedule.
    pub max_lag: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Offer {
    pub fn accepted_rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }
    pub fn offered_rate(&self) -> f64 {
        self.offered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum Attempt {
    Ok,
    Refused,
    Other(String),
}

/// Connect to `addr` from `source` (if given) with a `timeout`-bounded blocking connect.
pub fn connect_from(source: Option<Ipv4Addr>, addr: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let tv = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
    if let Some(src) = source {
        socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    }
    match socket::connect(fd.as_raw_fd(), &SockaddrIn::from(addr)) {
        Ok(()) => Ok(TcpStream::from(fd)),
        Err(Errno::EINPROGRESS) | Err(Errno::EAGAIN) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

fn attempt(source: Option<Ipv4Addr>, addr: SocketAddrV4, http: bool) -> Attempt {
    let timeout = Duration::from_secs(5);
    let mut s = match connect_from(source, addr, timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused || e.kind() == io::ErrorKind::ConnectionReset => {
            return Attempt::Refused
        }
        Err(e) => return Attempt::Other(format!("connect: {e}")),
    };
    if !http {
        return Attempt::Ok;
    }
    let _ = tcp::set_step_timeouts(&s, Duration::from_millis(100));
    let until = Until::deadline(Instant::now() + timeout);
    let req = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if let Err(e) = write_all_until(&mut s, req.as_bytes(), until) {
        return Attempt::Other(format!("send: {e:?}"));
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_until(&mut s, &mut buf, until) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(crate::tcp::End::Reset) if resp.is_empty() => return Attempt::Refused,
            Err(e) => return Attempt::Other(format!("read: {e:?}")),
        }
    }
    if resp.starts_with(b"HTTP/1.0 200") || resp.starts_with(b"HTTP/1.1 200") {
        Attempt::Ok
    } else {
        Attempt::Other(format!("answer {:?}", String::from_utf8_lossy(&resp)))
    }
}

/// Offer `rate` new connections per second for `duration` (attempt `i` is scheduled
/// at `i / rate`), from `workers` threads, optionally bound to `source`. Each
/// accepted connection sends `GET /` and reads the answer when `http`. Must run in
/// the client's namespace (threads inherit it). Bounded: nothing starts after
/// `duration`, and every attempt has a 5 s bound.
pub fn offer_connections(
    addr: SocketAddrV4,
    source: Option<Ipv4Addr>,
    rate: f64,
    duration: Duration,
    workers: usize,
    http: bool,
) -> Offer {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let next = AtomicU64::new(0);
    let result = Mutex::new(Offer::default());
    let t0 = Instant::now();
    thread::scope(|s| {
        for w in 0..workers.max(1) {
            let (next, result) = (&next, &result);
            thread::Builder::new()
                .name(format!("offer-{w}"))
                .stack_size(IO_THREAD_STACK)
                .spawn_scoped(s, move || {
                    let mut mine = Offer::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            // Pacing the offered load (the test's input), not synchronisation.
                            thread::sleep(due - now);
                        } else {
                            mine.max_lag = mine.max_lag.max(now - due);
                        }
                        mine.offered += 1;
                        let started = Instant::now();
                        mine.first = Some(mine.first.map_or(started, |f| f.min(started)));
                        mine.last = Some(mine.last.map_or(started, |l| l.max(started)));
                        match attempt(source, addr, http) {
                            Attempt::Ok => mine.ok += 1,
                            Attempt::Refused => mine.refused += 1,
                            Attempt::Other(e) => {
                                mine.other += 1;
                                if mine.other_errors.len() < 20 {
                                    mine.other_errors.push(format!("attempt {i}: {e}"));
                                }
                            }
                        }
                    }
                    let mut r = result.lock().unwrap();
                    r.offered += mine.offered;
                    r.ok += mine.ok;
                    r.refused += mine.refused;
                    r.other += mine.other;
                    r.max_lag = r.max_lag.max(mine.max_lag);
                    r.first = [r.first, mine.first].into_iter().flatten().min();
                    r.last = [r.last, mine.last].into_iter().flatten().max();
                    let room = 20usize.saturating_sub(r.other_errors.len());
                    r.other_errors.extend(mine.other_errors.into_iter().take(room));
                })
                .expect("spawn offer thread");
        }
    });
    let mut r = result.into_inner().unwrap();
    r.elapsed = t0.elapsed();
    // The measured window: first to last attempt actually started.
    r.window = match (r.first, r.last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    };
    r
}
