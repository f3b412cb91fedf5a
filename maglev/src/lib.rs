//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016) for picking
//! a backend per flow.
//!
//! Why Maglev: every load balancer behind ECMP builds the same table from the
//! same backend set, so a flow lands on the same backend whichever load
//! balancer sees it, and a backend change moves only a small fraction of flows.
//!
//! Weights follow the "proportional share" scheme of Katran's `MaglevHashV2`:
//! in each round of the population loop a backend earns credit equal to its
//! weight and claims one slot per `max_weight` of credit, so its share of the
//! table is proportional to its weight (exact to about one slot).
//!
//! # Cross-process agreement
//! Everything here is a pure function of its inputs and of fixed seeds, so
//! tables are identical across processes, restarts and machines running the
//! same crate version:
//! * permutations are derived from the backend's [`Backend::key`] with xxh3
//!   seeded by two private constants (offset and skip seeds);
//! * [`backend_key`] hashes address and port with a third private constant;
//! * [`flow_hash`] / [`addr_hash`] take the seed from the caller
//!   ([`DEFAULT_FLOW_SEED`] unless configured); all load balancers must agree.
//!
//! Changing any seed or byte layout reshuffles every table and every flow; the
//! golden tests pin them so that cannot happen by accident.
#![forbid(unsafe_code)]

use std::fmt;
use std::iter::FusedIterator;
use std::net::{IpAddr, SocketAddrV4};

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3Default};

/// Default table size: prime, and >= 100 x backends for up to 655 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Most backends a table can index: entries are `u16` to keep the table
/// small enough for the data cache (128 KiB at the default size).
pub const MAX_BACKENDS: usize = u16::MAX as usize + 1;

/// Most distinct backends [`MaglevTable::preference`] yields; retries beyond
/// this many are not useful and the bound keeps the iterator allocation-free.
pub const MAX_PREFERENCE: usize = 8;

/// Flow-hash seed to use unless the deployment configures its own; every load
/// balancer sharing a VIP must use the same one.
pub const DEFAULT_FLOW_SEED: u64 = 0x6675_6c63_7275_6d31; // "fulcrum1"

/// Seed for the permutation offset (where a backend starts claiming slots).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
/// Seed for the permutation skip (stride between a backend's candidate slots).
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"
/// Seed for [`backend_key`].
const BACKEND_KEY_SEED: u64 = 0x6d61_676c_6576_626b; // "maglevbk"

/// Marks a slot not yet claimed while building.
const EMPTY: u32 = u32::MAX;

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// Maglev permutations only cover every slot when the size is prime.
    #[error("maglev table size {0} is not prime (0 and 1 included); use e.g. 65537")]
    NotPrime(u32),
    /// Every backend needs a chance at a slot; recommended size is >= 100 x backends.
    #[error("maglev table size {size} must be greater than the number of backends ({backends})")]
    TooSmall { size: u32, backends: usize },
    /// Entries are `u16` indexes.
    #[error("{0} backends exceed the maximum of {MAX_BACKENDS}")]
    TooManyBackends(usize),
    /// Two backends with the same key would get the same permutation; almost
    /// certainly the same address:port listed twice.
    #[error("duplicate backend key {0:#018x}")]
    DuplicateKey(u64),
}

/// One backend as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Stable identity (see [`backend_key`]); independent of list position so
    /// removing one backend does not change the others' permutations.
    pub key: u64,
    /// Relative share of the table; 0 = drained (no new flows).
    pub weight: u32,
}

impl Backend {
    /// The backend at `addr:port`, keyed by [`backend_key`].
    pub fn at(addr: IpAddr, port: u16, weight: u32) -> Self {
        Backend {
            key: backend_key(addr, port),
            weight,
        }
    }
}

/// Stable backend key from address and port, so all load balancers derive the
/// same permutation for the same backend. IPv4 addresses are hashed in their
/// IPv4-mapped IPv6 form.
pub fn backend_key(addr: IpAddr, port: u16) -> u64 {
    let mut buf = [0u8; 18];
    buf[..16].copy_from_slice(&v6_octets(addr));
    buf[16..].copy_from_slice(&port.to_be_bytes());
    xxh3_64_with_seed(&buf, BACKEND_KEY_SEED)
}

/// Hash of a flow's 5-tuple for [`MaglevTable::lookup`].
///
/// Layout (37 bytes, no allocation): src (16, IPv4-mapped for v4), dst (16),
/// src port (2, BE), dst port (2, BE), protocol (1). Directional: the reply
/// direction hashes differently. A v4 address and its v4-mapped v6 form hash
/// the same.
pub fn flow_hash(
    seed: u64,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
    proto: u8,
) -> u64 {
    let mut buf = [0u8; 37];
    buf[..16].copy_from_slice(&v6_octets(src_ip));
    buf[16..32].copy_from_slice(&v6_octets(dst_ip));
    buf[32..34].copy_from_slice(&src_port.to_be_bytes());
    buf[34..36].copy_from_slice(&dst_port.to_be_bytes());
    buf[36] = proto;
    xxh3_64_with_seed(&buf, seed)
}

