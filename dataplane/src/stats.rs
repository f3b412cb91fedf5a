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
    /// The engine's clock when this was taken (its `poll` clock: time since
    /// its worker loop started), against which the VIPs' `flood_since` is
    /// measured.
    pub now: smoltcp::time::Instant,
    pub vips: Vec<VipSnapshot>,
    pub counters: fulcrum_proxy::EngineCounters,
    pub connections: usize,
    pub sockets: usize,
    pub buffered_bytes: usize,
}

impl EngineReport {
    /// `now`: the engine's clock now.
    pub fn of(engine: &Engine, now: smoltcp::time::Instant) -> EngineReport {
        EngineReport {
            now,
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

/// Seconds (millisecond precision) an engine has been in flood mode for a
/// VIP, from its own clock; `None` when it is not.
fn flood_secs(engine: &EngineReport, vip: &VipSnapshot) -> Option<f64> {
    let since = vip.flood_since?;
    let micros = (engine.now.total_micros() - since.total_micros()).max(0);
    Some((micros / 1000) as f64 / 1000.0)
}

/// Proxy VIPs and backends summed over engines by (address, port): engines
/// list the same VIPs, but a removed one lingers (draining) only where it
/// still has connections. SYN-flood fields: the counters summed (`half_open`
/// too, a gauge of each engine's), `flood_lcores` the engines in flood mode
/// for the VIP, `flood_since_s` how long the earliest of them has been (each
/// engine measured on its own clock), `null` when none is.
fn sum_proxy_vips(engines: &[&EngineReport]) -> Vec<Value> {
    type Backends = BTreeMap<(Ipv4Addr, u16), Map<String, Value>>;
    let mut vips: BTreeMap<(Ipv4Addr, u16), (Map<String, Value>, Backends)> = BTreeMap::new();
    for (engine, vip) in engines.iter().flat_map(|e| e.vips.iter().map(move |v| (*e, v))) {
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
                ("syns", c.syns),
                ("cookies_sent", c.cookies_sent),
                ("cookies_validated", c.cookies_validated),
                ("cookies_rejected", c.cookies_rejected),
                ("half_open", c.half_open),
                ("drop_half_open_timeout", c.drop_half_open_timeout),
            ],
        );
        let flood = flood_secs(engine, vip);
        add(v, &[("flood_lcores", u64::from(flood.is_some()))]);
        let earliest = match (v.get("flood_since_s").and_then(Value::as_f64), flood) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        v.insert("flood_since_s".into(), json!(earliest));
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
                ("syn_retransmit_admitted", c.syn_retransmit_admitted),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fulcrum_model::BackendState;
    use fulcrum_proxy::{BackendSnapshot, EngineCounters, VipCounters};
    use smoltcp::time::Instant;

    /// One engine with one VIP, 198.18.1.1:80, and one backend.
    pub(crate) fn engine(now_ms: i64, counters: VipCounters, flood_since_ms: Option<i64>) -> EngineReport {
        let backend = BackendSnapshot {
            addr: Ipv4Addr::new(198, 18, 0, 21),
            port: 8080,
            weight: 1,
            state: BackendState::Up,
            removed: false,
            counters: BackendCounters { attempts: 3, ..Default::default() },
        };
        EngineReport {
            now: Instant::from_millis(now_ms),
            vips: vec![VipSnapshot {
                addr: Ipv4Addr::new(198, 18, 1, 1),
                port: 80,
                removed: false,
                counters,
                flood_since: flood_since_ms.map(Instant::from_millis),
                backends: vec![backend],
            }],
            counters: EngineCounters::default(),
            connections: 0,
            sockets: 0,
            buffered_bytes: 0,
        }
    }

    pub(crate) fn flood_counters(scale: u64) -> VipCounters {
        VipCounters {
            accepted: scale,
            syns: 1000 * scale,
            cookies_sent: 900 * scale,
            cookies_validated: 10 * scale,
            cookies_rejected: 2 * scale,
            half_open: 64 * scale,
            drop_half_open_timeout: 5 * scale,
            ..Default::default()
        }
    }

    /// Through JSON, as the stats file has it.
    fn vips_json(engines: &[&EngineReport]) -> Value {
        serde_json::from_str(&serde_json::to_string(&sum_proxy_vips(engines)).unwrap()).unwrap()
    }

    #[test]
    fn syn_flood_counters_are_summed_and_flood_mode_reported() {
        // Engine clocks have different origins: 23.5 s in flood on the first,
        // 4 s on the second; the earliest wins.
        let a = engine(100_000, flood_counters(1), Some(76_500));
        let b = engine(30_000, flood_counters(2), Some(26_000));
        let v = &vips_json(&[&a, &b])[0];
        assert_eq!(v["address"], "198.18.1.1");
        for (k, n) in [
            ("accepted", 3),
            ("syns", 3000),
            ("cookies_sent", 2700),
            ("cookies_validated", 30),
            ("cookies_rejected", 6),
            ("half_open", 192),
            ("drop_half_open_timeout", 15),
            ("flood_lcores", 2),
        ] {
            assert_eq!(v[k].as_u64(), Some(n), "{k} in {v}");
        }
        assert_eq!(v["flood_since_s"].as_f64(), Some(23.5), "{v}");
        assert_eq!(v["backends"][0]["attempts"].as_u64(), Some(6));

        // One engine in flood mode, in either order.
        let off = engine(50_000, flood_counters(1), None);
        for engines in [[&a, &off], [&off, &a]] {
            let v = &vips_json(&engines)[0];
            assert_eq!(v["flood_lcores"].as_u64(), Some(1), "{v}");
            assert_eq!(v["flood_since_s"].as_f64(), Some(23.5), "{v}");
        }

        // Off everywhere: zero lcores, null since.
        let v = &vips_json(&[&off, &off])[0];
        assert_eq!(v["flood_lcores"].as_u64(), Some(0), "{v}");
        assert!(v["flood_since_s"].is_null(), "{v}");
        assert_eq!(v["syns"].as_u64(), Some(2000));
    }
}
