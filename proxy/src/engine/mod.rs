//! The per-lcore proxy engine.
//!
//! # Shape
//! One smoltcp [`Interface`] (addresses, neighbour cache, routes) and, per
//! connection, two one-socket [`SocketSet`]s: the client-facing socket and the
//! backend-facing socket. smoltcp walks the whole set it is given for every
//! ingress segment, every egress pass and every `poll_at`; giving it a set of
//! one socket makes that walk constant. The engine does the dispatch itself:
//! it classifies each frame's 4-tuple, finds its connection (a client side
//! by one hash lookup of the 4-tuple; a backend side by its local port, which
//! indexes a table directly, since a port is held by one connection at a
//! time) and hands the frame to `poll_ingress_single` with that connection's
//! set. This is sharding taken to shards of one connection: both sockets of a
//! connection share its shard, no port arithmetic ties shards to local ports,
//! and a hot shard cannot exist.
//!
//! Only connections with work are visited: those a frame touched this poll
//! (the dirty list) and those whose deadline passed ([`Timers`], one entry per
//! connection: the earliest of smoltcp's `poll_at` for its sets, the connect
//! timeout and the idle timeout). Cost per packet is therefore O(1) plus an
//! O(log n) heap update, independent of how many connections are open.
//! Within a serviced connection only the sides it may have changed
//! (`Conn::touched`: the frame's side; both when bytes were relayed, a FIN
//! propagated, a socket aborted or connected, on a timer, or after an ARP
//! aimed at us) are polled for egress and asked smoltcp's `poll_at`; the
//! other side's socket is as its last egress pass left it, and its `poll_at`
//! is the one cached then.
//!
//! # Accepting
//! There is no listen backlog in smoltcp, so no listener waits in advance: a
//! SYN to a VIP:port with no connection is admitted by creating a connection
//! whose client socket listens on the VIP:port, then the SYN is handed to it.
//! A SYN beyond the VIP's limit (or with no backend) goes to an empty socket
//! set and smoltcp answers it with RST, as it does for any segment of an
//! unknown connection. That is below the SYN-flood threshold; above it, SYNs
//! are answered with cookies and connections are created from the ACKs that
//! return them (next section).
//!
//! # SYN-ACK held until the backend is up
//! The client socket pauses its SYN-ACK (`socket-tcp-pause-synack`) while the
//! engine connects to the backend. Why: a client then only sees an established
//! connection when there is a backend behind it; if every backend fails it
//! gets a RST to its SYN (connection refused) instead of an accepted
//! connection that is reset later, and no client data needs buffering before
//! a backend exists. A client's retransmitted SYN is ignored by the paused
//! socket, so `connect_timeout * connect_tries` should stay below the
//! client's SYN retry budget (Linux: 1 s, 3 s, 7 s, ...), and below
//! `half_open_timeout`, which ends a connection whose client is still
//! SYN-RECEIVED that long after admission (both sides reset,
//! `drop_half_open_timeout`; a deadline filed in the timer heap, no scan).
//!
//! # SYN flood
//! The price of holding the SYN-ACK is that a SYN spends a connection, two
//! sockets, a local port and a backend connection before the client has
//! shown it exists; a spoofed flood would fill the backends. So each VIP has
//! a `half_open` gauge on each engine (connections listed in `handshaking`:
//! +1 at admission, -1 when the client leaves LISTEN/SYN-RECEIVED or the
//! connection is released, once), and `syn_cookies`:
//! - `Auto`: a SYN that finds `syn_cookie_threshold` half-open connections
//!   turns the VIP's *flood mode* on (`VipSnapshot::flood_since`). It goes
//!   off only after a whole second with fewer than `threshold` SYNs to the
//!   VIP while fewer than `threshold` are half-open: without that
//!   hysteresis, spoofed half-open entries expiring would make room for new
//!   spoofed SYNs to reach backends again. The one-second windows are
//!   evaluated by a tick from `poll` (and `poll_at` includes it while some
//!   VIP is in flood mode), so flood mode ends even when SYNs stop.
//! - `Always`: every SYN is answered with a cookie. `Off`: never, and ACKs
//!   are not checked for cookies.
//!
//! In flood mode a SYN (after the flag and checksum checks) is answered at
//! once with a SYN-ACK built straight into the TX token the SYN came with
//! (`cookie`): its sequence number is a SYN cookie ([`crate::syncookie`]),
//! and nothing is kept: no socket, buffer, local port, rate token or backend
//! connection. The SYN-ACK goes to the SYN's source MAC address, without a
//! neighbour lookup: the rule the dataplane follows for ARP and ping replies
//! (reply to whom it came from). It offers our MSS, the window (unscaled) and,
//! only if the client sent a timestamp, the window scale the client socket
//! will use and SACK; the client's own window scale and SACK go into our
//! TSval, taken from the sockets' millisecond clock (so the connection's
//! later timestamps never go back: the client's PAWS check would drop them).
//!
//! An ACK (no SYN, no RST) to a VIP for no connection, in any mode but `Off`
//! and whether or not this engine is in flood mode (another instance sharing
//! the seed may have sent the cookie), has its checksums verified and its
//! acknowledgment number - 1 validated as a cookie with the current or the
//! previous epoch's key (64-second epochs of Unix time; keys derived from
//! the seed, cached, recomputed when the epoch changes). An invalid one is
//! counted and answered with RST. A valid one goes through admission like a
//! SYN (a refusal resets the client), then becomes a connection: its client
//! socket listens, takes the cookie as its ISN (the one smoltcp hook,
//! `set_initial_seq_no`), is fed the SYN the cookie stands for (built in
//! scratch space), sends its SYN-ACK into a discarding token (smoltcp opens
//! its receive window only once it has advertised it) and then gets the real
//! ACK, payload included: it is ESTABLISHED, never half-open. An on-link
//! client's MAC is taught to smoltcp with an ARP reply the engine feeds it,
//! so its first segment need not wait on ARP. The backend is connected to as
//! usual; data the client sent waits in the client socket until then. So
//! what a client sees: below the threshold, the SYN-ACK comes once a backend
//! is up and a dead pool gives a RST to the SYN; in flood mode the handshake
//! completes at once and a dead pool gives a RST after the handshake.
//!
//! # TIME-WAIT
//! smoltcp holds TIME-WAIT for 10 s. The engine does not: a connection whose
//! two sockets are closed or in TIME-WAIT, with nothing left to transmit, is
//! released at once and its sockets reused (a reused socket forgets its
//! TIME-WAIT without sending anything). A late retransmitted FIN then meets no
//! connection and is answered with RST, which ends the peer's LAST-ACK just as
//! well. Local ports go back to the tail of a FIFO, so a port is reused as late
//! as possible, which is what protects the backend's own TIME-WAIT.
//!
//! # Reconfiguration
//! [`Engine::reconfigure`] takes the full VIP list of a new configuration
//! generation; [`Engine::reconfigure_with`] takes the same already validated
//! and with its Maglev tables built ([`VipTables`], built once on a control
//! thread and shared by every lcore through an `Arc`: the lcore only moves
//! pointers and merges lists). Either is called on the lcore between two
//! polls, never per packet. VIPs and backends live in slots whose index never
//! changes while a connection refers to them, matched by `(addr, port)` on
//! every reconfiguration, so counters survive reorderings:
//! - removed VIP: out of `vip_by_endpoint` at once (its SYNs get RST), its
//!   connections drain to their natural end, then its slot is freed;
//! - removed backend, weight 0, `Drain`, `Down`: out of the new Maglev table
//!   (no new connections); connections already on it keep it until they end
//!   (also for `Down`: a health check can be wrong, and a dead backend ends
//!   its connections itself by RST or idle timeout); a removed backend's
//!   slot and counters go with its last connection;
//! - VIP settings (timeouts, tries, PROXY protocol) are copied into each
//!   connection at admission: changes apply to new connections only.
//!
//! # Limits
//! All limits are per engine (each engine enforces its lcore's share of a
//! VIP's limits, [`fulcrum_model::Rate::per_lcore`], applied by
//! [`VipTables::build`]) and need no lock: one engine, one thread. Admission
//! checks, in order, `max_connections`, the client's `client_rate` (token
//! bucket per client address in a fixed-size CLOCK table), the VIP's
//! `new_conn_rate`, then a backend; a refused SYN is answered with RST and
//! counted by reason. `bandwidth` is a byte bucket per VIP, both directions
//! summed, consulted by the splice: when it is empty, bytes stay in the
//! receive buffers (TCP windows close, nothing is dropped) and the connection
//! is given a timer for when the bucket holds a few KiB again, so
//! [`Engine::poll_at`] includes that wake-up. Buckets refill from the `now`
//! given to `poll`.
//!
//! # Rooms
//! - this file: the [`Engine`] struct, its construction and its poll loop
//!   (frames in, dirty connections serviced, transmitted and settled);
//! - `ingress`: frames to the one socket set they concern;
//! - `admit`: accepting a SYN, admission and limits;
//! - `connect`: connecting to backends, failover, the held SYN-ACK;
//! - `cookie`: flood mode, SYN cookies sent and cookie ACKs accepted;
//! - `splice`: relaying bytes, half-close, resets, idle timeout;
//! - `close`: releasing finished connections, filing deadlines;
//! - `reconfigure`: new VIP tables applied between polls;
//! - `neighbors`: our own ARP requests for backends and the gateway;
//! - `report`: counters and snapshots;
//! - `vip`, `conn`: the VIP/backend slots and the connection slot.

