//! Prometheus text exposition (format 0.0.4) at `/metrics`. This module
//! knows only its [`View`]: whoever serves it passes a function that builds
//! one (the daemon, from its state and counters).

use crate::checks::Status;
use crate::publish::{BackendCounters, VipCounters};
use std::fmt::Write as _;
use crate::inputs::{
    head_end, is_timeout, read_request, Inputs, ReadError, MAX_CLIENTS, MAX_REQUEST, PROMETHEUS_DEADLINE,
};
use crate::proto::{ClientCounters, ClientsStatus, LcoreStats};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend: its address, counters, whether it is published Up, its health.
#[derive(Debug, Clone, Default)]
pub struct BackendView {
    pub addr: Option<SocketAddrV4>,
    pub counters: BackendCounters,
    pub up: bool,
    pub health: Option<Status>,
}

/// A VIP: its name (`addr:port`, `addr:port/udp`), mode, counters, backends.
#[derive(Debug, Clone)]
pub struct VipView {
    pub name: String,
    /// `proxy`, `dsr`, `fullnat` or `tunnel`.
    pub mode: &'static str,
    pub forwarding: bool,
    pub counters: VipCounters,
    pub backends: Vec<BackendView>,
    /// In panic (passive ejection held back); `None`: the VIP has no checks.
    pub panic: Option<bool>,
    /// Proxy VIPs in flood mode: when the control plane first saw it on
    /// (Unix seconds, precise to the counter read interval).
    pub flood_since_unix: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct View {
    pub vips: Vec<VipView>,
    pub dataplane_up: bool,
    pub generation: u64,
    /// The installed tables' digests the dataplane reported.
    pub tables: Vec<VipTableView>,
    /// BGP announcement; `None` without `[bgp]` (no series).
    pub bgp: Option<BgpView>,
    /// Each dataplane lcore's own counters (none before a dataplane ran).
    pub lcores: Vec<LcoreStats>,
}

/// A VIP's installed Maglev table as the dataplane reported it: its digest
/// (16 hex digits) and the generation it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipTableView {
    pub vip: String,
    pub digest: String,
    pub generation: u64,
}

/// BGP announcement: the session, `birdc configure` failures, each VIP's
/// address announced or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpView {
    pub session_up: bool,
    pub configure_failures: u64,
    /// VIP name, announced.
    pub vips: Vec<(String, bool)>,
}

/// The BGP series (with `[bgp]` only).
pub fn render_bgp(o: &mut String, b: &BgpView) {
    head(
        o,
        "fulcrum_bgp_session_up",
        "gauge",
        "1 while BIRD's BGP session to the router is Established.",
    );
    let _ = writeln!(o, "fulcrum_bgp_session_up {}", u8::from(b.session_up));
    head(
        o,
        "fulcrum_bgp_configure_failures_total",
        "counter",
        "birdc configure runs that failed (each retried).",
    );
    let _ = writeln!(
        o,
        "fulcrum_bgp_configure_failures_total {}",
        b.configure_failures
    );
    head(
        o,
        "fulcrum_vip_announced",
        "gauge",
        "1 while the VIP's address is announced over BGP by this instance.",
    );
    for (vip, on) in &b.vips {
        let _ = writeln!(
            o,
            "fulcrum_vip_announced{{vip=\"{vip}\"}} {}",
            u8::from(*on)
        );
    }
}

/// What the endpoint shows, built afresh for every scrape.
pub type ViewFn = Arc<dyn Fn() -> View + Send + Sync>;

/// Serves `GET /metrics` on `listener`, each connection on a thread of its
/// own, at most [`MAX_CLIENTS`] at once (beyond: `503` without a thread).
/// A connection has [`PROMETHEUS_DEADLINE`] for its request head (at most
/// [`MAX_REQUEST`] bytes, else `431`) and the answer. The daemon is only
/// involved through `view` (called once the request is read); this thread
/// never blocks it.
pub fn serve(listener: TcpListener, view: ViewFn, inputs: Arc<Inputs>) {
    let ep = inputs.prometheus.clone();
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let Some(slot) = ep.enter(MAX_CLIENTS) else {
            ep.refused();
            let _ = s.set_nonblocking(true);
            let _ = (&s).write_all(&response("503 Service Unavailable", "text/plain", "too many clients\n"));
            continue;
        };
        let view = view.clone();
        let inputs = inputs.clone();
        let spawned = std::thread::Builder::new().name("metrics".into()).spawn(move || {
            answer(s, &*view, &inputs);
            drop(slot);
        });
        if spawned.is_err() {
            ep.refused();
        }
    }
}

