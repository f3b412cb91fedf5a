//! The control-plane daemon: desired state, publication, health, reloads,
//! the control socket and the Prometheus endpoint.
//!
//! - this module: the [`Daemon`] (its state and how it starts) and the run
//!   loop (heartbeat, signals, health and dataplane polling every [`TICK`]);
//! - `socket`: the control socket (listener, one thread per client, bounded
//!   as [`crate::inputs`] says);
//! - `commands`: requests, and every change (VIPs, backends, limits,
//!   reloads) validated, persisted and published;
//! - `publication`: the generation built from the desired state and health,
//!   publishing it, and watching the dataplane apply it;
//! - `views`: what `status`, `vip list`, `stats`, `health`, ... answer, and
//!   the Prometheus view;
//! - `digests`: the installed Maglev tables' digests the dataplane reports
//!   (`vip list`, Prometheus).
//! - `bgp`: which VIPs are announced (every tick, [`crate::announce`]'s
//!   rule), handed to BIRD; `rotation in|out`.

macro_rules! log {
    ($($t:tt)*) => {{
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        eprintln!("{}.{:03} fulcrum-controlplane: {}", now.as_secs(), now.subsec_millis(), format!($($t)*));
    }};
}

mod bgp;
mod commands;
mod digests;
mod publication;
mod socket;
mod views;

#[cfg(test)]
mod tests;

use crate::checks::{self, Checker};
use crate::config::{self, Config, Controlplane};
use crate::inputs::Inputs;
use crate::proto::ReloadOutcome;
use crate::publish::{Counters, DataplaneView, Segment};
use crate::state::{self, State};
use fulcrum_model::{DataplaneReport, Generation};
use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use commands::check_changed;

/// How often the control plane beats and looks at health and the dataplane.
pub const TICK: Duration = Duration::from_millis(100);
/// A dataplane heartbeat unchanged this long means the dataplane is dead.
pub const DATAPLANE_STALE: Duration = Duration::from_secs(1);

struct DpWatch {
    view: DataplaneView,
    /// The dataplane's last report (facts, applied generation, refusals).
    report: Option<DataplaneReport>,
    last_beat: u64,
    beat_changed: Option<Instant>,
    epoch: u64,
    restarts: u64,
    restarted_at: Option<Instant>,
    republished_after_restart: bool,
    alive: bool,
}

struct Sample {
    at: Instant,
    counters: Counters,
}

/// When the daemon first saw a VIP's flood mode on: its `flood_lcores`
/// counter read as > 0 after reading 0 (or at the first read). Its precision
/// is the counter read interval: the once-a-second sample, or sooner when a
/// request (`stats`, a scrape) reads the counters in between; the dataplane's
/// own instant is not in the segment.
#[derive(Debug, Clone, Copy)]
struct FloodSeen {
    at: Instant,
    /// The same instant, Unix seconds.
    unix: f64,
}

pub struct Daemon {
    config_path: PathBuf,
    cp: Controlplane,
    state: State,
    seg: Box<dyn Segment>,
    checker: Checker,
    /// Latest health status by slot (checked backends only).
    health: HashMap<u32, checks::Status>,
    /// Panic state by VIP id (VIPs with checks).
    panics: HashMap<u16, checks::VipPanic>,
    published: Option<Generation>,
    published_gen: u64,
    started: Instant,
    dp: DpWatch,
    prev: Option<Sample>,
    last: Option<Sample>,
    /// Proxy VIPs in flood mode, by VIP id, since when (cleared when the
    /// VIP's `flood_lcores` reads 0 again).
    flood_seen: HashMap<u16, FloodSeen>,
    last_reload: Option<ReloadOutcome>,
    publish_error: Option<String>,
    /// Backend slots configured at start (see `backend_state`).
    startup_slots: HashSet<u32>,
    /// Address the Prometheus endpoint listens on.
    prometheus_bound: Option<String>,
    /// The control socket's and the Prometheus endpoint's client counters.
    inputs: Arc<Inputs>,
    /// `[bgp]`: this instance's BIRD, driven from its own thread.
    bird: Option<crate::announce::Bird>,
    /// What is announced, per VIP, since when.
    announce: bgp::Announce,
}

