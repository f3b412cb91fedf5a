//! Opening, creating and validating the segment file; heartbeats/status.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::MmapOptions;

use crate::error::{Error, Result};
use crate::layout::*;
use crate::raw::Region;

/// Default segment path.
pub const DEFAULT_PATH: &str = "/dev/shm/fulcrum";
/// How often each side is expected to call `heartbeat()`.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// A role (control plane / dataplane) whose heartbeat is younger than this
/// and whose pid differs from ours is considered running: a second instance
/// refuses to take the role over.
pub const CLAIM_STALE_AFTER: Duration = Duration::from_secs(1);

/// Nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn age_ns(hb: u64, now: u64) -> u64 {
    now.saturating_sub(hb)
}

fn alive(heartbeat_ns: u64, max_age: Duration) -> bool {
    if heartbeat_ns == 0 {
        return false;
    }
    let now = now_ns();
    let max = max_age.as_nanos() as u64;
    // Tolerate a heartbeat slightly in the future (clock steps) but not a
    // wildly future one (corruption), which would otherwise look alive forever.
    if heartbeat_ns > now {
        return heartbeat_ns - now <= max;
    }
    now - heartbeat_ns <= max
}

/// Opens an existing segment file read-write without following a symbolic
/// link at `path` (and without blocking on a FIFO), with errors that say
/// what was found there.
fn open_nofollow(path: &Path) -> Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(Error::Symlink {
            path: path.to_path_buf(),
            target: std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into()),
        }),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind: "directory",
        }),
        Err(e) => Err(io(path, "open")(e)),
    }
}

/// A mapped Fulcrum segment. Cheap to share by reference between threads;
/// role handles (`Publisher`, `Dataplane`, `Subscriber`, `LcoreCounters`)
/// borrow it.
pub struct Segment {
    region: Region,
    path: PathBuf,
    created: bool,
    /// The mapped file, kept open to compare it with what `path` names.
    file: File,
    /// Set once the file was seen shorter than the segment (sticky: pages
    /// may have been replaced by private zero pages since).
    truncated: AtomicBool,
}

/// Control-plane liveness and publication state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlPlaneStatus {
    pub pid: u64,
    pub start_ns: u64,
    /// 0 after a clean shutdown.
    pub heartbeat_ns: u64,
    pub published_generation: u64,
}

impl ControlPlaneStatus {
    pub fn is_alive(&self, max_age: Duration) -> bool {
        alive(self.heartbeat_ns, max_age)
    }
}

/// Dataplane liveness, applied configuration and rejection bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneStatus {
    /// Incremented by 2 on every dataplane start; odd while the dataplane is
    /// resetting its counters; 0 = no dataplane ever started on this file.
    pub epoch: u64,
    pub pid: u64,
    pub start_ns: u64,
    /// 0 after a clean shutdown.
    pub heartbeat_ns: u64,
    pub applied_generation: u64,
    /// Generations rejected since this dataplane started.
    pub rejected_count: u64,
    /// See [`crate::reject_code_name`]; 0 = none.
    pub last_reject_code: u32,
    pub last_reject_generation: u64,
    /// Bit i set = lcore block i in use.
    pub lcore_mask: u64,
}

impl DataplaneStatus {
    pub fn is_alive(&self, max_age: Duration) -> bool {
        alive(self.heartbeat_ns, max_age)
    }
}

fn io<'p>(path: &'p Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |source| Error::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

