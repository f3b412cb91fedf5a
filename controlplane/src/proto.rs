//! The control socket protocol: one JSON object per line each way, typed on
//! both ends (the daemon and fulcrumctl share these types).
//!
//! Request: `{"cmd":"backend_weight","vip":"198.18.1.1:80","backend":"198.18.0.21:8080","weight":5}`
//! Response: `{"ok":true,"data":...}` (`data` is the [`Reply`] of that
//! request) or `{"ok":false,"error":"..."}`.
//!
//! A VIP is named by [`VipKey`]: `address:port`, plus `/udp` for a UDP VIP
//! (`/tcp` is the default and is not written).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use fulcrum_model::health::HealthCheck;
use fulcrum_model::{
    Affinity, BackendState, Facts, Mac, Mode, Proto, ProxyProtocol, Rate, Tunnel, Vip, VipRefusal,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// ------------------------------------------------------------------ names

/// What identifies a VIP: address, port (0: every port, forwarding modes)
/// and protocol. Written `198.18.1.1:80` (TCP) or `198.18.1.1:53/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub address: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl VipKey {
    pub fn new(address: Ipv4Addr, port: u16, proto: Proto) -> VipKey {
        VipKey { address, port, proto }
    }

    pub fn of(v: &Vip) -> VipKey {
        VipKey { address: v.address, port: v.port, proto: v.proto }
    }

    pub fn endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }

    pub fn is(&self, v: &Vip) -> bool {
        v.key() == (self.address, self.port, self.proto)
    }
}

impl fmt::Display for VipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Tcp => write!(f, "{}:{}", self.address, self.port),
            Proto::Udp => write!(f, "{}:{}/udp", self.address, self.port),
        }
    }
}

impl FromStr for VipKey {
    type Err = String;

    /// `A.B.C.D:PORT`, optionally followed by `/tcp` or `/udp`.
    fn from_str(s: &str) -> Result<VipKey, String> {
        let (addr, proto) = match s.rsplit_once('/') {
            Some((a, "udp")) => (a, Proto::Udp),
            Some((a, "tcp")) => (a, Proto::Tcp),
            Some((_, p)) => return Err(format!("{s:?}: {p:?} is not a protocol (tcp or udp, as in 198.18.1.1:53/udp)")),
            None => (s, Proto::Tcp),
        };
        let e = parse_endpoint(addr).map_err(|e| format!("{e} (a UDP VIP adds /udp: 198.18.1.1:53/udp)"))?;
        Ok(VipKey { address: *e.ip(), port: e.port(), proto })
    }
}

impl Serialize for VipKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `a.b.c.d:port` (port 0 to 65535; whether 0 is allowed is the
/// model's validation to say) with a clear message.
pub fn parse_endpoint(s: &str) -> Result<SocketAddrV4, String> {
    let (ip, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not an IPv4 address and port like 198.18.1.1:80"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address (like 198.18.1.1)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535"))?;
    Ok(SocketAddrV4::new(ip, port))
}

// ------------------------------------------------------------------ requests

/// Options of `vip add`; unset ones take the model's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipOptions {
    pub mode: Option<Mode>,
    pub affinity: Option<Affinity>,
    pub max_connections: Option<u32>,
    pub connect_timeout_ms: Option<u32>,
    pub connect_tries: Option<u8>,
    pub idle_timeout_ms: Option<u32>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub table_size: Option<u32>,
    /// Required by, and only for, tunnel mode.
    pub tunnel: Option<Tunnel>,
    pub health: Option<HealthCheck>,
}

