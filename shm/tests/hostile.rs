//! A segment nobody else can own: what `open_or_create` refuses, and what
//! `Segment::check` reports when the file is truncated, replaced or unlinked
//! while mapped. Run as root (the ownership test chowns to nobody, 65534).

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fulcrum_model::{Backend, Generation, Mode, Published, Vip};
use fulcrum_shm::layout::*;
use fulcrum_shm::*;

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fulcrum");
    (dir, path)
}

fn config(port: u16) -> Generation {
    let mut v = Vip::new(Ipv4Addr::new(192, 0, 2, 1), port, Mode::Proxy);
    v.table_size = 251;
    v.backends = vec![Backend::new(Ipv4Addr::new(10, 1, 0, 1), 8080, 100)];
    Generation { vips: vec![Published { id: 0, slots: vec![0], vip: v }] }
}

/// A valid segment file at `path`, closed again.
fn make_segment(path: &Path) {
    drop(Segment::open_or_create(path).unwrap());
}

#[test]
fn refuses_a_segment_owned_by_another_user() {
    let (_d, path) = tmp();
    make_segment(&path);
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let e = Segment::open_or_create(&path).unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    assert!(matches!(e, Error::NotOwned { owner: 65534, expected, .. } if expected == me), "{e:?}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("owned by uid 65534"), "{msg}");
    assert!(msg.contains(&format!("expected uid {me}")), "{msg}");
    let e = Segment::open_existing(&path).unwrap_err();
    assert!(matches!(e, Error::NotOwned { .. }), "{e:?}");
    // Left as it was: still theirs, still 0600.
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (65534, 0o600));
}

#[test]
fn refuses_a_symlink_at_the_path() {
    let (d, path) = tmp();
    let real = d.path().join("elsewhere");
    make_segment(&real);
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let e = Segment::open_or_create(&path).unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, Error::Symlink { .. }), "{e:?}");
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(msg.contains(&real.display().to_string()), "{msg}");
    assert!(matches!(Segment::open_existing(&path).unwrap_err(), Error::Symlink { .. }));
    // The link is still there and still a link (nothing was created through it).
    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    // A dangling link is refused too (not followed to create a file).
    let dangling = d.path().join("dangling");
    std::os::unix::fs::symlink(d.path().join("nothing"), &dangling).unwrap();
    assert!(matches!(Segment::open_or_create(&dangling).unwrap_err(), Error::Symlink { .. }));
    assert!(!d.path().join("nothing").exists());
}

#[test]
fn refuses_a_wrong_mode_and_leaves_it() {
    let (_d, path) = tmp();
    make_segment(&path);
    for mode in [0o644, 0o666, 0o640, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = Segment::open_or_create(&path).unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(matches!(e, Error::InsecurePermissions { mode: m, .. } if m == mode), "{e:?}");
        assert!(msg.contains(&format!("mode {mode:04o}")) && msg.contains("must be 0600"), "{msg}");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, mode, "not chmod'ed");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    Segment::open_or_create(&path).unwrap();
}

#[test]
fn refuses_a_directory_at_the_path() {
    let (_d, path) = tmp();
    std::fs::create_dir(&path).unwrap();
    let e = Segment::open_or_create(&path).unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, Error::NotRegularFile { kind: "directory", .. }), "{e:?}");
    assert!(msg.contains("is a directory, not a regular file"), "{msg}");
    assert!(std::fs::metadata(&path).unwrap().is_dir());
}

#[test]
fn created_segment_is_ours_0600_and_checks_clean() {
    let (d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    assert!(seg.created());
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777, m.len()), (std::fs::metadata("/proc/self").unwrap().uid(), 0o600, FILE_SIZE as u64));
    seg.check().unwrap();
    assert!(!seg.truncated());
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn survives_truncation_while_mapped() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let mut publisher = seg.publisher().unwrap();
    let mut dp = seg.dataplane(&DataplaneInit { lcores: 2, counter_names: &["rx"], gauge_mask: 0 }).unwrap();
    let lcore = dp.take_lcore(1).unwrap();
    let mut sub = dp.subscriber();
    let good = config(80);
    let g1 = publisher.publish(&good).unwrap();
    assert_eq!(sub.poll(), Poll::New(good.clone(), g1));
    sub.mark_applied(g1);
    lcore.add(0, 5);
    assert_eq!(lcore.get(0), 5);
    seg.check().unwrap();

    // Another handle cuts the file down to its first page while mapped.
    OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
    // Page 0 (the active word) is still shared: a "publication" that flips
    // it to the other slot, whose pages are gone, must not be accepted.
    let other_slot = 1u64; // the first publication went to slot 0
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&((g1 + 1) << 1 | other_slot).to_le_bytes(), CFG_ACTIVE as u64)
        .unwrap();
    let rejected_before = seg.dataplane_status().rejected_count;
    assert_eq!(sub.poll(), Poll::Unchanged, "nothing is accepted from a truncated segment");
    assert!(seg.truncated(), "the read past the end was noticed");
    assert_eq!(sub.accepted_generation(), g1, "the last good generation stays");
    assert_eq!(seg.dataplane_status().rejected_count, rejected_before, "not recorded as a rejection");
    // Counters past the end: a store and a load complete (zero page).
    lcore.add(0, 3);
    assert_eq!(lcore.get(0), 3, "the counter page was replaced by a zero page");
    lcore.vip_add(7, 0, 1);
    let snap = seg.snapshot();
    eprintln!("snapshot after truncation: {:?}", snap.as_ref().map(|s| s.epoch));
    dp.heartbeat();
    publisher.heartbeat();
    let e = publisher.publish(&config(81)).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
    let e = seg.check().unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    match e {
        Error::Truncated { size, expected, faults, .. } => {
            assert_eq!((size, expected), (4096, FILE_SIZE as u64));
            assert!(faults > 0);
        }
        e => panic!("{e:?}"),
    }
    assert!(msg.contains("truncated while mapped") && msg.contains(&path.display().to_string()), "{msg}");

    // All the way to 0: even the header page is gone.
    OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    dp.heartbeat();
    publisher.heartbeat();
    let _ = seg.dataplane_status();
    let _ = seg.control_plane_status();
    let _ = seg.dataplane_report();
    assert_eq!(seg.current_config(), Poll::Unchanged);
    assert_eq!(sub.poll(), Poll::Unchanged);
    assert!(matches!(seg.check().unwrap_err(), Error::Truncated { size: 0, .. }));
    // Dropping the role handles and the segment (their final stores, the
    // unmapping) is fine too.
    drop(dp);
    drop(publisher);
    drop(seg);
    // The file is left for the operator; a daemon starting now refuses it.
    assert!(matches!(Segment::open_or_create(&path).unwrap_err(), Error::BadMagic { .. }));
}

