//! What the generator's clients and backends say: fixed HTTP/1.1-shaped
//! requests and responses, checked byte for byte on both ends.
//!
//! Invariants: a client has at most one request outstanding per connection
//! (so any byte beyond the expected response is an error); a response is
//! counted only once every byte of it matched; a backend answers only a
//! request that matched byte for byte. Bulk payload is a fixed pattern
//! (`PATTERN[i] = i % 251`) checked at its stream offset, so a lost,
//! duplicated or reordered byte is caught.

use crate::Mode;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpEndpoint};

/// Length of the bulk pattern's period (a prime, so it never lines up with
/// segment or buffer sizes).
const PERIOD: usize = 251;
/// The bulk pattern, long enough for any single send or receive window.
pub const PATTERN_LEN: usize = 512 * 1024 + PERIOD;

/// The request a client sends and a backend expects, per mode.
pub fn request(mode: Mode) -> &'static [u8] {
    match mode {
        Mode::Conn => b"GET / HTTP/1.1\r\nHost: fulcrum-loadgen\r\nConnection: close\r\n\r\n",
        Mode::Keepalive => b"GET / HTTP/1.1\r\nHost: fulcrum-loadgen\r\n\r\n",
        Mode::Bulk => b"GET /bulk HTTP/1.1\r\nHost: fulcrum-loadgen\r\n\r\n",
    }
}

/// The fixed messages of one run (built once, before the loop).
pub struct Messages {
    pub request: &'static [u8],
    /// The whole response (conn/keepalive), or the header before the
    /// endless pattern (bulk).
    pub response: Vec<u8>,
    pub pattern: Vec<u8>,
}

impl Messages {
    pub fn new(mode: Mode, body: usize) -> Messages {
        let response = match mode {
            Mode::Bulk => b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec(),
            Mode::Conn | Mode::Keepalive => {
                let close = if mode == Mode::Conn { "Connection: close\r\n" } else { "" };
                let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n{close}\r\n").into_bytes();
                r.extend((0..body).map(|i| b'a' + (i % 26) as u8));
                r
            }
        };
        Messages {
            request: request(mode),
            response,
            pattern: (0..PATTERN_LEN).map(|i| (i % PERIOD) as u8).collect(),
        }
    }
}

pub use fulcrum_loadgen_status::Counters;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not connected; may start a connection.
    Free,
    /// Connecting, or waiting for its response.
    Active,
    /// Response complete (conn mode): waiting for the close to finish.
    Closing,
}

/// One client connection slot: a smoltcp socket reused for connection after
/// connection.
pub struct Client {
    handle: SocketHandle,
    phase: Phase,
    sent: usize,
    got: usize,
    /// Bulk: payload bytes verified on this connection.
    offset: u64,
    /// When the current request (or connection attempt) began.
    since: Instant,
}

/// A shard's clients: one local address, its sockets, its next local port.
pub struct Clients {
    pub addr: IpAddress,
    pub slots: Vec<Client>,
    next_port: u16,
}

impl Clients {
    pub fn new(addr: IpAddress, sockets: &mut SocketSet<'static>, n: usize, rx: usize, tx: usize, first_port: u16) -> Clients {
        let slots = (0..n)
            .map(|_| {
                let s = new_socket(rx, tx);
                Client {
                    handle: sockets.add(s),
                    phase: Phase::Free,
                    sent: 0,
                    got: 0,
                    offset: 0,
                    since: Instant::ZERO,
                }
            })
            .collect();
        Clients { addr, slots, next_port: first_port }
    }

