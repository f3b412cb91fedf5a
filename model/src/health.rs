//! Health checks: [`HealthCheck`] is the `health = { kind = "http", ... }` table
//! as an operator writes it (what the model carries, files and state file
//! included); [`CheckSpec`] is its validated meaning, which the control plane's
//! checker runs. Every validation error names the offending field.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Defaults, shared by the TOML form and the programmatic constructors.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_JITTER_PCT: u8 = 10;
pub const DEFAULT_MAX_READ_KIB: u32 = 16;
pub const DEFAULT_PASSIVE_FAILURES: u32 = 5;
pub const DEFAULT_PASSIVE_WINDOW_MS: u64 = 10_000;
pub const DEFAULT_EJECTION_BASE_MS: u64 = 1_000;
pub const DEFAULT_EJECTION_MAX_MS: u64 = 60_000;
/// Passive ejection never leaves fewer than this % of a VIP's (non-drained)
/// backends up; 0 disables the threshold (Envoy's "healthy panic threshold").
pub const DEFAULT_PANIC_THRESHOLD_PCT: u8 = 50;

/// Smallest accepted interval: below this a per-target task would mostly be scheduling noise.
pub const MIN_INTERVAL_MS: u64 = 10;
/// HAProxy caps `spread-checks` at 50 %; so do we.
pub const MAX_JITTER_PCT: u8 = 50;
/// Largest HTTP read cap (KiB).
pub const MAX_READ_KIB_LIMIT: u32 = 1024;

/// A validation error: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health.{field}: {message}")]
pub struct SpecError {
    /// The TOML field name (e.g. `timeout_ms`).
    pub field: &'static str,
    pub message: String,
}

impl SpecError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        SpecError {
            field,
            message: message.into(),
        }
    }
}

/// Inclusive range of accepted HTTP status codes. TOML: `expect_status = 200` or
/// `expect_status = "200-399"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    pub const fn single(code: u16) -> Self {
        StatusRange { lo: code, hi: code }
    }
    pub fn contains(&self, code: u16) -> bool {
        (self.lo..=self.hi).contains(&code)
    }
}

impl Default for StatusRange {
    /// 2xx and 3xx, as HAProxy's `option httpchk` accepts by default.
    fn default() -> Self {
        StatusRange { lo: 200, hi: 399 }
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// HTTP GET check parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request path; must start with `/`.
    pub path: String,
    /// `Host` header; `None` sends the target's IP address.
    pub host: Option<String>,
    pub expect_status: StatusRange,
    /// If set, the body (first `max_read_kib` KiB of the response) must contain it.
    pub body: Option<String>,
    /// Read at most this many KiB of response (headers + body).
    pub max_read_kib: u32,
}

impl Default for HttpCheck {
    fn default() -> Self {
        HttpCheck {
            path: "/".into(),
            host: None,
            expect_status: StatusRange::default(),
            body: None,
            max_read_kib: DEFAULT_MAX_READ_KIB,
        }
    }
}

/// UDP request/reply check parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpCheck {
    /// Datagram sent on each check.
    pub payload: Vec<u8>,
    /// If set, the reply must contain these bytes; otherwise any reply passes.
    pub expect: Option<Vec<u8>>,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// TCP connect; success when the three-way handshake completes.
    Tcp,
    /// HTTP/1.0 GET with `Connection: close`.
    Http(HttpCheck),
    /// Connected UDP socket: send payload, wait for a reply. An ICMP port unreachable
    /// surfaces as `ECONNREFUSED` and fails the check at once.
    Udp(UdpCheck),
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http(_) => "http",
            CheckKind::Udp(_) => "udp",
        }
    }
}

/// Passive (outlier) ejection parameters; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveSpec {
    /// Eject when the dataplane's connect-failure counter rises by at least this much
    /// within `window`. 0 disables passive ejection.
    pub failures: u32,
    pub window: Duration,
    /// First ejection lasts `ejection_base`; each further one doubles, up to `ejection_max`.
    pub ejection_base: Duration,
    pub ejection_max: Duration,
}

