//! `fulcrum-loadgen`: a load generator with no kernel on its path.
//!
//! It is a DPDK process of its own (one lcore) whose one port is a
//! `net_memif` client, connected over shared memory to the dataplane's
//! `net_memif` server port. On that one arm it plays both ends of a proxy
//! VIP: smoltcp clients (several source addresses, so ports never run out)
//! that connect to the VIP, and smoltcp backends (198.18.0.21-23:8080 by
//! default) that answer a fixed small HTTP/1.1-shaped response, or stream a
//! fixed pattern (bulk). It answers ARP for all of them. Every response and
//! every request is checked byte for byte (see `app`).
//!
//! Modes: `conn` (one request per connection, the backend closes after its
//! response), `keepalive` (a fixed set of connections, one request in flight
//! on each), `bulk` (one request, then an endless verified stream).
//!
//! Invariants: sockets are created once, before the loop, and reused
//! (connect/listen after abort, so no RST and no TIME-WAIT is kept); the
//! loop allocates nothing per packet (mbufs come from the DPDK pool, inboxes
//! have fixed capacity). Every wait is bounded (link, duration).

#![deny(unsafe_code)]

mod app;
mod shard;

use app::{Backends, Clients, Counters, Messages};
use clap::Parser;
use fulcrum_loadgen_status::Status;
use fulcrum_dataplane::dpdk::{DpdkError, Eal, MbufBatch, Mempool, Port, PortConf, SocketId};
use shard::{Device, Dispatch, Role, Shard, Target, Tx};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One request per connection; the backend closes after its response.
    Conn,
    /// A fixed set of connections, one request in flight on each.
    Keepalive,
    /// One request per connection, then an endless verified stream.
    Bulk,
}

