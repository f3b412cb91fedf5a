//! Prepared VIP configurations: validated, with their Maglev tables built.
//!
//! Building a 65537-slot Maglev table allocates and takes about 1-2 ms per
//! VIP, too long for an lcore between two polls when there are many VIPs. So
//! the work is split:
//!
//! 1. The dataplane's control thread, on a new configuration generation,
//!    calls [`VipTables::build`] once (validation plus every table) and
//!    sends the resulting `Arc` to every lcore (a channel or ring; the tables
//!    are immutable, so all lcores share one copy).
//! 2. Each lcore, between two polls, calls
//!    [`Engine::reconfigure_with`](crate::Engine::reconfigure_with): engine-
//!    specific checks, then per VIP a pointer move of its table (an `Arc`
//!    clone) and a merge of the VIP and backend lists (small allocations
//!    proportional to the number of VIPs and backends, no table work).
//!
//! [`Engine::reconfigure`](crate::Engine::reconfigure) does both steps in
//! line; acceptable on an lcore for a handful of VIPs (one table of 65537
//! entries is ~1-2 ms, during which that lcore does not poll).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_maglev::{Backend, MaglevTable};

use crate::config::{ConfigError, VipConfig};

/// VIPs with their Maglev tables, ready to be applied to any number of engines.
#[derive(Debug, Clone)]
pub struct VipTables {
    pub(crate) vips: Vec<PreparedVip>,
}

#[derive(Debug, Clone)]
pub(crate) struct PreparedVip {
    pub(crate) cfg: VipConfig,
    /// Built over `cfg.backends` in list order (index i = `cfg.backends[i]`),
    /// with weight 0 for backends not `Up`.
    pub(crate) table: Arc<MaglevTable>,
}

impl VipTables {
    /// Validates `vips` (duplicates, limits, Maglev constraints) and builds a
    /// Maglev table per VIP. Allocates and is CPU-heavy: run it off the
    /// lcores. Checks that depend on one engine (a VIP must not be the
    /// engine's own address; a per-client limit needs a client table) are
    /// made when the tables are applied.
    pub fn build(vips: Vec<VipConfig>) -> Result<Arc<Self>, ConfigError> {
        let mut seen = HashSet::new();
        for vip in &vips {
            vip.validate()?;
            if !seen.insert((vip.addr, vip.port)) {
                return Err(ConfigError::DuplicateVip(vip.addr, vip.port));
            }
        }
        let vips = vips
            .into_iter()
            .map(|cfg| {
                let keys: Vec<Backend> = cfg
                    .backends
                    .iter()
                    .map(|b| Backend::at(IpAddr::V4(b.addr), b.port, b.table_weight()))
                    .collect();
                let table = MaglevTable::build(&keys, cfg.table_size).map_err(|source| {
                    ConfigError::Maglev {
                        addr: cfg.addr,
                        port: cfg.port,
                        source,
                    }
                })?;
                Ok(PreparedVip {
                    cfg,
                    table: Arc::new(table),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Arc::new(Self { vips }))
    }

    /// The VIP configurations, in the order given.
    pub fn vips(&self) -> impl Iterator<Item = &VipConfig> {
        self.vips.iter().map(|p| &p.cfg)
    }
}

/// What [`Engine::reconfigure`](crate::Engine::reconfigure) changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// VIPs new to this engine (or back before their drain finished).
    pub vips_added: usize,
    /// VIPs no longer configured: admission stopped, connections draining.
    pub vips_removed: usize,
    /// Backends new to their VIP (counting those of added VIPs).
    pub backends_added: usize,
    /// Backends no longer listed by their (still configured) VIP.
    pub backends_removed: usize,
    /// Connections left on removed VIPs or removed backends; they run to
    /// their end undisturbed (see the counters of `snapshot` for progress).
    pub draining_connections: u64,
}
