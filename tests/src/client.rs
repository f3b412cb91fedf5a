//! Client toolkit for the proxy tests. Every function that opens connections must run
//! inside the client's namespace (wrap the call in [`crate::netns::in_netns`]); the
//! threads it spawns inherit the namespace and are all joined before it returns.
//! Every loop is bounded by a deadline.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::IO_THREAD_STACK;
use crate::pattern::{Generator, Verifier};
use crate::tcp::{self, read_until, write_all_until, End, Until};

/// Step of the timed I/O loops.
const STEP: Duration = Duration::from_millis(100);

fn scoped_spawn<'scope, 'env, T: Send + 'scope>(
    s: &'scope thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> thread::ScopedJoinHandle<'scope, T> {
    thread::Builder::new()
        .name(name.to_string())
        .stack_size(IO_THREAD_STACK)
        .spawn_scoped(s, f)
        .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"))
}

// ---------------------------------------------------------------------------- HTTP

/// One `GET /` over a fresh connection (HTTP/1.0, the server closes); returns the
/// trimmed body (the backend's name) or what went wrong.
pub fn http_get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    http_get_from(addr, timeout).map(|(_, body)| body)
}

/// [`http_get`], also returning the connection's local (client) address.
pub fn http_get_from(addr: SocketAddr, timeout: Duration) -> Result<(SocketAddr, String), String> {
    let deadline = Instant::now() + timeout;
    let mut s = tcp::connect(addr, timeout, STEP).map_err(|e| format!("connect {addr}: {e}"))?;
    let local = s.local_addr().map_err(|e| format!("local address: {e}"))?;
    let req = format!("GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: fulcrum-tests\r\n\r\n");
    write_all_until(&mut s, req.as_bytes(), Until::deadline(deadline)).map_err(|e| format!("send request: {e:?}"))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_until(&mut s, &mut buf, Until::deadline(deadline)) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.len() > 1 << 20 {
                    return Err("response larger than 1 MiB".into());
                }
            }
            Err(e) => {
                return Err(format!(
                    "read response: {e:?} after {} bytes: {:?}",
                    resp.len(),
                    String::from_utf8_lossy(&resp)
                ))
            }
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no response head in {text:?}"))?;
    let status = head.lines().next().unwrap_or("");
    if !(status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200")) {
        return Err(format!("status {status:?}"));
    }
    Ok((local, body.trim().to_string()))
}

/// Result of [`http_spread`].
#[derive(Debug, Default)]
pub struct Spread {
    /// Answers per backend name.
    pub counts: BTreeMap<String, u64>,
    /// One line per failed request (the first 50 are kept), and how many failed.
    pub failures: Vec<String>,
    pub failed: u64,
    pub elapsed: Duration,
}

impl Spread {
    pub fn total_ok(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Share of the successful answers given by `name`, in percent.
    pub fn share(&self, name: &str) -> f64 {
        let total = self.total_ok();
        if total == 0 {
            return 0.0;
        }
        100.0 * *self.counts.get(name).unwrap_or(&0) as f64 / total as f64
    }
}

/// `n` fresh connections, one `GET /` each, `concurrency` at a time; counts which
/// backend answered.
pub fn http_spread(addr: SocketAddr, n: u64, concurrency: usize, timeout: Duration) -> Spread {
    let t0 = Instant::now();
    let next = AtomicU64::new(0);
    let result = Mutex::new(Spread::default());
    thread::scope(|s| {
        for w in 0..concurrency.max(1) {
            scoped_spawn(s, &format!("http-{w}"), || {
                let mut counts = BTreeMap::<String, u64>::new();
                let mut failures = Vec::new();
                let mut failed = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    match http_get(addr, timeout) {
                        Ok(name) => *counts.entry(name).or_default() += 1,
                        Err(e) => {
                            failed += 1;
                            if failures.len() < 50 {
                                failures.push(format!("request {i}: {e}"));
                            }
                        }
                    }
                }
                let mut r = result.lock().unwrap();
                for (k, v) in counts {
                    *r.counts.entry(k).or_default() += v;
                }
                r.failed += failed;
                let room = 50usize.saturating_sub(r.failures.len());
                r.failures.extend(failures.into_iter().take(room));
            });
        }
    });
    let mut r = result.into_inner().unwrap();
    r.elapsed = t0.elapsed();
    r
}

