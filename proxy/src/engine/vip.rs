//! VIPs and their backends on one engine: slots whose index never changes
//! while a connection refers to them, matched by `(address, port)` on every
//! reconfiguration so that counters follow a VIP or backend whatever the list
//! order. A removed VIP or backend keeps its slot (and counters) until its
//! last connection is released.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use fulcrum_maglev::MaglevTable;
use fulcrum_model::{Backend, Vip};
use smoltcp::time::Instant;

use crate::counters::{BackendCounters, BackendSnapshot, VipCounters, VipSnapshot};
use crate::limits::{bandwidth_burst, Bucket};
use crate::tables::{LcoreLimits, PreparedVip, Reconfigured};

/// A backend of a VIP on this engine. Its slot index is stable for its
/// lifetime (connections refer to it), whatever the configured list order.
pub(super) struct BackendSlot {
    pub(super) cfg: Backend,
    pub(super) counters: BackendCounters,
    /// Listed by the VIP's current configuration. A removed backend's slot
    /// stays (counters included) until no connection refers to it.
    pub(super) configured: bool,
    /// Connections whose backend side is this backend (connecting or open).
    pub(super) refs: u32,
}

/// A VIP on this engine. Its slot index is stable for its lifetime.
pub(super) struct VipState {
    /// As configured: VIP-wide limits (the engine enforces `limits`).
    pub(super) cfg: Vip,
    /// This lcore's share of the VIP's limits.
    pub(super) limits: LcoreLimits,
    /// Unique per VIP instance (keys the client table, so a slot reused by
    /// another VIP does not inherit client state).
    pub(super) uid: u32,
    pub(super) table: Arc<MaglevTable>,
    /// Maglev index (position in `cfg.backends`) -> slot in `backends`.
    pub(super) table_slots: Vec<usize>,
    pub(super) backends: Vec<Option<BackendSlot>>,
    pub(super) free_backends: Vec<usize>,
    /// In the current configuration. A removed VIP admits nothing; its slot
    /// stays until its last connection is released.
    pub(super) configured: bool,
    pub(super) counters: VipCounters,
    /// New-connection bucket (`limits.new_conn_rate`).
    pub(super) conn_bucket: Bucket,
    /// Byte bucket (`limits.bandwidth`), both directions.
    pub(super) bw_bucket: Bucket,
    /// Flood mode (SYNs answered with cookies) on since then.
    pub(super) flood_since: Option<Instant>,
    /// SYNs since `window_start` (the flood-mode window, see `Engine::tick`).
    pub(super) window_syns: u64,
    pub(super) window_start: Instant,
}

impl VipState {
    pub(super) fn new(p: &PreparedVip, uid: u32, r: &mut Reconfigured) -> Self {
        let mut v = Self {
            cfg: p.cfg.clone(),
            limits: p.limits,
            uid,
            table: p.table.clone(),
            table_slots: Vec::new(),
            backends: Vec::new(),
            free_backends: Vec::new(),
            configured: true,
            counters: VipCounters::default(),
            conn_bucket: Bucket::full(0, Instant::ZERO),
            bw_bucket: Bucket::full(0, Instant::ZERO),
            flood_since: None,
            window_syns: 0,
            window_start: Instant::ZERO,
        };
        v.reset_buckets(false, false);
        v.update(p, r);
        v
    }

    /// A limit newly set starts with a full bucket; a changed one keeps the
    /// tokens it has (clamped to the new burst on next use).
    pub(super) fn reset_buckets(&mut self, had_rate: bool, had_bw: bool) {
        match self.limits.new_conn_rate {
            Some(r) if !had_rate => {
                self.conn_bucket = Bucket::full(u64::from(r.burst), Instant::ZERO)
            }
            _ => {}
        }
        match self.limits.bandwidth {
            Some(bw) if !had_bw => {
                self.bw_bucket = Bucket::full(bandwidth_burst(bw), Instant::ZERO)
            }
            _ => {}
        }
    }

