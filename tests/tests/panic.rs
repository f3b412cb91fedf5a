//! Panic threshold end to end: `fulcrum-controlplane` with the real dataplane, a
//! proxy VIP in front of be1..3 (port 8080) whose health check probes another port
//! (9000, `health = { kind = "tcp", port = 9000, ... }`) that stays up. Closing
//! the served listener of be1 and be2 makes the proxy's connects to them fail
//! while their active checks keep passing, so only passive ejection reacts: the
//! first of them is ejected (2 of 3 up = 66 % >= 50 %), the second is not (1 of 3
//! would be 33 %): it stays published up, its skipped ejections are counted, and
//! the VIP is shown in panic (`fulcrumctl health`, `status`). Then its check port
//! closes too: the active check takes it down, threshold or not.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_tests::client;
use fulcrum_tests::cp::ControlPlane;
use fulcrum_tests::servers::{start_backends, Mode};
use fulcrum_tests::*;

const VIP: &str = "198.18.1.1:80";
const BE: [&str; 3] = ["198.18.0.21:8080", "198.18.0.22:8080", "198.18.0.23:8080"];

fn vip_toml() -> String {
    "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\n\
     health = { kind = \"tcp\", port = 9000, interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2, \
     passive_failures = 3, passive_window_ms = 10000, ejection_base_ms = 60000, ejection_max_ms = 60000, \
     panic_threshold_pct = 50 }\n\
     backends = [\n\
     { address = \"198.18.0.21\", port = 8080, weight = 1 },\n\
     { address = \"198.18.0.22\", port = 8080, weight = 1 },\n\
     { address = \"198.18.0.23\", port = 8080, weight = 1 },\n]\n"
        .to_string()
}

