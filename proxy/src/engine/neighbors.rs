//! Neighbours: the engine keeps its on-link backends and gateway resolved
//! with its own ARP requests, so a first connection to a backend never waits
//! for smoltcp's one-ARP-per-second rate limit.

use smoltcp::phy::{Device, TxToken};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

use super::Engine;

/// Period of [`Engine::refresh_neighbors`]; smoltcp forgets a neighbour 60 s
/// after it last heard from it.
pub(super) const NEIGHBOR_REFRESH: Duration = Duration::from_secs(20);

/// Period of [`Engine::refresh_neighbors`] while some neighbour has not
/// answered.
pub(super) const NEIGHBOR_RETRY: Duration = Duration::from_secs(1);

impl Engine {
    /// Sends an ARP request for every on-link backend and the gateway.
    ///
    /// Why: smoltcp resolves a neighbour only when a packet is waiting for it,
    /// and after sending one ARP request it answers "rate limited" for *every*
    /// unknown neighbour for a second. Without this, the first connections to
    /// N new backends would be serialised one second apart (longer than a
    /// connect timeout), and a neighbour idle past smoltcp's 60 s entry
    /// lifetime would stall its next flow. Replies are learnt by smoltcp
    /// (they are ARP aimed at our address). Refreshed every
    /// [`NEIGHBOR_REFRESH`], well inside the entry lifetime.
    ///
    /// A neighbour not heard from since the previous refresh (not yet
    /// resolved, say because the port came up after the first requests) is
    /// asked again after [`NEIGHBOR_RETRY`] instead.
    pub(super) fn refresh_neighbors<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) {
        let all_heard = self.neighbor_heard.iter().all(|&h| h);
        self.neighbor_heard.iter_mut().for_each(|h| *h = false);
        self.next_neighbor_refresh = now
            + if all_heard {
                NEIGHBOR_REFRESH
            } else {
                NEIGHBOR_RETRY
            };
        for &target in &self.neighbors {
            let Some(tx) = device.transmit(now) else {
                // Device full: try again on the next poll.
                self.next_neighbor_refresh = now;
                return;
            };
            let arp = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: self.mac,
                source_protocol_addr: self.addr,
                target_hardware_addr: EthernetAddress::BROADCAST,
                target_protocol_addr: target,
            };
            let eth = EthernetRepr {
                src_addr: self.mac,
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EthernetProtocol::Arp,
            };
            tx.consume(eth.buffer_len() + arp.buffer_len(), |buf| {
                let mut frame = EthernetFrame::new_unchecked(buf);
                eth.emit(&mut frame);
                arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
            });
        }
    }
}
