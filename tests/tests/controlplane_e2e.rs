//! Control plane end to end: `fulcrum-controlplane` in P-fab (health checks from
//! 198.18.0.1), the real dataplane subscribed to its shared-memory segment
//! (`[dataplane] shm = ...`, no `[[vip]]` of its own), backends in P-be1..3, and
//! traffic from P-cli to VIP 198.18.1.1:80. Every process is a guarded child, every
//! loop is bounded, every file is removed on drop (see tests/src/cp.rs).
//!
//! Timing assertions are orders of magnitude of the contractual bounds (health
//! detection within 3x `fall x interval + timeout`, recovery within 3x `rise x
//! interval`, accepted rates within 2x the limits): the exact contracts are asserted
//! on simulated clocks (the health checker's `health_sim_*`, proxy/tests/limits.rs).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use fulcrum_tests::client;
use fulcrum_tests::cp::{self, echo_request, http_request, layout, ControlPlane, RawSegment, Req, Traffic};
use fulcrum_tests::servers::{start_backends, Mode, Server};
use fulcrum_tests::tcp::{read_until, write_all_until, Until};
use fulcrum_tests::vip::{backend_counter, format_vips};
use fulcrum_tests::*;

const VIP: &str = "198.18.1.1:80";
const BACKEND_PORT: u16 = 8080;
const BE: [&str; 3] = ["198.18.0.21:8080", "198.18.0.22:8080", "198.18.0.23:8080"];
const NAMES: [&str; 3] = ["be1", "be2", "be3"];

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

fn vip4() -> SocketAddrV4 {
    VIP.parse().unwrap()
}

