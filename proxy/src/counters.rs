//! Counters: plain integers the engine (single writer, on its lcore) bumps,
//! read by the dataplane through `&Engine` or a [`VipSnapshot`] it publishes.

use std::net::Ipv4Addr;

use fulcrum_model::BackendState;

/// Per VIP (on this engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VipCounters {
    /// Client connections admitted (a SYN that got a connection slot).
    pub accepted: u64,
    /// Admitted and not yet released.
    pub active: u64,
    /// Bytes received from clients and relayed towards backends.
    pub bytes_from_clients: u64,
    /// Bytes received from backends and relayed towards clients.
    pub bytes_to_clients: u64,
    /// Connections ended by a client RST (propagated to the backend).
    pub client_resets: u64,
    /// Connections ended by a backend RST after connect (propagated to the client).
    pub backend_resets: u64,
    /// SYNs reset because `max_connections` were active.
    pub drop_limit: u64,
    /// SYNs reset because no backend has weight.
    pub drop_no_backend: u64,
    /// Clients reset because every backend tried failed to connect.
    pub drop_connect_failed: u64,
    /// Clients reset because no local port was free for the backend side.
    pub drop_no_port: u64,
    /// Connections reset both ways after `idle_timeout`.
    pub drop_idle_timeout: u64,
    /// SYNs reset because the VIP's `new_conn_rate` bucket was empty.
    pub drop_rate: u64,
    /// SYNs reset because the client's `client_rate` bucket was empty.
    pub drop_client_rate: u64,
    /// Services of a connection that left data unrelayed for want of
    /// `bandwidth` tokens (relaying paused, resumed on refill).
    pub throttled_splices: u64,
    /// Client-table entries evicted to make room for this VIP's clients
    /// (the table is too small for the client population if this grows).
    pub client_table_evictions: u64,
    /// SYNs to this VIP that reached admission or a cookie (plausible flags,
    /// good checksums): every one, whatever became of it.
    pub syns: u64,
    /// SYNs answered with a SYN cookie (flood mode): nothing was kept for them.
    pub cookies_sent: u64,
    /// ACKs that carried a valid cookie and became a connection (they then go
    /// through admission like a SYN; a refusal there is counted by its reason).
    pub cookies_validated: u64,
    /// ACKs for no connection of this VIP whose cookie did not validate
    /// (forged, expired, wrong secret, or a stray ACK): answered with RST.
    pub cookies_rejected: u64,
    /// Gauge: connections whose client has not completed its handshake
    /// (SYN-RECEIVED with the SYN-ACK held or sent). Flood mode starts when
    /// this reaches the engine's cookie threshold.
    pub half_open: u64,
    /// Half-open connections aborted (both sides) because the client did not
    /// complete the handshake within `half_open_timeout` after admission.
    pub drop_half_open_timeout: u64,
}

/// Per backend of a VIP (on this engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCounters {
    /// Connection attempts (SYNs sent, retries included).
    pub attempts: u64,
    /// Attempts that reached ESTABLISHED.
    pub opened: u64,
    /// Opened and not yet released.
    pub active: u64,
    /// Attempts refused (RST) or unanswered within `connect_timeout`.
    pub connect_failures: u64,
    /// Established connections the backend reset.
    pub resets: u64,
    pub bytes_to_backend: u64,
    pub bytes_from_backend: u64,
}

/// Engine-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Frames taken from the device.
    pub frames_in: u64,
    /// Frames not for us (other addresses, other protocols, fragments), dropped
    /// before smoltcp.
    pub frames_not_ours: u64,
    /// TCP segments for no known connection and not an admissible SYN; smoltcp
    /// answers them with RST.
    pub unknown_flow: u64,
    /// Sockets smoltcp iterated over (ingress, egress, poll_at): the engine's
    /// per-packet work, reported to show it does not grow with connections.
    pub sockets_visited: u64,
    /// Client-table evictions, all VIPs.
    pub client_table_evictions: u64,
    /// TCP segments to us (a VIP or our own address) with an impossible flag
    /// set (null, SYN+FIN, SYN+RST, FIN without ACK, xmas, ...; see
    /// `frame::plausible`), dropped before anything else is done for them.
    pub drop_bad_flags: u64,
    /// TCP segments to us (plausible flags) with a bad IPv4 header or TCP
    /// checksum, dropped before anything else is done for them: a SYN before
    /// admission (no connection, no backend attempt, no rate token, no RST),
    /// an ACK before cookie validation, any segment before smoltcp (which
    /// does not verify again).
    pub drop_bad_checksum: u64,
}

/// A VIP's counters with its backends', owned, for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSnapshot {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// No longer configured: admits nothing, its connections are draining.
    pub removed: bool,
    pub counters: VipCounters,
    /// Flood mode (SYNs answered with cookies) on this engine, since when
    /// (the engine's clock, as given to `poll`); `None` when off.
    pub flood_since: Option<smoltcp::time::Instant>,
    pub backends: Vec<BackendSnapshot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSnapshot {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
    /// No longer listed by the VIP: gets no new connection, existing ones draining.
    pub removed: bool,
    pub counters: BackendCounters,
}
