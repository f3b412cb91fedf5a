//! BGP announcement end to end with a real BIRD 2: `bird` in P-fab (where the
//! control plane runs) with a device protocol and the static protocol that
//! includes the control plane's routes file (no router, no BGP session: the
//! static routes in `birdc show route` are what would be exported), the real
//! dataplane subscribed to the control plane, a proxy VIP with three backends.
//!
//! The VIP's route appears once the dataplane has applied the generation; a
//! kill -9 of the dataplane withdraws it (the time from the kill to the route
//! gone from `birdc show route` is printed); a restarted dataplane gets it
//! announced again only after it applied the generation; `rotation out`
//! withdraws, `rotation in` announces; `vip del` withdraws.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fulcrum_tests::cp::ControlPlane;
use fulcrum_tests::*;

const VIP: &str = "198.18.1.1:80";
const ROUTE: &str = "198.18.1.1/32";

/// `bird` in P-fab, killed (by its pidfile) on drop.
struct Bird {
    dir: tempfile::TempDir,
    ns: String,
}

impl Bird {
    fn start(topo: &Topology) -> Bird {
        let dir = tempfile::Builder::new().prefix("fulcrum-bird-").tempdir().unwrap();
        let routes = dir.path().join("vips.conf");
        std::fs::write(&routes, "").unwrap();
        let conf = dir.path().join("bird.conf");
        // `include` must start a line.
        std::fs::write(
            &conf,
            format!(
                "router id {FABRIC_IP};\nprotocol device {{}}\nprotocol static vips {{\n  ipv4;\n  include {:?};\n}}\n",
                routes.display().to_string()
            ),
        )
        .unwrap();
        let b = Bird { dir, ns: topo.ns("fab") };
        let (c, s, p) = (conf.display().to_string(), b.socket().display().to_string(), b.pidfile().display().to_string());
        topo.exec_ok("fab", &["bird", "-c", &c, "-s", &s, "-P", &p]);
        wait_for(Duration::from_secs(10), "bird to answer on its socket", || {
            let out = b.birdc(&["show", "status"]);
            if out.contains("Daemon is up") {
                Ok(())
            } else {
                Err(out)
            }
        });
        eprintln!("bird started in {} (pid {})", b.ns, b.pid().unwrap_or(0));
        b
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("bird.ctl")
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("bird.pid")
    }

