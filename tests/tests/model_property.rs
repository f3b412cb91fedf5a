//! The one VIP model, as a property: random generations that validate are
//! published through a real shared-memory segment, read back unchanged, and
//! installed by a real proxy engine and a real forwarder (every VIP, with
//! its backends); random mutations that break one rule are refused up front
//! by the publisher, and nothing is published. Boundaries are cases of their
//! own: 256 VIPs and 4096 backend slots (and one more of each), the largest
//! table size, port 0 per mode.
//!
//! Deterministic: the seed is printed; `FULCRUM_PROP_SEED=N` replays one.

use std::net::Ipv4Addr;
use std::sync::Arc;

use fulcrum_forward::{ForwardVip, Forwarder, ForwarderConfig, Timeouts};
use fulcrum_model::{
    Affinity, Backend, BackendState, Cidr, Encap, Facts, Generation, Mac, Mode, Proto, ProxyProtocol, Published,
    Rate, Tunnel, Vip, MAX_BACKENDS, MAX_BANDWIDTH, MAX_CONNECTIONS, MAX_CONNECT_TRIES, MAX_RATE, MAX_TABLE_SIZE,
    MAX_VIPS, MAX_WEIGHT,
};
use fulcrum_proxy::{Engine, EngineConfig, VipTables};
use fulcrum_shm::{Poll, Segment};

const OWN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const LCORES: usize = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// `lo..=hi`, with the bounds themselves drawn often.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        match self.below(8) {
            0 => lo,
            1 => hi,
            _ => lo + self.below(hi - lo + 1),
        }
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

fn facts() -> Facts {
    Facts { address: OWN, snat_addresses: vec![SNAT], lcores: LCORES as u32, forwarding: true }
}

/// Table sizes that fit `backends`: small primes, the default, and (rarely)
/// the largest allowed.
fn table_size(rng: &mut Rng, backends: usize) -> u32 {
    let primes = [251u32, 1021, 4093, 65_537];
    let fit: Vec<u32> = primes.into_iter().filter(|&p| p as usize > backends).collect();
    fit[rng.below(fit.len() as u64) as usize]
}

/// A random valid VIP at `address` with `backends` backends.
fn vip(rng: &mut Rng, address: Ipv4Addr, backends: usize) -> Vip {
    let mode = [Mode::Proxy, Mode::Dsr, Mode::Fullnat, Mode::Tunnel][rng.below(4) as usize];
    let port = if mode.is_forwarding() && rng.chance(4) { 0 } else { rng.range(1, 65535) as u16 };
    let mut v = Vip::new(address, port, mode);
    if mode.is_forwarding() && rng.chance(2) {
        v.proto = Proto::Udp;
    }
    if mode == Mode::Tunnel {
        let encap = if rng.chance(2) { Encap::Ipip } else { Encap::Gue };
        let len = rng.range(1, 32) as u8;
        v.tunnel = Some(Tunnel { encap, source_prefix: Cidr { addr: Ipv4Addr::new(198, 19, 2, 1), prefix_len: len } });
    }
    v.affinity = if rng.chance(2) { Affinity::Flow } else { Affinity::Client };
    v.max_connections = rng.range(1, u64::from(MAX_CONNECTIONS)) as u32;
    v.connect_timeout_ms = rng.range(1, u64::from(u32::MAX)) as u32;
    v.connect_tries = rng.range(1, u64::from(MAX_CONNECT_TRIES)) as u8;
    v.idle_timeout_ms = rng.range(1, u64::from(u32::MAX)) as u32;
    if mode == Mode::Proxy {
        v.proxy_protocol = [ProxyProtocol::Off, ProxyProtocol::V1, ProxyProtocol::V2][rng.below(3) as usize];
        let rate = |rng: &mut Rng| Rate::new(rng.range(1, u64::from(MAX_RATE)) as u32, rng.range(1, u64::from(MAX_RATE)) as u32);
        v.new_conn_rate = rng.chance(2).then(|| rate(rng));
        v.client_rate = rng.chance(2).then(|| rate(rng));
        v.bandwidth_bytes_per_sec = rng.chance(2).then(|| rng.range(1, MAX_BANDWIDTH));
    }
    v.table_size = table_size(rng, backends);
    for i in 0..backends {
        let addr = Ipv4Addr::new(198, 18, 16 + (i / 250) as u8, 1 + (i % 250) as u8);
        let bport = match mode {
            Mode::Dsr | Mode::Tunnel => port,
            Mode::Fullnat if rng.chance(4) => 0,
            _ => rng.range(1, 65535) as u16,
        };
        let mut b = Backend::new(addr, bport, rng.range(0, u64::from(MAX_WEIGHT)) as u32);
        b.state = [BackendState::Up, BackendState::Drain, BackendState::Down][rng.below(3) as usize];
        if mode.is_forwarding() && rng.chance(2) {
            b.mac = Some(Mac([2, 0, 0, 0, (i >> 8) as u8, i as u8]));
        }
        v.backends.push(b);
    }
    v
}

