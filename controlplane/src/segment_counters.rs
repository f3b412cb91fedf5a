//! Summing the dataplane's per-lcore counter blocks (through `fulcrum-shm`'s
//! snapshot, rebased across dataplane restarts so totals never go backwards).

use crate::proto::LcoreStats;
use crate::publish::{BackendCounters, Counters, VipCounters};
use fulcrum_shm as shm;
use fulcrum_shm as c;

/// VIP drop counters and the reason label each is reported under.
const DROPS: [(usize, &str); 9] = [
    (c::VIP_DROP_LIMIT, "max_connections"),
    (c::VIP_DROP_RATE, "new_conn_rate"),
    (c::VIP_DROP_CLIENT_RATE, "client_rate"),
    (c::VIP_DROP_BANDWIDTH, "bandwidth"),
    (c::VIP_DROP_NO_BACKEND, "no_backend"),
    (c::VIP_DROP_CONNECT_FAILED, "connect_failed"),
    (c::VIP_DROP_IDLE, "idle_timeout"),
    (c::VIP_DROP_HALF_OPEN, "half_open_timeout"),
    (c::VIP_DROPS, "forward"),
];

pub fn read(seg: &shm::Segment, totals: &mut shm::CounterTotals, vip_ids: &[u16], slots: &[u32]) -> Counters {
    let Ok(raw) = seg.snapshot() else { return Counters::default() };
    let s = totals.update(&raw);
    let mut out = Counters { lcores: lcores(&raw), ..Default::default() };
    for &id in vip_ids {
        out.vips.insert(
            id,
            VipCounters {
                connections_active: s.vip(id, c::VIP_ACTIVE),
                connections_total: s.vip(id, c::VIP_ACCEPTED),
                packets_in: s.vip(id, c::VIP_PACKETS_IN),
                bytes_in: s.vip(id, c::VIP_BYTES_IN),
                bytes_out: s.vip(id, c::VIP_BYTES_OUT),
                drops: DROPS.iter().map(|&(i, name)| (name.to_owned(), s.vip(id, i))).collect(),
                syns: s.vip(id, c::VIP_SYNS),
                cookies_sent: s.vip(id, c::VIP_COOKIES_SENT),
                cookies_validated: s.vip(id, c::VIP_COOKIES_VALIDATED),
                cookies_rejected: s.vip(id, c::VIP_COOKIES_REJECTED),
                half_open: s.vip(id, c::VIP_HALF_OPEN),
                flood_lcores: s.vip(id, c::VIP_FLOOD_LCORES),
            },
        );
    }
    for &slot in slots {
        out.backends.insert(
            slot,
            BackendCounters {
                connections_active: s.backend(slot, c::BACKEND_ACTIVE),
                connections_total: s.backend(slot, c::BACKEND_OPENED),
                connect_failures: s.backend(slot, c::BACKEND_CONNECT_FAILURES),
                packets: s.backend(slot, c::BACKEND_PACKETS),
                bytes_to: s.backend(slot, c::BACKEND_BYTES_TO),
                bytes_from: s.backend(slot, c::BACKEND_BYTES_FROM),
            },
        );
    }
    out
}