/// `limit set`: each field set is changed; `clear` names limits removed
/// (`new-conn-rate`, `client-rate`, `bandwidth`, `max-connections`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitChange {
    pub new_conn_rate: Option<u32>,
    pub burst: Option<u32>,
    pub client_rate: Option<u32>,
    pub client_burst: Option<u32>,
    pub bandwidth: Option<u64>,
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub clear: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    VipList,
    VipAdd {
        vip: VipKey,
        #[serde(default)]
        options: Box<VipOptions>,
    },
    VipDel {
        vip: VipKey,
    },
    BackendList {
        vip: Option<VipKey>,
    },
    BackendAdd {
        vip: VipKey,
        backend: SocketAddrV4,
        weight: Option<u32>,
        #[serde(default)]
        mac: Option<Mac>,
    },
    BackendDel {
        vip: VipKey,
        backend: SocketAddrV4,
    },
    BackendWeight {
        vip: VipKey,
        backend: SocketAddrV4,
        weight: u32,
    },
    BackendDrain {
        vip: VipKey,
        backend: SocketAddrV4,
    },
    BackendUndrain {
        vip: VipKey,
        backend: SocketAddrV4,
    },
    LimitShow {
        vip: Option<VipKey>,
    },
    LimitSet {
        vip: VipKey,
        change: LimitChange,
    },
    Stats,
    Health,
    /// Re-read the TOML file (as SIGHUP does).
    Reload,
    /// Take this instance out of (or back into) rotation: out, every VIP
    /// is withdrawn from BGP while the dataplane keeps serving the flows it
    /// has; persisted in the state file.
    Rotation {
        rotation: Rotation,
    },
}

/// Whether this instance is in rotation (its VIPs may be announced) or out
/// (every VIP withdrawn by the operator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    #[default]
    In,
    Out,
}

impl Rotation {
    pub fn name(self) -> &'static str {
        match self {
            Rotation::In => "in",
            Rotation::Out => "out",
        }
    }
}

/// `rotation in|out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationReply {
    pub rotation: Rotation,
    /// It was not already so.
    pub changed: bool,
    /// `[bgp]` is configured (without it nothing is announced either way).
    pub bgp_configured: bool,
}

impl Request {
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Request::Status
                | Request::VipList
                | Request::BackendList { .. }
                | Request::LimitShow { .. }
                | Request::Stats
                | Request::Health
        )
    }
}

// ------------------------------------------------------------------ replies

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub controlplane: ControlplaneStatus,
    pub dataplane: DataplaneStatus,
    pub generation: GenerationStatus,
    /// VIPs and backends configured.
    pub vips: usize,
    pub backends: usize,
    /// VIPs whose panic threshold holds passive ejection back now.
    #[serde(default)]
    pub vips_in_panic: Vec<VipPanicInfo>,
    /// BGP announcement (absent from an older daemon's reply).
    #[serde(default)]
    pub bgp: BgpStatus,
}

/// `status`'s `bgp` block: what this instance tells its BIRD.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// `[bgp]` is configured; when not, nothing else is set.
    pub configured: bool,
    pub bird_socket: Option<String>,
    pub routes_file: Option<String>,
    pub next_hop: Option<Ipv4Addr>,
    /// BIRD's BGP protocol watched.
    pub protocol: Option<String>,
    /// Its state from `birdc show protocols` (`Established`, `Active`,
    /// `Connect`, ..., `down`), refreshed about once a second; `None`
    /// until read.
    pub session: Option<String>,
    /// The rest of that line (BIRD's info column), or why it could not be read.
    pub session_info: Option<String>,
    /// How long ago it was read.
    pub session_age_secs: Option<f64>,
    pub rotation: Rotation,
    /// Addresses in the routes file BIRD was last configured with.
    pub routes: Vec<Ipv4Addr>,
    /// `birdc configure` runs that failed (retried every tick).
    pub configure_failures: u64,
    pub last_error: Option<String>,
    /// How long the last successful `birdc configure` took.
    pub last_configure_ms: Option<f64>,
    /// Every configured VIP: announced or withdrawn, why, since when.
    pub vips: Vec<VipAnnouncement>,
}

/// One VIP's announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub vip: VipKey,
    /// Its address is in the routes BIRD has (or is being given).
    pub announced: bool,
    /// Why the VIP itself is withdrawn (`dataplane down`, `generation N not
    /// applied (applied M)`, `refused by the dataplane: ...`, `no healthy
    /// backend`, `out of rotation`); `None` when its own rule holds. A VIP
    /// withdrawn by its own rule may still be `announced` because another
    /// VIP on the same address is.
    pub reason: Option<String>,
    /// Unix seconds since it is so, and how long that is.
    pub since_unix: f64,
    pub for_secs: f64,
}

