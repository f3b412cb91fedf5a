//! Configuration publication (control plane) and subscription (dataplane).
//!
//! Protocol (double buffer, each slot guarded by its own sequence counter):
//!
//! Publisher (single writer, the control plane):
//! 1. `slot` = the slot *not* named by the active word (slot 0 if nothing
//!    was published yet).
//! 2. `seq(slot) := s+1` (odd: write in progress), Release fence.
//! 3. Relaxed stores of generation, length, checksum, payload words.
//! 4. `seq(slot) := s+2` with Release (even: complete).
//! 5. `active := generation << 1 | slot` with Release; then the control-plane
//!    status' published generation and heartbeat.
//!
//! Subscriber (the dataplane, never blocks):
//! 1. Acquire-load `active`; 0 or the generation already applied/rejected →
//!    `Unchanged` (the common, cheap path: one load).
//! 2. Acquire-load `seq(slot)`; odd → retry. Relaxed-load generation,
//!    length, checksum and (if the length is in range) copy the payload out.
//!    Acquire fence, reload `seq(slot)`; changed → retry. At most
//!    `MAX_ATTEMPTS` attempts, then `Unchanged` (try again at the next poll).
//! 3. On a consistent copy: length in range, `xxh3_64_with_seed(payload,
//!    generation)` equals the stored checksum, generation greater than the
//!    accepted one, the payload (JSON) decodes, and
//!    `fulcrum_model::Generation::validate` passes → `New`; otherwise `Rejected`, and
//!    the rejection is recorded in the dataplane status (count, reason code,
//!    generation). The previously applied configuration stays in force.
//!
//! The sequence counter protects against a live writer lapping the reader
//! (the writer only ever writes the inactive slot, so this needs two
//! publications during one read); the checksum protects against everything
//! else (a writer that died mid-write, stray writes, corruption of the file).
//! All shared accesses are atomic, so a torn read is merely a wrong value
//! that one of the two checks catches.

use std::sync::atomic::{fence, Ordering};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use fulcrum_model::Generation;

use crate::reject::RejectReason;
use crate::error::{Error, Result};
use crate::layout::*;
use crate::segment::{now_ns, Segment};

/// Attempts per poll before giving up on a slot that keeps changing.
pub const MAX_ATTEMPTS: usize = 4;
/// Generations are stored shifted left by one in the active word.
const MAX_GENERATION: u64 = (1 << 62) - 1;

/// Result of [`Subscriber::poll`].
#[derive(Clone, Debug, PartialEq)]
pub enum Poll {
    /// Nothing new (or a publication is in progress: poll again later).
    Unchanged,
    /// A new, verified and validated generation.
    New(Generation, u64),
    /// The newest publication is unusable; the previous one stays applied.
    /// Reported once per published generation.
    Rejected(RejectReason),
}

/// Subscriber-side diagnostic counters (process-local).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    pub polls: u64,
    /// Reads that raced with the writer and were retried.
    pub torn_retries: u64,
    /// Polls that gave up after `MAX_ATTEMPTS` torn reads.
    pub busy: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Times the checksum was verified on a consistent copy.
    pub checksums_verified: u64,
    pub checksum_failures: u64,
}

/// The control plane's writer handle. One per segment (enforced via the
/// control-plane heartbeat, see [`Segment::publisher`]).
pub struct Publisher<'a> {
    seg: &'a Segment,
    last: u64,
    /// Test hook: always write this slot (defeats the double buffer so
    /// that torn reads become likely).
    #[cfg(test)]
    pub(crate) force_slot: Option<usize>,
}

/// The dataplane's reader handle. A generation it returns is *accepted*;
/// the dataplane records it as *applied* ([`Subscriber::mark_applied`]) only
/// once every lcore has installed it.
pub struct Subscriber<'a> {
    seg: &'a Segment,
    accepted: u64,
    rejected_hint: u64,
    record: bool,
    stats: SubscriberStats,
    #[cfg(test)]
    pub(crate) skip_seq_check: bool,
}

struct RawSlot {
    generation: u64,
    len: u64,
    checksum: u64,
    /// `None` when `len` is out of range (payload not copied).
    payload: Option<Vec<u8>>,
}

