//! Lcore steering (pure functions the dataplane calls before the engine sees
//! a frame) and the engine's own cheap frame classification.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket,
};

/// Seed of the client-flow steering hash; distinct from the Maglev flow seed
/// so the lcore choice and the backend choice are independent.
const STEER_SEED: u64 = 0x7374_6565_7266_6c77; // "steerflw"

/// Lcore owning local port `port` (a backend connection's source port, so the
/// destination port of the backend's replies). Ports are interleaved
/// (`port % lcores`) rather than split in ranges so that the answer needs
/// neither the range nor a table.
pub fn owner_of_port(port: u16, lcores: usize) -> usize {
    usize::from(port) % lcores.max(1)
}

/// Lcore owning a client flow to a VIP. Any lcore could accept a new flow;
/// what matters is that every segment of it reaches the same one, and this is
/// a pure function of the 4-tuple, so any dataplane thread (or another
/// process) computes the same answer.
pub fn owner_of_flow(
    client: Ipv4Addr,
    client_port: u16,
    vip: Ipv4Addr,
    vip_port: u16,
    lcores: usize,
) -> usize {
    let h = fulcrum_maglev::flow_hash(
        STEER_SEED,
        IpAddr::V4(client),
        client_port,
        IpAddr::V4(vip),
        vip_port,
        6,
    );
    (h % lcores.max(1) as u64) as usize
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_interleave_over_lcores() {
        let owners: Vec<usize> = (32768..32776).map(|p| owner_of_port(p, 4)).collect();
        assert_eq!(owners, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(owner_of_port(40000, 1), 0);
    }

    #[test]
    fn flows_spread_and_are_stable() {
        let vip = Ipv4Addr::new(198, 18, 1, 1);
        let mut per = [0u32; 4];
        for p in 0..4000u16 {
            let c = Ipv4Addr::new(10, 0, (p >> 8) as u8, p as u8);
            let o = owner_of_flow(c, 1024 + p, vip, 80, 4);
            assert_eq!(o, owner_of_flow(c, 1024 + p, vip, 80, 4));
            per[o] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
    }
}
