//! The VIPs a forwarder serves: built from the model off the packet path
//! ([`ForwardVip::build`]), installed as a whole set ([`Forwarder::install`]),
//! and their counters ([`Forwarder::vip_stats`]).
//!
//! # Internal indices
//! Each installed VIP also has an internal index, stored with its id in every
//! connection-tracking entry it creates. A VIP keeps its index while it is
//! reinstalled with the same identity (address, port, protocol, mode, tunnel
//! settings): its flows keep their entries and their backend. A VIP that is
//! new, or whose identity changed under the same id, gets a fresh index, so
//! the entries of the old one no longer match it: the packet path treats them
//! as absent (and frees them when it meets them), and never applies an old
//! entry's rewrite under a new mode. Indices are `u32`s never reused in the
//! forwarder's life; when they run out (after 4 billion additions or identity
//! changes) [`ForwardError::IndicesExhausted`] refuses further new VIPs.

use std::net::Ipv4Addr;
use std::sync::Arc;

use fulcrum_maglev::MaglevTable;
use fulcrum_model::{Affinity, Encap, Mode, Proto, Tunnel, Vip, GUE_PORT, MAX_VIPS};

use crate::conntrack::Entry;
use crate::{vip_key, DropReason, ForwardError, Forwarder, Traffic};

/// What the packet path does to a VIP's packets: the runtime form of its
/// mode and tunnel settings, computed once ([`Rewrite::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Only the MACs change.
    Dsr,
    /// Encapsulate towards the backend.
    Tunnel {
        encap: Encap,
        /// Outer source prefix (host bits from the flow) and its length.
        src_prefix: Ipv4Addr,
        src_prefix_len: u8,
        /// GUE's UDP destination port.
        gue_port: u16,
    },
    /// Source and destination NAT.
    FullNat,
}

impl Rewrite {
    /// The one conversion from the model's mode and tunnel settings.
    fn of(vip: &Vip) -> Result<Rewrite, ForwardError> {
        match vip.mode {
            Mode::Proxy => Err(ForwardError::NotForwarding(vip.name())),
            Mode::Dsr => Ok(Rewrite::Dsr),
            Mode::Fullnat => Ok(Rewrite::FullNat),
            Mode::Tunnel => {
                let t = vip.tunnel.ok_or(ForwardError::NoTunnel)?;
                let len = t.source_prefix.prefix_len;
                if len > 32 {
                    return Err(ForwardError::BadPrefix(len));
                }
                Ok(Rewrite::Tunnel {
                    encap: t.encap,
                    src_prefix: t.source_prefix.addr,
                    src_prefix_len: len,
                    gue_port: GUE_PORT,
                })
            }
        }
    }
}

/// A backend as the packet path needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BackendCfg {
    pub address: Ipv4Addr,
    /// FullNAT destination port (0: the client's destination port).
    pub port: u16,
    /// Configured next-hop MAC; `None`: resolved by ARP.
    pub mac: Option<[u8; 6]>,
}

/// A forwarding VIP prepared off the packet path: its Maglev table built,
/// its rewrite precomputed. Immutable; share it between lcores in an `Arc`.
#[derive(Clone, Debug)]
pub struct ForwardVip {
    id: u16,
    address: Ipv4Addr,
    port: u16,
    proto: Proto,
    mode: Mode,
    tunnel: Option<Tunnel>,
    affinity: Affinity,
    rewrite: Rewrite,
    backends: Vec<BackendCfg>,
    table: MaglevTable,
}