/// Hash of the client address alone, for client affinity: all of a client's
/// flows pick the same backend. Same 16-byte address layout as [`flow_hash`].
pub fn addr_hash(seed: u64, addr: IpAddr) -> u64 {
    xxh3_64_with_seed(&v6_octets(addr), seed)
}

fn v6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Deterministic primality test by trial division (table sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// A built Maglev lookup table: each slot holds an index into the backend
/// list it was built from. Immutable; rebuild off the packet path and swap.
#[derive(Clone)]
pub struct MaglevTable {
    /// Empty when no backend has weight (every lookup then returns `None`),
    /// otherwise exactly `size` entries.
    slots: Box<[u16]>,
    size: u32,
    backends: usize,
    /// Backends with at least one slot; bounds [`Preference`].
    active: usize,
}

impl fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The slots themselves are too many to print usefully.
        f.debug_struct("MaglevTable")
            .field("size", &self.size)
            .field("backends", &self.backends)
            .field("active", &self.active)
            .finish()
    }
}

/// Per-backend state of the population loop.
struct Claimer {
    index: u32,
    weight: u64,
    credit: u64,
    /// Next candidate slot in this backend's permutation.
    pos: u64,
    skip: u64,
}

impl MaglevTable {
    /// Whether [`build`](Self::build) would accept `backends` and `size`,
    /// without building: for configuration checks.
    pub fn validate(backends: &[Backend], size: u32) -> Result<(), MaglevError> {
        Self::checked_order(backends, size).map(drop)
    }

