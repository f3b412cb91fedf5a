//! Answering what the dataplane itself answers: ARP and ping.

use core::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet,
    Ipv4Packet, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
};

use crate::{classify, Classified, DropReason, Ipv4Payload, Local};

/// TTL of our echo replies: the common host default, whatever the request had.
const REPLY_TTL: u8 = 64;

/// What to do with a received frame. `#[must_use]`: every frame must end up
/// either transmitted or freed, so the caller has to look.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The frame now holds the reply: send its first `len` bytes back out of
    /// the port it came in on. `len` never exceeds the received length, and
    /// may be below the 60-byte Ethernet minimum: the NIC pads on transmit.
    Reply {
        /// Length of the reply, from the start of the frame.
        len: usize,
    },
    /// Free the frame; count it under this reason. The frame is unchanged.
    Drop(DropReason),
}

/// Handles one received frame: answers ARP requests and pings to our
/// addresses by rewriting `frame` in place, drops everything else.
///
/// Rewriting in place saves allocating and copying into a new mbuf. Never
/// panics and never allocates, whatever `frame` holds; on `Drop` it leaves
/// `frame` untouched.
pub fn respond(frame: &mut [u8], local: &Local) -> Verdict {
    match classify(frame, local) {
        Ok(Classified::ArpRequest {
            sender_mac,
            sender_ip,
            target_ip,
        }) => Verdict::Reply {
            len: arp_reply(frame, local.mac, sender_mac, sender_ip, target_ip),
        },
        Ok(Classified::IcmpEchoRequest(ip)) => Verdict::Reply {
            len: echo_reply(frame, local.mac, &ip),
        },
        // Replies feed a TCP stack's neighbour cache; answering never needs them.
        Ok(Classified::ArpReply { .. }) => Verdict::Drop(DropReason::ArpUnsupported),
        Ok(Classified::Tcp { .. } | Classified::Udp { .. }) => Verdict::Drop(DropReason::NoService),
        Err(reason) => Verdict::Drop(reason),
    }
}

/// Rewrites a classified ARP request into our reply; returns its length.
///
/// The reply has the minimal ARP length, dropping any padding the request had.
fn arp_reply(
    frame: &mut [u8],
    our_mac: EthernetAddress,
    sender_mac: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> usize {
    // classify accepted an Ethernet/IPv4 ARP packet, so ARP_FRAME_LEN bytes
    // are there and emit_arp_reply cannot refuse.
    emit_arp_reply(frame, (our_mac, target_ip), (sender_mac, sender_ip)).unwrap_or(0)
}

/// Length of an Ethernet/IPv4 ARP frame without padding.
pub const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 28;

/// Writes an ARP reply "`from.1` is at `from.0`", sent from `from` to `to`,
/// at the start of `frame`; returns its length, or `None` when `frame` is
/// shorter than [`ARP_FRAME_LEN`].
///
/// Besides answering requests, the dataplane uses it to tell a TCP stack what
/// a request it answered revealed: smoltcp learns neighbours only from ARP
/// aimed at its own address.
pub fn emit_arp_reply(
    frame: &mut [u8],
    from: (EthernetAddress, Ipv4Addr),
    to: (EthernetAddress, Ipv4Addr),
) -> Option<usize> {
    let frame = frame.get_mut(..ARP_FRAME_LEN)?;
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: from.0,
        source_protocol_addr: from.1,
        target_hardware_addr: to.0,
        target_protocol_addr: to.1,
    };
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_dst_addr(to.0);
    eth.set_src_addr(from.0);
    eth.set_ethertype(EthernetProtocol::Arp);
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    Some(ARP_FRAME_LEN)
}

/// Rewrites a classified echo request into our echo reply; returns its length.
///
/// IPv4 options are dropped from the reply: RFC 1122 would have us update
/// record-route and reverse source routes, but the reply goes straight back
/// to the previous hop, and a plain header is the safe, simple answer.
fn echo_reply(frame: &mut [u8], our_mac: EthernetAddress, ip: &Ipv4Payload) -> usize {
    // classify bounded the ICMP message within the frame, after an IPv4
    // header of at least IPV4_HEADER_LEN bytes, so these ranges are in it.
    let icmp_start = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    let end = icmp_start + ip.len;
    frame.copy_within(ip.offset..ip.offset + ip.len, icmp_start);

    let mut eth = EthernetFrame::new_unchecked(&mut frame[..end]);
    let requester = eth.src_addr();
    eth.set_dst_addr(requester);
    eth.set_src_addr(our_mac);

    let mut ipv4 = Ipv4Packet::new_unchecked(eth.payload_mut());
    ipv4.set_header_len(IPV4_HEADER_LEN as u8);
    // Lossless: the ICMP message came out of a packet of at most 65535 bytes.
    ipv4.set_total_len((IPV4_HEADER_LEN + ip.len) as u16);
    ipv4.set_src_addr(ip.dst);
    ipv4.set_dst_addr(ip.src);
    ipv4.set_hop_limit(REPLY_TTL);
    ipv4.fill_checksum();

    // Recomputed rather than patched incrementally: classify already summed
    // every byte to verify it, and echo payloads are small.
    let mut icmp = Icmpv4Packet::new_unchecked(ipv4.payload_mut());
    icmp.set_msg_type(Icmpv4Message::EchoReply);
    icmp.fill_checksum();
    end
}
