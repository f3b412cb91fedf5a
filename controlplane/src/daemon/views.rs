//! What the reading requests answer (`status`, `vip list`, `backend list`,
//! `limit show`, `stats`, `health`) and the Prometheus view.

use super::Daemon;
use crate::checks::{self, HealthState};
use crate::metrics;
use crate::proto::{
    BackendEntry, BackendInfo, BackendStats, ControlplaneStatus, DataplaneState, DataplaneStatus, GenerationStatus,
    HealthInfo, HealthName, LimitsInfo, StatusReply, SynStats, VipInfo, VipKey, VipPanicInfo, VipStats,
};
use crate::publish::VipCounters;
use fulcrum_model::{BackendState, Mode, Vip};
use std::collections::BTreeMap;

fn health_name(s: Option<&checks::Status>) -> HealthName {
    match s.map(|s| s.state) {
        Some(HealthState::Up) => HealthName::Up,
        Some(HealthState::Down) => HealthName::Down,
        Some(HealthState::Unknown) => HealthName::Unknown,
        None => HealthName::Unchecked,
    }
}

/// The drop reasons that apply to the VIP's mode: the proxy's reasons, or
/// `forward` for a forwarding VIP.
fn drops_for(mode: Mode, c: &VipCounters) -> BTreeMap<String, u64> {
    c.drops.iter().filter(|(k, _)| (k.as_str() == "forward") == mode.is_forwarding()).map(|(k, n)| (k.clone(), *n)).collect()
}

impl Daemon {
    fn vip_of(&self, k: Option<VipKey>) -> Result<Vec<&Vip>, String> {
        match k {
            Some(k) => Ok(vec![self
                .state
                .vip(k)
                .ok_or_else(|| format!("no VIP {k} (`fulcrumctl vip list` shows the VIPs)"))?]),
            None => Ok(self.state.vips.iter().collect()),
        }
    }

    fn checked(&self, v: &Vip, slot: Option<u32>) -> Option<&checks::Status> {
        if v.health.is_some() {
            slot.and_then(|s| self.health.get(&s))
        } else {
            None
        }
    }

    pub(super) fn status(&mut self) -> StatusReply {
        let dp = &self.dp;
        let v = &dp.view;
        let state = if !v.present {
            DataplaneState::NeverSeen
        } else if dp.alive {
            DataplaneState::Up
        } else if v.beat == 0 {
            DataplaneState::Stopped
        } else {
            DataplaneState::Down
        };
        StatusReply {
            controlplane: ControlplaneStatus {
                alive: true,
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().as_secs_f64(),
                config: self.config_path.display().to_string(),
                state_file: self.cp.state_file.display().to_string(),
                shm: self.cp.shm.display().to_string(),
                socket: self.cp.socket.display().to_string(),
                prometheus: self.prometheus_bound.clone(),
                last_reload: self.last_reload.clone(),
                publish_error: self.publish_error.clone(),
                clients: self.inputs.snapshot(),
            },
            dataplane: DataplaneStatus {
                alive: dp.alive,
                state,
                pid: v.present.then_some(v.pid),
                epoch: v.epoch,
                uptime_secs: v.uptime_secs,
                heartbeat_age_ms: dp.beat_changed.map(|t| t.elapsed().as_millis() as u64),
                restarts_seen: dp.restarts,
                rejected_generations: v.rejected_generations,
                last_rejection: v.last_rejection.clone(),
                segment: v.segment.clone(),
                facts: dp.report.as_ref().map(|r| r.facts.clone()),
            },
            generation: GenerationStatus {
                published: self.published_gen,
                applied: self.applied_generation_of(v),
                refused: dp.report.as_ref().map(|r| r.refused.clone()).unwrap_or_default(),
            },
            vips: self.state.vips.len(),
            backends: self.state.vips.iter().map(|v| v.backends.len()).sum(),
            vips_in_panic: self
                .state
                .vips
                .iter()
                .filter(|v| v.health.is_some())
                .filter_map(|v| {
                    let k = VipKey::of(v);
                    let p = self.panics.get(&self.state.vip_id(k)?)?;
                    Some(VipPanicInfo {
                        vip: k,
                        since_secs: p.since_secs?,
                        ejections_skipped: p.ejections_skipped,
                        backends: p.backends,
                        up: p.up,
                        threshold_pct: p.threshold_pct,
                    })
                })
                .collect(),
            bgp: self.bgp_status(),
        }
    }

