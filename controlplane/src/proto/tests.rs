//! Every request and reply survives the wire; VIP names parse and print.

use super::*;
use fulcrum_model::{health::RawKind, Cidr, Encap, Facts};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(reply: Reply, typed: T) {
    let line = serde_json::to_string(&Response::ok(reply)).unwrap();
    let back: Response<T> = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(back.into_result().unwrap(), typed, "{line}");
}

fn k(s: &str) -> VipKey {
    s.parse().unwrap()
}

#[test]
fn vip_keys() {
    assert_eq!(k("198.18.1.1:80"), VipKey::new([198, 18, 1, 1].into(), 80, Proto::Tcp));
    assert_eq!(k("198.18.1.1:80/tcp"), k("198.18.1.1:80"));
    assert_eq!(k("198.18.1.1:0/udp").to_string(), "198.18.1.1:0/udp");
    assert_eq!(k("198.18.1.1:53").to_string(), "198.18.1.1:53");
    for (bad, want) in [("1.2.3", "1.2.3"), ("198.18.1.1:70000", "70000"), ("198.18.1.1:53/sctp", "sctp"), ("x:1", "\"x\"")] {
        let e = bad.parse::<VipKey>().unwrap_err();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn requests_round_trip() {
    let mut health = HealthCheck::new(RawKind::Http);
    health.path = Some("/healthz".into());
    let reqs = vec![
        Request::Status,
        Request::VipAdd {
            vip: k("198.18.1.2:0/udp"),
            options: Box::new(VipOptions {
                mode: Some(Mode::Tunnel),
                tunnel: Some(Tunnel { encap: Encap::Ipip, source_prefix: "198.18.2.0/24".parse::<Cidr>().unwrap() }),
                health: Some(health),
                ..Default::default()
            }),
        },
        Request::BackendAdd {
            vip: k("198.18.1.2:0/udp"),
            backend: "198.18.0.21:0".parse().unwrap(),
            weight: Some(2),
            mac: Some("02:00:00:00:00:21".parse().unwrap()),
        },
        Request::LimitSet { vip: k("198.18.1.1:80"), change: LimitChange { new_conn_rate: Some(5), clear: vec!["bandwidth".into()], ..Default::default() } },
        Request::BackendList { vip: None },
    ];
    for r in reqs {
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r, "{line}");
    }
    // The wire form the README documents.
    let r: Request = serde_json::from_str(r#"{"cmd":"backend_weight","vip":"198.18.1.1:80","backend":"198.18.0.21:8080","weight":5}"#).unwrap();
    assert_eq!(r, Request::BackendWeight { vip: k("198.18.1.1:80"), backend: "198.18.0.21:8080".parse().unwrap(), weight: 5 });
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"vip_del","vip":"198.18.1.1:80","extra":1}"#).is_err());
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"frobnicate"}"#).is_err());
}

