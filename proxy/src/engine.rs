//! The per-lcore proxy engine.
//!
//! # Shape
//! One smoltcp [`Interface`] (addresses, neighbour cache, routes) and, per
//! connection, two one-socket [`SocketSet`]s: the client-facing socket and the
//! backend-facing socket. smoltcp walks the whole set it is given for every
//! ingress segment, every egress pass and every `poll_at`; giving it a set of
//! one socket makes that walk constant. The engine does the dispatch itself:
//! it classifies each frame's 4-tuple, looks it up in a flow table (one hash
//! lookup) and hands the frame to `poll_ingress_single` with that connection's
//! set. This is sharding taken to shards of one connection: both sockets of a
//! connection share its shard, no port arithmetic ties shards to local ports,
//! and a hot shard cannot exist.
//!
//! Only connections with work are visited: those a frame touched this poll
//! (the dirty list) and those whose deadline passed ([`Timers`], one entry per
//! connection: the earliest of smoltcp's `poll_at` for its sets, the connect
//! timeout and the idle timeout). Cost per packet is therefore O(1) plus an
//! O(log n) heap update, independent of how many connections are open.
//!
//! # Accepting
//! There is no listen backlog in smoltcp, so no listener waits in advance: a
//! SYN to a VIP:port with no connection is admitted by creating a connection
//! whose client socket listens on the VIP:port, then the SYN is handed to it.
//! A SYN beyond the VIP's limit (or with no backend) goes to an empty socket
//! set and smoltcp answers it with RST, as it does for any segment of an
//! unknown connection.
//!
//! # SYN-ACK held until the backend is up
//! The client socket pauses its SYN-ACK (`socket-tcp-pause-synack`) while the
//! engine connects to the backend. Why: a client then only sees an established
//! connection when there is a backend behind it; if every backend fails it
//! gets a RST to its SYN (connection refused) instead of an accepted
//! connection that is reset later, and no client data needs buffering before
//! a backend exists. A client's retransmitted SYN is ignored by the paused
//! socket, so `connect_timeout * max_connect_tries` should stay below the
//! client's SYN retry budget (Linux: 1 s, 3 s, 7 s, ...).
//!
//! # TIME-WAIT
//! smoltcp holds TIME-WAIT for 10 s. The engine does not: a connection whose
//! two sockets are closed or in TIME-WAIT, with nothing left to transmit, is
//! released at once and its sockets reused (a reused socket forgets its
//! TIME-WAIT without sending anything). A late retransmitted FIN then meets no
//! connection and is answered with RST, which ends the peer's LAST-ACK just as
//! well. Local ports go back to the tail of a FIFO, so a port is reused as late
//! as possible, which is what protects the backend's own TIME-WAIT.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use fulcrum_maglev::{addr_hash, backend_key, flow_hash, Backend, MaglevTable};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, Ipv4Cidr,
};

use crate::config::{Affinity, BackendConfig, ConfigError, EngineConfig, VipConfig};
use crate::counters::{BackendCounters, BackendSnapshot, EngineCounters, VipCounters, VipSnapshot};
use crate::proxy_protocol::Header;
use crate::steer::{classify, owner_of_port, Frame, TcpMeta};
use crate::timer::Timers;

/// Frames taken from the device between two passes over the dirty
/// connections, so a long burst cannot fill receive windows unrelayed.
const INGRESS_BURST: usize = 64;

/// Period of [`Engine::refresh_neighbors`]; smoltcp forgets a neighbour 60 s
/// after it last heard from it.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(20);

