//! A spoofed SYN flood against a proxy VIP, end to end: `fulcrum-synflood` in the
//! outside client P-out sends SYNs from random sources in 198.19.128.0/17 (the
//! router forwards them and blackholes the replies) to a proxy VIP run by the
//! control plane (active checks on a separate port, passive ejection on), while a
//! loop of real requests runs from the same outside network.
//!
//! What must hold (issue "At the edge"): the loop's requests succeed (>= 99 %);
//! flood mode went on and cookies were sent; the backends' accepted connections on
//! the served port are the loop's plus the spoofed SYNs admitted before flood mode
//! (each of those ends by the half-open timeout, so they are counted, and bounded
//! by the cookie threshold); no backend is ejected; mbufs in use and connections
//! stay bounded; and, once the flood stops, how long until flood mode is off and
//! nothing is half-open is printed. The flood's rate as the dataplane counted it
//! (SYNs seen) is printed and must be at least 80k/s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_tests::client;
use fulcrum_tests::cp::ControlPlane;
use fulcrum_tests::flood::*;
use fulcrum_tests::servers::{start_backends, Mode};
use fulcrum_tests::*;

const VIP_ADDR: &str = "198.18.1.1";
const VIP: &str = "198.18.1.1:80";
/// Half-open connections per lcore that start flood mode (the dataplane runs one lcore).
const THRESHOLD: u64 = 64;
const FLOOD_SECS: u64 = 20;
/// The generator's pace: above the 80k/s the dataplane must count, with room for
/// what the path between them loses.
const FLOOD_PPS: u64 = 100_000;
/// The loop: this many requests, each a new connection with at most `REQ_MAX` to answer.
const REQUESTS: u64 = 1000;
const REQ_MAX: Duration = Duration::from_secs(3);
/// The control plane's metrics endpoint, inside the fabric namespace.
const PROMETHEUS: &str = "127.0.0.1:9471";

/// The VIP's `syn` block in `fulcrumctl --json stats`.
fn ctl_syn(cp: &ControlPlane) -> Result<Value, String> {
    let st = cp.try_json(&["stats"])?;
    let vips = st["vips"].as_array().ok_or_else(|| format!("no vips in {st}"))?;
    vips.iter()
        .find(|v| v["vip"] == VIP)
        .map(|v| v["syn"].clone())
        .filter(|s| !s.is_null())
        .ok_or_else(|| format!("no syn block for {VIP} in {st}"))
}

/// A series' value for this VIP in the control plane's /metrics.
fn metric(topo: &Topology, name: &str) -> Option<f64> {
    let text = topo.exec_ok("fab", &["curl", "-sS", "--max-time", "2", &format!("http://{PROMETHEUS}/metrics")]);
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("\"{VIP}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn vip_toml() -> String {
    format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nport = 80\nmode = \"proxy\"\n\
         health = {{ kind = \"tcp\", port = 9000, interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2, \
         passive_failures = 3, passive_window_ms = 10000, ejection_base_ms = 30000, ejection_max_ms = 60000, \
         panic_threshold_pct = 50 }}\n\
         backends = [\n\
         {{ address = \"198.18.0.21\", port = 8080 }},\n\
         {{ address = \"198.18.0.22\", port = 8080 }},\n\
         {{ address = \"198.18.0.23\", port = 8080 }},\n]\n"
    )
}

fn vip_stats(s: &Value) -> Value {
    s["vips"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["address"] == VIP_ADDR && v["port"] == 80))
        .cloned()
        .unwrap_or(Value::Null)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn opened(v: &Value) -> u64 {
    v["backends"].as_array().map_or(0, |a| a.iter().map(|b| n(b, "opened")).sum())
}