impl Segment {
    /// Takes the control-plane role: fails with `AlreadyRunning` if another
    /// process holds it with a fresh heartbeat. Generations continue after
    /// the highest one found in the file, so they stay strictly increasing
    /// across control-plane restarts.
    pub fn publisher(&self) -> Result<Publisher<'_>> {
        self.claim("control plane", CP_PID, CP_HEARTBEAT_NS)?;
        let mut last =
            (self.word(CFG_ACTIVE).load(Ordering::Acquire) >> 1).max(self.load(CP_PUBLISHED_GEN));
        for slot in 0..2 {
            let off = slot_off(slot);
            // A completed slot write that never got its active-word flip (the
            // writer died in between) may already have been seen by a reader.
            if self.load(off + SLOT_SEQ) % 2 == 0 {
                last = last.max(self.load(off + SLOT_GEN));
            }
        }
        if last >= MAX_GENERATION {
            return Err(Error::GenerationExhausted);
        }
        let now = now_ns();
        self.store(CP_PID, u64::from(std::process::id()));
        self.store(CP_START_NS, now);
        self.store(CP_PUBLISHED_GEN, last);
        self.word(CP_HEARTBEAT_NS).store(now, Ordering::Release);
        Ok(Publisher {
            seg: self,
            last,
            #[cfg(test)]
            force_slot: None,
        })
    }

    /// Reads the currently published configuration without recording
    /// anything (for tools and for a restarting control plane).
    /// `Unchanged` means nothing was published yet (or the writer kept
    /// racing us).
    pub fn current_config(&self) -> Poll {
        let mut sub = Subscriber::detached(self);
        sub.poll()
    }

    fn read_slot(&self, slot: usize, check_seq: bool) -> Option<RawSlot> {
        let off = slot_off(slot);
        let seq = self.word(off + SLOT_SEQ);
        let s1 = seq.load(Ordering::Acquire);
        if check_seq && s1 % 2 == 1 {
            return None;
        }
        let generation = self.load(off + SLOT_GEN);
        let len = self.load(off + SLOT_LEN);
        let checksum = self.load(off + SLOT_SUM);
        let payload = (len > 0 && len <= MAX_PAYLOAD as u64).then(|| self.load_bytes(off + SLOT_HDR, len as usize));
        fence(Ordering::Acquire);
        let s2 = seq.load(Ordering::Relaxed);
        if check_seq && s1 != s2 {
            return None;
        }
        Some(RawSlot {
            generation,
            len,
            checksum,
            payload,
        })
    }
}

impl<'a> Publisher<'a> {
    /// Validates, encodes and publishes `cfg`; returns its generation number.
    /// Never blocks on readers.
    ///
    /// Refused with [`Error::Truncated`] once the segment was found truncated
    /// (what it would write could land in process-private zero pages the
    /// dataplane never sees); if the truncation is noticed during the write,
    /// the generation number is used up and the same error returned.
    pub fn publish(&mut self, cfg: &Generation) -> Result<u64> {
        if self.seg.truncated() {
            return Err(self.seg.truncation_error(self.seg.file_len()));
        }
        cfg.validate()?;
        let bytes = serde_json::to_vec(cfg).map_err(|e| Error::Encode(e.to_string()))?;
        if bytes.is_empty() || bytes.len() > MAX_PAYLOAD {
            return Err(Error::PayloadTooLarge {
                len: bytes.len(),
                max: MAX_PAYLOAD,
            });
        }
        let generation = self.last + 1;
        if generation >= MAX_GENERATION {
            return Err(Error::GenerationExhausted);
        }
        self.write_raw(generation, &bytes, xxh3_64_with_seed(&bytes, generation));
        self.last = generation;
        if self.seg.truncated() {
            return Err(self.seg.truncation_error(self.seg.file_len()));
        }
        Ok(generation)
    }

    /// Low-level slot write (also used by tests to publish crafted payloads).
    pub(crate) fn write_raw(&mut self, generation: u64, bytes: &[u8], checksum: u64) {
        let seg = self.seg;
        let active = seg.word(CFG_ACTIVE).load(Ordering::Relaxed);
        let slot = if active == 0 {
            0
        } else {
            1 - (active & 1) as usize
        };
        #[cfg(test)]
        let slot = self.force_slot.unwrap_or(slot);
        let off = slot_off(slot);
        let seq = seg.word(off + SLOT_SEQ);
        // Single writer: plain load. If odd, a previous writer died mid-write.
        let s = seq.load(Ordering::Relaxed);
        let s = s + (s & 1);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        seg.store(off + SLOT_GEN, generation);
        seg.store(off + SLOT_LEN, bytes.len() as u64);
        seg.store(off + SLOT_SUM, checksum);
        seg.store_bytes(off + SLOT_HDR, bytes);
        seq.store(s.wrapping_add(2), Ordering::Release);
        seg.word(CFG_ACTIVE)
            .store(generation << 1 | slot as u64, Ordering::Release);
        seg.store(CP_PUBLISHED_GEN, generation);
        self.heartbeat();
    }

    /// Last generation published (by this or a previous control plane).
    pub fn generation(&self) -> u64 {
        self.last
    }

