//! Configuration generation published by the control plane, and its
//! semantic validation (run by the publisher before writing and again by the
//! dataplane's subscriber before accepting).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use fulcrum_maglev::is_prime;
use serde::{Deserialize, Serialize};

use crate::layout::{MAX_BACKENDS, MAX_VIPS};

/// Largest accepted Maglev lookup-table size.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;
/// Largest accepted `connect_tries`.
pub const MAX_CONNECT_TRIES: u8 = 16;

/// One complete configuration. Every publication replaces the previous one
/// entirely; identities that must survive across generations (counter slots)
/// are the explicit `VipConf::id` and `BackendConf::slot`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigGeneration {
    pub vips: Vec<VipConf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    Proxy,
    Dsr,
    FullNat,
    Tunnel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Affinity {
    /// Hash of the 5-tuple.
    Flow,
    /// Hash of the client address only.
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

/// Token bucket parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub rate_per_sec: u32,
    pub burst: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendState {
    /// Eligible for new connections (if weight > 0).
    Up,
    /// No new connections; existing ones are reset/abandoned by the dataplane.
    Down,
    /// No new connections; existing connections continue.
    Drain,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendConf {
    /// Stable counter slot, `< MAX_BACKENDS`, unique across the whole generation.
    pub slot: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VipConf {
    /// Stable VIP slot, `< MAX_VIPS`, indexes the per-VIP counters.
    pub id: u16,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    pub mode: Mode,
    /// Concurrent connection limit (>= 1; use `u32::MAX` for "unlimited").
    pub max_connections: u32,
    pub new_conn_rate: Option<RateLimit>,
    pub per_client_rate: Option<RateLimit>,
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub idle_timeout_ms: u32,
    pub connect_timeout_ms: u32,
    pub connect_tries: u8,
    pub affinity: Affinity,
    pub proxy_protocol: ProxyProtocol,
    /// Maglev table size: prime, `>= backends.len() + 1`, `<= MAX_TABLE_SIZE`.
    pub table_size: u32,
    pub backends: Vec<BackendConf>,
}

impl VipConf {
    /// A VIP with conservative defaults (proxy mode, no rate limits, 5 min
    /// idle timeout, 3 s connect timeout, 3 tries, flow affinity, table 65537).
    pub fn new(id: u16, addr: Ipv4Addr, port: u16, proto: Proto) -> VipConf {
        VipConf {
            id,
            addr,
            port,
            proto,
            mode: Mode::Proxy,
            max_connections: defaults::MAX_CONNECTIONS,
            new_conn_rate: None,
            per_client_rate: None,
            bandwidth_bytes_per_sec: None,
            idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
            connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            connect_tries: defaults::CONNECT_TRIES,
            affinity: Affinity::Flow,
            proxy_protocol: ProxyProtocol::Off,
            table_size: defaults::TABLE_SIZE,
            backends: Vec::new(),
        }
    }
}

/// Defaults of a VIP's settings: one place for every file that declares VIPs
/// (the dataplane's and the control plane's) and for [`VipConf::new`].
pub mod defaults {
    /// Concurrent connections, per lcore.
    pub const MAX_CONNECTIONS: u32 = 10_000;
    pub const CONNECT_TIMEOUT_MS: u32 = 1_000;
    pub const CONNECT_TRIES: u8 = 3;
    pub const IDLE_TIMEOUT_MS: u32 = 60_000;
    /// Maglev table size: a prime, >= 100 x backends for good balance.
    pub const TABLE_SIZE: u32 = 65_537;
    pub const WEIGHT: u32 = 1;

    // The same, as functions for `#[serde(default = "...")]` in the
    // configuration files (which keep milliseconds as u64).
    pub fn max_connections() -> u32 {
        MAX_CONNECTIONS
    }
    pub fn connect_timeout_ms() -> u64 {
        CONNECT_TIMEOUT_MS.into()
    }
    pub fn connect_tries() -> u8 {
        CONNECT_TRIES
    }
    pub fn idle_timeout_ms() -> u64 {
        IDLE_TIMEOUT_MS.into()
    }
    pub fn table_size() -> u32 {
        TABLE_SIZE
    }
    pub fn weight() -> u32 {
        WEIGHT
    }
}

/// Why a generation is semantically invalid. Every variant has a stable
/// numeric [`code`](ValidationError::code) that the dataplane stores in the
/// segment as "last reject reason".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{count} VIPs, maximum is {max}", max = MAX_VIPS)]
    TooManyVips { count: usize },
    #[error("{count} backends in total, maximum is {max}", max = MAX_BACKENDS)]
    TooManyBackends { count: usize },
    #[error("VIP id {id} out of range (must be < {max})", max = MAX_VIPS)]
    VipIdOutOfRange { id: u16 },
    #[error("VIP id {id} used twice")]
    DuplicateVipId { id: u16 },
    #[error("VIP {addr}:{port}/{proto:?} defined twice (ids {first} and {second})")]
    DuplicateVip {
        addr: Ipv4Addr,
        port: u16,
        proto: Proto,
        first: u16,
        second: u16,
    },
    #[error("VIP {id}: address {addr} is unspecified, broadcast or multicast")]
    BadVipAddr { id: u16, addr: Ipv4Addr },
    #[error("VIP {id}: port 0")]
    ZeroVipPort { id: u16 },
    #[error("VIP {vip}: backend slot {slot} out of range (must be < {max})", max = MAX_BACKENDS)]
    BackendSlotOutOfRange { vip: u16, slot: u32 },
    #[error("backend slot {slot} used twice")]
    DuplicateBackendSlot { slot: u32 },
    #[error("VIP {vip}: backend {addr} (slot {slot}) is unspecified, broadcast or multicast")]
    BadBackendAddr { vip: u16, slot: u32, addr: Ipv4Addr },
    #[error("VIP {vip}: backend slot {slot} has port 0")]
    ZeroBackendPort { vip: u16, slot: u32 },
    #[error("VIP {vip}: backend {addr}:{port} listed twice")]
    DuplicateBackend { vip: u16, addr: Ipv4Addr, port: u16 },
    #[error("VIP {vip}: {mode:?} mode forwards packets unchanged, backend slot {slot} port {backend_port} must equal the VIP port {vip_port}")]
    PortRewriteUnsupported {
        vip: u16,
        mode: Mode,
        slot: u32,
        vip_port: u16,
        backend_port: u16,
    },
    #[error("VIP {id}: table size {size} is not prime")]
    TableSizeNotPrime { id: u16, size: u32 },
    #[error("VIP {id}: table size {size} out of range (needs >= backends + 1 = {min}, <= {max})", max = MAX_TABLE_SIZE)]
    TableSizeOutOfRange { id: u16, size: u32, min: u64 },
    #[error("VIP {id}: {what} must be non-zero")]
    BadRate { id: u16, what: &'static str },
    #[error("VIP {id}: {what} out of range")]
    BadTimeout { id: u16, what: &'static str },
    #[error("VIP {id}: PROXY protocol {pp:?} is not possible with {mode:?}/{proto:?}")]
    ProxyProtocolUnsupported {
        id: u16,
        pp: ProxyProtocol,
        mode: Mode,
        proto: Proto,
    },
}

impl ValidationError {
    /// Stable numeric code (100..) stored in the segment.
    pub fn code(&self) -> u32 {
        use ValidationError::*;
        match self {
            TooManyVips { .. } => 100,
            TooManyBackends { .. } => 101,
            VipIdOutOfRange { .. } => 102,
            DuplicateVipId { .. } => 103,
            DuplicateVip { .. } => 104,
            BadVipAddr { .. } => 105,
            ZeroVipPort { .. } => 106,
            BackendSlotOutOfRange { .. } => 107,
            DuplicateBackendSlot { .. } => 108,
            BadBackendAddr { .. } => 109,
            ZeroBackendPort { .. } => 110,
            DuplicateBackend { .. } => 111,
            PortRewriteUnsupported { .. } => 112,
            TableSizeNotPrime { .. } => 113,
            TableSizeOutOfRange { .. } => 114,
            BadRate { .. } => 115,
            BadTimeout { .. } => 116,
            ProxyProtocolUnsupported { .. } => 117,
        }
    }
}

/// Why the subscriber refused a published generation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("payload length {0} out of range")]
    LengthOutOfRange(u64),
    #[error("payload checksum mismatch")]
    ChecksumMismatch,
    #[error("payload does not decode: {0}")]
    Undecodable(String),
    #[error("generation {found} is not newer than the applied generation {applied}")]
    GenerationNotIncreasing { found: u64, applied: u64 },
    #[error("invalid configuration: {0}")]
    Invalid(ValidationError),
}

impl RejectReason {
    /// Stable numeric code stored in the segment (`DataplaneStatus::last_reject_code`).
    pub fn code(&self) -> u32 {
        match self {
            RejectReason::LengthOutOfRange(_) => 1,
            RejectReason::ChecksumMismatch => 2,
            RejectReason::Undecodable(_) => 3,
            RejectReason::GenerationNotIncreasing { .. } => 4,
            RejectReason::Invalid(e) => e.code(),
        }
    }
}

/// Human name of a reject code as stored in the segment (for tools that only
/// see the number).
pub fn reject_code_name(code: u32) -> &'static str {
    match code {
        0 => "none",
        1 => "length_out_of_range",
        2 => "checksum_mismatch",
        3 => "undecodable",
        4 => "generation_not_increasing",
        100 => "too_many_vips",
        101 => "too_many_backends",
        102 => "vip_id_out_of_range",
        103 => "duplicate_vip_id",
        104 => "duplicate_vip",
        105 => "bad_vip_addr",
        106 => "zero_vip_port",
        107 => "backend_slot_out_of_range",
        108 => "duplicate_backend_slot",
        109 => "bad_backend_addr",
        110 => "zero_backend_port",
        111 => "duplicate_backend",
        112 => "port_rewrite_unsupported",
        113 => "table_size_not_prime",
        114 => "table_size_out_of_range",
        115 => "bad_rate",
        116 => "bad_timeout",
        117 => "proxy_protocol_unsupported",
        _ => "unknown",
    }
}


fn bad_addr(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_broadcast() || a.is_multicast()
}

impl ConfigGeneration {
    /// Total number of backends over all VIPs.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|v| v.backends.len()).sum()
    }

    /// Semantic validation; returns the first problem found.
    pub fn validate(&self) -> Result<(), ValidationError> {
        use ValidationError as E;
        if self.vips.len() > MAX_VIPS {
            return Err(E::TooManyVips {
                count: self.vips.len(),
            });
        }
        let total = self.backend_count();
        if total > MAX_BACKENDS {
            return Err(E::TooManyBackends { count: total });
        }
        let mut ids = HashSet::with_capacity(self.vips.len());
        let mut tuples = std::collections::HashMap::with_capacity(self.vips.len());
        let mut slots = HashSet::with_capacity(total);
        for v in &self.vips {
            let id = v.id;
            if usize::from(id) >= MAX_VIPS {
                return Err(E::VipIdOutOfRange { id });
            }
            if !ids.insert(id) {
                return Err(E::DuplicateVipId { id });
            }
            if let Some(first) = tuples.insert((v.addr, v.port, v.proto), id) {
                return Err(E::DuplicateVip {
                    addr: v.addr,
                    port: v.port,
                    proto: v.proto,
                    first,
                    second: id,
                });
            }
            if bad_addr(v.addr) {
                return Err(E::BadVipAddr { id, addr: v.addr });
            }
            if v.port == 0 {
                return Err(E::ZeroVipPort { id });
            }
            if v.max_connections == 0 {
                return Err(E::BadRate {
                    id,
                    what: "max_connections",
                });
            }
            for (what, rl) in [
                ("new_conn_rate", v.new_conn_rate),
                ("per_client_rate", v.per_client_rate),
            ] {
                if let Some(rl) = rl {
                    if rl.rate_per_sec == 0 || rl.burst == 0 {
                        return Err(E::BadRate { id, what });
                    }
                }
            }
            if v.bandwidth_bytes_per_sec == Some(0) {
                return Err(E::BadRate {
                    id,
                    what: "bandwidth_bytes_per_sec",
                });
            }
            if v.idle_timeout_ms == 0 {
                return Err(E::BadTimeout {
                    id,
                    what: "idle_timeout_ms",
                });
            }
            if v.connect_timeout_ms == 0 {
                return Err(E::BadTimeout {
                    id,
                    what: "connect_timeout_ms",
                });
            }
            if v.connect_tries == 0 || v.connect_tries > MAX_CONNECT_TRIES {
                return Err(E::BadTimeout {
                    id,
                    what: "connect_tries",
                });
            }
            let pp_ok = match (v.proxy_protocol, v.mode, v.proto) {
                (ProxyProtocol::Off, _, _) => true,
                // The PROXY header is injected by a terminating proxy only.
                (_, Mode::Dsr | Mode::Tunnel, _) => false,
                // v1 is text, TCP only.
                (ProxyProtocol::V1, _, Proto::Udp) => false,
                _ => true,
            };
            if !pp_ok {
                return Err(E::ProxyProtocolUnsupported {
                    id,
                    pp: v.proxy_protocol,
                    mode: v.mode,
                    proto: v.proto,
                });
            }
            let min = v.backends.len() as u64 + 1;
            if u64::from(v.table_size) < min || v.table_size > MAX_TABLE_SIZE {
                return Err(E::TableSizeOutOfRange {
                    id,
                    size: v.table_size,
                    min,
                });
            }
            if !is_prime(v.table_size) {
                return Err(E::TableSizeNotPrime {
                    id,
                    size: v.table_size,
                });
            }
            let mut endpoints = HashSet::with_capacity(v.backends.len());
            for b in &v.backends {
                if b.slot as usize >= MAX_BACKENDS {
                    return Err(E::BackendSlotOutOfRange {
                        vip: id,
                        slot: b.slot,
                    });
                }
                if !slots.insert(b.slot) {
                    return Err(E::DuplicateBackendSlot { slot: b.slot });
                }
                if bad_addr(b.addr) {
                    return Err(E::BadBackendAddr {
                        vip: id,
                        slot: b.slot,
                        addr: b.addr,
                    });
                }
                if b.port == 0 {
                    return Err(E::ZeroBackendPort {
                        vip: id,
                        slot: b.slot,
                    });
                }
                if !endpoints.insert((b.addr, b.port)) {
                    return Err(E::DuplicateBackend {
                        vip: id,
                        addr: b.addr,
                        port: b.port,
                    });
                }
                if matches!(v.mode, Mode::Dsr | Mode::Tunnel) && b.port != v.port {
                    return Err(E::PortRewriteUnsupported {
                        vip: id,
                        mode: v.mode,
                        slot: b.slot,
                        vip_port: v.port,
                        backend_port: b.port,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
        assert!(!is_prime(65_535));
        assert!(is_prime(16_777_213));
        assert!(!is_prime(16_777_215));
        // 4093 * 4099: a semiprime near the top of the range
        assert!(!is_prime(4093 * 4099));
    }

    #[test]
    fn reject_codes_have_names() {
        for code in [1, 2, 3, 4].into_iter().chain(100..=117) {
            assert_ne!(reject_code_name(code), "unknown", "code {code}");
        }
    }
}
