//! The real daemon and fulcrumctl, no dataplane (a fake one where counters
//! are needed).

mod common;

use common::*;
use fulcrum_shm as shm;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const V1: &str = "198.18.1.1:80";
const B1: &str = "198.18.0.21:8080";
const B2: &str = "198.18.0.22:8080";
const B3: &str = "198.18.0.23:8080";

fn slot_of(d: &Daemon, vip: &str, backend: &str) -> u64 {
    let list = d.json(&["backend", "list", vip]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == backend)
        .unwrap_or_else(|| panic!("{backend} not in {list}"))["slot"]
        .as_u64()
        .unwrap()
}

#[test]
fn every_error_is_refused_and_changes_nothing() {
    let d = Daemon::start(VIPS);
    let before = d.json(&["vip", "list"]);
    let (_, gen_before) = d.published();
    let cases: &[(&[&str], &str)] = &[
        (&["vip", "del", "198.18.9.9:80"], "no VIP 198.18.9.9:80"),
        (&["vip", "add", V1], "already exists"),
        (&["vip", "add", "1.2.3"], "1.2.3"),
        (&["vip", "add", "198.18.1.5:0"], "port"),
        (&["vip", "add", "198.18.1.5:70000"], "70000"),
        (&["vip", "add", "127.0.0.1:80"], "cannot be a VIP"),
        (&["vip", "add", "198.18.1.5:80", "--table-size", "100"], "table_size"),
        (&["vip", "add", "198.18.1.5:80", "--health", "kind = \"tcp\", interval_ms = 100, timeout_ms = 200"], "timeout_ms"),
        (&["backend", "list", "198.18.9.9:80"], "no VIP"),
        (&["backend", "add", "198.18.9.9:80", B1], "no VIP"),
        (&["backend", "add", V1, B1], "already has backend"),
        (&["backend", "add", V1, "198.18.0.24:0"], "port"),
        (&["backend", "add", V1, "198.18.0.24"], "198.18.0.24"),
        (&["backend", "add", V1, "255.255.255.255:80"], "not a usable backend"),
        (&["backend", "add", V1, "198.18.0.24:80", "--weight", "-1"], "weight"),
        (&["backend", "del", V1, "198.18.0.99:8080"], "has no backend 198.18.0.99:8080"),
        (&["backend", "weight", V1, B1, "-1"], "weight"),
        (&["backend", "weight", V1, B1, "1099511627776"], "weight"),
        (&["backend", "weight", V1, B1, "x"], "weight"),
        (&["backend", "weight", V1, "198.18.0.99:8080", "3"], "has no backend"),
        (&["backend", "weight", "198.18.1.9:80", B1, "3"], "no VIP"),
        (&["backend", "drain", V1, "198.18.0.99:8080"], "has no backend"),
        (&["backend", "undrain", "198.18.1.9:80", B1], "no VIP"),
        (&["limit", "show", "198.18.1.9:80"], "no VIP"),
        (&["limit", "set", "198.18.1.9:80", "--new-conn-rate", "5"], "no VIP"),
        (&["limit", "set", V1, "--new-conn-rate", "0"], "rate"),
        (&["limit", "set", V1, "--new-conn-rate", "-5"], "rate"),
        (&["limit", "set", V1, "--new-conn-rate", "99999999999"], "rate"),
        (&["limit", "set", V1, "--burst", "5"], "needs a rate"),
        (&["limit", "set", V1, "--bandwidth", "0"], "bandwidth"),
        (&["limit", "set", V1, "--max-connections", "0"], "max-connections"),
        (&["limit", "set", V1, "--clear", "everything"], "everything"),
        (&["limit", "set", V1], "nothing to change"),
    ];
    for (args, want) in cases {
        let out = d.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "fulcrumctl {args:?} succeeded");
        assert!(err.contains(want), "fulcrumctl {args:?}: stderr {err:?} should mention {want:?}");
        assert!(out.stdout.is_empty(), "fulcrumctl {args:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(d.json(&["vip", "list"]), before, "configuration changed by a refused command");
    assert_eq!(d.published().1, gen_before, "a refused command published a generation");

    // Daemon not running: socket missing.
    let out = Command::new(CTL).args(["--socket", "/nonexistent/fulcrum.sock", "status"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the control plane") && err.contains("/nonexistent/fulcrum.sock"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn json_outputs_parse_with_expected_fields() {
    let d = Daemon::start(VIPS);
    // A fake dataplane writing counters through fulcrum-shm.
    let seg = shm::Segment::open_existing(d.shm()).unwrap();
    let dp = seg.dataplane(&shm::DataplaneInit { lcores: 1, counter_names: &[], gauge_mask: 0 }).unwrap();
    let mut dp = dp;
    let lc = dp.take_lcore(0).unwrap();
    let vip_id = d.json(&["vip", "list"])[0]["id"].as_u64().unwrap() as u16;
    let slot = slot_of(&d, V1, B2) as u32;
    lc.vip_add(vip_id, shm::VIP_ACCEPTED, 42);
    lc.vip_add(vip_id, shm::VIP_ACTIVE, 3);
    lc.vip_add(vip_id, shm::VIP_BYTES_IN, 1000);
    lc.vip_add(vip_id, shm::VIP_DROP_RATE, 7);
    lc.vip_add(vip_id, shm::VIP_SYNS, 500);
    lc.vip_add(vip_id, shm::VIP_COOKIES_SENT, 400);
    lc.vip_add(vip_id, shm::VIP_COOKIES_VALIDATED, 30);
    lc.vip_add(vip_id, shm::VIP_COOKIES_REJECTED, 6);
    lc.vip_add(vip_id, shm::VIP_HALF_OPEN, 16);
    lc.vip_set(vip_id, shm::VIP_FLOOD_LCORES, 1);
    lc.vip_add(vip_id, shm::VIP_DROP_HALF_OPEN, 2);
    lc.backend_add(slot, shm::BACKEND_OPENED, 40);
    lc.backend_add(slot, shm::BACKEND_ACTIVE, 2);
    lc.backend_add(slot, shm::BACKEND_CONNECT_FAILURES, 1);
    dp.heartbeat();

    let st = wait_for(Duration::from_secs(5), "status to see the dataplane", || {
        dp.heartbeat();
        let st = d.json(&["status"]);
        (st["dataplane"]["alive"] == true).then_some(st)
    });
    assert_eq!(st["controlplane"]["alive"], true);
    assert!(st["controlplane"]["pid"].as_u64().unwrap() > 0);
    assert!(st["controlplane"]["uptime_secs"].as_f64().is_some());
    assert_eq!(st["dataplane"]["pid"].as_u64(), Some(u64::from(std::process::id())));
    assert!(st["generation"]["published"].as_u64().unwrap() >= 1);
    assert!(st["generation"]["applied"].is_u64());
    assert!(st["dataplane"]["rejected_generations"].is_u64());

    let vips = d.json(&["vip", "list"]);
    assert_eq!(vips.as_array().unwrap().len(), 2);
    assert_eq!(vips[0]["vip"], V1);
    assert_eq!(vips[0]["mode"], "proxy");
    assert_eq!(vips[0]["backends"].as_array().unwrap().len(), 3);

    let bl = d.json(&["backend", "list"]);
    assert_eq!(bl.as_array().unwrap().len(), 4);
    let b2 = bl.as_array().unwrap().iter().find(|b| b["backend"] == B2).unwrap();
    assert_eq!(b2["weight"], 2);
    assert_eq!(b2["state"], "up");
    assert_eq!(b2["connections_active"], 2);
    for k in ["vip", "slot", "drain", "health"] {
        assert!(b2.get(k).is_some(), "backend list lacks {k}: {b2}");
    }

    d.ok(&["limit", "set", V1, "--new-conn-rate", "100", "--burst", "200", "--client-rate", "5", "--bandwidth", "1000000"]);
    let lim = d.json(&["limit", "show", V1]);
    assert_eq!(lim[0]["new_conn_rate"]["per_sec"], 100);
    assert_eq!(lim[0]["new_conn_rate"]["burst"], 200);
    assert_eq!(lim[0]["client_rate"]["per_sec"], 5);
    assert_eq!(lim[0]["client_rate"]["burst"], 5);
    assert_eq!(lim[0]["bandwidth_bytes_per_sec"], 1000000);
    d.ok(&["limit", "set", V1, "--clear", "client-rate", "--clear", "bandwidth"]);
    let lim = d.json(&["limit", "show", V1]);
    assert!(lim[0]["client_rate"].is_null() && lim[0]["bandwidth_bytes_per_sec"].is_null(), "{lim}");
    let pv = d.published_vip(V1).unwrap();
    assert_eq!(pv.new_conn_rate, Some(fulcrum_model::Rate::new(100, 200)));
    assert_eq!(pv.client_rate, None);

    let stats = d.json(&["stats"]);
    let v = &stats["vips"][0];
    assert_eq!(v["vip"], V1);
    assert_eq!(v["connections_total"], 42);
    assert_eq!(v["connections_active"], 3);
    assert_eq!(v["bytes_in"], 1000);
    assert_eq!(v["drops"]["new_conn_rate"], 7);
    assert_eq!(v["drops"]["half_open_timeout"], 2);
    assert!(v["new_per_sec"].is_number());
    let syn = &v["syn"];
    assert_eq!((syn["syns"].as_u64(), syn["cookies_sent"].as_u64(), syn["cookies_validated"].as_u64()), (Some(500), Some(400), Some(30)));
    assert_eq!((syn["cookies_rejected"].as_u64(), syn["half_open"].as_u64(), syn["flood_lcores"].as_u64()), (Some(6), Some(16), Some(1)));
    assert_eq!(syn["flood"], true, "{syn}");
    assert!(syn["flood_since_unix"].as_f64().is_some_and(|t| t > 1e9) && syn["flood_for_secs"].is_number(), "{syn}");
    let text = d.ok(&["stats"]);
    assert!(text.contains("syn: 500 seen, cookies 400 sent / 30 validated / 6 rejected, half-open 16, flood ON for "), "{text}");
    let (_, metrics) = d.http_get("/metrics");
    for line in [format!("fulcrum_vip_flood_mode{{vip=\"{V1}\"}} 1\n"), format!("fulcrum_vip_syns_total{{vip=\"{V1}\"}} 500\n")] {
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    lc.vip_set(vip_id, shm::VIP_FLOOD_LCORES, 0);
    let v = &d.json(&["stats"])["vips"][0];
    assert_eq!((v["syn"]["flood"].as_bool(), v["syn"]["flood_since_unix"].is_null()), (Some(false), true), "{v}");
    assert!(d.ok(&["stats"]).contains("flood off"));
    let sb = v["backends"].as_array().unwrap().iter().find(|b| b["backend"] == B2).unwrap();
    assert_eq!(sb["connections_total"], 40);
    assert_eq!(sb["connect_failures"], 1);

    let h = d.json(&["health"]);
    assert_eq!(h.as_array().unwrap().len(), 4);
    for k in ["vip", "backend", "state", "since_secs", "last_error", "latency_last_ms", "latency_p50_ms", "latency_p99_ms"] {
        assert!(h[0].get(k).is_some(), "health lacks {k}: {}", h[0]);
    }
    assert_eq!(h[0]["state"], "unchecked");

    let top = d.ok(&["--json", "top", "--iterations", "2", "--interval", "0.1"]);
    let lines: Vec<Value> = top.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["stats"]["vips"][0]["connections_total"], 42);
    // The text forms print something for every reading command.
    for args in [&["status"][..], &["vip", "list"], &["backend", "list"], &["limit", "show"], &["stats"], &["health"], &["top", "--iterations", "1"]] {
        assert!(!d.ok(args).trim().is_empty(), "{args:?} printed nothing");
    }
    drop(dp);
}

#[test]
fn changes_are_published_as_generations() {
    let d = Daemon::start(VIPS);
    let (_, g0) = d.published();
    let s1 = d.published_backend(V1, B1).unwrap().slot;

    d.ok(&["backend", "weight", V1, B1, "5"]);
    let b = d.published_backend(V1, B1).unwrap();
    assert_eq!((b.weight, b.slot, b.state), (5, s1, fulcrum_model::BackendState::Up));
    assert!(d.published().1 > g0);

    d.ok(&["backend", "drain", V1, B1]);
    assert_eq!(d.published_backend(V1, B1).unwrap().state, fulcrum_model::BackendState::Drain);
    assert_eq!(d.json(&["backend", "list", V1])[0]["state"], "drain");
    d.ok(&["backend", "undrain", V1, B1]);
    assert_eq!(d.published_backend(V1, B1).unwrap().state, fulcrum_model::BackendState::Up);

    d.ok(&["backend", "add", V1, "198.18.0.24:8080", "--weight", "3"]);
    let nb = d.published_backend(V1, "198.18.0.24:8080").unwrap();
    assert_eq!(nb.weight, 3);
    let slots: Vec<u32> = d.published().0.vips.iter().flat_map(|p| p.slots.iter().copied()).collect();
    assert_eq!(slots.iter().filter(|&&s| s == nb.slot).count(), 1, "slot {} reused: {slots:?}", nb.slot);

    d.ok(&["backend", "del", V1, B3]);
    assert!(d.published_backend(V1, B3).is_none());
    assert_eq!(d.published_vip(V1).unwrap().backends.len(), 3);
    // Removing a backend leaves the others' slots alone.
    assert_eq!(d.published_backend(V1, B1).unwrap().slot, s1);

    d.ok(&["vip", "add", "198.18.1.3:8000", "--max-connections", "77", "--affinity", "client", "--table-size", "251"]);
    let nv = d.published_vip("198.18.1.3:8000").unwrap();
    assert_eq!(nv.max_connections, 77);
    assert_eq!(nv.affinity, fulcrum_model::Affinity::Client);
    assert!(nv.backends.is_empty());
    d.ok(&["backend", "add", "198.18.1.3:8000", "198.18.0.21:8000"]);
    assert_eq!(d.published_vip("198.18.1.3:8000").unwrap().backends.len(), 1);
    d.ok(&["vip", "del", "198.18.1.3:8000"]);
    assert!(d.published_vip("198.18.1.3:8000").is_none());

    d.ok(&["limit", "set", V1, "--max-connections", "500", "--bandwidth", "4096"]);
    let pv = d.published_vip(V1).unwrap();
    assert_eq!((pv.max_connections, pv.bandwidth_bytes_per_sec), (500, Some(4096)));
    let st = d.json(&["status"]);
    assert_eq!(st["generation"]["published"].as_u64().unwrap(), d.published().1);
}

#[test]
fn cli_changes_and_slots_survive_kill_9() {
    let mut d = Daemon::start(VIPS);
    d.ok(&["backend", "weight", V1, B2, "9"]);
    d.ok(&["backend", "drain", V1, B3]);
    d.ok(&["backend", "add", V1, "198.18.0.24:8080"]);
    d.ok(&["vip", "add", "198.18.1.3:8000"]);
    let before = d.json(&["vip", "list"]);
    let (_, gen_before) = d.published();

    d.kill9();
    d.spawn();
    assert_eq!(d.json(&["vip", "list"]), before, "configuration or slots changed across kill -9");
    let (cfg, gen_after) = d.published();
    // Nothing changed: the restarted daemon keeps the generation in the segment.
    assert_eq!(gen_after, gen_before, "an unchanged restart published a new generation");
    let b2 = d.published_backend(V1, B2).unwrap();
    assert_eq!(b2.weight, 9);
    assert_eq!(b2.slot as u64, before[0]["backends"][1]["slot"].as_u64().unwrap());
    assert_eq!(d.published_backend(V1, B3).unwrap().state, fulcrum_model::BackendState::Drain);
    assert_eq!(cfg.vips.len(), 3);

    // A change after the restart gets a newer generation than any before.
    d.ok(&["backend", "weight", V1, B2, "4"]);
    assert!(d.published().1 > gen_after);
}

#[test]
fn sighup_applies_only_the_toml_difference() {
    let d = Daemon::start(VIPS);
    d.ok(&["backend", "weight", V1, B1, "7"]); // CLI change on a backend the edit keeps
    d.ok(&["limit", "set", V1, "--new-conn-rate", "50"]);
    let slot1 = slot_of(&d, V1, B1);
    let slot2 = slot_of(&d, V1, B2);
    let vip2_before = d.published_vip("198.18.1.2:443").unwrap();

    // Edit: B3 removed, B4 added, B2's weight unchanged.
    let edited = VIPS.replace(
        "{ address = \"198.18.0.23\", port = 8080 },",
        "{ address = \"198.18.0.24\", port = 8080, weight = 4 },",
    );
    d.write_config(&edited);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the reload to publish 198.18.0.24", || d.published_backend(V1, "198.18.0.24:8080"));
    assert!(d.published_backend(V1, B3).is_none(), "removed backend still published");
    let b1 = d.published_backend(V1, B1).unwrap();
    assert_eq!((b1.weight, u64::from(b1.slot)), (7, slot1), "CLI weight change or slot lost");
    let b2 = d.published_backend(V1, B2).unwrap();
    assert_eq!((b2.weight, u64::from(b2.slot)), (2, slot2));
    assert_eq!(d.published_backend(V1, "198.18.0.24:8080").unwrap().weight, 4);
    assert_eq!(d.published_vip(V1).unwrap().new_conn_rate.map(|r| r.per_sec), Some(50));
    assert_eq!(d.published_vip("198.18.1.2:443").unwrap(), vip2_before, "untouched VIP changed");
    let st = d.json(&["status"]);
    assert_eq!(st["controlplane"]["last_reload"]["ok"], true, "{st}");

    // An invalid file on SIGHUP: logged, old configuration kept.
    let before = d.json(&["vip", "list"]);
    let (_, g) = d.published();
    std::fs::write(d.toml(), d.config_text(&edited.replace("port = 443", "port = 0"))).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let st = wait_for(Duration::from_secs(10), "the failed reload in status", || {
        let st = d.json(&["status"]);
        (st["controlplane"]["last_reload"]["ok"] == false).then_some(st)
    });
    let err = st["controlplane"]["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains("controlplane.toml") && err.contains("port"), "{err}");
    assert!(d.log_text().contains("reload failed"), "{}", d.log_text());
    assert_eq!(d.json(&["vip", "list"]), before);
    assert_eq!(d.published().1, g);
    assert!(d.json(&["status"])["controlplane"]["alive"] == true);
}

#[test]
fn invalid_toml_on_start_exits_2_naming_file_field_reason() {
    let dir = tempfile::tempdir().unwrap();
    let head = format!(
        "[controlplane]\nshm = {:?}\nsocket = {:?}\nstate_file = {:?}\nprometheus = \"\"\n",
        dir.path().join("shm"),
        dir.path().join("sock"),
        dir.path().join("state.json")
    );
    let vip = "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\ntable_size = 251\n";
    let cases = [
        (format!("{head}sokcet = \"x\"\n"), "sokcet"),
        (format!("{head}{vip}colour = \"red\"\n"), "colour"),
        (format!("{head}[[vip]]\naddress = \"198.18.1.1\"\nport = 0\nmode = \"proxy\"\n"), "port"),
        (format!("{head}[[vip]]\naddress = \"198.18.1.1\"\nport = 70000\nmode = \"proxy\"\n"), "70000"),
        (format!("{head}[[vip]]\naddress = \"1.2.3\"\nport = 80\nmode = \"proxy\"\n"), "address"),
        (format!("{head}[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"bridge\"\n"), "bridge"),
        (format!("{head}{vip}backends = [{{ address = \"198.18.0.21\", port = 80, weight = -1 }}]\n"), "weight"),
        (format!("{head}{vip}backends = [{{ address = \"198.18.0.21\", port = 80, wieght = 1 }}]\n"), "wieght"),
        (format!("{head}{vip}new_conn_rate = {{ per_sec = 0, burst = 1 }}\n"), "new_conn_rate.per_sec"),
        (format!("{head}{vip}health = {{ kind = \"tcp\", interval_ms = 100, timeout_ms = 500 }}\n"), "health"),
        (format!("{head}{vip}health = {{ kind = \"icmp\" }}\n"), "icmp"),
        (format!("{head}{vip}{vip}"), "twice"),
        (format!("{head}{vip}table_size = 100\n").replace("table_size = 251\ntable_size", "table_size"), "table_size"),
    ];
    for (text, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(DAEMON).arg("--config").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\nstderr: {err}");
        assert!(err.contains("bad.toml") && err.contains(want), "{text}\nstderr {err:?} should name the file and {want:?}");
    }
    let out = Command::new(DAEMON).arg("--config").arg(dir.path().join("missing.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    assert!(!dir.path().join("sock").exists() && !dir.path().join("state.json").exists());
}

#[test]
fn prometheus_metrics_have_help_and_type() {
    let d = Daemon::start(VIPS);
    d.ok(&["backend", "drain", V1, B3]);
    let (head, body) = d.http_get("/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    for (name, kind) in [
        ("fulcrum_vip_connections_active", "gauge"),
        ("fulcrum_vip_connections_total", "counter"),
        ("fulcrum_vip_bytes_total", "counter"),
        ("fulcrum_vip_drops_total", "counter"),
        ("fulcrum_backend_connections_active", "gauge"),
        ("fulcrum_backend_connections_total", "counter"),
        ("fulcrum_backend_connect_failures_total", "counter"),
        ("fulcrum_backend_up", "gauge"),
        ("fulcrum_backend_health_check_duration_seconds", "summary"),
        ("fulcrum_dataplane_up", "gauge"),
        ("fulcrum_config_generation", "gauge"),
    ] {
        assert!(body.contains(&format!("# HELP {name} ")), "no HELP for {name}:\n{body}");
        assert!(body.contains(&format!("# TYPE {name} {kind}\n")), "no TYPE {kind} for {name}:\n{body}");
    }
    assert!(body.contains("fulcrum_vip_connections_active{vip=\"198.18.1.1:80\"} 0\n"), "{body}");
    assert!(body.contains("fulcrum_vip_bytes_total{vip=\"198.18.1.1:80\",direction=\"in\"} 0\n"), "{body}");
    assert!(body.contains("fulcrum_backend_up{vip=\"198.18.1.1:80\",backend=\"198.18.0.21:8080\"} 1\n"), "{body}");
    assert!(body.contains("fulcrum_backend_up{vip=\"198.18.1.1:80\",backend=\"198.18.0.23:8080\"} 0\n"), "{body}");
    assert!(body.contains("fulcrum_dataplane_up 0\n"));
    // Every sample line parses as `name{labels} value`.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad sample line {line:?}"));
    }
    let (head, _) = d.http_get("/other");
    assert!(head.starts_with("HTTP/1.1 404"));
}

#[test]
fn health_check_up_then_down_is_published() {
    // A backend on this machine, but not on loopback (not a usable backend address).
    let ip = local_address();
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (interval, timeout, fall) = (200u64, 100u64, 2u64);
    let vips = format!(
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\ntable_size = 251\n\
         backends = [{{ address = \"{ip}\", port = {port} }}]\n\
         health = {{ kind = \"tcp\", interval_ms = {interval}, timeout_ms = {timeout}, rise = 1, fall = {fall} }}\n"
    );
    let d = Daemon::start(&vips);
    let backend = format!("{ip}:{port}");
    wait_for(Duration::from_secs(10), "the backend to be checked Up", || {
        let h = d.json(&["health"]);
        (h[0]["state"] == "up").then_some(())
    });
    assert_eq!(d.published_backend(V1, &backend).unwrap().state, fulcrum_model::BackendState::Up);
    let h = d.json(&["health"]);
    assert!(h[0]["latency_last_ms"].as_f64().is_some(), "{h}");

    drop(listener);
    let stopped = std::time::Instant::now();
    // fall x interval + timeout, plus scheduling and the 100 ms publication tick.
    let bound = Duration::from_millis(fall * interval + timeout + 1000);
    wait_for(bound, "the backend to be published Down", || {
        (d.published_backend(V1, &backend)?.state == fulcrum_model::BackendState::Down).then_some(())
    });
    eprintln!("published Down {:?} after the listener closed", stopped.elapsed());
    let h = d.json(&["health"]);
    assert_eq!(h[0]["state"], "down");
    assert!(h[0]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{h}");
    assert_eq!(d.json(&["backend", "list"])[0]["state"], "down");
    let (_, body) = d.http_get("/metrics");
    assert!(body.contains(&format!("fulcrum_backend_up{{vip=\"198.18.1.1:80\",backend=\"{backend}\"}} 0")), "{body}");
    assert!(body.contains("fulcrum_backend_health_check_duration_seconds{"), "{body}");

    // Back up: a new listener on the same port.
    let _l2 = std::net::TcpListener::bind((ip, port)).unwrap();
    wait_for(Duration::from_secs(5), "the backend to be published Up again", || {
        (d.published_backend(V1, &backend)?.state == fulcrum_model::BackendState::Up).then_some(())
    });
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start(VIPS);
    let out = Command::new(DAEMON).arg("--config").arg(d.toml()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("running") || err.contains("alive"), "{err}");
    // The first one still answers.
    d.ok(&["status"]);
}

#[test]
fn dataplane_restart_and_death_are_reported() {
    let d = Daemon::start(VIPS);
    let st = d.json(&["status"]);
    assert_eq!(st["dataplane"]["state"], "never seen");
    let seg = shm::Segment::open_existing(d.shm()).unwrap();
    let init = shm::DataplaneInit { lcores: 1, counter_names: &[], gauge_mask: 0 };

    let dp = seg.dataplane(&init).unwrap();
    let (_, published) = d.published();
    // A (fake) dataplane reads the current generation at start.
    let mut sub = dp.subscriber();
    assert!(matches!(sub.poll(), shm::Poll::New(_, g) if g == published));
    // Accepted is not applied: the dataplane says so once every lcore installed it.
    assert_ne!(d.json(&["status"])["generation"]["applied"], published);
    sub.mark_applied(published);
    wait_for(Duration::from_secs(5), "the dataplane to be seen alive", || {
        dp.heartbeat();
        let st = d.json(&["status"]);
        (st["dataplane"]["alive"] == true && st["generation"]["applied"] == published).then_some(())
    });
    // Heartbeat stops: dead after > 1 s.
    let st = wait_for(Duration::from_secs(5), "the stale heartbeat to be reported", || {
        let st = d.json(&["status"]);
        (st["dataplane"]["alive"] == false).then_some(st)
    });
    assert_eq!(st["dataplane"]["state"], "down");
    let _ = sub;
    drop(dp); // clean exit: heartbeat 0
    wait_for(Duration::from_secs(5), "the clean stop to be reported", || {
        (d.json(&["status"])["dataplane"]["state"] == "stopped").then_some(())
    });

    // A new dataplane process (new epoch) is a restart.
    let dp = seg.dataplane(&init).unwrap();
    let st = wait_for(Duration::from_secs(5), "the restart to be reported", || {
        dp.heartbeat();
        let st = d.json(&["status"]);
        (st["dataplane"]["alive"] == true && st["dataplane"]["restarts_seen"] == 1).then_some(st)
    });
    assert_eq!(st["dataplane"]["state"], "up");
    // It finds the current configuration in the segment.
    let mut sub = dp.subscriber();
    match sub.poll() {
        shm::Poll::New(cfg, _) => assert_eq!(cfg.vips.len(), 2),
        other => panic!("restarted dataplane found no configuration: {other:?}"),
    }
}

#[test]
fn forwarding_vips_through_fulcrumctl() {
    let d = Daemon::start(VIPS);
    // TCP and UDP VIPs on the same address:port coexist. (Port 0, every
    // port, is covered in process: this tree's fulcrum-shm refuses it.)
    d.ok(&["vip", "add", "198.18.1.5:53/udp", "--mode", "dsr", "--table-size", "251"]);
    d.ok(&["vip", "add", "198.18.1.5:53", "--mode", "fullnat", "--table-size", "251"]);
    d.ok(&["vip", "add", "198.18.1.6:53", "--mode", "tunnel", "--proto", "udp", "--tunnel-encap", "gue", "--tunnel-source-prefix", "198.18.2.0/24"]);
    d.ok(&["backend", "add", "198.18.1.5:53/udp", "198.18.0.21:53", "--weight", "2", "--mac", "02:00:00:00:00:21"]);
    d.ok(&["backend", "add", "198.18.1.6:53/udp", "198.18.0.22:53"]);
    let vips = d.json(&["vip", "list"]);
    let find = |name: &str| vips.as_array().unwrap().iter().find(|v| v["vip"] == name).cloned().unwrap_or_else(|| panic!("no {name} in {vips}"));
    let u = find("198.18.1.5:53/udp");
    assert_eq!((u["mode"].as_str(), u["proto"].as_str()), (Some("dsr"), Some("udp")));
    assert_eq!(u["backends"][0]["mac"], "02:00:00:00:00:21");
    assert_eq!(u["backends"][0]["weight"], 2);
    assert_eq!(find("198.18.1.5:53")["mode"], "fullnat");
    let t = find("198.18.1.6:53/udp");
    assert_eq!(t["tunnel"]["encap"], "gue");
    assert_eq!(t["tunnel"]["source_prefix"], "198.18.2.0/24");
    assert!(d.published_vip("198.18.1.6:53").is_some());
    let stats = d.json(&["stats"]);
    let s = stats["vips"].as_array().unwrap().iter().find(|v| v["vip"] == "198.18.1.5:53/udp").unwrap().clone();
    for k in ["packets_in", "bytes_in", "connections_total", "drops", "mode", "proto"] {
        assert!(s.get(k).is_some(), "stats lacks {k}: {s}");
    }
    assert!(d.ok(&["stats"]).contains("PACKETS"));

    let cases: &[(&[&str], &str)] = &[
        (&["vip", "add", "198.18.1.7:0", "--mode", "tunnel", "--tunnel-encap", "ipip"], "tunnel-source-prefix"),
        (&["vip", "add", "198.18.1.7:0", "--mode", "tunnel"], "tunnel"),
        (&["vip", "add", "198.18.1.7:0", "--mode", "dsr", "--tunnel-encap", "ipip", "--tunnel-source-prefix", "198.18.2.0/24"], "tunnel"),
        (&["vip", "add", "198.18.1.7:80", "--mode", "tunnel", "--tunnel-encap", "vxlan", "--tunnel-source-prefix", "198.18.2.0/24"], "vxlan"),
        (&["vip", "add", "198.18.1.7:80", "--mode", "dsr", "--tunnel-encap", "ipip", "--tunnel-source-prefix", "198.18.2.0/33"], "33"),
        (&["vip", "add", "198.18.1.7:80", "--mode", "bridge"], "bridge"),
        (&["vip", "add", "198.18.1.7:80", "--proto", "udp"], "proto"),
        (&["vip", "add", "198.18.1.7:80/sctp"], "sctp"),
        (&["vip", "add", "198.18.1.5:53/udp", "--mode", "dsr"], "already exists"),
        (&["backend", "add", "198.18.1.5:53/udp", "198.18.0.22:53", "--mac", "02:00"], "02:00"),
        (&["backend", "add", V1, "198.18.0.24:8080", "--mac", "02:00:00:00:00:24"], "mac"),
        (&["backend", "add", "198.18.1.6:53/udp", "198.18.0.23:54"], "port"),
        (&["backend", "list", "198.18.1.6:53"], "no VIP 198.18.1.6:53"),
    ];
    let before = d.json(&["vip", "list"]);
    for (args, want) in cases {
        let out = d.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "fulcrumctl {args:?} succeeded");
        assert!(err.contains(want), "fulcrumctl {args:?}: stderr {err:?} should mention {want:?}");
    }
    assert_eq!(d.json(&["vip", "list"]), before);
    d.ok(&["vip", "del", "198.18.1.5:53"]);
    assert!(d.json(&["backend", "list", "198.18.1.5:53/udp"]).as_array().unwrap().len() == 1);
}
