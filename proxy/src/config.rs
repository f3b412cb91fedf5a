//! Engine configuration and its validation.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::EthernetAddress;

use crate::proxy_protocol::ProxyProtocol;
use crate::steer::owner_of_port;

/// Which client identity picks the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Client address and port: every connection is placed independently.
    #[default]
    ClientAddrPort,
    /// Client address alone: all of a client's connections go to the same
    /// backend (while it is up), for servers keeping per-client state.
    ClientAddr,
}

/// Administrative/health state of a backend.
///
/// Only `Up` backends with weight > 0 are in the Maglev table, so only they
/// receive new connections. Established connections of a `Drain` or `Down`
/// backend are kept until they end: health checks can be wrong, and a backend
/// that really died resets or times them out anyway (HAProxy's default, without
/// `on-marked-down shutdown-sessions`). `Drain` and `Down` therefore differ
/// only in what they report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum BackendState {
    #[default]
    Up,
    /// Taken out of rotation on purpose; existing connections finish.
    Drain,
    /// Failed its health checks; existing connections are kept too.
    Down,
}

/// One backend of a VIP, identified by `(addr, port)` (counters follow that
/// identity across reconfigurations, whatever the list order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Relative share of new connections; 0 drains the backend.
    pub weight: u32,
    /// Only `Up` backends get new connections.
    pub state: BackendState,
}

impl BackendConfig {
    /// An `Up` backend.
    pub fn new(addr: Ipv4Addr, port: u16, weight: u32) -> Self {
        Self {
            addr,
            port,
            weight,
            state: BackendState::Up,
        }
    }

    /// Weight in the Maglev table: 0 unless `Up`.
    pub(crate) fn table_weight(&self) -> u32 {
        if self.state == BackendState::Up {
            self.weight
        } else {
            0
        }
    }
}

/// A token-bucket rate: `per_sec` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

impl RateLimit {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self { per_sec, burst }
    }
}

/// Largest accepted connection rate or burst (per engine).
pub const MAX_CONN_RATE: u32 = 10_000_000;
/// Largest accepted bandwidth limit (bytes per second, per engine): 1 TB/s.
pub const MAX_BANDWIDTH: u64 = 1_000_000_000_000;
/// Largest accepted [`EngineConfig::client_table_capacity`].
pub const MAX_CLIENT_TABLE: usize = 1 << 24;

/// One virtual service: `addr:port` terminated by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub backends: Vec<BackendConfig>,
    /// Maglev table size; must be prime (default [`fulcrum_maglev::DEFAULT_TABLE_SIZE`]).
    pub table_size: u32,
    pub affinity: Affinity,
    /// Concurrent connections on this lcore; SYNs beyond it are reset.
    pub max_connections: u32,
    /// How long one backend gets to answer the SYN before the next is tried.
    pub connect_timeout: Duration,
    /// Backends tried per client connection (at least 1).
    pub max_connect_tries: u8,
    /// A connection that moved no payload either way for this long is reset
    /// both ways (also when stalled by a reader that stopped reading).
    pub idle_timeout: Duration,
    pub proxy_protocol: ProxyProtocol,
    /// New connections per second on this engine (token bucket, refilled
    /// from the poll clock); SYNs beyond it are reset (`drop_rate`).
    /// The dataplane passes the VIP's rate divided by the number of lcores.
    pub new_conn_rate: Option<RateLimit>,
    /// New connections per second per client address on this engine (table
    /// of [`EngineConfig::client_table_capacity`] clients); SYNs beyond it
    /// are reset (`drop_client_rate`).
    pub client_rate: Option<RateLimit>,
    /// Payload bytes per second relayed by this engine for the VIP, both
    /// directions summed. Beyond it relaying pauses (TCP windows close: back
    /// pressure, nothing is dropped). Burst: 50 ms worth (at least 1500 bytes).
    pub bandwidth: Option<u64>,
}

impl VipConfig {
    /// A VIP with the defaults: Maglev size 65537, per-connection placement,
    /// 10 000 connections, 1 s connect timeout, 3 tries, 60 s idle, no PROXY
    /// header, no rate or bandwidth limit.
    pub fn new(addr: Ipv4Addr, port: u16, backends: Vec<BackendConfig>) -> Self {
        Self {
            addr,
            port,
            backends,
            table_size: fulcrum_maglev::DEFAULT_TABLE_SIZE,
            affinity: Affinity::ClientAddrPort,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(1),
            max_connect_tries: 3,
            idle_timeout: Duration::from_secs(60),
            proxy_protocol: ProxyProtocol::Off,
            new_conn_rate: None,
            client_rate: None,
            bandwidth: None,
        }
    }

    /// Checks what can be checked without the engine (see also
    /// [`VipTables::build`](crate::VipTables::build)).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let limit = |what: &'static str, value: u64| ConfigError::Limit {
            addr: self.addr,
            port: self.port,
            what,
            value,
        };
        if self.port == 0 {
            return Err(ConfigError::DuplicateVip(self.addr, self.port));
        }
        if self.max_connect_tries == 0 {
            return Err(ConfigError::NoTries(self.addr, self.port));
        }
        for (name, rate) in [
            ("new_conn_rate", self.new_conn_rate),
            ("client_rate", self.client_rate),
        ] {
            if let Some(r) = rate {
                if r.per_sec == 0 || r.per_sec > MAX_CONN_RATE {
                    return Err(limit(name, u64::from(r.per_sec)));
                }
                if r.burst == 0 || r.burst > MAX_CONN_RATE {
                    return Err(limit(name, u64::from(r.burst)));
                }
            }
        }
        if let Some(b) = self.bandwidth {
            if b == 0 || b > MAX_BANDWIDTH {
                return Err(limit("bandwidth", b));
            }
        }
        Ok(())
    }
}