// ---------------------------------------------------------------------------- bulk echo

/// Result of [`bulk_echo`].
#[derive(Debug, Default)]
pub struct EchoReport {
    pub ok: u64,
    pub failed: u64,
    pub failures: Vec<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections established at the same time (all of them pass a barrier).
    pub concurrent: u64,
    pub elapsed: Duration,
    /// Time from the barrier (all connected) to the last byte.
    pub transfer: Duration,
}

/// `conns` concurrent connections; each sends `bytes` of stream `seed_base + i` while
/// reading the echo back, and checks the echo byte for byte and by checksum. All
/// connections are established before any data is sent.
pub fn bulk_echo(addr: SocketAddr, conns: usize, bytes: u64, seed_base: u64, timeout: Duration) -> EchoReport {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let barrier = Gate::new(conns);
    let connected = AtomicU64::new(0);
    let report = Mutex::new(EchoReport::default());
    let transfer_start = Mutex::new(None::<Instant>);
    thread::scope(|s| {
        for i in 0..conns {
            let (barrier, connected, report, transfer_start) = (&barrier, &connected, &report, &transfer_start);
            scoped_spawn(s, &format!("echo-{i}"), move || {
                let conn = tcp::connect(addr, Duration::from_secs(10), STEP);
                if conn.is_ok() {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                // Everyone waits here, connected or not, so the gate opens (bounded:
                // if a thread could not even start, the others go on after a while).
                if barrier.wait(Duration::from_secs(60)) {
                    *transfer_start.lock().unwrap() = Some(Instant::now());
                }
                let seed = seed_base + i as u64;
                let r = match conn {
                    Ok(stream) => echo_one(stream, bytes, seed, deadline),
                    Err(e) => Err((format!("connect: {e}"), 0, 0)),
                };
                let mut rep = report.lock().unwrap();
                match r {
                    Ok((sent, got)) => {
                        rep.ok += 1;
                        rep.bytes_sent += sent;
                        rep.bytes_received += got;
                    }
                    Err((e, sent, got)) => {
                        rep.failed += 1;
                        rep.bytes_sent += sent;
                        rep.bytes_received += got;
                        if rep.failures.len() < 50 {
                            rep.failures.push(format!("connection {i}: {e}"));
                        }
                    }
                }
            });
        }
    });
    let mut rep = report.into_inner().unwrap();
    rep.concurrent = connected.load(Ordering::Relaxed);
    rep.elapsed = t0.elapsed();
    rep.transfer = transfer_start.into_inner().unwrap().map(|t| t.elapsed()).unwrap_or_default();
    rep
}

/// A barrier with a bounded wait.
struct Gate {
    waiting: Mutex<usize>,
    cv: Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate { waiting: Mutex::new(n), cv: Condvar::new() }
    }

    /// Wait until `n` threads arrived or `timeout` passed; true for the last one.
    fn wait(&self, timeout: Duration) -> bool {
        let mut w = self.waiting.lock().unwrap();
        *w = w.saturating_sub(1);
        if *w == 0 {
            self.cv.notify_all();
            return true;
        }
        let _ = self.cv.wait_timeout_while(w, timeout, |w| *w > 0).unwrap();
        false
    }
}

type EchoResult = Result<(u64, u64), (String, u64, u64)>;

