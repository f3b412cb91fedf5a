//! Per-lcore connection tracking: a fixed, set-associative table.
//!
//! # Layout
//! `capacity` entries (rounded up to a power of two, at least [`WAYS`]) in
//! buckets of [`WAYS`] consecutive entries; a key may live in either of two
//! buckets picked by one xxh3 of its 5-tuple (two-choice: insert into the
//! emptier; look up in both). Allocated once, zeroed, never resized; entries never move, so
//! an entry's index is a stable handle (FullNAT pairs point at each other by
//! index).
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

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Ways per bucket (entries searched per lookup).
pub(crate) const WAYS: usize = 8;

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

/// Entry flag: the way holds an entry.
pub(crate) const F_USED: u8 = 1;
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

/// One direction of one flow: 48 bytes (asserted in the tests).
///
/// The action fields say what to do with a packet matching the key: for
/// FullNAT, rewrite it to `new_src:new_sport -> new_dst:new_dport`; for
/// DSR/tunnel, `new_dst:new_dport` is the backend (the tunnel endpoint).
/// `mac` is the next hop's MAC, copied in when the flow is created, so an
/// entry never refers to backend configuration that may have gone away;
/// `backend` is only a hint for per-backend counters, checked against
/// `new_dst`/`new_dport` before use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
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
    /// Index of the other direction's entry (FullNAT), or `NO_TWIN`.
    pub twin: u32,
}

pub(crate) const NO_TWIN: u32 = u32::MAX;

impl Entry {
    #[inline]
    fn matches(&self, k: &Key) -> bool {
        self.flags & F_USED != 0
            && self.src == k.src
            && self.dst == k.dst
            && self.sport == k.sport
            && self.dport == k.dport
            && self.proto == k.proto
    }

    #[inline]
    pub(crate) fn expired(&self, now: u32) -> bool {
        now.wrapping_sub(self.deadline) as i32 >= 0
    }
}

/// What an insertion displaced, for the caller's counters.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Reclaimed {
    pub evicted: u64,
    pub expired: u64,
}

pub(crate) struct Table {
    entries: Box<[Entry]>,
    bucket_mask: usize,
    seed: u64,
    live: usize,
    sweep_cursor: usize,
}