fn response(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `bytes` within `deadline` (false if the client did not take them
/// in time).
fn send(s: &TcpStream, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_write_timeout(Some(left))?;
    let mut w = s;
    w.write_all(bytes)?;
    w.flush()
}

/// An error answer, then the rest of what the client sends is read and
/// dropped (bounded: 1 MiB, 1 s) so that it reads the answer rather than a
/// reset.
fn refuse(s: &TcpStream, status: &str, body: &str, deadline: Instant) {
    if send(s, &response(status, "text/plain", body), deadline).is_err() {
        return;
    }
    let _ = s.shutdown(Shutdown::Write);
    let end = deadline.min(Instant::now() + Duration::from_secs(1));
    let mut sink = [0u8; 8192];
    let mut left = 1usize << 20;
    while left > 0 {
        let now = Instant::now();
        if now >= end || s.set_read_timeout(Some(end - now)).is_err() {
            return;
        }
        match (&mut &*s).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn answer(s: TcpStream, view: &(dyn Fn() -> View + Send + Sync), inputs: &Inputs) {
    let ep = &inputs.prometheus;
    let deadline = Instant::now() + PROMETHEUS_DEADLINE;
    let mut buf = Vec::with_capacity(MAX_REQUEST + 1);
    let n = match read_request(&mut &s, &mut buf, head_end, deadline) {
        Ok(n) => n,
        Err(ReadError::TooLong) => {
            ep.oversize();
            let body = format!("request head longer than {MAX_REQUEST} bytes\n");
            refuse(&s, "431 Request Header Fields Too Large", &body, deadline);
            return;
        }
        Err(ReadError::TimedOut) => {
            ep.timed_out();
            let body = format!("no complete request within {} s\n", PROMETHEUS_DEADLINE.as_secs());
            let _ = send(&s, &response("408 Request Timeout", "text/plain", &body), Instant::now() + Duration::from_millis(100));
            return;
        }
        Err(ReadError::Closed | ReadError::Io(_)) => return,
    };
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(_method), Some(path), Some(version)) = (words.next(), words.next(), words.next()) else {
        refuse(&s, "400 Bad Request", "not an HTTP request\n", deadline);
        return;
    };
    if !version.starts_with("HTTP/") {
        refuse(&s, "400 Bad Request", "not an HTTP request\n", deadline);
        return;
    }
    let bytes = if path == "/metrics" || path.starts_with("/metrics?") {
        let mut body = render(&view());
        render_clients(&mut body, &inputs.snapshot());
        response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body)
    } else {
        response("404 Not Found", "text/plain", "see /metrics\n")
    };
    if let Err(e) = send(&s, &bytes, deadline) {
        if is_timeout(&e) {
            ep.timed_out();
        }
    }
}

/// The control socket's and this endpoint's client counters.
pub fn render_clients(o: &mut String, c: &ClientsStatus) {
    let each = |o: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&ClientCounters) -> u64| {
        head(o, name, kind, help);
        for (endpoint, x) in [("control", &c.control), ("prometheus", &c.prometheus)] {
            let _ = writeln!(o, "{name}{{endpoint=\"{endpoint}\"}} {}", f(x));
        }
    };
    each(o, "fulcrum_controlplane_clients", "gauge", "Connections served now (control socket, Prometheus endpoint).", &|x| x.active);
    each(o, "fulcrum_controlplane_clients_max", "gauge", "Connections served at once at most; more are refused.", &|x| x.max);
    each(
        o,
        "fulcrum_controlplane_refused_connections_total",
        "counter",
        "Connections refused because every client slot was taken.",
        &|x| x.refused,
    );
    each(
        o,
        "fulcrum_controlplane_oversize_requests_total",
        "counter",
        "Requests refused for being longer than 64 KiB (connection closed).",
        &|x| x.oversize,
    );
    each(
        o,
        "fulcrum_controlplane_timed_out_clients_total",
        "counter",
        "Connections closed for missing their deadline (request not complete, or answer not taken, in time).",
        &|x| x.timed_out,
    );
}

/// A per-VIP series: name, type, help, the value of a VIP.
type Series<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&VipView) -> String);

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(v: &View) -> String {
    let mut o = String::new();
    head(&mut o, "fulcrum_dataplane_up", "gauge", "1 when the dataplane's heartbeat is fresh.");
    let _ = writeln!(o, "fulcrum_dataplane_up {}", u8::from(v.dataplane_up));
    render_lcores(&mut o, &v.lcores);
    head(&mut o, "fulcrum_config_generation", "gauge", "Configuration generation last published.");
    let _ = writeln!(o, "fulcrum_config_generation {}", v.generation);

    let proxy = || v.vips.iter().filter(|x| !x.forwarding);
    let fwd = || v.vips.iter().filter(|x| x.forwarding);
    // Forwarding VIPs' series carry a `mode` label; proxy VIPs' keep the
    // label set they always had (`vip`). `fulcrum_vip_info` gives every
    // VIP's mode for joins.
    let vip = |x: &VipView| {
        if x.forwarding {
            format!("vip=\"{}\",mode=\"{}\"", x.name, x.mode)
        } else {
            format!("vip=\"{}\"", x.name)
        }
    };

    head(&mut o, "fulcrum_vip_info", "gauge", "1 for every configured VIP, labelled with its mode.");
    for x in &v.vips {
        let _ = writeln!(o, "fulcrum_vip_info{{vip=\"{}\",mode=\"{}\"}} 1", x.name, x.mode);
    }

    head(&mut o, "fulcrum_vip_connections_active", "gauge", "Connections open on the (proxy) VIP.");
    for x in proxy() {
        let _ = writeln!(o, "fulcrum_vip_connections_active{{{}}} {}", vip(x), x.counters.connections_active);
    }
    head(&mut o, "fulcrum_vip_connections_total", "counter", "Connections accepted by the (proxy) VIP.");
    for x in proxy() {
        let _ = writeln!(o, "fulcrum_vip_connections_total{{{}}} {}", vip(x), x.counters.connections_total);
    }
    head(&mut o, "fulcrum_vip_flows_total", "counter", "New flows of the (forwarding) VIP.");
    for x in fwd() {
        let _ = writeln!(o, "fulcrum_vip_flows_total{{{}}} {}", vip(x), x.counters.connections_total);
    }
    head(&mut o, "fulcrum_vip_packets_total", "counter", "Packets received by the (forwarding) VIP.");
    for x in fwd() {
        let _ = writeln!(o, "fulcrum_vip_packets_total{{{}}} {}", vip(x), x.counters.packets_in);
    }
    head(&mut o, "fulcrum_vip_bytes_total", "counter", "Bytes through the VIP; in = from clients, out = to clients (proxy).");
    for x in v.vips.iter() {
        let _ = writeln!(o, "fulcrum_vip_bytes_total{{{},direction=\"in\"}} {}", vip(x), x.counters.bytes_in);
        if !x.forwarding {
            let _ = writeln!(o, "fulcrum_vip_bytes_total{{{},direction=\"out\"}} {}", vip(x), x.counters.bytes_out);
        }
    }
    head(&mut o, "fulcrum_vip_drops_total", "counter", "Connections (proxy) or packets (forward) of the VIP dropped, by reason.");
    for x in v.vips.iter() {
        for (reason, n) in &x.counters.drops {
            let _ = writeln!(o, "fulcrum_vip_drops_total{{{},reason=\"{reason}\"}} {n}", vip(x));
        }
    }
    // The proxy's SYN-flood defence.
    let syn: [Series<'_>; 8] = [
        ("fulcrum_vip_syns_total", "counter", "SYNs to the (proxy) VIP that reached admission or a SYN cookie.", &|x| {
            x.counters.syns.to_string()
        }),
        ("fulcrum_vip_syncookies_sent_total", "counter", "SYNs answered with a SYN cookie (flood mode).", &|x| {
            x.counters.cookies_sent.to_string()
        }),
        (
            "fulcrum_vip_syncookies_validated_total",
            "counter",
            "ACKs whose SYN cookie validated and became a connection.",
            &|x| x.counters.cookies_validated.to_string(),
        ),
        (
            "fulcrum_vip_syncookies_rejected_total",
            "counter",
            "ACKs for no connection whose SYN cookie did not validate (answered with RST).",
            &|x| x.counters.cookies_rejected.to_string(),
        ),
        ("fulcrum_vip_half_open", "gauge", "Connections whose client has not completed its handshake.", &|x| {
            x.counters.half_open.to_string()
        }),
        (
            "fulcrum_vip_flood_mode",
            "gauge",
            "1 while SYN flood mode (SYNs answered with cookies) is on for the VIP on any lcore.",
            &|x| u8::from(x.counters.flood_lcores > 0).to_string(),
        ),
        ("fulcrum_vip_flood_lcores", "gauge", "Lcores in SYN flood mode for the VIP.", &|x| {
            x.counters.flood_lcores.to_string()
        }),
        (
            "fulcrum_vip_flood_since_seconds",
            "gauge",
            "Unix time the control plane first saw the VIP's SYN flood mode on (precise to its counter reads, about 1 s); 0 when off.",
            &|x| x.flood_since_unix.map_or_else(|| "0".to_owned(), |t| format!("{t:.3}")),
        ),
    ];
    for (name, kind, help, f) in syn {
        head(&mut o, name, kind, help);
        for x in proxy() {
            let _ = writeln!(o, "{name}{{{}}} {}", vip(x), f(x));
        }
    }
    let backends = |o: &mut String, name: &str, forwarding: Option<bool>, f: &dyn Fn(&BackendView) -> String| {
        for x in v.vips.iter().filter(|x| forwarding.is_none_or(|f| f == x.forwarding)) {
            for b in &x.backends {
                let Some(addr) = b.addr else { continue };
                let _ = writeln!(o, "{name}{{vip=\"{}\",backend=\"{addr}\"}} {}", x.name, f(b));
            }
        }
    };
    head(&mut o, "fulcrum_backend_connections_active", "gauge", "Connections open to the backend (proxy).");
    backends(&mut o, "fulcrum_backend_connections_active", Some(false), &|b| b.counters.connections_active.to_string());
    head(&mut o, "fulcrum_backend_connections_total", "counter", "Connections made to the backend (proxy).");
    backends(&mut o, "fulcrum_backend_connections_total", Some(false), &|b| b.counters.connections_total.to_string());
    head(&mut o, "fulcrum_backend_connect_failures_total", "counter", "Failed connection attempts to the backend (proxy).");
    backends(&mut o, "fulcrum_backend_connect_failures_total", Some(false), &|b| b.counters.connect_failures.to_string());
    head(&mut o, "fulcrum_backend_flows_total", "counter", "New flows sent to the backend (forwarding).");
    backends(&mut o, "fulcrum_backend_flows_total", Some(true), &|b| b.counters.connections_total.to_string());
    head(&mut o, "fulcrum_backend_packets_total", "counter", "Packets sent to the backend (forwarding).");
    backends(&mut o, "fulcrum_backend_packets_total", Some(true), &|b| b.counters.packets.to_string());
    head(&mut o, "fulcrum_backend_bytes_total", "counter", "Bytes sent to the backend (forwarding).");
    backends(&mut o, "fulcrum_backend_bytes_total", Some(true), &|b| b.counters.bytes_to.to_string());
    head(&mut o, "fulcrum_backend_up", "gauge", "1 when the backend is published Up (not down, not drained).");
    backends(&mut o, "fulcrum_backend_up", None, &|b| u8::from(b.up).to_string());
    head(
        &mut o,
        "fulcrum_vip_health_panic",
        "gauge",
        "1 while the VIP's panic threshold holds passive ejections back (VIPs with health checks).",
    );
    for x in &v.vips {
        if let Some(p) = x.panic {
            let _ = writeln!(o, "fulcrum_vip_health_panic{{vip=\"{}\"}} {}", x.name, u8::from(p));
        }
    }
    head(
        &mut o,
        "fulcrum_backend_ejections_skipped_total",
        "counter",
        "Passive ejections of the backend held back by the VIP's panic threshold.",
    );
    for x in &v.vips {
        for b in &x.backends {
            let (Some(addr), Some(h)) = (b.addr, &b.health) else { continue };
            let _ = writeln!(
                o,
                "fulcrum_backend_ejections_skipped_total{{vip=\"{}\",backend=\"{addr}\"}} {}",
                x.name, h.ejections_skipped
            );
        }
    }
    head(&mut o, "fulcrum_backend_health_check_duration_seconds", "summary", "Health check latency.");
    for x in &v.vips {
        for b in &x.backends {
            let (Some(addr), Some(h)) = (b.addr, &b.health) else { continue };
            for (q, val) in [("0.5", h.latency_p50_ms), ("0.99", h.latency_p99_ms)] {
                if let Some(ms) = val {
                    let _ = writeln!(
                        o,
                        "fulcrum_backend_health_check_duration_seconds{{vip=\"{}\",backend=\"{addr}\",quantile=\"{q}\"}} {}",
                        x.name,
                        ms / 1000.0
                    );
                }
            }
        }
    }
    render_tables(&mut o, &v.tables);
    if let Some(b) = &v.bgp {
        render_bgp(&mut o, b);
    }
    o
}

