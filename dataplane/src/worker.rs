//! One lcore's run-to-completion loop over its own RX/TX queue pair.
//!
//! Each received frame goes to the lcore that owns its flow — this one, or
//! another through that lcore's handover ring (net_tap has no RSS, so the
//! kernel's queue choice is not ours). There, a forwarding VIP's packets are
//! rewritten by the forwarder; TCP for a proxy VIP, or for a backend
//! connection's local port, goes to the proxy engine; ARP requests and pings
//! to our addresses are answered in place; the rest is dropped and counted.

use crate::counters::{LcoreCounters, LocalDrop};
use crate::device::{EngineInbox, MbufDevice, TxSide};
use crate::dpdk::{prefetch, Mbuf, MbufBatch, QuiescentToken, Ring, RingConsumer, RxQueue, BURST};
use crate::control::{self, Applied, LcoreAck};
use crate::stats::{EngineReport, ForwardReport, LcoreReport};
use fulcrum_packet::EthernetAddress;
use std::sync::Arc;
use crossbeam::queue::ArrayQueue;
use fulcrum_packet::{classify, emit_arp_reply, respond, Classified, DropReason, Local, Verdict, ARP_FRAME_LEN};
use fulcrum_forward::{Forwarder, Verdict as FwdVerdict, ARP_REQUEST_LEN};
use fulcrum_model::steer::{owner_of_flow, owner_of_port};
use fulcrum_model::VipRefusal;
use fulcrum_proxy::Engine;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Passing frames between lcores; absent when no VIP is configured.
pub struct Handover<'a> {
    /// This lcore's index among the workers.
    pub me: usize,
    pub lcores: usize,
    /// Every lcore's ring, indexed by lcore index.
    pub rings: &'a [Ring],
    /// This lcore's end of its own ring.
    pub inbound: RingConsumer<'a>,
}

/// Which proxy-mode TCP segments are the engines', and whose.
pub struct ProxySteering {
    /// Proxy VIP endpoints.
    pub vips: Vec<(Ipv4Addr, u16)>,
    pub own_addr: Ipv4Addr,
    /// Local ports of backend connections.
    pub local_ports: (u16, u16),
}

impl ProxySteering {
    /// The lcore owning a TCP segment, or `None` when nothing serves it.
    fn owner(&self, src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, lcores: usize) -> Option<usize> {
        if self.vips.contains(&(dst, dst_port)) {
            Some(owner_of_flow(src, src_port, dst, dst_port, lcores))
        } else if dst == self.own_addr && (self.local_ports.0..self.local_ports.1).contains(&dst_port) {
            Some(owner_of_port(dst_port, lcores))
        } else {
            None
        }
    }
}

/// The proxy side of a worker; absent when no VIP is in proxy mode.
pub struct ProxySide {
    pub engine: Engine,
    pub steering: ProxySteering,
    pub inbox: EngineInbox,
}

/// The forwarding side of a worker; absent when no VIP forwards packets.
pub struct ForwardSide {
    pub forwarder: Forwarder,
}

pub struct Worker<'a> {
    pub lcore: u32,
    pub rx: RxQueue<'a>,
    pub tx: TxSide<'a>,
    pub mac: EthernetAddress,
    /// Addresses answered for: our own first, then VIPs and SNAT addresses
    /// (replaced with each installed generation).
    pub addrs: Vec<Ipv4Addr>,
    /// This lcore's counter block in the shared segment, when there is one.
    pub shm: Option<fulcrum_shm::LcoreCounters<'a>>,
    /// New configuration generations from the control thread (newest wins);
    /// the first is the file's.
    pub commands: &'a ArrayQueue<Arc<Applied>>,
    /// Where this lcore says what it installed.
    pub acks: &'a ArrayQueue<LcoreAck>,
    /// The generation installed last, if any.
    pub applied: Option<Arc<Applied>>,
    pub counters: &'a LcoreCounters,
    pub stop: &'a AtomicBool,
    pub backoff: Backoff,
    pub handover: Option<Handover<'a>>,
    pub proxy: Option<ProxySide>,
    pub forward: Option<ForwardSide>,
    /// Latest service counters for the stats writer (lock-free, newest wins).
    pub reports: &'a ArrayQueue<LcoreReport>,
    /// On a net_memif port: this lcore's quiescent points for the port's
    /// disconnect guard (see `dpdk::MemifGuard`).
    pub quiescent: Option<QuiescentToken>,
}

