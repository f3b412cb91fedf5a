//! The daemon in process, over a [`MemorySegment`]: requests as fulcrumctl
//! sends them, what gets published, and the dataplane's report.

use super::*;
use crate::proto::{Reply, Request, VipKey, VipOptions};
use crate::publish::{BackendCounters, MemorySegment, VipCounters};
use fulcrum_model::{BackendState, Encap, Facts, Mac, Mode, Proto, Tunnel, VipRefusal};

const VIPS: &str = r#"
[[vip]]
address = "198.18.1.1"
port = 80
mode = "proxy"
table_size = 251
backends = [{ address = "198.18.0.21", port = 8080 }, { address = "198.18.0.22", port = 8080 }]
"#;

fn facts(address: [u8; 4]) -> Facts {
    Facts { address: address.into(), snat_addresses: vec![[198, 18, 0, 3].into()], lcores: 2, forwarding: true }
}

fn report(address: [u8; 4], generation: u64, refused: Vec<VipRefusal>) -> DataplaneReport {
    DataplaneReport { facts: facts(address), generation, refused, tables: vec![] }
}

struct Fixture {
    dir: tempfile::TempDir,
    seg: MemorySegment,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { dir: tempfile::tempdir().unwrap(), seg: MemorySegment::new() }
    }

    fn config(&self, vips: &str) -> (PathBuf, Config) {
        let d = self.dir.path();
        let text = format!(
            "[controlplane]\nshm = {:?}\nsocket = {:?}\nstate_file = {:?}\nprometheus = \"\"\n{vips}",
            d.join("shm"),
            d.join("sock"),
            d.join("state.json")
        );
        let path = d.join("controlplane.toml");
        std::fs::write(&path, &text).unwrap();
        (path, Config::parse(&text).unwrap())
    }

    fn start(&self, vips: &str) -> Result<Daemon, StartError> {
        let (path, config) = self.config(vips);
        Daemon::new(&path, config, Box::new(self.seg.clone()))
    }

    fn published(&self) -> (u64, Generation) {
        self.seg.last().expect("a generation published")
    }
}

fn key(s: &str) -> VipKey {
    s.parse().unwrap()
}

#[test]
fn a_vip_on_the_dataplanes_own_address_is_refused_up_front() {
    let f = Fixture::new();
    f.seg.lock().report = Some(report([198, 18, 1, 1], 0, vec![]));
    let e = f.start(VIPS).err().expect("a VIP on the dataplane's address must not start");
    assert_eq!(e.code, 2);
    assert!(
        e.message.contains("VIP 198.18.1.1:80: address: 198.18.1.1 is the dataplane's own address"),
        "{}",
        e.message
    );
    assert!(f.seg.last().is_none(), "nothing is published");

    // The dataplane elsewhere: it starts; a CLI change onto its address or
    // needing what it lacks is refused, and nothing is published.
    f.seg.lock().report = Some(report([198, 18, 0, 2], 0, vec![]));
    let mut d = f.start(VIPS).unwrap();
    let (n, before) = f.published();
    let add = |vip: &str, mode| Request::VipAdd { vip: key(vip), options: Box::new(VipOptions { mode: Some(mode), ..Default::default() }) };
    let e = d.handle(add("198.18.0.2:443", Mode::Proxy)).unwrap_err();
    assert!(e.contains("VIP 198.18.0.2:443: address:") && e.contains("would refuse"), "{e}");
    let e = d.handle(add("198.18.0.3:443", Mode::Proxy)).unwrap_err();
    assert!(e.contains("FullNAT source addresses"), "{e}");
    f.seg.lock().report = Some(DataplaneReport { facts: Facts { forwarding: false, ..facts([198, 18, 0, 2]) }, generation: n, refused: vec![], tables: vec![] });
    let e = d.handle(add("198.18.1.9:0", Mode::Dsr)).unwrap_err();
    assert!(e.contains("VIP 198.18.1.9:0: mode:") && e.contains("no forwarder"), "{e}");
    let e = d
        .handle(Request::BackendAdd { vip: key("198.18.1.1:80"), backend: "198.18.0.2:80".parse().unwrap(), weight: None, mac: None })
        .unwrap_err();
    assert!(e.contains("backends[2] (198.18.0.2:80)"), "{e}");
    assert_eq!(f.published(), (n, before), "a refused change published");
}