mod admit;
mod close;
mod conn;
mod connect;
mod cookie;
mod ingress;
mod neighbors;
mod reconfigure;
mod report;
mod splice;
mod vip;

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use fulcrum_model::steer::owner_of_port;
use smoltcp::iface::{Config, Interface, PollResult, Route, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Cidr};

use crate::config::{ConfigError, EngineConfig, SynCookies};
use crate::counters::EngineCounters;
use crate::limits::ClientTable;
use crate::syncookie::{window_shift, Keys, Seed, SynAckSpec};
use crate::tables::VipTables;
use crate::timer::Timers;

use conn::{Conn, FlowKey, Phase, BACKEND, BOTH, CLIENT};
use ingress::{NoTx, OneFrame};
use vip::{vip_mut, VipState};

/// `Engine::by_port` entry of a port no connection holds.
const NO_CONN: u32 = u32::MAX;

/// Frames taken from the device between two passes over the dirty
/// connections, so a long burst cannot fill receive windows unrelayed.
const INGRESS_BURST: usize = 64;

/// Ethernet, IPv4 and TCP headers without options: our MSS is the frame
/// size less these.
const HEADERS: usize = 14 + 20 + 20;

fn smol(d: std::time::Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch, wrapping: monotonic across connections
/// and engines, as RFC 7323 timestamps must be to protect TIME-WAIT reuse.
/// The one TSval clock of every socket (client and backend side) and of
/// cookie SYN-ACKs.
pub(crate) fn millisecond_clock() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u32)
        .unwrap_or(0)
}

