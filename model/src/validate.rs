//! The one validation of the model: a VIP's own fields ([`Vip::validate`]),
//! a set of VIPs ([`validate_set`]) and what depends on the dataplane
//! ([`Vip::validate_for`]). Every error names the field it is about.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use crate::health::CheckSpec;
use crate::{
    Facts, Mode, Proto, ProxyProtocol, Vip, MAX_BACKENDS, MAX_BANDWIDTH, MAX_CONNECTIONS, MAX_CONNECT_TRIES,
    MAX_RATE, MAX_TABLE_SIZE, MAX_VIPS, MAX_WEIGHT,
};

/// A refused value: the field (a path like `backends[1] (198.18.0.22:80).weight`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid { field: field.into(), reason: reason.into() }
    }

    /// The same error with `prefix` before its field (`vip[0] (...)` + `.port`).
    pub fn at(self, prefix: &str) -> Invalid {
        let field = match (prefix.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}.{}", self.field),
        };
        Invalid { field, reason: self.reason }
    }
}

fn fail<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid::new(field, reason))
}

/// Unspecified, broadcast, multicast or loopback: never a VIP or a backend.
fn unusable(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback()
}

impl Vip {
    /// Checks every field of the VIP on its own; the error's field is relative
    /// to the VIP (prefix it with [`Invalid::at`]).
    pub fn validate(&self) -> Result<(), Invalid> {
        let v = self;
        if unusable(v.address) {
            return fail("address", format!("{} cannot be a VIP address", v.address));
        }
        if v.mode == Mode::Proxy {
            if v.port == 0 {
                return fail("port", "a proxy VIP needs a port (0, every port, is for forwarding modes)");
            }
            if v.proto != Proto::Tcp {
                return fail("proto", "proxy mode terminates TCP only");
            }
        }
        match (v.mode, &v.tunnel) {
            (Mode::Tunnel, None) => {
                return fail(
                    "tunnel",
                    "tunnel mode needs `tunnel = { encap = \"ipip\" | \"gue\", source_prefix = \"A.B.C.D/N\" }`",
                )
            }
            (Mode::Tunnel, Some(_)) | (_, None) => {}
            (_, Some(_)) => return fail("tunnel", "only for mode = \"tunnel\""),
        }
        if v.proxy_protocol != ProxyProtocol::Off && v.mode != Mode::Proxy {
            return fail("proxy_protocol", "only proxy mode sends a PROXY protocol header");
        }
        if !(1..=MAX_CONNECT_TRIES).contains(&v.connect_tries) {
            return fail("connect_tries", format!("{} must be from 1 to {MAX_CONNECT_TRIES}", v.connect_tries));
        }
        for (name, ms) in [("connect_timeout_ms", v.connect_timeout_ms), ("idle_timeout_ms", v.idle_timeout_ms)] {
            if ms == 0 {
                return fail(name, "must be at least 1");
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&v.max_connections) {
            return fail("max_connections", format!("{} must be from 1 to {MAX_CONNECTIONS}", v.max_connections));
        }
        for (name, rate) in [("new_conn_rate", v.new_conn_rate), ("client_rate", v.client_rate)] {
            let Some(r) = rate else { continue };
            for (part, n) in [("per_sec", r.per_sec), ("burst", r.burst)] {
                if !(1..=MAX_RATE).contains(&n) {
                    return fail(
                        format!("{name}.{part}"),
                        format!("{n} must be from 1 to {MAX_RATE} (remove the limit instead of 0)"),
                    );
                }
            }
        }
        if let Some(b) = v.bandwidth_bytes_per_sec {
            if !(1..=MAX_BANDWIDTH).contains(&b) {
                return fail(
                    "bandwidth_bytes_per_sec",
                    format!("{b} must be from 1 to {MAX_BANDWIDTH} (remove the limit instead of 0)"),
                );
            }
        }
        if v.table_size > MAX_TABLE_SIZE {
            return fail("table_size", format!("{} is above the maximum of {MAX_TABLE_SIZE}", v.table_size));
        }
        if let Some(h) = &v.health {
            CheckSpec::try_from(h.clone()).map_err(|e| Invalid::new(format!("health.{}", e.field), e.message))?;
        }
        if v.backends.len() > MAX_BACKENDS {
            return fail("backends", format!("{} backends, at most {MAX_BACKENDS}", v.backends.len()));
        }
        let mut seen = HashSet::with_capacity(v.backends.len());
        for (j, b) in v.backends.iter().enumerate() {
            let at = format!("backends[{j}] ({})", b.endpoint());
            if unusable(b.address) {
                return fail(at, format!("{} is not a usable backend address", b.address));
            }
            if v.mode.keeps_port() && b.port != v.port {
                return fail(
                    format!("{at}.port"),
                    format!("{} must equal the VIP's port {}: {} mode does not rewrite ports", b.port, v.port, v.mode.name()),
                );
            }
            if b.port == 0 && v.mode == Mode::Proxy {
                return fail(format!("{at}.port"), "must not be 0");
            }
            if b.weight > MAX_WEIGHT {
                return fail(format!("{at}.weight"), format!("{} is above the maximum of {MAX_WEIGHT}", b.weight));
            }
            if b.mac.is_some() && !v.mode.is_forwarding() {
                return fail(format!("{at}.mac"), "a next-hop MAC is for forwarding modes");
            }
            if !seen.insert(b.endpoint()) {
                return fail(at, "listed twice");
            }
        }
        fulcrum_maglev::MaglevTable::validate(&v.maglev_backends(), v.table_size)
            .map_err(|e| Invalid::new("table_size", e.to_string()))
    }

    /// Checks what depends on the dataplane that will run the VIP.
    pub fn validate_for(&self, facts: &Facts) -> Result<(), Invalid> {
        if self.address == facts.address {
            return fail("address", format!("{} is the dataplane's own address", self.address));
        }
        if facts.snat_addresses.contains(&self.address) {
            return fail("address", format!("{} is one of the dataplane's FullNAT source addresses", self.address));
        }
        if self.mode == Mode::Fullnat && facts.snat_addresses.is_empty() {
            return fail("mode", "fullnat needs SNAT addresses, and the dataplane has none ([forward] snat_addresses)");
        }
        if self.mode.is_forwarding() && !facts.forwarding {
            return fail("mode", format!("the dataplane runs no forwarder, so it cannot take a {} VIP", self.mode.name()));
        }
        for (j, b) in self.backends.iter().enumerate() {
            if b.address == facts.address || facts.snat_addresses.contains(&b.address) {
                return fail(format!("backends[{j}] ({})", b.endpoint()), "is one of the dataplane's own addresses");
            }
        }
        Ok(())
    }
}

/// Checks each VIP ([`Vip::validate`]) and the set: no VIP twice (same
/// address, port and protocol), at most [`MAX_VIPS`] VIPs and
/// [`MAX_BACKENDS`] backends in all. Fields are prefixed `vip[i] (addr:port)`.
pub fn validate_set(vips: &[Vip]) -> Result<(), Invalid> {
    if vips.len() > MAX_VIPS {
        return fail("vip", format!("{} VIPs, at most {MAX_VIPS}", vips.len()));
    }
    let total: usize = vips.iter().map(|v| v.backends.len()).sum();
    if total > MAX_BACKENDS {
        return fail("vip", format!("{total} backends in all, at most {MAX_BACKENDS}"));
    }
    let mut seen = HashSet::with_capacity(vips.len());
    for (i, v) in vips.iter().enumerate() {
        let at = format!("vip[{i}] ({})", v.endpoint());
        v.validate().map_err(|e| e.at(&at))?;
        if !seen.insert(v.key()) {
            return fail(at, format!("{} is listed twice", v.name()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Cidr, Encap, Mac, Rate, Tunnel};

    fn vip(mode: Mode) -> Vip {
        let mut v = Vip::new(Ipv4Addr::new(198, 18, 1, 1), 80, mode);
        v.backends.push(Backend::new(Ipv4Addr::new(198, 18, 0, 21), 80, 1));
        if mode == Mode::Tunnel {
            v.tunnel = Some(Tunnel { encap: Encap::Ipip, source_prefix: "198.18.2.0/24".parse::<Cidr>().unwrap() });
        }
        v
    }

    #[test]
    fn every_mode_validates_with_defaults() {
        for m in [Mode::Proxy, Mode::Dsr, Mode::Fullnat, Mode::Tunnel] {
            vip(m).validate().unwrap();
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Vip, &str)> = vec![
            (Vip { port: 0, ..vip(Mode::Proxy) }, "port"),
            (Vip { proto: Proto::Udp, ..vip(Mode::Proxy) }, "proto"),
            (Vip { tunnel: None, ..vip(Mode::Tunnel) }, "tunnel"),
            (Vip { tunnel: vip(Mode::Tunnel).tunnel, ..vip(Mode::Dsr) }, "tunnel"),
            (Vip { proxy_protocol: ProxyProtocol::V2, ..vip(Mode::Fullnat) }, "proxy_protocol"),
            (Vip { connect_tries: 17, ..vip(Mode::Proxy) }, "connect_tries"),
            (Vip { connect_tries: 0, ..vip(Mode::Proxy) }, "connect_tries"),
            (Vip { idle_timeout_ms: 0, ..vip(Mode::Proxy) }, "idle_timeout_ms"),
            (Vip { max_connections: 0, ..vip(Mode::Proxy) }, "max_connections"),
            (Vip { new_conn_rate: Some(Rate::new(0, 1)), ..vip(Mode::Proxy) }, "new_conn_rate.per_sec"),
            (Vip { client_rate: Some(Rate::new(1, MAX_RATE + 1)), ..vip(Mode::Proxy) }, "client_rate.burst"),
            (Vip { bandwidth_bytes_per_sec: Some(0), ..vip(Mode::Proxy) }, "bandwidth_bytes_per_sec"),
            (Vip { table_size: 100, ..vip(Mode::Proxy) }, "table_size"),
            (Vip { table_size: 16_777_259, ..vip(Mode::Proxy) }, "table_size"),
            (Vip { address: Ipv4Addr::LOCALHOST, ..vip(Mode::Proxy) }, "address"),
        ];
        for (v, field) in cases {
            let e = v.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut v = vip(Mode::Dsr);
        v.backends[0].port = 8080;
        assert_eq!(v.validate().unwrap_err().field, "backends[0] (198.18.0.21:8080).port");
        let mut v = vip(Mode::Proxy);
        v.backends[0].mac = Some(Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(v.validate().unwrap_err().field, "backends[0] (198.18.0.21:80).mac");
        let mut v = vip(Mode::Proxy);
        v.backends.push(v.backends[0].clone());
        assert_eq!(v.validate().unwrap_err().reason, "listed twice");
    }

    #[test]
    fn port_zero_is_for_forwarding_modes() {
        let mut v = vip(Mode::Fullnat);
        v.port = 0;
        v.backends[0].port = 0;
        v.validate().unwrap();
        let mut v = vip(Mode::Dsr);
        v.port = 0;
        v.backends[0].port = 0;
        v.validate().unwrap();
        let mut v = vip(Mode::Proxy);
        v.backends[0].port = 0;
        assert_eq!(v.validate().unwrap_err().field, "backends[0] (198.18.0.21:0).port");
    }

    #[test]
    fn the_set_refuses_duplicates_and_the_facts_own_addresses() {
        let a = vip(Mode::Proxy);
        let mut udp = vip(Mode::Dsr);
        udp.proto = Proto::Udp;
        validate_set(&[a.clone(), udp]).unwrap();
        let e = validate_set(&[a.clone(), a.clone()]).unwrap_err();
        assert_eq!(e.field, "vip[1] (198.18.1.1:80)");
        let facts = Facts {
            address: Ipv4Addr::new(198, 18, 1, 1),
            snat_addresses: vec![],
            lcores: 1,
            forwarding: true,
        };
        assert_eq!(a.validate_for(&facts).unwrap_err().field, "address");
        let facts = Facts { address: Ipv4Addr::new(198, 18, 0, 2), ..facts };
        a.validate_for(&facts).unwrap();
        assert_eq!(vip(Mode::Fullnat).validate_for(&facts).unwrap_err().field, "mode");
    }

    #[test]
    fn cidr_network_and_membership() {
        let c = Cidr { addr: Ipv4Addr::new(198, 18, 0, 2), prefix_len: 24 };
        assert_eq!(c.network(), Ipv4Addr::new(198, 18, 0, 0));
        assert!(c.contains(Ipv4Addr::new(198, 18, 0, 254)));
        assert!(!c.contains(Ipv4Addr::new(198, 18, 1, 1)));
        let host = Cidr { prefix_len: 32, ..c };
        assert!(host.contains(c.addr) && !host.contains(Ipv4Addr::new(198, 18, 0, 3)));
        assert!(Cidr { prefix_len: 0, ..c }.contains(Ipv4Addr::new(203, 0, 113, 1)));
    }

    #[test]
    fn not_up_means_weight_zero() {
        let mut b = Backend::new(Ipv4Addr::new(198, 18, 0, 21), 80, 7);
        assert_eq!(b.effective_weight(), 7);
        b.state = crate::BackendState::Drain;
        assert_eq!(b.effective_weight(), 0);
        b.state = crate::BackendState::Down;
        assert_eq!(b.maglev().weight, 0);
    }

    #[test]
    fn toml_and_json_shapes() {
        let text = r#"
            address = "198.18.1.2"
            port = 0
            proto = "udp"
            mode = "tunnel"
            tunnel = { encap = "gue", source_prefix = "198.18.2.0/24" }
            backends = [{ address = "198.18.0.21", port = 0, mac = "02:00:00:00:00:21" }]
        "#;
        let v: Vip = toml::from_str(text).unwrap();
        v.validate().unwrap();
        assert_eq!(v.backends[0].mac, Some(Mac([2, 0, 0, 0, 0, 0x21])));
        assert_eq!(v.table_size, crate::defaults::TABLE_SIZE);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Vip>(&json).unwrap(), v);
        let e = toml::from_str::<Vip>("address = \"198.18.1.2\"\nport = 80\nmode = \"dsr\"\nprot = \"udp\"\n").unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
    }
}
