//! What the daemon needs from the shared-memory segment, kept apart from
//! `fulcrum-shm` so the daemon's logic does not depend on its layout.

use crate::model::{Affinity, Mode, ProxyProtocol, Rate};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Up,
    Down,
    Drain,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PubBackend {
    pub slot: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PubVip {
    pub id: u16,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub mode: Mode,
    pub affinity: Affinity,
    pub max_connections: u32,
    pub new_conn_rate: Option<Rate>,
    pub client_rate: Option<Rate>,
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub connect_tries: u8,
    pub proxy_protocol: ProxyProtocol,
    pub table_size: u32,
    pub backends: Vec<PubBackend>,
}

/// One whole configuration generation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generation {
    pub vips: Vec<PubVip>,
}

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
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VipCounters {
    pub connections_active: u64,
    pub connections_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendCounters {
    pub connections_active: u64,
    pub connections_total: u64,
    pub connect_failures: u64,
    /// Bytes sent to the backend.
    pub bytes_to: u64,
    /// Bytes received from the backend.
    pub bytes_from: u64,
}

/// Counters summed over the dataplane's lcores.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub vips: HashMap<u16, VipCounters>,
    pub backends: HashMap<u32, BackendCounters>,
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
    fn counters(&mut self, vip_ids: &[u16], slots: &[u32]) -> Counters;
    /// (VIP ids, backend slots) the segment has room for.
    fn capacity(&self) -> (usize, usize);
    /// Clean shutdown: gives up the control-plane role.
    fn close(&mut self);
}
