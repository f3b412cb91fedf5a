//! Helpers for the packet-forwarding (DSR / FullNAT) integration tests: backend
//! servers (python's http.server, iperf3), DSR backend setup, tcpdump captures,
//! iperf3 runs, and reading the forwarding part of the stats file.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::{describe, wait_for, wait_until, Dataplane, Guarded, Topology, Value, PYTHON};

/// The FullNAT source address the forwarding tests configure.
pub const SNAT_IP: &str = "198.18.0.3";

// ---------------------------------------------------------------------------- backends

/// DSR on a backend: the VIP on its loopback, and no ARP answers or announcements
/// for it on eth0 (so only the dataplane answers ARP for the VIP).
pub fn dsr_backend(topo: &Topology, leaf: &str, vip: &str) {
    topo.exec_ok(
        leaf,
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
    );
    topo.exec_ok(
        leaf,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
        ],
    );
}

/// True when something in `leaf` listens on `addr:port` (`proto` "tcp" or "udp").
pub fn listening(topo: &Topology, leaf: &str, proto: &str, addr: &str, port: u16) -> bool {
    let flag = if proto == "udp" { "-Hlun" } else { "-Hltn" };
    let out = topo.exec(leaf, &["ss", flag]);
    let want = format!("{addr}:{port}");
    let any = format!("0.0.0.0:{port}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .any(|local| local == want || local == any || local == format!("*:{port}"))
}

/// `python3 -m http.server` in `leaf` bound to `bind:port`, serving an index page whose
/// body is `backend=<leaf>`. Waits until the page is served locally.
pub fn http_server(topo: &Topology, leaf: &str, bind: &str, port: u16) -> Guarded {
    let dir = topo.dir().join(format!("www-{leaf}-{port}"));
    fs::create_dir_all(&dir).expect("create www dir");
    fs::write(dir.join("index.html"), format!("backend={leaf}")).expect("write index.html");
    let port_s = port.to_string();
    let g = topo.spawn(
        leaf,
        &[
            PYTHON,
            "-m",
            "http.server",
            &port_s,
            "--bind",
            bind,
            "--directory",
            dir.to_str().unwrap(),
        ],
    );
    let url = format!("http://{bind}:{port}/");
    let want = format!("backend={leaf}");
    wait_for(
        Duration::from_secs(15),
        &format!("http.server in {leaf} on {bind}:{port}"),
        || {
            let out = topo.exec_timeout(
                leaf,
                &["curl", "-sS", "--max-time", "2", &url],
                Duration::from_secs(5),
            );
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && body == want {
                Ok(())
            } else {
                Err(format!(
                    "curl {url}: {}\nserver log: {}",
                    describe(&out),
                    g.output()
                ))
            }
        },
    );
    g
}

/// `iperf3 -s -B bind` in `leaf` (port 5201); waits until it listens.
pub fn iperf3_server(topo: &Topology, leaf: &str, bind: &str) -> Guarded {
    let g = topo.spawn(leaf, &["iperf3", "-s", "-B", bind, "-p", "5201"]);
    wait_until(
        Duration::from_secs(10),
        &format!("iperf3 -s in {leaf} on {bind}:5201"),
        || listening(topo, leaf, "tcp", bind, 5201),
    );
    g
}

// ---------------------------------------------------------------------------- HTTP

/// `n` HTTP GETs from P-cli to `url_base` (e.g. `http://198.18.1.2:80/`), one curl
/// process, a new connection each (python's http.server speaks HTTP/1.0). Returns per
/// request `(http_code, body)`.
pub fn http_gets(topo: &Topology, url_base: &str, n: usize) -> Vec<(String, String)> {
    let url = format!("{url_base}?req=[1-{n}]");
    let out = topo.exec_timeout(
        "cli",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--retry",
            "0",
            "-w",
            " code=%{http_code}\n",
            &url,
        ],
        Duration::from_secs(60 + 5 * n as u64 / 10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let res: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| {
            let (body, code) = l.rsplit_once(" code=")?;
            Some((code.trim().to_string(), body.trim().to_string()))
        })
        .collect();
    if res.len() != n || res.iter().any(|(c, _)| c != "200") {
        let bad: Vec<_> = res
            .iter()
            .enumerate()
            .filter(|(_, (c, _))| c != "200")
            .take(10)
            .collect();
        panic!(
            "{n} GETs to {url_base}: {} results, failures (first 10): {bad:?}\n{}",
            res.len(),
            describe(&out)
        );
    }
    res
}

/// How many responses each backend body (`backend=be1`, ...) served.
pub fn served_by(res: &[(String, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (_, body) in res {
        *m.entry(body.clone()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------- iperf3

/// One iperf3 client run from P-cli (`-J`); panics with its output unless it succeeds.
pub fn iperf3(topo: &Topology, target: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "iperf3",
        "-c",
        target,
        "-p",
        "5201",
        "-J",
        "--connect-timeout",
        "5000",
    ];
    args.extend_from_slice(extra);
    let out = topo.exec_timeout("cli", &args, Duration::from_secs(40));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() || v.get("error").is_some() || v.get("end").is_none() {
        panic!("iperf3 {} failed: {}", args.join(" "), describe(&out));
    }
    v
}

/// Bytes the receiver got and its rate, from an iperf3 TCP result.
pub fn iperf3_tcp_received(v: &Value) -> (u64, f64) {
    let s = &v["end"]["sum_received"];
    (
        s["bytes"].as_u64().unwrap_or(0),
        s["bits_per_second"].as_f64().unwrap_or(0.0),
    )
}

/// `(bytes, bits/s, lost %, packets)` of an iperf3 UDP result, as the server saw it
/// (`end.sum_received` in iperf 3.12+, else `end.sum`).
pub fn iperf3_udp(v: &Value) -> (u64, f64, f64, u64) {
    let s = if v["end"]["sum_received"].is_object() {
        &v["end"]["sum_received"]
    } else {
        &v["end"]["sum"]
    };
    (
        s["bytes"].as_u64().unwrap_or(0),
        s["bits_per_second"].as_f64().unwrap_or(0.0),
        s["lost_percent"].as_f64().unwrap_or(f64::NAN),
        s["packets"].as_u64().unwrap_or(0),
    )
}

// ---------------------------------------------------------------------------- captures

/// A bounded tcpdump in a namespace (`-c count`, killed on drop).
pub struct Capture {
    pub leaf: String,
    pub proc: Guarded,
}

impl Capture {
    /// Start `tcpdump -i eth0 -n -l -c count <filter>` in `leaf`; waits until it listens.
    pub fn start(topo: &Topology, leaf: &str, filter: &str, count: u32) -> Capture {
        let c = count.to_string();
        let mut args = vec!["tcpdump", "-i", "eth0", "-n", "-l", "-p", "-c", &c];
        args.extend(filter.split_whitespace());
        let proc = topo.spawn(leaf, &args);
        let cap = Capture {
            leaf: leaf.to_string(),
            proc,
        };
        wait_until(
            Duration::from_secs(10),
            &format!("tcpdump in {leaf} to listen"),
            || cap.proc.output().contains("listening on"),
        );
        cap
    }

    /// `(source address, destination address)` of each captured IPv4 packet.
    pub fn packets(&self) -> Vec<(String, String)> {
        self.proc
            .output()
            .lines()
            .filter_map(|l| {
                let rest = l.split_once(" IP ")?.1;
                let mut w = rest.split_whitespace();
                let src = w.next()?;
                if w.next()? != ">" {
                    return None;
                }
                let dst = w.next()?.trim_end_matches(':');
                Some((strip_port(src), strip_port(dst)))
            })
            .collect()
    }

    /// Stop (if still running) and return the packets.
    pub fn finish(mut self) -> Vec<(String, String)> {
        // Give a running capture a moment to print what it has (line-buffered, -l).
        let _ = self.proc.wait_timeout(Duration::from_millis(300));
        self.proc.kill();
        self.packets()
    }
}

/// `198.18.0.10.45678` -> `198.18.0.10` (tcpdump prints ports as a 5th component).
fn strip_port(s: &str) -> String {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() == 5 {
        parts[..4].join(".")
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------- stats

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The stats file after it has been rewritten twice from now: every lcore has then
/// published counters taken after everything the caller did before this call.
pub fn fresh_stats(dp: &Dataplane) -> Value {
    let path = dp.stats_path().to_path_buf();
    for _ in 0..2 {
        let before = mtime(&path);
        wait_until(
            Duration::from_secs(10),
            "the stats file to be rewritten",
            || {
                let now = mtime(&path);
                now.is_some() && now != before
            },
        );
    }
    dp.stats()
}

/// The forwarding VIP `address:port/proto` in the stats (panics if absent).
pub fn fwd_vip<'a>(stats: &'a Value, address: &str, port: u16, proto: &str) -> &'a Value {
    stats["vips"]
        .as_array()
        .and_then(|vs| {
            vs.iter().find(|v| {
                v["address"].as_str() == Some(address)
                    && v["port"].as_u64() == Some(u64::from(port))
                    && v["proto"].as_str() == Some(proto)
            })
        })
        .unwrap_or_else(|| panic!("no VIP {address}:{port}/{proto} in stats: {stats}"))
}

/// A VIP's counter (`packets`, `bytes`, `new_flows`).
pub fn vip_counter(stats: &Value, address: &str, port: u16, proto: &str, field: &str) -> u64 {
    fwd_vip(stats, address, port, proto)[field]
        .as_u64()
        .unwrap_or(0)
}

/// Per backend of a VIP: `(address, packets, bytes, new_flows)`.
pub fn vip_backends(
    stats: &Value,
    address: &str,
    port: u16,
    proto: &str,
) -> Vec<(String, u64, u64, u64)> {
    fwd_vip(stats, address, port, proto)["backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap_or("?").to_string(),
                        b["packets"].as_u64().unwrap_or(0),
                        b["bytes"].as_u64().unwrap_or(0),
                        b["new_flows"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `forward.drops.<reason>` (0 when absent).
pub fn forward_drop(stats: &Value, reason: &str) -> u64 {
    stats["forward"]["drops"][reason].as_u64().unwrap_or(0)
}

/// `forward.<field>` (0 when absent).
pub fn forward_counter(stats: &Value, field: &str) -> u64 {
    stats["forward"][field].as_u64().unwrap_or(0)
}

/// Non-zero forwarder drops, `name=N ...`.
pub fn format_forward_drops(stats: &Value) -> String {
    stats["forward"]["drops"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Which backend leaf (`be1`..`be3`) has an address.
pub fn leaf_of(addr: &str) -> Option<&'static str> {
    crate::BACKEND_IPS
        .iter()
        .position(|b| *b == addr)
        .map(|i| crate::LEAVES[i + 1])
}

// ---------------------------------------------------------------------------- crafted frames

/// A scapy script (run in P-cli) that sends crafted frames to the dataplane's MAC:
/// `craft.py MAC KIND COUNT DST_IP DPORT`; kinds: `ttl1` (TCP SYN, TTL 1), `frag_first`
/// (UDP, MF set), `frag_later` (UDP payload, offset 64 bytes), `bad_csum` (TCP SYN,
/// wrong IPv4 header checksum). Prints `sent KIND N`.
pub const CRAFT_PY: &str = r#"
import sys, time
from scapy.all import Ether, IP, TCP, UDP, Raw, sendp, get_if_hwaddr
mac, kind, count, dst, dport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
src = "198.18.0.10"
me = get_if_hwaddr("eth0")
frames = []
for i in range(count):
    sport = 40000 + i
    if kind == "ttl1":
        p = IP(src=src, dst=dst, ttl=1) / TCP(sport=sport, dport=dport, flags="S", seq=1000 + i)
    elif kind == "frag_first":
        p = IP(src=src, dst=dst, flags="MF", frag=0, id=100 + i) / UDP(sport=sport, dport=dport) / Raw(b"x" * 64)
    elif kind == "frag_later":
        p = IP(src=src, dst=dst, frag=8, proto=17, id=200 + i) / Raw(b"y" * 64)
    elif kind == "bad_csum":
        good = IP(bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=2000 + i)))
        p = good.copy()
        p.chksum = good.chksum ^ 0x5a5a
    else:
        sys.exit("unknown kind " + kind)
    frames.append(Ether(src=me, dst=mac) / p)
sendp(frames, iface="eth0", inter=0.01, verbose=False)
print("sent", kind, len(frames))
"#;

/// Send `count` crafted frames of `kind` (see [`CRAFT_PY`]) from P-cli.
pub fn craft(topo: &Topology, mac: &str, kind: &str, count: u32, dst: &str, dport: u16) {
    let script = topo.dir().join("craft.py");
    if !script.exists() {
        fs::write(&script, CRAFT_PY).expect("write craft.py");
    }
    let out = topo.exec(
        "cli",
        &[
            PYTHON,
            script.to_str().unwrap(),
            mac,
            kind,
            &count.to_string(),
            dst,
            &dport.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "craft.py {kind} failed: {}",
        describe(&out)
    );
}

/// A 3-second iperf3 TCP download (`-R`) from `vip`:5201 to the client, with
/// what the dataplane counted meanwhile.
pub struct Download {
    /// iperf3's JSON result.
    pub result: Value,
    /// Bytes the client received, and its rate.
    pub rx_bytes: u64,
    pub bps: f64,
    /// The VIP's bytes and packets (both directions for FullNAT).
    pub vip_bytes: u64,
    pub vip_pkts: u64,
    /// The dataplane port's bytes each way (summed over lcores).
    pub dp_rx: u64,
    pub dp_tx: u64,
}

pub fn download_through(topo: &Topology, dp: &Dataplane, vip: &str) -> Download {
    let before = fresh_stats(dp);
    let result = iperf3(topo, vip, &["-t", "3", "-R"]);
    let (rx_bytes, bps) = iperf3_tcp_received(&result);
    let after = fresh_stats(dp);
    let delta = |field| vip_counter(&after, vip, 5201, "tcp", field) - vip_counter(&before, vip, 5201, "tcp", field);
    let port = |field| crate::lcore_sum(&after, field) - crate::lcore_sum(&before, field);
    Download {
        vip_bytes: delta("bytes"),
        vip_pkts: delta("packets"),
        dp_rx: port("rx_bytes"),
        dp_tx: port("tx_bytes"),
        result,
        rx_bytes,
        bps,
    }
}

/// HTTP through a VIP: `n` GETs all succeed and several backends serve them.
pub fn http_check(topo: &Topology, dp: &Dataplane, vip_addr: &str, n: usize) {
    let res = http_gets(topo, &format!("http://{vip_addr}:80/"), n);
    let by = served_by(&res);
    eprintln!("HTTP via {vip_addr}: {n} GETs, all 200; served by {by:?}");
    assert!(
        by.len() >= 2,
        "{n} GETs with affinity \"flow\" all served by one backend: {by:?}"
    );
    for body in by.keys() {
        assert!(
            ["be1", "be2", "be3"].iter().any(|b| *body == format!("backend={b}")),
            "unexpected body {body:?}"
        );
    }
    // The stats agree: every backend that answered has forwarded packets.
    dp.wait_stats(Duration::from_secs(10), "HTTP VIP stats to show the flows", |s| {
        let flows = vip_counter(s, vip_addr, 80, "tcp", "new_flows");
        let bs = vip_backends(s, vip_addr, 80, "tcp");
        let missing: Vec<&String> = by
            .keys()
            .filter(|body| {
                let leaf = body.trim_start_matches("backend=");
                !bs.iter().any(|(a, p, _, _)| leaf_of(a) == Some(leaf) && *p > 0)
            })
            .collect();
        if flows >= n as u64 && missing.is_empty() {
            eprintln!("HTTP VIP {vip_addr}:80 new_flows={flows}, backends (addr, packets, bytes, flows): {bs:?}");
            Ok(())
        } else {
            Err(format!("new_flows {flows} (want >= {n}); backends without packets: {missing:?}; {bs:?}"))
        }
    });
}
