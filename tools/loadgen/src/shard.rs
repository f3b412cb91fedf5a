//! Shards: one smoltcp `Interface` + `SocketSet` each, so the cost of a
//! packet (smoltcp walks the whole set on ingress and egress) stays that of a
//! few dozen sockets whatever the total.
//!
//! Invariants: every shard owns one IPv4 address of 198.18.0.0/24 (a backend
//! address may be split over several shards, by the TCP source port of the
//! dataplane's connection); all shards share the port's MAC. A received
//! frame goes to exactly one shard (ARP replies to every shard of their
//! target address, as copies), or is dropped and counted; frames are only
//! queued (fixed-capacity inboxes), never allocated for.

use fulcrum_dataplane::dpdk::{Mbuf, MbufBatch, Mempool, TxQueue, BURST};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use std::collections::VecDeque;

use crate::app::{Backends, Clients};

/// Largest frame: a 1500-byte MTU plus the Ethernet header.
pub const MAX_FRAME: usize = 1514;
/// Frames a shard's inbox holds.
const INBOX: usize = 4 * BURST;

pub enum Role {
    Clients(Clients),
    Backends(Backends),
}

pub struct Shard {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub inbox: VecDeque<Mbuf>,
    pub role: Role,
    /// Transmit queue this shard sends on.
    pub queue: usize,
    /// Set when the application has something to do before the next tick.
    pub wake: bool,
}

impl Shard {
    pub fn new(
        mac: [u8; 6],
        addr: Ipv4Address,
        gateway: Ipv4Address,
        queue: usize,
        now: Instant,
        seed: u64,
        role: impl FnOnce(&mut SocketSet<'static>) -> Role,
    ) -> Shard {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let mut probe = Probe;
        let mut iface = Interface::new(config, &mut probe, now);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(addr.into(), 24));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        let mut sockets = SocketSet::new(Vec::new());
        let role = role(&mut sockets);
        Shard {
            iface,
            sockets,
            inbox: VecDeque::with_capacity(INBOX),
            role,
            queue,
            wake: true,
        }
    }

    /// Queues a frame; gives it back when the inbox is full.
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.inbox.len() == INBOX {
            return Err(m);
        }
        self.inbox.push_back(m);
        Ok(())
    }
}

/// The transmit side of one queue: frames smoltcp writes, sent in bursts.
pub struct Tx<'p> {
    pub queue: TxQueue<'p>,
    pub batch: MbufBatch,
    pub pool: &'p Mempool,
    pub sent: u64,
    /// Frames the device did not take, or that found no mbuf.
    pub dropped: u64,
}

impl Tx<'_> {
    pub fn push(&mut self, m: Mbuf) {
        if self.batch.is_full() {
            self.flush();
        }
        let _ = self.batch.push(m);
    }

    pub fn flush(&mut self) {
        let s = self.queue.send(&mut self.batch);
        self.sent += s.packets as u64;
        self.dropped += s.dropped as u64;
    }
}

fn capabilities() -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = MAX_FRAME;
    caps.max_burst_size = Some(BURST);
    // memif offloads nothing: checksums computed and verified in software.
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Both;
    checksum.tcp = Checksum::Both;
    caps.checksum = checksum;
    caps
}

/// A device with no frames, for `Interface::new` (it only reads capabilities).
struct Probe;

impl phy::Device for Probe {
    type RxToken<'t> = RxToken;
    type TxToken<'t> = NoTx;
    fn receive(&mut self, _: Instant) -> Option<(RxToken, NoTx)> {
        None
    }
    fn transmit(&mut self, _: Instant) -> Option<NoTx> {
        None
    }
    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }
}

pub struct NoTx;
impl phy::TxToken for NoTx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut scratch = [0u8; MAX_FRAME];
        f(&mut scratch[..len.min(MAX_FRAME)])
    }
}

/// What a shard polls: its inbox in, its queue's transmit side out.
pub struct Device<'d, 'p> {
    pub inbox: &'d mut VecDeque<Mbuf>,
    pub tx: &'d mut Tx<'p>,
}

impl<'p> phy::Device for Device<'_, 'p> {
    type RxToken<'t>
        = RxToken
    where
        Self: 't;
    type TxToken<'t>
        = TxToken<'t, 'p>
    where
        Self: 't;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_, 'p>)> {
        let m = self.inbox.pop_front()?;
        Some((RxToken(m), TxToken(self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_, 'p>> {
        Some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }
}

pub struct RxToken(Mbuf);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0.data())
    }
}

pub struct TxToken<'t, 'p>(&'t mut Tx<'p>);

impl phy::TxToken for TxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.0.pool.alloc().and_then(|mut m| m.append(len).is_some().then_some(m)) {
            Some(mut m) => {
                let r = f(m.data_mut());
                self.0.push(m);
                r
            }
            None => {
                // No mbuf: smoltcp still needs a buffer; the frame is counted
                // and lost, and TCP retransmits it.
                self.0.dropped += 1;
                let mut scratch = [0u8; MAX_FRAME];
                f(&mut scratch[..len.min(MAX_FRAME)])
            }
        }
    }
}

/// Which shards own which address of 198.18.0.0/24: by last octet, a run of
/// `count` consecutive shards from `first`.
pub struct Dispatch {
    owners: [(u16, u16); 256],
    pub unknown: u64,
    pub inbox_full: u64,
}

/// Where a received frame goes.
pub enum Target {
    One(usize),
    /// Every shard of the run (an ARP reply).
    All(usize, usize),
    Drop,
}

impl Dispatch {
    pub fn new() -> Dispatch {
        Dispatch { owners: [(0, 0); 256], unknown: 0, inbox_full: 0 }
    }

    pub fn add(&mut self, addr: Ipv4Address, first: usize, count: usize) {
        let o = addr.octets();
        self.owners[usize::from(o[3])] = (first as u16, count as u16);
    }

    pub fn classify(&self, f: &[u8]) -> Target {
        if f.len() < 42 {
            return Target::Drop;
        }
        let owner = |ip: &[u8]| -> Option<(usize, usize)> {
            if ip[..3] != [198, 18, 0] {
                return None;
            }
            let (first, count) = self.owners[usize::from(ip[3])];
            (count > 0).then_some((usize::from(first), usize::from(count)))
        };
        match [f[12], f[13]] {
            [0x08, 0x06] => {
                // ARP: target protocol address at 38..42, operation at 20..22.
                let Some((first, count)) = owner(&f[38..42]) else { return Target::Drop };
                if f[21] == 2 && count > 1 {
                    Target::All(first, count)
                } else {
                    Target::One(first)
                }
            }
            [0x08, 0x00] => {
                let Some((first, count)) = owner(&f[30..34]) else { return Target::Drop };
                if count == 1 {
                    return Target::One(first);
                }
                let ihl = usize::from(f[14] & 0x0f) * 4;
                let Some(sp) = f.get(14 + ihl..14 + ihl + 2) else { return Target::Drop };
                let sport = u16::from_be_bytes([sp[0], sp[1]]);
                Target::One(first + usize::from(sport) % count)
            }
            _ => Target::Drop,
        }
    }
}
