//! Client -> VIP: the flow's tracking state, its creation (the Maglev
//! choice, a FullNAT source port), the checks a VIP's rewrite makes before
//! any lookup, and the rewrite itself.

use super::*;

pub(super) fn timeout(f: &Forwarder, s: State) -> u32 {
    f.timeouts.get(s as usize).copied().unwrap_or(1)
}

pub(super) fn initial_state(proto: u8, fl: Flags) -> State {
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
pub(super) fn next_state(s: State, fl: Flags) -> State {
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
pub(super) fn touch(e: &mut Entry, timeouts: &[u32; 6], now: u32, fl: Flags) {
    let s = next_state(State::from_u8(e.state), fl);
    e.state = s as u8;
    e.deadline = now.wrapping_add(timeouts.get(s as usize).copied().unwrap_or(1));
}

/// Gives entry `e`'s twin (if it has one) `e`'s state and deadline.
#[inline]
pub(super) fn sync_twin(table: &mut Table, &Entry { twin, state, deadline, .. }: &Entry) {
    if twin != NO_TWIN {
        if let Some(t) = table.get_mut(twin) {
            t.state = state;
            t.deadline = deadline;
        }
    }
}

#[inline]
pub(super) fn account_reclaimed(f: &mut Forwarder, rec: Reclaimed) {
    f.counters.evictions += rec.evicted;
    f.counters.expired += rec.expired;
}

/// Counts a forwarded packet under its VIP and (if still installed) backend.
#[inline]
pub(super) fn account(vips: &mut [Option<VipRt>], e: &Entry, bytes: usize, new_flow: bool) {
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
pub(super) fn backend_mac(f: &mut Forwarder, vip: usize, bi: usize, now_ns: u64) -> Option<[u8; 6]> {
    let b = *vip_rt(&f.vips, vip)?.backends.get(bi)?;
    match (b.cfg.mac, b.neigh) {
        (Some(m), _) => Some(m),
        (None, Some(n)) => f.neigh.resolve(n, now_ns),
        (None, None) => None,
    }
}

/// Picks a FullNAT source address and port for a flow to `backend:bport`.
pub(super) fn alloc_port(f: &mut Forwarder, backend: u32, bport: u16, proto: u8, now: u32) -> Option<(u32, u16)> {
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
pub(super) fn forward(
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
pub(super) fn create(
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

/// Rewrites the frame for entry `e` (a client -> VIP flow, or an ICMP error
/// about one in DSR/tunnel mode, with `client` its client side).
#[inline(always)]
pub(super) fn apply(our_mac: [u8; 6], buf: &mut [u8], start: usize, ip: &Ip, e: &Entry, mode: Rewrite, client: Key) -> Verdict {
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

/// The Maglev key of a new flow: its 5-tuple, or its client address alone.
pub(crate) fn maglev_key(seed: u64, affinity: Affinity, src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> u64 {
    match affinity {
        Affinity::Flow => flow_hash(seed, Ipv4Addr::from(src).into(), sport, Ipv4Addr::from(dst).into(), dport, proto),
        Affinity::Client => addr_hash(seed, Ipv4Addr::from(src).into()),
    }
}