/// Each dataplane lcore's traffic, load and drops by reason (every reason
/// the dataplane declared, zero or not, so the series exist before the first
/// drop). They count since the running dataplane started.
fn render_lcores(o: &mut String, lcores: &[LcoreStats]) {
    head(
        o,
        "fulcrum_dataplane_drops_total",
        "counter",
        "Frames the dataplane lcore dropped, by reason (frame parsing and the lcore's own: tx_full, rx_ring_full, ...).",
    );
    for l in lcores {
        for (reason, n) in &l.drops {
            let _ = writeln!(o, "fulcrum_dataplane_drops_total{{lcore=\"{}\",reason=\"{reason}\"}} {n}", l.lcore);
        }
    }
    head(o, "fulcrum_dataplane_forward_drops_total", "counter", "Packets the lcore's forwarder dropped, by reason.");
    for l in lcores {
        for (reason, n) in &l.forward_drops {
            let _ = writeln!(o, "fulcrum_dataplane_forward_drops_total{{lcore=\"{}\",reason=\"{reason}\"}} {n}", l.lcore);
        }
    }
    head(o, "fulcrum_dataplane_packets_total", "counter", "Frames the dataplane lcore received (rx) and sent (tx).");
    for l in lcores {
        for (direction, n) in [("rx", l.rx_packets), ("tx", l.tx_packets)] {
            let _ = writeln!(o, "fulcrum_dataplane_packets_total{{lcore=\"{}\",direction=\"{direction}\"}} {n}", l.lcore);
        }
    }
    head(o, "fulcrum_dataplane_bytes_total", "counter", "Bytes the dataplane lcore received (rx) and sent (tx).");
    for l in lcores {
        for (direction, n) in [("rx", l.rx_bytes), ("tx", l.tx_bytes)] {
            let _ = writeln!(o, "fulcrum_dataplane_bytes_total{{lcore=\"{}\",direction=\"{direction}\"}} {n}", l.lcore);
        }
    }
    head(
        o,
        "fulcrum_dataplane_busy_seconds_total",
        "counter",
        "Seconds the dataplane lcore spent in loop iterations that had work (its load; it busy-polls).",
    );
    for l in lcores {
        let _ = writeln!(o, "fulcrum_dataplane_busy_seconds_total{{lcore=\"{}\"}} {}", l.lcore, l.busy_ns as f64 / 1e9);
    }
    head(
        o,
        "fulcrum_dataplane_rx_ring_frames_total",
        "counter",
        "af_packet: frames the kernel offered to the lcore's RX ring, delivered or dropped as rx_ring_full (0 on other devices).",
    );
    for l in lcores {
        let _ = writeln!(o, "fulcrum_dataplane_rx_ring_frames_total{{lcore=\"{}\"}} {}", l.lcore, l.rx_ring_frames);
    }
}

