use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_shm::layout::*;
use fulcrum_model::{Backend, BackendState, Generation, Mode, Proto, Published, Rate, Vip};
use fulcrum_shm::*;
use xxhash_rust::xxh3::xxh3_64_with_seed;

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fulcrum");
    (dir, path)
}

fn backend(last: u8, port: u16) -> Backend {
    Backend::new(Ipv4Addr::new(10, 1, 0, last), port, 100)
}

fn small_config(n_backends: u32) -> Generation {
    let mut v = Vip::new(Ipv4Addr::new(192, 0, 2, 1), 80, Mode::Proxy);
    v.new_conn_rate = Some(Rate::new(1000, 100));
    v.table_size = 251;
    v.backends = (0..n_backends).map(|i| backend(i as u8 + 1, 8080)).collect();
    let mut u = Vip::new(Ipv4Addr::new(192, 0, 2, 1), 53, Mode::Dsr);
    u.proto = Proto::Udp;
    u.table_size = 13;
    u.backends = vec![backend(50, 53)];
    Generation {
        vips: vec![
            Published { id: 0, slots: (0..n_backends).collect(), vip: v },
            Published { id: 7, slots: vec![100], vip: u },
        ],
    }
}

/// Large and very different configurations (4096 backends each).
fn big_config(seed: u8) -> Generation {
    let mut cfg = Generation::default();
    let mut slot = 0u32;
    for id in 0..256u16 {
        let mode = if seed % 2 == 0 { Mode::Fullnat } else { Mode::Proxy };
        let mut v = Vip::new(Ipv4Addr::new(10, seed, (id >> 8) as u8, id as u8), 80 + u16::from(seed), mode);
        v.bandwidth_bytes_per_sec = Some(u64::from(seed) << 32 | u64::from(id));
        let mut slots = Vec::new();
        for b in 0..16u32 {
            let mut backend = Backend::new(
                Ipv4Addr::new(172, 16 + seed, id as u8, (b + 1) as u8),
                1000 * u16::from(seed) + id,
                u32::from(seed) * 100_000 + slot,
            );
            backend.state = if seed % 2 == 0 { BackendState::Up } else { BackendState::Drain };
            v.backends.push(backend);
            slots.push(slot);
            slot += 1;
        }
        cfg.vips.push(Published { id, slots, vip: v });
    }
    cfg
}

fn raw_write(path: &Path, off: usize, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off as u64).unwrap();
}

fn raw_read_u64(path: &Path, off: usize) -> u64 {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off as u64).unwrap();
    u64::from_le_bytes(b)
}

/// Simulates a (buggy) writer going around the Publisher: writes a complete
/// slot with an even sequence and flips the active word to it.
fn raw_publish(
    path: &Path,
    slot: usize,
    active_gen: u64,
    slot_gen: u64,
    payload: &[u8],
    checksum: u64,
) {
    let off = slot_off(slot);
    let seq = raw_read_u64(path, off + SLOT_SEQ);
    raw_write(path, off + SLOT_SEQ, &(seq + 2 + (seq & 1)).to_le_bytes());
    raw_write(path, off + SLOT_GEN, &slot_gen.to_le_bytes());
    raw_write(path, off + SLOT_LEN, &(payload.len() as u64).to_le_bytes());
    raw_write(path, off + SLOT_SUM, &checksum.to_le_bytes());
    raw_write(path, off + SLOT_HDR, payload);
    raw_write(
        path,
        CFG_ACTIVE,
        &(active_gen << 1 | slot as u64).to_le_bytes(),
    );
}

fn inactive_slot(path: &Path) -> usize {
    let a = raw_read_u64(path, CFG_ACTIVE);
    if a == 0 {
        0
    } else {
        1 - (a & 1) as usize
    }
}

#[test]
fn layout_numbers() {
    assert_eq!(REPORT_OFF, 4096);
    assert_eq!(SLOT0_OFF, 135_168);
    assert_eq!(SLOT_SIZE, 4096 + 4 * 1024 * 1024);
    assert_eq!(SLOT1_OFF, 4_333_568);
    assert_eq!(COUNTERS_OFF, 8_531_968);
    assert_eq!(LAYOUT_VERSION, 3);
    assert_eq!(VIP_COUNTERS, 24);
    assert_eq!(BLOCK_VIP_OFF, 512);
    assert_eq!(BLOCK_BACKEND_OFF, 49_664);
    assert_eq!(BLOCK_SIZE, 380_928);
    assert_eq!(FILE_SIZE, 20_721_664);
    let (_d, path) = tmp();
    let _seg = Segment::open_or_create(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_SIZE as u64);
}