impl ForwardVip {
    /// Prepares `vip` under the control plane's id `id` (any thread;
    /// allocates; builds the Maglev table from [`Vip::maglev_backends`], so
    /// a backend that is not up has weight 0).
    ///
    /// # Errors
    /// An id not below [`MAX_VIPS`], a proxy-mode VIP, whatever
    /// [`Vip::validate`] refuses (tunnel without settings, ...), or a Maglev
    /// table that cannot be built.
    pub fn build(id: u16, vip: &Vip) -> Result<ForwardVip, ForwardError> {
        if usize::from(id) >= MAX_VIPS {
            return Err(ForwardError::BadId(id));
        }
        let rewrite = Rewrite::of(vip)?;
        vip.validate()?;
        let table = MaglevTable::build(&vip.maglev_backends(), vip.table_size)?;
        let backends = vip
            .backends
            .iter()
            .map(|b| BackendCfg { address: b.address, port: b.port, mac: b.mac.map(|m| m.0) })
            .collect();
        Ok(ForwardVip {
            id,
            address: vip.address,
            port: vip.port,
            proto: vip.proto,
            mode: vip.mode,
            tunnel: vip.tunnel,
            affinity: vip.affinity,
            rewrite,
            backends,
            table,
        })
    }

    /// The control plane's id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The Maglev table the packet path uses (shared by every lcore that
    /// installs this VIP): index i is the VIP's `backends[i]` as given to
    /// [`build`](Self::build).
    pub fn table(&self) -> &MaglevTable {
        &self.table
    }

    /// `address:port/proto`.
    pub fn name(&self) -> String {
        format!("{}:{}/{}", self.address, self.port, self.proto.name())
    }

    /// What must not change for the VIP's tracked flows to stay valid.
    fn identity(&self) -> (Ipv4Addr, u16, Proto, Mode, Option<Tunnel>) {
        (self.address, self.port, self.proto, self.mode, self.tunnel)
    }
}

/// An installed backend: its settings and the neighbour slot it resolves through.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendRt {
    pub cfg: BackendCfg,
    pub neigh: Option<u16>,
}

/// An installed VIP: the shared prepared form and this lcore's state.
pub(crate) struct VipRt {
    pub spec: Arc<ForwardVip>,
    /// Internal index (see the module docs).
    pub index: u32,
    pub rewrite: Rewrite,
    pub affinity: Affinity,
    pub backends: Vec<BackendRt>,
    /// Unique to this installation of `backends` (never 0; from
    /// `Forwarder::next_stamp`), stamped on the entries it creates: an
    /// entry with this stamp has `backends[e.backend]` as its backend, so
    /// `account_to` counts it there without comparing addresses.
    pub backends_stamp: u32,
    pub traffic: Traffic,
    pub backend_traffic: Vec<Traffic>,
    pub drops: [u64; DropReason::COUNT],
    pub flood: FloodStats,
}

impl VipRt {
    /// Whether entry `e` was created by this VIP (its id `id`, its index).
    #[inline]
    pub(crate) fn owns(&self, id: usize, e: &Entry) -> bool {
        e.vip_index == self.index && usize::from(e.vip) == id
    }

    #[inline]
    pub(crate) fn table(&self) -> &MaglevTable {
        &self.spec.table
    }
}

/// What [`Forwarder::install`] did, by VIP id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Ids that were not installed before.
    pub added: Vec<u16>,
    /// Same id and identity: new backends, table and affinity; tracked flows kept.
    pub updated: Vec<u16>,
    /// Same id, another identity: installed as a new VIP, the old one's
    /// tracked flows dropped.
    pub replaced: Vec<u16>,
    /// Ids installed before and not now (refused ones included).
    pub removed: Vec<u16>,
    /// VIPs left out, with why.
    pub refused: Vec<(u16, ForwardError)>,
}

/// A backend's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStats {
    /// Which backend.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Its traffic (kept while it stays a backend of the VIP).
    pub traffic: Traffic,
}

/// A VIP's flood-defence counters on this lcore (the per-lcore totals are
/// the [`crate::Counters`] fields of the same names; `half_open_full` is
/// among [`VipStats::drops`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodStats {
    /// TCP entries created mid-stream (DSR, tunnel).
    pub midstream_flows: u64,
    /// Of those, confirmed alive.
    pub midstream_confirmed: u64,
    /// New-flow packets forwarded without an entry (the new-flow cap).
    pub flows_not_tracked: u64,
}

