//! Requests, and every change: applied to a copy of the desired state,
//! validated (the model's rules, and the dataplane's facts for what
//! changed), persisted, then published. On any error nothing changes.

use super::{unix_now, Daemon};
use crate::config::{self, Config};
use crate::proto::{ChangeReply, LimitChange, ReloadOutcome, ReloadReply, Reply, Request, VipKey, VipOptions};
use crate::state::{self, State};
use fulcrum_model::{defaults, Backend, BackendState, Facts, Mac, Rate, Vip, MAX_CONNECTIONS};
use std::net::SocketAddrV4;

fn no_vip(k: VipKey) -> String {
    format!("no VIP {k} (`fulcrumctl vip list` shows the VIPs)")
}

fn no_backend(v: VipKey, b: SocketAddrV4) -> String {
    format!("VIP {v} has no backend {b} (`fulcrumctl backend list {v}` shows its backends)")
}

fn find(vips: &mut [Vip], k: VipKey) -> Result<&mut Vip, String> {
    vips.iter_mut().find(|v| k.is(v)).ok_or_else(|| no_vip(k))
}

/// Checks every VIP of `new` that is not in `old` unchanged: its own fields
/// (the model's [`Vip::validate`]), that no backend is written `down` (what
/// health checks publish), and, when the dataplane has published its facts,
/// [`Vip::validate_for`] them, so that what the dataplane would refuse is
/// refused up front. VIPs unchanged are not checked again: one the dataplane
/// refuses (facts published after it was accepted) never blocks the others;
/// a change to that VIP itself is refused until it is fixed (or deleted).
pub fn check_changed(old: &[Vip], new: &[Vip], facts: Option<&Facts>) -> Result<(), String> {
    for v in new.iter().filter(|v| !old.contains(v)) {
        let at = format!("VIP {}", VipKey::of(v));
        v.validate().map_err(|e| format!("{at}: {e}"))?;
        if let Some(b) = v.backends.iter().find(|b| b.state == BackendState::Down) {
            return Err(format!(
                "{at}: backend {}: state \"down\" is what health checks publish; an operator sets up or drain",
                b.endpoint()
            ));
        }
        if let Some(f) = facts {
            v.validate_for(f)
                .map_err(|e| format!("{at}: {e} (the running dataplane would refuse it)"))?;
        }
    }
    Ok(())
}

impl Daemon {
    /// Answers one request.
    pub fn handle(&mut self, req: Request) -> Result<Reply, String> {
        match req {
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::VipList => Ok(Reply::Vips(self.vip_list())),
            Request::BackendList { vip } => self.backend_list(vip).map(Reply::Backends),
            Request::LimitShow { vip } => self.limits(vip).map(Reply::Limits),
            Request::Stats => Ok(Reply::Stats(self.stats())),
            Request::Health => Ok(Reply::Health(self.health_list())),
            Request::Reload => self.reload().map(Reply::Reloaded),
            Request::VipAdd { vip, options } => self.change(|vips| vip_add(vips, vip, *options)),
            Request::VipDel { vip } => self.change(|vips| {
                let i = vips.iter().position(|v| vip.is(v)).ok_or_else(|| no_vip(vip))?;
                vips.remove(i);
                Ok(())
            }),
            Request::BackendAdd { vip, backend, weight, mac } => {
                self.change(|vips| backend_add(find(vips, vip)?, vip, backend, weight, mac))
            }
            Request::BackendDel { vip, backend } => self.change(|vips| {
                let v = find(vips, vip)?;
                let i = v.backends.iter().position(|b| b.endpoint() == backend).ok_or_else(|| no_backend(vip, backend))?;
                v.backends.remove(i);
                Ok(())
            }),
            Request::BackendWeight { vip, backend, weight } => self.backend_change(vip, backend, |b| b.weight = weight),
            Request::BackendDrain { vip, backend } => {
                self.backend_change(vip, backend, |b| b.state = BackendState::Drain)
            }
            Request::BackendUndrain { vip, backend } => {
                self.backend_change(vip, backend, |b| b.state = BackendState::Up)
            }
            Request::LimitSet { vip, change } => self.change(|vips| limit_set(find(vips, vip)?, vip, change)),
            Request::Rotation { rotation } => self.set_rotation(rotation).map(Reply::Rotation),
        }
    }

    fn backend_change(&mut self, vip: VipKey, backend: SocketAddrV4, f: impl FnOnce(&mut Backend)) -> Result<Reply, String> {
        self.change(|vips| {
            let b = find(vips, vip)?.backend_mut(backend).ok_or_else(|| no_backend(vip, backend))?;
            f(b);
            Ok(())
        })
    }

    /// Applies a change to a copy of the desired configuration, validates
    /// it, persists it and publishes; on any error nothing changes.
    fn change(&mut self, f: impl FnOnce(&mut Vec<Vip>) -> Result<(), String>) -> Result<Reply, String> {
        let mut next = self.state.clone();
        f(&mut next.vips)?;
        self.commit(next)?;
        Ok(Reply::Changed(ChangeReply { generation: self.published_gen }))
    }

    fn commit(&mut self, mut next: State) -> Result<(), String> {
        self.dp.report = self.seg.report();
        let facts = self.dp.report.as_ref().map(|r| &r.facts);
        check_changed(&self.state.vips, &next.vips, facts)?;
        fulcrum_model::validate_set(&next.vips).map_err(|e| e.to_string())?;
        let (max_vips, max_slots) = self.seg.capacity();
        next.assign_ids(max_vips, max_slots)?;
        next.save(&self.cp.state_file).map_err(|e| format!("cannot write the state file, nothing changed: {e}"))?;
        self.state = next;
        self.update_health_targets();
        self.publish(false);
        Ok(())
    }