impl Default for PassiveSpec {
    fn default() -> Self {
        PassiveSpec {
            failures: DEFAULT_PASSIVE_FAILURES,
            window: Duration::from_millis(DEFAULT_PASSIVE_WINDOW_MS),
            ejection_base: Duration::from_millis(DEFAULT_EJECTION_BASE_MS),
            ejection_max: Duration::from_millis(DEFAULT_EJECTION_MAX_MS),
        }
    }
}

/// A complete, validated check specification for one target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "HealthCheck")]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Upper bound on the gap between two check starts (jitter only shortens it).
    pub interval: Duration,
    /// Whole-check deadline (connect + request + response). Must be < `interval`.
    pub timeout: Duration,
    /// Consecutive successes needed to become Up.
    pub rise: u32,
    /// Consecutive failures needed to go from Up to Down.
    pub fall: u32,
    /// Each gap is drawn uniformly from `[interval × (1 − jitter_pct/100), interval]`.
    pub jitter_pct: u8,
    /// Source address to bind; overrides the checker's default source.
    pub source: Option<Ipv4Addr>,
    /// Port the check connects to; `None`: the backend's own port.
    pub port: Option<u16>,
    pub passive: PassiveSpec,
    /// Passive ejection never takes the VIP's healthy share below this % (0: off).
    pub panic_threshold_pct: u8,
}

impl CheckSpec {
    fn with_kind(kind: CheckKind) -> Self {
        CheckSpec {
            kind,
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            jitter_pct: DEFAULT_JITTER_PCT,
            source: None,
            port: None,
            passive: PassiveSpec::default(),
            panic_threshold_pct: DEFAULT_PANIC_THRESHOLD_PCT,
        }
    }

    /// TCP connect check with default timing.
    pub fn tcp() -> Self {
        Self::with_kind(CheckKind::Tcp)
    }

    /// HTTP GET `path` expecting 2xx/3xx, default timing.
    pub fn http(path: &str) -> Self {
        Self::with_kind(CheckKind::Http(HttpCheck {
            path: path.into(),
            ..HttpCheck::default()
        }))
    }

    /// UDP check sending `payload`, optionally expecting `expect` in the reply.
    pub fn udp(payload: &[u8], expect: Option<&[u8]>) -> Self {
        Self::with_kind(CheckKind::Udp(UdpCheck {
            payload: payload.to_vec(),
            expect: expect.map(<[u8]>::to_vec),
        }))
    }

    /// Builder helpers for tests and programmatic use.
    pub fn timing(mut self, interval: Duration, timeout: Duration, rise: u32, fall: u32) -> Self {
        self.interval = interval;
        self.timeout = timeout;
        self.rise = rise;
        self.fall = fall;
        self
    }

    pub fn jitter(mut self, pct: u8) -> Self {
        self.jitter_pct = pct;
        self
    }

