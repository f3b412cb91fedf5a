//! FullNAT: the address and port rewrite, and the backend -> SNAT replies.

use super::*;

/// Rewrites addresses, ports and TTL to entry `e`'s action, with
/// incremental checksum updates. Inlined: on the fast path the header
/// length and protocol are known there, and pick the fixed-size view.
#[inline(always)]
pub(super) fn nat(frame: &mut [u8], ip: &Ip, e: &Entry) {
    let Some(h) = frame.get_mut(ETH..ETH + ip.total) else { return };
    // An option-less header (FullNAT refuses options) and the L4 header
    // through its checksum, as one fixed-size view: `nat_fields` reads and
    // writes the same fields, with its bounds checks decided at compile
    // time. Anything shorter takes the view of the whole packet.
    if ip.ihl == ipv4::HEADER_LEN {
        if ip.proto == TCP {
            if let Some(v) = h.first_chunk_mut::<{ ipv4::HEADER_LEN + tcp::CHECKSUM.end }>() {
                return nat_fields(v, ip, e);
            }
        } else if let Some(v) = h.first_chunk_mut::<{ ipv4::HEADER_LEN + udp::HEADER_LEN }>() {
            return nat_fields(v, ip, e);
        }
    }
    nat_fields(h, ip, e)
}

/// [`nat`] on `h`, the IPv4 packet (or its first bytes, through the L4
/// checksum).
#[inline(always)]
fn nat_fields(h: &mut [u8], ip: &Ip, e: &Entry) {
    // The packet's addresses and ports are `e`'s key (it was found by
    // them): their changes are the ones `nat_sums` summed at creation.
    let [ip_sum, l4_sum] = e.nat_sums;
    let old_ttl = rd16(h, ipv4::TTL_PROTOCOL);
    let new_ttl = old_ttl.wrapping_sub(0x0100);
    let c = Update::new(rd16(h, ipv4::CHECKSUM)).with(ip_sum).word(old_ttl, new_ttl).finish();
    wr16(h, ipv4::TTL_PROTOCOL, new_ttl);
    wr32(h, ipv4::SRC_ADDR, e.new_src);
    wr32(h, ipv4::DST_ADDR, e.new_dst);
    wr16(h, ipv4::CHECKSUM, c);
    let ihl = ip.ihl;
    let Some(l4) = h.get_mut(ihl..) else { return };
    let csum = if ip.proto == TCP { tcp::CHECKSUM } else { udp::CHECKSUM };
    wr16(l4, udp::SRC_PORT, e.new_sport);
    wr16(l4, udp::DST_PORT, e.new_dport);
    let c = rd16(l4, csum.clone());
    if ip.proto == UDP && c == 0 {
        return; // no checksum
    }
    let mut c = Update::new(c).with(l4_sum).finish();
    if ip.proto == UDP && c == 0 {
        c = 0xffff;
    }
    wr16(l4, csum, c);
}

/// Entry `e` (a FullNAT direction, its key and `new_*` fields set) with its
/// `nat_sums`: the checksum changes [`nat`] makes to a packet of its key.
pub(super) fn with_nat_sums(e: Entry) -> Entry {
    let ip = Update::changes().addr(e.src, e.new_src).addr(e.dst, e.new_dst);
    let l4 = ip.word(e.sport, e.new_sport).word(e.dport, e.new_dport);
    Entry { nat_sums: [ip.partial(), l4.partial()], ..e }
}

/// Backend -> SNAT address (FullNAT reply).
pub(super) fn reply(f: &mut Forwarder, now: u32, buf: &mut [u8], start: usize, ip: &Ip, (key, hashed): (Key, Hashed), fl: Flags) -> Verdict {
    let mut rec = Reclaimed::default();
    let hit = f.table.find(&key, &hashed, now, &mut rec);
    account_reclaimed(f, rec);
    let Some(i) = hit else { return Verdict::NotMine };
    reply_hit(f, now, buf, start, ip, i, fl)
}

/// A backend -> SNAT packet of the flow in entry `i` (if it is a reply entry).
#[inline]
pub(crate) fn reply_hit(f: &mut Forwarder, now: u32, buf: &mut [u8], start: usize, ip: &Ip, i: u32, fl: Flags) -> Verdict {
    let Forwarder { table, vips, timeouts, mac, .. } = f;
    let Some(e) = table.get_mut(i) else { return Verdict::NotMine };
    // Only replies of a flow whose VIP is still installed as it was.
    let Some(owner) = owner_vip(vips, e).filter(|_| e.flags & F_REVERSE != 0) else {
        return Verdict::NotMine;
    };
    let refused = if ip.ihl > 20 {
        Some(DropReason::IpOptions)
    } else if ip.ttl <= 1 {
        Some(DropReason::TtlExceeded)
    } else {
        None
    };
    if let Some(r) = refused {
        if let Some(n) = owner.drops.get_mut(r.index()) {
            *n += 1;
        }
        return Verdict::Drop(r);
    }
    touch(e, timeouts, now, fl);
    account(vips, e, ip.total, false);
    let synced = *e;
    let v = match buf.get_mut(start..start + ETH + ip.total) {
        Some(frame) => {
            nat(frame, ip, e);
            set_macs(frame, e.mac, mac.0);
            Verdict::Transmit {
                start: start as u32,
                len: (ETH + ip.total) as u32,
            }
        }
        None => Verdict::Drop(DropReason::BadBuffer),
    };
    sync_twin(table, &synced);
    v
}
