//! The engine's own cheap frame classification: what it needs to know about
//! a frame (ARP, or a TCP segment's 4-tuple and whether it is a bare SYN)
//! before choosing the socket set smoltcp processes it with. Steering a frame
//! to its lcore happens earlier, in the dataplane, with
//! [`fulcrum_model::steer`].

use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket,
};

/// What the engine needs to know about a frame before smoltcp sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// ARP from `sender`, asking about or answering for `target`.
    Arp {
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
    Tcp(TcpMeta),
    /// Anything else (other protocols, IP fragments, malformed): dropped.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpMeta {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// SYN without ACK or RST: the only segment that may open a connection.
    pub syn_only: bool,
}

/// Parses headers only (no checksum; smoltcp verifies when it processes the
/// frame). Fragments are `Other`: their ports are not in every fragment.
pub(crate) fn classify(frame: &[u8]) -> Frame {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Frame::Other;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => match ArpPacket::new_checked(eth.payload()) {
            Ok(arp) if arp.protocol_len() == 4 => Frame::Arp {
                sender: Ipv4Addr::from(
                    <[u8; 4]>::try_from(arp.source_protocol_addr()).unwrap_or_default(),
                ),
                target: Ipv4Addr::from(
                    <[u8; 4]>::try_from(arp.target_protocol_addr()).unwrap_or_default(),
                ),
            },
            _ => Frame::Other,
        },
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Frame::Other;
            };
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return Frame::Other;
            }
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return Frame::Other;
            };
            Frame::Tcp(TcpMeta {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                syn_only: tcp.syn() && !tcp.ack() && !tcp.rst(),
            })
        }
        _ => Frame::Other,
    }
}