/// How often an lcore publishes its engine's counters.
const REPORT_PERIOD: Duration = Duration::from_millis(200);

/// How often an lcore reclaims expired connection-tracking entries, and how
/// many table slots each pass looks at ([`Forwarder::sweep`] resumes where
/// the previous pass stopped). Expiry is lazy on the packet path (an expired
/// entry is reclaimed when its flow or its bucket is next touched), so without
/// this the entries of a flood's junk flows would stay counted in
/// `conntrack_entries`, and in the table's pressure level, until overwritten.
/// 1024 slots a millisecond: a 1M-entry table is covered about once a
/// second; a pass reads 32 signature lines (and the entry of each expired
/// way it frees), a few microseconds, taken at most once a millisecond.
const SWEEP_PERIOD: Duration = Duration::from_millis(1);
const SWEEP_SLOTS: usize = 1024;

impl Worker<'_> {
    /// Polls until `stop` is set. Every mbuf is sent, handed to another lcore,
    /// or freed within the iteration that received it, so nothing is held on
    /// return but the engine's own state, which drops with it.
    pub fn run(mut self) {
        let start = Instant::now();
        // The proxy engine's clock: time since this loop started (each
        // engine has its own origin; its snapshots' instants are on it).
        let clock = |t: Instant| smoltcp::time::Instant::from_micros((t - start).as_micros() as i64);
        let mut next_report = start;
        let mut next_sweep = start;
        let mut batch = MbufBatch::default();
        // Start of the previous iteration, when it had work: its length is
        // measured by this iteration's clock read, not an extra one.
        let mut busy_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(q) = &self.quiescent {
                q.mark();
            }
            let now = Instant::now();
            if let Some(t) = busy_since.take() {
                self.counters.busy_ns.add((now - t).as_nanos() as u64);
            }
            let now_ns = (now - start).as_nanos() as u64;
            let mut busy = false;
            self.install_new_generation();
            if self.rx.recv(&mut batch) > 0 {
                busy = true;
                self.counters.rx_packets.add(batch.len() as u64);
                self.counters.rx_bytes.add(batch.bytes() as u64);
                self.receive(&mut batch, now_ns, false);
            }
            if self.handover.as_mut().is_some_and(|h| h.inbound.dequeue(&mut batch) > 0) {
                busy = true;
                self.counters.taken_over.add(batch.len() as u64);
                self.receive(&mut batch, now_ns, true);
            }
            if let Some(f) = &mut self.forward {
                let mut arp = [0u8; ARP_REQUEST_LEN];
                while let Some(len) = f.forwarder.poll_arp(now_ns, &mut arp) {
                    match self.tx.pool.alloc().and_then(|mut m| {
                        m.append(len)?.copy_from_slice(&arp[..len]);
                        Some(m)
                    }) {
                        Some(m) => self.tx.push(m),
                        None => self.counters.drop_local(LocalDrop::TxNoMbuf, 1),
                    }
                }
            }
            if now >= next_sweep {
                next_sweep = now + SWEEP_PERIOD;
                if let Some(f) = &mut self.forward {
                    f.forwarder.sweep(now_ns, SWEEP_SLOTS);
                }
            }
            let mut idle_for = None;
            if let Some(p) = &mut self.proxy {
                let stamp = clock(now);
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
            }
            if now >= next_report {
                next_report = now + REPORT_PERIOD;
                self.report(clock(now));
            }
            self.tx.flush();
            if busy {
                busy_since = Some(now);
                self.backoff.reset();
            } else {
                self.backoff.idle(idle_for);
            }
        }
        self.report(clock(Instant::now()));
    }

    /// Publishes the counters; `clock` is the engine's clock now (what
    /// `flood_since` is measured against).
    fn report(&self, clock: smoltcp::time::Instant) {
        let report = (self.proxy.is_some() || self.forward.is_some()).then(|| LcoreReport {
            proxy: self.proxy.as_ref().map(|p| EngineReport::of(&p.engine, clock)),
            forward: self.forward.as_ref().map(|f| ForwardReport::of(&f.forwarder)),
        });
        if let Some(block) = &self.shm {
            let ids = self.applied.as_ref().map(|a| &a.ids);
            control::publish(block, &self.counters.snapshot(self.lcore), report.as_ref(), ids);
        }
        if let Some(report) = report {
            self.reports.force_push(report);
        }
    }

    /// Installs the newest configuration generation, if one is waiting: the
    /// engine keeps established connections and the forwarder its tracked
    /// flows; new ones follow the new tables. Acknowledged to the control
    /// thread only once installed (with the VIPs this lcore left out).
    fn install_new_generation(&mut self) {
        let Some(applied) = self.commands.pop() else {
            return;
        };
        if let Some(p) = &mut self.proxy {
            match p.engine.reconfigure_with(&applied.tables) {
                Ok(r) => tracing::info!(
                    "lcore {}: generation {} installed ({} VIPs added, {} removed, {} backends added, {} removed, {} connections draining)",
                    self.lcore,
                    applied.generation,
                    r.vips_added,
                    r.vips_removed,
                    r.backends_added,
                    r.backends_removed,
                    r.draining_connections
                ),
                Err(e) => {
                    // Not acknowledged: the generation never counts as applied.
                    tracing::error!("lcore {}: generation {} refused: {e}", self.lcore, applied.generation);
                    return;
                }
            }
            p.steering.vips.clone_from(&applied.proxy_vips);
        }
        let mut refused = Vec::new();
        if let Some(f) = &mut self.forward {
            for (id, e) in f.forwarder.install(&applied.forward).refused {
                let vip = applied.forward.iter().find(|v| v.id() == id).map(|v| v.name()).unwrap_or_default();
                refused.push(VipRefusal { id, vip, reason: format!("lcore {}: {e}", self.lcore) });
            }
        }
        self.addrs.clone_from(&applied.addrs);
        self.acks.force_push(LcoreAck { generation: applied.generation, refused });
        self.applied = Some(applied);
    }

    /// Hands `m` to `owner`'s ring; false when that is this lcore (or the
    /// frame already came through a ring: it is processed here, never bounced).
    fn hand_over(&mut self, m: Mbuf, owner: usize, from_ring: bool) -> Result<(), Mbuf> {
        let Some(h) = &self.handover else {
            return Err(m);
        };
        if owner == h.me || from_ring {
            return Err(m);
        }
        match h.rings[owner].enqueue(m) {
            Ok(()) => self.counters.handed_over.add(1),
            Err(_) => self.counters.drop_local(LocalDrop::HandoverFull, 1),
        }
        Ok(())
    }

    /// Handles a burst (from the port, or from another lcore's handover).
    /// Forwarding VIPs' frames are the forwarder's, on the lcore owning their
    /// flow, a burst at a time; what it hands back (not a forwarding frame)
    /// goes on to [`Worker::dispatch`].
    fn receive(&mut self, batch: &mut MbufBatch, now_ns: u64, from_ring: bool) {
        if !self.forward.as_ref().is_some_and(|f| f.forwarder.has_vips()) {
            batch.drain().for_each(|m| self.dispatch(m, now_ns, from_ring));
            return;
        }
        // With one lcore every flow is ours: skip steering (a second parse
        // and hash).
        if !from_ring && self.handover.as_ref().is_some_and(|h| h.lcores > 1) {
            let mut mine = MbufBatch::default();
            for m in batch.drain() {
                let owner = self.forward.as_ref().and_then(|f| f.forwarder.owner(m.data()));
                let m = match owner {
                    Some(owner) => match self.hand_over(m, owner, from_ring) {
                        Ok(()) => continue,
                        Err(m) => m,
                    },
                    None => m,
                };
                // Cannot fail: `mine` holds at most what `batch` did.
                let _ = mine.push(m);
            }
            std::mem::swap(batch, &mut mine);
        }
        let mut verdicts = [FwdVerdict::NotMine; BURST];
        if let Some(f) = &mut self.forward {
            f.forwarder.process_burst(now_ns, batch.as_mut_slice(), &mut verdicts, prefetch);
        }
        // The usual burst: every frame forwarded. Its frames join the
        // transmit batch at once, in order (what the loop below does one
        // push at a time); any other verdict, or a frame window outside its
        // mbuf, takes the loop (set_frame again is a no-op then).
        let mut all_sent = true;
        for (m, v) in batch.as_mut_slice().iter_mut().zip(&verdicts) {
            all_sent &= match *v {
                FwdVerdict::Transmit { start, len } => m.set_frame(start as usize, len as usize),
                _ => false,
            };
        }
        if all_sent {
            self.tx.batch.append_from(batch);
            if batch.len() > 0 {
                // The transmit batch is full: sent, as push does, and the
                // rest (at most a burst) fits in the empty batch.
                self.tx.flush();
                self.tx.batch.append_from(batch);
            }
            return;
        }
        for (mut m, v) in batch.drain().zip(verdicts) {
            match v {
                FwdVerdict::NotMine => self.dispatch(m, now_ns, from_ring),
                FwdVerdict::Transmit { start, len } => {
                    if m.set_frame(start as usize, len as usize) {
                        self.tx.push(m);
                    } else {
                        self.counters.drop_local(LocalDrop::ForwardBadFrame, 1);
                    }
                }
                // Counted by the forwarder.
                FwdVerdict::Drop(_) => {}
            }
        }
    }

    /// Everything but the forwarding modes: proxy-mode TCP to its engine,
    /// ARP and pings answered, the rest dropped and counted.
    fn dispatch(&mut self, m: Mbuf, now_ns: u64, from_ring: bool) {
        let class = classify(m.data(), &Local { mac: self.mac, addrs: &self.addrs });
        let lcores = self.handover.as_ref().map_or(1, |h| h.lcores);
        match (class, &mut self.proxy) {
            (Ok(Classified::Tcp { ip, src_port, dst_port }), Some(p)) => {
                match p.steering.owner(ip.src, src_port, ip.dst, dst_port, lcores) {
                    Some(owner) => {
                        if let Err(m) = self.hand_over(m, owner, from_ring) {
                            if let Some(p) = &mut self.proxy {
                                if p.inbox.push(m).is_err() {
                                    self.counters.drop_local(LocalDrop::EngineInboxFull, 1);
                                }
                            }
                        }
                    }
                    None => self.counters.drop_packet(DropReason::NoService),
                }
            }
            (Ok(Classified::ArpReply { .. }), _) => self.share_arp(m, now_ns, from_ring),
            (Ok(Classified::ArpRequest { sender_mac, sender_ip, .. }), _) => {
                // TCP stacks and forwarders learn neighbours from ARP replies
                // aimed at us (smoltcp from nothing else); what this request
                // reveals reaches every lcore as the reply it implies, so none
                // has to ask the requester (a client about to connect) again.
                let own = (self.mac, self.addrs[0]);
                let hint = self.tx.pool.alloc().and_then(|mut h| {
                    emit_arp_reply(h.append(ARP_FRAME_LEN)?, (sender_mac, sender_ip), own)?;
                    Some(h)
                });
                match hint {
                    Some(h) => self.share_arp(h, now_ns, from_ring),
                    None => self.counters.drop_local(LocalDrop::ArpCopyNoMbuf, 1),
                }
                self.answer(m);
            }
            (Ok(_), _) => self.answer(m),
            (Err(reason), _) => self.counters.drop_packet(reason),
        }
    }

    /// Gives ARP news (a reply aimed at us) to this lcore's forwarder and
    /// engine, and a copy to every other lcore's: each keeps its own
    /// neighbour cache. A copy that came through a ring stays here.
    fn share_arp(&mut self, m: Mbuf, now_ns: u64, from_ring: bool) {
        if self.proxy.is_none() && self.forward.is_none() {
            self.counters.drop_packet(DropReason::ArpUnsupported);
            return;
        }
        if let (Some(h), false) = (&self.handover, from_ring) {
            for ring in h.rings.iter().enumerate().filter(|(i, _)| *i != h.me).map(|(_, r)| r) {
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
        }
        if let Some(f) = &mut self.forward {
            f.forwarder.observe_arp(now_ns, m.data());
        }
        if let Some(p) = &mut self.proxy {
            if p.inbox.push(m).is_err() {
                self.counters.drop_local(LocalDrop::EngineInboxFull, 1);
            }
        }
    }

    /// ARP requests and pings are answered in place; the rest is dropped.
    fn answer(&mut self, mut m: Mbuf) {
        match respond(m.data_mut(), &Local { mac: self.mac, addrs: &self.addrs }) {
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
