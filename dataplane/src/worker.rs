//! One lcore's run-to-completion loop over its own RX/TX queue pair.
//!
//! Each received frame is classified once: ARP requests and pings to our
//! addresses are answered in place; TCP for a proxy VIP, or for a backend
//! connection's local port, goes to the proxy engine of the lcore that owns
//! the connection — this lcore's, or another's through that lcore's handover
//! ring (net_tap has no RSS, so the kernel's queue choice is not ours).

use crate::counters::{LcoreCounters, LocalDrop};
use crate::device::{EngineInbox, MbufDevice, TxSide};
use crate::dpdk::{Mbuf, MbufBatch, Ring, RingConsumer, RxQueue};
use crate::stats::EngineReport;
use crossbeam::queue::ArrayQueue;
use fulcrum_packet::{classify, emit_arp_reply, respond, Classified, DropReason, Local, Verdict, ARP_FRAME_LEN};
use fulcrum_proxy::{owner_of_flow, owner_of_port, Engine};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where proxy-mode TCP goes, shared by every lcore.
pub struct Steering<'a> {
    /// This lcore's index among the workers.
    pub me: usize,
    pub lcores: usize,
    /// Proxy VIP endpoints.
    pub vips: &'a [(Ipv4Addr, u16)],
    pub own_addr: Ipv4Addr,
    /// Local ports of backend connections.
    pub local_ports: (u16, u16),
    /// Every lcore's handover ring, indexed by lcore index.
    pub rings: &'a [Ring],
}

impl Steering<'_> {
    /// The lcore owning a TCP segment, or `None` when nothing serves it.
    fn owner(&self, src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Option<usize> {
        if self.vips.contains(&(dst, dst_port)) {
            Some(owner_of_flow(src, src_port, dst, dst_port, self.lcores))
        } else if dst == self.own_addr && (self.local_ports.0..self.local_ports.1).contains(&dst_port) {
            Some(owner_of_port(dst_port, self.lcores))
        } else {
            None
        }
    }
}

/// The proxy side of a worker; absent when no VIP is in proxy mode.
pub struct ProxySide<'a> {
    pub engine: Engine,
    pub steering: Steering<'a>,
    pub handover: RingConsumer<'a>,
    pub inbox: EngineInbox,
    /// Latest counters for the stats writer (lock-free, newest wins).
    pub reports: &'a ArrayQueue<EngineReport>,
}

pub struct Worker<'a> {
    pub rx: RxQueue<'a>,
    pub tx: TxSide<'a>,
    pub local: Local<'a>,
    pub counters: &'a LcoreCounters,
    pub stop: &'a AtomicBool,
    pub backoff: Backoff,
    pub proxy: Option<ProxySide<'a>>,
}

/// How often an lcore publishes its engine's counters.
const REPORT_PERIOD: Duration = Duration::from_millis(200);

