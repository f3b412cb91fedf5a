use std::path::PathBuf;

use fulcrum_model::Invalid;

/// Errors of segment setup and of the control-plane side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a Fulcrum shared-memory segment (magic {found:02x?}, expected \"FULCRUM\\0\")"
    )]
    BadMagic { path: PathBuf, found: [u8; 8] },
    #[error("{path}: segment layout version {found}, this build uses {expected}; restart both sides with the same version or recreate the segment")]
    VersionMismatch {
        path: PathBuf,
        found: u64,
        expected: u32,
    },
    #[error("{path}: segment size {found} bytes, this build expects {expected}")]
    SizeMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{path}: segment geometry field {field} is {found}, this build expects {expected}")]
    LayoutMismatch {
        path: PathBuf,
        field: &'static str,
        found: u64,
        expected: u64,
    },
    #[error("{path}: segment header checksum mismatch (corrupted header)")]
    HeaderChecksum { path: PathBuf },
    #[error("{path}: segment file has mode {mode:o}, must not be accessible by group/other, and it could not be tightened to 0600")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("another {role} (pid {pid}) is alive on this segment (heartbeat {age_ms} ms ago)")]
    AlreadyRunning {
        role: &'static str,
        pid: u64,
        age_ms: u64,
    },
    #[error("configuration rejected before publication: {0}")]
    Invalid(#[from] Invalid),
    #[error("encoded configuration is {len} bytes, maximum is {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("configuration encoding failed: {0}")]
    Encode(String),
    #[error("the dataplane is (re)initialising its counters; retry shortly")]
    Busy,
    #[error("counter name {name:?} is longer than {max} bytes")]
    NameTooLong { name: String, max: usize },
    #[error("{count} lcore counter names given, maximum is {max}")]
    TooManyNames { count: usize, max: usize },
    #[error("{count} lcores requested, maximum is {max}")]
    TooManyLcores { count: usize, max: usize },
    #[error("the dataplane's report is {len} bytes, maximum is {max}")]
    ReportTooLarge { len: usize, max: usize },
    #[error("configuration generation space exhausted")]
    GenerationExhausted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
