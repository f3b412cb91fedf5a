//! BGP announcement: which VIPs this instance announces, and telling its
//! BIRD 2 (never a BGP of our own).
//!
//! # The rule
//!
//! [`decide`] is the only place it is decided. A VIP is announced only while
//! all of these hold, checked in this order (the first that fails is the
//! VIP's reason):
//!
//! 1. this instance is in rotation (`fulcrumctl rotation out` withdraws
//!    every VIP; the dataplane keeps serving the flows it has):
//!    `out of rotation`;
//! 2. the dataplane is alive: its pid (from the segment) exists and is not a
//!    zombie, checked every tick (100 ms), and its heartbeat (every 100 ms)
//!    changed within [`HEARTBEAT_MAX_AGE`] (a hung dataplane); see
//!    [`dataplane_down`]: `dataplane down`;
//! 3. the dataplane has applied the generation the control plane published
//!    last (its status word, reset when a dataplane starts, and its report,
//!    both say so): `generation N not applied (applied M)`. One exception,
//!    so that every change (`vip add`, a drain, a health flip) does not
//!    withdraw every VIP for the moment the dataplane takes to apply it: a
//!    VIP already announced stays announced while the same dataplane (same
//!    epoch), which had applied the previous generation, catches up, for at
//!    most [`CATCH_UP_GRACE`] (`catching_up`); the other checks still apply
//!    to the new generation, so a VIP losing its last backend is withdrawn
//!    at once, and a new VIP waits for the dataplane;
//! 4. the VIP is in that generation (it is unless publishing failed):
//!    `not in the published generation N`;
//! 5. the dataplane did not refuse the VIP: `refused by the dataplane: ...`;
//! 6. the VIP has at least one backend published up (health checks applied;
//!    drained and down backends do not count): `no healthy backend`.
//!
//! BIRD is given routes, not VIPs: one `route A/32 via NEXT_HOP;` per
//! address that has at least one VIP announced (two VIPs on one address,
//! one healthy: the address is announced). The set is evaluated every
//! daemon tick; the routes file is rewritten (temp + rename, sorted) and
//! `birdc configure` run only when the set changes, by a thread of its own
//! ([`Bird`]) so that the daemon never waits on BIRD. A failing `birdc` is
//! logged, counted and retried every tick. At start the routes file is
//! written empty and BIRD configured before anything else: nothing is
//! announced before the dataplane is seen applying the current generation.
//!
//! If the control plane itself stops or dies, BIRD keeps announcing what it
//! was last given; losing the whole host is what the router's hold timer
//! (or BFD) catches.

use crate::config::Bgp;
use crate::proto::VipKey;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A dataplane heartbeat unchanged this long means a hung dataplane (for
/// announcing; it beats every 100 ms).
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_millis(300);
/// A `birdc` run taking longer is killed and counts as failed.
pub const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `birdc show protocols` is read for the session state.
pub const SESSION_REFRESH: Duration = Duration::from_secs(1);
/// How long an announced VIP stays announced while the dataplane applies a
/// newer generation (see the rule, 3).
pub const CATCH_UP_GRACE: Duration = Duration::from_secs(2);
/// How often a failed `birdc configure` is retried (a daemon tick).
pub const RETRY: Duration = Duration::from_millis(100);

pub const OUT_OF_ROTATION: &str = "out of rotation";
pub const DATAPLANE_DOWN: &str = "dataplane down";
pub const NO_HEALTHY_BACKEND: &str = "no healthy backend";

fn log(msg: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}.{:03} fulcrum-controlplane: {msg}",
        now.as_secs(),
        now.subsec_millis()
    );
}

// ------------------------------------------------------------------ the rule

/// What the rule looks at.
#[derive(Debug, Clone)]
pub struct Input {
    pub out_of_rotation: bool,
    /// See [`dataplane_down`]: `None` is alive.
    pub dataplane_alive: bool,
    /// The generation the control plane published last, and the one the
    /// dataplane has applied.
    pub published: u64,
    pub applied: u64,
    /// The dataplane applied the previous generation and has had less than
    /// [`CATCH_UP_GRACE`] for the current one (see the rule, 3).
    pub catching_up: bool,
    pub vips: Vec<VipInput>,
}

/// One configured VIP.
#[derive(Debug, Clone)]
pub struct VipInput {
    pub key: VipKey,
    /// It is in the published generation.
    pub published: bool,
    /// The dataplane's reason for refusing it (in the applied generation).
    pub refused: Option<String>,
    /// Its backends published up (not drained, not down by health checks).
    pub backends_up: usize,
    /// It is announced now by its own rule (for `catching_up`).
    pub announced: bool,
}