fn echo_one(stream: TcpStream, bytes: u64, seed: u64, deadline: Instant) -> EchoResult {
    let mut reader = stream;
    let mut writer = match reader.try_clone() {
        Ok(w) => w,
        Err(e) => return Err((format!("try_clone: {e}"), 0, 0)),
    };
    thread::scope(|s| {
        let w = scoped_spawn(s, "echo-writer", move || {
            let mut g = Generator::new(seed);
            let mut buf = vec![0u8; 32 * 1024];
            while g.offset() < bytes {
                let n = (bytes - g.offset()).min(buf.len() as u64) as usize;
                g.next_chunk(&mut buf[..n]);
                if let Err(e) = write_all_until(&mut writer, &buf[..n], Until::deadline(deadline)) {
                    return (Err(format!("send at offset {}: {e:?}", g.offset() - n as u64)), g.offset() - n as u64, 0);
                }
            }
            (Ok(()), g.offset(), g.checksum())
        });
        let mut v = Verifier::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut read_err = None;
        while v.offset() < bytes {
            let want = (bytes - v.offset()).min(buf.len() as u64) as usize;
            match read_until(&mut reader, &mut buf[..want], Until::deadline(deadline)) {
                Ok(0) => {
                    read_err = Some(format!("EOF after {} of {bytes} echoed bytes", v.offset()));
                    break;
                }
                Ok(n) => v.update(&buf[..n]),
                Err(e) => {
                    read_err = Some(format!("receive after {} of {bytes} echoed bytes: {e:?}", v.offset()));
                    break;
                }
            }
        }
        if read_err.is_some() {
            // Unblock the writer promptly.
            let _ = reader.shutdown(Shutdown::Both);
        }
        let (wres, sent, sent_sum) = w.join().expect("writer thread");
        let got = v.offset();
        if let Some(e) = read_err {
            return Err((e, sent, got));
        }
        if let Err(e) = wres {
            return Err((e, sent, got));
        }
        if let Some(off) = v.first_mismatch() {
            return Err((format!("echoed data differs from the sent data at offset {off}"), sent, got));
        }
        if v.checksum() != sent_sum {
            return Err((format!("checksum sent {sent_sum:016x} != echoed {:016x}", v.checksum()), sent, got));
        }
        Ok((sent, got))
    })
}

// ---------------------------------------------------------------------------- receiving a stream

/// Result of [`receive_stream`] / [`half_close_request`].
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub bytes: u64,
    pub checksum: u64,
    pub expected_checksum: u64,
    pub first_mismatch: Option<u64>,
    /// How the stream ended (EOF expected).
    pub end: End,
    /// Bytes read during the paced phase.
    pub paced_bytes: u64,
    pub paced_for: Duration,
    pub elapsed: Duration,
}

impl StreamReport {
    /// Whole, intact, and ended with EOF.
    pub fn intact(&self, expected_len: u64) -> bool {
        self.bytes == expected_len
            && self.first_mismatch.is_none()
            && self.checksum == self.expected_checksum
            && self.end == End::Eof
    }
}

/// Pacing for [`receive_stream`]: read at `rate` bytes/s for `duration`, then as fast
/// as possible.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub rate: u64,
    pub duration: Duration,
}

/// Connect, send `request`, then read stream `seed` of `len` bytes to EOF, paced as
/// `pace` says at first; `progress` follows the bytes read (for a watcher thread).
pub fn receive_stream(
    addr: SocketAddr,
    request: &[u8],
    len: u64,
    seed: u64,
    pace: Option<Pace>,
    progress: &AtomicU64,
    timeout: Duration,
) -> Result<StreamReport, String> {
    let t0 = Instant::now();
    let until = Until::deadline(t0 + timeout);
    let mut s = tcp::connect(addr, Duration::from_secs(10), STEP).map_err(|e| format!("connect {addr}: {e}"))?;
    write_all_until(&mut s, request, until).map_err(|e| format!("send request: {e:?}"))?;
    read_stream(&mut s, len, seed, pace, progress, until, t0)
}

fn read_stream(
    s: &mut TcpStream,
    len: u64,
    seed: u64,
    pace: Option<Pace>,
    progress: &AtomicU64,
    until: Until,
    t0: Instant,
) -> Result<StreamReport, String> {
    let mut v = Verifier::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut paced_bytes = 0;
    let mut paced_for = Duration::ZERO;
    let pace_start = Instant::now();
    let end = loop {
        let mut want = buf.len();
        if let Some(p) = pace {
            let el = pace_start.elapsed();
            if el < p.duration {
                let allowed = (p.rate as f64 * el.as_secs_f64()) as u64;
                if v.offset() >= allowed {
                    // Pacing a reader is what this test is about, not synchronisation.
                    let ahead = (v.offset() + 1 - allowed) as f64 / p.rate as f64;
                    thread::sleep(Duration::from_secs_f64(ahead.min(0.05)));
                    continue;
                }
                want = ((allowed - v.offset()) as usize).clamp(1, 16 * 1024);
            } else if paced_for.is_zero() {
                paced_for = el;
                paced_bytes = v.offset();
            }
        }
        match read_until(s, &mut buf[..want], until) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                v.update(&buf[..n]);
                progress.store(v.offset(), Ordering::Relaxed);
                if v.offset() > len {
                    break End::Error(format!("more than the {len} bytes expected"));
                }
            }
            Err(e) => break e,
        }
    };
    if pace.is_some() && paced_for.is_zero() {
        paced_for = pace_start.elapsed();
        paced_bytes = v.offset();
    }
    Ok(StreamReport {
        bytes: v.offset(),
        checksum: v.checksum(),
        expected_checksum: crate::pattern::checksum_of(seed, v.offset().min(len)),
        first_mismatch: v.first_mismatch(),
        end,
        paced_bytes,
        paced_for,
        elapsed: t0.elapsed(),
    })
}

