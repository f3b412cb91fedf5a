//! Runtime reconfiguration: VIPs and backends change under live connections.

mod common;

use std::net::Ipv4Addr;

use common::*;
use fulcrum_model::{Backend, BackendState, Mac, Mode, Rate, Vip};
use fulcrum_proxy::{ConfigError, VipTables};
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;

fn backend(i: usize, weight: u32) -> Backend {
    Backend::new(backend_ip(i), BACKEND_PORT, weight)
}

/// Backend index that answered (responses are "<backend>:<request>").
fn answered_by(resp: &str) -> usize {
    resp.split(':').next().unwrap().parse().unwrap()
}

/// Opens a client connection from `port` and waits until it is established;
/// returns it and the index of the backend holding its other side.
fn open_at(w: &mut Wire, port: u16, backends: usize) -> (Sock, usize) {
    let c = w.client().connect((VIP, VIP_PORT), port);
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.client().sock(c).state() == State::Established
            && (0..backends).any(|b| !w.backend(b).connections().is_empty())
    });
    assert!(ok, "connection from {port} not established");
    let b = (0..backends)
        .find(|&b| !w.backend(b).connections().is_empty())
        .unwrap();
    (c, b)
}

#[test]
fn added_backend_gets_new_connections_old_ones_unaffected() {
    let mut s = Setup::new(2);
    s.vip.backends.truncate(1);
    s.weights = vec![1];
    let mut w = s.build();
    let (old, on) = open_at(&mut w, 50000, 2);
    assert_eq!(on, 0);

    // Tables built "off-lcore" and applied by pointer.
    let tables = VipTables::build(
        vec![Vip::proxy(VIP, VIP_PORT, vec![backend(0, 1), backend(1, 1)])],
        1,
    )
    .unwrap();
    let r = w.engine.reconfigure_with(&tables).unwrap();
    assert_eq!((r.vips_added, r.vips_removed), (0, 0));
    assert_eq!((r.backends_added, r.backends_removed), (1, 0));

    let mut socks = vec![(50000, old)];
    socks.extend((40000..40060).map(|p| (p, w.client().connect((VIP, VIP_PORT), p))));
    let r = Exchange::new(0, socks).run(&mut w, 2);
    assert_eq!(
        r[0].1, "0:hello from 50000\n",
        "old connection still on backend 0"
    );
    let mut to_new = 0;
    for (port, resp) in &r[1..] {
        let b = answered_by(resp);
        assert_eq!(b, expected_backend(&[1, 1], *port, VIP_PORT), "port {port}");
        to_new += usize::from(b == 1);
    }
    assert!(to_new > 15, "new backend got {to_new} of 60");
    settle(&mut w);
    let be1 = *w.engine.backend_counters(0, 1).unwrap();
    assert_eq!(be1.opened, to_new as u64);
    // Backend 0's counters survived the reconfiguration (old + new conns).
    let be0 = *w.engine.backend_counters(0, 0).unwrap();
    assert_eq!(be0.opened, 1 + 60 - to_new as u64);
}