/// One VIP's outcome: `None` when its own rule holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub key: VipKey,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub vips: Vec<Decision>,
    /// Addresses to announce: those of the VIPs whose rule holds.
    pub routes: BTreeSet<Ipv4Addr>,
}

impl Outcome {
    /// The VIP's address is announced.
    pub fn announced(&self, k: VipKey) -> bool {
        self.routes.contains(&k.address)
    }
}

/// The announcement rule (see the module's documentation).
pub fn decide(i: &Input) -> Outcome {
    let vips: Vec<Decision> = i
        .vips
        .iter()
        .map(|v| {
            let reason = if i.out_of_rotation {
                Some(OUT_OF_ROTATION.to_owned())
            } else if !i.dataplane_alive {
                Some(DATAPLANE_DOWN.to_owned())
            } else if i.applied != i.published && !(i.catching_up && v.announced) {
                Some(format!(
                    "generation {} not applied (applied {})",
                    i.published, i.applied
                ))
            } else if !v.published {
                Some(format!("not in the published generation {}", i.published))
            } else if let Some(r) = &v.refused {
                Some(format!("refused by the dataplane: {r}"))
            } else if v.backends_up == 0 {
                Some(NO_HEALTHY_BACKEND.to_owned())
            } else {
                None
            };
            Decision { key: v.key, reason }
        })
        .collect();
    let routes = vips
        .iter()
        .filter(|d| d.reason.is_none())
        .map(|d| d.key.address)
        .collect();
    Outcome { vips, routes }
}

/// What the segment says of the dataplane, for [`dataplane_down`].
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// It has ever written its status.
    pub present: bool,
    pub pid: u32,
    /// Its epoch (odd: a dataplane starting, resetting its counters).
    pub epoch: u64,
    /// Its heartbeat is 0: it shut down cleanly.
    pub stopped: bool,
    /// Since its heartbeat last changed (`None`: not seen changing yet).
    pub beat_age: Option<Duration>,
}

/// Why the dataplane counts as down for announcing (`None`: alive). A dead
/// dataplane is caught by its pid, a hung one by its heartbeat.
pub fn dataplane_down(l: &Liveness, pid_alive: impl Fn(u32) -> bool) -> Option<String> {
    if !l.present {
        return Some("never seen".into());
    }
    if l.stopped {
        return Some("stopped (clean shutdown)".into());
    }
    if l.epoch % 2 == 1 {
        return Some("starting (epoch odd)".into());
    }
    if !pid_alive(l.pid) {
        return Some(format!("pid {} is gone", l.pid));
    }
    match l.beat_age {
        None => Some("no heartbeat seen yet".into()),
        Some(a) if a > HEARTBEAT_MAX_AGE => Some(format!("heartbeat {} ms old", a.as_millis())),
        Some(_) => None,
    }
}

/// The process exists and is not a zombie (same host: `/proc/<pid>/stat`).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X') | Some('x'))
}

// ------------------------------------------------------------------ BIRD

/// The routes file's text: sorted, deterministic.
pub fn routes_text(routes: &BTreeSet<Ipv4Addr>, next_hop: Ipv4Addr) -> String {
    let mut s = String::from(
        "# Written by fulcrum-controlplane: the VIP addresses this instance announces.\n",
    );
    for a in routes {
        s.push_str(&format!("route {a}/32 via {next_hop};\n"));
    }
    s
}

