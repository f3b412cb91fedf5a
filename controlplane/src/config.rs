//! The control plane's TOML file: `[controlplane]`, the optional `[bgp]`
//! and `[[vip]]` tables.

use fulcrum_model::{BackendState, Vip};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    controlplane: Controlplane,
    #[serde(default)]
    bgp: Option<BgpFile>,
    #[serde(default, rename = "vip")]
    vips: Vec<Vip>,
}

/// `[bgp]` as written; checked into [`Bgp`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BgpFile {
    bird_socket: Option<PathBuf>,
    routes_file: Option<PathBuf>,
    next_hop: Option<Ipv4Addr>,
    protocol: Option<String>,
    birdc: Option<PathBuf>,
}

/// `[bgp]`: this instance's BIRD 2, which announces the VIPs the control
/// plane decides (see [`crate::announce`]). Absent: nothing is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgp {
    /// BIRD's control socket (`bird -s`), for `birdc -s`.
    pub bird_socket: PathBuf,
    /// The file BIRD's static protocol includes; the control plane rewrites
    /// it (temp + rename) with one `route A/32 via NEXT_HOP;` per VIP
    /// address announced.
    pub routes_file: PathBuf,
    /// The next hop of the routes: this instance's dataplane address.
    pub next_hop: Ipv4Addr,
    /// BIRD's BGP protocol towards the router (its state is shown in `status`).
    pub protocol: String,
    /// The `birdc` program.
    pub birdc: PathBuf,
}

impl BgpFile {
    fn check(self) -> Result<Bgp, String> {
        let path = |name: &str, p: Option<PathBuf>, what: &str| -> Result<PathBuf, String> {
            match p {
                None => Err(format!("bgp.{name}: required ({what})")),
                Some(p) if p.as_os_str().is_empty() => {
                    Err(format!("bgp.{name}: must not be empty ({what})"))
                }
                Some(p) => Ok(p),
            }
        };
        let bird_socket = path(
            "bird_socket",
            self.bird_socket,
            "BIRD's control socket, as given to `bird -s`",
        )?;
        let routes_file = path(
            "routes_file",
            self.routes_file,
            "the file BIRD's static protocol includes, written by the control plane",
        )?;
        if routes_file.file_name().is_none() {
            return Err(format!(
                "bgp.routes_file: {} is not a file name",
                routes_file.display()
            ));
        }
        let next_hop = self
            .next_hop
            .ok_or("bgp.next_hop: required (this instance's dataplane address, IPv4)")?;
        if next_hop.is_unspecified()
            || next_hop.is_multicast()
            || next_hop.is_broadcast()
            || next_hop.is_loopback()
        {
            return Err(format!(
                "bgp.next_hop: {next_hop} cannot be a next hop (give the dataplane's address)"
            ));
        }
        let protocol = self.protocol.unwrap_or_else(|| "uplink".into());
        let symbol = protocol
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && protocol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !symbol {
            return Err(format!(
                "bgp.protocol: {protocol:?} is not a BIRD protocol name (letters, digits and _, not starting with a digit)"
            ));
        }
        let birdc = self.birdc.unwrap_or_else(|| "birdc".into());
        if birdc.as_os_str().is_empty() {
            return Err(
                "bgp.birdc: must not be empty (the birdc program; default \"birdc\")".into(),
            );
        }
        Ok(Bgp {
            bird_socket,
            routes_file,
            next_hop,
            protocol,
            birdc,
        })
    }
}

/// `[controlplane]`: where things live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Controlplane {
    /// Shared-memory segment shared with the dataplane.
    pub shm: PathBuf,
    /// Unix socket `fulcrumctl` talks to (mode 0600).
    pub socket: PathBuf,
    /// Desired configuration and slot map, rewritten atomically on every change.
    pub state_file: PathBuf,
    /// Prometheus listen address (`/metrics`); `""` disables it.
    pub prometheus: String,
    /// Source address for health checks (in software mode 198.18.0.1).
    pub health_source: Option<Ipv4Addr>,
    /// Health checks in flight at once.
    pub max_checks_in_flight: usize,
}

