//! Engine configuration and its validation.
//!
//! A VIP is a [`fulcrum_model::Vip`], the one type from the TOML files to the
//! packet path; its own fields are checked by [`Vip::validate`]. What is
//! checked here is what only the engine knows: its lcore, ports, buffers and
//! frame size, and (when VIPs are applied) that a VIP is a proxy VIP, is not
//! the engine's own address and has a client table if it limits clients.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::Duration;

use fulcrum_model::steer::owner_of_port;
use fulcrum_model::{Invalid, Mode, Vip};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::EthernetAddress;

use crate::syncookie::Seed;

/// Most routes an engine holds, the default route included: smoltcp's
/// compile-time `IFACE_MAX_ROUTE_COUNT` (feature `iface-max-route-count-16`
/// in this crate's Cargo.toml).
pub const MAX_ROUTES: usize = smoltcp::config::IFACE_MAX_ROUTE_COUNT;

/// A static route: destinations in `prefix`/`prefix_len` go through `via`,
/// an on-link router. The most specific matching route wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    pub prefix: Ipv4Addr,
    pub prefix_len: u8,
    pub via: Ipv4Addr,
}

/// Largest accepted [`EngineConfig::client_table_capacity`].
pub const MAX_CLIENT_TABLE: usize = 1 << 24;

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
    /// More specific routes than the gateway's default route. With the
    /// gateway, at most [`MAX_ROUTES`] in all; every `via` must be on-link.
    /// Routers are kept resolved by the engine's own ARP, as the gateway.
    pub routes: Vec<StaticRoute>,
    /// Proxy VIPs ([`Mode::Proxy`]), with their VIP-wide limits: the engine
    /// applies its lcore's share ([`fulcrum_model::Rate::per_lcore`]).
    pub vips: Vec<Vip>,
    /// This engine's lcore index, `< lcores`.
    pub lcore: usize,
    /// Number of lcores sharing the VIPs (their limits are split between
    /// them) and the port range below.
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
    ///
    /// Why a short delay (default 1 ms), not Linux's 40 ms minimum
    /// (`TCP_DELACK_MIN`, up to 200 ms in its interactive "pingpong" mode):
    /// - An ACK rides the data that answers: in request/response traffic the
    ///   proxy owes the client an ACK per request and the backend one per
    ///   response, and each rides the relayed reply (the response to the
    ///   client, the next request to the backend) when that comes within the
    ///   delay. Measured (`scripts/bench.sh capacity`, keep-alive, 128
    ///   connections, no kernel, each connection's round trip well under
    ///   1 ms): 1.98 frames received and 2.01 sent per request, so no pure
    ///   ACKs. When the reply takes longer than the delay (under callgrind the
    ///   dataplane runs ~50x slower: ~34 ms a round trip) both delays expire
    ///   and 4 frames are sent per request, two of them pure ACKs.
    /// - A peer with Nagle on that wrote a small segment and holds more behind
    ///   it (write, write, read) waits for our ACK, and nothing will carry it:
    ///   the backend does not answer a partial request. That peer stalls for
    ///   the whole delay. Linux's 40 ms stall is this, and a proxy cannot tell
    ///   such a peer from one waiting for a response, so it must not add
    ///   Linux's stall to every such client: 1 ms bounds it to about a LAN
    ///   round trip, and still lets the ACK ride any reply faster than that.
    /// - What Linux acknowledges at once, smoltcp does too: out-of-order
    ///   segments, segments filling a gap, and a full segment's worth
    ///   (RMSS) of unacknowledged data (bulk transfers are not delayed).
    ///
    /// So pure ACKs appear only when a reply takes longer than the delay: then
    /// one per direction per request, the price of never stalling Nagle peers.
    pub ack_delay: Option<Duration>,
    /// Seed for smoltcp's initial sequence numbers: must differ per engine and
    /// per start in production (ISNs must not be predictable).
    pub random_seed: u64,
    /// Maglev flow-hash seed; every load balancer serving the VIPs must agree.
    pub flow_seed: u64,
    /// Client addresses tracked for [`Vip::client_rate`] (all VIPs
    /// together), allocated once; when full the least recently used entry
    /// (CLOCK approximation) is evicted.
    pub client_table_capacity: usize,
    /// SYN cookies for the proxy VIPs (see the engine's "SYN flood").
    pub syn_cookies: SynCookies,
    /// Half-open connections (client not yet ESTABLISHED) per VIP on this
    /// engine at which a SYN turns flood mode on (`SynCookies::Auto`); >= 1.
    pub syn_cookie_threshold: u32,
    /// Secret the cookie keys derive from; instances sharing it validate
    /// each other's cookies. `None`: random per process
    /// ([`Seed::process_random`]), cookies valid on this instance only.
    pub syn_cookie_seed: Option<Seed>,
    /// A client still in SYN-RECEIVED this long after its SYN was admitted is
    /// aborted both ways (`drop_half_open_timeout`); > 0.
    pub half_open_timeout: Duration,
}

/// When SYNs to a proxy VIP are answered with SYN cookies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SynCookies {
    /// Per VIP, once it has `syn_cookie_threshold` half-open connections
    /// (flood mode), until a quiet second; ACKs carrying a valid cookie are
    /// accepted whatever the mode (another instance sharing the seed may have
    /// sent it).
    #[default]
    Auto,
    /// Every SYN (flood mode on from the start).
    Always,
    /// Never; ACKs for unknown connections are not validated (RST as before).
    Off,
}