    /// Re-reads the TOML and merges it (see [`state::merge`]).
    pub(super) fn reload(&mut self) -> Result<ReloadReply, String> {
        let result = (|| -> Result<ReloadReply, String> {
            let path = self.config_path.clone();
            let config = Config::load(&path).map_err(|e| e.to_string())?;
            let merged = state::merge(&self.state.vips, &self.state.toml_base, &config.vips);
            config::check_vips(&merged)
                .map_err(|e| format!("{}: merged with the current configuration: {e}", path.display()))?;
            let mut next = self.state.clone();
            next.vips = merged;
            next.toml_base = config.vips;
            let before = self.published_gen;
            self.commit(next).map_err(|e| format!("{}: {e}", path.display()))?;
            let c = &config.controlplane;
            if c.socket != self.cp.socket
                || c.shm != self.cp.shm
                || c.state_file != self.cp.state_file
                || c.prometheus != self.cp.prometheus
            {
                log!("reload: changes to [controlplane] take effect at the next start");
            }
            Ok(ReloadReply { generation: self.published_gen, changed: self.published_gen != before })
        })();
        match &result {
            Ok(r) => {
                log!("reload: {} applied: generation {}, changed {}", self.config_path.display(), r.generation, r.changed);
                self.last_reload = Some(ReloadOutcome { at: unix_now(), ok: true, error: None });
            }
            Err(e) => {
                log!("reload failed, keeping the current configuration: {e}");
                self.last_reload = Some(ReloadOutcome { at: unix_now(), ok: false, error: Some(e.clone()) });
            }
        }
        result
    }
}

fn vip_add(vips: &mut Vec<Vip>, key: VipKey, o: VipOptions) -> Result<(), String> {
    if vips.iter().any(|v| key.is(v)) {
        return Err(format!("VIP {key} already exists"));
    }
    let mut v = Vip::new(key.address, key.port, o.mode.unwrap_or(fulcrum_model::Mode::Proxy));
    v.proto = key.proto;
    v.tunnel = o.tunnel;
    if let Some(x) = o.affinity {
        v.affinity = x;
    }
    if let Some(x) = o.max_connections {
        v.max_connections = x;
    }
    if let Some(x) = o.connect_timeout_ms {
        v.connect_timeout_ms = x;
    }
    if let Some(x) = o.connect_tries {
        v.connect_tries = x;
    }
    if let Some(x) = o.idle_timeout_ms {
        v.idle_timeout_ms = x;
    }
    if let Some(x) = o.proxy_protocol {
        v.proxy_protocol = x;
    }
    if let Some(x) = o.table_size {
        v.table_size = x;
    }
    v.health = o.health;
    vips.push(v);
    Ok(())
}

fn backend_add(v: &mut Vip, key: VipKey, backend: SocketAddrV4, weight: Option<u32>, mac: Option<Mac>) -> Result<(), String> {
    if v.backend(backend).is_some() {
        return Err(format!("VIP {key} already has backend {backend}"));
    }
    let mut b = Backend::new(*backend.ip(), backend.port(), weight.unwrap_or(defaults::WEIGHT));
    b.mac = mac;
    v.backends.push(b);
    Ok(())
}

fn limit_set(v: &mut Vip, key: VipKey, c: LimitChange) -> Result<(), String> {
    let set_rate = |cur: Option<Rate>, rate: Option<u32>, burst: Option<u32>, name: &str, bname: &str| -> Result<Option<Rate>, String> {
        if rate.is_none() && burst.is_none() {
            return Ok(cur);
        }
        if rate == Some(0) {
            return Err(format!("{name}: must be at least 1 (--clear {name} removes the limit)"));
        }
        if burst == Some(0) {
            return Err(format!("{bname}: must be at least 1"));
        }
        let per_sec = rate
            .or(cur.map(|r| r.per_sec))
            .ok_or_else(|| format!("{bname} needs a rate: set --{name} too (VIP {key} has none)"))?;
        let burst = burst.or(cur.map(|r| r.burst)).unwrap_or(per_sec.max(1));
        Ok(Some(Rate { per_sec, burst }))
    };
    let ncr = set_rate(v.new_conn_rate, c.new_conn_rate, c.burst, "new-conn-rate", "burst")?;
    let cr = set_rate(v.client_rate, c.client_rate, c.client_burst, "client-rate", "client-burst")?;
    v.new_conn_rate = ncr;
    v.client_rate = cr;
    if let Some(b) = c.bandwidth {
        if b == 0 {
            return Err("bandwidth: must be at least 1 byte/s (--clear bandwidth removes the limit)".into());
        }
        v.bandwidth_bytes_per_sec = Some(b);
    }
    if let Some(m) = c.max_connections {
        if m == 0 || m > MAX_CONNECTIONS {
            return Err(format!("max-connections: {m} must be from 1 to {MAX_CONNECTIONS}"));
        }
        v.max_connections = m;
    }
    for name in &c.clear {
        match name.as_str() {
            "new-conn-rate" | "new_conn_rate" => v.new_conn_rate = None,
            "client-rate" | "client_rate" => v.client_rate = None,
            "bandwidth" => v.bandwidth_bytes_per_sec = None,
            "max-connections" | "max_connections" => v.max_connections = defaults::MAX_CONNECTIONS,
            other => {
                return Err(format!(
                    "--clear {other:?}: not a limit (new-conn-rate, client-rate, bandwidth, max-connections)"
                ))
            }
        }
    }
    Ok(())
}
