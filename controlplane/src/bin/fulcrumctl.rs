//! fulcrumctl: operate a running Fulcrum control plane.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use fulcrum_controlplane::proto::{
    self, BackendInfo, BgpStatus, ChangeReply, HealthInfo, LimitChange, LimitsInfo, ReloadReply, Request, Rotation,
    LcoreStats, RotationReply, StatsReply, StatusReply, SynStats, VipInfo, VipKey, VipOptions,
};
use fulcrum_model::health::HealthCheck;
use fulcrum_model::{Affinity, Cidr, Encap, Mac, Mode, Proto, ProxyProtocol, Rate, Tunnel};
use serde::de::DeserializeOwned;
use serde::Serialize;
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
    /// Connections, rates, bytes and drops per VIP and backend; each dataplane lcore's traffic, load and drops.
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
    /// Take this instance out of BGP rotation (`out`: every VIP is
    /// withdrawn, the dataplane keeps serving the flows it has) or put it
    /// back (`in`: VIPs are announced again by the usual rule). Kept across
    /// control-plane restarts (state file). `fulcrumctl status` shows it.
    Rotation {
        /// in or out
        #[arg(value_parser = parse_rotation)]
        rotation: Rotation,
    },
}

fn parse_rotation(s: &str) -> Result<Rotation, String> {
    match s {
        "in" => Ok(Rotation::In),
        "out" => Ok(Rotation::Out),
        _ => Err(format!("{s:?}: in or out")),
    }
}

#[derive(Subcommand)]
enum VipCmd {
    /// List the VIPs with their settings.
    List,
    /// Add a VIP (no backends yet: add them with `backend add`).
    Add {
        /// VIP address and port, e.g. 198.18.1.1:80; add /udp for a UDP VIP
        /// (198.18.1.1:53/udp). Port 0 (forwarding modes): every port.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
        #[command(flatten)]
        opts: VipAddArgs,
    },
    /// Delete a VIP and its backends.
    Del {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
    },
}

#[derive(Args)]
struct VipAddArgs {
    /// How the VIP handles traffic: proxy (terminate TCP), dsr (L2 direct
    /// server return), fullnat (source and destination NAT) or tunnel
    /// (IPIP/GUE to the backend). Default: proxy.
    #[arg(long, value_parser = parse_mode)]
    mode: Option<Mode>,
    /// Protocol forwarded (forwarding modes; proxy VIPs are TCP). Same as
    /// an ADDR:PORT/udp suffix.
    #[arg(long, value_parser = parse_proto)]
    proto: Option<Proto>,
    /// Tunnel mode: encapsulation, ipip (IPv4 in IPv4) or gue (IPv4 in UDP to port 6080).
    #[arg(long, value_parser = parse_encap, requires = "tunnel_source_prefix")]
    tunnel_encap: Option<Encap>,
    /// Tunnel mode: outer source addresses are drawn from this prefix
    /// (A.B.C.D/N), host bits from the flow.
    #[arg(long, value_parser = parse_cidr, requires = "tunnel_encap")]
    tunnel_source_prefix: Option<Cidr>,
    /// Which client identity picks the backend: flow (address and port) or client (address).
    #[arg(long, value_parser = ["flow", "client"])]
    affinity: Option<String>,
    /// Concurrent connections per lcore (proxy).
    #[arg(long, value_parser = parse_u32_nonzero)]
    max_connections: Option<u32>,
    /// How long one backend gets to answer before the next is tried (proxy).
    #[arg(long, value_parser = parse_ms)]
    connect_timeout_ms: Option<u32>,
    /// Backends tried before the client is reset (1-16).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
    connect_tries: Option<u8>,
    /// A connection idle this long is reset both ways (proxy).
    #[arg(long, value_parser = parse_ms)]
    idle_timeout_ms: Option<u32>,
    /// PROXY protocol header sent to backends (proxy).
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
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: Option<VipKey>,
    },
    /// Add a backend to a VIP.
    Add {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
        /// The backend: ADDR:PORT.
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
        /// Relative share of new connections (0 to 1000000; default 1).
        #[arg(long, value_parser = parse_weight, allow_negative_numbers = true)]
        weight: Option<u32>,
        /// Forwarding modes: the backend's (next hop's) MAC, e.g.
        /// 02:00:00:00:00:21, instead of resolving its address by ARP.
        #[arg(long, value_parser = parse_mac)]
        mac: Option<Mac>,
    },
    /// Remove a backend from a VIP.
    Del {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
        /// The backend: ADDR:PORT.
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
    },
    /// Set a backend's weight.
    Weight {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
        /// The backend: ADDR:PORT.
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
        /// 0 to 1000000.
        #[arg(value_parser = parse_weight, allow_negative_numbers = true)]
        weight: u32,
    },
    /// Stop giving a backend new connections; established ones continue
    /// (watch `backend list` until its active connections reach 0).
    Drain {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
        /// The backend: ADDR:PORT.
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
    },
    /// Give a drained backend new connections again.
    Undrain {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
        /// The backend: ADDR:PORT.
        #[arg(value_parser = parse_addr)]
        backend: SocketAddrV4,
    },
}