#[test]
fn forwarding_vips_through_the_request_path() {
    let f = Fixture::new();
    let mut d = f.start(VIPS).unwrap();
    // A UDP DSR VIP on every port, and a TCP one on the same address and port.
    let udp = key("198.18.1.2:0/udp");
    assert_eq!(udp.proto, Proto::Udp);
    let dsr = VipOptions { mode: Some(Mode::Dsr), ..Default::default() };
    d.handle(Request::VipAdd { vip: udp, options: Box::new(dsr.clone()) }).unwrap();
    d.handle(Request::VipAdd { vip: key("198.18.1.2:0"), options: Box::new(dsr.clone()) }).unwrap();
    let e = d.handle(Request::VipAdd { vip: udp, options: Box::new(dsr) }).unwrap_err();
    assert!(e.contains("VIP 198.18.1.2:0/udp already exists"), "{e}");
    let mac: Mac = "02:00:00:00:00:21".parse().unwrap();
    let b = "198.18.0.21:0".parse().unwrap();
    d.handle(Request::BackendAdd { vip: udp, backend: b, weight: Some(3), mac: Some(mac) }).unwrap();
    // Tunnel mode needs its tunnel; with it, it is published whole.
    let tun = key("198.18.1.3:443");
    let e = d
        .handle(Request::VipAdd { vip: tun, options: Box::new(VipOptions { mode: Some(Mode::Tunnel), ..Default::default() }) })
        .unwrap_err();
    assert!(e.starts_with("VIP 198.18.1.3:443: tunnel:"), "{e}");
    let tunnel = Tunnel { encap: Encap::Gue, source_prefix: "198.18.2.0/24".parse().unwrap() };
    d.handle(Request::VipAdd { vip: tun, options: Box::new(VipOptions { mode: Some(Mode::Tunnel), tunnel: Some(tunnel), ..Default::default() }) })
        .unwrap();
    // A MAC is for forwarding modes.
    let e = d
        .handle(Request::BackendAdd { vip: key("198.18.1.1:80"), backend: "198.18.0.23:8080".parse().unwrap(), weight: None, mac: Some(mac) })
        .unwrap_err();
    assert!(e.contains("backends[2] (198.18.0.23:8080).mac"), "{e}");

    let (_, g) = f.published();
    g.validate().unwrap();
    let p = g.vips.iter().find(|p| udp.is(&p.vip)).expect("the UDP VIP published");
    assert_eq!((p.vip.port, p.vip.proto, p.vip.mode), (0, Proto::Udp, Mode::Dsr));
    assert_eq!(p.vip.backends[0].mac, Some(mac));
    assert_eq!(p.vip.backends[0].weight, 3);
    assert_eq!(p.slots.len(), 1);
    let t = g.vips.iter().find(|p| tun.is(&p.vip)).unwrap();
    assert_eq!(t.vip.tunnel, Some(tunnel));
    let tcp = g.vips.iter().find(|p| key("198.18.1.2:0").is(&p.vip)).unwrap();
    assert_ne!(tcp.id, p.id);

    // Their counters.
    {
        let mut s = f.seg.lock();
        let mut c = VipCounters { connections_total: 4, packets_in: 40, bytes_in: 4000, ..Default::default() };
        c.drops.insert("forward".into(), 2);
        c.drops.insert("max_connections".into(), 0);
        s.counters.vips.insert(p.id, c);
        s.counters.backends.insert(p.slots[0], BackendCounters { connections_total: 4, packets: 40, bytes_to: 4000, ..Default::default() });
    }
    let Reply::Stats(st) = d.handle(Request::Stats).unwrap() else { panic!("not stats") };
    let v = st.vips.iter().find(|v| v.vip == udp).unwrap();
    assert_eq!((v.mode, v.proto, v.packets_in, v.bytes_in, v.connections_total), (Mode::Dsr, Proto::Udp, 40, 4000, 4));
    assert_eq!(v.drops.get("forward"), Some(&2));
    assert!(!v.drops.contains_key("max_connections"), "{:?}", v.drops);
    assert_eq!((v.backends[0].packets, v.backends[0].bytes_to, v.backends[0].connections_total), (40, 4000, 4));
    let text = crate::metrics::render(&d.metrics_view());
    assert!(text.contains("fulcrum_vip_packets_total{vip=\"198.18.1.2:0/udp\",mode=\"dsr\"} 40\n"), "{text}");
    assert!(text.contains("fulcrum_backend_packets_total{vip=\"198.18.1.2:0/udp\",backend=\"198.18.0.21:0\"} 40\n"), "{text}");

    // Deleting the TCP one leaves the UDP one.
    d.handle(Request::VipDel { vip: key("198.18.1.2:0") }).unwrap();
    let (_, g) = f.published();
    assert!(g.vips.iter().any(|p| udp.is(&p.vip)));
    assert!(!g.vips.iter().any(|p| key("198.18.1.2:0").is(&p.vip)));
}

