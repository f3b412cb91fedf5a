//! Per-lcore connection tracking: a fixed, set-associative table laid out
//! for the cache.
//!
//! # Layout
//! `capacity` entries (rounded up to a power of two, at least [`WAYS`]) of
//! one 64-byte cache line each, in buckets of [`WAYS`]; beside them one
//! 64-byte line per bucket holding a 32-bit signature per way (0 = free).
//! A lookup reads the bucket's signature line, then only the entry lines
//! whose signature matches: a hit costs two cache lines, whatever the load.
//! [`BYTES_PER_ENTRY`] = 64 + 4.
//!
//! A key may live in either of two buckets picked by one xxh3 of its
//! 5-tuple; insertion takes the emptier (two choices keep the fullest
//! bucket near the mean: no live flow is evicted until the table is nearly
//! full). A lookup reads both signature lines, which a burst prefetches
//! together ([`Table::prefetch_lines`]), then the entry line.
//!
//! Allocated once (anonymous memory advised for transparent huge pages, so
//! a million random lookups do not also miss the TLB), pre-faulted,
//! never resized; entries never move, so an entry's index is a stable
//! handle (FullNAT pairs point at each other by index).
//!
//! # Eviction and expiry
//! No sweeper is needed for correctness: a lookup that finds an expired entry
//! treats it as absent (and frees it and its twin), and an insertion takes a
//! free or expired way first. When all 2 x [`WAYS`] candidate ways are live, the one closest
//! to its deadline is evicted (counted): LRU weighted by state timeout, so a
//! half-open SYN goes before an established flow seen at the same time.
//! [`Table::sweep`] reclaims expired entries in bounded steps for callers who
//! want `live()` to be accurate.
//!
//! # Time
//! Deadlines are `u32` ticks of 2^24 ns (16.8 ms), compared with wrapping
//! arithmetic: valid for differences up to 2^31 ticks (about 1.1 years).

use std::marker::PhantomData;

use bytemuck::{Pod, Zeroable};
use memmap2::{Advice, MmapMut};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Ways per bucket: one cache line of 32-bit signatures.
pub(crate) const WAYS: usize = 16;

/// Memory per entry: its cache line and its signature.
pub(crate) const BYTES_PER_ENTRY: usize = std::mem::size_of::<Entry>() + 4;

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

impl Key {
    fn bytes(&self) -> [u8; 13] {
        let mut b = [0u8; 13];
        b[0..4].copy_from_slice(&self.src.to_be_bytes());
        b[4..8].copy_from_slice(&self.dst.to_be_bytes());
        b[8..10].copy_from_slice(&self.sport.to_be_bytes());
        b[10..12].copy_from_slice(&self.dport.to_be_bytes());
        b[12] = self.proto;
        b
    }
}

/// A key's hash, split into what the table needs: computed once per packet
/// (a burst computes it ahead, to prefetch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hashed {
    /// Never 0 (0 marks a free way).
    sig: u32,
    /// Primary and secondary bucket.
    buckets: [usize; 2],
}

/// Entry flag: backend -> client direction of a FullNAT pair.
pub(crate) const F_REVERSE: u8 = 2;

/// TCP/UDP tracking states (the `state` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    SynSent = 1,
    Established = 2,
    Closing = 3,
    Closed = 4,
    Udp = 5,
}

impl State {
    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::SynSent,
            2 => State::Established,
            3 => State::Closing,
            4 => State::Closed,
            _ => State::Udp,
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
    /// The rest of the cache line: an entry never shares a line.
    pub reserved: [u8; 16],
}

pub(crate) const NO_TWIN: u32 = u32::MAX;

impl Entry {
    #[inline]
    fn key_is(&self, k: &Key) -> bool {
        self.src == k.src && self.dst == k.dst && self.sport == k.sport && self.dport == k.dport && self.proto == k.proto
    }

    #[inline]
    pub(crate) fn expired(&self, now: u32) -> bool {
        now.wrapping_sub(self.deadline) as i32 >= 0
    }
}

/// One bucket's signatures: one cache line.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Sigs([u32; WAYS]);

impl Sigs {
    /// Bit `w` set when way `w` holds `sig` (a loop the compiler turns into
    /// vector compares).
    #[inline]
    fn matching(&self, sig: u32) -> u32 {
        self.0.iter().enumerate().fold(0, |m, (w, &s)| m | (u32::from(s == sig) << w))
    }
}

