//! The per-packet path. Everything is parsed and every drop decided before
//! the first byte of the frame is written, so a dropped frame is unchanged.

use std::net::Ipv4Addr;

use fulcrum_maglev::{addr_hash, flow_hash};
use smoltcp::wire::Icmpv4Packet;

use crate::conntrack::{tick, Entry, Hashed, Key, Reclaimed, State, Table, F_REVERSE, NO_TWIN};
use crate::csum::{checksum, checksum20, update16, update32};
use crate::field::{at, ethernet, icmp, ipv4, tcp, udp, Field};
use crate::vips::{Rewrite, VipRt};
use crate::{tunnel_entropy, vip_key, DropReason, Forwarder, Verdict};
use fulcrum_model::steer::{owner_of_flow, owner_of_port};
use fulcrum_model::{Affinity, Encap};

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
    let bad_checksum = || if ihl == ipv4::HEADER_LEN { checksum20(h) != 0 } else { bytes.get(..ihl).is_none_or(|h| checksum(h) != 0) };
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

/// The VIP `addr:port/proto`, else the all-ports VIP `addr:0/proto`: one
/// pass over the VIPs' one-word keys.
#[inline]
pub(crate) fn find_vip(f: &Forwarder, addr: Ipv4Addr, port: u16, proto: u8) -> Option<usize> {
    let exact = vip_key(addr, port, proto);
    let any = vip_key(addr, 0, proto);
    let mut any_port = None;
    for (i, &k) in f.vip_keys.iter().enumerate() {
        if k == exact {
            return f.vip_ids.get(i).map(|&id| usize::from(id));
        }
        if k == any && any_port.is_none() {
            any_port = Some(i);
        }
    }
    any_port.and_then(|i| f.vip_ids.get(i)).map(|&id| usize::from(id))
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

/// A quoted (inner) TCP/UDP header inside an ICMP error.
#[derive(Clone, Copy, Debug)]
struct Quote {
    /// Offset of the ICMP message in the frame.
    icmp: usize,
    /// Inner IPv4 header length.
    ihl: usize,
    key: Key,
}

/// Parses an ICMP error's quote; `Ok(None)` for ICMP that is not an error we
/// handle (echo request: `Some` is never returned for it).
fn quote(frame: &[u8], ip: &Ip) -> Result<Option<Quote>, DropReason> {
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

/// The lcore that must handle `frame` (see `Forwarder::owner`).
pub(crate) fn owner(f: &Forwarder, frame: &[u8]) -> Option<usize> {
    let Parsed::Ip(ip) = parse_ip(f, frame, false) else { return None };
    if is_fragment(frame) {
        return None;
    }
    let payload = frame.get(ETH + ip.ihl..ETH + ip.total)?;
    let to_vip = f.vip_addrs.contains(&ip.dst);
    match ip.proto {
        TCP | UDP => {
            let (sport, dport, _) = l4(ip.proto, payload).ok()?;
            if to_vip && find_vip(f, ip.dst, dport, ip.proto).is_some() {
                Some(owner_of_flow(ip.src, sport, ip.dst, dport, f.lcores))
            } else if f.addrs.contains(&ip.dst) {
                Some(owner_of_port(dport, f.lcores))
            } else {
                None
            }
        }
        ICMP => {
            let q = quote(frame, &ip).ok()??;
            let k = q.key;
            if to_vip && find_vip(f, Ipv4Addr::from(k.src), k.sport, k.proto).is_some() {
                Some(owner_of_flow(Ipv4Addr::from(k.dst), k.dport, Ipv4Addr::from(k.src), k.sport, f.lcores))
            } else if f.addrs.contains(&ip.dst) {
                Some(owner_of_port(k.sport, f.lcores))
            } else {
                None
            }
        }
        _ => None,
    }
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

fn timeout(f: &Forwarder, s: State) -> u32 {
    f.timeouts.get(s as usize).copied().unwrap_or(1)
}

fn initial_state(proto: u8, fl: Flags) -> State {
    if proto != TCP {
        State::Udp
    } else if fl.has(RST) {
        State::Closed
    } else if fl.has(FIN) {
        State::Closing
    } else if fl.has(SYN) && !fl.has(ACK) {
        State::SynSent
    } else {
        State::Established
    }
}

#[inline]
fn next_state(s: State, fl: Flags) -> State {
    match s {
        State::Udp => State::Udp,
        _ if fl.has(RST) => State::Closed,
        _ if fl.has(FIN) => State::Closing,
        // A new SYN on a closed tuple: the port is being reused.
        State::Closing | State::Closed if fl.has(SYN) && !fl.has(ACK) => State::SynSent,
        State::SynSent if fl.has(ACK) && !fl.has(SYN) => State::Established,
        s => s,
    }
}

/// Advances entry `e`'s state for a packet with flags `fl` and restarts its
/// timeout; its twin (if any) must get the same (see [`sync_twin`]).
#[inline]
fn touch(e: &mut Entry, timeouts: &[u32; 6], now: u32, fl: Flags) {
    let s = next_state(State::from_u8(e.state), fl);
    e.state = s as u8;
    e.deadline = now.wrapping_add(timeouts.get(s as usize).copied().unwrap_or(1));
}

/// Gives entry `e`'s twin (if it has one) `e`'s state and deadline.
#[inline]
fn sync_twin(table: &mut Table, &Entry { twin, state, deadline, .. }: &Entry) {
    if twin != NO_TWIN {
        if let Some(t) = table.get_mut(twin) {
            t.state = state;
            t.deadline = deadline;
        }
    }
}

#[inline]
fn account_reclaimed(f: &mut Forwarder, rec: Reclaimed) {
    f.counters.evictions += rec.evicted;
    f.counters.expired += rec.expired;
}

/// Counts a forwarded packet under its VIP and (if still installed) backend.
#[inline]
fn account(vips: &mut [Option<VipRt>], e: &Entry, bytes: usize, new_flow: bool) {
    let Some(v) = owner_vip(vips, e) else { return };
    let (baddr, bport) = if e.flags & F_REVERSE != 0 { (e.src, e.sport) } else { (e.new_dst, e.new_dport) };
    v.traffic.packets += 1;
    v.traffic.bytes += bytes as u64;
    v.traffic.new_flows += u64::from(new_flow);
    let bi = usize::from(e.backend);
    if let (Some(b), Some(t)) = (v.backends.get(bi), v.backend_traffic.get_mut(bi)) {
        // Port 0: the backend takes the client's destination port.
        let port_ok = b.cfg.port == bport || b.cfg.port == 0;
        if u32::from(b.cfg.address) == baddr && port_ok {
            t.packets += 1;
            t.bytes += bytes as u64;
            t.new_flows += u64::from(new_flow);
        }
    }
}

/// MAC of backend `bi` of VIP `vip`: configured, or resolved.
fn backend_mac(f: &mut Forwarder, vip: usize, bi: usize, now_ns: u64) -> Option<[u8; 6]> {
    let b = *vip_rt(&f.vips, vip)?.backends.get(bi)?;
    match (b.cfg.mac, b.neigh) {
        (Some(m), _) => Some(m),
        (None, Some(n)) => f.neigh.resolve(n, now_ns),
        (None, None) => None,
    }
}

/// Picks a FullNAT source address and port for a flow to `backend:bport`.
fn alloc_port(f: &mut Forwarder, backend: u32, bport: u16, proto: u8, now: u32) -> Option<(u32, u16)> {
    let n_ports = f.ports.len();
    let space = n_ports.checked_mul(f.addrs.len())?;
    if space == 0 {
        return None;
    }
    for _ in 0..space.min(64) {
        let c = f.port_cursor % space;
        f.port_cursor = (c + 1) % space;
        let addr = u32::from(*f.addrs.get(c / n_ports)?);
        let port = *f.ports.get(c % n_ports)?;
        let k = Key {
            src: backend,
            dst: addr,
            sport: bport,
            dport: port,
            proto,
        };
        if !f.table.contains(&k, now) {
            return Some((addr, port));
        }
    }
    None
}

/// Client -> VIP.
#[allow(clippy::too_many_arguments)]
#[inline]
fn forward(
    f: &mut Forwarder,
    now_ns: u64,
    now: u32,
    buf: &mut [u8],
    start: usize,
    ip: &Ip,
    vip: usize,
    (key, hashed): (Key, Hashed),
    fl: Flags,
) -> Verdict {
    let Some(v) = vip_rt(&f.vips, vip) else { return Verdict::NotMine };
    let mode = v.rewrite;
    if let Some(v) = refuse(f, buf, start, ip, mode) {
        return v;
    }
    let mut rec = Reclaimed::default();
    let mut hit = f.table.find(&key, &hashed, now, &mut rec);
    if let Some(i) = hit {
        // An entry of a VIP that is gone, or that changed identity under this
        // id: never applied; freed (with its twin) as if it had expired.
        let stale = match (f.table.get(i), vip_rt(&f.vips, vip)) {
            (Some(e), Some(v)) => !v.owns(vip, e),
            _ => true,
        };
        if stale {
            f.table.remove(i);
            rec.expired += 1;
            hit = None;
        }
    }
    account_reclaimed(f, rec);
    let (idx, fl) = match hit {
        Some(i) => (i, Some(fl)),
        None => match create(f, now_ns, now, buf, start, vip, mode, key, fl) {
            Ok(i) => (i, None),
            Err(r) => return Verdict::Drop(r),
        },
    };
    deliver(f, now, buf, start, ip, idx, mode, key, fl).unwrap_or(Verdict::Drop(DropReason::NoBackend))
}

/// What the VIP's mode does instead of forwarding, decided before any
/// lookup: a drop, or an ICMP fragmentation-needed answer.
#[inline]
pub(crate) fn refuse(f: &mut Forwarder, buf: &mut [u8], start: usize, ip: &Ip, mode: Rewrite) -> Option<Verdict> {
    match mode {
        Rewrite::Dsr => None,
        Rewrite::Tunnel { encap, .. } => {
            if ip.ttl <= 1 {
                return Some(Verdict::Drop(DropReason::TtlExceeded));
            }
            let overhead = overhead(encap);
            if ip.total + overhead > usize::from(f.mtu) {
                if rd16(buf, at(ipv4::FLG_OFF, start + ETH)) & ipv4::DF == 0 {
                    return Some(Verdict::Drop(DropReason::TooBig));
                }
                let next_hop_mtu = usize::from(f.mtu).saturating_sub(overhead) as u16;
                return Some(too_big(f, buf, start, ip, next_hop_mtu));
            }
            (start < overhead).then_some(Verdict::Drop(DropReason::NoHeadroom))
        }
        Rewrite::FullNat => {
            if ip.ihl > 20 {
                return Some(Verdict::Drop(DropReason::IpOptions));
            }
            (ip.ttl <= 1).then_some(Verdict::Drop(DropReason::TtlExceeded))
        }
    }
}

/// A client -> VIP packet of the flow in entry `idx`: its state (`fl`, the
/// packet's flags; `None` for the packet that just created the flow),
/// counters and rewrite. `None` if there is no entry `idx`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn deliver(
    f: &mut Forwarder,
    now: u32,
    buf: &mut [u8],
    start: usize,
    ip: &Ip,
    idx: u32,
    mode: Rewrite,
    key: Key,
    fl: Option<Flags>,
) -> Option<Verdict> {
    let Forwarder { table, vips, timeouts, mac, .. } = f;
    let e = table.get_mut(idx)?;
    if let Some(fl) = fl {
        touch(e, timeouts, now, fl);
    }
    account(vips, e, ip.total, fl.is_none());
    let v = apply(mac.0, buf, start, ip, e, mode, key);
    if fl.is_some() {
        let e = *e;
        sync_twin(table, &e);
    }
    Some(v)
}

#[allow(clippy::too_many_arguments)]
fn create(
    f: &mut Forwarder,
    now_ns: u64,
    now: u32,
    buf: &[u8],
    start: usize,
    vip: usize,
    mode: Rewrite,
    key: Key,
    fl: Flags,
) -> Result<u32, DropReason> {
    let is_syn = fl.has(SYN) && !fl.has(ACK);
    if mode == Rewrite::FullNat && key.proto == TCP && !is_syn {
        return Err(DropReason::NoSyn);
    }
    let v = vip_rt(&f.vips, vip).ok_or(DropReason::NoBackend)?;
    let vip_index = v.index;
    let fh = maglev_key(f.flow_seed, v.affinity, key.src, key.sport, key.dst, key.dport, key.proto);
    let bi = v.table().lookup(fh).ok_or(DropReason::NoBackend)?;
    let b = v.backends.get(bi).ok_or(DropReason::NoBackend)?.cfg;
    let mac = backend_mac(f, vip, bi, now_ns).ok_or(DropReason::NeighbourUnresolved)?;
    let state = initial_state(key.proto, fl);
    let deadline = now.wrapping_add(timeout(f, state));
    let bport = if b.port == 0 { key.dport } else { b.port };
    let base = Entry {
        src: key.src,
        dst: key.dst,
        sport: key.sport,
        dport: key.dport,
        proto: key.proto,
        state: state as u8,
        deadline,
        new_dst: u32::from(b.address),
        new_dport: bport,
        mac,
        vip: vip as u16,
        vip_index,
        backend: bi as u16,
        twin: NO_TWIN,
        ..Entry::default()
    };
    let mut rec = Reclaimed::default();
    let idx = if mode == Rewrite::FullNat {
        let (snat, sport) = alloc_port(f, u32::from(b.address), bport, key.proto, now).ok_or(DropReason::NoPort)?;
        let mut client_mac = [0u8; 6];
        if let Some(m) = buf.get(at(ethernet::SOURCE, start)) {
            client_mac.copy_from_slice(m);
        }
        let fwd = Entry {
            new_src: snat,
            new_sport: sport,
            ..base
        };
        let rev = Entry {
            src: u32::from(b.address),
            dst: snat,
            sport: bport,
            dport: sport,
            flags: F_REVERSE,
            new_src: key.dst,
            new_sport: key.dport,
            new_dst: key.src,
            new_dport: key.sport,
            mac: client_mac,
            ..base
        };
        let i = f.table.insert(fwd, now, NO_TWIN, &mut rec);
        let j = f.table.insert(rev, now, i, &mut rec);
        if let Some(e) = f.table.get_mut(i) {
            e.twin = j;
        }
        if let Some(e) = f.table.get_mut(j) {
            e.twin = i;
        }
        i
    } else {
        f.table.insert(base, now, NO_TWIN, &mut rec)
    };
    account_reclaimed(f, rec);
    f.counters.new_flows += 1;
    Ok(idx)
}

fn overhead(encap: Encap) -> usize {
    match encap {
        Encap::Ipip => 20,
        Encap::Gue => 28,
    }
}

/// Rewrites the frame for entry `e` (a client -> VIP flow, or an ICMP error
/// about one in DSR/tunnel mode, with `client` its client side).
#[inline(always)]
fn apply(our_mac: [u8; 6], buf: &mut [u8], start: usize, ip: &Ip, e: &Entry, mode: Rewrite, client: Key) -> Verdict {
    match mode {
        Rewrite::Dsr => {
            let Some(frame) = buf.get_mut(start..start + ETH + ip.total) else {
                return Verdict::Drop(DropReason::BadBuffer);
            };
            set_macs(frame, e.mac, our_mac);
            Verdict::Transmit {
                start: start as u32,
                len: (ETH + ip.total) as u32,
            }
        }
        Rewrite::Tunnel {
            encap,
            src_prefix,
            src_prefix_len,
            gue_port,
        } => encapsulate(our_mac, buf, start, ip, e, (encap, gue_port), (src_prefix, src_prefix_len), client),
        Rewrite::FullNat => {
            let Some(frame) = buf.get_mut(start..start + ETH + ip.total) else {
                return Verdict::Drop(DropReason::BadBuffer);
            };
            nat(frame, ip, e);
            set_macs(frame, e.mac, our_mac);
            Verdict::Transmit {
                start: start as u32,
                len: (ETH + ip.total) as u32,
            }
        }
    }
}

/// Decrements the TTL of the IPv4 header at `ip` (caller checked TTL > 1).
fn dec_ttl(ip: &mut [u8]) {
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
fn encapsulate(
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

/// Rewrites addresses, ports and TTL to entry `e`'s action, with
/// incremental checksum updates.
#[inline(never)]
fn nat(frame: &mut [u8], ip: &Ip, e: &Entry) {
    let Some(h) = frame.get_mut(ETH..ETH + ip.total) else { return };
    let (old_src, old_dst) = (rd32(h, ipv4::SRC_ADDR), rd32(h, ipv4::DST_ADDR));
    let mut c = rd16(h, ipv4::CHECKSUM);
    c = update32(c, old_src, e.new_src);
    c = update32(c, old_dst, e.new_dst);
    let old_ttl = rd16(h, ipv4::TTL_PROTOCOL);
    let new_ttl = old_ttl.wrapping_sub(0x0100);
    c = update16(c, old_ttl, new_ttl);
    wr16(h, ipv4::TTL_PROTOCOL, new_ttl);
    wr32(h, ipv4::SRC_ADDR, e.new_src);
    wr32(h, ipv4::DST_ADDR, e.new_dst);
    wr16(h, ipv4::CHECKSUM, c);
    let ihl = ip.ihl;
    let Some(l4) = h.get_mut(ihl..) else { return };
    let csum = if ip.proto == TCP { tcp::CHECKSUM } else { udp::CHECKSUM };
    let (old_sp, old_dp) = (rd16(l4, udp::SRC_PORT), rd16(l4, udp::DST_PORT));
    wr16(l4, udp::SRC_PORT, e.new_sport);
    wr16(l4, udp::DST_PORT, e.new_dport);
    let c = rd16(l4, csum.clone());
    if ip.proto == UDP && c == 0 {
        return; // no checksum
    }
    let mut c = update32(c, old_src, e.new_src);
    c = update32(c, old_dst, e.new_dst);
    c = update16(c, old_sp, e.new_sport);
    c = update16(c, old_dp, e.new_dport);
    if ip.proto == UDP && c == 0 {
        c = 0xffff;
    }
    wr16(l4, csum, c);
}

/// Backend -> SNAT address (FullNAT reply).
fn reply(f: &mut Forwarder, now: u32, buf: &mut [u8], start: usize, ip: &Ip, (key, hashed): (Key, Hashed), fl: Flags) -> Verdict {
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

/// Answers a too-big packet with ICMP fragmentation needed, in place: the
/// quote is the IPv4 header and the first 8 payload bytes.
fn too_big(f: &mut Forwarder, buf: &mut [u8], start: usize, ip: &Ip, mtu: u16) -> Verdict {
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

#[allow(clippy::too_many_arguments)]
fn icmp(f: &mut Forwarder, now_ns: u64, now: u32, buf: &mut [u8], start: usize, len: usize, ip: &Ip, to_vip: bool) -> Verdict {
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
fn icmp_to_vip(
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
fn translate_icmp_for_entry(f: &mut Forwarder, buf: &mut [u8], start: usize, ip: &Ip, q: &Quote, e: &Entry) -> Verdict {
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

struct Translation {
    outer_src: u32,
    outer_dst: u32,
    inner_src: (u32, u16),
    inner_dst: (u32, u16),
    mac: [u8; 6],
}

/// Rewrites an ICMP error: outer addresses (and TTL), the quoted header's
/// addresses and ports (its IPv4 checksum, and its L4 checksum when quoted),
/// and recomputes the ICMP checksum.
fn translate_icmp(f: &Forwarder, buf: &mut [u8], start: usize, ip: &Ip, q: &Quote, t: &Translation) -> Verdict {
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

fn nat_outer(frame: &mut [u8], src: u32, dst: u32) {
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

/// The Maglev key of a new flow: its 5-tuple, or its client address alone.
pub(crate) fn maglev_key(seed: u64, affinity: Affinity, src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> u64 {
    match affinity {
        Affinity::Flow => flow_hash(seed, Ipv4Addr::from(src).into(), sport, Ipv4Addr::from(dst).into(), dport, proto),
        Affinity::Client => addr_hash(seed, Ipv4Addr::from(src).into()),
    }
}
