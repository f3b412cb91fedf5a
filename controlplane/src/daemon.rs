//! The control-plane daemon: desired state, publication, health, reloads,
//! the control socket and the Prometheus endpoint.

use crate::checks::{self, Checker, HealthState};
use crate::config::{Config, Controlplane};
use crate::model::{self, BackendSpec, Rate, VipSpec};
use crate::proto::{LimitChange, Request, Response, VipOptions};
use crate::publish::{BackendState, Counters, DataplaneView, Generation, PubBackend, PubVip, Segment};
use crate::state::{self, State};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the control plane beats and looks at health and the dataplane.
pub const TICK: Duration = Duration::from_millis(100);
/// A dataplane heartbeat unchanged this long means the dataplane is dead.
pub const DATAPLANE_STALE: Duration = Duration::from_secs(1);

macro_rules! log {
    ($($t:tt)*) => {{
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        eprintln!("{}.{:03} fulcrum-controlplane: {}", now.as_secs(), now.subsec_millis(), format!($($t)*));
    }};
}

struct DpWatch {
    view: DataplaneView,
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

pub struct Daemon {
    config_path: PathBuf,
    cp: Controlplane,
    state: State,
    seg: Box<dyn Segment>,
    checker: Checker,
    /// Latest health status by slot (checked backends only).
    health: HashMap<u32, checks::Status>,
    published: Option<Generation>,
    published_gen: u64,
    started: Instant,
    dp: DpWatch,
    prev: Option<Sample>,
    last: Option<Sample>,
    last_reload: Option<Value>,
    publish_error: Option<String>,
    /// Backend slots configured at start (see `backend_state`).
    startup_slots: std::collections::HashSet<u32>,
    /// Address the Prometheus endpoint listens on.
    prometheus_bound: Option<String>,
}

type Shared = Arc<Mutex<Daemon>>;

fn lock(d: &Shared) -> std::sync::MutexGuard<'_, Daemon> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
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
    let mut state = match State::load(&cp.state_file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fulcrum-controlplane: {e}");
            return 2;
        }
    };
    let state = match state.take() {
        None => {
            log!("no state file at {}: starting from {}", cp.state_file.display(), config_path.display());
            State { vips: config.vips.clone(), toml_base: config.vips.clone(), ..Default::default() }
        }
        Some(mut s) => {
            let merged = state::merge(&s.vips, &s.toml_base, &config.vips);
            if let Err(e) = validate_all(&merged) {
                eprintln!(
                    "fulcrum-controlplane: {}: the state file merged with {} is invalid: {e}",
                    cp.state_file.display(),
                    config_path.display()
                );
                return 2;
            }
            log!("state file {} loaded ({} VIPs)", cp.state_file.display(), merged.len());
            s.vips = merged;
            s.toml_base = config.vips.clone();
            s
        }
    };
    let checker = match Checker::start(cp.health_source, cp.max_checks_in_flight) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fulcrum-controlplane: health checker: {e}");
            return 1;
        }
    };
    let mut daemon = Daemon {
        config_path: config_path.to_path_buf(),
        cp: cp.clone(),
        state,
        seg,
        checker,
        health: HashMap::new(),
        published: None,
        published_gen: 0,
        started: Instant::now(),
        dp: DpWatch {
            view: DataplaneView::default(),
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
        last_reload: None,
        publish_error: None,
        startup_slots: Default::default(),
        prometheus_bound: None,
    };
    let (max_vips, max_slots) = daemon.seg.capacity();
    if let Err(e) = daemon.state.assign_ids(max_vips, max_slots) {
        eprintln!("fulcrum-controlplane: {e}");
        return 2;
    }
    if let Err(e) = daemon.state.save(&cp.state_file) {
        eprintln!("fulcrum-controlplane: cannot write the state file: {e}");
        return 1;
    }
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

    let listener = match bind_socket(&cp.socket) {
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
                std::thread::Builder::new()
                    .name("prometheus".into())
                    .spawn(move || crate::metrics::serve(l, d))
                    .expect("spawn prometheus thread");
            }
            Err(e) => {
                eprintln!("fulcrum-controlplane: controlplane.prometheus: cannot listen on {}: {e}", cp.prometheus);
                let _ = std::fs::remove_file(&cp.socket);
                return 1;
            }
        }
    }
    {
        let d = shared.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(s) => {
                            let d = d.clone();
                            let _ = std::thread::Builder::new().name("client".into()).spawn(move || serve_client(s, d));
                        }
                        Err(e) => log!("control socket accept: {e}"),
                    }
                }
            })
            .expect("spawn control thread");
    }
    log!(
        "ready: socket {}, shm {}, state {}, prometheus {}, generation {}",
        cp.socket.display(),
        cp.shm.display(),
        cp.state_file.display(),
        if cp.prometheus.is_empty() { "off" } else { &cp.prometheus },
        lock(&shared).published_gen
    );

    let mut next = Instant::now();
    let mut last_sample = Instant::now() - Duration::from_secs(2);
    while !stop.load(Ordering::Relaxed) {
        {
            let mut d = lock(&shared);
            d.seg.heartbeat();
            if hup.swap(false, Ordering::Relaxed) {
                log!("SIGHUP: reloading {}", d.config_path.display());
                let _ = d.reload();
            }
            d.poll_health();
            d.watch_dataplane();
            if last_sample.elapsed() >= Duration::from_secs(1) {
                last_sample = Instant::now();
                d.sample();
            }
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

/// Binds the control socket with mode 0600: bound under a temporary name,
/// restricted, then renamed into place. A socket file nobody answers on is
/// replaced; one a live daemon answers on is an error.
fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("controlplane.socket: cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "controlplane.socket: {} is in use: another fulcrum-controlplane is running",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("controlplane.socket: cannot remove stale {}: {e}", path.display()))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(|e| format!("controlplane.socket: cannot bind {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("controlplane.socket: chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("controlplane.socket: rename to {}: {e}", path.display()))?;
    Ok(l)
}

fn serve_client(stream: UnixStream, d: Shared) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let resp = match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => {
                let mut dm = lock(&d);
                match dm.handle(req) {
                    Ok(data) => Response { ok: true, data: Some(data), error: None },
                    Err(e) => Response { ok: false, data: None, error: Some(e) },
                }
            }
            Err(e) => Response { ok: false, data: None, error: Some(format!("bad request: {e}")) },
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        out.push('\n');
        if (&stream).write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

/// Validates every VIP and that no two share an address.
pub fn validate_all(vips: &[VipSpec]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for v in vips {
        let at = format!("vip {}", v.addr());
        model::validate_vip(v, &at)?;
        if !seen.insert(v.addr()) {
            return Err(format!("{at}: listed twice"));
        }
    }
    Ok(())
}

fn no_vip(a: SocketAddrV4) -> String {
    format!("no VIP {a} (`fulcrumctl vip list` shows the VIPs)")
}

fn no_backend(v: SocketAddrV4, b: SocketAddrV4) -> String {
    format!("VIP {v} has no backend {b} (`fulcrumctl backend list {v}` shows its backends)")
}

fn rate_json(r: Option<Rate>) -> Value {
    match r {
        Some(r) => json!({"per_sec": r.per_sec, "burst": r.burst}),
        None => Value::Null,
    }
}

fn health_name(s: Option<&checks::Status>) -> &'static str {
    match s.map(|s| s.state) {
        Some(HealthState::Up) => "up",
        Some(HealthState::Down) => "down",
        Some(HealthState::Unknown) => "unknown",
        None => "unchecked",
    }
}

impl Daemon {
    fn handle(&mut self, req: Request) -> Result<Value, String> {
        match req {
            Request::Status => Ok(self.status()),
            Request::VipList => Ok(Value::Array(self.state.vips.iter().map(|v| self.vip_json(v)).collect())),
            Request::BackendList { vip } => self.backend_list(vip),
            Request::LimitShow { vip } => {
                let vips: Vec<&VipSpec> = match vip {
                    Some(a) => vec![self.state.vip(a).ok_or_else(|| no_vip(a))?],
                    None => self.state.vips.iter().collect(),
                };
                Ok(Value::Array(vips.into_iter().map(limits_json).collect()))
            }
            Request::Stats => Ok(self.stats()),
            Request::Health => Ok(self.health_json()),
            Request::Reload => self.reload(),
            Request::VipAdd { vip, options } => self.change(|vips| vip_add(vips, vip, options)),
            Request::VipDel { vip } => self.change(|vips| {
                let i = vips.iter().position(|v| v.addr() == vip).ok_or_else(|| no_vip(vip))?;
                vips.remove(i);
                Ok(())
            }),
            Request::BackendAdd { vip, backend, weight } => self.change(|vips| {
                let v = vips.iter_mut().find(|v| v.addr() == vip).ok_or_else(|| no_vip(vip))?;
                model::validate_backend_address(backend)?;
                if v.backend(backend).is_some() {
                    return Err(format!("VIP {vip} already has backend {backend}"));
                }
                v.backends.push(BackendSpec {
                    address: *backend.ip(),
                    port: backend.port(),
                    weight: weight.unwrap_or(model::defaults::weight()),
                    drain: false,
                });
                Ok(())
            }),
            Request::BackendDel { vip, backend } => self.change(|vips| {
                let v = vips.iter_mut().find(|v| v.addr() == vip).ok_or_else(|| no_vip(vip))?;
                let i = v.backends.iter().position(|b| b.addr() == backend).ok_or_else(|| no_backend(vip, backend))?;
                v.backends.remove(i);
                Ok(())
            }),
            Request::BackendWeight { vip, backend, weight } => self.backend_change(vip, backend, |b| {
                b.weight = weight;
            }),
            Request::BackendDrain { vip, backend } => self.backend_change(vip, backend, |b| b.drain = true),
            Request::BackendUndrain { vip, backend } => self.backend_change(vip, backend, |b| b.drain = false),
            Request::LimitSet { vip, change } => self.change(|vips| {
                let v = vips.iter_mut().find(|v| v.addr() == vip).ok_or_else(|| no_vip(vip))?;
                limit_set(v, change)
            }),
        }
    }

    fn backend_change(&mut self, vip: SocketAddrV4, backend: SocketAddrV4, f: impl FnOnce(&mut BackendSpec)) -> Result<Value, String> {
        self.change(|vips| {
            let v = vips.iter_mut().find(|v| v.addr() == vip).ok_or_else(|| no_vip(vip))?;
            let b = v.backend_mut(backend).ok_or_else(|| no_backend(vip, backend))?;
            f(b);
            Ok(())
        })
    }

    /// Applies a change to a copy of the desired configuration, validates
    /// it, persists it and publishes; on any error nothing changes.
    fn change(&mut self, f: impl FnOnce(&mut Vec<VipSpec>) -> Result<(), String>) -> Result<Value, String> {
        let mut next = self.state.clone();
        f(&mut next.vips)?;
        self.commit(next)?;
        Ok(json!({"generation": self.published_gen}))
    }

    fn commit(&mut self, mut next: State) -> Result<(), String> {
        // Validate the VIPs that changed.
        let mut seen = std::collections::HashSet::new();
        for v in &next.vips {
            if !seen.insert(v.addr()) {
                return Err(format!("VIP {} is listed twice", v.addr()));
            }
            if self.state.vip(v.addr()) != Some(v) {
                model::validate_vip(v, &format!("VIP {}", v.addr()))?;
            }
        }
        let (max_vips, max_slots) = self.seg.capacity();
        next.assign_ids(max_vips, max_slots)?;
        next.save(&self.cp.state_file).map_err(|e| format!("cannot write the state file, nothing changed: {e}"))?;
        self.state = next;
        self.update_health_targets();
        self.publish(false);
        Ok(())
    }

    /// Re-reads the TOML and merges it (see [`state::merge`]).
    fn reload(&mut self) -> Result<Value, String> {
        let result = (|| {
            let config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
            let merged = state::merge(&self.state.vips, &self.state.toml_base, &config.vips);
            validate_all(&merged).map_err(|e| format!("{}: merged with the current configuration: {e}", self.config_path.display()))?;
            let mut next = self.state.clone();
            next.vips = merged;
            next.toml_base = config.vips;
            let before = self.published_gen;
            self.commit(next)?;
            if config.controlplane.socket != self.cp.socket
                || config.controlplane.shm != self.cp.shm
                || config.controlplane.state_file != self.cp.state_file
                || config.controlplane.prometheus != self.cp.prometheus
            {
                log!("reload: changes to [controlplane] take effect at the next start");
            }
            Ok(json!({"generation": self.published_gen, "changed": self.published_gen != before}))
        })();
        match &result {
            Ok(v) => {
                log!("reload: {} applied: {v}", self.config_path.display());
                self.last_reload = Some(json!({"at": unix_now(), "ok": true}));
            }
            Err(e) => {
                log!("reload failed, keeping the current configuration: {e}");
                self.last_reload = Some(json!({"at": unix_now(), "ok": false, "error": e}));
            }
        }
        result
    }

    fn update_health_targets(&mut self) {
        let mut targets = Vec::new();
        for v in &self.state.vips {
            let Some(spec) = &v.health else { continue };
            for b in &v.backends {
                if let Some(slot) = self.state.slot(v.addr(), b.addr()) {
                    targets.push(checks::Target { slot, addr: b.addr(), spec: spec.clone() });
                }
            }
        }
        let live: std::collections::HashSet<u32> = targets.iter().map(|t| t.slot).collect();
        self.health.retain(|s, _| live.contains(s));
        self.checker.set_targets(targets);
    }

    fn generation(&self) -> Generation {
        let vips = self
            .state
            .vips
            .iter()
            .filter_map(|v| {
                let id = self.state.vip_id(v.addr())?;
                let backends = v
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let slot = self.state.slot(v.addr(), b.addr())?;
                        Some(PubBackend { slot, addr: b.address, port: b.port, weight: b.weight, state: self.backend_state(v, b, slot) })
                    })
                    .collect();
                Some(PubVip {
                    id,
                    addr: v.address,
                    port: v.port,
                    mode: v.mode,
                    affinity: v.affinity,
                    max_connections: v.max_connections,
                    new_conn_rate: v.new_conn_rate,
                    client_rate: v.client_rate,
                    bandwidth_bytes_per_sec: v.bandwidth_bytes_per_sec,
                    idle_timeout_ms: v.idle_timeout_ms,
                    connect_timeout_ms: v.connect_timeout_ms,
                    connect_tries: v.connect_tries,
                    proxy_protocol: v.proxy_protocol,
                    table_size: v.table_size,
                    backends,
                })
            })
            .collect();
        Generation { vips }
    }

    /// Drain wins; then a backend without checks is Up; a checked one is
    /// what its checks say. Unknown (no check completed yet) is Up for the
    /// backends configured when the daemon started (a control-plane restart
    /// must not take every backend out for `rise` intervals) and Down for
    /// backends added later (not proven yet).
    fn backend_state(&self, v: &VipSpec, b: &BackendSpec, slot: u32) -> BackendState {
        if b.drain {
            return BackendState::Drain;
        }
        if v.health.is_none() {
            return BackendState::Up;
        }
        match self.health.get(&slot).map(|s| s.state) {
            Some(HealthState::Up) => BackendState::Up,
            Some(HealthState::Down) => BackendState::Down,
            Some(HealthState::Unknown) | None => {
                if self.startup_slots.contains(&slot) {
                    BackendState::Up
                } else {
                    BackendState::Down
                }
            }
        }
    }

    /// Publishes the current generation if it differs from the last one
    /// (or always, with `force`).
    fn publish(&mut self, force: bool) {
        let g = self.generation();
        if !force && self.published.as_ref() == Some(&g) {
            return;
        }
        match self.seg.publish(&g) {
            Ok(n) => {
                self.published_gen = n;
                self.published = Some(g);
                self.publish_error = None;
                self.state.generation = n;
            }
            Err(e) => {
                log!("publishing failed: {e}");
                self.publish_error = Some(e);
            }
        }
    }

    fn poll_health(&mut self) {
        let snap = self.checker.snapshot();
        let mut changed = false;
        for s in snap {
            let old = self.health.get(&s.slot).map(|o| o.state);
            if old != Some(s.state) {
                if old.is_some() || s.state != HealthState::Unknown {
                    log!("health: slot {} ({}) is {:?}{}", s.slot, self.slot_name(s.slot), s.state, s.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default());
                }
                changed = true;
            }
            self.health.insert(s.slot, s);
        }
        if changed {
            self.publish(false);
        }
    }

    fn watch_dataplane(&mut self) {
        let view = self.seg.dataplane();
        let now = Instant::now();
        if view.beat != self.dp.last_beat {
            self.dp.last_beat = view.beat;
            self.dp.beat_changed = Some(now);
        }
        // An odd epoch is a dataplane resetting its counters at start: wait for it.
        if view.present && view.epoch % 2 == 0 && view.epoch != self.dp.epoch {
            if self.dp.epoch != 0 {
                self.dp.restarts += 1;
                log!("dataplane restarted (pid {}, epoch {} -> {})", view.pid, self.dp.epoch, view.epoch);
            } else {
                log!("dataplane seen (pid {}, epoch {})", view.pid, view.epoch);
            }
            self.dp.epoch = view.epoch;
            self.dp.restarted_at = Some(now);
            self.dp.republished_after_restart = false;
        }
        let alive = view.present && view.beat != 0 && self.dp.beat_changed.is_some_and(|t| now - t < DATAPLANE_STALE);
        if alive != self.dp.alive {
            if alive {
                log!("dataplane is alive (pid {})", view.pid);
            } else if view.present && view.beat == 0 {
                log!("dataplane stopped (clean shutdown)");
            } else if view.present {
                log!("dataplane heartbeat stale for over {:?}: dataplane is down", DATAPLANE_STALE);
            }
            self.dp.alive = alive;
        }
        // A restarted dataplane reads the current generation at start; if it
        // has not applied it two seconds later, publish it again.
        if let Some(t) = self.dp.restarted_at {
            if alive && !self.dp.republished_after_restart && now - t > Duration::from_secs(2) {
                self.dp.republished_after_restart = true;
                if view.applied_generation != self.published_gen {
                    log!("dataplane applied generation {} of {}: publishing again", view.applied_generation, self.published_gen);
                    self.publish(true);
                }
            }
        }
        self.dp.view = view;
    }

    fn slot_name(&self, slot: u32) -> String {
        self.state
            .slots
            .iter()
            .find(|(_, &s)| s == slot)
            .map(|(k, _)| k.replace('/', " backend "))
            .unwrap_or_default()
    }

    fn all_ids(&self) -> (Vec<u16>, Vec<u32>) {
        let mut ids = Vec::new();
        let mut slots = Vec::new();
        for v in &self.state.vips {
            if let Some(id) = self.state.vip_id(v.addr()) {
                ids.push(id);
            }
            for b in &v.backends {
                if let Some(s) = self.state.slot(v.addr(), b.addr()) {
                    slots.push(s);
                }
            }
        }
        (ids, slots)
    }

    fn sample(&mut self) {
        let (ids, slots) = self.all_ids();
        let counters = self.seg.counters(&ids, &slots);
        for v in &self.state.vips {
            if v.health.is_none() {
                continue;
            }
            for b in &v.backends {
                if let Some(slot) = self.state.slot(v.addr(), b.addr()) {
                    if let Some(c) = counters.backends.get(&slot) {
                        self.checker.report_passive(slot, c.connect_failures);
                    }
                }
            }
        }
        self.prev = self.last.take();
        self.last = Some(Sample { at: Instant::now(), counters });
    }

    /// Fresh counters (read now) and per-second rates from the last two samples.
    pub(crate) fn counters_now(&mut self) -> Counters {
        let (ids, slots) = self.all_ids();
        self.seg.counters(&ids, &slots)
    }

    fn rate(&self, f: impl Fn(&Counters) -> Option<u64>) -> Option<f64> {
        let (p, l) = (self.prev.as_ref()?, self.last.as_ref()?);
        let dt = (l.at - p.at).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let (a, b) = (f(&p.counters).unwrap_or(0), f(&l.counters)?);
        Some(b.saturating_sub(a) as f64 / dt)
    }

    fn status(&mut self) -> Value {
        let dp = &self.dp;
        let v = &dp.view;
        let heartbeat_age_ms = dp.beat_changed.map(|t| t.elapsed().as_millis() as u64);
        let dp_state = if !v.present {
            "never seen"
        } else if dp.alive {
            "up"
        } else if v.beat == 0 {
            "stopped" // clean shutdown
        } else {
            "down" // heartbeat stale: died or hung
        };
        let backends: usize = self.state.vips.iter().map(|v| v.backends.len()).sum();
        json!({
            "controlplane": {
                "alive": true,
                "pid": std::process::id(),
                "uptime_secs": self.started.elapsed().as_secs_f64(),
                "config": self.config_path.display().to_string(),
                "state_file": self.cp.state_file.display().to_string(),
                "shm": self.cp.shm.display().to_string(),
                "socket": self.cp.socket.display().to_string(),
                "prometheus": self.prometheus_bound,
                "last_reload": self.last_reload,
                "publish_error": self.publish_error,
            },
            "dataplane": {
                "alive": dp.alive,
                "state": dp_state,
                "pid": if v.present { Some(v.pid) } else { None },
                "epoch": v.epoch,
                "uptime_secs": v.uptime_secs,
                "heartbeat_age_ms": heartbeat_age_ms,
                "restarts_seen": dp.restarts,
                "rejected_generations": v.rejected_generations,
                "last_rejection": v.last_rejection,
            },
            "generation": {
                "published": self.published_gen,
                "applied": v.applied_generation,
            },
            "vips": self.state.vips.len(),
            "backends": backends,
        })
    }

    fn vip_json(&self, v: &VipSpec) -> Value {
        json!({
            "vip": v.addr().to_string(),
            "id": self.state.vip_id(v.addr()),
            "mode": v.mode,
            "affinity": v.affinity,
            "max_connections": v.max_connections,
            "connect_timeout_ms": v.connect_timeout_ms,
            "connect_tries": v.connect_tries,
            "idle_timeout_ms": v.idle_timeout_ms,
            "proxy_protocol": v.proxy_protocol,
            "table_size": v.table_size,
            "new_conn_rate": rate_json(v.new_conn_rate),
            "client_rate": rate_json(v.client_rate),
            "bandwidth_bytes_per_sec": v.bandwidth_bytes_per_sec,
            "health": v.health,
            "backends": v.backends.iter().map(|b| json!({
                "backend": b.addr().to_string(),
                "slot": self.state.slot(v.addr(), b.addr()),
                "weight": b.weight,
                "drain": b.drain,
            })).collect::<Vec<_>>(),
        })
    }

    fn backend_list(&mut self, vip: Option<SocketAddrV4>) -> Result<Value, String> {
        if let Some(a) = vip {
            self.state.vip(a).ok_or_else(|| no_vip(a))?;
        }
        let counters = self.counters_now();
        let mut out = Vec::new();
        for v in self.state.vips.iter().filter(|v| vip.is_none_or(|a| a == v.addr())) {
            for b in &v.backends {
                let slot = self.state.slot(v.addr(), b.addr());
                let st = slot.map(|s| self.backend_state(v, b, s));
                let h = slot.and_then(|s| self.health.get(&s));
                let c = slot.and_then(|s| counters.backends.get(&s)).cloned().unwrap_or_default();
                out.push(json!({
                    "vip": v.addr().to_string(),
                    "backend": b.addr().to_string(),
                    "slot": slot,
                    "weight": b.weight,
                    "drain": b.drain,
                    "health": health_name(if v.health.is_some() { h } else { None }),
                    "state": st,
                    "connections_active": c.connections_active,
                }));
            }
        }
        Ok(Value::Array(out))
    }

    fn stats(&mut self) -> Value {
        let counters = self.counters_now();
        let mut out = Vec::new();
        for v in &self.state.vips {
            let id = self.state.vip_id(v.addr());
            let c = id.and_then(|i| counters.vips.get(&i)).cloned().unwrap_or_default();
            let backends: Vec<Value> = v
                .backends
                .iter()
                .map(|b| {
                    let slot = self.state.slot(v.addr(), b.addr());
                    let bc = slot.and_then(|s| counters.backends.get(&s)).cloned().unwrap_or_default();
                    json!({
                        "backend": b.addr().to_string(),
                        "slot": slot,
                        "connections_active": bc.connections_active,
                        "connections_total": bc.connections_total,
                        "new_per_sec": slot.and_then(|s| self.rate(|c| c.backends.get(&s).map(|x| x.connections_total))).unwrap_or(0.0),
                        "connect_failures": bc.connect_failures,
                        "bytes_to": bc.bytes_to,
                        "bytes_from": bc.bytes_from,
                    })
                })
                .collect();
            out.push(json!({
                "vip": v.addr().to_string(),
                "id": id,
                "connections_active": c.connections_active,
                "connections_total": c.connections_total,
                "new_per_sec": id.and_then(|i| self.rate(|c| c.vips.get(&i).map(|x| x.connections_total))).unwrap_or(0.0),
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "drops": c.drops,
                "backends": backends,
            }));
        }
        json!({"dataplane_alive": self.dp.alive, "vips": out})
    }

    fn health_json(&self) -> Value {
        let mut out = Vec::new();
        for v in &self.state.vips {
            for b in &v.backends {
                let slot = self.state.slot(v.addr(), b.addr());
                let h = if v.health.is_some() { slot.and_then(|s| self.health.get(&s)) } else { None };
                out.push(json!({
                    "vip": v.addr().to_string(),
                    "backend": b.addr().to_string(),
                    "slot": slot,
                    "check": v.health.as_ref().and_then(|h| h.get("kind")).cloned(),
                    "state": health_name(if v.health.is_some() { h } else { None }),
                    "published": slot.map(|s| self.backend_state(v, b, s)),
                    "since_secs": h.and_then(|h| h.since_secs),
                    "last_error": h.and_then(|h| h.last_error.clone()),
                    "latency_last_ms": h.and_then(|h| h.latency_last_ms),
                    "latency_p50_ms": h.and_then(|h| h.latency_p50_ms),
                    "latency_p99_ms": h.and_then(|h| h.latency_p99_ms),
                }));
            }
        }
        Value::Array(out)
    }

    // ---- for the Prometheus exposition
    pub(crate) fn metrics_view(&mut self) -> crate::metrics::View {
        let counters = self.counters_now();
        let mut vips = Vec::new();
        for v in &self.state.vips {
            let id = self.state.vip_id(v.addr());
            let c = id.and_then(|i| counters.vips.get(&i)).cloned().unwrap_or_default();
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let slot = self.state.slot(v.addr(), b.addr());
                    let bc = slot.and_then(|s| counters.backends.get(&s)).cloned().unwrap_or_default();
                    let up = slot.map(|s| self.backend_state(v, b, s) == BackendState::Up).unwrap_or(false);
                    let h = if v.health.is_some() { slot.and_then(|s| self.health.get(&s)).cloned() } else { None };
                    (b.addr(), bc, up, h)
                })
                .collect();
            vips.push((v.addr(), c, backends));
        }
        crate::metrics::View { vips, dataplane_up: self.dp.alive, generation: self.published_gen }
    }
}

