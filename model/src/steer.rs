//! Lcore steering: which lcore owns a client flow or a local port. Pure
//! functions of the packet's addresses, so every dataplane thread (and any
//! other process) computes the same answer; used by the dataplane's receive
//! path, the proxy engine (its local ports) and the forwarder (FullNAT ports).

use std::net::{IpAddr, Ipv4Addr};

/// Seed of the client-flow steering hash; distinct from the Maglev flow seed
/// so the lcore choice and the backend choice are independent.
const STEER_SEED: u64 = 0x7374_6565_7266_6c77; // "steerflw"

/// Lcore owning local port `port` (a proxy backend connection's or a FullNAT
/// flow's source port, so the destination port of the replies). Ports are
/// interleaved (`port % lcores`) rather than split in ranges so that the
/// answer needs neither the range nor a table.
#[inline]
pub fn owner_of_port(port: u16, lcores: usize) -> usize {
    usize::from(port) % lcores.max(1)
}

/// Lcore owning a client flow to a VIP. The protocol is not hashed, so TCP and
/// UDP flows, proxied or forwarded, are spread the same way.
#[inline]
pub fn owner_of_flow(client: Ipv4Addr, client_port: u16, vip: Ipv4Addr, vip_port: u16, lcores: usize) -> usize {
    let h = fulcrum_maglev::flow_hash(STEER_SEED, IpAddr::V4(client), client_port, IpAddr::V4(vip), vip_port, 6);
    (h % lcores.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_interleave_and_flows_stay_in_range() {
        assert_eq!(owner_of_port(32768, 2), 0);
        assert_eq!(owner_of_port(32769, 2), 1);
        assert_eq!(owner_of_port(7, 0), 0);
        let c = Ipv4Addr::new(198, 18, 0, 10);
        let v = Ipv4Addr::new(198, 18, 1, 1);
        let mut seen = [0u32; 4];
        for p in 1000..2000 {
            seen[owner_of_flow(c, p, v, 80, 4)] += 1;
            assert_eq!(owner_of_flow(c, p, v, 80, 1), 0);
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }
}
