//! BGP announcement in the daemon: the rule's input gathered every tick
//! (see [`crate::announce`] for the rule), changes logged and handed to the
//! BIRD thread; rotation; what `status`, `vip list` and Prometheus show.

use super::{unix_now, Daemon};
use crate::announce::{self, Input, Liveness, VipInput, CATCH_UP_GRACE};
use crate::metrics;
use crate::proto::{BgpStatus, Rotation, RotationReply, VipAnnouncement, VipKey};
use fulcrum_model::BackendState;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Instant;

/// One VIP's announcement as last decided, and since when.
#[derive(Debug, Clone)]
pub(super) struct VipSeen {
    announced: bool,
    reason: Option<String>,
    since: Instant,
    since_unix: f64,
}

/// The announcement's state in the daemon.
#[derive(Default)]
pub(super) struct Announce {
    vips: HashMap<VipKey, VipSeen>,
    routes: BTreeSet<Ipv4Addr>,
    /// Why the dataplane counts as down, as last logged.
    down: Option<Option<String>>,
    /// The generation the dataplane was last seen to have applied in sync
    /// with the control plane, and its epoch then.
    in_sync: Option<(u64, u64)>,
    /// The published generation as last seen, and when it changed.
    published: Option<(u64, Instant)>,
}

impl Daemon {
    /// Evaluates the rule (every tick) and hands BIRD the routes when they change.
    pub(super) fn announce_tick(&mut self) {
        if self.bird.is_none() {
            return;
        }
        let now = Instant::now();
        let view = &self.dp.view;
        let liveness = Liveness {
            present: view.present,
            pid: view.pid,
            epoch: view.epoch,
            stopped: view.present && view.beat == 0,
            beat_age: self.dp.beat_changed.map(|t| now - t),
        };
        let down = announce::dataplane_down(&liveness, announce::pid_alive);
        if self.announce.down.as_ref() != Some(&down) {
            match &down {
                Some(why) => log!("bgp: dataplane down for announcing: {why}"),
                None => log!("bgp: dataplane alive for announcing (pid {})", view.pid),
            }
            self.announce.down = Some(down.clone());
        }
        // Applied: the status word (reset to 0 by a starting dataplane) and
        // the report (every lcore installed it) must both say so.
        let report_gen = self
            .dp
            .report
            .as_ref()
            .map_or(view.applied_generation, |r| r.generation);
        let applied = view.applied_generation.min(report_gen);
        let published = self.published_gen;
        if self.announce.published.is_none_or(|(g, _)| g != published) {
            self.announce.published = Some((published, now));
        }
        let alive = down.is_none();
        if alive && applied == published {
            self.announce.in_sync = Some((applied, view.epoch));
        }
        let catching_up = alive
            && applied != published
            && self.announce.in_sync == Some((applied, view.epoch))
            && self
                .announce
                .published
                .is_some_and(|(_, t)| now - t < CATCH_UP_GRACE);
        let generation = self.published.as_ref();
        let vips = self
            .state
            .vips
            .iter()
            .map(|v| {
                let key = VipKey::of(v);
                let id = self.state.vip_id(key);
                let p = generation.and_then(|g| g.vips.iter().find(|p| Some(p.id) == id));
                let refused = id.and_then(|id| {
                    let r = self
                        .dp
                        .report
                        .as_ref()
                        .filter(|r| r.generation == applied)?;
                    r.refused
                        .iter()
                        .find(|x| x.id == id)
                        .map(|x| x.reason.clone())
                });
                VipInput {
                    key,
                    published: p.is_some(),
                    refused,
                    backends_up: p.map_or(0, |p| {
                        p.vip
                            .backends
                            .iter()
                            .filter(|b| b.state == BackendState::Up && b.weight > 0)
                            .count()
                    }),
                    announced: self
                        .announce
                        .vips
                        .get(&key)
                        .is_some_and(|s| s.announced && s.reason.is_none()),
                }
            })
            .collect();
        let input = Input {
            out_of_rotation: self.state.out_of_rotation,
            dataplane_alive: alive,
            published,
            applied,
            catching_up,
            vips,
        };
        let outcome = announce::decide(&input);
        let unix = unix_now();
        let mut seen = HashMap::with_capacity(outcome.vips.len());
        for d in &outcome.vips {
            let announced = outcome.announced(d.key);
            let old = self.announce.vips.remove(&d.key);
            let same = old
                .as_ref()
                .is_some_and(|o| o.announced == announced && o.reason == d.reason);
            let entry = match old {
                Some(o) if same => o,
                _ => {
                    match (announced, &d.reason) {
                        (true, None) => log!("bgp: VIP {} announced", d.key),
                        (true, Some(r)) => log!(
                            "bgp: VIP {}: {r}; its address stays announced for another VIP",
                            d.key
                        ),
                        (false, Some(r)) => log!("bgp: VIP {} withdrawn: {r}", d.key),
                        (false, None) => {}
                    }
                    VipSeen {
                        announced,
                        reason: d.reason.clone(),
                        since: now,
                        since_unix: unix,
                    }
                }
            };
            seen.insert(d.key, entry);
        }
        for k in self.announce.vips.keys() {
            log!("bgp: VIP {k} deleted: no longer announced");
        }
        self.announce.vips = seen;
        if outcome.routes != self.announce.routes {
            self.announce.routes = outcome.routes.clone();
        }
        if let Some(b) = &self.bird {
            b.want(outcome.routes);
        }
    }