#[test]
fn round_trip() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    assert!(seg.created());
    let mut dp = seg
        .dataplane(&DataplaneInit {
            lcores: 1,
            ..Default::default()
        })
        .unwrap();
    let _l = dp.take_lcore(0).unwrap();
    let mut sub = dp.subscriber();
    assert_eq!(sub.poll(), Poll::Unchanged, "nothing published yet");
    let mut publisher = seg.publisher().unwrap();
    let c1 = small_config(3);
    let c2 = small_config(5);
    assert_eq!(publisher.publish(&c1).unwrap(), 1);
    assert_eq!(sub.poll(), Poll::New(c1.clone(), 1));
    assert_eq!(sub.poll(), Poll::Unchanged);
    assert_eq!(publisher.publish(&c2).unwrap(), 2);
    assert_eq!(sub.poll(), Poll::New(c2.clone(), 2));
    assert_eq!(sub.poll(), Poll::Unchanged);
    assert_eq!(sub.poll(), Poll::Unchanged);
    // Accepted is not applied: that waits for every lcore to install it.
    assert_eq!(seg.dataplane_status().applied_generation, 0);
    sub.mark_applied(2);
    assert_eq!(seg.dataplane_status().applied_generation, 2);
    assert_eq!(seg.control_plane_status().published_generation, 2);
    assert_eq!(seg.current_config(), Poll::New(c2, 2));
    // Two publications between polls: only the newest is seen.
    let c3 = small_config(1);
    publisher.publish(&c1).unwrap();
    publisher.publish(&c3).unwrap();
    assert_eq!(sub.poll(), Poll::New(c3, 4));
    assert_eq!(sub.poll(), Poll::Unchanged);
    assert_eq!(sub.stats().rejected, 0);
}

#[test]
fn torn_read_protection() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let a = big_config(1);
    let b = big_config(2);
    assert_ne!(a, b);
    assert!(encoded_len(&a) > 50_000, "payload should be large");
    let stop = AtomicBool::new(false);
    let (stats, accepted, published) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut publisher = seg.publisher().unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                publisher.publish(if n % 2 == 0 { &a } else { &b }).unwrap();
                n += 1;
            }
            n
        });
        let reader = s.spawn(|| {
            let _stop = StopOnDrop(&stop);
            let mut sub = Subscriber::detached(&seg);
            let mut accepted = 0u64;
            let mut last = 0;
            let deadline = Instant::now() + Duration::from_secs(15);
            while (accepted < 100 || sub.stats().polls < 20_000) && Instant::now() < deadline {
                match sub.poll() {
                    Poll::New(cfg, generation) => {
                        assert!(
                            cfg == a || cfg == b,
                            "accepted a torn mix at generation {generation}"
                        );
                        // generation parity tells which config it must be
                        assert_eq!(
                            cfg == a,
                            generation % 2 == 1,
                            "generation {generation} has the other payload"
                        );
                        assert!(generation > last);
                        last = generation;
                        accepted += 1;
                    }
                    Poll::Rejected(r) => panic!("rejected a correct publication: {r}"),
                    Poll::Unchanged => {}
                }
            }
            (sub.stats(), accepted)
        });
        let (stats, accepted) = reader.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        (stats, accepted, writer.join().unwrap())
    });
    eprintln!("torn test: published {published}, accepted {accepted}, {stats:?}");
    assert!(
        accepted > 10,
        "reader accepted too few generations: {accepted}"
    );
    assert_eq!(
        stats.checksums_verified, accepted,
        "checksum verified on every accepted copy"
    );
    assert_eq!(stats.checksum_failures, 0);
}

/// Sets the flag when dropped, so a panicking reader stops the writer.
struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn encoded_len(cfg: &Generation) -> usize {
    // Publish into a scratch segment and read the stored length.
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    seg.publisher().unwrap().publish(cfg).unwrap();
    raw_read_u64(&path, SLOT0_OFF + SLOT_LEN) as usize
}

struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn garbage_is_rejected_and_previous_generation_stays() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let dp = seg.dataplane(&DataplaneInit::default()).unwrap();
    let mut sub = dp.subscriber();
    let mut publisher = seg.publisher().unwrap();
    let good = small_config(4);
    assert_eq!(publisher.publish(&good).unwrap(), 1);
    assert_eq!(sub.poll(), Poll::New(good.clone(), 1));
    sub.mark_applied(1);

    // 1. flip one payload byte of a fresh publication -> checksum mismatch
    assert_eq!(publisher.publish(&small_config(6)).unwrap(), 2);
    let slot = (raw_read_u64(&path, CFG_ACTIVE) & 1) as usize;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8; 1];
    let at = (slot_off(slot) + SLOT_HDR + 5) as u64;
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    assert_eq!(sub.poll(), Poll::Rejected(RejectReason::ChecksumMismatch));
    assert_eq!(
        sub.poll(),
        Poll::Unchanged,
        "a rejected generation is reported once"
    );
    assert_eq!(sub.accepted_generation(), 1);
    let st = seg.dataplane_status();
    assert_eq!(
        (
            st.rejected_count,
            st.last_reject_code,
            st.last_reject_generation
        ),
        (1, 2, 2)
    );
    assert_eq!(reject_code_name(st.last_reject_code), "checksum_mismatch");
    assert_eq!(
        st.applied_generation, 1,
        "previous generation stays applied"
    );

    // 2. random bytes over a whole slot header + payload start
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    assert_eq!(publisher.publish(&small_config(7)).unwrap(), 3);
    let slot = (raw_read_u64(&path, CFG_ACTIVE) & 1) as usize;
    raw_write(
        &path,
        slot_off(slot) + SLOT_GEN,
        &rng.bytes(SLOT_HDR - 8 + 65536),
    );
    match sub.poll() {
        Poll::Rejected(RejectReason::LengthOutOfRange(_) | RejectReason::ChecksumMismatch) => {}
        other => panic!("expected rejection, got {other:?}"),
    }
    // random payload bytes only, header intact
    assert_eq!(publisher.publish(&small_config(8)).unwrap(), 4);
    let slot = (raw_read_u64(&path, CFG_ACTIVE) & 1) as usize;
    raw_write(&path, slot_off(slot) + SLOT_HDR, &rng.bytes(64));
    assert_eq!(sub.poll(), Poll::Rejected(RejectReason::ChecksumMismatch));

    // 3. zero length
    let s = inactive_slot(&path);
    raw_publish(&path, s, 5, 5, &[], xxh3_64_with_seed(&[], 5));
    assert_eq!(
        sub.poll(),
        Poll::Rejected(RejectReason::LengthOutOfRange(0))
    );

    // 4. correct checksum over undecodable bytes
    let junk = [0xffu8; 16];
    let s = inactive_slot(&path);
    raw_publish(&path, s, 6, 6, &junk, xxh3_64_with_seed(&junk, 6));
    assert!(matches!(
        sub.poll(),
        Poll::Rejected(RejectReason::Undecodable(_))
    ));

    // 5. valid payload with trailing garbage
    let mut bytes = serde_json::to_vec(&good).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    let s = inactive_slot(&path);
    raw_publish(&path, s, 7, 7, &bytes, xxh3_64_with_seed(&bytes, 7));
    assert!(matches!(
        sub.poll(),
        Poll::Rejected(RejectReason::Undecodable(_))
    ));

    // 6. valid payload, but generation not newer than the applied one
    let bytes = serde_json::to_vec(&small_config(2)).unwrap();
    let s = inactive_slot(&path);
    raw_publish(&path, s, 8, 1, &bytes, xxh3_64_with_seed(&bytes, 1));
    assert_eq!(
        sub.poll(),
        Poll::Rejected(RejectReason::GenerationNotIncreasing {
            found: 1,
            accepted: 1
        })
    );

    let st = seg.dataplane_status();
    assert_eq!(st.rejected_count, 7);
    assert_eq!(st.last_reject_code, 4);
    assert_eq!(st.last_reject_generation, 8);
    assert_eq!(st.applied_generation, 1);
    assert_eq!(sub.accepted_generation(), 1);

    // A fresh publisher continues after everything found in the file and the
    // subscriber accepts again.
    drop(publisher);
    let mut publisher = seg.publisher().unwrap();
    let next = small_config(9);
    let generation = publisher.publish(&next).unwrap();
    assert!(generation > 8, "generation {generation}");
    assert_eq!(sub.poll(), Poll::New(next, generation));
    sub.mark_applied(generation);
    assert_eq!(seg.dataplane_status().applied_generation, generation);
}

#[test]
fn dataplane_report_round_trip_and_corruption() {
    use fulcrum_model::{DataplaneReport, Facts, TableDigest, VipRefusal};
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    assert_eq!(seg.dataplane_report(), None, "nothing written yet");
    let dp = seg.dataplane(&DataplaneInit::default()).unwrap();
    let mut report = DataplaneReport {
        facts: Facts {
            address: Ipv4Addr::new(198, 18, 0, 2),
            snat_addresses: vec![Ipv4Addr::new(198, 18, 0, 3)],
            lcores: 2,
            forwarding: true,
        },
        generation: 7,
        refused: vec![VipRefusal { id: 3, vip: "198.18.0.2:80/tcp".into(), reason: "address: own".into() }],
        tables: vec![TableDigest {
            id: 4,
            vip: "198.18.1.1:80".into(),
            slots: 65_537,
            backends: 3,
            digest: "0123456789abcdef".into(),
        }],
    };
    dp.write_report(&report).unwrap();
    assert_eq!(seg.dataplane_report().as_ref(), Some(&report));
    report.refused.clear();
    report.generation = 8;
    dp.write_report(&report).unwrap();
    assert_eq!(seg.dataplane_report().as_ref(), Some(&report), "a shorter report replaces a longer one");
    // A flipped payload bit fails the checksum: no report rather than a wrong one.
    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let at = (REPORT_OFF + REPORT_HDR + 3) as u64;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
    assert_eq!(seg.dataplane_report(), None);
    // Every VIP's table digest at its longest fits with room to spare.
    report.tables = (0..fulcrum_model::MAX_VIPS as u16)
        .map(|id| TableDigest {
            id,
            vip: "255.255.255.255:65535/udp".into(),
            slots: fulcrum_model::MAX_TABLE_SIZE,
            backends: fulcrum_model::MAX_BACKENDS as u32,
            digest: "0123456789abcdef".into(),
        })
        .collect();
    let len = serde_json::to_vec(&report).unwrap().len();
    assert!(len * 3 < MAX_REPORT, "{len} bytes of {MAX_REPORT}");
    dp.write_report(&report).unwrap();
    assert_eq!(seg.dataplane_report().as_ref(), Some(&report));
    // Too large to fit: refused with an error, nothing written.
    report.refused = (0..2000)
        .map(|i| VipRefusal { id: i as u16, vip: "x".repeat(40), reason: "y".repeat(40) })
        .collect();
    assert!(matches!(dp.write_report(&report), Err(Error::ReportTooLarge { .. })));
}

