//! `fulcrum-dataplane`: DPDK ports polled run-to-completion on pinned lcores.

#![deny(unsafe_code)]

mod config;
mod counters;
#[allow(unsafe_code)]
mod dpdk;
mod stats;
mod worker;

use anyhow::{bail, Context};
use clap::Parser;
use config::{Config, MBUF_CACHE};
use counters::LcoreCounters;
use dpdk::{Eal, LcoreJob, LcoreOutcome, Mempool, Port, PortConf};
use fulcrum_packet::{EthernetAddress, Local};
use stats::Stats;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use worker::{Backoff, Worker};

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
    let port = Port::start(port_id, &conf, pool, eal.socket_of(eal.main_lcore()))?;
    let mac = port.mac();
    let addrs = [d.address.addr];
    let local = Local {
        mac: EthernetAddress(mac),
        addrs: &addrs,
    };
    let counters: Vec<(u32, LcoreCounters)> = lcores.iter().map(|l| (l.0, LcoreCounters::default())).collect();
    let queues = port.take_queues().context("port queues already taken")?;
    let link = port.link();
    tracing::info!(
        "ready: port {} ({}) mac {} link {} {} Mb/s, address {}/{}, {} queue(s) on lcore(s) {:?}{}",
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
    );

    let outcomes = std::thread::scope(|scope| {
        if let Some(path) = &cli.stats_file {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = Stats::collect(&counters, pool).write(path) {
                        tracing::warn!("writing {}: {e}", path.display());
                    }
                    sleep_unless(stop, STATS_PERIOD);
                }
            });
        }
        let jobs: Vec<(dpdk::LcoreId, LcoreJob<'_>)> = lcores
            .iter()
            .zip(queues)
            .zip(&counters)
            .map(|((&lcore, (rx, tx)), (_, counters))| {
                let worker = Worker {
                    rx,
                    tx,
                    local,
                    counters,
                    stop,
                    backoff: Backoff::new(config.is_software()),
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

    let snapshot = Stats::collect(&counters, pool);
    for l in &snapshot.lcores {
        tracing::info!("{}", l.summary());
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
    drop(port);
    if let Some(path) = &cli.stats_file {
        Stats::collect(&counters, pool).write(path)?;
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