#[test]
fn removed_backend_finishes_its_transfer_new_connections_avoid_it() {
    const N: usize = 1 << 20;
    let data: Vec<u8> = (0..N).map(|i| (i * 31 + i / 4096) as u8).collect();
    let mut w = Setup::new(2).build();
    let (c, x) = open_at(&mut w, 50000, 2);
    let y = 1 - x;
    let bs = w.backend(x).connections()[0];

    let mut sent = 0usize;
    let mut got = Vec::new();
    let mut reconfigured = false;
    let mut requests: Option<Exchange> = None;
    let mut seen = std::collections::HashMap::new();
    let mut responses_done = false;
    let ok = w.run_until(Duration::from_secs(30), |w| {
        let s = w.backend(x).sock(bs);
        if s.may_send() && sent < N {
            sent += s.send_slice(&data[sent..]).unwrap();
            if sent == N {
                s.close();
            }
        }
        read_all(w.client().sock(c), &mut got);
        if !reconfigured && got.len() > 100_000 {
            reconfigured = true;
            // Backend x leaves the configuration mid-transfer.
            let r = w
                .engine
                .reconfigure(vec![Vip::proxy(VIP, VIP_PORT, vec![backend(y, 1)])])
                .unwrap();
            assert_eq!(r.backends_removed, 1);
            assert_eq!(r.draining_connections, 1);
            assert_eq!(
                w.engine
                    .backend_active(VIP, VIP_PORT, backend_ip(x), BACKEND_PORT),
                Some(1)
            );
            let snap = w.engine.snapshot();
            let drained: Vec<_> = snap[0].backends.iter().filter(|b| b.removed).collect();
            assert_eq!(drained.len(), 1);
            assert_eq!(drained[0].addr, backend_ip(x));
            requests = Some(Exchange::open(w, 0, (VIP, VIP_PORT), 40000..40030));
        }
        if let Some(e) = requests.as_mut() {
            responses_done = e.drive(w);
            serve_lines(w, 2, &mut seen);
        }
        got.len() == N && responses_done
    });
    assert!(
        ok,
        "transfer {} of {N}, requests done {responses_done}",
        got.len()
    );
    assert!(got == data, "transfer corrupted");
    for (i, g) in requests.unwrap().got.iter().enumerate() {
        let resp = String::from_utf8_lossy(g);
        assert_eq!(answered_by(&resp), y, "request {i}: {resp}");
    }
    w.client().sock(c).close();
    settle(&mut w);
    assert_eq!(
        w.engine
            .backend_active(VIP, VIP_PORT, backend_ip(x), BACKEND_PORT),
        None,
        "drained backend dropped with its last connection"
    );
    let snap = w.engine.snapshot();
    assert_eq!(snap[0].backends.len(), 1);
    assert_eq!(snap[0].backends[0].counters.opened, 30);
    assert_eq!(
        w.engine.vip_counters(0).unwrap().bytes_to_clients,
        N as u64 + 30 * "y:hello from 40000\n".len() as u64
    );
}

#[test]
fn weight_zero_drain_and_down_take_no_new_connections_existing_finish() {
    for (label, change) in [
        ("weight 0", (0u32, BackendState::Up)),
        ("drain", (1, BackendState::Drain)),
        ("down", (1, BackendState::Down)),
    ] {
        let mut w = Setup::new(2).build();
        let (old, x) = open_at(&mut w, 50000, 2);
        let y = 1 - x;
        let mut bx = backend(x, change.0);
        bx.state = change.1;
        let mut list = vec![backend(0, 1), backend(1, 1)];
        list[x] = bx;
        let r = w
            .engine
            .reconfigure(vec![Vip::proxy(VIP, VIP_PORT, list)])
            .unwrap();
        assert_eq!(
            (r.backends_added, r.backends_removed, r.draining_connections),
            (0, 0, 0)
        );
        assert_eq!(
            w.engine
                .backend_active(VIP, VIP_PORT, backend_ip(x), BACKEND_PORT),
            Some(1),
            "{label}"
        );
        assert_eq!(w.engine.snapshot()[0].backends[x].state, change.1);

        let mut socks = vec![(50000, old)];
        socks.extend((40000..40040).map(|p| (p, w.client().connect((VIP, VIP_PORT), p))));
        let r = Exchange::new(0, socks).run(&mut w, 2);
        assert_eq!(
            answered_by(&r[0].1),
            x,
            "{label}: old connection kept its backend"
        );
        for (port, resp) in &r[1..] {
            assert_eq!(answered_by(resp), y, "{label}: port {port}");
        }
        settle(&mut w);
        assert_eq!(
            w.engine
                .backend_active(VIP, VIP_PORT, backend_ip(x), BACKEND_PORT),
            Some(0),
            "{label}: drained to zero, still configured"
        );
        let bx = *w.engine.backend_counters(0, x).unwrap();
        assert_eq!((bx.opened, bx.active), (1, 0), "{label}");
    }
}