#[test]
fn bad_files_give_clear_errors() {
    let (d, path) = tmp();
    // wrong magic (the file made 0600 and ours, or it is refused for that)
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap()
        .write_all_at(b"not a segment at all", 0)
        .unwrap();
    let e = Segment::open_existing(&path).unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("not a Fulcrum shared-memory segment"),
        "{e}"
    );
    // open_or_create leaves a foreign file alone
    assert!(matches!(
        Segment::open_or_create(&path).unwrap_err(),
        Error::BadMagic { .. }
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"not a segment at all");
    // empty file
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        Segment::open_existing(&path).unwrap_err(),
        Error::BadMagic { .. }
    ));
    // missing file
    let e = Segment::open_existing(d.path().join("nope")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");

    // explicit recreation replaces it
    let seg = Segment::recreate(&path).unwrap();
    drop(seg);
    Segment::open_existing(&path).unwrap();

    // wrong version
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[H_VERSION..H_VERSION + 8].copy_from_slice(&99u64.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let e = Segment::open_existing(&path).unwrap_err();
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                found: 99,
                expected: LAYOUT_VERSION,
                ..
            }
        ),
        "{e}"
    );
    // wrong size (header says right, file is longer)
    let mut bad = good.clone();
    bad.extend_from_slice(&[0; 4096]);
    std::fs::write(&path, &bad).unwrap();
    let e = Segment::open_existing(&path).unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    // truncated
    std::fs::write(&path, &good[..100]).unwrap();
    assert!(matches!(
        Segment::open_existing(&path).unwrap_err(),
        Error::SizeMismatch { .. }
    ));
    // geometry mismatch (e.g. a build with other maxima)
    let mut bad = good.clone();
    bad[H_GEOMETRY + 8..H_GEOMETRY + 16].copy_from_slice(&512u64.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let e = Segment::open_existing(&path).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LayoutMismatch {
                field: "max_vips",
                found: 512,
                expected: 256,
                ..
            }
        ),
        "{e}"
    );
    // header corruption caught by the header checksum
    let mut bad = good.clone();
    bad[H_CREATED_NS] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        Segment::open_existing(&path).unwrap_err(),
        Error::HeaderChecksum { .. }
    ));
    std::fs::write(&path, &good).unwrap();
    Segment::open_existing(&path).unwrap();
}

#[test]
fn semantic_validation() {
    // Each rule is tested in fulcrum-model; here: both ends apply it.
    let base = small_config(3);
    base.validate().unwrap();
    let mut dup = base.clone();
    let mut v = dup.vips[0].clone();
    v.id = 9;
    v.slots = vec![200];
    v.vip.backends = vec![backend(9, 80)];
    dup.vips.push(v);
    let mut slot = base.clone();
    slot.vips[0].slots[1] = MAX_BACKENDS as u32;
    let mut table = base.clone();
    table.vips[0].vip.table_size = 253; // 11 * 23
    let mut mcast = base.clone();
    mcast.vips[0].vip.backends[0].address = Ipv4Addr::new(239, 1, 2, 3);
    let fields = [
        (&dup, "vip[2] (192.0.2.1:80)"),
        (&slot, "vip[0] (192.0.2.1:80).slots"),
        (&table, "vip[0] (192.0.2.1:80).table_size"),
        (&mcast, "vip[0] (192.0.2.1:80).backends[0] (239.1.2.3:8080)"),
    ];
    for (cfg, field) in fields {
        assert_eq!(cfg.validate().unwrap_err().field, field);
    }

    // The publisher refuses invalid configurations...
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let mut publisher = seg.publisher().unwrap();
    assert!(matches!(publisher.publish(&dup), Err(Error::Invalid(e)) if e.field == fields[0].1));
    assert_eq!(raw_read_u64(&path, CFG_ACTIVE), 0, "nothing published");
    // ...and the subscriber re-validates what a buggy writer put there.
    let dp = seg.dataplane(&DataplaneInit::default()).unwrap();
    let mut sub = dp.subscriber();
    for (i, (cfg, field)) in fields.into_iter().enumerate() {
        let generation = 10 + i as u64;
        let bytes = serde_json::to_vec(cfg).unwrap();
        let s = inactive_slot(&path);
        raw_publish(&path, s, generation, generation, &bytes, xxh3_64_with_seed(&bytes, generation));
        match sub.poll() {
            Poll::Rejected(RejectReason::Invalid(e)) => assert_eq!(e.field, field, "{e}"),
            other => panic!("expected invalid, got {other:?}"),
        }
        let st = seg.dataplane_status();
        assert_eq!((reject_code_name(st.last_reject_code), st.last_reject_generation), ("invalid", generation));
    }
    assert_eq!(seg.dataplane_status().rejected_count, 4);
    assert_eq!(sub.accepted_generation(), 0);
}

