//! Reconfiguration on the lcore, between two polls: engine-specific checks,
//! then VIPs and backends merged by `(address, port)` into their stable
//! slots (see the engine's "Reconfiguration" and [`VipTables`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use fulcrum_model::Vip;
use smoltcp::time::Instant;

use super::vip::{vip_mut, VipState};
use super::Engine;
use crate::config::ConfigError;
use crate::tables::{Reconfigured, VipTables};

impl Engine {
    /// Replaces the VIP configuration (the full list: VIPs left out are
    /// removed). Validates and builds the Maglev tables in line (allocates,
    /// ~1-2 ms per 65537-slot table): call it on the lcore between two polls,
    /// only when the configuration changed. To keep that work off the lcore,
    /// build [`VipTables`] on a control thread and use
    /// [`reconfigure_with`](Self::reconfigure_with). On error nothing changes.
    pub fn reconfigure(&mut self, vips: Vec<Vip>) -> Result<Reconfigured, ConfigError> {
        let tables = VipTables::build(vips, self.lcores)?;
        self.reconfigure_with(&tables)
    }

    /// Applies prepared tables (see [`VipTables`], built for this engine's
    /// lcore count: their limits are split for it): no table is built here,
    /// each VIP's table is shared by pointer. On error nothing changes.
    ///
    /// VIPs and backends are matched by `(addr, port)` with what the engine
    /// has, so counters and connections follow them whatever the list order.
    /// - A new VIP admits SYNs at once.
    /// - A removed VIP stops admitting at once (its SYNs are answered with
    ///   RST); its connections drain: they run to their end untouched, and the
    ///   VIP's counters stay visible (in [`snapshot`](Self::snapshot), marked
    ///   `removed`) until the last one is released.
    /// - Changed VIP settings (limits, timeouts, tries, PROXY protocol,
    ///   affinity) apply to connections admitted from now on; rate and
    ///   bandwidth buckets keep their tokens (clamped to a new burst).
    /// - New connections use the new Maglev table, over backends `Up` with
    ///   weight > 0. Existing connections keep their backend, whatever
    ///   happened to it (removed, weight 0, `Drain`, `Down`): they end on
    ///   their own (or by the backend's RST / idle timeout). A removed
    ///   backend's counters stay until its last connection is released.
    pub fn reconfigure_with(&mut self, tables: &VipTables) -> Result<Reconfigured, ConfigError> {
        if tables.lcores != self.lcores {
            return Err(ConfigError::Lcores {
                tables: tables.lcores,
                engine: self.lcores,
            });
        }
        for p in &tables.vips {
            if p.cfg.address == self.addr {
                return Err(ConfigError::VipIsOwnAddress(p.cfg.address));
            }
            if p.limits.client_rate.is_some() && self.client_table_capacity == 0 {
                return Err(ConfigError::ClientTableCapacity(0));
            }
        }
        let mut r = Reconfigured::default();
        let existing: HashMap<(Ipv4Addr, u16), usize> = self
            .vips
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| ((v.cfg.address, v.cfg.port), i)))
            .collect();
        let mut listed = vec![false; self.vips.len()];
        self.vip_order.clear();
        for p in &tables.vips {
            let slot = match existing.get(&(p.cfg.address, p.cfg.port)) {
                Some(&slot) => {
                    vip_mut(&mut self.vips, slot).update(p, &mut r);
                    slot
                }
                None => {
                    r.vips_added += 1;
                    self.next_vip_uid = self.next_vip_uid.wrapping_add(1);
                    let v = VipState::new(p, self.next_vip_uid, &mut r);
                    match self.free_vips.pop() {
                        Some(slot) => {
                            self.vips[slot] = Some(v);
                            slot
                        }
                        None => {
                            self.vips.push(Some(v));
                            listed.push(false);
                            self.vips.len() - 1
                        }
                    }
                }
            };
            listed[slot] = true;
            self.vip_order.push(slot);
        }
        for (slot, &listed) in listed.iter().enumerate() {
            let Some(v) = self.vips[slot].as_mut() else {
                continue;
            };
            if listed {
                continue;
            }
            if v.configured {
                v.configured = false;
                r.vips_removed += 1;
            }
            if v.counters.active == 0 {
                self.vips[slot] = None;
                self.free_vips.push(slot);
            }
        }
        self.vip_by_endpoint = self
            .vip_order
            .iter()
            .map(|&slot| {
                let v = self.vips[slot].as_ref().expect("configured VIP");
                ((v.cfg.address, v.cfg.port), slot)
            })
            .collect();
        r.draining_connections = self.vips.iter().flatten().map(VipState::draining).sum();

        // Backends of draining VIPs and removed backends still carry traffic:
        // keep resolving them.
        let mut neighbors: Vec<Ipv4Addr> = self
            .vips
            .iter()
            .flatten()
            .flat_map(|v| v.backends.iter().flatten().map(|b| b.cfg.address))
            .filter(|a| self.network.contains_addr(a))
            .chain(self.routers.iter().copied())
            .collect();
        neighbors.sort_unstable();
        neighbors.dedup();
        if neighbors != self.neighbors {
            self.neighbor_heard = vec![false; neighbors.len()];
            self.neighbors = neighbors;
            // Resolve new backends on the next poll.
            self.next_neighbor_refresh = Instant::ZERO;
        }
        Ok(r)
    }
}
