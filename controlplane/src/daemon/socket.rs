//! The control socket: bound with mode 0600, one thread per client, one
//! typed request and response per line.

use super::{lock, Shared};
use crate::proto::{Reply, Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

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

/// Accepts clients on a thread of its own.
pub(super) fn serve(listener: UnixListener, d: Shared) {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        let d = d.clone();
                        let _ = std::thread::Builder::new().name("client".into()).spawn(move || client(s, d));
                    }
                    Err(e) => log!("control socket accept: {e}"),
                }
            }
        })
        .expect("spawn control thread");
}

/// Answers one line at a time until the client closes.
fn client(stream: UnixStream, d: Shared) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let resp: Response<Reply> = match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => match lock(&d).handle(req) {
                Ok(data) => Response::ok(data),
                Err(e) => Response::err(e),
            },
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        out.push('\n');
        if (&stream).write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}