/// Connect, send `request_len` bytes of stream `request_seed`, shut down the write
/// side (half-close), then read the reply stream `reply_seed` to EOF.
pub fn half_close_request(
    addr: SocketAddr,
    request_len: u64,
    request_seed: u64,
    reply_len: u64,
    reply_seed: u64,
    timeout: Duration,
) -> Result<StreamReport, String> {
    let t0 = Instant::now();
    let until = Until::deadline(t0 + timeout);
    let mut s = tcp::connect(addr, Duration::from_secs(10), STEP).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut g = Generator::new(request_seed);
    let mut buf = vec![0u8; 64 * 1024];
    while g.offset() < request_len {
        let n = (request_len - g.offset()).min(buf.len() as u64) as usize;
        g.next_chunk(&mut buf[..n]);
        write_all_until(&mut s, &buf[..n], until).map_err(|e| format!("send request: {e:?}"))?;
    }
    s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown(Write): {e}"))?;
    let progress = AtomicU64::new(0);
    read_stream(&mut s, reply_len, reply_seed, None, &progress, until, t0)
}

// ---------------------------------------------------------------------------- idle connections

/// Open `k` connections with `parallel` threads. With `keepalive = Some(period)`, a
/// thread also sends one byte on its open connections between connects, paced so
/// that each is touched once per `period` however slow the connects are, so an idle
/// timeout shorter than the opening time does not reclaim the first ones early.
/// Returns the open connections (non-blocking), the errors (the first 50) and their
/// count.
pub fn open_idle(
    addr: SocketAddr,
    k: usize,
    parallel: usize,
    keepalive: Option<Duration>,
    timeout: Duration,
) -> (Vec<TcpStream>, Vec<String>, usize) {
    let deadline = Instant::now() + timeout;
    let next = AtomicUsize::new(0);
    let all = Mutex::new(Vec::with_capacity(k));
    let errors = Mutex::new((Vec::new(), 0usize));
    thread::scope(|s| {
        for w in 0..parallel.max(1) {
            let (next, all, errors) = (&next, &all, &errors);
            scoped_spawn(s, &format!("idle-{w}"), move || {
                let mut mine: Vec<TcpStream> = Vec::new();
                let mut sweeper = Sweeper::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= k || Instant::now() >= deadline {
                        break;
                    }
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                        Ok(c) => mine.push(c),
                        Err(e) => {
                            let mut er = errors.lock().unwrap();
                            er.1 += 1;
                            if er.0.len() < 50 {
                                er.0.push(format!("connection {i}: {e}"));
                            }
                        }
                    }
                    if let Some(period) = keepalive {
                        sweeper.keep_alive(&mine, period);
                    }
                }
                for c in &mine {
                    let _ = c.set_nonblocking(true);
                }
                all.lock().unwrap().extend(mine);
            });
        }
    });
    let (errs, n) = errors.into_inner().unwrap();
    (all.into_inner().unwrap(), errs, n)
}

/// Send one byte on every connection (to reset idle timers); returns how many failed.
/// A burst: for many connections prefer [`Sweeper`].
pub fn touch(conns: &[TcpStream]) -> usize {
    let mut failed = 0;
    for mut c in conns {
        match c.write(b".") {
            Ok(1) => {}
            _ => failed += 1,
        }
    }
    failed
}

