//! Backend health checking for the control plane.
//!
//! Modelled on HAProxy's server checks (rise/fall, `spread-checks`, RST-closed check
//! connections), Envoy's outlier detection (passive ejection with a growing ejection time)
//! and DPVS's dest-check. No code is taken from any of them.
//!
//! # Checks
//! * `tcp`: the three-way handshake completes within the timeout.
//! * `http`: `GET <path> HTTP/1.0` with `Host` (default: the target IP) and
//!   `Connection: close`; the status must fall in `expect_status` (default 200-399) and,
//!   if `body` is set, the first `max_read_kib` KiB (default 16) of the response must contain
//!   it after the headers. Chunked encoding is not decoded (a match split across chunk
//!   boundaries would be missed; health endpoints are small).
//! * `udp`: a *connected* UDP socket sends `payload` and waits for one reply (containing
//!   `expect` if given). An ICMP port unreachable makes Linux report `ECONNREFUSED` on the
//!   connected socket, so a closed port fails at once ("recv: Connection refused") rather
//!   than after the timeout.
//!
//! The timeout covers the whole probe (connect, request, reply). TCP/HTTP check sockets
//! are closed with `SO_LINGER` 0 (RST), like HAProxy: no TIME_WAIT build-up at 1 000 checks/s.
//! The source address is `CheckSpec::source`, else `CheckerConfig::source_addr` (software
//! mode: 198.18.0.1), else the kernel's choice.
//!
//! # Runtime
//! One dedicated OS thread (`fulcrum-health`) drives a tokio **current-thread** runtime;
//! every target is one task (`sleep_until` → acquire in-flight permit →
//! `timeout(probe)` → fold result into the shared state). Why:
//! * a check is a handful of syscalls and a timer; 1 000 checks/s is ~10 000 syscalls/s,
//!   a few per cent of a core (measured by the `health_scale_1000_targets` test: ~0.12 CPU-s per second
//!   in a debug build), so more threads
//!   buy nothing and one thread is easy to pin to the control core, away from the
//!   dataplane lcores;
//! * tokio gives epoll readiness, a timer wheel (O(1) per sleep, 1 ms resolution) and
//!   `tokio::time::timeout`; with mio we would hand-write the TCP/HTTP/UDP state
//!   machines and a timer heap for no gain.
//!
//! The thread is stopped (and joined) by [`HealthChecker::stop`] or on drop; dropping
//! the runtime cancels every check in flight.
//!
//! # Scheduling and jitter
//! A target's first check starts at a uniformly random offset within one interval (so
//! 1 000 targets added at once do not fire together). After that, checks run at a
//! fixed rate measured from check *start*: each gap is drawn uniformly from
//! `[interval × (1 − jitter_pct/100), interval]`. The configured interval is a
//! **ceiling** (jitter only shortens gaps; on average ~jitter/2 % more checks are sent),
//! because that is what keeps the detection bound: since `timeout < interval`, an Up
//! target that starts failing is Down at most `fall × interval + timeout` after the
//! failure began (the check running at failure time may still pass; the next `fall`
//! start at most one interval apart and the last one ends within `timeout`), plus
//! scheduling latency, provided the in-flight cap is not saturated. Checks of one target
//! never overlap (the next starts no earlier than the previous one ends), and never come
//! closer than `interval × (1 − jitter)` (the gap is measured from the actual start).
//! Trade-off: if the checker thread is starved for a while, the targets due meanwhile
//! start together and stay bunched; the per-check jitter re-spreads them as a random
//! walk (phase spread grows by ~`jitter/√12` of the interval per √check), and the
//! in-flight cap bounds the burst.
//!
//! # In-flight cap
//! A semaphore of `CheckerConfig::max_in_flight` permits (default 512) bounds
//! concurrent probes, hence sockets and file descriptors. A check that has to wait for a
//! permit starts late (counted in [`CheckerStats::cap_waits`]); the timeout starts when
//! the probe starts, not while waiting. Size the cap above `targets × timeout / interval`
//! (the number of probes that can be outstanding when every target times out).
//!
//! # State machine
//! Targets start **Unknown** (no evidence either way; the daemon should not route to
//! them, except when it chooses to fail open because no backend of a service is Up).
//! Unknown → Up after `rise` consecutive successes; Unknown → Down on the first failure
//! (a backend never seen healthy gets no `fall` grace: that hysteresis protects Up
//! targets from flapping, it is not a reason to route to an unproven one — HAProxy's
//! `init-state fully-down` behaviour, with Unknown reported until the first result).
//! Up → Down after `fall` consecutive failures; Down → Up after `rise` consecutive
//! successes. We do not start optimistically Up (HAProxy's default) because the
//! dataplane is a consistent-hash forwarder: routing to a dead backend and then removing
//! it moves flows twice, while waiting `rise` checks (≤ rise × interval at startup) costs
//! nothing once running. Each target records the time of its last transition, the last
//! result and error, consecutive counts, the number of checks, and the latency of the
//! last 64 checks (every completed check: a refused connect counts its (short) duration,
//! a timed-out one counts the timeout), reported as last/p50/p99.
//!
//! # Passive ejection
//! The daemon reads per-backend connect-failure counters (monotonic) from the dataplane
//! and calls [`HealthChecker::report_passive`]`(key, failures_total)` periodically
//! (several times per `passive_window_ms`). If the counter rises by at least
//! `passive_failures` (default 5; 0 disables) within `passive_window_ms` (default
//! 10 s), the target is **ejected**: it goes Down at once and stays Down until
//! `ejected_until`; active checks keep running but their successes do not count while
//! ejected, so after the back-off it must pass `rise` fresh checks to be Up again. The
//! ejection time starts at `ejection_base_ms` (1 s) and doubles on each further ejection
//! (1, 2, 4, ... s) up to `ejection_max_ms` (60 s) — Envoy multiplies its base ejection
//! time by the ejection count with a maximum; doubling reaches the cap faster for a
//! backend that keeps failing. The level resets once the target has been Up for
//! `ejection_max` without being ejected. A counter that goes backwards (dataplane
//! restart) restarts the baseline. While ejected, further reports do not extend the
//! ejection.
//!
//! # Panic threshold
//! Targets can be put in groups ([`HealthChecker::set_groups`]; the daemon: a VIP's
//! non-drained backends). An ejection of an Up target that would leave fewer than
//! `panic_threshold_pct` % of its group Up (Envoy's healthy panic threshold; default
//! 50, 0 disables) is **held back**: the target stays Up, the skip is counted (target
//! and group) and the failures that called for it are spent, as an ejection spends
//! them. The group is *in panic* while one of its targets had an ejection held back
//! within its `passive_window` ([`GroupStatus::panic_since`]). Only passive ejection
//! is held back: active check failures take a target Down whatever the threshold.
//! The threshold is evaluated at every report, against the group as it is then: an
//! ejected target back Up makes room for the next ejection.
//!
//! # Notification
//! Every state transition (and every ejection) increments a generation counter, wakes
//! [`HealthChecker::wait_for_change`] callers and is sent to [`HealthChecker::subscribe`]
//! receivers, so the daemon republishes as soon as the checker decides.