impl Table {
    /// Allocates `capacity` entries (rounded up to a power of two, >= WAYS).
    pub(crate) fn new(capacity: usize, seed: u64) -> Self {
        let n = capacity.max(WAYS).checked_next_power_of_two().unwrap_or(1 << 40);
        Table {
            entries: vec![Entry::default(); n].into_boxed_slice(),
            bucket_mask: n / WAYS - 1,
            seed,
            live: 0,
            sweep_cursor: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Entries in use, expired ones not yet reclaimed included.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The key's two candidate buckets (base indexes), from one xxh3: lower
    /// and upper hash bits. Two-choice placement keeps overflow (and so
    /// eviction) negligible up to high load, where a single 8-way bucket
    /// already overflows for ~2% of buckets at 50% load.
    #[inline]
    fn buckets(&self, k: &Key) -> [usize; 2] {
        let h = xxh3_64_with_seed(&k.bytes(), self.seed);
        [
            (h as usize & self.bucket_mask) * WAYS,
            ((h >> 32) as usize & self.bucket_mask) * WAYS,
        ]
    }

    /// Index of the live entry for `k`. An expired match is freed (with its
    /// twin) and reported as absent.
    #[inline]
    pub(crate) fn find(&mut self, k: &Key, now: u32, rec: &mut Reclaimed) -> Option<u32> {
        let [b1, b2] = self.buckets(k);
        for i in (b1..b1 + WAYS).chain(b2..b2 + WAYS) {
            let e = self.entries.get(i)?;
            if e.matches(k) {
                if e.expired(now) {
                    self.remove(i as u32);
                    rec.expired += 1;
                    return None;
                }
                return Some(i as u32);
            }
        }
        None
    }

    /// Whether a live entry for `k` exists (no side effects).
    pub(crate) fn contains(&self, k: &Key, now: u32) -> bool {
        self.buckets(k).iter().any(|&base| {
            self.entries
                .get(base..base + WAYS)
                .is_some_and(|b| b.iter().any(|e| e.matches(k) && !e.expired(now)))
        })
    }

    #[inline]
    pub(crate) fn get(&self, i: u32) -> Option<&Entry> {
        self.entries.get(i as usize)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, i: u32) -> Option<&mut Entry> {
        self.entries.get_mut(i as usize)
    }

    /// Frees entry `i` and its twin.
    pub(crate) fn remove(&mut self, i: u32) {
        let Some(e) = self.entries.get_mut(i as usize) else { return };
        if e.flags & F_USED == 0 {
            return;
        }
        let twin = e.twin;
        *e = Entry::default();
        self.live -= 1;
        if twin != NO_TWIN {
            if let Some(t) = self.entries.get_mut(twin as usize) {
                if t.flags & F_USED != 0 && t.twin == i {
                    *t = Entry::default();
                    self.live -= 1;
                }
            }
        }
    }

    /// Stores `entry` (its key fields set) in `k`'s bucket, which must not
    /// hold `k` already; returns its index. Never fails: takes a free way, else
    /// an expired one, else evicts the way closest to its deadline (never
    /// `protect`, the just-inserted other half of a pair).
    pub(crate) fn insert(&mut self, entry: Entry, now: u32, protect: u32, rec: &mut Reclaimed) -> u32 {
        let k = Key {
            src: entry.src,
            dst: entry.dst,
            sport: entry.sport,
            dport: entry.dport,
            proto: entry.proto,
        };
        let [b1, b2] = self.buckets(&k);
        let base = b1;
        // The emptier of the two buckets wins a free way.
        let used = |b: usize| self.entries.get(b..b + WAYS).map_or(WAYS, |s| s.iter().filter(|e| e.flags & F_USED != 0).count());
        let (first, second) = if used(b2) < used(b1) { (b2, b1) } else { (b1, b2) };
        let mut free = None;
        let mut expired = None;
        let mut victim: Option<(usize, i32)> = None;
        for i in (first..first + WAYS).chain(second..second + WAYS) {
            let Some(e) = self.entries.get(i) else { break };
            if e.flags & F_USED == 0 {
                free = Some(i);
                break;
            }
            if i as u32 == protect {
                continue;
            }
            let left = e.deadline.wrapping_sub(now) as i32;
            if left <= 0 {
                expired = Some(i);
            } else if victim.is_none_or(|(_, best)| left < best) {
                victim = Some((i, left));
            }
        }
        let slot = if let Some(i) = free {
            i
        } else if let Some(i) = expired {
            self.remove(i as u32);
            rec.expired += 1;
            i
        } else if let Some((i, _)) = victim {
            self.remove(i as u32);
            rec.evicted += 1;
            i
        } else {
            // Only reachable if every way is `protect`, i.e. WAYS == 1.
            base
        };
        if let Some(e) = self.entries.get_mut(slot) {
            if e.flags & F_USED == 0 {
                self.live += 1;
            }
            *e = Entry { flags: entry.flags | F_USED, ..entry };
        }
        slot as u32
    }

    /// Frees expired entries among the next `budget` ways; returns how many.
    pub(crate) fn sweep(&mut self, now: u32, budget: usize) -> u64 {
        let mut freed = 0;
        for _ in 0..budget.min(self.entries.len()) {
            let i = self.sweep_cursor;
            self.sweep_cursor = (i + 1) % self.entries.len();
            if let Some(e) = self.entries.get(i) {
                if e.flags & F_USED != 0 && e.expired(now) {
                    let before = self.live;
                    self.remove(i as u32);
                    freed += (before - self.live) as u64;
                }
            }
        }
        freed
    }
}