fn limits_json(v: &VipSpec) -> Value {
    json!({
        "vip": v.addr().to_string(),
        "max_connections": v.max_connections,
        "new_conn_rate": rate_json(v.new_conn_rate),
        "client_rate": rate_json(v.client_rate),
        "bandwidth_bytes_per_sec": v.bandwidth_bytes_per_sec,
    })
}

fn vip_add(vips: &mut Vec<VipSpec>, addr: SocketAddrV4, o: VipOptions) -> Result<(), String> {
    model::validate_vip_address(*addr.ip())?;
    if addr.port() == 0 {
        return Err(format!("{addr}: port must not be 0"));
    }
    if vips.iter().any(|v| v.addr() == addr) {
        return Err(format!("VIP {addr} already exists"));
    }
    let mut v = VipSpec::new(addr);
    if let Some(x) = o.mode {
        v.mode = x;
    }
    if let Some(x) = o.affinity {
        v.affinity = x;
    }
    if let Some(x) = o.max_connections {
        v.max_connections = x;
    }
    if let Some(x) = o.connect_timeout_ms {
        v.connect_timeout_ms = x;
    }
    if let Some(x) = o.connect_tries {
        v.connect_tries = x;
    }
    if let Some(x) = o.idle_timeout_ms {
        v.idle_timeout_ms = x;
    }
    if let Some(x) = o.proxy_protocol {
        v.proxy_protocol = x;
    }
    if let Some(x) = o.table_size {
        v.table_size = x;
    }
    v.health = o.health;
    vips.push(v);
    Ok(())
}