    fn port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX { 1024 } else { p + 1 };
        p
    }

    /// Advances every slot; `may_start` says whether a free slot may open a
    /// new connection (and is decremented when one does). Returns whether
    /// anything was written, connected or closed (so egress is due).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        mode: Mode,
        msg: &Messages,
        cx: &mut smoltcp::iface::Context,
        sockets: &mut SocketSet<'static>,
        vip: IpEndpoint,
        now: Instant,
        timeout: smoltcp::time::Duration,
        may_start: &mut u64,
        c: &mut Counters,
    ) -> bool {
        let mut changed = false;
        for i in 0..self.slots.len() {
            let handle = self.slots[i].handle;
            let mut phase = self.slots[i].phase;
            if phase == Phase::Closing {
                let s = sockets.get_mut::<tcp::Socket>(handle);
                let slot = &mut self.slots[i];
                if matches!(s.state(), State::Closed | State::TimeWait) {
                    // TIME-WAIT is not kept: a port comes back after 64k connections.
                    slot.phase = Phase::Free;
                    c.closed_ok += 1;
                    phase = Phase::Free;
                } else if now - slot.since > timeout {
                    c.timeouts += 1;
                    s.abort();
                    slot.phase = Phase::Free;
                    changed = true;
                    continue;
                } else {
                    continue;
                }
            }
            if phase == Phase::Free {
                if *may_start == 0 {
                    continue;
                }
                let port = self.port();
                let s = sockets.get_mut::<tcp::Socket>(handle);
                // Closed (a fresh socket, or one whose connection ended):
                // abort() then connect() resets it, so no RST is sent for the old one.
                s.abort();
                if s.connect(cx, vip, (self.addr, port)).is_err() {
                    continue;
                }
                *may_start -= 1;
                c.connects += 1;
                let slot = &mut self.slots[i];
                slot.phase = Phase::Active;
                (slot.sent, slot.got, slot.offset, slot.since) = (0, 0, 0, now);
                changed = true;
                continue;
            }
            let s = sockets.get_mut::<tcp::Socket>(handle);
            let slot = &mut self.slots[i];
            // Active.
            if s.can_send() && slot.sent < msg.request.len() {
                slot.sent += s.send_slice(&msg.request[slot.sent..]).unwrap_or(0);
                changed = true;
            }
            if s.can_recv() {
                let (mut bad, mut done) = (false, false);
                match mode {
                    Mode::Conn | Mode::Keepalive => {
                        let want = &msg.response;
                        // The ring may hand its bytes over in two pieces.
                        while let Ok(n) = s.recv(|buf| {
                            let k = buf.len().min(want.len() - slot.got);
                            if k < buf.len() || buf[..k] != want[slot.got..slot.got + k] {
                                bad = true;
                            }
                            slot.got += k;
                            (buf.len(), buf.len())
                        }) {
                            if n == 0 || bad {
                                break;
                            }
                        }
                        done = !bad && slot.got == want.len();
                    }
                    Mode::Bulk => {
                        let head = &msg.response;
                        while let Ok(n) = s.recv(|buf| {
                            let mut used = 0;
                            if slot.got < head.len() {
                                let k = buf.len().min(head.len() - slot.got);
                                if buf[..k] != head[slot.got..slot.got + k] {
                                    bad = true;
                                }
                                slot.got += k;
                                used = k;
                            }
                            let rest = &buf[used..];
                            if !rest.is_empty() {
                                let o = (slot.offset % PERIOD as u64) as usize;
                                let k = rest.len().min(PATTERN_LEN - o);
                                if rest[..k] != msg.pattern[o..o + k] {
                                    bad = true;
                                }
                                slot.offset += k as u64;
                                c.bulk_bytes += k as u64;
                                used += k;
                            }
                            (used, used)
                        }) {
                            if n == 0 || bad {
                                break;
                            }
                        }
                        slot.since = now;
                    }
                }
                // Reading opens the window: egress is due.
                changed = true;
                if bad {
                    c.bad_responses += 1;
                    s.abort();
                    slot.phase = Phase::Free;
                    changed = true;
                    continue;
                }
                if done {
                    c.responses += 1;
                    match mode {
                        Mode::Conn => {
                            s.close();
                            slot.phase = Phase::Closing;
                        }
                        Mode::Keepalive => {
                            (slot.sent, slot.got) = (0, 0);
                            if s.can_send() {
                                slot.sent = s.send_slice(msg.request).unwrap_or(0);
                            }
                        }
                        Mode::Bulk => {}
                    }
                    slot.since = now;
                    changed = true;
                    continue;
                }
            }
            let ended = matches!(s.state(), State::Closed | State::TimeWait | State::CloseWait | State::LastAck | State::Closing)
                || (!s.may_recv() && s.state() != State::SynSent);
            if ended {
                c.failed += 1;
                s.abort();
                slot.phase = Phase::Free;
                changed = true;
            } else if now - slot.since > timeout {
                c.timeouts += 1;
                s.abort();
                slot.phase = Phase::Free;
                changed = true;
            }
        }
        changed
    }

    /// Connections in progress (not free).
    pub fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.phase != Phase::Free).count()
    }
}

