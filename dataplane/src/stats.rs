//! The stats file: every lcore's counters, the proxy engines' per-VIP and
//! per-backend counters summed over lcores, and the pool's occupancy, as JSON
//! rewritten atomically (write then rename) so readers never see half a file.

use crate::counters::{LcoreCounters, LcoreSnapshot};
use crate::dpdk::Mempool;
use fulcrum_proxy::{Engine, VipSnapshot};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

/// What one lcore's engine publishes every few hundred milliseconds.
pub struct EngineReport {
    pub vips: Vec<VipSnapshot>,
    pub connections: usize,
    pub sockets: usize,
    pub buffered_bytes: usize,
}

impl EngineReport {
    pub fn of(engine: &Engine) -> EngineReport {
        EngineReport {
            vips: engine.snapshot(),
            connections: engine.connections(),
            sockets: engine.socket_count(),
            buffered_bytes: engine.buffered_bytes(),
        }
    }
}

#[derive(Serialize)]
pub struct Stats {
    pub lcores: Vec<LcoreSnapshot>,
    pub mbufs_in_use: u32,
    pub mbufs_total: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Value>,
}

impl Stats {
    pub fn collect(lcores: &[(u32, LcoreCounters)], pool: &Mempool, engines: &[Option<EngineReport>]) -> Stats {
        let reports: Vec<&EngineReport> = engines.iter().flatten().collect();
        let proxy = (!reports.is_empty()).then(|| {
            json!({
                "connections": reports.iter().map(|r| r.connections).sum::<usize>(),
                "sockets": reports.iter().map(|r| r.sockets).sum::<usize>(),
                "buffered_bytes": reports.iter().map(|r| r.buffered_bytes).sum::<usize>(),
            })
        });
        Stats {
            lcores: lcores.iter().map(|(id, c)| c.snapshot(*id)).collect(),
            mbufs_in_use: pool.in_use(),
            mbufs_total: pool.capacity(),
            vips: sum_vips(&reports),
            proxy,
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)
    }
}

/// Per-VIP and per-backend counters summed over the lcores' reports (every
/// engine has the same VIPs and backends, in the same order).
fn sum_vips(reports: &[&EngineReport]) -> Vec<Value> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    first
        .vips
        .iter()
        .enumerate()
        .map(|(v, vip)| {
            let all: Vec<&VipSnapshot> = reports.iter().filter_map(|r| r.vips.get(v)).collect();
            let sum = |f: fn(&VipSnapshot) -> u64| all.iter().map(|s| f(s)).sum::<u64>();
            let backends: Vec<Value> = vip
                .backends
                .iter()
                .enumerate()
                .map(|(b, backend)| {
                    let each: Vec<_> = all.iter().filter_map(|s| s.backends.get(b)).map(|b| b.counters).collect();
                    let bsum = |f: fn(&fulcrum_proxy::BackendCounters) -> u64| each.iter().map(f).sum::<u64>();
                    json!({
                        "address": backend.addr.to_string(),
                        "port": backend.port,
                        "weight": backend.weight,
                        "attempts": bsum(|c| c.attempts),
                        "opened": bsum(|c| c.opened),
                        "active": bsum(|c| c.active),
                        "connect_failures": bsum(|c| c.connect_failures),
                        "resets": bsum(|c| c.resets),
                        "bytes_to_backend": bsum(|c| c.bytes_to_backend),
                        "bytes_from_backend": bsum(|c| c.bytes_from_backend),
                    })
                })
                .collect();
            json!({
                "address": vip.addr.to_string(),
                "port": vip.port,
                "accepted": sum(|s| s.counters.accepted),
                "active": sum(|s| s.counters.active),
                "bytes_from_clients": sum(|s| s.counters.bytes_from_clients),
                "bytes_to_clients": sum(|s| s.counters.bytes_to_clients),
                "client_resets": sum(|s| s.counters.client_resets),
                "backend_resets": sum(|s| s.counters.backend_resets),
                "drop_limit": sum(|s| s.counters.drop_limit),
                "drop_no_backend": sum(|s| s.counters.drop_no_backend),
                "drop_connect_failed": sum(|s| s.counters.drop_connect_failed),
                "drop_no_port": sum(|s| s.counters.drop_no_port),
                "drop_idle_timeout": sum(|s| s.counters.drop_idle_timeout),
                "backends": backends,
            })
        })
        .collect()
}
