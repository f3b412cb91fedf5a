//! `fulcrum-dataplane`: DPDK ports polled run-to-completion on pinned lcores.

#![deny(unsafe_code)]

mod config;
mod control;
mod counters;
mod device;
mod softdev;
mod stats;
mod worker;

use anyhow::{bail, Context};
use fulcrum_dataplane::dpdk;
use clap::Parser;
use config::{Config, MBUF_CACHE};
use counters::{LcoreCounters, LocalDrop};
use crossbeam::queue::ArrayQueue;
use device::{EngineInbox, TxSide};
use dpdk::{Eal, LcoreJob, LcoreOutcome, MbufBatch, Mempool, Port, PortConf, Ring};
use fulcrum_packet::EthernetAddress;
use fulcrum_proxy::Engine;
use fulcrum_forward::Forwarder;
use control::{LcoreAck, Prepared};
use fulcrum_model::{DataplaneReport, Facts, Mode, Published, TableDigest, VipRefusal};
use stats::{LcoreReport, Stats};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use worker::{Backoff, ForwardSide, Handover, ProxySide, ProxySteering, Worker};

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
/// How often the control thread beats and looks for a new generation.
const CONTROL_PERIOD: Duration = Duration::from_millis(100);
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

    // af_packet / af_xdp: the veth pair exists before EAL probes the device,
    // and is removed after the port is closed (when `veth` drops, last).
    let veth = match &d.software {
        Some(sw) => softdev::Veth::create(&sw.device, d.lcores.0.len(), sw.mac, d.mtu)?,
        None => None,
    };
    let eal = Eal::init(&args)?;
    let result = serve(&config, &eal, stop, cli, veth.as_ref());
    drop(eal);
    remove_runtime_dir(&d.file_prefix);
    result
}

fn serve(config: &Config, eal: &Eal, stop: &AtomicBool, cli: &Cli, veth: Option<&softdev::Veth>) -> anyhow::Result<()> {
    let d = &config.dataplane;
    let lcores = eal.lcores();
    let ports = Port::available();
    let Some(&port_id) = ports.first() else {
        bail!("no DPDK port was probed (software mode: is the device's PMD installed? hardware mode needs the PCI device bound to a DPDK driver)");
    };
    if ports.len() > 1 {
        bail!("{} ports were probed; this dataplane drives exactly one", ports.len());
    }
    let socket = eal.socket_of(eal.main_lcore());
    let pool = Mempool::with_buffer("fulcrum_mbufs", d.mbufs, MBUF_CACHE, config.frame_room(), socket)?;
    let served = serve_port(config, eal, &pool, port_id, &lcores, stop, cli, veth);
    // What the driver keeps at close by design (see `driver_kept_mbufs`) is
    // not ours to return; anything beyond it is a leak.
    let kept = served.as_ref().map_or(0, |k| *k).min(pool.in_use());
    let in_use = pool.in_use() - kept;
    tracing::info!("mbufs in use: {in_use} of {}", pool.capacity());
    if kept > 0 {
        tracing::info!("mbufs kept by the driver at close: {kept} (net_af_xdp's fill and TX rings: DPDK 22.11 does not return them)");
    }
    drop(pool);
    served?;
    if in_use != 0 {
        bail!("{in_use} mbufs were not returned to the pool");
    }
    Ok(())
}

/// Mbufs the driver may keep at close, for a driver that does: net_af_xdp
/// (DPDK 22.11) fills its UMEM fill ring from our pool when a queue is set up
/// (what it holds right after the port started) and refills it as frames
/// arrive, and sent mbufs wait in its TX/completion rings (at most
/// `tx_descriptors` a queue) until a later send collects them; its close only
/// forgets the pool (`xdp_umem_destroy`), so neither comes back. Other drivers
/// allocate on receive (net_tap, af_packet) or free their rings at close (NIC
/// PMDs): 0, and every mbuf must come back.
fn driver_kept_mbufs(config: &Config, pool: &Mempool) -> u32 {
    let d = &config.dataplane;
    match d.software.as_ref().map(|s| &s.device) {
        Some(config::SoftDevice::AfXdp(_)) => pool.in_use() + d.lcores.0.len() as u32 * u32::from(d.tx_descriptors),
        _ => 0,
    }
}

