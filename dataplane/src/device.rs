//! smoltcp's `phy::Device` over DPDK mbufs, for the proxy engine.
//!
//! Receive tokens lend a received mbuf's bytes to smoltcp without copying;
//! transmit tokens let smoltcp write straight into a fresh mbuf, which joins
//! the lcore's transmit batch (sent in bursts).

use crate::counters::{LcoreCounters, LocalDrop};
use crate::dpdk::{Mbuf, MbufBatch, Mempool, TxQueue};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;

/// The IP MTUs a port may have (`[dataplane] mtu`): from IPv4's minimum
/// datagram every host must take to the usual jumbo size.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9000;
/// The port's IP MTU unless the configuration says otherwise.
pub const DEFAULT_MTU: u16 = 1500;
/// What a frame adds to its IP packet: the Ethernet header (no VLAN tag).
pub const ETH_HEADER: usize = 14;
/// Largest frame at the largest MTU.
pub const MAX_FRAME: usize = *MTU_RANGE.end() as usize + ETH_HEADER;

/// The largest frame at IP MTU `mtu`.
pub const fn frame_len(mtu: u16) -> usize {
    mtu as usize + ETH_HEADER
}

/// Bytes of room each packet buffer has for a frame at IP MTU `mtu`: one
/// frame is always one mbuf, never a chain. A multiple of 2 KiB, at least
/// DPDK's default (2048) and with 96 bytes to spare beyond the frame:
/// net_af_packet's ring frames are this size too, and hold the kernel's
/// `tpacket2_hdr` and link-layer address (the frame starts 66 bytes in)
/// before the frame. 1500 -> 2048, 9000 -> 10240.
pub const fn frame_room(mtu: u16) -> u16 {
    const SLACK: usize = 96;
    const ALIGN: usize = 2048;
    let need = frame_len(mtu) + SLACK;
    (need.div_ceil(ALIGN) * ALIGN) as u16
}

/// Frames waiting for the engine: a FIFO whose capacity is fixed at creation,
/// so pushing never allocates.
pub struct EngineInbox {
    frames: VecDeque<Mbuf>,
}

impl EngineInbox {
    pub fn with_capacity(n: usize) -> Self {
        EngineInbox {
            frames: VecDeque::with_capacity(n),
        }
    }

    /// Queues a frame; gives it back when full.
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.frames.len() == self.frames.capacity() {
            return Err(m);
        }
        self.frames.push_back(m);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// The lcore's transmit side: its queue, the batch being filled, and the pool
/// new frames come from.
pub struct TxSide<'a> {
    pub queue: TxQueue<'a>,
    pub batch: MbufBatch,
    pub pool: &'a Mempool,
    pub counters: &'a LcoreCounters,
    /// Largest frame the port carries ([`frame_len`] of its MTU).
    pub max_frame: usize,
}

impl TxSide<'_> {
    /// Queues a frame, sending the batch first when it is full.
    pub fn push(&mut self, m: Mbuf) {
        if self.batch.is_full() {
            self.flush();
        }
        // Cannot fail: the batch has room after a flush.
        let _ = self.batch.push(m);
    }

    /// Sends what is batched; counts what the device did not take.
    pub fn flush(&mut self) {
        let sent = self.queue.send(&mut self.batch);
        self.counters.tx_packets.add(sent.packets as u64);
        self.counters.tx_bytes.add(sent.bytes as u64);
        self.counters.drop_local(LocalDrop::TxFull, sent.dropped as u64);
    }
}

/// The device the engine polls: frames from the inbox in, the transmit side out.
pub struct MbufDevice<'d, 'a> {
    pub inbox: &'d mut EngineInbox,
    pub tx: &'d mut TxSide<'a>,
}

impl<'a> phy::Device for MbufDevice<'_, 'a> {
    type RxToken<'t>
        = RxToken
    where
        Self: 't;
    type TxToken<'t>
        = TxToken<'t, 'a>
    where
        Self: 't;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let m = self.inbox.frames.pop_front()?;
        Some((RxToken(m), TxToken(self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.tx.max_frame;
        caps.max_burst_size = Some(crate::dpdk::BURST);
        // No device offloads anything (net_tap, af_packet and af_xdp cannot;
        // a NIC's offloads are not enabled): all checksums are computed and
        // verified in software. A frame whose checksum the kernel left
        // unfinished (CHECKSUM_PARTIAL through a veth: see softdev) fails
        // here and is dropped, counted by the engine.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        checksum.tcp = Checksum::Both;
        caps.checksum = checksum;
        caps
    }
}

/// Lends a received mbuf's bytes; the mbuf is freed when smoltcp is done.
pub struct RxToken(Mbuf);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0.data())
    }
}

/// Writes a frame straight into a fresh mbuf.
pub struct TxToken<'t, 'a>(&'t mut TxSide<'a>);

impl phy::TxToken for TxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let frame = self.0.pool.alloc().and_then(|mut m| m.append(len).is_some().then_some(m));
        match frame {
            Some(mut m) => {
                let r = f(m.data_mut());
                self.0.push(m);
                r
            }
            None => {
                // Pool exhausted (or an oversized frame): smoltcp must still
                // be given a buffer; the frame is counted and discarded, and
                // TCP retransmits it.
                self.0.counters.drop_local(LocalDrop::TxNoMbuf, 1);
                let mut scratch = [0u8; MAX_FRAME];
                let len = len.min(MAX_FRAME);
                f(&mut scratch[..len])
            }
        }
    }
}
