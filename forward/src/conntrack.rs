//! Per-lcore connection tracking: a fixed, set-associative table laid out
//! for the cache.
//!
//! # Layout
//! Buckets of [`WAYS`] entries of one cache line each, and per bucket one
//! line of 16-bit signatures, one per way (0 = free), and a spill count.
//! The signature lines are an array of their own: 64 bytes per 31 entries,
//! 4 MiB for 2M entries, so they stay in the last-level cache while the
//! entries (the other 98 %) come from memory. A lookup reads the signature
//! line, then only the entry whose signature matches (a false match costs
//! one more line, 1 in 65535 per occupied way): one memory access for a
//! hit. [`BYTES_PER_ENTRY`] = (64 + 31 x 64) / 31.
//!
//! A key's home is the bucket its hash picks; only when that is full does
//! it go to a second bucket (also from the hash), and the home's spill
//! count says so, so that lookups look there only then. With 31 ways a
//! bucket is full at half load with probability ~1e-4 (Poisson, mean 16),
//! so almost every lookup reads one signature line, and no live flow is
//! evicted until both its buckets are full.
//!
//! A burst hashes all its keys, prefetches their signature lines, then
//! ([`Table::probe`]) finds each candidate way and prefetches its entry,
//! and only then acts: its misses overlap instead of queueing.
//!
//! Allocated once and written through (no page faults on the packet path),
//! the signature lines in whole 2 MiB-aligned huge pages ([`SigPage`]),
//! then shown to the caller's memory hint (the dataplane has both arrays
//! collapsed into transparent huge pages: a 1M-entry table is 66 MiB, and
//! with 4 KiB pages nearly every lookup would also miss the TLB, twice);
//! never resized; entries never move, so an entry's index is a stable
//! handle (FullNAT pairs point at each other by index).
//!
//! # Eviction and expiry
//! No sweeper is needed for correctness: a lookup that finds an expired entry
//! treats it as absent (and frees it and its twin), and an insertion takes a
//! free or expired way first. When its home and second buckets are both
//! full, a way of the home bucket is evicted (counted): the first expired
//! one, else by class, then closest to its deadline (LRU weighted by state
//! timeout). The classes, evicted in this order ([`State::rank`]):
//! unconfirmed entries (SYN only, or created mid-stream and on probation),
//! then closing/closed ones, then established TCP and UDP flows. So an
//! established flow is evicted only when its home bucket holds nothing
//! else: a flood of spoofed SYNs or ACKs churns among its own entries.
//! [`Reclaimed`] counts the unconfirmed and established evictions apart.
//!
//! # Half-open count
//! Entries created with [`F_HALF_OPEN`] (FullNAT client -> VIP entries made
//! by a SYN) are counted ([`Table::half_open`]) while they carry the flag:
//! invariant, `half_open` = used entries with the flag. The flag goes when
//! the entry is freed (expired and reclaimed, evicted, removed) or leaves
//! the SYN state ([`Table::settle`]). An expired entry not yet reclaimed
//! still counts; the forwarder reclaims those when the quota is reached.
//! [`Table::sweep`] reclaims expired entries in bounded steps for callers who
//! want `live()` to be accurate.
//!
//! # Time
//! Deadlines are `u32` ticks of 2^24 ns (16.8 ms), compared with wrapping
//! arithmetic: valid for differences up to 2^31 ticks (about 1.1 years).

use std::hash::BuildHasher;

use bytemuck::{Pod, Zeroable};

/// Ways per bucket: a cache line of 16-bit signatures holds 31 and the
/// bucket's spill count.
pub(crate) const WAYS: usize = 31;

/// Entry indexes per bucket (one more than the ways, so that index
/// arithmetic is a shift; index 31 of a bucket names no entry).
const STRIDE: usize = 32;

/// Memory per entry: a bucket's 32 lines over its 31 entries.
pub(crate) const BYTES_PER_ENTRY: usize = (std::mem::size_of::<Sigs>() + std::mem::size_of::<Ways>()) / WAYS;

/// Most entries a table may have (indexes are `u32`, `u32::MAX` is `NO_TWIN`).
pub(crate) const MAX_CAPACITY: usize = 1 << 31;

