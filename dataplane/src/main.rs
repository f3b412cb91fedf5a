//! `fulcrum-dataplane`: DPDK ports polled run-to-completion on pinned lcores.

#![deny(unsafe_code)]

mod config;
mod counters;
mod device;
#[allow(unsafe_code)]
mod dpdk;
mod stats;
mod worker;

use anyhow::{bail, Context};
use clap::Parser;
use config::{Config, MBUF_CACHE};
use counters::LcoreCounters;
use crossbeam::queue::ArrayQueue;
use device::{EngineInbox, TxSide};
use dpdk::{Eal, LcoreJob, LcoreOutcome, MbufBatch, Mempool, Port, PortConf, Ring};
use fulcrum_packet::{EthernetAddress, Local};
use fulcrum_proxy::Engine;
use stats::{EngineReport, Stats};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use worker::{Backoff, ProxySide, Steering, Worker};

/// Fulcrum's dataplane: owns a DPDK port (a NIC, or net_tap in software mode)
/// and answers on it from pinned lcores.
#[derive(Parser)]
#[command(version, after_help = "Extra EAL arguments may follow `--`; they come after the ones derived from the config.")]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Write every lcore's counters here as JSON, about once a second and at exit.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Extra EAL arguments.
    #[arg(last = true)]
    eal: Vec<String>,
}

/// How often the stats file is rewritten.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// Mbufs one lcore's handover ring holds (a power of two).
const HANDOVER_RING: u32 = 4096;
/// Frames an engine takes per iteration: a burst from its own queue, a burst
/// from its ring, and ARP copies.
const ENGINE_INBOX: usize = 4 * dpdk::BURST;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => {}
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    let d = &config.dataplane;
    let huge = config::hugepages_usable(config.hugepage_bytes());
    let args = config.eal_args(huge, &cli.eal);
    tracing::info!("EAL arguments: {}", args.join(" "));

    // The handler lives as long as the process, and so does the flag.
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    ctrlc::set_handler(move || {
        tracing::info!("signal received: stopping");
        stop.store(true, Ordering::SeqCst);
    })
    .context("installing the SIGINT/SIGTERM handler")?;

    let eal = Eal::init(&args)?;
    let result = serve(&config, &eal, stop, cli);
    drop(eal);
    remove_runtime_dir(&d.file_prefix);
    result
}

fn serve(config: &Config, eal: &Eal, stop: &AtomicBool, cli: &Cli) -> anyhow::Result<()> {
    let d = &config.dataplane;
    let lcores = eal.lcores();
    let ports = Port::available();
    let Some(&port_id) = ports.first() else {
        bail!("no DPDK port was probed (software mode needs net_tap; hardware mode needs the PCI device bound to a DPDK driver)");
    };
    if ports.len() > 1 {
        bail!("{} ports were probed; this dataplane drives exactly one", ports.len());
    }
    let socket = eal.socket_of(eal.main_lcore());
    let pool = Mempool::new("fulcrum_mbufs", d.mbufs, MBUF_CACHE, socket)?;
    let served = serve_port(config, eal, &pool, port_id, &lcores, stop, cli);
    let in_use = pool.in_use();
    tracing::info!("mbufs in use: {in_use} of {}", pool.capacity());
    drop(pool);
    served?;
    if in_use != 0 {
        bail!("{in_use} mbufs were not returned to the pool");
    }
    Ok(())
}

