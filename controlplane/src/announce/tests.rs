//! The rule as a table of cases, dataplane liveness, `show protocols`
//! parsing, and the writer and the BIRD thread against a fake `birdc`.

use super::*;
use std::path::PathBuf;

fn key(s: &str) -> VipKey {
    s.parse().unwrap()
}

fn vip(k: &str, published: bool, refused: Option<&str>, backends_up: usize) -> VipInput {
    VipInput {
        key: key(k),
        published,
        refused: refused.map(str::to_owned),
        backends_up,
        announced: false,
    }
}

fn input(out: bool, alive: bool, published: u64, applied: u64, vips: Vec<VipInput>) -> Input {
    Input {
        out_of_rotation: out,
        dataplane_alive: alive,
        published,
        applied,
        catching_up: false,
        vips,
    }
}

#[test]
fn the_rule() {
    let healthy = || {
        vec![
            vip("198.18.1.1:80", true, None, 3),
            vip("198.18.1.2:80", true, None, 0),
            vip(
                "198.18.1.3:53/udp",
                true,
                Some("no SNAT address for fullnat"),
                2,
            ),
            vip("198.18.1.4:80", false, None, 1),
        ]
    };
    type Case = (
        &'static str,
        Input,
        &'static [&'static str],
        [Option<&'static str>; 4],
    );
    let cases: Vec<Case> = vec![
        (
            "all well: each VIP by its own rule",
            input(false, true, 7, 7, healthy()),
            &["198.18.1.1"],
            [
                None,
                Some("no healthy backend"),
                Some("refused by the dataplane: no SNAT address for fullnat"),
                Some("not in the published generation 7"),
            ],
        ),
        (
            "dataplane down: everything withdrawn",
            input(false, false, 7, 7, healthy()),
            &[],
            [Some("dataplane down"); 4],
        ),
        (
            "generation not applied yet (a restarted dataplane)",
            input(false, true, 7, 0, healthy()),
            &[],
            [Some("generation 7 not applied (applied 0)"); 4],
        ),
        (
            "a newer generation published, the older applied",
            input(false, true, 8, 7, healthy()),
            &[],
            [Some("generation 8 not applied (applied 7)"); 4],
        ),
        (
            "out of rotation wins over everything",
            input(true, false, 8, 7, healthy()),
            &[],
            [Some("out of rotation"); 4],
        ),
        (
            "out of rotation, all well",
            input(true, true, 7, 7, healthy()),
            &[],
            [Some("out of rotation"); 4],
        ),
    ];
    for (what, i, routes, reasons) in cases {
        let o = decide(&i);
        let want: BTreeSet<Ipv4Addr> = routes.iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(o.routes, want, "{what}");
        let got: Vec<Option<&str>> = o.vips.iter().map(|d| d.reason.as_deref()).collect();
        assert_eq!(got, reasons, "{what}");
        assert_eq!(
            o.vips.iter().map(|d| d.key).collect::<Vec<_>>(),
            i.vips.iter().map(|v| v.key).collect::<Vec<_>>()
        );
    }
}

#[test]
fn announced_vips_stay_announced_while_the_dataplane_catches_up() {
    let vips = |announced: bool| {
        let mut v = vec![
            vip("198.18.1.1:80", true, None, 3),
            vip("198.18.1.2:80", true, None, 0),
            vip("198.18.1.3:80", true, None, 1),
        ];
        v[0].announced = announced;
        v[1].announced = announced;
        v
    };
    let mut i = input(false, true, 8, 7, vips(true));
    i.catching_up = true;
    let o = decide(&i);
    assert_eq!(
        o.routes,
        set(&[[198, 18, 1, 1]]),
        "announced and healthy: stays"
    );
    assert_eq!(
        o.vips[1].reason.as_deref(),
        Some("no healthy backend"),
        "its last backend gone: withdrawn at once"
    );
    assert_eq!(
        o.vips[2].reason.as_deref(),
        Some("generation 8 not applied (applied 7)"),
        "a new VIP waits"
    );
    // Past the grace (or another dataplane): the strict rule.
    i.catching_up = false;
    assert!(decide(&i).routes.is_empty());
    // Dataplane down or out of rotation still win.
    i.catching_up = true;
    i.dataplane_alive = false;
    assert!(decide(&i).routes.is_empty());
}

#[test]
fn an_address_is_announced_when_any_of_its_vips_is() {
    let i = input(
        false,
        true,
        3,
        3,
        vec![
            vip("198.18.1.1:80", true, None, 0),
            vip("198.18.1.1:443", true, None, 1),
            vip("198.18.1.1:53/udp", true, None, 0),
        ],
    );
    let o = decide(&i);
    assert_eq!(o.routes, BTreeSet::from([Ipv4Addr::new(198, 18, 1, 1)]));
    assert_eq!(o.vips[0].reason.as_deref(), Some("no healthy backend"));
    assert!(
        o.announced(key("198.18.1.1:80")),
        "its address is announced for :443"
    );
    assert!(!o.announced(key("198.18.1.9:80")));
    // No VIPs: nothing.
    assert!(decide(&input(false, true, 1, 1, vec![])).routes.is_empty());
}

