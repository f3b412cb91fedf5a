//! Several Fulcrum instances behind ECMP (`scripts/topology.sh up --instances N`,
//! [`Topology::up_instances`]):
//!
//! ```text
//!  instance k   dataplane (in P-fab)        kernel namespace P-lbk (BIRD, control plane)
//!  1            198.18.0.2   tap P-dp       198.18.0.51
//!  2            198.18.0.42  tap P-dp2      198.18.0.52
//!  k >= 2       198.18.0.(40+k) tap P-dpk   198.18.0.(50+k)
//! ```
//!
//! Each instance's BIRD announces the static routes of its routes file
//! (`route 198.18.1.1/32 via <dataplane address>;`) over eBGP (AS 65001, session
//! `uplink`) to the router's BIRD (AS 65000 at 198.18.0.254), which installs one
//! multipath kernel route per VIP in P-rtr. Helpers here: per-instance paths, `birdc`,
//! writing a routes file and reconfiguring, and the router's kernel next hops for a VIP.

use std::fs;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::{describe, Topology};

/// Where `topology.sh` keeps BIRD's files: `RUN_DIR/<prefix>/{rtr,lb1,lb2,...}`.
pub const RUN_DIR: &str = "/run/fulcrum-topology";

/// One instance of a topology built with [`Topology::up_instances`], as `topology.sh
/// up --instances N` printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// 1-based.
    pub k: usize,
    /// The dataplane's address (198.18.0.2 for instance 1, 198.18.0.(40+k) after).
    pub dataplane_ip: String,
    /// The dataplane's tap (`P-dp`, `P-dp2`, ...).
    pub tap: String,
    /// The dataplane's EAL file prefix (`P`, `P-dp2`, ...).
    pub file_prefix: String,
    /// The instance's kernel namespace (`P-lbk`): BIRD, control plane, health checks.
    pub netns: String,
    /// Its address there (198.18.0.(50+k)).
    pub kernel_ip: String,
    /// BIRD's control socket (`birdc -s`).
    pub bird_socket: PathBuf,
    /// The routes file the instance's BIRD includes in `protocol static vips`.
    pub routes_file: PathBuf,
    pub bird_config: PathBuf,
}

impl Instance {
    /// Parse one `instance=K dataplane_address=... ...` line of `topology.sh up`.
    pub fn parse(line: &str) -> Option<Instance> {
        let mut k = None;
        let (mut dp, mut tap, mut fp, mut ns, mut kip, mut sock, mut routes, mut conf) =
            (None, None, None, None, None, None, None, None);
        for kv in line.split_whitespace() {
            let (key, v) = kv.split_once('=')?;
            let v = v.to_string();
            match key {
                "instance" => k = v.parse().ok(),
                "dataplane_address" => dp = Some(v),
                "tap" => tap = Some(v),
                "file_prefix" => fp = Some(v),
                "netns" => ns = Some(v),
                "kernel_address" => kip = Some(v),
                "bird_socket" => sock = Some(PathBuf::from(v)),
                "routes_file" => routes = Some(PathBuf::from(v)),
                "bird_config" => conf = Some(PathBuf::from(v)),
                _ => {}
            }
        }
        Some(Instance {
            k: k?,
            dataplane_ip: dp?,
            tap: tap?,
            file_prefix: fp?,
            netns: ns?,
            kernel_ip: kip?,
            bird_socket: sock?,
            routes_file: routes?,
            bird_config: conf?,
        })
    }

    /// `route <vip>/32 via <dataplane address>;` per VIP: what the control plane writes.
    pub fn routes_text(&self, vips: &[&str]) -> String {
        vips.iter().map(|v| format!("route {v}/32 via {};\n", self.dataplane_ip)).collect()
    }

    /// Write the routes file for `vips` (empty: announce nothing); call
    /// [`Topology::bird_configure`] to apply it.
    pub fn write_routes(&self, vips: &[&str]) {
        let path = &self.routes_file;
        // Write and rename, so BIRD never reads half a file.
        let tmp = path.with_extension("conf.tmp");
        fs::write(&tmp, self.routes_text(vips)).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
    }
}

impl Topology {
    /// The instances (empty unless built with [`Topology::up_instances`]).
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Instance `k` (1-based). Panics if there is none.
    pub fn instance(&self, k: usize) -> &Instance {
        self.instances.iter().find(|i| i.k == k).unwrap_or_else(|| {
            panic!("topology {} has no instance {k} ({} instances)", self.prefix(), self.instances.len())
        })
    }

    /// The router's BIRD control socket.
    pub fn router_bird_socket(&self) -> PathBuf {
        PathBuf::from(RUN_DIR).join(self.prefix()).join("rtr").join("bird.ctl")
    }