mod probe;
pub mod state;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Semaphore};
use tokio::task::AbortHandle;

pub use fulcrum_model::health::{CheckKind, CheckSpec, HttpCheck, PassiveSpec, SpecError, StatusRange, UdpCheck};
pub use state::{HealthState, LATENCY_WINDOW};

use state::{Event, TargetState};

/// Default for [`CheckerConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

/// Checker-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckerConfig {
    /// Global cap on probes in progress (>= 1).
    pub max_in_flight: usize,
    /// Address checks are sent from unless a spec overrides it.
    pub source_addr: Option<Ipv4Addr>,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            source_addr: None,
        }
    }
}

/// One backend to check. `key` is the daemon's stable identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: u64,
    pub addr: SocketAddrV4,
    pub spec: CheckSpec,
}

/// Point-in-time view of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetStatus {
    pub key: u64,
    pub addr: SocketAddrV4,
    /// `tcp`, `http` or `udp`.
    pub kind: &'static str,
    pub state: HealthState,
    /// Set while a passive ejection is in force.
    pub ejected_until: Option<SystemTime>,
    /// Time of the last state change (or of the target's creation while Unknown).
    pub since: SystemTime,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    pub checks: u64,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    /// Current ejection back-off level (0 = the next ejection lasts `ejection_base`).
    pub ejection_level: u32,
    pub ejections_total: u64,
    /// Ejections held back by the panic threshold of the target's group.
    pub ejections_skipped: u64,
    /// An ejection of it was held back within the last `passive_window`.
    pub held: bool,
    /// Its group ([`HealthChecker::set_groups`]), if any.
    pub group: Option<u64>,
    pub latency_last: Option<Duration>,
    pub latency_p50: Option<Duration>,
    pub latency_p99: Option<Duration>,
}

