//! The control socket protocol: one JSON object per line each way.
//!
//! Request: `{"cmd":"backend_weight","vip":"198.18.1.1:80","backend":"198.18.0.21:8080","weight":5}`
//! Response: `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::model::{Affinity, Mode, ProxyProtocol};

/// Options of `vip add`; unset ones take the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipOptions {
    pub mode: Option<Mode>,
    pub affinity: Option<Affinity>,
    pub max_connections: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    pub connect_tries: Option<u8>,
    pub idle_timeout_ms: Option<u64>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub table_size: Option<u32>,
    /// A `health = {...}` table as JSON.
    pub health: Option<serde_json::Value>,
}

/// `limit set`: each field set is changed; `clear` names limits removed
/// (`new_conn_rate`, `client_rate`, `bandwidth`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitChange {
    pub new_conn_rate: Option<u32>,
    pub burst: Option<u32>,
    pub client_rate: Option<u32>,
    pub client_burst: Option<u32>,
    pub bandwidth: Option<u64>,
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub clear: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    VipList,
    VipAdd { vip: SocketAddrV4, #[serde(default)] options: VipOptions },
    VipDel { vip: SocketAddrV4 },
    BackendList { vip: Option<SocketAddrV4> },
    BackendAdd { vip: SocketAddrV4, backend: SocketAddrV4, weight: Option<u32> },
    BackendDel { vip: SocketAddrV4, backend: SocketAddrV4 },
    BackendWeight { vip: SocketAddrV4, backend: SocketAddrV4, weight: u32 },
    BackendDrain { vip: SocketAddrV4, backend: SocketAddrV4 },
    BackendUndrain { vip: SocketAddrV4, backend: SocketAddrV4 },
    LimitShow { vip: Option<SocketAddrV4> },
    LimitSet { vip: SocketAddrV4, change: LimitChange },
    Stats,
    Health,
    /// Re-read the TOML file (as SIGHUP does).
    Reload,
}

impl Request {
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Request::Status
                | Request::VipList
                | Request::BackendList { .. }
                | Request::LimitShow { .. }
                | Request::Stats
                | Request::Health
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sends one request and reads the response.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, String> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the control plane at {}: {e} (is fulcrum-controlplane running? --socket chooses another path)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut reader = BufReader::new(&stream);
    let mut resp = String::new();
    reader.read_line(&mut resp).map_err(|e| format!("{}: {e}", socket.display()))?;
    if resp.is_empty() {
        return Err(format!("{}: the control plane closed the connection", socket.display()));
    }
    let resp: Response = serde_json::from_str(&resp).map_err(|e| format!("bad response from the control plane: {e}"))?;
    if resp.ok {
        Ok(resp.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(resp.error.unwrap_or_else(|| "the control plane refused without saying why".into()))
    }
}
