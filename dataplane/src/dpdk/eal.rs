//! EAL initialisation and cleanup.

use super::{DpdkError, LcoreId, Result, SocketId};
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, Ordering};

const EALREADY: i32 = 114;
const EINVAL: i32 = 22;

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The initialised Environment Abstraction Layer. DPDK allows one per process;
/// dropping it runs `rte_eal_cleanup`.
pub struct Eal {
    /// EAL may keep pointers into argv, so the strings live as long as it does.
    _args: Vec<CString>,
    _argv: Vec<*mut c_char>,
}

/// Sets every real-time signal that has no handler to "ignore", before EAL
/// probes its devices.
///
/// Why: net_tap (software mode) looks for a free real-time signal at probe
/// time, has the kernel raise it for every frame queued towards the
/// dataplane (O_ASYNC on its queues), and makes an RX burst read the queue
/// only after its handler counted a signal: a way to skip empty `readv`s for
/// applications that sleep. Our lcores busy-poll, so it saves nothing and
/// costs a queued real-time signal per received frame, delivered to one of
/// the process's threads: under a 70k frame/s flood that was a third of the
/// second core (the signal handlers' threads) and the lcore's own RX and TX
/// syscalls interrupted by deliveries. With no free real-time signal, net_tap
/// disables the trigger ("Rx trigger disabled"), sets no O_ASYNC, and every
/// RX burst polls the queue. Nothing else in the process uses these signals
/// (glibc keeps its own below `SIGRTMIN`); other PMDs never look at them.
fn claim_realtime_signals() {
    let mut claimed = 0;
    for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::uninit();
        // SAFETY: sigaction with a null new action only writes the current
        // action into `old` (read only when it returned 0).
        let current = unsafe { (libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) == 0).then(|| old.assume_init()) };
        let Some(current) = current else { continue };
        if current.sa_sigaction != libc::SIG_DFL {
            continue;
        }
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags);
        // SIG_IGN installs no code of ours, so nothing can run on delivery.
        let ok = unsafe {
            let mut ignore: libc::sigaction = std::mem::zeroed();
            ignore.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(sig, &ignore, std::ptr::null_mut()) == 0
        };
        claimed += usize::from(ok);
    }
    tracing::debug!("{claimed} real-time signals set to ignore (no per-frame RX trigger signals from net_tap)");
}

impl Eal {
    /// Initialises EAL from a full argument list (`args[0]` is the program name).
    pub fn init(args: &[String]) -> Result<Eal> {
        if INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError {
                op: "rte_eal_init".into(),
                code: EALREADY,
                message: "EAL is already initialised in this process".into(),
            });
        }
        let cargs = args
            .iter()
            .map(|a| {
                CString::new(a.as_bytes()).map_err(|_| DpdkError {
                    op: "rte_eal_init".into(),
                    code: EINVAL,
                    message: format!("argument {a:?} contains a NUL byte"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        claim_realtime_signals();
        let mut argv: Vec<*mut c_char> = cargs.iter().map(|c| c.as_ptr().cast_mut()).collect();
        let argc = i32::try_from(argv.len()).expect("argument count fits in i32");
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the
        // Eal (EAL may permute the pointer array, never the strings); the static
        // flag above guarantees this runs once per process.
        let ret = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            INITIALISED.store(false, Ordering::SeqCst);
            return Err(DpdkError::new("rte_eal_init", ret));
        }
        Ok(Eal {
            _args: cargs,
            _argv: argv,
        })
    }

    /// The lcore the calling (main) thread runs on.
    pub fn main_lcore(&self) -> LcoreId {
        // SAFETY: EAL is initialised (self exists); a plain read of EAL config.
        LcoreId(unsafe { dpdk_sys::rte_get_main_lcore() })
    }

    /// Every enabled lcore, main first.
    pub fn lcores(&self) -> Vec<LcoreId> {
        let main = self.main_lcore();
        let mut all = vec![main];
        all.extend(
            (0..dpdk_sys::RTE_MAX_LCORE)
                // SAFETY: EAL is initialised; rte_lcore_is_enabled accepts any id
                // and returns 0 for ids out of range.
                .filter(|&id| id != main.0 && unsafe { dpdk_sys::rte_lcore_is_enabled(id) } != 0)
                .map(LcoreId),
        );
        all
    }

    /// The NUMA socket an lcore belongs to.
    pub fn socket_of(&self, lcore: LcoreId) -> SocketId {
        // SAFETY: EAL is initialised; the call accepts any id.
        let s = unsafe { dpdk_sys::rte_lcore_to_socket_id(lcore.0) };
        i32::try_from(s).map(SocketId).unwrap_or(SocketId::ANY)
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: EAL was initialised by this value and every lcore has returned
        // (launch() waits for them), so nothing uses DPDK any more.
        let ret = unsafe { dpdk_sys::rte_eal_cleanup() };
        if ret < 0 {
            tracing::warn!("{}", DpdkError::new("rte_eal_cleanup", ret));
        }
    }
}
