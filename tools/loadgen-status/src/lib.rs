//! What `fulcrum-loadgen` reports, as one type: the status file it rewrites
//! every 100 ms (`--status-file`) and the one summary line it prints on stdout
//! at exit are both this record as JSON. The generator serializes it; the
//! tests deserialize it; scripts/bench.sh reads its fields with jq.

use serde::{Deserialize, Serialize};

/// Counters of one generator (clients and backends).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Client connections opened (connect called).
    pub connects: u64,
    /// Client connections that ended cleanly after their response(s).
    pub closed_ok: u64,
    /// Responses received complete and verified.
    pub responses: u64,
    /// Bulk payload bytes received and verified.
    pub bulk_bytes: u64,
    /// Client connections reset or closed before their response was complete.
    pub failed: u64,
    /// Responses (or bulk bytes) that differed from what was expected.
    pub bad_responses: u64,
    /// Client connections given up after `timeout` without progress.
    pub timeouts: u64,
    /// Requests the backends received complete and verified (and answered).
    pub served: u64,
    /// Requests the backends received that differed from the expected one.
    pub bad_requests: u64,
    /// Backend connections accepted.
    pub accepted: u64,
}

/// One report: the counters, the port's and the loop's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When it was taken, seconds since the Unix epoch.
    pub time: f64,
    /// `Conn`, `Keepalive` or `Bulk`.
    pub mode: String,
    /// Seconds since the generator's loop started.
    pub seconds: f64,
    #[serde(flatten)]
    pub counters: Counters,
    /// Frames the port received (DPDK's count).
    pub rx_packets: u64,
    /// Frames the device took for transmission.
    pub tx_packets: u64,
    /// Frames the device did not take (its ring full).
    pub tx_dropped: u64,
    /// Frames the port missed (DPDK's count).
    pub rx_missed: u64,
    /// Frames for no client or backend address.
    pub unknown: u64,
    /// Frames dropped because a shard's inbox was full.
    pub inbox_full: u64,
    /// Nanoseconds in loop iterations that had work.
    pub busy_ns: u64,
    /// Loop iterations.
    pub loops: u64,
    /// Client connections open (connecting or waiting) now.
    pub in_flight: u64,
}
