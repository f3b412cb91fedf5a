use super::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::time::Instant;

/// Backend `i` at 198.18.x.y:8080 (benchmarking range), weight 1.
fn backend(i: usize) -> Backend {
    let ip = Ipv4Addr::from(0xC612_0000u32 + i as u32);
    Backend {
        key: backend_key(IpAddr::V4(ip), 8080),
        weight: 1,
    }
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(backend).collect()
}

/// Key owning each slot; `None` for an empty table. Uses `lookup(slot)`,
/// which maps to exactly that slot since `slot < size`.
fn slot_keys(table: &MaglevTable, list: &[Backend]) -> Vec<Option<u64>> {
    (0..u64::from(table.size()))
        .map(|s| table.lookup(s).map(|i| list[i].key))
        .collect()
}

/// Fraction of slots that move between surviving backends when `list[removed]`
/// is taken out (slots the removed backend owned are not counted).
fn disruption(list: &[Backend], removed: usize, size: u32) -> f64 {
    let before = MaglevTable::build(list, size).unwrap();
    let mut rest = list.to_vec();
    let gone = rest.remove(removed).key;
    let after = MaglevTable::build(&rest, size).unwrap();
    let (b, a) = (slot_keys(&before, list), slot_keys(&after, &rest));
    let mut surviving = 0usize;
    let mut moved = 0usize;
    for (kb, ka) in b.iter().zip(&a) {
        assert_ne!(*ka, Some(gone), "removed backend still owns a slot");
        if *kb == Some(gone) {
            continue;
        }
        surviving += 1;
        if kb != ka {
            moved += 1;
        }
    }
    moved as f64 / surviving as f64
}

/// Equal weights: the population loop gives every backend one slot per round
/// and stops mid-round, so counts are floor(size/N) or ceil(size/N).
#[test]
fn equal_weights_balance_within_one_slot() {
    for n in [3usize, 10, 100] {
        let table = MaglevTable::build(&backends(n), DEFAULT_TABLE_SIZE).unwrap();
        let counts = table.slot_counts();
        assert_eq!(counts.len(), n);
        assert_eq!(counts.iter().sum::<u32>(), DEFAULT_TABLE_SIZE);
        let ideal = f64::from(DEFAULT_TABLE_SIZE) / n as f64;
        for (i, &c) in counts.iter().enumerate() {
            assert!(
                (f64::from(c) - ideal).abs() <= 1.0,
                "N={n}: backend {i} has {c} slots, ideal {ideal:.1}"
            );
        }
    }
}

#[test]
fn weights_give_proportional_shares_and_zero_gets_nothing() {
    let mut list = backends(4);
    list[0].weight = 2;
    list[3].weight = 0;
    let table = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    let counts = table.slot_counts();
    let pct = |c: u32| 100.0 * f64::from(c) / f64::from(DEFAULT_TABLE_SIZE);
    for (i, want) in [(0, 50.0), (1, 25.0), (2, 25.0)] {
        let got = pct(counts[i]);
        assert!(
            (got - want).abs() <= 1.0,
            "backend {i}: {got:.2}% vs {want}%"
        );
    }
    assert_eq!(counts[3], 0);
    assert!((0..u64::from(DEFAULT_TABLE_SIZE)).all(|s| table.lookup(s) != Some(3)));
}

#[test]
fn uneven_weights_track_weights() {
    let mut list = backends(10);
    for (i, b) in list.iter_mut().enumerate() {
        b.weight = 100 * (i as u32 + 1);
    }
    let total: u32 = list.iter().map(|b| b.weight).sum();
    let table = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    for (b, c) in list.iter().zip(table.slot_counts()) {
        let want = f64::from(DEFAULT_TABLE_SIZE) * f64::from(b.weight) / f64::from(total);
        assert!((f64::from(c) - want).abs() <= 2.0, "{c} slots vs {want:.1}");
    }
}

#[test]
fn build_is_deterministic_and_independent_of_list_order() {
    let list = backends(50);
    let a = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    let b = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    assert_eq!(a.slots, b.slots);

    let mut shuffled = list.clone();
    shuffled.reverse();
    shuffled.rotate_left(17);
    let c = MaglevTable::build(&shuffled, DEFAULT_TABLE_SIZE).unwrap();
    assert_ne!(a.slots, c.slots, "indexes should differ, keys should not");
    assert_eq!(slot_keys(&a, &list), slot_keys(&c, &shuffled));
}

#[test]
fn drained_backend_maps_like_a_removed_one() {
    let mut list = backends(20);
    let rest: Vec<Backend> = list
        .iter()
        .copied()
        .filter(|b| b.key != list[7].key)
        .collect();
    list[7].weight = 0;
    let drained = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    let removed = MaglevTable::build(&rest, DEFAULT_TABLE_SIZE).unwrap();
    assert_eq!(slot_keys(&drained, &list), slot_keys(&removed, &rest));
}

