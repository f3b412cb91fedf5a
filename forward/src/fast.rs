//! The established-flow fast path of [`Forwarder::process_burst`].
//!
//! Nearly every packet a forwarding load balancer sees belongs to a flow its
//! table already holds, and has the plain shape: IPv4 without options, not
//! a fragment, TCP or UDP to a VIP (or, FullNAT's replies, to an own
//! address). For those, a burst parses with fixed-offset reads of one
//! header array, hashes and prefetches; on a live hit it goes straight to
//! the general path's own per-flow steps (`refuse`, `deliver`,
//! `reply_hit`), skipping its general parse and staging.
//!
//! Anything else, another shape, a miss (a new flow), an expired entry or
//! one the probe did not point at (a spilled key), is `None`, and the
//! general path (`datapath::process`) handles the frame from scratch: it
//! stays the one definition of behaviour. The fast path
//! therefore only takes frames the general path would treat the same way,
//! and before acting it changes nothing (the lookup has no side effects);
//! `burst_equals_one_at_a_time` holds it to that.

use std::net::Ipv4Addr;

use crate::conntrack::{Hashed, Key, F_HALF_OPEN};
use crate::csum::header20_ok;
use crate::field::{at, ethernet, ipv4, tcp, udp};
use crate::datapath::{
    account_to, attribute, deliver, find_vip, rd16, rd32, refuse, reply_hit, restart, rewrite_in_place, steady, sync_twin_of, vip_rt, Flags, Ip, ETH, TCP, UDP,
};
use crate::vips::Rewrite;
use crate::{Forwarder, Verdict};

/// Ethernet, IPv4 without options, and the first 14 bytes of TCP (through
/// its flags) or UDP and 6 more.
const HEAD: usize = ETH + ipv4::HEADER_LEN + tcp::FLAGS + 1;
/// The IPv4 header in `HEAD`.
const IP: usize = ETH;
/// The TCP/UDP header in `HEAD`.
const L4: usize = ETH + ipv4::HEADER_LEN;
/// `Lane::vip` of a packet to an own address (a FullNAT reply, perhaps).
/// VIP ids are below `fulcrum_model::MAX_VIPS`, so no VIP has this id.
const OWN_ADDRESS: u16 = u16::MAX;

/// A frame of the plain shape, parsed and hashed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lane {
    pub key: Key,
    pub hashed: Hashed,
    total: u16,
    ttl: u8,
    tcp_flags: u8,
    vip: u16,
}

/// Parses `frame` if it has the plain shape and passes every check the
/// general path makes of such a frame (same MAC, header, checksum, length
/// and address rules); `None` leaves it to the general path.
#[inline(always)]
pub(crate) fn stage(f: &Forwarder, frame: &[u8]) -> Option<Lane> {
    let h = frame.first_chunk::<HEAD>()?;
    if h[ethernet::DESTINATION] != f.mac.0
        || h[ethernet::ETHERTYPE] != ethernet::IPV4
        || h[IP + ipv4::VER_IHL] != ipv4::VER_IHL_PLAIN
    {
        return None;
    }
    let total = rd16(h, at(ipv4::LENGTH, IP));
    let payload = usize::from(total).checked_sub(ipv4::HEADER_LEN)?;
    // Frame shorter than its IPv4 length; MF set or an offset (a fragment).
    if ETH + usize::from(total) > frame.len() || rd16(h, at(ipv4::FLG_OFF, IP)) & ipv4::MF_OFFSET != 0 {
        return None;
    }
    let ip = h[IP..].first_chunk::<{ ipv4::HEADER_LEN }>()?;
    if !header20_ok(ip) {
        return None;
    }
    let src = rd32(ip, ipv4::SRC_ADDR);
    let dst = rd32(ip, ipv4::DST_ADDR);
    // 0/8, loopback, multicast and above: perhaps martian, the general path decides.
    let first = src >> 24;
    if first == 0 || first == 127 || first >= 224 {
        return None;
    }
    let l4 = &h[L4..];
    let (sport, dport) = (rd16(l4, udp::SRC_PORT), rd16(l4, udp::DST_PORT));
    let proto = ip[ipv4::PROTOCOL];
    let tcp_flags = match proto {
        TCP => {
            let doff = usize::from(l4[tcp::DATA_OFF] >> 4) * 4;
            if doff < tcp::HEADER_LEN || doff > payload {
                return None;
            }
            l4[tcp::FLAGS]
        }
        UDP => {
            let len = usize::from(rd16(l4, udp::LENGTH));
            if len < udp::HEADER_LEN || len > payload {
                return None;
            }
            0
        }
        _ => return None,
    };
    let vip = match find_vip(f, Ipv4Addr::from(dst), dport, proto) {
        Some(v) => v as u16,
        None if f.addrs.contains(&Ipv4Addr::from(dst)) => OWN_ADDRESS,
        None => return None,
    };
    let key = Key { src, dst, sport, dport, proto };
    Some(Lane {
        key,
        hashed: f.table.hash(&key),
        total,
        ttl: ip[ipv4::TTL],
        tcp_flags,
        vip,
    })
}

