//! Per-target state machine: rise/fall hysteresis, passive ejection with doubling
//! back-off, and the latency window. Pure (no I/O, time passed in) so it is unit-testable.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use fulcrum_model::health::CheckSpec;

/// Health of one target as the daemon should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// No check has completed yet. Not routable (see the module documentation).
    Unknown,
    Up,
    Down,
}

impl HealthState {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Number of latency samples kept per target.
pub const LATENCY_WINDOW: usize = 64;

/// Bounded ring of the most recent check durations.
#[derive(Debug, Clone, Default)]
pub(crate) struct LatencyWindow {
    samples: VecDeque<Duration>,
}

impl LatencyWindow {
    pub(crate) fn push(&mut self, d: Duration) {
        if self.samples.len() == LATENCY_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(d);
    }

    pub(crate) fn last(&self) -> Option<Duration> {
        self.samples.back().copied()
    }

    /// Nearest-rank percentile (`p` in 0..=100) over the window.
    pub(crate) fn percentile(&self, p: u32) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = self.samples.iter().copied().collect();
        v.sort_unstable();
        let n = v.len();
        let rank = (p as usize * n).div_ceil(100).clamp(1, n);
        Some(v[rank - 1])
    }
}

/// What changed, for notification. `to` may equal `from` for an ejection of a target
/// that was already Down (the ejection deadline is still news).
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub from: HealthState,
    pub to: HealthState,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub(crate) struct TargetState {
    pub state: HealthState,
    pub since: SystemTime,
    since_instant: Instant,
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    pub checks: u64,
    pub latency: LatencyWindow,
    // Passive ejection.
    passive_hist: VecDeque<(Instant, u64)>,
    last_failures_total: Option<u64>,
    ejected_until: Option<Instant>,
    /// Current back-off level: the next ejection lasts base × 2^level (capped).
    pub ejection_level: u32,
    pub ejections_total: u64,
    /// Ejections the VIP's panic threshold held back.
    pub ejections_skipped: u64,
    /// When the last ejection of this target was held back.
    held_at: Option<Instant>,
}

impl TargetState {
    pub(crate) fn new(now: Instant, now_sys: SystemTime) -> Self {
        TargetState {
            state: HealthState::Unknown,
            since: now_sys,
            since_instant: now,
            ok_streak: 0,
            fail_streak: 0,
            last_ok: None,
            last_error: None,
            checks: 0,
            latency: LatencyWindow::default(),
            passive_hist: VecDeque::new(),
            last_failures_total: None,
            ejected_until: None,
            ejection_level: 0,
            ejections_total: 0,
            ejections_skipped: 0,
            held_at: None,
        }
    }

