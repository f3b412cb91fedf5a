//! The per-packet path. Everything is parsed and every drop decided before
//! the first byte of the frame is written, so a dropped frame is unchanged.
//!
//! Here: the entry points (`process`, the staging `stage`/`act`), the
//! validating parse and the VIP lookup. Then one file per concern: `flow`
//! (client -> VIP, flow creation and tracking state), `fullnat` (the NAT
//! rewrite and replies), `tunnel` (encapsulation, too-big answers),
//! `icmp_error` (ICMP errors about flows), `steer` (which lcore).

use std::net::Ipv4Addr;

use fulcrum_maglev::{addr_hash, flow_hash};
use smoltcp::wire::Icmpv4Packet;

use crate::conntrack::{tick, Entry, Hashed, Key, Reclaimed, State, Table, F_REVERSE, NO_TWIN};
use crate::csum::{checksum, header20_ok, update16, update32, Update};
use crate::field::{at, ethernet, icmp, ipv4, tcp, udp, Field};
use crate::vips::{Rewrite, VipRt};
use crate::{tunnel_entropy, vip_key, DropReason, Forwarder, Verdict};
use fulcrum_model::steer::{owner_of_flow, owner_of_port};
use fulcrum_model::{Affinity, Encap};

mod flow;
mod fullnat;
mod icmp_error;
mod steer;
mod tunnel;

use flow::*;
use fullnat::*;
use icmp_error::*;
use tunnel::*;

pub(crate) use flow::{account_to, deliver, maglev_key, port_keys, port_start, refuse, restart, rewrite_in_place, steady, sync_twin_of, touch};
#[cfg(test)]
pub(crate) use flow::alloc_port;
pub(crate) use fullnat::reply_hit;
pub(crate) use steer::owner;

pub(crate) const ETH: usize = ethernet::HEADER_LEN;
pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMP_DST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Destination unreachable's code: fragmentation needed and DF set.
const ICMP_FRAG_NEEDED: u8 = 4;
/// TTL of headers we originate (outer tunnel headers, ICMP errors).
const OUR_TTL: u8 = 64;

/// The validated IPv4 header of a frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ip {
    pub ihl: usize,
    pub total: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
}

/// TCP flags that drive the tracking state (none for UDP): the header's
/// flags byte as it is.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flags(u8);

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

