//! At the edge: a client beyond a router. The outside client P-out (198.19.0.10)
//! reaches the VIPs through the router P-rtr (198.19.0.1 / 198.18.0.254), which
//! routes the VIP range to the dataplane. One topology and one dataplane carry three
//! VIPs:
//! - proxy 198.18.1.1 (:80 to nginx on the three backends, :5201 to iperf3 on be1):
//!   the proxy engine answers the client through its gateway, the router;
//! - DSR 198.18.1.2 (:80 nginx, :5201 iperf3 on the backends' loopback VIP): the
//!   backends answer the client straight through their default route, the router;
//! - FullNAT 198.18.1.3 (:80 to nginx on :8081, :5201 to iperf3): the dataplane
//!   sends replies to the MAC the flow arrived from, the router's.
//!
//! Per VIP: curl (every request answered), wrk with short connections and with
//! keep-alive (every request completed, no socket error), iperf3 TCP upload
//! (bytes > 0). Also: ping from P-out to the dataplane's own address is answered,
//! and the router has no route beyond the topology (replies to spoofed sources die
//! there).
//!
//! Figures are printed, never held against thresholds (`--nocapture` shows them).

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_model::{Backend, Vip};
use fulcrum_tests::forward_util::*;
use fulcrum_tests::servers::{Nginx, NginxOptions};
use fulcrum_tests::vip::*;
use fulcrum_tests::*;

const DSR_VIP: &str = "198.18.1.2";
const FNAT_VIP: &str = "198.18.1.3";
const BACKENDS: [&str; 3] = ["be1", "be2", "be3"];
/// nginx behind the proxy VIP (on the backends' own addresses).
const PROXY_HTTP_PORT: u16 = 8080;
/// nginx behind the FullNAT VIP (on the backends' own addresses).
const FNAT_HTTP_PORT: u16 = 8081;
/// Where the outside client is.
const OUT: &str = "out";

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// One forwarding `[[vip]]` table with the three backends on `backend_port`.
fn fwd_vip(address: &str, port: u16, mode: &str, affinity: &str, backend_port: u16) -> String {
    let backends: Vec<String> = BACKEND_IPS
        .iter()
        .map(|b| format!("{{ address = \"{b}\", port = {backend_port} }}"))
        .collect();
    format!(
        "[[vip]]\naddress = \"{address}\"\nport = {port}\nproto = \"tcp\"\nmode = \"{mode}\"\n\
         affinity = \"{affinity}\"\nbackends = [ {} ]\n",
        backends.join(", ")
    )
}

/// nginx answering `"<leaf>\n"` on `addr`, keeping client connections alive.
fn nginx(topo: &Topology, leaf: &str, addr: SocketAddr) -> Nginx {
    let opts = NginxOptions { keepalive: true, ..NginxOptions::default() };
    Nginx::start_with(topo, leaf, addr, leaf, &opts)
}

/// `n` GETs from P-out to `http://vip/` (one curl, a new connection each); all
/// must be answered 200 by one of the backends. Returns the bodies.
fn curl_from_outside(topo: &Topology, vip: &str, n: usize) -> Vec<String> {
    let url = format!("http://{vip}/?req=[1-{n}]");
    let out = topo.exec_timeout(
        OUT,
        &["curl", "-sS", "--max-time", "5", "-H", "Connection: close", "-w", " code=%{http_code}\n", &url],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // nginx's body ends with a newline: "be1\n code=200\n" per request.
    let lines: Vec<&str> = stdout.lines().collect();
    let res: Vec<(String, String)> = lines
        .windows(2)
        .filter_map(|w| Some((w[1].strip_prefix(" code=")?.to_string(), w[0].trim().to_string())))
        .collect();
    assert!(
        out.status.success() && res.len() == n && res.iter().all(|(c, b)| c == "200" && BACKENDS.contains(&b.as_str())),
        "{n} GETs from {} to {vip}: {res:?}\n{}",
        topo.ns(OUT),
        describe(&out)
    );
    res.into_iter().map(|(_, b)| b).collect()
}

/// What wrk reported.
#[derive(Debug, Default)]
struct Wrk {
    requests: u64,
    /// connect, read, write, timeout.
    socket_errors: [u64; 4],
    non_2xx: u64,
}

/// Parses wrk's text output ("N requests in ...", "Socket errors: connect A, read B,
/// write C, timeout D" and "Non-2xx or 3xx responses: N", the last two only when
/// not zero).
fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let mut seen = false;
    for line in text.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            if rest.contains("read") {
                w.requests = n.trim().parse().ok()?;
                seen = true;
            }
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for (i, part) in rest.split(',').enumerate().take(4) {
                w.socket_errors[i] = part.split_whitespace().nth(1)?.parse().ok()?;
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = n.trim().parse().ok()?;
        }
    }
    seen.then_some(w)
}

