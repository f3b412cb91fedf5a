//! Fulcrum's proxy mode: a per-lcore TCP proxy engine.
//!
//! Each worker lcore owns one [`Engine`]. The dataplane hands it Ethernet
//! frames through a smoltcp [`Device`](smoltcp::phy::Device) (over DPDK mbufs
//! in production, an in-memory queue in tests); the engine terminates client
//! connections to its VIPs with smoltcp, picks a backend per connection with
//! weighted Maglev, connects to it from its own address and relays bytes both
//! ways through bounded buffers. See [`engine`] for the design.
//!
//! Steering: the dataplane must deliver every segment of a connection to the
//! lcore owning it, without a lookup: client segments by
//! [`owner_of_flow`] on the 4-tuple, backend segments by [`owner_of_port`] on
//! the destination port (the engine only uses local ports its lcore owns).
//! Every engine keeps its own neighbour cache and resolves its on-link
//! backends and gateway itself (ARP requests every 20 s), so ARP *replies*
//! must be delivered to every lcore's engine; an ARP *request* for our address
//! or a VIP needs answering once (any one engine, or the dataplane itself).
#![forbid(unsafe_code)]

mod config;
mod counters;
pub mod engine;
mod limits;
mod proxy_protocol;
mod steer;
mod tables;
mod timer;

pub use config::{
    Affinity, BackendConfig, BackendState, ConfigError, EngineConfig, RateLimit, VipConfig,
    MAX_BANDWIDTH, MAX_CLIENT_TABLE, MAX_CONN_RATE,
};
pub use counters::{BackendCounters, BackendSnapshot, EngineCounters, VipCounters, VipSnapshot};
pub use engine::Engine;
pub use proxy_protocol::{Header as ProxyHeader, ProxyProtocol};
pub use steer::{owner_of_flow, owner_of_port};
pub use tables::{Reconfigured, VipTables};