/// `fulcrum_vip_table_info`: the digest of each VIP's installed Maglev table
/// as a label (a 64-bit digest does not fit a float sample), with the
/// generation it belongs to. Equal digests on two instances: same table.
fn render_tables(o: &mut String, tables: &[VipTableView]) {
    head(
        o,
        "fulcrum_vip_table_info",
        "gauge",
        "1 for every VIP whose installed Maglev table the dataplane reported, labelled with the table's digest (slot -> backend address:port) and the generation it belongs to.",
    );
    for t in tables {
        let _ = writeln!(
            o,
            "fulcrum_vip_table_info{{vip=\"{}\",digest=\"{}\",generation=\"{}\"}} 1",
            t.vip, t.digest, t.generation
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_vips_have_packet_flow_and_drop_series() {
        let mut c = VipCounters { connections_total: 3, packets_in: 10, bytes_in: 1500, ..Default::default() };
        c.drops.insert("forward".into(), 2);
        let b = BackendView {
            addr: Some("198.18.0.21:0".parse().unwrap()),
            counters: BackendCounters { connections_total: 3, packets: 10, bytes_to: 1500, ..Default::default() },
            up: true,
            health: None,
        };
        let v = View {
            vips: vec![VipView {
                name: "198.18.1.2:0/udp".into(),
                mode: "dsr",
                forwarding: true,
                counters: c,
                backends: vec![b],
                panic: None,
                flood_since_unix: None,
            }],
            dataplane_up: true,
            generation: 4,
            tables: vec![],
            bgp: None,
            lcores: vec![],
        };
        let text = render(&v);
        for line in [
            "fulcrum_vip_packets_total{vip=\"198.18.1.2:0/udp\",mode=\"dsr\"} 10\n",
            "fulcrum_vip_flows_total{vip=\"198.18.1.2:0/udp\",mode=\"dsr\"} 3\n",
            "fulcrum_vip_bytes_total{vip=\"198.18.1.2:0/udp\",mode=\"dsr\",direction=\"in\"} 1500\n",
            "fulcrum_vip_drops_total{vip=\"198.18.1.2:0/udp\",mode=\"dsr\",reason=\"forward\"} 2\n",
            "fulcrum_backend_packets_total{vip=\"198.18.1.2:0/udp\",backend=\"198.18.0.21:0\"} 10\n",
            "fulcrum_backend_flows_total{vip=\"198.18.1.2:0/udp\",backend=\"198.18.0.21:0\"} 3\n",
            "fulcrum_backend_up{vip=\"198.18.1.2:0/udp\",backend=\"198.18.0.21:0\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("fulcrum_vip_connections_active{"), "{text}");
        assert!(!text.contains("fulcrum_vip_syns_total{"), "SYN series are the proxy's: {text}");
        assert!(!text.contains("fulcrum_vip_health_panic{"), "no checks, no panic series: {text}");
        assert!(!text.contains("direction=\"out\""), "{text}");
    }

    #[test]
    fn panic_series() {
        let health = Status {
            slot: 0,
            state: crate::checks::HealthState::Up,
            since_secs: None,
            last_error: None,
            latency_last_ms: None,
            latency_p50_ms: None,
            latency_p99_ms: None,
            ejections_skipped: 4,
        };
        let b = BackendView { addr: Some("198.18.0.22:8080".parse().unwrap()), up: true, health: Some(health), ..Default::default() };
        let vip = |name: &str, panic| VipView {
            name: name.into(),
            mode: "proxy",
            forwarding: false,
            counters: VipCounters::default(),
            backends: vec![b.clone()],
            panic,
            flood_since_unix: None,
        };
        let v = View {
            vips: vec![vip("198.18.1.1:80", Some(true)), vip("198.18.1.3:80", Some(false))],
            dataplane_up: true,
            generation: 1,
            tables: vec![],
            bgp: None,
            lcores: vec![],
        };
        let text = render(&v);
        for line in [
            "# TYPE fulcrum_vip_health_panic gauge\n",
            "fulcrum_vip_health_panic{vip=\"198.18.1.1:80\"} 1\n",
            "fulcrum_vip_health_panic{vip=\"198.18.1.3:80\"} 0\n",
            "# TYPE fulcrum_backend_ejections_skipped_total counter\n",
            "fulcrum_backend_ejections_skipped_total{vip=\"198.18.1.1:80\",backend=\"198.18.0.22:8080\"} 4\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn syn_flood_series() {
        let proxy = |name: &str, lcores: u64, since: Option<f64>| {
            let mut c = VipCounters {
                syns: 812_345,
                cookies_sent: 800_000,
                cookies_validated: 1000,
                cookies_rejected: 12,
                half_open: 128,
                flood_lcores: lcores,
                ..Default::default()
            };
            c.drops.insert("half_open_timeout".into(), 9);
            VipView {
                name: name.into(),
                mode: "proxy",
                forwarding: false,
                counters: c,
                backends: vec![],
                panic: None,
                flood_since_unix: since,
            }
        };
        let v = View {
            vips: vec![proxy("198.18.1.1:80", 2, Some(1_700_000_000.25)), proxy("198.18.1.3:80", 0, None)],
            dataplane_up: true,
            generation: 1,
            tables: vec![],
            bgp: None,
            lcores: vec![],
        };
        let text = render(&v);
        assert_families(&text, &[
            ("fulcrum_vip_syns_total", "counter"),
            ("fulcrum_vip_syncookies_sent_total", "counter"),
            ("fulcrum_vip_syncookies_validated_total", "counter"),
            ("fulcrum_vip_syncookies_rejected_total", "counter"),
            ("fulcrum_vip_half_open", "gauge"),
            ("fulcrum_vip_flood_mode", "gauge"),
            ("fulcrum_vip_flood_lcores", "gauge"),
            ("fulcrum_vip_flood_since_seconds", "gauge"),
        ]);
        for line in [
            "fulcrum_vip_syns_total{vip=\"198.18.1.1:80\"} 812345\n",
            "fulcrum_vip_syncookies_sent_total{vip=\"198.18.1.1:80\"} 800000\n",
            "fulcrum_vip_syncookies_validated_total{vip=\"198.18.1.1:80\"} 1000\n",
            "fulcrum_vip_syncookies_rejected_total{vip=\"198.18.1.1:80\"} 12\n",
            "fulcrum_vip_half_open{vip=\"198.18.1.1:80\"} 128\n",
            "fulcrum_vip_flood_mode{vip=\"198.18.1.1:80\"} 1\n",
            "fulcrum_vip_flood_lcores{vip=\"198.18.1.1:80\"} 2\n",
            "fulcrum_vip_flood_since_seconds{vip=\"198.18.1.1:80\"} 1700000000.250\n",
            "fulcrum_vip_flood_mode{vip=\"198.18.1.3:80\"} 0\n",
            "fulcrum_vip_flood_lcores{vip=\"198.18.1.3:80\"} 0\n",
            "fulcrum_vip_flood_since_seconds{vip=\"198.18.1.3:80\"} 0\n",
            "fulcrum_vip_drops_total{vip=\"198.18.1.1:80\",reason=\"half_open_timeout\"} 9\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    /// Each family `(name, kind)` has its TYPE line and exactly one HELP line.
    fn assert_families(text: &str, families: &[(&str, &str)]) {
        for (name, kind) in families {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "no TYPE of {name} in\n{text}");
            assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1, "{name}");
        }
    }

    #[test]
    fn table_digest_series() {
        let v = View {
            tables: vec![
                VipTableView { vip: "198.18.1.1:80".into(), digest: "e908e9135a20e780".into(), generation: 7 },
                VipTableView { vip: "198.18.1.2:0/udp".into(), digest: "00000000000000ff".into(), generation: 7 },
            ],
            ..Default::default()
        };
        let text = render(&v);
        for line in [
            "# TYPE fulcrum_vip_table_info gauge\n",
            "fulcrum_vip_table_info{vip=\"198.18.1.1:80\",digest=\"e908e9135a20e780\",generation=\"7\"} 1\n",
            "fulcrum_vip_table_info{vip=\"198.18.1.2:0/udp\",digest=\"00000000000000ff\",generation=\"7\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert_eq!(text.matches("# HELP fulcrum_vip_table_info ").count(), 1);
        let empty = render(&View::default());
        assert!(empty.contains("# TYPE fulcrum_vip_table_info gauge\n") && !empty.contains("fulcrum_vip_table_info{"), "{empty}");
    }

    #[test]
    fn dataplane_lcore_series() {
        let lcore = |lcore: u32, ring_full: u64| LcoreStats {
            lcore,
            rx_packets: 1000 + u64::from(lcore),
            rx_bytes: 64_000,
            tx_packets: 990,
            tx_bytes: 63_360,
            busy_ns: 1_500_000_000,
            rx_ring_frames: 1000 + ring_full,
            drops: [("ipv4_bad_checksum".to_owned(), 2), ("rx_ring_full".to_owned(), ring_full), ("tx_full".to_owned(), 0)]
                .into_iter()
                .collect(),
            forward_drops: [("ttl_exceeded".to_owned(), 7)].into_iter().collect(),
        };
        let v = View { lcores: vec![lcore(0, 17), lcore(1, 0)], ..Default::default() };
        let text = render(&v);
        assert_families(&text, &[
            ("fulcrum_dataplane_drops_total", "counter"),
            ("fulcrum_dataplane_forward_drops_total", "counter"),
            ("fulcrum_dataplane_packets_total", "counter"),
            ("fulcrum_dataplane_bytes_total", "counter"),
            ("fulcrum_dataplane_busy_seconds_total", "counter"),
            ("fulcrum_dataplane_rx_ring_frames_total", "counter"),
        ]);
        for line in [
            "fulcrum_dataplane_drops_total{lcore=\"0\",reason=\"rx_ring_full\"} 17\n",
            "fulcrum_dataplane_drops_total{lcore=\"0\",reason=\"ipv4_bad_checksum\"} 2\n",
            "fulcrum_dataplane_drops_total{lcore=\"0\",reason=\"tx_full\"} 0\n",
            "fulcrum_dataplane_drops_total{lcore=\"1\",reason=\"rx_ring_full\"} 0\n",
            "fulcrum_dataplane_forward_drops_total{lcore=\"1\",reason=\"ttl_exceeded\"} 7\n",
            "fulcrum_dataplane_packets_total{lcore=\"0\",direction=\"rx\"} 1000\n",
            "fulcrum_dataplane_packets_total{lcore=\"1\",direction=\"rx\"} 1001\n",
            "fulcrum_dataplane_packets_total{lcore=\"1\",direction=\"tx\"} 990\n",
            "fulcrum_dataplane_bytes_total{lcore=\"0\",direction=\"rx\"} 64000\n",
            "fulcrum_dataplane_bytes_total{lcore=\"0\",direction=\"tx\"} 63360\n",
            "fulcrum_dataplane_busy_seconds_total{lcore=\"1\"} 1.5\n",
            "fulcrum_dataplane_rx_ring_frames_total{lcore=\"0\"} 1017\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        // No dataplane yet: the families are declared, with no samples.
        let empty = render(&View::default());
        assert!(empty.contains("# TYPE fulcrum_dataplane_drops_total counter\n"), "{empty}");
        assert!(!empty.contains("fulcrum_dataplane_drops_total{"), "{empty}");
    }

    #[test]
    fn bgp_series() {
        let mut v = View::default();
        assert!(!render(&v).contains("bgp"), "no [bgp]: no series");
        v.bgp = Some(BgpView {
            session_up: true,
            configure_failures: 3,
            vips: vec![
                ("198.18.1.1:80".into(), true),
                ("198.18.1.2:53/udp".into(), false),
            ],
        });
        let text = render(&v);
        for line in [
            "# TYPE fulcrum_bgp_session_up gauge\n",
            "fulcrum_bgp_session_up 1\n",
            "# TYPE fulcrum_bgp_configure_failures_total counter\n",
            "fulcrum_bgp_configure_failures_total 3\n",
            "# TYPE fulcrum_vip_announced gauge\n",
            "fulcrum_vip_announced{vip=\"198.18.1.1:80\"} 1\n",
            "fulcrum_vip_announced{vip=\"198.18.1.2:53/udp\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
