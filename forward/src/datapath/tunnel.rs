//! Tunnel modes: IPIP/GUE encapsulation, and the ICMP fragmentation-needed
//! answer to a packet too big to encapsulate.

use super::*;

pub(super) fn overhead(encap: Encap) -> usize {
    match encap {
        Encap::Ipip => 20,
        Encap::Gue => 28,
    }
}

/// Decrements the TTL of the IPv4 header at `ip` (caller checked TTL > 1).
pub(super) fn dec_ttl(ip: &mut [u8]) {
    let old = rd16(ip, ipv4::TTL_PROTOCOL);
    let new = old.wrapping_sub(0x0100);
    wr16(ip, ipv4::TTL_PROTOCOL, new);
    let c = update16(rd16(ip, ipv4::CHECKSUM), old, new);
    wr16(ip, ipv4::CHECKSUM, c);
}

/// Encapsulates towards entry `e`'s backend, the outer source drawn from
/// the VIP's source prefix with the client flow's entropy.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub(super) fn encapsulate(
    our_mac: [u8; 6],
    buf: &mut [u8],
    start: usize,
    ip: &Ip,
    e: &Entry,
    (encap, gue_port): (Encap, u16),
    (src_prefix, src_prefix_len): (Ipv4Addr, u8),
    client: Key,
) -> Verdict {
    let entropy = tunnel_entropy(Ipv4Addr::from(client.src), client.sport);
    let mask = if src_prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(src_prefix_len.min(32))) };
    let outer_src = (u32::from(src_prefix) & mask) | (entropy & !mask);
    let ov = overhead(encap);
    let Some(ns) = start.checked_sub(ov) else { return Verdict::Drop(DropReason::NoHeadroom) };
    let end = start + ETH + ip.total;
    let Some(frame) = buf.get_mut(ns..end) else { return Verdict::Drop(DropReason::BadBuffer) };
    let inner_at = ov + ETH;
    let tos = frame.get(inner_at + ipv4::DSCP_ECN).copied().unwrap_or(0);
    let ident = rd16(frame, at(ipv4::IDENT, inner_at));
    let df = rd16(frame, at(ipv4::FLG_OFF, inner_at)) & ipv4::DF;
    if let Some(inner) = frame.get_mut(inner_at..) {
        dec_ttl(inner);
    }
    set_macs(frame, e.mac, our_mac);
    if let Some(t) = frame.get_mut(ethernet::ETHERTYPE) {
        t.copy_from_slice(&ethernet::IPV4);
    }
    let total = ip.total + ov;
    let proto = match encap {
        Encap::Ipip => 4,
        Encap::Gue => UDP,
    };
    let Some(h) = frame.get_mut(ETH..ETH + ipv4::HEADER_LEN) else { return Verdict::Drop(DropReason::BadBuffer) };
    h[ipv4::VER_IHL] = ipv4::VER_IHL_PLAIN;
    h[ipv4::DSCP_ECN] = tos;
    wr16(h, ipv4::LENGTH, total as u16);
    wr16(h, ipv4::IDENT, ident);
    wr16(h, ipv4::FLG_OFF, df);
    h[ipv4::TTL] = OUR_TTL;
    h[ipv4::PROTOCOL] = proto;
    wr16(h, ipv4::CHECKSUM, 0);
    wr32(h, ipv4::SRC_ADDR, outer_src);
    wr32(h, ipv4::DST_ADDR, e.new_dst);
    let c = checksum(h);
    wr16(h, ipv4::CHECKSUM, c);
    if encap == Encap::Gue {
        let sport = 0xc000 | ((entropy >> 16) as u16 & 0x3fff);
        let outer_udp = ETH + ipv4::HEADER_LEN;
        let Some(u) = frame.get_mut(outer_udp..outer_udp + udp::HEADER_LEN) else {
            return Verdict::Drop(DropReason::BadBuffer);
        };
        wr16(u, udp::SRC_PORT, sport);
        wr16(u, udp::DST_PORT, gue_port);
        wr16(u, udp::LENGTH, (ip.total + udp::HEADER_LEN) as u16);
        wr16(u, udp::CHECKSUM, 0);
    }
    Verdict::Transmit {
        start: ns as u32,
        len: (ETH + total) as u32,
    }
}

/// Answers a too-big packet with ICMP fragmentation needed, in place: the
/// quote is the IPv4 header and the first 8 payload bytes.
pub(super) fn too_big(f: &mut Forwarder, buf: &mut [u8], start: usize, ip: &Ip, mtu: u16) -> Verdict {
    let q = ip.ihl + 8;
    let icmp_at = ETH + ipv4::HEADER_LEN;
    let len = icmp_at + icmp::HEADER_LEN + q;
    if ip.total < q {
        return Verdict::Drop(DropReason::TooBig);
    }
    let Some(frame) = buf.get_mut(start..start + (ETH + ip.total).max(len)) else {
        return Verdict::Drop(DropReason::TooBig);
    };
    let mut client_mac = [0u8; 6];
    client_mac.copy_from_slice(&frame[ethernet::SOURCE]);
    frame.copy_within(ETH..ETH + q, icmp_at + icmp::HEADER_LEN);
    set_macs(frame, client_mac, f.mac.0);
    let h = &mut frame[ETH..icmp_at];
    h.fill(0);
    h[ipv4::VER_IHL] = ipv4::VER_IHL_PLAIN;
    h[ipv4::TTL] = OUR_TTL;
    h[ipv4::PROTOCOL] = ICMP;
    wr16(h, ipv4::LENGTH, (ipv4::HEADER_LEN + icmp::HEADER_LEN + q) as u16);
    wr32(h, ipv4::SRC_ADDR, u32::from(ip.dst));
    wr32(h, ipv4::DST_ADDR, u32::from(ip.src));
    let c = checksum(h);
    wr16(h, ipv4::CHECKSUM, c);
    let m = &mut frame[icmp_at..len];
    m[..icmp::HEADER_LEN].fill(0);
    m[icmp::TYPE] = ICMP_DST_UNREACHABLE;
    m[icmp::CODE] = ICMP_FRAG_NEEDED;
    wr16(m, icmp::NEXT_HOP_MTU, mtu);
    let c = checksum(m);
    wr16(m, icmp::CHECKSUM, c);
    f.counters.icmp_too_big_sent += 1;
    Verdict::Transmit { start: start as u32, len: len as u32 }
}
