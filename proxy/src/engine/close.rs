//! After each service: a finished connection is released at once (no
//! TIME-WAIT: see the engine's "TIME-WAIT"), its flow-table entries, local
//! port, backend and VIP references dropped and its sockets kept for reuse;
//! a live one files its next deadline (smoltcp's, connect, idle, bandwidth
//! refill) in the timer heap.

use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;

use super::conn::{FlowKey, Phase};
use super::vip::vip_mut;
use super::{Engine, NO_CONN};
use crate::limits::bandwidth_quantum;

impl Engine {
    /// Releases a finished connection, or files its next deadline.
    pub(super) fn settle(&mut self, id: usize, now: Instant) {
        let conn = self.conns[id].as_mut().expect("live");
        let vip = self.vips[conn.vip].as_ref().expect("VIP slot in use");
        let done_state = |s: State| matches!(s, State::Closed | State::TimeWait);
        // smoltcp's poll_at of a side is a function of its socket, which
        // only changes when the side is touched (see `Conn::touched`):
        // `transmit` filed it for the touched sides, as its last egress
        // pass left them.
        conn.touched = 0;
        conn.arp_gen = self.arp_gen;
        let (client_at, backend_at) = (conn.client_at, conn.backend_at);
        let c = conn.client.get::<tcp::Socket>(conn.ch).state();
        let b = conn.backend.get::<tcp::Socket>(conn.bh).state();
        let quiet = |at: Option<Instant>| at.is_none_or(|at| at > now);
        if matches!(conn.phase, Phase::Proxying | Phase::Closing)
            && done_state(c)
            && done_state(b)
            && quiet(client_at)
            && quiet(backend_at)
        {
            self.release(id);
            return;
        }
        let own = match conn.phase {
            Phase::New => Some(now),
            Phase::Connecting { deadline } => Some(deadline),
            Phase::Proxying => {
                let idle = conn.last_active + conn.idle_timeout;
                match vip.limits.bandwidth {
                    Some(bw) if conn.throttled => {
                        Some(idle.min(vip.bw_bucket.ready_at(bandwidth_quantum(bw), bw)))
                    }
                    _ => Some(idle),
                }
            }
            Phase::Closing => None,
        };
        // A paused client socket always claims to want the CPU (its SYN-ACK is
        // due); its real wake-up is the backend's progress. A cookie
        // connection's client is not paused (it may owe the client an ACK).
        let client_at = match conn.phase {
            Phase::New | Phase::Connecting { .. } if !conn.cookie => None,
            _ => client_at,
        };
        let at = earliest(earliest(own, client_at), earliest(backend_at, conn.half_open_deadline));
        self.timers.set(id as u32, at);
    }

    pub(super) fn release(&mut self, id: usize) {
        self.unlist_handshake(id);
        let conn = self.conns[id].take().expect("live");
        debug_assert!(conn.handshake_pos.is_none() && conn.half_open_deadline.is_none());
        let vip = vip_mut(&mut self.vips, conn.vip);
        self.flows.remove(&FlowKey {
            remote: *conn.client_ep.ip(),
            local: vip.cfg.address,
            remote_port: conn.client_ep.port(),
            local_port: vip.cfg.port,
        });
        if let Some(bi) = conn.backend_idx {
            let be = vip.be_mut(bi);
            if conn.local_port != 0 {
                self.by_port[usize::from(conn.local_port)] = NO_CONN;
                self.ports.push_back(conn.local_port);
            }
            if conn.opened {
                be.counters.active -= 1;
            }
            vip.unref_backend(bi);
        }
        vip.counters.active -= 1;
        if vip.counters.active == 0 && !vip.configured {
            debug_assert_eq!(vip.counters.half_open, 0, "half-open gauge leaked");
            // The last connection of a removed VIP: its drain is over.
            self.vips[conn.vip] = None;
            self.free_vips.push(conn.vip);
        }
        self.timers.set(id as u32, None);
        self.free_ids.push(id);
        if self.spare.len() < self.max_spare {
            self.spare.push(conn);
        }
    }

    /// The client left LISTEN/SYN-RECEIVED, or the connection is released:
    /// out of `handshaking`, its VIP's `half_open` gauge down by one (once:
    /// `handshake_pos` is taken).
    pub(super) fn unlist_handshake(&mut self, id: usize) {
        let Some(conn) = self.conns[id].as_mut() else {
            return;
        };
        let Some(pos) = conn.handshake_pos.take() else {
            return;
        };
        conn.half_open_deadline = None;
        let vip = vip_mut(&mut self.vips, conn.vip);
        debug_assert!(vip.counters.half_open > 0, "half-open gauge underflow");
        vip.counters.half_open = vip.counters.half_open.saturating_sub(1);
        self.handshaking.swap_remove(pos);
        if let Some(&moved) = self.handshaking.get(pos) {
            if let Some(c) = self.conns[moved].as_mut() {
                c.handshake_pos = Some(pos);
            }
        }
    }
}

/// The earlier of two optional deadlines (`None`: no deadline).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