#[test]
fn add_and_remove_vip() {
    let mut w = Setup::new(1).build();
    let (old, _) = open_at(&mut w, 50000, 1);
    let vip2 = Vip::proxy(VIP, 81, vec![backend(0, 1)]);
    let r = w.engine.reconfigure(vec![vip2.clone()]).unwrap();
    assert_eq!(
        (r.vips_added, r.vips_removed, r.draining_connections),
        (1, 1, 1)
    );
    assert!(
        w.engine.vip_counters_for(VIP, VIP_PORT).is_some(),
        "draining VIP still visible"
    );
    let snap = w.engine.snapshot();
    assert_eq!((snap[0].port, snap[0].removed), (81, false));
    assert_eq!((snap[1].port, snap[1].removed), (VIP_PORT, true));

    // Admission to the removed VIP stopped at once.
    let refused = w.client().connect((VIP, VIP_PORT), 45000);
    let ok = w.run_until(Duration::from_secs(2), |w| {
        w.client().sock(refused).state() == State::Closed
    });
    assert!(ok, "SYN to the removed VIP must be reset");

    // The old connection and connections to the new VIP both work.
    let mut socks = vec![(50000, old)];
    socks.extend((40000..40010).map(|p| (p, w.client().connect((VIP, 81), p))));
    let r = Exchange::new(0, socks).run(&mut w, 1);
    assert_eq!(r[0].1, "0:hello from 50000\n");
    for (port, resp) in &r[1..] {
        assert_eq!(resp, &format!("0:hello from {port}\n"));
    }
    settle(&mut w);
    assert!(
        w.engine.vip_counters_for(VIP, VIP_PORT).is_none(),
        "drained VIP dropped"
    );
    let snap = w.engine.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].counters.accepted, 10);
    assert_eq!(w.engine.vip_counters(0).unwrap().accepted, 10);

    // Adding the first VIP back: fresh counters.
    let r = w
        .engine
        .reconfigure(vec![
            vip2,
            Vip::proxy(VIP, VIP_PORT, vec![backend(0, 1)]),
        ])
        .unwrap();
    assert_eq!((r.vips_added, r.vips_removed), (1, 0));
    let r = Exchange::open(&mut w, 0, (VIP, VIP_PORT), 41000..41003).run(&mut w, 1);
    assert_eq!(r.len(), 3);
    assert_eq!(w.engine.vip_counters(1).unwrap().accepted, 3);
}