#[derive(Subcommand)]
enum LimitCmd {
    /// Show the limits of one VIP or all.
    Show {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: Option<VipKey>,
    },
    /// Set (or with --clear remove) limits of a VIP.
    Set {
        /// The VIP: ADDR:PORT, or ADDR:PORT/udp for a UDP VIP.
        #[arg(value_parser = parse_vip)]
        vip: VipKey,
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
    proto::parse_endpoint(s)
}

fn parse_vip(s: &str) -> Result<VipKey, String> {
    s.parse()
}

fn parse_mac(s: &str) -> Result<Mac, String> {
    s.parse()
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    match s {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(format!("{s:?} is not a protocol (tcp, udp)")),
    }
}

fn parse_encap(s: &str) -> Result<Encap, String> {
    match s {
        "ipip" => Ok(Encap::Ipip),
        "gue" => Ok(Encap::Gue),
        _ => Err(format!("{s:?} is not an encapsulation (ipip, gue)")),
    }
}

fn parse_num(s: &str, what: &str, lo: u64, hi: u64) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= i128::from(lo) && n <= i128::from(hi) => Ok(n as u64),
        _ => Err(format!("{what} must be a whole number from {lo} to {hi}")),
    }
}

fn parse_weight(s: &str) -> Result<u32, String> {
    parse_num(s, "the weight", 0, u64::from(fulcrum_model::MAX_WEIGHT)).map(|n| n as u32)
}

fn parse_rate(s: &str) -> Result<u32, String> {
    parse_num(s, "a rate or burst", 1, u64::from(u32::MAX)).map(|n| n as u32)
}

fn parse_bandwidth(s: &str) -> Result<u64, String> {
    parse_num(s, "the bandwidth (bytes per second)", 1, u64::MAX >> 1)
}

fn parse_max_conn(s: &str) -> Result<u32, String> {
    parse_num(s, "max-connections", 1, u64::from(fulcrum_model::MAX_CONNECTIONS)).map(|n| n as u32)
}

fn parse_u32_nonzero(s: &str) -> Result<u32, String> {
    parse_num(s, "the value", 1, u64::from(u32::MAX)).map(|n| n as u32)
}