/// A state change, delivered to [`HealthChecker::subscribe`] receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub key: u64,
    pub addr: SocketAddrV4,
    pub from: HealthState,
    /// Equal to `from` when an already-Down target is (re-)ejected.
    pub to: HealthState,
    pub at: SystemTime,
    pub reason: String,
    /// Generation counter value after this change.
    pub generation: u64,
}

/// Checker-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckerStats {
    pub targets: usize,
    pub checks_started: u64,
    pub checks_completed: u64,
    pub in_flight: u64,
    /// Checks that found no free in-flight permit and had to wait.
    pub cap_waits: u64,
    /// CPU time (user + system) used by the checker thread, from
    /// `/proc/self/task/<tid>/stat`.
    pub thread_cpu: Option<Duration>,
}

struct Entry {
    addr: SocketAddrV4,
    spec: CheckSpec,
    /// Distinguishes a re-added key from the task of its previous incarnation.
    instance: u64,
    task: AbortHandle,
    state: TargetState,
    /// The panic-threshold group (a VIP) the target counts in.
    group: Option<u64>,
}

/// A group's panic state: whether an ejection of one of its targets is held back.
#[derive(Debug, Clone, Default)]
struct GroupState {
    panic_since: Option<SystemTime>,
    ejections_skipped: u64,
}

/// Point-in-time view of one group (see [`HealthChecker::set_groups`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStatus {
    pub group: u64,
    /// Set while the group is in panic: an ejection of one of its targets was held
    /// back by the threshold within the last `passive_window`.
    pub panic_since: Option<SystemTime>,
    pub ejections_skipped: u64,
    pub targets: usize,
    pub up: usize,
    pub threshold_pct: u8,
}

struct Inner {
    targets: HashMap<u64, Entry>,
    groups: HashMap<u64, GroupState>,
    generation: u64,
    next_instance: u64,
    subscribers: Vec<mpsc::Sender<Transition>>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    permits: Arc<Semaphore>,
    source_addr: Option<Ipv4Addr>,
    checks_started: AtomicU64,
    checks_completed: AtomicU64,
    in_flight: AtomicU64,
    cap_waits: AtomicU64,
    tid: AtomicI32,
    /// Test-only: (key, start time) of every check, to observe the scheduler directly.
    #[cfg(test)]
    start_log: Mutex<Vec<(u64, Instant)>>,
    /// Test-only: canned probe outcomes by key, instead of real sockets (with the
    /// simulated clock of [`HealthChecker::start_simulated`]).
    #[cfg(test)]
    fakes: Mutex<HashMap<u64, tests::Fake>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough data (plain counters).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &mut Inner, key: u64, addr: SocketAddrV4, ev: Event, at: SystemTime) {
        inner.generation += 1;
        let t = Transition {
            key,
            addr,
            from: ev.from,
            to: ev.to,
            at,
            reason: ev.reason,
            generation: inner.generation,
        };
        inner.subscribers.retain(|s| s.send(t.clone()).is_ok());
        self.changed.notify_all();
    }

    /// Folds a check result in; false if the target was removed or replaced.
    fn record_check(
        &self,
        key: u64,
        instance: u64,
        result: Result<(), String>,
        latency: Duration,
    ) -> bool {
        let now = clock_now();
        let now_sys = SystemTime::now();
        let mut inner = self.lock();
        let Some(e) = inner.targets.get_mut(&key) else {
            return false;
        };
        if e.instance != instance {
            return false;
        }
        let addr = e.addr;
        if let Some(ev) = e.state.apply_check(now, now_sys, result, latency, &e.spec) {
            self.publish(&mut inner, key, addr, ev, now_sys);
        }
        true
    }
}

/// The health checker: owns a thread running all checks. Dropping it stops the thread.
pub struct HealthChecker {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    stop_tx: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HealthChecker {
    /// Starts the checker thread with no targets.
    pub fn start(config: CheckerConfig) -> io::Result<HealthChecker> {
        Self::start_on(config, tokio::runtime::Builder::new_current_thread())
    }

    /// Test-only: the checker on a runtime whose clock starts paused and jumps to
    /// the next timer whenever every task waits (tokio's simulated time): schedules,
    /// timeouts and back-offs then take their exact simulated durations whatever the
    /// machine's load. Combine with fake probes (`tests::Fake`).
    #[cfg(test)]
    pub(crate) fn start_simulated(config: CheckerConfig) -> io::Result<HealthChecker> {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.start_paused(true);
        Self::start_on(config, b)
    }

