//! The generation: built from the desired state, backend states computed
//! from drains and health, published when it changes; the dataplane watched
//! (heartbeat, restarts, its report) and counters sampled.

use super::{unix_now, Daemon, FloodSeen, Sample, DATAPLANE_STALE};
use crate::checks::{self, HealthState};
use crate::proto::VipKey;
use crate::publish::Counters;
use fulcrum_model::{Backend, BackendState, Generation, Published, Vip};
use std::time::{Duration, Instant};

impl Daemon {
    pub(super) fn update_health_targets(&mut self) {
        let mut targets = Vec::new();
        for v in &self.state.vips {
            let Some(spec) = checks::spec_of(v.health.as_ref()) else { continue };
            let k = VipKey::of(v);
            let id = self.state.vip_id(k);
            for b in &v.backends {
                if let Some(slot) = self.state.slot(k, b.endpoint()) {
                    // Drained (or operator-down) backends do not count towards the threshold.
                    let vip = id.filter(|_| b.state == BackendState::Up);
                    targets.push(checks::Target { slot, addr: b.endpoint(), spec: spec.clone(), vip });
                }
            }
        }
        let live: std::collections::HashSet<u32> = targets.iter().map(|t| t.slot).collect();
        self.health.retain(|s, _| live.contains(s));
        self.checker.set_targets(targets);
    }

