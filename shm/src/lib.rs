//! # fulcrum-shm: the control plane ⇄ dataplane shared-memory segment
//!
//! The control plane (`fulcrum-controlplane`) and the DPDK dataplane
//! (`fulcrum-dataplane`) communicate only through one fixed-size file,
//! by default [`DEFAULT_PATH`] (`/dev/shm/fulcrum`), mode 0600. The control
//! plane publishes whole configuration generations; the dataplane publishes
//! per-lcore counters and a heartbeat. Either side may start first and either
//! may restart while the other runs; the dataplane never blocks on the
//! control plane. The design follows VPP's stats segment (a shared header,
//! an epoch plus in-progress flag that readers check before and after
//! copying, and per-thread counter vectors that readers sum).
//!
//! ## Layout (layout version 3, all integers little-endian u64 words)
//!
//! ```text
//! offset      size        content                                   writer
//! 0           176         header (immutable after creation):
//!   0           8           magic b"FULCRUM\0"
//!   8           8           layout version (u32 value, upper half 0)
//!   16          8           file size (FILE_SIZE)
//!   24          136         geometry, 17 words: MAX_LCORES=32, MAX_VIPS=256,
//!                           MAX_BACKENDS=4096, LCORE_COUNTERS=64,
//!                           VIP_COUNTERS=24, BACKEND_COUNTERS=10,
//!                           MAX_PAYLOAD=4 MiB, NAME_LEN=32, then the
//!                           offsets CP, DP, NAMES, SLOT0, SLOT1, slot size,
//!                           COUNTERS, block size, file size again
//!   160         8           creation time (ns since Unix epoch)
//!   168         8           xxh3-64 of bytes 0..168
//! 256         8           config active word: generation<<1 | slot,     control plane
//!                         0 = nothing published
//! 512         32          control-plane status: pid, start_ns,          control plane
//!                         heartbeat_ns (0 = cleanly stopped),
//!                         published_generation
//! 768         80          dataplane status: epoch (+2 per start, odd    dataplane
//!                         while resetting), pid, start_ns, heartbeat_ns,
//!                         applied_generation, rejected_count,
//!                         last_reject_code, last_reject_generation,
//!                         lcore_mask, lcore_gauge_mask
//! 2048        2048        lcore counter names: 64 x 32 bytes, NUL-padded dataplane
//! 4096        128 KiB     dataplane report: seq, length, xxh3; JSON     dataplane
//!                         `fulcrum_model::DataplaneReport` at +64 (facts,
//!                         generation installed by every lcore, refused VIPs)
//! 135_168     4 MiB+4 KiB config slot 0: seq, generation, length,       control plane
//!                         xxh3 checksum (seed = generation); payload
//!                         (JSON `fulcrum_model::Generation`) at +4096
//! 4_333_568   4 MiB+4 KiB config slot 1 (same)                          control plane
//! 8_531_968   32 x 380_928  per-lcore counter blocks, page aligned:     lcore i only
//!   +0          512         64 lcore-level counters (names above)
//!   +512        48 KiB      256 VIPs x 24 counters (VIP_* indices)
//!   +49_664     320 KiB     4096 backends x 10 counters (BACKEND_* indices)
//! 20_721_664              end of file (FILE_SIZE, ~19.8 MiB; tmpfs only
//!                         allocates pages that are touched)
//! ```
//!
//! ## Creation and validation
//! [`Segment::open_or_create`] is used by both sides. If the file does not
//! exist, a unique temporary file is created next to it (`O_CREAT | O_EXCL
//! | O_NOFOLLOW`, mode 0600), sized, initialised, and published with
//! `link(2)`, which fails if the path exists meanwhile; the loser discards
//! its temp file and opens the winner's. Hence the path only ever names a
//! fully initialised segment and no "initialising" state is needed.
//!
//! The default directory, `/dev/shm`, is writable by every local user, and
//! the segment is the configuration channel of two root daemons. So an
//! existing file is opened with `O_NOFOLLOW` (a symbolic link is refused,
//! [`Error::Symlink`]) and checked with `fstat` on the opened descriptor:
//! it must be a regular file ([`Error::NotRegularFile`]), owned by our
//! effective uid ([`Error::NotOwned`]), with mode exactly 0600
//! ([`Error::InsecurePermissions`]). A file failing any of these is refused
//! and left untouched (never chmod'ed or chown'ed: whoever created it may
//! still hold it open). It is then validated with plain reads before it is
//! mapped (magic, version, size, every geometry word, header checksum) and
//! rejected with a precise [`Error`]; it is never silently resized or
//! recreated. [`Segment::recreate`] (atomic rename) exists for an explicit
//! operator action (e.g. after a layout upgrade). A segment of an older
//! layout is refused before its geometry is looked at, naming both versions
//! (layout 2, with 16 counters per VIP: `segment layout version 2, this build
//! uses 3; ...`); a header of this version whose geometry differs names the
//! first differing field ([`Error::LayoutMismatch`]).
//!
//! ## While mapped: replacement and truncation
//! [`Segment::check`], called by both daemons on their 100 ms tick, compares
//! the `(device, inode)` of what the path names (`lstat`) with the mapped
//! descriptor's and reports [`Error::Replaced`] or [`Error::Unlinked`]: the
//! two daemons would silently stop talking to each other otherwise (the one
//! that restarts next maps the new file).
//!
//! Truncating the file while it is mapped would make the next access past
//! its new end raise `SIGBUS` and kill both daemons. A size check cannot
//! prevent that (it races with the truncation, and the lcores write their
//! counters without checks), so the access itself is made survivable: a
//! `SIGBUS` handler (in `src/raw.rs`, which also says why this rather than a
//! sealed memfd handed over a socket) maps anonymous zero pages over the
//! lost part of a registered segment mapping, so the faulting access
//! completes, and counts the fault. From then on [`Segment::truncated`] is
//! true and [`Segment::check`] reports [`Error::Truncated`] (also found from
//! the file size before any fault). Zeros read as "nothing published": the
//! [`Subscriber`] accepts nothing from a truncated segment (the dataplane
//! keeps serving its last good generation) and the [`Publisher`] refuses to
//! publish. The segment no longer connects the two processes; they keep
//! running and report it, and an operator removes the file and restarts
//! both. Faults outside every segment mapping still crash as before.
//!
//! ## Roles
//! * Control plane: [`Segment::publisher`] → [`Publisher::publish`],
//!   [`Publisher::heartbeat`]. Generations continue after the highest one in
//!   the file, so they stay strictly increasing across restarts.
//! * Dataplane: [`Segment::dataplane`] (new epoch, zeroed counters, names)
//!   → [`Dataplane::take_lcore`] (one [`LcoreCounters`] per lcore),
//!   [`Dataplane::subscriber`] → [`Subscriber::poll`] (a generation is
//!   *accepted*), [`Subscriber::mark_applied`] (every lcore installed it),
//!   [`Dataplane::write_report`], [`Dataplane::heartbeat`].
//! * Readers (control plane, tools): [`Segment::snapshot`] (+
//!   [`CounterTotals`] to rebase across dataplane restarts),
//!   [`Segment::dataplane_status`], [`Segment::control_plane_status`],
//!   [`Segment::current_config`], [`Segment::dataplane_report`].
//!
//! A role is refused ([`Error::AlreadyRunning`]) while another pid holds it
//! with a heartbeat younger than [`CLAIM_STALE_AFTER`]; dropping the handle
//! clears the heartbeat (clean stop).
//!
//! The configuration publication protocol is described in the `publish`
//! module source; in short: double buffer, per-slot sequence counter,
//! writer writes only the inactive slot then flips the active word with
//! Release; the reader copies out, re-checks the sequence, verifies the
//! checksum, decodes and validates, and only then returns `New`.
//!
//! ## Safety
//! All shared-memory access is through `&[AtomicU64]` (atomic loads and
//! stores only). The `unsafe` code (the block that creates that slice from
//! the mapping, and the `SIGBUS` handler) lives in `src/raw.rs`; the rest of
//! the crate denies `unsafe`.
#![deny(unsafe_code)]

mod counters;
mod error;
pub mod layout;
mod publish;
mod raw;
mod reject;
mod report;
mod segment;

pub use counters::*;
pub use error::{Error, Result};
pub use layout::{
    BACKEND_COUNTERS, FILE_SIZE, LAYOUT_VERSION, LCORE_COUNTERS, MAGIC, MAX_BACKENDS, MAX_LCORES,
    MAX_PAYLOAD, MAX_REPORT, MAX_VIPS, NAME_LEN, VIP_COUNTERS,
};
pub use reject::{reject_code_name, RejectReason};

const _: () = assert!(MAX_VIPS == fulcrum_model::MAX_VIPS && MAX_BACKENDS == fulcrum_model::MAX_BACKENDS);
pub use publish::{Poll, Publisher, Subscriber, SubscriberStats, MAX_ATTEMPTS};
pub use segment::{
    now_ns, ControlPlaneStatus, DataplaneStatus, Segment, CLAIM_STALE_AFTER, DEFAULT_PATH,
    HEARTBEAT_INTERVAL,
};