impl Segment {
    /// Opens the segment at `path`, creating and initialising it if it does
    /// not exist. Used by both the control plane and the dataplane; whichever
    /// starts first creates it.
    ///
    /// Creation race: the file is created under a unique temporary name in
    /// the same directory, sized, fully initialised, and then published with
    /// `link(2)`, which fails if `path` already exists. So `path` only ever
    /// names a completely initialised segment; the loser of a creation race
    /// discards its temporary file and opens the winner's.
    ///
    /// The temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
    /// mode 0600. An existing `path` is opened with `O_NOFOLLOW` and checked
    /// with `fstat` on the opened descriptor: it must be a regular file owned
    /// by our effective uid with mode exactly 0600, or it is refused
    /// ([`Error::Symlink`], [`Error::NotRegularFile`], [`Error::NotOwned`],
    /// [`Error::InsecurePermissions`]) and left as it is: in world-writable
    /// `/dev/shm`, a file someone else created first must never become the
    /// channel between the two daemons.
    ///
    /// An existing file with the wrong magic/version/size/geometry is *not*
    /// touched: an error is returned (use [`Segment::recreate`] deliberately,
    /// e.g. from an operator flag, when the other side is known to be down).
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Segment> {
        let path = path.as_ref();
        for _ in 0..8 {
            match open_nofollow(path) {
                Ok(file) => return Segment::from_existing(file, path),
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let (tmp, seg) = Segment::create_temp(path)?;
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    return Ok(Segment {
                        path: path.to_path_buf(),
                        created: true,
                        ..seg
                    })
                }
                // Someone else created it meanwhile: open theirs.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(path, "link")(e)),
            }
        }
        Err(Error::Io {
            path: path.to_path_buf(),
            op: "open_or_create",
            source: std::io::Error::other("segment keeps appearing and disappearing"),
        })
    }

    /// Opens an existing segment, never creating it (tools such as
    /// `fulcrumctl`, or a side that wants to wait for the other). The mapping
    /// is read-write at the OS level (the file is 0600 anyway, so a reader
    /// must be the owner); tools simply use the read-only API
    /// (`snapshot`, `*_status`, `current_config`).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Segment> {
        let path = path.as_ref();
        Segment::from_existing(open_nofollow(path)?, path)
    }

    /// Replaces whatever is at `path` by a fresh, empty segment (atomic
    /// `rename(2)`). Processes that still map the old file keep the old
    /// inode and no longer communicate with the new one, so only call this
    /// when the other side is down (or must restart anyway, e.g. after a
    /// layout-version upgrade).
    pub fn recreate(path: impl AsRef<Path>) -> Result<Segment> {
        let path = path.as_ref();
        let (tmp, seg) = Segment::create_temp(path)?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(path, "rename")(e));
        }
        Ok(Segment {
            path: path.to_path_buf(),
            created: true,
            ..seg
        })
    }

    /// Path this segment was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this call created the file.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether the file was found truncated (by a fault the `SIGBUS` handler
    /// answered with zero pages, or by an earlier [`Segment::check`]). Sticky.
    /// A truncated segment no longer connects the two sides: the subscriber
    /// accepts nothing from it and the publisher refuses to publish.
    pub fn truncated(&self) -> bool {
        self.truncated.load(Ordering::Relaxed) || self.region.faults() > 0
    }

    /// Re-checks that the segment is still the one both sides share; call
    /// it periodically (both daemons do, every 100 ms). Errors:
    /// * [`Error::Truncated`]: the mapped file is shorter than the segment
    ///   (`fstat`), or an access past its end was answered with zero pages;
    ///   sticky.
    /// * [`Error::Unlinked`]: the path no longer exists.
    /// * [`Error::Replaced`]: the path names another file (its device and
    ///   inode, from `lstat`, differ from the mapped descriptor's).
    pub fn check(&self) -> Result<()> {
        let meta = self.file.metadata().map_err(io(&self.path, "fstat"))?;
        if meta.len() < FILE_SIZE as u64 {
            self.truncated.store(true, Ordering::Relaxed);
        }
        if self.truncated() {
            return Err(self.truncation_error(meta.len()));
        }
        let unlinked = || Error::Unlinked {
            path: self.path.clone(),
            mapped_ino: meta.ino(),
        };
        match std::fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Err(unlinked()),
            Err(e) => Err(io(&self.path, "lstat")(e)),
            Ok(m) if (m.dev(), m.ino()) != (meta.dev(), meta.ino()) => Err(Error::Replaced {
                path: self.path.clone(),
                mapped_dev: meta.dev(),
                mapped_ino: meta.ino(),
                found_dev: m.dev(),
                found_ino: m.ino(),
                found_uid: m.uid(),
            }),
            Ok(_) => Ok(()),
        }
    }

    /// The error for a truncated segment (`size`: the file's current size).
    pub(crate) fn truncation_error(&self, size: u64) -> Error {
        Error::Truncated {
            path: self.path.clone(),
            size,
            expected: FILE_SIZE as u64,
            faults: self.region.faults(),
        }
    }

    /// The current size of the mapped file (0 if `fstat` fails).
    pub(crate) fn file_len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn create_temp(path: &Path) -> Result<(PathBuf, Segment)> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), now_ns()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        let init = || -> Result<Segment> {
            // The umask can only remove bits; make sure the owner has rw.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io(&tmp, "chmod"))?;
            file.set_len(FILE_SIZE as u64)
                .map_err(io(&tmp, "set_len"))?;
            let seg = Segment::map(file, &tmp)?;
            seg.init_header();
            Ok(seg)
        };
        match init() {
            Ok(seg) => Ok((tmp, seg)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn map(file: File, path: &Path) -> Result<Segment> {
        let map = MmapOptions::new()
            .len(FILE_SIZE)
            .map_raw(&file)
            .map_err(io(path, "mmap"))?;
        let region = Region::new(map).map_err(|_| Error::TooManyMappings {
            max: crate::raw::MAX_MAPPINGS,
        })?;
        Ok(Segment {
            region,
            path: path.to_path_buf(),
            created: false,
            file,
            truncated: AtomicBool::new(false),
        })
    }

    /// Checks what `file` (opened from `path` without following a symbolic
    /// link) is, with `fstat` on the open descriptor (so nothing can be
    /// swapped in between): a regular file, owned by our effective uid,
    /// mode exactly 0600. Nothing is changed when it is not.
    fn check_opened(file: &File, path: &Path) -> Result<std::fs::Metadata> {
        let meta = file.metadata().map_err(io(path, "fstat"))?;
        let t = meta.file_type();
        if !t.is_file() {
            let kind = if t.is_dir() {
                "directory"
            } else if t.is_fifo() {
                "named pipe"
            } else if t.is_socket() {
                "socket"
            } else if t.is_char_device() {
                "character device"
            } else if t.is_block_device() {
                "block device"
            } else {
                "special file"
            };
            return Err(Error::NotRegularFile {
                path: path.to_path_buf(),
                kind,
            });
        }
        let expected = crate::raw::euid();
        if meta.uid() != expected {
            return Err(Error::NotOwned {
                path: path.to_path_buf(),
                owner: meta.uid(),
                expected,
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode != 0o600 {
            return Err(Error::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        Ok(meta)
    }

    fn from_existing(file: File, path: &Path) -> Result<Segment> {
        let meta = Segment::check_opened(&file, path)?;
        // Validate the header with a plain read before mapping anything, so a
        // short or foreign file can never cause SIGBUS.
        let mut hdr = [0u8; HEADER_LEN];
        let n = file.read_at(&mut hdr, 0).map_err(io(path, "read"))?;
        let word = |off: usize| u64::from_le_bytes(hdr[off..off + 8].try_into().unwrap());
        let p = || path.to_path_buf();
        if n < 8 || hdr[..8] != MAGIC {
            let mut found = [0u8; 8];
            found[..n.min(8)].copy_from_slice(&hdr[..n.min(8)]);
            return Err(Error::BadMagic { path: p(), found });
        }
        if n < HEADER_LEN {
            return Err(Error::SizeMismatch {
                path: p(),
                found: meta.len(),
                expected: FILE_SIZE as u64,
            });
        }
        if word(H_VERSION) != u64::from(LAYOUT_VERSION) {
            return Err(Error::VersionMismatch {
                path: p(),
                found: word(H_VERSION),
                expected: LAYOUT_VERSION,
            });
        }
        if word(H_FILE_SIZE) != FILE_SIZE as u64 {
            return Err(Error::SizeMismatch {
                path: p(),
                found: word(H_FILE_SIZE),
                expected: FILE_SIZE as u64,
            });
        }
        if meta.len() != FILE_SIZE as u64 {
            return Err(Error::SizeMismatch {
                path: p(),
                found: meta.len(),
                expected: FILE_SIZE as u64,
            });
        }
        for (i, (field, expected)) in GEOMETRY.iter().enumerate() {
            let found = word(H_GEOMETRY + 8 * i);
            if found != *expected {
                return Err(Error::LayoutMismatch {
                    path: p(),
                    field,
                    found,
                    expected: *expected,
                });
            }
        }
        if xxhash_rust::xxh3::xxh3_64(&hdr[..H_CHECKSUM]) != word(H_CHECKSUM) {
            return Err(Error::HeaderChecksum { path: p() });
        }
        Segment::map(file, path)
    }

    fn init_header(&self) {
        let mut hdr = [0u8; H_CHECKSUM];
        let mut put = |off: usize, v: u64| hdr[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put(H_MAGIC, u64::from_le_bytes(MAGIC));
        put(H_VERSION, u64::from(LAYOUT_VERSION));
        put(H_FILE_SIZE, FILE_SIZE as u64);
        for (i, (_, v)) in GEOMETRY.iter().enumerate() {
            put(H_GEOMETRY + 8 * i, *v);
        }
        put(H_CREATED_NS, now_ns());
        let sum = xxhash_rust::xxh3::xxh3_64(&hdr);
        // Magic last, so even a reader of a (never linked) half-initialised
        // file would reject it.
        for off in (8..H_CHECKSUM).step_by(8) {
            self.store(
                off,
                u64::from_le_bytes(hdr[off..off + 8].try_into().unwrap()),
            );
        }
        self.store(H_CHECKSUM, sum);
        self.word(H_MAGIC)
            .store(u64::from_le_bytes(MAGIC), Ordering::Release);
    }

    // ---- word access (all shared-memory access goes through these) -------

    #[inline(always)]
    pub(crate) fn words(&self) -> &[AtomicU64] {
        self.region.words()
    }

    #[inline(always)]
    pub(crate) fn word(&self, byte_off: usize) -> &AtomicU64 {
        &self.words()[w(byte_off)]
    }

    #[inline(always)]
    pub(crate) fn load(&self, byte_off: usize) -> u64 {
        self.word(byte_off).load(Ordering::Relaxed)
    }

    #[inline(always)]
    pub(crate) fn store(&self, byte_off: usize, v: u64) {
        self.word(byte_off).store(v, Ordering::Relaxed)
    }

    /// Stores `bytes` from `byte_off` on, as little-endian words (Relaxed;
    /// the caller's sequence counter orders them). The last word is padded
    /// with zeros.
    pub(crate) fn store_bytes(&self, byte_off: usize, bytes: &[u8]) {
        let start = w(byte_off);
        let words = &self.words()[start..start + bytes.len().div_ceil(8)];
        for (word, chunk) in words.iter().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    /// Copies `len` bytes from `byte_off` on (Relaxed loads, as stored by
    /// [`Segment::store_bytes`]).
    pub(crate) fn load_bytes(&self, byte_off: usize, len: usize) -> Vec<u8> {
        let start = w(byte_off);
        let words = &self.words()[start..start + len.div_ceil(8)];
        let mut buf = Vec::with_capacity(words.len() * 8);
        for word in words {
            buf.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        buf.truncate(len);
        buf
    }

    /// Refuses to take a role whose current holder (another pid) heartbeated
    /// less than `CLAIM_STALE_AFTER` ago.
    pub(crate) fn claim(&self, role: &'static str, pid_off: usize, hb_off: usize) -> Result<()> {
        let pid = self.load(pid_off);
        let hb = self.load(hb_off);
        let me = u64::from(std::process::id());
        if pid != 0 && pid != me && alive(hb, CLAIM_STALE_AFTER) {
            return Err(Error::AlreadyRunning {
                role,
                pid,
                age_ms: age_ns(hb, now_ns()) / 1_000_000,
            });
        }
        Ok(())
    }

    /// Control-plane status as currently stored.
    pub fn control_plane_status(&self) -> ControlPlaneStatus {
        ControlPlaneStatus {
            pid: self.load(CP_PID),
            start_ns: self.load(CP_START_NS),
            heartbeat_ns: self.word(CP_HEARTBEAT_NS).load(Ordering::Acquire),
            published_generation: self.load(CP_PUBLISHED_GEN),
        }
    }

    /// Dataplane status as currently stored.
    pub fn dataplane_status(&self) -> DataplaneStatus {
        DataplaneStatus {
            epoch: self.word(DP_EPOCH).load(Ordering::Acquire),
            pid: self.load(DP_PID),
            start_ns: self.load(DP_START_NS),
            heartbeat_ns: self.word(DP_HEARTBEAT_NS).load(Ordering::Acquire),
            applied_generation: self.load(DP_APPLIED_GEN),
            rejected_count: self.load(DP_REJECTED_COUNT),
            last_reject_code: self.load(DP_LAST_REJECT_CODE) as u32,
            last_reject_generation: self.load(DP_LAST_REJECT_GEN),
            lcore_mask: self.load(DP_LCORE_MASK),
        }
    }

    /// Shorthand for `control_plane_status().is_alive(max_age)`.
    pub fn control_plane_alive(&self, max_age: Duration) -> bool {
        self.control_plane_status().is_alive(max_age)
    }

    /// Shorthand for `dataplane_status().is_alive(max_age)`.
    pub fn dataplane_alive(&self, max_age: Duration) -> bool {
        self.dataplane_status().is_alive(max_age)
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("created", &self.created)
            .finish()
    }
}
