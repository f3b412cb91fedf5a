//! The dataplane's side of the shared-memory contract with the control plane
//! (`fulcrum-shm`): configuration generations in, counters, a heartbeat and a
//! report out.
//!
//! A non-lcore control thread polls for new generations and prepares them off
//! the packet path ([`prepare`]: each VIP checked against this dataplane's
//! [`Facts`], the proxy engines' Maglev tables and the forwarders' VIPs built),
//! then hands every lcore the result through a one-slot lock-free queue
//! (newest wins); each lcore swaps it in between two polls and acknowledges it
//! ([`LcoreAck`]). Only when every lcore has acknowledged a generation is it
//! recorded as applied, and the report ([`DataplaneReport`]) names the VIPs
//! left out and why: a refused VIP never holds back the rest of its generation.
//! While the control plane is away nothing changes: the last good generation
//! keeps serving.
//!
//! The dataplane's own file goes through the same [`prepare`], as generation 0.
//!
//! [`prepare`] also digests each VIP's Maglev table, the very table object
//! the lcores are handed ([`TableDigest`]); the report carries the digests of
//! the VIPs installed, with the generation they belong to ([`installed_tables`]),
//! so that load balancers sharing a VIP behind ECMP can be compared.

use crate::counters::LcoreSnapshot;
use crate::stats::LcoreReport;
use fulcrum_forward::{DropReason as ForwardDrop, ForwardVip};
use fulcrum_model::{Facts, Mode, Published, TableDigest, VipRefusal};
use fulcrum_proxy::VipTables;
use fulcrum_shm as shm;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

/// A configuration generation, ready for an lcore to install.
pub struct Applied {
    /// 0: the dataplane's own file.
    pub generation: u64,
    /// Every proxy VIP's settings and Maglev table, shared by all lcores.
    pub tables: Arc<VipTables>,
    /// Proxy VIP endpoints, for steering.
    pub proxy_vips: Vec<(Ipv4Addr, u16)>,
    /// Forwarding VIPs, by the control plane's VIP id.
    pub forward: Vec<Arc<ForwardVip>>,
    /// Addresses answered for ARP and ping: the dataplane's own first, then
    /// every installed VIP's and the SNAT addresses. Replaced whole, so a
    /// removed VIP's address stops being answered.
    pub addrs: Vec<Ipv4Addr>,
    /// Where each VIP's and backend's counters go in the shared segment.
    pub ids: CounterIds,
}

/// A prepared generation and the VIPs it leaves out.
pub struct Prepared {
    pub applied: Applied,
    pub refused: Vec<VipRefusal>,
    /// The digest of every VIP's table in `applied` (by id), computed from
    /// the tables the lcores will install.
    pub tables: Vec<TableDigest>,
}

/// The digests of a generation's VIPs that every lcore installed: those of
/// `tables` not `refused` (an lcore may still refuse a VIP [`prepare`] kept).
pub fn installed_tables(tables: &[TableDigest], refused: &[VipRefusal]) -> Vec<TableDigest> {
    tables.iter().filter(|t| !refused.iter().any(|r| r.id == t.id)).cloned().collect()
}

/// What an lcore says once it has installed a generation.
pub struct LcoreAck {
    pub generation: u64,
    /// VIPs this lcore could not install (the others serve).
    pub refused: Vec<VipRefusal>,
}

/// Counter slots of the shared segment: proxy VIPs by endpoint (the engines
/// report by endpoint), backends by VIP id and endpoint.
#[derive(Default)]
pub struct CounterIds {
    proxy_vips: HashMap<(Ipv4Addr, u16), u16>,
    backends: HashMap<(u16, SocketAddrV4), u32>,
}

impl CounterIds {
    fn backend(&self, vip: u16, at: SocketAddrV4) -> Option<u32> {
        self.backends.get(&(vip, at)).copied()
    }
}

