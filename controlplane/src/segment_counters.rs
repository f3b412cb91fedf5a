//! Summing the dataplane's per-lcore counter blocks (through `fulcrum-shm`'s
//! snapshot, rebased across dataplane restarts so totals never go backwards).

use crate::publish::{BackendCounters, Counters, VipCounters};
use fulcrum_shm as shm;
use fulcrum_shm as c;

/// VIP drop counters and the reason label each is reported under.
const DROPS: [(usize, &str); 8] = [
    (c::VIP_DROP_LIMIT, "max_connections"),
    (c::VIP_DROP_RATE, "new_conn_rate"),
    (c::VIP_DROP_CLIENT_RATE, "client_rate"),
    (c::VIP_DROP_BANDWIDTH, "bandwidth"),
    (c::VIP_DROP_NO_BACKEND, "no_backend"),
    (c::VIP_DROP_CONNECT_FAILED, "connect_failed"),
    (c::VIP_DROP_IDLE, "idle_timeout"),
    (c::VIP_DROPS, "forward"),
];

pub fn read(seg: &shm::Segment, totals: &mut shm::CounterTotals, vip_ids: &[u16], slots: &[u32]) -> Counters {
    let Ok(raw) = seg.snapshot() else { return Counters::default() };
    let s = totals.update(&raw);
    let mut out = Counters::default();
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