    /// The configuration currently in the segment (e.g. what a previous
    /// control-plane instance published), without recording anything.
    pub fn last_published(&self) -> Poll {
        self.seg.current_config()
    }

    /// Updates the control-plane heartbeat; call every `HEARTBEAT_INTERVAL`.
    pub fn heartbeat(&self) {
        self.seg
            .word(CP_HEARTBEAT_NS)
            .store(now_ns(), Ordering::Release);
    }
}

impl Drop for Publisher<'_> {
    /// Clean shutdown: heartbeat 0 = not alive, role free immediately.
    fn drop(&mut self) {
        self.seg.word(CP_HEARTBEAT_NS).store(0, Ordering::Release);
    }
}

impl<'a> Subscriber<'a> {
    /// A subscriber that records applied generations and rejections in the
    /// dataplane status. The dataplane should have exactly one.
    pub fn new(seg: &'a Segment) -> Subscriber<'a> {
        Subscriber {
            seg,
            accepted: 0,
            rejected_hint: 0,
            record: true,
            stats: SubscriberStats::default(),
            #[cfg(test)]
            skip_seq_check: false,
        }
    }

    /// A subscriber that records nothing in the segment (tools, tests).
    pub fn detached(seg: &'a Segment) -> Subscriber<'a> {
        Subscriber {
            record: false,
            ..Subscriber::new(seg)
        }
    }

    /// Generation of the last `New` returned (0 = none yet).
    pub fn accepted_generation(&self) -> u64 {
        self.accepted
    }

    /// Records that the dataplane could not install `generation` at all (it
    /// keeps serving the one it has).
    pub fn record_rejection(&self, reason: &RejectReason, generation: u64) {
        if self.record {
            self.record_reject(reason, generation);
        }
    }

    /// Records `generation` as applied: every lcore has installed it.
    pub fn mark_applied(&self, generation: u64) {
        if self.record {
            self.seg.store(DP_APPLIED_GEN, generation);
        }
    }

    pub fn stats(&self) -> SubscriberStats {
        self.stats
    }

    /// Non-blocking check for a new configuration generation.
    ///
    /// A truncated segment ([`Segment::truncated`]) yields `Unchanged`,
    /// before reading and again after a read (the read itself may be what
    /// hit the truncation): pages past the end read as zeros, and nothing
    /// read from such a segment is accepted, nor recorded as a rejection.
    /// (Zeros alone would also be safe: an active word of 0 is "nothing
    /// published", and a slot of zeros has length 0, which is rejected.)
    pub fn poll(&mut self) -> Poll {
        self.stats.polls += 1;
        if self.seg.truncated() {
            return Poll::Unchanged;
        }
        let active = self.seg.word(CFG_ACTIVE);
        let mut a = active.load(Ordering::Acquire);
        let hint = a >> 1;
        if a == 0 || hint == self.accepted || hint == self.rejected_hint {
            return Poll::Unchanged;
        }
        #[cfg(test)]
        let check_seq = !self.skip_seq_check;
        #[cfg(not(test))]
        let check_seq = true;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                self.stats.torn_retries += 1;
                std::hint::spin_loop();
                a = active.load(Ordering::Acquire);
            }
            if let Some(raw) = self.seg.read_slot((a & 1) as usize, check_seq) {
                if self.seg.truncated() {
                    return Poll::Unchanged;
                }
                return self.check(raw, a >> 1);
            }
        }
        self.stats.busy += 1;
        Poll::Unchanged
    }

    fn check(&mut self, raw: RawSlot, hint: u64) -> Poll {
        match self.verify(raw) {
            Ok((cfg, generation)) => {
                self.accepted = generation;
                self.stats.accepted += 1;
                Poll::New(cfg, generation)
            }
            Err(reason) => {
                self.rejected_hint = hint;
                self.stats.rejected += 1;
                if self.record {
                    self.record_reject(&reason, hint);
                }
                Poll::Rejected(reason)
            }
        }
    }

    fn verify(&mut self, raw: RawSlot) -> Result<(Generation, u64), RejectReason> {
        let Some(payload) = raw.payload else {
            return Err(RejectReason::LengthOutOfRange(raw.len));
        };
        self.stats.checksums_verified += 1;
        if xxh3_64_with_seed(&payload, raw.generation) != raw.checksum {
            self.stats.checksum_failures += 1;
            return Err(RejectReason::ChecksumMismatch);
        }
        if raw.generation <= self.accepted {
            return Err(RejectReason::GenerationNotIncreasing {
                found: raw.generation,
                accepted: self.accepted,
            });
        }
        let cfg = serde_json::from_slice::<Generation>(&payload)
            .map_err(|e| RejectReason::Undecodable(e.to_string()))?;
        cfg.validate().map_err(RejectReason::Invalid)?;
        Ok((cfg, raw.generation))
    }