/// A VIP's counters on this lcore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipStats {
    /// The control plane's id.
    pub id: u16,
    /// Address.
    pub address: Ipv4Addr,
    /// Port (0: every port).
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// Mode.
    pub mode: Mode,
    /// Traffic since the VIP was installed with this identity.
    pub traffic: Traffic,
    /// Drops after the packet was known to be this VIP's, by
    /// [`DropReason::index`] (also counted in [`crate::Counters::drops`]).
    pub drops: [u64; DropReason::COUNT],
    /// Flood-defence counters (also counted in [`crate::Counters`]).
    pub flood: FloodStats,
    /// Its current backends, in its list order.
    pub backends: Vec<BackendStats>,
}

impl Forwarder {
    /// Makes the installed VIPs exactly `vips` (those it can install),
    /// keyed by [`ForwardVip::id`]:
    /// - an id installed with the same identity (address, port, protocol,
    ///   mode, tunnel settings) keeps its tracked flows and counters and
    ///   takes the new backends, table and affinity; existing flows keep
    ///   their backend even if it left (entries hold the backend's address,
    ///   port and MAC, not a reference into the set);
    /// - a new id is added; an id with another identity is replaced by a new
    ///   VIP, whose flows start afresh (see the module docs);
    /// - an id not in `vips` is removed: its packets come back
    ///   [`crate::Verdict::NotMine`].
    ///
    /// A VIP that cannot be installed on this lcore (FullNAT without a
    /// source address or port here, a full neighbour table, an id or a
    /// VIP listed twice, ...) is left out and returned in
    /// [`Installed::refused`]; the rest is installed. Allocates (a few
    /// small vectors), not on the packet path; O(VIPs x backends).
    pub fn install(&mut self, vips: &[Arc<ForwardVip>]) -> Installed {
        let mut out = Installed::default();
        let mut old: Vec<Option<VipRt>> = std::mem::take(&mut self.vips);
        old.resize_with(MAX_VIPS, || None);
        self.vips = (0..MAX_VIPS).map(|_| None).collect();
        self.vip_keys.clear();
        self.vip_ids.clear();
        self.vip_addrs.clear();
        // Neighbours: keep (with what was learned) only addresses still needed.
        self.neigh.retain(|ip| {
            vips.iter().any(|v| v.backends.iter().any(|b| b.mac.is_none() && b.address == ip))
        });
        for spec in vips {
            let id = spec.id;
            if let Err(e) = self.admit(spec) {
                out.refused.push((id, e));
                continue;
            }
            let previous = old.get_mut(usize::from(id)).and_then(Option::take);
            let same = previous.as_ref().is_some_and(|p| p.spec.identity() == spec.identity());
            let index = match &previous {
                Some(p) if same => p.index,
                _ => match self.fresh_index() {
                    Ok(i) => i,
                    Err(e) => {
                        out.refused.push((id, e));
                        continue;
                    }
                },
            };
            let backends = match self.register_backends(spec) {
                Ok(b) => b,
                Err(e) => {
                    out.refused.push((id, e));
                    continue;
                }
            };
            let backends_stamp = self.fresh_stamp();
            let mut rt = VipRt {
                spec: Arc::clone(spec),
                index,
                backends_stamp,
                rewrite: spec.rewrite,
                affinity: spec.affinity,
                backend_traffic: vec![Traffic::default(); backends.len()],
                backends,
                traffic: Traffic::default(),
                drops: [0; DropReason::COUNT],
                flood: FloodStats::default(),
            };
            match previous {
                Some(p) if same => {
                    rt.traffic = p.traffic;
                    rt.drops = p.drops;
                    rt.flood = p.flood;
                    // The same backends in the same places: its entries' stamp stays good.
                    let place = |b: &BackendRt| (b.cfg.address, b.cfg.port);
                    if rt.backends.iter().map(place).eq(p.backends.iter().map(place)) {
                        rt.backends_stamp = p.backends_stamp;
                    }
                    // Counters follow a backend's identity, not its position.
                    for (b, t) in rt.backends.iter().zip(rt.backend_traffic.iter_mut()) {
                        let kept = p.backends.iter().position(|o| (o.cfg.address, o.cfg.port) == (b.cfg.address, b.cfg.port));
                        if let Some(t0) = kept.and_then(|k| p.backend_traffic.get(k)) {
                            *t = *t0;
                        }
                    }
                    out.updated.push(id);
                }
                Some(_) => out.replaced.push(id),
                None => out.added.push(id),
            }
            self.vip_keys.push(vip_key(spec.address, spec.port, spec.proto.number()));
            self.vip_ids.push(id);
            if !self.vip_addrs.contains(&spec.address) {
                self.vip_addrs.push(spec.address);
            }
            if let Some(slot) = self.vips.get_mut(usize::from(id)) {
                *slot = Some(rt);
            }
        }
        for (id, slot) in old.iter().enumerate() {
            if slot.is_some() && !self.vip_ids.contains(&(id as u16)) {
                out.removed.push(id as u16);
            }
        }
        out
    }