impl Worker<'_> {
    /// Polls until `stop` is set. Every mbuf is sent, handed to another lcore,
    /// or freed within the iteration that received it, so nothing is held on
    /// return but the engine's own state, which drops with it.
    pub fn run(mut self) {
        let start = Instant::now();
        let mut next_report = start;
        let mut batch = MbufBatch::default();
        while !self.stop.load(Ordering::Relaxed) {
            let mut busy = false;
            if self.rx.recv(&mut batch) > 0 {
                busy = true;
                for m in batch.drain() {
                    self.dispatch(m);
                }
            }
            let mut idle_for = None;
            if let Some(p) = &mut self.proxy {
                if p.handover.dequeue(&mut batch) > 0 {
                    busy = true;
                    for m in batch.drain() {
                        if p.inbox.push(m).is_err() {
                            self.counters.drop_local(LocalDrop::EngineInboxFull, 1);
                        }
                    }
                }
                let now = Instant::now();
                let stamp = smoltcp::time::Instant::from_micros((now - start).as_micros() as i64);
                let due = p.engine.poll_at().is_some_and(|t| t <= stamp);
                if !p.inbox.is_empty() || due {
                    busy = true;
                    let mut device = MbufDevice {
                        inbox: &mut p.inbox,
                        tx: &mut self.tx,
                    };
                    p.engine.poll(stamp, &mut device);
                }
                idle_for = p.engine.poll_delay(stamp).map(|d| Duration::from_micros(d.total_micros()));
                if now >= next_report {
                    next_report = now + REPORT_PERIOD;
                    p.reports.force_push(EngineReport::of(&p.engine));
                }
            }
            self.tx.flush();
            if busy {
                self.backoff.reset();
            } else {
                self.backoff.idle(idle_for);
            }
        }
        if let Some(p) = &self.proxy {
            p.reports.force_push(EngineReport::of(&p.engine));
        }
    }

    fn dispatch(&mut self, m: Mbuf) {
        self.counters.rx_packets.add(1);
        self.counters.rx_bytes.add(m.len() as u64);
        let class = classify(m.data(), &self.local);
        match (class, &mut self.proxy) {
            (Ok(Classified::Tcp { ip, src_port, dst_port }), Some(p)) => {
                match p.steering.owner(ip.src, src_port, ip.dst, dst_port) {
                    Some(owner) if owner == p.steering.me => {
                        if p.inbox.push(m).is_err() {
                            self.counters.drop_local(LocalDrop::EngineInboxFull, 1);
                        }
                    }
                    Some(owner) => {
                        if p.steering.rings[owner].enqueue(m).is_err() {
                            self.counters.drop_local(LocalDrop::HandoverFull, 1);
                        }
                    }
                    None => self.counters.drop_packet(DropReason::NoService),
                }
            }
            (Ok(Classified::ArpReply { .. }), Some(_)) => self.share_with_engines(m),
            (Ok(Classified::ArpRequest { sender_mac, sender_ip, .. }), Some(p)) => {
                // smoltcp learns neighbours only from ARP aimed at its own
                // address; what this request reveals reaches every engine as
                // the reply it implies, so no engine has to ask the requester
                // (a client about to connect) again.
                let own = (self.local.mac, p.steering.own_addr);
                let hint = self.tx.pool.alloc().and_then(|mut h| {
                    emit_arp_reply(h.append(ARP_FRAME_LEN)?, (sender_mac, sender_ip), own)?;
                    Some(h)
                });
                match hint {
                    Some(h) => self.share_with_engines(h),
                    None => self.counters.drop_local(LocalDrop::ArpCopyNoMbuf, 1),
                }
                self.answer(m);
            }
            (Ok(_), _) => self.answer(m),
            (Err(reason), _) => self.counters.drop_packet(reason),
        }
    }

    /// Gives an ARP frame to this lcore's engine and a copy to every other's:
    /// each engine keeps its own neighbour cache.
    fn share_with_engines(&mut self, m: Mbuf) {
        let Some(p) = &mut self.proxy else {
            return;
        };
        for (_, ring) in p.steering.rings.iter().enumerate().filter(|(i, _)| *i != p.steering.me) {
            let copy = self.tx.pool.alloc().and_then(|mut c| {
                c.append(m.len())?.copy_from_slice(m.data());
                Some(c)
            });
            match copy.map(|c| ring.enqueue(c)) {
                Some(Ok(())) => {}
                Some(Err(_)) => self.counters.drop_local(LocalDrop::HandoverFull, 1),
                None => self.counters.drop_local(LocalDrop::ArpCopyNoMbuf, 1),
            }
        }
        if p.inbox.push(m).is_err() {
            self.counters.drop_local(LocalDrop::EngineInboxFull, 1);
        }
    }

    /// ARP requests and pings are answered in place; the rest is dropped.
    fn answer(&mut self, mut m: Mbuf) {
        match respond(m.data_mut(), &self.local) {
            Verdict::Reply { len } => {
                m.truncate(len);
                self.tx.push(m);
            }
            Verdict::Drop(reason) => self.counters.drop_packet(reason),
        }
    }
}

/// Idle back-off for software mode: after a run of empty polls the lcore
/// sleeps, doubling the sleep up to a cap (and never past the engine's next
/// timer), so an idle dataplane leaves a small machine usable. Any work resets
/// it. Hardware mode busy-polls.
pub struct Backoff {
    enabled: bool,
    empty_polls: u32,
    sleep: Duration,
}

impl Backoff {
    /// Empty polls before the first sleep: keeps bursts at full speed.
    const SPIN_POLLS: u32 = 1024;
    const FIRST_SLEEP: Duration = Duration::from_micros(10);
    /// Caps the latency an idle lcore adds to the first packet of a burst.
    const MAX_SLEEP: Duration = Duration::from_millis(1);

    pub fn new(enabled: bool) -> Backoff {
        Backoff {
            enabled,
            empty_polls: 0,
            sleep: Self::FIRST_SLEEP,
        }
    }

    fn idle(&mut self, until_timer: Option<Duration>) {
        if !self.enabled {
            return;
        }
        if self.empty_polls < Self::SPIN_POLLS {
            self.empty_polls += 1;
            std::hint::spin_loop();
            return;
        }
        let sleep = until_timer.map_or(self.sleep, |t| t.min(self.sleep));
        if !sleep.is_zero() {
            std::thread::sleep(sleep);
        }
        self.sleep = (self.sleep * 2).min(Self::MAX_SLEEP);
    }

    fn reset(&mut self) {
        self.empty_polls = 0;
        self.sleep = Self::FIRST_SLEEP;
    }
}
