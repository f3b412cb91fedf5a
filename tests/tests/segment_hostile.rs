//! A segment nobody else can own, with the real daemons: both refuse a
//! pre-created segment owned by another user and a symbolic link at the path
//! (exit non-zero, say why); a segment truncated under them while traffic
//! flows kills neither (the dataplane keeps serving the last good
//! generation, `fulcrumctl status` says "truncated"); a segment replaced
//! under them is reported (status and the dataplane's log).
//!
//! Run under the machine's dataplane-test lock:
//! `flock /tmp/fulcrum-dataplane-tests.lock cargo test --release -p fulcrum-tests
//! --test segment_hostile -- --test-threads=1`.

use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fulcrum_tests::client;
use fulcrum_tests::cp::{controlplane_bin, http_request, ControlPlane, Traffic};
use fulcrum_tests::servers::{start_backends, Mode, Server};
use fulcrum_tests::*;

const VIP: &str = "198.18.1.1:80";

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

fn vip_toml() -> String {
    "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nbackends = [\n\
     { address = \"198.18.0.21\", port = 8080 },\n{ address = \"198.18.0.22\", port = 8080 },\n\
     { address = \"198.18.0.23\", port = 8080 },\n]\n"
        .to_string()
}

/// Files this test puts in /dev/shm, removed on drop (also when failing).
struct Files(Vec<PathBuf>);