/// One proxy VIP 198.18.1.1:80 in front of the three backends, plus `extra` keys.
fn vip_toml(extra: &str) -> String {
    format!(
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\n{extra}\nbackends = [\n\
         {{ address = \"198.18.0.21\", port = {BACKEND_PORT}, weight = 1 }},\n\
         {{ address = \"198.18.0.22\", port = {BACKEND_PORT}, weight = 1 }},\n\
         {{ address = \"198.18.0.23\", port = {BACKEND_PORT}, weight = 1 }},\n]\n"
    )
}

/// Fields drop in declaration order: dataplane, control plane, servers, then the
/// topology (which holds the global lock).
struct Env {
    dp: Option<Dataplane>,
    cp: ControlPlane,
    servers: Vec<Option<Server>>,
    topo: Topology,
}

impl Env {
    fn up(mode: Mode, vip_extra: &str) -> Env {
        let echo = matches!(mode, Mode::Echo);
        let topo = Topology::up();
        let servers = start_backends(&topo, BACKEND_PORT, mode, &[]).into_iter().map(Some).collect();
        let cp = ControlPlane::start(&topo, &vip_toml(vip_extra));
        let dp = Dataplane::start(&topo, &cp.dataplane_toml());
        let env = Env { dp: Some(dp), cp, servers, topo };
        let g = env.cp.wait_applied(Duration::from_secs(15));
        eprintln!("dataplane (pid {}) applied generation {g}", env.dp().pid());
        // Fail fast (with the logs) if the VIP does not serve at all.
        let request: cp::RequestFn = if echo { echo_request } else { http_request };
        env.on_client(|| {
            wait_for(Duration::from_secs(10), "a first request through the VIP to succeed", || request(vip()))
        });
        env
    }

    fn dp(&self) -> &Dataplane {
        self.dp.as_ref().expect("dataplane running")
    }

    fn cli(&self) -> String {
        self.topo.ns("cli")
    }

    /// Run `f` in the client namespace.
    fn on_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.cli(), f)
    }

    /// `n` fresh `GET /` through the VIP, 8 at a time.
    fn spread(&self, n: u64) -> client::Spread {
        self.on_client(|| client::http_spread(vip(), n, 8, Duration::from_secs(10)))
    }

    /// Wait until every backend's health check says `up`.
    fn wait_all_up(&self, timeout: Duration) {
        wait_for(timeout, "every backend to be healthy", || {
            let h = self.cp.try_json(&["health"])?;
            let all = h.as_array().map(|a| a.len() == 3 && a.iter().all(|e| e["state"] == "up")).unwrap_or(false);
            if all {
                Ok(())
            } else {
                Err(h.to_string())
            }
        });
    }

    fn restart_server(&mut self, i: usize, mode: Mode) {
        let addr: SocketAddr = BE[i].parse().unwrap();
        self.servers[i] = Some(Server::start(&self.topo.ns(NAMES[i]), addr, NAMES[i], mode));
    }
}

/// The VIP's entry of `fulcrumctl stats --json`.
fn vip_stats(cp: &ControlPlane) -> Result<Value, String> {
    let s = cp.try_json(&["stats"])?;
    s["vips"].as_array().and_then(|a| a.iter().find(|v| v["vip"] == VIP).cloned()).ok_or_else(|| s.to_string())
}

fn backend_of<'a>(vip_stats: &'a Value, be: &str) -> &'a Value {
    vip_stats["backends"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["backend"] == be))
        .unwrap_or_else(|| panic!("no backend {be} in {vip_stats}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Wait until the dataplane has written its shared-memory counters twice since now
/// (the VIP's connection total changed twice while traffic runs), so what is read
/// then includes everything before this call. Returns the VIP stats.
fn fresh_counters(cp: &ControlPlane) -> Value {
    let mut last = u(&vip_stats(cp).unwrap()["connections_total"]);
    let mut changes = 0;
    wait_for(Duration::from_secs(10), "the dataplane's counters to be refreshed twice (traffic running)", || {
        let v = vip_stats(cp)?;
        let t = u(&v["connections_total"]);
        if t != last {
            last = t;
            changes += 1;
        }
        if changes >= 2 {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
}

/// The VIP's stats once no connection is open and the counters have settled (two
/// equal readings at least 500 ms apart, i.e. after two counter reports).
fn fresh_idle_counters(cp: &ControlPlane) -> Value {
    let mut last: Option<(Instant, u64)> = None;
    wait_for(Duration::from_secs(10), "the VIP's counters to settle with no connection open", || {
        let v = vip_stats(cp)?;
        let total = u(&v["connections_total"]);
        if u(&v["connections_active"]) != 0 {
            last = None;
            return Err(v.to_string());
        }
        match last {
            Some((t, prev)) if prev == total && t.elapsed() >= Duration::from_millis(500) => Ok(v),
            Some((_, prev)) if prev == total => Err(v.to_string()),
            _ => {
                last = Some((Instant::now(), total));
                Err(v.to_string())
            }
        }
    })
}

/// Send `msg` on an established echo connection and read it back.
fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    let until = Until::deadline(Instant::now() + Duration::from_secs(5));
    write_all_until(s, msg, until).map_err(|e| format!("send: {e:?}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < msg.len() {
        match read_until(s, &mut buf, until) {
            Ok(0) => return Err(format!("EOF after {} bytes", got.len())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e:?}")),
        }
    }
    if got == msg {
        Ok(())
    } else {
        Err(format!("echo {got:?} != {msg:?}"))
    }
}

fn failures(reqs: &[Req]) -> Vec<String> {
    reqs.iter().filter_map(|r| r.result.as_ref().err().cloned()).collect()
}

fn count_answers(reqs: &[Req], name: &str) -> usize {
    reqs.iter().filter(|r| r.result.as_deref() == Ok(name)).count()
}

// ---------------------------------------------------------------------------- 1

#[test]
fn health_down_and_up() {
    const INTERVAL_MS: u64 = 500;
    const TIMEOUT_MS: u64 = 300;
    const RISE: u64 = 2;
    const FALL: u64 = 2;
    // The exact timing contract (fall x interval + timeout, rise x interval) is
    // asserted on the health checker's simulated clock (controlplane/src/health,
    // `health_sim_*`). End to end, on a shared 2-core machine whose other core
    // runs the polling dataplane, only the order of magnitude: within 3x the
    // contractual bound (the daemon's 100 ms tick and this test's polling included).
    const SLACK: u32 = 3;
    let down_bound = Duration::from_millis(FALL * INTERVAL_MS + TIMEOUT_MS) * SLACK;
    let up_bound = Duration::from_millis(RISE * INTERVAL_MS + TIMEOUT_MS) * SLACK;

    let mut env = Env::up(
        Mode::Http,
        &format!(
            "health = {{ kind = \"tcp\", interval_ms = {INTERVAL_MS}, timeout_ms = {TIMEOUT_MS}, rise = {RISE}, fall = {FALL} }}"
        ),
    );
    env.wait_all_up(Duration::from_secs(10));
    let traffic =
        Traffic::start(&env.cli(), vip(), 2, Duration::from_millis(5), Duration::from_secs(120), http_request);
    wait_until(Duration::from_secs(10), "be2 to answer some requests", || {
        count_answers(&traffic.records(), "be2") >= 5
    });

    // A tracer records every change of be2's health entry (state, published, last
    // error) from here to the end, for the report (passive ejections show up there).
    let trace_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t_trace = Instant::now();
    let tracer = {
        let (stop, sock) = (trace_stop.clone(), env.cp.socket().to_path_buf());
        thread::spawn(move || {
            let mut out = Vec::new();
            let mut last = String::new();
            let end = Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                let o = cp::ctl_at(&sock, &["--json", "health"]);
                if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
                    if let Some(h) = v.as_array().and_then(|a| a.iter().find(|e| e["backend"] == BE[1])) {
                        let seen = format!("{} / published {} / {}", h["state"], h["published"], h["last_error"]);
                        if seen != last {
                            out.push((t_trace.elapsed(), seen.clone()));
                            last = seen;
                        }
                    }
                }
                thread::sleep(Duration::from_millis(50));
            }
            out
        })
    };

    // ---- be2 goes away
    let t_stop = Instant::now();
    env.servers[1].as_mut().unwrap().stop();
    let stop_took = t_stop.elapsed();
    let t_down = wait_for(down_bound + Duration::from_secs(5), "be2's health to be down", || {
        let h = env.cp.health_of(BE[1])?;
        if h["state"] == "down" {
            Ok(Instant::now())
        } else {
            Err(h.to_string())
        }
    });
    let down_after = t_down - t_stop;
    let h = env.cp.health_of(BE[1]).unwrap();
    eprintln!("be2 stopped (listener closed within {stop_took:.2?}); health down after {down_after:.3?} (bound {down_bound:.2?}): {h}");
    assert_eq!(h["published"], "down", "be2 is down but not published down: {h}");
    let published = u(&env.cp.status()["generation"]["published"]);
    env.cp.wait_applied_at_least(published, Duration::from_secs(5));
    let t_applied = Instant::now();
    eprintln!("generation {published} (be2 down) applied {:.3?} after the health transition", t_applied - t_down);

    // From here on the dataplane must not try be2 at all.
    let c0 = fresh_counters(&env.cp);
    let be2_0 = (u(&backend_of(&c0, BE[1])["connections_total"]), u(&backend_of(&c0, BE[1])["connect_failures"]));
    wait_until(Duration::from_secs(30), "150 more requests (and 2 s) while be2 is down", || {
        let r = traffic.records();
        t_applied.elapsed() >= Duration::from_secs(2) && r.iter().filter(|q| q.start > t_applied).count() >= 150
    });
    let c1 = fresh_counters(&env.cp);
    let be2_1 = (u(&backend_of(&c1, BE[1])["connections_total"]), u(&backend_of(&c1, BE[1])["connect_failures"]));
    eprintln!("be2 (opened, connect_failures) when down was applied {be2_0:?}, 2+ s later {be2_1:?}");

    // ---- be2 comes back
    let t_restart = Instant::now();
    env.restart_server(1, Mode::Http);
    // What the health entry said while waiting (changes only), for the report.
    let mut trace: Vec<String> = Vec::new();
    let mut last_seen = String::new();
    let t_up = wait_for(up_bound + Duration::from_secs(10), "be2's health to be up again", || {
        let h = env.cp.health_of(BE[1])?;
        let seen = format!("state {} published {} last_error {}", h["state"], h["published"], h["last_error"]);
        if seen != last_seen {
            trace.push(format!("  +{:.3?}: {seen}", t_restart.elapsed()));
            last_seen = seen;
        }
        if h["state"] == "up" {
            Ok(Instant::now())
        } else {
            Err(h.to_string())
        }
    });
    eprintln!("be2's health after its restart:\n{}", trace.join("\n"));
    let up_after = t_up - t_restart;
    let t_serving = wait_for(Duration::from_secs(10), "be2 to answer a request again", || {
        let r = traffic.records();
        match r.iter().filter(|q| q.start > t_restart && q.result.as_deref() == Ok("be2")).map(|q| q.end).min() {
            Some(t) => Ok(t),
            None => Err(format!("{} requests since the restart", r.iter().filter(|q| q.start > t_restart).count())),
        }
    });
    let reqs = traffic.finish();
    trace_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let trace_lines = tracer.join().unwrap_or_default();
    let at = |t: Instant| t.saturating_duration_since(t_trace);
    eprintln!(
        "be2 health trace (times since the trace began; be2 stopped at +{:.3?}, restarted at +{:.3?}):",
        at(t_stop),
        at(t_restart)
    );
    for (t, l) in &trace_lines {
        eprintln!("  +{t:.3?} {l}");
    }

    let total = reqs.len();
    let before_down: Vec<&Req> = reqs.iter().filter(|r| r.start < t_down).collect();
    let after_down: Vec<Req> = reqs.iter().filter(|r| r.start >= t_down).cloned().collect();
    let down_window: Vec<Req> = reqs.iter().filter(|r| r.start >= t_applied && r.end <= t_restart).cloned().collect();
    let early_failures: Vec<String> = before_down.iter().filter_map(|r| r.result.as_ref().err().cloned()).collect();
    eprintln!(
        "measured: be2 down {:.3?} after its server stopped (fall x interval + timeout = {} ms; bound {:?}); \
         up {:.3?} after it restarted (rise x interval = {} ms; bound {:?}); first answer from be2 {:.3?} after the restart",
        down_after,
        FALL * INTERVAL_MS + TIMEOUT_MS,
        down_bound,
        up_after,
        RISE * INTERVAL_MS,
        up_bound,
        t_serving - t_restart
    );
    eprintln!(
        "requests: {total} in all; {} started before be2 was seen down ({} failed: {:?}); {} after ({} failed); \
         while be2 was down and applied: {} requests, {} answered by be2; answers be1/be2/be3 {}/{}/{}",
        before_down.len(),
        early_failures.len(),
        early_failures.iter().take(5).collect::<Vec<_>>(),
        after_down.len(),
        failures(&after_down).len(),
        down_window.len(),
        count_answers(&down_window, "be2"),
        count_answers(&reqs, "be1"),
        count_answers(&reqs, "be2"),
        count_answers(&reqs, "be3")
    );
    assert!(down_after <= down_bound, "be2 was seen down after {down_after:?}, more than {down_bound:?}");
    assert_eq!(be2_1, be2_0, "the dataplane still opened/tried connections to be2 after its Down state was applied");
    assert_eq!(count_answers(&down_window, "be2"), 0);
    assert!(down_window.len() >= 150, "too few requests while be2 was down: {}", down_window.len());
    assert!(
        failures(&after_down).is_empty(),
        "requests started after the transition failed: {:?}",
        failures(&after_down).iter().take(10).collect::<Vec<_>>()
    );
    // Passive ejection (on by default: 5 connect failures in 10 s) may still hold be2
    // out when it restarts; successes during an ejection do not count towards `rise`
    // (README), so the bound starts when the last ejection seen in the trace ends.
    let ejection_end = trace_lines
        .iter()
        .filter_map(|(t, l)| {
            let ms: u64 = l.split("ejected for ").nth(1)?.split(" ms").next()?.parse().ok()?;
            Some(t_trace + *t + Duration::from_millis(ms))
        })
        .max();
    let up_from = ejection_end.map_or(t_restart, |e| e.max(t_restart));
    eprintln!(
        "passive ejection in force {:.3?} after the restart; up {:.3?} after the later of the restart and its end",
        ejection_end.map(|e| e.saturating_duration_since(t_restart)).unwrap_or_default(),
        t_up.saturating_duration_since(up_from)
    );
    assert!(
        t_up.saturating_duration_since(up_from) <= up_bound,
        "be2 came back up {up_after:?} after its restart ({:?} after any passive ejection ended), more than {up_bound:?}",
        t_up.saturating_duration_since(up_from)
    );
    assert_eq!(env.cp.health_of(BE[1]).unwrap()["published"], "up");
}

// ---------------------------------------------------------------------------- 2

#[test]
fn controlplane_kill9_traffic_continues() {
    const HELD: usize = 6;
    let mut env = Env::up(Mode::Echo, "");
    let g0 = u(&env.cp.status()["generation"]["published"]);
    let mut held: Vec<TcpStream> = env.on_client(|| {
        (0..HELD)
            .map(|i| client::connect_and_roundtrip(vip(), format!("held {i}\n").as_bytes(), Duration::from_secs(5)))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("opening the long-lived connections: {e}"))
    });
    let traffic =
        Traffic::start(&env.cli(), vip(), 2, Duration::from_millis(5), Duration::from_secs(120), echo_request);
    wait_until(Duration::from_secs(10), "50 requests before the kill", || traffic.records().len() >= 50);

    let old_pid = env.cp.pid().unwrap();
    let t_kill = Instant::now();
    env.cp.kill9();
    let out = env.cp.ctl(&["status"]);
    assert!(!out.status.success(), "fulcrumctl status succeeded with the daemon killed: {}", describe(&out));
    // Well past the control plane's heartbeat going stale (1 s): the dataplane keeps
    // serving its last configuration.
    wait_until(Duration::from_secs(30), "100 requests started more than 2 s after the kill", || {
        traffic.records().iter().filter(|r| r.start > t_kill + Duration::from_secs(2)).count() >= 100
    });
    for (i, s) in held.iter_mut().enumerate() {
        roundtrip(s, format!("while the control plane is dead {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("long-lived connection {i} while the control plane was dead: {e}"));
    }
    let during = traffic.records().iter().filter(|r| r.start > t_kill).count();

    // ---- restart: it takes over again
    let t_restart = Instant::now();
    env.cp.spawn();
    let restart_took = t_restart.elapsed();
    let g = env.cp.wait_applied(Duration::from_secs(10));
    let st = env.cp.status();
    eprintln!(
        "control plane pid {old_pid} killed; {during} requests ran while it was dead ({:.1?}); restarted as pid {} in {restart_took:.2?}: {st}",
        t_restart - t_kill,
        env.cp.pid().unwrap()
    );
    assert_eq!(st["dataplane"]["state"], "up");
    assert!(g >= g0, "published generation went back from {g0} to {g}");
    // It can change the configuration again.
    let r = env.cp.json(&["backend", "weight", VIP, BE[2], "2"]);
    let g1 = u(&r["generation"]);
    assert!(g1 > g, "a change after the restart published generation {g1}, not after {g}");
    env.cp.wait_applied_at_least(g1, Duration::from_secs(5));
    wait_until(Duration::from_secs(10), "100 requests after the change", || {
        traffic.records().iter().filter(|r| r.start > t_restart + restart_took).count() >= 100
    });
    for (i, s) in held.iter_mut().enumerate() {
        roundtrip(s, format!("after the restart {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("long-lived connection {i} after the control plane restart: {e}"));
    }
    let reqs = traffic.finish();
    let f = failures(&reqs);
    eprintln!(
        "{} requests in all ({} failed); the {HELD} long-lived connections opened before the kill all still echo",
        reqs.len(),
        f.len()
    );
    assert!(f.is_empty(), "requests failed: {:?}", f.iter().take(10).collect::<Vec<_>>());
    assert!(env.cp.log().contains("is current") || g > g0, "restarted control plane log:\n{}", env.cp.log());
    drop(held);
}

// ---------------------------------------------------------------------------- 3

#[test]
fn dataplane_kill9_and_restart() {
    let mut env =
        Env::up(Mode::Http, "health = { kind = \"tcp\", interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }");
    env.wait_all_up(Duration::from_secs(10));
    env.servers[1].as_mut().unwrap().stop();
    wait_until(Duration::from_secs(10), "be2 to be down", || {
        env.cp.health_of(BE[1]).is_ok_and(|h| h["state"] == "down")
    });
    let published = u(&env.cp.status()["generation"]["published"]);
    env.cp.wait_applied_at_least(published, Duration::from_secs(5));
    let s = env.spread(60);
    assert_eq!(s.failed, 0, "before the kill: {:?}", s.failures);
    assert_eq!(s.counts.get("be2"), None, "be2 answered while down: {:?}", s.counts);

    // ---- kill -9 the dataplane
    let mut dp = env.dp.take().unwrap();
    let old_pid = dp.pid();
    let t_kill = Instant::now();
    let (status, _) = dp.stop(Signal::SIGKILL);
    drop(dp);
    let st = wait_for(Duration::from_secs(5), "fulcrumctl status to report the dataplane down", || {
        let s = env.cp.try_json(&["status"])?;
        if s["dataplane"]["state"] == "down" {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    eprintln!("dataplane pid {old_pid} killed ({status}); reported down after {:.2?}: {st}", t_kill.elapsed());
    // The tap goes with the process.
    let tap = env.topo.tap();
    wait_until(Duration::from_secs(10), "the old tap interface to disappear", || {
        !env.topo.exec("fab", &["ip", "link", "show", "dev", &tap]).status.success()
    });

    // ---- a new dataplane with the same configuration, no fulcrumctl action
    let t_start = Instant::now();
    env.dp = Some(Dataplane::start(&env.topo, &env.cp.dataplane_toml()));
    // net_tap gives the port a new random MAC at every start (a NIC keeps its own):
    // make the hosts forget the old one instead of waiting for ARP to time out.
    for leaf in ["cli", "be1", "be2", "be3"] {
        env.topo.exec_ok(leaf, &["ip", "neigh", "flush", "to", DATAPLANE_IP]);
    }
    let g = env.cp.wait_applied(Duration::from_secs(10));
    let st = env.cp.status();
    eprintln!(
        "new dataplane pid {} applied generation {g} {:.2?} after its start: {st}",
        env.dp().pid(),
        t_start.elapsed()
    );
    assert_eq!(st["dataplane"]["pid"].as_u64(), Some(u64::from(env.dp().pid())));
    assert!(u(&st["dataplane"]["restarts_seen"]) >= 1, "restart not seen: {st}");
    let s = env.spread(90);
    eprintln!("after the restart: {:?}, {} failed", s.counts, s.failed);
    assert_eq!(s.failed, 0, "after the restart: {:?}", s.failures);
    assert_eq!(s.counts.get("be2"), None, "be2 (down) answered after the restart: {:?}", s.counts);
    assert!(s.counts.contains_key("be1") && s.counts.contains_key("be3"), "answers: {:?}", s.counts);
    let h = env.cp.health_of(BE[1]).unwrap();
    assert_eq!(h["state"], "down", "{h}");
    assert_eq!(h["published"], "down", "{h}");
    // The new dataplane never even tried be2.
    let stats = env.dp().wait_stats(Duration::from_secs(5), "the new dataplane's stats to count 90 connections", |s| {
        let opened: u64 =
            ["198.18.0.21", "198.18.0.23"].iter().map(|b| backend_counter(s, "198.18.1.1", 80, b, "opened")).sum();
        if opened >= 90 {
            Ok(s.clone())
        } else {
            Err(format!("opened {opened}"))
        }
    });
    eprintln!("{}", format_vips(&stats));
    for field in ["opened", "connect_failures", "attempts"] {
        assert_eq!(backend_counter(&stats, "198.18.1.1", 80, "198.18.0.22", field), 0, "be2 {field}");
    }
}

// ---------------------------------------------------------------------------- 4

#[test]
fn garbage_in_config_area() {
    let env = Env::up(Mode::Http, "");
    let g = u(&env.cp.status()["generation"]["published"]);
    let s = env.spread(60);
    assert_eq!(s.failed, 0, "{:?}", s.failures);
    let raw = RawSegment::open(env.cp.shm_path());
    let active = raw.read_u64(layout::CFG_ACTIVE);
    assert_eq!(active >> 1, g, "active word {active:#x} does not name generation {g}");
    let slot = (active & 1) as usize;
    let rejected0 = u(&env.cp.status()["dataplane"]["rejected_generations"]);

    // 1. Garbage over the active slot's payload (its checksum no longer matches). The
    //    dataplane copied generation g out when it applied it: it keeps serving.
    raw.write_bytes(layout::SLOT_OFF[slot] + layout::SLOT_PAYLOAD, &cp::garbage(512, 1));
    let s = env.spread(60);
    assert_eq!(s.failed, 0, "after corrupting the active slot: {:?}", s.failures);

    // 2. A bogus publication: garbage in the other slot (complete: even sequence
    //    number, a generation number, length, checksum) and the active word flipped to it.
    let other = 1 - slot;
    let off = layout::SLOT_OFF[other];
    let bogus = g + 1000;
    let seq = raw.read_u64(off + layout::SLOT_SEQ);
    let seq = seq + (seq & 1);
    raw.write_u64(off + layout::SLOT_SEQ, seq + 1);
    raw.write_u64(off + layout::SLOT_GEN, bogus);
    raw.write_u64(off + layout::SLOT_LEN, 4096);
    raw.write_u64(off + layout::SLOT_SUM, 0x0123_4567_89ab_cdef);
    raw.write_bytes(off + layout::SLOT_PAYLOAD, &cp::garbage(4096, 2));
    raw.write_u64(off + layout::SLOT_SEQ, seq + 2);
    raw.write_u64(layout::CFG_ACTIVE, bogus << 1 | other as u64);
    let st = wait_for(Duration::from_secs(5), "the dataplane to count the rejected generation", || {
        let s = env.cp.try_json(&["status"])?;
        if u(&s["dataplane"]["rejected_generations"]) > rejected0 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    eprintln!(
        "bogus generation {bogus}: status {}; segment: rejected_count {}, applied {}",
        st["dataplane"],
        raw.read_u64(layout::DP_REJECTED_COUNT),
        raw.read_u64(layout::DP_APPLIED_GEN)
    );
    assert!(
        st["dataplane"]["last_rejection"].as_str().is_some_and(|r| r.contains(&bogus.to_string())),
        "last rejection: {}",
        st["dataplane"]
    );
    assert_eq!(raw.read_u64(layout::DP_APPLIED_GEN), g, "applied generation changed");
    assert_eq!(st["generation"]["applied"].as_u64(), Some(g));
    let s = env.spread(90);
    eprintln!("while the bogus generation is active: {:?}, {} failed", s.counts, s.failed);
    assert_eq!(s.failed, 0, "{:?}", s.failures);
    assert_eq!(s.counts.len(), 3, "{:?}", s.counts);
    assert!(env.dp().log().contains("rejected"), "dataplane log:\n{}", env.dp().log());

    // 3. A valid change is applied again.
    let r = env.cp.json(&["backend", "weight", VIP, BE[0], "0"]);
    let g1 = u(&r["generation"]);
    let st = env.cp.wait_applied_at_least(g1, Duration::from_secs(5));
    eprintln!("valid change: generation {g1} applied: {}", st["generation"]);
    let s = env.spread(60);
    eprintln!("after be1 weight 0: {:?}, {} failed", s.counts, s.failed);
    assert_eq!(s.failed, 0, "{:?}", s.failures);
    assert_eq!(s.counts.get("be1"), None, "be1 (weight 0) still answers: {:?}", s.counts);
}

// ---------------------------------------------------------------------------- 5

#[test]
fn rate_limit_new_connections() {
    const RATE: f64 = 200.0;
    const BURST: f64 = 20.0;
    const OFFERED: f64 = 1000.0;
    let env = Env::up(Mode::Http, "new_conn_rate = { per_sec = 200, burst = 20 }");
    let lim = env.cp.json(&["limit", "show", VIP]);
    eprintln!("limits: {lim}");
    let base = fresh_idle_counters(&env.cp);
    let drops0 = u(&base["drops"]["new_conn_rate"]);
    let total0 = u(&base["connections_total"]);
    let o = env.on_client(|| cp::offer_connections(vip4(), None, OFFERED, Duration::from_secs(5), 16, true));
    let rate = o.accepted_rate();
    let w = o.window.as_secs_f64();
    eprintln!(
        "offered {} in {:.2?} ({:.0}/s, max lag {:.1?}): accepted {} ({rate:.1}/s over the {w:.3} s window; \
         {:.1}/s without the burst of {BURST}), refused {}, other {} {:?}",
        o.offered,
        o.elapsed,
        o.offered_rate(),
        o.max_lag,
        o.ok,
        (o.ok as f64 - BURST) / w,
        o.refused,
        o.other,
        o.other_errors
    );
    let v = wait_for(Duration::from_secs(5), "the VIP's drop and accept counters to account for the run", || {
        let v = vip_stats(&env.cp)?;
        let (d, t) = (u(&v["drops"]["new_conn_rate"]) - drops0, u(&v["connections_total"]) - total0);
        if d == o.refused && t == o.ok {
            Ok(v)
        } else {
            Err(format!("drops.new_conn_rate +{d}, connections_total +{t}: {v}"))
        }
    });
    eprintln!("fulcrumctl stats: {v}");
    if let Some(st) = env.dp().try_stats() {
        eprintln!("dataplane stats file:\n{}", format_vips(&st));
    }
    assert_eq!(o.other, 0, "attempts neither accepted nor refused: {:?}", o.other_errors);
    assert!(o.offered_rate() > 3.0 * RATE, "the client offered only {:.0}/s", o.offered_rate());
    // Real time on a shared 2-core machine: orders of magnitude only. The exact
    // token-bucket contract (rate and burst, split between lcores) is asserted
    // on the engine's simulated clock in proxy/tests/limits.rs.
    assert!(
        (0.5 * RATE..=2.0 * RATE).contains(&rate),
        "accepted {rate:.1}/s with {OFFERED}/s offered: not within 2x of the {RATE}/s limit"
    );
}

// ---------------------------------------------------------------------------- 6

#[test]
fn per_client_limit() {
    const CLIENT_RATE: f64 = 20.0;
    const CLIENT_BURST: f64 = 20.0;
    let env = Env::up(Mode::Http, "client_rate = { per_sec = 20, burst = 20 }");
    env.topo.exec_ok("cli", &["ip", "addr", "add", "198.18.0.11/24", "dev", "eth0"]);
    let a_ip: Ipv4Addr = CLIENT_IP.parse().unwrap();
    let b_ip: Ipv4Addr = "198.18.0.11".parse().unwrap();
    let drops0 = u(&fresh_idle_counters(&env.cp)["drops"]["client_rate"]);
    let (a, b) = env.on_client(|| {
        thread::scope(|s| {
            let a = s.spawn(|| cp::offer_connections(vip4(), Some(a_ip), 100.0, Duration::from_secs(5), 4, true));
            let b = s.spawn(|| cp::offer_connections(vip4(), Some(b_ip), 5.0, Duration::from_secs(5), 1, true));
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    let wa = a.window.as_secs_f64();
    eprintln!(
        "client A {a_ip}: offered {} ({:.0}/s), accepted {} ({:.1}/s over {wa:.2} s), refused {}, other {} {:?}",
        a.offered,
        a.offered_rate(),
        a.ok,
        a.accepted_rate(),
        a.refused,
        a.other,
        a.other_errors
    );
    eprintln!(
        "client B {b_ip}: offered {} ({:.1}/s), accepted {}, refused {}, other {} {:?}",
        b.offered,
        b.offered_rate(),
        b.ok,
        b.refused,
        b.other,
        b.other_errors
    );
    let v = wait_for(Duration::from_secs(5), "drops.client_rate to count A's refusals", || {
        let v = vip_stats(&env.cp)?;
        let d = u(&v["drops"]["client_rate"]) - drops0;
        if d == a.refused + b.refused {
            Ok(v)
        } else {
            Err(format!("drops.client_rate +{d}: {v}"))
        }
    });
    eprintln!("fulcrumctl stats: {v}");
    assert_eq!((b.refused, b.other, b.ok), (0, 0, b.offered), "client B was refused: {:?}", b.other_errors);
    assert!(b.offered >= 24, "client B offered only {}", b.offered);
    assert_eq!(a.other, 0, "{:?}", a.other_errors);
    assert!(a.refused > 0, "client A was never refused");
    // Orders of magnitude in real time (the exact contract: proxy/tests/limits.rs,
    // on the simulated clock): at most twice rate x window + burst, at least half
    // the rate over the window.
    let a_max = (CLIENT_RATE * wa + CLIENT_BURST) * 2.0;
    assert!(a.ok as f64 <= a_max, "client A got {} connections, more than {a_max:.0} (2 x (20/s + burst 20))", a.ok);
    assert!(a.ok as f64 >= CLIENT_RATE * wa * 0.5, "client A got only {} connections", a.ok);
}

// ---------------------------------------------------------------------------- 7

#[test]
fn drain_long_lived() {
    let env = Env::up(Mode::Echo, "");
    let be1 = env.servers[0].as_ref().unwrap();
    let mut held: Vec<TcpStream> = Vec::new();
    env.on_client(|| {
        for i in 0..60 {
            if i >= 24 && be1.active() >= 3 {
                break;
            }
            let s = client::connect_and_roundtrip(vip(), format!("long {i}\n").as_bytes(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("long-lived connection {i}: {e}"));
            held.push(s);
        }
    });
    let on_be1 = be1.active();
    let per_server: Vec<u64> = env.servers.iter().map(|s| s.as_ref().unwrap().active()).collect();
    eprintln!("{} long-lived connections; per backend {per_server:?}", held.len());
    assert!(on_be1 > 0, "no long-lived connection landed on be1: {per_server:?}");
    let list_active = |b: &str| -> Result<(Value, u64), String> {
        let l = env.cp.try_json(&["backend", "list", VIP])?;
        let e = l.as_array().and_then(|a| a.iter().find(|e| e["backend"] == b).cloned()).ok_or(l.to_string())?;
        let n = e["connections_active"].as_u64().ok_or(e.to_string())?;
        Ok((e, n))
    };
    wait_for(Duration::from_secs(5), "backend list to show be1's active connections", || {
        let (e, n) = list_active(BE[0])?;
        if n == on_be1 {
            Ok(())
        } else {
            Err(e.to_string())
        }
    });

    let accepted_before = be1.accepted();
    let r = env.cp.json(&["backend", "drain", VIP, BE[0]]);
    let g = u(&r["generation"]);
    env.cp.wait_applied_at_least(g, Duration::from_secs(5));
    let (e, n) = list_active(BE[0]).unwrap();
    eprintln!("drained be1 (generation {g}): {e}");
    assert_eq!(e["state"], "drain", "{e}");
    assert_eq!(n, on_be1, "{e}");

    // New connections never reach be1.
    let new_ok = env.on_client(|| (0..60).filter(|_| echo_request(vip()).is_ok()).count());
    assert_eq!(new_ok, 60, "new connections failed after the drain");
    assert_eq!(be1.accepted(), accepted_before, "be1 got new connections after the drain");
    // The existing ones keep working.
    for (i, s) in held.iter_mut().enumerate() {
        roundtrip(s, format!("after drain {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("long-lived connection {i} after the drain: {e}"));
    }
    let (e, n) = list_active(BE[0]).unwrap();
    assert_eq!(n, on_be1, "be1's active count changed while its connections stayed open: {e}");

    // Close them: the count reaches 0.
    let t_close = Instant::now();
    drop(held);
    let e = wait_for(Duration::from_secs(10), "be1's active connections to reach 0", || {
        let (e, n) = list_active(BE[0])?;
        if n == 0 {
            Ok(e)
        } else {
            Err(e.to_string())
        }
    });
    eprintln!("be1's active connections reached 0 {:.2?} after closing: {e}", t_close.elapsed());
    wait_until(Duration::from_secs(5), "be1's server to see its connections closed", || be1.active() == 0);
}

// ---------------------------------------------------------------------------- 8

#[test]
fn fulcrumctl_against_live_dataplane() {
    const REQUESTS: u64 = 300;
    const IDLE: usize = 5;
    let env = Env::up(
        Mode::Http,
        "health = { kind = \"http\", path = \"/\", interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }",
    );
    env.wait_all_up(Duration::from_secs(10));
    let before = fresh_idle_counters(&env.cp);
    let total0 = u(&before["connections_total"]);
    let s = env.spread(REQUESTS);
    assert_eq!(s.failed, 0, "{:?}", s.failures);
    // A few connections left open (the HTTP servers wait for a request that never comes).
    let idle: Vec<TcpStream> = env.on_client(|| {
        (0..IDLE)
            .map(|_| TcpStream::connect_timeout(&vip(), Duration::from_secs(5)).expect("idle connection"))
            .collect()
    });
    let want_total = total0 + REQUESTS + IDLE as u64;
    let stats = wait_for(Duration::from_secs(10), "stats to count the requests and the open connections", || {
        let s = env.cp.try_json(&["stats"])?;
        let v = s["vips"].as_array().and_then(|a| a.iter().find(|v| v["vip"] == VIP)).ok_or(s.to_string())?;
        if v["connections_total"].as_u64() == Some(want_total) && v["connections_active"].as_u64() == Some(IDLE as u64)
        {
            Ok(s.clone())
        } else {
            Err(s.to_string())
        }
    });
    let health = env.cp.json(&["health"]);
    let status = env.cp.json(&["status"]);
    let vips = env.cp.json(&["vip", "list"]);
    let backends = env.cp.json(&["backend", "list"]);
    for args in [&["status"][..], &["stats"], &["health"], &["vip", "list"], &["backend", "list"]] {
        eprintln!("$ fulcrumctl {}\n{}", args.join(" "), env.cp.ctl_ok(args));
    }

    // stats
    assert_eq!(stats["dataplane_alive"], true, "{stats}");
    let v = stats["vips"].as_array().unwrap().iter().find(|v| v["vip"] == VIP).unwrap();
    assert!(u(&v["bytes_in"]) > 0 && u(&v["bytes_out"]) > 0, "{v}");
    let bs = v["backends"].as_array().unwrap();
    assert_eq!(bs.len(), 3, "{v}");
    let sum_total: u64 = bs.iter().map(|b| u(&b["connections_total"])).sum();
    let sum_active: u64 = bs.iter().map(|b| u(&b["connections_active"])).sum();
    assert_eq!(sum_total, want_total, "backend totals {v}");
    assert_eq!(sum_active, IDLE as u64, "backend active {v}");
    for (b, name) in BE.iter().zip(NAMES) {
        let e = backend_of(v, b);
        let e0 = u(&backend_of(&before, b)["connections_total"]);
        assert_eq!(
            u(&e["connections_total"]) - e0,
            s.counts.get(name).copied().unwrap_or(0) + u(&e["connections_active"]),
            "{name}: answers {:?}, stats {e}",
            s.counts
        );
        assert!(u(&e["connections_total"]) > 0, "{e}");
    }
    // health
    let h = health.as_array().unwrap();
    assert_eq!(h.len(), 3, "{health}");
    for e in h {
        assert_eq!(e["vip"], VIP, "{e}");
        assert_eq!(e["check"], "http", "{e}");
        assert_eq!(e["state"], "up", "{e}");
        assert_eq!(e["published"], "up", "{e}");
        assert!(e["latency_last_ms"].is_number(), "{e}");
    }
    // status
    assert_eq!(status["dataplane"]["state"], "up", "{status}");
    assert_eq!(status["dataplane"]["pid"].as_u64(), Some(u64::from(env.dp().pid())), "{status}");
    assert_eq!(status["generation"]["published"], status["generation"]["applied"], "{status}");
    assert_eq!(status["vips"], 1, "{status}");
    assert_eq!(status["backends"], 3, "{status}");
    // vip list
    let vl = vips.as_array().unwrap();
    assert_eq!(vl.len(), 1, "{vips}");
    assert_eq!(vl[0]["vip"], VIP);
    assert_eq!(vl[0]["backends"].as_array().map(Vec::len), Some(3), "{vips}");
    // backend list
    let bl = backends.as_array().unwrap();
    assert_eq!(bl.len(), 3, "{backends}");
    let active: u64 = bl.iter().map(|b| u(&b["connections_active"])).sum();
    assert_eq!(active, IDLE as u64, "{backends}");
    for b in bl {
        assert_eq!(b["state"], "up", "{b}");
        assert_eq!(b["health"], "up", "{b}");
    }
    drop(idle);
}

// ---------------------------------------------------------------------------- 9

/// The control plane's Prometheus endpoint, inside the fabric namespace.
const PROMETHEUS: &str = "127.0.0.1:9469";

/// `(labels, value)` of every `name{...}` sample of a Prometheus scrape (from
/// inside P-fab).
fn scrape(topo: &Topology, name: &str) -> Result<Vec<(String, f64)>, String> {
    let out = topo.exec("fab", &["curl", "-sS", "--max-time", "2", &format!("http://{PROMETHEUS}/metrics")]);
    if !out.status.success() {
        return Err(format!("scrape: {}", describe(&out)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// The dataplane's own drops reach the control plane: frames to the VIP with a
/// wrong IPv4 header checksum, sent below the kernel (scapy in P-cli), are counted
/// by whichever lcore received them as `ipv4_bad_checksum`, and the control plane
/// shows that lcore counter in Prometheus
/// (`fulcrum_dataplane_drops_total{lcore,reason}`) and in `fulcrumctl stats`,
/// read from the shared segment. Every other drop reason has its series too, at 0.
#[test]
fn dataplane_drops_in_prometheus_and_fulcrumctl() {
    const N: u32 = 5;
    const REASON: &str = "ipv4_bad_checksum";
    let topo = Topology::up();
    let cp = ControlPlane::start_with_prometheus(&topo, &vip_toml(""), PROMETHEUS);
    let dp = Dataplane::start(&topo, &cp.dataplane_toml());
    cp.wait_applied(Duration::from_secs(15));
    let label = format!("reason=\"{REASON}\"");
    let drops_of = |samples: &[(String, f64)]| -> f64 {
        samples.iter().filter(|(l, _)| l.contains(&label)).map(|(_, v)| v).sum()
    };
    // Every declared reason of every lcore has a series once the dataplane has
    // written its counters, zero or not: the af_packet ring's and a classifier's.
    let samples = wait_for(Duration::from_secs(10), "the lcores' drop series in /metrics", || {
        let s = scrape(&topo, "fulcrum_dataplane_drops_total")?;
        let has = |reason: &str| s.iter().any(|(l, _)| l.contains(&format!("reason=\"{reason}\"")));
        if has("rx_ring_full") && has(REASON) && has("tx_full") {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    });
    let before = drops_of(&samples);
    eprintln!("{} drop series before; {REASON} {before}", samples.len());

    forward_util::craft(&topo, &dp.mac(), "bad_csum", N, "198.18.1.1", 80);

    let after = wait_for(Duration::from_secs(10), &format!("{REASON} +{N} in /metrics"), || {
        let n = drops_of(&scrape(&topo, "fulcrum_dataplane_drops_total")?);
        if n >= before + f64::from(N) {
            Ok(n)
        } else {
            Err(format!("{REASON} {n}; dataplane stats file: {}", dp.try_stats().map(|s| format_drops(&s)).unwrap_or_default()))
        }
    });
    eprintln!("Prometheus: {REASON} summed over lcores {before} -> {after}");
    for (labels, v) in scrape(&topo, "fulcrum_dataplane_drops_total").unwrap().iter().filter(|(_, v)| *v > 0.0) {
        eprintln!("  fulcrum_dataplane_drops_total{{{labels}}} {v}");
    }
    let rx: f64 = scrape(&topo, "fulcrum_dataplane_packets_total")
        .unwrap()
        .iter()
        .filter(|(l, _)| l.contains("direction=\"rx\""))
        .map(|(_, v)| v)
        .sum();
    assert!(rx >= f64::from(N), "fulcrum_dataplane_packets_total rx {rx}");

    // fulcrumctl: the typed reply, and the table.
    let stats = cp.json(&["stats"]);
    let lcores = stats["lcores"].as_array().cloned().unwrap_or_default();
    assert!(!lcores.is_empty(), "no lcores in fulcrumctl stats: {stats}");
    let counted: u64 = lcores.iter().map(|l| l["drops"][REASON].as_u64().unwrap_or(0)).sum();
    assert!(counted as f64 >= before + f64::from(N), "{REASON} in fulcrumctl stats: {counted}: {stats}");
    assert!(lcores.iter().all(|l| l["drops"]["rx_ring_full"].is_u64()), "every lcore has rx_ring_full: {stats}");
    let text = cp.ctl_ok(&["stats"]);
    eprintln!("$ fulcrumctl stats\n{text}");
    assert!(text.lines().any(|l| l.starts_with("LCORE")), "{text}");
    assert!(text.contains(&format!("{REASON}=")), "{text}");
}