/// Turns a generation's VIPs into what the lcores install. Each VIP is checked
/// against `facts` and refused on its own when it does not fit; the proxy
/// VIPs' tables are built together (limits split between `lcores` by the
/// engine), the forwarding VIPs one by one.
pub fn prepare(vips: &[Published], generation: u64, facts: &Facts, lcores: usize) -> Result<Prepared, String> {
    let mut ids = CounterIds::default();
    let mut refused = Vec::new();
    let mut proxy = Vec::new();
    let mut proxy_vips = Vec::new();
    let mut forward = Vec::new();
    let mut digests = Vec::new();
    let mut addrs = vec![facts.address];
    for p in vips {
        let v = &p.vip;
        let refuse = |reason: String| VipRefusal { id: p.id, vip: v.name(), reason };
        if let Err(e) = v.validate_for(facts) {
            refused.push(refuse(e.to_string()));
            continue;
        }
        if v.mode == Mode::Proxy {
            ids.proxy_vips.insert((v.address, v.port), p.id);
            proxy_vips.push((v.address, v.port));
            proxy.push(v.clone());
        } else {
            match ForwardVip::build(p.id, v) {
                Ok(f) => {
                    digests.push(TableDigest::of(p.id, v, f.table()));
                    forward.push(Arc::new(f));
                }
                Err(e) => {
                    refused.push(refuse(e.to_string()));
                    continue;
                }
            }
        }
        for (b, &slot) in v.backends.iter().zip(&p.slots) {
            ids.backends.insert((p.id, b.endpoint()), slot);
        }
        if !addrs.contains(&v.address) {
            addrs.push(v.address);
        }
    }
    for a in &facts.snat_addresses {
        if !addrs.contains(a) {
            addrs.push(*a);
        }
    }
    let tables = VipTables::build(proxy, lcores).map_err(|e| e.to_string())?;
    for (v, table) in tables.tables() {
        if let Some(&id) = ids.proxy_vips.get(&(v.address, v.port)) {
            digests.push(TableDigest::of(id, v, table));
        }
    }
    digests.sort_by_key(|t| t.id);
    let applied = Applied { generation, tables, proxy_vips, forward, addrs, ids };
    Ok(Prepared { applied, refused, tables: digests })
}

