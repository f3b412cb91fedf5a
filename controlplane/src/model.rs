//! The desired configuration: what the operator asked for (TOML plus CLI
//! changes), before slots and health are applied. Serialised into the state
//! file and carried over the control socket.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};

/// How a VIP handles its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Terminate TCP and proxy each connection.
    #[default]
    Proxy,
    /// Forwarding modes: the dataplane's own file holds their details (SNAT
    /// addresses, tunnel encapsulation); published generations carry their
    /// backends, weights and states.
    Dsr,
    Fullnat,
    Tunnel,
}

/// Which client identity picks the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    #[default]
    Flow,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// Operator drain: no new connections, established ones continue.
    #[serde(default)]
    pub drain: bool,
}

impl BackendSpec {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipSpec {
    pub address: Ipv4Addr,
    pub port: u16,
    pub mode: Mode,
    pub affinity: Affinity,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    pub connect_tries: u8,
    pub idle_timeout_ms: u64,
    pub proxy_protocol: ProxyProtocol,
    pub table_size: u32,
    #[serde(default)]
    pub new_conn_rate: Option<Rate>,
    #[serde(default)]
    pub client_rate: Option<Rate>,
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// The `health = { ... }` table as written (checked against the health
    /// module's `CheckSpec` when loaded).
    #[serde(default)]
    pub health: Option<serde_json::Value>,
    pub backends: Vec<BackendSpec>,
}

impl VipSpec {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }

    pub fn new(addr: SocketAddrV4) -> VipSpec {
        VipSpec {
            address: *addr.ip(),
            port: addr.port(),
            mode: Mode::Proxy,
            affinity: Affinity::Flow,
            max_connections: defaults::max_connections(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            connect_tries: defaults::connect_tries(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            proxy_protocol: ProxyProtocol::Off,
            table_size: defaults::table_size(),
            new_conn_rate: None,
            client_rate: None,
            bandwidth_bytes_per_sec: None,
            health: None,
            backends: Vec::new(),
        }
    }

    pub fn backend(&self, addr: SocketAddrV4) -> Option<&BackendSpec> {
        self.backends.iter().find(|b| b.addr() == addr)
    }

    pub fn backend_mut(&mut self, addr: SocketAddrV4) -> Option<&mut BackendSpec> {
        self.backends.iter_mut().find(|b| b.addr() == addr)
    }
}

/// Largest backend weight accepted.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Largest `max_connections` accepted.
pub const MAX_CONNECTIONS: u32 = 10_000_000;

/// Defaults of a VIP's settings, shared with the dataplane's file.
pub use fulcrum_shm::defaults;

/// Checks one VIP; the error names the field (`at` prefixes it).
pub fn validate_vip(v: &VipSpec, at: &str) -> Result<(), String> {
    validate_vip_address(v.address).map_err(|e| format!("{at}.address: {e}"))?;
    if v.port == 0 {
        return Err(format!("{at}.port: must not be 0"));
    }
    if !(1..=16).contains(&v.connect_tries) {
        return Err(format!("{at}.connect_tries: {} must be from 1 to 16", v.connect_tries));
    }
    if v.connect_timeout_ms == 0 || v.connect_timeout_ms > u64::from(u32::MAX) {
        return Err(format!("{at}.connect_timeout_ms: {} must be from 1 to {}", v.connect_timeout_ms, u32::MAX));
    }
    if v.idle_timeout_ms == 0 || v.idle_timeout_ms > u64::from(u32::MAX) {
        return Err(format!("{at}.idle_timeout_ms: {} must be from 1 to {}", v.idle_timeout_ms, u32::MAX));
    }
    if v.max_connections == 0 || v.max_connections > MAX_CONNECTIONS {
        return Err(format!("{at}.max_connections: {} must be from 1 to {MAX_CONNECTIONS}", v.max_connections));
    }
    for (name, r) in [("new_conn_rate", v.new_conn_rate), ("client_rate", v.client_rate)] {
        if let Some(r) = r {
            if r.per_sec == 0 {
                return Err(format!("{at}.{name}.per_sec: must be at least 1 (remove the limit instead)"));
            }
            if r.burst == 0 {
                return Err(format!("{at}.{name}.burst: must be at least 1"));
            }
        }
    }
    if v.bandwidth_bytes_per_sec == Some(0) {
        return Err(format!("{at}.bandwidth_bytes_per_sec: must be at least 1 (remove the limit instead)"));
    }
    if v.mode != Mode::Proxy && v.proxy_protocol != ProxyProtocol::Off {
        return Err(format!("{at}.proxy_protocol: only proxy mode sends a PROXY protocol header"));
    }
    if let Some(h) = &v.health {
        crate::checks::validate_spec(h).map_err(|e| format!("{at}.health: {e}"))?;
    }
    let mut seen = std::collections::HashSet::new();
    for (j, b) in v.backends.iter().enumerate() {
        let bat = format!("{at}.backends[{j}] ({})", b.addr());
        validate_backend_address(b.addr()).map_err(|e| format!("{bat}: {e}"))?;
        if b.weight > MAX_WEIGHT {
            return Err(format!("{bat}.weight: {} is above the maximum of {MAX_WEIGHT}", b.weight));
        }
        if matches!(v.mode, Mode::Dsr | Mode::Tunnel) && b.port != v.port {
            return Err(format!("{bat}.port: {} must equal the VIP's port {}: {:?} mode does not rewrite ports", b.port, v.port, v.mode));
        }
        if !seen.insert(b.addr()) {
            return Err(format!("{bat}: listed twice"));
        }
    }
    let keys: Vec<_> = v
        .backends
        .iter()
        .map(|b| fulcrum_maglev::Backend::at(b.address.into(), b.port, b.weight))
        .collect();
    fulcrum_maglev::MaglevTable::validate(&keys, v.table_size).map_err(|e| format!("{at}.table_size: {e}"))?;
    Ok(())
}

pub fn validate_vip_address(a: Ipv4Addr) -> Result<(), String> {
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(format!("{a} cannot be a VIP address"));
    }
    Ok(())
}

pub fn validate_backend_address(a: SocketAddrV4) -> Result<(), String> {
    let ip = a.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("{a} is not a usable backend address"));
    }
    if a.port() == 0 {
        return Err(format!("{a}: port must not be 0"));
    }
    Ok(())
}

/// Parses `a.b.c.d:port` with a clear message.
pub fn parse_addr(s: &str) -> Result<SocketAddrV4, String> {
    let (ip, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not an IPv4 address and port like 198.18.1.1:80"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address (like 198.18.1.1)"))?;
    let port: u32 = port
        .parse()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 1 to 65535"))?;
    if !(1..=65535).contains(&port) {
        return Err(format!("{s:?}: port {port} is not a number from 1 to 65535"));
    }
    Ok(SocketAddrV4::new(ip, port as u16))
}