#[test]
fn passive_ejection_stops_at_the_panic_threshold() {
    let topo = Topology::up();
    let mut served: Vec<Option<_>> = start_backends(&topo, 8080, Mode::Http, &[]).into_iter().map(Some).collect();
    let mut checked: Vec<Option<_>> = start_backends(&topo, 9000, Mode::Http, &[]).into_iter().map(Some).collect();
    let cp = ControlPlane::start(&topo, &vip_toml());
    let dp = Dataplane::start(&topo, &cp.dataplane_toml());
    let vip: SocketAddr = VIP.parse().unwrap();
    let cli = topo.ns("cli");
    let g = cp.wait_applied(Duration::from_secs(15));
    eprintln!("dataplane (pid {}) applied generation {g}", dp.pid());
    wait_for(Duration::from_secs(15), "every backend healthy", || {
        let h = cp.try_json(&["health"])?;
        let ok = h.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|e| e["state"] == "up"));
        if ok { Ok(()) } else { Err(h.to_string()) }
    });
    let h = cp.json(&["health"]);
    assert!(h.as_array().unwrap().iter().all(|e| e["vip_panic"] == false && e["ejections_skipped"] == 0), "{h}");

    // be1 and be2 stop serving 8080 (their check port stays up).
    served[0] = None;
    served[1] = None;
    eprintln!("be1 and be2 closed their 8080 listeners");

    // Traffic until one of them is ejected and the other's ejection was held back.
    let mut spreads = Vec::new();
    let (ejected, kept) = wait_for(Duration::from_secs(60), "one ejection and one held back", || {
        let s = in_netns(&cli, || client::http_spread(vip, 30, 4, Duration::from_secs(5)));
        spreads.push(format!("ok {:?}, failed {}", s.counts, s.failed));
        let e: Vec<_> = BE.iter().map(|b| cp.health_of(b)).collect::<Result<_, _>>()?;
        let down: Vec<usize> = (0..2).filter(|&i| e[i]["state"] == "down").collect();
        let held: Vec<usize> = (0..2).filter(|&i| e[i]["ejections_skipped"].as_u64().unwrap_or(0) > 0).collect();
        match (down.as_slice(), held.as_slice()) {
            ([d], [k]) if d != k => Ok((*d, *k)),
            _ => Err(format!("{:?}", e)),
        }
    });
    eprintln!("traffic rounds: {spreads:#?}");
    eprintln!("ejected {}, kept (held back) {}", BE[ejected], BE[kept]);
    // Let more failures come: the kept one stays up, and more skips are counted.
    let before = cp.health_of(BE[kept]).unwrap()["ejections_skipped"].as_u64().unwrap();
    let s = in_netns(&cli, || client::http_spread(vip, 60, 4, Duration::from_secs(5)));
    eprintln!("after the threshold: ok {:?} ({} ok), failed {}: {:?}", s.counts, s.total_ok(), s.failed, s.failures.first());
    let more = wait_for(Duration::from_secs(20), "a further skipped ejection", || {
        let _ = in_netns(&cli, || client::http_spread(vip, 20, 4, Duration::from_secs(5)));
        let k = cp.health_of(BE[kept])?;
        if k["ejections_skipped"].as_u64().unwrap_or(0) > before { Ok(k) } else { Err(k.to_string()) }
    });
    eprintln!("kept backend's entry: {more}");
    let h = cp.json(&["health"]);
    eprintln!("fulcrumctl health --json: {h}");
    for e in h.as_array().unwrap() {
        assert_eq!(e["vip_panic"], true, "{e}");
        assert!(e["vip_panic_since_secs"].as_f64().is_some(), "{e}");
        assert!(e["vip_ejections_skipped"].as_u64().unwrap() >= 2, "{e}");
    }
    let hb = |i: usize| h.as_array().unwrap().iter().find(|e| e["backend"] == BE[i]).unwrap().clone();
    assert_eq!(hb(ejected)["state"], "down");
    assert_eq!(hb(ejected)["published"], "down");
    assert_eq!(hb(kept)["state"], "up");
    assert_eq!(hb(kept)["published"], "up", "the kept backend stays published up");
    assert_eq!(hb(2)["published"], "up");
    assert!(hb(ejected)["last_error"].as_str().unwrap_or("").contains("passive"), "{}", hb(ejected));
    let text = cp.ctl_ok(&["health"]);
    eprintln!("fulcrumctl health:\n{text}");
    assert!(text.contains("IN PANIC"), "{text}");
    let status = cp.json(&["status"]);
    let p = &status["vips_in_panic"];
    eprintln!("status vips_in_panic: {p}");
    assert_eq!(p[0]["vip"], VIP, "{status}");
    assert_eq!((p[0]["backends"].as_u64(), p[0]["up"].as_u64()), (Some(3), Some(2)), "{p}");
    let st = cp.ctl_ok(&["status"]);
    assert!(st.contains("IN PANIC"), "{st}");
    // The VIP still serves: be3 answers (retries move refused connects on).
    let s = in_netns(&cli, || client::http_spread(vip, 30, 4, Duration::from_secs(5)));
    eprintln!("final round: ok {:?}, failed {}", s.counts, s.failed);
    assert!(s.counts.get("be3").copied().unwrap_or(0) > 0, "{s:?}");
    // Active checks are the truth: the kept backend's check port closes too, and it
    // goes down (fall = 2) although the VIP is below its threshold then.
    checked[kept] = None;
    let down = wait_for(Duration::from_secs(15), "the kept backend down by its active check", || {
        let e = cp.health_of(BE[kept])?;
        if e["state"] == "down" && e["published"] == "down" { Ok(e) } else { Err(e.to_string()) }
    });
    eprintln!("kept backend after its check port closed: {down}");
    assert!(down["last_error"].as_str().unwrap_or("").contains("refused"), "{down}");
    let s = in_netns(&cli, || client::http_spread(vip, 30, 4, Duration::from_secs(5)));
    eprintln!("with one backend up: ok {:?}, failed {}", s.counts, s.failed);
    let log = cp.log();
    assert!(log.contains("is in panic"), "{log}");
    assert!(log.contains("held back by the VIP's panic threshold"), "{log}");
    drop(dp);
}