    /// Checks invariants; the TOML path runs this too. Errors name the TOML field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let interval_ms = self.interval.as_millis();
        if interval_ms < u128::from(MIN_INTERVAL_MS) {
            return Err(SpecError::new(
                "interval_ms",
                format!("must be at least {MIN_INTERVAL_MS}"),
            ));
        }
        if self.timeout.is_zero() {
            return Err(SpecError::new("timeout_ms", "must be at least 1"));
        }
        if self.timeout >= self.interval {
            return Err(SpecError::new(
                "timeout_ms",
                format!(
                    "must be less than interval_ms ({interval_ms}), got {}",
                    self.timeout.as_millis()
                ),
            ));
        }
        if self.rise == 0 {
            return Err(SpecError::new("rise", "must be at least 1"));
        }
        if self.fall == 0 {
            return Err(SpecError::new("fall", "must be at least 1"));
        }
        if self.port == Some(0) {
            return Err(SpecError::new("port", "must be within 1-65535, got 0"));
        }
        if self.panic_threshold_pct > 100 {
            return Err(SpecError::new(
                "panic_threshold_pct",
                format!("must be within 0-100, got {}", self.panic_threshold_pct),
            ));
        }
        if self.jitter_pct > MAX_JITTER_PCT {
            return Err(SpecError::new(
                "jitter_pct",
                format!("must be at most {MAX_JITTER_PCT}, got {}", self.jitter_pct),
            ));
        }
        match &self.kind {
            CheckKind::Tcp => {}
            CheckKind::Http(h) => {
                if !h.path.starts_with('/') {
                    return Err(SpecError::new(
                        "path",
                        format!("must start with '/', got {:?}", h.path),
                    ));
                }
                if h.path
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(SpecError::new(
                        "path",
                        "must not contain whitespace or control characters",
                    ));
                }
                if let Some(host) = &h.host {
                    if host.is_empty()
                        || host
                            .bytes()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                    {
                        return Err(SpecError::new(
                            "host",
                            "must be non-empty, without whitespace or control characters",
                        ));
                    }
                }
                let r = h.expect_status;
                if !(100..=599).contains(&r.lo) || !(100..=599).contains(&r.hi) || r.lo > r.hi {
                    return Err(SpecError::new(
                        "expect_status",
                        format!("must be a status code or range within 100-599, got {r}"),
                    ));
                }
                if let Some(body) = &h.body {
                    if body.is_empty() {
                        return Err(SpecError::new(
                            "body",
                            "must not be empty (omit it to skip the body match)",
                        ));
                    }
                    if body.len() > h.max_read_kib as usize * 1024 {
                        return Err(SpecError::new(
                            "body",
                            "is longer than max_read_kib allows to read",
                        ));
                    }
                }
                if h.max_read_kib == 0 || h.max_read_kib > MAX_READ_KIB_LIMIT {
                    return Err(SpecError::new(
                        "max_read_kib",
                        format!(
                            "must be within 1-{MAX_READ_KIB_LIMIT}, got {}",
                            h.max_read_kib
                        ),
                    ));
                }
            }
            CheckKind::Udp(u) => {
                if u.payload.is_empty() {
                    return Err(SpecError::new("payload", "must not be empty"));
                }
                if u.payload.len() > 1472 {
                    return Err(SpecError::new(
                        "payload",
                        "must fit one unfragmented datagram (<= 1472 bytes)",
                    ));
                }
                if matches!(&u.expect, Some(e) if e.is_empty()) {
                    return Err(SpecError::new(
                        "expect",
                        "must not be empty (omit it to accept any reply)",
                    ));
                }
            }
        }
        let p = &self.passive;
        if p.failures > 0 {
            if p.window.is_zero() {
                return Err(SpecError::new("passive_window_ms", "must be at least 1"));
            }
            if p.ejection_base.is_zero() {
                return Err(SpecError::new("ejection_base_ms", "must be at least 1"));
            }
            if p.ejection_max < p.ejection_base {
                return Err(SpecError::new(
                    "ejection_max_ms",
                    "must be >= ejection_base_ms",
                ));
            }
        }
        Ok(())
    }
}

/// `expect_status = 200` or `expect_status = "200-399"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawKind {
    Tcp,
    Http,
    Udp,
}

/// A health check as written: the flat TOML table, every field but `kind`
/// optional (defaults above). Unknown fields are rejected (a typo must not
/// silently use a default). Its meaning, validated: [`CheckSpec::try_from`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: RawKind,
    // http
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<RawStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_read_kib: Option<u32>,
    // udp
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_hex: Option<String>,
    // common
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_pct: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Ipv4Addr>,
    /// Check this port instead of the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    // passive
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_base_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_max_ms: Option<u64>,
    /// Per VIP: passive ejection stops at this % of backends up (0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold_pct: Option<u8>,
}

