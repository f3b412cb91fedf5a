//! Steering: which lcore must process a frame (its flow's owner, or for a
//! packet to an own address the owner of its local port).

use super::*;

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