/// Everything one lcore's [`Engine`](crate::Engine) needs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Our MAC: frames to other unicast MACs are ignored.
    pub mac: EthernetAddress,
    /// Our own address; backend connections come from it.
    pub addr: Ipv4Addr,
    /// Prefix length of `addr`'s on-link network.
    pub prefix_len: u8,
    /// Router for destinations off our network (remote clients, routed backends).
    pub gateway: Option<Ipv4Addr>,
    pub vips: Vec<VipConfig>,
    /// This engine's lcore index, `< lcores`.
    pub lcore: usize,
    /// Number of lcores sharing the VIPs (and the port range below).
    pub lcores: usize,
    /// Dataplane-wide range of local ports for backend connections. This
    /// engine uses only the ports [`owner_of_port`] gives to `lcore`, so the
    /// dataplane steers backend replies by destination port alone.
    pub local_ports: Range<u16>,
    /// Bytes per socket buffer (each socket has one receive and one send
    /// buffer; a connection has four, two per direction).
    pub buffer_size: usize,
    /// Released connections kept (with their buffers) for reuse; beyond this
    /// they are freed, so memory follows the peak only up to this bound.
    pub max_spare_connections: usize,
    /// Largest Ethernet frame, header included (1514 for a 1500-byte MTU).
    pub mtu: usize,
    /// What the NIC verifies/computes (defaults: all in software).
    pub checksum: ChecksumCapabilities,
    /// Delayed-ACK time on our sockets; `None` acknowledges at once.
    pub ack_delay: Option<Duration>,
    /// Seed for smoltcp's initial sequence numbers: must differ per engine and
    /// per start in production (ISNs must not be predictable).
    pub random_seed: u64,
    /// Maglev flow-hash seed; every load balancer serving the VIPs must agree.
    pub flow_seed: u64,
    /// Client addresses tracked for [`VipConfig::client_rate`] (all VIPs
    /// together), allocated once; when full the least recently used entry
    /// (CLOCK approximation) is evicted.
    pub client_table_capacity: usize,
}

impl EngineConfig {
    /// Defaults: lcore 0 of 1, ports 32768..61000, 64 KiB buffers, 1024 spare
    /// connections, 1514-byte frames, 1 ms delayed ACK, 4096 rate-limited clients.
    pub fn new(mac: EthernetAddress, addr: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            mac,
            addr,
            prefix_len,
            gateway: None,
            vips: Vec::new(),
            lcore: 0,
            lcores: 1,
            local_ports: 32768..61000,
            buffer_size: 64 * 1024,
            max_spare_connections: 1024,
            mtu: 1514,
            checksum: ChecksumCapabilities::default(),
            ack_delay: Some(Duration::from_millis(1)),
            random_seed: 0x5eed,
            flow_seed: fulcrum_maglev::DEFAULT_FLOW_SEED,
            client_table_capacity: 4096,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.lcores == 0 || self.lcore >= self.lcores {
            return Err(ConfigError::Lcore {
                lcore: self.lcore,
                lcores: self.lcores,
            });
        }
        if self.prefix_len == 0 || self.prefix_len > 32 {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        if self.buffer_size < 1024 || self.buffer_size > 1 << 30 {
            return Err(ConfigError::BufferSize(self.buffer_size));
        }
        if self.mtu < 576 {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.local_ports.start == 0
            || !self
                .local_ports
                .clone()
                .any(|p| owner_of_port(p, self.lcores) == self.lcore)
        {
            return Err(ConfigError::NoLocalPorts(self.local_ports.clone()));
        }
        if self.client_table_capacity > MAX_CLIENT_TABLE {
            return Err(ConfigError::ClientTableCapacity(self.client_table_capacity));
        }
        // VIPs are checked by `VipTables::build` and, for what depends on the
        // engine (its own address, its client table), when applied.
        Ok(())
    }
}

/// Why [`Engine::new`](crate::Engine::new),
/// [`Engine::reconfigure`](crate::Engine::reconfigure) or
/// [`VipTables::build`](crate::VipTables::build) refused a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("lcore {lcore} is not below the lcore count {lcores}")]
    Lcore { lcore: usize, lcores: usize },
    #[error("prefix length {0} is not in 1..=32")]
    PrefixLen(u8),
    #[error("buffer size {0} is not in 1 KiB..=1 GiB")]
    BufferSize(usize),
    #[error("frame size {0} is below 576")]
    Mtu(usize),
    #[error("local port range {0:?} gives this lcore no port")]
    NoLocalPorts(Range<u16>),
    #[error("VIP {0} is the engine's own address")]
    VipIsOwnAddress(Ipv4Addr),
    #[error("VIP {0}:{1} has port 0 or is listed twice")]
    DuplicateVip(Ipv4Addr, u16),
    #[error("VIP {0}:{1} allows no connect tries")]
    NoTries(Ipv4Addr, u16),
    #[error("VIP {addr}:{port}: {what} value {value} is zero or too large")]
    Limit {
        addr: Ipv4Addr,
        port: u16,
        what: &'static str,
        value: u64,
    },
    #[error(
        "client table capacity {0} is above {MAX_CLIENT_TABLE} (or 0 while a VIP limits clients)"
    )]
    ClientTableCapacity(usize),
    #[error("VIP {addr}:{port}: {source}")]
    Maglev {
        addr: Ipv4Addr,
        port: u16,
        source: fulcrum_maglev::MaglevError,
    },
}