impl HealthCheck {
    /// A check of this kind with every default.
    pub fn new(kind: RawKind) -> HealthCheck {
        HealthCheck {
            kind,
            path: None,
            host: None,
            expect_status: None,
            body: None,
            max_read_kib: None,
            payload: None,
            payload_hex: None,
            expect: None,
            expect_hex: None,
            interval_ms: None,
            timeout_ms: None,
            rise: None,
            fall: None,
            jitter_pct: None,
            source: None,
            port: None,
            passive_failures: None,
            passive_window_ms: None,
            ejection_base_ms: None,
            ejection_max_ms: None,
            panic_threshold_pct: None,
        }
    }
}

fn parse_hex(field: &'static str, s: &str) -> Result<Vec<u8>, SpecError> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        return Err(SpecError::new(
            field,
            "must have an even number of hex digits",
        ));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| {
                SpecError::new(field, format!("invalid hex digits {:?}", &s[i..i + 2]))
            })
        })
        .collect()
}

fn parse_status(raw: RawStatus) -> Result<StatusRange, SpecError> {
    let bad = |what: &str| {
        SpecError::new(
            "expect_status",
            format!("must be a code (200) or range (\"200-399\"), got {what}"),
        )
    };
    let code = |v: i64| u16::try_from(v).map_err(|_| bad(&v.to_string()));
    match raw {
        RawStatus::Code(c) => Ok(StatusRange::single(code(c)?)),
        RawStatus::Text(t) => {
            let parse = |s: &str| s.trim().parse::<u16>().map_err(|_| bad(&format!("{t:?}")));
            match t.split_once('-') {
                Some((lo, hi)) => Ok(StatusRange {
                    lo: parse(lo)?,
                    hi: parse(hi)?,
                }),
                None => Ok(StatusRange::single(parse(&t)?)),
            }
        }
    }
}

fn nonzero_ms(field: &'static str, v: Option<u64>, default: u64) -> Result<Duration, SpecError> {
    let ms = v.unwrap_or(default);
    if ms == 0 {
        return Err(SpecError::new(field, "must be at least 1"));
    }
    Ok(Duration::from_millis(ms))
}

impl TryFrom<HealthCheck> for CheckSpec {
    type Error = SpecError;