/// Writes `text` to a temporary file beside `path`, syncs it and renames it over.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.sync_all()
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs `birdc -s SOCKET ARGS...` (killed after [`BIRDC_TIMEOUT`]); its
/// output, or why it failed (exit status and what it said).
pub fn birdc(cfg: &Bgp, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(&cfg.birdc)
        .arg("-s")
        .arg(&cfg.bird_socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cfg.birdc.display()))?;
    // Readers on threads: a chatty birdc must not block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + BIRDC_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = format!(
        "{}{}",
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default()
    );
    let said = || {
        text.lines()
            .filter(|l| !l.starts_with("BIRD ") && !l.starts_with("Reading configuration"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match status {
        None => Err(format!(
            "birdc {} timed out after {:?}",
            args.join(" "),
            BIRDC_TIMEOUT
        )),
        Some(s) if !s.success() => {
            Err(format!("birdc {} failed ({s}): {}", args.join(" "), said()))
        }
        Some(_) => Ok(text),
    }
}

/// The session line of `birdc show protocols NAME`: the BGP state (the
/// info column's first word for a BGP protocol: `Established`, `Active`,
/// `Connect`, `Idle`, ...; the state column otherwise or when the info is
/// empty) and the info column.
pub fn parse_protocol(output: &str, name: &str) -> Option<(String, String)> {
    let line = output
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    let state = (*cols.get(3)?).to_owned();
    // Since: a time (`12:00:00.123`), or a date and a time.
    let mut i = 5;
    if cols
        .get(i)
        .is_some_and(|c| c.contains(':') && c.chars().next().is_some_and(|c| c.is_ascii_digit()))
    {
        i += 1;
    }
    let info = cols.get(i..).map(|c| c.join(" ")).unwrap_or_default();
    let session = match info.split_whitespace().next() {
        Some(w) if cols.get(1) == Some(&"BGP") => w.to_owned(),
        _ => state,
    };
    Some((session, info))
}

/// Writes the routes file and configures BIRD when the routes change.
pub struct Writer {
    cfg: Bgp,
    /// What BIRD was last configured with successfully.
    configured: Option<BTreeSet<Ipv4Addr>>,
}

impl Writer {
    pub fn new(cfg: Bgp) -> Writer {
        Writer {
            cfg,
            configured: None,
        }
    }

    pub fn configured(&self) -> Option<&BTreeSet<Ipv4Addr>> {
        self.configured.as_ref()
    }

    /// Unless BIRD already has `routes`: writes the file and runs
    /// `birdc configure`. `Ok(None)`: nothing to do; `Ok(Some(t))`:
    /// configured, `birdc` took `t`. On error BIRD keeps what it had; the
    /// next call tries again.
    pub fn apply(&mut self, routes: &BTreeSet<Ipv4Addr>) -> Result<Option<Duration>, String> {
        if self.configured.as_ref() == Some(routes) {
            return Ok(None);
        }
        write_atomic(
            &self.cfg.routes_file,
            &routes_text(routes, self.cfg.next_hop),
        )?;
        let t = Instant::now();
        birdc(&self.cfg, &["configure"])?;
        self.configured = Some(routes.clone());
        Ok(Some(t.elapsed()))
    }
}

/// The BGP session as last read.
#[derive(Debug, Clone)]
pub struct Session {
    /// `None`: could not be read (`info` says why).
    pub state: Option<String>,
    pub info: String,
    pub at: Instant,
}

/// What [`Bird`] has done, for `status` and the metrics.
#[derive(Debug, Clone, Default)]
pub struct BirdStatus {
    /// Addresses BIRD was last configured with.
    pub configured: Option<BTreeSet<Ipv4Addr>>,
    pub configure_failures: u64,
    pub last_error: Option<String>,
    pub last_configure: Option<Duration>,
    pub session: Option<Session>,
}

#[derive(Default)]
struct Inner {
    want: Option<BTreeSet<Ipv4Addr>>,
    status: BirdStatus,
    stop: bool,
}

/// BIRD, driven from a thread of its own: [`Bird::want`] hands it the routes
/// to announce (the latest wins), it writes and configures when they change
/// (retrying every [`RETRY`] while `birdc` fails) and reads the session
/// state every [`SESSION_REFRESH`].
pub struct Bird {
    cfg: Bgp,
    shared: Arc<(Mutex<Inner>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bird {
    /// Writes the routes file empty and configures BIRD (a failure is
    /// logged and retried by the thread), then starts the thread.
    pub fn start(cfg: Bgp) -> Bird {
        let shared = Arc::new((Mutex::new(Inner::default()), Condvar::new()));
        let mut writer = Writer::new(cfg.clone());
        {
            let mut g = shared.0.lock().unwrap_or_else(|e| e.into_inner());
            g.want = Some(BTreeSet::new());
            match writer.apply(&BTreeSet::new()) {
                Ok(t) => {
                    log(format_args!(
                        "bgp: {} written empty, BIRD configured ({:.1} ms): nothing announced until the dataplane applies the current generation",
                        cfg.routes_file.display(),
                        t.unwrap_or_default().as_secs_f64() * 1e3
                    ));
                    g.status.configured = Some(BTreeSet::new());
                    g.status.last_configure = t;
                }
                Err(e) => {
                    log(format_args!(
                        "bgp: emptying {} and configuring BIRD failed (retrying every {:?}): {e}",
                        cfg.routes_file.display(),
                        RETRY
                    ));
                    g.status.configure_failures += 1;
                    g.status.last_error = Some(e);
                }
            }
        }
        let s = shared.clone();
        let c = cfg.clone();
        let thread = std::thread::Builder::new()
            .name("bird".into())
            .spawn(move || run(c, writer, s))
            .expect("spawn the bird thread");
        Bird {
            cfg,
            shared,
            thread: Some(thread),
        }
    }

    pub fn config(&self) -> &Bgp {
        &self.cfg
    }

    /// The routes to announce from now on.
    pub fn want(&self, routes: BTreeSet<Ipv4Addr>) {
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        if g.want.as_ref() != Some(&routes) {
            g.want = Some(routes);
            cv.notify_all();
        }
    }

    pub fn status(&self) -> BirdStatus {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status
            .clone()
    }
}

impl Drop for Bird {
    /// Stops the thread; BIRD keeps the routes it has.
    fn drop(&mut self) {
        let (m, cv) = &*self.shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn list(s: &BTreeSet<Ipv4Addr>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter()
            .map(|a| format!("{a}/32"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn run(cfg: Bgp, mut writer: Writer, shared: Arc<(Mutex<Inner>, Condvar)>) {
    let (m, cv) = &*shared;
    let mut next_session = Instant::now();
    let mut failing_since_log: Option<Instant> = None;
    let mut retry_at = Instant::now();
    loop {
        // Wait for a change, a retry or the next session read.
        let want = {
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if g.stop {
                    return;
                }
                let now = Instant::now();
                let pending = g.want.is_some() && g.want.as_ref() != writer.configured();
                let failing = g.status.last_error.is_some();
                if (pending && (!failing || now >= retry_at)) || now >= next_session {
                    break g.want.clone();
                }
                let until = if pending {
                    retry_at.min(next_session)
                } else {
                    next_session
                };
                g = cv
                    .wait_timeout(g, until.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        if let Some(want) = want {
            let before = writer.configured().cloned();
            match writer.apply(&want) {
                Ok(None) => {}
                Ok(Some(took)) => {
                    let before = before.unwrap_or_default();
                    let added: BTreeSet<Ipv4Addr> = want.difference(&before).copied().collect();
                    let removed: BTreeSet<Ipv4Addr> = before.difference(&want).copied().collect();
                    log(format_args!(
                        "bgp: BIRD configured in {:.1} ms: announcing {}; added {}, withdrawn {}",
                        took.as_secs_f64() * 1e3,
                        list(&want),
                        list(&added),
                        list(&removed)
                    ));
                    failing_since_log = None;
                    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                    g.status.configured = Some(want);
                    g.status.last_configure = Some(took);
                    g.status.last_error = None;
                }
                Err(e) => {
                    retry_at = Instant::now() + RETRY;
                    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                    g.status.configure_failures += 1;
                    let n = g.status.configure_failures;
                    if g.status.last_error.as_deref() != Some(&e)
                        || failing_since_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        log(format_args!("bgp: configuring BIRD to announce {} failed ({n} failures so far), retrying: {e}", list(&want)));
                        failing_since_log = Some(Instant::now());
                    }
                    g.status.last_error = Some(e);
                }
            }
        }
        if Instant::now() >= next_session {
            next_session = Instant::now() + SESSION_REFRESH;
            let read = birdc(&cfg, &["show", "protocols", &cfg.protocol]);
            let session = match read {
                Ok(out) => match parse_protocol(&out, &cfg.protocol) {
                    Some((state, info)) => Session {
                        state: Some(state),
                        info,
                        at: Instant::now(),
                    },
                    None => Session {
                        state: None,
                        info: format!("no protocol {} in BIRD's answer", cfg.protocol),
                        at: Instant::now(),
                    },
                },
                Err(e) => Session {
                    state: None,
                    info: e,
                    at: Instant::now(),
                },
            };
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            let old = g.status.session.as_ref().map(|s| s.state.clone());
            if old.as_ref() != Some(&session.state) {
                match &session.state {
                    Some(s) => log(format_args!(
                        "bgp: BIRD protocol {}: {s} ({})",
                        cfg.protocol, session.info
                    )),
                    None => log(format_args!(
                        "bgp: BIRD protocol {}: unknown: {}",
                        cfg.protocol, session.info
                    )),
                }
            }
            g.status.session = Some(session);
        }
    }
}

#[cfg(test)]
mod tests;