/// A zeroed array of `T` in its own anonymous mapping, advised for
/// transparent huge pages and faulted in at creation, so the packet path
/// neither takes page faults nor (with huge pages) TLB misses on it.
struct Region<T> {
    map: MmapMut,
    _t: PhantomData<T>,
}

impl<T: Pod> Region<T> {
    fn new(n: usize) -> std::io::Result<Self> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| std::io::Error::other("table size overflows"))?;
        let mut map = MmapMut::map_anon(bytes.max(1))?;
        // Only a hint: without THP (or with it off) the table works the same.
        let _ = map.advise(Advice::HugePage);
        for page in map.chunks_mut(4096) {
            page[0] = 0;
        }
        Ok(Region { map, _t: PhantomData })
    }

    /// The array. The mapping is page-aligned and sized for whole `T`s, so
    /// the cast cannot fail; if it did, the table would look empty.
    #[inline]
    fn get(&self) -> &[T] {
        bytemuck::try_cast_slice(&self.map[..]).unwrap_or(&[])
    }

    #[inline]
    fn get_mut(&mut self) -> &mut [T] {
        bytemuck::try_cast_slice_mut(&mut self.map[..]).unwrap_or(&mut [])
    }
}

/// What an insertion displaced, for the caller's counters.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Reclaimed {
    pub evicted: u64,
    pub expired: u64,
}

pub(crate) struct Table {
    sigs: Region<Sigs>,
    entries: Region<Entry>,
    bucket_mask: usize,
    seed: u64,
    live: usize,
    sweep_cursor: usize,
}