/// A random valid generation of `vips` VIPs and `backends` backends in all
/// (spread over the VIPs), with random distinct ids and slots.
fn generation(rng: &mut Rng, vips: usize, backends: usize) -> Generation {
    let mut ids: Vec<u16> = (0..MAX_VIPS as u16).collect();
    let mut slots: Vec<u32> = (0..MAX_BACKENDS as u32).collect();
    shuffle(rng, &mut ids);
    shuffle(rng, &mut slots);
    let mut left = backends;
    let mut g = Generation::default();
    for (i, &id) in ids.iter().take(vips).enumerate() {
        let n = if i + 1 == vips { left } else { (left / (vips - i)).min(left) };
        left -= n;
        let address = Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        let v = vip(rng, address, n);
        let s = slots.split_off(slots.len() - n);
        g.vips.push(Published { id, slots: s, vip: v });
    }
    g
}

fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// Publishes `g` through a fresh segment and reads it back as the dataplane does.
fn round_trip(g: &Generation) -> Generation {
    let dir = tempfile::tempdir().unwrap();
    let seg = Segment::open_or_create(dir.path().join("seg")).unwrap();
    let mut publisher = seg.publisher().unwrap();
    let dp = seg.dataplane(&fulcrum_shm::DataplaneInit::default()).unwrap();
    let mut sub = dp.subscriber();
    let n = publisher.publish(g).unwrap();
    match sub.poll() {
        Poll::New(read, m) if m == n => read,
        other => panic!("published generation {n} not read back: {other:?}"),
    }
}

/// Installs `g` in a real proxy engine and a real forwarder (lcore 0 of
/// LCORES) and checks that every VIP is there, with its backends.
fn install(g: &Generation) {
    let facts = facts();
    for p in &g.vips {
        p.vip.validate_for(&facts).unwrap_or_else(|e| panic!("{}: {e}", p.vip.name()));
    }
    let proxy: Vec<Vip> = g.vips.iter().filter(|p| p.vip.mode == Mode::Proxy).map(|p| p.vip.clone()).collect();
    let tables = VipTables::build(proxy.clone(), LCORES).unwrap_or_else(|e| panic!("proxy tables: {e}"));
    let mut config = EngineConfig::new(fulcrum_packet::EthernetAddress([2, 0, 0, 0, 0, 2]), OWN, 24);
    config.lcores = LCORES;
    let mut engine = Engine::new(config).unwrap();
    engine.reconfigure_with(&tables).unwrap_or_else(|e| panic!("engine: {e}"));
    let snapshot = engine.snapshot();
    assert_eq!(snapshot.len(), proxy.len(), "proxy VIPs installed");
    for v in &proxy {
        let s = snapshot.iter().find(|s| (s.addr, s.port) == (v.address, v.port)).expect("proxy VIP installed");
        let mut want: Vec<_> = v.backends.iter().map(|b| (b.address, b.port, b.weight, b.state)).collect();
        let mut got: Vec<_> = s.backends.iter().map(|b| (b.addr, b.port, b.weight, b.state)).collect();
        want.sort_by_key(|b| (b.0, b.1));
        got.sort_by_key(|b| (b.0, b.1));
        assert_eq!(got, want, "{}: backends installed", v.name());
    }

    let mut forwarder = Forwarder::new(ForwarderConfig {
        mac: [2, 0, 0, 0, 0, 2],
        addrs: facts.snat_addresses.clone(),
        lcore: 0,
        lcores: LCORES,
        local_ports: (1024, u16::MAX),
        capacity: 1024,
        timeouts: Timeouts::default(),
        table_memory_hint: |_| {},
        mtu: 1500,
        neighbours: 8192,
        flow_seed: fulcrum_maglev::DEFAULT_FLOW_SEED,
        flood: fulcrum_forward::FloodConfig::default(),
    })
    .unwrap();
    let forward: Vec<Arc<ForwardVip>> = g
        .vips
        .iter()
        .filter(|p| p.vip.mode.is_forwarding())
        .map(|p| Arc::new(ForwardVip::build(p.id, &p.vip).unwrap_or_else(|e| panic!("{}: {e}", p.vip.name()))))
        .collect();
    let refused = forwarder.install(&forward).refused;
    assert!(refused.is_empty(), "forwarder refused {refused:?}");
    let stats: Vec<_> = forwarder.vip_stats().collect();
    assert_eq!(stats.len(), forward.len(), "forwarding VIPs installed");
    for p in g.vips.iter().filter(|p| p.vip.mode.is_forwarding()) {
        let s = stats.iter().find(|s| s.id == p.id).unwrap_or_else(|| panic!("{} not installed", p.vip.name()));
        assert_eq!((s.address, s.port, s.proto, s.mode), (p.vip.address, p.vip.port, p.vip.proto, p.vip.mode));
        let mut want: Vec<_> = p.vip.backends.iter().map(|b| (b.address, b.port)).collect();
        let mut got: Vec<_> = s.backends.iter().map(|b| (b.address, b.port)).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{}: backends installed", p.vip.name());
    }
}