#[test]
fn dataplane_liveness() {
    let ok = Liveness {
        present: true,
        pid: 42,
        epoch: 4,
        stopped: false,
        beat_age: Some(Duration::from_millis(120)),
    };
    let alive = |p: u32| p == 42;
    assert_eq!(dataplane_down(&ok, alive), None);
    let cases = [
        (
            Liveness {
                present: false,
                ..ok
            },
            "never seen",
        ),
        (
            Liveness {
                stopped: true,
                ..ok
            },
            "stopped (clean shutdown)",
        ),
        (Liveness { epoch: 5, ..ok }, "starting (epoch odd)"),
        (Liveness { pid: 43, ..ok }, "pid 43 is gone"),
        (
            Liveness {
                beat_age: None,
                ..ok
            },
            "no heartbeat seen yet",
        ),
        (
            Liveness {
                beat_age: Some(Duration::from_millis(301)),
                ..ok
            },
            "heartbeat 301 ms old",
        ),
    ];
    for (l, want) in cases {
        assert_eq!(dataplane_down(&l, alive).as_deref(), Some(want), "{l:?}");
    }
    assert_eq!(
        dataplane_down(
            &Liveness {
                beat_age: Some(HEARTBEAT_MAX_AGE),
                ..ok
            },
            alive
        ),
        None
    );
}

#[test]
fn pid_alive_sees_gone_and_zombie_processes() {
    assert!(pid_alive(std::process::id()));
    assert!(!pid_alive(0));
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    // Not reaped yet: a zombie once it exits.
    let end = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!pid_alive(pid), "a zombie is not alive");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "still a zombie (not reaped)"
    );
    child.wait().unwrap();
    assert!(!pid_alive(pid));
}

#[test]
fn show_protocols_parsing() {
    let established = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\nuplink     BGP        ---        up     03:28:02.326  Established   \n";
    assert_eq!(
        parse_protocol(established, "uplink"),
        Some(("Established".into(), "Established".into()))
    );
    let active = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\nuplink     BGP        ---        start  03:28:02.326  Active        Socket: Connection refused\n";
    assert_eq!(
        parse_protocol(active, "uplink"),
        Some(("Active".into(), "Active Socket: Connection refused".into()))
    );
    let dated =
        "Name Proto Table State Since Info\nuplink BGP --- start 2026-12-06 03:28:02 Connect\n";
    assert_eq!(
        parse_protocol(dated, "uplink"),
        Some(("Connect".into(), "Connect".into()))
    );
    let down = "Name Proto Table State Since Info\nuplink BGP --- down 03:28:02.326\n";
    assert_eq!(
        parse_protocol(down, "uplink"),
        Some(("down".into(), String::new()))
    );
    let stat = "Name Proto Table State Since Info\nvips Static master4 up 03:28:02.326\n";
    assert_eq!(
        parse_protocol(stat, "vips"),
        Some(("up".into(), String::new()))
    );
    assert_eq!(parse_protocol(stat, "uplink"), None);
    assert_eq!(parse_protocol("BIRD 2.0.12 ready.\n", "uplink"), None);
}

#[test]
fn routes_file_is_sorted_and_deterministic() {
    let routes = BTreeSet::from([
        Ipv4Addr::new(198, 18, 1, 10),
        Ipv4Addr::new(198, 18, 1, 2),
        Ipv4Addr::new(10, 0, 0, 1),
    ]);
    let text = routes_text(&routes, Ipv4Addr::new(198, 18, 0, 2));
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "route 10.0.0.1/32 via 198.18.0.2;",
            "route 198.18.1.2/32 via 198.18.0.2;",
            "route 198.18.1.10/32 via 198.18.0.2;"
        ]
    );
    assert_eq!(
        routes_text(&BTreeSet::new(), Ipv4Addr::new(198, 18, 0, 2))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count(),
        0
    );
}