impl EngineConfig {
    /// Defaults: lcore 0 of 1, ports 32768..61000, 64 KiB buffers, 1024 spare
    /// connections, 1514-byte frames, 1 ms delayed ACK, 4096 rate-limited clients,
    /// SYN cookies `Auto` from 128 half-open connections, random seed, 5 s
    /// half-open timeout.
    pub fn new(mac: EthernetAddress, addr: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            mac,
            addr,
            prefix_len,
            gateway: None,
            routes: Vec::new(),
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
            syn_cookies: SynCookies::Auto,
            syn_cookie_threshold: 128,
            syn_cookie_seed: None,
            half_open_timeout: Duration::from_secs(5),
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
        let own = fulcrum_model::Cidr { addr: self.addr, prefix_len: self.prefix_len };
        let routers = self.gateway.iter().chain(self.routes.iter().map(|r| &r.via));
        for &via in routers {
            if !own.contains(via) || via == self.addr {
                return Err(ConfigError::RouterNotOnLink(via));
            }
        }
        let count = self.routes.len() + usize::from(self.gateway.is_some());
        if count > MAX_ROUTES {
            return Err(ConfigError::TooManyRoutes(count));
        }
        for r in &self.routes {
            if r.prefix_len > 32 {
                return Err(ConfigError::RoutePrefixLen(r.prefix_len));
            }
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
        if self.syn_cookie_threshold == 0 {
            return Err(ConfigError::SynCookieThreshold);
        }
        if self.half_open_timeout.is_zero() {
            return Err(ConfigError::HalfOpenTimeout);
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
    #[error("router {0} is not on-link (not another address in the engine's network)")]
    RouterNotOnLink(Ipv4Addr),
    #[error("{0} routes (default route included), at most {MAX_ROUTES} (smoltcp's iface-max-route-count)")]
    TooManyRoutes(usize),
    #[error("route prefix length {0} is above 32")]
    RoutePrefixLen(u8),
    #[error("buffer size {0} is not in 1 KiB..=1 GiB")]
    BufferSize(usize),
    #[error("frame size {0} is below 576")]
    Mtu(usize),
    #[error("local port range {0:?} gives this lcore no port")]
    NoLocalPorts(Range<u16>),
    #[error("VIP {0} is the engine's own address")]
    VipIsOwnAddress(Ipv4Addr),
    #[error("VIP {0}:{1} is listed twice")]
    DuplicateVip(Ipv4Addr, u16),
    #[error("VIP {vip} is a {} VIP: the proxy engine takes proxy VIPs only", .mode.name())]
    NotProxy { vip: String, mode: Mode },
    /// A VIP's own field refused by [`Vip::validate`] (`error.field` names it).
    #[error("VIP {vip}: {error}")]
    Invalid { vip: String, error: Invalid },
    #[error("VIP tables were built for {tables} lcores, this engine is one of {engine}")]
    Lcores { tables: usize, engine: usize },
    #[error(
        "client table capacity {0} is above {MAX_CLIENT_TABLE} (or 0 while a VIP limits clients)"
    )]
    ClientTableCapacity(usize),
    #[error("syn_cookie_threshold must be at least 1")]
    SynCookieThreshold,
    #[error("half_open_timeout must be above zero")]
    HalfOpenTimeout,
    #[error("VIP {addr}:{port}: {source}")]
    Maglev {
        addr: Ipv4Addr,
        port: u16,
        source: fulcrum_maglev::MaglevError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> EngineConfig {
        EngineConfig::new(EthernetAddress([2, 0, 0, 0, 0, 1]), Ipv4Addr::new(198, 18, 0, 2), 24)
    }

    fn route(third: u8, via: [u8; 4]) -> StaticRoute {
        StaticRoute { prefix: Ipv4Addr::new(10, 0, third, 0), prefix_len: 24, via: via.into() }
    }

    #[test]
    fn routes_fit_smoltcps_table() {
        assert_eq!(MAX_ROUTES, 16, "proxy/Cargo.toml's iface-max-route-count feature");
        let mut c = base();
        c.gateway = Some(Ipv4Addr::new(198, 18, 0, 254));
        c.routes = (0..15).map(|i| route(i, [198, 18, 0, 253])).collect();
        c.validate().unwrap();
        crate::Engine::new(c.clone()).expect("16 routes are installed");
        c.routes.push(route(15, [198, 18, 0, 253]));
        assert!(matches!(c.validate(), Err(ConfigError::TooManyRoutes(17))));
    }

    #[test]
    fn syn_cookie_settings_are_checked() {
        let mut c = base();
        c.syn_cookie_threshold = 0;
        assert!(matches!(c.validate(), Err(ConfigError::SynCookieThreshold)));
        c.syn_cookie_threshold = 1;
        c.half_open_timeout = Duration::ZERO;
        assert!(matches!(c.validate(), Err(ConfigError::HalfOpenTimeout)));
        c.half_open_timeout = Duration::from_millis(1);
        c.validate().unwrap();
    }

    #[test]
    fn routers_must_be_on_link() {
        let mut c = base();
        c.gateway = Some(Ipv4Addr::new(198, 19, 0, 1));
        assert!(matches!(c.validate(), Err(ConfigError::RouterNotOnLink(_))));
        c.gateway = Some(Ipv4Addr::new(198, 18, 0, 2));
        assert!(matches!(c.validate(), Err(ConfigError::RouterNotOnLink(_))), "our own address");
        c.gateway = None;
        c.routes = vec![route(0, [10, 1, 0, 1])];
        assert!(matches!(c.validate(), Err(ConfigError::RouterNotOnLink(_))));
    }
}
