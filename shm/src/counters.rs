//! Per-lcore counter blocks (single writer each, summed by readers), the
//! dataplane role, and restart-safe totals for rate computations.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::layout::*;
use crate::publish::Subscriber;
use crate::segment::{now_ns, Segment};

// ---- per-VIP counter indices (VIP_COUNTERS = 24) ---------------------------
/// New connections (TCP) / flows (UDP) accepted and assigned a backend.
pub const VIP_ACCEPTED: usize = 0;
/// Gauge: connections currently tracked.
pub const VIP_ACTIVE: usize = 1;
pub const VIP_PACKETS_IN: usize = 2;
pub const VIP_PACKETS_OUT: usize = 3;
pub const VIP_BYTES_IN: usize = 4;
pub const VIP_BYTES_OUT: usize = 5;
/// Refused: `max_connections` reached.
pub const VIP_DROP_LIMIT: usize = 6;
/// Refused: `new_conn_rate` exceeded.
pub const VIP_DROP_RATE: usize = 7;
/// Refused: `per_client_rate` exceeded.
pub const VIP_DROP_CLIENT_RATE: usize = 8;
/// Packets dropped: `bandwidth_bytes_per_sec` exceeded.
pub const VIP_DROP_BANDWIDTH: usize = 9;
/// Refused: no Up backend with weight > 0.
pub const VIP_DROP_NO_BACKEND: usize = 10;
/// Gave up after `connect_tries` backend connection attempts.
pub const VIP_DROP_CONNECT_FAILED: usize = 11;
/// Connections closed by the idle timeout.
pub const VIP_DROP_IDLE: usize = 12;
/// Connections reset (either direction).
pub const VIP_RESETS: usize = 13;
/// Connections closed normally.
pub const VIP_CLOSED: usize = 14;
/// Forwarding VIPs: packets dropped after the VIP was identified (no
/// backend, neighbour unresolved, TTL, too big, ...).
pub const VIP_DROPS: usize = 15;
/// Proxy VIPs: SYNs that reached admission or a SYN cookie (plausible flags,
/// good checksums), whatever became of them.
pub const VIP_SYNS: usize = 16;
/// Proxy VIPs: SYNs answered with a SYN cookie (flood mode; nothing kept).
pub const VIP_COOKIES_SENT: usize = 17;
/// Proxy VIPs: ACKs whose cookie validated and became a connection.
pub const VIP_COOKIES_VALIDATED: usize = 18;
/// Proxy VIPs: ACKs for no connection whose cookie did not validate
/// (answered with RST).
pub const VIP_COOKIES_REJECTED: usize = 19;
/// Gauge, proxy VIPs: connections whose client has not completed its
/// handshake.
pub const VIP_HALF_OPEN: usize = 20;
/// Gauge, proxy VIPs: this lcore is in flood mode (SYNs answered with
/// cookies) for the VIP: each lcore writes 0 or 1, so the sum over lcores is
/// the number of lcores in flood mode.
pub const VIP_FLOOD_LCORES: usize = 21;
/// Proxy VIPs: half-open connections aborted because the client did not
/// complete the handshake within the half-open timeout.
pub const VIP_DROP_HALF_OPEN: usize = 22;
/// Unused (room for one more).
pub const VIP_RESERVED_23: usize = 23;
/// Names of the per-VIP counters, by index.
pub const VIP_COUNTER_NAMES: [&str; VIP_COUNTERS] = [
    "accepted",
    "active",
    "packets_in",
    "packets_out",
    "bytes_in",
    "bytes_out",
    "drop_limit",
    "drop_rate",
    "drop_client_rate",
    "drop_bandwidth",
    "drop_no_backend",
    "drop_connect_failed",
    "drop_idle",
    "resets",
    "closed",
    "drops",
    "syns",
    "cookies_sent",
    "cookies_validated",
    "cookies_rejected",
    "half_open",
    "flood_lcores",
    "drop_half_open_timeout",
    "reserved",
];
/// Bit i set = per-VIP counter i is a gauge (not rebased across restarts).
pub const VIP_GAUGES: u64 = 1 << VIP_ACTIVE | 1 << VIP_HALF_OPEN | 1 << VIP_FLOOD_LCORES;
const _: () = assert!(VIP_COUNTERS <= 64 && BACKEND_COUNTERS <= 64, "gauge masks are u64");

