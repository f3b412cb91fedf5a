//! Move-only packet buffers and fixed-size bursts of them.

use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// The burst size for receive and transmit.
pub const BURST: usize = 32;

/// One packet buffer, owned: dropping it returns it to its pool.
///
/// Only single-segment mbufs are exposed as byte slices (the ports are configured
/// without scatter), so [`Mbuf::data`] is the whole frame.
#[repr(transparent)]
pub struct Mbuf(NonNull<dpdk_sys::rte_mbuf>);

// SAFETY: an Mbuf is the unique owner of its buffer; moving it to another lcore
// is how DPDK hands packets between cores.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// # Safety
    /// `raw` must be a valid mbuf that nothing else owns or frees.
    pub(super) unsafe fn from_raw(raw: NonNull<dpdk_sys::rte_mbuf>) -> Mbuf {
        Mbuf(raw)
    }

    /// Gives up ownership, to a ring or driver that will hand it on or free it.
    pub(super) fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }

    fn raw(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: self.0 is a valid mbuf we own exclusively.
        unsafe { self.0.as_ref() }
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.raw().data_len)
    }

    /// The frame's bytes, mutable, without copying.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.raw();
        let (addr, off, len) = (m.buf_addr.cast::<u8>(), m.data_off, m.data_len);
        // SAFETY: as in data(); &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(addr.add(usize::from(off)), usize::from(len)) }
    }

    /// The frame's bytes, without copying.
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's data
        // room (a DPDK invariant), and we own the mbuf, so nothing writes to it.
        unsafe {
            std::slice::from_raw_parts(m.buf_addr.cast::<u8>().add(usize::from(m.data_off)), usize::from(m.data_len))
        }
    }

    /// Extends the frame by `n` bytes at the tail and returns them, or `None`
    /// when the buffer has no room.
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: we own the mbuf; rte_pktmbuf_append checks the tailroom and
        // returns NULL when there is not enough.
        let p = unsafe { dpdk_sys::rte_pktmbuf_append(self.0.as_ptr(), n16) };
        // SAFETY: a non-NULL result points at n writable bytes inside our mbuf.
        NonNull::new(p).map(|p| unsafe { std::slice::from_raw_parts_mut(p.as_ptr().cast::<u8>(), n) })
    }

    /// The whole data room, with the frame's start and length in it: for
    /// rewrites that prepend headers (encapsulation) or move the frame.
    pub fn room_mut(&mut self) -> (&mut [u8], usize, usize) {
        let m = self.raw();
        let (addr, room, off, len) = (m.buf_addr.cast::<u8>(), m.buf_len, m.data_off, m.data_len);
        // SAFETY: buf_addr .. buf_addr + buf_len is the mbuf's whole data room,
        // which we own exclusively (&mut self).
        let buf = unsafe { std::slice::from_raw_parts_mut(addr, usize::from(room)) };
        (buf, usize::from(off), usize::from(len))
    }

    /// Makes `room[start..start + len]` the frame; `false` (and no change)
    /// when that is not inside the data room.
    #[inline]
    pub fn set_frame(&mut self, start: usize, len: usize) -> bool {
        let m = self.raw();
        // The frame where it already is (an in-place rewrite: DSR, FullNAT).
        if start == usize::from(m.data_off) && len == usize::from(m.data_len) && m.pkt_len == u32::from(m.data_len) {
            return true;
        }
        let room = usize::from(m.buf_len);
        let (Ok(off), Ok(len16)) = (u16::try_from(start), u16::try_from(len)) else {
            return false;
        };
        if start.checked_add(len).is_none_or(|end| end > room) {
            return false;
        }
        // SAFETY: we own the mbuf and the new window lies inside its data room;
        // single segment, so pkt_len == data_len.
        unsafe {
            let m = self.0.as_mut();
            m.data_off = off;
            m.data_len = len16;
            m.pkt_len = u32::from(len16);
        }
        true
    }

    /// Shortens the frame to `len` bytes (no-op if it is already shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            // SAFETY: we own the mbuf; shrinking data_len/pkt_len keeps them
            // inside the data room. Single segment, so pkt_len == data_len.
            unsafe {
                let m = self.0.as_mut();
                m.data_len = len as u16;
                m.pkt_len = len as u32;
            }
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it is freed exactly once, here.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Up to [`BURST`] mbufs in a fixed array: what a queue receives into and
/// transmits from, with no heap allocation.
pub struct MbufBatch {
    bufs: [MaybeUninit<Mbuf>; BURST],
    len: usize,
}