impl Files {
    fn path(&mut self, what: &str) -> PathBuf {
        let p = PathBuf::from(format!("/dev/shm/fulcrum-test-hostile-{}-{what}", std::process::id()));
        let _ = fs::remove_file(&p);
        self.0.push(p.clone());
        p
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// A valid segment at `path` (created by the shm crate, then closed).
fn make_segment(path: &Path) {
    drop(fulcrum_shm::Segment::open_or_create(path).unwrap());
}

/// Run `cmd` to completion (30 s bound); its exit code and log.
fn run_to_exit(name: &str, cmd: Command, log: &Path) -> (Option<i32>, String) {
    let mut p = Guarded::spawn(name, cmd, log);
    let status = p.wait_timeout(Duration::from_secs(30));
    let out = p.output();
    match status {
        Some(s) => (s.code(), out),
        None => {
            p.kill();
            panic!("{name} still running 30 s after start (it should have refused the segment):\n{out}");
        }
    }
}

/// The control plane on segment `shm` (config in `dir`): exit code and log.
fn controlplane_on(dir: &Path, shm: &Path) -> (Option<i32>, String) {
    let config = dir.join("controlplane.toml");
    fs::write(
        &config,
        format!(
            "[controlplane]\nshm = {shm:?}\nsocket = {:?}\nstate_file = {:?}\nprometheus = \"\"\n\n{}",
            dir.join("control.sock"),
            dir.join("state.json"),
            vip_toml()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(controlplane_bin());
    cmd.arg("--config").arg(&config);
    run_to_exit("fulcrum-controlplane", cmd, &dir.join(format!("cp-{}.log", shm.file_name().unwrap().to_string_lossy())))
}

/// The dataplane (in `P-fab`, on the topology's tap) on segment `shm`.
fn dataplane_on(topo: &Topology, dir: &Path, shm: &Path) -> (Option<i32>, String) {
    let config = dir.join(format!("dp-{}.toml", shm.file_name().unwrap().to_string_lossy()));
    fs::write(&config, merge_toml(&base_config(topo), &format!("[dataplane]\nshm = {shm:?}\n"))).unwrap();
    let mut cmd = topo.command("fab", dataplane_bin());
    cmd.arg("--config").arg(&config);
    run_to_exit("fulcrum-dataplane", cmd, &config.with_extension("log"))
}

#[test]
fn both_daemons_refuse_a_segment_of_another_user_and_a_symlink() {
    let topo = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Files(Vec::new());

    // Pre-created by "another user": a perfectly valid segment, owned by nobody.
    let foreign = files.path("foreign");
    make_segment(&foreign);
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    // A symbolic link to a valid segment of ours.
    let target = files.path("target");
    make_segment(&target);
    let link = files.path("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    for (shm, expect) in [
        (&foreign, "is owned by uid 65534, expected uid 0".to_string()),
        (&link, format!("is a symbolic link (to {})", target.display())),
    ] {
        let (code, log) = controlplane_on(dir.path(), shm);
        eprintln!("control plane on {}: exit {code:?}\n{log}", shm.display());
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains(&shm.display().to_string()) && log.contains(&expect), "expected {expect:?} in:\n{log}");
        assert!(log.contains("refused"), "{log}");

        let (code, log) = dataplane_on(&topo, dir.path(), shm);
        eprintln!("dataplane on {}: exit {code:?}\n{}", shm.display(), tail_lines(&log, 4));
        assert!(code.is_some_and(|c| c != 0), "exit {code:?}:\n{log}");
        assert!(log.contains(&shm.display().to_string()) && log.contains(&expect), "expected {expect:?} in:\n{log}");
        assert!(!log.lines().any(|l| has_word(l, "ready")), "must not get ready:\n{log}");
    }
    // Nothing was changed: still nobody's 0600 file, still a link.
    let m = fs::metadata(&foreign).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (65534, 0o600));
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    drop(files);
    topo.down();
}

fn tail_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Control plane + dataplane on one proxy VIP with three HTTP backends, the first
/// request served.
struct Env {
    dp: Dataplane,
    cp: ControlPlane,
    _servers: Vec<Server>,
    topo: Topology,
}

impl Env {
    fn up() -> Env {
        let topo = Topology::up();
        let servers = start_backends(&topo, 8080, Mode::Http, &[]);
        let cp = ControlPlane::start(&topo, &vip_toml());
        let dp = Dataplane::start(&topo, &cp.dataplane_toml());
        let g = cp.wait_applied(Duration::from_secs(15));
        eprintln!("dataplane (pid {}) applied generation {g}", dp.pid());
        in_netns(&topo.ns("cli"), || {
            wait_for(Duration::from_secs(10), "a first request through the VIP", || http_request(vip()))
        });
        Env { dp, cp, _servers: servers, topo }
    }

    /// `n` requests through the VIP, 4 at a time: all must succeed.
    fn all_served(&self, n: u64) {
        let s = in_netns(&self.topo.ns("cli"), || client::http_spread(vip(), n, 4, Duration::from_secs(10)));
        assert_eq!((s.total_ok(), s.failed), (n, 0), "failures: {:?}\n{}", s.failures, self.dp.log());
    }

    /// `dataplane.segment` of `fulcrumctl status --json` once it contains `what`.
    fn wait_status_segment(&self, what: &str) -> String {
        wait_for(Duration::from_secs(5), &format!("status to report the segment {what}"), || {
            let s = self.cp.try_json(&["status"])?;
            match s["dataplane"]["segment"].as_str() {
                Some(p) if p.contains(what) => Ok(p.to_string()),
                _ => Err(s.to_string()),
            }
        })
    }

    fn wait_dp_log(&self, what: &str) -> String {
        wait_for(Duration::from_secs(5), &format!("the dataplane to log {what:?}"), || {
            let log = self.dp.log();
            log.lines().find(|l| l.contains(what)).map(str::to_string).ok_or(log)
        })
    }
}

#[test]
fn truncation_under_traffic_kills_nobody_and_the_last_generation_serves() {
    let mut env = Env::up();
    let traffic = Traffic::start(
        &env.topo.ns("cli"),
        vip(),
        2,
        Duration::from_millis(20),
        Duration::from_secs(60),
        http_request,
    );
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    OpenOptions::new().write(true).open(env.cp.shm_path()).unwrap().set_len(0).unwrap();
    let problem = env.wait_status_segment("truncated while mapped");
    eprintln!("status: {problem}");
    assert!(problem.contains("file now 0 bytes"), "{problem}");
    let line = env.wait_dp_log("segment truncated while mapped");
    eprintln!("dataplane log: {line}");
    assert!(line.contains("ERROR"), "{line}");
    // Both keep running, and keep serving, for a while.
    std::thread::sleep(Duration::from_secs(2));
    env.dp.assert_running();
    assert!(env.cp.is_running(), "control plane died:\n{}", env.cp.log());
    let text = String::from_utf8_lossy(&env.cp.ctl(&["status"]).stdout).to_string();
    eprintln!("fulcrumctl status:\n{text}");
    assert!(text.contains("SEGMENT PROBLEM") && text.contains("truncated"), "{text}");
    assert!(env.cp.log().contains("shared-memory segment:"), "{}", env.cp.log());
    env.all_served(40);
    let records = traffic.finish();
    let after: Vec<_> = records.iter().filter(|r| r.start > cut).collect();
    let failed: Vec<_> = after.iter().filter(|r| r.result.is_err()).collect();
    eprintln!("background requests after the truncation: {} ({} failed)", after.len(), failed.len());
    assert!(after.len() >= 20, "too little traffic after the cut: {}", after.len());
    assert!(failed.is_empty(), "requests failed after the truncation: {:?}", &failed[..failed.len().min(5)]);
    // Logged once, not every tick.
    assert_eq!(env.dp.log().matches("segment truncated while mapped").count(), 1, "{}", env.dp.log());
    assert_eq!(env.cp.log().matches("segment truncated while mapped").count(), 1, "{}", env.cp.log());
    env.dp.assert_running();
    assert!(env.cp.is_running());
    let Env { dp, cp, _servers, topo } = env;
    drop((dp, cp, _servers));
    topo.down();
}

#[test]
fn a_replaced_segment_is_reported_and_serving_goes_on() {
    let mut env = Env::up();
    let shm = env.cp.shm_path().to_path_buf();
    let mut files = Files(Vec::new());
    // Keep a link to the original so it can be put back.
    let original = files.path("original");
    fs::hard_link(&shm, &original).unwrap();
    let fresh = files.path("fresh");
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(&fresh).unwrap();
    fs::rename(&fresh, &shm).unwrap();

    let problem = env.wait_status_segment("segment replaced");
    eprintln!("status: {problem}");
    let line = env.wait_dp_log("segment replaced");
    eprintln!("dataplane log: {line}");
    assert!(line.contains("ERROR"), "{line}");
    env.all_served(20);

    // Put the original back: both say so, nothing else happened.
    fs::rename(&original, &shm).unwrap();
    wait_for(Duration::from_secs(5), "status to clear the segment problem", || {
        let s = env.cp.try_json(&["status"])?;
        if s["dataplane"]["segment"].is_null() { Ok(()) } else { Err(s.to_string()) }
    });
    let line = env.wait_dp_log("is fine again");
    eprintln!("dataplane log: {line}");
    env.dp.assert_running();
    assert!(env.cp.is_running());
    env.all_served(20);
    drop(files);
    let Env { dp, cp, _servers, topo } = env;
    drop((dp, cp, _servers));
    topo.down();
}