// ---- per-backend counter indices (BACKEND_COUNTERS = 10) --------------------
pub const BACKEND_ATTEMPTS: usize = 0;
pub const BACKEND_OPENED: usize = 1;
/// Gauge: connections currently open to this backend.
pub const BACKEND_ACTIVE: usize = 2;
pub const BACKEND_CONNECT_FAILURES: usize = 3;
pub const BACKEND_RESETS: usize = 4;
pub const BACKEND_BYTES_TO: usize = 5;
pub const BACKEND_BYTES_FROM: usize = 6;
pub const BACKEND_CLOSED: usize = 7;
/// Forwarding VIPs: packets forwarded to this backend.
pub const BACKEND_PACKETS: usize = 8;
pub const BACKEND_RESERVED_9: usize = 9;
pub const BACKEND_COUNTER_NAMES: [&str; BACKEND_COUNTERS] = [
    "attempts",
    "opened",
    "active",
    "connect_failures",
    "resets",
    "bytes_to",
    "bytes_from",
    "closed",
    "packets",
    "reserved",
];
pub const BACKEND_GAUGES: u64 = 1 << BACKEND_ACTIVE;

// ---- lcore-level counter names ---------------------------------------------
// The dataplane writes a name for each of its lcore-level counters into the
// segment's name table (these, then one `drop_<reason>` per dataplane drop
// reason and one `fwd_drop_<reason>` per forwarder drop reason, the reasons'
// own names); readers find the counters by these names.
pub const LCORE_RX_PACKETS: &str = "rx_packets";
pub const LCORE_RX_BYTES: &str = "rx_bytes";
pub const LCORE_TX_PACKETS: &str = "tx_packets";
pub const LCORE_TX_BYTES: &str = "tx_bytes";
/// Nanoseconds the lcore spent in loop iterations that had work.
pub const LCORE_BUSY_NS: &str = "busy_ns";
pub const LCORE_HANDED_OVER: &str = "handed_over";
pub const LCORE_TAKEN_OVER: &str = "taken_over";
/// af_packet: frames the kernel offered to the lcore's RX ring.
pub const LCORE_RX_RING_FRAMES: &str = "rx_ring_frames";
/// Prefix of the dataplane's own drop reasons (frame parsing and the lcore's).
pub const LCORE_DROP_PREFIX: &str = "drop_";
/// Prefix of the forwarder's drop reasons.
pub const LCORE_FWD_DROP_PREFIX: &str = "fwd_drop_";

/// What the dataplane declares when it starts.
#[derive(Clone, Debug, Default)]
pub struct DataplaneInit<'n> {
    /// Number of lcore blocks used (blocks `0..lcores`), `<= MAX_LCORES`.
    pub lcores: usize,
    /// Names of the lcore-level counters by index (`<= LCORE_COUNTERS`
    /// entries, each `< NAME_LEN` bytes). Unnamed slots read as "".
    pub counter_names: &'n [&'n str],
    /// Bit i set = lcore counter i is a gauge.
    pub gauge_mask: u64,
}

/// The dataplane role: owns the counter blocks and the dataplane status.
pub struct Dataplane<'a> {
    seg: &'a Segment,
    epoch: u64,
    lcores: usize,
    taken: u64,
}