    pub(super) fn vip_list(&self) -> Vec<VipInfo> {
        self.state
            .vips
            .iter()
            .map(|v| {
                let k = VipKey::of(v);
                VipInfo {
                    vip: k,
                    id: self.state.vip_id(k),
                    mode: v.mode,
                    proto: v.proto,
                    tunnel: v.tunnel,
                    affinity: v.affinity,
                    max_connections: v.max_connections,
                    connect_timeout_ms: v.connect_timeout_ms,
                    connect_tries: v.connect_tries,
                    idle_timeout_ms: v.idle_timeout_ms,
                    proxy_protocol: v.proxy_protocol,
                    table_size: v.table_size,
                    new_conn_rate: v.new_conn_rate,
                    client_rate: v.client_rate,
                    bandwidth_bytes_per_sec: v.bandwidth_bytes_per_sec,
                    health: v.health.clone(),
                    backends: v
                        .backends
                        .iter()
                        .map(|b| BackendEntry {
                            backend: b.endpoint(),
                            slot: self.state.slot(k, b.endpoint()),
                            weight: b.weight,
                            mac: b.mac,
                            drain: b.state == BackendState::Drain,
                        })
                        .collect(),
                    table: self.table_info(k, self.state.vip_id(k)),
                    announced: self.vip_announced(k),
                }
            })
            .collect()
    }

    pub(super) fn backend_list(&mut self, vip: Option<VipKey>) -> Result<Vec<BackendInfo>, String> {
        self.vip_of(vip)?;
        let counters = self.counters_now();
        let mut out = Vec::new();
        for v in self.vip_of(vip)? {
            let k = VipKey::of(v);
            for b in &v.backends {
                let slot = self.state.slot(k, b.endpoint());
                out.push(BackendInfo {
                    vip: k,
                    backend: b.endpoint(),
                    slot,
                    weight: b.weight,
                    mac: b.mac,
                    drain: b.state == BackendState::Drain,
                    health: health_name(self.checked(v, slot)),
                    state: slot.map(|s| self.backend_state(v, b, s)),
                    connections_active: slot
                        .and_then(|s| counters.backends.get(&s))
                        .map_or(0, |c| c.connections_active),
                });
            }
        }
        Ok(out)
    }

    pub(super) fn limits(&self, vip: Option<VipKey>) -> Result<Vec<LimitsInfo>, String> {
        Ok(self
            .vip_of(vip)?
            .into_iter()
            .map(|v| LimitsInfo {
                vip: VipKey::of(v),
                max_connections: v.max_connections,
                new_conn_rate: v.new_conn_rate,
                client_rate: v.client_rate,
                bandwidth_bytes_per_sec: v.bandwidth_bytes_per_sec,
            })
            .collect())
    }

