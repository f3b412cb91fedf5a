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
//!
//! ## Truncation: a SIGBUS handler that maps zero pages
//!
//! Whoever can write the file (its owner, i.e. root, or a bug) can truncate
//! it while it is mapped; touching a mapped page past the new end of file
//! then raises `SIGBUS`, which would kill both daemons. A size check before
//! each access cannot prevent that (the file can shrink between the check
//! and the access, and the lcores write counters without any check), so the
//! access itself must be made survivable. Two ways were considered:
//!
//! * a sealed `memfd` (`F_SEAL_SHRINK`) handed from one daemon to the other
//!   over a Unix socket: truncation becomes impossible, but it needs a new
//!   rendezvous protocol between two daemons that may start in either order
//!   and restart independently, and every tool (`fulcrumctl`, tests) would
//!   lose the plain file. Much more work, more moving parts.
//! * a `SIGBUS` handler (chosen): every segment mapping is registered in a
//!   fixed, lock-free table; on a fault inside a registered mapping the
//!   handler maps anonymous zero pages (`MAP_FIXED | MAP_PRIVATE |
//!   MAP_ANONYMOUS`) from the faulting page to the end of the mapping and
//!   returns, so the faulting load or store simply completes (a load reads
//!   0, a store lands in process-private memory). It counts the fault in the
//!   mapping's table entry; [`Region::faults`] exposes the count, and
//!   `Segment::check` reports the segment as truncated from then on. The
//!   segment no longer connects the two processes after that (each sees its
//!   own private pages), which is what the report says: the daemons keep
//!   running on what they had, and an operator removes the file and
//!   restarts them.
//!
//! The handler is async-signal-safe: it only does atomic loads/stores on a
//! static table, `mmap(2)` and `sigaction(2)`/`raise(3)` (no allocation, no
//! locks), and saves/restores `errno`. A fault *outside* every registered
//! mapping (a real bug), or a `SIGBUS` sent with `kill(2)`, is passed to the
//! previously installed handler (Rust's runtime installs one for stack
//! overflows) or, if there was none, the default action is restored and the
//! signal re-raised, so the process still dies with `SIGBUS` as before.
//!
//! Limits: a mapping's table entry is removed before it is unmapped; at most
//! [`MAX_MAPPINGS`] segments can be mapped at once in one process. If two
//! threads fault on the same mapping at the same instant, both may map zero
//! pages over the same range, and a store made between the two `mmap`s to
//! that (already private, already meaningless) memory is lost.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Once, OnceLock};

use memmap2::MmapRaw;

// `AtomicU64` must be a native, lock-free 8-byte atomic whose in-memory
// representation is a plain `u64`; both are true on the 64-bit targets the
// dataplane supports.
#[cfg(not(target_has_atomic = "64"))]
compile_error!("fulcrum-shm requires native 64-bit atomics");

const _: () = assert!(std::mem::size_of::<AtomicU64>() == 8);
const _: () = assert!(std::mem::align_of::<AtomicU64>() == 8);

/// How many segment mappings one process can have at the same time.
pub(crate) const MAX_MAPPINGS: usize = 64;

/// One registered mapping: `[start, end)`; `covered` is the lowest address
/// from which on zero pages have been mapped (`end` = none yet).
/// `start == 0` = free entry.
struct Entry {
    start: AtomicUsize,
    end: AtomicUsize,
    covered: AtomicUsize,
    faults: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Entry = Entry {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    covered: AtomicUsize::new(0),
    faults: AtomicU64::new(0),
};

static TABLE: [Entry; MAX_MAPPINGS] = [FREE; MAX_MAPPINGS];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// The `SIGBUS` disposition found when ours was installed.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();

/// A read-write `MAP_SHARED` mapping of the whole segment file, viewed as
/// 64-bit atomic words, registered with the `SIGBUS` handler.
pub(crate) struct Region {
    map: MmapRaw,
    entry: usize,
}

/// Every entry of the mapping table is in use.
#[derive(Debug)]
pub(crate) struct TableFull;

impl Region {
    /// Wraps and registers a mapping. The caller must have mapped the file
    /// read-write and checked that the file length was the expected segment
    /// size (done by `segment.rs` before mapping); a later truncation is
    /// survived (see the module docs).
    pub(crate) fn new(map: MmapRaw) -> Result<Region, TableFull> {
        assert_eq!(map.len() % 8, 0, "segment length must be a multiple of 8");
        assert_eq!(
            map.as_ptr() as usize % std::mem::align_of::<AtomicU64>(),
            0,
            "mapping must be 8-byte aligned"
        );
        install_handler();
        let start = map.as_ptr() as usize;
        let end = start + map.len();
        for (i, e) in TABLE.iter().enumerate() {
            // Claim with `end == 0` (nothing matches an empty range) and
            // only then publish the range; the handler reads `start` first.
            if e.start.compare_exchange(0, start, SeqCst, SeqCst).is_ok() {
                e.faults.store(0, SeqCst);
                e.covered.store(end, SeqCst);
                e.end.store(end, SeqCst);
                return Ok(Region { map, entry: i });
            }
        }
        Err(TableFull)
    }