impl Table {
    /// Allocates `capacity` entries (rounded up to a power of two, at least
    /// [`WAYS`], at most [`MAX_CAPACITY`]).
    pub(crate) fn new(capacity: usize, seed: u64) -> std::io::Result<Self> {
        let n = capacity.clamp(WAYS, MAX_CAPACITY).next_power_of_two();
        Ok(Table {
            sigs: Region::new(n / WAYS)?,
            entries: Region::new(n)?,
            bucket_mask: n / WAYS - 1,
            seed,
            live: 0,
            sweep_cursor: 0,
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.entries.get().len()
    }

    /// Entries in use, expired ones not yet reclaimed included.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The key's signature and two buckets, from one xxh3: the low half picks
    /// the primary bucket, the high half is the signature and, mixed, picks
    /// the secondary (a different bucket whenever there are two).
    #[inline]
    pub(crate) fn hash(&self, k: &Key) -> Hashed {
        let h = xxh3_64_with_seed(&k.bytes(), self.seed);
        let sig = (h >> 32) as u32 | 1;
        let b1 = h as u32 as usize & self.bucket_mask;
        let mut b2 = (sig.wrapping_mul(0x9E37_79B1) ^ (h as u32).rotate_right(16)) as usize & self.bucket_mask;
        if b2 == b1 {
            b2 = (b1 + 1) & self.bucket_mask;
        }
        Hashed { sig, buckets: [b1, b2] }
    }

    /// Addresses a burst should prefetch for `h`: at stage 0 both buckets'
    /// signature lines; at stage 1 (once those have arrived) the entry line
    /// of the first matching way.
    #[inline]
    pub(crate) fn prefetch_lines(&self, h: &Hashed, stage: usize) -> [Option<*const u8>; 2] {
        let sigs = self.sigs.get();
        if stage == 0 {
            return h.buckets.map(|b| sigs.get(b).map(|s| std::ptr::from_ref(s).cast()));
        }
        for b in h.buckets {
            let m = sigs.get(b).map_or(0, |s| s.matching(h.sig));
            if m != 0 {
                let i = b * WAYS + m.trailing_zeros() as usize;
                return [self.entries.get().get(i).map(|e| std::ptr::from_ref(e).cast()), None];
            }
        }
        [None, None]
    }

    /// Index of the live entry for `k` (hashed by [`Table::hash`]). An
    /// expired match is freed (with its twin) and reported as absent.
    #[inline]
    pub(crate) fn find(&mut self, k: &Key, h: &Hashed, now: u32, rec: &mut Reclaimed) -> Option<u32> {
        let i = self.position(k, h)?;
        if self.entries.get().get(i).is_some_and(|e| e.expired(now)) {
            self.remove(i as u32);
            rec.expired += 1;
            return None;
        }
        Some(i as u32)
    }

    /// Where `k` is stored, live or expired.
    #[inline]
    fn position(&self, k: &Key, h: &Hashed) -> Option<usize> {
        let (sigs, entries) = (self.sigs.get(), self.entries.get());
        let n = if h.buckets[0] == h.buckets[1] { 1 } else { 2 };
        for &b in &h.buckets[..n] {
            let mut m = sigs.get(b)?.matching(h.sig);
            while m != 0 {
                let i = b * WAYS + m.trailing_zeros() as usize;
                m &= m - 1;
                if entries.get(i).is_some_and(|e| e.key_is(k)) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Whether a live entry for `k` exists (no side effects).
    pub(crate) fn contains(&self, k: &Key, now: u32) -> bool {
        self.position(k, &self.hash(k))
            .and_then(|i| self.entries.get().get(i))
            .is_some_and(|e| !e.expired(now))
    }

    #[inline]
    pub(crate) fn get(&self, i: u32) -> Option<&Entry> {
        self.entries.get().get(i as usize)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, i: u32) -> Option<&mut Entry> {
        self.entries.get_mut().get_mut(i as usize)
    }

    fn sig_mut(&mut self, i: usize) -> Option<&mut u32> {
        self.sigs.get_mut().get_mut(i / WAYS)?.0.get_mut(i % WAYS)
    }

    fn is_used(&self, i: usize) -> bool {
        self.sigs.get().get(i / WAYS).is_some_and(|s| s.0[i % WAYS] != 0)
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
        if let Some(e) = self.entries.get_mut().get_mut(i) {
            *e = Entry::default();
        }
        self.live -= 1;
    }

    /// Stores `entry` (its key fields set) in its primary bucket, else its
    /// secondary, which must not hold its key already; returns its index.
    /// Never fails: takes a free way, else an expired one, else evicts the
    /// way closest to its deadline (never `protect`, the just-inserted other
    /// half of a pair).
    pub(crate) fn insert(&mut self, entry: Entry, now: u32, protect: u32, rec: &mut Reclaimed) -> u32 {
        let k = Key {
            src: entry.src,
            dst: entry.dst,
            sport: entry.sport,
            dport: entry.dport,
            proto: entry.proto,
        };
        let h = self.hash(&k);
        let [b1, b2] = h.buckets;
        let sigs = self.sigs.get();
        let free = |b: usize| sigs.get(b).map_or(0, |s| s.matching(0));
        // Two choices, the emptier wins: the fullest bucket then stays
        // within a few ways of the mean, so evicting a live flow takes a
        // table close to full.
        let (f1, f2) = (free(b1), free(b2));
        let (first, fm) = if f2.count_ones() > f1.count_ones() { (b2, f2) } else { (b1, f1) };
        let slot = match (fm != 0).then(|| first * WAYS + fm.trailing_zeros() as usize) {
            Some(i) => i,
            None => {
                // Both buckets full: an expired way, else the live one
                // closest to its deadline.
                let entries = self.entries.get();
                let mut expired = None;
                let mut victim: Option<(usize, i32)> = None;
                for i in (b1 * WAYS..b1 * WAYS + WAYS).chain(b2 * WAYS..b2 * WAYS + WAYS) {
                    let Some(e) = entries.get(i) else { break };
                    if i as u32 == protect {
                        continue;
                    }
                    let left = e.deadline.wrapping_sub(now) as i32;
                    if left <= 0 {
                        expired = Some(i);
                        break;
                    } else if victim.is_none_or(|(_, best)| left < best) {
                        victim = Some((i, left));
                    }
                }
                let (i, counter) = match (expired, victim) {
                    (Some(i), _) => (i, &mut rec.expired),
                    (None, Some((i, _))) => (i, &mut rec.evicted),
                    // Only when every way is `protect`: impossible with WAYS > 1.
                    (None, None) => (b1 * WAYS, &mut rec.evicted),
                };
                *counter += 1;
                self.remove(i as u32);
                i
            }
        };
        if let Some(s) = self.sig_mut(slot) {
            *s = h.sig;
        }
        if let Some(e) = self.entries.get_mut().get_mut(slot) {
            *e = entry;
        }
        self.live += 1;
        slot as u32
    }

    /// Frees expired entries among the next `budget` ways; returns how many.
    pub(crate) fn sweep(&mut self, now: u32, budget: usize) -> u64 {
        let n = self.capacity();
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