#[test]
fn counters_two_lcores_and_restart() {
    const N: u64 = 200_000;
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let names = [
        "rx_packets",
        "rx_bytes",
        "tx_packets",
        "tx_bytes",
        "drop_no_mbuf",
        "flows",
    ];
    let init = DataplaneInit {
        lcores: 2,
        counter_names: &names,
        gauge_mask: 1 << 5,
    };
    let mut dp = seg.dataplane(&init).unwrap();
    let epoch1 = dp.epoch();
    assert!(epoch1 > 0 && epoch1 % 2 == 0);
    let l0 = dp.take_lcore(0).unwrap();
    let l1 = dp.take_lcore(1).unwrap();
    assert!(dp.take_lcore(0).is_none(), "each block is handed out once");
    assert!(dp.take_lcore(2).is_none(), "only 2 lcores declared");

    // A reader in another "process" (separate mapping of the same file).
    let reader_seg = Segment::open_existing(&path).unwrap();
    let mut totals = CounterTotals::new();
    std::thread::scope(|s| {
        for l in [l0, l1] {
            s.spawn(move || {
                let me = l.lcore() as u64;
                for i in 0..N {
                    l.add(0, 1);
                    l.add(1, 64 + me);
                    l.vip_add(3, VIP_BYTES_IN, 10);
                    l.backend_add(4095, BACKEND_OPENED, 1);
                    // gauge: +1 on this lcore, -1 on it for every other op
                    if i % 2 == 0 {
                        l.vip_add(3, VIP_ACTIVE, 1);
                    } else {
                        l.vip_sub(3, VIP_ACTIVE, 1);
                    }
                    l.set(5, i % 7);
                }
                l.vip_add(3, VIP_ACTIVE, 1); // one connection remains per lcore
                if me == 1 {
                    // gauge decremented on a different lcore than incremented
                    l.backend_sub(7, BACKEND_ACTIVE, 1);
                } else {
                    l.backend_add(7, BACKEND_ACTIVE, 1);
                }
            });
        }
        // concurrent reader: sums never decrease while writers run
        let mut prev = 0;
        for _ in 0..50 {
            let snap = reader_seg.snapshot().unwrap();
            let t = totals.update(&snap);
            assert!(t.lcore[0] >= prev);
            assert!(t.lcore[0] <= 2 * N);
            prev = t.lcore[0];
        }
    });
    let snap = reader_seg.snapshot().unwrap();
    assert_eq!(snap.epoch, epoch1);
    assert_eq!(snap.lcore_by_name("rx_packets"), Some(2 * N));
    assert_eq!(snap.lcore_by_name("rx_bytes"), Some(64 * N + 65 * N));
    assert_eq!(snap.names[4], "drop_no_mbuf");
    assert_eq!(snap.names[63], "");
    assert_eq!(snap.per_lcore.len(), 2);
    assert_eq!(snap.per_lcore[1].1[1], 65 * N);
    assert_eq!(snap.vip(3, VIP_BYTES_IN), 20 * N);
    assert_eq!(snap.vip(3, VIP_ACTIVE), 2);
    assert_eq!(snap.backend(4095, BACKEND_OPENED), 2 * N);
    assert_eq!(
        snap.backend(7, BACKEND_ACTIVE),
        0,
        "wrapping gauge sums across lcores"
    );
    let before = totals.update(&snap);
    assert_eq!(before.lcore[0], 2 * N);

    // Dataplane restart: new epoch, counters start from zero, readers rebase.
    drop(dp);
    assert!(!seg.dataplane_alive(Duration::from_secs(10)));
    let seg2 = Segment::open_or_create(&path).unwrap(); // "new process"
    assert!(!seg2.created());
    let mut dp2 = seg2.dataplane(&init).unwrap();
    assert_eq!(dp2.epoch(), epoch1 + 2);
    let l0 = dp2.take_lcore(0).unwrap();
    let raw = reader_seg.snapshot().unwrap();
    assert_eq!(raw.epoch, epoch1 + 2);
    assert_eq!(raw.lcore[0], 0, "new dataplane starts from zero");
    assert_eq!(raw.vip(3, VIP_ACTIVE), 0);
    l0.add(0, 5);
    l0.vip_add(3, VIP_ACTIVE, 1);
    l0.vip_add(3, VIP_BYTES_IN, 1);
    let after = totals.update(&reader_seg.snapshot().unwrap());
    assert_eq!(totals.restarts(), 1);
    assert_eq!(after.lcore[0], 2 * N + 5, "totals never go backwards");
    assert_eq!(after.vip(3, VIP_BYTES_IN), 20 * N + 1);
    assert_eq!(after.vip(3, VIP_ACTIVE), 1, "gauges are not rebased");
    assert_eq!(after.lcore[5], 0, "lcore gauge not rebased");
}

