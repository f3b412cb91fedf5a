//! Accepting a SYN (or the ACK of a valid SYN cookie): admission
//! (concurrency, client rate, VIP rate, a backend), then a connection whose
//! client socket listens on the VIP:port, with its SYN-ACK held until a
//! backend is up (a cookie's client socket takes the cookie as its ISN instead). Rate tokens are taken only
//! from an admitted SYN; a refused SYN is answered with RST and counted by
//! reason. See the engine's "Accepting" and "Limits".

use std::net::{IpAddr, SocketAddrV4};

use fulcrum_maglev::{addr_hash, flow_hash};
use fulcrum_model::Affinity;
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpListenEndpoint};

use super::conn::{Conn, FlowKey, Phase, BOTH};
use super::cookie::cookie_isn;
use super::vip::vip_mut;
use super::{millisecond_clock, smol, Engine};

impl Engine {
    /// Admission, in order: concurrency limit (`drop_limit`), the client's
    /// rate (`drop_client_rate`), the VIP's rate (`drop_rate`), a backend
    /// with weight (`drop_no_backend`). Rate tokens are taken only from an
    /// admitted SYN, so a client over its limit does not use up the VIP's.
    ///
    /// `cookie`: admitting the ACK of a validated SYN cookie: the client
    /// socket will take the cookie as its ISN, sends its SYN-ACK without
    /// holding it (the client has had it already) and is not half-open.
    /// Otherwise the connection is half-open until its client leaves
    /// SYN-RECEIVED (listed in `handshaking`, counted in the VIP's
    /// `half_open`), for at most `half_open_timeout`.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        vi: usize,
        key: FlowKey,
        cookie: Option<u32>,
    ) -> Option<usize> {
        let seed = self.flow_seed;
        let vip = vip_mut(&mut self.vips, vi);
        if vip.counters.active >= u64::from(vip.cfg.max_connections) {
            vip.counters.drop_limit += 1;
            return None;
        }
        let client_entry = match vip.limits.client_rate {
            Some(rate) => {
                let (i, evicted) = self.clients.lookup((vip.uid, key.remote), now, rate);
                if evicted {
                    vip.counters.client_table_evictions += 1;
                    self.counters.client_table_evictions += 1;
                }
                if self.clients.bucket(i).available() == 0 {
                    vip.counters.drop_client_rate += 1;
                    return None;
                }
                Some(i)
            }
            None => None,
        };
        if let Some(rate) = vip.limits.new_conn_rate {
            vip.conn_bucket
                .refill(now, u64::from(rate.per_sec), u64::from(rate.burst));
            if vip.conn_bucket.available() == 0 {
                vip.counters.drop_rate += 1;
                return None;
            }
        }
        let hash = match vip.cfg.affinity {
            Affinity::Flow => flow_hash(
                seed,
                IpAddr::V4(key.remote),
                key.remote_port,
                IpAddr::V4(key.local),
                key.local_port,
                6,
            ),
            Affinity::Client => addr_hash(seed, IpAddr::V4(key.remote)),
        };
        if vip.table.lookup(hash).is_none() {
            vip.counters.drop_no_backend += 1;
            return None;
        }
        if let Some(i) = client_entry {
            self.clients.bucket(i).take(1);
        }
        if vip.limits.new_conn_rate.is_some() {
            vip.conn_bucket.take(1);
        }
        vip.counters.accepted += 1;
        vip.counters.active += 1;
        let (connect_timeout, idle_timeout) = (
            smol(vip.cfg.connect_timeout()),
            smol(vip.cfg.idle_timeout()),
        );
        let (max_tries, proxy_protocol) = (vip.cfg.connect_tries, vip.cfg.proxy_protocol);

        let mut conn = self
            .spare
            .pop()
            .unwrap_or_else(|| Conn::new(self.buffer_size));
        let client = conn.client.get_mut::<tcp::Socket>(conn.ch);
        // Closed or TIME-WAIT (a released slot): abort + listen forgets it silently.
        client.abort();
        client
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(key.local)),
                port: key.local_port,
            })
            .expect("closed socket, non-zero port");
        // After `listen`, which clears it.
        client.set_initial_seq_no(cookie.map(cookie_isn));
        client.pause_synack(cookie.is_none());
        tune_client(client, self.ack_delay);
        conn.vip = vi;
        conn.client_ep = SocketAddrV4::new(key.remote, key.remote_port);
        conn.connect_timeout = connect_timeout;
        conn.idle_timeout = idle_timeout;
        conn.max_tries = max_tries;
        conn.proxy_protocol = proxy_protocol;
        conn.throttled = false;
        conn.down_first = false;
        conn.hash = hash;
        conn.tries = 0;
        conn.backend_idx = None;
        conn.opened = false;
        conn.local_port = 0;
        conn.phase = Phase::New;
        conn.last_active = now;
        conn.client_last = State::Listen;
        conn.backend_last = State::Closed;
        conn.fin_to_backend = false;
        conn.fin_to_client = false;
        conn.dirty = false;
        conn.touched = 0;
        conn.client_at = None;
        conn.backend_at = None;
        conn.cookie = cookie.is_some();
        let half_open = cookie.is_none();
        conn.handshake_pos = half_open.then_some(self.handshaking.len());
        conn.half_open_deadline = half_open.then_some(now + self.half_open_timeout);

        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.conns[id] = Some(conn);
        if half_open {
            self.handshaking.push(id);
            vip_mut(&mut self.vips, vi).counters.half_open += 1;
        }
        self.flows.insert(key, id);
        self.mark_dirty(id, BOTH);
        Some(id)
    }
}

/// Client-facing socket. Nagle off: the proxy forwards what the endpoints
/// wrote as soon as it has it; holding small segments back would add a round
/// trip to every small request or response. Cubic: clients are across the
/// Internet, where the bandwidth-delay product is large and Cubic's
/// RTT-independent window growth recovers far faster than Reno (why it is the
/// Linux default). Set on every reuse: it also resets the controller's state.
///
/// TCP timestamps from the engine's one millisecond clock, as backend
/// sockets: a cookie SYN-ACK's TSval comes from that clock, and a client's
/// PAWS check drops segments whose TSval goes back (smoltcp turns timestamps
/// off again if the client's SYN has none).
fn tune_client(s: &mut tcp::Socket, ack_delay: Option<Duration>) {
    s.set_nagle_enabled(false);
    s.set_ack_delay(ack_delay);
    s.set_congestion_control(CongestionControl::Cubic);
    s.set_tsval_generator(Some(millisecond_clock));
}