    /// Checks what depends on this forwarder and on the VIPs already taken
    /// in this install.
    fn admit(&self, spec: &ForwardVip) -> Result<(), ForwardError> {
        let id = spec.id;
        if usize::from(id) >= MAX_VIPS {
            return Err(ForwardError::BadId(id));
        }
        if self.vip_ids.contains(&id) {
            return Err(ForwardError::DuplicateId(id));
        }
        let key = vip_key(spec.address, spec.port, spec.proto.number());
        if let Some(i) = self.vip_keys.iter().position(|&k| k == key) {
            return Err(ForwardError::DuplicateVip(spec.name(), self.vip_ids.get(i).copied().unwrap_or(0)));
        }
        if spec.rewrite == Rewrite::FullNat && (self.addrs.is_empty() || self.ports.is_empty()) {
            return Err(ForwardError::NoSnatPorts(self.lcore));
        }
        Ok(())
    }

    fn fresh_index(&mut self) -> Result<u32, ForwardError> {
        let i = self.next_index;
        if i == u32::MAX {
            return Err(ForwardError::IndicesExhausted(i));
        }
        self.next_index = i + 1;
        Ok(i)
    }

    /// A stamp for a new backend list: 1, 2, ... (wrapping past 0; an
    /// entry would have to outlive 2^32 installations to meet its stamp again).
    fn fresh_stamp(&mut self) -> u32 {
        self.next_stamp = self.next_stamp.wrapping_add(1).max(1);
        self.next_stamp
    }

    /// The VIP's backends, each without a configured MAC registered for ARP.
    fn register_backends(&mut self, spec: &ForwardVip) -> Result<Vec<BackendRt>, ForwardError> {
        spec.backends
            .iter()
            .map(|&cfg| {
                let neigh = match cfg.mac {
                    Some(_) => None,
                    None => Some(self.neigh.register(cfg.address).ok_or(ForwardError::NeighboursFull(self.neigh.capacity()))?),
                };
                Ok(BackendRt { cfg, neigh })
            })
            .collect()
    }

    /// Counters of every installed VIP and its backends, by ascending id.
    pub fn vip_stats(&self) -> impl Iterator<Item = VipStats> + '_ {
        (0..MAX_VIPS as u16).filter_map(|id| self.vip_stats_of(id))
    }

    /// Counters of the VIP installed under `id`, if any.
    pub fn vip_stats_of(&self, id: u16) -> Option<VipStats> {
        let v = self.vips.get(usize::from(id))?.as_ref()?;
        let s = &v.spec;
        Some(VipStats {
            id,
            address: s.address,
            port: s.port,
            proto: s.proto,
            mode: s.mode,
            traffic: v.traffic,
            drops: v.drops,
            flood: v.flood,
            backends: v
                .backends
                .iter()
                .zip(&v.backend_traffic)
                .map(|(b, t)| BackendStats { address: b.cfg.address, port: b.cfg.port, traffic: *t })
                .collect(),
        })
    }
}