/// A VIP in panic: passive ejection would take its healthy share below
/// `threshold_pct`, so it is held back (active checks still count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipPanicInfo {
    pub vip: VipKey,
    pub since_secs: f64,
    pub ejections_skipped: u64,
    /// Its checked, non-drained backends, and how many are up.
    pub backends: usize,
    pub up: usize,
    pub threshold_pct: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlplaneStatus {
    pub alive: bool,
    pub pid: u32,
    pub uptime_secs: f64,
    pub config: String,
    pub state_file: String,
    pub shm: String,
    pub socket: String,
    /// Address the Prometheus endpoint listens on.
    pub prometheus: Option<String>,
    pub last_reload: Option<ReloadOutcome>,
    pub publish_error: Option<String>,
    /// Clients of the control socket and of the Prometheus endpoint
    /// (absent from an older daemon's reply).
    #[serde(default)]
    pub clients: ClientsStatus,
}

/// Clients of the control socket and of the Prometheus endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientsStatus {
    pub control: ClientCounters,
    pub prometheus: ClientCounters,
}

/// One endpoint's clients: served now (at most `max`), and the connections
/// cut since the start: refused (over the cap), oversize (a request over
/// 64 KiB), timed out (no complete request, or reply not taken, in time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCounters {
    pub active: u64,
    pub max: u64,
    pub refused: u64,
    pub oversize: u64,
    pub timed_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Unix time, seconds.
    pub at: f64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The dataplane as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataplaneState {
    #[serde(rename = "never seen")]
    NeverSeen,
    /// Heartbeat changed within the last second.
    #[serde(rename = "up")]
    Up,
    /// Clean shutdown.
    #[serde(rename = "stopped")]
    Stopped,
    /// Heartbeat stale: died or hung.
    #[serde(rename = "down")]
    Down,
}

impl DataplaneState {
    pub fn name(self) -> &'static str {
        match self {
            DataplaneState::NeverSeen => "never seen",
            DataplaneState::Up => "up",
            DataplaneState::Stopped => "stopped",
            DataplaneState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub alive: bool,
    pub state: DataplaneState,
    pub pid: Option<u32>,
    pub epoch: u64,
    pub uptime_secs: Option<u64>,
    pub heartbeat_age_ms: Option<u64>,
    pub restarts_seen: u64,
    pub rejected_generations: u64,
    pub last_rejection: Option<String>,
    /// What the dataplane published about itself (VIPs are checked against it).
    pub facts: Option<Facts>,
    /// The shared-memory segment is truncated, replaced or unlinked (the
    /// control plane's own mapping, re-checked every 100 ms): the two
    /// daemons may no longer hear each other. `None`: fine.
    #[serde(default)]
    pub segment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStatus {
    /// Last generation the control plane published.
    pub published: u64,
    /// Generation every lcore of the dataplane has installed.
    pub applied: u64,
    /// VIPs of the applied generation the dataplane left out, and why (the
    /// others serve).
    pub refused: Vec<VipRefusal>,
}

/// A change (`vip add`, `backend drain`, `limit set`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeReply {
    pub generation: u64,
}

/// `reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub generation: u64,
    pub changed: bool,
}

/// One backend in `vip list`: its desired configuration and counter slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub backend: SocketAddrV4,
    pub slot: Option<u32>,
    pub weight: u32,
    pub mac: Option<Mac>,
    /// Operator drain.
    pub drain: bool,
}

/// One VIP in `vip list`: its desired configuration and VIP id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipInfo {
    pub vip: VipKey,
    pub id: Option<u16>,
    pub mode: Mode,
    pub proto: Proto,
    pub tunnel: Option<Tunnel>,
    pub affinity: Affinity,
    pub max_connections: u32,
    pub connect_timeout_ms: u32,
    pub connect_tries: u8,
    pub idle_timeout_ms: u32,
    pub proxy_protocol: ProxyProtocol,
    pub table_size: u32,
    pub new_conn_rate: Option<Rate>,
    pub client_rate: Option<Rate>,
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub health: Option<HealthCheck>,
    pub backends: Vec<BackendEntry>,
    /// The digest of the Maglev table the dataplane installed for the VIP,
    /// as it reported it; `None` until it has.
    #[serde(default)]
    pub table: Option<VipTableInfo>,
    /// Its address is announced over BGP; `None` without `[bgp]` (and from
    /// an older daemon).
    #[serde(default)]
    pub announced: Option<bool>,
}