fn smol(d: std::time::Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

struct BackendState {
    cfg: BackendConfig,
    counters: BackendCounters,
}

struct VipState {
    cfg: VipConfig,
    table: MaglevTable,
    connect_timeout: Duration,
    idle_timeout: Duration,
    backends: Vec<BackendState>,
    counters: VipCounters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Client SYN received (SYN-ACK paused); no backend tried yet.
    New,
    /// Backend SYN sent; give up on this backend at `deadline`.
    Connecting { deadline: Instant },
    /// Both sides up: relaying.
    Proxying,
    /// Both sockets aborted; waiting for the RSTs to be sent.
    Closing,
}

/// A connection slot. Its sockets and buffers outlive one connection: on
/// release the slot goes to a bounded spare pool and is reused as is.
struct Conn {
    client: SocketSet<'static>,
    backend: SocketSet<'static>,
    ch: SocketHandle,
    bh: SocketHandle,
    vip: usize,
    client_ep: SocketAddrV4,
    /// Maglev hash of the client (address+port or address).
    hash: u64,
    tries: u8,
    backend_idx: Option<usize>,
    /// The backend connection reached ESTABLISHED (counted as active).
    opened: bool,
    /// Local port of the backend connection; 0 when none is held.
    local_port: u16,
    phase: Phase,
    /// Last time payload moved either way. Segments alone do not count: our
    /// own retransmissions and probes draw ACKs from a peer that has stopped
    /// talking, and must not keep an idle connection alive.
    last_active: Instant,
    /// Socket states seen at the end of the previous service, to tell a
    /// RST (CLOSED from an open state) from an orderly close.
    client_last: State,
    backend_last: State,
    fin_to_backend: bool,
    fin_to_client: bool,
    dirty: bool,
    /// Index in `Engine::handshaking` while the client has no SYN-ACK yet.
    handshake_pos: Option<usize>,
}

impl Conn {
    fn new(buffer_size: usize) -> Self {
        let socket = || {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; buffer_size]),
                tcp::SocketBuffer::new(vec![0; buffer_size]),
            )
        };
        let mut client = SocketSet::new(Vec::with_capacity(1));
        let ch = client.add(socket());
        let mut backend = SocketSet::new(Vec::with_capacity(1));
        let bh = backend.add(socket());
        Self {
            client,
            backend,
            ch,
            bh,
            vip: 0,
            client_ep: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            hash: 0,
            tries: 0,
            backend_idx: None,
            opened: false,
            local_port: 0,
            phase: Phase::New,
            last_active: Instant::ZERO,
            client_last: State::Closed,
            backend_last: State::Closed,
            fin_to_backend: false,
            fin_to_client: false,
            dirty: false,
            handshake_pos: None,
        }
    }
}

/// Flow-table key: a segment's (remote, local) endpoints as we receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    remote: Ipv4Addr,
    local: Ipv4Addr,
    remote_port: u16,
    local_port: u16,
}

/// One lcore's proxy: owns its connections, fed frames by the dataplane.
pub struct Engine {
    iface: Interface,
    caps: DeviceCapabilities,
    addr: Ipv4Addr,
    ack_delay: Option<Duration>,
    buffer_size: usize,
    max_spare: usize,
    flow_seed: u64,
    vips: Vec<VipState>,
    vip_by_endpoint: HashMap<(Ipv4Addr, u16), usize>,
    /// Slab of live connections; `free_ids` are its empty slots.
    conns: Vec<Option<Conn>>,
    free_ids: Vec<usize>,
    spare: Vec<Conn>,
    /// Both sides of every live connection (client 4-tuple, backend 4-tuple).
    flows: HashMap<FlowKey, usize>,
    /// This lcore's local ports not in use, least recently used first.
    ports: VecDeque<u16>,
    timers: Timers,
    dirty: Vec<usize>,
    /// Connections whose client has not had its SYN-ACK: woken by ARP, since
    /// smoltcp would otherwise keep a socket waiting for a neighbour silent
    /// for a whole second after the answer arrived.
    handshaking: Vec<usize>,
    /// Empty set: segments of unknown connections go here and smoltcp answers
    /// them with RST; ARP goes here too (it touches no socket).
    sink: SocketSet<'static>,
    /// On-link backends and the gateway, kept resolved by our own ARP
    /// requests (see [`Engine::refresh_neighbors`]).
    neighbors: Vec<Ipv4Addr>,
    next_neighbor_refresh: Instant,
    mac: EthernetAddress,
    counters: EngineCounters,
}