#[test]
fn heartbeat_and_liveness() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let long = Duration::from_secs(10);
    assert!(!seg.control_plane_alive(long));
    assert!(!seg.dataplane_alive(long));
    let publisher = seg.publisher().unwrap();
    let dp = seg.dataplane(&DataplaneInit::default()).unwrap();
    assert!(seg.control_plane_alive(long));
    assert!(seg.dataplane_alive(long));
    let st = seg.control_plane_status();
    assert_eq!(st.pid, u64::from(std::process::id()));
    assert!(st.start_ns > 0 && st.heartbeat_ns >= st.start_ns);
    std::thread::sleep(Duration::from_millis(60));
    assert!(
        !seg.dataplane_alive(Duration::from_millis(30)),
        "stale heartbeat"
    );
    dp.heartbeat();
    publisher.heartbeat();
    assert!(seg.dataplane_alive(Duration::from_millis(30)));
    assert!(seg.control_plane_alive(Duration::from_millis(30)));
    assert!(seg.dataplane_status().heartbeat_ns > seg.dataplane_status().start_ns);
    drop(publisher);
    drop(dp);
    assert!(
        !seg.control_plane_alive(long),
        "clean stop clears the heartbeat"
    );
    assert!(!seg.dataplane_alive(long));

    // Another live process holding the role (fake pid, fresh heartbeat).
    raw_write(&path, CP_PID, &(u64::from(u32::MAX) + 7).to_le_bytes());
    raw_write(&path, CP_HEARTBEAT_NS, &now_ns().to_le_bytes());
    let e = seg.publisher().err().expect("role is taken");
    assert!(
        matches!(
            e,
            Error::AlreadyRunning {
                role: "control plane",
                ..
            }
        ),
        "{e}"
    );
    // ...whose heartbeat goes stale: the role can be taken over.
    let old = now_ns() - 2 * CLAIM_STALE_AFTER.as_nanos() as u64;
    raw_write(&path, CP_HEARTBEAT_NS, &old.to_le_bytes());
    seg.publisher().unwrap();
    raw_write(&path, DP_PID, &(u64::from(u32::MAX) + 8).to_le_bytes());
    raw_write(&path, DP_HEARTBEAT_NS, &now_ns().to_le_bytes());
    assert!(matches!(
        seg.dataplane(&DataplaneInit::default()),
        Err(Error::AlreadyRunning {
            role: "dataplane",
            ..
        })
    ));
}

#[test]
fn dataplane_first_then_control_plane_then_restarts() {
    let (_d, path) = tmp();
    // dataplane process starts first and creates the file
    let dp_seg = Segment::open_or_create(&path).unwrap();
    assert!(dp_seg.created());
    let mut dp = dp_seg
        .dataplane(&DataplaneInit {
            lcores: 1,
            counter_names: &["rx"],
            gauge_mask: 0,
        })
        .unwrap();
    let l0 = dp.take_lcore(0).unwrap();
    let mut sub = dp.subscriber();
    assert_eq!(sub.poll(), Poll::Unchanged);
    l0.add(0, 42);

    // control plane opens it
    let cp_seg = Segment::open_or_create(&path).unwrap();
    assert!(!cp_seg.created());
    let mut publisher = cp_seg.publisher().unwrap();
    let c1 = small_config(2);
    assert_eq!(publisher.publish(&c1).unwrap(), 1);
    assert_eq!(sub.poll(), Poll::New(c1.clone(), 1));
    sub.mark_applied(1);
    assert_eq!(cp_seg.snapshot().unwrap().lcore_by_name("rx"), Some(42));
    assert_eq!(cp_seg.dataplane_status().applied_generation, 1);

    // control plane restarts: dataplane keeps its config, sees nothing new
    drop(publisher);
    drop(cp_seg);
    assert_eq!(sub.poll(), Poll::Unchanged);
    assert!(!dp_seg.control_plane_alive(Duration::from_secs(10)));
    let cp_seg = Segment::open_or_create(&path).unwrap();
    let mut publisher = cp_seg.publisher().unwrap();
    assert_eq!(publisher.generation(), 1);
    assert_eq!(
        publisher.last_published(),
        Poll::New(c1.clone(), 1),
        "previous generation readable"
    );
    assert_eq!(
        cp_seg.snapshot().unwrap().lcore_by_name("rx"),
        Some(42),
        "counters still there"
    );
    let c2 = small_config(3);
    assert_eq!(
        publisher.publish(&c2).unwrap(),
        2,
        "generations keep increasing"
    );
    assert_eq!(sub.poll(), Poll::New(c2.clone(), 2));

    // dataplane restarts: new process picks up the current generation at once
    drop(dp);
    drop(dp_seg);
    let dp_seg = Segment::open_or_create(&path).unwrap();
    let dp = dp_seg
        .dataplane(&DataplaneInit {
            lcores: 1,
            counter_names: &["rx"],
            gauge_mask: 0,
        })
        .unwrap();
    let mut sub = dp.subscriber();
    assert_eq!(sub.poll(), Poll::New(c2, 2));
    assert_eq!(sub.poll(), Poll::Unchanged);
    let snap = cp_seg.snapshot().unwrap();
    assert_eq!(snap.lcore_by_name("rx"), Some(0));
    assert_eq!(snap.epoch, dp.epoch());
}