    fn start_on(
        config: CheckerConfig,
        mut builder: tokio::runtime::Builder,
    ) -> io::Result<HealthChecker> {
        if config.max_in_flight == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_in_flight must be at least 1",
            ));
        }
        let rt = builder.enable_all().build()?;
        let handle = rt.handle().clone();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                targets: HashMap::new(),
                groups: HashMap::new(),
                generation: 0,
                next_instance: 1,
                subscribers: Vec::new(),
            }),
            changed: Condvar::new(),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            source_addr: config.source_addr,
            checks_started: AtomicU64::new(0),
            checks_completed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            cap_waits: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            #[cfg(test)]
            start_log: Mutex::new(Vec::new()),
            #[cfg(test)]
            fakes: Mutex::new(HashMap::new()),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = thread::Builder::new()
            .name("fulcrum-health".into())
            .spawn(move || {
                sh.tid
                    .store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
                // Tasks spawned through the handle run while this block_on drives the runtime.
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                // Dropping `rt` cancels every target task.
                drop(rt);
            })?;
        Ok(HealthChecker {
            shared,
            rt: handle,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Replaces the target set. Targets whose key, address and spec are unchanged keep
    /// their state and schedule; the rest are (re)started as Unknown; missing keys are
    /// dropped. All specs are validated first; on error nothing changes.
    pub fn set_targets(&self, targets: Vec<Target>) -> Result<(), SetTargetsError> {
        let mut seen = HashMap::with_capacity(targets.len());
        for t in &targets {
            t.spec.validate().map_err(|e| SetTargetsError::Spec {
                key: t.key,
                error: e,
            })?;
            if seen.insert(t.key, ()).is_some() {
                return Err(SetTargetsError::DuplicateKey(t.key));
            }
        }
        let now = self.now();
        let now_sys = SystemTime::now();
        let mut inner = self.shared.lock();
        let mut old = std::mem::take(&mut inner.targets);
        // A re-started target stays in its group.
        let old_groups: HashMap<u64, u64> =
            old.iter().filter_map(|(&k, e)| Some((k, e.group?))).collect();
        let mut new = HashMap::with_capacity(targets.len());
        for t in targets {
            if let Some(e) = old.remove(&t.key) {
                if e.addr == t.addr && e.spec == t.spec {
                    new.insert(t.key, e);
                    continue;
                }
                e.task.abort();
            }
            let instance = inner.next_instance;
            inner.next_instance += 1;
            let task = self
                .rt
                .spawn(run_target(
                    self.shared.clone(),
                    t.key,
                    instance,
                    t.addr,
                    t.spec.clone(),
                ))
                .abort_handle();
            new.insert(
                t.key,
                Entry {
                    addr: t.addr,
                    spec: t.spec,
                    instance,
                    task,
                    state: TargetState::new(now, now_sys),
                    group: e_group(&old_groups, t.key),
                },
            );
        }
        for (_, e) in old {
            e.task.abort();
        }
        inner.targets = new;
        Ok(())
    }

    /// Current status of every target, sorted by key.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        let now = self.now();
        let now_sys = SystemTime::now();
        let inner = self.shared.lock();
        let mut v: Vec<TargetStatus> = inner
            .targets
            .iter()
            .map(|(&k, e)| status_of(k, e, now, now_sys))
            .collect();
        v.sort_by_key(|s| s.key);
        v
    }

    /// Status of one target.
    pub fn status(&self, key: u64) -> Option<TargetStatus> {
        let now = self.now();
        let inner = self.shared.lock();
        inner
            .targets
            .get(&key)
            .map(|e| status_of(key, e, now, SystemTime::now()))
    }

    /// The checker's clock: its runtime's (simulated in `start_simulated`, the
    /// monotonic clock otherwise), whichever thread asks.
    fn now(&self) -> Instant {
        let _in_runtime = self.rt.enter();
        clock_now()
    }

    /// Feeds the dataplane's monotonic connect-failure counter for `key`; may eject the
    /// target (see the module documentation). Unknown keys are ignored (returns false).
    pub fn report_passive(&self, key: u64, failures_total: u64) -> bool {
        let now = self.now();
        let now_sys = SystemTime::now();
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let Some(e) = inner.targets.get_mut(&key) else {
            return false;
        };
        let addr = e.addr;
        let group = e.group;
        if let Some(increase) = e.state.passive_due(now, failures_total, &e.spec) {
            let (is_up, threshold) = (e.state.state == HealthState::Up, e.spec.panic_threshold_pct);
            let allowed = !is_up
                || match group {
                    None => true,
                    Some(g) => ejection_allowed(&inner.targets, g, threshold),
                };
            let e = inner.targets.get_mut(&key).expect("looked up above");
            if allowed {
                if let Some(ev) = e.state.eject(now, now_sys, failures_total, increase, &e.spec) {
                    self.shared.publish(inner, key, addr, ev, now_sys);
                }
            } else {
                e.state.hold(now, failures_total);
                if let Some(g) = group {
                    inner.groups.entry(g).or_default().ejections_skipped += 1;
                }
            }
        }
        if let Some(g) = group {
            refresh_panic(inner, g, now, now_sys);
        }
        true
    }

    /// Puts targets in groups (a VIP's backends that count towards its panic
    /// threshold: its non-drained ones): `groups` maps a target's key to its
    /// group; keys not in it belong to none (their ejections are never held).
    /// Keeps every target's state and schedule.
    pub fn set_groups(&self, groups: &HashMap<u64, u64>) {
        let now = self.now();
        let now_sys = SystemTime::now();
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        for (k, e) in inner.targets.iter_mut() {
            e.group = groups.get(k).copied();
        }
        let live: std::collections::HashSet<u64> = groups.values().copied().collect();
        inner.groups.retain(|g, _| live.contains(g));
        for g in live {
            refresh_panic(inner, g, now, now_sys);
        }
    }

    /// Every group with at least one target, sorted by group.
    pub fn groups(&self) -> Vec<GroupStatus> {
        let now = self.now();
        let inner = self.shared.lock();
        let mut out: HashMap<u64, GroupStatus> = HashMap::new();
        for e in inner.targets.values() {
            let Some(g) = e.group else { continue };
            let gs = inner.groups.get(&g);
            let s = out.entry(g).or_insert_with(|| GroupStatus {
                group: g,
                panic_since: gs.and_then(|x| x.panic_since),
                ejections_skipped: gs.map_or(0, |x| x.ejections_skipped),
                targets: 0,
                up: 0,
                threshold_pct: e.spec.panic_threshold_pct,
            });
            s.targets += 1;
            if e.state.state == HealthState::Up && e.state.ejected_until(now).is_none() {
                s.up += 1;
            }
        }
        let mut v: Vec<GroupStatus> = out.into_values().collect();
        v.sort_by_key(|s| s.group);
        v
    }

    /// Generation counter: incremented on every transition or ejection.
    pub fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes; returns the
    /// current generation.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        while inner.generation == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            inner = match self.shared.changed.wait_timeout(inner, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        inner.generation
    }

    /// A channel receiving every transition from now on. Dropping the receiver unsubscribes.
    pub fn subscribe(&self) -> mpsc::Receiver<Transition> {
        let (tx, rx) = mpsc::channel();
        self.shared.lock().subscribers.push(tx);
        rx
    }

    pub fn stats(&self) -> CheckerStats {
        let s = &self.shared;
        CheckerStats {
            targets: s.lock().targets.len(),
            checks_started: s.checks_started.load(Ordering::Relaxed),
            checks_completed: s.checks_completed.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            cap_waits: s.cap_waits.load(Ordering::Relaxed),
            thread_cpu: thread_cpu(s.tid.load(Ordering::Relaxed)),
        }
    }

    /// Stops the checker thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Errors from [`HealthChecker::set_targets`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetTargetsError {
    #[error("target {key}: {error}")]
    Spec { key: u64, error: SpecError },
    #[error("duplicate target key {0}")]
    DuplicateKey(u64),
}

