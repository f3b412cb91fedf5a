//! Prometheus text exposition (format 0.0.4) at `/metrics`.

use crate::checks::Status;
use crate::publish::{BackendCounters, VipCounters};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A backend: address, counters, published Up, health status.
pub type BackendView = (SocketAddrV4, BackendCounters, bool, Option<Status>);
/// A VIP: address, counters, backends.
pub type VipView = (SocketAddrV4, VipCounters, Vec<BackendView>);

pub struct View {
    pub vips: Vec<VipView>,
    pub dataplane_up: bool,
    pub generation: u64,
}

pub fn serve(listener: TcpListener, d: Arc<Mutex<crate::daemon::Daemon>>) {
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let d = d.clone();
        let _ = std::thread::Builder::new().name("metrics".into()).spawn(move || {
            let _ = answer(s, &d);
        });
    }
}

fn answer(s: TcpStream, d: &Mutex<crate::daemon::Daemon>) -> std::io::Result<()> {
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
        let view = d.lock().unwrap_or_else(|e| e.into_inner()).metrics_view();
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&view))
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

    head(&mut o, "fulcrum_vip_connections_active", "gauge", "Connections open on the VIP.");
    for (a, c, _) in &v.vips {
        let _ = writeln!(o, "fulcrum_vip_connections_active{{vip=\"{a}\"}} {}", c.connections_active);
    }
    head(&mut o, "fulcrum_vip_connections_total", "counter", "Connections accepted by the VIP.");
    for (a, c, _) in &v.vips {
        let _ = writeln!(o, "fulcrum_vip_connections_total{{vip=\"{a}\"}} {}", c.connections_total);
    }
    head(&mut o, "fulcrum_vip_bytes_total", "counter", "Bytes through the VIP; in = from clients, out = to clients.");
    for (a, c, _) in &v.vips {
        let _ = writeln!(o, "fulcrum_vip_bytes_total{{vip=\"{a}\",direction=\"in\"}} {}", c.bytes_in);
        let _ = writeln!(o, "fulcrum_vip_bytes_total{{vip=\"{a}\",direction=\"out\"}} {}", c.bytes_out);
    }
    head(&mut o, "fulcrum_vip_drops_total", "counter", "Connections or packets of the VIP dropped, by reason.");
    for (a, c, _) in &v.vips {
        for (reason, n) in &c.drops {
            let _ = writeln!(o, "fulcrum_vip_drops_total{{vip=\"{a}\",reason=\"{reason}\"}} {n}");
        }
    }
    type B = BackendView;
    let backends = |o: &mut String, name: &str, f: &dyn Fn(&B) -> Option<String>| {
        for (a, _, bs) in &v.vips {
            for b in bs {
                if let Some(val) = f(b) {
                    let _ = writeln!(o, "{name}{{vip=\"{a}\",backend=\"{}\"}} {val}", b.0);
                }
            }
        }
    };
    head(&mut o, "fulcrum_backend_connections_active", "gauge", "Connections open to the backend.");
    backends(&mut o, "fulcrum_backend_connections_active", &|b| Some(b.1.connections_active.to_string()));
    head(&mut o, "fulcrum_backend_connections_total", "counter", "Connections made to the backend.");
    backends(&mut o, "fulcrum_backend_connections_total", &|b| Some(b.1.connections_total.to_string()));
    head(&mut o, "fulcrum_backend_connect_failures_total", "counter", "Failed connection attempts to the backend.");
    backends(&mut o, "fulcrum_backend_connect_failures_total", &|b| Some(b.1.connect_failures.to_string()));
    head(&mut o, "fulcrum_backend_up", "gauge", "1 when the backend is published Up (not down, not drained).");
    backends(&mut o, "fulcrum_backend_up", &|b| Some(u8::from(b.2).to_string()));
    head(&mut o, "fulcrum_backend_health_check_duration_seconds", "summary", "Health check latency.");
    for (a, _, bs) in &v.vips {
        for (b, _, _, h) in bs {
            let Some(h) = h else { continue };
            for (q, val) in [("0.5", h.latency_p50_ms), ("0.99", h.latency_p99_ms)] {
                if let Some(ms) = val {
                    let _ = writeln!(
                        o,
                        "fulcrum_backend_health_check_duration_seconds{{vip=\"{a}\",backend=\"{b}\",quantile=\"{q}\"}} {}",
                        ms / 1000.0
                    );
                }
            }
        }
    }
    o
}
