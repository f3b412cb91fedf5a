//! Prepared VIP configurations: validated, with their Maglev tables built.
//!
//! Building a 65537-slot Maglev table allocates and takes about 1-2 ms per
//! VIP, too long for an lcore between two polls when there are many VIPs. So
//! the work is split:
//!
//! 1. The dataplane's control thread, on a new configuration generation,
//!    calls [`VipTables::build`] once (validation, each lcore's share of the
//!    limits, every table) and sends the resulting `Arc` to every lcore (a
//!    channel or ring; the tables are immutable, so all lcores share one copy).
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
use std::sync::Arc;

use fulcrum_maglev::MaglevTable;
use fulcrum_model::{per_lcore_bandwidth, Mode, Rate, Vip};

use crate::config::ConfigError;

/// VIPs with their Maglev tables and this many lcores' share of their
/// limits, ready to be applied to any number of engines (of that many lcores).
#[derive(Debug, Clone)]
pub struct VipTables {
    pub(crate) vips: Vec<PreparedVip>,
    /// The lcore count the limits were split for.
    pub(crate) lcores: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct PreparedVip {
    /// As given: VIP-wide limits (the engine enforces `limits`).
    pub(crate) cfg: Vip,
    pub(crate) limits: LcoreLimits,
    /// Built over `cfg.backends` in list order (index i = `cfg.backends[i]`),
    /// with their effective weights ([`Vip::maglev_backends`]: 0 unless `Up`).
    pub(crate) table: Arc<MaglevTable>,
}

/// One lcore's share of a VIP's limits ([`Rate::per_lcore`],
/// [`per_lcore_bandwidth`]): lcores enforce limits without sharing state, so
/// each engine enforces its share. Client connections are spread over lcores
/// by their 4-tuple, so the shares add up to the VIP's limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LcoreLimits {
    /// New connections per second on this engine; SYNs beyond it are reset
    /// (`drop_rate`).
    pub(crate) new_conn_rate: Option<Rate>,
    /// New connections per second per client address on this engine (table
    /// of [`EngineConfig::client_table_capacity`](crate::EngineConfig::client_table_capacity)
    /// clients); SYNs beyond it are reset (`drop_client_rate`).
    pub(crate) client_rate: Option<Rate>,
    /// Payload bytes per second relayed by this engine for the VIP, both
    /// directions summed. Beyond it relaying pauses (TCP windows close: back
    /// pressure, nothing is dropped). Burst: 50 ms worth (at least 1500 bytes).
    pub(crate) bandwidth: Option<u64>,
}

impl LcoreLimits {
    fn of(vip: &Vip, lcores: usize) -> Self {
        Self {
            new_conn_rate: vip.new_conn_rate.map(|r| r.per_lcore(lcores)),
            client_rate: vip.client_rate.map(|r| r.per_lcore(lcores)),
            bandwidth: vip
                .bandwidth_bytes_per_sec
                .map(|b| per_lcore_bandwidth(b, lcores)),
        }
    }
}

impl VipTables {
    /// Validates `vips` (proxy VIPs only, each by [`Vip::validate`], no VIP
    /// twice), splits their limits between `lcores` lcores and builds a
    /// Maglev table per VIP. Allocates and is CPU-heavy: run it off the
    /// lcores. Checks that depend on one engine (a VIP must not be the
    /// engine's own address; a per-client limit needs a client table; the
    /// engine must be one of `lcores`) are made when the tables are applied.
    pub fn build(vips: Vec<Vip>, lcores: usize) -> Result<Arc<Self>, ConfigError> {
        if lcores == 0 {
            return Err(ConfigError::Lcore { lcore: 0, lcores });
        }
        let mut seen = HashSet::new();
        for vip in &vips {
            if vip.mode != Mode::Proxy {
                return Err(ConfigError::NotProxy {
                    vip: vip.name(),
                    mode: vip.mode,
                });
            }
            vip.validate().map_err(|error| ConfigError::Invalid {
                vip: vip.name(),
                error,
            })?;
            if !seen.insert((vip.address, vip.port)) {
                return Err(ConfigError::DuplicateVip(vip.address, vip.port));
            }
        }
        let vips =
            vips.into_iter()
                .map(|cfg| {
                    let table = MaglevTable::build(&cfg.maglev_backends(), cfg.table_size)
                        .map_err(|source| ConfigError::Maglev {
                            addr: cfg.address,
                            port: cfg.port,
                            source,
                        })?;
                    Ok(PreparedVip {
                        limits: LcoreLimits::of(&cfg, lcores),
                        cfg,
                        table: Arc::new(table),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Arc::new(Self { vips, lcores }))
    }

    /// The VIP configurations, in the order given (with their VIP-wide limits).
    pub fn vips(&self) -> impl Iterator<Item = &Vip> {
        self.vips.iter().map(|p| &p.cfg)
    }

    /// Each VIP with the Maglev table the engines install for it (shared by
    /// pointer): index i of the table is `vip.backends[i]`.
    pub fn tables(&self) -> impl Iterator<Item = (&Vip, &MaglevTable)> {
        self.vips.iter().map(|p| (&p.cfg, &*p.table))
    }

    /// The lcore count the VIPs' limits were split for.
    pub fn lcores(&self) -> usize {
        self.lcores
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use fulcrum_model::{Backend, BackendState};

    use super::*;

    fn vip() -> Vip {
        let b = |i| Backend::new(Ipv4Addr::new(198, 18, 0, i), 8080, 1);
        Vip::proxy(Ipv4Addr::new(198, 18, 1, 1), 80, vec![b(21), b(22)])
    }

    #[test]
    fn limits_are_split_between_lcores() {
        let mut v = vip();
        v.new_conn_rate = Some(Rate::new(1000, 7));
        v.client_rate = Some(Rate::new(10, 1));
        v.bandwidth_bytes_per_sec = Some(1_000_001);
        let t = VipTables::build(vec![v.clone()], 4).unwrap();
        let l = t.vips[0].limits;
        assert_eq!(l.new_conn_rate, Some(Rate::new(250, 2)));
        assert_eq!(l.client_rate, Some(Rate::new(3, 1)));
        assert_eq!(l.bandwidth, Some(250_001));
        assert_eq!(t.vips().next(), Some(&v), "the VIP is kept as given");
        let t = VipTables::build(vec![v], 1).unwrap();
        assert_eq!(t.vips[0].limits.new_conn_rate, Some(Rate::new(1000, 7)));
        assert!(matches!(
            VipTables::build(vec![vip()], 0),
            Err(ConfigError::Lcore { lcores: 0, .. })
        ));
    }

    #[test]
    fn table_has_effective_weights() {
        let mut v = vip();
        v.backends[0].state = BackendState::Drain;
        let t = VipTables::build(vec![v], 1).unwrap();
        let counts = t.vips[0].table.slot_counts();
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1], t.vips[0].cfg.table_size);
    }
}