/// Nanoseconds per tick, as a shift.
pub(crate) const TICK_SHIFT: u32 = 24;

/// Clock in ticks.
#[inline]
pub(crate) fn tick(now_ns: u64) -> u32 {
    (now_ns >> TICK_SHIFT) as u32
}

/// A duration in ticks, rounded up, at least 1.
pub(crate) fn ticks(ns: u64) -> u32 {
    let t = ns.div_ceil(1 << TICK_SHIFT);
    t.clamp(1, i32::MAX as u64) as u32
}

/// A 5-tuple as seen on the wire, addresses and ports in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Key {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// A key's hash, split into what the table needs: computed once per packet
/// (a burst computes it ahead, to prefetch), with the way a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hashed {
    /// Home bucket, and the one it spills to.
    bucket: u32,
    second: u32,
    /// Never 0 (0 marks a free way).
    sig: u16,
    /// The entry whose signature matched at [`Table::probe`], if it ran:
    /// tried first by [`Table::find`] (which checks it still holds the key:
    /// the table may have changed since).
    probed: Option<u32>,
}

/// Entry flag: backend -> client direction of a FullNAT pair.
pub(crate) const F_REVERSE: u8 = 2;
/// Entry flag: stored in its second bucket (its home was full).
const F_SPILLED: u8 = 4;
/// Entry flag: a FullNAT forward entry created by a SYN that has not left
/// the SYN state yet (counted in [`Table::half_open`]).
pub(crate) const F_HALF_OPEN: u8 = 8;

/// TCP/UDP tracking states (the `state` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    SynSent = 1,
    Established = 2,
    Closing = 3,
    Closed = 4,
    Udp = 5,
    /// TCP created by a packet that is not a SYN (mid-stream, e.g. a flow
    /// moved here by ECMP), until it shows it is alive.
    Probation = 6,
}

/// Number of states + 1 (state values are 1..=6): the per-state timeout
/// array's length.
pub(crate) const STATES: usize = 7;

impl State {
    #[inline]
    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::SynSent,
            2 => State::Established,
            3 => State::Closing,
            4 => State::Closed,
            6 => State::Probation,
            _ => State::Udp,
        }
    }

    /// Eviction class, lowest first: 0 unconfirmed (SYN only, probation),
    /// 1 closing or closed, 2 established TCP and UDP.
    #[inline]
    pub(crate) fn rank(self) -> u8 {
        match self {
            State::SynSent | State::Probation => 0,
            State::Closing | State::Closed => 1,
            State::Established | State::Udp => 2,
        }
    }
}

/// One direction of one flow: one cache line (asserted in the tests).
///
/// The action fields say what to do with a packet matching the key: for
/// FullNAT, rewrite it to `new_src:new_sport -> new_dst:new_dport`; for
/// DSR/tunnel, `new_dst:new_dport` is the backend (the tunnel endpoint).
/// `mac` is the next hop's MAC, copied in when the flow is created, so an
/// entry never refers to backend configuration that may have gone away;
/// `backend` is only a hint for per-backend counters, checked against
/// `new_dst`/`new_dport` before use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Entry {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub flags: u8,
    pub state: u8,
    /// Reserved (padding made explicit).
    pub spare: u8,
    pub deadline: u32,
    pub new_src: u32,
    pub new_dst: u32,
    pub new_sport: u16,
    pub new_dport: u16,
    pub mac: [u8; 6],
    pub vip: u16,
    pub backend: u16,
    /// Reserved (padding made explicit).
    pub spare2: u16,
    /// Index of the other direction's entry (FullNAT), or `NO_TWIN`.
    pub twin: u32,
    /// The creating VIP's internal index (`vip` is its id): an entry is
    /// only applied while that VIP is installed with that index.
    pub vip_index: u32,
    /// Tick the entry was created (probation: see `datapath::flow::touch`).
    pub born: u32,
    /// The creating VIP's `VipRt::backends_stamp` (0: none): while the
    /// VIP still has it, `backend` is the entry's backend unchanged.
    pub backends_stamp: u32,
    /// FullNAT: the checksum changes of the rewrite from the key to the
    /// `new_*` fields, each as a folded one's-complement sum
    /// (`Update::partial`): of the addresses (IPv4 header), and of the
    /// addresses and ports (TCP/UDP); see `datapath::fullnat::nat_sums`.
    /// The rest of the cache line: an entry never shares a line.
    pub nat_sums: [u16; 2],
}