/// Writer handle of one lcore's counter block. Exactly one exists per lcore
/// (handed out once by [`Dataplane::take_lcore`]); it is `Send` but not
/// `Sync`, so updates are plain Relaxed load + store, no atomic RMW.
///
/// All arithmetic wraps, and readers sum with wrapping arithmetic, so a gauge
/// may be incremented on one lcore and decremented on another.
/// Out-of-range indices are ignored (debug builds assert).
pub struct LcoreCounters<'a> {
    lcore: usize,
    block: &'a [AtomicU64],
    _not_sync: PhantomData<Cell<()>>,
}

const LCORE_W: usize = w(BLOCK_LCORE_OFF);
const VIP_W: usize = w(BLOCK_VIP_OFF);
const BACKEND_W: usize = w(BLOCK_BACKEND_OFF);

impl Segment {
    /// Takes the dataplane role (fails with `AlreadyRunning` if another live
    /// dataplane holds it) and starts a new epoch: all counter blocks are
    /// zeroed, the name table and masks written, the status reset.
    /// Readers see the epoch change and rebase (see [`CounterTotals`]).
    pub fn dataplane(&self, init: &DataplaneInit<'_>) -> Result<Dataplane<'_>> {
        if init.lcores > MAX_LCORES {
            return Err(Error::TooManyLcores {
                count: init.lcores,
                max: MAX_LCORES,
            });
        }
        if init.counter_names.len() > LCORE_COUNTERS {
            return Err(Error::TooManyNames {
                count: init.counter_names.len(),
                max: LCORE_COUNTERS,
            });
        }
        if let Some(n) = init.counter_names.iter().find(|n| n.len() >= NAME_LEN) {
            return Err(Error::NameTooLong {
                name: n.to_string(),
                max: NAME_LEN - 1,
            });
        }
        self.claim("dataplane", DP_PID, DP_HEARTBEAT_NS)?;

        let epoch_word = self.word(DP_EPOCH);
        let e = epoch_word.load(Ordering::Relaxed);
        let base = e + (e & 1); // odd: a previous dataplane died while resetting
        epoch_word.store(base + 1, Ordering::Relaxed);
        fence(Ordering::Release);

        let words = self.words();
        for word in &words[w(COUNTERS_OFF)..w(FILE_SIZE)] {
            word.store(0, Ordering::Relaxed);
        }
        for i in 0..LCORE_COUNTERS {
            let mut name = [0u8; NAME_LEN];
            if let Some(n) = init.counter_names.get(i) {
                name[..n.len()].copy_from_slice(n.as_bytes());
            }
            for (j, chunk) in name.chunks_exact(8).enumerate() {
                self.store(
                    NAMES_OFF + i * NAME_LEN + j * 8,
                    u64::from_le_bytes(chunk.try_into().unwrap()),
                );
            }
        }
        let mask = if init.lcores == 64 {
            u64::MAX
        } else {
            (1u64 << init.lcores) - 1
        };
        self.store(DP_LCORE_MASK, mask);
        self.store(DP_GAUGE_MASK, init.gauge_mask);
        self.store(DP_APPLIED_GEN, 0);
        self.store(DP_REJECTED_COUNT, 0);
        self.store(DP_LAST_REJECT_CODE, 0);
        self.store(DP_LAST_REJECT_GEN, 0);
        let now = now_ns();
        self.store(DP_PID, u64::from(std::process::id()));
        self.store(DP_START_NS, now);
        self.store(DP_HEARTBEAT_NS, now);
        epoch_word.store(base + 2, Ordering::Release);
        Ok(Dataplane {
            seg: self,
            epoch: base + 2,
            lcores: init.lcores,
            taken: 0,
        })
    }

    /// Sums all in-use lcore blocks. Fails with `Busy` only if the dataplane
    /// is resetting (restarting) during every one of a few attempts.
    pub fn snapshot(&self) -> Result<Snapshot> {
        for _ in 0..16 {
            if let Some(s) = self.try_snapshot() {
                return Ok(s);
            }
            std::thread::yield_now();
        }
        Err(Error::Busy)
    }

    fn try_snapshot(&self) -> Option<Snapshot> {
        let epoch_word = self.word(DP_EPOCH);
        let e1 = epoch_word.load(Ordering::Acquire);
        if e1 % 2 == 1 {
            return None;
        }
        let lcore_mask = self.load(DP_LCORE_MASK) & ((1u64 << MAX_LCORES) - 1);
        let mut s = Snapshot {
            epoch: e1,
            dataplane_start_ns: self.load(DP_START_NS),
            taken_ns: now_ns(),
            lcore_mask,
            lcore_gauge_mask: self.load(DP_GAUGE_MASK),
            names: (0..LCORE_COUNTERS).map(|i| self.read_name(i)).collect(),
            lcore: [0; LCORE_COUNTERS],
            per_lcore: Vec::new(),
            vips: vec![[0; VIP_COUNTERS]; MAX_VIPS],
            backends: vec![[0; BACKEND_COUNTERS]; MAX_BACKENDS],
        };
        let words = self.words();
        for lcore in (0..MAX_LCORES).filter(|i| lcore_mask & (1 << i) != 0) {
            let block = &words[w(block_off(lcore))..w(block_off(lcore) + BLOCK_SIZE)];
            let mut own = [0u64; LCORE_COUNTERS];
            for (i, v) in own.iter_mut().enumerate() {
                *v = block[LCORE_W + i].load(Ordering::Relaxed);
                s.lcore[i] = s.lcore[i].wrapping_add(*v);
            }
            s.per_lcore.push((lcore, own));
            for (chunk, sums) in block[VIP_W..VIP_W + MAX_VIPS * VIP_COUNTERS]
                .chunks_exact(VIP_COUNTERS)
                .zip(&mut s.vips)
            {
                for (c, sum) in chunk.iter().zip(sums.iter_mut()) {
                    *sum = sum.wrapping_add(c.load(Ordering::Relaxed));
                }
            }
            for (chunk, sums) in block[BACKEND_W..BACKEND_W + MAX_BACKENDS * BACKEND_COUNTERS]
                .chunks_exact(BACKEND_COUNTERS)
                .zip(&mut s.backends)
            {
                for (c, sum) in chunk.iter().zip(sums.iter_mut()) {
                    *sum = sum.wrapping_add(c.load(Ordering::Relaxed));
                }
            }
        }
        fence(Ordering::Acquire);
        (epoch_word.load(Ordering::Relaxed) == e1).then_some(s)
    }

    fn read_name(&self, i: usize) -> String {
        let mut name = [0u8; NAME_LEN];
        for (j, chunk) in name.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&self.load(NAMES_OFF + i * NAME_LEN + j * 8).to_le_bytes());
        }
        let end = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        String::from_utf8_lossy(&name[..end]).into_owned()
    }
}

