//! One lcore's run-to-completion loop over its own RX/TX queue pair.

use crate::counters::{LcoreCounters, LocalDrop};
use crate::dpdk::{MbufBatch, RxQueue, TxQueue};
use fulcrum_packet::{respond, Local, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Worker<'a> {
    pub rx: RxQueue<'a>,
    pub tx: TxQueue<'a>,
    pub local: Local<'a>,
    pub counters: &'a LcoreCounters,
    pub stop: &'a AtomicBool,
    pub backoff: Backoff,
}

impl Worker<'_> {
    /// Polls until `stop` is set. Every received mbuf is either sent or freed
    /// within the iteration that received it, so nothing is held on return.
    pub fn run(mut self) {
        let mut rx_batch = MbufBatch::default();
        let mut tx_batch = MbufBatch::default();
        while !self.stop.load(Ordering::Relaxed) {
            if self.rx.recv(&mut rx_batch) == 0 {
                self.backoff.idle();
                continue;
            }
            self.backoff.reset();
            for mut m in rx_batch.drain() {
                self.counters.rx_packets.add(1);
                self.counters.rx_bytes.add(m.len() as u64);
                match respond(m.data_mut(), &self.local) {
                    Verdict::Reply { len } => {
                        m.truncate(len);
                        // At most BURST frames arrive per iteration, so the
                        // transmit batch always has room.
                        if tx_batch.push(m).is_err() {
                            self.counters.drop_local(LocalDrop::TxFull, 1);
                        }
                    }
                    Verdict::Drop(reason) => self.counters.drop_packet(reason),
                }
            }
            let sent = self.tx.send(&mut tx_batch);
            self.counters.tx_packets.add(sent.packets as u64);
            self.counters.tx_bytes.add(sent.bytes as u64);
            self.counters.drop_local(LocalDrop::TxFull, sent.dropped as u64);
        }
    }
}

/// Idle back-off for software mode: after a run of empty polls the lcore
/// sleeps, doubling the sleep up to a cap, so an idle dataplane leaves a small
/// machine usable. Any received packet resets it. Hardware mode busy-polls.
pub struct Backoff {
    enabled: bool,
    empty_polls: u32,
    sleep_us: u64,
}

impl Backoff {
    /// Empty polls before the first sleep: keeps bursts at full speed.
    const SPIN_POLLS: u32 = 1024;
    const FIRST_SLEEP_US: u64 = 10;
    /// Caps the latency an idle lcore adds to the first packet of a burst.
    const MAX_SLEEP_US: u64 = 1000;

    pub fn new(enabled: bool) -> Backoff {
        Backoff {
            enabled,
            empty_polls: 0,
            sleep_us: Self::FIRST_SLEEP_US,
        }
    }

    fn idle(&mut self) {
        if !self.enabled {
            return;
        }
        if self.empty_polls < Self::SPIN_POLLS {
            self.empty_polls += 1;
            std::hint::spin_loop();
            return;
        }
        std::thread::sleep(Duration::from_micros(self.sleep_us));
        self.sleep_us = (self.sleep_us * 2).min(Self::MAX_SLEEP_US);
    }

    fn reset(&mut self) {
        self.empty_polls = 0;
        self.sleep_us = Self::FIRST_SLEEP_US;
    }
}