pub(crate) const NO_TWIN: u32 = u32::MAX;

impl Entry {
    fn key(&self) -> Key {
        Key {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
        }
    }

    /// Two word compares (the key's fields are adjacent in both).
    #[inline]
    fn key_is(&self, k: &Key) -> bool {
        let words = |src: u32, dst: u32, sport: u16, dport: u16, proto: u8| {
            (u64::from(src) | u64::from(dst) << 32, u64::from(sport) | u64::from(dport) << 16 | u64::from(proto) << 32)
        };
        words(self.src, self.dst, self.sport, self.dport, self.proto) == words(k.src, k.dst, k.sport, k.dport, k.proto)
    }

    #[inline]
    pub(crate) fn expired(&self, now: u32) -> bool {
        now.wrapping_sub(self.deadline) as i32 >= 0
    }
}

/// One bucket's signatures and (last) spill count: one cache line.
#[derive(Clone, Copy, Default, Pod, Zeroable)]
#[repr(C, align(64))]
struct Sigs([u16; STRIDE]);

impl Sigs {
    /// Keys whose home is this bucket but which are stored in their second.
    #[inline]
    fn spilled(&self) -> u16 {
        self.0[WAYS]
    }

    /// The first way from `from` on that holds `sig`: four ways per 64-bit
    /// word, compared at once (a lane is zero after the XOR exactly when it
    /// matched; `(x & 0x7fff..) + 0x7fff..` sets a lane's top bit unless its
    /// low 15 bits are zero, `| x` unless its top bit is). Ways fill from
    /// the lowest free one, so a hit is usually in the first words.
    #[inline]
    fn next_match(&self, sig: u16, from: usize) -> Option<usize> {
        const LOW: u64 = 0x7fff_7fff_7fff_7fff;
        let pattern = u64::from(sig) * 0x0001_0001_0001_0001;
        let mut word = from / 4;
        let mut lanes = u64::MAX << (16 * (from % 4));
        while let Some(c) = self.0.get(word * 4..word * 4 + 4) {
            let x = (u64::from(c[0]) | u64::from(c[1]) << 16 | u64::from(c[2]) << 32 | u64::from(c[3]) << 48) ^ pattern;
            let zero = !(((x & LOW) + LOW) | x) & !LOW & lanes;
            if zero != 0 {
                let way = word * 4 + (zero.trailing_zeros() / 16) as usize;
                // The last lane is the spill count, not a way.
                return (way < WAYS).then_some(way);
            }
            lanes = u64::MAX;
            word += 1;
        }
        None
    }
}

/// The huge page size the signature lines are aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// Signature lines by the huge page: 2 MiB-aligned and a whole 2 MiB, so
/// that the memory hint can back every line of the array with huge pages
/// (an unaligned array has its first and last partial 2 MiB in 4 KiB pages:
/// half of a 4 MiB array).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(2097152))]
struct SigPage([[Sigs; 128]; 256]);

const _: () = assert!(std::mem::size_of::<SigPage>() == HUGE_PAGE);

/// The signature lines of `n` buckets: whole zeroed [`SigPage`]s, written
/// once here (no page faults on the packet path), then shown to `hint`.
fn zeroed_sigs(n: usize, hint: impl FnOnce(&mut [u8])) -> Result<Box<[SigPage]>, TableAlloc> {
    let pages = (n * std::mem::size_of::<Sigs>()).div_ceil(HUGE_PAGE);
    // alloc_zeroed through the 2 MiB-aligned layout: no 2 MiB value on the stack.
    let mut all = bytemuck::allocation::try_zeroed_slice_box::<SigPage>(pages).map_err(|()| TableAlloc {
        bytes: pages.saturating_mul(HUGE_PAGE),
    })?;
    hint(bytemuck::cast_slice_mut(&mut all[..]));
    Ok(all)
}

