//! Backend servers for the proxy tests, each saying which backend answered.
//!
//! * [`Server`]: a Rust server on threads inside a backend namespace (no process), in
//!   one of several [`Mode`]s: HTTP-ish answer with its name, echo, send N bytes of a
//!   deterministic stream, reply after the client half-closes, reset, or hold idle
//!   connections. It records how every connection ended ([`ConnRecord`]) and is
//!   stopped (threads joined, sockets closed) by [`Server::stop`] or on drop.
//! * [`Nginx`]: Debian's nginx as a guarded child in a backend namespace, with its own
//!   temporary prefix, answering `GET /` with `"<name>\n"`.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::netns::{in_netns, spawn_in_netns, IO_THREAD_STACK};
use crate::pattern::{Generator, Verifier};
use crate::tcp::{self, drain_until, read_until, write_all_until, End, Until};
use crate::{wait_for, Guarded, Topology};

/// Step of the servers' timed I/O loops (how quickly they notice the stop flag).
const STEP: Duration = Duration::from_millis(100);
/// After a server has sent its part, how long it waits for the peer's FIN.
const LINGER: Duration = Duration::from_secs(10);
/// Bound on one request head.
const MAX_REQUEST: usize = 64 * 1024;
/// Bound on concurrent handler threads per server.
const MAX_HANDLERS: usize = 4096;

/// What a [`Server`] does with each connection.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Read a request head (up to a blank line, or a line for non-HTTP clients, or
    /// EOF), answer `HTTP/1.0 200` with body `"<name>\n"`, close.
    Http,
    /// Echo every byte; on EOF shut down the write side.
    Echo,
    /// Read one request line (up to `\n`), then send `bytes` of stream `seed`, shut
    /// down the write side, wait (bounded) for the peer's FIN.
    Send { bytes: u64, seed: u64 },
    /// Read until the client half-closes (EOF), then send `bytes` of stream `seed`,
    /// shut down the write side.
    ReplyAfterEof { bytes: u64, seed: u64 },
    /// Read until at least one byte arrived, then reset the connection (SO_LINGER 0).
    Reset,
    /// Keep every connection open, discarding what arrives, until the peer closes or
    /// resets it. One thread for all connections (poll), for thousands of them.
    Hold,
}

impl Mode {
    /// Parse the command-line form: `http`, `echo`, `send:BYTES:SEED`,
    /// `reply-after-eof:BYTES:SEED`, `reset`, `hold`.
    pub fn parse(s: &str) -> Result<Mode, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize| -> Result<u64, String> {
            parts
                .get(i)
                .ok_or_else(|| format!("mode {s:?}: missing field {i}"))?
                .parse()
                .map_err(|e| format!("mode {s:?}: {e}"))
        };
        Ok(match parts[0] {
            "http" => Mode::Http,
            "echo" => Mode::Echo,
            "send" => Mode::Send { bytes: num(1)?, seed: num(2)? },
            "reply-after-eof" => Mode::ReplyAfterEof { bytes: num(1)?, seed: num(2)? },
            "reset" => Mode::Reset,
            "hold" => Mode::Hold,
            _ => return Err(format!("unknown mode {s:?}")),
        })
    }

    /// The command-line form (inverse of [`parse`](Self::parse)).
    pub fn arg(&self) -> String {
        match self {
            Mode::Http => "http".into(),
            Mode::Echo => "echo".into(),
            Mode::Send { bytes, seed } => format!("send:{bytes}:{seed}"),
            Mode::ReplyAfterEof { bytes, seed } => format!("reply-after-eof:{bytes}:{seed}"),
            Mode::Reset => "reset".into(),
            Mode::Hold => "hold".into(),
        }
    }
}

/// How one connection went, as the server saw it.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub peer: SocketAddr,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// xxh3-64 of the bytes received (modes that keep it: ReplyAfterEof), else 0.
    pub in_checksum: u64,
    pub end: End,
    pub duration: Duration,
}

#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    active: AtomicU64,
    records: Mutex<Vec<ConnRecord>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn record(&self, r: ConnRecord) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        let mut v = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < 1_000_000 {
            v.push(r);
        }
    }

    fn error(&self, e: String) {
        let mut v = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < 1000 {
            v.push(e);
        }
    }
}

/// A Rust test server listening in a namespace. Stopped and joined on drop.
pub struct Server {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Bind `addr` inside namespace `ns` (e.g. `topo.ns("be1")`) and serve in `mode`;
    /// `name` is what [`Mode::Http`] answers. Returns once the socket is listening.
    pub fn start(ns: &str, addr: SocketAddr, name: &str, mode: Mode) -> Server {
        Self::start_in(Some(ns), addr, name, mode)
    }

