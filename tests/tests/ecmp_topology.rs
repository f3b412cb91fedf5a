//! Two Fulcrum instances behind ECMP, with real parts only and no control plane
//! (`topology.sh up --instances 2`, tests/src/ecmp.rs):
//!
//! - two dataplanes (198.18.0.2 on tap P-dp, 198.18.0.42 on P-dp2) serve the same
//!   proxy VIP 198.18.1.1:80 in front of the three backends, with the same config
//!   apart from address, tap, EAL file prefix and lcore;
//! - each instance's BIRD (in P-lb1, P-lb2) announces the VIP, next hop its
//!   dataplane, once its routes file is written (here by hand, as the control plane
//!   would) and `birdc configure`d; the router's BIRD installs one kernel route with
//!   both next hops (ECMP, L4 hash);
//! - 2000 short connections from the outside client P-out all succeed and each
//!   instance accepts at least 30 % of them (each dataplane's stats file);
//! - instance 2 withdraws (empty routes file + configure): the router drops its next
//!   hop within a bounded poll, and new connections all go to instance 1;
//! - instance 2 announces again, then its host is lost (its BIRD's link goes down,
//!   nothing is said): BFD withdraws it at the router, well before the 3 s hold time.
//!
//! Figures are printed (`--nocapture` shows them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fulcrum_tests::client;
use fulcrum_tests::servers::{start_backends, Mode};
use fulcrum_tests::vip::*;
use fulcrum_tests::*;

const BACKEND_PORT: u16 = 8080;
const CONNS: u64 = 2000;
const CONNS_AFTER: u64 = 500;
/// The least share of the connections each of two instances must carry.
const MIN_SHARE: f64 = 30.0;

fn vip() -> SocketAddr {
    format!("{VIP_IP}:{VIP_PORT}").parse().unwrap()
}

/// The VIP's `accepted` counter in a stats file.
fn accepted(s: &Value) -> u64 {
    vip_counter(s, VIP_IP, VIP_PORT, "accepted")
}

/// Short connections from P-out (one GET each, 16 at a time): all must succeed.
fn spread_from_outside(topo: &Topology, n: u64) -> client::Spread {
    let spread = in_netns(&topo.ns("out"), || client::http_spread(vip(), n, 16, Duration::from_secs(10)));
    eprintln!(
        "{n} connections from P-out in {:.2?} ({:.0}/s), {} failed; answers per backend {:?}",
        spread.elapsed,
        n as f64 / spread.elapsed.as_secs_f64(),
        spread.failed,
        spread.counts
    );
    assert_eq!(spread.failed, 0, "failed requests: {:#?}", spread.failures);
    assert_eq!(spread.total_ok(), n, "answers: {:?}", spread.counts);
    spread
}