fn parse_ms(s: &str) -> Result<u32, String> {
    parse_num(s, "milliseconds", 1, u64::from(u32::MAX)).map(|n| n as u32)
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
        Command::Rotation { rotation } => Request::Rotation {
            rotation: *rotation,
        },
        Command::Vip(VipCmd::List) => Request::VipList,
        Command::Vip(VipCmd::Add { vip, opts }) => {
            let (vip, options) = vip_add(*vip, opts)?;
            Request::VipAdd { vip, options: Box::new(options) }
        }
        Command::Vip(VipCmd::Del { vip }) => Request::VipDel { vip: *vip },
        Command::Backend(b) => match b {
            BackendCmd::List { vip } => Request::BackendList { vip: *vip },
            BackendCmd::Add { vip, backend, weight, mac } => {
                Request::BackendAdd { vip: *vip, backend: *backend, weight: *weight, mac: *mac }
            }
            BackendCmd::Del { vip, backend } => Request::BackendDel { vip: *vip, backend: *backend },
            BackendCmd::Weight { vip, backend, weight } => {
                Request::BackendWeight { vip: *vip, backend: *backend, weight: *weight }
            }
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
    let text = match &cli.command {
        Command::Status => show(cli, &req, fmt_status)?,
        Command::Vip(VipCmd::List) => show(cli, &req, |v: &Vec<VipInfo>| fmt_vips(v))?,
        Command::Backend(BackendCmd::List { .. }) => show(cli, &req, |v: &Vec<BackendInfo>| fmt_backends(v))?,
        Command::Limit(LimitCmd::Show { .. }) => show(cli, &req, |v: &Vec<LimitsInfo>| fmt_limits(v))?,
        Command::Stats => show(cli, &req, fmt_stats)?,
        Command::Health => show(cli, &req, |v: &Vec<HealthInfo>| fmt_health(v))?,
        Command::Reload => show(cli, &req, |r: &ReloadReply| format!("ok: generation {}", r.generation))?,
        Command::Rotation { .. } => show(cli, &req, fmt_rotation)?,
        _ => show(cli, &req, |r: &ChangeReply| format!("ok: generation {}", r.generation))?,
    };
    print!("{text}");
    if !text.is_empty() && !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// Sends `req`, reads its reply as `T`: pretty JSON with --json, else `fmt`.
fn show<T: DeserializeOwned + Serialize>(cli: &Cli, req: &Request, fmt: impl Fn(&T) -> String) -> Result<String, String> {
    let data: T = proto::call(&cli.socket, req)?;
    if cli.json {
        serde_json::to_string_pretty(&data).map(|s| s + "\n").map_err(|e| e.to_string())
    } else {
        Ok(fmt(&data))
    }
}

/// The VIP (its protocol from --proto or a /udp suffix) and its options.
fn vip_add(vip: VipKey, o: &VipAddArgs) -> Result<(VipKey, VipOptions), String> {
    let mut vip = vip;
    if let Some(p) = o.proto {
        if vip.proto != p && vip.proto == Proto::Udp {
            return Err(format!("--proto {}: the VIP {vip} says udp", p.name()));
        }
        vip.proto = p;
    }
    let health = match &o.health {
        Some(h) => Some(
            toml::from_str::<HealthCheck>(&h.replace(", ", "\n").replace(',', "\n"))
                .map_err(|e| format!("--health: {}", e.message().trim()))?,
        ),
        None => None,
    };
    let tunnel = match (o.tunnel_encap, o.tunnel_source_prefix) {
        (Some(encap), Some(source_prefix)) => Some(Tunnel { encap, source_prefix }),
        _ => None,
    };
    let options = VipOptions {
        mode: o.mode,
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
        tunnel,
        health,
    };
    Ok((vip, options))
}

// ---------------------------------------------------------------- formatting

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
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

fn rate(r: &Option<Rate>) -> String {
    match r {
        None => "-".into(),
        Some(r) => format!("{}/s burst {}", r.per_sec, r.burst),
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

fn fmt_rotation(r: &RotationReply) -> String {
    let what = match r.rotation {
        Rotation::Out => {
            "out of rotation: every VIP withdrawn (the dataplane keeps serving established flows)"
        }
        Rotation::In => "in rotation: VIPs announced by the usual rule",
    };
    let mut s = format!("ok: {what}{}", if r.changed { "" } else { " (already so)" });
    if !r.bgp_configured {
        s.push_str("\nnote: no [bgp] configured: nothing is announced either way");
    }
    s
}

/// `status`'s `bgp` block.
fn fmt_bgp(o: &mut String, b: &BgpStatus) {
    if !b.configured {
        let _ = writeln!(o, "bgp: not configured (rotation {})", b.rotation.name());
        return;
    }
    let _ = write!(
        o,
        "bgp: session {} {}",
        b.protocol.as_deref().unwrap_or("-"),
        b.session.as_deref().unwrap_or("unknown")
    );
    if let Some(i) = b
        .session_info
        .as_deref()
        .filter(|i| !i.is_empty() && Some(*i) != b.session.as_deref())
    {
        let _ = write!(o, " ({i})");
    }
    let _ = writeln!(o, ", rotation {}", b.rotation.name());
    let routes: Vec<String> = b.routes.iter().map(|a| format!("{a}/32")).collect();
    let _ = writeln!(
        o,
        "  routes via {}: {}; BIRD {}, routes file {}",
        b.next_hop.map_or_else(|| "-".into(), |a| a.to_string()),
        if routes.is_empty() {
            "none".into()
        } else {
            routes.join(", ")
        },
        b.bird_socket.as_deref().unwrap_or("-"),
        b.routes_file.as_deref().unwrap_or("-")
    );
    let _ = write!(o, "  birdc configure: {} failures", b.configure_failures);
    if let Some(ms) = b.last_configure_ms {
        let _ = write!(o, ", last took {ms:.1} ms");
    }
    let _ = writeln!(o);
    if let Some(e) = &b.last_error {
        let _ = writeln!(o, "  FAILING: {e}");
    }
    for v in &b.vips {
        let state = match (v.announced, &v.reason) {
            (true, None) => "announced".to_owned(),
            (true, Some(r)) => format!("announced (for another VIP on its address; itself: {r})"),
            (false, r) => format!("withdrawn: {}", r.as_deref().unwrap_or("-")),
        };
        let _ = writeln!(o, "  VIP {} {state}, for {}", v.vip, duration(v.for_secs));
    }
}

fn fmt_status(d: &StatusReply) -> String {
    let (cp, dp) = (&d.controlplane, &d.dataplane);
    let mut o = String::new();
    let _ = writeln!(o, "control plane: up, pid {}, uptime {}", cp.pid, duration(cp.uptime_secs));
    let _ = writeln!(o, "  config {}, state {}, shm {}", cp.config, cp.state_file, cp.shm);
    if let Some(r) = &cp.last_reload {
        let _ = writeln!(
            o,
            "  last reload: {}",
            if r.ok { "ok".to_owned() } else { format!("FAILED: {}", opt(&r.error)) }
        );
    }
    if let Some(e) = &cp.publish_error {
        let _ = writeln!(o, "  publish error: {e}");
    }
    let clients = |c: &proto::ClientCounters| {
        format!(
            "{}/{} clients, refused {}, oversize {}, timed out {}",
            c.active, c.max, c.refused, c.oversize, c.timed_out
        )
    };
    let _ = writeln!(o, "  control socket: {}", clients(&cp.clients.control));
    if cp.prometheus.is_some() {
        let _ = writeln!(o, "  prometheus: {}", clients(&cp.clients.prometheus));
    }
    let _ = write!(o, "dataplane: {}", dp.state.name());
    if let Some(p) = dp.pid {
        let _ = write!(o, ", pid {p}");
    }
    if let Some(u) = dp.uptime_secs {
        let _ = write!(o, ", uptime {}", duration(u as f64));
    }
    if let Some(a) = dp.heartbeat_age_ms {
        let _ = write!(o, ", heartbeat {a} ms ago");
    }
    let _ = writeln!(o, ", restarts seen {}", dp.restarts_seen);
    if let Some(p) = &dp.segment {
        let _ = writeln!(o, "  SEGMENT PROBLEM: {p}");
    }
    if let Some(f) = &dp.facts {
        let snat: Vec<String> = f.snat_addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            o,
            "  address {}, {} lcores, forwarding {}, SNAT addresses {}",
            f.address,
            f.lcores,
            if f.forwarding { "on" } else { "off" },
            if snat.is_empty() { "none".into() } else { snat.join(",") }
        );
    }
    let _ = writeln!(
        o,
        "generation: published {}, applied {}, rejected {}{}",
        d.generation.published,
        d.generation.applied,
        dp.rejected_generations,
        dp.last_rejection.as_ref().map(|r| format!(" (last: {r})")).unwrap_or_default()
    );
    for r in &d.generation.refused {
        let _ = writeln!(o, "  refused by the dataplane: VIP {} (id {}): {}", r.vip, r.id, r.reason);
    }
    let _ = writeln!(o, "configured: {} VIPs, {} backends", d.vips, d.backends);
    for p in &d.vips_in_panic {
        let _ = writeln!(
            o,
            "  VIP {} IN PANIC for {}: {} of {} backends up, threshold {} %, {} passive ejections held back",
            p.vip,
            duration(p.since_secs),
            p.up,
            p.backends,
            p.threshold_pct,
            p.ejections_skipped
        );
    }
    fmt_bgp(&mut o, &d.bgp);
    o
}

fn fmt_vips(d: &[VipInfo]) -> String {
    let rows: Vec<Vec<String>> = d
        .iter()
        .map(|v| {
            let tunnel = v.tunnel.map(|t| {
                format!("{} from {}", if t.encap == Encap::Gue { "gue" } else { "ipip" }, t.source_prefix)
            });
            vec![
                v.vip.to_string(),
                opt(&v.id),
                v.mode.name().to_owned(),
                v.proto.name().to_owned(),
                if v.affinity == Affinity::Client { "client" } else { "flow" }.to_owned(),
                v.backends.len().to_string(),
                v.max_connections.to_string(),
                rate(&v.new_conn_rate),
                v.health.as_ref().map_or_else(|| "-".into(), |h| format!("{:?}", h.kind).to_lowercase()),
                opt(&tunnel),
                digest_cell(v),
                v.table.as_ref().map_or_else(|| "-".into(), |t| t.generation.to_string()),
                v.announced
                    .map_or_else(|| "-".into(), |a| if a { "yes" } else { "no" }.to_owned()),
            ]
        })
        .collect();
    table(
        &["VIP", "ID", "MODE", "PROTO", "AFFINITY", "BACKENDS", "MAX_CONN", "NEW_CONN_RATE", "HEALTH", "TUNNEL", "DIGEST", "DIGEST_GEN", "ANNOUNCED"],
        &rows,
    )
}

/// The installed table's digest, its first 12 hex digits (all 16 in
/// `--json`); `-` while the dataplane has not reported it.
fn digest_cell(v: &VipInfo) -> String {
    v.table.as_ref().map_or_else(|| "-".into(), |t| t.digest.chars().take(12).collect())
}

fn fmt_backends(d: &[BackendInfo]) -> String {
    let rows: Vec<Vec<String>> = d
        .iter()
        .map(|b| {
            vec![
                b.vip.to_string(),
                b.backend.to_string(),
                opt(&b.slot),
                b.weight.to_string(),
                b.state.map_or_else(|| "-".into(), |s| s.name().to_owned()),
                b.health.name().to_owned(),
                b.connections_active.to_string(),
                opt(&b.mac),
            ]
        })
        .collect();
    table(&["VIP", "BACKEND", "SLOT", "WEIGHT", "STATE", "HEALTH", "ACTIVE", "MAC"], &rows)
}

fn fmt_limits(d: &[LimitsInfo]) -> String {
    let rows: Vec<Vec<String>> = d
        .iter()
        .map(|v| {
            vec![
                v.vip.to_string(),
                v.max_connections.to_string(),
                rate(&v.new_conn_rate),
                rate(&v.client_rate),
                opt(&v.bandwidth_bytes_per_sec),
            ]
        })
        .collect();
    table(&["VIP", "MAX_CONN", "NEW_CONN_RATE", "CLIENT_RATE", "BANDWIDTH_B/S"], &rows)
}

/// A proxy VIP's SYNs, cookies and flood mode, one line:
/// `syn: 812345 seen, cookies 800000 sent / 1000 validated / 12 rejected,
/// half-open 128, flood ON for 23s (2 lcores)` (or `flood off`).
fn fmt_syn(s: &SynStats) -> String {
    let flood = if s.flood {
        let since = s
            .flood_for_secs
            .map(|t| if t < 60.0 { format!(" for {}s", t as u64) } else { format!(" for {}", duration(t)) })
            .unwrap_or_default();
        let plural = if s.flood_lcores == 1 { "" } else { "s" };
        format!("flood ON{since} ({} lcore{plural})", s.flood_lcores)
    } else {
        "flood off".to_owned()
    };
    format!(
        "syn: {} seen, cookies {} sent / {} validated / {} rejected, half-open {}, {flood}",
        s.syns, s.cookies_sent, s.cookies_validated, s.cookies_rejected, s.half_open
    )
}

/// Proxy VIPs: connections and bytes both ways, then a line each of SYNs,
/// cookies and flood mode; forwarding VIPs: packets, bytes, new flows and
/// drops, per backend packets, bytes and new flows.
fn fmt_stats(d: &StatsReply) -> String {
    let drops = |m: &std::collections::BTreeMap<String, u64>| {
        let d: Vec<String> = m.iter().filter(|(_, n)| **n != 0).map(|(k, n)| format!("{k}={n}")).collect();
        if d.is_empty() {
            "-".into()
        } else {
            d.join(",")
        }
    };
    let mut proxy = Vec::new();
    let mut fwd = Vec::new();
    for v in &d.vips {
        if v.mode.is_forwarding() {
            fwd.push(vec![
                v.vip.to_string(),
                String::new(),
                v.mode.name().to_owned(),
                v.proto.name().to_owned(),
                v.packets_in.to_string(),
                v.bytes_in.to_string(),
                v.connections_total.to_string(),
                format!("{:.1}", v.new_per_sec),
                drops(&v.drops),
            ]);
            for b in &v.backends {
                fwd.push(vec![
                    String::new(),
                    b.backend.to_string(),
                    String::new(),
                    String::new(),
                    b.packets.to_string(),
                    b.bytes_to.to_string(),
                    b.connections_total.to_string(),
                    format!("{:.1}", b.new_per_sec),
                    String::new(),
                ]);
            }
            continue;
        }
        proxy.push(vec![
            v.vip.to_string(),
            String::new(),
            v.connections_active.to_string(),
            v.connections_total.to_string(),
            format!("{:.1}", v.new_per_sec),
            v.bytes_in.to_string(),
            v.bytes_out.to_string(),
            drops(&v.drops),
        ]);
        for b in &v.backends {
            proxy.push(vec![
                String::new(),
                b.backend.to_string(),
                b.connections_active.to_string(),
                b.connections_total.to_string(),
                format!("{:.1}", b.new_per_sec),
                b.bytes_to.to_string(),
                b.bytes_from.to_string(),
                format!("connect_failures={}", b.connect_failures),
            ]);
        }
    }
    let mut out = String::new();
    if !d.dataplane_alive {
        out.push_str("(dataplane not running: counters are the last values written)\n");
    }
    if !proxy.is_empty() || fwd.is_empty() {
        out += &table(&["VIP", "BACKEND", "ACTIVE", "TOTAL", "NEW/S", "BYTES_IN", "BYTES_OUT", "DROPS"], &proxy);
        for v in d.vips.iter().filter(|v| !v.mode.is_forwarding()) {
            if let Some(s) = &v.syn {
                let _ = writeln!(out, "{}  {}", v.vip, fmt_syn(s));
            }
        }
    }
    if !fwd.is_empty() {
        if !proxy.is_empty() {
            out.push('\n');
        }
        out += &table(&["VIP", "BACKEND", "MODE", "PROTO", "PACKETS", "BYTES", "FLOWS", "NEW/S", "DROPS"], &fwd);
    }
    if !d.lcores.is_empty() {
        out.push('\n');
        out += &fmt_lcores(&d.lcores);
    }
    out
}

/// The dataplane's lcores: traffic, load and their non-zero drops (the
/// dataplane's own reasons, then the forwarder's as `fwd:REASON`).
fn fmt_lcores(lcores: &[LcoreStats]) -> String {
    let rows: Vec<Vec<String>> = lcores
        .iter()
        .map(|l| {
            let drops: Vec<String> = l
                .drops
                .iter()
                .map(|(k, n)| (k.clone(), n))
                .chain(l.forward_drops.iter().map(|(k, n)| (format!("fwd:{k}"), n)))
                .filter(|(_, n)| **n != 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            vec![
                l.lcore.to_string(),
                l.rx_packets.to_string(),
                l.rx_bytes.to_string(),
                l.tx_packets.to_string(),
                l.tx_bytes.to_string(),
                format!("{:.3}", l.busy_ns as f64 / 1e9),
                l.rx_ring_frames.to_string(),
                if drops.is_empty() { "-".into() } else { drops.join(",") },
            ]
        })
        .collect();
    table(&["LCORE", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES", "BUSY_S", "RING_FRAMES", "DROPS"], &rows)
}

fn ms(v: Option<f64>) -> String {
    v.map(|m| format!("{m:.2}ms")).unwrap_or_else(|| "-".into())
}

fn fmt_health(d: &[HealthInfo]) -> String {
    let rows: Vec<Vec<String>> = d
        .iter()
        .map(|h| {
            vec![
                h.vip.to_string(),
                h.backend.to_string(),
                opt(&h.check),
                h.state.name().to_owned(),
                h.published.map_or_else(|| "-".into(), |s| s.name().to_owned()),
                h.since_secs.map(|x| format!("{} ago", duration(x))).unwrap_or_else(|| "-".into()),
                format!("{}/{}/{}", ms(h.latency_last_ms), ms(h.latency_p50_ms), ms(h.latency_p99_ms)),
                h.ejections_skipped.to_string(),
                opt(&h.last_error),
            ]
        })
        .collect();
    let mut out = table(
        &["VIP", "BACKEND", "CHECK", "HEALTH", "PUBLISHED", "SINCE", "LATENCY last/p50/p99", "SKIPPED", "LAST_ERROR"],
        &rows,
    );
    let mut seen = std::collections::HashSet::new();
    for h in d.iter().filter(|h| h.vip_panic) {
        if seen.insert(h.vip.to_string()) {
            let since = h.vip_panic_since_secs.map(|s| format!(" for {}", duration(s))).unwrap_or_default();
            let _ = writeln!(
                out,
                "VIP {} IN PANIC{since}: passive ejection held back by its panic threshold ({} skipped); active checks still count",
                h.vip, h.vip_ejections_skipped
            );
        }
    }
    out
}

/// `top --json` prints one of these a line.
#[derive(Serialize)]
struct TopLine {
    status: StatusReply,
    stats: StatsReply,
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
        let status: StatusReply = proto::call(&cli.socket, &Request::Status)?;
        let stats: StatsReply = proto::call(&cli.socket, &Request::Stats)?;
        n += 1;
        if cli.json {
            println!("{}", serde_json::to_string(&TopLine { status, stats }).map_err(|e| e.to_string())?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_controlplane::proto::VipStats;

    fn proxy_vip(syn: SynStats) -> VipStats {
        VipStats {
            vip: "198.18.1.1:80".parse().unwrap(),
            id: Some(0),
            mode: Mode::Proxy,
            proto: Proto::Tcp,
            connections_active: 1,
            connections_total: 2,
            new_per_sec: 0.0,
            packets_in: 0,
            bytes_in: 3,
            bytes_out: 4,
            drops: [("half_open_timeout".to_owned(), 5)].into_iter().collect(),
            syn: Some(syn),
            backends: vec![],
        }
    }

    #[test]
    fn stats_show_syn_flood_on_and_off() {
        let on = SynStats {
            syns: 812_345,
            cookies_sent: 800_000,
            cookies_validated: 1000,
            cookies_rejected: 12,
            half_open: 128,
            flood: true,
            flood_lcores: 2,
            flood_since_unix: Some(1_700_000_000.0),
            flood_for_secs: Some(23.4),
        };
        let text = fmt_stats(&StatsReply { dataplane_alive: true, vips: vec![proxy_vip(on.clone())], lcores: vec![] });
        assert!(
            text.contains("198.18.1.1:80  syn: 812345 seen, cookies 800000 sent / 1000 validated / 12 rejected, half-open 128, flood ON for 23s (2 lcores)\n"),
            "{text}"
        );
        assert!(text.contains("half_open_timeout=5"), "{text}");

        let long = SynStats { flood_lcores: 1, flood_for_secs: Some(3725.0), ..on.clone() };
        assert!(fmt_syn(&long).ends_with("flood ON for 1h2m (1 lcore)"), "{}", fmt_syn(&long));

        let off = SynStats { flood: false, flood_lcores: 0, flood_since_unix: None, flood_for_secs: None, ..on };
        let text = fmt_stats(&StatsReply { dataplane_alive: true, vips: vec![proxy_vip(off)], lcores: vec![] });
        assert!(text.contains("half-open 128, flood off\n"), "{text}");
        assert!(!text.contains("ON"), "{text}");
    }

    #[test]
    fn stats_show_lcore_drops() {
        let l = LcoreStats {
            lcore: 1,
            rx_packets: 1000,
            rx_bytes: 64_000,
            tx_packets: 990,
            tx_bytes: 63_360,
            busy_ns: 1_500_000_000,
            rx_ring_frames: 1017,
            drops: [("rx_ring_full".to_owned(), 17), ("tx_full".to_owned(), 0), ("ipv4_bad_checksum".to_owned(), 2)]
                .into_iter()
                .collect(),
            forward_drops: [("ttl_exceeded".to_owned(), 3), ("no_backend".to_owned(), 0)].into_iter().collect(),
        };
        let text = fmt_stats(&StatsReply { dataplane_alive: true, vips: vec![], lcores: vec![l.clone()] });
        let header = text.lines().find(|x| x.starts_with("LCORE")).unwrap_or_else(|| panic!("{text}"));
        assert!(header.contains("RX_PKTS") && header.contains("BUSY_S") && header.ends_with("DROPS"), "{text}");
        let row = text.lines().find(|x| x.starts_with("1 ")).unwrap_or_else(|| panic!("{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["1", "1000", "64000", "990", "63360", "1.500", "1017", "ipv4_bad_checksum=2,rx_ring_full=17,fwd:ttl_exceeded=3"],
            "{text}"
        );
        let quiet = LcoreStats { drops: l.drops.keys().map(|k| (k.clone(), 0)).collect(), forward_drops: Default::default(), ..l };
        let text = fmt_stats(&StatsReply { dataplane_alive: true, vips: vec![], lcores: vec![quiet] });
        assert!(text.lines().any(|x| x.starts_with("1 ") && x.ends_with(" -")), "{text}");
    }
}