/// Lcore-level counter names in the segment: traffic and load, the
/// dataplane's drop reasons, then the forwarders' drop reasons.
pub fn lcore_counter_names(example: &LcoreSnapshot) -> Vec<String> {
    [
        shm::LCORE_RX_PACKETS,
        shm::LCORE_RX_BYTES,
        shm::LCORE_TX_PACKETS,
        shm::LCORE_TX_BYTES,
        shm::LCORE_BUSY_NS,
        shm::LCORE_HANDED_OVER,
        shm::LCORE_TAKEN_OVER,
        shm::LCORE_RX_RING_FRAMES,
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(example.drops.keys().map(|k| format!("{}{k}", shm::LCORE_DROP_PREFIX)))
    .chain(ForwardDrop::ALL.iter().map(|r| format!("{}{}", shm::LCORE_FWD_DROP_PREFIX, r.name())))
    .collect()
}

/// Writes one lcore's counters into its block (only that lcore calls this).
pub fn publish(block: &shm::LcoreCounters<'_>, lcore: &LcoreSnapshot, report: Option<&LcoreReport>, ids: Option<&CounterIds>) {
    let traffic = [
        lcore.rx_packets,
        lcore.rx_bytes,
        lcore.tx_packets,
        lcore.tx_bytes,
        lcore.busy_ns,
        lcore.handed_over,
        lcore.taken_over,
        lcore.rx_ring_frames,
    ];
    let forward = report.and_then(|r| r.forward.as_ref());
    let fwd_drops = ForwardDrop::ALL.iter().map(|r| forward.map_or(0, |f| f.counters.drops[r.index()]));
    for (i, v) in traffic.into_iter().chain(lcore.drops.values().copied()).chain(fwd_drops).enumerate() {
        block.set(i, v);
    }
    let Some(ids) = ids else { return };
    if let Some(engine) = report.and_then(|r| r.proxy.as_ref()) {
        for vip in &engine.vips {
            let Some(&id) = ids.proxy_vips.get(&(vip.addr, vip.port)) else {
                continue;
            };
            let c = &vip.counters;
            for (field, v) in [
                (shm::VIP_ACCEPTED, c.accepted),
                (shm::VIP_ACTIVE, c.active),
                (shm::VIP_BYTES_IN, c.bytes_from_clients),
                (shm::VIP_BYTES_OUT, c.bytes_to_clients),
                (shm::VIP_DROP_LIMIT, c.drop_limit),
                (shm::VIP_DROP_RATE, c.drop_rate),
                (shm::VIP_DROP_CLIENT_RATE, c.drop_client_rate),
                (shm::VIP_DROP_NO_BACKEND, c.drop_no_backend),
                (shm::VIP_DROP_CONNECT_FAILED, c.drop_connect_failed),
                (shm::VIP_DROP_IDLE, c.drop_idle_timeout),
                (shm::VIP_RESETS, c.client_resets + c.backend_resets),
                (shm::VIP_SYNS, c.syns),
                (shm::VIP_COOKIES_SENT, c.cookies_sent),
                (shm::VIP_COOKIES_VALIDATED, c.cookies_validated),
                (shm::VIP_COOKIES_REJECTED, c.cookies_rejected),
                (shm::VIP_HALF_OPEN, c.half_open),
                // This lcore's engine only: readers sum the lcores in flood mode.
                (shm::VIP_FLOOD_LCORES, u64::from(vip.flood_since.is_some())),
                (shm::VIP_DROP_HALF_OPEN, c.drop_half_open_timeout),
            ] {
                block.vip_set(id, field, v);
            }
            for b in &vip.backends {
                let Some(slot) = ids.backend(id, SocketAddrV4::new(b.addr, b.port)) else {
                    continue;
                };
                let c = &b.counters;
                for (field, v) in [
                    (shm::BACKEND_ATTEMPTS, c.attempts),
                    (shm::BACKEND_OPENED, c.opened),
                    (shm::BACKEND_ACTIVE, c.active),
                    (shm::BACKEND_CONNECT_FAILURES, c.connect_failures),
                    (shm::BACKEND_RESETS, c.resets),
                    (shm::BACKEND_BYTES_TO, c.bytes_to_backend),
                    (shm::BACKEND_BYTES_FROM, c.bytes_from_backend),
                ] {
                    block.backend_set(slot, field, v);
                }
            }
        }
    }
    if let Some(f) = forward {
        for vip in &f.vips {
            let t = &vip.traffic;
            for (field, v) in [
                (shm::VIP_ACCEPTED, t.new_flows),
                (shm::VIP_PACKETS_IN, t.packets),
                (shm::VIP_BYTES_IN, t.bytes),
                (shm::VIP_DROPS, vip.drops.iter().sum()),
            ] {
                block.vip_set(vip.id, field, v);
            }
            for b in &vip.backends {
                let Some(slot) = ids.backend(vip.id, SocketAddrV4::new(b.address, b.port)) else {
                    continue;
                };
                let t = &b.traffic;
                for (field, v) in
                    [(shm::BACKEND_OPENED, t.new_flows), (shm::BACKEND_PACKETS, t.packets), (shm::BACKEND_BYTES_TO, t.bytes)]
                {
                    block.backend_set(slot, field, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::LcoreCounters;
    use crate::stats::tests::{engine, flood_counters};

    /// Every lcore counter, the af_packet ring's two included, has a slot
    /// and a name that fit the segment's name table.
    #[test]
    fn lcore_counter_names_fit_the_segment() {
        let names = lcore_counter_names(&LcoreCounters::default().snapshot(0));
        assert!(names.len() <= shm::LCORE_COUNTERS, "{} names: {names:?}", names.len());
        assert!(names.iter().all(|n| n.len() < shm::NAME_LEN), "{names:?}");
        assert!(names.contains(&"rx_ring_frames".to_owned()) && names.contains(&"drop_rx_ring_full".to_owned()));
        eprintln!("{} of {} lcore counter slots used", names.len(), shm::LCORE_COUNTERS);
    }

    fn published(id: u16, vip: fulcrum_model::Vip, first_slot: u32) -> Published {
        let slots = (first_slot..first_slot + vip.backends.len() as u32).collect();
        Published { id, slots, vip }
    }

    /// `prepare` digests the tables it hands the lcores: a proxy and a DSR
    /// VIP over the same three backends have the digest of a table built from
    /// those backends in any order; a refused VIP has none; draining a
    /// backend changes the digest and undraining brings it back.
    #[test]
    fn prepare_digests_the_installed_tables() {
        use fulcrum_maglev::MaglevTable;
        use fulcrum_model::{Backend, BackendState, Proto, Vip};
        let facts = Facts {
            address: Ipv4Addr::new(198, 18, 0, 2),
            snat_addresses: vec![],
            lcores: 2,
            forwarding: true,
        };
        let backends: Vec<Backend> = (0..3).map(|i| Backend::new(Ipv4Addr::new(198, 18, 0, 21 + i), 80, 1)).collect();
        let proxy = Vip::proxy(Ipv4Addr::new(198, 18, 1, 1), 80, backends.clone());
        let mut dsr = Vip { backends: backends.clone(), ..Vip::new(Ipv4Addr::new(198, 18, 1, 2), 80, Mode::Dsr) };
        dsr.proto = Proto::Tcp;
        // FullNAT without SNAT addresses: refused by this dataplane.
        let fullnat = Vip { backends: backends.clone(), ..Vip::new(Ipv4Addr::new(198, 18, 1, 3), 80, Mode::Fullnat) };
        let gen = |proxy: &Vip, dsr: &Vip| {
            vec![published(3, dsr.clone(), 0), published(7, proxy.clone(), 3), published(9, fullnat.clone(), 6)]
        };
        let p = prepare(&gen(&proxy, &dsr), 5, &facts, 2).unwrap();
        assert_eq!(p.refused.iter().map(|r| r.id).collect::<Vec<_>>(), [9]);
        assert_eq!(p.tables.iter().map(|t| t.id).collect::<Vec<_>>(), [3, 7]);
        let mut reversed = backends.clone();
        reversed.reverse();
        let table = MaglevTable::build(&reversed.iter().map(Backend::maglev).collect::<Vec<_>>(), 65_537).unwrap();
        let expected = fulcrum_maglev::digest_hex(table.digest(|i| reversed[i].endpoint()));
        for t in &p.tables {
            assert_eq!(t.digest, expected, "{t:?}");
            assert_eq!((t.slots, t.backends), (65_537, 3));
        }
        assert_eq!(p.tables[0].vip, "198.18.1.2:80");
        assert_eq!(p.tables[1].vip, "198.18.1.1:80");
        // An lcore refusing VIP 3 leaves only VIP 7's digest in the report.
        let refused = [VipRefusal { id: 3, vip: "198.18.1.2:80/tcp".into(), reason: "test".into() }];
        assert_eq!(installed_tables(&p.tables, &refused).iter().map(|t| t.id).collect::<Vec<_>>(), [7]);

        let (mut proxy2, mut dsr2) = (proxy.clone(), dsr.clone());
        proxy2.backends[1].state = BackendState::Drain;
        dsr2.backends[1].state = BackendState::Drain;
        let drained = prepare(&gen(&proxy2, &dsr2), 6, &facts, 2).unwrap();
        for (a, b) in drained.tables.iter().zip(&p.tables) {
            assert_ne!(a.digest, b.digest);
            assert_eq!(a.backends, 2);
        }
        let back = prepare(&gen(&proxy, &dsr), 7, &facts, 2).unwrap();
        assert_eq!(back.tables, p.tables);
    }

    /// Two lcores write their engines' SYN-flood counters into their blocks;
    /// a reader of the segment sums them and counts the lcores in flood mode.
    #[test]
    fn proxy_syn_flood_counters_reach_the_segment() {
        let dir = std::env::temp_dir().join(format!("fulcrum-dp-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("segment");
        let _ = std::fs::remove_file(&path);
        let seg = shm::Segment::open_or_create(&path).unwrap();
        let mut dp = seg.dataplane(&shm::DataplaneInit { lcores: 2, ..Default::default() }).unwrap();
        let mut ids = CounterIds::default();
        ids.proxy_vips.insert((Ipv4Addr::new(198, 18, 1, 1), 80), 7);
        let reports = [
            LcoreReport { proxy: Some(engine(10_000, flood_counters(1), Some(9_000))), forward: None },
            LcoreReport { proxy: Some(engine(10_000, flood_counters(2), None)), forward: None },
        ];
        for (i, r) in reports.iter().enumerate() {
            let block = dp.take_lcore(i).unwrap();
            publish(&block, &LcoreCounters::default().snapshot(i as u32), Some(r), Some(&ids));
        }
        let s = seg.snapshot().unwrap();
        for (field, n) in [
            (shm::VIP_ACCEPTED, 3),
            (shm::VIP_SYNS, 3000),
            (shm::VIP_COOKIES_SENT, 2700),
            (shm::VIP_COOKIES_VALIDATED, 30),
            (shm::VIP_COOKIES_REJECTED, 6),
            (shm::VIP_HALF_OPEN, 192),
            (shm::VIP_FLOOD_LCORES, 1),
            (shm::VIP_DROP_HALF_OPEN, 15),
        ] {
            assert_eq!(s.vip(7, field), n, "{}", shm::VIP_COUNTER_NAMES[field]);
        }
        drop(dp);
        drop(seg);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