/// Touches connections round robin, a few at a time, so keep-alive traffic is spread
/// evenly instead of arriving as one burst.
#[derive(Default, Debug)]
pub struct Sweeper {
    cursor: usize,
    /// When [`Sweeper::keep_alive`] last ran, and the fraction of a touch it owes.
    last: Option<Instant>,
    owed: f64,
    /// Writes that failed so far.
    pub failed: usize,
    /// Writes done so far.
    pub touched: usize,
}

impl Sweeper {
    /// One byte on each of the next `n` connections (wrapping around).
    pub fn touch_next(&mut self, conns: &[TcpStream], n: usize) {
        if conns.is_empty() {
            return;
        }
        for _ in 0..n.min(conns.len()) {
            self.cursor %= conns.len();
            let mut c = &conns[self.cursor];
            match c.write(b".") {
                Ok(1) => {}
                _ => self.failed += 1,
            }
            self.touched += 1;
            self.cursor += 1;
        }
    }

    /// Touch as many of the next connections as the time since the last call owes,
    /// so that each is touched once per `period` whatever the calling rhythm.
    pub fn keep_alive(&mut self, conns: &[TcpStream], period: Duration) {
        let now = Instant::now();
        let since = now - self.last.replace(now).unwrap_or(now);
        self.owed += conns.len() as f64 * since.as_secs_f64() / period.as_secs_f64();
        let n = self.owed as usize;
        self.owed -= n as f64;
        self.touch_next(conns, n);
    }
}

/// How the connections of [`wait_closed`] ended.
#[derive(Debug, Default, Clone)]
pub struct Closed {
    pub eof: usize,
    pub reset: usize,
    pub other: usize,
    pub still_open: usize,
    /// Connections that received data (not expected for idle ones).
    pub got_data: usize,
    /// Indices of the connections still open.
    pub open: Vec<usize>,
}

/// Poll (bounded by `timeout`) until every connection has seen EOF or a reset.
/// The connections must be non-blocking.
pub fn wait_closed(conns: &[TcpStream], timeout: Duration) -> Closed {
    let all: Vec<usize> = (0..conns.len()).collect();
    wait_closed_subset(conns, &all, timeout)
}

/// [`wait_closed`] for the connections at `which`.
pub fn wait_closed_subset(conns: &[TcpStream], which: &[usize], timeout: Duration) -> Closed {
    let deadline = Instant::now() + timeout;
    let mut open: Vec<usize> = which.to_vec();
    let mut c = Closed::default();
    let mut got_data = vec![false; conns.len()];
    let mut buf = [0u8; 4096];
    loop {
        open.retain(|&i| {
            let mut s = &conns[i];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        c.eof += 1;
                        return false;
                    }
                    Ok(_) => got_data[i] = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        if End::from_error(&e) == End::Reset {
                            c.reset += 1;
                        } else {
                            c.other += 1;
                        }
                        return false;
                    }
                }
            }
        });
        if open.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    c.still_open = open.len();
    c.got_data = got_data.iter().filter(|&&g| g).count();
    c.open = open;
    c
}

/// Connect, send `request`, read until `expect` bytes came back (e.g. an echo), so the
/// connection is known to be established end to end; returns the stream.
pub fn connect_and_roundtrip(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<TcpStream, String> {
    let until = Until::deadline(Instant::now() + timeout);
    let mut s = tcp::connect(addr, timeout, STEP).map_err(|e| format!("connect {addr}: {e}"))?;
    write_all_until(&mut s, request, until).map_err(|e| format!("send: {e:?}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < request.len() {
        match read_until(&mut s, &mut buf, until) {
            Ok(0) => return Err(format!("EOF after {} of {} echoed bytes", got.len(), request.len())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read echo: {e:?}")),
        }
    }
    if got != request {
        return Err(format!("echo {got:?} != sent {request:?}"));
    }
    Ok(s)
}

/// Read from `s` (bounded) until EOF, an error, or `timeout`; returns how it ended and
/// the bytes read.
pub fn read_to_end_or_error(s: &mut TcpStream, timeout: Duration) -> (End, u64) {
    let until = Until::deadline(Instant::now() + timeout);
    let mut buf = [0u8; 16 * 1024];
    let mut n = 0u64;
    loop {
        match read_until(s, &mut buf, until) {
            Ok(0) => return (End::Eof, n),
            Ok(k) => n += k as u64,
            Err(e) => return (e, n),
        }
    }
}