    /// Records a rejection in the dataplane status.
    fn record_reject(&self, reason: &RejectReason, generation: u64) {
        let seg = self.seg;
        seg.store(
            DP_REJECTED_COUNT,
            seg.load(DP_REJECTED_COUNT).wrapping_add(1),
        );
        seg.store(DP_LAST_REJECT_CODE, u64::from(reason.code()));
        seg.store(DP_LAST_REJECT_GEN, generation);
    }
}

#[cfg(test)]
mod tests {
    //! Torn-read test with the sequence check disabled and the writer forced
    //! to overwrite the slot readers read: only the checksum stands between
    //! the reader and a torn mix of two generations.
    use super::*;
    use fulcrum_model::{Backend, BackendState, Mode, Published, Vip};
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicBool;

    /// Sets the flag when dropped, so a panicking reader stops the writer
    /// thread (otherwise the scope would wait for it forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn big_config(seed: u8, vips: u16) -> Generation {
        let mut cfg = Generation::default();
        let mut slot = 0u32;
        for id in 0..vips {
            let mut vip = Vip::new(Ipv4Addr::new(10, seed, (id >> 8) as u8, id as u8), 80 + seed as u16, Mode::Proxy);
            let mut slots = Vec::new();
            for b in 0..16u32 {
                let mut backend = Backend::new(Ipv4Addr::new(192, 168, seed, (b + 1) as u8), 8000 + id, u32::from(seed) * 1000 + b);
                backend.state = if seed % 2 == 0 { BackendState::Up } else { BackendState::Drain };
                vip.backends.push(backend);
                slots.push(slot);
                slot += 1;
            }
            cfg.vips.push(Published { id, slots, vip });
        }
        cfg
    }

    #[test]
    fn checksum_alone_rejects_torn_reads() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::open_or_create(dir.path().join("seg")).unwrap();
        let a = big_config(1, 256);
        let b = big_config(2, 256);
        assert_ne!(a, b);
        let stop = AtomicBool::new(false);
        let (stats, accepted) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut publisher = seg.publisher().unwrap();
                publisher.force_slot = Some(0);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    publisher.publish(if i % 2 == 0 { &a } else { &b }).unwrap();
                    i += 1;
                }
            });
            let _stop = StopOnDrop(&stop);
            let mut sub = Subscriber::detached(&seg);
            sub.skip_seq_check = true;
            let mut accepted = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while (sub.stats().checksum_failures == 0 || sub.stats().polls < 2000)
                && std::time::Instant::now() < deadline
            {
                if let Poll::New(cfg, _) = sub.poll() {
                    assert!(cfg == a || cfg == b, "accepted a torn mix");
                    accepted += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            (sub.stats(), accepted)
        });
        eprintln!("checksum-only torn test: {stats:?}, accepted {accepted}");
        assert!(accepted > 0);
        assert!(
            stats.checksum_failures > 0,
            "no torn read observed; checksum path not exercised: {stats:?}"
        );
    }

    #[test]
    fn seqlock_alone_rejects_torn_reads() {
        // Same single-buffer stress, sequence check on: tears are retried,
        // never even reach the checksum.
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::open_or_create(dir.path().join("seg")).unwrap();
        let a = big_config(1, 256);
        let b = big_config(2, 256);
        let stop = AtomicBool::new(false);
        let stats = std::thread::scope(|s| {
            s.spawn(|| {
                let mut publisher = seg.publisher().unwrap();
                publisher.force_slot = Some(0);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    publisher.publish(if i % 2 == 0 { &a } else { &b }).unwrap();
                    i += 1;
                }
            });
            let _stop = StopOnDrop(&stop);
            let mut sub = Subscriber::detached(&seg);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while (sub.stats().torn_retries == 0 || sub.stats().accepted < 20)
                && std::time::Instant::now() < deadline
            {
                match sub.poll() {
                    Poll::New(cfg, generation) => {
                        assert!(cfg == a || cfg == b, "accepted a torn mix");
                        assert_eq!(cfg == a, generation % 2 == 1);
                    }
                    Poll::Rejected(r) => panic!("torn read reached verification: {r}"),
                    Poll::Unchanged => {}
                }
            }
            stop.store(true, Ordering::Relaxed);
            sub.stats()
        });
        eprintln!("seqlock-only torn test: {stats:?}");
        assert!(
            stats.torn_retries > 0,
            "no concurrent write observed: {stats:?}"
        );
        assert!(stats.accepted >= 20, "{stats:?}");
        assert_eq!(stats.checksum_failures, 0);
    }
}
