//! ICMP errors about a forwarded flow: matched on their quote, forwarded to
//! the flow's backend (DSR, tunnel) or translated (FullNAT, both ways).

use super::*;

/// A quoted (inner) TCP/UDP header inside an ICMP error.
#[derive(Clone, Copy, Debug)]
pub(super) struct Quote {
    /// Offset of the ICMP message in the frame.
    pub(super) icmp: usize,
    /// Inner IPv4 header length.
    pub(super) ihl: usize,
    pub(super) key: Key,
}

/// Parses an ICMP error's quote; `Ok(None)` for ICMP that is not an error we
/// handle (echo request: `Some` is never returned for it).
pub(super) fn quote(frame: &[u8], ip: &Ip) -> Result<Option<Quote>, DropReason> {
    let start = ETH + ip.ihl;
    let msg = frame.get(start..ETH + ip.total).ok_or(DropReason::IcmpMalformed)?;
    let icmp = Icmpv4Packet::new_checked(msg).map_err(|_| DropReason::IcmpMalformed)?;
    let ty = u8::from(icmp.msg_type());
    if ty != ICMP_DST_UNREACHABLE && ty != ICMP_TIME_EXCEEDED {
        return Ok(None);
    }
    let inner = msg.get(icmp::HEADER_LEN..).ok_or(DropReason::IcmpMalformed)?;
    let ver_ihl = inner.get(ipv4::VER_IHL).copied().unwrap_or(0);
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < ipv4::HEADER_LEN || inner.len() < ihl + udp::HEADER_LEN {
        return Err(DropReason::IcmpMalformed);
    }
    let proto = inner.get(ipv4::PROTOCOL).copied().unwrap_or(0);
    if proto != TCP && proto != UDP {
        return Err(DropReason::IcmpUnsupported);
    }
    Ok(Some(Quote {
        icmp: start,
        ihl,
        key: Key {
            src: rd32(inner, ipv4::SRC_ADDR),
            dst: rd32(inner, ipv4::DST_ADDR),
            sport: rd16(inner, at(udp::SRC_PORT, ihl)),
            dport: rd16(inner, at(udp::DST_PORT, ihl)),
            proto,
        },
    }))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn icmp(f: &mut Forwarder, now_ns: u64, now: u32, buf: &mut [u8], start: usize, len: usize, ip: &Ip, to_vip: bool) -> Verdict {
    let Some(frame) = buf.get(start..start + len) else { return Verdict::Drop(DropReason::BadBuffer) };
    let q = match quote(frame, ip) {
        Ok(q) => q,
        Err(r) => return if to_vip { Verdict::Drop(r) } else { Verdict::NotMine },
    };
    let Some(q) = q else {
        if !to_vip {
            return Verdict::NotMine;
        }
        let ty = frame.get(ETH + ip.ihl + icmp::TYPE).copied().unwrap_or(0);
        if ty != ICMP_ECHO_REQUEST {
            return Verdict::Drop(DropReason::IcmpUnsupported);
        }
        let local = fulcrum_packet::Local {
            mac: f.mac,
            addrs: &f.vip_addrs,
        };
        let Some(frame) = buf.get_mut(start..start + len) else { return Verdict::Drop(DropReason::BadBuffer) };
        return match fulcrum_packet::respond(frame, &local) {
            fulcrum_packet::Verdict::Reply { len } => {
                f.counters.echo_replies += 1;
                Verdict::Transmit { start: start as u32, len: len as u32 }
            }
            fulcrum_packet::Verdict::Drop(fulcrum_packet::DropReason::IcmpBadChecksum) => {
                Verdict::Drop(DropReason::IcmpBadChecksum)
            }
            fulcrum_packet::Verdict::Drop(_) => Verdict::Drop(DropReason::IcmpMalformed),
        };
    };
    let k = q.key;
    // The flow the quoted packet belongs to, as its client-side key: the
    // quote is a packet *from* the VIP (to a VIP) or from our SNAT address.
    let flow = Key {
        src: k.dst,
        dst: k.src,
        sport: k.dport,
        dport: k.sport,
        proto: k.proto,
    };
    if to_vip {
        let Some(vip) = find_vip(f, Ipv4Addr::from(k.src), k.sport, k.proto) else {
            return Verdict::NotMine;
        };
        let v = icmp_to_vip(f, now_ns, now, buf, start, ip, &q, flow, vip);
        attribute(f, vip, v)
    } else {
        let mut rec = Reclaimed::default();
        let hit = f.table.find(&flow, &f.table.hash(&flow), now, &mut rec);
        account_reclaimed(f, rec);
        let Some(&e) = hit.and_then(|i| f.table.get(i)) else { return Verdict::NotMine };
        if e.flags & F_REVERSE == 0 || owner_vip(&mut f.vips, &e).is_none() {
            return Verdict::NotMine;
        }
        let msg = frame.get(q.icmp..ETH + ip.total).unwrap_or(&[]);
        let v = if checksum(msg) != 0 {
            Verdict::Drop(DropReason::IcmpBadChecksum)
        } else {
            // Towards the client, about its packet client -> VIP.
            translate_icmp_for_entry(f, buf, start, ip, &q, &e)
        };
        attribute(f, usize::from(e.vip), v)
    }
}

/// An ICMP error to VIP `vip` about its reply in the flow `flow`.
#[allow(clippy::too_many_arguments)]
pub(super) fn icmp_to_vip(
    f: &mut Forwarder,
    now_ns: u64,
    now: u32,
    buf: &mut [u8],
    start: usize,
    ip: &Ip,
    q: &Quote,
    flow: Key,
    vip: usize,
) -> Verdict {
    let msg = buf.get(start + q.icmp..start + ETH + ip.total).unwrap_or(&[]);
    if checksum(msg) != 0 {
        return Verdict::Drop(DropReason::IcmpBadChecksum);
    }
    let Some(mode) = vip_rt(&f.vips, vip).map(|v| v.rewrite) else { return Verdict::NotMine };
    let mut rec = Reclaimed::default();
    let hit = f.table.find(&flow, &f.table.hash(&flow), now, &mut rec);
    account_reclaimed(f, rec);
    // Only an entry this VIP created, as it is installed now.
    let hit = hit.filter(|&i| match (f.table.get(i), vip_rt(&f.vips, vip)) {
        (Some(e), Some(v)) => v.owns(vip, e),
        _ => false,
    });
    match mode {
        Rewrite::Dsr | Rewrite::Tunnel { .. } => {
            if let Rewrite::Tunnel { encap, .. } = mode {
                if ip.ttl <= 1 {
                    return Verdict::Drop(DropReason::TtlExceeded);
                }
                if ip.total + overhead(encap) > usize::from(f.mtu) {
                    return Verdict::Drop(DropReason::TooBig);
                }
                if start < overhead(encap) {
                    return Verdict::Drop(DropReason::NoHeadroom);
                }
            }
            let e = match hit.and_then(|i| f.table.get(i)) {
                Some(&e) => e,
                None => {
                    // Stateless, like Katran: the backend Maglev picks
                    // for this flow now. No entry is created.
                    let Some(v) = vip_rt(&f.vips, vip) else { return Verdict::NotMine };
                    let fh = maglev_key(f.flow_seed, v.affinity, flow.src, flow.sport, flow.dst, flow.dport, flow.proto);
                    let Some(bi) = v.table().lookup(fh) else { return Verdict::Drop(DropReason::NoBackend) };
                    let Some(b) = v.backends.get(bi).map(|b| b.cfg) else {
                        return Verdict::Drop(DropReason::NoBackend);
                    };
                    let Some(mac) = backend_mac(f, vip, bi, now_ns) else {
                        return Verdict::Drop(DropReason::NeighbourUnresolved);
                    };
                    Entry {
                        new_dst: u32::from(b.address),
                        mac,
                        ..Entry::default()
                    }
                }
            };
            f.counters.icmp_errors_forwarded += 1;
            apply(f.mac.0, buf, start, ip, &e, mode, flow)
        }
        Rewrite::FullNat => {
            let Some(&e) = hit.and_then(|i| f.table.get(i)) else {
                return Verdict::Drop(DropReason::IcmpNoFlow);
            };
            // Towards the backend, about its packet backend -> SNAT.
            translate_icmp_for_entry(f, buf, start, ip, q, &e)
        }
    }
}

/// Translates an ICMP error about a FullNAT flow with the rewrite its
/// connection-tracking entry records (the same for either direction: the
/// entry stored is the one for the packet's own direction). FullNAT routes,
/// so options and TTL are checked as for any forwarded packet.
pub(super) fn translate_icmp_for_entry(f: &mut Forwarder, buf: &mut [u8], start: usize, ip: &Ip, q: &Quote, e: &Entry) -> Verdict {
    if ip.ihl > 20 {
        return Verdict::Drop(DropReason::IpOptions);
    }
    if ip.ttl <= 1 {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let t = Translation {
        outer_src: e.new_src,
        outer_dst: e.new_dst,
        inner_src: (e.new_dst, e.new_dport),
        inner_dst: (e.new_src, e.new_sport),
        mac: e.mac,
    };
    f.counters.icmp_errors_forwarded += 1;
    translate_icmp(f, buf, start, ip, q, &t)
}

pub(super) struct Translation {
    outer_src: u32,
    outer_dst: u32,
    inner_src: (u32, u16),
    inner_dst: (u32, u16),
    mac: [u8; 6],
}

/// Rewrites an ICMP error: outer addresses (and TTL), the quoted header's
/// addresses and ports (its IPv4 checksum, and its L4 checksum when quoted),
/// and recomputes the ICMP checksum.
pub(super) fn translate_icmp(f: &Forwarder, buf: &mut [u8], start: usize, ip: &Ip, q: &Quote, t: &Translation) -> Verdict {
    let Some(frame) = buf.get_mut(start..start + ETH + ip.total) else {
        return Verdict::Drop(DropReason::BadBuffer);
    };
    // The quote.
    let Some(inner) = frame.get_mut(q.icmp + 8..) else { return Verdict::Drop(DropReason::IcmpMalformed) };
    let (os, od) = (rd32(inner, ipv4::SRC_ADDR), rd32(inner, ipv4::DST_ADDR));
    let (sport, dport) = (at(udp::SRC_PORT, q.ihl), at(udp::DST_PORT, q.ihl));
    let (osp, odp) = (rd16(inner, sport.clone()), rd16(inner, dport.clone()));
    let (ns, nsp) = t.inner_src;
    let (nd, ndp) = t.inner_dst;
    let mut c = rd16(inner, ipv4::CHECKSUM);
    c = update32(c, os, ns);
    c = update32(c, od, nd);
    wr16(inner, ipv4::CHECKSUM, c);
    wr32(inner, ipv4::SRC_ADDR, ns);
    wr32(inner, ipv4::DST_ADDR, nd);
    wr16(inner, sport, nsp);
    wr16(inner, dport, ndp);
    let csum = at(if q.key.proto == TCP { tcp::CHECKSUM } else { udp::CHECKSUM }, q.ihl);
    if inner.len() >= csum.end {
        let c = rd16(inner, csum.clone());
        if !(q.key.proto == UDP && c == 0) {
            let mut c = update32(c, os, ns);
            c = update32(c, od, nd);
            c = update16(c, osp, nsp);
            c = update16(c, odp, ndp);
            if q.key.proto == UDP && c == 0 {
                c = 0xffff;
            }
            wr16(inner, csum, c);
        }
    }
    // The outer header.
    nat_outer(frame, t.outer_src, t.outer_dst);
    // ICMP checksum over the whole message.
    if let Some(m) = frame.get_mut(q.icmp..ETH + ip.total) {
        wr16(m, icmp::CHECKSUM, 0);
        let c = checksum(m);
        wr16(m, icmp::CHECKSUM, c);
    }
    set_macs(frame, t.mac, f.mac.0);
    Verdict::Transmit {
        start: start as u32,
        len: (ETH + ip.total) as u32,
    }
}

pub(super) fn nat_outer(frame: &mut [u8], src: u32, dst: u32) {
    let Some(h) = frame.get_mut(ETH..ETH + ipv4::HEADER_LEN) else { return };
    let mut c = rd16(h, ipv4::CHECKSUM);
    c = update32(c, rd32(h, ipv4::SRC_ADDR), src);
    c = update32(c, rd32(h, ipv4::DST_ADDR), dst);
    let old_ttl = rd16(h, ipv4::TTL_PROTOCOL);
    let new_ttl = old_ttl.wrapping_sub(0x0100);
    c = update16(c, old_ttl, new_ttl);
    wr16(h, ipv4::TTL_PROTOCOL, new_ttl);
    wr32(h, ipv4::SRC_ADDR, src);
    wr32(h, ipv4::DST_ADDR, dst);
    wr16(h, ipv4::CHECKSUM, c);
}