#[test]
fn invalid_reconfiguration_is_refused_and_old_config_stays() {
    let mut w = Setup::new(2).build();
    let good = || Vip::proxy(VIP, VIP_PORT, vec![backend(0, 1), backend(1, 1)]);
    let mut not_prime = good();
    not_prime.table_size = 65536;
    let dup_backend = Vip::proxy(VIP, VIP_PORT, vec![backend(0, 1), backend(0, 1)]);
    let mut zero_rate = good();
    zero_rate.new_conn_rate = Some(Rate::new(0, 10));
    let mut zero_burst = good();
    zero_burst.client_rate = Some(Rate::new(10, 0));
    let mut zero_bw = good();
    zero_bw.bandwidth_bytes_per_sec = Some(0);
    let own = Vip::proxy(ENGINE_IP, 80, vec![backend(0, 1)]);
    let mut no_tries = good();
    no_tries.connect_tries = 0;
    let mut not_proxy = good();
    not_proxy.mode = Mode::Fullnat;
    let mut with_mac = good();
    with_mac.backends[0].mac = Some(Mac([2, 0, 0, 0, 0, 0x21]));
    type Check = fn(&ConfigError) -> bool;
    /// The VIP's own field `field` refused by the model's validation.
    fn invalid(e: &ConfigError, field: &str) -> bool {
        matches!(e, ConfigError::Invalid { vip, error } if vip == "198.18.1.1:80/tcp" && error.field == field)
    }
    let cases: Vec<(Vec<Vip>, &str, Check)> = vec![
        (vec![not_prime], "not prime", |e| invalid(e, "table_size")),
        (vec![dup_backend], "duplicate backend", |e| {
            matches!(e, ConfigError::Invalid { error, .. } if error.reason == "listed twice")
                && invalid(e, &format!("backends[1] ({}:{BACKEND_PORT})", backend_ip(0)))
        }),
        (vec![good(), good()], "duplicate VIP", |e| {
            matches!(e, ConfigError::DuplicateVip(..))
        }),
        (vec![zero_rate], "zero rate", |e| {
            invalid(e, "new_conn_rate.per_sec")
        }),
        (vec![zero_burst], "zero burst", |e| {
            invalid(e, "client_rate.burst")
        }),
        (vec![zero_bw], "zero bandwidth", |e| {
            invalid(e, "bandwidth_bytes_per_sec")
        }),
        (vec![own], "own address", |e| {
            matches!(e, ConfigError::VipIsOwnAddress(_))
        }),
        (vec![no_tries], "no tries", |e| invalid(e, "connect_tries")),
        (vec![not_proxy], "not a proxy VIP", |e| {
            matches!(e, ConfigError::NotProxy { mode: Mode::Fullnat, .. })
        }),
        (vec![with_mac], "backend MAC", |e| {
            invalid(e, &format!("backends[0] ({}:{BACKEND_PORT}).mac", backend_ip(0)))
        }),
    ];
    // Each after a valid VIP, so a partial apply would show.
    let other = Vip::proxy(Ipv4Addr::new(198, 18, 1, 2), 80, vec![backend(1, 1)]);
    for (mut vips, what, check) in cases {
        vips.insert(0, other.clone());
        let err = w.engine.reconfigure(vips).unwrap_err();
        assert!(check(&err), "{what}: unexpected error {err}");
    }
    assert_eq!(w.engine.snapshot().len(), 1);
    let r = Exchange::open(&mut w, 0, (VIP, VIP_PORT), 40000..40040).run(&mut w, 2);
    for (port, resp) in &r {
        assert_eq!(
            answered_by(resp),
            expected_backend(&[1, 1], *port, VIP_PORT)
        );
    }
    // A client limit needs a client table.
    let mut s = Setup::new(1);
    s.config.client_table_capacity = 0;
    s.vip.client_rate = Some(Rate::new(10, 10));
    s.config.vips = vec![s.vip.clone()];
    assert!(matches!(
        fulcrum_proxy::Engine::new(s.config),
        Err(ConfigError::ClientTableCapacity(0))
    ));
}

/// The dataplane starts engines with no VIP when a control plane will publish
/// them, then installs shared tables built on its control thread.
#[test]
fn vip_installed_into_an_engine_started_without_vips() {
    let setup = Setup::new(2);
    let mut config = setup.config.clone();
    config.vips.clear();
    let mut w = setup.build();
    w.engine = fulcrum_proxy::Engine::new(config).unwrap();
    settle(&mut w);
    let vip = Vip::proxy(VIP, VIP_PORT, vec![backend(0, 1), backend(1, 1)]);
    let tables = fulcrum_proxy::VipTables::build(vec![vip], 1).unwrap();
    let r = w.engine.reconfigure_with(&tables).unwrap();
    assert_eq!((r.vips_added, r.backends_added), (1, 2));
    let r = Exchange::open(&mut w, 0, (VIP, VIP_PORT), 42000..42010).run(&mut w, 2);
    assert_eq!(r.len(), 10, "{r:?}");
    assert_eq!(w.engine.vip_counters(0).unwrap().accepted, 10);
}

/// Tables carry the lcore count their limits were split for; an engine of
/// another count refuses them and keeps its configuration.
#[test]
fn tables_for_another_lcore_count_are_refused() {
    let mut w = Setup::new(2).build();
    let vip = Vip::proxy(VIP, VIP_PORT, vec![backend(0, 1)]);
    let tables = VipTables::build(vec![vip], 2).unwrap();
    assert_eq!(tables.lcores(), 2);
    assert!(matches!(
        w.engine.reconfigure_with(&tables),
        Err(ConfigError::Lcores { tables: 2, engine: 1 })
    ));
    assert_eq!(w.engine.snapshot()[0].backends.len(), 2);
}
