//! fulcrumctl: operate a running Fulcrum control plane.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use fulcrum_controlplane::model::{self, Affinity, Mode, ProxyProtocol};
use fulcrum_controlplane::proto::{self, LimitChange, Request, VipOptions};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

/// Operate a running Fulcrum control plane (fulcrum-controlplane) through its
/// control socket. Every change is validated, persisted and published to the
/// dataplane as a new configuration generation; on error nothing changes.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The control plane's unix socket.
    #[arg(long, global = true, default_value = "/run/fulcrum/control.sock")]
    socket: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Control plane and dataplane liveness, pids, uptime, generations.
    Status,
    /// Virtual services.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Backends of the virtual services.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Per-VIP limits: connections, new-connection rate, per-client rate, bandwidth.
    #[command(subcommand)]
    Limit(LimitCmd),
    /// Connections, rates, bytes and drops per VIP and backend.
    Stats,
    /// Health check state per backend: state, since, last error, latency.
    Health,
    /// Live view of `stats`, refreshed every second (q or Ctrl-C quits).
    Top {
        /// Stop after this many refreshes.
        #[arg(long)]
        iterations: Option<u64>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Re-read the configuration file (as SIGHUP does) and apply the difference.
    Reload,
}

#[derive(Subcommand)]
enum VipCmd {
    /// List the VIPs with their settings.
    List,
    /// Add a VIP (no backends yet: add them with `backend add`).
    Add {
        /// VIP address and port, e.g. 198.18.1.1:80.
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
        #[command(flatten)]
        opts: VipAddArgs,
    },
    /// Delete a VIP and its backends.
    Del {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
    },
}

#[derive(Args)]
struct VipAddArgs {
    /// How the VIP handles traffic.
    #[arg(long, value_parser = ["proxy", "dsr", "fullnat", "tunnel"])]
    mode: Option<String>,
    /// Which client identity picks the backend.
    #[arg(long, value_parser = ["flow", "client"])]
    affinity: Option<String>,
    /// Concurrent connections per lcore.
    #[arg(long, value_parser = parse_u32_nonzero)]
    max_connections: Option<u32>,
    #[arg(long, value_parser = parse_ms)]
    connect_timeout_ms: Option<u64>,
    /// Backends tried before the client is reset (1-16).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
    connect_tries: Option<u8>,
    #[arg(long, value_parser = parse_ms)]
    idle_timeout_ms: Option<u64>,
    #[arg(long, value_parser = ["off", "v1", "v2"])]
    proxy_protocol: Option<String>,
    /// Maglev table size (a prime).
    #[arg(long, value_parser = parse_u32_nonzero)]
    table_size: Option<u32>,
    /// Health check as inline TOML, e.g. 'kind = "tcp", interval_ms = 1000'.
    #[arg(long)]
    health: Option<String>,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// List backends (of one VIP or all) with weight, state and active connections.
    List {
        #[arg(value_parser = parse_addr)]
        vip: Option<SocketAddrV4>,
    },
    /// Add a backend to a VIP.
    Add {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
        /// Relative share of new connections (0 to 1000000; default 1).
        #[arg(long, value_parser = parse_weight, allow_negative_numbers = true)]
        weight: Option<u32>,
    },
    /// Remove a backend from a VIP.
    Del {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
    },
    /// Set a backend's weight.
    Weight {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
        /// 0 to 1000000.
        #[arg(value_parser = parse_weight, allow_negative_numbers = true)]
        weight: u32,
    },
    /// Stop giving a backend new connections; established ones continue
    /// (watch `backend list` until its active connections reach 0).
    Drain {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
    },
    /// Give a drained backend new connections again.
    Undrain {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
    },
}

#[derive(Subcommand)]
enum LimitCmd {
    /// Show the limits of one VIP or all.
    Show {
        #[arg(value_parser = parse_addr)]
        vip: Option<SocketAddrV4>,
    },
    /// Set (or with --clear remove) limits of a VIP.
    Set {
        #[arg(value_parser = parse_addr)]
        vip: SocketAddrV4,
        /// New connections per second accepted by the VIP.
        #[arg(long, value_parser = parse_rate, allow_negative_numbers = true)]
        new_conn_rate: Option<u32>,
        /// Burst of the new-connection rate (default: the rate).
        #[arg(long, value_parser = parse_rate, allow_negative_numbers = true)]
        burst: Option<u32>,
        /// New connections per second per client address.
        #[arg(long, value_parser = parse_rate, allow_negative_numbers = true)]
        client_rate: Option<u32>,
        /// Burst of the per-client rate (default: the rate).
        #[arg(long, value_parser = parse_rate, allow_negative_numbers = true)]
        client_burst: Option<u32>,
        /// Bytes per second through the VIP (both directions).
        #[arg(long, value_parser = parse_bandwidth, allow_negative_numbers = true)]
        bandwidth: Option<u64>,
        /// Concurrent connections per lcore.
        #[arg(long, value_parser = parse_max_conn, allow_negative_numbers = true)]
        max_connections: Option<u32>,
        /// Remove a limit (repeatable); max-connections returns to its default.
        #[arg(long, value_parser = ["new-conn-rate", "client-rate", "bandwidth", "max-connections"])]
        clear: Vec<String>,
    },
}

