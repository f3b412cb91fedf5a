//! Bounds on what a client of the control socket or of the Prometheus
//! endpoint can make the daemon hold: the size of one request, how long a
//! connection may take, how many are served at once; and the counters of
//! what was cut.
//!
//! - a request (a control line, an HTTP request head) is at most
//!   [`MAX_REQUEST`] bytes, read into a buffer that never grows past it;
//! - every request has a deadline: the control socket gives a client
//!   [`CONTROL_DEADLINE`] from connecting or from its last reply until its
//!   next request is complete (idle wait and slow sending together), a
//!   client in a reserved slot [`QUICK_DEADLINE`] for its one request; the
//!   Prometheus endpoint gives a connection [`PROMETHEUS_DEADLINE`] for the
//!   request and the answer; a reply not taken by the client within
//!   [`WRITE_TIMEOUT`] (control) or the connection's deadline (Prometheus)
//!   cuts it too;
//! - each endpoint serves at most [`MAX_CLIENTS`] connections at once (one
//!   thread each), separately, so a flood of one never blocks the other. A
//!   connection beyond the cap gets a one-line refusal and is closed at
//!   once, by the accepting thread. On the control socket the last
//!   [`RESERVED`] slots only take clients when the others are full, and a
//!   client there must send one complete request within [`QUICK_DEADLINE`],
//!   gets its answer and is closed: `fulcrumctl` (which sends its request at
//!   once, and retries a refusal for a few seconds) gets in while slow
//!   clients hold every other slot.

use crate::proto::{ClientCounters, ClientsStatus};
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request, terminator included (bytes).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once, per endpoint.
pub const MAX_CLIENTS: usize = 64;
/// Control-socket slots kept for quick clients (out of [`MAX_CLIENTS`]).
pub const RESERVED: usize = 8;
/// A control client's time for its next complete request line.
pub const CONTROL_DEADLINE: Duration = Duration::from_secs(10);
/// A control client in a reserved slot: its one request.
pub const QUICK_DEADLINE: Duration = Duration::from_secs(1);
/// A control client's time to take one reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A Prometheus connection, request and answer.
pub const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(5);

/// One endpoint's clients: how many are served now, and what was cut.
#[derive(Debug, Default)]
pub struct Endpoint {
    active: AtomicUsize,
    refused: AtomicU64,
    oversize: AtomicU64,
    timed_out: AtomicU64,
}

/// A served connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Endpoint>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Endpoint {
    /// A slot if fewer than `limit` connections are served.
    pub fn enter(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub fn oversize(&self) {
        self.oversize.fetch_add(1, Ordering::Relaxed);
    }
    pub fn timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> ClientCounters {
        ClientCounters {
            active: self.active.load(Ordering::Acquire) as u64,
            max: MAX_CLIENTS as u64,
            refused: self.refused.load(Ordering::Relaxed),
            oversize: self.oversize.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// Both endpoints' counters, shared by their threads and the daemon.
#[derive(Debug, Default)]
pub struct Inputs {
    pub control: Arc<Endpoint>,
    pub prometheus: Arc<Endpoint>,
}

impl Inputs {
    pub fn snapshot(&self) -> ClientsStatus {
        ClientsStatus { control: self.control.snapshot(), prometheus: self.prometheus.snapshot() }
    }
}

/// Why no complete request was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the client closed the connection")]
    Closed,
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("no complete request in time")]
    TimedOut,
    #[error("{0}")]
    Io(std::io::Error),
}

/// A stream whose reads can be given a timeout.
pub trait Timed: Read {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Timed for &UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Timed for &TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// Where a request ends in `buf` (the index after its terminator), looking
/// from `from` on (everything before it was searched already).
pub type FindEnd = fn(buf: &[u8], from: usize) -> Option<usize>;

/// A control request: one line.
pub fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..].iter().position(|&b| b == b'\n').map(|i| from + i + 1)
}