    /// Checks the inputs; returns the backends' indexes sorted by key (the
    /// order the table is populated in, independent of the list's order).
    fn checked_order(backends: &[Backend], size: u32) -> Result<Vec<usize>, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        if backends.len() > MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends(backends.len()));
        }
        if size as usize <= backends.len() {
            return Err(MaglevError::TooSmall {
                size,
                backends: backends.len(),
            });
        }
        let mut order: Vec<usize> = (0..backends.len()).collect();
        order.sort_unstable_by_key(|&i| backends[i].key);
        if let Some(w) = order
            .windows(2)
            .find(|w| backends[w[0]].key == backends[w[1]].key)
        {
            return Err(MaglevError::DuplicateKey(backends[w[0]].key));
        }
        Ok(order)
    }

    /// Builds the table for `backends` (indexes in the table refer to this
    /// slice). `size` must be prime and greater than `backends.len()`; use
    /// >= 100 x backends for balance (see [`DEFAULT_TABLE_SIZE`]).
    ///
    /// Backends are processed in key order, so the slot -> key mapping does
    /// not depend on the order of the slice, and a weight-0 backend yields
    /// exactly the same mapping as leaving it out. If no backend has weight the
    /// table is empty and every lookup returns `None` (all drained is a
    /// legitimate state, not a build error).
    ///
    /// Work is bounded: each round fills at least one slot (a max-weight
    /// backend always claims), so at most `size` rounds of `backends.len()`
    /// steps, and each claim probes at most `size` slots because a prime size
    /// makes every permutation visit every slot.
    pub fn build(backends: &[Backend], size: u32) -> Result<Self, MaglevError> {
        let mut order = Self::checked_order(backends, size)?;
        order.retain(|&i| backends[i].weight > 0);

        let m = u64::from(size);
        let mut claimers: Vec<Claimer> = order
            .iter()
            .map(|&i| {
                let key = backends[i].key.to_le_bytes();
                Claimer {
                    index: i as u32,
                    weight: u64::from(backends[i].weight),
                    credit: 0,
                    pos: xxh3_64_with_seed(&key, OFFSET_SEED) % m,
                    skip: xxh3_64_with_seed(&key, SKIP_SEED) % (m - 1) + 1,
                }
            })
            .collect();
        let Some(max_weight) = claimers.iter().map(|c| c.weight).max() else {
            return Ok(Self {
                slots: Box::new([]),
                size,
                backends: backends.len(),
                active: 0,
            });
        };

        let mut table = vec![EMPTY; size as usize];
        let mut filled = 0usize;
        'fill: loop {
            for c in claimers.iter_mut() {
                c.credit += c.weight;
                if c.credit < max_weight {
                    continue;
                }
                c.credit -= max_weight;
                while table[c.pos as usize] != EMPTY {
                    c.pos += c.skip;
                    if c.pos >= m {
                        c.pos -= m;
                    }
                }
                table[c.pos as usize] = c.index;
                filled += 1;
                if filled == table.len() {
                    break 'fill;
                }
            }
        }

        let mut owns = vec![false; backends.len()];
        let slots: Box<[u16]> = table
            .into_iter()
            .map(|b| {
                owns[b as usize] = true;
                b as u16
            })
            .collect();
        Ok(Self {
            slots,
            size,
            backends: backends.len(),
            active: owns.iter().filter(|&&o| o).count(),
        })
    }

    /// Backend index for a flow hash: one modulo and one load, no allocation,
    /// no panic. `None` only when no backend has weight.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<usize> {
        let slot = (flow_hash % u64::from(self.size)) as usize;
        self.slots.get(slot).map(|&b| usize::from(b))
    }

    /// Backends to try for a flow, best first, for retries when a connection
    /// attempt fails: the first is [`lookup`](Self::lookup)'s answer, then the
    /// owners of the following slots (walking the table forward, wrapping),
    /// skipping backends already yielded.
    ///
    /// Deterministic (same on every load balancer), allocation-free, and
    /// weighted (later choices are drawn from table slots, so in proportion to
    /// weight). Yields at most [`MAX_PREFERENCE`] distinct backends, never a
    /// weight-0 one, and reads at most `size` slots in total.
    pub fn preference(&self, flow_hash: u64) -> Preference<'_> {
        Preference {
            slots: &self.slots,
            pos: (flow_hash % u64::from(self.size)) as usize,
            probes_left: self.slots.len(),
            seen: [0; MAX_PREFERENCE],
            found: 0,
            limit: self.active.min(MAX_PREFERENCE),
        }
    }

    /// Number of slots owned by each backend (indexed like the build input),
    /// for exporting actual shares next to configured weights.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.backends];
        for &b in self.slots.iter() {
            counts[usize::from(b)] += 1;
        }
        counts
    }

    /// Table size (number of slots) the table was built with.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Digest of what the table sends where, to compare the tables of load
    /// balancers that must agree (same VIP behind ECMP): equal digests mean
    /// every slot maps to the same backend address and port.
    ///
    /// `endpoint(i)` is the address and port of backend `i` of the list the
    /// table was built from (the index [`lookup`](Self::lookup) returns).
    ///
    /// Definition (version 1), so that any implementation can reproduce it:
    /// XXH3-64 with seed 0 (plain `XXH3_64bits`) over the byte string
    ///
    /// * the table size, 4 bytes, big-endian; then
    /// * for each slot `0..size` in order, 6 bytes: the owning backend's IPv4
    ///   address (4 bytes, network order) and port (2 bytes, big-endian); an
    ///   empty slot (only in a table with no backend of weight > 0, where every
    ///   slot is empty) is 6 zero bytes (`0.0.0.0:0`, never a backend).
    ///
    /// So `4 + 6 x size` bytes in all. Weights, list order, backend keys and
    /// backends owning no slot (weight 0, drained, down) do not enter it
    /// except through the slots they own. Rendered as 16 lowercase hex digits
    /// by [`digest_hex`].
    pub fn digest(&self, endpoint: impl Fn(usize) -> SocketAddrV4) -> u64 {
        let bytes = |e: SocketAddrV4| {
            let mut b = [0u8; 6];
            b[..4].copy_from_slice(&e.ip().octets());
            b[4..].copy_from_slice(&e.port().to_be_bytes());
            b
        };
        let owners: Vec<[u8; 6]> = (0..self.backends).map(|i| bytes(endpoint(i))).collect();
        let mut h = Xxh3Default::new();
        h.update(&self.size.to_be_bytes());
        // Slots in chunks, to keep the hasher's calls few.
        const CHUNK: usize = 6 * 1024;
        let mut buf = Vec::with_capacity(CHUNK);
        for s in 0..self.size as usize {
            let b = self.slots.get(s).map_or([0u8; 6], |&i| owners[usize::from(i)]);
            buf.extend_from_slice(&b);
            if buf.len() >= CHUNK {
                h.update(&buf);
                buf.clear();
            }
        }
        h.update(&buf);
        h.digest()
    }
}

/// A [`MaglevTable::digest`] as shown and exported: 16 lowercase hex digits.
pub fn digest_hex(digest: u64) -> String {
    format!("{digest:016x}")
}

/// Iterator returned by [`MaglevTable::preference`].
#[derive(Debug, Clone)]
pub struct Preference<'a> {
    slots: &'a [u16],
    pos: usize,
    probes_left: usize,
    seen: [u16; MAX_PREFERENCE],
    found: usize,
    limit: usize,
}

impl Iterator for Preference<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.found < self.limit && self.probes_left > 0 {
            let &b = self.slots.get(self.pos)?;
            self.probes_left -= 1;
            self.pos += 1;
            if self.pos == self.slots.len() {
                self.pos = 0;
            }
            if !self.seen[..self.found].contains(&b) {
                self.seen[self.found] = b;
                self.found += 1;
                return Some(usize::from(b));
            }
        }
        None
    }
}

impl FusedIterator for Preference<'_> {}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod katran_reference;
