//! Forwarding VIPs run by the control plane: a dataplane whose file declares no
//! VIP, a DSR and a FullNAT VIP created with `fulcrumctl vip add` / `backend add`,
//! real curl and iperf3 traffic through both, their counters in `fulcrumctl stats`
//! (read from the shared segment), and `vip del` taking them away again: traffic
//! stops, and the VIP's address is no longer answered for ARP or ping.

use fulcrum_tests::cp::ControlPlane;
use fulcrum_tests::forward_util::*;
use fulcrum_tests::*;
use std::time::Duration;

const DSR_VIP: &str = "198.18.1.2";
const FNAT_VIP: &str = "198.18.1.3";
const BACKENDS: [&str; 3] = ["be1", "be2", "be3"];
/// The control plane's metrics endpoint, inside the fabric namespace.
const PROMETHEUS: &str = "127.0.0.1:9469";

/// The value of the Prometheus sample whose name and labels start with `prefix`.
fn metric(topo: &Topology, prefix: &str) -> Result<u64, String> {
    let text = topo.exec_ok("fab", &["curl", "-sS", "--max-time", "2", &format!("http://{PROMETHEUS}/metrics")]);
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .ok_or_else(|| format!("no {prefix}... in /metrics"))
}

/// `fulcrumctl stats --json`'s entry for `vip` (`"198.18.1.2:80"`).
fn cp_vip_stats(cp: &ControlPlane, vip: &str) -> Result<Value, String> {
    let s = cp.try_json(&["stats"])?;
    s["vips"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["vip"] == vip).cloned())
        .ok_or_else(|| format!("no {vip} in `fulcrumctl stats`: {s}"))
}

fn n(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

/// Adds a forwarding VIP and its three backends through fulcrumctl.
fn add_vip(cp: &ControlPlane, vip: &str, mode: &str, affinity: &str, backend_port: u16) {
    cp.ctl_ok(&["vip", "add", vip, "--mode", mode, "--affinity", affinity]);
    for ip in BACKEND_IPS {
        cp.ctl_ok(&["backend", "add", vip, &format!("{ip}:{backend_port}")]);
    }
}

/// `ping -c 1` from the client to `addr`: answered or not.
fn ping(topo: &Topology, addr: &str) -> bool {
    topo.exec_timeout("cli", &["ping", "-c", "1", "-W", "1", addr], Duration::from_secs(5)).status.success()
}

/// `arping -c 1` for `addr` from be1 (on the fabric, like any neighbour): whether
/// `mac` answered (`None`: nobody did).
fn arping(topo: &Topology, addr: &str, mac: &str) -> Option<bool> {
    let out = topo.exec_timeout("be1", &["arping", "-c", "1", "-w", "2", "-I", "eth0", addr], Duration::from_secs(5));
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_lowercase().contains(mac))
}

