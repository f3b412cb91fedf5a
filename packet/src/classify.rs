//! Validating a received frame and saying what it is.

use core::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN,
    IPV4_HEADER_LEN,
};

use crate::{DropReason, Local};

/// A frame that passed every check and is addressed to us.
///
/// Offsets are into the frame given to [`classify`] and lie within it, so
/// slicing that frame with them cannot panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classified {
    /// An Ethernet/IPv4 ARP request for one of our addresses.
    ArpRequest {
        /// The requester's MAC, from the ARP body (where the reply goes).
        sender_mac: EthernetAddress,
        /// The requester's IPv4 address (may be 0.0.0.0: an RFC 5227 probe).
        sender_ip: Ipv4Addr,
        /// Which of our addresses is asked for.
        target_ip: Ipv4Addr,
    },
    /// An Ethernet/IPv4 ARP reply to one of our addresses: a TCP stack that
    /// resolved a neighbour learns its MAC from it.
    ArpReply {
        /// The answering host's MAC.
        sender_mac: EthernetAddress,
        /// The address it answers for.
        sender_ip: Ipv4Addr,
    },
    /// An ICMP echo request to us, its checksum verified.
    IcmpEchoRequest(Ipv4Payload),
    /// A TCP segment to us. Its checksum is *not* verified: the TCP stack
    /// that consumes it does that (or the NIC already did).
    Tcp {
        /// Addresses, and where the TCP header starts.
        ip: Ipv4Payload,
        /// TCP source port.
        src_port: u16,
        /// TCP destination port.
        dst_port: u16,
    },
    /// A UDP datagram to us. Its checksum is not verified, as for TCP.
    Udp {
        /// Addresses, and where the UDP header starts; `len` is the UDP
        /// length field, which may be less than the IPv4 payload.
        ip: Ipv4Payload,
        /// UDP source port.
        src_port: u16,
        /// UDP destination port.
        dst_port: u16,
    },
}

/// A validated, unfragmented IPv4 packet's addresses, and where its payload
/// (the ICMP, TCP or UDP message) lies in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Payload {
    /// IPv4 source address (never unspecified, broadcast, multicast or
    /// loopback).
    pub src: Ipv4Addr,
    /// IPv4 destination address: one of ours.
    pub dst: Ipv4Addr,
    /// Offset of the payload in the frame: past the Ethernet header and the
    /// IPv4 header including any options.
    pub offset: usize,
    /// Payload length: up to the IPv4 total length (UDP: its own length), so
    /// Ethernet padding is excluded.
    pub len: usize,
}

/// Validates `frame` and says what it is, or why it is not for us.
///
/// Checks run outermost first, so a frame fails with the reason of its first
/// bad layer. Never panics and never allocates, whatever `frame` holds.
///
/// # Errors
/// The [`DropReason`] of a frame that is malformed, unsupported or not for us.
pub fn classify(frame: &[u8], local: &Local) -> Result<Classified, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::EthTruncated)?;
    let dst = eth.dst_addr();
    // Broadcast is accepted here (ARP needs it); IPv4 then filters by address.
    if dst.is_multicast() && !dst.is_broadcast() {
        return Err(DropReason::Multicast);
    }
    if dst.is_unicast() && dst != local.mac {
        return Err(DropReason::OtherHost);
    }
    if !eth.src_addr().is_unicast() {
        return Err(DropReason::MartianSource);
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => classify_arp(eth.payload(), local),
        EthernetProtocol::Ipv4 => classify_ipv4(eth.payload(), local),
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

fn classify_arp(bytes: &[u8], local: &Local) -> Result<Classified, DropReason> {
    let packet = ArpPacket::new_checked(bytes).map_err(|_| DropReason::ArpMalformed)?;
    // Length is checked above, so a parse error means another hardware or
    // protocol type (or address lengths).
    let repr = ArpRepr::parse(&packet).map_err(|_| DropReason::ArpUnsupported)?;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: sender_mac,
        source_protocol_addr: sender_ip,
        target_protocol_addr: target_ip,
        ..
    } = repr
    else {
        return Err(DropReason::ArpUnsupported);
    };
    if !local.owns(target_ip) {
        return Err(DropReason::ArpNotForUs);
    }
    if !sender_mac.is_unicast() {
        return Err(DropReason::MartianSource);
    }
    match operation {
        ArpOperation::Request => Ok(Classified::ArpRequest {
            sender_mac,
            sender_ip,
            target_ip,
        }),
        ArpOperation::Reply => Ok(Classified::ArpReply { sender_mac, sender_ip }),
        _ => Err(DropReason::ArpUnsupported),
    }
}

fn classify_ipv4(bytes: &[u8], local: &Local) -> Result<Classified, DropReason> {
    if bytes.len() < IPV4_HEADER_LEN {
        return Err(DropReason::Ipv4Truncated);
    }
    // The first 20 bytes are there, so version() may be read before check_len.
    let packet = Ipv4Packet::new_unchecked(bytes);
    if packet.version() != 4 || packet.check_len().is_err() {
        return Err(DropReason::Ipv4BadHeader);
    }
    if !packet.verify_checksum() {
        return Err(DropReason::Ipv4BadChecksum);
    }
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    if !local.owns(dst) {
        return Err(DropReason::Ipv4NotForUs);
    }
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
        return Err(DropReason::MartianSource);
    }
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Err(DropReason::Ipv4Fragment);
    }
    let payload = packet.payload();
    let ip = Ipv4Payload {
        src,
        dst,
        offset: ETHERNET_HEADER_LEN + usize::from(packet.header_len()),
        len: payload.len(),
    };
    match packet.next_header() {
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| DropReason::IcmpMalformed)?;
            if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
                return Err(DropReason::IcmpUnsupported);
            }
            if !icmp.verify_checksum() {
                return Err(DropReason::IcmpBadChecksum);
            }
            Ok(Classified::IcmpEchoRequest(ip))
        }
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| DropReason::TcpMalformed)?;
            Ok(Classified::Tcp {
                ip,
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
            })
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| DropReason::UdpMalformed)?;
            Ok(Classified::Udp {
                ip: Ipv4Payload {
                    len: usize::from(udp.len()),
                    ..ip
                },
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
            })
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}
