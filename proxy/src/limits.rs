//! Rate limiting state, single-threaded (one per engine, no locks): token
//! buckets and the bounded per-client table.
//!
//! Limits are per engine. The dataplane runs one engine per lcore and each
//! engine enforces its share of a VIP's limits, `rate / lcores` (and
//! `burst / lcores`, rounded up, at least 1: [`fulcrum_model::Rate::per_lcore`],
//! applied by [`VipTables::build`](crate::VipTables::build)). Client
//! connections are spread over lcores by their 4-tuple, so a client using many
//! source ports meets about `1 / lcores` of its limit on each lcore, and the
//! sum is the VIP's.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use smoltcp::time::{Duration, Instant};

use fulcrum_model::Rate;

/// Fixed point: a bucket counts millionths of a token, so refills at any
/// rate are exact to the microsecond with integer arithmetic.
const SCALE: u64 = 1_000_000;

/// A token bucket. Rate and burst are not stored: they are passed on every
/// use, so a reconfiguration takes effect on a bucket's next use while the
/// tokens it holds are kept (clamped to the new burst).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    micro: u64,
    last: Instant,
}

impl Bucket {
    /// A full bucket (`burst` tokens), as of `now`.
    pub(crate) fn full(burst: u64, now: Instant) -> Self {
        Self {
            micro: burst.saturating_mul(SCALE),
            last: now,
        }
    }

    /// Adds what `rate` tokens per second earned since the last refill.
    pub(crate) fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let cap = burst.saturating_mul(SCALE);
        if now > self.last {
            let us = (now - self.last).total_micros();
            let add = u128::from(us) * u128::from(rate);
            self.micro = (u128::from(self.micro) + add).min(u128::from(cap)) as u64;
            self.last = now;
        }
        self.micro = self.micro.min(cap);
    }

    /// Whole tokens available (as of the last refill).
    pub(crate) fn available(&self) -> u64 {
        self.micro / SCALE
    }

    pub(crate) fn take(&mut self, n: u64) {
        self.micro = self.micro.saturating_sub(n.saturating_mul(SCALE));
    }

    /// When `need` tokens will be available at `rate` (no later refill assumed).
    pub(crate) fn ready_at(&self, need: u64, rate: u64) -> Instant {
        let want = need.saturating_mul(SCALE);
        if self.micro >= want || rate == 0 {
            return self.last;
        }
        let us = (want - self.micro).div_ceil(rate);
        self.last + Duration::from_micros(us)
    }
}

/// Bandwidth bucket depth for `bytes_per_sec`: 50 ms worth, at least one
/// full-size segment.
pub(crate) fn bandwidth_burst(bytes_per_sec: u64) -> u64 {
    (bytes_per_sec / 20).max(1500)
}

/// Tokens a throttled connection waits for before it is serviced again:
/// small enough to keep the flow smooth, large enough not to wake per byte.
pub(crate) fn bandwidth_quantum(bytes_per_sec: u64) -> u64 {
    bandwidth_burst(bytes_per_sec).min(8192)
}

/// Client key: (VIP instance id, client address).
pub(crate) type ClientKey = (u32, Ipv4Addr);

struct ClientEntry {
    key: ClientKey,
    bucket: Bucket,
    /// CLOCK bit: set on every hit, cleared as the hand passes.
    referenced: bool,
}

/// Per-client buckets in a fixed number of entries, allocated once.
///
/// Full: the CLOCK hand evicts the first entry not used since it last passed
/// (an approximation of least recently used). New entries start unreferenced,
/// so a stream of one-off addresses (e.g. a spoofed SYN flood) recycles among
/// itself before it displaces clients that keep coming back — the ones a
/// limit is about. An evicted client starts again with a full bucket.
pub(crate) struct ClientTable {
    entries: Vec<ClientEntry>,
    /// Default SipHash with a random key: client addresses are chosen by the
    /// clients, so the hash must not be predictable.
    index: HashMap<ClientKey, u32>,
    capacity: usize,
    hand: usize,
}

