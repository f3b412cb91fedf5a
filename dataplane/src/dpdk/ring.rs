//! Handing mbufs between lcores: a lock-free DPDK ring per receiving lcore.

use super::{DpdkError, Mbuf, MbufBatch, Result, SocketId, BURST};
use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

/// A multi-producer, single-consumer ring of mbufs (`rte_ring` with
/// `RING_F_SC_DEQ`). Any lcore may [`Ring::enqueue`] through `&Ring`; exactly one
/// holds the [`RingConsumer`], so the single-consumer contract is a type.
/// Dropping the ring frees any mbufs still in it.
pub struct Ring {
    raw: NonNull<dpdk_sys::rte_ring>,
    consumer_taken: AtomicBool,
}

// SAFETY: the ring is multi-producer safe; the only single-consumer operation
// is reachable through RingConsumer, of which there is one.
unsafe impl Send for Ring {}
// SAFETY: as above: &Ring only allows the multi-producer enqueue.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring holding up to `capacity` mbufs (`capacity + 1` must be a power of two).
    pub fn new(name: &str, capacity: u32, socket: SocketId) -> Result<Ring> {
        let cname = CString::new(name).map_err(|_| DpdkError {
            op: "rte_ring_create".into(),
            code: 22,
            message: format!("ring name {name:?} contains a NUL byte"),
        })?;
        // SAFETY: cname is a valid C string for the call; DPDK validates the
        // size and flags and returns NULL (with rte_errno) on error.
        let raw = unsafe { dpdk_sys::rte_ring_create(cname.as_ptr(), capacity + 1, socket.0, dpdk_sys::RING_F_SC_DEQ) };
        NonNull::new(raw)
            .map(|raw| Ring {
                raw,
                consumer_taken: AtomicBool::new(false),
            })
            .ok_or_else(|| DpdkError::new(format!("rte_ring_create({name}, {capacity})"), 0))
    }

    /// The consuming end, once.
    pub fn consumer(&self) -> Option<RingConsumer<'_>> {
        (!self.consumer_taken.swap(true, Ordering::SeqCst)).then_some(RingConsumer { ring: self })
    }

    /// Hands `m` to the ring's consumer; gives it back when the ring is full.
    pub fn enqueue(&self, m: Mbuf) -> std::result::Result<(), Mbuf> {
        let obj = m.into_raw().cast::<c_void>();
        // SAFETY: the ring is live; one object pointer is passed; on success the
        // ring owns the mbuf, on failure we take it back below.
        let n = unsafe { dpdk_sys::rte_ring_enqueue_burst(self.raw.as_ptr(), &obj, 1, std::ptr::null_mut()) };
        if n == 1 {
            Ok(())
        } else {
            // SAFETY: the ring did not take it, so it is still ours and valid.
            Err(unsafe { Mbuf::from_raw(NonNull::new_unchecked(obj.cast())) })
        }
    }

    fn dequeue(&self, batch: &mut MbufBatch) -> usize {
        let have = batch.len();
        let room = (BURST - have) as u32;
        if room == 0 {
            return 0;
        }
        // SAFETY: the free slots from `have` on hold `room` pointers; only the
        // single consumer calls this; the ring transfers ownership of the n
        // mbufs it writes.
        let n = unsafe {
            dpdk_sys::rte_ring_dequeue_burst(self.raw.as_ptr(), batch.slots_mut().add(have).cast(), room, std::ptr::null_mut())
        } as usize;
        // SAFETY: slots 0..have+n now hold mbufs we own.
        unsafe { batch.set_len(have + n) };
        n
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let mut batch = MbufBatch::default();
        while self.dequeue(&mut batch) > 0 {
            batch.drain().for_each(drop);
        }
        // SAFETY: the ring is empty and nothing references it any more (&self
        // borrows ended; we are dropping it).
        unsafe { dpdk_sys::rte_ring_free(self.raw.as_ptr()) }
    }
}

/// The single consuming end of a [`Ring`], owned by one lcore.
pub struct RingConsumer<'r> {
    ring: &'r Ring,
}

impl RingConsumer<'_> {
    /// Takes up to the batch's free room; returns how many arrived.
    pub fn dequeue(&mut self, batch: &mut MbufBatch) -> usize {
        self.ring.dequeue(batch)
    }
}
