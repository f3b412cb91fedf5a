//! What crosses the shared-memory segment: the control plane's published
//! [`Generation`], and the dataplane's [`DataplaneReport`] (the [`Facts`] it
//! validates against, the VIPs it refused, and a digest of each installed
//! VIP's Maglev table).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::validate::Invalid;
use crate::{validate_set, Proto, Vip, MAX_BACKENDS, MAX_VIPS};

/// One VIP as published: the VIP and its counter identities, which survive
/// across generations (the control plane keeps them in its state file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// Indexes the per-VIP counters; `< MAX_VIPS`, unique in the generation.
    pub id: u16,
    /// Backend counter slots, one per `vip.backends` entry, in order;
    /// `< MAX_BACKENDS`, unique in the whole generation.
    pub slots: Vec<u32>,
    pub vip: Vip,
}

/// One complete configuration. Every publication replaces the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub vips: Vec<Published>,
}

impl Generation {
    /// Checks the VIPs ([`validate_set`]) and their identities; fields are
    /// prefixed `vip[i] (addr:port)`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.vips.len() > MAX_VIPS {
            return Err(Invalid::new("vip", format!("{} VIPs, at most {MAX_VIPS}", self.vips.len())));
        }
        let mut ids = HashSet::with_capacity(self.vips.len());
        let mut slots = HashSet::new();
        for (i, p) in self.vips.iter().enumerate() {
            let at = format!("vip[{i}] ({})", p.vip.endpoint());
            if usize::from(p.id) >= MAX_VIPS {
                return Err(Invalid::new(format!("{at}.id"), format!("{} must be below {MAX_VIPS}", p.id)));
            }
            if !ids.insert(p.id) {
                return Err(Invalid::new(format!("{at}.id"), format!("{} is used twice", p.id)));
            }
            if p.slots.len() != p.vip.backends.len() {
                return Err(Invalid::new(
                    format!("{at}.slots"),
                    format!("{} slots for {} backends", p.slots.len(), p.vip.backends.len()),
                ));
            }
            for &s in &p.slots {
                if s as usize >= MAX_BACKENDS {
                    return Err(Invalid::new(format!("{at}.slots"), format!("{s} must be below {MAX_BACKENDS}")));
                }
                if !slots.insert(s) {
                    return Err(Invalid::new(format!("{at}.slots"), format!("slot {s} is used twice")));
                }
            }
        }
        let vips: Vec<Vip> = self.vips.iter().map(|p| p.vip.clone()).collect();
        validate_set(&vips)
    }

    /// Backends over all VIPs.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|p| p.vip.backends.len()).sum()
    }
}

/// What a dataplane is, for the checks that depend on it
/// ([`Vip::validate_for`]); the dataplane publishes it when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The dataplane's own address (no VIP may take it).
    pub address: Ipv4Addr,
    /// FullNAT source addresses (`[forward] snat_addresses`); none: no FullNAT VIP.
    pub snat_addresses: Vec<Ipv4Addr>,
    /// Lcores sharing the VIPs (limits are split between them).
    pub lcores: u32,
    /// Whether it runs forwarders (connection tables allocated).
    pub forwarding: bool,
}

/// A VIP of the published generation that the dataplane did not install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRefusal {
    pub id: u16,
    /// `address:port/proto`.
    pub vip: String,
    pub reason: String,
}

/// What the dataplane says back through the segment, beside its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneReport {
    pub facts: Facts,
    /// The generation every lcore has installed (0: none yet).
    pub generation: u64,
    /// VIPs of that generation left out, and why; the others serve.
    pub refused: Vec<VipRefusal>,
    /// A digest of each installed VIP's Maglev table, as the lcores use it,
    /// for that same `generation` (written together with it). Readers of an
    /// older dataplane see none.
    #[serde(default)]
    pub tables: Vec<TableDigest>,
}

/// The Maglev table a VIP of the applied generation is installed with, as a
/// digest ([`fulcrum_maglev::MaglevTable::digest`]: the table size, then
/// each slot's backend address and port): two load balancers with equal
/// digests for a VIP send every flow hash to the same backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    /// The control plane's VIP id.
    pub id: u16,
    /// `address:port`, `address:port/udp` for a UDP VIP.
    pub vip: String,
    /// Table size.
    pub slots: u32,
    /// Backends with an effective weight > 0 (up, not drained, weight > 0).
    pub backends: u32,
    /// [`fulcrum_maglev::digest_hex`]: 16 lowercase hex digits.
    pub digest: String,
}

