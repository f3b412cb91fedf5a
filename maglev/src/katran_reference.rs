//! The table against an independent implementation of Katran's weighted
//! MaglevHashV2 population (tests/tools/maglev_v2.py), slot by slot.
//!
//! Only the two 64-bit hashes of each key are computed here (xxh3 with the
//! crate's offset and skip seeds, the one thing the reference cannot do
//! without an xxh3 module); the reduction to offset/skip, the key order and
//! the weighted population are the Python side's own. So a change to how
//! `build` derives offset or skip, orders backends, or spends credit shows up
//! as a differing slot.

use super::*;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/maglev_v2.py")
}

/// Slot -> backend index (-1: none) as the Python reference computes it.
fn reference(list: &[Backend], size: u32) -> Vec<i64> {
    let mut input = String::new();
    for b in list {
        let key = b.key.to_le_bytes();
        input.push_str(&format!(
            "{} {} {} {}\n",
            b.key,
            xxh3_64_with_seed(&key, OFFSET_SEED),
            xxh3_64_with_seed(&key, SKIP_SEED),
            b.weight
        ));
    }
    let mut child = Command::new("python3")
        .arg(script())
        .arg(size.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Debian package `python3`; this test must not be skipped")
        });
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.as_bytes())
        .expect("write backends to maglev_v2.py");
    let out = child.wait_with_output().expect("wait for maglev_v2.py");
    assert!(
        out.status.success(),
        "maglev_v2.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|l| l.parse().unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// `n` backends 198.18.x.y:80, weights from `weight(i)`, listed in an order
/// unrelated to their keys (reversed), so the key ordering is exercised.
fn set(n: u32, weight: impl Fn(u32) -> u32) -> Vec<Backend> {
    (0..n)
        .rev()
        .map(|i| Backend::at(IpAddr::V4(Ipv4Addr::from(0xC612_0100 + i)), 80, weight(i)))
        .collect()
}

fn assert_same(name: &str, list: &[Backend], size: u32) {
    let want = reference(list, size);
    assert_eq!(want.len(), size as usize, "{name}: reference printed {} slots", want.len());
    let table = MaglevTable::build(list, size).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got: Vec<i64> = (0..u64::from(size))
        .map(|s| table.lookup(s).map_or(-1, |i| i as i64))
        .collect();
    let differing: Vec<usize> = (0..got.len()).filter(|&s| got[s] != want[s]).collect();
    if let Some(&first) = differing.first() {
        panic!(
            "{name} (size {size}, {} backends): {} of {size} slots differ from Katran's MaglevHashV2 \
             (tests/tools/maglev_v2.py); first at slot {first}: table has backend {}, reference {}",
            list.len(),
            differing.len(),
            got[first],
            want[first]
        );
    }
    println!("{name}: {size} slots identical to the reference");
}

#[test]
fn table_matches_katran_maglev_v2_reference() {
    let big = DEFAULT_TABLE_SIZE;
    assert_same("equal weights x5", &set(5, |_| 1), big);
    assert_same("weights 2:1:1", &set(3, |i| if i == 0 { 2 } else { 1 }), big);
    assert_same("3:0:1:2 (one drained)", &set(4, |i| [3, 0, 1, 2][i as usize]), big);
    assert_same("100 equal", &set(100, |_| 1), big);
    assert_same("100 weights 1..7", &set(100, |i| i % 7 + 1), big);
    assert_same("one backend", &set(1, |_| 4), big);
    assert_same("small prime 2:1:1:0", &set(4, |i| [2, 1, 1, 0][i as usize]), 13);
    assert_same("small prime 5 equal", &set(5, |_| 1), 7);
    assert_same("prime 101 weights 1..5", &set(5, |i| i + 1), 101);
    assert_same("large weights", &set(3, |i| [1_000_000, 1, 999_999][i as usize]), 251);
    assert_same("all drained", &set(3, |_| 0), 13);
}
