//! The stats file: every lcore's counters, the services' per-VIP and
//! per-backend counters summed over lcores, and the pool's occupancy, as JSON
//! rewritten atomically (write then rename) so readers never see half a file.

use crate::counters::{LcoreCounters, LcoreSnapshot};
use crate::dpdk::Mempool;
use fulcrum_forward::{Counters as ForwardCounters, DropReason as ForwardDrop, Forwarder, VipStats};
use fulcrum_proxy::{BackendCounters, Engine, VipSnapshot};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// What one lcore publishes every few hundred milliseconds.
pub struct LcoreReport {
    pub proxy: Option<EngineReport>,
    pub forward: Option<ForwardReport>,
}

/// One proxy engine's counters.
pub struct EngineReport {
    pub vips: Vec<VipSnapshot>,
    pub counters: fulcrum_proxy::EngineCounters,
    pub connections: usize,
    pub sockets: usize,
    pub buffered_bytes: usize,
}

impl EngineReport {
    pub fn of(engine: &Engine) -> EngineReport {
        EngineReport {
            vips: engine.snapshot(),
            counters: *engine.counters(),
            connections: engine.connections(),
            sockets: engine.socket_count(),
            buffered_bytes: engine.buffered_bytes(),
        }
    }
}

/// One forwarder's counters, with its installed VIPs'.
pub struct ForwardReport {
    pub counters: ForwardCounters,
    pub vips: Vec<VipStats>,
    pub conntrack_entries: usize,
    pub conntrack_capacity: usize,
}