/// The Maglev table the dataplane installed for a VIP
/// ([`fulcrum_model::TableDigest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipTableInfo {
    /// 16 lowercase hex digits ([`fulcrum_maglev::MaglevTable::digest`]).
    pub digest: String,
    /// The generation the dataplane had applied when it reported this digest.
    pub generation: u64,
    /// Table size.
    pub slots: u32,
    /// Backends with weight in the table (up, not drained, weight > 0).
    pub backends: u32,
}

/// Health as shown: a checked backend's state, or `unchecked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthName {
    Up,
    Down,
    Unknown,
    Unchecked,
}

impl HealthName {
    pub fn name(self) -> &'static str {
        match self {
            HealthName::Up => "up",
            HealthName::Down => "down",
            HealthName::Unknown => "unknown",
            HealthName::Unchecked => "unchecked",
        }
    }
}

/// One backend in `backend list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub vip: VipKey,
    pub backend: SocketAddrV4,
    pub slot: Option<u32>,
    pub weight: u32,
    pub mac: Option<Mac>,
    pub drain: bool,
    pub health: HealthName,
    /// As published.
    pub state: Option<BackendState>,
    pub connections_active: u64,
}

/// One VIP in `limit show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsInfo {
    pub vip: VipKey,
    pub max_connections: u32,
    pub new_conn_rate: Option<Rate>,
    pub client_rate: Option<Rate>,
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    pub dataplane_alive: bool,
    pub vips: Vec<VipStats>,
    /// Each dataplane lcore's own counters (empty from a daemon that
    /// predates them, or before any dataplane ran).
    #[serde(default)]
    pub lcores: Vec<LcoreStats>,
}

/// One dataplane lcore's counters as it last wrote them to the shared
/// segment: traffic, load and every drop reason the dataplane declares (each
/// one present, zero or not). They count since that dataplane started (a
/// restarted dataplane starts again from 0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LcoreStats {
    pub lcore: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Nanoseconds spent in loop iterations that had work.
    pub busy_ns: u64,
    /// af_packet: frames the kernel offered to the lcore's RX ring (0 on
    /// other devices); those it found full are `drops.rx_ring_full`.
    pub rx_ring_frames: u64,
    /// The dataplane's drops by reason: frame parsing (`ipv4_bad_checksum`,
    /// ...) and the lcore's own (`tx_full`, `rx_ring_full`, ...).
    pub drops: BTreeMap<String, u64>,
    /// The forwarder's drops by reason (all 0 without forwarding VIPs).
    pub forward_drops: BTreeMap<String, u64>,
}

/// A VIP's counters. Proxy VIPs count connections (`connections_*`) and
/// bytes both ways; forwarding VIPs count flows (`connections_total`: new
/// flows), packets and bytes in, and `drops.forward`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipStats {
    pub vip: VipKey,
    pub id: Option<u16>,
    pub mode: Mode,
    pub proto: Proto,
    pub connections_active: u64,
    pub connections_total: u64,
    pub new_per_sec: f64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub drops: BTreeMap<String, u64>,
    /// Proxy VIPs: the SYN-flood defence; `None` for forwarding VIPs (and
    /// from a daemon that predates it).
    #[serde(default)]
    pub syn: Option<SynStats>,
    pub backends: Vec<BackendStats>,
}

/// A proxy VIP's SYNs and SYN cookies, summed over the dataplane's lcores
/// (half-open connections aborted by the half-open timeout are in the VIP's
/// `drops.half_open_timeout`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SynStats {
    /// SYNs that reached admission or a cookie (plausible flags, good
    /// checksums), whatever became of them.
    pub syns: u64,
    /// SYNs answered with a SYN cookie (flood mode).
    pub cookies_sent: u64,
    /// ACKs whose cookie validated and became a connection.
    pub cookies_validated: u64,
    /// ACKs for no connection whose cookie did not validate (answered with RST).
    pub cookies_rejected: u64,
    /// Connections whose client has not completed its handshake, now.
    pub half_open: u64,
    /// Flood mode (SYNs answered with cookies) is on for the VIP on at least
    /// one lcore.
    pub flood: bool,
    /// Lcores in flood mode for the VIP.
    pub flood_lcores: u64,
    /// When the control plane first saw flood mode on (Unix seconds), as long
    /// as it stays on; precise to the counter read interval (about a second).
    pub flood_since_unix: Option<f64>,
    /// Seconds since `flood_since_unix` (the daemon's monotonic clock).
    pub flood_for_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    pub backend: SocketAddrV4,
    pub slot: Option<u32>,
    pub connections_active: u64,
    /// Connections made (proxy) or new flows sent (forwarding).
    pub connections_total: u64,
    pub new_per_sec: f64,
    pub connect_failures: u64,
    pub packets: u64,
    pub bytes_to: u64,
    pub bytes_from: u64,
}

