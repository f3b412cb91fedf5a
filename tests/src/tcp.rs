//! Small TCP helpers shared by the test servers and clients (safe wrappers only).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
};

/// A listening socket on `addr` (IPv4) with SO_REUSEADDR and a listen backlog of
/// `backlog` (std's `TcpListener::bind` does not let one choose it; a proxy opening
/// many backend connections at once needs a deep one). Call it inside the namespace.
pub fn listen_on(addr: SocketAddr, backlog: i32) -> Result<TcpListener, String> {
    let v4 = match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => return Err(format!("{addr}: only IPv4 is supported")),
    };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(v4)).map_err(|e| format!("bind {addr}: {e}"))?;
    let backlog = Backlog::new(backlog).map_err(|e| format!("backlog {backlog}: {e}"))?;
    listen(&fd, backlog).map_err(|e| format!("listen {addr}: {e}"))?;
    Ok(TcpListener::from(fd))
}

/// Set SO_LINGER to {on, 0 s}: closing the socket then sends a RST instead of a FIN.
pub fn set_linger_zero(s: &TcpStream) -> Result<(), String> {
    let l = nix::libc::linger { l_onoff: 1, l_linger: 0 };
    setsockopt(s, sockopt::Linger, &l).map_err(|e| format!("SO_LINGER: {e}"))
}

/// Close `s` with a RST (SO_LINGER 0, then close).
pub fn reset(s: TcpStream) -> Result<(), String> {
    set_linger_zero(&s)?;
    drop(s);
    Ok(())
}

/// How a connection ended, as seen by one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Orderly: read returned 0 (the peer sent FIN) or we finished our part.
    Eof,
    /// The peer reset the connection (ECONNRESET / EPIPE).
    Reset,
    /// The test asked the server to stop while the connection was open.
    Stopped,
    /// A deadline passed.
    TimedOut,
    /// Anything else.
    Error(String),
}

impl End {
    pub fn from_error(e: &io::Error) -> End {
        match e.kind() {
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => End::Reset,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => End::TimedOut,
            _ => End::Error(e.to_string()),
        }
    }

    pub fn is_eof_or_reset(&self) -> bool {
        matches!(self, End::Eof | End::Reset)
    }
}

/// Why a bounded I/O loop stopped early.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A stop condition for blocking I/O done in short timed steps: a flag and/or a deadline.
#[derive(Clone, Copy)]
pub struct Until<'a> {
    pub stop: Option<&'a AtomicBool>,
    pub deadline: Option<Instant>,
}

impl<'a> Until<'a> {
    pub fn flag(stop: &'a AtomicBool) -> Self {
        Until { stop: Some(stop), deadline: None }
    }

    pub fn deadline(d: Instant) -> Self {
        Until { stop: None, deadline: Some(d) }
    }

    pub fn both(stop: &'a AtomicBool, d: Instant) -> Self {
        Until { stop: Some(stop), deadline: Some(d) }
    }

    /// `Some(end)` once the flag is set or the deadline has passed.
    pub fn expired(&self) -> Option<End> {
        if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Some(End::Stopped);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(End::TimedOut);
        }
        None
    }
}

/// Set both socket timeouts (the step of the bounded loops below).
pub fn set_step_timeouts(s: &TcpStream, step: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(step))?;
    s.set_write_timeout(Some(step))
}

/// `write_all` for a socket with a write timeout: retries timed-out steps until done,
/// or until `until` expires. Returns the end on failure.
pub fn write_all_until(s: &mut TcpStream, mut buf: &[u8], until: Until) -> Result<(), End> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(End::Error("write returned 0".into())),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if let Some(end) = until.expired() {
                    return Err(end);
                }
            }
            Err(e) => return Err(End::from_error(&e)),
        }
    }
    Ok(())
}

/// One read for a socket with a read timeout: retries timed-out steps until data,
/// EOF (`Ok(0)`), an error, or `until` expires.
pub fn read_until(s: &mut TcpStream, buf: &mut [u8], until: Until) -> Result<usize, End> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if let Some(end) = until.expired() {
                    return Err(end);
                }
            }
            Err(e) => return Err(End::from_error(&e)),
        }
    }
}

/// Read and discard until EOF (`Ok(bytes)`), or return how it ended otherwise.
pub fn drain_until(s: &mut TcpStream, until: Until) -> Result<u64, End> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        match read_until(s, &mut buf, until)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// Connect with a timeout, then set the step timeouts.
pub fn connect(addr: SocketAddr, timeout: Duration, step: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    set_step_timeouts(&s, step)?;
    Ok(s)
}
