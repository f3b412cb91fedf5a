//! Relaying an open connection: bytes move ring to ring ([`splice`]) never
//! beyond what the destination has room for (a slow reader closes its
//! writer's window, memory stays bounded) nor beyond the VIP's bandwidth
//! budget (bytes wait in receive buffers: back pressure, no drop). FIN is
//! propagated one direction at a time once its data is relayed (half-close);
//! RST and the idle timeout end both sides.

use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;

use super::conn::{Conn, Phase, BOTH};
use super::vip::VipState;
use crate::limits::bandwidth_burst;

/// An open connection: relays bytes both ways within the VIP's bandwidth
/// budget, propagates FIN one direction at a time (half-close) and RST, and
/// resets both sides after the idle timeout.
pub(super) fn relay(conn: &mut Conn, vip: &mut VipState, now: Instant) {
    let c = conn.client.get_mut::<tcp::Socket>(conn.ch);
    let b = conn.backend.get_mut::<tcp::Socket>(conn.bh);
    let bi = conn.backend_idx.expect("proxying to a backend");
    // Bandwidth: a byte budget from the VIP's bucket; what it
    // does not cover stays in the receive buffers (windows
    // close: back pressure) until `settle`'s wake-up at refill.
    let budget = match vip.limits.bandwidth {
        Some(bw) => {
            vip.bw_bucket.refill(now, bw, bandwidth_burst(bw));
            usize::try_from(vip.bw_bucket.available()).unwrap_or(usize::MAX)
        }
        None => usize::MAX,
    };
    let (up, down) = if conn.down_first {
        let down = splice(b, c, budget);
        (splice(c, b, budget - down), down)
    } else {
        let up = splice(c, b, budget);
        (up, splice(b, c, budget - up))
    };
    conn.down_first = !conn.down_first;
    if up + down > 0 {
        // Both rings changed: the writer's window, the reader's send queue.
        conn.touched = BOTH;
    }
    conn.throttled = false;
    if vip.limits.bandwidth.is_some() {
        vip.bw_bucket.take((up + down) as u64);
        // `splice` stops at an empty source, a full destination
        // or the budget: data left with room for it is throttled.
        if (c.recv_queue() > 0 && b.can_send()) || (b.recv_queue() > 0 && c.can_send()) {
            conn.throttled = true;
            // Waiting for tokens is not idleness.
            conn.last_active = now;
            vip.counters.throttled_splices += 1;
        }
    }
    if up + down > 0 {
        conn.last_active = now;
        let be = &mut vip.be_mut(bi).counters;
        be.bytes_to_backend += up as u64;
        be.bytes_from_backend += down as u64;
        vip.counters.bytes_from_clients += up as u64;
        vip.counters.bytes_to_clients += down as u64;
    }
    // Half-close: a FIN one way (once its data is relayed) closes
    // only that direction; the other keeps flowing.
    if !conn.fin_to_backend && peer_finished(c) {
        b.close();
        conn.fin_to_backend = true;
        conn.touched = BOTH;
    }
    if !conn.fin_to_client && peer_finished(b) {
        c.close();
        conn.fin_to_client = true;
        conn.touched = BOTH;
    }
    if was_reset(c.state(), conn.client_last) {
        // A reset SYN-RECEIVED socket sits in LISTEN: close it.
        c.abort();
        b.abort();
        vip.counters.client_resets += 1;
        conn.phase = Phase::Closing;
        conn.touched = BOTH;
    } else if was_reset(b.state(), conn.backend_last) {
        c.abort();
        vip.counters.backend_resets += 1;
        vip.be_mut(bi).counters.resets += 1;
        conn.phase = Phase::Closing;
        conn.touched = BOTH;
    } else if now >= conn.last_active + conn.idle_timeout {
        c.abort();
        b.abort();
        vip.counters.drop_idle_timeout += 1;
        conn.phase = Phase::Closing;
        conn.touched = BOTH;
    }
    conn.client_last = c.state();
    conn.backend_last = b.state();
}

/// Moves bytes from `from`'s receive buffer into `to`'s send buffer, never
/// more than `to` has room for: what cannot move stays in `from`, whose
/// window then closes, so a slow reader stalls its writer instead of growing
/// memory. One copy, straight from ring to ring. At most `budget` bytes
/// (bandwidth limit). An empty source costs one length check (most
/// services find one direction empty).
fn splice(from: &mut tcp::Socket, to: &mut tcp::Socket, budget: usize) -> usize {
    let mut moved = 0;
    // The receive ring hands out at most two contiguous pieces (wrap-around).
    for _ in 0..2 {
        if from.recv_queue() == 0 || !to.can_send() || moved >= budget {
            break;
        }
        let left = budget - moved;
        let n = from
            .recv(|data| {
                let data = &data[..data.len().min(left)];
                let n = to.send_slice(data).unwrap_or(0);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        moved += n;
    }
    moved
}

/// The peer sent FIN and everything before it has been relayed.
fn peer_finished(s: &tcp::Socket) -> bool {
    s.recv_queue() == 0
        && matches!(
            s.state(),
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        )
}

/// CLOSED reached other than by the orderly ways (ACK of our FIN in
/// LAST-ACK, or TIME-WAIT expiry): the peer reset the connection. A passive
/// socket reset in SYN-RECEIVED goes back to LISTEN instead (RFC 793): a
/// client that gave up before our held SYN-ACK left answers it with RST.
fn was_reset(now: State, before: State) -> bool {
    (now == State::Closed && !matches!(before, State::LastAck | State::TimeWait | State::Closed))
        || (now == State::Listen && before == State::SynReceived)
}