impl Default for Controlplane {
    fn default() -> Self {
        Controlplane {
            shm: "/dev/shm/fulcrum".into(),
            socket: "/run/fulcrum/control.sock".into(),
            state_file: "/var/lib/fulcrum/controlplane.json".into(),
            prometheus: "127.0.0.1:9469".into(),
            health_source: None,
            max_checks_in_flight: 256,
        }
    }
}

/// A loaded, validated file.
#[derive(Debug, Clone)]
pub struct Config {
    pub controlplane: Controlplane,
    /// `[bgp]`; `None`: nothing is announced.
    pub bgp: Option<Bgp>,
    pub vips: Vec<Vip>,
}

/// A configuration problem: `<file>: <field>: <reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text).map_err(|message| ConfigError {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let file: File = toml::from_str(text).map_err(|e| one_line_toml_error(&e, text))?;
        let cp = &file.controlplane;
        if !cp.prometheus.is_empty() && cp.prometheus.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "controlplane.prometheus: {:?} is not an address and port like 127.0.0.1:9469 (or \"\" to disable)",
                cp.prometheus
            ));
        }
        if cp.max_checks_in_flight == 0 {
            return Err("controlplane.max_checks_in_flight: must be at least 1".into());
        }
        for (name, p) in [("shm", &cp.shm), ("socket", &cp.socket), ("state_file", &cp.state_file)] {
            if p.as_os_str().is_empty() {
                return Err(format!("controlplane.{name}: must not be empty"));
            }
        }
        let bgp = file.bgp.map(BgpFile::check).transpose()?;
        check_vips(&file.vips).map_err(|e| e.to_string())?;
        let vips = file.vips;
        Ok(Config { controlplane: file.controlplane, bgp, vips })
    }
}

/// The desired state's own rules beyond the model's ([`fulcrum_model::validate_set`]):
/// an operator writes a backend `up` or `drain`; `down` is what health checks
/// publish. Fields are prefixed `vip[i] (addr:port)` as the model's are.
pub fn check_vips(vips: &[Vip]) -> Result<(), fulcrum_model::Invalid> {
    fulcrum_model::validate_set(vips)?;
    for (i, v) in vips.iter().enumerate() {
        for (j, b) in v.backends.iter().enumerate() {
            if b.state == BackendState::Down {
                return Err(fulcrum_model::Invalid::new(
                    format!("vip[{i}] ({}).backends[{j}] ({}).state", v.endpoint(), b.endpoint()),
                    "\"down\" is what health checks publish; write \"up\" or \"drain\"",
                ));
            }
        }
    }
    Ok(())
}