    /// Takes the prepared configuration: new table and settings (for new
    /// connections), backends matched by (addr, port) to keep their slots
    /// and counters.
    pub(super) fn update(&mut self, p: &PreparedVip, r: &mut Reconfigured) {
        let had_rate = self.limits.new_conn_rate.is_some();
        let had_bw = self.limits.bandwidth.is_some();
        if !self.configured {
            r.vips_added += 1;
        }
        self.configured = true;
        self.cfg = p.cfg.clone();
        self.limits = p.limits;
        self.table = p.table.clone();
        self.reset_buckets(had_rate, had_bw);

        let by_ep: HashMap<(Ipv4Addr, u16), usize> = self
            .backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| ((b.cfg.address, b.cfg.port), i)))
            .collect();
        let mut listed = vec![false; self.backends.len()];
        self.table_slots.clear();
        for cfg in &p.cfg.backends {
            let slot = match by_ep.get(&(cfg.address, cfg.port)) {
                Some(&slot) => {
                    let b = self.backends[slot].as_mut().expect("indexed slot");
                    if !b.configured {
                        r.backends_added += 1;
                    }
                    b.cfg = cfg.clone();
                    b.configured = true;
                    listed[slot] = true;
                    slot
                }
                None => {
                    r.backends_added += 1;
                    let b = BackendSlot {
                        cfg: cfg.clone(),
                        counters: BackendCounters::default(),
                        configured: true,
                        refs: 0,
                    };
                    match self.free_backends.pop() {
                        Some(slot) => {
                            self.backends[slot] = Some(b);
                            listed[slot] = true;
                            slot
                        }
                        None => {
                            self.backends.push(Some(b));
                            listed.push(true);
                            self.backends.len() - 1
                        }
                    }
                }
            };
            self.table_slots.push(slot);
        }
        for (slot, &listed) in listed.iter().enumerate() {
            if listed {
                continue;
            }
            let Some(b) = self.backends[slot].as_mut() else {
                continue;
            };
            if b.configured {
                b.configured = false;
                r.backends_removed += 1;
            }
            if b.refs == 0 {
                self.backends[slot] = None;
                self.free_backends.push(slot);
            }
        }
    }

    pub(super) fn be_mut(&mut self, slot: usize) -> &mut BackendSlot {
        self.backends[slot]
            .as_mut()
            .expect("referenced backend slot")
    }

    /// A connection stops using backend `slot`; a removed backend goes
    /// with its last connection.
    pub(super) fn unref_backend(&mut self, slot: usize) {
        let b = self.be_mut(slot);
        b.refs -= 1;
        if b.refs == 0 && !b.configured {
            self.backends[slot] = None;
            self.free_backends.push(slot);
        }
    }

    /// Connections on removed backends.
    pub(super) fn draining(&self) -> u64 {
        if !self.configured {
            return self.counters.active;
        }
        self.backends
            .iter()
            .flatten()
            .filter(|b| !b.configured)
            .map(|b| u64::from(b.refs))
            .sum()
    }

    pub(super) fn snapshot(&self) -> VipSnapshot {
        let listed = self
            .table_slots
            .iter()
            .filter_map(|&s| self.backends[s].as_ref());
        let removed = self.backends.iter().flatten().filter(|b| !b.configured);
        VipSnapshot {
            addr: self.cfg.address,
            port: self.cfg.port,
            removed: !self.configured,
            counters: self.counters,
            flood_since: self.flood_since,
            backends: listed
                .chain(removed)
                .map(|b| BackendSnapshot {
                    addr: b.cfg.address,
                    port: b.cfg.port,
                    weight: b.cfg.weight,
                    state: b.cfg.state,
                    removed: !b.configured,
                    counters: b.counters,
                })
                .collect(),
        }
    }
}

pub(super) fn vip_mut(vips: &mut [Option<VipState>], slot: usize) -> &mut VipState {
    vips[slot].as_mut().expect("VIP slot in use")
}