/// Kernel-free load generator: smoltcp clients and backends on a DPDK
/// net_memif port, against a Fulcrum dataplane's proxy VIP.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The memif control socket (the dataplane's port is `net_memif0,role=server,socket=PATH,socket-abstract=no`).
    #[arg(long)]
    socket: PathBuf,
    /// What to generate.
    #[arg(long, value_enum)]
    mode: Mode,
    /// The CPU (EAL lcore) the generator runs on.
    #[arg(long, default_value_t = 0)]
    lcore: u32,
    /// EAL file prefix (unique per process; /var/run/dpdk/PREFIX is removed at exit).
    #[arg(long)]
    file_prefix: String,
    /// Run without hugepages (EAL --no-huge with --memory-mb); default: hugepages, unlinked.
    #[arg(long)]
    no_huge: bool,
    /// Memory for EAL with --no-huge, MiB.
    #[arg(long, default_value_t = 512)]
    memory_mb: u32,
    /// Client connections open at once (in total).
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// Client source addresses (one shard each), from --first-client on;
    /// 0: enough for at most 32 connections each (at least 16).
    #[arg(long, default_value_t = 0)]
    client_addresses: usize,
    #[arg(long, default_value = "198.18.0.100")]
    first_client: Ipv4Addr,
    /// Backend addresses (the VIP's backends in the dataplane's config).
    #[arg(long, value_delimiter = ',', default_value = "198.18.0.21,198.18.0.22,198.18.0.23")]
    backends: Vec<Ipv4Addr>,
    #[arg(long, default_value_t = 8080)]
    backend_port: u16,
    /// Shards per backend address (split by the dataplane's source port);
    /// 0: enough for about 16 connections each (at least 4).
    #[arg(long, default_value_t = 0)]
    backend_shards: usize,
    /// The proxy VIP the clients connect to.
    #[arg(long, default_value = "198.18.1.1:80")]
    vip: SocketAddrV4,
    /// The dataplane's address (the clients' route to the VIP).
    #[arg(long, default_value = "198.18.0.2")]
    gateway: Ipv4Addr,
    /// Response body bytes (conn, keepalive).
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Queue pairs on the memif port (as many as the dataplane's lcores).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop once this many responses were verified (and fail if fewer were).
    #[arg(long)]
    requests: Option<u64>,
    /// Rewrite the status (fulcrum-loadgen-status's `Status`, JSON, the
    /// summary's record) here every 100 ms and at exit.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// A connection (or request) without progress for this many seconds is given up.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Seconds to wait for the memif link to come up.
    #[arg(long, default_value_t = 10.0)]
    link_timeout: f64,
    /// The port's MAC address.
    #[arg(long, default_value = "02:00:00:00:10:01")]
    mac: String,
    /// Packet buffers in the pool.
    #[arg(long, default_value_t = 32767)]
    mbufs: u32,
    /// After the run, keep the port open (not polled) for up to this many
    /// seconds, until SIGINT/SIGTERM: so the dataplane can be stopped first.
    /// (A memif peer that disconnects while the other side's lcore polls can
    /// crash that side: DPDK 22.11 unmaps the shared rings under it. The
    /// dataplane guards against it (its dpdk::MemifGuard); this generator
    /// does not, hence the dataplane stops first.)
    #[arg(long, default_value_t = 0.0)]
    linger: f64,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("--{0}: {1}")]
    Arg(&'static str, String),
    #[error(transparent)]
    Dpdk(#[from] DpdkError),
    #[error("{0} DPDK ports were probed; expected exactly the memif port")]
    Ports(usize),
    #[error("the memif link did not come up within {0:?} (is a dataplane listening on {1} with role=server?)")]
    LinkDown(Duration, PathBuf),
    #[error("installing the signal handler: {0}")]
    Signal(#[from] ctrlc::Error),
    #[error("status file {0}: {1}")]
    Status(PathBuf, std::io::Error),
    #[error("verification failed: {bad_responses} bad responses, {bad_requests} bad requests")]
    Verify { bad_responses: u64, bad_requests: u64 },
    #[error("only {got} of the {want} requested responses were completed")]
    Short { got: u64, want: u64 },
}

/// Mbufs each lcore keeps in its pool cache.
const MBUF_CACHE: u32 = 256;
/// How often every shard is polled for timers (retransmissions, delayed ACKs).
const TICK: Duration = Duration::from_millis(5);
const STATUS_PERIOD: Duration = Duration::from_millis(100);

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut cli = Cli::parse();
    sizes(&mut cli);
    if let Err(e) = run(&cli) {
        tracing::error!("error: {e}");
        std::process::exit(1);
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}

/// Fills in the automatic sizes (0) from the connection count: smoltcp walks
/// a whole socket set per packet, so sets stay at a few dozen sockets.
fn sizes(cli: &mut Cli) {
    if cli.client_addresses == 0 {
        cli.client_addresses = cli.connections.div_ceil(32).clamp(16, 100);
    }
    if cli.backend_shards == 0 {
        cli.backend_shards = cli.connections.div_ceil(16 * cli.backends.len().max(1)).clamp(4, 64);
    }
}

fn check(cli: &Cli) -> Result<[u8; 6], Error> {
    let mac = parse_mac(&cli.mac).filter(|m| m[0] & 1 == 0).ok_or_else(|| Error::Arg("mac", format!("{:?} is not a unicast MAC like 02:00:00:00:10:01", cli.mac)))?;
    if cli.file_prefix.is_empty() || !cli.file_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(Error::Arg("file-prefix", format!("{:?}: 1 or more of A-Z a-z 0-9 - _", cli.file_prefix)));
    }
    let sock = cli.socket.to_string_lossy();
    if sock.contains(',') || sock.chars().any(char::is_whitespace) || !cli.socket.is_absolute() {
        return Err(Error::Arg("socket", format!("{sock:?}: an absolute path without commas or spaces")));
    }
    let in_lan = |a: Ipv4Addr| a.octets()[..3] == [198, 18, 0];
    if cli.client_addresses == 0 || cli.client_addresses > 100 {
        return Err(Error::Arg("client-addresses", format!("{}: 1..100", cli.client_addresses)));
    }
    let last = u32::from(cli.first_client) + cli.client_addresses as u32 - 1;
    if !in_lan(cli.first_client) || !in_lan(Ipv4Addr::from(last)) || Ipv4Addr::from(last).octets()[3] == 255 {
        return Err(Error::Arg("first-client", format!("{} + {} addresses must stay inside 198.18.0.1-254", cli.first_client, cli.client_addresses)));
    }
    if cli.backends.is_empty() || !cli.backends.iter().all(|&b| in_lan(b)) {
        return Err(Error::Arg("backends", "one or more addresses in 198.18.0.0/24".into()));
    }
    for b in &cli.backends {
        let o = u32::from(*b);
        if o >= u32::from(cli.first_client) && o <= last || *b == cli.gateway {
            return Err(Error::Arg("backends", format!("{b} is also a client address or the gateway")));
        }
    }
    if !in_lan(cli.gateway) {
        return Err(Error::Arg("gateway", format!("{} is not in 198.18.0.0/24", cli.gateway)));
    }
    if cli.connections == 0 || cli.connections > 100_000 {
        return Err(Error::Arg("connections", format!("{}: 1..100000", cli.connections)));
    }
    if cli.backend_shards == 0 || cli.backend_shards > 64 {
        return Err(Error::Arg("backend-shards", format!("{}: 1..64", cli.backend_shards)));
    }
    if cli.queues == 0 || cli.queues > 16 {
        return Err(Error::Arg("queues", format!("{}: 1..16", cli.queues)));
    }
    if cli.body > 16 * 1024 {
        return Err(Error::Arg("body", format!("{}: at most 16384 bytes", cli.body)));
    }
    for (name, v) in [("timeout", cli.timeout), ("link-timeout", cli.link_timeout), ("duration", cli.duration.unwrap_or(1.0))] {
        if !(v > 0.0 && v <= 3600.0) {
            return Err(Error::Arg(name, format!("{v}: more than 0, at most 3600 seconds")));
        }
    }
    if cli.duration.is_none() && cli.requests.is_none() {
        return Err(Error::Arg("duration", "give --duration, --requests, or both".into()));
    }
    Ok(mac)
}

fn run(cli: &Cli) -> Result<(), Error> {
    let mac = check(cli)?;
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))?;

    let mac_text = cli.mac.to_ascii_lowercase();
    let mut args = vec![
        "fulcrum-loadgen".to_owned(),
        "-l".to_owned(),
        cli.lcore.to_string(),
        format!("--file-prefix={}", cli.file_prefix),
        "--no-pci".to_owned(),
        format!("--vdev=net_memif0,role=client,socket={},socket-abstract=no,mac={mac_text}", cli.socket.display()),
    ];
    if cli.no_huge {
        args.extend(["--no-huge".to_owned(), format!("-m{}", cli.memory_mb)]);
    } else {
        args.push("--huge-unlink".to_owned());
    }
    tracing::info!("EAL arguments: {}", args.join(" "));
    let eal = Eal::init(&args)?;
    let result = generate(cli, &eal, mac, stop);
    drop(eal);
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", cli.file_prefix));
    result
}

