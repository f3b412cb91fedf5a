//! SYN cookies valid across the pool: a handshake answered with a cookie by one
//! instance and completed on another (what a client sees when ECMP moves its flow
//! between its SYN and its ACK) becomes a working connection when both instances
//! share `syn_cookie_seed`, and is refused (RST) and counted when they do not.
//!
//! Two instances from files (`topology.sh up --instances 2`, no control plane, no
//! BGP): dataplane 1 at 198.18.0.2 and dataplane 2 at 198.18.0.42 both serve proxy
//! VIP 198.18.1.1:80 over the three backends' HTTP servers with `syn_cookies =
//! "always"`. The client is `fulcrum-rawtcp` in P-cli, a userspace TCP over
//! AF_PACKET with an address and MAC no kernel owns (198.18.0.99): it sends its SYN
//! to dataplane 1's MAC and its ACK, request and the rest to dataplane 2's (a
//! kernel client cannot: it would send everything to one next hop, and reset a
//! SYN-ACK it did not expect).
//!
//! - Same seed: the SYN-ACK comes from dataplane 1, which keeps nothing (no
//!   connection, one cookie sent, nothing accepted); dataplane 2 validates the
//!   cookie, accepts the connection and proxies it: a complete HTTP 200 from a
//!   backend, closed by FIN; dataplane 2 sent no cookie.
//! - Dataplane 2 restarted with another seed: the same exchange gets a RST from
//!   dataplane 2 to the ACK, counted as `cookies_rejected`, nothing accepted and no
//!   backend connection attempted. (The client first tells dataplane 2 its MAC with
//!   an ARP request, as a load balancer knows its router's: smoltcp holds a reply
//!   to an unknown neighbour behind an ARP request of its own and drops it, so
//!   otherwise only a retransmitted ACK would get the RST.)
//!
//! The exchanges and counters are printed (`--nocapture`).

use std::time::Duration;

use fulcrum_tests::servers::{start_backends, Mode, Server};
use fulcrum_tests::vip::*;
use fulcrum_tests::*;

const BACKEND_PORT: u16 = 8080;
const CLIENT: &str = "198.18.0.99";
const CLIENT_MAC: &str = "02:00:00:00:c0:99";
const SEED: &str = "5eed5eed00112233445566778899aabbccddeeff0123456789abcdef01234567";
const OTHER_SEED: &str = "0dd5eed0fedcba9876543210ffeeddccbbaa99887766554433221100deadbeef";

fn config(seed: &str) -> String {
    format!(
        "[proxy]\nsyn_cookies = \"always\"\nsyn_cookie_seed = \"{seed}\"\n\n{}",
        proxy_config(None, &[three_backends(proxy_vip(VIP_IP, VIP_PORT), BACKEND_PORT, [1, 1, 1])])
    )
}

fn start(topo: &Topology, k: usize, seed: &str) -> Dataplane {
    let dp = Dataplane::start_with(topo, StartOptions { extra_config: config(seed), instance: Some(k), ..Default::default() });
    dp.wait_stats(Duration::from_secs(5), "the stats file to list VIP 198.18.1.1:80", |s| {
        vip_stats(s, VIP_IP, VIP_PORT).map(|_| ()).ok_or_else(|| "no vips[] entry".to_string())
    });
    dp
}

/// One `fulcrum-rawtcp` exchange from P-cli: SYN to `syn_mac`, the rest to
/// `rest_mac`. Prints its log; returns its JSON summary.
fn exchange(topo: &Topology, sport: u16, isn: u32, syn_mac: &str, rest_mac: &str, announce: Option<String>) -> Value {
    let bin = bin_dir().join("fulcrum-rawtcp");
    assert!(bin.is_file(), "{} not found: build with `cargo build --release --workspace`", bin.display());
    let bin = bin.to_string_lossy().into_owned();
    let (sport, isn) = (sport.to_string(), isn.to_string());
    let mut args = vec![
        bin.as_str(),
        "--src",
        CLIENT,
        "--src-mac",
        CLIENT_MAC,
        "--sport",
        &sport,
        "--isn",
        &isn,
        "--dst",
        VIP_IP,
        "--dport",
        "80",
        "--syn-mac",
        syn_mac,
        "--rest-mac",
        rest_mac,
        "--timeout",
        "5",
    ];
    if let Some(a) = &announce {
        args.extend(["--announce", a.as_str()]);
    }
    let out = topo.exec_timeout("cli", &args, Duration::from_secs(40));
    eprintln!("fulcrum-rawtcp {}:\n{}", args[1..].join(" "), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fulcrum-rawtcp failed: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("fulcrum-rawtcp's summary: {e}: {text}"))
}

fn cookie_counters(s: &Value) -> String {
    let c = |f: &str| vip_counter(s, VIP_IP, VIP_PORT, f);
    format!(
        "syns {} cookies_sent {} cookies_validated {} cookies_rejected {} accepted {} half_open {}; proxy.connections {:?}; \
         backend attempts {:?} opened {:?} connect_failures {:?}",
        c("syns"),
        c("cookies_sent"),
        c("cookies_validated"),
        c("cookies_rejected"),
        c("accepted"),
        c("half_open"),
        proxy_counter(s, "connections"),
        BACKEND_IPS.map(|b| backend_counter(s, VIP_IP, VIP_PORT, b, "attempts")),
        BACKEND_IPS.map(|b| backend_counter(s, VIP_IP, VIP_PORT, b, "opened")),
        BACKEND_IPS.map(|b| backend_counter(s, VIP_IP, VIP_PORT, b, "connect_failures")),
    )
}

/// Backend connections opened by a dataplane (all backends).
fn backends_opened(s: &Value) -> u64 {
    BACKEND_IPS.iter().map(|b| backend_counter(s, VIP_IP, VIP_PORT, b, "opened")).sum()
}

