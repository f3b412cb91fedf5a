//! The VIP, its backends and their settings: the one shape every file, the
//! control socket, the state file and the shared-memory generation carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::health::HealthCheck;

/// L4 protocol of a VIP. Proxy VIPs are TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// How a VIP handles its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Terminate TCP and proxy each connection to a backend.
    Proxy,
    /// L2 direct server return: only the destination MAC changes.
    Dsr,
    /// Source and destination NAT; replies come back through the dataplane.
    Fullnat,
    /// IPIP or GUE encapsulation towards the backend ([`Vip::tunnel`]).
    Tunnel,
}

impl Mode {
    /// Packets forwarded (not terminated).
    pub const fn is_forwarding(self) -> bool {
        !matches!(self, Mode::Proxy)
    }

    /// DSR and tunnel deliver the packet unchanged: a backend's port must be the VIP's.
    pub const fn keeps_port(self) -> bool {
        matches!(self, Mode::Dsr | Mode::Tunnel)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Dsr => "dsr",
            Mode::Fullnat => "fullnat",
            Mode::Tunnel => "tunnel",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "proxy" => Ok(Mode::Proxy),
            "dsr" => Ok(Mode::Dsr),
            "fullnat" => Ok(Mode::Fullnat),
            "tunnel" => Ok(Mode::Tunnel),
            _ => Err(format!("{s:?} is not a mode (proxy, dsr, fullnat, tunnel)")),
        }
    }
}

/// Which client identity picks the backend (the Maglev key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Client address and port (the 5-tuple): each connection placed on its own.
    #[default]
    Flow,
    /// Client address alone: all of a client's connections share a backend
    /// while it is up (per-client state, FTP, iperf3).
    Client,
}

/// PROXY protocol header a proxy VIP sends its backend before any client byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

/// Tunnel encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// IPv4-in-IPv4 (protocol 4), RFC 2003.
    Ipip,
    /// IPv4 directly in UDP to port [`GUE_PORT`](crate::GUE_PORT) (GUE variant 1, as Katran).
    Gue,
}

/// Tunnel mode's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    pub encap: Encap,
    /// Outer source addresses are drawn from this prefix, host bits from the
    /// flow, so the backend's NIC spreads flows over its queues (as Katran).
    pub source_prefix: Cidr,
}

/// Administrative/health state of a backend. Only `Up` backends with weight
/// above 0 receive new connections or flows ([`Backend::effective_weight`]);
/// established ones of a `Drain` or `Down` backend continue until they end
/// (health checks can be wrong; a backend that really died resets or times
/// them out anyway, HAProxy's default). In the files an operator writes `up`
/// (the default) or `drain`; the control plane publishes `down` for a backend
/// its health checks found down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Up,
    /// Taken out of rotation on purpose; existing connections finish.
    Drain,
    /// Failed its health checks; existing connections are kept too.
    Down,
}

impl BackendState {
    pub fn is_up(&self) -> bool {
        *self == BackendState::Up
    }

    pub const fn name(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Drain => "drain",
            BackendState::Down => "down",
        }
    }
}

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_sec: u32, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }

    /// One lcore's share of the limit: lcores enforce limits without sharing
    /// state, each with its share rounded up (at least 1).
    pub fn per_lcore(self, lcores: usize) -> Rate {
        let share = |n: u32| n.div_ceil(lcores.max(1) as u32).max(1);
        Rate { per_sec: share(self.per_sec), burst: share(self.burst) }
    }
}

/// One lcore's share of a bandwidth limit (as [`Rate::per_lcore`]).
pub fn per_lcore_bandwidth(bytes_per_sec: u64, lcores: usize) -> u64 {
    bytes_per_sec.div_ceil(lcores.max(1) as u64).max(1)
}

/// One backend of a VIP, identified by its address and port (counters and
/// Maglev permutations follow that identity, whatever the list order).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: Ipv4Addr,
    /// Proxy and FullNAT: the port connected to (FullNAT 0: the client's
    /// destination port). DSR and tunnel: must equal the VIP's port.
    pub port: u16,
    /// Relative share of new connections; 0: no new ones.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// Forwarding modes: the next hop's MAC instead of resolving `address` by ARP.
    #[serde(default)]
    pub mac: Option<Mac>,
    #[serde(default)]
    pub state: BackendState,
}

impl Backend {
    /// An `Up` backend with no configured MAC.
    pub fn new(address: Ipv4Addr, port: u16, weight: u32) -> Backend {
        Backend { address, port, weight, mac: None, state: BackendState::Up }
    }

    pub fn endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }

    /// Weight in the Maglev table: the configured weight while `Up`, else 0.
    pub fn effective_weight(&self) -> u32 {
        if self.state.is_up() {
            self.weight
        } else {
            0
        }
    }

    /// The Maglev table's view of this backend (its identity and effective weight).
    pub fn maglev(&self) -> fulcrum_maglev::Backend {
        fulcrum_maglev::Backend::at(IpAddr::V4(self.address), self.port, self.effective_weight())
    }
}