    /// `rotation in|out`: persisted, then applied at once.
    pub(super) fn set_rotation(&mut self, rotation: Rotation) -> Result<RotationReply, String> {
        let out = rotation == Rotation::Out;
        let changed = self.state.out_of_rotation != out;
        if changed {
            let mut next = self.state.clone();
            next.out_of_rotation = out;
            next.save(&self.cp.state_file)
                .map_err(|e| format!("cannot write the state file, nothing changed: {e}"))?;
            self.state = next;
            log!(
                "bgp: rotation {}{}",
                rotation.name(),
                if out { ": every VIP withdrawn" } else { "" }
            );
        }
        self.announce_tick();
        Ok(RotationReply {
            rotation,
            changed,
            bgp_configured: self.bird.is_some(),
        })
    }

    fn rotation(&self) -> Rotation {
        if self.state.out_of_rotation {
            Rotation::Out
        } else {
            Rotation::In
        }
    }

    /// `status`'s `bgp` block.
    pub(super) fn bgp_status(&self) -> BgpStatus {
        let Some(bird) = &self.bird else {
            return BgpStatus {
                rotation: self.rotation(),
                ..Default::default()
            };
        };
        let cfg = bird.config();
        let st = bird.status();
        let vips = self
            .state
            .vips
            .iter()
            .map(|v| {
                let k = VipKey::of(v);
                match self.announce.vips.get(&k) {
                    Some(s) => VipAnnouncement {
                        vip: k,
                        announced: s.announced,
                        reason: s.reason.clone(),
                        since_unix: s.since_unix,
                        for_secs: s.since.elapsed().as_secs_f64(),
                    },
                    None => VipAnnouncement {
                        vip: k,
                        announced: false,
                        reason: Some("not evaluated yet".into()),
                        since_unix: unix_now(),
                        for_secs: 0.0,
                    },
                }
            })
            .collect();
        BgpStatus {
            configured: true,
            bird_socket: Some(cfg.bird_socket.display().to_string()),
            routes_file: Some(cfg.routes_file.display().to_string()),
            next_hop: Some(cfg.next_hop),
            protocol: Some(cfg.protocol.clone()),
            session: st.session.as_ref().and_then(|s| s.state.clone()),
            session_info: st.session.as_ref().map(|s| s.info.clone()),
            session_age_secs: st.session.as_ref().map(|s| s.at.elapsed().as_secs_f64()),
            rotation: self.rotation(),
            routes: st
                .configured
                .map(|r| r.into_iter().collect())
                .unwrap_or_default(),
            configure_failures: st.configure_failures,
            last_error: st.last_error,
            last_configure_ms: st.last_configure.map(|d| d.as_secs_f64() * 1e3),
            vips,
        }
    }

    /// `vip list`'s ANNOUNCED: `None` without `[bgp]`.
    pub(super) fn vip_announced(&self, k: VipKey) -> Option<bool> {
        self.bird.as_ref()?;
        Some(self.announce.vips.get(&k).is_some_and(|s| s.announced))
    }

    /// The Prometheus series of BGP (`None` without `[bgp]`).
    pub(super) fn bgp_metrics(&self) -> Option<metrics::BgpView> {
        let bird = self.bird.as_ref()?;
        let st = bird.status();
        Some(metrics::BgpView {
            session_up: st
                .session
                .as_ref()
                .is_some_and(|s| s.state.as_deref() == Some("Established")),
            configure_failures: st.configure_failures,
            vips: self
                .state
                .vips
                .iter()
                .map(|v| {
                    let k = VipKey::of(v);
                    (
                        k.to_string(),
                        self.announce.vips.get(&k).is_some_and(|s| s.announced),
                    )
                })
                .collect(),
        })
    }
}