impl Flags {
    /// From the TCP header's flags byte.
    #[inline]
    pub(crate) fn tcp(byte: u8) -> Flags {
        Flags(byte)
    }
    #[inline]
    fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// The 16-bit field `f` of `b` (0 if `b` is too short).
#[inline]
pub(crate) fn rd16(b: &[u8], f: Field) -> u16 {
    match b.get(f) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

#[inline]
pub(crate) fn rd32(b: &[u8], f: Field) -> u32 {
    match b.get(f) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

#[inline]
fn wr16(b: &mut [u8], f: Field, v: u16) {
    if let Some(s) = b.get_mut(f).filter(|s| s.len() == 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

#[inline]
fn wr32(b: &mut [u8], f: Field, v: u32) {
    if let Some(s) = b.get_mut(f).filter(|s| s.len() == 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

#[inline]
fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    if let Some(d) = frame.get_mut(ethernet::DESTINATION) {
        d.copy_from_slice(&dst);
    }
    if let Some(s) = frame.get_mut(ethernet::SOURCE) {
        s.copy_from_slice(&src);
    }
}

/// Outcome of the validating parse: the frame's IPv4 header, or a verdict.
enum Parsed {
    Ip(Ip),
    Done(Verdict),
}

/// Ethernet + IPv4 checks shared by `process` and `owner`.
/// Fixed-offset reads from one bounds-checked header array rather than
/// smoltcp's accessors (each checks its own bounds): this runs for every
/// packet, and the checks are the same as `Ipv4Packet::check_len`'s.
#[inline]
fn parse_ip(f: &Forwarder, frame: &[u8], verify: bool) -> Parsed {
    let Some((eth, bytes)) = frame.split_first_chunk::<ETH>() else {
        return Parsed::Done(Verdict::NotMine);
    };
    if eth[ethernet::DESTINATION] != f.mac.0 || eth[ethernet::ETHERTYPE] != ethernet::IPV4 {
        return Parsed::Done(Verdict::NotMine);
    }
    let Some(h) = bytes.first_chunk::<{ ipv4::HEADER_LEN }>() else {
        return Parsed::Done(Verdict::Drop(DropReason::Ipv4Truncated));
    };
    let ihl = usize::from(h[ipv4::VER_IHL] & 0x0f) * 4;
    let total = usize::from(rd16(h, ipv4::LENGTH));
    if h[ipv4::VER_IHL] >> 4 != 4 || ihl < ipv4::HEADER_LEN || total < ihl || bytes.len() < total {
        return Parsed::Done(Verdict::Drop(DropReason::Ipv4BadHeader));
    }
    let src = Ipv4Addr::from(rd32(h, ipv4::SRC_ADDR));
    let dst = Ipv4Addr::from(rd32(h, ipv4::DST_ADDR));
    if !f.vip_addrs.contains(&dst) && !f.addrs.contains(&dst) {
        return Parsed::Done(Verdict::NotMine);
    }
    let bad_checksum = || if ihl == ipv4::HEADER_LEN { !header20_ok(h) } else { bytes.get(..ihl).is_none_or(|h| checksum(h) != 0) };
    if verify && bad_checksum() {
        return Parsed::Done(Verdict::Drop(DropReason::Ipv4BadChecksum));
    }
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
        return Parsed::Done(Verdict::Drop(DropReason::MartianSource));
    }
    Parsed::Ip(Ip {
        ihl,
        total,
        src,
        dst,
        proto: h[ipv4::PROTOCOL],
        ttl: h[ipv4::TTL],
    })
}

fn is_fragment(frame: &[u8]) -> bool {
    // Flags/fragment offset word: MF bit or a non-zero offset.
    rd16(frame, at(ipv4::FLG_OFF, ETH)) & ipv4::MF_OFFSET != 0
}

/// Ports and flags of a TCP/UDP payload, with the checks of smoltcp's
/// `TcpPacket`/`UdpPacket::check_len` (header within the payload; TCP data
/// offset at least 5 words; UDP length at least 8 and within the payload).
#[inline]
fn l4(proto: u8, payload: &[u8]) -> Result<(u16, u16, Flags), DropReason> {
    if proto == TCP {
        let Some(t) = payload.first_chunk::<{ tcp::HEADER_LEN }>() else { return Err(DropReason::TcpMalformed) };
        let doff = usize::from(t[tcp::DATA_OFF] >> 4) * 4;
        if doff < tcp::HEADER_LEN || doff > payload.len() {
            return Err(DropReason::TcpMalformed);
        }
        let flags = Flags::tcp(t[tcp::FLAGS]);
        Ok((rd16(t, tcp::SRC_PORT), rd16(t, tcp::DST_PORT), flags))
    } else {
        let Some(u) = payload.first_chunk::<{ udp::HEADER_LEN }>() else { return Err(DropReason::UdpMalformed) };
        let len = usize::from(rd16(u, udp::LENGTH));
        if len < udp::HEADER_LEN || len > payload.len() {
            return Err(DropReason::UdpMalformed);
        }
        Ok((rd16(u, udp::SRC_PORT), rd16(u, udp::DST_PORT), Flags::default()))
    }
}

/// The VIP `addr:port/proto`, else the all-ports VIP `addr:0/proto`: a
/// pass over the VIPs' one-word keys for the first, a second only if it
/// is not there.
#[inline]
pub(crate) fn find_vip(f: &Forwarder, addr: Ipv4Addr, port: u16, proto: u8) -> Option<usize> {
    let exact = vip_key(addr, port, proto);
    let any = vip_key(addr, 0, proto);
    let i = f.vip_keys.iter().position(|&k| k == exact).or_else(|| f.vip_keys.iter().position(|&k| k == any))?;
    f.vip_ids.get(i).map(|&id| usize::from(id))
}

/// The VIP installed under `id`.
#[inline]
pub(crate) fn vip_rt(vips: &[Option<VipRt>], id: usize) -> Option<&VipRt> {
    vips.get(id)?.as_ref()
}

/// The VIP that created entry `e`, if it is still installed as it was.
#[inline]
fn owner_vip<'a>(vips: &'a mut [Option<VipRt>], e: &Entry) -> Option<&'a mut VipRt> {
    let id = usize::from(e.vip);
    vips.get_mut(id)?.as_mut().filter(|v| v.owns(id, e))
}

/// Counts `v` under VIP `id` when it is a drop: the VIP's own drop counters
/// (the lcore's are counted by the caller of `process`).
#[inline]
pub(crate) fn attribute(f: &mut Forwarder, id: usize, v: Verdict) -> Verdict {
    if let Verdict::Drop(r) = v {
        if let Some(Some(vip)) = f.vips.get_mut(id) {
            if let Some(n) = vip.drops.get_mut(r.index()) {
                *n += 1;
            }
        }
    }
    v
}

/// What a read-only first look at a frame found, so that every drop is
/// decided before the first byte is written (see the module docs).
#[derive(Clone, Copy, Debug)]
enum Staged {
    /// Decided without the table.
    Done(Verdict),
    /// Dropped, and counted under VIP `vip` too.
    Refused { vip: usize, reason: DropReason },
    /// TCP/UDP to a forwarding VIP (`vip`), or to an own address (`None`:
    /// perhaps a FullNAT reply).
    Flow {
        ip: Ip,
        key: Key,
        hashed: Hashed,
        flags: Flags,
        vip: Option<usize>,
    },
    /// ICMP to a VIP or an own address.
    Icmp { ip: Ip, to_vip: bool },
}

/// The VIP a fragment to a VIP address is for, when it can be told: the
/// first fragment by its destination port, a later one (no ports) only when
/// the address has an all-ports VIP for its protocol.
fn fragment_vip(f: &Forwarder, frame: &[u8], ip: &Ip) -> Option<usize> {
    let first = rd16(frame, at(ipv4::FLG_OFF, ETH)) & ipv4::OFFSET == 0;
    let payload = frame.get(ETH + ip.ihl..ETH + ip.total).unwrap_or(&[]);
    // 0 when the ports are not there (rd16 of a short slice).
    let port = if first { rd16(payload, udp::DST_PORT) } else { 0 };
    find_vip(f, ip.dst, port, ip.proto)
}

/// Parses and validates `frame` (everything that does not need the table).
#[inline]
fn stage(f: &Forwarder, frame: &[u8]) -> Staged {
    let ip = match parse_ip(f, frame, true) {
        Parsed::Ip(ip) => ip,
        Parsed::Done(v) => return Staged::Done(v),
    };
    let to_vip = f.vip_addrs.contains(&ip.dst);
    if is_fragment(frame) {
        if !to_vip {
            return Staged::Done(Verdict::NotMine);
        }
        return match fragment_vip(f, frame, &ip) {
            Some(vip) => Staged::Refused { vip, reason: DropReason::Fragment },
            None => Staged::Done(Verdict::Drop(DropReason::Fragment)),
        };
    }
    let Some(payload) = frame.get(ETH + ip.ihl..ETH + ip.total) else {
        return Staged::Done(Verdict::Drop(DropReason::Ipv4BadHeader));
    };
    match ip.proto {
        TCP | UDP => {
            let (sport, dport, flags) = match l4(ip.proto, payload) {
                Ok(x) => x,
                Err(r) => return Staged::Done(Verdict::Drop(r)),
            };
            let vip = if to_vip { find_vip(f, ip.dst, dport, ip.proto) } else { None };
            if vip.is_none() && !f.addrs.contains(&ip.dst) {
                return Staged::Done(Verdict::NotMine);
            }
            let key = Key {
                src: u32::from(ip.src),
                dst: u32::from(ip.dst),
                sport,
                dport,
                proto: ip.proto,
            };
            Staged::Flow {
                ip,
                key,
                hashed: f.table.hash(&key),
                flags,
                vip,
            }
        }
        ICMP => Staged::Icmp { ip, to_vip },
        _ => Staged::Done(Verdict::NotMine),
    }
}

/// Acts on a staged frame: `buf[start..start + len]` must be the frame
/// `stage` looked at, unchanged.
#[inline]
fn act(f: &mut Forwarder, now_ns: u64, buf: &mut [u8], start: usize, len: usize, staged: Staged) -> Verdict {
    let now = tick(now_ns);
    match staged {
        Staged::Done(v) => v,
        Staged::Refused { vip, reason } => attribute(f, vip, Verdict::Drop(reason)),
        Staged::Flow {
            ip,
            key,
            hashed,
            flags,
            vip: Some(vip),
        } => {
            let v = forward(f, now_ns, now, buf, start, &ip, vip, (key, hashed), flags);
            attribute(f, vip, v)
        }
        Staged::Flow {
            ip,
            key,
            hashed,
            flags,
            vip: None,
        } => reply(f, now, buf, start, &ip, (key, hashed), flags),
        Staged::Icmp { ip, to_vip } => icmp(f, now_ns, now, buf, start, len, &ip, to_vip),
    }
}

pub(crate) fn process(f: &mut Forwarder, now_ns: u64, buf: &mut [u8], start: usize, len: usize) -> Verdict {
    let Some(end) = start.checked_add(len).filter(|_| buf.len() <= u32::MAX as usize) else {
        return Verdict::Drop(DropReason::BadBuffer);
    };
    let Some(frame) = buf.get(start..end) else {
        return Verdict::Drop(DropReason::BadBuffer);
    };
    let staged = stage(f, frame);
    act(f, now_ns, buf, start, len, staged)
}