fn generate(cli: &Cli, eal: &Eal, mac: [u8; 6], stop: &AtomicBool) -> Result<(), Error> {
    let ports = Port::available();
    if ports.len() != 1 {
        return Err(Error::Ports(ports.len()));
    }
    let socket = eal.socket_of(eal.main_lcore());
    let pool = Mempool::new("loadgen_mbufs", cli.mbufs, MBUF_CACHE, socket)?;
    let result = generate_on(cli, &pool, ports[0], socket, mac, stop);
    let in_use = pool.in_use();
    if in_use != 0 {
        tracing::warn!("{in_use} mbufs still in use at exit");
    }
    result
}

fn now_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[allow(clippy::too_many_arguments)]
fn generate_on(
    cli: &Cli,
    pool: &Mempool,
    port_id: fulcrum_dataplane::dpdk::PortId,
    socket: SocketId,
    mac: [u8; 6],
    stop: &AtomicBool,
) -> Result<(), Error> {
    let conf = PortConf { queues: cli.queues, rx_descriptors: 1024, tx_descriptors: 1024, mtu: None };
    let port = Port::start(port_id, &conf, pool, socket)?;
    let port_mac = port.mac();
    if port_mac != mac {
        tracing::warn!("the port's MAC is {port_mac:02x?}, not {mac:02x?}: using the port's");
    }
    let mac = port_mac;
    let wait = Duration::from_secs_f64(cli.link_timeout);
    let t0 = Instant::now();
    while !port.link().up {
        if t0.elapsed() > wait || stop.load(Ordering::Relaxed) {
            return Err(Error::LinkDown(wait, cli.socket.clone()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!("memif link up after {:?}", t0.elapsed());

    let queues = port.take_queues().expect("queues are taken once");
    let (mut rxs, mut txs): (Vec<_>, Vec<_>) = queues
        .into_iter()
        .map(|(rx, tx)| (rx, Tx { queue: tx, batch: MbufBatch::default(), pool, sent: 0, dropped: 0 }))
        .unzip();

    let msg = Messages::new(cli.mode, cli.body);
    let (crx, ctx, brx, btx) = match cli.mode {
        Mode::Bulk => (256 * 1024, 2048, 2048, 256 * 1024),
        _ => (4096, 1024, 1024, 4096),
    };
    let start = Instant::now();
    let smol = |t: Instant| smoltcp::time::Instant::from_micros((t - start).as_micros() as i64);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let gateway: Ipv4Address = cli.gateway;
    let nq = usize::from(cli.queues);

    // Shards: one per client address, backend_shards per backend address.
    let mut shards: Vec<Shard> = Vec::new();
    let mut dispatch = Dispatch::new();
    let per_client = cli.connections.div_ceil(cli.client_addresses);
    for i in 0..cli.client_addresses {
        let addr = Ipv4Addr::from(u32::from(cli.first_client) + i as u32);
        let first_port = 1024 + ((seed >> 16) as u16 % 60000);
        let idx = shards.len();
        dispatch.add(addr, idx, 1);
        shards.push(Shard::new(mac, addr, gateway, idx % nq, smol(Instant::now()), seed ^ idx as u64, |s| {
            Role::Clients(Clients::new(IpAddress::Ipv4(addr), s, per_client, crx, ctx, first_port))
        }));
    }
    // Enough listening sockets that the uneven spread of connections over
    // backends and shards never finds none: twice the fair share, plus spares.
    let per_backend = (cli.connections.div_ceil(cli.backends.len() * cli.backend_shards) * 2 + 8).max(16);
    for b in &cli.backends {
        let addr = *b;
        let first = shards.len();
        dispatch.add(addr, first, cli.backend_shards);
        for k in 0..cli.backend_shards {
            let idx = shards.len();
            shards.push(Shard::new(mac, addr, gateway, (idx + k) % nq, smol(Instant::now()), seed ^ (idx as u64) << 8, |s| {
                Role::Backends(Backends::new(cli.backend_port, s, per_backend, brx, btx))
            }));
        }
    }
    tracing::info!(
        "{} client shards x {per_client} sockets, {} backend shards x {per_backend} sockets; mode {:?}",
        cli.client_addresses,
        cli.backends.len() * cli.backend_shards,
        cli.mode
    );

    let vip = IpEndpoint::new(IpAddress::Ipv4(*cli.vip.ip()), cli.vip.port());
    let timeout = smoltcp::time::Duration::from_micros((cli.timeout * 1e6) as u64);
    let deadline = cli.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut c = Counters::default();
    let mut batch = MbufBatch::default();
    let mut next_tick = start;
    let mut next_status = start;
    let mut busy_ns: u64 = 0;
    let mut loops: u64 = 0;
    let mut busy_since: Option<Instant> = None;
    let mut status_err = None;

    loop {
        let now = Instant::now();
        if let Some(t) = busy_since.take() {
            busy_ns += (now - t).as_nanos() as u64;
        }
        loops += 1;
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) || cli.requests.is_some_and(|n| c.responses >= n) {
            break;
        }
        let mut busy = false;
        for rx in &mut rxs {
            if rx.recv(&mut batch) == 0 {
                continue;
            }
            busy = true;
            for m in batch.drain() {
                match dispatch.classify(m.data()) {
                    Target::One(i) => {
                        if shards[i].push(m).is_err() {
                            dispatch.inbox_full += 1;
                        }
                    }
                    Target::All(first, count) => {
                        for shard in &mut shards[first + 1..first + count] {
                            let copy = pool.alloc().and_then(|mut n| {
                                n.append(m.len())?.copy_from_slice(m.data());
                                Some(n)
                            });
                            if let Some(copy) = copy {
                                if shard.push(copy).is_err() {
                                    dispatch.inbox_full += 1;
                                }
                            }
                        }
                        if shards[first].push(m).is_err() {
                            dispatch.inbox_full += 1;
                        }
                    }
                    Target::Drop => dispatch.unknown += 1,
                }
            }
        }
        let tick = now >= next_tick;
        if tick {
            next_tick = now + TICK;
        }
        let ts = smol(now);
        let mut may_start = u64::MAX;
        for sh in &mut shards {
            if sh.inbox.is_empty() && !sh.wake && !tick {
                continue;
            }
            busy |= !sh.inbox.is_empty() || sh.wake;
            sh.wake = false;
            let tx = &mut txs[sh.queue];
            sh.iface.poll(ts, &mut Device { inbox: &mut sh.inbox, tx }, &mut sh.sockets);
            let changed = match &mut sh.role {
                Role::Clients(cl) => cl.step(cli.mode, &msg, sh.iface.context(), &mut sh.sockets, vip, ts, timeout, &mut may_start, &mut c),
                Role::Backends(b) => b.step(cli.mode, &msg, &mut sh.sockets, &mut c),
            };
            if changed {
                sh.iface.poll_egress(ts, &mut Device { inbox: &mut sh.inbox, tx }, &mut sh.sockets);
            }
        }
        for tx in &mut txs {
            tx.flush();
        }
        if busy {
            busy_since = Some(now);
        }
        if now >= next_status {
            next_status = now + STATUS_PERIOD;
            if let Some(path) = &cli.status_file {
                let st = status(cli.mode, start, &c, &txs, &dispatch, busy_ns, loops, &port, &shards);
                if let Err(e) = write_status(path, &st) {
                    status_err = Some(Error::Status(path.clone(), e));
                    break;
                }
            }
        }
    }
    // The summary: the same record as the status file, once, on stdout.
    let summary = status(cli.mode, start, &c, &txs, &dispatch, busy_ns, loops, &port, &shards);
    if let Some(path) = &cli.status_file {
        write_status(path, &summary).map_err(|e| Error::Status(path.clone(), e))?;
    }
    if let Some(e) = status_err {
        return Err(e);
    }
    println!("{}", serde_json::to_string(&summary).expect("a Status serializes"));
    let _ = std::io::stdout().flush();
    if cli.linger > 0.0 && !stop.load(Ordering::SeqCst) {
        let until = Instant::now() + Duration::from_secs_f64(cli.linger.min(3600.0));
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Frames still queued go back to the pool before the port closes.
    drop(shards);
    drop(txs);
    drop(rxs);
    drop(batch);
    if c.bad_responses > 0 || c.bad_requests > 0 {
        return Err(Error::Verify { bad_responses: c.bad_responses, bad_requests: c.bad_requests });
    }
    if let Some(want) = cli.requests {
        if c.responses < want {
            return Err(Error::Short { got: c.responses, want });
        }
    }
    Ok(())
}

/// The generator's report now (the status file's and the summary's record).
#[allow(clippy::too_many_arguments)]
fn status(
    mode: Mode,
    start: Instant,
    c: &Counters,
    txs: &[Tx<'_>],
    d: &Dispatch,
    busy_ns: u64,
    loops: u64,
    port: &Port<'_>,
    shards: &[Shard],
) -> Status {
    let (tx_packets, tx_dropped): (u64, u64) = txs.iter().fold((0, 0), |(s, d), t| (s + t.sent, d + t.dropped));
    let ps = port.stats();
    Status {
        time: now_epoch(),
        mode: format!("{mode:?}"),
        seconds: start.elapsed().as_secs_f64(),
        counters: *c,
        rx_packets: ps.rx_packets,
        tx_packets,
        tx_dropped,
        rx_missed: ps.rx_missed,
        unknown: d.unknown,
        inbox_full: d.inbox_full,
        busy_ns,
        loops,
        in_flight: shards.iter().map(|s| if let Role::Clients(cl) = &s.role { cl.busy() as u64 } else { 0 }).sum(),
    }
}

/// Replaces the status file (written aside, then renamed: readers never see half).
fn write_status(path: &std::path::Path, st: &Status) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&mut f, st)?;
    writeln!(f)?;
    drop(f);
    std::fs::rename(&tmp, path)
}
