//! Keeps a net_memif peer's disconnect from unmapping memory under a polling lcore.
//!
//! DPDK 22.11's memif PMD handles a disconnect (the peer closed the control
//! socket: it exited, crashed or was killed, or said so) on the EAL interrupt
//! thread: `memif_disconnect` clears the CONNECTED flag, takes the PMD's
//! `cc_lock`, releases it, and then munmaps the shared regions. An lcore that
//! checked the flag at the start of an `rte_eth_rx_burst`/`rte_eth_tx_burst`
//! just before is still copying from/to those regions: SIGSEGV (seen as a
//! fault writing a packet into the unmapped region inside `eth_memif_tx`).
//!
//! The guard closes that window without a lock on the packet path:
//! - a guard thread holds `cc_lock` whenever the port is connected, so the
//!   interrupt thread's disconnect stops after clearing the flag and before
//!   the munmap;
//! - the lcores burst on the port only while its gate is open
//!   ([`gate_open`], checked by the queues before every burst), and the gate
//!   is opened only while the guard holds the lock and saw the port connected;
//! - each lcore marks a quiescent point at the top of each loop iteration
//!   ([`QuiescentToken::mark`], outside any burst).
//!
//! When the guard sees the flag cleared it closes the gate, waits until every
//! lcore has passed a quiescent point (so none is still in a burst that began
//! with the gate open), and only then releases the lock: the disconnect goes on
//! and unmaps memory no lcore touches. On the next connection the guard takes
//! the lock again, checks the flag under it, and reopens the gate, unless the
//! peer brought fewer ring pairs than the port has queues: the PMD would then
//! poll the missing ones on stale ring offsets from an earlier connection
//! (seen: a fault in `eth_memif_tx` on lcore 1 of two, against a one-queue
//! generator), so the gate stays closed for that connection, and it is logged.
//!
//! The PMD's private data is not public; `fulcrum_memif_private` (bindings'
//! shim.c) finds it by the layouts of DPDK 22.11 and checks them against what
//! is public (driver name, port name, queue pointers, the socket path) first;
//! the dataplane refuses a memif port it cannot guard.
//!
//! What this does not cover: a *hostile* peer. DPDK 22.11's memif trusts the
//! descriptors in the shared rings (region index, offset, length) and the
//! ring offsets the peer announces, and copies to and from wherever they
//! point: a peer that writes bad ones can make the dataplane read or write
//! outside the shared memory. Only a trusted peer (fulcrum-loadgen) may be
//! connected to a net_memif port.