    fn routes_file(&self) -> PathBuf {
        self.dir.path().join("vips.conf")
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pidfile()).ok()?.trim().parse().ok()
    }

    fn birdc(&self, args: &[&str]) -> String {
        let out = run("birdc", &[&["-s", &self.socket().display().to_string()], args].concat());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn has_route(&self) -> bool {
        self.birdc(&["show", "route"]).contains(ROUTE)
    }

    /// Polls `birdc show route` (every few ms) until the route is `present`;
    /// how long that took.
    fn wait_route(&self, present: bool, timeout: Duration, cp: &ControlPlane) -> Duration {
        let t0 = Instant::now();
        while self.has_route() != present {
            if t0.elapsed() > timeout {
                panic!(
                    "route {ROUTE} not {} after {timeout:?}:\n{}\nroutes file:\n{}\n==== control plane log ====\n{}",
                    if present { "announced" } else { "withdrawn" },
                    self.birdc(&["show", "route"]),
                    std::fs::read_to_string(self.routes_file()).unwrap_or_default(),
                    cp.log()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        t0.elapsed()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
    }
}

fn vip_toml(bird: &Bird) -> String {
    format!(
        "[bgp]\nbird_socket = {:?}\nroutes_file = {:?}\nnext_hop = \"{DATAPLANE_IP}\"\nprotocol = \"vips\"\n\n\
         [[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"proxy\"\nbackends = [\n\
         {{ address = \"198.18.0.21\", port = 8080 }},\n\
         {{ address = \"198.18.0.22\", port = 8080 }},\n\
         {{ address = \"198.18.0.23\", port = 8080 }},\n]\n",
        bird.socket().display().to_string(),
        bird.routes_file().display().to_string()
    )
}

/// The control plane's log lines about the dataplane and BGP from `from` on.
fn events(cp: &ControlPlane, from: usize) -> Vec<String> {
    cp.log()
        .lines()
        .skip(from)
        .filter(|l| l.contains("bgp:") || l.contains("dataplane"))
        .map(str::to_owned)
        .collect()
}

fn log_lines(cp: &ControlPlane) -> usize {
    cp.log().lines().count()
}

fn announcement(cp: &ControlPlane) -> Value {
    let s = cp.json(&["status"]);
    s["bgp"]["vips"][0].clone()
}

#[test]
fn vips_are_announced_through_bird_and_withdrawn() {
    // Fields drop in reverse order of declaration below: dataplane, control
    // plane, BIRD, then the topology.
    let topo = Topology::up();
    let bird = Bird::start(&topo);
    let mut cp = ControlPlane::start(&topo, &vip_toml(&bird));
    assert!(!bird.has_route(), "nothing announced without a dataplane");
    let st = announcement(&cp);
    assert_eq!(st["announced"], false, "{st}");
    eprintln!("before the dataplane: {VIP} withdrawn: {}", st["reason"]);

    // 1. Announced once the dataplane applied the generation.
    let mut dp = Some(Dataplane::start(&topo, &cp.dataplane_toml()));
    let t = Instant::now();
    let g = cp.wait_applied(Duration::from_secs(15));
    let took = bird.wait_route(true, Duration::from_secs(10), &cp);
    eprintln!("dataplane applied generation {g}; route {ROUTE} in BIRD {took:?} after that was seen ({:?} after the wait began)", t.elapsed());
    eprintln!("fulcrumctl status:\n{}", cp.ctl_ok(&["status"]));
    eprintln!("fulcrumctl vip list:\n{}", cp.ctl_ok(&["vip", "list"]));
    assert!(cp.ctl_ok(&["vip", "list"]).lines().nth(1).is_some_and(|l| l.trim_end().ends_with("yes")));
    let st = cp.json(&["status"]);
    assert_eq!(st["bgp"]["session"], "up", "the static protocol's state: {}", st["bgp"]);
    assert_eq!(st["bgp"]["routes"][0], "198.18.1.1");

    // 2. kill -9 of the dataplane: withdrawn.
    let mark = log_lines(&cp);
    let pid = dp.as_ref().unwrap().pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let gone = bird.wait_route(false, Duration::from_secs(5), &cp);
    eprintln!("kill -9 of the dataplane (pid {pid}) -> {ROUTE} gone from `birdc show route` in {:.0} ms", gone.as_secs_f64() * 1e3);
    assert!(gone < Duration::from_secs(1), "withdrawal took {gone:?}");
    let st = announcement(&cp);
    assert_eq!(st["reason"], "dataplane down", "{st}");
    drop(dp.take());
    // A new dataplane takes the role once the old heartbeat is stale (1 s).
    wait_for(Duration::from_secs(5), "fulcrumctl status to report the dataplane down", || {
        let s = cp.try_json(&["status"])?;
        if s["dataplane"]["state"] == "down" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    // The tap goes with the process.
    let tap = topo.tap();
    wait_until(Duration::from_secs(10), "the old tap interface to disappear", || {
        !topo.exec("fab", &["ip", "link", "show", "dev", &tap]).status.success()
    });

    // 3. Restarted: announced again only after it applied the generation.
    let mark2 = log_lines(&cp);
    dp = Some(Dataplane::start(&topo, &cp.dataplane_toml()));
    let back = bird.wait_route(true, Duration::from_secs(15), &cp);
    let st = cp.json(&["status"]);
    assert_eq!(st["generation"]["applied"], st["generation"]["published"], "{st}");
    eprintln!("restarted dataplane (pid {}) ready; {ROUTE} back {back:?} after its start returned", dp.as_ref().unwrap().pid());
    eprintln!("control plane's events since the kill:");
    for l in events(&cp, mark) {
        eprintln!("  {l}");
    }
    let after = events(&cp, mark2);
    let seen = after.iter().position(|l| l.contains("dataplane restarted") || l.contains("dataplane seen"));
    let announced = after.iter().position(|l| l.contains(&format!("bgp: VIP {VIP} announced")));
    assert!(seen.is_some() && announced.is_some() && seen < announced, "order of events: {after:#?}");

    // 4. Out of rotation: withdrawn (the dataplane still serves); in: announced.
    let t = Instant::now();
    eprintln!("{}", cp.ctl_ok(&["rotation", "out"]).trim());
    let out = bird.wait_route(false, Duration::from_secs(5), &cp);
    eprintln!("rotation out -> {ROUTE} withdrawn in {:.0} ms (from the command)", (t.elapsed()).as_secs_f64() * 1e3);
    let _ = out;
    assert_eq!(announcement(&cp)["reason"], "out of rotation");
    eprintln!("fulcrumctl status (out of rotation):\n{}", cp.ctl_ok(&["status"]));
    let t = Instant::now();
    eprintln!("{}", cp.ctl_ok(&["rotation", "in"]).trim());
    bird.wait_route(true, Duration::from_secs(5), &cp);
    eprintln!("rotation in -> {ROUTE} announced in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);

    // 5. vip del: withdrawn.
    let t = Instant::now();
    cp.ctl_ok(&["vip", "del", VIP]);
    bird.wait_route(false, Duration::from_secs(5), &cp);
    eprintln!("vip del -> {ROUTE} withdrawn in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    eprintln!("routes file now:\n{}", std::fs::read_to_string(bird.routes_file()).unwrap());

    drop(dp.take());
    cp.kill9();
    drop(cp);
    drop(bird);
    drop(topo);
}