#[test]
fn a_vip_the_dataplane_refused_blocks_nothing_and_is_shown() {
    let f = Fixture::new();
    let two = format!("{VIPS}\n[[vip]]\naddress = \"198.18.1.2\"\nport = 443\nmode = \"proxy\"\ntable_size = 251\nbackends = [{{ address = \"198.18.0.21\", port = 8443 }}]\n");
    let mut d = f.start(&two).unwrap();
    let (n, g) = f.published();
    let id = g.vips[0].id;
    // Facts published after the VIP was accepted: the dataplane refuses it.
    let refusal = VipRefusal { id, vip: "198.18.1.1:80/tcp".into(), reason: "address: the dataplane's own".into() };
    f.seg.lock().report = Some(report([198, 18, 1, 1], n, vec![refusal.clone()]));
    d.tick(false);
    // A drain of another VIP's backend still changes and publishes.
    let Reply::Changed(c) = d
        .handle(Request::BackendDrain { vip: key("198.18.1.2:443"), backend: "198.18.0.21:8443".parse().unwrap() })
        .unwrap()
    else {
        panic!("not a change")
    };
    assert!(c.generation > n);
    let (_, g) = f.published();
    assert_eq!(g.vips[1].vip.backends[0].state, BackendState::Drain);
    assert_eq!(g.vips.len(), 2, "the refused VIP stays published (the dataplane leaves it out)");
    // A change to the refused VIP itself says why.
    let e = d
        .handle(Request::BackendWeight { vip: key("198.18.1.1:80"), backend: "198.18.0.21:8080".parse().unwrap(), weight: 2 })
        .unwrap_err();
    assert!(e.contains("dataplane's own address"), "{e}");
    d.handle(Request::VipDel { vip: key("198.18.1.1:80") }).unwrap();
    let Reply::Status(st) = d.handle(Request::Status).unwrap() else { panic!("not status") };
    assert_eq!(st.generation.published, f.published().0);
    assert_eq!(st.generation.applied, n, "applied is the report's");
    assert_eq!(st.generation.refused, vec![refusal]);
    assert_eq!(st.dataplane.facts, Some(facts([198, 18, 1, 1])));
}

#[test]
fn published_state_is_drain_then_health_then_up() {
    let f = Fixture::new();
    let vips = VIPS.replace(
        "{ address = \"198.18.0.22\", port = 8080 }",
        "{ address = \"198.18.0.22\", port = 8080, state = \"drain\" }",
    );
    let d = f.start(&vips).unwrap();
    let (_, g) = f.published();
    let states: Vec<BackendState> = g.vips[0].vip.backends.iter().map(|b| b.state).collect();
    assert_eq!(states, vec![BackendState::Up, BackendState::Drain]);
    drop(d);
    // The state file written is version 2 (in rotation) and loads back.
    let s = State::load(&f.dir.path().join("state.json")).unwrap().unwrap();
    assert_eq!(s.version, state::STATE_VERSION_MIN);
    assert_eq!(s.vips[0].backends[1].state, BackendState::Drain);
}

