//! The only module of this crate that contains `unsafe` code.
//!
//! It turns a shared, writable file mapping into a slice of [`AtomicU64`].
//! Everything else in the crate accesses the shared segment exclusively
//! through that slice, i.e. only through atomic loads and stores: there is
//! never a plain (non-atomic) read or write of shared memory, so a concurrent
//! writer in another process (or a corrupting raw `write(2)` to the file) can
//! at worst make us observe unexpected *values*, never cause a data race in
//! the Rust memory-model sense. Torn multi-word reads are detected one layer
//! up (sequence counters + checksums).
#![allow(unsafe_code)]

use std::sync::atomic::AtomicU64;

use memmap2::MmapRaw;

// `AtomicU64` must be a native, lock-free 8-byte atomic whose in-memory
// representation is a plain `u64`; both are true on the 64-bit targets the
// dataplane supports.
#[cfg(not(target_has_atomic = "64"))]
compile_error!("fulcrum-shm requires native 64-bit atomics");

const _: () = assert!(std::mem::size_of::<AtomicU64>() == 8);
const _: () = assert!(std::mem::align_of::<AtomicU64>() == 8);

/// A read-write `MAP_SHARED` mapping of the whole segment file, viewed as
/// 64-bit atomic words.
pub(crate) struct Region {
    map: MmapRaw,
}

impl Region {
    /// Wraps a mapping. The caller must have mapped the file read-write and
    /// checked that the file length is exactly the expected segment size
    /// (done by `segment.rs` before mapping, so the mapping never extends past
    /// the end of the file).
    pub(crate) fn new(map: MmapRaw) -> Region {
        assert_eq!(map.len() % 8, 0, "segment length must be a multiple of 8");
        assert_eq!(
            map.as_ptr() as usize % std::mem::align_of::<AtomicU64>(),
            0,
            "mapping must be 8-byte aligned"
        );
        Region { map }
    }

    /// The whole segment as atomic words. Word `i` covers bytes `8*i..8*i+8`,
    /// stored little-endian (all supported targets are little-endian).
    #[inline]
    pub(crate) fn words(&self) -> &[AtomicU64] {
        // SAFETY:
        // - `self.map` is a live read-write mapping of `self.map.len()` bytes
        //   that stays mapped for as long as `self` (and therefore the returned
        //   borrow) lives; `MmapRaw` unmaps only on drop.
        // - The pointer is page-aligned (checked >= 8 in `new`) and the length
        //   is a multiple of 8, so it covers exactly `len / 8` properly aligned
        //   `AtomicU64`s; `AtomicU64` has the same size and alignment as `u64`
        //   and every bit pattern is a valid value.
        // - `AtomicU64` has interior mutability, so handing out a shared slice
        //   while other threads/processes modify the memory is fine as long
        //   as all accesses are atomic: within this crate they all go through
        //   this slice, and other processes use this same crate.
        // - The file is never truncated while mapped by this crate (its size
        //   is fixed at creation and validated before mapping); an external
        //   truncation would raise SIGBUS, which is a crash, not silent UB of
        //   our own making.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr() as *const AtomicU64, self.map.len() / 8)
        }
    }
}