/// Why the daemon did not start, and its exit code (2: configuration or
/// state refused; 1: the environment failed).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub code: i32,
    pub message: String,
}

fn fail(code: i32, message: impl Into<String>) -> StartError {
    StartError { code, message: message.into() }
}

type Shared = Arc<Mutex<Daemon>>;

fn lock(d: &Shared) -> std::sync::MutexGuard<'_, Daemon> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

impl Daemon {
    /// Loads the state file, merges `config` into it (checking what changed
    /// against the dataplane's facts when it has published them), assigns
    /// ids and slots, saves the state, starts the health checker and
    /// publishes unless the segment already holds the same generation.
    pub fn new(config_path: &Path, config: Config, mut seg: Box<dyn Segment>) -> Result<Daemon, StartError> {
        // Before anything else: BIRD announces nothing until the dataplane
        // is seen applying the current generation.
        let bird = config.bgp.clone().map(crate::announce::Bird::start);
        let cp = config.controlplane.clone();
        let report = seg.report();
        let facts = report.as_ref().map(|r| &r.facts);
        let loaded = State::load_or_set_aside(&cp.state_file).map_err(|e| fail(2, e.to_string()))?;
        let found = match loaded {
            state::Loaded::Found(s) => Some(s),
            state::Loaded::Missing => {
                log!("no state file at {}: starting from {}", cp.state_file.display(), config_path.display());
                None
            }
            state::Loaded::SetAside { message, .. } => {
                log!("{message}; the TOML: {}", config_path.display());
                None
            }
        };
        let state = match found {
            None => {
                check_changed(&[], &config.vips, facts)
                    .map_err(|e| fail(2, format!("{}: {e}", config_path.display())))?;
                State { vips: config.vips.clone(), toml_base: config.vips.clone(), ..Default::default() }
            }
            Some(mut s) => {
                let merged = state::merge(&s.vips, &s.toml_base, &config.vips);
                let invalid = |e: String| {
                    fail(
                        2,
                        format!(
                            "{}: the state file merged with {} is invalid: {e}",
                            cp.state_file.display(),
                            config_path.display()
                        ),
                    )
                };
                config::check_vips(&merged).map_err(|e| invalid(e.to_string()))?;
                check_changed(&s.vips, &merged, facts).map_err(invalid)?;
                log!("state file {} loaded ({} VIPs)", cp.state_file.display(), merged.len());
                s.vips = merged;
                s.toml_base = config.vips.clone();
                s
            }
        };
        let checker = Checker::start(cp.health_source, cp.max_checks_in_flight)
            .map_err(|e| fail(1, format!("health checker: {e}")))?;
        let mut daemon = Daemon {
            config_path: config_path.to_path_buf(),
            cp: cp.clone(),
            state,
            seg,
            checker,
            health: HashMap::new(),
            panics: HashMap::new(),
            published: None,
            published_gen: 0,
            started: Instant::now(),
            dp: DpWatch {
                view: DataplaneView::default(),
                report,
                last_beat: 0,
                beat_changed: None,
                epoch: 0,
                restarts: 0,
                restarted_at: None,
                republished_after_restart: true,
                alive: false,
            },
            prev: None,
            last: None,
            flood_seen: HashMap::new(),
            last_reload: None,
            publish_error: None,
            startup_slots: HashSet::new(),
            prometheus_bound: None,
            inputs: Arc::new(Inputs::default()),
            bird,
            announce: bgp::Announce::default(),
        };
        let (max_vips, max_slots) = daemon.seg.capacity();
        daemon.state.assign_ids(max_vips, max_slots).map_err(|e| fail(2, e))?;
        daemon
            .state
            .save(&cp.state_file)
            .map_err(|e| fail(1, format!("cannot write the state file: {e}")))?;
        daemon.startup_slots = daemon.all_ids().1.into_iter().collect();
        daemon.dp.view = daemon.seg.dataplane();
        daemon.dp.epoch = daemon.dp.view.epoch;
        daemon.dp.last_beat = daemon.dp.view.beat;
        daemon.update_health_targets();
        // Unchanged since the last run: keep the generation the dataplane has
        // (no needless Maglev rebuild); otherwise publish.
        let g = daemon.generation();
        match daemon.seg.already_published(&g) {
            Some(n) => {
                log!("generation {n} in {} is current", cp.shm.display());
                daemon.published_gen = n;
                daemon.published = Some(g);
            }
            None => daemon.publish(true),
        }
        Ok(daemon)
    }