fn status_of(key: u64, e: &Entry, now: Instant, now_sys: SystemTime) -> TargetStatus {
    let st = &e.state;
    TargetStatus {
        key,
        addr: e.addr,
        kind: e.spec.kind.name(),
        state: st.state,
        ejected_until: st.ejected_until(now).map(|u| now_sys + (u - now)),
        since: st.since,
        last_ok: st.last_ok,
        last_error: st.last_error.clone(),
        checks: st.checks,
        consecutive_ok: st.ok_streak,
        consecutive_fail: st.fail_streak,
        ejection_level: st.ejection_level,
        ejections_total: st.ejections_total,
        ejections_skipped: st.ejections_skipped,
        held: st.held(now, &e.spec),
        group: e.group,
        latency_last: st.latency.last(),
        latency_p50: st.latency.percentile(50),
        latency_p99: st.latency.percentile(99),
    }
}

fn e_group(old: &HashMap<u64, u64>, key: u64) -> Option<u64> {
    old.get(&key).copied()
}

/// Whether ejecting one more Up target of group `g` leaves at least
/// `threshold_pct` % of the group's targets Up (0: always).
fn ejection_allowed(targets: &HashMap<u64, Entry>, g: u64, threshold_pct: u8) -> bool {
    if threshold_pct == 0 {
        return true;
    }
    let (mut members, mut up) = (0u64, 0u64);
    for e in targets.values().filter(|e| e.group == Some(g)) {
        members += 1;
        if e.state.state == HealthState::Up {
            up += 1;
        }
    }
    up.saturating_sub(1) * 100 >= u64::from(threshold_pct) * members
}