use super::PortId;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Ports a gate can close (DPDK's RTE_MAX_ETHPORTS is 32).
const MAX_PORTS: usize = 64;

/// How often the guard looks at the port's connection flag. A disconnect
/// waits up to this long (plus one lcore loop iteration) for its munmap, the
/// interrupt thread spinning on the lock meanwhile; a new connection's traffic
/// waits as long for the gate to open. The guard thread runs where the main
/// lcore does: a millisecond keeps its wake-ups (a few microseconds each) at
/// a thousand a second.
const POLL: Duration = Duration::from_millis(1);

/// A parked lcore: it left its loop and will not burst again.
const PARKED: u64 = u64::MAX;

/// Closed gates: a port's queues skip their bursts (rx gets nothing, tx drops
/// the batch, counted by the caller) while its gate is closed. Open by default:
/// only a guarded port's gate ever closes.
static CLOSED: [AtomicBool; MAX_PORTS] = [const { AtomicBool::new(false) }; MAX_PORTS];

/// Whether the lcores may burst on `port` now. SeqCst: ordered after the
/// lcore's last [`QuiescentToken::mark`] (the guard's argument needs it; on
/// x86 a plain load).
#[inline]
pub fn gate_open(port: PortId) -> bool {
    CLOSED.get(usize::from(port.0)).is_none_or(|c| !c.load(Ordering::SeqCst))
}

#[derive(Debug, thiserror::Error)]
pub enum MemifGuardError {
    #[error("port {0}: not a started net_memif port on socket {1}, or not DPDK 22.11's memif layout (the disconnect guard needs it)")]
    Layout(PortId, String),
    #[error("port {0}: beyond the {MAX_PORTS} ports a gate covers")]
    PortRange(PortId),
    #[error("socket path {0:?} has a NUL byte")]
    Socket(String),
    #[error("starting the memif guard thread: {0}")]
    Thread(std::io::Error),
}

/// One lcore's quiescent-point counter, on its own cache line.
#[repr(align(64))]
struct Slot(AtomicU64);

/// The lcores' quiescent points, shared with the guard.
struct Quiescence {
    slots: Box<[Slot]>,
}

impl Quiescence {
    /// Returns once every lcore has passed a quiescent point after the call
    /// began, or parked (a worker parks when it drops its token, also when it
    /// panics or was never launched).
    fn wait(&self) {
        let seen: Vec<u64> = self.slots.iter().map(|s| s.0.load(Ordering::SeqCst)).collect();
        for (slot, was) in self.slots.iter().zip(seen) {
            while was != PARKED && slot.0.load(Ordering::SeqCst) == was {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

/// An lcore's handle: marks its quiescent points; parks it when dropped.
pub struct QuiescentToken {
    q: Arc<Quiescence>,
    index: usize,
}

impl QuiescentToken {
    /// Called at the top of each loop iteration, where the lcore is in no
    /// burst: it will not touch the port's memory again before its next
    /// [`gate_open`] check. SeqCst (one locked instruction an iteration):
    /// that check is ordered after it.
    #[inline]
    pub fn mark(&self) {
        let slot = &self.q.slots[self.index].0;
        let next = slot.load(Ordering::Relaxed).wrapping_add(1) % PARKED;
        slot.store(next, Ordering::SeqCst);
    }
}

impl Drop for QuiescentToken {
    fn drop(&mut self) {
        self.q.slots[self.index].0.store(PARKED, Ordering::SeqCst);
    }
}

/// The PMD's private data (only ever passed back to the shim).
struct Pmd(*mut c_void);
// SAFETY: the pointer is only handed to the shim's functions, which use
// atomics and DPDK's spinlock on it; the port outlives the guard (see
// MemifGuard::start's contract).
unsafe impl Send for Pmd {}

/// The guard of one started net_memif port; stop it (drop) before the port
/// is stopped: dropping releases the lock, which the port's own stop needs.
pub struct MemifGuard {
    port: PortId,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MemifGuard {
    /// Starts guarding `port` (a started net_memif port on `socket`, one
    /// queue pair per lcore) for `lcores` polling lcores; returns the guard
    /// and one token per lcore.
    /// The gate is closed until the guard holds the lock on a connected port.
    /// The guard must be dropped before the port.
    pub fn start(port: PortId, socket: &str, lcores: usize) -> Result<(MemifGuard, Vec<QuiescentToken>), MemifGuardError> {
        let index = usize::from(port.0);
        if index >= MAX_PORTS {
            return Err(MemifGuardError::PortRange(port));
        }
        let c_socket = CString::new(socket).map_err(|_| MemifGuardError::Socket(socket.to_owned()))?;
        // SAFETY: a valid C string; the shim only reads ethdev's and the PMD's
        // data of a started port, checking each step against public data.
        let pmd = unsafe { dpdk_sys::fulcrum_memif_private(port.0, c_socket.as_ptr()) };
        if pmd.is_null() {
            return Err(MemifGuardError::Layout(port, socket.to_owned()));
        }
        CLOSED[index].store(true, Ordering::SeqCst);
        let q = Arc::new(Quiescence { slots: (0..lcores).map(|_| Slot(AtomicU64::new(0))).collect() });
        let tokens = (0..lcores).map(|i| QuiescentToken { q: Arc::clone(&q), index: i }).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let pmd = Pmd(pmd);
        let thread = std::thread::Builder::new()
            .name(format!("memif-guard{}", port.0))
            .spawn({
                let stop = Arc::clone(&stop);
                move || guard(port, pmd, lcores, &q, &stop)
            })
            .map_err(|e| {
                CLOSED[index].store(false, Ordering::SeqCst);
                MemifGuardError::Thread(e)
            })?;
        Ok((MemifGuard { port, stop, thread: Some(thread) }, tokens))
    }
}

impl Drop for MemifGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        CLOSED[usize::from(self.port.0)].store(false, Ordering::SeqCst);
    }
}

impl Pmd {
    fn connected(&self) -> bool {
        // SAFETY: the PMD's private data, alive as long as the port, which
        // outlives the guard; the flag is read atomically.
        unsafe { dpdk_sys::fulcrum_memif_connected(self.0) != 0 }
    }

    /// The connection's ring pairs; read only after `connected` said yes.
    fn rings(&self) -> usize {
        // SAFETY: as in `connected`; the handshake wrote the counts before it
        // set the flag.
        usize::try_from(unsafe { dpdk_sys::fulcrum_memif_rings(self.0) }).unwrap_or(0)
    }

    fn try_lock(&self) -> bool {
        // SAFETY: as in `connected`; DPDK's spinlock in the PMD's data.
        unsafe { dpdk_sys::fulcrum_memif_trylock(self.0) != 0 }
    }

    /// Releases the lock this guard holds.
    fn unlock(&self) {
        // SAFETY: as in `connected`; only called by the guard while it holds the lock.
        unsafe { dpdk_sys::fulcrum_memif_unlock(self.0) }
    }
}

fn guard(port: PortId, pmd: Pmd, queues: usize, q: &Quiescence, stop: &AtomicBool) {
    let gate = &CLOSED[usize::from(port.0)];
    let mut held = false;
    let release = |held: &mut bool| {
        gate.store(true, Ordering::SeqCst);
        q.wait();
        pmd.unlock();
        *held = false;
    };
    while !stop.load(Ordering::Relaxed) {
        if held && !pmd.connected() {
            // A disconnect is waiting for the lock (or the port stopped).
            release(&mut held);
            tracing::info!("port {port}: memif peer disconnected; the lcores left the port's memory before it was unmapped");
        } else if !held && pmd.connected() && pmd.try_lock() {
            if pmd.connected() {
                held = true;
                let rings = pmd.rings();
                if rings >= queues {
                    gate.store(false, Ordering::SeqCst);
                    tracing::info!("port {port}: memif peer connected");
                } else {
                    tracing::error!(
                        "port {port}: memif peer connected with {rings} ring pair(s) but the port has {queues} queue pair(s) \
                         (one per lcore): not polled until a peer with {queues} connects"
                    );
                }
            } else {
                pmd.unlock();
            }
        }
        std::thread::sleep(POLL);
    }
    if held {
        release(&mut held);
    }
}
