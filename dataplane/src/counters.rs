//! Per-lcore counters: written by their own lcore only, read by anyone;
//! except the two of its af_packet RX ring the kernel keeps
//! ([`LcoreCounters::rx_ring_frames`], [`LocalDrop::RxRingFull`]), which the
//! control thread alone writes (still one writer each).
//!
//! Each lcore has its own cache-line-aligned block, so counting costs a plain
//! load and store (no atomic read-modify-write, no sharing between cores);
//! readers sum the blocks. This is the layout the shared-memory stats segment
//! will publish.

use fulcrum_packet::DropReason;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter with a single writer.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning lcore may call this: the load and store are
    /// not one atomic step, which is correct because nobody else writes.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Drops the dataplane makes itself, beyond what packet parsing decides.
#[derive(Clone, Copy)]
pub enum LocalDrop {
    /// The transmit queue was full; the frame was freed.
    TxFull,
    /// The pool had no mbuf for a frame the proxy engine sent (TCP resends it).
    TxNoMbuf,
    /// Another lcore's handover ring was full.
    HandoverFull,
    /// More frames arrived for the engine in one iteration than its inbox holds.
    EngineInboxFull,
    /// No mbuf to pass ARP news (a reply, or what a request revealed) to an engine.
    ArpCopyNoMbuf,
    /// The forwarder returned a frame window outside the mbuf (a bug guard).
    ForwardBadFrame,
    /// af_packet: the kernel found this lcore's RX ring full and dropped the
    /// frame (the socket's `tp_drops`; DPDK's PMD does not count these).
    /// Added by the control thread, which reads the kernel's counts.
    RxRingFull,
}

impl LocalDrop {
    const ALL: [LocalDrop; 7] = [
        LocalDrop::TxFull,
        LocalDrop::TxNoMbuf,
        LocalDrop::HandoverFull,
        LocalDrop::EngineInboxFull,
        LocalDrop::ArpCopyNoMbuf,
        LocalDrop::ForwardBadFrame,
        LocalDrop::RxRingFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LocalDrop::TxFull => "tx_full",
            LocalDrop::TxNoMbuf => "tx_no_mbuf",
            LocalDrop::HandoverFull => "handover_full",
            LocalDrop::EngineInboxFull => "engine_inbox_full",
            LocalDrop::ArpCopyNoMbuf => "arp_copy_no_mbuf",
            LocalDrop::ForwardBadFrame => "forward_bad_frame",
            LocalDrop::RxRingFull => "rx_ring_full",
        }
    }
}

#[repr(align(64))]
#[derive(Default)]
pub struct LcoreCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Nanoseconds spent in loop iterations that had work (frames received
    /// or handed over, an engine poll): the lcore's load, which its thread's
    /// CPU time does not show while it busy-polls.
    pub busy_ns: Counter,
    /// Frames this lcore received but another owns, passed to that lcore's ring.
    pub handed_over: Counter,
    /// Frames taken from this lcore's ring: those handed over to it, and
    /// copies of the ARP frames other lcores received (every engine learns
    /// its neighbours from them).
    pub taken_over: Counter,
    /// af_packet: frames the kernel offered to this lcore's RX ring,
    /// delivered or dropped (the socket's `tp_packets`); 0 on other devices.
    /// Written by the control thread. At rest, `rx_packets` (this queue's
    /// frames) plus `rx_ring_full` drops equals this.
    pub rx_ring_frames: Counter,
    packet_drops: [Counter; DropReason::COUNT],
    local_drops: [Counter; LocalDrop::ALL.len()],
}

impl LcoreCounters {
    #[inline]
    pub fn drop_packet(&self, reason: DropReason) {
        self.packet_drops[reason.index()].add(1);
    }

    #[inline]
    pub fn drop_local(&self, reason: LocalDrop, n: u64) {
        self.local_drops[reason as usize].add(n);
    }

    pub fn snapshot(&self, lcore: u32) -> LcoreSnapshot {
        let drops = DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.packet_drops[r.index()].get()))
            .chain(LocalDrop::ALL.iter().map(|r| (r.name(), self.local_drops[*r as usize].get())))
            .collect();
        LcoreSnapshot {
            lcore,
            rx_packets: self.rx_packets.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_packets: self.tx_packets.get(),
            tx_bytes: self.tx_bytes.get(),
            busy_ns: self.busy_ns.get(),
            handed_over: self.handed_over.get(),
            taken_over: self.taken_over.get(),
            rx_ring_frames: self.rx_ring_frames.get(),
            drops,
        }
    }
}

/// One lcore's counters at one moment, for the stats file and logs.
#[derive(Serialize)]
pub struct LcoreSnapshot {
    pub lcore: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub busy_ns: u64,
    pub handed_over: u64,
    pub taken_over: u64,
    pub rx_ring_frames: u64,
    /// Every drop reason, zero or not, so readers can rely on the keys.
    pub drops: BTreeMap<&'static str, u64>,
}

impl LcoreSnapshot {
    /// A one-line summary: totals plus the non-zero drop reasons.
    pub fn summary(&self) -> String {
        let drops: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, &v)| v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "lcore {}: rx {} pkts {} bytes, tx {} pkts {} bytes, busy {:.3} s, drops: {}",
            self.lcore,
            self.rx_packets,
            self.rx_bytes,
            self.tx_packets,
            self.tx_bytes,
            self.busy_ns as f64 / 1e9,
            if drops.is_empty() { "none".into() } else { drops.join(" ") }
        )
    }
}