#[test]
fn a_segment_problem_shows_in_status_and_goes_away() {
    let f = Fixture::new();
    let mut d = f.start(VIPS).unwrap();
    let Reply::Status(st) = d.handle(Request::Status).unwrap() else { panic!("not status") };
    assert_eq!(st.dataplane.segment, None);
    let problem = "/dev/shm/fulcrum: segment truncated while mapped (file now 0 bytes, ...)";
    f.seg.lock().dataplane.segment = Some(problem.into());
    d.tick(false);
    let Reply::Status(st) = d.handle(Request::Status).unwrap() else { panic!("not status") };
    assert_eq!(st.dataplane.segment.as_deref(), Some(problem));
    let json = serde_json::to_value(&*st).unwrap();
    assert_eq!(json["dataplane"]["segment"], problem, "{json}");
    assert!(json["dataplane"].get("state").is_some() && json["dataplane"].get("last_rejection").is_some());
    f.seg.lock().dataplane.segment = None;
    d.tick(false);
    let Reply::Status(st) = d.handle(Request::Status).unwrap() else { panic!("not status") };
    assert_eq!(st.dataplane.segment, None);
}

/// `vip list` and the Prometheus view show the table digests the dataplane
/// reported, with the generation they belong to; a VIP it reported none for
/// (or another VIP under the same id) shows none.
#[test]
fn reported_table_digests_are_shown() {
    use fulcrum_model::TableDigest;
    let f = Fixture::new();
    let two = format!("{VIPS}\n[[vip]]\naddress = \"198.18.1.2\"\nport = 443\nmode = \"proxy\"\ntable_size = 251\nbackends = [{{ address = \"198.18.0.21\", port = 8443 }}]\n");
    let mut d = f.start(&two).unwrap();
    let (n, g) = f.published();
    let list = |d: &mut Daemon| {
        let Reply::Vips(v) = d.handle(Request::VipList).unwrap() else { panic!("not a VIP list") };
        v
    };
    assert!(list(&mut d).iter().all(|v| v.table.is_none()), "no report yet");
    let digest = |id, vip: &str| TableDigest { id, vip: vip.into(), slots: 251, backends: 2, digest: "e908e9135a20e780".into() };
    let mut r = report([198, 18, 0, 2], n, vec![]);
    // The first VIP's digest, and one under the second VIP's id for another VIP.
    r.tables = vec![digest(g.vips[0].id, "198.18.1.1:80"), digest(g.vips[1].id, "198.18.1.9:443")];
    f.seg.lock().report = Some(r);
    d.tick(false);
    let v = list(&mut d);
    let t = v[0].table.as_ref().expect("the first VIP's digest");
    assert_eq!((t.digest.as_str(), t.generation, t.slots, t.backends), ("e908e9135a20e780", n, 251, 2));
    assert_eq!(v[1].table, None);
    let m = d.metrics_view();
    assert_eq!(
        m.tables,
        vec![crate::metrics::VipTableView { vip: "198.18.1.1:80".into(), digest: "e908e9135a20e780".into(), generation: n }]
    );
    let text = crate::metrics::render(&m);
    assert!(text.contains(&format!("fulcrum_vip_table_info{{vip=\"198.18.1.1:80\",digest=\"e908e9135a20e780\",generation=\"{n}\"}} 1\n")), "{text}");
}