    /// `birdc -s <socket> <args>` run in namespace `leaf` (e.g. `"rtr"`, `"lb2"`),
    /// bounded (10 s). The socket is a file: any namespace reaches it; running in the
    /// daemon's own namespace is what an operator on that host would do.
    pub fn birdc(&self, leaf: &str, socket: &std::path::Path, args: &[&str]) -> Output {
        let sock = socket.to_string_lossy().into_owned();
        let mut all = vec!["birdc", "-s", sock.as_str()];
        all.extend_from_slice(args);
        self.exec_timeout(leaf, &all, Duration::from_secs(10))
    }

    /// [`birdc`](Self::birdc) that must exit 0; returns stdout. (birdc exits 0 when
    /// BIRD answers a command with an error too: check the text.)
    pub fn birdc_ok(&self, leaf: &str, socket: &std::path::Path, args: &[&str]) -> String {
        let out = self.birdc(leaf, socket, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            panic!("birdc -s {} {} in {leaf} failed: {}", socket.display(), args.join(" "), describe(&out));
        }
        text
    }

    /// `birdc configure` of instance `k`'s BIRD (after writing its routes file):
    /// panics unless BIRD answers `Reconfigured` (or that nothing changed).
    pub fn bird_configure(&self, k: usize) {
        let i = self.instance(k);
        let leaf = format!("lb{k}");
        let text = self.birdc_ok(&leaf, &i.bird_socket, &["configure"]);
        assert!(
            text.contains("Reconfigured") || text.contains("Reconfiguration in progress"),
            "birdc configure of instance {k}: {text}"
        );
    }

    /// The router's BGP sessions, from its BIRD: `(name, info)` for each BGP protocol,
    /// e.g. `("lb1", "Established")`.
    pub fn router_sessions(&self) -> Vec<(String, String)> {
        let text = self.birdc_ok("rtr", &self.router_bird_socket(), &["show", "protocols"]);
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5 && f[1] == "BGP").then(|| (f[0].to_string(), f.get(5).copied().unwrap_or("").to_string()))
            })
            .collect()
    }

    /// `ip route show <vip>` in P-rtr (the kernel's route for `vip`/32) as text.
    pub fn router_route_text(&self, vip: &str) -> String {
        let out = self.exec_ok("rtr", &["ip", "route", "show", vip]);
        out.trim_end().to_string()
    }

    /// The next hops of the router's kernel route for `vip`/32 (sorted; empty when
    /// there is no route): one per instance announcing it.
    pub fn router_nexthops(&self, vip: &str) -> Vec<String> {
        let out = self.exec_ok("rtr", &["ip", "-j", "route", "show", vip]);
        if out.trim().is_empty() {
            return Vec::new();
        }
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ip -j route show {vip}: {e}: {out}"));
        let mut hops = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(g) = r.get("gateway").and_then(|g| g.as_str()) {
                hops.push(g.to_string());
            }
            for n in r.get("nexthops").and_then(|n| n.as_array()).into_iter().flatten() {
                if let Some(g) = n.get("gateway").and_then(|g| g.as_str()) {
                    hops.push(g.to_string());
                }
            }
        }
        hops.sort();
        hops
    }

    /// Poll (5 ms steps) until the router's next hops for `vip` are exactly `want`
    /// (any order); returns how long it took. Panics after `timeout` with what was seen.
    #[track_caller]
    pub fn wait_router_nexthops(&self, vip: &str, want: &[&str], timeout: Duration) -> Duration {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        let t0 = Instant::now();
        loop {
            let got = self.router_nexthops(vip);
            if got == want {
                return t0.elapsed();
            }
            if t0.elapsed() >= timeout {
                panic!(
                    "router's next hops for {vip}: {got:?}, want {want:?} (waited {timeout:?})\nroute: {}\nsessions: {:?}",
                    self.router_route_text(vip),
                    self.router_sessions()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parse_instance_line() {
        let l = "instance=2 dataplane_address=198.18.0.42 tap=t1-dp2 file_prefix=t1-dp2 netns=t1-lb2 \
                 kernel_address=198.18.0.52 bird_socket=/run/fulcrum-topology/t1/lb2/bird.ctl \
                 routes_file=/run/fulcrum-topology/t1/lb2/routes.conf bird_config=/run/fulcrum-topology/t1/lb2/bird.conf";
        let i = Instance::parse(l).unwrap();
        assert_eq!(i.k, 2);
        assert_eq!(i.dataplane_ip, "198.18.0.42");
        assert_eq!(i.tap, "t1-dp2");
        assert_eq!(i.routes_file, PathBuf::from("/run/fulcrum-topology/t1/lb2/routes.conf"));
        assert_eq!(i.routes_text(&["198.18.1.1"]), "route 198.18.1.1/32 via 198.18.0.42;\n");
        assert!(Instance::parse("topology: up: prefix t1").is_none());
    }
}