/// One rule broken in a copy of a valid generation; the field it must name.
fn break_one(rng: &mut Rng, g: &Generation) -> Option<(Generation, &'static str)> {
    let mut bad = g.clone();
    let i = rng.below(bad.vips.len() as u64) as usize;
    let p = &mut bad.vips[i];
    let v = &mut p.vip;
    let field = match rng.below(12) {
        0 => {
            v.connect_tries = if rng.chance(2) { 0 } else { MAX_CONNECT_TRIES + 1 };
            "connect_tries"
        }
        1 => {
            v.table_size = if rng.chance(2) { 65_535 } else { MAX_TABLE_SIZE + 43 };
            "table_size"
        }
        2 => {
            v.max_connections = 0;
            "max_connections"
        }
        3 => {
            v.idle_timeout_ms = 0;
            "idle_timeout_ms"
        }
        4 => {
            v.address = Ipv4Addr::BROADCAST;
            "address"
        }
        5 if v.mode == Mode::Proxy => {
            v.port = 0;
            "port"
        }
        5 => {
            v.proxy_protocol = ProxyProtocol::V1;
            "proxy_protocol"
        }
        6 => {
            v.tunnel = if v.mode == Mode::Tunnel { None } else { Some(Tunnel { encap: Encap::Ipip, source_prefix: Cidr { addr: SNAT, prefix_len: 24 } }) };
            "tunnel"
        }
        7 => {
            v.new_conn_rate = Some(Rate::new(0, 1));
            "new_conn_rate.per_sec"
        }
        8 => {
            v.bandwidth_bytes_per_sec = Some(MAX_BANDWIDTH + 1);
            "bandwidth_bytes_per_sec"
        }
        9 if !v.backends.is_empty() => {
            v.backends[0].weight = MAX_WEIGHT + 1;
            "weight"
        }
        10 if !p.slots.is_empty() => {
            p.slots[0] = MAX_BACKENDS as u32;
            "slots"
        }
        11 if bad.vips.len() > 1 => {
            let other = bad.vips[(i + 1) % bad.vips.len()].id;
            bad.vips[i].id = other;
            "id"
        }
        _ => return None,
    };
    Some((bad, field))
}

fn refused_up_front(bad: &Generation, field: &str) {
    let e = bad.validate().expect_err("a broken generation validates");
    assert!(e.field.ends_with(field), "broke {field}, refused for {e}");
    let dir = tempfile::tempdir().unwrap();
    let seg = Segment::open_or_create(dir.path().join("seg")).unwrap();
    let mut publisher = seg.publisher().unwrap();
    assert!(matches!(publisher.publish(bad), Err(fulcrum_shm::Error::Invalid(_))), "published {field}");
    assert_eq!(seg.current_config(), Poll::Unchanged, "nothing may be published");
}