/// A group is in panic while one of its targets has an ejection held back
/// within its passive window; records when that began.
fn refresh_panic(inner: &mut Inner, g: u64, now: Instant, now_sys: SystemTime) {
    let in_panic = inner
        .targets
        .values()
        .any(|e| e.group == Some(g) && e.state.held(now, &e.spec));
    let gs = inner.groups.entry(g).or_default();
    match (in_panic, gs.panic_since) {
        (true, None) => gs.panic_since = Some(now_sys),
        (false, Some(_)) => gs.panic_since = None,
        _ => {}
    }
}

/// SplitMix64: enough randomness for jitter, no dependency.
struct Rng(u64);

impl Rng {
    fn new(key: u64, instance: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(t ^ key.rotate_left(32) ^ instance.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Gap to the next check start: uniform in `[interval × (1 − jitter), interval]`.
fn next_gap(spec: &CheckSpec, rng: &mut Rng) -> Duration {
    let shrink = f64::from(spec.jitter_pct) / 100.0 * rng.unit();
    spec.interval.mul_f64(1.0 - shrink)
}

/// One target's check loop; runs until aborted or its entry is removed/replaced.
async fn run_target(
    shared: Arc<Shared>,
    key: u64,
    instance: u64,
    addr: SocketAddrV4,
    spec: CheckSpec,
) {
    let mut rng = Rng::new(key, instance);
    let source = spec.source.or(shared.source_addr);
    // `port` checks another port of the backend (e.g. an admin port).
    let addr = spec.port.map_or(addr, |p| SocketAddrV4::new(*addr.ip(), p));
    let mut next = tokio::time::Instant::now() + spec.interval.mul_f64(rng.unit());
    loop {
        tokio::time::sleep_until(next).await;
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.cap_waits.fetch_add(1, Ordering::Relaxed);
                match shared.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return, // semaphore closed: shutting down
                }
            }
        };
        let start = tokio::time::Instant::now();
        #[cfg(test)]
        shared
            .start_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, start.into_std()));
        shared.checks_started.fetch_add(1, Ordering::Relaxed);
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(
            spec.timeout,
            check(&shared, key, &spec.kind, addr, source),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!("timeout after {} ms", spec.timeout.as_millis())),
        };
        let latency = start.elapsed();
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.checks_completed.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        if !shared.record_check(key, instance, result, latency) {
            return;
        }
        // Fixed rate from check start; never before the previous check ended.
        next = (start + next_gap(&spec, &mut rng)).max(tokio::time::Instant::now());
    }
}

/// One probe of `addr`.
#[cfg(not(test))]
async fn check(
    _shared: &Shared,
    _key: u64,
    kind: &CheckKind,
    addr: SocketAddrV4,
    source: Option<Ipv4Addr>,
) -> Result<(), String> {
    probe::probe(kind, addr, source).await
}

/// One probe of `addr`, or the fake outcome a test set for `key`.
#[cfg(test)]
async fn check(
    shared: &Shared,
    key: u64,
    kind: &CheckKind,
    addr: SocketAddrV4,
    source: Option<Ipv4Addr>,
) -> Result<(), String> {
    let fake = shared
        .fakes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .copied();
    match fake {
        Some(f) => f.probe().await,
        None => probe::probe(kind, addr, source).await,
    }
}

/// Now on the clock of the runtime this thread is in (tokio's; with tokio's
/// `test-util` and a paused clock this is simulated time, else the monotonic clock).
fn clock_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// CPU time of thread `tid` of this process (utime + stime).
fn thread_cpu(tid: i32) -> Option<Duration> {
    if tid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    cpu_from_stat(&stat)
}

/// Parses utime + stime (fields 14 and 15) from a `/proc/.../stat` line.
pub(crate) fn cpu_from_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 → index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(Duration::from_nanos(
        (utime + stime).saturating_mul(1_000_000_000 / hz),
    ))
}