/// Forwards a staged frame of a live flow, its verdict counted into `out`;
/// `false` (with nothing changed) when its flow is not in the table.
/// `buf[start..]` holds the frame `stage` looked at, unchanged.
///
/// The hit routine: a client -> VIP packet of a DSR or FullNAT flow in a
/// steady state (established TCP without SYN/FIN/RST, or UDP; `steady`),
/// not half-open, that the mode does not refuse (FullNAT: TTL above 1; a
/// plain-shape frame has no options) does the general path's `deliver`
/// steps, in its order, with one VIP lookup: restart the timeout (`touch`'s
/// steady branch, `restart`), count under the VIP and backend
/// (`account_to`), rewrite (`apply`'s in-place arms, `rewrite_in_place`),
/// copy state and deadline to the twin. Anything else takes
/// [`act_general`].
#[inline(always)]
pub(crate) fn act(f: &mut Forwarder, now: u32, buf: &mut [u8], start: usize, lane: &Lane, out: &mut Verdict) -> bool {
    if buf.len() > u32::MAX as usize || lane.vip == OWN_ADDRESS {
        return general(f, now, buf, start, lane, out);
    }
    let fl = if lane.key.proto == TCP { Flags::tcp(lane.tcp_flags) } else { Flags::default() };
    let id = usize::from(lane.vip);
    let end = start + ETH + usize::from(lane.total);
    let Forwarder { table, vips, timeouts, mac, .. } = f;
    let Some(Some(v)) = vips.get_mut(id) else { return false };
    let Some((_, e)) = table.probed_mut(&lane.key, &lane.hashed, now) else { return false };
    // An entry of another VIP (removed, or changed under this id): the
    // general path frees it.
    if !v.owns(id, e) {
        return false;
    }
    let fullnat = match v.rewrite {
        Rewrite::Dsr => false,
        Rewrite::FullNat if lane.ttl > 1 => true,
        _ => return general(f, now, buf, start, lane, out),
    };
    if !steady(e.state, fl) || e.flags & F_HALF_OPEN != 0 {
        return general(f, now, buf, start, lane, out);
    }
    // `apply`'s window (the frame is within `buf`: `stage` read it there).
    let Some(frame) = buf.get_mut(start..end) else {
        return general(f, now, buf, start, lane, out);
    };
    // `touch` of a steady packet.
    restart(e, timeouts, now);
    account_to(v, e, usize::from(lane.total), false);
    rewrite_in_place(mac.0, frame, &ip_of(lane), e, fullnat);
    let (twin, state, deadline) = (e.twin, e.state, e.deadline);
    sync_twin_of(table, twin, state, deadline);
    // Counted as `Forwarder::count` counts a transmitted frame.
    f.counters.transmitted += 1;
    *out = Verdict::Transmit { start: start as u32, len: (end - start) as u32 };
    true
}

/// [`act_general`]'s verdict, if any, counted into `out` (out of line:
/// the hit routine's registers stay its own).
#[inline(never)]
fn general(f: &mut Forwarder, now: u32, buf: &mut [u8], start: usize, lane: &Lane, out: &mut Verdict) -> bool {
    match act_general(f, now, buf, start, lane) {
        Some(v) => {
            *out = f.count(v);
            true
        }
        None => false,
    }
}

/// The staged frame's IPv4 header, as the general path would parse it.
#[inline(always)]
fn ip_of(lane: &Lane) -> Ip {
    Ip {
        ihl: ipv4::HEADER_LEN,
        total: usize::from(lane.total),
        src: Ipv4Addr::from(lane.key.src),
        dst: Ipv4Addr::from(lane.key.dst),
        proto: lane.key.proto,
        ttl: lane.ttl,
    }
}

/// [`act`] for every other live flow: the general path's per-flow steps
/// (`refuse`, `deliver`, `reply_hit`) without its parse and staging.
#[inline(never)]
fn act_general(f: &mut Forwarder, now: u32, buf: &mut [u8], start: usize, lane: &Lane) -> Option<Verdict> {
    if buf.len() > u32::MAX as usize {
        return None;
    }
    let i = f.table.probed(&lane.key, &lane.hashed, now)?;
    let ip = ip_of(lane);
    let fl = if lane.key.proto == TCP { Flags::tcp(lane.tcp_flags) } else { Flags::default() };
    if lane.vip == OWN_ADDRESS {
        return Some(reply_hit(f, now, buf, start, &ip, i, fl));
    }
    let id = usize::from(lane.vip);
    let v = vip_rt(&f.vips, id)?;
    // An entry of another VIP (removed, or changed under this id): the
    // general path frees it.
    if !v.owns(id, f.table.get(i)?) {
        return None;
    }
    let mode = v.rewrite;
    if let Some(v) = refuse(f, buf, start, &ip, mode) {
        return Some(attribute(f, id, v));
    }
    let v = deliver(f, now, buf, start, &ip, i, mode, lane.key, Some(fl))?;
    Some(attribute(f, id, v))
}