/// Observed (see the report test): ~0.55-0.6% of surviving slots move at both
/// N=100 and N=1000; asserted < 2% for headroom. `> 0` guards against a
/// comparison bug that would make this pass trivially (input is fixed, so no
/// flakiness).
#[test]
fn removing_one_backend_moves_few_surviving_slots() {
    for (n, bound) in [(100usize, 0.02), (1000, 0.02)] {
        let list = backends(n);
        for removed in [0, n / 2, n - 1] {
            let f = disruption(&list, removed, DEFAULT_TABLE_SIZE);
            assert!(f > 0.0 && f < bound, "N={n} removed {removed}: {f:.4}");
        }
    }
}

#[test]
fn preference_is_distinct_and_starts_with_lookup() {
    let mut list = backends(30);
    list[5].weight = 0;
    list[6].weight = 3;
    let table = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    for f in 0..2000u64 {
        let h = flow_hash(
            DEFAULT_FLOW_SEED,
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
            f as u16,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            443,
            6,
        );
        let prefs: Vec<usize> = table.preference(h).collect();
        assert_eq!(prefs.len(), MAX_PREFERENCE);
        assert_eq!(prefs.first().copied(), table.lookup(h));
        assert!(!prefs.contains(&5), "drained backend offered");
        for (i, p) in prefs.iter().enumerate() {
            assert!(!prefs[..i].contains(p), "duplicate in {prefs:?}");
        }
        assert_eq!(prefs, table.preference(h).collect::<Vec<_>>());
    }
}

#[test]
fn preference_stops_at_active_backends() {
    let mut list = backends(3);
    list[1].weight = 0;
    let table = MaglevTable::build(&list, 101).unwrap();
    let prefs: Vec<usize> = table.preference(42).collect();
    assert_eq!(prefs.len(), 2);
    assert!(prefs.contains(&0) && prefs.contains(&2));

    let single = MaglevTable::build(&backends(1), 2).unwrap();
    assert_eq!(single.preference(7).collect::<Vec<_>>(), vec![0]);
    assert_eq!(single.lookup(u64::MAX), Some(0));
}

#[test]
fn all_drained_or_no_backends_gives_empty_table() {
    let mut list = backends(3);
    for b in &mut list {
        b.weight = 0;
    }
    for l in [&list[..], &[]] {
        let table = MaglevTable::build(l, DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(table.lookup(0), None);
        assert_eq!(table.lookup(u64::MAX), None);
        assert_eq!(table.preference(123).next(), None);
        assert_eq!(table.slot_counts(), vec![0; l.len()]);
    }
}

#[test]
fn invalid_sizes_and_inputs_are_rejected() {
    let list = backends(3);
    for size in [0u32, 1, 4, 100, 65_535, 65_536] {
        assert_eq!(
            MaglevTable::build(&list, size).unwrap_err(),
            MaglevError::NotPrime(size)
        );
    }
    assert_eq!(
        MaglevTable::build(&list, 3).unwrap_err(),
        MaglevError::TooSmall {
            size: 3,
            backends: 3
        }
    );
    assert!(MaglevTable::build(&list, 5).is_ok());
    assert_eq!(
        MaglevTable::build(&list[..2], 2).unwrap_err(),
        MaglevError::TooSmall {
            size: 2,
            backends: 2
        }
    );

    let mut dup = list.clone();
    dup[2].key = dup[0].key;
    assert_eq!(
        MaglevTable::build(&dup, 101).unwrap_err(),
        MaglevError::DuplicateKey(dup[0].key)
    );

    let many = vec![Backend { key: 0, weight: 1 }; MAX_BACKENDS + 1];
    assert_eq!(
        MaglevTable::build(&many, 131_071).unwrap_err(),
        MaglevError::TooManyBackends(MAX_BACKENDS + 1)
    );
    assert!(MaglevError::NotPrime(4).to_string().contains("not prime"));
}

#[test]
fn extreme_weights_terminate() {
    let mut list = backends(3);
    list[0].weight = u32::MAX;
    list[1].weight = 1;
    list[2].weight = u32::MAX - 1;
    let table = MaglevTable::build(&list, 1009).unwrap();
    let counts = table.slot_counts();
    assert_eq!(counts.iter().sum::<u32>(), 1009);
    assert_eq!(counts[1], 0, "1/2^33 of the table rounds to nothing");
    assert!(counts[0].abs_diff(counts[2]) <= 1);
}

#[test]
fn flow_hash_uses_every_field() {
    let a = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let base = flow_hash(1, a, 1000, b, 443, 6);
    assert_eq!(base, flow_hash(1, a, 1000, b, 443, 6));
    let variants = [
        flow_hash(2, a, 1000, b, 443, 6),
        flow_hash(1, b, 1000, a, 443, 6),
        flow_hash(1, a, 1001, b, 443, 6),
        flow_hash(1, a, 1000, b, 444, 6),
        flow_hash(1, a, 1000, b, 443, 17),
        flow_hash(1, a, 443, b, 1000, 6),
    ];
    assert!(variants.iter().all(|&v| v != base));
    let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped());
    assert_eq!(base, flow_hash(1, mapped, 1000, b, 443, 6));

    assert_eq!(addr_hash(1, a), addr_hash(1, mapped));
    assert_ne!(addr_hash(1, a), addr_hash(1, b));
    assert_ne!(addr_hash(1, a), addr_hash(2, a));
    assert_ne!(backend_key(a, 80), backend_key(a, 81));
}