/// A fake `birdc` in a temporary directory: it appends its arguments to
/// `calls` (and, for `configure`, the routes file's routes as
/// `  route ...` lines); it fails while `fail` exists; `show protocols`
/// answers an established `uplink`.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> {calls:?}\nif [ -e {fail:?} ]; then echo 'BIRD 2.0.12 ready.'; echo 'routes.conf:1:1 syntax error' >&2; exit 1; fi\n\
             case \"$3\" in\n configure) grep '^route' {routes:?} | sed 's/^/  /' >> {calls:?}; echo 'BIRD 2.0.12 ready.'; echo 'Reconfigured';;\n \
             show) echo 'BIRD 2.0.12 ready.'; echo 'Name       Proto      Table      State  Since         Info'; echo 'uplink     BGP        ---        up     03:28:02.326  Established';;\n\
             esac\n",
            calls = d.join("calls"),
            fail = d.join("fail"),
            routes = d.join("routes.conf"),
        );
        let birdc = d.join("birdc");
        std::fs::write(&birdc, script).unwrap();
        std::fs::set_permissions(&birdc, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir }
    }

    fn cfg(&self) -> Bgp {
        Bgp {
            bird_socket: self.dir.path().join("bird.ctl"),
            routes_file: self.dir.path().join("routes.conf"),
            next_hop: Ipv4Addr::new(198, 18, 0, 2),
            protocol: "uplink".into(),
            birdc: self.dir.path().join("birdc"),
        }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
    }

    fn routes(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("routes.conf")).unwrap()
    }

    fn fail(&self, on: bool) {
        let p: PathBuf = self.dir.path().join("fail");
        if on {
            std::fs::write(p, "").unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn set(a: &[[u8; 4]]) -> BTreeSet<Ipv4Addr> {
    a.iter().map(|&x| Ipv4Addr::from(x)).collect()
}

#[test]
fn the_writer_configures_only_on_change() {
    let f = Fake::new();
    let sock = f.cfg().bird_socket.display().to_string();
    let mut w = Writer::new(f.cfg());
    assert!(
        w.apply(&set(&[])).unwrap().is_some(),
        "the first apply configures"
    );
    assert!(w.apply(&set(&[])).unwrap().is_none(), "unchanged: nothing");
    assert!(w
        .apply(&set(&[[198, 18, 1, 2], [198, 18, 1, 1]]))
        .unwrap()
        .is_some());
    assert_eq!(
        f.routes(),
        "# Written by fulcrum-controlplane: the VIP addresses this instance announces.\n\
         route 198.18.1.1/32 via 198.18.0.2;\nroute 198.18.1.2/32 via 198.18.0.2;\n"
    );
    assert!(w
        .apply(&set(&[[198, 18, 1, 1], [198, 18, 1, 2]]))
        .unwrap()
        .is_none());
    assert_eq!(
        f.calls(),
        format!(
            "-s {sock} configure\n-s {sock} configure\n  route 198.18.1.1/32 via 198.18.0.2;\n  route 198.18.1.2/32 via 198.18.0.2;\n"
        )
    );
    // birdc failing: an error (with what it said), and the same routes are
    // tried again on the next apply.
    f.fail(true);
    let e = w.apply(&set(&[[198, 18, 1, 1]])).unwrap_err();
    assert!(
        e.contains("birdc configure failed") && e.contains("syntax error"),
        "{e}"
    );
    assert!(w.apply(&set(&[[198, 18, 1, 1]])).is_err());
    f.fail(false);
    assert!(
        w.apply(&set(&[[198, 18, 1, 1]])).unwrap().is_some(),
        "retried once birdc works"
    );
    assert!(w.apply(&set(&[[198, 18, 1, 1]])).unwrap().is_none());
    assert_eq!(f.calls().matches("configure").count(), 5);
    assert_eq!(
        f.routes()
            .lines()
            .filter(|l| l.starts_with("route"))
            .count(),
        1
    );
    // A missing birdc is an error, not a panic.
    let mut cfg = f.cfg();
    cfg.birdc = f.dir.path().join("no-such-birdc");
    assert!(Writer::new(cfg)
        .apply(&set(&[]))
        .unwrap_err()
        .contains("cannot run"));
}

#[test]
fn the_bird_thread_writes_empty_first_retries_and_reads_the_session() {
    let f = Fake::new();
    f.fail(true);
    let bird = Bird::start(f.cfg());
    assert_eq!(
        f.routes()
            .lines()
            .filter(|l| l.starts_with("route"))
            .count(),
        0,
        "written empty at start"
    );
    let st = bird.status();
    assert!(
        st.configure_failures >= 1 && st.last_error.is_some(),
        "{st:?}"
    );
    // Retried every tick while birdc fails.
    std::thread::sleep(Duration::from_millis(350));
    let failures = bird.status().configure_failures;
    assert!(failures >= 3, "{failures} failures after 350 ms");
    f.fail(false);
    let wait = |what: &str, cond: &dyn Fn(&BirdStatus) -> bool| {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let s = bird.status();
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < end, "{what}: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("configured empty", &|s| {
        s.configured == Some(BTreeSet::new()) && s.last_error.is_none()
    });
    bird.want(set(&[[198, 18, 1, 1]]));
    let s = wait("configured with 198.18.1.1", &|s| {
        s.configured == Some(set(&[[198, 18, 1, 1]]))
    });
    assert!(s.last_configure.is_some());
    assert!(f.routes().contains("route 198.18.1.1/32 via 198.18.0.2;\n"));
    let s = wait("the session read", &|s| {
        s.session.as_ref().is_some_and(|x| x.state.is_some())
    });
    assert_eq!(s.session.unwrap().state.as_deref(), Some("Established"));
    // The same routes again: no configure.
    let n = f.calls().matches("configure").count();
    bird.want(set(&[[198, 18, 1, 1]]));
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(f.calls().matches("configure").count(), n);
    drop(bird);
}