    /// The desired state with ids, slots and each backend's published state.
    pub(super) fn generation(&self) -> Generation {
        let vips = self
            .state
            .vips
            .iter()
            .filter_map(|v| {
                let k = VipKey::of(v);
                let id = self.state.vip_id(k)?;
                let mut vip = v.clone();
                let mut slots = Vec::with_capacity(v.backends.len());
                vip.backends = v
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let slot = self.state.slot(k, b.endpoint())?;
                        slots.push(slot);
                        Some(Backend { state: self.backend_state(v, b, slot), ..b.clone() })
                    })
                    .collect();
                Some(Published { id, slots, vip })
            })
            .collect();
        Generation { vips }
    }

    /// Drain wins; then a backend without checks is Up; a checked one is
    /// what its checks say (passive ejection included). Unknown (no check
    /// completed yet) is Up for the backends configured when the daemon
    /// started (a control-plane restart must not take every backend out for
    /// `rise` intervals) and Down for backends added later (not proven yet).
    pub(super) fn backend_state(&self, v: &Vip, b: &Backend, slot: u32) -> BackendState {
        if b.state != BackendState::Up {
            return b.state;
        }
        if v.health.is_none() {
            return BackendState::Up;
        }
        match self.health.get(&slot).map(|s| s.state) {
            Some(HealthState::Up) => BackendState::Up,
            Some(HealthState::Down) => BackendState::Down,
            Some(HealthState::Unknown) | None => {
                if self.startup_slots.contains(&slot) {
                    BackendState::Up
                } else {
                    BackendState::Down
                }
            }
        }
    }

    /// Publishes the current generation if it differs from the last one
    /// (or always, with `force`).
    pub(super) fn publish(&mut self, force: bool) {
        let g = self.generation();
        if !force && self.published.as_ref() == Some(&g) {
            return;
        }
        match self.seg.publish(&g) {
            Ok(n) => {
                self.published_gen = n;
                self.published = Some(g);
                self.publish_error = None;
                self.state.generation = n;
            }
            Err(e) => {
                log!("publishing failed: {e}");
                self.publish_error = Some(e);
            }
        }
    }

    pub(super) fn poll_health(&mut self) {
        let snap = self.checker.snapshot();
        let mut changed = false;
        for s in snap {
            let skipped_before = self.health.get(&s.slot).map_or(0, |o| o.ejections_skipped);
            if s.ejections_skipped > skipped_before {
                log!(
                    "health: slot {} ({}): passive ejection held back by the VIP's panic threshold ({} skipped so far); it stays up",
                    s.slot,
                    self.slot_name(s.slot),
                    s.ejections_skipped
                );
            }
            let old = self.health.get(&s.slot).map(|o| o.state);
            if old != Some(s.state) {
                if old.is_some() || s.state != HealthState::Unknown {
                    log!(
                        "health: slot {} ({}) is {:?}{}",
                        s.slot,
                        self.slot_name(s.slot),
                        s.state,
                        s.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                    );
                }
                changed = true;
            }
            self.health.insert(s.slot, s);
        }
        let panics = self.checker.panics();
        for v in &self.state.vips {
            let k = VipKey::of(v);
            let Some(id) = self.state.vip_id(k) else { continue };
            let was = self.panics.get(&id).is_some_and(|p| p.since_secs.is_some());
            let Some(p) = panics.get(&id) else { continue };
            match (was, p.since_secs.is_some()) {
                (false, true) => log!(
                    "health: VIP {k} is in panic: passive ejection would leave fewer than {} % of its {} backends up ({} up); ejections are held back, active checks still count",
                    p.threshold_pct,
                    p.backends,
                    p.up
                ),
                (true, false) => log!("health: VIP {k} is out of panic ({} of {} backends up)", p.up, p.backends),
                _ => {}
            }
        }
        self.panics = panics;
        if changed {
            self.publish(false);
        }
    }

    pub(super) fn watch_dataplane(&mut self) {
        let view = self.seg.dataplane();
        let report = self.seg.report();
        if let Some(r) = &report {
            let before = self.dp.report.as_ref().filter(|o| o.generation == r.generation).map(|o| &o.refused);
            if before != Some(&r.refused) {
                for x in &r.refused {
                    log!("dataplane refused VIP {} (id {}) of generation {}: {}", x.vip, x.id, r.generation, x.reason);
                }
            }
        }
        self.dp.report = report;
        if view.segment != self.dp.view.segment {
            match &view.segment {
                Some(p) => log!("shared-memory segment: {p}"),
                None => log!("shared-memory segment {} is fine again", self.cp.shm.display()),
            }
        }
        let now = Instant::now();
        if view.beat != self.dp.last_beat {
            self.dp.last_beat = view.beat;
            self.dp.beat_changed = Some(now);
        }
        // An odd epoch is a dataplane resetting its counters at start: wait for it.
        if view.present && view.epoch % 2 == 0 && view.epoch != self.dp.epoch {
            if self.dp.epoch != 0 {
                self.dp.restarts += 1;
                log!("dataplane restarted (pid {}, epoch {} -> {})", view.pid, self.dp.epoch, view.epoch);
            } else {
                log!("dataplane seen (pid {}, epoch {})", view.pid, view.epoch);
            }
            self.dp.epoch = view.epoch;
            self.dp.restarted_at = Some(now);
            self.dp.republished_after_restart = false;
        }
        let alive = view.present && view.beat != 0 && self.dp.beat_changed.is_some_and(|t| now - t < DATAPLANE_STALE);
        if alive != self.dp.alive {
            if alive {
                log!("dataplane is alive (pid {})", view.pid);
            } else if view.present && view.beat == 0 {
                log!("dataplane stopped (clean shutdown)");
            } else if view.present {
                log!("dataplane heartbeat stale for over {:?}: dataplane is down", DATAPLANE_STALE);
            }
            self.dp.alive = alive;
        }
        // A restarted dataplane reads the current generation at start; if it
        // has not applied it two seconds later, publish it again.
        if let Some(t) = self.dp.restarted_at {
            if alive && !self.dp.republished_after_restart && now - t > Duration::from_secs(2) {
                self.dp.republished_after_restart = true;
                let applied = self.applied_generation_of(&view);
                if applied != self.published_gen {
                    log!("dataplane applied generation {applied} of {}: publishing again", self.published_gen);
                    self.publish(true);
                }
            }
        }
        self.dp.view = view;
    }

    /// The generation the dataplane has installed: its report's (every
    /// lcore installed it) when it writes one, else its status word's.
    pub(super) fn applied_generation_of(&self, view: &crate::publish::DataplaneView) -> u64 {
        self.dp.report.as_ref().map_or(view.applied_generation, |r| r.generation)
    }

    pub(super) fn slot_name(&self, slot: u32) -> String {
        self.state
            .slots
            .iter()
            .find(|(_, &s)| s == slot)
            .and_then(|(k, _)| k.rsplit_once('/'))
            .map(|(v, b)| format!("{v} backend {b}"))
            .unwrap_or_default()
    }

    pub(super) fn all_ids(&self) -> (Vec<u16>, Vec<u32>) {
        let mut ids = Vec::new();
        let mut slots = Vec::new();
        for v in &self.state.vips {
            let k = VipKey::of(v);
            if let Some(id) = self.state.vip_id(k) {
                ids.push(id);
            }
            for b in &v.backends {
                if let Some(s) = self.state.slot(k, b.endpoint()) {
                    slots.push(s);
                }
            }
        }
        (ids, slots)
    }

    /// Reads the counters, feeds passive health ejection, keeps the last two
    /// samples for rates.
    pub(super) fn sample(&mut self) {
        let (ids, slots) = self.all_ids();
        let counters = self.seg.counters(&ids, &slots);
        self.observe_flood(&counters);
        for v in self.state.vips.iter().filter(|v| v.health.is_some()) {
            let k = VipKey::of(v);
            for b in &v.backends {
                if let Some(slot) = self.state.slot(k, b.endpoint()) {
                    if let Some(c) = counters.backends.get(&slot) {
                        self.checker.report_passive(slot, c.connect_failures);
                    }
                }
            }
        }
        self.prev = self.last.take();
        self.last = Some(Sample { at: Instant::now(), counters });
    }

    /// Fresh counters (read now).
    pub(super) fn counters_now(&mut self) -> Counters {
        let (ids, slots) = self.all_ids();
        let counters = self.seg.counters(&ids, &slots);
        self.observe_flood(&counters);
        counters
    }

    /// Records when each VIP's flood mode is first seen on (its lcores in
    /// flood mode going from 0 to more) and forgets it when it reads 0
    /// again (or the VIP is gone); logs both changes.
    fn observe_flood(&mut self, counters: &Counters) {
        let (now, unix) = (Instant::now(), unix_now());
        for v in &self.state.vips {
            let k = VipKey::of(v);
            let Some(id) = self.state.vip_id(k) else { continue };
            let lcores = counters.vips.get(&id).map_or(0, |c| c.flood_lcores);
            match (self.flood_seen.contains_key(&id), lcores > 0) {
                (false, true) => {
                    log!("VIP {k}: SYN flood mode on ({lcores} lcores answer SYNs with cookies)");
                    self.flood_seen.insert(id, FloodSeen { at: now, unix });
                }
                (true, false) => {
                    log!("VIP {k}: SYN flood mode off");
                    self.flood_seen.remove(&id);
                }
                _ => {}
            }
        }
        let ids: std::collections::HashSet<u16> =
            self.state.vips.iter().filter_map(|v| self.state.vip_id(VipKey::of(v))).collect();
        self.flood_seen.retain(|id, _| ids.contains(id));
    }

    /// A VIP's flood mode as last observed: (Unix seconds, seconds ago) since
    /// it was first seen on; `None` when off.
    pub(super) fn flood_since(&self, id: Option<u16>) -> Option<(f64, f64)> {
        let f = self.flood_seen.get(&id?)?;
        Some((f.unix, f.at.elapsed().as_secs_f64()))
    }

    /// Per-second rate of a counter over the last two samples.
    pub(super) fn rate(&self, f: impl Fn(&Counters) -> Option<u64>) -> Option<f64> {
        let (p, l) = (self.prev.as_ref()?, self.last.as_ref()?);
        let dt = (l.at - p.at).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let (a, b) = (f(&p.counters).unwrap_or(0), f(&l.counters)?);
        Some(b.saturating_sub(a) as f64 / dt)
    }
}
