//! Runs the real `fulcrum-controlplane` binary in a temporary directory
//! (socket, state file and shm segment all inside it; no dataplane).

#![allow(dead_code)]

use fulcrum_shm as shm;
use serde_json::Value;
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_fulcrum-controlplane");
pub const CTL: &str = env!("CARGO_BIN_EXE_fulcrumctl");

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

/// Poll `f` until it returns `Some`, up to `timeout`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    let mut step = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(50));
    }
}

/// A local, non-loopback IPv4 address of this machine (the source of its
/// route towards 198.18.0.0/15): a backend the model accepts (loopback is
/// not a usable backend address) that a test can listen on.
pub fn local_address() -> std::net::Ipv4Addr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("198.18.0.1:9").expect("a route to 198.18.0.1 (any non-loopback interface will do)");
    match s.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(a) if !a.is_loopback() && !a.is_unspecified() => a,
        other => panic!("no non-loopback IPv4 address to listen on (got {other})"),
    }
}

pub const VIPS: &str = r#"
[[vip]]
address = "198.18.1.1"
port = 80
mode = "proxy"
table_size = 251
backends = [
  { address = "198.18.0.21", port = 8080 },
  { address = "198.18.0.22", port = 8080, weight = 2 },
  { address = "198.18.0.23", port = 8080 },
]

[[vip]]
address = "198.18.1.2"
port = 443
mode = "proxy"
table_size = 251
backends = [{ address = "198.18.0.21", port = 8443 }]
"#;

impl Daemon {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn toml(&self) -> PathBuf {
        self.dir().join("controlplane.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir().join("run/control.sock")
    }
    pub fn shm(&self) -> PathBuf {
        self.dir().join("shm")
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir().join("state/controlplane.json")
    }
    pub fn log(&self) -> PathBuf {
        self.dir().join("daemon.log")
    }

    /// The `[controlplane]` section for this directory plus `vips`.
    pub fn config_text(&self, vips: &str) -> String {
        format!(
            "[controlplane]\nshm = {:?}\nsocket = {:?}\nstate_file = {:?}\nprometheus = \"127.0.0.1:0\"\nhealth_source = \"127.0.0.1\"\n{vips}",
            self.shm(),
            self.socket(),
            self.state_file()
        )
    }

    pub fn write_config(&self, vips: &str) {
        std::fs::write(self.toml(), self.config_text(vips)).unwrap();
    }

    /// Starts a daemon with `vips` in a new directory and waits for it.
    pub fn start(vips: &str) -> Daemon {
        let mut d = Daemon { dir: tempfile::tempdir().unwrap(), child: None };
        d.write_config(vips);
        d.spawn();
        d
    }

    /// (Re)starts the daemon on the existing directory.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let child = Command::new(DAEMON)
            .arg("--config")
            .arg(self.toml())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.socket();
        let pid = self.pid();
        wait_for(Duration::from_secs(20), "the daemon to answer", || {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited: {st}\n{}", self.log_text());
            }
            let out = Command::new(CTL).arg("--socket").arg(&sock).args(["--json", "status"]).output().ok()?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["controlplane"]["pid"].as_u64() == Some(u64::from(pid))).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CTL).arg("--socket").arg(self.socket()).args(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "fulcrumctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a reading command with `--json` and parses its output.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("fulcrumctl {args:?}: not JSON ({e}): {out}"))
    }

    /// The generation currently published in the segment.
    pub fn published(&self) -> (fulcrum_model::Generation, u64) {
        let seg = shm::Segment::open_existing(self.shm()).unwrap();
        match seg.current_config() {
            shm::Poll::New(cfg, g) => (cfg, g),
            other => panic!("nothing readable published: {other:?}"),
        }
    }

    pub fn published_vip(&self, addr: &str) -> Option<fulcrum_model::Vip> {
        self.published_entry(addr).map(|p| p.vip)
    }

    fn published_entry(&self, addr: &str) -> Option<fulcrum_model::Published> {
        let a: SocketAddrV4 = addr.parse().unwrap();
        self.published().0.vips.into_iter().find(|p| p.vip.endpoint() == a)
    }

    /// A published backend: its weight, counter slot and state.
    pub fn published_backend(&self, vip: &str, backend: &str) -> Option<PublishedBackend> {
        let b: SocketAddrV4 = backend.parse().unwrap();
        let p = self.published_entry(vip)?;
        let i = p.vip.backends.iter().position(|x| x.endpoint() == b)?;
        let x = &p.vip.backends[i];
        Some(PublishedBackend { weight: x.weight, slot: p.slots[i], state: x.state })
    }

    /// GET `path` from the Prometheus endpoint: (head, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let st = self.json(&["status"]);
        let addr = st["controlplane"]["prometheus"].as_str().expect("prometheus address in status").to_owned();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log_text());
        }
    }
}

/// What the segment holds of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedBackend {
    pub weight: u32,
    pub slot: u32,
    pub state: fulcrum_model::BackendState,
}

/// What /proc/<pid>/status says of a process: VmRSS and VmHWM (KiB), threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
}

pub fn proc_status(pid: u32) -> ProcStatus {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line[name.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    ProcStatus { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:"), threads: field("Threads:") }
}

/// Raises this process's open-file limit towards `want` (up to the hard
/// limit); returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let target = want.min(hard);
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).unwrap();
    }
    getrlimit(Resource::RLIMIT_NOFILE).unwrap().0
}

/// What [`Watch`] saw of the daemon while it ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watched {
    pub samples: u64,
    /// Heartbeat checks (`is_alive(500 ms)`) that failed.
    pub stale_beats: u64,
    pub max_rss_kib: u64,
    pub max_threads: u64,
    pub last: ProcStatus,
}

/// Samples the daemon every 20 ms on a thread of its own until stopped: its
/// control-plane heartbeat in the segment, its memory and threads.
pub struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Watched>>,
}

impl Watch {
    pub fn start(d: &Daemon) -> Watch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seg = shm::Segment::open_existing(d.shm()).unwrap();
        let pid = d.pid();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut w = Watched::default();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                w.samples += 1;
                if !seg.control_plane_status().is_alive(Duration::from_millis(500)) {
                    w.stale_beats += 1;
                }
                let p = proc_status(pid);
                w.max_rss_kib = w.max_rss_kib.max(p.rss_kib);
                w.max_threads = w.max_threads.max(p.threads);
                w.last = p;
                std::thread::sleep(Duration::from_millis(20));
            }
            w
        });
        Watch { stop, thread: Some(thread) }
    }

    pub fn finish(mut self) -> Watched {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Daemon {
    /// The address the Prometheus endpoint listens on.
    pub fn prometheus_addr(&self) -> std::net::SocketAddr {
        self.json(&["status"])["controlplane"]["prometheus"].as_str().expect("prometheus address in status").parse().unwrap()
    }

    /// `status`'s client counters of `endpoint` (`control`, `prometheus`).
    pub fn clients(&self, endpoint: &str) -> Value {
        self.json(&["status"])["controlplane"]["clients"][endpoint].clone()
    }
}