#[test]
fn replies_round_trip() {
    let status = StatusReply {
        controlplane: ControlplaneStatus {
            alive: true,
            pid: 7,
            uptime_secs: 1.5,
            config: "c.toml".into(),
            state_file: "s.json".into(),
            shm: "/dev/shm/f".into(),
            socket: "s.sock".into(),
            prometheus: Some("127.0.0.1:9469".into()),
            last_reload: Some(ReloadOutcome { at: 1.0, ok: false, error: Some("port".into()) }),
            publish_error: None,
            clients: ClientsStatus {
                control: ClientCounters { active: 1, max: 64, refused: 2, oversize: 3, timed_out: 4 },
                prometheus: ClientCounters::default(),
            },
        },
        dataplane: DataplaneStatus {
            alive: false,
            state: DataplaneState::NeverSeen,
            pid: None,
            epoch: 0,
            uptime_secs: None,
            heartbeat_age_ms: None,
            restarts_seen: 0,
            rejected_generations: 0,
            last_rejection: None,
            segment: Some("/dev/shm/f: segment unlinked".into()),
            facts: Some(Facts { address: [198, 18, 0, 2].into(), snat_addresses: vec![], lcores: 2, forwarding: true }),
        },
        generation: GenerationStatus {
            published: 3,
            applied: 2,
            refused: vec![VipRefusal { id: 1, vip: "198.18.1.1:80/tcp".into(), reason: "address: own".into() }],
        },
        vips: 1,
        backends: 2,
        vips_in_panic: vec![VipPanicInfo {
            vip: k("198.18.1.1:80"),
            since_secs: 2.0,
            ejections_skipped: 5,
            backends: 3,
            up: 2,
            threshold_pct: 50,
        }],
        bgp: BgpStatus::default(),
    };
    let line = serde_json::to_value(Reply::Status(Box::new(status.clone()))).unwrap();
    assert_eq!(line["dataplane"]["state"], "never seen");
    assert_eq!(line["dataplane"]["segment"], "/dev/shm/f: segment unlinked");
    round_trip(Reply::Status(Box::new(status.clone())), status.clone());
    // An older daemon's reply, without `clients`, still parses.
    let mut old = serde_json::to_value(Response::ok(Reply::Status(Box::new(status.clone())))).unwrap();
    old["data"]["controlplane"].as_object_mut().unwrap().remove("clients").unwrap();
    let back: Response<StatusReply> = serde_json::from_value(old).unwrap();
    assert_eq!(back.into_result().unwrap().controlplane.clients, ClientsStatus::default());

    let vip = VipInfo {
        vip: k("198.18.1.2:0/udp"),
        id: Some(1),
        mode: Mode::Dsr,
        proto: Proto::Udp,
        tunnel: None,
        affinity: Affinity::Client,
        max_connections: 1,
        connect_timeout_ms: 2,
        connect_tries: 3,
        idle_timeout_ms: 4,
        proxy_protocol: ProxyProtocol::Off,
        table_size: 251,
        new_conn_rate: Some(Rate::new(5, 6)),
        client_rate: None,
        bandwidth_bytes_per_sec: None,
        health: Some(HealthCheck::new(RawKind::Tcp)),
        backends: vec![BackendEntry { backend: "198.18.0.21:0".parse().unwrap(), slot: Some(3), weight: 1, mac: None, drain: true }],
        table: Some(VipTableInfo { digest: "e908e9135a20e780".into(), generation: 9, slots: 251, backends: 0 }),
        announced: Some(true),
    };
    let v = serde_json::to_value(Reply::Vips(vec![vip.clone()])).unwrap();
    assert_eq!((v[0]["vip"].as_str(), v[0]["backends"][0]["slot"].as_u64()), (Some("198.18.1.2:0/udp"), Some(3)));
    assert_eq!((v[0]["table"]["digest"].as_str(), v[0]["table"]["generation"].as_u64()), (Some("e908e9135a20e780"), Some(9)));
    round_trip(Reply::Vips(vec![vip.clone()]), vec![vip.clone()]);
    // An older daemon's reply, without `table`, still parses.
    let mut old = serde_json::to_value(Response::ok(Reply::Vips(vec![vip]))).unwrap();
    old["data"][0].as_object_mut().unwrap().remove("table").unwrap();
    let back: Response<Vec<VipInfo>> = serde_json::from_value(old).unwrap();
    assert_eq!(back.into_result().unwrap()[0].table, None);

    let backend = BackendInfo {
        vip: k("198.18.1.1:80"),
        backend: "198.18.0.21:8080".parse().unwrap(),
        slot: None,
        weight: 0,
        mac: Some("02:00:00:00:00:01".parse().unwrap()),
        drain: false,
        health: HealthName::Unchecked,
        state: Some(BackendState::Down),
        connections_active: 9,
    };
    round_trip(Reply::Backends(vec![backend.clone()]), vec![backend]);
    let limits = LimitsInfo { vip: k("198.18.1.1:80"), max_connections: 5, new_conn_rate: None, client_rate: Some(Rate::new(1, 1)), bandwidth_bytes_per_sec: Some(10) };
    round_trip(Reply::Limits(vec![limits.clone()]), vec![limits]);
    let mut drops = BTreeMap::new();
    drops.insert("forward".to_owned(), 3);
    let stats = StatsReply {
        dataplane_alive: true,
        vips: vec![VipStats {
            vip: k("198.18.1.2:0/udp"),
            id: Some(1),
            mode: Mode::Tunnel,
            proto: Proto::Udp,
            connections_active: 0,
            connections_total: 4,
            new_per_sec: 0.5,
            packets_in: 40,
            bytes_in: 4000,
            bytes_out: 0,
            drops,
            syn: None,
            backends: vec![BackendStats {
                backend: "198.18.0.21:0".parse().unwrap(),
                slot: Some(3),
                connections_active: 0,
                connections_total: 4,
                new_per_sec: 0.0,
                connect_failures: 0,
                packets: 40,
                bytes_to: 4000,
                bytes_from: 0,
            }],
        }],
        lcores: vec![LcoreStats {
            lcore: 1,
            rx_packets: 5,
            busy_ns: 7,
            drops: [("rx_ring_full".to_owned(), 2)].into_iter().collect(),
            forward_drops: [("ttl_exceeded".to_owned(), 1)].into_iter().collect(),
            ..Default::default()
        }],
    };
    round_trip(Reply::Stats(stats.clone()), stats.clone());
    // From a daemon that predates the lcores' counters: none.
    let old: StatsReply = serde_json::from_str(r#"{"dataplane_alive":false,"vips":[]}"#).unwrap();
    assert!(old.lcores.is_empty());
    let mut proxy = stats.clone();
    proxy.vips[0].mode = Mode::Proxy;
    proxy.vips[0].syn = Some(SynStats {
        syns: 10,
        cookies_sent: 8,
        cookies_validated: 1,
        cookies_rejected: 2,
        half_open: 3,
        flood: true,
        flood_lcores: 2,
        flood_since_unix: Some(1_700_000_000.5),
        flood_for_secs: Some(23.0),
    });
    round_trip(Reply::Stats(proxy.clone()), proxy);
    // A daemon that predates the SYN counters: no `syn`.
    let mut old = serde_json::to_value(&stats).unwrap();
    old["vips"][0].as_object_mut().unwrap().remove("syn");
    assert_eq!(serde_json::from_value::<StatsReply>(old).unwrap(), stats);
    let health = HealthInfo {
        vip: k("198.18.1.1:80"),
        backend: "198.18.0.21:8080".parse().unwrap(),
        slot: Some(0),
        check: Some("tcp".into()),
        state: HealthName::Down,
        published: Some(BackendState::Down),
        since_secs: Some(1.0),
        last_error: Some("refused".into()),
        latency_last_ms: Some(0.5),
        latency_p50_ms: None,
        latency_p99_ms: None,
        ejections_skipped: 3,
        vip_panic: true,
        vip_panic_since_secs: Some(2.0),
        vip_ejections_skipped: 5,
    };
    round_trip(Reply::Health(vec![health.clone()]), vec![health]);
    round_trip(Reply::Changed(ChangeReply { generation: 4 }), ChangeReply { generation: 4 });
    round_trip(Reply::Reloaded(ReloadReply { generation: 4, changed: true }), ReloadReply { generation: 4, changed: true });

    let e: Response<ChangeReply> = serde_json::from_str(r#"{"ok":false,"error":"no VIP 198.18.9.9:80"}"#).unwrap();
    assert_eq!(e.into_result().unwrap_err(), "no VIP 198.18.9.9:80");
}

#[test]
fn rotation_on_the_wire() {
    let r: Request = serde_json::from_str(r#"{"cmd":"rotation","rotation":"out"}"#).unwrap();
    assert_eq!(
        r,
        Request::Rotation {
            rotation: Rotation::Out
        }
    );
    assert!(r.is_change());
    assert_eq!(
        serde_json::to_string(&Request::Rotation {
            rotation: Rotation::In
        })
        .unwrap(),
        r#"{"cmd":"rotation","rotation":"in"}"#
    );
    assert!(
        serde_json::from_str::<Request>(r#"{"cmd":"rotation","rotation":"sideways"}"#).is_err()
    );
    let reply = RotationReply {
        rotation: Rotation::Out,
        changed: true,
        bgp_configured: true,
    };
    round_trip(Reply::Rotation(reply.clone()), reply);
    let bgp = BgpStatus {
        configured: true,
        next_hop: Some([198, 18, 0, 2].into()),
        session: Some("Established".into()),
        rotation: Rotation::Out,
        routes: vec![[198, 18, 1, 1].into()],
        vips: vec![VipAnnouncement {
            vip: k("198.18.1.1:80"),
            announced: false,
            reason: Some("out of rotation".into()),
            since_unix: 1.5,
            for_secs: 0.5,
        }],
        ..Default::default()
    };
    let v = serde_json::to_value(&bgp).unwrap();
    assert_eq!(v["rotation"], "out");
    assert_eq!(serde_json::from_value::<BgpStatus>(v).unwrap(), bgp);
}
