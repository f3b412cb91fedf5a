//! Prometheus text exposition (format 0.0.4) at `/metrics`. This module
//! knows only its [`View`]: whoever serves it passes a function that builds
//! one (the daemon, from its state and counters).

use crate::checks::Status;
use crate::publish::{BackendCounters, VipCounters};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

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
}

#[derive(Debug, Clone, Default)]
pub struct View {
    pub vips: Vec<VipView>,
    pub dataplane_up: bool,
    pub generation: u64,
}

/// What the endpoint shows, built afresh for every scrape.
pub type ViewFn = Arc<dyn Fn() -> View + Send + Sync>;

pub fn serve(listener: TcpListener, view: ViewFn) {
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let view = view.clone();
        let _ = std::thread::Builder::new().name("metrics".into()).spawn(move || {
            let _ = answer(s, &*view);
        });
    }
}

fn answer(s: TcpStream, view: &(dyn Fn() -> View + Send + Sync)) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let (status, ctype, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&view()))
    } else {
        ("404 Not Found", "text/plain", "see /metrics\n".to_owned())
    };
    let mut w = &s;
    write!(w, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    w.flush()
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(v: &View) -> String {
    let mut o = String::new();
    head(&mut o, "fulcrum_dataplane_up", "gauge", "1 when the dataplane's heartbeat is fresh.");
    let _ = writeln!(o, "fulcrum_dataplane_up {}", u8::from(v.dataplane_up));
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
    o
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
            vips: vec![VipView { name: "198.18.1.2:0/udp".into(), mode: "dsr", forwarding: true, counters: c, backends: vec![b] }],
            dataplane_up: true,
            generation: 4,
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
        assert!(!text.contains("direction=\"out\""), "{text}");
    }
}