/// An HTTP request head: up to an empty line (`\r\n\r\n`, or `\n\n`).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    (start..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\n\r\n") {
            Some(i + 3)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Reads into `buf` (which may hold bytes a client sent ahead) until it holds
/// a complete request of at most [`MAX_REQUEST`] bytes, returning its length,
/// or `deadline` passes. `buf` never holds more than `MAX_REQUEST` + 1 bytes:
/// every read is bounded by the room left.
pub fn read_request<S: Timed>(s: &mut S, buf: &mut Vec<u8>, end: FindEnd, deadline: Instant) -> Result<usize, ReadError> {
    let mut searched = 0;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(n) = end(buf, searched) {
            return if n <= MAX_REQUEST { Ok(n) } else { Err(ReadError::TooLong) };
        }
        if buf.len() >= MAX_REQUEST {
            return Err(ReadError::TooLong);
        }
        searched = buf.len();
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadError::TimedOut);
        }
        s.set_timeout(Some(deadline - now)).map_err(ReadError::Io)?;
        let room = (MAX_REQUEST + 1 - buf.len()).min(chunk.len());
        match s.read(&mut chunk[..room]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(ReadError::TimedOut)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Whether a write failed because the peer did not take the bytes in time.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn requests_are_cut_at_the_cap_and_the_buffer_stays_bounded() {
        let (mut a, b) = pair();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Two pipelined requests: the first is returned, the second waits.
        a.write_all(b"{\"cmd\":\"status\"}\n{\"cmd\"").unwrap();
        let mut buf = Vec::new();
        let n = read_request(&mut &b, &mut buf, line_end, deadline).unwrap();
        assert_eq!(&buf[..n], b"{\"cmd\":\"status\"}\n");
        buf.drain(..n);
        a.write_all(b":\"stats\"}\n").unwrap();
        let n = read_request(&mut &b, &mut buf, line_end, deadline).unwrap();
        assert_eq!(&buf[..n], b"{\"cmd\":\"stats\"}\n");
        buf.drain(..n);
        // Exactly the cap, newline included: accepted.
        let mut exact = vec![b'x'; MAX_REQUEST - 1];
        exact.push(b'\n');
        let w = std::thread::spawn(move || {
            a.write_all(&exact).unwrap();
            // One byte more than the cap without a newline: refused.
            let _ = a.write_all(&vec![b'y'; MAX_REQUEST + 1000]);
            a
        });
        let n = read_request(&mut &b, &mut buf, line_end, deadline).unwrap();
        assert_eq!(n, MAX_REQUEST);
        buf.drain(..n);
        assert!(matches!(read_request(&mut &b, &mut buf, line_end, deadline), Err(ReadError::TooLong)));
        assert!(buf.len() <= MAX_REQUEST + 1, "{}", buf.len());
        drop(b);
        let _ = w.join();
    }

    #[test]
    fn a_slow_client_is_cut_at_the_deadline_and_a_closed_one_is_seen() {
        let (mut a, b) = pair();
        a.write_all(b"{\"cmd\"").unwrap();
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(matches!(read_request(&mut &b, &mut buf, line_end, deadline), Err(ReadError::TimedOut)));
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(read_request(&mut &b, &mut buf, line_end, deadline), Err(ReadError::Closed)));
    }

    #[test]
    fn http_heads_end_at_an_empty_line_even_split_across_reads() {
        let (mut a, b) = pair();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = Vec::new();
        a.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let n = read_request(&mut &b, &mut buf, head_end, deadline).unwrap();
        assert_eq!(n, buf.len());
        // The terminator split between two reads is still found.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let cut = head.len() - 1;
        assert_eq!(head_end(&head[..cut], 0), None);
        assert_eq!(head_end(head, cut), Some(head.len()));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        let e = Arc::new(Endpoint::default());
        e.refused();
        let s1 = e.enter(1).unwrap();
        assert!(e.enter(1).is_none());
        assert_eq!(e.snapshot().active, 1);
        drop(s1);
        assert!(e.enter(1).is_some());
        assert_eq!(e.snapshot().refused, 1);
    }
}