fn backends_accepted(backends: &[Server]) -> u64 {
    backends.iter().map(Server::accepted).sum()
}

#[test]
fn a_cookie_from_one_instance_completes_on_the_other() {
    let topo = Topology::up_instances(2);
    let backends = start_backends(&topo, BACKEND_PORT, Mode::Http, &[]);
    let dp1 = start(&topo, 1, SEED);
    let mut dp2 = start(&topo, 2, SEED);
    let (mac1, mac2) = (dp1.mac(), dp2.mac());
    eprintln!("dataplane 1: {}\ndataplane 2: {}", dp1.ready_line(), dp2.ready_line());
    assert_ne!(mac1, mac2);

    // ------------------------------------------------------------ same seed
    let o = exchange(&topo, 41001, 0x1000_0001, &mac1, &mac2, None);
    eprintln!("summary: {o:#}");
    assert_eq!(o["synack"]["src_mac"], mac1.as_str(), "the SYN-ACK comes from dataplane 1");
    assert_eq!(o["synack"]["flags"], "S.");
    assert_eq!(o["end"], "fin", "the connection ends with the server's FIN: {o}");
    let response = o["response"].as_str().unwrap_or_default();
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "response: {response:?}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(["be1\n", "be2\n", "be3\n"].contains(&body), "the body names a backend: {response:?}");
    for seg in o["received"].as_array().unwrap() {
        assert_eq!(seg["src_mac"], mac2.as_str(), "after the SYN-ACK everything comes from dataplane 2: {seg}");
    }

    let s1 = dp1.wait_stats(Duration::from_secs(5), "dataplane 1 to count its cookie", |s| {
        (vip_counter(s, VIP_IP, VIP_PORT, "cookies_sent") == 1).then(|| s.clone()).ok_or_else(|| cookie_counters(s))
    });
    let s2 = dp2.wait_stats(Duration::from_secs(5), "dataplane 2 to count the validated cookie and the connection", |s| {
        (vip_counter(s, VIP_IP, VIP_PORT, "cookies_validated") == 1
            && vip_counter(s, VIP_IP, VIP_PORT, "accepted") == 1
            && backends_opened(s) == 1)
            .then(|| s.clone())
            .ok_or_else(|| cookie_counters(s))
    });
    eprintln!("same seed:\n  dataplane 1: {}\n  dataplane 2: {}", cookie_counters(&s1), cookie_counters(&s2));
    let c1 = |f: &str| vip_counter(&s1, VIP_IP, VIP_PORT, f);
    let c2 = |f: &str| vip_counter(&s2, VIP_IP, VIP_PORT, f);
    assert_eq!((c1("syns"), c1("cookies_sent"), c1("accepted"), c1("cookies_validated")), (1, 1, 0, 0), "dataplane 1");
    assert_eq!(proxy_counter(&s1, "connections"), Some(0), "dataplane 1 keeps nothing");
    assert_eq!((c2("syns"), c2("cookies_sent"), c2("cookies_validated"), c2("cookies_rejected")), (0, 0, 1, 0), "dataplane 2");
    assert_eq!(backends_accepted(&backends), 1, "one backend connection");

    // ------------------------------------------------------------ other seed
    dp2.stop_sigterm();
    drop(dp2);
    let dp2 = start(&topo, 2, OTHER_SEED);
    let mac2 = dp2.mac();
    eprintln!("dataplane 2 restarted with another seed: {}", dp2.ready_line());
    let before = backends_accepted(&backends);
    let o = exchange(&topo, 41002, 0x2000_0002, &mac1, &mac2, Some(format!("198.18.0.42={mac2}")));
    eprintln!("summary: {o:#}");
    assert_eq!(o["synack"]["src_mac"], mac1.as_str(), "the SYN-ACK comes from dataplane 1");
    assert_eq!(o["end"], "reset", "dataplane 2 resets the ACK: {o}");
    assert_eq!(o["rst"]["src_mac"], mac2.as_str(), "the RST comes from dataplane 2");
    assert_eq!(o["rst"]["flags"], "R", "{o}");
    let synack_seq = o["synack"]["seq"].as_u64().unwrap();
    assert_eq!(o["rst"]["seq"].as_u64(), Some((synack_seq + 1) % (1 << 32)), "the RST's seq is our ACK's ack: {o}");
    let s2 = dp2.wait_stats(Duration::from_secs(5), "dataplane 2 to count the rejected cookie", |s| {
        (vip_counter(s, VIP_IP, VIP_PORT, "cookies_rejected") == 1).then(|| s.clone()).ok_or_else(|| cookie_counters(s))
    });
    let s1 = dp1.wait_stats(Duration::from_secs(5), "dataplane 1 to count its second cookie", |s| {
        (vip_counter(s, VIP_IP, VIP_PORT, "cookies_sent") == 2).then(|| s.clone()).ok_or_else(|| cookie_counters(s))
    });
    eprintln!("other seed:\n  dataplane 1: {}\n  dataplane 2: {}", cookie_counters(&s1), cookie_counters(&s2));
    let c2 = |f: &str| vip_counter(&s2, VIP_IP, VIP_PORT, f);
    assert_eq!((c2("cookies_validated"), c2("accepted"), c2("cookies_sent")), (0, 0, 0), "dataplane 2");
    for b in BACKEND_IPS {
        for f in ["attempts", "opened", "connect_failures"] {
            assert_eq!(backend_counter(&s2, VIP_IP, VIP_PORT, b, f), 0, "no backend attempt to {b}: {f}");
        }
    }
    assert_eq!(vip_counter(&s1, VIP_IP, VIP_PORT, "accepted"), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(backends_accepted(&backends), before, "no backend connection for the rejected cookie");
}
