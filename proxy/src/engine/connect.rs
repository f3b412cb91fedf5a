//! Connecting to backends and failing over: attempts follow the flow's Maglev
//! preference order in the VIP's current table, each from a local port this
//! lcore owns, each given `connect_timeout`, at most `connect_tries` of them;
//! then the client, still in SYN-RECEIVED, is reset (it sees a refusal). A
//! backend's local port goes back to the tail of the free-port FIFO.

use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpListenEndpoint};

use std::net::SocketAddrV4;

use super::conn::{Conn, Phase};
use super::vip::{vip_mut, VipState};
use super::{millisecond_clock, Engine, NO_CONN};
use crate::proxy_protocol::Header;

impl Engine {
    /// Starts the next backend attempt in Maglev preference order, or gives
    /// up and resets the client (still in SYN-RECEIVED: it sees a refusal;
    /// a cookie connection's client is established already and sees a RST).
    pub(super) fn connect_next(&mut self, id: usize, now: Instant) {
        let conn = self.conns[id].as_mut().expect("live");
        let vip = vip_mut(&mut self.vips, conn.vip);
        if let Some(old) = conn.backend_idx.take() {
            if conn.local_port != 0 {
                self.by_port[usize::from(conn.local_port)] = NO_CONN;
                self.ports.push_back(conn.local_port);
                conn.local_port = 0;
            }
            vip.unref_backend(old);
        }
        // Retries follow the VIP's current table (a reconfiguration between
        // two tries moves the rest of the attempts to the new backends).
        let next = if conn.tries < conn.max_tries {
            vip.table
                .preference(conn.hash)
                .nth(usize::from(conn.tries))
                .map(|i| vip.table_slots[i])
        } else {
            None
        };
        let port = next.and_then(|_| self.ports.pop_front());
        let (Some(bi), Some(port)) = (next, port) else {
            if next.is_some() {
                vip.counters.drop_no_port += 1;
            } else {
                vip.counters.drop_connect_failed += 1;
            }
            conn.client.get_mut::<tcp::Socket>(conn.ch).abort();
            conn.phase = Phase::Closing;
            return;
        };
        conn.tries += 1;
        let be = vip.be_mut(bi);
        be.refs += 1;
        let b = conn.backend.get_mut::<tcp::Socket>(conn.bh);
        b.abort();
        tune_backend(b, self.ack_delay);
        let connected = b.connect(
            self.iface.context(),
            (IpAddress::Ipv4(be.cfg.address), be.cfg.port),
            IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(self.addr)),
                port,
            },
        );
        be.counters.attempts += 1;
        conn.backend_idx = Some(bi);
        conn.local_port = port;
        conn.backend_ep = SocketAddrV4::new(be.cfg.address, be.cfg.port);
        self.by_port[usize::from(port)] = id as u32;
        conn.phase = Phase::Connecting {
            // An unconnectable backend (port 0, unspecified address) fails at
            // once through the normal failure path.
            deadline: if connected.is_ok() {
                now + conn.connect_timeout
            } else {
                now
            },
        };
    }
}

/// A connection waiting for its backend. Once the backend is ESTABLISHED:
/// the PROXY protocol header first, then the client's held SYN-ACK is
/// released and relaying starts. Returns false when this backend failed
/// (refused by RST, or no answer by `deadline`): counted and aborted; the
/// caller tries the next one ([`Engine::connect_next`]).
pub(super) fn connecting(
    conn: &mut Conn,
    vip: &mut VipState,
    deadline: Instant,
    now: Instant,
) -> bool {
    let b = conn.backend.get_mut::<tcp::Socket>(conn.bh);
    let bi = conn.backend_idx.expect("connecting to a backend");
    match b.state() {
        State::Established => {
            let be = &mut vip.be_mut(bi).counters;
            be.opened += 1;
            be.active += 1;
            conn.opened = true;
            let vip_ep = vip.cfg.endpoint();
            if let Some(h) = Header::encode(conn.proxy_protocol, conn.client_ep, vip_ep) {
                // Fits: buffers are at least 1 KiB and empty.
                let _ = b.send_slice(h.as_bytes());
            }
            let client = conn.client.get_mut::<tcp::Socket>(conn.ch);
            client.pause_synack(false);
            conn.phase = Phase::Proxying;
            conn.last_active = now;
            conn.backend_last = State::Established;
            // SYN-RECEIVED, or for a cookie connection whatever its client
            // reached meanwhile (ESTABLISHED, CLOSE-WAIT).
            conn.client_last = client.state();
        }
        State::SynSent if now < deadline => {}
        _ => {
            // Refused (RST) or no answer in time.
            b.abort();
            vip.be_mut(bi).counters.connect_failures += 1;
            return false;
        }
    }
    true
}

/// Backend-facing socket. Reno: backends are a LAN hop away (sub-millisecond
/// RTT), where Cubic gains nothing over Reno, and Reno is integer-only and
/// cheaper per ACK.
///
/// TCP timestamps from a clock shared by every connection: local ports are
/// reused far sooner than a backend's 60 s TIME-WAIT ends, and a backend
/// accepts a new SYN on a TIME-WAIT 4-tuple only when its timestamp (or
/// sequence number, which smoltcp picks at random) is newer (RFC 6191).
fn tune_backend(s: &mut tcp::Socket, ack_delay: Option<Duration>) {
    s.set_nagle_enabled(false);
    s.set_ack_delay(ack_delay);
    s.set_congestion_control(CongestionControl::Reno);
    s.set_tsval_generator(Some(millisecond_clock));
}