impl TableDigest {
    /// The digest of `table`, built from `vip.backends` in list order (with
    /// [`Vip::maglev_backends`]), as installed under id `id`.
    pub fn of(id: u16, vip: &Vip, table: &fulcrum_maglev::MaglevTable) -> TableDigest {
        let digest = table.digest(|i| vip.backends[i].endpoint());
        TableDigest {
            id,
            vip: match vip.proto {
                Proto::Tcp => format!("{}:{}", vip.address, vip.port),
                Proto::Udp => format!("{}:{}/udp", vip.address, vip.port),
            },
            slots: table.size(),
            backends: vip.backends.iter().filter(|b| b.effective_weight() > 0).count() as u32,
            digest: fulcrum_maglev::digest_hex(digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Mode};

    fn published(id: u16, slots: Vec<u32>, port: u16) -> Published {
        let mut vip = Vip::new(Ipv4Addr::new(198, 18, 1, 1), port, Mode::Proxy);
        for (i, _) in slots.iter().enumerate() {
            vip.backends.push(Backend::new(Ipv4Addr::new(198, 18, 0, 21 + i as u8), 80, 1));
        }
        Published { id, slots, vip }
    }

    /// The report of a dataplane without table digests still reads.
    #[test]
    fn report_without_tables_reads() {
        let json = r#"{"facts":{"address":"198.18.0.2","snat_addresses":[],"lcores":1,"forwarding":false},"generation":3,"refused":[]}"#;
        let r: DataplaneReport = serde_json::from_str(json).unwrap();
        assert_eq!(r.generation, 3);
        assert!(r.tables.is_empty());
    }

    /// A VIP's table digest: the same backends in another order give the same
    /// one; a drained or down backend, or another port, another one.
    #[test]
    fn table_digest_of_a_vip() {
        use crate::BackendState;
        let of = |v: &Vip| TableDigest::of(4, v, &fulcrum_maglev::MaglevTable::build(&v.maglev_backends(), v.table_size).unwrap());
        let mut v = published(4, vec![0, 1, 2], 80).vip;
        let base = of(&v);
        assert_eq!((base.id, base.vip.as_str(), base.slots, base.backends), (4, "198.18.1.1:80", 65_537, 3));
        assert_eq!(base.digest.len(), 16);
        assert!(base.digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", base.digest);
        v.backends.reverse();
        assert_eq!(of(&v), base);
        for state in [BackendState::Drain, BackendState::Down] {
            let mut d = v.clone();
            d.backends[1].state = state;
            let t = of(&d);
            assert_ne!(t.digest, base.digest, "{state:?}");
            assert_eq!(t.backends, 2);
        }
        let mut p = v.clone();
        p.backends[0].port = 81;
        assert_ne!(of(&p).digest, base.digest);
        let mut u = v.clone();
        u.mode = Mode::Dsr;
        u.proto = crate::Proto::Udp;
        assert_eq!(of(&u).vip, "198.18.1.1:80/udp");
        assert_eq!(of(&u).digest, base.digest, "the digest is the table's, whatever the VIP's mode");
    }

    #[test]
    fn identities_are_checked() {
        let ok = Generation { vips: vec![published(0, vec![0, 1], 80), published(1, vec![2], 81)] };
        ok.validate().unwrap();
        let cases = [
            (vec![published(0, vec![0], 80), published(0, vec![1], 81)], "vip[1] (198.18.1.1:81).id"),
            (vec![published(0, vec![0], 80), published(1, vec![0], 81)], "vip[1] (198.18.1.1:81).slots"),
            (vec![published(256, vec![0], 80)], "vip[0] (198.18.1.1:80).id"),
            (vec![published(0, vec![4096], 80)], "vip[0] (198.18.1.1:80).slots"),
            (vec![published(0, vec![1], 80), published(1, vec![2], 80)], "vip[1] (198.18.1.1:80)"),
        ];
        for (vips, field) in cases {
            assert_eq!(Generation { vips }.validate().unwrap_err().field, field);
        }
        let mut g = Generation { vips: vec![published(0, vec![0, 1], 80)] };
        g.vips[0].slots.pop();
        assert_eq!(g.validate().unwrap_err().field, "vip[0] (198.18.1.1:80).slots");
    }
}
