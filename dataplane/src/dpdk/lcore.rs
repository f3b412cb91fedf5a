//! Running closures on EAL lcores.

use super::{Eal, LcoreId};
use std::any::Any;
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Work for one lcore.
pub type LcoreJob<'a> = Box<dyn FnOnce() + Send + 'a>;

/// How an lcore's job ended.
#[derive(Debug)]
pub enum LcoreOutcome {
    Returned,
    /// The job panicked; the message is kept and the other lcores carry on.
    Panicked(String),
    /// EAL refused to launch it (lcore busy or not enabled).
    NotLaunched(String),
}

struct Slot<'a> {
    job: Option<LcoreJob<'a>>,
    outcome: LcoreOutcome,
}

extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the &mut Slot that launch() passed for this lcore; launch()
    // keeps it alive and does not touch it until rte_eal_wait_lcore returns.
    let slot = unsafe { &mut *arg.cast::<Slot<'_>>() };
    slot.outcome = run(slot.job.take());
    0
}

fn run(job: Option<LcoreJob<'_>>) -> LcoreOutcome {
    match job {
        None => LcoreOutcome::Returned,
        Some(job) => match catch_unwind(AssertUnwindSafe(job)) {
            Ok(()) => LcoreOutcome::Returned,
            Err(e) => LcoreOutcome::Panicked(panic_message(e.as_ref())),
        },
    }
}

fn panic_message(e: &(dyn Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Runs each job on its lcore — the main lcore's on the calling thread — and
/// returns when all have finished, like `std::thread::scope`: jobs may borrow
/// from the caller. Panics are caught per lcore and reported, never propagated
/// across the FFI boundary.
pub fn launch<'a>(eal: &Eal, jobs: Vec<(LcoreId, LcoreJob<'a>)>) -> Vec<(LcoreId, LcoreOutcome)> {
    let main = eal.main_lcore();
    let mut slots: Vec<(LcoreId, Box<Slot<'a>>)> = jobs
        .into_iter()
        .map(|(lcore, job)| {
            let slot = Slot {
                job: Some(job),
                outcome: LcoreOutcome::NotLaunched("not started".into()),
            };
            (lcore, Box::new(slot))
        })
        .collect();
    let mut launched = Vec::new();
    for (lcore, slot) in slots.iter_mut().filter(|(l, _)| *l != main) {
        let arg: *mut Slot<'a> = &mut **slot;
        // SAFETY: the slot is boxed (stable address) and outlives the lcore's
        // run, because we wait for every launched lcore below before `slots`
        // is dropped or read, whatever happens on this thread in between
        // (the main job runs under catch_unwind).
        let ret = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg.cast(), lcore.0) };
        if ret == 0 {
            launched.push(*lcore);
        } else {
            slot.outcome = LcoreOutcome::NotLaunched(format!("rte_eal_remote_launch returned {ret}"));
        }
    }
    if let Some((_, slot)) = slots.iter_mut().find(|(l, _)| *l == main) {
        slot.outcome = run(slot.job.take());
    }
    for lcore in launched {
        // SAFETY: the lcore was launched above; waiting is always allowed.
        unsafe { dpdk_sys::rte_eal_wait_lcore(lcore.0) };
    }
    slots.into_iter().map(|(l, s)| (l, s.outcome)).collect()
}