/// One backend in `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthInfo {
    pub vip: VipKey,
    pub backend: SocketAddrV4,
    pub slot: Option<u32>,
    /// The check's kind (`tcp`, `http`, `udp`), if the VIP has one.
    pub check: Option<String>,
    pub state: HealthName,
    /// As published.
    pub published: Option<BackendState>,
    pub since_secs: Option<f64>,
    pub last_error: Option<String>,
    pub latency_last_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Passive ejections of this backend held back by the VIP's panic threshold.
    #[serde(default)]
    pub ejections_skipped: u64,
    /// The VIP is in panic (the same on each of its rows), since when, and
    /// how many ejections it held back in all.
    #[serde(default)]
    pub vip_panic: bool,
    #[serde(default)]
    pub vip_panic_since_secs: Option<f64>,
    #[serde(default)]
    pub vip_ejections_skipped: u64,
}

/// What the daemon answers; each request has one kind of reply (its
/// `data`), serialised without a tag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<StatusReply>),
    Vips(Vec<VipInfo>),
    Backends(Vec<BackendInfo>),
    Limits(Vec<LimitsInfo>),
    Stats(StatsReply),
    Health(Vec<HealthInfo>),
    Changed(ChangeReply),
    Reloaded(ReloadReply),
    Rotation(RotationReply),
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response<T> {
    pub ok: bool,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Response<T> {
    pub fn ok(data: T) -> Response<T> {
        Response { ok: true, data: Some(data), error: None }
    }

    pub fn err(error: String) -> Response<T> {
        Response { ok: false, data: None, error: Some(error) }
    }

    pub fn into_result(self) -> Result<T, String> {
        match (self.ok, self.data) {
            (true, Some(d)) => Ok(d),
            (true, None) => Err("the control plane answered without data".into()),
            (false, _) => Err(self.error.unwrap_or_else(|| "the control plane refused without saying why".into())),
        }
    }
}

// ------------------------------------------------------------------ client

/// How a daemon serving as many control clients as it takes starts its
/// refusal ([`call`] retries those).
pub const BUSY: &str = "the control plane is busy";

/// How long [`call`] retries a busy daemon.
pub const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Sends one request and reads its reply as `T` (the reply type of that
/// request: [`StatusReply`] for [`Request::Status`], and so on). A daemon
/// that refuses the connection because every client slot is taken
/// ([`BUSY`]) is asked again, for up to [`BUSY_RETRY`].
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, String> {
    let end = std::time::Instant::now() + BUSY_RETRY;
    let mut pause = Duration::from_millis(20);
    loop {
        match call_once(socket, req) {
            Err(e) if e.starts_with(BUSY) && std::time::Instant::now() + pause < end => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            r => return r,
        }
    }
}

fn call_once<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, String> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the control plane at {}: {e} (is fulcrum-controlplane running? --socket chooses another path)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    // A refusal may be waiting even when the write fails: read it first.
    let written = (&stream).write_all(line.as_bytes()).map_err(|e| format!("{}: {e}", socket.display()));
    let mut reader = BufReader::new(&stream);
    let mut resp = String::new();
    let read = reader.read_line(&mut resp).map_err(|e| format!("{}: {e}", socket.display()));
    if resp.is_empty() {
        written?;
        read?;
        return Err(format!("{}: the control plane closed the connection", socket.display()));
    }
    let resp: Response<T> =
        serde_json::from_str(&resp).map_err(|e| format!("bad response from the control plane: {e}"))?;
    resp.into_result()
}

#[cfg(test)]
mod tests;
