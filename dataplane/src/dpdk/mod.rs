//! The thin safe layer over DPDK: the only place in the dataplane with `unsafe`.
//!
//! Ownership mirrors what DPDK requires: an [`Mbuf`] is move-only and freed on
//! drop; an [`RxQueue`]/[`TxQueue`] is move-only, borrowed from its [`Port`], and
//! owned by exactly one lcore; [`launch`] runs closures on lcores with scoped
//! lifetimes, catching panics, and always waits for every lcore before it returns.

mod eal;
mod lcore;
mod mbuf;
mod memif;
mod mempool;
mod packet_ring;
mod port;
mod ring;

pub use eal::Eal;
pub use lcore::{launch, LcoreJob, LcoreOutcome};
pub use mbuf::{Mbuf, MbufBatch, BURST};
pub use memif::{gate_open, MemifGuard, MemifGuardError, QuiescentToken};
pub use mempool::Mempool;
pub use packet_ring::{RingCounts, RingError, RxRings};
pub use port::{Port, PortConf, RxQueue, TxQueue};
pub use ring::{Ring, RingConsumer};

use std::ffi::CStr;
use std::fmt;

/// A DPDK ethdev port number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortId(pub u16);

/// A queue index on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(pub u16);

/// An EAL logical core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LcoreId(pub u32);

/// A NUMA socket; `SocketId::ANY` lets DPDK choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId(pub i32);

impl SocketId {
    pub const ANY: SocketId = SocketId(-1);
}

macro_rules! display_id {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_id!(PortId, QueueId, LcoreId, SocketId);

/// A failed DPDK call: which operation, and DPDK's errno and message.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message} (errno {code})")]
pub struct DpdkError {
    pub op: String,
    pub code: i32,
    pub message: String,
}

impl DpdkError {
    /// Builds an error from a negative return value (`-errno`) or, when the call
    /// reports through `rte_errno`, from that.
    fn new(op: impl Into<String>, ret: i32) -> Self {
        let code = if ret < 0 { -ret } else { rte_errno() };
        DpdkError {
            op: op.into(),
            code,
            message: strerror(code),
        }
    }
}

pub type Result<T> = std::result::Result<T, DpdkError>;

/// Asks the kernel to back the whole 2 MiB pages inside `mem` with
/// transparent huge pages: `MADV_HUGEPAGE`, then `MADV_COLLAPSE` (Linux 6.1+),
/// which moves already-written memory onto huge pages at once, whatever the
/// system's THP mode. Big lookup tables then cost one TLB entry per 2 MiB
/// instead of per 4 KiB. Only a hint: where it is refused nothing changes
/// but speed, so the results are ignored.
pub fn advise_huge_pages(mem: &mut [u8]) {
    const HUGE: usize = 2 << 20;
    let start = mem.as_mut_ptr() as usize;
    let (first, end) = (start.next_multiple_of(HUGE), start + mem.len());
    if end <= first || end - first < HUGE {
        return;
    }
    let len = (end - first) / HUGE * HUGE;
    for advice in [libc::MADV_HUGEPAGE, libc::MADV_COLLAPSE] {
        // SAFETY: [first, first + len) lies within `mem`, which we borrow
        // mutably; both advices change how pages are backed, never their
        // contents, and unmap nothing.
        unsafe {
            libc::madvise(first as *mut libc::c_void, len, advice);
        }
    }
}

/// Asks the CPU to start loading the cache line at `p` (no effect on
/// correctness, never faults, whatever `p` is): for a burst to fetch the
/// lines its packets will need while it still works on others.
#[inline]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it reads nothing architecturally and does
    // not fault on any address; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn rte_errno() -> i32 {
    // SAFETY: reads this thread's rte_errno through a C shim; no arguments.
    unsafe { dpdk_sys::fulcrum_rte_errno() }
}

fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local
    // NUL-terminated string that stays valid until the next call on this thread;
    // we copy it out at once.
    unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}