/// A table's memory could not be allocated.
#[derive(Debug, thiserror::Error)]
#[error("cannot allocate {bytes} bytes")]
pub(crate) struct TableAlloc {
    bytes: usize,
}

/// `n` zeroed `T`s, written once here so that the packet path never takes
/// the page faults, then shown to `hint` as bytes. An allocation failure is
/// an error, not an abort.
fn zeroed<T: Pod>(n: usize, hint: impl FnOnce(&mut [u8])) -> Result<Box<[T]>, TableAlloc> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| TableAlloc {
        bytes: n.saturating_mul(std::mem::size_of::<T>()),
    })?;
    v.resize(n, T::zeroed());
    let mut all = v.into_boxed_slice();
    hint(bytemuck::cast_slice_mut(&mut all[..]));
    Ok(all)
}

/// What an insertion displaced, for the caller's counters.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Reclaimed {
    /// Live entries evicted (all classes).
    pub evicted: u64,
    /// Of which unconfirmed ([`State::rank`] 0) ...
    pub evicted_unconfirmed: u64,
    /// ... and established ([`State::rank`] 2).
    pub evicted_established: u64,
    pub expired: u64,
}

/// A bucket's entries.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(transparent)]
struct Ways([Entry; WAYS]);

pub(crate) struct Table {
    /// Each bucket's signature line (in whole huge pages: the lines past
    /// `buckets` are never used), then each bucket's entries.
    sigs: Box<[SigPage]>,
    ways: Box<[Ways]>,
    /// Bucket count.
    buckets: u32,
    /// Per-process random keys of the hash: table positions cannot be
    /// predicted from outside, so nobody can aim flows at one bucket.
    keys: [u64; 3],
    live: usize,
    /// Used entries with [`F_HALF_OPEN`].
    half_open: usize,
    sweep_cursor: usize,
}