fn serve_port(
    config: &Config,
    eal: &Eal,
    pool: &Mempool,
    port_id: dpdk::PortId,
    lcores: &[dpdk::LcoreId],
    stop: &AtomicBool,
    cli: &Cli,
) -> anyhow::Result<()> {
    let d = &config.dataplane;
    let conf = PortConf {
        queues: u16::try_from(lcores.len()).context("too many lcores")?,
        rx_descriptors: d.rx_descriptors,
        tx_descriptors: d.tx_descriptors,
    };
    let socket = eal.socket_of(eal.main_lcore());
    let port = Port::start(port_id, &conf, pool, socket)?;
    let mac = port.mac();
    let proxy_vips: Vec<(Ipv4Addr, u16)> = config.proxy_vips().map(|v| (v.address, v.port)).collect();
    let mut addrs = vec![d.address.addr];
    for (addr, _) in &proxy_vips {
        if !addrs.contains(addr) {
            addrs.push(*addr);
        }
    }
    let local = Local {
        mac: EthernetAddress(mac),
        addrs: &addrs,
    };
    let counters: Vec<(u32, LcoreCounters)> = lcores.iter().map(|l| (l.0, LcoreCounters::default())).collect();
    let queues = port.take_queues().context("port queues already taken")?;
    // Proxy mode: one engine and one handover ring per lcore.
    let proxying = !proxy_vips.is_empty();
    let rings: Vec<Ring> = if proxying {
        (0..lcores.len())
            .map(|i| Ring::new(&format!("fulcrum_handover{i}"), HANDOVER_RING - 1, socket))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let reports: Vec<ArrayQueue<EngineReport>> = (0..lcores.len()).map(|_| ArrayQueue::new(1)).collect();
    let mut engines = Vec::new();
    if proxying {
        for i in 0..lcores.len() {
            engines.push(Some(Engine::new(engine_config(config, mac, i, lcores.len()))?));
        }
    } else {
        engines.resize_with(lcores.len(), || None);
    }

    let link = port.link();
    tracing::info!(
        "ready: port {} ({}) mac {} link {} {} Mb/s, address {}/{}, {} queue(s) on lcore(s) {:?}{}{}",
        port.id(),
        port.name(),
        mac_string(mac),
        if link.up { "up" } else { "down" },
        link.speed_mbps,
        d.address.addr,
        d.address.prefix_len,
        conf.queues,
        lcores.iter().map(|l| l.0).collect::<Vec<_>>(),
        d.software.as_ref().map(|s| format!(", software mode on tap {}", s.tap)).unwrap_or_default(),
        if proxying { format!(", {} proxy VIP(s)", proxy_vips.len()) } else { String::new() },
    );

    let latest: Vec<parking_lot::Mutex<Option<EngineReport>>> = (0..lcores.len()).map(|_| parking_lot::Mutex::new(None)).collect();
    let collect = || {
        let mut snapshot = Vec::with_capacity(reports.len());
        for (queue, slot) in reports.iter().zip(&latest) {
            let mut slot = slot.lock();
            if let Some(r) = queue.pop() {
                *slot = Some(r);
            }
            snapshot.push(slot.take());
        }
        let stats = Stats::collect(&counters, pool, &snapshot);
        for (slot, r) in latest.iter().zip(snapshot) {
            *slot.lock() = r;
        }
        stats
    };
    let outcomes = std::thread::scope(|scope| {
        if let Some(path) = &cli.stats_file {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = collect().write(path) {
                        tracing::warn!("writing {}: {e}", path.display());
                    }
                    sleep_unless(stop, STATS_PERIOD);
                }
            });
        }
        let mut consumers: Vec<_> = rings.iter().map(|r| r.consumer()).collect();
        let jobs: Vec<(dpdk::LcoreId, LcoreJob<'_>)> = lcores
            .iter()
            .zip(queues)
            .zip(&counters)
            .zip(engines)
            .enumerate()
            .map(|(i, (((&lcore, (rx, tx)), (_, counters)), engine))| {
                let proxy = engine.map(|engine| ProxySide {
                    engine,
                    steering: Steering {
                        me: i,
                        lcores: lcores.len(),
                        vips: &proxy_vips,
                        own_addr: d.address.addr,
                        local_ports: (config.proxy.local_ports.0, config.proxy.local_ports.1),
                        rings: &rings,
                    },
                    handover: consumers[i].take().expect("one consumer per ring"),
                    inbox: EngineInbox::with_capacity(ENGINE_INBOX),
                    reports: &reports[i],
                });
                let worker = Worker {
                    rx,
                    tx: TxSide {
                        queue: tx,
                        batch: MbufBatch::default(),
                        pool,
                        counters,
                    },
                    local,
                    counters,
                    stop,
                    backoff: Backoff::new(config.is_software()),
                    proxy,
                };
                let job: LcoreJob<'_> = Box::new(move || {
                    // A dead lcore would silently blackhole its queue: stop all.
                    let _stop_on_panic = StopOnPanic(stop);
                    worker.run();
                });
                (lcore, job)
            })
            .collect();
        let outcomes = dpdk::launch(eal, jobs);
        stop.store(true, Ordering::SeqCst);
        outcomes
    });

    let snapshot = collect();
    for l in &snapshot.lcores {
        tracing::info!("{}", l.summary());
    }
    for v in &snapshot.vips {
        tracing::info!("vip {v}");
    }
    let ps = port.stats();
    tracing::info!(
        "port {}: rx {} pkts {} bytes, tx {} pkts {} bytes, missed {}, rx errors {}, tx errors {}, rx no-mbuf {}",
        port.id(),
        ps.rx_packets,
        ps.rx_bytes,
        ps.tx_packets,
        ps.tx_bytes,
        ps.rx_missed,
        ps.rx_errors,
        ps.tx_errors,
        ps.rx_nombuf
    );
    for (name, value) in port.xstats().iter().filter(|(_, v)| *v != 0) {
        tracing::debug!("xstat {name} = {value}");
    }
    drop(rings);
    drop(port);
    if let Some(path) = &cli.stats_file {
        collect().write(path)?;
    }
    let mut failed = false;
    for (lcore, outcome) in outcomes {
        match outcome {
            LcoreOutcome::Returned => {}
            LcoreOutcome::Panicked(msg) => {
                tracing::error!("lcore {lcore} panicked: {msg}");
                failed = true;
            }
            LcoreOutcome::NotLaunched(msg) => {
                tracing::error!("lcore {lcore} was not launched: {msg}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("an lcore failed");
    }
    Ok(())
}

/// One lcore's proxy engine configuration, from the file's VIPs.
fn engine_config(config: &Config, mac: [u8; 6], lcore: usize, lcores: usize) -> fulcrum_proxy::EngineConfig {
    use fulcrum_proxy::{Affinity, BackendConfig, ProxyProtocol, VipConfig};
    let d = &config.dataplane;
    let mut e = fulcrum_proxy::EngineConfig::new(EthernetAddress(mac), d.address.addr, d.address.prefix_len);
    e.lcore = lcore;
    e.lcores = lcores;
    e.local_ports = config.proxy.local_ports.0..config.proxy.local_ports.1;
    e.buffer_size = config.proxy.buffer_size;
    e.max_spare_connections = config.proxy.max_spare_connections;
    // Initial sequence numbers must not be predictable: seed from the clock.
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(0);
    e.random_seed = clock ^ ((lcore as u64) << 48) ^ u64::from(std::process::id());
    e.vips = config
        .proxy_vips()
        .map(|v| {
            let backends = v
                .backends
                .iter()
                .map(|b| BackendConfig {
                    addr: b.address,
                    port: b.port,
                    weight: b.weight,
                })
                .collect();
            let mut vip = VipConfig::new(v.address, v.port, backends);
            vip.table_size = v.table_size;
            vip.affinity = match v.affinity {
                config::Affinity::Flow => Affinity::ClientAddrPort,
                config::Affinity::Client => Affinity::ClientAddr,
            };
            vip.max_connections = v.max_connections;
            vip.connect_timeout = Duration::from_millis(v.connect_timeout_ms);
            vip.max_connect_tries = v.connect_tries;
            vip.idle_timeout = Duration::from_millis(v.idle_timeout_ms);
            vip.proxy_protocol = match v.proxy_protocol {
                config::ProxyProtocol::Off => ProxyProtocol::Off,
                config::ProxyProtocol::V1 => ProxyProtocol::V1,
                config::ProxyProtocol::V2 => ProxyProtocol::V2,
            };
            vip
        })
        .collect();
    e
}

/// `aa:bb:cc:dd:ee:ff`, as `ip link` prints it.
fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Sets the stop flag when dropped during a panic.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < total && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// EAL leaves its runtime directory behind; a clean exit removes it.
fn remove_runtime_dir(prefix: &str) {
    let base = if nix_is_root() {
        PathBuf::from("/var/run/dpdk")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(|| "/tmp".into()).join("dpdk")
    };
    let dir = base.join(prefix);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => tracing::debug!("removed {}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", dir.display()),
    }
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}