impl<'a> Dataplane<'a> {
    /// The segment this role lives in (e.g. for [`Segment::check`]).
    pub fn segment(&self) -> &'a Segment {
        self.seg
    }

    /// This dataplane's epoch (even, > 0).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The writer handle of lcore block `lcore`; `None` if out of range or
    /// already taken.
    pub fn take_lcore(&mut self, lcore: usize) -> Option<LcoreCounters<'a>> {
        if lcore >= self.lcores || self.taken & (1 << lcore) != 0 {
            return None;
        }
        self.taken |= 1 << lcore;
        let start = w(block_off(lcore));
        Some(LcoreCounters {
            lcore,
            block: &self.seg.words()[start..start + w(BLOCK_SIZE)],
            _not_sync: PhantomData,
        })
    }

    /// The configuration subscriber (records into this dataplane's status).
    pub fn subscriber(&self) -> Subscriber<'a> {
        Subscriber::new(self.seg)
    }

    /// Updates the dataplane heartbeat; call every `HEARTBEAT_INTERVAL`.
    pub fn heartbeat(&self) {
        self.seg
            .word(DP_HEARTBEAT_NS)
            .store(now_ns(), Ordering::Release);
    }
}

impl Drop for Dataplane<'_> {
    /// Clean shutdown: heartbeat 0 = not alive, role free immediately.
    /// Counters stay readable until the next dataplane starts.
    fn drop(&mut self) {
        self.seg.word(DP_HEARTBEAT_NS).store(0, Ordering::Release);
    }
}

