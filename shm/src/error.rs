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
    #[error("{path}: segment file has mode {mode:04o}, must be 0600; refused (a file someone else made accessible is not trusted, and its mode is not changed)")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{path}: segment file is owned by uid {owner}, expected uid {expected} (this process' effective uid); refused: another user could control it (remove it, then restart)")]
    NotOwned { path: PathBuf, owner: u32, expected: u32 },
    #[error("{path}: is a symbolic link (to {target}); refused: the segment must be a regular file at that path")]
    Symlink { path: PathBuf, target: String },
    #[error("{path}: is a {kind}, not a regular file; refused")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    /// (`faults` is left out of the message so that it stays the same while
    /// the condition does: the daemons log it once per change.)
    #[error("{path}: segment truncated while mapped (file now {size} bytes, expected {expected}; what lies past its end reads as zeros here); this process keeps running on its last good state but no longer communicates through the segment: remove the file and restart both daemons")]
    Truncated {
        path: PathBuf,
        size: u64,
        expected: u64,
        /// Accesses past the end answered with zero pages so far.
        faults: u64,
    },
    #[error("{path}: segment replaced: the path now names inode {found_ino} (device {found_dev:#x}, uid {found_uid}), this process maps inode {mapped_ino} (device {mapped_dev:#x}); the two daemons may no longer share a segment: restart both")]
    Replaced {
        path: PathBuf,
        mapped_dev: u64,
        mapped_ino: u64,
        found_dev: u64,
        found_ino: u64,
        found_uid: u32,
    },
    #[error("{path}: segment unlinked: the path no longer names the file this process maps (inode {mapped_ino}); a daemon started now would not share it: restart both")]
    Unlinked { path: PathBuf, mapped_ino: u64 },
    #[error("too many shared-memory segments mapped in this process (maximum {max})")]
    TooManyMappings { max: usize },
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
