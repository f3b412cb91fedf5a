//! Running code inside a network namespace without spawning processes.
//!
//! `setns(CLONE_NEWNET)` moves only the calling thread, so [`in_netns`] and
//! [`spawn_in_netns`] run their closure on a fresh thread that enters
//! `/var/run/netns/<name>` first. Sockets belong to the namespace they were created
//! in: a `TcpStream` connected (or a `TcpListener` bound) inside the closure keeps
//! working from any thread afterwards. Threads the closure spawns inherit the
//! namespace.

use std::fs::File;
use std::path::Path;
use std::thread::{self, JoinHandle};

use nix::sched::{setns, CloneFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Stack size for the many short-lived I/O threads the servers and clients spawn.
pub const IO_THREAD_STACK: usize = 256 * 1024;

/// Move the current thread into the network namespace `ns` (a name under
/// `/var/run/netns`, e.g. `topo.ns("cli")`, or an absolute path).
pub fn enter_netns(ns: &str) -> Result<(), String> {
    let path = if ns.starts_with('/') { Path::new(ns).to_path_buf() } else { Path::new("/var/run/netns").join(ns) };
    let f = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns({}): {e}", path.display()))
}

/// Run `f` on a fresh thread inside network namespace `ns` and return its result.
/// A panic in `f` is propagated to the caller.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        let h = thread::Builder::new()
            .name(format!("netns:{ns}"))
            .spawn_scoped(s, || {
                enter_netns(ns).unwrap_or_else(|e| panic!("{e}"));
                f()
            })
            .expect("spawn thread");
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Spawn a named thread inside network namespace `ns` running `f`. The caller must
/// join it (and make `f` bounded, e.g. with a stop flag).
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_string();
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            enter_netns(&ns).unwrap_or_else(|e| panic!("{e}"));
            f()
        })
        .unwrap_or_else(|e| panic!("cannot spawn thread {name}: {e}"))
}

/// Raise RLIMIT_NOFILE (soft, and hard if needed) of this process to at least `want`.
/// Returns the soft limit in force afterwards.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
    if soft >= want {
        return soft;
    }
    let new_hard = hard.max(want);
    match setrlimit(Resource::RLIMIT_NOFILE, want, new_hard) {
        Ok(()) => want,
        Err(e) => {
            // Without CAP_SYS_RESOURCE the hard limit cannot grow: take what there is.
            eprintln!("setrlimit(RLIMIT_NOFILE, {want}) failed: {e}; using the hard limit {hard}");
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            getrlimit(Resource::RLIMIT_NOFILE).map(|(s, _)| s).unwrap_or(soft)
        }
    }
}