    pub(super) fn stats(&mut self) -> crate::proto::StatsReply {
        let counters = self.counters_now();
        let mut out = Vec::new();
        for v in &self.state.vips {
            let k = VipKey::of(v);
            let id = self.state.vip_id(k);
            let c = id.and_then(|i| counters.vips.get(&i)).cloned().unwrap_or_default();
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let slot = self.state.slot(k, b.endpoint());
                    let bc = slot.and_then(|s| counters.backends.get(&s)).cloned().unwrap_or_default();
                    BackendStats {
                        backend: b.endpoint(),
                        slot,
                        connections_active: bc.connections_active,
                        connections_total: bc.connections_total,
                        new_per_sec: slot
                            .and_then(|s| self.rate(|c| c.backends.get(&s).map(|x| x.connections_total)))
                            .unwrap_or(0.0),
                        connect_failures: bc.connect_failures,
                        packets: bc.packets,
                        bytes_to: bc.bytes_to,
                        bytes_from: bc.bytes_from,
                    }
                })
                .collect();
            out.push(VipStats {
                vip: k,
                id,
                mode: v.mode,
                proto: v.proto,
                connections_active: c.connections_active,
                connections_total: c.connections_total,
                new_per_sec: id
                    .and_then(|i| self.rate(|c| c.vips.get(&i).map(|x| x.connections_total)))
                    .unwrap_or(0.0),
                packets_in: c.packets_in,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                drops: drops_for(v.mode, &c),
                syn: (!v.mode.is_forwarding()).then(|| {
                    let since = self.flood_since(id);
                    SynStats {
                        syns: c.syns,
                        cookies_sent: c.cookies_sent,
                        cookies_validated: c.cookies_validated,
                        cookies_rejected: c.cookies_rejected,
                        half_open: c.half_open,
                        flood: c.flood_lcores > 0,
                        flood_lcores: c.flood_lcores,
                        flood_since_unix: since.map(|s| s.0),
                        flood_for_secs: since.map(|s| s.1),
                    }
                }),
                backends,
            });
        }
        crate::proto::StatsReply { dataplane_alive: self.dp.alive, vips: out, lcores: counters.lcores }
    }

    pub(super) fn health_list(&self) -> Vec<HealthInfo> {
        let mut out = Vec::new();
        for v in &self.state.vips {
            let k = VipKey::of(v);
            let panic = if v.health.is_some() { self.state.vip_id(k).and_then(|id| self.panics.get(&id)) } else { None };
            for b in &v.backends {
                let slot = self.state.slot(k, b.endpoint());
                let h = self.checked(v, slot);
                out.push(HealthInfo {
                    vip: k,
                    backend: b.endpoint(),
                    slot,
                    check: v.health.as_ref().and_then(|h| checks::spec_of(Some(h))).map(|s| s.kind.name().to_owned()),
                    state: health_name(h),
                    published: slot.map(|s| self.backend_state(v, b, s)),
                    since_secs: h.and_then(|h| h.since_secs),
                    last_error: h.and_then(|h| h.last_error.clone()),
                    latency_last_ms: h.and_then(|h| h.latency_last_ms),
                    latency_p50_ms: h.and_then(|h| h.latency_p50_ms),
                    latency_p99_ms: h.and_then(|h| h.latency_p99_ms),
                    ejections_skipped: h.map_or(0, |h| h.ejections_skipped),
                    vip_panic: panic.is_some_and(|p| p.since_secs.is_some()),
                    vip_panic_since_secs: panic.and_then(|p| p.since_secs),
                    vip_ejections_skipped: panic.map_or(0, |p| p.ejections_skipped),
                });
            }
        }
        out
    }

    /// What the Prometheus endpoint shows.
    pub(super) fn metrics_view(&mut self) -> metrics::View {
        let counters = self.counters_now();
        let mut vips = Vec::new();
        for v in &self.state.vips {
            let k = VipKey::of(v);
            let id = self.state.vip_id(k);
            let panic = if v.health.is_some() {
                Some(id.and_then(|i| self.panics.get(&i)).is_some_and(|p| p.since_secs.is_some()))
            } else {
                None
            };
            let mut c = id.and_then(|i| counters.vips.get(&i)).cloned().unwrap_or_default();
            c.drops = drops_for(v.mode, &c);
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let slot = self.state.slot(k, b.endpoint());
                    metrics::BackendView {
                        addr: Some(b.endpoint()),
                        counters: slot.and_then(|s| counters.backends.get(&s)).cloned().unwrap_or_default(),
                        up: slot.is_some_and(|s| self.backend_state(v, b, s) == BackendState::Up),
                        health: self.checked(v, slot).cloned(),
                    }
                })
                .collect();
            vips.push(metrics::VipView {
                name: k.to_string(),
                mode: v.mode.name(),
                forwarding: v.mode.is_forwarding(),
                counters: c,
                backends,
                panic,
                flood_since_unix: self.flood_since(id).map(|s| s.0),
            });
        }
        metrics::View {
            vips,
            dataplane_up: self.dp.alive,
            generation: self.published_gen,
            tables: self.table_views(),
            bgp: self.bgp_metrics(),
            lcores: counters.lcores,
        }
    }
}