fn limit_set(v: &mut VipSpec, c: LimitChange) -> Result<(), String> {
    let set_rate = |cur: Option<Rate>, rate: Option<u32>, burst: Option<u32>, name: &str, bname: &str| -> Result<Option<Rate>, String> {
        if rate.is_none() && burst.is_none() {
            return Ok(cur);
        }
        if rate == Some(0) {
            return Err(format!("{name}: must be at least 1 (--clear {name} removes the limit)"));
        }
        if burst == Some(0) {
            return Err(format!("{bname}: must be at least 1"));
        }
        let per_sec = rate
            .or(cur.map(|r| r.per_sec))
            .ok_or_else(|| format!("{bname} needs a rate: set --{name} too (VIP {} has none)", v.addr()))?;
        let burst = burst.or(cur.map(|r| r.burst)).unwrap_or(per_sec.max(1));
        Ok(Some(Rate { per_sec, burst }))
    };
    let ncr = set_rate(v.new_conn_rate, c.new_conn_rate, c.burst, "new-conn-rate", "burst")?;
    let cr = set_rate(v.client_rate, c.client_rate, c.client_burst, "client-rate", "client-burst")?;
    v.new_conn_rate = ncr;
    v.client_rate = cr;
    if let Some(b) = c.bandwidth {
        if b == 0 {
            return Err("bandwidth: must be at least 1 byte/s (--clear bandwidth removes the limit)".into());
        }
        v.bandwidth_bytes_per_sec = Some(b);
    }
    if let Some(m) = c.max_connections {
        if m == 0 || m > model::MAX_CONNECTIONS {
            return Err(format!("max-connections: {m} must be from 1 to {}", model::MAX_CONNECTIONS));
        }
        v.max_connections = m;
    }
    for name in &c.clear {
        match name.as_str() {
            "new-conn-rate" | "new_conn_rate" => v.new_conn_rate = None,
            "client-rate" | "client_rate" => v.client_rate = None,
            "bandwidth" => v.bandwidth_bytes_per_sec = None,
            "max-connections" | "max_connections" => v.max_connections = model::defaults::max_connections(),
            other => {
                return Err(format!(
                    "--clear {other:?}: not a limit (new-conn-rate, client-rate, bandwidth, max-connections)"
                ))
            }
        }
    }
    Ok(())
}
