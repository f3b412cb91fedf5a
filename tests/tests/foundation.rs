//! Foundation: the dataplane comes up on net_tap, answers ARP and ping for its own
//! address only, survives malformed frames (counting each drop by reason), and exits
//! cleanly on SIGINT and SIGTERM leaving nothing behind (checked before the topology
//! is torn down), and the control plane stops cleanly on SIGTERM.

use fulcrum_tests::cp::ControlPlane;
use fulcrum_tests::*;
use std::time::Duration;

#[test]
fn ping_and_arp() {
    let topo = Topology::up();
    let started = std::time::Instant::now();
    let mut dp = Dataplane::start(&topo, "");
    let mac = dp.mac();

    topo.exec_ok("cli", &["ping", "-c", "3", "-W", "1", DATAPLANE_IP]);

    let (lladdr, state) = neighbour(&topo, "cli", DATAPLANE_IP)
        .unwrap_or_else(|| panic!("no neighbour entry for {DATAPLANE_IP} in {}", topo.ns("cli")));
    assert_eq!(
        lladdr.as_deref(),
        Some(mac.as_str()),
        "client resolved {DATAPLANE_IP} to {lladdr:?} ({state}), dataplane says its MAC is {mac}"
    );

    // An address nobody owns: the dataplane must not answer ARP for it.
    let (before, busy_before) = dp.wait_stats(Duration::from_secs(5), "first stats file", |s| {
        Ok((drop_count(s, "arp_not_for_us"), lcore_sum(s, "busy_ns")))
    });
    let out = topo.exec("cli", &["arping", "-c", "2", "-w", "3", "-I", "eth0", "198.18.0.99"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "arping 198.18.0.99 got an answer: {}", describe(&out));
    assert!(
        text.contains("Received 0 response"),
        "arping 198.18.0.99 output unexpected: {}",
        describe(&out)
    );
    let probes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Sent ").and_then(|r| r.split_whitespace().next()?.parse().ok()))
        .unwrap_or(1);
    dp.wait_stats(Duration::from_secs(5), "arp_not_for_us to count the arping probes", |s| {
        let now = drop_count(s, "arp_not_for_us");
        if now >= before + probes {
            Ok(())
        } else {
            Err(format!("arp_not_for_us {before} -> {now}, {probes} probes sent"))
        }
    });
    // And it still answers for its own address afterwards.
    topo.exec_ok("cli", &["ping", "-c", "1", "-W", "1", DATAPLANE_IP]);
    dp.assert_running();

    // The lcore's load: the frames since the first sample took some time,
    // and an almost idle lcore was busy for far less than its lifetime.
    let busy = dp.wait_stats(Duration::from_secs(5), "busy_ns to grow with the frames handled", |s| {
        let now = lcore_sum(s, "busy_ns");
        if now > busy_before {
            Ok(now)
        } else {
            Err(format!("busy_ns {busy_before} -> {now}"))
        }
    });
    let lifetime = started.elapsed().as_nanos() as u64;
    assert!(busy < lifetime / 2, "busy_ns {busy} over a lifetime of {lifetime} ns, nearly idle");
}

/// Stops the dataplane with `sig` and checks its own cleanup right after it exits,
/// while the topology still stands (`topology.sh down` would remove the runtime
/// directory itself and hide a dataplane that leaves it behind): exit 0, within 2 s,
/// `mbufs in use: 0` in its log, no EAL runtime directory or hugepage file of its
/// file prefix left.
fn stop_and_check_own_cleanup(dp: &mut Dataplane, prefix: &str, sig: Signal) {
    let rt = std::path::Path::new("/var/run/dpdk").join(prefix);
    assert!(rt.is_dir(), "{} missing while the dataplane runs: the check below would prove nothing", rt.display());
    let (status, took) = dp.stop(sig);
    let left = Topology::dataplane_leftovers(prefix);
    let log = dp.log();
    assert!(status.success(), "exit status after {sig}: {status}\n==== log ====\n{log}");
    assert!(took < Duration::from_secs(2), "took {took:?} to exit after {sig}\n==== log ====\n{log}");
    assert!(log.contains("mbufs in use: 0"), "no `mbufs in use: 0` in the log after {sig}\n==== log ====\n{log}");
    assert!(left.is_empty(), "the dataplane left behind after {sig} (topology still up): {left:?}\n==== log ====\n{log}");
    eprintln!("{sig} -> {status} in {took:?}, nothing of prefix {prefix} left by the dataplane");
}

#[test]
fn sigint_clean_exit() {
    let topo = Topology::up();
    let prefix = topo.prefix().to_string();
    let mut dp = Dataplane::start(&topo, "");
    // Some traffic first, so the shutdown path has had mbufs in flight.
    topo.exec_ok("cli", &["ping", "-c", "3", "-i", "0.2", "-W", "1", DATAPLANE_IP]);

    stop_and_check_own_cleanup(&mut dp, &prefix, Signal::SIGINT);

    drop(dp);
    drop(topo);
    let left = Topology::leftovers(&prefix);
    assert!(left.is_empty(), "left behind after teardown of {prefix}: {left:?}");
}

/// SIGTERM to both daemons: the dataplane (subscribed to a control plane's segment)
/// cleans up after itself as on SIGINT; the control plane exits 0, removes its
/// socket file and clears its heartbeat in the segment (0 = cleanly stopped, which
/// is how a dataplane tells a stopped control plane from a hung one).
#[test]
fn sigterm_clean_exit_of_both_daemons() {
    let topo = Topology::up();
    let prefix = topo.prefix().to_string();
    let mut cp = ControlPlane::start(&topo, "");
    let mut dp = Dataplane::start(&topo, &cp.dataplane_toml());
    topo.exec_ok("cli", &["ping", "-c", "3", "-i", "0.2", "-W", "1", DATAPLANE_IP]);

    stop_and_check_own_cleanup(&mut dp, &prefix, Signal::SIGTERM);

    let shm = cp.shm_path().to_path_buf();
    let socket = cp.socket().to_path_buf();
    let heartbeat = || {
        fulcrum_shm::Segment::open_existing(&shm)
            .unwrap_or_else(|e| panic!("open segment {}: {e}", shm.display()))
            .control_plane_status()
            .heartbeat_ns
    };
    let before = heartbeat();
    assert!(before != 0, "control plane heartbeat is 0 while it runs: the check below would prove nothing");
    assert!(socket.exists(), "{} missing while the control plane runs", socket.display());
    let (status, took) = cp.stop(Signal::SIGTERM);
    let log = cp.log();
    assert!(status.success(), "control plane exit status after SIGTERM: {status}\n==== log ====\n{log}");
    assert!(!socket.exists(), "control plane left its socket {} after SIGTERM\n==== log ====\n{log}", socket.display());
    let after = heartbeat();
    assert_eq!(after, 0, "control plane heartbeat not cleared after SIGTERM (was {before})\n==== log ====\n{log}");
    eprintln!("control plane: SIGTERM -> {status} in {took:?}, socket removed, heartbeat {before} -> 0");

    drop(dp);
    drop(cp);
    drop(topo);
    let left = Topology::leftovers(&prefix);
    assert!(left.is_empty(), "left behind after teardown of {prefix}: {left:?}");
}

/// Parse the JSON summary line printed last by tests/tools/malformed.py.
fn malformed_summary(stdout: &str) -> Value {
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("malformed.py printed no JSON summary");
    serde_json::from_str(line).expect("malformed.py summary is JSON")
}

#[test]
fn malformed_flood() {
    const COUNT: &str = "2000";
    let topo = Topology::up();
    let mut dp = Dataplane::start(&topo, "");
    let mac = dp.mac();
    topo.exec_ok("cli", &["ping", "-c", "1", "-W", "1", DATAPLANE_IP]);

    let baseline = dp.stats();
    let in_use_before = baseline["mbufs_in_use"].as_u64();

    let script = tool("malformed.py");
    let out = topo.exec_timeout(
        "cli",
        &[PYTHON, script.to_str().unwrap(), &mac, "--count", COUNT],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "malformed.py failed: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    let summary = malformed_summary(&stdout);
    let expect = summary["expect"].as_object().expect("expect map").clone();
    assert!(!expect.is_empty(), "malformed.py sent nothing: {stdout}");

    dp.assert_running();

    // Every kind must be counted under its drop reason. Wait until every counter has
    // reached the number sent, then require exactly that: nothing else in the topology
    // sends frames of these kinds (IPv6 is off), so more would mean double counting.
    let tap = topo.tap();
    dp.wait_stats(Duration::from_secs(10), "drop counters to account for every malformed frame", |s| {
        let mut missing = Vec::new();
        for (reason, n) in &expect {
            let n = n.as_u64().unwrap();
            let delta = drop_count(s, reason).saturating_sub(drop_count(&baseline, reason));
            if delta < n {
                missing.push(format!("{reason}: +{delta} < {n} sent"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            let tap_dropped = iface_stat(&topo, "fab", &tap, "tx", "dropped");
            Err(format!(
                "{}\nall drops now: {}\nbefore: {}\nkernel tap {tap} tx dropped: {tap_dropped:?}\nsender: {stdout}",
                missing.join("; "),
                format_drops(s),
                format_drops(&baseline)
            ))
        }
    });

    let after = dp.stats();
    for (reason, n) in &expect {
        let delta = drop_count(&after, reason).saturating_sub(drop_count(&baseline, reason));
        assert_eq!(
            delta,
            n.as_u64().unwrap(),
            "{reason}: counted {delta}, sent {n}\nall drops now: {}\nbefore: {}",
            format_drops(&after),
            format_drops(&baseline)
        );
    }
    eprintln!("drops after the flood: {}", format_drops(&after));

    // Still alive and still answering.
    dp.assert_running();
    topo.exec_ok("cli", &["ping", "-c", "3", "-i", "0.2", "-W", "1", DATAPLANE_IP]);

    // No mbuf leaked by the drop paths: back to the idle level. net_af_xdp
    // (DPDK 22.11) frees a sent mbuf only when a later send finds its
    // completion ring half full: there, what was sent since the baseline (the
    // pings' replies) may still be held by the driver, and no more.
    eprintln!("mbufs_in_use before the flood: {in_use_before:?}, after: {}", after["mbufs_in_use"]);
    if let Some(before) = in_use_before {
        dp.wait_stats(Duration::from_secs(5), "mbufs_in_use back to its level before the flood", |s| {
            let now = s["mbufs_in_use"].as_u64().unwrap_or(u64::MAX);
            let sent = lcore_sum(s, "tx_packets").saturating_sub(lcore_sum(&baseline, "tx_packets"));
            let held_by_driver = if soft_device() == SoftDevice::AfXdp { sent } else { 0 };
            if now <= before + held_by_driver {
                Ok(())
            } else {
                Err(format!("mbufs_in_use {before} before the flood, {now} now ({held_by_driver} sent since may be held by the driver)"))
            }
        });
    } else {
        panic!("stats have no mbufs_in_use: {baseline}");
    }
    dp.assert_running();
}