impl LcoreCounters<'_> {
    pub fn lcore(&self) -> usize {
        self.lcore
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> Option<&AtomicU64> {
        let c = self.block.get(i);
        debug_assert!(c.is_some(), "counter index out of range");
        c
    }

    #[inline(always)]
    fn add_at(&self, i: usize, n: u64) {
        if let Some(c) = self.slot(i) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn set_at(&self, i: usize, v: u64) {
        if let Some(c) = self.slot(i) {
            c.store(v, Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn lcore_idx(idx: usize) -> usize {
        if idx < LCORE_COUNTERS {
            LCORE_W + idx
        } else {
            usize::MAX
        }
    }

    #[inline(always)]
    fn vip_idx(vip: u16, field: usize) -> usize {
        if usize::from(vip) < MAX_VIPS && field < VIP_COUNTERS {
            VIP_W + usize::from(vip) * VIP_COUNTERS + field
        } else {
            usize::MAX
        }
    }

    #[inline(always)]
    fn backend_idx(slot: u32, field: usize) -> usize {
        if (slot as usize) < MAX_BACKENDS && field < BACKEND_COUNTERS {
            BACKEND_W + slot as usize * BACKEND_COUNTERS + field
        } else {
            usize::MAX
        }
    }

    /// Lcore-level counter `idx` += n.
    #[inline]
    pub fn add(&self, idx: usize, n: u64) {
        self.add_at(Self::lcore_idx(idx), n)
    }
    /// Lcore-level gauge `idx` -= n.
    #[inline]
    pub fn sub(&self, idx: usize, n: u64) {
        self.add_at(Self::lcore_idx(idx), n.wrapping_neg())
    }
    /// Lcore-level counter/gauge `idx` = v.
    #[inline]
    pub fn set(&self, idx: usize, v: u64) {
        self.set_at(Self::lcore_idx(idx), v)
    }
    /// This lcore's own value of lcore-level counter `idx`.
    #[inline]
    pub fn get(&self, idx: usize) -> u64 {
        self.block
            .get(Self::lcore_idx(idx))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
    #[inline]
    pub fn vip_add(&self, vip: u16, field: usize, n: u64) {
        self.add_at(Self::vip_idx(vip, field), n)
    }
    #[inline]
    pub fn vip_sub(&self, vip: u16, field: usize, n: u64) {
        self.add_at(Self::vip_idx(vip, field), n.wrapping_neg())
    }
    #[inline]
    pub fn vip_set(&self, vip: u16, field: usize, v: u64) {
        self.set_at(Self::vip_idx(vip, field), v)
    }
    #[inline]
    pub fn backend_add(&self, slot: u32, field: usize, n: u64) {
        self.add_at(Self::backend_idx(slot, field), n)
    }
    #[inline]
    pub fn backend_sub(&self, slot: u32, field: usize, n: u64) {
        self.add_at(Self::backend_idx(slot, field), n.wrapping_neg())
    }
    #[inline]
    pub fn backend_set(&self, slot: u32, field: usize, v: u64) {
        self.set_at(Self::backend_idx(slot, field), v)
    }
}

/// Counters summed over the in-use lcore blocks at one instant (each value
/// is read atomically; the set as a whole is not a global snapshot, as in VPP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Dataplane epoch these values belong to (0 = no dataplane ever ran).
    pub epoch: u64,
    pub dataplane_start_ns: u64,
    pub taken_ns: u64,
    pub lcore_mask: u64,
    /// Bit i set = lcore counter i is a gauge.
    pub lcore_gauge_mask: u64,
    /// `LCORE_COUNTERS` names from the dataplane ("" = unused slot).
    pub names: Vec<String>,
    /// Lcore-level counters summed over lcores.
    pub lcore: [u64; LCORE_COUNTERS],
    /// Each in-use lcore's own lcore-level counters.
    pub per_lcore: Vec<(usize, [u64; LCORE_COUNTERS])>,
    /// `MAX_VIPS` entries, indexed by `Published::id`.
    pub vips: Vec<[u64; VIP_COUNTERS]>,
    /// `MAX_BACKENDS` entries, indexed by `BackendConf::slot`.
    pub backends: Vec<[u64; BACKEND_COUNTERS]>,
}

impl Snapshot {
    /// Lcore-level counter by name (as declared by the dataplane).
    pub fn lcore_by_name(&self, name: &str) -> Option<u64> {
        self.names
            .iter()
            .position(|n| !n.is_empty() && n == name)
            .map(|i| self.lcore[i])
    }
    pub fn vip(&self, id: u16, field: usize) -> u64 {
        self.vips
            .get(usize::from(id))
            .and_then(|v| v.get(field))
            .copied()
            .unwrap_or(0)
    }
    pub fn backend(&self, slot: u32, field: usize) -> u64 {
        self.backends
            .get(slot as usize)
            .and_then(|b| b.get(field))
            .copied()
            .unwrap_or(0)
    }
}

/// Turns successive [`Snapshot`]s into totals that never go backwards across
/// dataplane restarts (for rate computations): when the epoch changes, the
/// last values seen from the previous epoch are folded into a base that is
/// added to every later snapshot. Gauges are passed through unchanged.
/// Increments made by the old dataplane after the last snapshot before its
/// restart are necessarily lost.
#[derive(Clone, Debug, Default)]
pub struct CounterTotals {
    epoch: Option<u64>,
    restarts: u64,
    base: Option<Snapshot>,
    last: Option<Snapshot>,
}

fn fold(acc: &mut [u64], add: &[u64], gauges: u64) {
    for (i, (a, b)) in acc.iter_mut().zip(add).enumerate() {
        if gauges & (1 << i) == 0 {
            *a = a.wrapping_add(*b);
        }
    }
}

fn fold_all(acc: &mut Snapshot, add: &Snapshot) {
    let gauges = add.lcore_gauge_mask;
    fold(&mut acc.lcore, &add.lcore, gauges);
    for (a, b) in acc.vips.iter_mut().zip(&add.vips) {
        fold(a, b, VIP_GAUGES);
    }
    for (a, b) in acc.backends.iter_mut().zip(&add.backends) {
        fold(a, b, BACKEND_GAUGES);
    }
}

impl CounterTotals {
    pub fn new() -> CounterTotals {
        CounterTotals::default()
    }

    /// Dataplane restarts observed.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Feeds a snapshot; returns it with every (non-gauge) counter rebased so
    /// that totals are monotonic across dataplane restarts. `per_lcore` is
    /// left as read (raw, current epoch).
    pub fn update(&mut self, snap: &Snapshot) -> Snapshot {
        if let (Some(e), Some(last)) = (self.epoch, self.last.take()) {
            if e != snap.epoch {
                self.restarts += 1;
                match &mut self.base {
                    Some(base) => fold_all(base, &last),
                    None => self.base = Some(last),
                }
            }
        }
        self.epoch = Some(snap.epoch);
        self.last = Some(snap.clone());
        let mut out = snap.clone();
        if let Some(base) = &self.base {
            // Gauges in `base` are from the old epoch; fold() skips them.
            let gauges = snap.lcore_gauge_mask;
            fold(&mut out.lcore, &base.lcore, gauges);
            for (a, b) in out.vips.iter_mut().zip(&base.vips) {
                fold(a, b, VIP_GAUGES);
            }
            for (a, b) in out.backends.iter_mut().zip(&base.backends) {
                fold(a, b, BACKEND_GAUGES);
            }
        }
        out
    }
}
