//! Fulcrum's proxy mode: a per-lcore TCP proxy engine.
//!
//! Each worker lcore owns one [`Engine`]. The dataplane hands it Ethernet
//! frames through a smoltcp [`Device`](smoltcp::phy::Device) (over DPDK mbufs
//! in production, an in-memory queue in tests); the engine terminates client
//! connections to its VIPs with smoltcp, picks a backend per connection with
//! weighted Maglev, connects to it from its own address and relays bytes both
//! ways through bounded buffers. See [`engine`] for the design.
//!
//! Configuration: a VIP is a [`fulcrum_model::Vip`] (proxy mode), the one
//! type from the TOML files to the packet path, with its VIP-wide limits; the
//! engine checks it with [`Vip::validate`](fulcrum_model::Vip::validate) and
//! enforces its lcore's share of the limits (see [`VipTables`]).
//!
//! Steering: the dataplane must deliver every segment of a connection to the
//! lcore owning it, without a lookup: client segments by
//! [`owner_of_flow`](fulcrum_model::steer::owner_of_flow) on the 4-tuple,
//! backend segments by [`owner_of_port`](fulcrum_model::steer::owner_of_port)
//! on the destination port (the engine only uses local ports its lcore owns).
//! Every engine keeps its own neighbour cache and resolves its on-link
//! backends, gateway and static routes' routers itself (ARP requests every 20 s), so ARP *replies*
//! must be delivered to every lcore's engine; an ARP *request* for our address
//! or a VIP needs answering once (any one engine, or the dataplane itself).
#![forbid(unsafe_code)]

mod config;
mod counters;
pub mod engine;
mod frame;
mod limits;
mod proxy_protocol;
pub mod syncookie;
mod tables;
#[cfg(test)]
mod testdata;
mod timer;

pub use config::{
    ConfigError, EngineConfig, StaticRoute, SynCookies, MAX_CLIENT_TABLE, MAX_ROUTES,
};
pub use counters::{BackendCounters, BackendSnapshot, EngineCounters, VipCounters, VipSnapshot};
pub use engine::Engine;
pub use proxy_protocol::Header as ProxyHeader;
pub use tables::{Reconfigured, VipTables};

/// The engine relies on the model's steering: it takes only local ports
/// [`owner_of_port`](fulcrum_model::steer::owner_of_port) gives its lcore, and
/// the dataplane steers client segments by
/// [`owner_of_flow`](fulcrum_model::steer::owner_of_flow).
#[cfg(test)]
mod steering {
    use std::net::Ipv4Addr;

    use fulcrum_model::steer::{owner_of_flow, owner_of_port};

    #[test]
    fn ports_interleave_over_lcores() {
        let owners: Vec<usize> = (32768..32776).map(|p| owner_of_port(p, 4)).collect();
        assert_eq!(owners, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(owner_of_port(40000, 1), 0);
    }

    #[test]
    fn flows_spread_and_are_stable() {
        let vip = Ipv4Addr::new(198, 18, 1, 1);
        let mut per = [0u32; 4];
        for p in 0..4000u16 {
            let c = Ipv4Addr::new(10, 0, (p >> 8) as u8, p as u8);
            let o = owner_of_flow(c, 1024 + p, vip, 80, 4);
            assert_eq!(o, owner_of_flow(c, 1024 + p, vip, 80, 4));
            per[o] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
    }
}