/// Pins seeds and byte layouts: if this fails, tables and flow placement
/// change, and load balancers on different versions would disagree.
#[test]
fn golden_values_are_stable() {
    let c = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let v = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    assert_eq!(backend_key(v, 8080), GOLDEN_BACKEND_KEY);
    assert_eq!(
        flow_hash(DEFAULT_FLOW_SEED, c, 40000, v, 443, 6),
        GOLDEN_FLOW_HASH
    );
    assert_eq!(addr_hash(DEFAULT_FLOW_SEED, c), GOLDEN_ADDR_HASH);
    let list = backends(3);
    let table = MaglevTable::build(&list, 13).unwrap();
    let owners: Vec<usize> = (0..13).map(|s| table.lookup(s).unwrap()).collect();
    assert_eq!(owners, GOLDEN_TABLE_13);
}

const GOLDEN_BACKEND_KEY: u64 = 0x61fa_5f98_b3ce_3d65;
const GOLDEN_FLOW_HASH: u64 = 0x3913_a1dd_1958_bb4a;
const GOLDEN_ADDR_HASH: u64 = 0x627c_ffb5_1247_5123;
const GOLDEN_TABLE_13: [usize; 13] = [1, 1, 2, 2, 1, 0, 1, 2, 0, 0, 2, 0, 0];

/// Prints balance, build time and disruption for 100 and 1 000 backends at the
/// default size; asserts balance and disruption bounds (never timing).
#[test]
fn report_spread_build_time_and_disruption() {
    let size = DEFAULT_TABLE_SIZE;
    for (n, bound) in [(100usize, 0.02), (1000, 0.02)] {
        let list = backends(n);
        let start = Instant::now();
        let table = MaglevTable::build(&list, size).unwrap();
        let took = start.elapsed();

        let counts = table.slot_counts();
        let ideal = f64::from(size) / n as f64;
        let rel: Vec<f64> = counts.iter().map(|&c| f64::from(c) / ideal).collect();
        let min = rel.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = rel.iter().sum::<f64>() / n as f64;
        let stddev = (rel.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n as f64).sqrt();

        let removals: Vec<usize> = (0..5).map(|k| k * n / 5 + 3).collect();
        let moved: Vec<f64> = removals
            .iter()
            .map(|&r| disruption(&list, r, size))
            .collect();
        let avg = moved.iter().sum::<f64>() / moved.len() as f64;
        let worst = moved.iter().copied().fold(0.0, f64::max);

        println!(
            "N={n:>4} size={size}: slots/ideal min={min:.4} max={max:.4} stddev={stddev:.5} \
             (ideal {ideal:.1} slots); build {:.2} ms; remove one: {:.3}% avg, {:.3}% worst \
             of surviving slots moved ({} removals)",
            took.as_secs_f64() * 1e3,
            avg * 100.0,
            worst * 100.0,
            moved.len()
        );
        assert!(counts.iter().all(|&c| (f64::from(c) - ideal).abs() <= 1.0));
        assert!(worst < bound, "N={n}: {worst:.4} >= {bound}");
    }
}

/// Backends at 198.18.0.21.. port 8080 (index i: 198.18.0.(21 + i)), with
/// `ports[i]` overriding the port when given.
fn endpoints(n: usize) -> Vec<SocketAddrV4> {
    (0..n).map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21 + i as u8), 8080)).collect()
}

fn digest_of(eps: &[SocketAddrV4], weights: &[u32], size: u32) -> u64 {
    let list: Vec<Backend> = eps
        .iter()
        .zip(weights)
        .map(|(e, &w)| Backend::at(IpAddr::V4(*e.ip()), e.port(), w))
        .collect();
    let table = MaglevTable::build(&list, size).unwrap();
    table.digest(|i| eps[i])
}