/// One lcore's proxy: owns its connections, fed frames by the dataplane.
pub struct Engine {
    iface: Interface,
    /// What smoltcp is told: checksums computed on transmit, not verified
    /// on receive ([`crate::frame::transmit_only`]).
    caps: DeviceCapabilities,
    /// The checksums verified on receive, by [`crate::frame::classify`]
    /// (`EngineConfig::checksum`: those the NIC did not verify).
    verify: ChecksumCapabilities,
    addr: Ipv4Addr,
    ack_delay: Option<Duration>,
    buffer_size: usize,
    max_spare: usize,
    flow_seed: u64,
    /// Lcores sharing the VIPs' limits (prepared tables must be split for as many).
    lcores: usize,
    /// VIP slots: configured VIPs and removed ones still draining.
    vips: Vec<Option<VipState>>,
    free_vips: Vec<usize>,
    /// Configured VIPs in configuration order (slot indexes).
    vip_order: Vec<usize>,
    next_vip_uid: u32,
    /// Configured VIPs only: SYNs to anything else are not admitted.
    vip_by_endpoint: HashMap<(Ipv4Addr, u16), usize>,
    clients: ClientTable,
    client_table_capacity: usize,
    network: Ipv4Cidr,
    /// The gateway and the static routes' routers (kept resolved).
    routers: Vec<Ipv4Addr>,
    /// Slab of live connections; `free_ids` are its empty slots.
    conns: Vec<Option<Conn>>,
    free_ids: Vec<usize>,
    spare: Vec<Conn>,
    /// The client side of every live connection, by 4-tuple.
    flows: HashMap<FlowKey, usize>,
    /// The backend side of every live connection, by its local port (each
    /// port this lcore owns is held by at most one connection): a direct
    /// index instead of a hash of the 4-tuple; the segment's remote endpoint
    /// is then checked against the connection's `backend_ep`.
    /// `NO_CONN` where no connection holds the port.
    by_port: Box<[u32]>,
    /// This lcore's local ports not in use, least recently used first.
    ports: VecDeque<u16>,
    timers: Timers,
    dirty: Vec<usize>,
    /// Connections whose client has not had its SYN-ACK: woken by ARP, since
    /// smoltcp would otherwise keep a socket waiting for a neighbour silent
    /// for a whole second after the answer arrived.
    handshaking: Vec<usize>,
    /// Bumped whenever smoltcp may have learnt a neighbour (ARP aimed at
    /// us): see `Conn::arp_gen`.
    arp_gen: u32,
    /// Empty set: segments of unknown connections go here and smoltcp answers
    /// them with RST; ARP goes here too (it touches no socket).
    sink: SocketSet<'static>,
    /// On-link backends, the gateway and routers, kept resolved by our own ARP
    /// requests (see [`Engine::refresh_neighbors`]).
    neighbors: Vec<Ipv4Addr>,
    /// Per neighbour (same order): heard from since the last refresh.
    neighbor_heard: Vec<bool>,
    next_neighbor_refresh: Instant,
    mac: EthernetAddress,
    counters: EngineCounters,
    syn_cookies: SynCookies,
    cookie_threshold: u64,
    half_open_timeout: Duration,
    /// Current and previous epoch's cookie keys (updated by `tick`).
    keys: Keys,
    /// Our side of cookie SYN-ACKs (window, MSS, window scale).
    synack: SynAckSpec,
    /// Next flood-window evaluation and key update (see `cookie::tick`).
    next_tick: Instant,
    /// Some VIP is in flood mode (`Auto`): `poll_at` includes `next_tick`.
    flooded: bool,
    /// Frames the engine builds to feed smoltcp itself (a cookie's SYN, an
    /// ARP reply), and where smoltcp's answers to them would go: frame-sized,
    /// allocated once.
    scratch_frame: Vec<u8>,
    scratch_tx: Vec<u8>,
}

