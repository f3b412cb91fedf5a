//! Proxy-mode VIP configuration for [`crate::Dataplane::start`] and readers for the
//! `vips` / `proxy` sections of the stats file.

use std::fmt::Write as _;

use serde_json::Value;

/// The VIP the proxy tests use.
pub const VIP_IP: &str = "198.18.1.1";
pub const VIP_PORT: u16 = 80;

/// One `[[vip]]` table.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub address: String,
    pub port: u16,
    /// `"flow"` or `"client"`.
    pub affinity: String,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    pub connect_tries: u32,
    pub idle_timeout_ms: u64,
    /// `"off"`, `"v1"`, `"v2"`.
    pub proxy_protocol: String,
    /// `(address, port, weight)`.
    pub backends: Vec<(String, u16, u32)>,
}

impl VipSpec {
    /// A proxy VIP with the documented defaults.
    pub fn new(address: &str, port: u16) -> Self {
        VipSpec {
            address: address.to_string(),
            port,
            affinity: "flow".into(),
            max_connections: 10_000,
            connect_timeout_ms: 1000,
            connect_tries: 3,
            idle_timeout_ms: 60_000,
            proxy_protocol: "off".into(),
            backends: Vec::new(),
        }
    }

    /// Add a backend.
    pub fn backend(mut self, address: &str, port: u16, weight: u32) -> Self {
        self.backends.push((address.to_string(), port, weight));
        self
    }

    /// The three topology backends on `port` with the given weights.
    pub fn three_backends(mut self, port: u16, weights: [u32; 3]) -> Self {
        for (ip, w) in crate::BACKEND_IPS.iter().zip(weights) {
            self.backends.push((ip.to_string(), port, w));
        }
        self
    }

    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[[vip]]");
        let _ = writeln!(s, "address = \"{}\"", self.address);
        let _ = writeln!(s, "port = {}", self.port);
        let _ = writeln!(s, "mode = \"proxy\"");
        let _ = writeln!(s, "affinity = \"{}\"", self.affinity);
        let _ = writeln!(s, "max_connections = {}", self.max_connections);
        let _ = writeln!(s, "connect_timeout_ms = {}", self.connect_timeout_ms);
        let _ = writeln!(s, "connect_tries = {}", self.connect_tries);
        let _ = writeln!(s, "idle_timeout_ms = {}", self.idle_timeout_ms);
        let _ = writeln!(s, "proxy_protocol = \"{}\"", self.proxy_protocol);
        let _ = writeln!(s, "backends = [");
        for (a, p, w) in &self.backends {
            let _ = writeln!(s, "  {{ address = \"{a}\", port = {p}, weight = {w} }},");
        }
        let _ = writeln!(s, "]");
        s
    }
}

/// Extra config for `Dataplane::start`: an optional `[proxy] buffer_size` and VIPs.
pub fn proxy_config(buffer_size: Option<usize>, vips: &[VipSpec]) -> String {
    let mut s = String::new();
    if let Some(b) = buffer_size {
        let _ = writeln!(s, "[proxy]\nbuffer_size = {b}\n");
    }
    for v in vips {
        s.push_str(&v.to_toml());
        s.push('\n');
    }
    s
}

/// The stats of VIP `address:port` (`vips[]` entry), if present.
pub fn vip_stats<'a>(stats: &'a Value, address: &str, port: u16) -> Option<&'a Value> {
    stats.get("vips")?.as_array()?.iter().find(|v| {
        v.get("address").and_then(Value::as_str) == Some(address)
            && v.get("port").and_then(Value::as_u64) == Some(port.into())
    })
}

/// A VIP counter (`accepted`, `active`, `drop_idle_timeout`, ...); 0 when absent.
pub fn vip_counter(stats: &Value, address: &str, port: u16, field: &str) -> u64 {
    vip_stats(stats, address, port).and_then(|v| v.get(field)).and_then(Value::as_u64).unwrap_or(0)
}

/// The stats of backend `be_address` of a VIP, if present.
pub fn backend_stats<'a>(stats: &'a Value, address: &str, port: u16, be_address: &str) -> Option<&'a Value> {
    vip_stats(stats, address, port)?
        .get("backends")?
        .as_array()?
        .iter()
        .find(|b| b.get("address").and_then(Value::as_str) == Some(be_address))
}

/// A backend counter (`opened`, `connect_failures`, ...); 0 when absent.
pub fn backend_counter(stats: &Value, address: &str, port: u16, be_address: &str, field: &str) -> u64 {
    backend_stats(stats, address, port, be_address).and_then(|b| b.get(field)).and_then(Value::as_u64).unwrap_or(0)
}

/// A `proxy` counter (`connections`, `sockets`, `buffered_bytes`); `None` when absent.
pub fn proxy_counter(stats: &Value, field: &str) -> Option<u64> {
    stats.get("proxy")?.get(field)?.as_u64()
}

/// One line per VIP and backend, for messages.
pub fn format_vips(stats: &Value) -> String {
    let mut s = String::new();
    for v in stats.get("vips").and_then(Value::as_array).into_iter().flatten() {
        let mut vv = v.clone();
        let backends = vv.as_object_mut().and_then(|o| o.remove("backends"));
        let _ = writeln!(s, "vip {vv}");
        for b in backends.as_ref().and_then(Value::as_array).into_iter().flatten() {
            let _ = writeln!(s, "  backend {b}");
        }
    }
    if let Some(p) = stats.get("proxy") {
        let _ = writeln!(s, "proxy {p}");
    }
    let _ = write!(s, "mbufs_in_use {} of {}", stats["mbufs_in_use"], stats["mbufs_total"]);
    s
}
