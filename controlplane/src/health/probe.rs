//! The probes themselves: one async function per check kind. Each returns `Ok(())` or a
//! short human-readable error; the caller wraps the whole probe in `tokio::time::timeout`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use fulcrum_model::health::{CheckKind, HttpCheck, UdpCheck};

/// Runs one probe of `kind` against `addr`, binding `source` if given.
pub(crate) async fn probe(
    kind: &CheckKind,
    addr: SocketAddrV4,
    source: Option<Ipv4Addr>,
) -> Result<(), String> {
    match kind {
        CheckKind::Tcp => {
            // Connected = healthy. Dropping the stream closes it with RST (zero linger).
            connect(addr, source)
                .await
                .map(drop)
                .map_err(|e| format!("connect: {e}"))
        }
        CheckKind::Http(h) => http(h, addr, source).await,
        CheckKind::Udp(u) => udp(u, addr, source).await,
    }
}

/// TCP connect from `source` (port chosen by the kernel). `SO_LINGER` 0 makes the close an
/// RST, as HAProxy does for checks: at 1 000 checks/s a FIN close would leave ~60 000
/// sockets in TIME_WAIT, and with an explicit bind (which reserves the port for every
/// destination) that would exhaust the ephemeral port range.
async fn connect(addr: SocketAddrV4, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.set_zero_linger()?;
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src.into(), 0))?;
    }
    sock.connect(addr.into()).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses `HTTP/1.x NNN ...` from the first line.
fn status_code(line: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split_ascii_whitespace();
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return Err(format!("malformed status line {:?}", truncate(&text, 60)));
    }
    code.parse()
        .map_err(|_| format!("malformed status line {:?}", truncate(&text, 60)))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

async fn http(h: &HttpCheck, addr: SocketAddrV4, source: Option<Ipv4Addr>) -> Result<(), String> {
    let mut stream = connect(addr, source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let host = h.host.clone().unwrap_or_else(|| addr.ip().to_string());
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: fulcrum-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        h.path
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;

    let cap = h.max_read_kib as usize * 1024;
    let mut buf: Vec<u8> = Vec::with_capacity(cap.min(4096));
    let mut chunk = vec![0u8; cap.min(4096)];
    let mut status: Option<u16> = None;
    loop {
        let room = cap - buf.len();
        let eof = if room == 0 {
            true
        } else {
            let want = room.min(chunk.len());
            let n = stream
                .read(&mut chunk[..want])
                .await
                .map_err(|e| format!("recv: {e}"))?;
            buf.extend_from_slice(&chunk[..n]);
            n == 0
        };
        if status.is_none() {
            if let Some(eol) = find(&buf, b"\r\n") {
                let code = status_code(&buf[..eol])?;
                if !h.expect_status.contains(code) {
                    return Err(format!("status {code}, expected {}", h.expect_status));
                }
                status = Some(code);
            } else if eof {
                return Err(if buf.is_empty() {
                    "connection closed without a response".into()
                } else {
                    format!("no complete status line in {} bytes", buf.len())
                });
            }
        }
        if status.is_some() {
            let Some(want) = &h.body else { return Ok(()) };
            if let Some(hdr_end) = find(&buf, b"\r\n\r\n") {
                if find(&buf[hdr_end + 4..], want.as_bytes()).is_some() {
                    return Ok(());
                }
                if eof {
                    return Err(format!(
                        "body does not contain {:?} (read {} body bytes)",
                        truncate(want, 40),
                        buf.len() - hdr_end - 4
                    ));
                }
            } else if eof {
                return Err(format!("headers not complete within {} bytes", buf.len()));
            }
        }
    }
}

async fn udp(u: &UdpCheck, addr: SocketAddrV4, source: Option<Ipv4Addr>) -> Result<(), String> {
    let local = SocketAddr::new(source.unwrap_or(Ipv4Addr::UNSPECIFIED).into(), 0);
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    // Connected socket: the kernel matches ICMP port/host unreachable to it and reports
    // ECONNREFUSED (etc.) on the next send/recv, so a closed port fails immediately.
    sock.connect(SocketAddr::from(addr))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sock.send(&u.payload)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 2048];
    let n = sock
        .recv(&mut buf)
        .await
        .map_err(|e| format!("recv: {e}"))?;
    match &u.expect {
        Some(want) if find(&buf[..n], want).is_none() => Err(format!(
            "reply ({n} bytes) does not contain {:?}",
            String::from_utf8_lossy(want)
        )),
        _ => Ok(()),
    }
}