/// wrk from P-out for 3 s with 8 connections; `close` sends `Connection: close`
/// (a new connection per request). Every request must complete with no socket error.
fn wrk_from_outside(topo: &Topology, vip: &str, close: bool) -> Wrk {
    let url = format!("http://{vip}/");
    let mut args = vec!["wrk", "-t1", "-c8", "-d3s", "--timeout", "3s"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let out = topo.exec_timeout(OUT, &args, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let w = parse_wrk(&text).unwrap_or_else(|| panic!("wrk output not understood: {}", describe(&out)));
    let kind = if close { "short connections" } else { "keep-alive" };
    eprintln!("wrk {vip} ({kind}): {} requests in 3 s, socket errors {:?}, non-2xx {}", w.requests, w.socket_errors, w.non_2xx);
    assert!(out.status.success(), "wrk {vip} ({kind}): {}", describe(&out));
    assert!(w.requests > 0, "wrk {vip} ({kind}) completed no request:\n{text}");
    assert_eq!(w.socket_errors, [0; 4], "wrk {vip} ({kind}): socket errors (connect, read, write, timeout):\n{text}");
    assert_eq!(w.non_2xx, 0, "wrk {vip} ({kind}): non-2xx answers:\n{text}");
    w
}

/// A 3 s iperf3 TCP upload from P-out to `vip`:5201; returns the bytes received.
fn iperf3_from_outside(topo: &Topology, vip: &str) -> u64 {
    let args = ["iperf3", "-c", vip, "-p", "5201", "-J", "--connect-timeout", "5000", "-t", "3"];
    let out = topo.exec_timeout(OUT, &args, Duration::from_secs(40));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success() && v.get("error").is_none() && v.get("end").is_some(),
        "iperf3 to {vip} from {}: {}",
        topo.ns(OUT),
        describe(&out)
    );
    let (bytes, bps) = iperf3_tcp_received(&v);
    eprintln!("iperf3 TCP upload {vip}: {bytes} bytes, {:.0} Mbit/s", bps / 1e6);
    assert!(bytes > 0, "iperf3 to {vip} moved nothing: {v}");
    bytes
}

#[test]
fn outside_client_through_the_router() {
    let topo = Topology::up();

    // The router drops what it cannot route: no route beyond the topology, so a
    // reply to a spoofed source (say 203.0.113.1) dies there.
    let out = topo.exec("rtr", &["ip", "route", "get", "203.0.113.1"]);
    assert!(!out.status.success(), "the router has a route to 203.0.113.1: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("unreachable"), "ip route get 203.0.113.1 in the router: {}", describe(&out));
    // ... while the outside network and the VIPs are routed.
    topo.exec_ok("rtr", &["ip", "route", "get", OUTSIDE_CLIENT_IP]);
    let via = topo.exec_ok("rtr", &["ip", "route", "get", DSR_VIP]);
    assert!(via.contains(&format!("via {DATAPLANE_IP}")), "the router routes {DSR_VIP}: {via}");

    // Backends: nginx on their own address for the proxy (8080) and FullNAT (8081)
    // VIPs and on the DSR VIP (their loopback); iperf3 on their address (proxy and
    // FullNAT) and on the DSR VIP.
    let mut guards = Vec::new();
    let mut nginxes = Vec::new();
    for (be, ip) in BACKENDS.iter().zip(BACKEND_IPS) {
        dsr_backend(&topo, be, DSR_VIP);
        nginxes.push(nginx(&topo, be, sa(ip, PROXY_HTTP_PORT)));
        nginxes.push(nginx(&topo, be, sa(ip, FNAT_HTTP_PORT)));
        nginxes.push(nginx(&topo, be, sa(DSR_VIP, 80)));
        guards.push(iperf3_server(&topo, be, ip));
        guards.push(iperf3_server(&topo, be, DSR_VIP));
    }

    // Proxy VIP: :80 over the three nginx, :5201 to be1's iperf3 only (an iperf3
    // test's control and data connections must meet the same server).
    let http = three_backends(proxy_vip(VIP_IP, 80), PROXY_HTTP_PORT, [1, 1, 1]);
    let mut iperf = proxy_vip(VIP_IP, 5201);
    iperf.backends.push(Backend::new(BACKEND_IPS[0].parse().unwrap(), 5201, 1));
    let proxy_vips: Vec<Vip> = vec![http, iperf];
    let config = format!(
        "[forward]\nsnat_addresses = [\"{SNAT_IP}\"]\nconntrack_entries = 65536\n{}{}{}{}{}",
        vips_toml(&proxy_vips),
        fwd_vip(DSR_VIP, 80, "dsr", "flow", 80),
        fwd_vip(DSR_VIP, 5201, "dsr", "client", 5201),
        fwd_vip(FNAT_VIP, 80, "fullnat", "flow", FNAT_HTTP_PORT),
        fwd_vip(FNAT_VIP, 5201, "fullnat", "client", 5201),
    );
    let mut dp = Dataplane::start(&topo, &config);
    let cfg = std::fs::read_to_string(dp.config_path()).expect("read the dataplane's config");
    assert!(cfg.contains(&format!("gateway = \"{ROUTER_IP}\"")), "the harness gives the dataplane the router as gateway:\n{cfg}");
    let want = format!("proxy engines' routes: default via {ROUTER_IP}");
    assert!(dp.log().contains(&want), "the dataplane's log should say {want:?}:\n{}", dp.log());

    // Ping from beyond the router: the dataplane answers to the MAC the request
    // came from (the router's).
    let out = topo.exec_timeout(OUT, &["ping", "-c", "3", "-W", "2", DATAPLANE_IP], Duration::from_secs(15));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("ping {DATAPLANE_IP} from {}: {}", topo.ns(OUT), text.lines().filter(|l| l.contains("transmitted") || l.contains("rtt")).collect::<Vec<_>>().join("; "));
    assert!(out.status.success() && text.contains("3 received"), "ping {DATAPLANE_IP} from outside: {}", describe(&out));

    for (name, vip) in [("proxy", VIP_IP), ("DSR", DSR_VIP), ("FullNAT", FNAT_VIP)] {
        let bodies = curl_from_outside(&topo, vip, 10);
        let mut by = std::collections::BTreeMap::new();
        for b in &bodies {
            *by.entry(b.clone()).or_insert(0u32) += 1;
        }
        eprintln!("{name} {vip}: 10 GETs from outside, all 200, served by {by:?}");
        wrk_from_outside(&topo, vip, true);
        wrk_from_outside(&topo, vip, false);
        iperf3_from_outside(&topo, vip);
        dp.assert_running();
    }

    let s = dp.stats();
    eprintln!("proxy VIPs: {}", format_vips(&s));
    eprintln!("forward: {}", s["forward"]);
    dp.assert_running();
    drop(nginxes);
    drop(guards);
}

#[test]
fn wrk_output_is_understood() {
    let ok = "Running 3s test @ http://198.18.1.1/\n  1 threads and 8 connections\n\
              Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.00ms  0.20ms   3.00ms   90.00%\n\
              Req/Sec     5.00k   100.00   5.20k    70.00%\n  15000 requests in 3.00s, 2.10MB read\n\
              Requests/sec:   5000.00\nTransfer/sec:    700.00KB\n";
    let w = parse_wrk(ok).unwrap();
    assert_eq!((w.requests, w.socket_errors, w.non_2xx), (15000, [0; 4], 0));
    let bad = format!("{ok}  Socket errors: connect 1, read 2, write 3, timeout 4\n  Non-2xx or 3xx responses: 5\n");
    let w = parse_wrk(&bad).unwrap();
    assert_eq!((w.socket_errors, w.non_2xx), ([1, 2, 3, 4], 5));
    assert!(parse_wrk("unable to connect to 198.18.1.1:80 Connection refused").is_none());
}
