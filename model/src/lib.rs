//! # fulcrum-model: the one configuration model
//!
//! A VIP has one type, [`Vip`], from the TOML files (the dataplane's and the
//! control plane's) through the control socket, the state file and the
//! shared-memory generation down to the proxy engine and the forwarder. Each
//! enum is defined here once, each default once ([`defaults`]), each rule once:
//!
//! - [`Vip::validate`] is the only check of a VIP's own fields, with
//!   field-precise errors ([`Invalid`]); [`validate_set`] checks a set of VIPs
//!   (duplicates, capacity); [`Vip::validate_for`] checks what depends on the
//!   dataplane that will run it ([`Facts`], published by the dataplane so that
//!   the control plane refuses up front what the dataplane would refuse).
//! - [`Backend::effective_weight`]: a backend that is not [`BackendState::Up`]
//!   has weight 0 in the Maglev table (its established flows continue).
//! - [`steer`]: which lcore owns a flow or a local port.
//! - [`Rate::per_lcore`] / [`per_lcore_bandwidth`]: how a limit is split
//!   between lcores, which enforce it without sharing state.
//!
//! Invariants: every type here is plain data (no I/O, no allocation beyond its
//! own fields); every value that [`Generation::validate`] accepts is installed
//! by the dataplane unless [`Vip::validate_for`] refuses it for that dataplane.
#![forbid(unsafe_code)]

pub mod health;
pub mod steer;
mod generation;
mod validate;
mod vip;

pub use generation::{DataplaneReport, Facts, Generation, Published, TableDigest, VipRefusal};
pub use validate::{validate_set, Invalid};
pub use vip::{
    defaults, per_lcore_bandwidth, Affinity, Backend, BackendState, Cidr, Encap, Mac, Mode, Proto, ProxyProtocol,
    Rate, Tunnel, Vip,
};

/// VIP ids are `0..MAX_VIPS` (the shared segment's per-VIP counter space).
pub const MAX_VIPS: usize = 256;
/// Backend slots are `0..MAX_BACKENDS`, over all VIPs together.
pub const MAX_BACKENDS: usize = 4096;
/// Largest Maglev lookup-table size.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;
/// Largest `connect_tries`.
pub const MAX_CONNECT_TRIES: u8 = 16;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Largest `max_connections` (per lcore).
pub const MAX_CONNECTIONS: u32 = 10_000_000;
/// Largest rate or burst of a [`Rate`].
pub const MAX_RATE: u32 = 10_000_000;
/// Largest `bandwidth_bytes_per_sec`: 1 TB/s.
pub const MAX_BANDWIDTH: u64 = 1_000_000_000_000;
/// Katran's GUE destination port, used by `encap = "gue"`.
pub const GUE_PORT: u16 = 6080;