    /// Like [`start`](Self::start) in the current thread's namespace (`ns` = `None`),
    /// e.g. in a process already started inside the namespace.
    pub fn start_in(ns: Option<&str>, addr: SocketAddr, name: &str, mode: Mode) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let (stop2, shared2, name2) = (stop.clone(), shared.clone(), name.to_string());
        let body = move || {
            let listener = match tcp::listen_on(addr, 4096).and_then(|l| {
                l.set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            match mode {
                Mode::Hold => hold_loop(listener, &stop2, &shared2),
                mode => accept_loop(listener, &name2, mode, &stop2, &shared2),
            }
        };
        let tname = format!("srv-{name}");
        let thread = match ns {
            Some(ns) => spawn_in_netns(ns, &tname, body),
            None => thread::Builder::new().name(tname).spawn(body).expect("spawn server thread"),
        };
        let ns = ns.unwrap_or("(this namespace)");
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                panic!("server {name} on {addr} in {ns}: {e}");
            }
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                let _ = thread.join();
                panic!("server {name} on {addr} in {ns} did not start: {e}");
            }
        }
        Server { name: name.to_string(), addr, stop, shared, thread: Some(thread) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Every finished connection so far.
    pub fn records(&self) -> Vec<ConnRecord> {
        self.shared.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How finished connections ended, e.g. `{"Eof": 3, "Reset": 1}`.
    pub fn ends(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in self.records() {
            let k = match &r.end {
                End::Error(_) => "Error".to_string(),
                e => format!("{e:?}"),
            };
            *m.entry(k).or_default() += 1;
        }
        m
    }

    /// `{"accepted", "active", "ends", "errors"}` as JSON (the test server binary's
    /// status file).
    pub fn status_json(&self) -> serde_json::Value {
        let errors = self.errors();
        serde_json::json!({
            "name": self.name,
            "address": self.addr.to_string(),
            "accepted": self.accepted(),
            "active": self.active(),
            "ends": self.ends(),
            "error_count": errors.len(),
            "errors": errors.iter().take(10).collect::<Vec<_>>(),
        })
    }

    /// Server-side errors (accept failures, thread spawn failures).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop accepting, end open connections, join every thread; the port is closed
    /// when this returns. Idempotent.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if let Err(p) = t.join() {
                if !thread::panicking() {
                    std::panic::resume_unwind(p);
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, name: &str, mode: Mode, stop: &AtomicBool, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let stop_flag = Arc::new(AtomicBool::new(false));
    while !stop.load(Ordering::Relaxed) {
        handlers.retain(|h| !h.is_finished());
        if handlers.len() >= MAX_HANDLERS {
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        match listener.accept() {
            Ok((s, peer)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                shared.active.fetch_add(1, Ordering::Relaxed);
                let (mode, name, shared2, stop2) = (mode.clone(), name.to_string(), shared.clone(), stop_flag.clone());
                let spawned =
                    thread::Builder::new().name(format!("conn-{name}")).stack_size(IO_THREAD_STACK).spawn(move || {
                        let t0 = Instant::now();
                        let mut rec = ConnRecord {
                            peer,
                            bytes_in: 0,
                            bytes_out: 0,
                            in_checksum: 0,
                            end: End::Eof,
                            duration: t0.elapsed(),
                        };
                        rec.end = match serve(s, &name, &mode, &stop2, &mut rec) {
                            Ok(()) => End::Eof,
                            Err(e) => e,
                        };
                        rec.duration = t0.elapsed();
                        shared2.record(rec);
                    });
                match spawned {
                    Ok(h) => handlers.push(h),
                    Err(e) => {
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                        shared.error(format!("spawn handler for {peer}: {e}"));
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Wait for the next connection without spinning (bounded step).
                let _ = poll(&mut [PollFd::new(listener.as_fd(), PollFlags::POLLIN)], PollTimeout::from(50u16));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                shared.error(format!("accept: {e}"));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    drop(listener);
    stop_flag.store(true, Ordering::Relaxed);
    for h in handlers {
        let _ = h.join();
    }
}

/// Serve one connection. `Ok(())` = finished normally.
fn serve(mut s: TcpStream, name: &str, mode: &Mode, stop: &AtomicBool, rec: &mut ConnRecord) -> Result<(), End> {
    s.set_nonblocking(false).map_err(|e| End::Error(e.to_string()))?;
    tcp::set_step_timeouts(&s, STEP).map_err(|e| End::Error(e.to_string()))?;
    let _ = s.set_nodelay(true);
    let until = Until::flag(stop);
    match mode {
        Mode::Http => {
            let head = read_head(&mut s, until, rec, b"\r\n\r\n")?;
            let _ = head;
            let body = format!("{name}\n");
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            write_all_until(&mut s, resp.as_bytes(), until)?;
            rec.bytes_out += resp.len() as u64;
            finish(&mut s, stop, rec)
        }
        Mode::Echo => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read_until(&mut s, &mut buf, until)?;
                if n == 0 {
                    let _ = s.shutdown(Shutdown::Write);
                    return Ok(());
                }
                rec.bytes_in += n as u64;
                write_all_until(&mut s, &buf[..n], until)?;
                rec.bytes_out += n as u64;
            }
        }
        Mode::Send { bytes, seed } => {
            read_head(&mut s, until, rec, b"\n")?;
            send_stream(&mut s, *bytes, *seed, until, rec)?;
            finish(&mut s, stop, rec)
        }
        Mode::ReplyAfterEof { bytes, seed } => {
            let mut v = Verifier::new(0);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read_until(&mut s, &mut buf, until)?;
                if n == 0 {
                    break;
                }
                v.update(&buf[..n]);
                rec.bytes_in += n as u64;
            }
            rec.in_checksum = v.checksum();
            send_stream(&mut s, *bytes, *seed, until, rec)?;
            let _ = s.shutdown(Shutdown::Write);
            Ok(())
        }
        Mode::Reset => {
            let mut buf = [0u8; 4096];
            let n = read_until(&mut s, &mut buf, until)?;
            rec.bytes_in += n as u64;
            tcp::reset(s).map_err(End::Error)?;
            Ok(())
        }
        Mode::Hold => unreachable!("Hold has its own loop"),
    }
}

/// Read until `terminator` appears (or EOF, or MAX_REQUEST bytes).
fn read_head(s: &mut TcpStream, until: Until, rec: &mut ConnRecord, terminator: &[u8]) -> Result<Vec<u8>, End> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = read_until(s, &mut buf, until)?;
        if n == 0 {
            return Ok(head);
        }
        rec.bytes_in += n as u64;
        head.extend_from_slice(&buf[..n]);
        // A bare "\n"-terminated line also ends an HTTP head (simple clients).
        if head.windows(terminator.len()).any(|w| w == terminator)
            || head.ends_with(b"\n") && !head.starts_with(b"GET ")
        {
            return Ok(head);
        }
        if head.len() >= MAX_REQUEST {
            return Ok(head);
        }
    }
}

fn send_stream(s: &mut TcpStream, bytes: u64, seed: u64, until: Until, rec: &mut ConnRecord) -> Result<(), End> {
    let mut g = Generator::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    while g.offset() < bytes {
        let n = (bytes - g.offset()).min(buf.len() as u64) as usize;
        g.next_chunk(&mut buf[..n]);
        write_all_until(s, &buf[..n], until)?;
        rec.bytes_out += n as u64;
    }
    Ok(())
}

/// After our part: half-close and wait (bounded) for the peer's FIN, so the close is
/// orderly and the peer is not reset by unread data.
fn finish(s: &mut TcpStream, stop: &AtomicBool, rec: &mut ConnRecord) -> Result<(), End> {
    let _ = s.shutdown(Shutdown::Write);
    match drain_until(s, Until::both(stop, Instant::now() + LINGER)) {
        Ok(n) => {
            rec.bytes_in += n;
            Ok(())
        }
        Err(End::Reset) => Err(End::Reset),
        // The peer did not close in time: we did our part, close anyway.
        Err(End::TimedOut) | Err(End::Stopped) => Ok(()),
        Err(e) => Err(e),
    }
}

struct Held {
    s: TcpStream,
    peer: SocketAddr,
    bytes_in: u64,
    since: Instant,
}

fn hold_loop(listener: TcpListener, stop: &AtomicBool, shared: &Shared) {
    let mut held: Vec<Held> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // Which sockets are readable (data, FIN or RST) and is a connection waiting?
        let (listener_ready, ready): (bool, Vec<usize>) = {
            let mut fds = Vec::with_capacity(held.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            for h in &held {
                fds.push(PollFd::new(h.s.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    shared.error(format!("poll: {e}"));
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            let is_ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (is_ready(&fds[0]), fds[1..].iter().enumerate().filter(|(_, f)| is_ready(f)).map(|(i, _)| i).collect())
        };
        // Service readable sockets; iterate in reverse so swap_remove keeps indices valid.
        for &i in ready.iter().rev() {
            let h = &mut held[i];
            let end = loop {
                match h.s.read(&mut buf) {
                    Ok(0) => break Some(End::Eof),
                    Ok(n) => h.bytes_in += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Some(End::from_error(&e)),
                }
            };
            if let Some(end) = end {
                let h = held.swap_remove(i);
                shared.record(ConnRecord {
                    peer: h.peer,
                    bytes_in: h.bytes_in,
                    bytes_out: 0,
                    in_checksum: 0,
                    end,
                    duration: h.since.elapsed(),
                });
            }
        }
        if listener_ready {
            loop {
                match listener.accept() {
                    Ok((s, peer)) => {
                        shared.accepted.fetch_add(1, Ordering::Relaxed);
                        shared.active.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = s.set_nonblocking(true) {
                            shared.error(format!("set_nonblocking: {e}"));
                        }
                        held.push(Held { s, peer, bytes_in: 0, since: Instant::now() });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        shared.error(format!("accept: {e}"));
                        break;
                    }
                }
            }
        }
    }
    drop(listener);
    for h in held.drain(..) {
        shared.record(ConnRecord {
            peer: h.peer,
            bytes_in: h.bytes_in,
            bytes_out: 0,
            in_checksum: 0,
            end: End::Stopped,
            duration: h.since.elapsed(),
        });
    }
}

/// One Rust server per backend namespace (`be1`, `be2`, `be3`) on `<backend ip>:port`,
/// named `be1`.. and serving `mode`; `skip` lists leaves to leave without a server.
pub fn start_backends(topo: &Topology, port: u16, mode: Mode, skip: &[&str]) -> Vec<Server> {
    let mut v = Vec::new();
    for (i, leaf) in ["be1", "be2", "be3"].iter().enumerate() {
        if skip.contains(leaf) {
            continue;
        }
        let addr: SocketAddr = format!("{}:{port}", crate::BACKEND_IPS[i]).parse().unwrap();
        v.push(Server::start(&topo.ns(leaf), addr, leaf, mode.clone()));
    }
    v
}

// ---------------------------------------------------------------------------- server process

/// A [`Server`] in its own process (the `fulcrum-test-server` binary of this crate,
/// `env!("CARGO_BIN_EXE_fulcrum-test-server")` in integration tests), for servers that
/// hold more sockets than the test process's RLIMIT_NOFILE leaves room for. A guarded
/// child: killed on drop (the kernel then closes its sockets). It rewrites a JSON
/// status file ([`Server::status_json`]) every 100 ms.
pub struct ServerProcess {
    proc: Guarded,
    name: String,
    addr: SocketAddr,
    status: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Start `bin` in `leaf` listening on `addr`; returns once it listens.
    pub fn start(topo: &Topology, bin: &Path, leaf: &str, addr: SocketAddr, name: &str, mode: &Mode) -> ServerProcess {
        let dir = tempfile::Builder::new().prefix(&format!("srv-{name}-")).tempdir().expect("temp dir");
        let status = dir.path().join("status.json");
        let log = topo.dir().join(format!("server-{name}-{}.log", addr.port()));
        let mut cmd = topo.command(leaf, bin);
        cmd.arg("--listen").arg(addr.to_string()).arg("--name").arg(name).arg("--mode").arg(mode.arg());
        cmd.arg("--status").arg(&status).arg("--max-seconds").arg("3600");
        let mut proc = Guarded::spawn(&format!("{leaf}:test-server"), cmd, &log);
        wait_for(Duration::from_secs(10), &format!("test server {name} to listen on {addr}"), || {
            if let Some(st) = proc.try_status() {
                panic!("test server {name} exited ({st}):\n{}", proc.output());
            }
            if status.exists() {
                Ok(())
            } else {
                Err(proc.output())
            }
        });
        ServerProcess { proc, name: name.to_string(), addr, status, _dir: dir }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The latest status (see [`Server::status_json`]); `Null` if unreadable.
    pub fn status(&self) -> serde_json::Value {
        std::fs::read_to_string(&self.status)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn accepted(&self) -> u64 {
        self.status()["accepted"].as_u64().unwrap_or(0)
    }

    /// Connections open now (as of the last status write). `u64::MAX` if unknown.
    pub fn active(&self) -> u64 {
        self.status()["active"].as_u64().unwrap_or(u64::MAX)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kill it (also done on drop).
    pub fn stop(&mut self) {
        self.proc.kill();
    }
}

/// One [`ServerProcess`] per backend (`be1`..`be3`) on `<backend ip>:port`.
pub fn start_backend_processes(topo: &Topology, bin: &Path, port: u16, mode: Mode) -> Vec<ServerProcess> {
    ["be1", "be2", "be3"]
        .iter()
        .enumerate()
        .map(|(i, leaf)| {
            let addr: SocketAddr = format!("{}:{port}", crate::BACKEND_IPS[i]).parse().unwrap();
            ServerProcess::start(topo, bin, leaf, addr, leaf, &mode)
        })
        .collect()
}

// ---------------------------------------------------------------------------- nginx

/// Debian's nginx in a backend namespace, answering every request with `"<name>\n"`.
/// A guarded child (`daemon off; master_process off;`): killed on drop.
pub struct Nginx {
    proc: Guarded,
    name: String,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Options for [`Nginx::start_with`].
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// Keep client connections open between requests (for keepalive benchmarks).
    pub keepalive: bool,
    /// `worker_connections`.
    pub worker_connections: u32,
    /// Expect a PROXY protocol header (v1 or v2) on every connection, and
    /// answer `"<name> <address>:<port>\n"` with the client it names.
    pub proxy_protocol: bool,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions { keepalive: false, worker_connections: 16384, proxy_protocol: false }
    }
}

/// The nginx configuration used by [`Nginx`] (also by `scripts/bench.sh`'s twin).
pub fn nginx_conf(dir: &Path, addr: SocketAddr, name: &str, opts: &NginxOptions) -> String {
    let d = dir.display();
    let keepalive =
        if opts.keepalive { "keepalive_timeout 65s;\n    keepalive_requests 1000000;" } else { "keepalive_timeout 0;" };
    let (listen, answer) = if opts.proxy_protocol {
        (" proxy_protocol", format!("{name} $proxy_protocol_addr:$proxy_protocol_port"))
    } else {
        ("", name.to_string())
    };
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         worker_rlimit_nofile 65536;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections {wc}; multi_accept on; }}\n\
         http {{\n    \
           access_log off;\n    \
           client_body_temp_path {d}/body;\n    \
           proxy_temp_path {d}/proxy;\n    \
           fastcgi_temp_path {d}/fastcgi;\n    \
           uwsgi_temp_path {d}/uwsgi;\n    \
           scgi_temp_path {d}/scgi;\n    \
           {keepalive}\n    \
           server {{\n        \
             listen {addr}{listen} backlog=4096;\n        \
             location / {{ default_type text/plain; return 200 \"{answer}\\n\"; }}\n    \
           }}\n\
         }}\n",
        wc = opts.worker_connections,
    )
}

impl Nginx {
    /// nginx in `leaf` on `addr`, answering `"<name>\n"`; waits (bounded) until it
    /// accepts connections.
    pub fn start(topo: &Topology, leaf: &str, addr: SocketAddr, name: &str) -> Nginx {
        Self::start_with(topo, leaf, addr, name, &NginxOptions::default())
    }

    pub fn start_with(topo: &Topology, leaf: &str, addr: SocketAddr, name: &str, opts: &NginxOptions) -> Nginx {
        let dir = tempfile::Builder::new().prefix(&format!("nginx-{name}-")).tempdir().expect("nginx temp dir");
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir.path(), addr, name, opts)).expect("write nginx.conf");
        let log: PathBuf = topo.dir().join(format!("nginx-{name}.log"));
        let mut cmd = topo.command(leaf, "nginx");
        cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf).args(["-e", "stderr"]);
        let mut proc = Guarded::spawn(&format!("{leaf}:nginx"), cmd, &log);
        let ns = topo.ns(leaf);
        wait_for(Duration::from_secs(10), &format!("nginx {name} to accept on {addr}"), || {
            if let Some(st) = proc.try_status() {
                panic!(
                    "nginx {name} exited ({st}):\n{}\nerror.log:\n{}",
                    proc.output(),
                    std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                );
            }
            in_netns(&ns, || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        Nginx { proc, name: name.to_string(), addr, _dir: dir }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kill it now (also done on drop).
    pub fn stop(&mut self) {
        self.proc.kill();
    }
}

/// nginx in `be1`, `be2`, `be3` on `<backend ip>:port`, answering `be1\n`, ...
pub fn start_nginx_backends(topo: &Topology, port: u16) -> Vec<Nginx> {
    ["be1", "be2", "be3"]
        .iter()
        .enumerate()
        .map(|(i, leaf)| {
            let addr: SocketAddr = format!("{}:{port}", crate::BACKEND_IPS[i]).parse().unwrap();
            Nginx::start(topo, leaf, addr, leaf)
        })
        .collect()
}