impl Default for MbufBatch {
    fn default() -> Self {
        MbufBatch {
            bufs: [const { MaybeUninit::uninit() }; BURST],
            len: 0,
        }
    }
}

impl MbufBatch {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Total frame bytes in the batch.
    pub fn bytes(&self) -> usize {
        self.bufs[..self.len]
            .iter()
            // SAFETY: slots 0..len are initialised.
            .map(|m| unsafe { m.assume_init_ref() }.len())
            .sum()
    }

    /// Adds an mbuf; gives it back when the batch is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.is_full() {
            return Err(m);
        }
        self.bufs[self.len].write(m);
        self.len += 1;
        Ok(())
    }

    /// Moves mbufs from the front of `other` to the end of this batch, in
    /// order, as many as fit; what does not fit stays in `other` (moved to
    /// its front). Returns how many moved. The same as `push`ing them one at
    /// a time while there is room.
    #[inline]
    pub fn append_from(&mut self, other: &mut MbufBatch) -> usize {
        let n = other.len.min(BURST - self.len);
        // SAFETY: slots 0..other.len of `other` are initialised and slots
        // self.len..self.len + n of `self` are free (n <= BURST - self.len);
        // the two batches are distinct (&mut), so the ranges do not overlap.
        // Ownership of the n mbufs moves: `self` counts them, `other`
        // forgets them (consume_front moves its rest down without dropping).
        unsafe {
            std::ptr::copy_nonoverlapping(other.bufs.as_ptr(), self.bufs.as_mut_ptr().add(self.len), n);
        }
        self.len += n;
        other.consume_front(n);
        n
    }

    /// The mbufs, in order.
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: slots 0..len are initialised, and MaybeUninit<Mbuf> has
        // Mbuf's layout; the borrow keeps the batch from changing meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_mut_ptr().cast::<Mbuf>(), self.len) }
    }

    /// Takes every mbuf out, in order, leaving the batch empty.
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf> + '_ {
        let len = std::mem::replace(&mut self.len, 0);
        // Slots 0..len are initialised. len is reset first, so each slot is
        // read exactly once; Drain's Drop frees whatever the caller leaves.
        Drain { batch: self, next: 0, end: len }
    }

    /// Pointer to the slot array, for the burst calls.
    pub(super) fn slots_mut(&mut self) -> *mut *mut dpdk_sys::rte_mbuf {
        // Mbuf is repr(transparent) over a non-null pointer.
        self.bufs.as_mut_ptr().cast()
    }

    /// # Safety
    /// Slots 0..len must hold valid mbufs owned by this batch.
    pub(super) unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= BURST);
        self.len = len;
    }

    /// Forgets the first `n` mbufs (a driver took them) and moves the rest down.
    #[inline]
    pub(super) fn consume_front(&mut self, n: usize) {
        let n = n.min(self.len);
        let rest = self.len - n;
        // SAFETY: slots 0..len are initialised; the first n are now owned by the
        // driver and must not be dropped; the rest move to the front (overlapping
        // copy) and remain owned by the batch.
        unsafe {
            let p = self.bufs.as_mut_ptr();
            std::ptr::copy(p.add(n), p, rest);
        }
        self.len = rest;
    }
}

impl Drop for MbufBatch {
    fn drop(&mut self) {
        self.drain().for_each(drop);
    }
}

struct Drain<'a> {
    batch: &'a mut MbufBatch,
    next: usize,
    end: usize,
}

impl Iterator for Drain<'_> {
    type Item = Mbuf;

    fn next(&mut self) -> Option<Mbuf> {
        if self.next == self.end {
            return None;
        }
        // SAFETY: next < end <= the length the batch had; each slot is read once.
        let m = unsafe { self.batch.bufs[self.next].assume_init_read() };
        self.next += 1;
        Some(m)
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        // Free whatever the caller did not take.
        self.for_each(drop);
    }
}