impl Engine {
    /// Builds the engine: Maglev tables and its lcore's share of the VIPs'
    /// limits (as [`VipTables::build`] with `config.lcores`), the interface
    /// (our address with its prefix; VIPs are accepted through smoltcp's
    /// AnyIP, filtered by the engine, because smoltcp caps interface
    /// addresses at compile time) and this lcore's port pool.
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let tables = VipTables::build(config.vips.clone(), config.lcores)?;
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = config.mtu;
        caps.checksum = crate::frame::transmit_only(&config.checksum);
        let mut icfg = Config::new(HardwareAddress::Ethernet(config.mac));
        icfg.random_seed = config.random_seed;
        let mut iface =
            Interface::new(icfg, &mut OneFrame::<NoTx>::caps_only(&caps), Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(config.addr), config.prefix_len))
                .expect("a fresh interface has room for one address");
        });
        iface.set_any_ip(true);
        // `validate` checked that the gateway and routes fit (MAX_ROUTES).
        iface.routes_mut().update(|table| {
            let routes = config.gateway.map(Route::new_ipv4_gateway).into_iter().chain(
                config.routes.iter().map(|r| Route {
                    cidr: IpCidr::new(IpAddress::Ipv4(r.prefix), r.prefix_len),
                    via_router: IpAddress::Ipv4(r.via),
                    preferred_until: None,
                    expires_at: None,
                }),
            );
            for route in routes {
                table.push(route).expect("validated: routes fit smoltcp's table");
            }
        });

        let ports = config
            .local_ports
            .clone()
            .filter(|&p| owner_of_port(p, config.lcores) == config.lcore)
            .collect();

        let seed = config.syn_cookie_seed.unwrap_or_else(Seed::process_random);
        let unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let synack = SynAckSpec {
            mac: config.mac,
            window: u16::try_from(config.buffer_size).unwrap_or(u16::MAX),
            mss: u16::try_from(config.mtu - HEADERS).unwrap_or(u16::MAX),
            wscale: window_shift(config.buffer_size),
        };
        let mut engine = Self {
            iface,
            caps,
            verify: config.checksum.clone(),
            addr: config.addr,
            ack_delay: config.ack_delay.map(smol),
            buffer_size: config.buffer_size,
            max_spare: config.max_spare_connections,
            flow_seed: config.flow_seed,
            lcores: config.lcores,
            vips: Vec::new(),
            free_vips: Vec::new(),
            vip_order: Vec::new(),
            next_vip_uid: 0,
            vip_by_endpoint: HashMap::new(),
            clients: ClientTable::new(config.client_table_capacity),
            client_table_capacity: config.client_table_capacity,
            network: Ipv4Cidr::new(config.addr, config.prefix_len),
            routers: config
                .gateway
                .into_iter()
                .chain(config.routes.iter().map(|r| r.via))
                .collect(),
            conns: Vec::new(),
            free_ids: Vec::new(),
            spare: Vec::new(),
            flows: HashMap::new(),
            by_port: vec![NO_CONN; 1 << 16].into_boxed_slice(),
            ports,
            timers: Timers::default(),
            dirty: Vec::new(),
            handshaking: Vec::new(),
            arp_gen: 0,
            sink: SocketSet::new(Vec::new()),
            neighbors: Vec::new(),
            neighbor_heard: Vec::new(),
            next_neighbor_refresh: Instant::ZERO,
            mac: config.mac,
            counters: EngineCounters::default(),
            syn_cookies: config.syn_cookies,
            cookie_threshold: u64::from(config.syn_cookie_threshold),
            half_open_timeout: smol(config.half_open_timeout),
            keys: Keys::new(seed, unix_secs),
            synack,
            next_tick: Instant::ZERO,
            flooded: false,
            scratch_frame: vec![0; config.mtu],
            scratch_tx: vec![0; config.mtu],
        };
        engine.reconfigure_with(&tables)?;
        Ok(engine)
    }

    /// Takes every frame the device has, runs the connections those frames
    /// and expired timers touched, and transmits what they have to send.
    pub fn poll<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) {
        // First: keys of the current epoch before any cookie is checked.
        if now >= self.next_tick {
            self.tick(now);
        }
        let mut frames = 0usize;
        loop {
            let Some((rx, tx)) = device.receive(now) else {
                break;
            };
            rx.consume(|frame| self.ingress(now, frame, tx));
            frames += 1;
            if frames % INGRESS_BURST == 0 {
                self.run_dirty(now, device);
            }
        }
        while let Some(id) = self.timers.pop_expired(now) {
            self.mark_dirty(id as usize, BOTH);
        }
        self.run_dirty(now, device);
        if now >= self.next_neighbor_refresh {
            self.refresh_neighbors(now, device);
        }
    }

    /// When the engine must be polled again if no frame arrives first.
    pub fn poll_at(&self) -> Option<Instant> {
        let refresh = (!self.neighbors.is_empty()).then_some(self.next_neighbor_refresh);
        let tick = self.flooded.then_some(self.next_tick);
        [self.timers.next_at(), refresh, tick].into_iter().flatten().min()
    }

    /// [`poll_at`](Self::poll_at) as a delay from `now` (zero if overdue).
    pub fn poll_delay(&self, now: Instant) -> Option<Duration> {
        self.poll_at()
            .map(|at| if at > now { at - now } else { Duration::ZERO })
    }

    /// Lists a connection for service this poll, with `sides` touched.
    fn mark_dirty(&mut self, id: usize, sides: u8) {
        if let Some(conn) = self.conns[id].as_mut() {
            conn.touched |= sides;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn run_dirty<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) {
        let mut list = std::mem::take(&mut self.dirty);
        for &id in &list {
            if let Some(conn) = self.conns[id].as_mut() {
                conn.dirty = false;
                self.service(id, now);
                self.transmit(id, now, device);
                self.settle(id, now);
            }
        }
        list.clear();
        // Keep the allocation; nothing marks connections dirty while serving.
        if self.dirty.is_empty() {
            self.dirty = list;
        }
    }

    /// Connection logic for one connection: half-open timeout, connect /
    /// fail over, relay, propagate FIN and RST, idle timeout.
    fn service(&mut self, id: usize, now: Instant) {
        let conn = self.conns[id].as_mut().expect("live");
        // Outside Proxying every service may change either side (connect,
        // held SYN-ACK, aborts); in Proxying, `relay` adds what it changes.
        if conn.phase != Phase::Proxying || conn.arp_gen != self.arp_gen {
            conn.touched = BOTH;
        }
        let client_state = conn.client.get::<tcp::Socket>(conn.ch).state();
        if !matches!(client_state, State::Listen | State::SynReceived) {
            self.unlist_handshake(id);
        }
        let conn = self.conns[id].as_mut().expect("live");
        let vip = vip_mut(&mut self.vips, conn.vip);
        if conn.half_open_deadline.is_some_and(|at| now >= at) {
            // Still SYN-RECEIVED (else unlisted above): both ways aborted.
            conn.client.get_mut::<tcp::Socket>(conn.ch).abort();
            conn.backend.get_mut::<tcp::Socket>(conn.bh).abort();
            vip.counters.drop_half_open_timeout += 1;
            conn.phase = Phase::Closing;
            self.unlist_handshake(id);
            return;
        }
        // Before Proxying the client can only have left by RST (which puts
        // the socket back to LISTEN, or CLOSED) or never completed its SYN
        // (smoltcp rejected it; bad checksums are dropped before admission,
        // see `frame::classify`): our SYN-ACK is still held. A cookie
        // connection's client is established already and may also have sent
        // its FIN (CLOSE-WAIT): only a reset ends it here.
        let client_gone = if conn.cookie {
            matches!(client_state, State::Closed | State::Listen)
        } else {
            client_state != State::SynReceived
        };
        match conn.phase {
            Phase::New | Phase::Connecting { .. } if client_gone => {
                conn.client.get_mut::<tcp::Socket>(conn.ch).abort();
                conn.backend.get_mut::<tcp::Socket>(conn.bh).abort();
                if conn.phase != Phase::New {
                    vip.counters.client_resets += 1;
                }
                conn.phase = Phase::Closing;
            }
            Phase::New => self.connect_next(id, now),
            Phase::Connecting { deadline } => {
                if !connect::connecting(conn, vip, deadline, now) {
                    self.connect_next(id, now);
                } else if conn.phase == Phase::Proxying {
                    // A cookie connection's client may have sent data already
                    // (even in its handshake ACK): relay it now, nothing else
                    // would wake this connection for it.
                    splice::relay(conn, vip, now);
                }
            }
            Phase::Proxying => splice::relay(conn, vip, now),
            Phase::Closing => {}
        }
    }

    /// Transmits what each touched side has to send and files its smoltcp
    /// `poll_at` (`Conn::client_at` / `backend_at`, read by `settle`).
    /// smoltcp is asked when the side wants service before it is asked to
    /// send: a side with nothing due (the usual case for the side a segment
    /// just arrived on: its ACK waits for the reply) costs one `poll_at`
    /// instead of an empty `dispatch` and a `poll_at`, and a side that sent
    /// is only polled again while its `poll_at` says it has more due now
    /// (one segment per socket per egress pass).
    fn transmit<D: Device + ?Sized>(&mut self, id: usize, now: Instant, device: &mut D) {
        let conn = self.conns[id].as_mut().expect("live");
        // An untouched side has nothing new to send: its socket is as the
        // last egress pass left it (a timer of its coming due marks both).
        let touched = conn.touched;
        let sides = [
            (CLIENT, &mut conn.client, &mut conn.client_at),
            (BACKEND, &mut conn.backend, &mut conn.backend_at),
        ];
        for (_, set, at) in sides.into_iter().filter(|(side, _, _)| touched & side != 0) {
            let mut idle = false;
            loop {
                self.counters.sockets_visited += 1;
                *at = self.iface.poll_at(now, set);
                // After an egress pass that sent nothing, its `poll_at` is
                // filed as it stands (a paused SYN-ACK claims "now" forever).
                if idle || at.is_some_and(|t| t > now) || at.is_none() {
                    break;
                }
                self.counters.sockets_visited += 1;
                idle = self.iface.poll_egress(now, device, set) == PollResult::None;
            }
        }
    }
}
