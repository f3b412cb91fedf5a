//! The control plane's TOML file: `[controlplane]` and `[[vip]]` tables.

use crate::model::{self, defaults, Affinity, BackendSpec, Mode, ProxyProtocol, Rate, VipSpec};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    controlplane: Controlplane,
    #[serde(default, rename = "vip")]
    vips: Vec<TomlVip>,
}

/// `[controlplane]`: where things live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Controlplane {
    /// Shared-memory segment shared with the dataplane.
    pub shm: PathBuf,
    /// Unix socket `fulcrumctl` talks to (mode 0600).
    pub socket: PathBuf,
    /// Desired configuration and slot map, rewritten atomically on every change.
    pub state_file: PathBuf,
    /// Prometheus listen address (`/metrics`); `""` disables it.
    pub prometheus: String,
    /// Source address for health checks (in software mode 198.18.0.1).
    pub health_source: Option<Ipv4Addr>,
    /// Health checks in flight at once.
    pub max_checks_in_flight: usize,
}

impl Default for Controlplane {
    fn default() -> Self {
        Controlplane {
            shm: "/dev/shm/fulcrum".into(),
            socket: "/run/fulcrum/control.sock".into(),
            state_file: "/var/lib/fulcrum/controlplane.json".into(),
            prometheus: "127.0.0.1:9469".into(),
            health_source: None,
            max_checks_in_flight: 256,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlVip {
    address: Ipv4Addr,
    port: u16,
    mode: Mode,
    #[serde(default)]
    affinity: Affinity,
    #[serde(default = "defaults::max_connections")]
    max_connections: u32,
    #[serde(default = "defaults::connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "defaults::connect_tries")]
    connect_tries: u8,
    #[serde(default = "defaults::idle_timeout_ms")]
    idle_timeout_ms: u64,
    #[serde(default)]
    proxy_protocol: ProxyProtocol,
    #[serde(default = "defaults::table_size")]
    table_size: u32,
    #[serde(default)]
    new_conn_rate: Option<Rate>,
    #[serde(default)]
    client_rate: Option<Rate>,
    #[serde(default)]
    bandwidth_bytes_per_sec: Option<u64>,
    #[serde(default)]
    health: Option<toml::Value>,
    #[serde(default)]
    backends: Vec<TomlBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlBackend {
    address: Ipv4Addr,
    port: u16,
    #[serde(default = "defaults::weight")]
    weight: u32,
}

/// A loaded, validated file.
#[derive(Debug, Clone)]
pub struct Config {
    pub controlplane: Controlplane,
    pub vips: Vec<VipSpec>,
}

/// A configuration problem: `<file>: <field>: <reason>`.
#[derive(Debug)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text).map_err(|message| ConfigError {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let file: File = toml::from_str(text).map_err(|e| one_line_toml_error(&e, text))?;
        let cp = &file.controlplane;
        if !cp.prometheus.is_empty() && cp.prometheus.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "controlplane.prometheus: {:?} is not an address and port like 127.0.0.1:9469 (or \"\" to disable)",
                cp.prometheus
            ));
        }
        if cp.max_checks_in_flight == 0 {
            return Err("controlplane.max_checks_in_flight: must be at least 1".into());
        }
        for (name, p) in [("shm", &cp.shm), ("socket", &cp.socket), ("state_file", &cp.state_file)] {
            if p.as_os_str().is_empty() {
                return Err(format!("controlplane.{name}: must not be empty"));
            }
        }
        let mut vips = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, v) in file.vips.into_iter().enumerate() {
            let at = format!("vip[{i}] ({}:{})", v.address, v.port);
            let health = match v.health {
                Some(h) => Some(serde_json::to_value(&h).map_err(|e| format!("{at}.health: {e}"))?),
                None => None,
            };
            let spec = VipSpec {
                address: v.address,
                port: v.port,
                mode: v.mode,
                affinity: v.affinity,
                max_connections: v.max_connections,
                connect_timeout_ms: v.connect_timeout_ms,
                connect_tries: v.connect_tries,
                idle_timeout_ms: v.idle_timeout_ms,
                proxy_protocol: v.proxy_protocol,
                table_size: v.table_size,
                new_conn_rate: v.new_conn_rate,
                client_rate: v.client_rate,
                bandwidth_bytes_per_sec: v.bandwidth_bytes_per_sec,
                health,
                backends: v
                    .backends
                    .into_iter()
                    .map(|b| BackendSpec { address: b.address, port: b.port, weight: b.weight, drain: false })
                    .collect(),
            };
            model::validate_vip(&spec, &at)?;
            if !seen.insert(spec.addr()) {
                return Err(format!("{at}: listed twice"));
            }
            vips.push(spec);
        }
        Ok(Config { controlplane: file.controlplane, vips })
    }
}

/// toml's errors span several lines with a source excerpt; keep the line
/// number and the message.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            let line = text[line_start..line_end].trim();
            let key = text[start..span.end.min(text.len())].trim();
            format!("line {line_no} (`{line}`), at `{key}`: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nbackends = [{ address = \"198.18.0.21\", port = 8080 }]\n").unwrap();
        assert_eq!(c.vips[0].backends[0].weight, 1);
        assert_eq!(c.controlplane.prometheus, "127.0.0.1:9469");
        let cases = [
            ("[controlplane]\nsokcet = \"x\"\n", "sokcet"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 0\nmode = \"proxy\"\n", "port"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\ntable_size = 100\n", "table_size"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nbackends = [{ address = \"198.18.0.21\", port = 8080, weight = -1 }]\n", "weight"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nnew_conn_rate = { per_sec = 0, burst = 1 }\n", "new_conn_rate.per_sec"),
        ];
        for (text, want) in cases {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want}");
        }
    }
}
