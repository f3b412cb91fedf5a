//! Neighbour (ARP) resolution for backends without a configured MAC.
//!
//! A bounded table of the IPv4 addresses that backends need resolved,
//! registered when a backend set is installed (so the table only ever holds
//! addresses we asked about: an ARP flood cannot fill it). Learning is from any
//! ARP packet (request or reply) whose sender is a registered address, as RFC
//! 826's "merge" rule. An entry is usable for [`REACHABLE_NS`] after its last
//! confirmation; from [`REFRESH_NS`] on, a refresh request is sent while the
//! old MAC stays in use. Requests for one address go out at most once per
//! [`RETRY_NS`].

use std::net::Ipv4Addr;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol};

pub(crate) const RETRY_NS: u64 = 1_000_000_000;
pub(crate) const REFRESH_NS: u64 = 60_000_000_000;
pub(crate) const REACHABLE_NS: u64 = 300_000_000_000;

/// Length of the ARP request frames [`crate::Forwarder::poll_arp`] writes.
pub const ARP_REQUEST_LEN: usize = 42;

#[derive(Clone, Copy, Debug)]
struct Neighbour {
    ip: Ipv4Addr,
    mac: Option<[u8; 6]>,
    confirmed_ns: u64,
    /// When the last request went out; `None`: never.
    requested_ns: Option<u64>,
    /// A packet was dropped for want of this MAC, so ask now.
    wanted: bool,
}

pub(crate) struct Neighbours {
    slots: Vec<Neighbour>,
    capacity: usize,
    cursor: usize,
    /// Any `wanted` set: lets `poll` return at once in the common case.
    pending: bool,
    next_refresh_scan_ns: u64,
}

impl Neighbours {
    pub(crate) fn new(capacity: usize) -> Self {
        Neighbours {
            slots: Vec::with_capacity(capacity),
            capacity,
            cursor: 0,
            pending: false,
            next_refresh_scan_ns: 0,
        }
    }

    /// Most addresses tracked.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity.min(u16::MAX as usize)
    }

    /// Keeps only the addresses `keep` says (with what was learned of them);
    /// the others' slots are freed. Renumbers: register again afterwards.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(Ipv4Addr) -> bool) {
        self.slots.retain(|n| keep(n.ip));
        self.cursor = 0;
        self.pending = self.slots.iter().any(|n| n.wanted || n.mac.is_none());
    }

    /// Index of `ip`'s entry, creating it; `None` when the table is full.
    pub(crate) fn register(&mut self, ip: Ipv4Addr) -> Option<u16> {
        if let Some(i) = self.slots.iter().position(|n| n.ip == ip) {
            return u16::try_from(i).ok();
        }
        if self.slots.len() >= self.capacity.min(u16::MAX as usize) {
            return None;
        }
        self.slots.push(Neighbour {
            ip,
            mac: None,
            confirmed_ns: 0,
            requested_ns: None,
            wanted: true,
        });
        self.pending = true;
        u16::try_from(self.slots.len() - 1).ok()
    }

    /// The MAC of entry `i` if known and fresh; otherwise asks for it (the
    /// request goes out on the next `poll`) and returns `None`.
    pub(crate) fn resolve(&mut self, i: u16, now_ns: u64) -> Option<[u8; 6]> {
        let n = self.slots.get_mut(usize::from(i))?;
        match n.mac {
            Some(mac) if now_ns.saturating_sub(n.confirmed_ns) < REACHABLE_NS => Some(mac),
            _ => {
                n.wanted = true;
                self.pending = true;
                None
            }
        }
    }

    /// Learns from one ARP frame; true if it updated a registered entry.
    pub(crate) fn observe(&mut self, frame: &[u8], now_ns: u64) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(frame) else { return false };
        if eth.ethertype() != EthernetProtocol::Arp {
            return false;
        }
        let Ok(arp) = ArpPacket::new_checked(eth.payload()) else { return false };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            ..
        }) = ArpRepr::parse(&arp)
        else {
            return false;
        };
        if !matches!(operation, ArpOperation::Request | ArpOperation::Reply) || !source_hardware_addr.is_unicast() {
            return false;
        }
        let Some(n) = self.slots.iter_mut().find(|n| n.ip == source_protocol_addr) else { return false };
        n.mac = Some(source_hardware_addr.0);
        n.confirmed_ns = now_ns;
        n.wanted = false;
        true
    }

    /// Writes the next due ARP request into `buf` (broadcast, from
    /// `(our_mac, our_ip)`); returns its length. `None`: nothing due, or `buf`
    /// shorter than [`ARP_REQUEST_LEN`].
    pub(crate) fn poll(&mut self, now_ns: u64, our: (EthernetAddress, Ipv4Addr), buf: &mut [u8]) -> Option<usize> {
        let refresh_scan = now_ns >= self.next_refresh_scan_ns;
        if !self.pending && !refresh_scan {
            return None;
        }
        let frame = buf.get_mut(..ARP_REQUEST_LEN)?;
        let len = self.slots.len();
        for step in 0..len {
            let i = (self.cursor + step) % len;
            let n = &mut self.slots[i];
            let may_send = n.requested_ns.is_none_or(|t| now_ns.saturating_sub(t) >= RETRY_NS);
            let stale = n.mac.is_some() && now_ns.saturating_sub(n.confirmed_ns) >= REFRESH_NS;
            // Unresolved backends are asked again at every refresh scan (each
            // RETRY_NS) with no packet waiting: the first requests may have
            // gone out before the port was reachable, and a flow's first
            // packet should not be the one that waits for resolution.
            let unresolved = n.mac.is_none();
            if may_send && (n.wanted || stale || unresolved) {
                n.requested_ns = Some(now_ns);
                n.wanted = false;
                self.cursor = (i + 1) % len;
                let target = n.ip;
                emit_request(frame, our, target);
                return Some(ARP_REQUEST_LEN);
            }
        }
        // Nothing sendable now: requests still wanted are rate limited, so
        // keep `pending` only if some are.
        self.pending = self.slots.iter().any(|n| n.wanted);
        if refresh_scan {
            self.next_refresh_scan_ns = now_ns.saturating_add(RETRY_NS);
        }
        None
    }

    pub(crate) fn mac_of(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.slots.iter().find(|n| n.ip == ip).and_then(|n| n.mac)
    }
}

fn emit_request(frame: &mut [u8], our: (EthernetAddress, Ipv4Addr), target: Ipv4Addr) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(our.0);
    eth.set_ethertype(EthernetProtocol::Arp);
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: our.0,
        source_protocol_addr: our.1,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
}
