//! The daemon's view of the health module (`crate::health`).

use crate::health::{self, CheckSpec};
use fulcrum_model::health::HealthCheck;
use serde::Serialize;
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
            .into_iter()
            .map(|t| health::Target { key: u64::from(t.slot), addr: t.addr, spec: t.spec })
            .collect();
        if let Err(e) = self.inner.set_targets(t) {
            eprintln!("fulcrum-controlplane: health targets refused: {e}");
        }
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
            })
            .collect()
    }

    pub fn report_passive(&self, slot: u32, failures_total: u64) {
        self.inner.report_passive(u64::from(slot), failures_total);
    }
}
