//! Proxy-mode VIP configuration for [`crate::Dataplane::start`] and readers for the
//! `vips` / `proxy` sections of the stats file.

use std::fmt::Write as _;

use fulcrum_model::{Backend, Mode, Vip};
use serde_json::Value;

/// The VIP the proxy tests use.
pub const VIP_IP: &str = "198.18.1.1";
pub const VIP_PORT: u16 = 80;

/// A proxy VIP `address:port` with the model's defaults and no backend.
pub fn proxy_vip(address: &str, port: u16) -> Vip {
    Vip::new(address.parse().expect("an IPv4 address"), port, Mode::Proxy)
}

/// Adds the three topology backends on `port` with the given weights.
pub fn three_backends(mut v: Vip, port: u16, weights: [u32; 3]) -> Vip {
    for (ip, w) in crate::BACKEND_IPS.iter().zip(weights) {
        v.backends.push(Backend::new(ip.parse().expect("an IPv4 address"), port, w));
    }
    v
}

/// `[[vip]]` tables for the dataplane's (or the control plane's) file: the
/// model's own serialisation, so the files say exactly what the model holds.
pub fn vips_toml(vips: &[Vip]) -> String {
    #[derive(serde::Serialize)]
    struct File<'a> {
        vip: &'a [Vip],
    }
    toml::to_string(&File { vip: vips }).expect("a VIP serialises to TOML")
}

/// Extra config for `Dataplane::start`: an optional `[proxy] buffer_size` and VIPs.
pub fn proxy_config(buffer_size: Option<usize>, vips: &[Vip]) -> String {
    let mut s = String::new();
    if let Some(b) = buffer_size {
        let _ = writeln!(s, "[proxy]\nbuffer_size = {b}\n");
    }
    s.push_str(&vips_toml(vips));
    s
}

/// The stats of VIP `address:port` (`vips[]` entry), if present.
pub fn vip_stats<'a>(stats: &'a Value, address: &str, port: u16) -> Option<&'a Value> {
    stats.get("vips")?.as_array()?.iter().find(|v| {
        v.get("address").and_then(Value::as_str) == Some(address)
            && v.get("port").and_then(Value::as_u64) == Some(port.into())
    })
}

/// A VIP counter (`accepted`, `active`, `drop_idle_timeout`, ...); 0 when absent.
pub fn vip_counter(stats: &Value, address: &str, port: u16, field: &str) -> u64 {
    vip_stats(stats, address, port).and_then(|v| v.get(field)).and_then(Value::as_u64).unwrap_or(0)
}

/// The stats of backend `be_address` of a VIP, if present.
pub fn backend_stats<'a>(stats: &'a Value, address: &str, port: u16, be_address: &str) -> Option<&'a Value> {
    vip_stats(stats, address, port)?
        .get("backends")?
        .as_array()?
        .iter()
        .find(|b| b.get("address").and_then(Value::as_str) == Some(be_address))
}

/// A backend counter (`opened`, `connect_failures`, ...); 0 when absent.
pub fn backend_counter(stats: &Value, address: &str, port: u16, be_address: &str, field: &str) -> u64 {
    backend_stats(stats, address, port, be_address).and_then(|b| b.get(field)).and_then(Value::as_u64).unwrap_or(0)
}

/// A `proxy` counter (`connections`, `sockets`, `buffered_bytes`); `None` when absent.
pub fn proxy_counter(stats: &Value, field: &str) -> Option<u64> {
    stats.get("proxy")?.get(field)?.as_u64()
}

/// One line per VIP and backend, for messages.
pub fn format_vips(stats: &Value) -> String {
    let mut s = String::new();
    for v in stats.get("vips").and_then(Value::as_array).into_iter().flatten() {
        let mut vv = v.clone();
        let backends = vv.as_object_mut().and_then(|o| o.remove("backends"));
        let _ = writeln!(s, "vip {vv}");
        for b in backends.as_ref().and_then(Value::as_array).into_iter().flatten() {
            let _ = writeln!(s, "  backend {b}");
        }
    }
    if let Some(p) = stats.get("proxy") {
        let _ = writeln!(s, "proxy {p}");
    }
    let _ = write!(s, "mbufs_in_use {} of {}", stats["mbufs_in_use"], stats["mbufs_total"]);
    s
}