#[test]
fn dsr_and_fullnat_vips_added_and_removed_with_fulcrumctl() {
    let topo = Topology::up();
    let mut servers = Vec::new();
    for (be, ip) in BACKENDS.iter().zip(BACKEND_IPS) {
        dsr_backend(&topo, be, DSR_VIP);
        servers.push(http_server(&topo, be, DSR_VIP, 80));
        servers.push(iperf3_server(&topo, be, DSR_VIP));
        servers.push(http_server(&topo, be, ip, 8080));
        servers.push(iperf3_server(&topo, be, ip));
    }
    // A VIP on the dataplane's own address, accepted while the control plane
    // has not yet heard from any dataplane: the dataplane refuses that one VIP,
    // says why, and installs the rest.
    let own_vip = format!(
        "[[vip]]\naddress = \"{DATAPLANE_IP}\"\nport = 81\nmode = \"proxy\"\nbackends = [{{ address = \"{}\", port = 8080 }}]\n",
        BACKEND_IPS[0]
    );
    let cp = ControlPlane::start_with_prometheus(&topo, &own_vip, PROMETHEUS);
    let forward = format!("[forward]\nsnat_addresses = [\"{SNAT_IP}\"]\nconntrack_entries = 65536\n");
    let mut dp = Dataplane::start(&topo, &format!("{}{forward}", cp.dataplane_toml()));
    let mac = dp.mac();
    assert_eq!(dp.stats()["vips"].as_array().map_or(0, Vec::len), 0, "the dataplane's file declares no VIP");
    assert!(!ping(&topo, DSR_VIP), "{DSR_VIP} answered ping before any VIP was configured");

    add_vip(&cp, &format!("{DSR_VIP}:80"), "dsr", "flow", 80);
    add_vip(&cp, &format!("{DSR_VIP}:5201"), "dsr", "client", 5201);
    add_vip(&cp, &format!("{FNAT_VIP}:80"), "fullnat", "flow", 8080);
    add_vip(&cp, &format!("{FNAT_VIP}:5201"), "fullnat", "client", 5201);
    let g = cp.wait_applied(Duration::from_secs(15));
    let status = cp.status();
    eprintln!("generation {g} applied by every lcore: {}", status["generation"]);
    let refused = status["generation"]["refused"].as_array().cloned().unwrap_or_default();
    assert_eq!(refused.len(), 1, "one VIP refused by the dataplane: {status}");
    assert_eq!(refused[0]["vip"], format!("{DATAPLANE_IP}:81/tcp"));
    let reason = refused[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("own address"), "refusal reason: {reason}");
    // Now that the dataplane has said what it is, the same mistake is refused up front.
    let out = cp.ctl(&["vip", "add", &format!("{DATAPLANE_IP}:82"), "--mode", "dsr"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("own address"), "vip add on the dataplane's address: {}", describe(&out));
    eprintln!("refused up front: {}", err.trim());

    // Both VIP addresses are now the dataplane's: ARP and ping answered.
    for vip in [DSR_VIP, FNAT_VIP] {
        assert_eq!(arping(&topo, vip, &mac), Some(true), "ARP for {vip} answered by {mac}");
        assert!(ping(&topo, vip), "ping {vip}");
    }

    // curl and iperf3 through both.
    http_check(&topo, &dp, DSR_VIP, 30);
    http_check(&topo, &dp, FNAT_VIP, 30);
    for vip in [DSR_VIP, FNAT_VIP] {
        let d = download_through(&topo, &dp, vip);
        eprintln!(
            "{vip}: iperf3 download {:.0} Mbit/s, {} bytes; VIP {} packets, {} bytes",
            d.bps / 1e6,
            d.rx_bytes,
            d.vip_pkts,
            d.vip_bytes
        );
        assert!(d.rx_bytes > 0 && d.vip_pkts > 0, "{vip}: iperf3 through the VIP: {}", d.result);
    }

    // The control plane shows their counters, read from the shared segment.
    for (vip, mode) in [(format!("{DSR_VIP}:80"), "dsr"), (format!("{FNAT_VIP}:80"), "fullnat")] {
        let v = wait_for(Duration::from_secs(10), &format!("{vip}'s counters in fulcrumctl stats"), || {
            let v = cp_vip_stats(&cp, &vip)?;
            // Forwarding VIPs: packets and bytes in, new flows as connections_total.
            if n(&v, "packets_in") > 0 && n(&v, "connections_total") >= 30 && n(&v, "bytes_in") > 0 {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        });
        eprintln!("fulcrumctl stats {vip}: {v}");
        assert_eq!(v["mode"], mode);
        let with_packets = v["backends"].as_array().map_or(0, |b| b.iter().filter(|b| n(b, "packets") > 0).count());
        assert!(with_packets >= 2, "{vip}: backends with packets in fulcrumctl stats: {v}");
    }
    // And Prometheus, from the same counters.
    for (vip, mode) in [(DSR_VIP, "dsr"), (FNAT_VIP, "fullnat")] {
        let prefix = format!("fulcrum_vip_packets_total{{vip=\"{vip}:80\",mode=\"{mode}\"}}");
        let packets = wait_for(Duration::from_secs(10), &format!("{prefix} in /metrics"), || {
            metric(&topo, &prefix).and_then(|n| if n > 0 { Ok(n) } else { Err(format!("{prefix} {n}")) })
        });
        let flows = metric(&topo, &format!("fulcrum_vip_flows_total{{vip=\"{vip}:80\",mode=\"{mode}\"}}")).unwrap();
        eprintln!("Prometheus: {prefix} {packets}; flows {flows}");
        assert!(flows >= 30, "{vip}:80 flows in Prometheus: {flows}");
    }
    let text = cp.ctl_ok(&["stats"]);
    eprintln!("fulcrumctl stats:\n{text}");
    assert!(text.contains(&format!("{DSR_VIP}:80")) && text.contains("dsr"), "{text}");

    // vip del: the DSR VIP's port 80 stops; its address still serves port 5201.
    cp.ctl_ok(&["vip", "del", &format!("{DSR_VIP}:80")]);
    cp.wait_applied(Duration::from_secs(15));
    let out = topo.exec_timeout(
        "cli",
        &["curl", "-sS", "--max-time", "2", &format!("http://{DSR_VIP}:80/")],
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "{DSR_VIP}:80 still answers after vip del: {}", describe(&out));
    assert!(ping(&topo, DSR_VIP), "{DSR_VIP} still has port 5201: ping answered");
    http_check(&topo, &dp, FNAT_VIP, 10);

    // Every VIP of an address deleted: neither ARP nor ping is answered for it.
    cp.ctl_ok(&["vip", "del", &format!("{DSR_VIP}:5201")]);
    cp.wait_applied(Duration::from_secs(15));
    assert_eq!(arping(&topo, DSR_VIP, &mac), None, "{DSR_VIP} removed, yet ARP is answered");
    assert!(!ping(&topo, DSR_VIP), "{DSR_VIP} removed, yet ping is answered");
    assert_eq!(arping(&topo, FNAT_VIP, &mac), Some(true), "{FNAT_VIP} still configured");
    let s = dp.stats();
    eprintln!("dataplane drops after removal: {}", format_drops(&s));
    dp.assert_running();
    drop(servers);
}