/// Each in-use lcore's lcore-level counters, found by the names the
/// dataplane wrote into the segment (so every drop reason it declares is
/// there, under its own name). As read: they count since the running
/// dataplane started.
fn lcores(s: &shm::Snapshot) -> Vec<LcoreStats> {
    s.per_lcore
        .iter()
        .map(|(lcore, values)| {
            let mut out = LcoreStats { lcore: *lcore as u32, ..Default::default() };
            for (name, &n) in s.names.iter().zip(values) {
                if let Some(reason) = name.strip_prefix(c::LCORE_DROP_PREFIX) {
                    out.drops.insert(reason.to_owned(), n);
                } else if let Some(reason) = name.strip_prefix(c::LCORE_FWD_DROP_PREFIX) {
                    out.forward_drops.insert(reason.to_owned(), n);
                } else {
                    match name.as_str() {
                        c::LCORE_RX_PACKETS => out.rx_packets = n,
                        c::LCORE_RX_BYTES => out.rx_bytes = n,
                        c::LCORE_TX_PACKETS => out.tx_packets = n,
                        c::LCORE_TX_BYTES => out.tx_bytes = n,
                        c::LCORE_BUSY_NS => out.busy_ns = n,
                        c::LCORE_RX_RING_FRAMES => out.rx_ring_frames = n,
                        _ => {}
                    }
                }
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SYN-flood counters as the dataplane writes them (each lcore its own
    /// block, flood_lcores 0 or 1 per lcore), summed; gauges survive a
    /// dataplane restart as the new dataplane's values, counters rebased.
    #[test]
    fn syn_flood_counters_from_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let seg = shm::Segment::open_or_create(dir.path().join("seg")).unwrap();
        let init = shm::DataplaneInit { lcores: 2, ..Default::default() };
        let mut dp = seg.dataplane(&init).unwrap();
        let (l0, l1) = (dp.take_lcore(0).unwrap(), dp.take_lcore(1).unwrap());
        let id = 9;
        for (l, k, flood) in [(&l0, 1, 1), (&l1, 2, 0)] {
            l.vip_set(id, c::VIP_ACCEPTED, 10 * k);
            l.vip_set(id, c::VIP_SYNS, 1000 * k);
            l.vip_set(id, c::VIP_COOKIES_SENT, 900 * k);
            l.vip_set(id, c::VIP_COOKIES_VALIDATED, 20 * k);
            l.vip_set(id, c::VIP_COOKIES_REJECTED, 3 * k);
            l.vip_set(id, c::VIP_HALF_OPEN, 64 * k);
            l.vip_set(id, c::VIP_FLOOD_LCORES, flood);
            l.vip_set(id, c::VIP_DROP_HALF_OPEN, 5 * k);
        }
        let mut totals = shm::CounterTotals::new();
        let out = read(&seg, &mut totals, &[id, 3], &[]);
        let v = &out.vips[&id];
        assert_eq!(
            (v.connections_total, v.syns, v.cookies_sent, v.cookies_validated, v.cookies_rejected, v.half_open, v.flood_lcores),
            (30, 3000, 2700, 60, 9, 192, 1)
        );
        assert_eq!(v.drops.get("half_open_timeout"), Some(&15), "{:?}", v.drops);
        assert_eq!(v.drops.get("idle_timeout"), Some(&0));
        assert_eq!(out.vips[&3], VipCounters { drops: v.drops.keys().map(|k| (k.clone(), 0)).collect(), ..Default::default() });

        l1.vip_set(id, c::VIP_FLOOD_LCORES, 1);
        assert_eq!(read(&seg, &mut totals, &[id], &[]).vips[&id].flood_lcores, 2);

        drop(dp);
        let mut dp = seg.dataplane(&init).unwrap();
        let l0 = dp.take_lcore(0).unwrap();
        l0.vip_set(id, c::VIP_SYNS, 1);
        l0.vip_set(id, c::VIP_HALF_OPEN, 4);
        let v = read(&seg, &mut totals, &[id], &[]).vips[&id].clone();
        assert_eq!((v.syns, v.half_open, v.flood_lcores), (3001, 4, 0));
        assert_eq!(v.drops.get("half_open_timeout"), Some(&15));
    }

    /// Each lcore's counters come out by the names the dataplane declared,
    /// drop reasons split by prefix; unnamed slots are ignored.
    #[test]
    fn lcore_counters_by_declared_name() {
        let dir = tempfile::tempdir().unwrap();
        let seg = shm::Segment::open_or_create(dir.path().join("seg")).unwrap();
        let names = [c::LCORE_RX_PACKETS, c::LCORE_BUSY_NS, "drop_rx_ring_full", "drop_ipv4_bad_checksum", "fwd_drop_no_backend", "handed_over"];
        let init = shm::DataplaneInit { lcores: 2, counter_names: &names, gauge_mask: 0 };
        let mut dp = seg.dataplane(&init).unwrap();
        let (l0, l1) = (dp.take_lcore(0).unwrap(), dp.take_lcore(1).unwrap());
        for (i, v) in [10, 2_000_000_000, 3, 0, 4, 5].into_iter().enumerate() {
            l0.set(i, v);
            l1.set(i, v * 100);
        }
        let out = read(&seg, &mut shm::CounterTotals::new(), &[], &[]);
        assert_eq!(out.lcores.len(), 2);
        let l = &out.lcores[1];
        assert_eq!((l.lcore, l.rx_packets, l.busy_ns, l.rx_bytes), (1, 1000, 200_000_000_000, 0));
        assert_eq!(l.drops, [("ipv4_bad_checksum".to_owned(), 0), ("rx_ring_full".to_owned(), 300)].into_iter().collect());
        assert_eq!(l.forward_drops, [("no_backend".to_owned(), 400)].into_iter().collect());
        assert_eq!(out.lcores[0].drops.get("rx_ring_full"), Some(&3));
    }
}
