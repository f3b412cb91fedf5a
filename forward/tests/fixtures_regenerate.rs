//! The committed fixtures (src/testdata.rs) are exactly what
//! fixtures/gen.py produces: the generator is re-run here and its output
//! compared byte for byte, so a hand edit of a frame, or a change to gen.py
//! that was never re-run, fails the build instead of going unnoticed.
//!
//! gen.py needs only the Python 3 standard library (struct, ipaddress). A
//! missing interpreter is a failure naming the package, never a skip.

use std::path::Path;
use std::process::Command;

#[test]
fn fixtures_match_a_fresh_run_of_gen_py() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = dir.join("fixtures/gen.py");
    let committed_path = dir.join("src/testdata.rs");
    let out = match Command::new("python3").arg(&script).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run python3 ({e}): install Debian package `python3` \
             (apt-get install python3); this test regenerates {} and must not be skipped",
            committed_path.display()
        ),
    };
    assert!(
        out.status.success(),
        "python3 {} failed ({}):\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read(&committed_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", committed_path.display()));
    let generated = out.stdout;
    if generated == committed {
        return;
    }
    // Point at the first differing line, with both versions.
    let (g, c) = (String::from_utf8_lossy(&generated), String::from_utf8_lossy(&committed));
    let (gl, cl): (Vec<&str>, Vec<&str>) = (g.lines().collect(), c.lines().collect());
    let first = (0..gl.len().max(cl.len()))
        .find(|&i| gl.get(i) != cl.get(i))
        .unwrap_or(gl.len().min(cl.len()));
    let differing = (0..gl.len().max(cl.len()))
        .filter(|&i| gl.get(i) != cl.get(i))
        .count();
    panic!(
        "{} differs from a fresh `python3 fixtures/gen.py` ({} vs {} bytes, {differing} lines differ); \
         first difference at line {}:\n  committed: {:?}\n  generated: {:?}\n\
         Regenerate with: python3 forward/fixtures/gen.py > forward/src/testdata.rs",
        committed_path.display(),
        committed.len(),
        generated.len(),
        first + 1,
        cl.get(first).copied().unwrap_or("<end of file>"),
        gl.get(first).copied().unwrap_or("<end of file>"),
    );
}