#[test]
fn control_plane_first_then_dataplane() {
    let (_d, path) = tmp();
    let cp_seg = Segment::open_or_create(&path).unwrap();
    assert!(cp_seg.created());
    let mut publisher = cp_seg.publisher().unwrap();
    let c1 = small_config(1);
    let c2 = small_config(2);
    publisher.publish(&c1).unwrap();
    publisher.publish(&c2).unwrap();
    // no dataplane yet: counters readable, all zero, epoch 0
    let snap = cp_seg.snapshot().unwrap();
    assert_eq!(snap.epoch, 0);
    assert!(snap.lcore.iter().all(|&v| v == 0));

    let dp_seg = Segment::open_or_create(&path).unwrap();
    assert!(!dp_seg.created());
    let dp = dp_seg.dataplane(&DataplaneInit::default()).unwrap();
    let mut sub = dp.subscriber();
    assert_eq!(sub.poll(), Poll::New(c2, 2), "latest generation only");
    assert_eq!(sub.poll(), Poll::Unchanged);
}

#[test]
fn concurrent_creation_yields_one_file() {
    let (_d, path) = tmp();
    let created: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| Segment::open_or_create(&path).unwrap().created()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(created.iter().filter(|&&c| c).count(), 1, "{created:?}");
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files cleaned up");
}