#[test]
fn random_generations_round_trip_install_or_are_refused() {
    let seed = std::env::var("FULCRUM_PROP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f00d_u64);
    eprintln!("seed {seed} (FULCRUM_PROP_SEED={seed} replays it)");
    let mut rng = Rng(seed | 1);
    let (mut valid, mut refused) = (0, 0);
    let mut modes = std::collections::BTreeMap::new();
    for case in 0..60 {
        let vips = rng.range(1, 24) as usize;
        let backends = rng.range(0, 200) as usize;
        let g = generation(&mut rng, vips, backends);
        g.validate().unwrap_or_else(|e| panic!("case {case}: a generated generation is invalid: {e}"));
        assert_eq!(round_trip(&g), g, "case {case}: the segment changed the generation");
        install(&g);
        valid += 1;
        for p in &g.vips {
            *modes.entry(p.vip.mode.name()).or_insert(0) += 1;
        }
        if let Some((bad, field)) = break_one(&mut rng, &g) {
            refused_up_front(&bad, field);
            refused += 1;
        }
    }
    eprintln!("{valid} valid generations round-tripped and installed (VIPs by mode: {modes:?}); {refused} broken ones refused up front");
    assert_eq!(modes.len(), 4, "every mode generated: {modes:?}");
    assert!(refused >= 30, "only {refused} broken generations tried");
}

#[test]
fn boundaries() {
    let mut rng = Rng(0x0b0b_0b0b);
    // 256 VIPs and 4096 backend slots: the most a segment holds.
    let full = generation(&mut rng, MAX_VIPS, MAX_BACKENDS);
    full.validate().unwrap();
    assert_eq!((full.vips.len(), full.backend_count()), (MAX_VIPS, MAX_BACKENDS));
    assert_eq!(round_trip(&full), full);
    install(&full);
    // One VIP more, one backend more: refused.
    let mut more = full.clone();
    let mut extra = more.vips[0].clone();
    extra.vip.address = Ipv4Addr::new(198, 18, 9, 9);
    extra.slots.clear();
    extra.vip.backends.clear();
    more.vips.push(extra);
    refused_up_front(&more, "vip");
    let mut more = full.clone();
    let p = more.vips.iter_mut().find(|p| p.vip.mode == Mode::Proxy).expect("a proxy VIP");
    p.vip.backends.push(Backend::new(Ipv4Addr::new(198, 18, 99, 1), 80, 1));
    p.slots.push(0);
    assert!(more.validate().is_err(), "4097 backends (and slot 0 twice)");

    // The largest table size (the largest prime below 2^24), and the next prime above.
    let mut big = Generation {
        vips: vec![Published { id: 0, slots: vec![0, 1], vip: vip(&mut rng, Ipv4Addr::new(198, 18, 1, 1), 2) }],
    };
    big.vips[0].vip.table_size = 16_777_213;
    big.validate().unwrap();
    assert_eq!(round_trip(&big), big);
    install(&big);
    big.vips[0].vip.table_size = 16_777_259;
    refused_up_front(&big, "table_size");

    // Port 0 per mode: every port for forwarding VIPs (FullNAT backends keep
    // the client's port with 0); never for proxy.
    for mode in [Mode::Dsr, Mode::Fullnat, Mode::Tunnel, Mode::Proxy] {
        let mut v = vip(&mut rng, Ipv4Addr::new(198, 18, 1, 7), 0);
        v.mode = mode;
        v.proxy_protocol = ProxyProtocol::Off;
        v.tunnel = (mode == Mode::Tunnel).then_some(Tunnel { encap: Encap::Gue, source_prefix: Cidr { addr: SNAT, prefix_len: 32 } });
        v.new_conn_rate = None;
        v.client_rate = None;
        v.bandwidth_bytes_per_sec = None;
        v.proto = Proto::Tcp;
        v.port = 0;
        let mut b = Backend::new(Ipv4Addr::new(198, 18, 0, 21), 0, 1);
        b.mac = None;
        v.backends = vec![b];
        let g = Generation { vips: vec![Published { id: 3, slots: vec![9], vip: v }] };
        if mode == Mode::Proxy {
            refused_up_front(&g, "port");
        } else {
            g.validate().unwrap_or_else(|e| panic!("{mode:?} on port 0: {e}"));
            assert_eq!(round_trip(&g), g);
            install(&g);
        }
    }
}
