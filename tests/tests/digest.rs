//! Issue 13, "same table everywhere": the dataplane reports a digest of each
//! VIP's installed Maglev table (read back from the tables the lcores use),
//! `fulcrumctl vip list` and Prometheus show it with its generation.
//!
//! A proxy VIP and a DSR VIP over three backends, run by the control plane:
//! draining one backend changes both digests and advances the generation;
//! undraining brings back the first digests exactly. The digests equal the
//! ones computed here from the same backends (in another order) through the
//! maglev crate, and the ones a second, independent dataplane reports for the
//! same VIPs from its own file (no control plane).

use fulcrum_maglev::{digest_hex, Backend, MaglevTable, DEFAULT_TABLE_SIZE};
use fulcrum_tests::cp::ControlPlane;
use fulcrum_tests::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const PROXY_VIP: &str = "198.18.1.1:80";
const DSR_VIP: &str = "198.18.1.2:80";
/// (VIP, backend port): proxy backends listen on 8080, DSR ones on the VIP's port.
const VIPS: [(&str, u16); 2] = [(PROXY_VIP, 8080), (DSR_VIP, 80)];
const PROMETHEUS: &str = "127.0.0.1:9473";

fn vips_toml() -> String {
    let mut s = String::new();
    for ((vip, port), mode) in VIPS.iter().zip(["proxy", "dsr"]) {
        let (addr, vport) = vip.split_once(':').unwrap();
        let backends: Vec<String> =
            BACKEND_IPS.iter().map(|ip| format!("{{ address = \"{ip}\", port = {port} }}")).collect();
        s += &format!(
            "[[vip]]\naddress = \"{addr}\"\nport = {vport}\nmode = \"{mode}\"\nbackends = [{}]\n\n",
            backends.join(", ")
        );
    }
    s
}

/// The digest the maglev crate gives for these backends (all weight 1, the
/// default table size), listed in reverse: list order must not matter.
fn expected(port: u16, drained: Option<&str>) -> String {
    let eps: Vec<SocketAddrV4> =
        BACKEND_IPS.iter().rev().map(|ip| SocketAddrV4::new(ip.parse::<Ipv4Addr>().unwrap(), port)).collect();
    let list: Vec<Backend> = eps
        .iter()
        .map(|e| Backend::at(IpAddr::V4(*e.ip()), e.port(), u32::from(Some(e.ip().to_string().as_str()) != drained)))
        .collect();
    let table = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    digest_hex(table.digest(|i| eps[i]))
}

/// Each VIP's `table` from `fulcrumctl --json vip list`, once every VIP has
/// one for generation `g` or later.
fn digests_at(cp: &ControlPlane, g: u64) -> (u64, BTreeMap<String, Value>) {
    wait_for(Duration::from_secs(20), &format!("digests of generation {g} in `fulcrumctl vip list`"), || {
        let list = cp.try_json(&["vip", "list"])?;
        let mut out = BTreeMap::new();
        let mut gens = Vec::new();
        for v in list.as_array().ok_or("not a list")? {
            let t = &v["table"];
            let tg = t["generation"].as_u64().ok_or_else(|| format!("no digest yet: {v}"))?;
            if tg < g {
                return Err(format!("digest of generation {tg}: {v}"));
            }
            gens.push(tg);
            out.insert(v["vip"].as_str().unwrap().to_owned(), t.clone());
        }
        gens.dedup();
        match (out.len(), gens.as_slice()) {
            (2, [tg]) => Ok((*tg, out)),
            _ => Err(format!("{list}")),
        }
    })
}

fn digest(d: &BTreeMap<String, Value>, vip: &str) -> String {
    d[vip]["digest"].as_str().unwrap().to_owned()
}

/// The `fulcrum_vip_table_info` samples, by VIP: (digest, generation).
fn prometheus_tables(topo: &Topology) -> BTreeMap<String, (String, u64)> {
    let text = topo.exec_ok("fab", &["curl", "-sS", "--max-time", "2", &format!("http://{PROMETHEUS}/metrics")]);
    assert!(text.contains("# TYPE fulcrum_vip_table_info gauge\n"), "{text}");
    let label = |l: &str, name: &str| {
        let start = l.find(&format!("{name}=\""))? + name.len() + 2;
        Some(l[start..start + l[start..].find('"')?].to_owned())
    };
    text.lines()
        .filter(|l| l.starts_with("fulcrum_vip_table_info{"))
        .map(|l| {
            assert!(l.ends_with("} 1"), "{l}");
            (label(l, "vip").unwrap(), (label(l, "digest").unwrap(), label(l, "generation").unwrap().parse().unwrap()))
        })
        .collect()
}

