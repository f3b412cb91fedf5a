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

use crate::conntrack::{Hashed, Key};
use crate::csum::checksum20;
use crate::datapath::{attribute, deliver, find_vip, refuse, reply_hit, vip_rt, Flags, Ip, ETH, TCP, UDP};
use crate::{Forwarder, Verdict};

/// Ethernet, IPv4 without options, and the first 14 bytes of TCP (through
/// its flags) or UDP and 6 more.
const HEAD: usize = ETH + 20 + 14;
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
    if h[..6] != f.mac.0 || h[12..15] != [0x08, 0x00, 0x45] {
        return None;
    }
    let total = u16::from_be_bytes([h[16], h[17]]);
    let payload = usize::from(total).checked_sub(20)?;
    // Frame shorter than its IPv4 length; MF set or an offset (a fragment).
    if ETH + usize::from(total) > frame.len() || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 {
        return None;
    }
    let ip = h[ETH..].first_chunk::<20>()?;
    if checksum20(ip) != 0 {
        return None;
    }
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    // 0/8, loopback, multicast and above: perhaps martian, the general path decides.
    let first = src >> 24;
    if first == 0 || first == 127 || first >= 224 {
        return None;
    }
    let l4 = &h[ETH + 20..];
    let (sport, dport) = (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]));
    let proto = ip[9];
    let tcp_flags = match proto {
        TCP => {
            let doff = usize::from(l4[12] >> 4) * 4;
            if doff < 20 || doff > payload {
                return None;
            }
            l4[13]
        }
        UDP => {
            let len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            if len < 8 || len > payload {
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
        ttl: ip[8],
        tcp_flags,
        vip,
    })
}

/// Forwards a staged frame of a live flow; `None` (with nothing changed)
/// when its flow is not in the table. `buf[start..]` holds the frame `stage`
/// looked at, unchanged.
#[inline(always)]
pub(crate) fn act(f: &mut Forwarder, now: u32, buf: &mut [u8], start: usize, lane: &Lane) -> Option<Verdict> {
    if buf.len() > u32::MAX as usize {
        return None;
    }
    let i = f.table.probed(&lane.key, &lane.hashed, now)?;
    let ip = Ip {
        ihl: 20,
        total: usize::from(lane.total),
        src: Ipv4Addr::from(lane.key.src),
        dst: Ipv4Addr::from(lane.key.dst),
        proto: lane.key.proto,
        ttl: lane.ttl,
    };
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