impl Table {
    /// Allocates at least `capacity` entries (whole buckets; at least one,
    /// at most [`MAX_CAPACITY`] entries); `hint` sees the memory first (see
    /// [`zeroed`]).
    pub(crate) fn new(capacity: usize, mut hint: impl FnMut(&mut [u8])) -> Result<Self, TableAlloc> {
        let random = std::collections::hash_map::RandomState::new();
        let buckets = capacity.clamp(WAYS, MAX_CAPACITY).div_ceil(WAYS);
        Ok(Table {
            sigs: zeroed_sigs(buckets, &mut hint)?,
            ways: zeroed(buckets, &mut hint)?,
            buckets: buckets as u32,
            keys: [0, 1, 2].map(|i| random.hash_one(i) | 1),
            live: 0,
            half_open: 0,
            sweep_cursor: 0,
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.ways.len() * WAYS
    }

    /// Entries in use, expired ones not yet reclaimed included.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Entries in use with [`F_HALF_OPEN`] (expired ones not yet reclaimed
    /// included).
    pub(crate) fn half_open(&self) -> usize {
        self.half_open
    }

    /// Entry `i` has left the SYN state: drops its [`F_HALF_OPEN`] (if set)
    /// from the count.
    pub(crate) fn settle(&mut self, i: u32) {
        if let Some(e) = self.entry_mut(i as usize).filter(|e| e.flags & F_HALF_OPEN != 0) {
            e.flags &= !F_HALF_OPEN;
            self.half_open = self.half_open.saturating_sub(1);
        }
    }

    /// The key's buckets and signature, from one keyed hash (two folded
    /// multiplies, as foldhash and wyhash do: cheap, and well mixed in every
    /// bit): the low half picks the home bucket, the high half the second
    /// (another bucket whenever there are two), the top 16 bits are the
    /// signature.
    #[inline]
    pub(crate) fn hash(&self, k: &Key) -> Hashed {
        let fold = |a: u64, b: u64| {
            let p = u128::from(a) * u128::from(b);
            (p as u64) ^ ((p >> 64) as u64)
        };
        let addrs = u64::from(k.src) << 32 | u64::from(k.dst);
        let rest = u64::from(k.sport) << 32 | u64::from(k.dport) << 16 | u64::from(k.proto);
        let h = fold(fold(addrs ^ self.keys[0], rest ^ self.keys[1]), self.keys[2]);
        // Multiply-shift maps 32 hash bits onto 0..buckets (any count).
        let pick = |bits: u64| (((bits & 0xffff_ffff) * u64::from(self.buckets)) >> 32) as u32;
        let bucket = pick(h);
        let mut second = pick(h >> 32);
        if second == bucket {
            second = (bucket + 1) % self.buckets;
        }
        Hashed {
            bucket,
            second,
            sig: ((h >> 48) as u16).max(1),
            probed: None,
        }
    }

    /// The bucket's signature line, to prefetch first.
    #[inline]
    pub(crate) fn sig_line(&self, h: &Hashed) -> Option<*const u8> {
        self.sig_line_of(h.bucket)
    }

    /// Notes the first entry whose signature matches in the home bucket
    /// (read from the line prefetched) and returns its line, to prefetch
    /// next; if none does and the bucket has spilled, the second bucket's
    /// signature line instead.
    #[inline]
    pub(crate) fn probe(&self, h: &mut Hashed) -> Option<*const u8> {
        let home = self.sigs(h.bucket as usize)?;
        let Some(way) = home.next_match(h.sig, 0) else {
            return (home.spilled() > 0).then(|| self.sig_line_of(h.second)).flatten();
        };
        let i = h.bucket as usize * STRIDE + way;
        h.probed = Some(i as u32);
        self.entry(i).map(|e| std::ptr::from_ref(e).cast())
    }

    #[inline]
    fn sig_line_of(&self, bucket: u32) -> Option<*const u8> {
        self.sigs(bucket as usize).map(|s| std::ptr::from_ref(s).cast())
    }

    /// Index of the live entry for `k` (hashed by [`Table::hash`]). An
    /// expired match is freed (with its twin) and reported as absent.
    #[inline]
    pub(crate) fn find(&mut self, k: &Key, h: &Hashed, now: u32, rec: &mut Reclaimed) -> Option<u32> {
        let i = self.position(k, h)?;
        if self.entry(i).is_some_and(|e| e.expired(now)) {
            self.remove(i as u32);
            rec.expired += 1;
            return None;
        }
        Some(i as u32)
    }

    /// The entry [`Table::probe`] found, if it still holds `k` and is live;
    /// no side effects (anything else, e.g. a key in its second bucket or an
    /// expired entry, is for [`Table::find`]).
    #[inline(always)]
    pub(crate) fn probed(&self, k: &Key, h: &Hashed, now: u32) -> Option<u32> {
        self.at_probe(k, h).filter(|(_, e)| !e.expired(now)).map(|(i, _)| i as u32)
    }

    /// [`Table::probed`], with the entry to change.
    #[inline(always)]
    pub(crate) fn probed_mut(&mut self, k: &Key, h: &Hashed, now: u32) -> Option<(u32, &mut Entry)> {
        let i = self.probed(k, h, now)?;
        let (b, w) = (i as usize / STRIDE, i as usize % STRIDE);
        Some((i, self.ways.get_mut(b)?.0.get_mut(w)?))
    }

    /// The entry [`Table::probe`] noted, if it still holds `k` (the table
    /// may have changed since), live or expired.
    #[inline(always)]
    fn at_probe(&self, k: &Key, h: &Hashed) -> Option<(usize, &Entry)> {
        let i = h.probed? as usize;
        let (b, w) = (i / STRIDE, i % STRIDE);
        let e = self.ways.get(b)?.0.get(w)?;
        (self.sigs(b)?.0[w] == h.sig && e.key_is(k)).then_some((i, e))
    }

    /// Where `k` is stored, live or expired: the probed entry if it still
    /// holds `k`, else a scan of the home bucket, and of the second one if
    /// the home has spilled.
    #[inline(always)]
    fn position(&self, k: &Key, h: &Hashed) -> Option<usize> {
        match self.at_probe(k, h) {
            Some((i, _)) => Some(i),
            None => self.scan(k, h),
        }
    }

    /// [`Table::position`] without (or past a stale) probe.
    #[inline(never)]
    fn scan(&self, k: &Key, h: &Hashed) -> Option<usize> {
        let home = self.sigs(h.bucket as usize)?;
        let scan = |b: u32, s: &Sigs| {
            let mut from = 0;
            while let Some(way) = s.next_match(h.sig, from) {
                let i = b as usize * STRIDE + way;
                if self.entry(i).is_some_and(|e| e.key_is(k)) {
                    return Some(i);
                }
                from = way + 1;
            }
            None
        };
        scan(h.bucket, home).or_else(|| {
            if home.spilled() == 0 {
                return None;
            }
            scan(h.second, self.sigs(h.second as usize)?)
        })
    }

    #[inline]
    fn sigs(&self, b: usize) -> Option<&Sigs> {
        bytemuck::cast_slice::<SigPage, Sigs>(&self.sigs).get(b)
    }

    #[inline]
    fn sigs_mut(&mut self, b: usize) -> Option<&mut Sigs> {
        bytemuck::cast_slice_mut::<SigPage, Sigs>(&mut self.sigs).get_mut(b)
    }

    /// Entry `i` (bucket `i / STRIDE`, way `i % STRIDE`).
    #[inline]
    fn entry(&self, i: usize) -> Option<&Entry> {
        self.ways.get(i / STRIDE)?.0.get(i % STRIDE)
    }

    #[inline]
    fn entry_mut(&mut self, i: usize) -> Option<&mut Entry> {
        self.ways.get_mut(i / STRIDE)?.0.get_mut(i % STRIDE)
    }

    /// Entry `i`'s signature (0: free, or not an entry).
    #[inline]
    fn sig(&self, i: usize) -> u16 {
        let (b, w) = (i / STRIDE, i % STRIDE);
        if w < WAYS {
            self.sigs(b).map_or(0, |s| s.0[w])
        } else {
            0
        }
    }

    /// Whether a live entry for `k` exists (no side effects).
    pub(crate) fn contains(&self, k: &Key, now: u32) -> bool {
        self.position(k, &self.hash(k))
            .and_then(|i| self.entry(i))
            .is_some_and(|e| !e.expired(now))
    }

    #[inline]
    pub(crate) fn get(&self, i: u32) -> Option<&Entry> {
        self.entry(i as usize)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, i: u32) -> Option<&mut Entry> {
        self.entry_mut(i as usize)
    }

    fn sig_mut(&mut self, i: usize) -> Option<&mut u16> {
        let (b, w) = (i / STRIDE, i % STRIDE);
        self.sigs_mut(b)?.0[..WAYS].get_mut(w)
    }

    fn is_used(&self, i: usize) -> bool {
        self.sig(i) != 0
    }

    /// Frees entry `i` and its twin.
    pub(crate) fn remove(&mut self, i: u32) {
        if !self.is_used(i as usize) {
            return;
        }
        let twin = self.get(i).map_or(NO_TWIN, |e| e.twin);
        self.clear(i as usize);
        if twin != NO_TWIN && self.is_used(twin as usize) && self.get(twin).is_some_and(|t| t.twin == i) {
            self.clear(twin as usize);
        }
    }

    fn clear(&mut self, i: usize) {
        if let Some(s) = self.sig_mut(i) {
            *s = 0;
        }
        if let Some(e) = self.entry(i).filter(|e| e.flags & F_SPILLED != 0) {
            let home = self.hash(&e.key()).bucket;
            if let Some(s) = self.sigs_mut(home as usize) {
                s.0[WAYS] = s.0[WAYS].saturating_sub(1);
            }
        }
        if self.entry(i).is_some_and(|e| e.flags & F_HALF_OPEN != 0) {
            self.half_open = self.half_open.saturating_sub(1);
        }
        if let Some(e) = self.entry_mut(i) {
            *e = Entry::default();
        }
        self.live -= 1;
    }

    /// Stores `entry` (its key fields set), whose key must not be stored
    /// already, in its home bucket, else its second; returns its index.
    /// Never fails: when both are full, takes an expired way of the home
    /// bucket, else evicts a live one: the lowest [`State::rank`], and among
    /// those the closest to its deadline (never `protect`, the just-inserted
    /// other half of a pair).
    pub(crate) fn insert(&mut self, entry: Entry, now: u32, protect: u32, rec: &mut Reclaimed) -> u32 {
        let h = self.hash(&entry.key());
        let free_in = |b: u32| {
            let way = self.sigs(b as usize)?.next_match(0, 0)?;
            Some(b as usize * STRIDE + way)
        };
        let mut entry = entry;
        let slot = if let Some(i) = free_in(h.bucket) {
            i
        } else if let Some(i) = free_in(h.second) {
            entry.flags |= F_SPILLED;
            if let Some(s) = self.sigs_mut(h.bucket as usize) {
                s.0[WAYS] = s.0[WAYS].saturating_add(1);
            }
            i
        } else {
            // Both full: an expired way of the home bucket, else its live one
            // of the lowest class, closest to its deadline.
            let base = h.bucket as usize * STRIDE;
            let mut expired = None;
            let mut victim: Option<(usize, (u8, i32))> = None;
            for (i, e) in (base..).zip(self.ways.get(h.bucket as usize).map_or(&[][..], |b| &b.0[..])) {
                if i as u32 == protect {
                    continue;
                }
                let left = e.deadline.wrapping_sub(now) as i32;
                if left <= 0 {
                    expired = Some(i);
                    break;
                }
                let order = (State::from_u8(e.state).rank(), left);
                if victim.is_none_or(|(_, best)| order < best) {
                    victim = Some((i, order));
                }
            }
            match (expired, victim) {
                (Some(_), _) => rec.expired += 1,
                (None, v) => {
                    rec.evicted += 1;
                    match v.map(|(_, (rank, _))| rank) {
                        Some(0) => rec.evicted_unconfirmed += 1,
                        Some(2) => rec.evicted_established += 1,
                        _ => {}
                    }
                }
            }
            // `base` only when every way is `protect`: impossible with WAYS > 1.
            let i = expired.or(victim.map(|(i, _)| i)).unwrap_or(base);
            self.remove(i as u32);
            i
        };
        if let Some(s) = self.sig_mut(slot) {
            *s = h.sig;
        }
        if let Some(e) = self.entry_mut(slot) {
            *e = entry;
        }
        self.live += 1;
        if entry.flags & F_HALF_OPEN != 0 {
            self.half_open += 1;
        }
        slot as u32
    }

    /// Frees expired entries among the next `budget` ways; returns how many.
    pub(crate) fn sweep(&mut self, now: u32, budget: usize) -> u64 {
        let n = self.ways.len() * STRIDE;
        let mut freed = 0;
        for _ in 0..budget.min(n) {
            let i = self.sweep_cursor;
            self.sweep_cursor = (i + 1) % n;
            if self.is_used(i) && self.get(i as u32).is_some_and(|e| e.expired(now)) {
                let before = self.live;
                self.remove(i as u32);
                freed += (before - self.live) as u64;
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> Entry {
        Entry {
            src: 0xc613_0000 + n,
            dst: 0xc612_0102,
            sport: 1000 + n as u16,
            dport: 80,
            proto: 6,
            deadline: 1000,
            twin: NO_TWIN,
            ..Entry::default()
        }
    }

    /// Keys beyond a full home bucket spill to their second and are found
    /// there; the spill count follows them out; nothing is evicted while
    /// the two buckets have room.
    #[test]
    fn spill_to_second_bucket_and_back() {
        let mut t = Table::new(2 * WAYS, |_| {}).unwrap();
        assert_eq!(t.capacity(), 62);
        let mut rec = Reclaimed::default();
        // 40 keys whose home is bucket 0: 9 must spill to bucket 1.
        let keys: Vec<u32> = (0..1000).filter(|&i| t.hash(&entry(i).key()).bucket == 0).take(40).collect();
        assert_eq!(keys.len(), 40);
        let idx: Vec<u32> = keys.iter().map(|&i| t.insert(entry(i), 0, NO_TWIN, &mut rec)).collect();
        assert_eq!((rec.evicted, rec.expired, t.live()), (0, 0, 40));
        assert_eq!((t.sigs(0).unwrap().spilled(), t.sigs(1).unwrap().spilled()), (9, 0));
        assert_eq!(idx.iter().filter(|&&i| i as usize >= STRIDE).count(), 9);
        for (&key, &at) in keys.iter().zip(&idx) {
            let k = entry(key).key();
            assert_eq!(t.find(&k, &t.hash(&k), 1, &mut rec), Some(at), "key {key}");
        }
        for &at in &idx {
            t.remove(at);
        }
        assert_eq!(t.live(), 0);
        assert_eq!((0..t.buckets as usize).map(|b| t.sigs(b).unwrap().spilled()).sum::<u16>(), 0);
        // Full table: the next key evicts one of its home bucket's ways.
        for i in 0..62 {
            t.insert(entry(100 + i), 0, NO_TWIN, &mut rec);
        }
        assert_eq!((t.live(), rec.evicted), (62, 0));
        t.insert(entry(500), 0, NO_TWIN, &mut rec);
        assert_eq!((t.live(), rec.evicted), (62, 1));
        let k = entry(500).key();
        assert!(t.find(&k, &t.hash(&k), 1, &mut rec).is_some());
    }

    /// `half_open` counts the used entries with `F_HALF_OPEN` through
    /// insertion, settling, eviction, expiry and removal.
    #[test]
    fn half_open_count_follows_the_flag() {
        let mut t = Table::new(WAYS, |_| {}).unwrap();
        let mut rec = Reclaimed::default();
        let half = |n| Entry { flags: F_HALF_OPEN, state: State::SynSent as u8, ..entry(n) };
        let idx: Vec<u32> = (0..10).map(|n| t.insert(half(n), 0, NO_TWIN, &mut rec)).collect();
        assert_eq!(t.half_open(), 10);
        // Left the SYN state (as the packet path settles it).
        if let Some(e) = t.get_mut(idx[0]) {
            e.state = State::Established as u8;
        }
        t.settle(idx[0]);
        t.settle(idx[0]);
        assert_eq!(t.half_open(), 9);
        t.remove(idx[1]);
        assert_eq!(t.half_open(), 8);
        // Fill the bucket with established entries: the next insertion
        // evicts a half-open one (lowest class), never an established one.
        for n in 10..32 {
            t.insert(Entry { state: State::Established as u8, ..entry(n) }, 0, NO_TWIN, &mut rec);
        }
        assert_eq!((t.live(), t.half_open()), (31, 8));
        t.insert(Entry { state: State::Established as u8, ..entry(40) }, 0, NO_TWIN, &mut rec);
        assert_eq!((rec.evicted, rec.evicted_unconfirmed, rec.evicted_established, t.half_open()), (1, 1, 0, 7));
        // Expired ones are found absent and freed.
        let k = half(5).key();
        assert_eq!(t.find(&k, &t.hash(&k), 2000, &mut rec), None);
        assert_eq!(t.half_open(), 6);
        assert_eq!(t.sweep(2000, 64), 30);
        assert_eq!((t.live(), t.half_open()), (0, 0));
    }

    /// The word-at-a-time compare agrees with a plain loop, including
    /// values that differ only in the top bit, in one bit, or are zero.
    #[test]
    fn next_match_agrees_with_a_plain_loop() {
        let mut x = 0x9e37_79b9u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..20_000 {
            let sig = match round % 4 {
                0 => 0,
                1 => 0x8000,
                _ => rnd() as u16,
            };
            let mut s = Sigs::default();
            for w in &mut s.0 {
                *w = match rnd() % 6 {
                    0 => sig,
                    1 => sig ^ 0x8000,
                    2 => sig ^ (1 << (rnd() % 16)),
                    3 => 0,
                    _ => rnd() as u16,
                };
            }
            let plain: Vec<usize> = (0..WAYS).filter(|&w| s.0[w] == sig).collect();
            let mut found = vec![];
            let mut from = 0;
            while let Some(w) = s.next_match(sig, from) {
                found.push(w);
                from = w + 1;
            }
            assert_eq!(found, plain, "sig {sig:#x} ways {:x?}", s.0);
        }
    }
}