/// `[bgp]` with a fake `birdc` that records its calls: the routes file
/// written empty at start, a VIP announced once the dataplane (alive, this
/// test's pid) applied the published generation, withdrawn when it is out
/// of rotation (kept across a restart) and when the dataplane's pid is gone.
#[test]
fn bgp_announcement_follows_the_dataplane_and_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let d0 = f.dir.path();
    let birdc = d0.join("birdc");
    std::fs::write(
        &birdc,
        format!("#!/bin/sh\necho \"$*\" >> {:?}\n", d0.join("calls")),
    )
    .unwrap();
    std::fs::set_permissions(&birdc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let routes = d0.join("routes.conf");
    let bgp = format!(
        "[bgp]\nbird_socket = {:?}\nroutes_file = {routes:?}\nnext_hop = \"198.18.0.2\"\nbirdc = {birdc:?}\n{VIPS}",
        d0.join("bird.ctl")
    );
    let route_lines = || {
        std::fs::read_to_string(&routes)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("route"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let wait_routes = |want: &[&str]| {
        let end = Instant::now() + Duration::from_secs(5);
        while route_lines() != want {
            assert!(
                Instant::now() < end,
                "routes {:?}, want {want:?}",
                route_lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut d = f.start(&bgp).unwrap();
    assert!(route_lines().is_empty(), "written empty at start");
    assert!(std::fs::read_to_string(d0.join("calls"))
        .unwrap()
        .contains("configure"));
    let reason = |d: &mut Daemon| {
        let Reply::Status(st) = d.handle(Request::Status).unwrap() else {
            panic!("not status")
        };
        assert!(st.bgp.configured);
        st.bgp.vips[0].reason.clone()
    };
    d.tick(false);
    assert_eq!(reason(&mut d).as_deref(), Some("dataplane down"));
    // The dataplane: this process, beating, generation applied.
    let (n, _) = f.published();
    let beat = |f: &Fixture, b: u64| {
        let mut s = f.seg.lock();
        s.dataplane.present = true;
        s.dataplane.pid = std::process::id();
        s.dataplane.epoch = 2;
        s.dataplane.beat = b;
    };
    beat(&f, 1);
    f.seg.lock().dataplane.applied_generation = n - 1;
    f.seg.lock().report = Some(report([198, 18, 0, 2], n - 1, vec![]));
    d.tick(false);
    assert_eq!(
        reason(&mut d),
        Some(format!("generation {n} not applied (applied {})", n - 1))
    );
    f.seg.lock().dataplane.applied_generation = n;
    f.seg.lock().report = Some(report([198, 18, 0, 2], n, vec![]));
    beat(&f, 2);
    d.tick(false);
    assert_eq!(reason(&mut d), None);
    wait_routes(&["route 198.18.1.1/32 via 198.18.0.2;"]);
    let Reply::Vips(v) = d.handle(Request::VipList).unwrap() else {
        panic!()
    };
    assert_eq!(v[0].announced, Some(true));
    // Out of rotation: withdrawn, persisted, kept across a restart.
    let Reply::Rotation(r) = d
        .handle(Request::Rotation {
            rotation: crate::proto::Rotation::Out,
        })
        .unwrap()
    else {
        panic!()
    };
    assert!(r.changed && r.bgp_configured);
    assert_eq!(reason(&mut d).as_deref(), Some("out of rotation"));
    wait_routes(&[]);
    drop(d);
    let mut d = f.start(&bgp).unwrap();
    beat(&f, 3);
    d.tick(false);
    assert_eq!(reason(&mut d).as_deref(), Some("out of rotation"));
    d.handle(Request::Rotation {
        rotation: crate::proto::Rotation::In,
    })
    .unwrap();
    beat(&f, 4);
    d.tick(false);
    assert_eq!(reason(&mut d), None);
    wait_routes(&["route 198.18.1.1/32 via 198.18.0.2;"]);
    // The dataplane's pid gone: withdrawn at the next tick.
    f.seg.lock().dataplane.pid = u32::MAX - 1;
    beat(&f, 5);
    f.seg.lock().dataplane.pid = u32::MAX - 1;
    d.tick(false);
    assert_eq!(reason(&mut d).as_deref(), Some("dataplane down"));
    wait_routes(&[]);
    let m = crate::metrics::render(&d.metrics_view());
    assert!(
        m.contains("fulcrum_vip_announced{vip=\"198.18.1.1:80\"} 0\n"),
        "{m}"
    );
}