/// The router's BGP sessions with when they came up (`show protocols` lines).
fn session_lines(topo: &Topology) -> Vec<String> {
    topo.birdc_ok("rtr", &topo.router_bird_socket(), &["show", "protocols"])
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn two_instances_share_a_vip_through_ecmp() {
    let topo = Topology::up_instances(2);
    let (i1, i2) = (topo.instance(1).clone(), topo.instance(2).clone());
    eprintln!("instances:\n  {i1:?}\n  {i2:?}");
    assert_eq!((i1.dataplane_ip.as_str(), i2.dataplane_ip.as_str()), ("198.18.0.2", "198.18.0.42"));
    assert_eq!(
        topo.router_sessions(),
        vec![("lb1".to_string(), "Established".to_string()), ("lb2".to_string(), "Established".to_string())],
        "BGP sessions at the router right after up"
    );
    // Nothing announced yet: the router has no route to the VIP.
    assert_eq!(topo.router_nexthops(VIP_IP), Vec::<String>::new(), "router route before any announcement");

    let _backends = start_backends(&topo, BACKEND_PORT, Mode::Http, &[]);
    let cfg = proxy_config(None, &[three_backends(proxy_vip(VIP_IP, VIP_PORT), BACKEND_PORT, [1, 1, 1])]);
    let start = |k: usize| {
        let dp = Dataplane::start_with(
            &topo,
            StartOptions { extra_config: cfg.clone(), instance: Some(k), ..Default::default() },
        );
        dp.wait_stats(Duration::from_secs(5), "the stats file to list VIP 198.18.1.1:80", |s| {
            vip_stats(s, VIP_IP, VIP_PORT).map(|_| ()).ok_or_else(|| "no vips[] entry".to_string())
        });
        dp
    };
    let mut dp1 = start(1);
    let mut dp2 = start(2);
    eprintln!("dataplane 1: {}\ndataplane 2: {}", dp1.ready_line(), dp2.ready_line());

    // ---------------------------------------------------------------- announce
    i1.write_routes(&[VIP_IP]);
    i2.write_routes(&[VIP_IP]);
    let t0 = Instant::now();
    topo.bird_configure(1);
    topo.bird_configure(2);
    topo.wait_router_nexthops(VIP_IP, &["198.18.0.2", "198.18.0.42"], Duration::from_secs(10));
    eprintln!(
        "announced: the router has both next hops {:.0?} after `birdc configure`; `ip route show {VIP_IP}` in P-rtr:\n{}",
        t0.elapsed(),
        topo.router_route_text(VIP_IP)
    );
    let route = topo.router_route_text(VIP_IP);
    assert!(
        route.contains("nexthop via 198.18.0.2 ") && route.contains("nexthop via 198.18.0.42 "),
        "the next hops are the dataplanes, not the BIRD speakers (198.18.0.51/52): {route}"
    );
    let sessions_before = session_lines(&topo);

    // ---------------------------------------------------------------- spread
    let (b1, b2) = (accepted(&dp1.stats()), accepted(&dp2.stats()));
    spread_from_outside(&topo, CONNS);
    // Counters only grow and the two instances' connections add up to CONNS: the sum
    // reaches CONNS once both stats files have been rewritten after the run.
    let (a1, a2) = wait_for(Duration::from_secs(10), "the two dataplanes' accepted counters to add up", || {
        let (s1, s2) = (dp1.try_stats().ok_or("no stats 1")?, dp2.try_stats().ok_or("no stats 2")?);
        let (a1, a2) = (accepted(&s1) - b1, accepted(&s2) - b2);
        if a1 + a2 == CONNS {
            Ok((a1, a2))
        } else {
            Err(format!("instance 1 +{a1}, instance 2 +{a2}, want {CONNS} in all"))
        }
    });
    let share = |a: u64, n: u64| 100.0 * a as f64 / n as f64;
    eprintln!(
        "ECMP over 2 instances: instance 1 (198.18.0.2) accepted {a1} ({:.1} %), instance 2 (198.18.0.42) \
         accepted {a2} ({:.1} %)",
        share(a1, CONNS),
        share(a2, CONNS)
    );
    assert!(
        share(a1, CONNS) >= MIN_SHARE && share(a2, CONNS) >= MIN_SHARE,
        "each instance must carry at least {MIN_SHARE} %: {a1} / {a2}"
    );
    // No session flapped under load (BFD at 100 ms x 5 on a 2-core machine).
    let sessions_after = session_lines(&topo);
    eprintln!("router sessions after the load: {sessions_after:?}");
    assert_eq!(sessions_before, sessions_after, "a BGP session went down and up during the load");

    // ---------------------------------------------------------------- withdraw
    i2.write_routes(&[]);
    let t0 = Instant::now();
    topo.bird_configure(2);
    let took = topo.wait_router_nexthops(VIP_IP, &["198.18.0.2"], Duration::from_secs(5));
    eprintln!(
        "withdrawn: instance 2's next hop left the router {:.1?} after `birdc configure` ({:.1?} of polling); route:\n{}",
        t0.elapsed(),
        took,
        topo.router_route_text(VIP_IP)
    );
    let (b1, b2) = (accepted(&dp1.stats()), accepted(&dp2.stats()));
    spread_from_outside(&topo, CONNS_AFTER);
    // Instance 1 reaching CONNS_AFTER means instance 2 took none of them.
    let a1 = dp1.wait_stats(Duration::from_secs(10), "instance 1 to accept every connection", |s| {
        let a = accepted(s) - b1;
        if a == CONNS_AFTER {
            Ok(a)
        } else {
            Err(format!("instance 1 +{a} of {CONNS_AFTER}"))
        }
    });
    let a2 = accepted(&dp2.stats()) - b2;
    eprintln!("after the withdrawal: instance 1 accepted {a1}, instance 2 {a2}");
    assert_eq!(a2, 0, "instance 2 accepted connections after its route was withdrawn");

    // ---------------------------------------------------------------- host loss
    // Announce again, then cut instance 2's BIRD off the fabric without a word (its
    // veth on br0 goes down): the router only notices by BFD (or the hold timer).
    i2.write_routes(&[VIP_IP]);
    topo.bird_configure(2);
    let back = topo.wait_router_nexthops(VIP_IP, &["198.18.0.2", "198.18.0.42"], Duration::from_secs(10));
    eprintln!("instance 2 announced again: back at the router after {back:.1?}");
    let t0 = Instant::now();
    topo.exec_ok("fab", &["ip", "link", "set", "dev", "lb2", "down"]);
    topo.wait_router_nexthops(VIP_IP, &["198.18.0.2"], Duration::from_secs(10));
    let lost = t0.elapsed();
    eprintln!(
        "host loss: instance 2's link down, its next hop left the router after {lost:.2?} (BFD 100 ms x 5; \
         hold time 3 s); sessions: {:?}",
        topo.router_sessions()
    );
    assert!(lost < Duration::from_secs(2), "withdrawal took {lost:?}: BFD should detect a lost peer in ~0.5 s");

    dp1.assert_running();
    dp2.assert_running();
}