    /// The ejection deadline if it is still in the future.
    pub(crate) fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.ejected_until.filter(|&u| u > now)
    }

    fn transition(
        &mut self,
        to: HealthState,
        now: Instant,
        now_sys: SystemTime,
        reason: String,
    ) -> Option<Event> {
        let from = self.state;
        if from == to {
            return None;
        }
        self.state = to;
        self.since = now_sys;
        self.since_instant = now;
        Some(Event { from, to, reason })
    }

    /// Folds one active check result in.
    pub(crate) fn apply_check(
        &mut self,
        now: Instant,
        now_sys: SystemTime,
        result: Result<(), String>,
        latency: Duration,
        spec: &CheckSpec,
    ) -> Option<Event> {
        self.checks += 1;
        self.latency.push(latency);
        let ejected = self.ejected_until(now).is_some();
        match result {
            Ok(()) => {
                self.last_ok = Some(true);
                if !ejected {
                    // While ejected the ejection's reason stays the last error: it is
                    // why the target is Down although its checks pass.
                    self.last_error = None;
                }
                self.fail_streak = 0;
                // Successes during an ejection do not count towards `rise`: after the
                // back-off the target must pass `rise` fresh checks.
                self.ok_streak = if ejected {
                    0
                } else {
                    self.ok_streak.saturating_add(1)
                };
                if self.state == HealthState::Up
                    && self.ejection_level > 0
                    && now.duration_since(self.since_instant) >= spec.passive.ejection_max
                {
                    // Healthy for a full ejection_max since it came back: forget the history.
                    self.ejection_level = 0;
                }
                if self.state != HealthState::Up && self.ok_streak >= spec.rise {
                    let reason = format!("{} consecutive successful checks", self.ok_streak);
                    return self.transition(HealthState::Up, now, now_sys, reason);
                }
                None
            }
            Err(e) => {
                self.last_ok = Some(false);
                self.ok_streak = 0;
                self.fail_streak = self.fail_streak.saturating_add(1);
                let reason = format!("{} consecutive failed checks, last: {e}", self.fail_streak);
                self.last_error = Some(e);
                let go_down = match self.state {
                    HealthState::Up => self.fail_streak >= spec.fall,
                    // Never seen healthy: the first failure is enough evidence.
                    HealthState::Unknown => true,
                    HealthState::Down => false,
                };
                if go_down {
                    return self.transition(HealthState::Down, now, now_sys, reason);
                }
                None
            }
        }
    }

    /// [`Self::passive_due`] then [`Self::eject`]: a reading for a target no
    /// panic threshold protects.
    #[cfg(test)]
    pub(crate) fn apply_passive(
        &mut self,
        now: Instant,
        now_sys: SystemTime,
        failures_total: u64,
        spec: &CheckSpec,
    ) -> Option<Event> {
        let increase = self.passive_due(now, failures_total, spec)?;
        self.eject(now, now_sys, failures_total, increase, spec)
    }

    /// Whether an ejection of this target was held back within the last
    /// `passive_window` (the failures that called for it are still recent).
    pub(crate) fn held(&self, now: Instant, spec: &CheckSpec) -> bool {
        self.held_at
            .is_some_and(|t| now.duration_since(t) <= spec.passive.window)
    }

    /// An ejection that is due but held back by the panic threshold: counted,
    /// and the failures that called for it are spent (the next one needs
    /// another `passive_failures` within the window, as after an ejection).
    pub(crate) fn hold(&mut self, now: Instant, failures_total: u64) {
        self.ejections_skipped += 1;
        self.held_at = Some(now);
        self.passive_hist.clear();
        self.passive_hist.push_back((now, failures_total));
    }

    /// Folds one reading of the dataplane's monotonic connect-failure counter in;
    /// returns the rise within the window if it calls for an ejection (do it
    /// with [`Self::eject`], or hold it back with [`Self::hold`]).
    pub(crate) fn passive_due(
        &mut self,
        now: Instant,
        failures_total: u64,
        spec: &CheckSpec,
    ) -> Option<u64> {
        let p = &spec.passive;
        if matches!(self.last_failures_total, Some(prev) if failures_total < prev) {
            // Counter went backwards (dataplane restarted): start a new baseline.
            self.passive_hist.clear();
        }
        self.last_failures_total = Some(failures_total);
        if p.failures == 0 {
            return None;
        }
        self.passive_hist.push_back((now, failures_total));
        while let Some(&(t, _)) = self.passive_hist.front() {
            if now.duration_since(t) > p.window {
                self.passive_hist.pop_front();
            } else {
                break;
            }
        }
        if self.ejected_until(now).is_some() {
            return None;
        }
        let base = self
            .passive_hist
            .front()
            .map_or(failures_total, |&(_, v)| v);
        let increase = failures_total - base;
        if increase < u64::from(p.failures) {
            return None;
        }
        Some(increase)
    }

    /// Ejects the target (after [`Self::passive_due`] said so).
    pub(crate) fn eject(
        &mut self,
        now: Instant,
        now_sys: SystemTime,
        failures_total: u64,
        increase: u64,
        spec: &CheckSpec,
    ) -> Option<Event> {
        let p = &spec.passive;
        self.held_at = None;
        let factor = 1u32
            .checked_shl(self.ejection_level.min(31))
            .unwrap_or(u32::MAX);
        let backoff = p.ejection_base.saturating_mul(factor).min(p.ejection_max);
        self.ejection_level = self.ejection_level.saturating_add(1);
        self.ejections_total += 1;
        self.ejected_until = Some(now + backoff);
        self.passive_hist.clear();
        self.passive_hist.push_back((now, failures_total));
        self.ok_streak = 0;
        let reason = format!(
            "passive: {increase} connect failures within {} ms; ejected for {} ms (ejection #{})",
            p.window.as_millis(),
            backoff.as_millis(),
            self.ejections_total
        );
        self.last_error = Some(reason.clone());
        let from = self.state;
        match self.transition(HealthState::Down, now, now_sys, reason.clone()) {
            Some(ev) => Some(ev),
            None => Some(Event {
                from,
                to: HealthState::Down,
                reason,
            }),
        }
    }
}