#[test]
fn digest_ignores_list_order() {
    let eps = endpoints(5);
    let weights = [1, 2, 1, 3, 1];
    let a = digest_of(&eps, &weights, DEFAULT_TABLE_SIZE);
    let mut rev: Vec<(SocketAddrV4, u32)> = eps.iter().copied().zip(weights).collect();
    rev.reverse();
    rev.swap(0, 2);
    let (e2, w2): (Vec<_>, Vec<_>) = rev.into_iter().unzip();
    assert_eq!(digest_of(&e2, &w2, DEFAULT_TABLE_SIZE), a);
}

#[test]
fn digest_changes_with_a_drained_backend_a_port_or_the_size() {
    let eps = endpoints(3);
    let base = digest_of(&eps, &[1, 1, 1], DEFAULT_TABLE_SIZE);
    // Weight 0 (what drained and down become in the model): its slots move.
    let drained = digest_of(&eps, &[1, 0, 1], DEFAULT_TABLE_SIZE);
    assert_ne!(drained, base);
    // ... and that is exactly the table without it.
    let without = digest_of(&[eps[0], eps[2]], &[1, 1], DEFAULT_TABLE_SIZE);
    assert_eq!(drained, without);
    // Back to weight 1: the first digest exactly.
    assert_eq!(digest_of(&eps, &[1, 1, 1], DEFAULT_TABLE_SIZE), base);
    // Another port for one backend: another key (other slots) and other bytes.
    let mut other_port = eps.clone();
    other_port[1].set_port(8081);
    assert_ne!(digest_of(&other_port, &[1, 1, 1], DEFAULT_TABLE_SIZE), base);
    // Weights change the shares.
    assert_ne!(digest_of(&eps, &[1, 2, 1], DEFAULT_TABLE_SIZE), base);
    assert_ne!(digest_of(&eps, &[1, 1, 1], 65_521), base);
}

/// The port enters the digest itself, not only through the permutation: two
/// tables with the same slot -> backend index mapping and endpoints differing
/// only by a port digest differently.
#[test]
fn digest_covers_the_port_bytes() {
    let eps = endpoints(2);
    let table = MaglevTable::build(&[Backend { key: 1, weight: 1 }, Backend { key: 2, weight: 1 }], 7).unwrap();
    let mut other = eps.clone();
    other[0].set_port(8081);
    assert_ne!(table.digest(|i| eps[i]), table.digest(|i| other[i]));
}

/// The definition, spelled out, and a literal value so that any change of it
/// (or of the table builder) is caught.
#[test]
fn digest_definition_and_golden_value() {
    let eps = endpoints(3);
    let list: Vec<Backend> = eps.iter().map(|e| Backend::at(IpAddr::V4(*e.ip()), e.port(), 1)).collect();
    let table = MaglevTable::build(&list, 13).unwrap();
    let mut bytes = 13u32.to_be_bytes().to_vec();
    for s in 0..13u64 {
        let e = eps[table.lookup(s).unwrap()];
        bytes.extend_from_slice(&e.ip().octets());
        bytes.extend_from_slice(&e.port().to_be_bytes());
    }
    assert_eq!(bytes.len(), 4 + 6 * 13);
    let d = table.digest(|i| eps[i]);
    assert_eq!(d, xxhash_rust::xxh3::xxh3_64(&bytes));
    assert_eq!(digest_hex(d), "e908e9135a20e780", "table {:?}", (0..13).map(|s| table.lookup(s).unwrap()).collect::<Vec<_>>());

    // Every backend drained: every slot empty, six zero bytes each.
    let none: Vec<Backend> = list.iter().map(|b| Backend { weight: 0, ..*b }).collect();
    let empty = MaglevTable::build(&none, 13).unwrap();
    let mut bytes = 13u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 6 * 13]);
    assert_eq!(empty.digest(|i| eps[i]), xxhash_rust::xxh3::xxh3_64(&bytes));
}

/// The default table size (65537 slots) digests quickly enough for the
/// dataplane's control thread (once per VIP per generation).
#[test]
fn digest_of_a_default_table_is_fast() {
    let eps = endpoints(10);
    let list: Vec<Backend> = eps.iter().map(|e| Backend::at(IpAddr::V4(*e.ip()), e.port(), 1)).collect();
    let table = MaglevTable::build(&list, DEFAULT_TABLE_SIZE).unwrap();
    let t = Instant::now();
    let d = table.digest(|i| eps[i]);
    let took = t.elapsed();
    println!("digest of a {DEFAULT_TABLE_SIZE}-slot table: {} in {took:?}", digest_hex(d));
    assert!(took < std::time::Duration::from_millis(200), "{took:?}");
}
