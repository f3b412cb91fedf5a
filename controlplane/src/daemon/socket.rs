//! The control socket: bound with mode 0600, one thread per client (at most
//! [`MAX_CLIENTS`]), one typed request and response per line, each bounded
//! in size and time ([`crate::inputs`]).

use super::{lock, Shared};
use crate::inputs::{
    is_timeout, line_end, read_request, Endpoint, ReadError, Slot, CONTROL_DEADLINE, MAX_CLIENTS, MAX_REQUEST,
    QUICK_DEADLINE, RESERVED, WRITE_TIMEOUT,
};
use crate::proto::{Reply, Request, Response, BUSY};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Binds the control socket with mode 0600: bound under a temporary name,
/// restricted, then renamed into place. A socket file nobody answers on is
/// replaced; one a live daemon answers on is an error.
pub(super) fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("controlplane.socket: cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "controlplane.socket: {} is in use: another fulcrum-controlplane is running",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("controlplane.socket: cannot remove stale {}: {e}", path.display()))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(|e| format!("controlplane.socket: cannot bind {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("controlplane.socket: chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("controlplane.socket: rename to {}: {e}", path.display()))?;
    Ok(l)
}

/// Accepts clients on a thread of its own, each served on a thread of its
/// own, at most [`MAX_CLIENTS`] at once (see [`crate::inputs`] for the
/// reserved slots and the deadlines). A connection beyond the cap is refused
/// here with one error line, without a thread.
pub(super) fn serve(listener: UnixListener, d: Shared, ep: Arc<Endpoint>) {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let s = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        log!("control socket accept: {e}");
                        continue;
                    }
                };
                let (slot, quick) = match ep.enter(MAX_CLIENTS - RESERVED) {
                    Some(slot) => (slot, false),
                    None => match ep.enter(MAX_CLIENTS) {
                        Some(slot) => (slot, true),
                        None => {
                            refuse(s, &ep);
                            continue;
                        }
                    },
                };
                let d = d.clone();
                let ep2 = ep.clone();
                if let Err(e) =
                    std::thread::Builder::new().name("client".into()).spawn(move || client(s, d, &ep2, quick, slot))
                {
                    // The closure (stream and slot) is dropped with the error.
                    ep.refused();
                    log!("control socket: cannot start a client thread: {e}");
                }
            }
        })
        .expect("spawn control thread");
}

/// One line saying why, written without waiting, then closed.
fn refuse(s: UnixStream, ep: &Endpoint) {
    ep.refused();
    let _ = s.set_nonblocking(true);
    // Take what the client sent already, so that closing does not reset the
    // connection before it reads the refusal.
    let mut sink = [0u8; 4096];
    let _ = (&s).read(&mut sink);
    let _ = (&s).write_all(&reply_line(&Response::<Reply>::err(format!(
        "{BUSY}: it serves {MAX_CLIENTS} control clients already; try again"
    ))));
}

fn reply_line(resp: &Response<Reply>) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    out
}

/// Answers one request line at a time until the client closes, sends a line
/// over [`MAX_REQUEST`], or misses its deadline: the next complete request
/// within [`CONTROL_DEADLINE`] of connecting or of the last reply (a client
/// in a reserved slot: one request within [`QUICK_DEADLINE`], then closed);
/// each reply taken within [`WRITE_TIMEOUT`]. The daemon is locked only
/// around `handle`, never while reading or writing the socket.
fn client(stream: UnixStream, d: Shared, ep: &Endpoint, quick: bool, _slot: Slot) {
    let mut buf = Vec::with_capacity(MAX_REQUEST + 1);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let wait = if quick { QUICK_DEADLINE } else { CONTROL_DEADLINE };
    loop {
        let deadline = Instant::now() + wait;
        let n = match read_request(&mut &stream, &mut buf, line_end, deadline) {
            Ok(n) => n,
            Err(ReadError::TooLong) => {
                ep.oversize();
                let _ = (&stream).write_all(&reply_line(&Response::err(format!(
                    "request longer than {MAX_REQUEST} bytes: refused, connection closed"
                ))));
                return;
            }
            Err(ReadError::TimedOut) => {
                ep.timed_out();
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = (&stream).write_all(&reply_line(&Response::err(format!(
                    "no complete request within {} s: connection closed",
                    wait.as_secs()
                ))));
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        };
        let resp: Response<Reply> = match std::str::from_utf8(&buf[..n])
            .map_err(|e| e.to_string())
            .and_then(|line| serde_json::from_str::<Request>(line.trim()).map_err(|e| e.to_string()))
        {
            Ok(req) => {
                let result = lock(&d).handle(req);
                match result {
                    Ok(data) => Response::ok(data),
                    Err(e) => Response::err(e),
                }
            }
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        buf.drain(..n);
        if let Err(e) = (&stream).write_all(&reply_line(&resp)) {
            if is_timeout(&e) {
                ep.timed_out();
            }
            return;
        }
        if quick {
            return;
        }
    }
}