/// The MTU to set through DPDK: none at the default (every device starts
/// there) or on af_packet, whose veth the dataplane made with the MTU
/// (DPDK 22.11's af_packet tells ethdev 1500 at most, whatever its rings
/// hold); otherwise the port's, which the driver may refuse (DPDK 22.11's
/// net_tap takes 1504 at most), failing the start with the figures. (af_xdp
/// above 1500 is refused by the configuration check.)
fn port_mtu(config: &Config) -> Option<u16> {
    let d = &config.dataplane;
    let af_packet = matches!(d.software.as_ref().map(|s| &s.device), Some(config::SoftDevice::AfPacket(_)));
    (d.mtu != device::DEFAULT_MTU && !af_packet).then_some(d.mtu)
}

/// Sets the kernel-side queue of our tap (`txqueuelen`), the only receive
/// buffer a net_tap port has: see [`config::Software::tap_queue_len`] for why
/// the kernel's 1000 is too shallow. Through sysfs, which `ip netns exec`
/// mounts for the namespace the dataplane (and so its tap) lives in. A
/// failure is not fatal (the port works, only drops more under bursts).
fn deepen_tap_queue(tap: &str, len: u32) {
    let path = format!("/sys/class/net/{tap}/tx_queue_len");
    match std::fs::write(&path, len.to_string()) {
        Ok(()) => tracing::info!("tap {tap}: kernel queue towards the dataplane set to {len} frames"),
        Err(e) => tracing::warn!(
            "tap {tap}: could not set its kernel queue to {len} frames ({path}: {e}); bursts of many \
             connections will be tail-dropped there (`ip link set {tap} txqueuelen {len}` does it by hand)"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn serve_port(
    config: &Config,
    eal: &Eal,
    pool: &Mempool,
    port_id: dpdk::PortId,
    lcores: &[dpdk::LcoreId],
    stop: &AtomicBool,
    cli: &Cli,
    veth: Option<&softdev::Veth>,
) -> anyhow::Result<u32> {
    let d = &config.dataplane;
    let conf = PortConf {
        queues: u16::try_from(lcores.len()).context("too many lcores")?,
        rx_descriptors: d.rx_descriptors,
        tx_descriptors: d.tx_descriptors,
        mtu: port_mtu(config),
    };
    let socket = eal.socket_of(eal.main_lcore());
    let port = Port::start(port_id, &conf, pool, socket)?;
    // A net_memif peer's disconnect must not unmap memory under a polling lcore.
    let (memif_guard, mut quiescent) = match d.software.as_ref().and_then(|s| memif_socket(&s.device)) {
        Some(path) => {
            let (guard, tokens) = dpdk::MemifGuard::start(port.id(), &path, lcores.len())?;
            (Some(guard), tokens.into_iter().map(Some).collect())
        }
        None => (None, Vec::new()),
    };
    let driver_kept = driver_kept_mbufs(config, pool);
    if let Some(sw) = &d.software {
        if let config::SoftDevice::Tap(tap) = &sw.device {
            deepen_tap_queue(tap, sw.tap_queue_len());
        }
    }
    // Found before the kernel side comes up, and read once: what the
    // sockets saw before they were bound (any interface's frames) or before
    // the kernel side was up is not the port's traffic.
    let mut rx_rings = match (&d.software, veth) {
        (Some(config::Software { device: dev @ config::SoftDevice::AfPacket(_), .. }), Some(_)) => {
            let (_, dpdk_side) = dev.veth().expect("af_packet has a veth");
            let mut rings = dpdk::RxRings::find(&dpdk_side)
                .with_context(|| format!("finding the af_packet PMD's sockets on {dpdk_side}"))?;
            if rings.queues() != lcores.len() {
                bail!("{dpdk_side}: {} af_packet socket(s) for {} queue(s)", rings.queues(), lcores.len());
            }
            let before = rings.take().context("reading the af_packet rings' counters")?;
            tracing::debug!("{dpdk_side}: af_packet sockets' counts before the port's traffic (not counted): {before:?}");
            Some(rings)
        }
        _ => None,
    };
    if let (Some(veth), Some(sw)) = (veth, &d.software) {
        veth.port_started(&sw.device, port.mac())?;
    }
    let mac = port.mac();
    // With a control plane, VIPs of every mode may arrive at any time: have
    // engines and forwarders. Without one, only what the file needs.
    let proxying = d.shm.is_some() || config.vips.iter().any(|v| v.mode == Mode::Proxy);
    let forwarding = d.shm.is_some() || config.vips.iter().any(|v| v.mode.is_forwarding());
    let facts = config.facts(forwarding);
    // The file's VIPs are generation 0, prepared like any other.
    let file_vips = file_generation(config);
    let Prepared { applied: initial, refused, tables: initial_tables } = control::prepare(&file_vips, 0, &facts, lcores.len())
        .map_err(|e| anyhow::anyhow!("the file's VIPs: {e}"))?;
    if let Some(r) = refused.first() {
        bail!("the file's VIP {}: {}", r.vip, r.reason);
    }
    let (proxy_count, forward_count) = (initial.proxy_vips.len(), initial.forward.len());
    let initial = Arc::new(initial);
    let counters: Vec<(u32, LcoreCounters)> = lcores.iter().map(|l| (l.0, LcoreCounters::default())).collect();
    let queues = port.take_queues().context("port queues already taken")?;
    // A connection belongs to one lcore; frames reaching another are handed
    // over through the owner's ring.
    let rings: Vec<Ring> = if proxying || forwarding {
        (0..lcores.len())
            .map(|i| Ring::new(&format!("fulcrum_handover{i}"), HANDOVER_RING - 1, socket))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let reports: Vec<ArrayQueue<LcoreReport>> = (0..lcores.len()).map(|_| ArrayQueue::new(1)).collect();
    let commands: Vec<ArrayQueue<Arc<control::Applied>>> = (0..lcores.len()).map(|_| ArrayQueue::new(1)).collect();
    for queue in &commands {
        queue.force_push(Arc::clone(&initial));
    }
    let acks: Vec<ArrayQueue<LcoreAck>> = (0..lcores.len()).map(|_| ArrayQueue::new(4)).collect();
    let counter_names = control::lcore_counter_names(&counters[0].1.snapshot(0));
    let segment = match &d.shm {
        Some(path) => Some(
            fulcrum_shm::Segment::open_or_create(path)
                .with_context(|| format!("opening the shared-memory segment {}", path.display()))?,
        ),
        None => None,
    };
    let names: Vec<&str> = counter_names.iter().map(String::as_str).collect();
    let mut shm_role = match &segment {
        Some(seg) => Some(
            seg.dataplane(&fulcrum_shm::DataplaneInit {
                lcores: lcores.len(),
                counter_names: &names,
                gauge_mask: 0,
            })
            .context("taking the dataplane role in the shared-memory segment")?,
        ),
        None => None,
    };
    let mut shm_blocks: Vec<_> = (0..lcores.len())
        .map(|i| shm_role.as_mut().and_then(|r| r.take_lcore(i)))
        .collect();
    let mut engines = Vec::new();
    let mut forwarders = Vec::new();
    for i in 0..lcores.len() {
        engines.push(if proxying { Some(Engine::new(engine_config(config, mac, i, lcores.len()))?) } else { None });
        forwarders.push(if forwarding { Some(Forwarder::new(forwarder_config(config, mac, i, lcores.len()))?) } else { None });
    }

    if d.gateway.is_some() || !d.routes.is_empty() {
        let routes: Vec<String> = d
            .gateway
            .map(|g| format!("default via {g}"))
            .into_iter()
            .chain(d.routes.iter().map(|r| format!("{} via {}", r.prefix, r.via)))
            .collect();
        tracing::info!("proxy engines' routes: {}", routes.join(", "));
    }
    let link = port.link();
    tracing::info!(
        "ready: port {} ({}) mac {} link {} {} Mb/s, address {}/{}, mtu {}, {} queue(s) on lcore(s) {:?}{}{}",
        port.id(),
        port.name(),
        mac_string(mac),
        if link.up { "up" } else { "down" },
        link.speed_mbps,
        d.address.addr,
        d.address.prefix_len,
        d.mtu,
        conf.queues,
        lcores.iter().map(|l| l.0).collect::<Vec<_>>(),
        d.software
            .as_ref()
            .map(|s| match &s.device {
                config::SoftDevice::Vdev(v) => format!(", software mode on {v}"),
                dev => format!(", software mode on {} {}", dev.key(), dev.kernel_iface().unwrap_or_default()),
            })
            .unwrap_or_default(),
        if proxying || forwarding {
            format!(", {proxy_count} proxy and {forward_count} forwarding VIP(s) from the file")
        } else {
            String::new()
        },
    );

    // Each lcore's newest report; the stats writer and the final summary read
    // them (never the lcores, which only push to `reports`).
    let latest = parking_lot::Mutex::new((0..lcores.len()).map(|_| None).collect::<Vec<Option<LcoreReport>>>());
    let collect = || {
        let mut latest = latest.lock();
        for (queue, slot) in reports.iter().zip(latest.iter_mut()) {
            if let Some(r) = queue.pop() {
                *slot = Some(r);
            }
        }
        Stats::collect(&counters, pool, &latest)
    };
    let outcomes = std::thread::scope(|scope| {
        let (collect, shm_role, commands, acks, facts) = (&collect, shm_role.as_ref(), &commands, &acks, &facts);
        let rx_rings = rx_rings.as_mut().map(|rings| RingCounter { rings, counters: &counters, failed: false });
        scope.spawn(move || control_thread(cli, stop, collect, shm_role, commands, acks, facts, initial_tables, rx_rings));
        let mut consumers: Vec<_> = rings.iter().map(|r| r.consumer()).collect();
        let jobs: Vec<(dpdk::LcoreId, LcoreJob<'_>)> = lcores
            .iter()
            .zip(queues)
            .zip(&counters)
            .zip(engines.into_iter().zip(forwarders))
            .enumerate()
            .map(|(i, (((&lcore, (rx, tx)), (_, counters)), (engine, forwarder)))| {
                let handover = consumers.get_mut(i).and_then(Option::take).map(|inbound| Handover {
                    me: i,
                    lcores: lcores.len(),
                    rings: &rings,
                    inbound,
                });
                let proxy = engine.map(|engine| ProxySide {
                    engine,
                    steering: ProxySteering {
                        vips: Vec::new(),
                        own_addr: d.address.addr,
                        local_ports: (config.proxy.local_ports.0, config.proxy.local_ports.1),
                    },
                    inbox: EngineInbox::with_capacity(ENGINE_INBOX),
                });
                let worker = Worker {
                    lcore: lcore.0,
                    rx,
                    tx: TxSide {
                        queue: tx,
                        batch: MbufBatch::default(),
                        pool,
                        counters,
                        max_frame: device::frame_len(d.mtu),
                    },
                    mac: EthernetAddress(mac),
                    addrs: vec![d.address.addr],
                    shm: shm_blocks[i].take(),
                    commands: &commands[i],
                    acks: &acks[i],
                    applied: None,
                    counters,
                    stop,
                    backoff: Backoff::new(config.is_software()),
                    handover,
                    proxy,
                    forward: forwarder.map(|forwarder| ForwardSide { forwarder }),
                    reports: &reports[i],
                    quiescent: quiescent.get_mut(i).and_then(Option::take),
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
    let ring_frames: u64 = counters.iter().map(|(_, c)| c.rx_ring_frames.get()).sum();
    let ring_full: u64 = snapshot.lcores.iter().map(|l| l.drops[LocalDrop::RxRingFull.name()]).sum();
    tracing::info!(
        "port {}: rx {} pkts {} bytes, tx {} pkts {} bytes, missed {}, rx errors {}, tx errors {}, rx no-mbuf {}{}",
        port.id(),
        ps.rx_packets,
        ps.rx_bytes,
        ps.tx_packets,
        ps.tx_bytes,
        ps.rx_missed,
        ps.rx_errors,
        ps.tx_errors,
        ps.rx_nombuf,
        if rx_rings.is_some() {
            format!(", af_packet RX rings: {ring_frames} frames from the kernel, {ring_full} dropped full (rx_ring_full)")
        } else {
            String::new()
        }
    );
    for (name, value) in port.xstats().iter().filter(|(_, v)| *v != 0) {
        tracing::debug!("xstat {name} = {value}");
    }
    drop(rings);
    // Before the port: the port's stop takes the lock the guard holds.
    drop(memif_guard);
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
    Ok(driver_kept)
}

/// The control socket of a `net_memif` vdev (DPDK's default when not given).
fn memif_socket(device: &config::SoftDevice) -> Option<String> {
    let config::SoftDevice::Vdev(v) = device else { return None };
    let (name, args) = v.split_once(',').unwrap_or((v.as_str(), ""));
    if !name.starts_with("net_memif") {
        return None;
    }
    let socket = args.split(',').find_map(|kv| kv.strip_prefix("socket=")).unwrap_or("/run/memif.sock");
    Some(socket.to_owned())
}

/// One lcore's proxy engine configuration; its VIPs come as generation 0.
fn engine_config(config: &Config, mac: [u8; 6], lcore: usize, lcores: usize) -> fulcrum_proxy::EngineConfig {
    let d = &config.dataplane;
    let mut e = fulcrum_proxy::EngineConfig::new(EthernetAddress(mac), d.address.addr, d.address.prefix_len);
    e.gateway = d.gateway;
    e.routes = config.static_routes();
    e.lcore = lcore;
    e.lcores = lcores;
    e.local_ports = config.proxy.local_ports.0..config.proxy.local_ports.1;
    e.buffer_size = config.proxy.buffer_size;
    e.max_spare_connections = config.proxy.max_spare_connections;
    e.syn_cookies = config.proxy.syn_cookies.0;
    e.syn_cookie_threshold = config.proxy.syn_cookie_threshold;
    e.syn_cookie_seed = config.proxy.syn_cookie_seed.map(|s| s.0);
    e.half_open_timeout = config.proxy.half_open_timeout.0;
    e.mtu = device::frame_len(d.mtu);
    // Initial sequence numbers must not be predictable: seed from the clock.
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(0);
    e.random_seed = clock ^ ((lcore as u64) << 48) ^ u64::from(std::process::id());
    e
}

/// The file's VIPs as a generation: ids and counter slots in file order.
fn file_generation(config: &Config) -> Vec<Published> {
    let mut slot = 0;
    config
        .vips
        .iter()
        .enumerate()
        .map(|(id, vip)| {
            let slots = (slot..slot + vip.backends.len() as u32).collect();
            slot += vip.backends.len() as u32;
            Published { id: id as u16, slots, vip: vip.clone() }
        })
        .collect()
}

/// One lcore's forwarder configuration; its VIPs come as generation 0.
fn forwarder_config(config: &Config, mac: [u8; 6], lcore: usize, lcores: usize) -> fulcrum_forward::ForwarderConfig {
    use fulcrum_forward::{ForwarderConfig, Timeouts};
    let d = &config.dataplane;
    let f = &config.forward;
    // FullNAT sources; with none, the dataplane's own address is the ARP
    // sender for resolving DSR and tunnel backends.
    let addrs = if f.snat_addresses.is_empty() { vec![d.address.addr] } else { f.snat_addresses.clone() };
    ForwarderConfig {
        mac,
        addrs,
        lcore,
        lcores,
        local_ports: (1024, u16::MAX),
        capacity: f.conntrack_entries,
        timeouts: Timeouts::default(),
        table_memory_hint: dpdk::advise_huge_pages,
        mtu: config.forward_mtu(),
        neighbours: 4096,
        flow_seed: fulcrum_maglev::DEFAULT_FLOW_SEED,
        // The port seed is drawn at random per process (RFC 6056: unpredictable).
        flood: fulcrum_forward::FloodConfig {
            new_flow_rate: f.new_flow_rate,
            new_flow_burst: f.new_flow_burst,
            half_open_max: f.half_open_max,
            ..fulcrum_forward::FloodConfig::default()
        },
    }
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

/// The control thread: heartbeat, new generations from the control plane and
/// the report back (every 100 ms), and the stats file (every second), until `stop`.
/// `initial_tables`: the table digests of the file's VIPs (generation 0).
#[allow(clippy::too_many_arguments)]
fn control_thread(
    cli: &Cli,
    stop: &AtomicBool,
    collect: &dyn Fn() -> Stats,
    shm: Option<&fulcrum_shm::Dataplane<'_>>,
    commands: &[ArrayQueue<Arc<control::Applied>>],
    acks: &[ArrayQueue<LcoreAck>],
    facts: &Facts,
    initial_tables: Vec<TableDigest>,
    mut rings: Option<RingCounter<'_>>,
) {
    let mut subscriber = shm.map(|s| s.subscriber());
    let mut report = DataplaneReport { facts: facts.clone(), generation: 0, refused: Vec::new(), tables: Vec::new() };
    if let Some(role) = shm {
        write_report(role, &report);
    }
    // Generation handed to the lcores and not yet installed by all, with the
    // VIPs it leaves out so far and its tables' digests; what each lcore
    // installed last.
    let mut pending: Option<(u64, Vec<VipRefusal>, Vec<TableDigest>)> = Some((0, Vec::new(), initial_tables));
    let mut installed: Vec<Option<u64>> = vec![None; commands.len()];
    let mut next_stats = std::time::Instant::now();
    // What `Segment::check` said last (logged once per change).
    let mut segment_problem: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        if let (Some(role), Some(sub)) = (shm, subscriber.as_mut()) {
            let problem = role.segment().check().err().map(|e| e.to_string());
            if problem != segment_problem {
                match &problem {
                    Some(p) => tracing::error!("shared-memory segment: {p}; serving generation {}", sub.accepted_generation()),
                    None => tracing::info!("shared-memory segment {} is fine again", role.segment().path().display()),
                }
                segment_problem = problem;
            }
            role.heartbeat();
            match sub.poll() {
                fulcrum_shm::Poll::Unchanged => {}
                fulcrum_shm::Poll::New(generation, number) => {
                    match control::prepare(&generation.vips, number, facts, commands.len()) {
                        Ok(Prepared { applied, refused, tables }) => {
                            tracing::info!(
                                "control plane generation {number}: {} proxy and {} forwarding VIP(s), {} refused",
                                applied.proxy_vips.len(),
                                applied.forward.len(),
                                refused.len()
                            );
                            for r in &refused {
                                tracing::warn!("generation {number}: VIP {} (id {}) refused: {}", r.vip, r.id, r.reason);
                            }
                            let applied = Arc::new(applied);
                            for queue in commands {
                                queue.force_push(Arc::clone(&applied));
                            }
                            pending = Some((number, refused, tables));
                        }
                        Err(e) => {
                            tracing::error!("control plane generation {number} refused: {e}");
                            let reason = fulcrum_shm::RejectReason::Undecodable(format!("dataplane: {e}"));
                            sub.record_rejection(&reason, number);
                        }
                    }
                }
                fulcrum_shm::Poll::Rejected(reason) => {
                    tracing::error!("control plane generation rejected ({reason}); serving the previous one")
                }
            }
        }
        for (i, queue) in acks.iter().enumerate() {
            while let Some(ack) = queue.pop() {
                installed[i] = Some(ack.generation);
                if let Some((g, refused, _)) = pending.as_mut().filter(|(g, ..)| *g == ack.generation) {
                    for r in ack.refused {
                        if !refused.iter().any(|x| x.id == r.id) {
                            tracing::warn!("generation {g}: lcore {i} refused VIP {} (id {}): {}", r.vip, r.id, r.reason);
                            refused.push(r);
                        }
                    }
                }
            }
        }
        if let Some((g, refused, tables)) = pending.take_if(|(g, ..)| installed.iter().all(|i| i.is_some_and(|i| i >= *g))) {
            tracing::info!("generation {g} installed on every lcore ({} VIP(s) refused)", refused.len());
            // The digests and the generation they belong to go out in one report.
            report.tables = control::installed_tables(&tables, &refused);
            for t in &report.tables {
                tracing::debug!("generation {g}: VIP {} (id {}) table digest {} ({} slots, {} backends)", t.vip, t.id, t.digest, t.slots, t.backends);
            }
            report.generation = g;
            report.refused = refused;
            if let (Some(role), Some(sub)) = (shm, subscriber.as_ref()) {
                if g != 0 {
                    sub.mark_applied(g);
                }
                write_report(role, &report);
            }
        }
        if let Some(rings) = rings.as_mut() {
            rings.read();
        }
        if let Some(path) = &cli.stats_file {
            if std::time::Instant::now() >= next_stats {
                next_stats += STATS_PERIOD;
                if let Err(e) = collect().write(path) {
                    tracing::warn!("writing {}: {e}", path.display());
                }
            }
        }
        sleep_unless(stop, CONTROL_PERIOD);
    }
    // The lcores have stopped (or are stopping): the last counts, for the
    // exit report.
    if let Some(rings) = rings.as_mut() {
        rings.read();
    }
}

/// The af_packet RX rings' kernel counts, added to the counters of the
/// lcore owning each queue (queue i is lcore i's). The control thread is the
/// only reader (a read resets the kernel's counts) and the only writer of
/// these two counters.
struct RingCounter<'a> {
    rings: &'a mut dpdk::RxRings,
    counters: &'a [(u32, LcoreCounters)],
    /// A read failed (logged once).
    failed: bool,
}

impl RingCounter<'_> {
    fn read(&mut self) {
        match self.rings.take() {
            Ok(queues) => {
                for ((_, lcore), q) in self.counters.iter().zip(queues) {
                    lcore.rx_ring_frames.add(q.frames);
                    lcore.drop_local(LocalDrop::RxRingFull, q.drops);
                }
            }
            Err(e) if !self.failed => {
                tracing::error!("af_packet RX rings: {e}; their drops are no longer counted");
                self.failed = true;
            }
            Err(_) => {}
        }
    }
}

fn write_report(role: &fulcrum_shm::Dataplane<'_>, report: &DataplaneReport) {
    if let Err(e) = role.write_report(report) {
        tracing::error!("writing the report to the shared segment: {e}");
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
