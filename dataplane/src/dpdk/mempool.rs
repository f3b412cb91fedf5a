//! Packet-buffer pools.

use super::{DpdkError, Mbuf, Result, SocketId};
use std::ffi::CString;
use std::ptr::NonNull;

/// A pool of packet buffers (`rte_pktmbuf_pool_create`).
///
/// Shared by reference between lcores (DPDK pools are multi-producer and
/// multi-consumer, with a per-lcore cache). Dropping it frees the pool only when
/// every mbuf is back; otherwise it is deliberately leaked, because an mbuf still
/// alive somewhere would point into freed memory.
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    capacity: u32,
}

// SAFETY: rte_mempool is designed for concurrent use from many lcores; the
// handle is only a pointer to it.
unsafe impl Send for Mempool {}
// SAFETY: as above; every method takes &self and calls thread-safe DPDK APIs.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `capacity` mbufs (2^k - 1 is the most memory-efficient)
    /// with default data room (2 KiB + headroom) and a per-lcore cache.
    pub fn new(name: &str, capacity: u32, cache: u32, socket: SocketId) -> Result<Mempool> {
        Self::with_buffer(name, capacity, cache, Self::DEFAULT_BUFFER, socket)
    }

    /// Bytes of frame room an mbuf of [`Mempool::new`] has after its headroom.
    pub const DEFAULT_BUFFER: u16 = (dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE - dpdk_sys::RTE_PKTMBUF_HEADROOM) as u16;

    /// As [`Mempool::new`], with `buffer` bytes of frame room in each mbuf
    /// after DPDK's headroom (jumbo frames need more than the default 2 KiB:
    /// one frame, one mbuf, never a chain).
    pub fn with_buffer(name: &str, capacity: u32, cache: u32, buffer: u16, socket: SocketId) -> Result<Mempool> {
        let cname = CString::new(name).map_err(|_| DpdkError {
            op: "rte_pktmbuf_pool_create".into(),
            code: 22,
            message: format!("pool name {name:?} contains a NUL byte"),
        })?;
        let data_room = u16::try_from(u32::from(buffer) + dpdk_sys::RTE_PKTMBUF_HEADROOM).map_err(|_| DpdkError {
            op: "rte_pktmbuf_pool_create".into(),
            code: 22,
            message: format!("{buffer}-byte buffers and the headroom do not fit an mbuf's 16-bit data room"),
        })?;
        // SAFETY: cname is a valid C string for the duration of the call; the
        // numeric arguments are validated by DPDK, which returns NULL on error.
        let raw = unsafe { dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), capacity, cache, 0, data_room, socket.0) };
        NonNull::new(raw)
            .map(|raw| Mempool { raw, capacity })
            .ok_or_else(|| DpdkError::new(format!("rte_pktmbuf_pool_create({name}, {capacity} x {data_room} bytes)"), 0))
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Mbufs currently allocated (in queues, in flight, or held by the program).
    pub fn in_use(&self) -> u32 {
        // SAFETY: self.raw is a live pool; the count is a read of ring and caches.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// Takes a fresh, empty mbuf from the pool; `None` when it is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: self.raw is a live pktmbuf pool; NULL means exhausted.
        let m = unsafe { dpdk_sys::rte_pktmbuf_alloc(self.raw.as_ptr()) };
        // SAFETY: a non-NULL mbuf from the pool is exclusively ours.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m) })
    }

    pub(super) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        let in_use = self.in_use();
        if in_use != 0 {
            tracing::error!("mempool dropped with {in_use} mbufs still in use: leaking it");
            return;
        }
        // SAFETY: no mbuf of this pool is alive, and no port uses it any more
        // (ports borrow the pool, so they are closed before it drops).
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}