/// A virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub address: Ipv4Addr,
    /// 0 in a forwarding mode: every port of `proto`.
    pub port: u16,
    /// Forwarding modes: which protocol is forwarded. Proxy VIPs are TCP.
    #[serde(default)]
    pub proto: Proto,
    pub mode: Mode,
    /// Required by, and only for, `mode = "tunnel"`.
    #[serde(default)]
    pub tunnel: Option<Tunnel>,
    #[serde(default)]
    pub affinity: Affinity,
    /// Proxy: concurrent connections per lcore; SYNs beyond it are reset and counted.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Proxy: how long one backend gets to answer before the next is tried.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u32,
    /// Proxy: backends tried, in the flow's Maglev preference order, before
    /// the client is reset.
    #[serde(default = "defaults::connect_tries")]
    pub connect_tries: u8,
    /// Proxy: a connection that moved no payload either way for this long is
    /// reset both ways.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u32,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Maglev lookup-table size: a prime, ideally >= 100 x backends.
    #[serde(default = "defaults::table_size")]
    pub table_size: u32,
    /// Proxy: new connections per second (over it: RST, counted).
    #[serde(default)]
    pub new_conn_rate: Option<Rate>,
    /// Proxy: new connections per second from one client address.
    #[serde(default)]
    pub client_rate: Option<Rate>,
    /// Proxy: payload bytes per second relayed, both directions together
    /// (over it relaying pauses and TCP windows close: back pressure, not drops).
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Health check of every backend, run by the control plane.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

impl Vip {
    /// A VIP with every default and no backend.
    pub fn new(address: Ipv4Addr, port: u16, mode: Mode) -> Vip {
        Vip {
            address,
            port,
            proto: Proto::Tcp,
            mode,
            tunnel: None,
            affinity: Affinity::Flow,
            max_connections: defaults::MAX_CONNECTIONS,
            connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            connect_tries: defaults::CONNECT_TRIES,
            idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
            proxy_protocol: ProxyProtocol::Off,
            table_size: defaults::TABLE_SIZE,
            new_conn_rate: None,
            client_rate: None,
            bandwidth_bytes_per_sec: None,
            health: None,
            backends: Vec::new(),
        }
    }

    /// A proxy VIP with these backends (tests, examples).
    pub fn proxy(address: Ipv4Addr, port: u16, backends: Vec<Backend>) -> Vip {
        Vip { backends, ..Vip::new(address, port, Mode::Proxy) }
    }

    pub fn endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }

    /// What identifies the VIP among others: address, port and protocol.
    pub fn key(&self) -> (Ipv4Addr, u16, Proto) {
        (self.address, self.port, self.proto)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.connect_timeout_ms))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.idle_timeout_ms))
    }

    pub fn backend(&self, at: SocketAddrV4) -> Option<&Backend> {
        self.backends.iter().find(|b| b.endpoint() == at)
    }

    pub fn backend_mut(&mut self, at: SocketAddrV4) -> Option<&mut Backend> {
        self.backends.iter_mut().find(|b| b.endpoint() == at)
    }

    /// The Maglev table's view of the backends, in list order.
    pub fn maglev_backends(&self) -> Vec<fulcrum_maglev::Backend> {
        self.backends.iter().map(Backend::maglev).collect()
    }

    /// `address:port/proto`, e.g. `198.18.1.1:80/tcp`.
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.address, self.port, self.proto.name())
    }
}

/// Defaults of a VIP's settings: the one place for every file and constructor.
pub mod defaults {
    /// Concurrent connections, per lcore.
    pub const MAX_CONNECTIONS: u32 = 10_000;
    pub const CONNECT_TIMEOUT_MS: u32 = 1_000;
    pub const CONNECT_TRIES: u8 = 3;
    pub const IDLE_TIMEOUT_MS: u32 = 60_000;
    /// Maglev table size: a prime, >= 100 x backends for good balance.
    pub const TABLE_SIZE: u32 = 65_537;
    pub const WEIGHT: u32 = 1;

    // The same, as functions for `#[serde(default = "...")]`.
    pub fn max_connections() -> u32 {
        MAX_CONNECTIONS
    }
    pub fn connect_timeout_ms() -> u32 {
        CONNECT_TIMEOUT_MS
    }
    pub fn connect_tries() -> u8 {
        CONNECT_TRIES
    }
    pub fn idle_timeout_ms() -> u32 {
        IDLE_TIMEOUT_MS
    }
    pub fn table_size() -> u32 {
        TABLE_SIZE
    }
    pub fn weight() -> u32 {
        WEIGHT
    }
}

/// An IPv4 address with a prefix length, written `198.18.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    /// The prefix's network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len.min(32))) };
        Ipv4Addr::from(u32::from(self.addr) & mask)
    }

    /// Whether `a` is in this prefix.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        Cidr { addr: a, ..*self }.network() == self.network()
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 address with a prefix length (like 198.18.0.2/24)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| (1..=32).contains(l))
            .ok_or_else(|| format!("prefix length {len:?} is not a number from 1 to 32"))?;
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return Err(format!("{addr} cannot be a host address"));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A MAC address written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bytes: Vec<u8> =
            s.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok().filter(|_| b.len() == 2)).collect();
        <[u8; 6]>::try_from(bytes)
            .map(Mac)
            .map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// Serialised as their text form (`"198.18.0.2/24"`, `"02:00:00:00:00:01"`).
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_text!(Cidr, Mac);