/// toml's errors span several lines with a source excerpt; keep the line
/// number and the message.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            let line = text[line_start..line_end].trim();
            let key = text[start..span.end.min(text.len())].trim();
            format!("line {line_no} (`{line}`), at `{key}`: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nbackends = [{ address = \"198.18.0.21\", port = 8080 }]\n").unwrap();
        assert_eq!(c.vips[0].backends[0].weight, 1);
        assert_eq!(c.controlplane.prometheus, "127.0.0.1:9469");
        let cases = [
            ("[controlplane]\nsokcet = \"x\"\n", "sokcet"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 0\nmode = \"proxy\"\n", "port"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\ntable_size = 100\n", "table_size"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nbackends = [{ address = \"198.18.0.21\", port = 8080, weight = -1 }]\n", "weight"),
            ("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nnew_conn_rate = { per_sec = 0, burst = 1 }\n", "new_conn_rate.per_sec"),
        ];
        for (text, want) in cases {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want}");
        }
        let e = Config::parse("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nbackends = [{ address = \"198.18.0.21\", port = 8080, state = \"down\" }]\n").unwrap_err();
        assert!(e.contains("backends[0] (198.18.0.21:8080).state"), "{e}");
    }

    #[test]
    fn forwarding_vips_in_their_full_shape() {
        let text = r#"
            [[vip]]
            address = "198.18.1.2"
            port = 0
            proto = "udp"
            mode = "tunnel"
            tunnel = { encap = "gue", source_prefix = "198.18.2.0/24" }
            backends = [{ address = "198.18.0.21", port = 0, mac = "02:00:00:00:00:21" }]

            [[vip]]
            address = "198.18.1.2"
            port = 0
            mode = "fullnat"
            backends = [{ address = "198.18.0.21", port = 0, state = "drain" }]
        "#;
        let c = Config::parse(text).unwrap();
        let (udp, tcp) = (&c.vips[0], &c.vips[1]);
        assert_eq!(udp.key(), ("198.18.1.2".parse().unwrap(), 0, fulcrum_model::Proto::Udp));
        assert_eq!(udp.tunnel.unwrap().encap, fulcrum_model::Encap::Gue);
        assert_eq!(udp.tunnel.unwrap().source_prefix.to_string(), "198.18.2.0/24");
        assert_eq!(udp.backends[0].mac, Some(fulcrum_model::Mac([2, 0, 0, 0, 0, 0x21])));
        assert_eq!(tcp.proto, fulcrum_model::Proto::Tcp);
        assert_eq!(tcp.backends[0].state, BackendState::Drain);
        // Field-precise refusals.
        let cases = [
            (text.replacen("    tunnel = { encap = \"gue\", source_prefix = \"198.18.2.0/24\" }\n", "", 1), "vip[0] (198.18.1.2:0).tunnel"),
            (text.replace("mode = \"fullnat\"", "mode = \"proxy\""), "vip[1] (198.18.1.2:0).port"),
            (text.replace("proto = \"udp\"\n", ""), "listed twice"),
            (text.replace("encap = \"gue\"", "encap = \"vxlan\""), "vxlan"),
            (text.replace("02:00:00:00:00:21", "02:00:00"), "02:00:00"),
            (text.replace("mac =", "macc ="), "macc"),
        ];
        for (t, want) in cases {
            let e = Config::parse(&t).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want}");
        }
    }

    #[test]
    fn bgp_table() {
        assert_eq!(Config::parse("").unwrap().bgp, None);
        let ok = "[bgp]\nbird_socket = \"/run/bird/bird.ctl\"\nroutes_file = \"/etc/bird/vips.conf\"\nnext_hop = \"198.18.0.2\"\n";
        let b = Config::parse(ok).unwrap().bgp.unwrap();
        assert_eq!(b.protocol, "uplink");
        assert_eq!(b.birdc, PathBuf::from("birdc"));
        assert_eq!(b.next_hop, Ipv4Addr::new(198, 18, 0, 2));
        let b = Config::parse(&format!(
            "{ok}protocol = \"up_2\"\nbirdc = \"/usr/sbin/birdc\"\n"
        ))
        .unwrap()
        .bgp
        .unwrap();
        assert_eq!(
            (b.protocol.as_str(), b.birdc),
            ("up_2", PathBuf::from("/usr/sbin/birdc"))
        );
        let cases = [
            (
                "[bgp]\nroutes_file = \"/x\"\nnext_hop = \"198.18.0.2\"\n".to_owned(),
                "bgp.bird_socket: required",
            ),
            (
                "[bgp]\nbird_socket = \"/x\"\nnext_hop = \"198.18.0.2\"\n".to_owned(),
                "bgp.routes_file: required",
            ),
            (
                "[bgp]\nbird_socket = \"/x\"\nroutes_file = \"/y\"\n".to_owned(),
                "bgp.next_hop: required",
            ),
            (
                ok.replace("\"/run/bird/bird.ctl\"", "\"\""),
                "bgp.bird_socket: must not be empty",
            ),
            (ok.replace("198.18.0.2", "198.18.0"), "next_hop"),
            (
                ok.replace("198.18.0.2", "0.0.0.0"),
                "bgp.next_hop: 0.0.0.0 cannot be a next hop",
            ),
            (
                format!("{ok}protocol = \"up-link\"\n"),
                "bgp.protocol: \"up-link\" is not a BIRD protocol name",
            ),
            (format!("{ok}protocol = \"\"\n"), "bgp.protocol"),
            (
                format!("{ok}birdc = \"\"\n"),
                "bgp.birdc: must not be empty",
            ),
            (format!("{ok}nexthop = \"198.18.0.2\"\n"), "nexthop"),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }
}
