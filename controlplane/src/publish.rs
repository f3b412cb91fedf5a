//! What the daemon needs from the shared-memory segment, kept apart from
//! `fulcrum-shm` so the daemon's logic does not depend on its layout. What
//! is published is the model's [`Generation`]; what the dataplane says back
//! is its [`DataplaneReport`] and its counters.

use crate::proto::LcoreStats;
use fulcrum_model::{DataplaneReport, Generation};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The dataplane's side of the segment, as last seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataplaneView {
    /// The dataplane has ever written its heartbeat.
    pub present: bool,
    pub pid: u32,
    /// Changes on every dataplane start.
    pub epoch: u64,
    /// Dataplane's own monotonic heartbeat counter / timestamp (opaque).
    pub beat: u64,
    /// Seconds since the dataplane started, when it says.
    pub uptime_secs: Option<u64>,
    pub applied_generation: u64,
    pub rejected_generations: u64,
    pub last_rejection: Option<String>,
    /// What is wrong with the shared segment itself, as this process maps
    /// it (truncated, replaced or unlinked), if anything.
    pub segment: Option<String>,
}

/// A VIP's counters, summed over lcores. Proxy VIPs: connections and bytes
/// both ways. Forwarding VIPs: `connections_total` = new flows, `packets_in`,
/// `bytes_in`, and `drops["forward"]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VipCounters {
    pub connections_active: u64,
    pub connections_total: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// By reason (the Prometheus `reason` label).
    pub drops: BTreeMap<String, u64>,
    /// Proxy VIPs' SYN-flood defence: SYNs seen, SYN cookies sent, validated
    /// (became a connection) and rejected.
    pub syns: u64,
    pub cookies_sent: u64,
    pub cookies_validated: u64,
    pub cookies_rejected: u64,
    /// Gauge: connections whose client has not completed its handshake.
    pub half_open: u64,
    /// Gauge: lcores in flood mode (SYNs answered with cookies) for the VIP.
    pub flood_lcores: u64,
}

/// A backend slot's counters, summed over lcores. Forwarding VIPs:
/// `connections_total` = new flows, `packets`, `bytes_to`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackendCounters {
    pub connections_active: u64,
    pub connections_total: u64,
    pub connect_failures: u64,
    /// Packets sent to the backend (forwarding modes).
    pub packets: u64,
    /// Bytes sent to the backend.
    pub bytes_to: u64,
    /// Bytes received from the backend.
    pub bytes_from: u64,
}

/// Counters summed over the dataplane's lcores, and each lcore's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub vips: HashMap<u16, VipCounters>,
    pub backends: HashMap<u32, BackendCounters>,
    /// The lcore-level counters of each lcore in use, by lcore.
    pub lcores: Vec<LcoreStats>,
}

/// The segment, as the control plane uses it.
pub trait Segment: Send {
    /// Publishes a whole generation; returns its number.
    fn publish(&mut self, generation: &Generation) -> Result<u64, String>;
    /// If the segment already holds exactly `generation` (a restarted
    /// control plane with unchanged configuration), its number.
    fn already_published(&mut self, generation: &Generation) -> Option<u64>;
    /// Bumps the control plane's heartbeat.
    fn heartbeat(&mut self);
    fn dataplane(&mut self) -> DataplaneView;
    /// What the running dataplane says back: its facts (VIPs are checked
    /// against them before publication), the generation every lcore has
    /// installed and the VIPs it refused. `None`: no dataplane has written one.
    fn report(&mut self) -> Option<DataplaneReport>;
    fn counters(&mut self, vip_ids: &[u16], slots: &[u32]) -> Counters;
    /// (VIP ids, backend slots) the segment has room for.
    fn capacity(&self) -> (usize, usize);
    /// Clean shutdown: gives up the control-plane role.
    fn close(&mut self);
}

/// What a [`MemorySegment`] holds; shared with whoever made it.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// Every generation published, with its number, oldest first.
    pub published: Vec<(u64, Generation)>,
    pub dataplane: DataplaneView,
    pub report: Option<DataplaneReport>,
    pub counters: Counters,
    pub closed: bool,
}

/// A [`Segment`] in memory: a test double (and a dry run), no dataplane.
#[derive(Clone, Default)]
pub struct MemorySegment {
    pub state: Arc<Mutex<MemoryState>>,
}

impl MemorySegment {
    pub fn new() -> MemorySegment {
        MemorySegment::default()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last generation published, with its number.
    pub fn last(&self) -> Option<(u64, Generation)> {
        self.lock().published.last().cloned()
    }
}

impl Segment for MemorySegment {
    fn publish(&mut self, generation: &Generation) -> Result<u64, String> {
        generation.validate().map_err(|e| e.to_string())?;
        let mut s = self.lock();
        let n = s.published.last().map_or(1, |(n, _)| n + 1);
        s.published.push((n, generation.clone()));
        Ok(n)
    }

    fn already_published(&mut self, generation: &Generation) -> Option<u64> {
        self.lock().published.last().filter(|(_, g)| g == generation).map(|(n, _)| *n)
    }

    fn heartbeat(&mut self) {}

    fn dataplane(&mut self) -> DataplaneView {
        self.lock().dataplane.clone()
    }

    fn report(&mut self) -> Option<DataplaneReport> {
        self.lock().report.clone()
    }

    fn counters(&mut self, vip_ids: &[u16], slots: &[u32]) -> Counters {
        let s = self.lock();
        Counters {
            vips: vip_ids.iter().filter_map(|i| Some((*i, s.counters.vips.get(i)?.clone()))).collect(),
            backends: slots.iter().filter_map(|i| Some((*i, s.counters.backends.get(i)?.clone()))).collect(),
            lcores: s.counters.lcores.clone(),
        }
    }

    fn capacity(&self) -> (usize, usize) {
        (fulcrum_model::MAX_VIPS, fulcrum_model::MAX_BACKENDS)
    }

    fn close(&mut self) {
        self.lock().closed = true;
    }
}