#[test]
fn proxy_vip_serves_real_clients_through_a_spoofed_syn_flood() {
    let topo = Topology::up();
    let served = start_backends(&topo, 8080, Mode::Http, &[]);
    let checked = start_backends(&topo, 9000, Mode::Http, &[]);
    let cp = ControlPlane::start_with_prometheus(&topo, &vip_toml(), PROMETHEUS);
    let dp_config = format!(
        "{}[proxy]\nsyn_cookies = \"auto\"\nsyn_cookie_threshold = {THRESHOLD}\nhalf_open_timeout = \"5s\"\n",
        cp.dataplane_toml()
    );
    let mut dp = Dataplane::start(&topo, &dp_config);
    cp.wait_applied(Duration::from_secs(15));
    wait_for(Duration::from_secs(15), "every backend healthy", || {
        let h = cp.try_json(&["health"])?;
        let ok = h.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|e| e["state"] == "up"));
        if ok { Ok(()) } else { Err(h.to_string()) }
    });
    let vip: SocketAddr = VIP.parse().unwrap();
    let out = topo.ns("out");
    // Warm-up from outside: the path works and the backends' MACs are known.
    let warm = in_netns(&out, || client::http_spread(vip, 30, 2, REQ_MAX));
    assert_eq!(warm.failed, 0, "warm-up from P-out failed: {:?}", warm.failures);

    let before = dp.wait_stats(Duration::from_secs(5), "fresh stats", |s| Ok(s.clone()));
    let v0 = vip_stats(&before);
    let accepted0: u64 = served.iter().map(|s| s.accepted()).sum();
    let checks0: u64 = checked.iter().map(|s| s.accepted()).sum();

    let t0 = Instant::now();
    let mut flood = Flood::start(
        &topo,
        FloodSpec { mode: "syn", dst: VIP_ADDR.into(), dport: 80, rate: FLOOD_PPS, duration: Duration::from_secs(FLOOD_SECS) },
    );
    // Flood mode must be on before the loop starts, so the loop runs under it.
    let on_after = dp.wait_stats(Duration::from_secs(10), "flood mode on", |s| {
        let v = vip_stats(s);
        if n(&v, "flood_lcores") > 0 { Ok(t0.elapsed()) } else { Err(v.to_string()) }
    });
    eprintln!("flood mode on {:.2} s after the flood started", on_after.as_secs_f64());
    // What an operator sees while it lasts: fulcrumctl stats (text and JSON) and
    // Prometheus, all through the control plane and the shared memory.
    let syn = wait_for(Duration::from_secs(10), "flood mode in fulcrumctl stats", || {
        let syn = ctl_syn(&cp)?;
        if syn["flood"] == true && syn["cookies_sent"].as_u64().unwrap_or(0) > 0 { Ok(syn) } else { Err(syn.to_string()) }
    });
    let text = cp.ctl_ok(&["stats"]);
    let syn_line = text.lines().find(|l| l.contains("syn:")).unwrap_or("").trim().to_string();
    eprintln!("fulcrumctl stats during the flood: {syn_line}");
    eprintln!("fulcrumctl --json stats during the flood: syn = {syn}");
    assert!(syn_line.contains("flood ON"), "fulcrumctl stats shows no flood: {text}");
    let prom: Vec<(&str, Option<f64>)> = [
        "fulcrum_vip_syns_total",
        "fulcrum_vip_syncookies_sent_total",
        "fulcrum_vip_syncookies_validated_total",
        "fulcrum_vip_syncookies_rejected_total",
        "fulcrum_vip_half_open",
        "fulcrum_vip_flood_mode",
        "fulcrum_vip_flood_since_seconds",
    ]
    .into_iter()
    .map(|m| (m, metric(&topo, m)))
    .collect();
    eprintln!("Prometheus during the flood: {prom:?}");
    let get = |m: &str| prom.iter().find(|(n, _)| *n == m).and_then(|(_, v)| *v);
    assert_eq!(get("fulcrum_vip_flood_mode"), Some(1.0), "{prom:?}");
    assert!(get("fulcrum_vip_syncookies_sent_total").is_some_and(|v| v > 0.0), "{prom:?}");
    assert!(get("fulcrum_vip_flood_since_seconds").is_some_and(|v| v > 1.6e9), "{prom:?}");

    // The loop, and a sampler for mbufs and connections while it runs.
    let done = AtomicBool::new(false);
    let mut loop_requests_in_flood = 0;
    let (loop_result, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max_mbufs = 0u64;
            let mut max_conns = 0u64;
            let mut max_half_open = 0u64;
            let mut flood_seen = 0u64;
            while !done.load(Ordering::Relaxed) {
                let st = dp.stats();
                max_mbufs = max_mbufs.max(n(&st, "mbufs_in_use"));
                max_conns = max_conns.max(st["proxy"]["connections"].as_u64().unwrap_or(0));
                let v = vip_stats(&st);
                max_half_open = max_half_open.max(n(&v, "half_open"));
                flood_seen += u64::from(n(&v, "flood_lcores") > 0);
                std::thread::sleep(Duration::from_millis(200));
            }
            (max_mbufs, max_conns, max_half_open, flood_seen)
        });
        // Rounds of 50 requests until the flood is over, at least REQUESTS in all:
        // the loop spans the flood rather than a burst of it.
        let mut r = client::Spread::default();
        let t_loop = Instant::now();
        while flood.is_running() || r.total_ok() + r.failed < REQUESTS {
            let round = in_netns(&out, || client::http_spread(vip, 50, 2, REQ_MAX));
            for (k, v) in round.counts {
                *r.counts.entry(k).or_default() += v;
            }
            r.failed += round.failed;
            r.failures.extend(round.failures.into_iter().take(50usize.saturating_sub(r.failures.len())));
            if flood.is_running() {
                loop_requests_in_flood = r.total_ok() + r.failed;
            }
        }
        r.elapsed = t_loop.elapsed();
        done.store(true, Ordering::Relaxed);
        (r, sampler.join().unwrap())
    });
    let fr = flood.finish(Duration::from_secs(30));
    let flood_end = Instant::now();
    let during = dp.wait_stats(Duration::from_secs(5), "fresh stats", |s| Ok(s.clone()));
    let v1 = vip_stats(&during);

    // Back to normal: flood mode off, nothing half-open, no connection left.
    let normal_after = dp.wait_stats(Duration::from_secs(30), "flood mode off and nothing half-open", |s| {
        let v = vip_stats(s);
        let conns = s["proxy"]["connections"].as_u64().unwrap_or(0);
        if n(&v, "flood_lcores") == 0 && n(&v, "half_open") == 0 && conns == 0 {
            Ok(flood_end.elapsed())
        } else {
            Err(format!("flood_lcores {} half_open {} connections {conns}", n(&v, "flood_lcores"), n(&v, "half_open")))
        }
    });
    let after = dp.stats();
    let v2 = vip_stats(&after);
    // After the flood: requests work as before (and go through the normal path).
    let post = in_netns(&out, || client::http_spread(vip, 50, 2, REQ_MAX));

    let d = |k: &str| n(&v2, k) - n(&v0, k);
    let syns_in_flood = n(&v1, "syns") - n(&v0, "syns");
    let rate = syns_in_flood as f64 / fr.seconds.max(1e-9);
    let accepted: u64 = served.iter().map(|s| s.accepted()).sum::<u64>() - accepted0;
    let checks: u64 = checked.iter().map(|s| s.accepted()).sum::<u64>() - checks0;
    let half_open_timeouts = d("drop_half_open_timeout");
    let (max_mbufs, max_conns, max_half_open, flood_samples) = samples;
    let health = cp.json(&["health"]);
    eprintln!(
        "flood: generator sent {} SYNs in {:.2} s ({:.0}/s); the dataplane counted {syns_in_flood} SYNs to {VIP} = {rate:.0}/s",
        fr.sent, fr.seconds, fr.pps
    );
    eprintln!(
        "cookies: sent {}, validated {}, rejected {}; half-open timeouts {half_open_timeouts}; drop_bad_checksum {}",
        d("cookies_sent"),
        d("cookies_validated"),
        d("cookies_rejected"),
        after["proxy"]["drop_bad_checksum"]
    );
    eprintln!(
        "loop from {out}: {} ok, {} failed in {:.1} s (each at most {} s), spread {:?}; {loop_requests_in_flood} of them sent while the flood ran",
        loop_result.total_ok(),
        loop_result.failed,
        loop_result.elapsed.as_secs_f64(),
        REQ_MAX.as_secs(),
        loop_result.counts
    );
    eprintln!("first failures: {:?}", loop_result.failures.iter().take(5).collect::<Vec<_>>());
    eprintln!(
        "backends: {accepted} connections accepted on the served port (loop {} + post-flood round {} + spoofed half-open timeouts {half_open_timeouts}), {checks} health-check connections on 9000; dataplane opened {}",
        loop_result.total_ok() + loop_result.failed,
        post.total_ok(),
        opened(&v2) - opened(&v0)
    );
    eprintln!(
        "bounded: mbufs in use at most {max_mbufs} of {}, connections at most {max_conns}, half-open at most {max_half_open}; flood mode seen on in {flood_samples} samples",
        n(&after, "mbufs_total")
    );
    eprintln!("back to normal {:.2} s after the flood stopped; after: {} of 50 ok", normal_after.as_secs_f64(), post.total_ok());

    assert!(rate >= 80_000.0, "the dataplane counted {rate:.0} SYN/s: below the 80k/s this test is about");
    assert!(loop_requests_in_flood >= REQUESTS, "only {loop_requests_in_flood} requests ran under the flood");
    assert!(
        loop_result.total_ok() * 100 >= (loop_result.total_ok() + loop_result.failed) * 99,
        "only {} of {} requests succeeded during the flood: {:?}",
        loop_result.total_ok(),
        loop_result.total_ok() + loop_result.failed,
        loop_result.failures
    );
    assert!(flood_samples > 0 && d("cookies_sent") > 0, "flood mode never went on, or no cookie was sent");
    assert!(half_open_timeouts <= THRESHOLD, "{half_open_timeouts} spoofed connections reached backends (threshold {THRESHOLD})");
    // Requests of the warm-up and post-flood rounds are outside [accepted0, now] or
    // counted here: the post round ran before this read.
    let loop_conns = loop_result.total_ok() + post.total_ok();
    assert!(
        accepted >= loop_conns + half_open_timeouts && accepted <= loop_conns + loop_result.failed + half_open_timeouts,
        "backends accepted {accepted} connections on the served port; the loop and the post round made {loop_conns} (+{} failed), spoofed half-open timeouts {half_open_timeouts}",
        loop_result.failed
    );
    assert!(max_half_open <= THRESHOLD, "half-open reached {max_half_open} (threshold {THRESHOLD})");
    assert!(max_mbufs < n(&after, "mbufs_total") / 2, "mbufs in use reached {max_mbufs}");
    assert!(max_conns <= THRESHOLD + 16, "connections reached {max_conns}");
    let arr = health.as_array().expect("health list");
    assert!(arr.iter().all(|e| e["state"] == "up"), "a backend was ejected: {health}");
    assert_eq!(post.failed, 0, "requests after the flood failed: {:?}", post.failures);
    dp.assert_running();
    drop(served);
    drop(checked);
}