/// One backend connection slot: a listening socket, then a served connection.
pub struct Backend {
    handle: SocketHandle,
    active: bool,
    got: usize,
    /// Response bytes still to send (conn/keepalive), from `pos`.
    pos: usize,
    sending: bool,
    /// Bulk: pattern bytes sent so far.
    offset: u64,
    streaming: bool,
}

/// A shard's backend sockets: one address and port, all idle ones listening.
pub struct Backends {
    pub port: u16,
    pub slots: Vec<Backend>,
}

impl Backends {
    pub fn new(port: u16, sockets: &mut SocketSet<'static>, n: usize, rx: usize, tx: usize) -> Backends {
        let slots = (0..n)
            .map(|_| {
                let mut s = new_socket(rx, tx);
                s.listen(port).expect("a fresh socket listens");
                Backend {
                    handle: sockets.add(s),
                    active: false,
                    got: 0,
                    pos: 0,
                    sending: false,
                    offset: 0,
                    streaming: false,
                }
            })
            .collect();
        Backends { port, slots }
    }

    /// Serves every connection; idle slots go back to listening. Returns
    /// whether anything was written or closed.
    pub fn step(&mut self, mode: Mode, msg: &Messages, sockets: &mut SocketSet<'static>, c: &mut Counters) -> bool {
        let mut changed = false;
        for slot in &mut self.slots {
            let s = sockets.get_mut::<tcp::Socket>(slot.handle);
            match s.state() {
                State::Listen => continue,
                State::Closed | State::TimeWait => {
                    // Connection over (TIME-WAIT not kept): listen again.
                    // abort() then listen() resets without sending an RST.
                    s.abort();
                    let _ = s.listen(self.port);
                    (slot.active, slot.got, slot.pos, slot.sending, slot.offset, slot.streaming) = (false, 0, 0, false, 0, false);
                    continue;
                }
                _ => {}
            }
            if !slot.active {
                slot.active = true;
                c.accepted += 1;
            }
            if s.can_recv() {
                let req = msg.request;
                let mut bad = false;
                let mut complete = 0u64;
                while let Ok(n) = s.recv(|buf| {
                    let mut used = 0;
                    while used < buf.len() {
                        let k = (buf.len() - used).min(req.len() - slot.got);
                        if buf[used..used + k] != req[slot.got..slot.got + k] {
                            bad = true;
                            return (buf.len(), used);
                        }
                        used += k;
                        slot.got += k;
                        if slot.got == req.len() {
                            slot.got = 0;
                            complete += 1;
                        }
                    }
                    (used, used)
                }) {
                    if n == 0 || bad {
                        break;
                    }
                }
                if bad {
                    c.bad_requests += 1;
                    s.abort();
                    changed = true;
                    continue;
                }
                if complete > 0 {
                    c.served += complete;
                    match mode {
                        Mode::Bulk => slot.streaming = true,
                        // One request outstanding per connection: a second
                        // one before the response would be a client bug,
                        // answered all the same.
                        _ => {
                            slot.sending = true;
                            slot.pos = 0;
                        }
                    }
                }
            }
            if slot.sending && s.can_send() {
                let n = s.send_slice(&msg.response[slot.pos..]).unwrap_or(0);
                slot.pos += n;
                changed |= n > 0;
                if slot.pos == msg.response.len() {
                    slot.sending = false;
                    if mode == Mode::Conn {
                        s.close();
                    }
                }
            }
            if slot.streaming && s.can_send() {
                if slot.pos < msg.response.len() {
                    slot.pos += s.send_slice(&msg.response[slot.pos..]).unwrap_or(0);
                }
                if slot.pos == msg.response.len() {
                    let pattern = &msg.pattern;
                    let offset = &mut slot.offset;
                    let _ = s.send(|buf| {
                        let o = (*offset % PERIOD as u64) as usize;
                        let k = buf.len().min(PATTERN_LEN - o);
                        buf[..k].copy_from_slice(&pattern[o..o + k]);
                        *offset += k as u64;
                        (k, ())
                    });
                }
                changed = true;
            }
            if !s.may_recv() && s.may_send() && !slot.sending {
                // The client closed its side: close ours.
                s.close();
                changed = true;
            }
        }
        changed
    }
}

fn new_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx]), tcp::SocketBuffer::new(vec![0; tx]));
    s.set_nagle_enabled(false);
    s
}
