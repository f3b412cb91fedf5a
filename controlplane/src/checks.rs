//! The daemon's view of the health module (`crate::health`).

use crate::health::{self, CheckSpec};
use fulcrum_model::health::HealthCheck;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Up,
    Down,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub slot: u32,
    pub addr: SocketAddrV4,
    pub spec: CheckSpec,
    /// The VIP (id) whose panic threshold protects it; `None` for a drained
    /// backend (it does not count towards the VIP's healthy share).
    pub vip: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub slot: u32,
    pub state: HealthState,
    /// Seconds since the last transition (or since checks began).
    pub since_secs: Option<f64>,
    pub last_error: Option<String>,
    pub latency_last_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Passive ejections the VIP's panic threshold held back.
    pub ejections_skipped: u64,
}

/// A VIP's panic state (its checked, non-drained backends).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VipPanic {
    /// Seconds since the VIP went into panic; `None`: not in panic.
    pub since_secs: Option<f64>,
    pub ejections_skipped: u64,
    pub backends: usize,
    pub up: usize,
    pub threshold_pct: u8,
}

/// The validated meaning of a VIP's `health` table (`None`: it has none,
/// or it is invalid, which validation refuses before it is ever stored).
pub fn spec_of(h: Option<&HealthCheck>) -> Option<CheckSpec> {
    CheckSpec::try_from(h?.clone()).ok()
}

pub struct Checker {
    inner: health::HealthChecker,
}

impl Checker {
    pub fn start(source: Option<Ipv4Addr>, max_in_flight: usize) -> Result<Checker, String> {
        let inner = health::HealthChecker::start(health::CheckerConfig { max_in_flight, source_addr: source })
            .map_err(|e| e.to_string())?;
        Ok(Checker { inner })
    }

    pub fn set_targets(&self, targets: Vec<Target>) {
        let t: Vec<health::Target> = targets
            .iter()
            .cloned()
            .map(|t| health::Target { key: u64::from(t.slot), addr: t.addr, spec: t.spec })
            .collect();
        let groups: HashMap<u64, u64> =
            targets.iter().filter_map(|t| Some((u64::from(t.slot), u64::from(t.vip?)))).collect();
        if let Err(e) = self.inner.set_targets(t) {
            eprintln!("fulcrum-controlplane: health targets refused: {e}");
        }
        self.inner.set_groups(&groups);
    }

    /// Panic state by VIP id.
    pub fn panics(&self) -> HashMap<u16, VipPanic> {
        let now = SystemTime::now();
        self.inner
            .groups()
            .into_iter()
            .map(|g| {
                let p = VipPanic {
                    since_secs: g
                        .panic_since
                        .map(|t| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64())),
                    ejections_skipped: g.ejections_skipped,
                    backends: g.targets,
                    up: g.up,
                    threshold_pct: g.threshold_pct,
                };
                (g.group as u16, p)
            })
            .collect()
    }

    pub fn snapshot(&self) -> Vec<Status> {
        let now = SystemTime::now();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        self.inner
            .snapshot()
            .into_iter()
            .map(|s| Status {
                slot: s.key as u32,
                state: match s.state {
                    health::HealthState::Up => HealthState::Up,
                    health::HealthState::Down => HealthState::Down,
                    health::HealthState::Unknown => HealthState::Unknown,
                },
                since_secs: now.duration_since(s.since).ok().map(|d| d.as_secs_f64()),
                last_error: s.last_error,
                latency_last_ms: ms(s.latency_last),
                latency_p50_ms: ms(s.latency_p50),
                latency_p99_ms: ms(s.latency_p99),
                ejections_skipped: s.ejections_skipped,
            })
            .collect()
    }

    pub fn report_passive(&self, slot: u32, failures_total: u64) {
        self.inner.report_passive(u64::from(slot), failures_total);
    }
}