impl Engine {
    /// Builds the engine: Maglev tables, the interface (our address with its
    /// prefix; VIPs are accepted through smoltcp's AnyIP, filtered by the
    /// engine, because smoltcp caps interface addresses at compile time) and
    /// this lcore's port pool.
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut vips = Vec::with_capacity(config.vips.len());
        let mut vip_by_endpoint = HashMap::new();
        for (i, vip) in config.vips.iter().enumerate() {
            let keys: Vec<Backend> = vip
                .backends
                .iter()
                .map(|b| Backend {
                    key: backend_key(IpAddr::V4(b.addr), b.port),
                    weight: b.weight,
                })
                .collect();
            let table = MaglevTable::build(&keys, vip.table_size).map_err(|source| {
                ConfigError::Maglev {
                    addr: vip.addr,
                    port: vip.port,
                    source,
                }
            })?;
            vip_by_endpoint.insert((vip.addr, vip.port), i);
            vips.push(VipState {
                table,
                connect_timeout: smol(vip.connect_timeout),
                idle_timeout: smol(vip.idle_timeout),
                backends: vip
                    .backends
                    .iter()
                    .map(|&cfg| BackendState {
                        cfg,
                        counters: BackendCounters::default(),
                    })
                    .collect(),
                counters: VipCounters::default(),
                cfg: vip.clone(),
            });
        }

        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = config.mtu;
        caps.checksum = config.checksum.clone();
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
        if let Some(gw) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .expect("a fresh interface has room for one route");
        }

        let network = Ipv4Cidr::new(config.addr, config.prefix_len);
        let mut neighbors: Vec<Ipv4Addr> = config
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.addr))
            .filter(|&a| network.contains_addr(&a))
            .chain(config.gateway)
            .collect();
        neighbors.sort_unstable();
        neighbors.dedup();

        let ports = config
            .local_ports
            .clone()
            .filter(|&p| owner_of_port(p, config.lcores) == config.lcore)
            .collect();

        Ok(Self {
            iface,
            caps,
            addr: config.addr,
            ack_delay: config.ack_delay.map(smol),
            buffer_size: config.buffer_size,
            max_spare: config.max_spare_connections,
            flow_seed: config.flow_seed,
            vips,
            vip_by_endpoint,
            conns: Vec::new(),
            free_ids: Vec::new(),
            spare: Vec::new(),
            flows: HashMap::new(),
            ports,
            timers: Timers::default(),
            dirty: Vec::new(),
            handshaking: Vec::new(),
            sink: SocketSet::new(Vec::new()),
            neighbors,
            next_neighbor_refresh: Instant::ZERO,
            mac: config.mac,
            counters: EngineCounters::default(),
        })
    }

    /// Takes every frame the device has, runs the connections those frames
    /// and expired timers touched, and transmits what they have to send.
    pub fn poll<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) {
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
            self.mark_dirty(id as usize);
        }
        self.run_dirty(now, device);
        if now >= self.next_neighbor_refresh {
            self.refresh_neighbors(now, device);
        }
    }

    /// Sends an ARP request for every on-link backend and the gateway.
    ///
    /// Why: smoltcp resolves a neighbour only when a packet is waiting for it,
    /// and after sending one ARP request it answers "rate limited" for *every*
    /// unknown neighbour for a second. Without this, the first connections to
    /// N new backends would be serialised one second apart (longer than a
    /// connect timeout), and a neighbour idle past smoltcp's 60 s entry
    /// lifetime would stall its next flow. Replies are learnt by smoltcp
    /// (they are ARP aimed at our address). Refreshed every
    /// [`NEIGHBOR_REFRESH`], well inside the entry lifetime.
    fn refresh_neighbors<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) {
        self.next_neighbor_refresh = now + NEIGHBOR_REFRESH;
        for &target in &self.neighbors {
            let Some(tx) = device.transmit(now) else {
                // Device full: try again on the next poll.
                self.next_neighbor_refresh = now;
                return;
            };
            let arp = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: self.mac,
                source_protocol_addr: self.addr,
                target_hardware_addr: EthernetAddress::BROADCAST,
                target_protocol_addr: target,
            };
            let eth = EthernetRepr {
                src_addr: self.mac,
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EthernetProtocol::Arp,
            };
            tx.consume(eth.buffer_len() + arp.buffer_len(), |buf| {
                let mut frame = EthernetFrame::new_unchecked(buf);
                eth.emit(&mut frame);
                arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
            });
        }
    }

    /// When the engine must be polled again if no frame arrives first.
    pub fn poll_at(&self) -> Option<Instant> {
        let refresh = (!self.neighbors.is_empty()).then_some(self.next_neighbor_refresh);
        [self.timers.next_at(), refresh].into_iter().flatten().min()
    }

    /// [`poll_at`](Self::poll_at) as a delay from `now` (zero if overdue).
    pub fn poll_delay(&self, now: Instant) -> Option<Duration> {
        self.poll_at()
            .map(|at| if at > now { at - now } else { Duration::ZERO })
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Counters of VIP `vip` (index in `EngineConfig::vips`).
    pub fn vip_counters(&self, vip: usize) -> Option<&VipCounters> {
        self.vips.get(vip).map(|v| &v.counters)
    }

    /// Counters of backend `backend` (index in the VIP's list) of VIP `vip`.
    pub fn backend_counters(&self, vip: usize, backend: usize) -> Option<&BackendCounters> {
        self.vips
            .get(vip)?
            .backends
            .get(backend)
            .map(|b| &b.counters)
    }

    /// Every VIP's and backend's counters, owned (allocates: for publishing,
    /// not for the packet path).
    pub fn snapshot(&self) -> Vec<VipSnapshot> {
        self.vips
            .iter()
            .map(|v| VipSnapshot {
                addr: v.cfg.addr,
                port: v.cfg.port,
                counters: v.counters,
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendSnapshot {
                        addr: b.cfg.addr,
                        port: b.cfg.port,
                        weight: b.cfg.weight,
                        counters: b.counters,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Live connections (admitted, not yet released).
    pub fn connections(&self) -> usize {
        self.conns.len() - self.free_ids.len()
    }

    /// Sockets of live connections (two each); 0 when idle.
    pub fn socket_count(&self) -> usize {
        self.connections() * 2
    }

    /// Released connections kept for reuse, with their buffers.
    pub fn spare_connections(&self) -> usize {
        self.spare.len()
    }

    /// Payload bytes held in socket buffers right now (walks all connections:
    /// for monitoring and tests). Bounded by 4 x `buffer_size` per connection.
    pub fn buffered_bytes(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .map(|c| {
                let a = c.client.get::<tcp::Socket>(c.ch);
                let b = c.backend.get::<tcp::Socket>(c.bh);
                a.recv_queue() + a.send_queue() + b.recv_queue() + b.send_queue()
            })
            .sum()
    }

    /// Bytes of socket buffer allocated (live and spare connections).
    pub fn allocated_buffer_bytes(&self) -> usize {
        (self.connections() + self.spare.len()) * 4 * self.buffer_size
    }

    /// Local ports free for new backend connections.
    pub fn free_ports(&self) -> usize {
        self.ports.len()
    }

    fn is_ours(&self, addr: Ipv4Addr) -> bool {
        addr == self.addr || self.vips.iter().any(|v| v.cfg.addr == addr)
    }

    fn ingress<T: TxToken>(&mut self, now: Instant, frame: &[u8], tx: T) {
        self.counters.frames_in += 1;
        let target = match classify(frame) {
            Frame::Arp { target } if self.is_ours(target) => {
                for i in 0..self.handshaking.len() {
                    self.mark_dirty(self.handshaking[i]);
                }
                None
            }
            Frame::Tcp(meta) if self.is_ours(meta.dst) => self.tcp_target(now, &meta),
            _ => {
                self.counters.frames_not_ours += 1;
                return;
            }
        };
        let set = match target {
            None => &mut self.sink,
            Some((id, client_side)) => {
                let conn = self.conns[id]
                    .as_mut()
                    .expect("flow table points at live slots");
                if client_side {
                    &mut conn.client
                } else {
                    &mut conn.backend
                }
            }
        };
        self.counters.sockets_visited += set.iter().count() as u64;
        let mut device = OneFrame {
            frame: Some(frame),
            tx: Some(tx),
            caps: &self.caps,
        };
        self.iface.poll_ingress_single(now, &mut device, set);
    }

    /// Connection (and side: true = client) a TCP segment belongs to,
    /// admitting a new connection for a SYN to a VIP; `None` = answer with RST.
    fn tcp_target(&mut self, now: Instant, m: &TcpMeta) -> Option<(usize, bool)> {
        let key = FlowKey {
            remote: m.src,
            local: m.dst,
            remote_port: m.src_port,
            local_port: m.dst_port,
        };
        let client_side = m.dst != self.addr;
        if let Some(&id) = self.flows.get(&key) {
            self.mark_dirty(id);
            return Some((id, client_side));
        }
        let vip = match self.vip_by_endpoint.get(&(m.dst, m.dst_port)) {
            Some(&vip) if m.syn_only => vip,
            _ => {
                self.counters.unknown_flow += 1;
                return None;
            }
        };
        self.admit(now, vip, key).map(|id| (id, true))
    }

    fn admit(&mut self, now: Instant, vi: usize, key: FlowKey) -> Option<usize> {
        let seed = self.flow_seed;
        let vip = &mut self.vips[vi];
        if vip.counters.active >= u64::from(vip.cfg.max_connections) {
            vip.counters.drop_limit += 1;
            return None;
        }
        let hash = match vip.cfg.affinity {
            Affinity::ClientAddrPort => flow_hash(
                seed,
                IpAddr::V4(key.remote),
                key.remote_port,
                IpAddr::V4(key.local),
                key.local_port,
                6,
            ),
            Affinity::ClientAddr => addr_hash(seed, IpAddr::V4(key.remote)),
        };
        if vip.table.lookup(hash).is_none() {
            vip.counters.drop_no_backend += 1;
            return None;
        }
        vip.counters.accepted += 1;
        vip.counters.active += 1;

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
        client.pause_synack(true);
        tune_client(client, self.ack_delay);
        conn.vip = vi;
        conn.client_ep = SocketAddrV4::new(key.remote, key.remote_port);
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
        conn.handshake_pos = Some(self.handshaking.len());

        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.conns[id] = Some(conn);
        self.handshaking.push(id);
        self.flows.insert(key, id);
        self.mark_dirty(id);
        Some(id)
    }

    fn mark_dirty(&mut self, id: usize) {
        if let Some(conn) = self.conns[id].as_mut() {
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

    /// Connection logic for one connection: connect / fail over, relay,
    /// propagate FIN and RST, idle timeout.
    fn service(&mut self, id: usize, now: Instant) {
        let conn = self.conns[id].as_ref().expect("live");
        let client_state = conn.client.get::<tcp::Socket>(conn.ch).state();
        if !matches!(client_state, State::Listen | State::SynReceived) {
            self.unlist_handshake(id);
        }
        let conn = self.conns[id].as_mut().expect("live");
        let vip = &mut self.vips[conn.vip];
        match conn.phase {
            Phase::New | Phase::Connecting { .. } if client_state != State::SynReceived => {
                // Our SYN-ACK is still held, so the client can only have left
                // by RST (which puts the socket back to LISTEN) or never
                // completed its SYN (e.g. bad checksum).
                conn.client.get_mut::<tcp::Socket>(conn.ch).abort();
                conn.backend.get_mut::<tcp::Socket>(conn.bh).abort();
                if conn.phase != Phase::New {
                    vip.counters.client_resets += 1;
                }
                conn.phase = Phase::Closing;
            }
            Phase::New => self.connect_next(id, now),
            Phase::Connecting { deadline } => {
                let b = conn.backend.get_mut::<tcp::Socket>(conn.bh);
                let bi = conn.backend_idx.expect("connecting to a backend");
                match b.state() {
                    State::Established => {
                        let be = &mut vip.backends[bi].counters;
                        be.opened += 1;
                        be.active += 1;
                        conn.opened = true;
                        let vip_ep = SocketAddrV4::new(vip.cfg.addr, vip.cfg.port);
                        if let Some(h) =
                            Header::encode(vip.cfg.proxy_protocol, conn.client_ep, vip_ep)
                        {
                            // Fits: buffers are at least 1 KiB and empty.
                            let _ = b.send_slice(h.as_bytes());
                        }
                        conn.client
                            .get_mut::<tcp::Socket>(conn.ch)
                            .pause_synack(false);
                        conn.phase = Phase::Proxying;
                        conn.last_active = now;
                        conn.backend_last = State::Established;
                        conn.client_last = State::SynReceived;
                    }
                    State::SynSent if now < deadline => {}
                    _ => {
                        // Refused (RST) or no answer in time.
                        b.abort();
                        vip.backends[bi].counters.connect_failures += 1;
                        self.connect_next(id, now);
                    }
                }
            }
            Phase::Proxying => {
                let c = conn.client.get_mut::<tcp::Socket>(conn.ch);
                let b = conn.backend.get_mut::<tcp::Socket>(conn.bh);
                let bi = conn.backend_idx.expect("proxying to a backend");
                let up = splice(c, b);
                let down = splice(b, c);
                if up + down > 0 {
                    conn.last_active = now;
                    let be = &mut vip.backends[bi].counters;
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
                }
                if !conn.fin_to_client && peer_finished(b) {
                    c.close();
                    conn.fin_to_client = true;
                }
                if was_reset(c.state(), conn.client_last) {
                    b.abort();
                    vip.counters.client_resets += 1;
                    conn.phase = Phase::Closing;
                } else if was_reset(b.state(), conn.backend_last) {
                    c.abort();
                    vip.counters.backend_resets += 1;
                    vip.backends[bi].counters.resets += 1;
                    conn.phase = Phase::Closing;
                } else if now >= conn.last_active + vip.idle_timeout {
                    c.abort();
                    b.abort();
                    vip.counters.drop_idle_timeout += 1;
                    conn.phase = Phase::Closing;
                }
                conn.client_last = c.state();
                conn.backend_last = b.state();
            }
            Phase::Closing => {}
        }
    }

    /// Starts the next backend attempt in Maglev preference order, or gives
    /// up and resets the client (still in SYN-RECEIVED: it sees a refusal).
    fn connect_next(&mut self, id: usize, now: Instant) {
        let conn = self.conns[id].as_mut().expect("live");
        let vip = &mut self.vips[conn.vip];
        if conn.local_port != 0 {
            let be = &vip.backends[conn.backend_idx.expect("port held for a backend")].cfg;
            self.flows.remove(&FlowKey {
                remote: be.addr,
                local: self.addr,
                remote_port: be.port,
                local_port: conn.local_port,
            });
            self.ports.push_back(conn.local_port);
            conn.local_port = 0;
        }
        let next = if conn.tries < vip.cfg.max_connect_tries {
            vip.table.preference(conn.hash).nth(usize::from(conn.tries))
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
        let be = &mut vip.backends[bi];
        let b = conn.backend.get_mut::<tcp::Socket>(conn.bh);
        b.abort();
        tune_backend(b, self.ack_delay);
        let connected = b.connect(
            self.iface.context(),
            (IpAddress::Ipv4(be.cfg.addr), be.cfg.port),
            IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(self.addr)),
                port,
            },
        );
        be.counters.attempts += 1;
        conn.backend_idx = Some(bi);
        conn.local_port = port;
        self.flows.insert(
            FlowKey {
                remote: be.cfg.addr,
                local: self.addr,
                remote_port: be.cfg.port,
                local_port: port,
            },
            id,
        );
        conn.phase = Phase::Connecting {
            // An unconnectable backend (port 0, unspecified address) fails at
            // once through the normal failure path.
            deadline: if connected.is_ok() {
                now + vip.connect_timeout
            } else {
                now
            },
        };
    }

    fn transmit<D: Device + ?Sized>(&mut self, id: usize, now: Instant, device: &mut D) {
        let conn = self.conns[id].as_mut().expect("live");
        for set in [&mut conn.client, &mut conn.backend] {
            // One segment per socket per pass: repeat while something is sent.
            loop {
                self.counters.sockets_visited += 1;
                if self.iface.poll_egress(now, device, set) == PollResult::None {
                    break;
                }
            }
        }
    }

    /// Releases a finished connection, or files its next deadline.
    fn settle(&mut self, id: usize, now: Instant) {
        let conn = self.conns[id].as_ref().expect("live");
        let vip = &self.vips[conn.vip];
        let done_state = |s: State| matches!(s, State::Closed | State::TimeWait);
        self.counters.sockets_visited += 2;
        let client_at = self.iface.poll_at(now, &conn.client);
        let backend_at = self.iface.poll_at(now, &conn.backend);
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
            Phase::Proxying => Some(conn.last_active + vip.idle_timeout),
            Phase::Closing => None,
        };
        // A paused client socket always claims to want the CPU (its SYN-ACK is
        // due); its real wake-up is the backend's progress.
        let client_at = match conn.phase {
            Phase::New | Phase::Connecting { .. } => None,
            _ => client_at,
        };
        let at = [own, client_at, backend_at].into_iter().flatten().min();
        self.timers.set(id as u32, at);
    }

    fn release(&mut self, id: usize) {
        self.unlist_handshake(id);
        let conn = self.conns[id].take().expect("live");
        let vip = &mut self.vips[conn.vip];
        self.flows.remove(&FlowKey {
            remote: *conn.client_ep.ip(),
            local: vip.cfg.addr,
            remote_port: conn.client_ep.port(),
            local_port: vip.cfg.port,
        });
        if let Some(bi) = conn.backend_idx {
            let be = &mut vip.backends[bi];
            if conn.local_port != 0 {
                self.flows.remove(&FlowKey {
                    remote: be.cfg.addr,
                    local: self.addr,
                    remote_port: be.cfg.port,
                    local_port: conn.local_port,
                });
                self.ports.push_back(conn.local_port);
            }
            if conn.opened {
                be.counters.active -= 1;
            }
        }
        vip.counters.active -= 1;
        self.timers.set(id as u32, None);
        self.free_ids.push(id);
        if self.spare.len() < self.max_spare {
            self.spare.push(conn);
        }
    }

    fn unlist_handshake(&mut self, id: usize) {
        let Some(pos) = self.conns[id].as_mut().and_then(|c| c.handshake_pos.take()) else {
            return;
        };
        self.handshaking.swap_remove(pos);
        if let Some(&moved) = self.handshaking.get(pos) {
            if let Some(c) = self.conns[moved].as_mut() {
                c.handshake_pos = Some(pos);
            }
        }
    }
}

/// Client-facing socket. Nagle off: the proxy forwards what the endpoints
/// wrote as soon as it has it; holding small segments back would add a round
/// trip to every small request or response. Cubic: clients are across the
/// Internet, where the bandwidth-delay product is large and Cubic's
/// RTT-independent window growth recovers far faster than Reno (why it is the
/// Linux default). Set on every reuse: it also resets the controller's state.
fn tune_client(s: &mut tcp::Socket, ack_delay: Option<Duration>) {
    s.set_nagle_enabled(false);
    s.set_ack_delay(ack_delay);
    s.set_congestion_control(CongestionControl::Cubic);
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

/// Milliseconds since the Unix epoch, wrapping: monotonic across connections
/// and engines, as RFC 7323 timestamps must be to protect TIME-WAIT reuse.
fn millisecond_clock() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u32)
        .unwrap_or(0)
}

/// Moves bytes from `from`'s receive buffer into `to`'s send buffer, never
/// more than `to` has room for: what cannot move stays in `from`, whose
/// window then closes, so a slow reader stalls its writer instead of growing
/// memory. One copy, straight from ring to ring.
fn splice(from: &mut tcp::Socket, to: &mut tcp::Socket) -> usize {
    let mut moved = 0;
    // The receive ring hands out at most two contiguous pieces (wrap-around).
    for _ in 0..2 {
        if !to.can_send() {
            break;
        }
        let n = from
            .recv(|data| {
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
/// LAST-ACK, or TIME-WAIT expiry): the peer reset the connection.
fn was_reset(now: State, before: State) -> bool {
    now == State::Closed && !matches!(before, State::LastAck | State::TimeWait | State::Closed)
}

/// A one-frame smoltcp device: lends the frame the engine already took from
/// the real device (and that frame's TX token for an immediate reply) to
/// `poll_ingress_single`, so the engine can choose the socket set after
/// looking at the frame, without copying it.
struct OneFrame<'f, T> {
    frame: Option<&'f [u8]>,
    tx: Option<T>,
    caps: &'f DeviceCapabilities,
}

impl<'f> OneFrame<'f, NoTx> {
    /// For `Interface::new`, which only reads the capabilities.
    fn caps_only(caps: &'f DeviceCapabilities) -> Self {
        Self {
            frame: None,
            tx: None,
            caps,
        }
    }
}

impl<'f, T: TxToken> Device for OneFrame<'f, T> {
    type RxToken<'a>
        = FrameRx<'f>
    where
        Self: 'a;
    type TxToken<'a>
        = T
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(FrameRx<'f>, T)> {
        let frame = self.frame.take()?;
        Some((FrameRx(frame), self.tx.take()?))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<T> {
        self.tx.take()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

struct FrameRx<'f>(&'f [u8]);

impl RxToken for FrameRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// TX token type of [`OneFrame::caps_only`], which never hands one out.
enum NoTx {}

impl TxToken for NoTx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, _len: usize, _f: F) -> R {
        match self {}
    }
}