    /// The whole segment as atomic words. Word `i` covers bytes `8*i..8*i+8`,
    /// stored little-endian (all supported targets are little-endian).
    #[inline]
    pub(crate) fn words(&self) -> &[AtomicU64] {
        // SAFETY:
        // - `self.map` is a live read-write mapping of `self.map.len()` bytes
        //   that stays mapped for as long as `self` (and therefore the returned
        //   borrow) lives; `MmapRaw` unmaps only on drop. The SIGBUS handler
        //   may replace pages of it by anonymous zero pages (same addresses,
        //   same protection), so the range stays mapped and valid throughout.
        // - The pointer is page-aligned (checked >= 8 in `new`) and the length
        //   is a multiple of 8, so it covers exactly `len / 8` properly aligned
        //   `AtomicU64`s; `AtomicU64` has the same size and alignment as `u64`
        //   and every bit pattern is a valid value.
        // - `AtomicU64` has interior mutability, so handing out a shared slice
        //   while other threads/processes modify the memory is fine as long
        //   as all accesses are atomic: within this crate they all go through
        //   this slice, and other processes use this same crate.
        // - An external truncation of the file makes accesses past its end
        //   fault; the handler registered in `new` turns such a fault into a
        //   zero page (module docs), so it is neither a crash nor UB.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr() as *const AtomicU64, self.map.len() / 8)
        }
    }

    /// Accesses past the end of the file that the `SIGBUS` handler answered
    /// with zero pages (0 = the file was never found truncated by a fault).
    pub(crate) fn faults(&self) -> u64 {
        TABLE[self.entry].faults.load(SeqCst)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Unregister before `MmapRaw` unmaps (fields drop after this).
        let e = &TABLE[self.entry];
        e.end.store(0, SeqCst);
        e.covered.store(0, SeqCst);
        e.start.store(0, SeqCst);
    }
}

/// The process' effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, SeqCst);
        }
        // SAFETY: a zeroed `sigaction` is a valid value (SIG_DFL, empty
        // mask, no flags); sigaction(2) with a null new action only reads the
        // current one into `old`, a valid out pointer.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) };
        if rc != 0 {
            return;
        }
        let _ = PREVIOUS.set(old);
        // SAFETY: zeroed is valid (above); `on_sigbus` has the
        // `SA_SIGINFO` signature; `sa_mask` is a valid sigset to empty; the
        // handler is async-signal-safe (see `on_sigbus`).
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
        }
    });
}

/// The `SIGBUS` handler. Async-signal-safe: atomics, `mmap`, `sigaction`,
/// `raise` only; `errno` is preserved.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // `si_addr` is meaningful for SIGBUS (and only trusted when si_code > 0,
    // i.e. the kernel raised it for a memory access). __errno_location
    // returns this thread's errno slot.
    let (code, addr, errno) =
        unsafe { ((*info).si_code, (*info).si_addr() as usize, *libc::__errno_location()) };
    let handled = code > 0 && zero_fill(addr);
    if !handled {
        chain(sig, info, ctx);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// If `addr` lies in a registered mapping: maps zero pages from its page up
/// to what is already covered, counts the fault, and returns true.
fn zero_fill(addr: usize) -> bool {
    let page = PAGE_SIZE.load(SeqCst);
    for e in &TABLE {
        let start = e.start.load(SeqCst);
        if start == 0 || addr < start {
            continue;
        }
        let end = e.end.load(SeqCst);
        if addr >= end || e.start.load(SeqCst) != start {
            continue;
        }
        let from = addr & !(page - 1);
        let covered = e.covered.load(SeqCst);
        e.faults.fetch_add(1, SeqCst);
        if from >= covered {
            // Another thread mapped it meanwhile: retrying the access works.
            return true;
        }
        // SAFETY: `[from, covered)` lies inside the live segment mapping
        // `[start, end)` (registered until just before it is unmapped) and
        // is page aligned; replacing those pages by private anonymous ones
        // with the same protection keeps every address of the mapping valid,
        // so the `&[AtomicU64]` handed out by `Region::words` stays valid
        // (its values read 0 afterwards).
        let p = unsafe {
            libc::mmap(
                from as *mut libc::c_void,
                covered - from,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        e.covered.fetch_min(from, SeqCst);
        return true;
    }
    false
}

/// Not our fault: hand it to the previous handler, or restore the default
/// action and re-raise so the process dies with SIGBUS as it would have.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(prev) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            // SAFETY: `h` is the handler that was installed before ours,
            // with the signature its flags say; calling it with the
            // arguments the kernel gave us is what delivery would have done.
            unsafe {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(h);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
                    f(sig);
                }
            }
            return;
        }
    }
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask; sigaction
    // and raise are async-signal-safe. The raised signal is blocked until we
    // return, then delivered with the default action (terminate + core);
    // a fault would also recur on return.
    unsafe {
        let dfl: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        libc::raise(sig);
    }
}