#[test]
fn file_mode_is_0600() {
    let (_d, path) = tmp();
    let _seg = Segment::open_or_create(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // a loosened mode is refused, and left as it is (see tests/hostile.rs)
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Segment::open_existing(&path).unwrap_err();
    assert!(matches!(e, Error::InsecurePermissions { mode: 0o644, .. }), "{e}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let (_d2, path2) = tmp();
    let _seg3 = Segment::recreate(&path2).unwrap();
    assert_eq!(
        std::fs::metadata(&path2).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn waits_out_no_time() {
    // poll() is cheap when nothing changed: a million polls well under a second
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let dp = seg.dataplane(&DataplaneInit::default()).unwrap();
    let mut sub = dp.subscriber();
    seg.publisher().unwrap().publish(&small_config(1)).unwrap();
    assert!(matches!(sub.poll(), Poll::New(..)));
    let t = Instant::now();
    for _ in 0..1_000_000 {
        assert_eq!(sub.poll(), Poll::Unchanged);
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn vip_counter_table() {
    assert_eq!(VIP_COUNTER_NAMES.len(), VIP_COUNTERS);
    let named = [
        (VIP_ACCEPTED, "accepted"),
        (VIP_ACTIVE, "active"),
        (VIP_DROPS, "drops"),
        (VIP_SYNS, "syns"),
        (VIP_COOKIES_SENT, "cookies_sent"),
        (VIP_COOKIES_VALIDATED, "cookies_validated"),
        (VIP_COOKIES_REJECTED, "cookies_rejected"),
        (VIP_HALF_OPEN, "half_open"),
        (VIP_FLOOD_LCORES, "flood_lcores"),
        (VIP_DROP_HALF_OPEN, "drop_half_open_timeout"),
        (VIP_RESERVED_23, "reserved"),
    ];
    for (i, name) in named {
        assert!(i < VIP_COUNTERS, "{name}");
        assert_eq!(VIP_COUNTER_NAMES[i], name);
    }
    assert_eq!((VIP_SYNS, VIP_FLOOD_LCORES, VIP_DROP_HALF_OPEN, VIP_RESERVED_23), (16, 21, 22, 23));
    let mut names = VIP_COUNTER_NAMES.to_vec();
    assert!(names.iter().all(|n| !n.is_empty() && n.len() < NAME_LEN));
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), VIP_COUNTERS, "names are unique");
    assert_eq!(VIP_GAUGES, 1 << VIP_ACTIVE | 1 << VIP_HALF_OPEN | 1 << VIP_FLOOD_LCORES);
    assert_eq!(VIP_GAUGES >> VIP_COUNTERS, 0, "no gauge bit past the last counter");
    assert_eq!(BACKEND_COUNTER_NAMES.len(), BACKEND_COUNTERS);
}

/// The new per-VIP counters sit at their own words (the last VIP's last
/// counter does not run into the backends), sum over lcores, and across a
/// dataplane restart the counters are rebased while the gauges (half-open,
/// flood lcores) are not.
#[test]
fn syn_flood_counters_sum_and_rebase() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let init = DataplaneInit { lcores: 2, counter_names: &[], gauge_mask: 0 };
    let mut dp = seg.dataplane(&init).unwrap();
    let (l0, l1) = (dp.take_lcore(0).unwrap(), dp.take_lcore(1).unwrap());
    let last = (MAX_VIPS - 1) as u16;
    for (l, syns, flood) in [(&l0, 100, 1), (&l1, 50, 0)] {
        l.vip_set(last, VIP_SYNS, syns);
        l.vip_set(last, VIP_COOKIES_SENT, syns - 10);
        l.vip_set(last, VIP_COOKIES_VALIDATED, 7);
        l.vip_set(last, VIP_COOKIES_REJECTED, 2);
        l.vip_set(last, VIP_HALF_OPEN, 64);
        l.vip_set(last, VIP_FLOOD_LCORES, flood);
        l.vip_set(last, VIP_DROP_HALF_OPEN, 3);
        l.vip_set(last, VIP_RESERVED_23, 0);
    }
    l0.backend_set(0, BACKEND_ATTEMPTS, 9);
    let mut totals = CounterTotals::new();
    let s = totals.update(&seg.snapshot().unwrap());
    let got: Vec<u64> = [
        VIP_SYNS,
        VIP_COOKIES_SENT,
        VIP_COOKIES_VALIDATED,
        VIP_COOKIES_REJECTED,
        VIP_HALF_OPEN,
        VIP_FLOOD_LCORES,
        VIP_DROP_HALF_OPEN,
        VIP_RESERVED_23,
    ]
    .iter()
    .map(|&i| s.vip(last, i))
    .collect();
    assert_eq!(got, [150, 130, 14, 4, 128, 1, 6, 0]);
    assert_eq!(s.backend(0, BACKEND_ATTEMPTS), 9, "VIP words do not overlap the backends'");
    assert_eq!(s.vip(last - 1, VIP_SYNS), 0);

    drop(dp);
    let mut dp = seg.dataplane(&init).unwrap();
    let l0 = dp.take_lcore(0).unwrap();
    l0.vip_set(last, VIP_SYNS, 1);
    l0.vip_set(last, VIP_HALF_OPEN, 5);
    let s = totals.update(&seg.snapshot().unwrap());
    assert_eq!(s.vip(last, VIP_SYNS), 151, "counters are rebased");
    assert_eq!(s.vip(last, VIP_HALF_OPEN), 5, "half_open is a gauge");
    assert_eq!(s.vip(last, VIP_FLOOD_LCORES), 0, "flood_lcores is a gauge");
}

/// A segment left by a build of layout 2 (16 counters per VIP) is refused,
/// naming both versions, and left alone; a layout-3 header with layout-2
/// geometry is refused naming the field.
#[test]
fn layout_2_segment_is_refused() {
    const V2_FILE_SIZE: u64 = 20_197_376;
    let v2_geometry: [u64; 17] = [
        32,
        256,
        4096,
        64,
        16, // vip_counters
        10,
        4 << 20,
        32,
        512,
        768,
        2048,
        135_168,
        4_333_568,
        4096 + (4 << 20),
        8_531_968,
        364_544, // block_size
        V2_FILE_SIZE,
    ];
    let header = |version: u64| {
        let mut h = vec![0u8; HEADER_LEN];
        h[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
        h[H_VERSION..H_VERSION + 8].copy_from_slice(&version.to_le_bytes());
        h[H_FILE_SIZE..H_FILE_SIZE + 8].copy_from_slice(&V2_FILE_SIZE.to_le_bytes());
        for (i, v) in v2_geometry.iter().enumerate() {
            h[H_GEOMETRY + 8 * i..H_GEOMETRY + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        h[H_CREATED_NS..H_CREATED_NS + 8].copy_from_slice(&1u64.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&h[..H_CHECKSUM]);
        h[H_CHECKSUM..H_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
        h
    };
    let (_d, path) = tmp();
    let write = |h: &[u8]| {
        let f = OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&path).unwrap();
        f.set_len(V2_FILE_SIZE).unwrap();
        f.write_all_at(h, 0).unwrap();
    };

    write(&header(2));
    for e in [Segment::open_existing(&path).unwrap_err(), Segment::open_or_create(&path).unwrap_err()] {
        assert!(matches!(e, Error::VersionMismatch { found: 2, expected: 3, .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("layout version 2") && msg.contains("this build uses 3"), "{msg}");
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), V2_FILE_SIZE, "left untouched");
    assert_eq!(raw_read_u64(&path, H_VERSION), 2);

    // Same version number but the old geometry (a build that forgot the
    // bump): the first differing field is named.
    let mut h = header(u64::from(LAYOUT_VERSION));
    h[H_FILE_SIZE..H_FILE_SIZE + 8].copy_from_slice(&(FILE_SIZE as u64).to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&h[..H_CHECKSUM]);
    h[H_CHECKSUM..H_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    write(&h);
    OpenOptions::new().write(true).open(&path).unwrap().set_len(FILE_SIZE as u64).unwrap();
    let e = Segment::open_existing(&path).unwrap_err();
    assert!(
        matches!(e, Error::LayoutMismatch { field: "vip_counters", found: 16, expected: 24, .. }),
        "{e}"
    );

    // recreate (the operator's action after an upgrade) gives a layout-3 file.
    drop(Segment::recreate(&path).unwrap());
    Segment::open_existing(&path).unwrap();
    assert_eq!(raw_read_u64(&path, H_VERSION), 3);
}