#[test]
fn truncation_is_reported_before_any_fault() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let mut sub = Subscriber::detached(&seg);
    OpenOptions::new().write(true).open(&path).unwrap().set_len(FILE_SIZE as u64 / 2).unwrap();
    assert!(!seg.truncated(), "no access past the end yet");
    let e = seg.check().unwrap_err();
    assert!(matches!(e, Error::Truncated { faults: 0, .. }), "{e:?}");
    // Sticky, even if the file grows back.
    OpenOptions::new().write(true).open(&path).unwrap().set_len(FILE_SIZE as u64).unwrap();
    assert!(seg.truncated());
    assert!(matches!(seg.check().unwrap_err(), Error::Truncated { .. }));
    assert_eq!(sub.poll(), Poll::Unchanged);
}

#[test]
fn replaced_segment_is_reported() {
    let (d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    seg.check().unwrap();
    let fresh = d.path().join("fresh");
    make_segment(&fresh);
    std::fs::rename(&fresh, &path).unwrap();
    let e = seg.check().unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    let found = std::fs::metadata(&path).unwrap().ino();
    assert!(matches!(e, Error::Replaced { found_ino, mapped_ino, .. } if found_ino == found && mapped_ino != found), "{e:?}");
    assert!(msg.contains("segment replaced") && msg.contains(&path.display().to_string()), "{msg}");
    // A second mapping of the new file checks clean: it is the one at the path.
    Segment::open_existing(&path).unwrap().check().unwrap();
}

#[test]
fn unlinked_segment_is_reported() {
    let (_d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let e = seg.check().unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, Error::Unlinked { .. }), "{e:?}");
    assert!(msg.contains("segment unlinked"), "{msg}");
    // Replaced by a symlink: reported as replaced (lstat, not followed).
    let (_d2, other) = tmp();
    make_segment(&other);
    std::os::unix::fs::symlink(&other, &path).unwrap();
    assert!(matches!(seg.check().unwrap_err(), Error::Replaced { .. }));
}

/// The SIGBUS handler only handles faults in segment mappings: a fault
/// anywhere else still kills the process with SIGBUS. Checked in a child
/// process (this test binary, re-run on the child test below).
#[test]
fn sigbus_outside_a_segment_still_kills() {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sigbus_child", "--nocapture", "--test-threads=1"])
        .env("FULCRUM_SHM_SIGBUS_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("child: {:?}, stderr: {stderr}", out.status);
    assert_eq!(out.status.signal(), Some(libc_sigbus()), "child must die of SIGBUS: {:?}\n{stderr}", out.status);
    assert!(stderr.contains("segment mapped, touching a truncated foreign mapping"), "{stderr}");
    assert!(!stderr.contains("survived"), "{stderr}");
}

fn libc_sigbus() -> i32 {
    7 // SIGBUS on Linux x86-64 and aarch64
}

#[test]
fn sigbus_child() {
    if std::env::var_os("FULCRUM_SHM_SIGBUS_CHILD").is_none() {
        return;
    }
    let (d, path) = tmp();
    let seg = Segment::open_or_create(&path).unwrap();
    let foreign = d.path().join("foreign");
    let f = OpenOptions::new().read(true).write(true).create_new(true).open(&foreign).unwrap();
    f.set_len(2 * 4096).unwrap();
    let map = memmap2::MmapOptions::new().len(2 * 4096).map_raw(&f).unwrap();
    f.set_len(0).unwrap();
    eprintln!("segment mapped, touching a truncated foreign mapping");
    // SAFETY (test): the mapping is live; the file was truncated on purpose
    // so that this read faults.
    let v = unsafe { std::ptr::read_volatile(map.as_ptr().add(4096)) };
    eprintln!("survived: read {v}");
    drop(seg);
}