    fn try_from(r: HealthCheck) -> Result<Self, SpecError> {
        let not_for = |field: &'static str, present: bool, kind: &str| {
            if present {
                Err(SpecError::new(
                    field,
                    format!("does not apply to kind = \"{kind}\""),
                ))
            } else {
                Ok(())
            }
        };
        let http_fields = [
            ("path", r.path.is_some()),
            ("host", r.host.is_some()),
            ("expect_status", r.expect_status.is_some()),
            ("body", r.body.is_some()),
            ("max_read_kib", r.max_read_kib.is_some()),
        ];
        let udp_fields = [
            ("payload", r.payload.is_some()),
            ("payload_hex", r.payload_hex.is_some()),
            ("expect", r.expect.is_some()),
            ("expect_hex", r.expect_hex.is_some()),
        ];
        let kind = match r.kind {
            RawKind::Tcp => {
                for (f, p) in http_fields.iter().chain(udp_fields.iter()) {
                    not_for(f, *p, "tcp")?;
                }
                CheckKind::Tcp
            }
            RawKind::Http => {
                for (f, p) in udp_fields {
                    not_for(f, p, "http")?;
                }
                CheckKind::Http(HttpCheck {
                    path: r.path.unwrap_or_else(|| "/".into()),
                    host: r.host,
                    expect_status: r
                        .expect_status
                        .map(parse_status)
                        .transpose()?
                        .unwrap_or_default(),
                    body: r.body,
                    max_read_kib: r.max_read_kib.unwrap_or(DEFAULT_MAX_READ_KIB),
                })
            }
            RawKind::Udp => {
                for (f, p) in http_fields {
                    not_for(f, p, "udp")?;
                }
                let payload = match (r.payload, r.payload_hex) {
                    (Some(_), Some(_)) => {
                        return Err(SpecError::new(
                            "payload_hex",
                            "give payload or payload_hex, not both",
                        ))
                    }
                    (Some(s), None) => s.into_bytes(),
                    (None, Some(h)) => parse_hex("payload_hex", &h)?,
                    (None, None) => {
                        return Err(SpecError::new("payload", "is required for kind = \"udp\""))
                    }
                };
                let expect = match (r.expect, r.expect_hex) {
                    (Some(_), Some(_)) => {
                        return Err(SpecError::new(
                            "expect_hex",
                            "give expect or expect_hex, not both",
                        ))
                    }
                    (Some(s), None) => Some(s.into_bytes()),
                    (None, Some(h)) => Some(parse_hex("expect_hex", &h)?),
                    (None, None) => None,
                };
                CheckKind::Udp(UdpCheck { payload, expect })
            }
        };
        let spec = CheckSpec {
            kind,
            interval: nonzero_ms("interval_ms", r.interval_ms, DEFAULT_INTERVAL_MS)?,
            timeout: nonzero_ms("timeout_ms", r.timeout_ms, DEFAULT_TIMEOUT_MS)?,
            rise: r.rise.unwrap_or(DEFAULT_RISE),
            fall: r.fall.unwrap_or(DEFAULT_FALL),
            jitter_pct: r.jitter_pct.unwrap_or(DEFAULT_JITTER_PCT),
            source: r.source,
            port: r.port,
            passive: PassiveSpec {
                failures: r.passive_failures.unwrap_or(DEFAULT_PASSIVE_FAILURES),
                window: nonzero_ms(
                    "passive_window_ms",
                    r.passive_window_ms,
                    DEFAULT_PASSIVE_WINDOW_MS,
                )?,
                ejection_base: nonzero_ms(
                    "ejection_base_ms",
                    r.ejection_base_ms,
                    DEFAULT_EJECTION_BASE_MS,
                )?,
                ejection_max: nonzero_ms(
                    "ejection_max_ms",
                    r.ejection_max_ms,
                    DEFAULT_EJECTION_MAX_MS,
                )?,
            },
            panic_threshold_pct: r
                .panic_threshold_pct
                .unwrap_or(DEFAULT_PANIC_THRESHOLD_PCT),
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(body: &str) -> Result<CheckSpec, String> {
        let raw: HealthCheck = toml::from_str(body).map_err(|e| e.to_string())?;
        CheckSpec::try_from(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn panic_threshold_and_port() {
        let s = spec("kind = \"tcp\"").unwrap();
        assert_eq!(s.panic_threshold_pct, DEFAULT_PANIC_THRESHOLD_PCT);
        assert_eq!(s.port, None);
        let s = spec("kind = \"tcp\"\npanic_threshold_pct = 0\nport = 9001").unwrap();
        assert_eq!((s.panic_threshold_pct, s.port), (0, Some(9001)));
        assert_eq!(spec("kind = \"http\"\npanic_threshold_pct = 100").unwrap().panic_threshold_pct, 100);
        let e = spec("kind = \"tcp\"\npanic_threshold_pct = 101").unwrap_err();
        assert!(e.starts_with("health.panic_threshold_pct: must be within 0-100, got 101"), "{e}");
        let e = spec("kind = \"tcp\"\nport = 0").unwrap_err();
        assert!(e.starts_with("health.port:"), "{e}");
        // Out of the type's range: the parser names the field.
        let e = spec("kind = \"tcp\"\npanic_threshold_pct = 300").unwrap_err();
        assert!(e.contains("panic_threshold_pct"), "{e}");
        // Round trip: the written form keeps both.
        let raw: HealthCheck = toml::from_str("kind = \"tcp\"\npanic_threshold_pct = 30\nport = 7").unwrap();
        let back: HealthCheck = toml::from_str(&toml::to_string(&raw).unwrap()).unwrap();
        assert_eq!(raw, back);
    }
}