impl ClientTable {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            index: HashMap::with_capacity(capacity),
            capacity,
            hand: 0,
        }
    }

    /// The entry for `key` (created full if absent), refilled to `now`;
    /// returns its index and whether another client was evicted for it.
    /// Capacity must be non-zero (checked when the configuration is applied).
    pub(crate) fn lookup(&mut self, key: ClientKey, now: Instant, rate: Rate) -> (usize, bool) {
        let (per_sec, burst) = (u64::from(rate.per_sec), u64::from(rate.burst));
        if let Some(&i) = self.index.get(&key) {
            let e = &mut self.entries[i as usize];
            e.referenced = true;
            e.bucket.refill(now, per_sec, burst);
            return (i as usize, false);
        }
        let entry = ClientEntry {
            key,
            bucket: Bucket::full(burst, now),
            referenced: false,
        };
        if self.entries.len() < self.capacity {
            self.entries.push(entry);
            let i = self.entries.len() - 1;
            self.index.insert(key, i as u32);
            return (i, false);
        }
        while self.entries[self.hand].referenced {
            self.entries[self.hand].referenced = false;
            self.hand = (self.hand + 1) % self.capacity;
        }
        let i = self.hand;
        self.hand = (self.hand + 1) % self.capacity;
        self.index.remove(&self.entries[i].key);
        self.entries[i] = entry;
        self.index.insert(key, i as u32);
        (i, true)
    }

    pub(crate) fn bucket(&mut self, i: usize) -> &mut Bucket {
        &mut self.entries[i].bucket
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let t0 = Instant::from_secs(1);
        let mut b = Bucket::full(10, t0);
        assert_eq!(b.available(), 10);
        b.take(10);
        assert_eq!(b.available(), 0);
        b.refill(t0 + Duration::from_millis(250), 20, 10);
        assert_eq!(b.available(), 5);
        b.refill(t0 + Duration::from_secs(100), 20, 10);
        assert_eq!(b.available(), 10);
        // A lower burst clamps at once.
        b.refill(t0 + Duration::from_secs(100), 20, 3);
        assert_eq!(b.available(), 3);
        b.take(3);
        let at = b.ready_at(2, 20);
        assert_eq!(
            at,
            t0 + Duration::from_secs(100) + Duration::from_millis(100)
        );
        b.refill(at, 20, 10);
        assert_eq!(b.available(), 2);
    }

    #[test]
    fn bucket_large_rates_do_not_overflow() {
        let mut b = Bucket::full(1, Instant::ZERO);
        b.take(1);
        b.refill(
            Instant::from_secs(1_000_000),
            1_000_000_000_000,
            50_000_000_000,
        );
        assert_eq!(b.available(), 50_000_000_000);
    }

    #[test]
    fn client_table_evicts_unreferenced_first() {
        let rate = Rate::new(1, 5);
        let now = Instant::from_secs(1);
        let mut t = ClientTable::new(2);
        let a = (1, Ipv4Addr::new(10, 0, 0, 1));
        let b = (1, Ipv4Addr::new(10, 0, 0, 2));
        let c = (1, Ipv4Addr::new(10, 0, 0, 3));
        let (ia, ev) = t.lookup(a, now, rate);
        assert!(!ev);
        t.bucket(ia).take(5);
        t.lookup(b, now, rate);
        // a is used again: referenced.
        let (ia2, _) = t.lookup(a, now, rate);
        assert_eq!(ia, ia2);
        // c evicts b (unreferenced), not a.
        let (_, ev) = t.lookup(c, now, rate);
        assert!(ev);
        assert_eq!(t.len(), 2);
        let (ia3, ev) = t.lookup(a, now, rate);
        assert!(!ev);
        assert_eq!(t.bucket(ia3).available(), 0, "a kept its empty bucket");
        // b comes back fresh, evicting someone.
        let (ib, ev) = t.lookup(b, now, rate);
        assert!(ev);
        assert_eq!(t.bucket(ib).available(), 5);
    }
}