fn parse_addr(s: &str) -> Result<SocketAddrV4, String> {
    model::parse_addr(s)
}

fn parse_num(s: &str, what: &str, lo: u64, hi: u64) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= i128::from(lo) && n <= i128::from(hi) => Ok(n as u64),
        _ => Err(format!("{what} must be a whole number from {lo} to {hi}")),
    }
}

fn parse_weight(s: &str) -> Result<u32, String> {
    parse_num(s, "the weight", 0, u64::from(model::MAX_WEIGHT)).map(|n| n as u32)
}

fn parse_rate(s: &str) -> Result<u32, String> {
    parse_num(s, "a rate or burst", 1, u64::from(u32::MAX)).map(|n| n as u32)
}

fn parse_bandwidth(s: &str) -> Result<u64, String> {
    parse_num(s, "the bandwidth (bytes per second)", 1, u64::MAX >> 1)
}

fn parse_max_conn(s: &str) -> Result<u32, String> {
    parse_num(s, "max-connections", 1, u64::from(model::MAX_CONNECTIONS)).map(|n| n as u32)
}

fn parse_u32_nonzero(s: &str) -> Result<u32, String> {
    parse_num(s, "the value", 1, u64::from(u32::MAX)).map(|n| n as u32)
}

fn parse_ms(s: &str) -> Result<u64, String> {
    parse_num(s, "milliseconds", 1, u64::from(u32::MAX))
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("fulcrumctl: {e}");
            std::process::exit(1);
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let req = match &cli.command {
        Command::Top { iterations, interval } => return top(cli, *iterations, *interval),
        Command::Status => Request::Status,
        Command::Stats => Request::Stats,
        Command::Health => Request::Health,
        Command::Reload => Request::Reload,
        Command::Vip(VipCmd::List) => Request::VipList,
        Command::Vip(VipCmd::Add { vip, opts }) => Request::VipAdd { vip: *vip, options: vip_options(opts)? },
        Command::Vip(VipCmd::Del { vip }) => Request::VipDel { vip: *vip },
        Command::Backend(b) => match b {
            BackendCmd::List { vip } => Request::BackendList { vip: *vip },
            BackendCmd::Add { vip, backend, weight } => Request::BackendAdd { vip: *vip, backend: *backend, weight: *weight },
            BackendCmd::Del { vip, backend } => Request::BackendDel { vip: *vip, backend: *backend },
            BackendCmd::Weight { vip, backend, weight } => Request::BackendWeight { vip: *vip, backend: *backend, weight: *weight },
            BackendCmd::Drain { vip, backend } => Request::BackendDrain { vip: *vip, backend: *backend },
            BackendCmd::Undrain { vip, backend } => Request::BackendUndrain { vip: *vip, backend: *backend },
        },
        Command::Limit(LimitCmd::Show { vip }) => Request::LimitShow { vip: *vip },
        Command::Limit(LimitCmd::Set { vip, new_conn_rate, burst, client_rate, client_burst, bandwidth, max_connections, clear }) => {
            if new_conn_rate.is_none()
                && burst.is_none()
                && client_rate.is_none()
                && client_burst.is_none()
                && bandwidth.is_none()
                && max_connections.is_none()
                && clear.is_empty()
            {
                return Err("limit set: nothing to change (see fulcrumctl limit set --help)".into());
            }
            Request::LimitSet {
                vip: *vip,
                change: LimitChange {
                    new_conn_rate: *new_conn_rate,
                    burst: *burst,
                    client_rate: *client_rate,
                    client_burst: *client_burst,
                    bandwidth: *bandwidth,
                    max_connections: *max_connections,
                    clear: clear.clone(),
                },
            }
        }
    };
    let change = req.is_change();
    let data = proto::call(&cli.socket, &req)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&data).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let text = match &cli.command {
        Command::Status => fmt_status(&data),
        Command::Vip(VipCmd::List) => fmt_vips(&data),
        Command::Backend(BackendCmd::List { .. }) => fmt_backends(&data),
        Command::Limit(LimitCmd::Show { .. }) => fmt_limits(&data),
        Command::Stats => fmt_stats(&data),
        Command::Health => fmt_health(&data),
        _ if change => format!("ok: generation {}", data.get("generation").and_then(Value::as_u64).unwrap_or(0)),
        _ => data.to_string(),
    };
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn vip_options(o: &VipAddArgs) -> Result<VipOptions, String> {
    let health = match &o.health {
        Some(h) => {
            let t: toml::Table = toml::from_str(&h.replace(", ", "\n").replace(',', "\n"))
                .map_err(|e| format!("--health: not TOML key = value pairs: {}", e.message()))?;
            Some(serde_json::to_value(t).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    Ok(VipOptions {
        mode: match o.mode.as_deref() {
            None => None,
            Some("proxy") => Some(Mode::Proxy),
            Some("dsr") => Some(Mode::Dsr),
            Some("fullnat") => Some(Mode::Fullnat),
            Some("tunnel") => Some(Mode::Tunnel),
            Some(other) => return Err(format!("--mode: {other:?} is not one of proxy, dsr, fullnat, tunnel")),
        },
        affinity: o.affinity.as_deref().map(|a| if a == "client" { Affinity::Client } else { Affinity::Flow }),
        max_connections: o.max_connections,
        connect_timeout_ms: o.connect_timeout_ms,
        connect_tries: o.connect_tries,
        idle_timeout_ms: o.idle_timeout_ms,
        proxy_protocol: o.proxy_protocol.as_deref().map(|p| match p {
            "v1" => ProxyProtocol::V1,
            "v2" => ProxyProtocol::V2,
            _ => ProxyProtocol::Off,
        }),
        table_size: o.table_size,
        health,
    })
}

// ---------------------------------------------------------------- formatting

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A plain aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let l: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", l.join("  ").trim_end());
    };
    line(&mut out, &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn rate(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        format!("{}/s burst {}", s(&v["per_sec"]), s(&v["burst"]))
    }
}

fn duration(secs: f64) -> String {
    let t = secs as u64;
    if t >= 86400 {
        format!("{}d{}h", t / 86400, t % 86400 / 3600)
    } else if t >= 3600 {
        format!("{}h{}m", t / 3600, t % 3600 / 60)
    } else if t >= 60 {
        format!("{}m{}s", t / 60, t % 60)
    } else {
        format!("{secs:.1}s")
    }
}

fn fmt_status(d: &Value) -> String {
    let cp = &d["controlplane"];
    let dp = &d["dataplane"];
    let mut o = String::new();
    let _ = writeln!(
        o,
        "control plane: up, pid {}, uptime {}",
        s(&cp["pid"]),
        duration(cp["uptime_secs"].as_f64().unwrap_or(0.0))
    );
    let _ = writeln!(o, "  config {}, state {}, shm {}", s(&cp["config"]), s(&cp["state_file"]), s(&cp["shm"]));
    if let Some(r) = cp.get("last_reload").filter(|r| !r.is_null()) {
        let _ = writeln!(
            o,
            "  last reload: {}",
            if r["ok"].as_bool() == Some(true) { "ok".to_owned() } else { format!("FAILED: {}", s(&r["error"])) }
        );
    }
    if let Some(e) = cp.get("publish_error").filter(|e| !e.is_null()) {
        let _ = writeln!(o, "  publish error: {}", s(e));
    }
    let state = dp["state"].as_str().unwrap_or("?");
    let _ = write!(o, "dataplane: {state}");
    if !dp["pid"].is_null() {
        let _ = write!(o, ", pid {}", s(&dp["pid"]));
    }
    if let Some(u) = dp["uptime_secs"].as_f64() {
        let _ = write!(o, ", uptime {}", duration(u));
    }
    if let Some(a) = dp["heartbeat_age_ms"].as_u64() {
        let _ = write!(o, ", heartbeat {a} ms ago");
    }
    let _ = writeln!(o, ", restarts seen {}", s(&dp["restarts_seen"]));
    let _ = writeln!(
        o,
        "generation: published {}, applied {}, rejected {}{}",
        s(&d["generation"]["published"]),
        s(&d["generation"]["applied"]),
        s(&dp["rejected_generations"]),
        dp["last_rejection"].as_str().map(|r| format!(" (last: {r})")).unwrap_or_default()
    );
    let _ = writeln!(o, "configured: {} VIPs, {} backends", s(&d["vips"]), s(&d["backends"]));
    o
}

fn fmt_vips(d: &Value) -> String {
    let rows: Vec<Vec<String>> = arr(d)
        .iter()
        .map(|v| {
            vec![
                s(&v["vip"]),
                s(&v["id"]),
                s(&v["mode"]),
                s(&v["affinity"]),
                arr(&v["backends"]).len().to_string(),
                s(&v["max_connections"]),
                rate(&v["new_conn_rate"]),
                v["health"].get("kind").map(s).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["VIP", "ID", "MODE", "AFFINITY", "BACKENDS", "MAX_CONN", "NEW_CONN_RATE", "HEALTH"], &rows)
}

fn fmt_backends(d: &Value) -> String {
    let rows: Vec<Vec<String>> = arr(d)
        .iter()
        .map(|b| {
            vec![
                s(&b["vip"]),
                s(&b["backend"]),
                s(&b["slot"]),
                s(&b["weight"]),
                s(&b["state"]),
                s(&b["health"]),
                s(&b["connections_active"]),
            ]
        })
        .collect();
    table(&["VIP", "BACKEND", "SLOT", "WEIGHT", "STATE", "HEALTH", "ACTIVE"], &rows)
}

fn fmt_limits(d: &Value) -> String {
    let rows: Vec<Vec<String>> = arr(d)
        .iter()
        .map(|v| {
            vec![
                s(&v["vip"]),
                s(&v["max_connections"]),
                rate(&v["new_conn_rate"]),
                rate(&v["client_rate"]),
                s(&v["bandwidth_bytes_per_sec"]),
            ]
        })
        .collect();
    table(&["VIP", "MAX_CONN", "NEW_CONN_RATE", "CLIENT_RATE", "BANDWIDTH_B/S"], &rows)
}

fn fmt_stats(d: &Value) -> String {
    let mut rows = Vec::new();
    for v in arr(&d["vips"]) {
        let drops: Vec<String> = v["drops"]
            .as_object()
            .map(|m| m.iter().filter(|(_, n)| n.as_u64() != Some(0)).map(|(k, n)| format!("{k}={}", s(n))).collect())
            .unwrap_or_default();
        rows.push(vec![
            s(&v["vip"]),
            String::new(),
            s(&v["connections_active"]),
            s(&v["connections_total"]),
            format!("{:.1}", v["new_per_sec"].as_f64().unwrap_or(0.0)),
            s(&v["bytes_in"]),
            s(&v["bytes_out"]),
            if drops.is_empty() { "-".into() } else { drops.join(",") },
        ]);
        for b in arr(&v["backends"]) {
            rows.push(vec![
                String::new(),
                s(&b["backend"]),
                s(&b["connections_active"]),
                s(&b["connections_total"]),
                format!("{:.1}", b["new_per_sec"].as_f64().unwrap_or(0.0)),
                s(&b["bytes_to"]),
                s(&b["bytes_from"]),
                format!("connect_failures={}", s(&b["connect_failures"])),
            ]);
        }
    }
    let mut out = String::new();
    if d["dataplane_alive"].as_bool() != Some(true) {
        out.push_str("(dataplane not running: counters are the last values written)\n");
    }
    out + &table(&["VIP", "BACKEND", "ACTIVE", "TOTAL", "NEW/S", "BYTES_IN", "BYTES_OUT", "DROPS"], &rows)
}

fn ms(v: &Value) -> String {
    v.as_f64().map(|m| format!("{m:.2}ms")).unwrap_or_else(|| "-".into())
}

fn fmt_health(d: &Value) -> String {
    let rows: Vec<Vec<String>> = arr(d)
        .iter()
        .map(|h| {
            vec![
                s(&h["vip"]),
                s(&h["backend"]),
                s(&h["check"]),
                s(&h["state"]),
                s(&h["published"]),
                h["since_secs"].as_f64().map(|x| format!("{} ago", duration(x))).unwrap_or_else(|| "-".into()),
                format!("{}/{}/{}", ms(&h["latency_last_ms"]), ms(&h["latency_p50_ms"]), ms(&h["latency_p99_ms"])),
                s(&h["last_error"]),
            ]
        })
        .collect();
    table(&["VIP", "BACKEND", "CHECK", "HEALTH", "PUBLISHED", "SINCE", "LATENCY last/p50/p99", "LAST_ERROR"], &rows)
}

fn top(cli: &Cli, iterations: Option<u64>, interval: f64) -> Result<(), String> {
    use std::io::Write;
    let interval = Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
    // A reader thread turns `q` + Enter (or EOF) on stdin into a stop flag.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if iterations.is_none() {
        let s2 = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.trim() == "q" {
                    s2.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                line.clear();
            }
        });
    }
    let mut n = 0u64;
    loop {
        let status = proto::call(&cli.socket, &Request::Status)?;
        let stats = proto::call(&cli.socket, &Request::Stats)?;
        n += 1;
        if cli.json {
            println!("{}", serde_json::json!({"status": status, "stats": stats}));
        } else {
            let mut out = String::from("\x1b[H\x1b[2J");
            let _ = writeln!(out, "fulcrumctl top — every {:.1}s, q + Enter or Ctrl-C quits\n", interval.as_secs_f64());
            out += &fmt_status(&status);
            out.push('\n');
            out += &fmt_stats(&stats);
            print!("{out}");
            let _ = std::io::stdout().flush();
        }
        if iterations.is_some_and(|i| n >= i) || stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(interval);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
    }
}