    /// One tick of the run loop: heartbeat, health, the dataplane.
    fn tick(&mut self, sample: bool) {
        self.seg.heartbeat();
        self.poll_health();
        self.watch_dataplane();
        self.announce_tick();
        if sample {
            self.sample();
        }
    }
}

/// Runs the daemon; returns the process exit code.
pub fn run(config_path: &Path, open_segment: impl FnOnce(&Path) -> Result<Box<dyn Segment>, String>) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fulcrum-controlplane: {e}");
            return 2;
        }
    };
    let cp = config.controlplane.clone();
    let config_bgp = config.bgp.clone();
    // Take the control-plane role first: a second daemon must not touch the
    // state file or the socket of a running one.
    if cp.socket.exists() && UnixStream::connect(&cp.socket).is_ok() {
        eprintln!(
            "fulcrum-controlplane: controlplane.socket: {} is in use: another fulcrum-controlplane is running",
            cp.socket.display()
        );
        return 1;
    }
    let seg = match open_segment(&cp.shm) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fulcrum-controlplane: {}: {e}", cp.shm.display());
            return 1;
        }
    };
    let daemon = match Daemon::new(config_path, config, seg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fulcrum-controlplane: {e}");
            return e.code;
        }
    };
    let listener = match socket::bind(&cp.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fulcrum-controlplane: {e}");
            return 1;
        }
    };
    let shared: Shared = Arc::new(Mutex::new(daemon));

    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("fulcrum-controlplane: signal handler: {e}");
            return 1;
        }
    }
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()) {
        eprintln!("fulcrum-controlplane: signal handler: {e}");
        return 1;
    }

    if !cp.prometheus.is_empty() {
        match std::net::TcpListener::bind(&cp.prometheus) {
            Ok(l) => {
                lock(&shared).prometheus_bound = l.local_addr().ok().map(|a| a.to_string());
                let d = shared.clone();
                let view: crate::metrics::ViewFn = Arc::new(move || lock(&d).metrics_view());
                let inputs = lock(&shared).inputs.clone();
                std::thread::Builder::new()
                    .name("prometheus".into())
                    .spawn(move || crate::metrics::serve(l, view, inputs))
                    .expect("spawn prometheus thread");
            }
            Err(e) => {
                eprintln!("fulcrum-controlplane: controlplane.prometheus: cannot listen on {}: {e}", cp.prometheus);
                let _ = std::fs::remove_file(&cp.socket);
                return 1;
            }
        }
    }
    let control = lock(&shared).inputs.control.clone();
    socket::serve(listener, shared.clone(), control);
    log!(
        "ready: socket {}, shm {}, state {}, prometheus {}, generation {}, bgp {}",
        cp.socket.display(),
        cp.shm.display(),
        cp.state_file.display(),
        if cp.prometheus.is_empty() { "off" } else { &cp.prometheus },
        lock(&shared).published_gen,
        match &config_bgp {
            Some(b) => format!("via {} (routes {}, next hop {})", b.bird_socket.display(), b.routes_file.display(), b.next_hop),
            None => "off".into(),
        }
    );

    let mut next = Instant::now();
    let mut last_sample = Instant::now() - Duration::from_secs(2);
    while !stop.load(Ordering::Relaxed) {
        {
            let mut d = lock(&shared);
            if hup.swap(false, Ordering::Relaxed) {
                log!("SIGHUP: reloading {}", d.config_path.display());
                let _ = d.reload();
            }
            let sample = last_sample.elapsed() >= Duration::from_secs(1);
            if sample {
                last_sample = Instant::now();
            }
            d.tick(sample);
        }
        next += TICK;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    log!("stopping");
    let _ = std::fs::remove_file(&cp.socket);
    lock(&shared).seg.close();
    0
}