#[test]
fn installed_table_digests_follow_drains_and_match_everywhere() {
    let topo = Topology::up();
    let cp = ControlPlane::start_with_prometheus(&topo, &vips_toml(), PROMETHEUS);
    let dp = Dataplane::start(&topo, &cp.dataplane_toml());
    let g1 = cp.wait_applied(Duration::from_secs(20));
    let (t1, first) = digests_at(&cp, g1);
    println!("generation {t1}: {PROXY_VIP} {}  {DSR_VIP} {}", digest(&first, PROXY_VIP), digest(&first, DSR_VIP));
    for (vip, port) in VIPS {
        let t = &first[vip];
        assert_eq!(t["digest"].as_str().unwrap().len(), 16, "{t}");
        assert_eq!((t["slots"].as_u64(), t["backends"].as_u64()), (Some(u64::from(DEFAULT_TABLE_SIZE)), Some(3)), "{t}");
        assert_eq!(digest(&first, vip), expected(port, None), "{vip}: the dataplane's table is the maglev crate's");
    }
    // The table view: DIGEST (12 hex digits) and the generation.
    let text = cp.ctl_ok(&["vip", "list"]);
    println!("{text}");
    assert!(text.lines().next().unwrap().contains("DIGEST"), "{text}");
    for vip in [PROXY_VIP, DSR_VIP] {
        let line = text.lines().find(|l| l.starts_with(vip)).unwrap();
        assert!(line.contains(&digest(&first, vip)[..12]) && line.split_whitespace().any(|w| w == t1.to_string()), "{line}");
    }
    let prom = prometheus_tables(&topo);
    for vip in [PROXY_VIP, DSR_VIP] {
        assert_eq!(prom.get(vip), Some(&(digest(&first, vip), t1)), "{prom:?}");
    }

    // Drain the second backend of both VIPs.
    let drained = BACKEND_IPS[1];
    for (vip, port) in VIPS {
        cp.ctl_ok(&["backend", "drain", vip, &format!("{drained}:{port}")]);
    }
    let g2 = cp.wait_applied(Duration::from_secs(20));
    let (t2, second) = digests_at(&cp, g2);
    println!("generation {t2} ({drained} drained): {PROXY_VIP} {}  {DSR_VIP} {}", digest(&second, PROXY_VIP), digest(&second, DSR_VIP));
    assert!(t2 > t1, "the generation advances: {t1} -> {t2}");
    for (vip, port) in VIPS {
        assert_ne!(digest(&second, vip), digest(&first, vip), "{vip}");
        assert_eq!(second[vip]["backends"].as_u64(), Some(2));
        assert_eq!(digest(&second, vip), expected(port, Some(drained)), "{vip}");
    }

    // Undrain: the first digests exactly.
    for (vip, port) in VIPS {
        cp.ctl_ok(&["backend", "undrain", vip, &format!("{drained}:{port}")]);
    }
    let g3 = cp.wait_applied(Duration::from_secs(20));
    let (t3, third) = digests_at(&cp, g3);
    println!("generation {t3} (undrained): {PROXY_VIP} {}  {DSR_VIP} {}", digest(&third, PROXY_VIP), digest(&third, DSR_VIP));
    assert!(t3 > t2);
    for vip in [PROXY_VIP, DSR_VIP] {
        assert_eq!(digest(&third, vip), digest(&first, vip), "{vip}");
    }
    let prom = prometheus_tables(&topo);
    assert_eq!(prom.get(PROXY_VIP), Some(&(digest(&first, PROXY_VIP), t3)), "{prom:?}");

    // A second dataplane, independent: its own file with the same VIPs (the
    // backends in another order), its own interface (not bridged: it carries no
    // traffic), EAL prefix and segment, no control plane. Its report (read
    // from its segment) has the same digests.
    let mut reversed = vips_toml();
    for (i, ip) in BACKEND_IPS.iter().enumerate() {
        reversed = reversed.replace(ip, &format!("@{i}@"));
    }
    for (i, ip) in BACKEND_IPS.iter().rev().enumerate() {
        reversed = reversed.replace(&format!("@{i}@"), ip);
    }
    let shm2 = topo.dir().join("second-dataplane.shm");
    let second_dp_toml = format!(
        "[dataplane]\nfile_prefix = \"{p}-dq\"\n{software}\nshm = {shm2:?}\n\n{reversed}",
        p = topo.prefix(),
        // The same device key as the base config's, so the merge replaces its name.
        software = soft_device().config_line(&format!("{}-dq", topo.prefix()), None)
    );
    let dp2 = Dataplane::start_with(&topo, StartOptions { extra_config: second_dp_toml, attach: false, ..Default::default() });
    let seg = fulcrum_shm::Segment::open_existing(&shm2).expect("the second dataplane's segment");
    let report = wait_for(Duration::from_secs(20), "the second dataplane's report with its tables", || {
        seg.dataplane_report().filter(|r| r.tables.len() == 2).ok_or_else(|| format!("{:?}", seg.dataplane_report()))
    });
    for t in &report.tables {
        println!("second dataplane, generation {} (its file): {} {}", report.generation, t.vip, t.digest);
        assert_eq!(t.digest, digest(&first, &t.vip), "{t:?}");
    }
    drop(dp2);
    drop(dp);
}