impl ForwardReport {
    pub fn of(f: &Forwarder) -> ForwardReport {
        ForwardReport {
            counters: f.counters().clone(),
            vips: f.vip_stats().collect(),
            conntrack_entries: f.conntrack_len(),
            conntrack_capacity: f.conntrack_capacity(),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<Value>,
}

impl Stats {
    pub fn collect(
        lcores: &[(u32, LcoreCounters)],
        pool: &Mempool,
        reports: &[Option<LcoreReport>],
    ) -> Stats {
        let engines: Vec<&EngineReport> = reports.iter().flatten().filter_map(|r| r.proxy.as_ref()).collect();
        let forwarders: Vec<&ForwardReport> = reports.iter().flatten().filter_map(|r| r.forward.as_ref()).collect();
        let proxy = (!engines.is_empty()).then(|| {
            json!({
                "connections": engines.iter().map(|r| r.connections).sum::<usize>(),
                "sockets": engines.iter().map(|r| r.sockets).sum::<usize>(),
                "buffered_bytes": engines.iter().map(|r| r.buffered_bytes).sum::<usize>(),
                "frames_in": engines.iter().map(|r| r.counters.frames_in).sum::<u64>(),
                "frames_not_ours": engines.iter().map(|r| r.counters.frames_not_ours).sum::<u64>(),
                "unknown_flow": engines.iter().map(|r| r.counters.unknown_flow).sum::<u64>(),
                "drop_bad_flags": engines.iter().map(|r| r.counters.drop_bad_flags).sum::<u64>(),
                "drop_bad_checksum": engines.iter().map(|r| r.counters.drop_bad_checksum).sum::<u64>(),
                // Which lcore owns what: each connection lives on one engine.
                "per_lcore": lcores.iter().zip(reports).filter_map(|((id, _), r)| {
                    let e = r.as_ref()?.proxy.as_ref()?;
                    Some(json!({
                        "lcore": id,
                        "connections": e.connections,
                        "accepted": e.vips.iter().map(|v| v.counters.accepted).sum::<u64>(),
                        "frames_in": e.counters.frames_in,
                    }))
                }).collect::<Vec<_>>(),
            })
        });
        let mut vips = sum_proxy_vips(&engines);
        vips.extend(sum_forward_vips(&forwarders));
        Stats {
            lcores: lcores.iter().map(|(id, c)| c.snapshot(*id)).collect(),
            mbufs_in_use: pool.in_use(),
            mbufs_total: pool.capacity(),
            vips,
            proxy,
            forward: (!forwarders.is_empty()).then(|| sum_forwarders(&forwarders)),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)
    }
}

/// Adds `fields` into `into`, key by key.
fn add(into: &mut Map<String, Value>, fields: &[(&str, u64)]) {
    for (k, v) in fields {
        let old = into.get(*k).and_then(Value::as_u64).unwrap_or(0);
        into.insert((*k).to_owned(), json!(old + v));
    }
}

/// Proxy VIPs and backends summed over engines by (address, port): engines
/// list the same VIPs, but a removed one lingers (draining) only where it
/// still has connections.
fn sum_proxy_vips(engines: &[&EngineReport]) -> Vec<Value> {
    type Backends = BTreeMap<(Ipv4Addr, u16), Map<String, Value>>;
    let mut vips: BTreeMap<(Ipv4Addr, u16), (Map<String, Value>, Backends)> = BTreeMap::new();
    for vip in engines.iter().flat_map(|e| &e.vips) {
        let (v, backends) = vips.entry((vip.addr, vip.port)).or_default();
        let c = &vip.counters;
        v.insert("address".into(), json!(vip.addr.to_string()));
        v.insert("port".into(), json!(vip.port));
        v.insert("mode".into(), json!("proxy"));
        v.insert("removed".into(), json!(vip.removed));
        add(
            v,
            &[
                ("accepted", c.accepted),
                ("active", c.active),
                ("bytes_from_clients", c.bytes_from_clients),
                ("bytes_to_clients", c.bytes_to_clients),
                ("client_resets", c.client_resets),
                ("backend_resets", c.backend_resets),
                ("drop_limit", c.drop_limit),
                ("drop_rate", c.drop_rate),
                ("drop_client_rate", c.drop_client_rate),
                ("drop_no_backend", c.drop_no_backend),
                ("drop_connect_failed", c.drop_connect_failed),
                ("drop_no_port", c.drop_no_port),
                ("drop_idle_timeout", c.drop_idle_timeout),
                ("throttled_splices", c.throttled_splices),
                ("client_table_evictions", c.client_table_evictions),
            ],
        );
        for b in &vip.backends {
            let m = backends.entry((b.addr, b.port)).or_default();
            let c: &BackendCounters = &b.counters;
            m.insert("address".into(), json!(b.addr.to_string()));
            m.insert("port".into(), json!(b.port));
            m.insert("weight".into(), json!(b.weight));
            m.insert("state".into(), json!(format!("{:?}", b.state).to_lowercase()));
            m.insert("removed".into(), json!(b.removed));
            add(
                m,
                &[
                    ("attempts", c.attempts),
                    ("opened", c.opened),
                    ("active", c.active),
                    ("connect_failures", c.connect_failures),
                    ("resets", c.resets),
                    ("bytes_to_backend", c.bytes_to_backend),
                    ("bytes_from_backend", c.bytes_from_backend),
                ],
            );
        }
    }
    vips.into_values()
        .map(|(mut v, backends)| {
            v.insert("backends".into(), Value::Array(backends.into_values().map(Value::Object).collect()));
            Value::Object(v)
        })
        .collect()
}

/// Forwarding VIPs and their backends, summed over forwarders by VIP id.
fn sum_forward_vips(forwarders: &[&ForwardReport]) -> Vec<Value> {
    type Backends = BTreeMap<(Ipv4Addr, u16), Map<String, Value>>;
    let mut vips: BTreeMap<u16, (Map<String, Value>, Backends)> = BTreeMap::new();
    for vip in forwarders.iter().flat_map(|f| &f.vips) {
        let (v, backends) = vips.entry(vip.id).or_default();
        v.insert("address".into(), json!(vip.address.to_string()));
        v.insert("port".into(), json!(vip.port));
        v.insert("proto".into(), json!(vip.proto.name()));
        v.insert("mode".into(), json!(vip.mode.name()));
        let t = &vip.traffic;
        let drops = vip.drops.iter().sum();
        add(v, &[("packets", t.packets), ("bytes", t.bytes), ("new_flows", t.new_flows), ("drops", drops)]);
        for b in &vip.backends {
            let m = backends.entry((b.address, b.port)).or_default();
            m.insert("address".into(), json!(b.address.to_string()));
            m.insert("port".into(), json!(b.port));
            add(m, &[("packets", b.traffic.packets), ("bytes", b.traffic.bytes), ("new_flows", b.traffic.new_flows)]);
        }
    }
    vips.into_values()
        .map(|(mut v, backends)| {
            v.insert("backends".into(), Value::Array(backends.into_values().map(Value::Object).collect()));
            Value::Object(v)
        })
        .collect()
}

/// Forwarder-wide counters and drops by reason, summed over lcores.
fn sum_forwarders(forwarders: &[&ForwardReport]) -> Value {
    let mut m = Map::new();
    for f in forwarders {
        let c = &f.counters;
        add(
            &mut m,
            &[
                ("conntrack_entries", f.conntrack_entries as u64),
                ("conntrack_capacity", f.conntrack_capacity as u64),
                ("transmitted", c.transmitted),
                ("new_flows", c.new_flows),
                ("evictions", c.evictions),
                ("evictions_unconfirmed", c.evictions_unconfirmed),
                ("evictions_established", c.evictions_established),
                ("midstream_flows", c.midstream_flows),
                ("midstream_confirmed", c.midstream_confirmed),
                ("flows_not_tracked", c.flows_not_tracked),
                ("expired", c.expired),
                ("icmp_errors_forwarded", c.icmp_errors_forwarded),
                ("icmp_too_big_sent", c.icmp_too_big_sent),
                ("echo_replies", c.echo_replies),
                ("arp_requests", c.arp_requests),
                ("arp_learned", c.arp_learned),
            ],
        );
    }
    let mut drops = Map::new();
    for reason in ForwardDrop::ALL {
        let n: u64 = forwarders.iter().map(|f| f.counters.drops[reason.index()]).sum();
        drops.insert(reason.name().to_owned(), json!(n));
    }
    m.insert("drops".into(), Value::Object(drops));
    Value::Object(m)
}
