//! Client -> VIP: the flow's tracking state, its creation (the Maglev
//! choice, a FullNAT source port), the checks a VIP's rewrite makes before
//! any lookup, and the rewrite itself.
//!
//! Flood defences (crate docs, "Under a SYN/ACK flood") live here, all on
//! the new-flow path ([`create`]) except the probation confirmation and the
//! half-open settling, which `touch`/`deliver` do with one byte compare
//! each on the established path.

use super::*;
use crate::conntrack::{ticks, F_HALF_OPEN};
use crate::vips::BackendRt;
use crate::{Seen, Ticks};
use std::time::Duration;

pub(super) fn timeout(f: &Forwarder, s: State) -> u32 {
    f.timeouts.by_state.get(s as usize).copied().unwrap_or(1)
}

/// Most (address, port) candidates a FullNAT source-port search tries.
pub(crate) const PORT_PROBES: usize = 64;

/// Most half-open ring entries a SYN finding the quota full looks at.
const HALF_OPEN_RECLAIM: usize = 8;

/// The source-port hash keys from `seed` (splitmix64 steps).
pub(crate) fn port_keys(seed: u64) -> [u64; 3] {
    let mut x = seed;
    [0; 3].map(|_| {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) | 1
    })
}

/// Where a FullNAT source-port search starts in a space of `space`
/// (address, port) candidates: a keyed hash of the client and backend
/// sides of the flow (RFC 6056 algorithm 3's `F(..., secret)`), mapped onto
/// `0..space` by multiply-shift.
pub(crate) fn port_start(keys: &[u64; 3], client: (u32, u16), backend: (u32, u16), proto: u8, space: usize) -> usize {
    let fold = |a: u64, b: u64| {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    };
    let addrs = u64::from(client.0) << 32 | u64::from(backend.0);
    let rest = u64::from(client.1) << 32 | u64::from(backend.1) << 16 | u64::from(proto);
    let h = fold(fold(addrs ^ keys[0], rest ^ keys[1]), keys[2]);
    ((u128::from(h) * space as u128) >> 64) as usize
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
        // Mid-stream: alive only once it shows it (see `touch`).
        State::Probation
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

/// Whether a packet with flags `fl` keeps an entry in state `state` as it
/// is and only restarts its timeout (see [`touch`]).
#[inline(always)]
pub(crate) fn steady(state: u8, fl: Flags) -> bool {
    state == State::Udp as u8 || (state == State::Established as u8 && !fl.has(SYN | FIN | RST))
}

/// Advances entry `e`'s state for a packet with flags `fl` and restarts its
/// timeout; its twin (if any) must get the same (see [`sync_twin`]).
/// A probation entry that sees a packet at least `confirm` ticks after its
/// creation becomes established: returns whether this packet did that.
#[inline]
pub(crate) fn touch(e: &mut Entry, t: &Ticks, now: u32, fl: Flags) -> bool {
    // The steady states, nearly every packet: an established TCP flow's
    // packet without SYN, FIN or RST, or a UDP flow's, keeps its state
    // (`next_state` returns it unchanged) and only restarts its timeout.
    if steady(e.state, fl) {
        restart(e, t, now);
        return false;
    }
    touch_general(e, t, now, fl)
}

/// [`touch`] through the state machine for every packet, steady or not:
/// what `touch` does without its shortcut (the tests hold the shortcut to
/// it for every state and flags byte).
#[inline]
fn touch_general(e: &mut Entry, t: &Ticks, now: u32, fl: Flags) -> bool {
    let mut s = next_state(State::from_u8(e.state), fl);
    let confirmed = s == State::Probation && now.wrapping_sub(e.born) >= t.confirm;
    if confirmed {
        s = State::Established;
    }
    e.state = s as u8;
    e.deadline = now.wrapping_add(t.by_state.get(s as usize).copied().unwrap_or(1));
    confirmed
}

/// Restarts entry `e`'s timeout in its state: what [`touch`] does for a
/// packet that keeps the state ([`steady`]).
#[inline(always)]
pub(crate) fn restart(e: &mut Entry, t: &Ticks, now: u32) {
    e.deadline = now.wrapping_add(t.by_state.get(usize::from(e.state)).copied().unwrap_or(1));
}

/// Gives entry `e`'s twin (if it has one) `e`'s state and deadline, and
/// settles the pair's half-open count once it has left the SYN state.
#[inline]
pub(super) fn sync_twin(table: &mut Table, &Entry { twin, state, deadline, .. }: &Entry) {
    sync_twin_of(table, twin, state, deadline);
}

/// [`sync_twin`] with the entry's `twin`, `state` and `deadline`.
#[inline]
pub(crate) fn sync_twin_of(table: &mut Table, twin: u32, state: u8, deadline: u32) {
    if twin != NO_TWIN {
        let mut settle = false;
        if let Some(t) = table.get_mut(twin) {
            t.state = state;
            t.deadline = deadline;
            settle = t.flags & F_HALF_OPEN != 0 && state != State::SynSent as u8;
        }
        if settle {
            table.settle(twin);
        }
    }
}

#[inline]
pub(super) fn account_reclaimed(f: &mut Forwarder, rec: Reclaimed) {
    f.counters.evictions += rec.evicted;
    f.counters.evictions_unconfirmed += rec.evicted_unconfirmed;
    f.counters.evictions_established += rec.evicted_established;
    f.counters.expired += rec.expired;
}

/// Counts a forwarded packet under its VIP and (if still installed) backend.
#[inline]
pub(super) fn account(vips: &mut [Option<VipRt>], e: &Entry, bytes: usize, new_flow: bool) {
    if let Some(v) = owner_vip(vips, e) {
        account_to(v, e, bytes, new_flow);
    }
}

/// [`account`] with the VIP that owns `e`.
#[inline(always)]
pub(crate) fn account_to(v: &mut VipRt, e: &Entry, bytes: usize, new_flow: bool) {
    v.traffic.packets += 1;
    v.traffic.bytes += bytes as u64;
    v.traffic.new_flows += u64::from(new_flow);
    let bi = usize::from(e.backend);
    // Created with this backend list (nearly always): `bi` is its backend.
    let current = e.backends_stamp == v.backends_stamp && e.backends_stamp != 0;
    if let Some(t) = v.backend_traffic.get_mut(bi) {
        if current || still_backend(v.backends.get(bi), e) {
            t.packets += 1;
            t.bytes += bytes as u64;
            t.new_flows += u64::from(new_flow);
        }
    }
}

/// Whether `b` (the VIP's backend at `e.backend` now) is still the one
/// entry `e` was created with: same address and port.
#[inline(never)]
fn still_backend(b: Option<&BackendRt>, e: &Entry) -> bool {
    let (baddr, bport) = if e.flags & F_REVERSE != 0 { (e.src, e.sport) } else { (e.new_dst, e.new_dport) };
    // Port 0: the backend takes the client's destination port.
    b.is_some_and(|b| u32::from(b.cfg.address) == baddr && (b.cfg.port == bport || b.cfg.port == 0))
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

/// Picks a FullNAT source address and port for the flow from `client` to
/// `backend:bport`: from [`port_start`] on, the first (address, port) of
/// this lcore's whose reply tuple is free, trying at most [`PORT_PROBES`].
pub(crate) fn alloc_port(f: &Forwarder, client: (u32, u16), (backend, bport): (u32, u16), proto: u8, now: u32) -> Option<(u32, u16)> {
    let n_ports = f.ports.len();
    let space = n_ports.checked_mul(f.addrs.len())?;
    if space == 0 {
        return None;
    }
    let first = port_start(&f.port_keys, client, (backend, bport), proto, space);
    for n in 0..space.min(PORT_PROBES) {
        let c = (first + n) % space;
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
            Ok(Created::Tracked(i)) => (i, None),
            Ok(Created::Untracked(e)) => {
                // The new-flow cap: Maglev's choice, no entry.
                f.counters.flows_not_tracked += 1;
                if let Some(v) = owner_vip(&mut f.vips, &e) {
                    v.flood.flows_not_tracked += 1;
                }
                account(&mut f.vips, &e, ip.total, false);
                return apply(f.mac.0, buf, start, ip, &e, mode, key);
            }
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
    let Forwarder { table, vips, timeouts, mac, counters, .. } = f;
    let e = table.get_mut(idx)?;
    let confirmed = match fl {
        Some(fl) => touch(e, timeouts, now, fl),
        None => false,
    };
    account(vips, e, ip.total, fl.is_none());
    let v = apply(mac.0, buf, start, ip, e, mode, key);
    if fl.is_some() {
        // What the rest needs of the entry, not a copy of its line.
        let (flags, state, deadline, twin) = (e.flags, e.state, e.deadline, e.twin);
        if confirmed {
            let e = *e;
            confirm(counters, vips, &e);
        }
        // A FullNAT flow leaving the SYN state (client ACK, FIN or RST).
        if flags & F_HALF_OPEN != 0 && state != State::SynSent as u8 {
            table.settle(idx);
        }
        sync_twin_of(table, twin, state, deadline);
    }
    Some(v)
}

/// Counts a mid-stream flow confirmed alive (rare: out of line).
#[inline(never)]
fn confirm(counters: &mut crate::Counters, vips: &mut [Option<VipRt>], e: &Entry) {
    counters.midstream_confirmed += 1;
    if let Some(v) = owner_vip(vips, e) {
        v.flood.midstream_confirmed += 1;
    }
}

/// What [`create`] made of a new flow.
pub(super) enum Created {
    /// An entry, at this index.
    Tracked(u32),
    /// No entry (the new-flow cap): forward with this one, not stored.
    Untracked(Entry),
}

/// Room for one more half-open FullNAT flow: under the quota, or made by
/// freeing an expired half-open entry among the oldest few.
fn half_open_room(f: &mut Forwarder, now: u32) -> bool {
    for _ in 0..HALF_OPEN_RECLAIM {
        if f.table.half_open() < f.half_open_max {
            return true;
        }
        let Some(i) = f.half_open_ring.pop() else { return false };
        match f.table.get(i) {
            Some(e) if e.flags & F_HALF_OPEN != 0 && e.expired(now) => {
                f.table.remove(i);
                f.counters.expired += 1;
            }
            // Still half-open and live: back of the queue.
            Some(e) if e.flags & F_HALF_OPEN != 0 => f.half_open_ring.push(i),
            // Settled or freed since (a stale index).
            _ => {}
        }
    }
    f.table.half_open() < f.half_open_max
}

/// A SYN retransmitted within this window after one dropped for the
/// quota is admitted (crate docs, "Retransmitted SYNs pass a full quota").
pub(crate) const SYN_RETRANSMIT_WINDOW: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// With the half-open quota full: whether this SYN (`key`) retransmits one
/// dropped for the quota within [`SYN_RETRANSMIT_WINDOW`], and if so room
/// made for it by freeing the oldest half-open flow (with its twin and
/// source port) among the first few of the ring. Otherwise the SYN is
/// remembered (unless it repeats one too soon) and refused.
#[inline(never)]
fn admit_retransmission(f: &mut Forwarder, key: &Key, now: u32) -> bool {
    let to = |d: Duration| ticks(d.as_nanos() as u64);
    let window = (to(SYN_RETRANSMIT_WINDOW.0), to(SYN_RETRANSMIT_WINDOW.1));
    let Seen::Again(slot) = f.syn_memory.seen(key, now, window) else { return false };
    // The oldest live half-open entry among the ring's next few (the ring is
    // oldest first, but the quota's reclaim sends live ones to the back).
    let mut oldest: Option<(u32, u32)> = None;
    for _ in 0..HALF_OPEN_RECLAIM {
        let Some(i) = f.half_open_ring.pop() else { break };
        let Some(e) = f.table.get(i).filter(|e| e.flags & F_HALF_OPEN != 0) else { continue };
        let age = now.wrapping_sub(e.born);
        match oldest {
            Some((_, a)) if a >= age => f.half_open_ring.push(i),
            Some((j, _)) => {
                f.half_open_ring.push(j);
                oldest = Some((i, age));
            }
            None => oldest = Some((i, age)),
        }
    }
    let Some((i, _)) = oldest else { return false };
    f.table.remove(i);
    f.syn_memory.forget(slot);
    f.counters.syn_retransmit_admitted += 1;
    true
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
) -> Result<Created, DropReason> {
    let is_syn = fl.has(SYN) && !fl.has(ACK);
    let fullnat = mode == Rewrite::FullNat;
    if fullnat && key.proto == TCP && !is_syn {
        return Err(DropReason::NoSyn);
    }
    let half_open = fullnat && key.proto == TCP;
    if half_open && !half_open_room(f, now) && !admit_retransmission(f, &key, now) {
        return Err(DropReason::HalfOpenFull);
    }
    let v = vip_rt(&f.vips, vip).ok_or(DropReason::NoBackend)?;
    let (vip_index, backends_stamp) = (v.index, v.backends_stamp);
    let fh = maglev_key(f.flow_seed, v.affinity, key.src, key.sport, key.dst, key.dport, key.proto);
    let bi = v.table().lookup(fh).ok_or(DropReason::NoBackend)?;
    let b = v.backends.get(bi).ok_or(DropReason::NoBackend)?.cfg;
    let mac = backend_mac(f, vip, bi, now_ns).ok_or(DropReason::NeighbourUnresolved)?;
    let state = initial_state(key.proto, fl);
    // Pressure: the table at least half full; SYN-only entries then get
    // the short timeout, at creation and when refreshed.
    let pressure = f.table.live() >= f.table.capacity() / 2;
    if let Some(t) = f.timeouts.by_state.get_mut(State::SynSent as usize) {
        *t = if pressure { f.syn_ticks.1 } else { f.syn_ticks.0 };
    }
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
        backends_stamp,
        twin: NO_TWIN,
        born: now,
        ..Entry::default()
    };
    if !fullnat && !f.new_flows.take(now_ns) {
        return Ok(Created::Untracked(base));
    }
    let mut rec = Reclaimed::default();
    let idx = if fullnat {
        let client = (key.src, key.sport);
        let (snat, sport) = alloc_port(f, client, (u32::from(b.address), bport), key.proto, now).ok_or(DropReason::NoPort)?;
        let mut client_mac = [0u8; 6];
        if let Some(m) = buf.get(at(ethernet::SOURCE, start)) {
            client_mac.copy_from_slice(m);
        }
        let fwd = with_nat_sums(Entry {
            new_src: snat,
            new_sport: sport,
            flags: if half_open { F_HALF_OPEN } else { 0 },
            ..base
        });
        let rev = with_nat_sums(Entry {
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
        });
        let i = f.table.insert(fwd, now, NO_TWIN, &mut rec);
        let j = f.table.insert(rev, now, i, &mut rec);
        if let Some(e) = f.table.get_mut(i) {
            e.twin = j;
        }
        if let Some(e) = f.table.get_mut(j) {
            e.twin = i;
        }
        if half_open {
            f.half_open_ring.push(i);
        }
        i
    } else {
        f.table.insert(base, now, NO_TWIN, &mut rec)
    };
    account_reclaimed(f, rec);
    f.counters.new_flows += 1;
    if state == State::Probation {
        f.counters.midstream_flows += 1;
        if let Some(v) = owner_vip(&mut f.vips, &base) {
            v.flood.midstream_flows += 1;
        }
    }
    Ok(Created::Tracked(idx))
}

/// Rewrites the frame for entry `e` (a client -> VIP flow, or an ICMP error
/// about one in DSR/tunnel mode, with `client` its client side).
#[inline(always)]
pub(crate) fn apply(our_mac: [u8; 6], buf: &mut [u8], start: usize, ip: &Ip, e: &Entry, mode: Rewrite, client: Key) -> Verdict {
    match mode {
        Rewrite::Dsr => {
            let Some(frame) = buf.get_mut(start..start + ETH + ip.total) else {
                return Verdict::Drop(DropReason::BadBuffer);
            };
            rewrite_in_place(our_mac, frame, ip, e, false);
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
            rewrite_in_place(our_mac, frame, ip, e, true);
            Verdict::Transmit {
                start: start as u32,
                len: (ETH + ip.total) as u32,
            }
        }
    }
}

/// The rewrites that keep the frame where it is: DSR (next hop's MAC) and
/// FullNAT (addresses, ports, TTL, then the MAC). `frame` is the whole
/// frame, `ETH + ip.total` bytes.
#[inline(always)]
pub(crate) fn rewrite_in_place(our_mac: [u8; 6], frame: &mut [u8], ip: &Ip, e: &Entry, fullnat: bool) {
    if fullnat {
        nat(frame, ip, e);
    }
    set_macs(frame, e.mac, our_mac);
}

/// The Maglev key of a new flow: its 5-tuple, or its client address alone.
pub(crate) fn maglev_key(seed: u64, affinity: Affinity, src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> u64 {
    match affinity {
        Affinity::Flow => flow_hash(seed, Ipv4Addr::from(src).into(), sport, Ipv4Addr::from(dst).into(), dport, proto),
        Affinity::Client => addr_hash(seed, Ipv4Addr::from(src).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steady-state shortcut changes nothing: every state byte (valid
    /// or not), every flags byte, young and old probation entries.
    #[test]
    fn touch_equals_its_general_path_for_every_state_and_flags() {
        let t = Ticks { by_state: [1, 30, 900, 60, 10, 300, 10], confirm: 5 };
        for state in 0..=8u8 {
            for flags in 0..=255u8 {
                for (now, born) in [(100u32, 99u32), (100, 90), (3, u32::MAX - 2)] {
                    let e = Entry { state, born, deadline: 7, ..Entry::default() };
                    let (mut a, mut b) = (e, e);
                    let ra = touch(&mut a, &t, now, Flags::tcp(flags));
                    let rb = touch_general(&mut b, &t, now, Flags::tcp(flags));
                    assert_eq!((ra, a), (rb, b), "state {state} flags {flags:#04x} now {now} born {born}");
                }
            }
        }
    }
}
