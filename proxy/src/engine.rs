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
//! socket, so `connect_timeout * connect_tries` should stay below the
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

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use fulcrum_maglev::{addr_hash, flow_hash, MaglevTable};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, Ipv4Cidr,
};

use fulcrum_model::steer::owner_of_port;
use fulcrum_model::{Affinity, Backend, ProxyProtocol, Vip};

use crate::config::{ConfigError, EngineConfig};
use crate::counters::{BackendCounters, BackendSnapshot, EngineCounters, VipCounters, VipSnapshot};
use crate::frame::{classify, Frame, TcpMeta};
use crate::limits::{bandwidth_burst, bandwidth_quantum, Bucket, ClientTable};
use crate::proxy_protocol::Header;
use crate::tables::{LcoreLimits, PreparedVip, Reconfigured, VipTables};
use crate::timer::Timers;

/// Frames taken from the device between two passes over the dirty
/// connections, so a long burst cannot fill receive windows unrelayed.
const INGRESS_BURST: usize = 64;

/// Period of [`Engine::refresh_neighbors`]; smoltcp forgets a neighbour 60 s
/// after it last heard from it.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(20);

/// Period of [`Engine::refresh_neighbors`] while some neighbour has not
/// answered.
const NEIGHBOR_RETRY: Duration = Duration::from_secs(1);

fn smol(d: std::time::Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A backend of a VIP on this engine. Its slot index is stable for its
/// lifetime (connections refer to it), whatever the configured list order.
struct BackendSlot {
    cfg: Backend,
    counters: BackendCounters,
    /// Listed by the VIP's current configuration. A removed backend's slot
    /// stays (counters included) until no connection refers to it.
    configured: bool,
    /// Connections whose backend side is this backend (connecting or open).
    refs: u32,
}

/// A VIP on this engine. Its slot index is stable for its lifetime.
struct VipState {
    /// As configured: VIP-wide limits (the engine enforces `limits`).
    cfg: Vip,
    /// This lcore's share of the VIP's limits.
    limits: LcoreLimits,
    /// Unique per VIP instance (keys the client table, so a slot reused by
    /// another VIP does not inherit client state).
    uid: u32,
    table: Arc<MaglevTable>,
    /// Maglev index (position in `cfg.backends`) -> slot in `backends`.
    table_slots: Vec<usize>,
    backends: Vec<Option<BackendSlot>>,
    free_backends: Vec<usize>,
    /// In the current configuration. A removed VIP admits nothing; its slot
    /// stays until its last connection is released.
    configured: bool,
    counters: VipCounters,
    /// New-connection bucket (`limits.new_conn_rate`).
    conn_bucket: Bucket,
    /// Byte bucket (`limits.bandwidth`), both directions.
    bw_bucket: Bucket,
}

impl VipState {
    fn new(p: &PreparedVip, uid: u32, r: &mut Reconfigured) -> Self {
        let mut v = Self {
            cfg: p.cfg.clone(),
            limits: p.limits,
            uid,
            table: p.table.clone(),
            table_slots: Vec::new(),
            backends: Vec::new(),
            free_backends: Vec::new(),
            configured: true,
            counters: VipCounters::default(),
            conn_bucket: Bucket::full(0, Instant::ZERO),
            bw_bucket: Bucket::full(0, Instant::ZERO),
        };
        v.reset_buckets(false, false);
        v.update(p, r);
        v
    }

    /// A limit newly set starts with a full bucket; a changed one keeps the
    /// tokens it has (clamped to the new burst on next use).
    fn reset_buckets(&mut self, had_rate: bool, had_bw: bool) {
        match self.limits.new_conn_rate {
            Some(r) if !had_rate => {
                self.conn_bucket = Bucket::full(u64::from(r.burst), Instant::ZERO)
            }
            _ => {}
        }
        match self.limits.bandwidth {
            Some(bw) if !had_bw => {
                self.bw_bucket = Bucket::full(bandwidth_burst(bw), Instant::ZERO)
            }
            _ => {}
        }
    }

    /// Takes the prepared configuration: new table and settings (for new
    /// connections), backends matched by (addr, port) to keep their slots
    /// and counters.
    fn update(&mut self, p: &PreparedVip, r: &mut Reconfigured) {
        let had_rate = self.limits.new_conn_rate.is_some();
        let had_bw = self.limits.bandwidth.is_some();
        if !self.configured {
            r.vips_added += 1;
        }
        self.configured = true;
        self.cfg = p.cfg.clone();
        self.limits = p.limits;
        self.table = p.table.clone();
        self.reset_buckets(had_rate, had_bw);

        let by_ep: HashMap<(Ipv4Addr, u16), usize> = self
            .backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| ((b.cfg.address, b.cfg.port), i)))
            .collect();
        let mut listed = vec![false; self.backends.len()];
        self.table_slots.clear();
        for cfg in &p.cfg.backends {
            let slot = match by_ep.get(&(cfg.address, cfg.port)) {
                Some(&slot) => {
                    let b = self.backends[slot].as_mut().expect("indexed slot");
                    if !b.configured {
                        r.backends_added += 1;
                    }
                    b.cfg = cfg.clone();
                    b.configured = true;
                    listed[slot] = true;
                    slot
                }
                None => {
                    r.backends_added += 1;
                    let b = BackendSlot {
                        cfg: cfg.clone(),
                        counters: BackendCounters::default(),
                        configured: true,
                        refs: 0,
                    };
                    match self.free_backends.pop() {
                        Some(slot) => {
                            self.backends[slot] = Some(b);
                            listed[slot] = true;
                            slot
                        }
                        None => {
                            self.backends.push(Some(b));
                            listed.push(true);
                            self.backends.len() - 1
                        }
                    }
                }
            };
            self.table_slots.push(slot);
        }
        for (slot, &listed) in listed.iter().enumerate() {
            if listed {
                continue;
            }
            let Some(b) = self.backends[slot].as_mut() else {
                continue;
            };
            if b.configured {
                b.configured = false;
                r.backends_removed += 1;
            }
            if b.refs == 0 {
                self.backends[slot] = None;
                self.free_backends.push(slot);
            }
        }
    }

    fn be(&self, slot: usize) -> &BackendSlot {
        self.backends[slot]
            .as_ref()
            .expect("referenced backend slot")
    }

    fn be_mut(&mut self, slot: usize) -> &mut BackendSlot {
        self.backends[slot]
            .as_mut()
            .expect("referenced backend slot")
    }

    /// A connection stops using backend `slot`; a removed backend goes
    /// with its last connection.
    fn unref_backend(&mut self, slot: usize) {
        let b = self.be_mut(slot);
        b.refs -= 1;
        if b.refs == 0 && !b.configured {
            self.backends[slot] = None;
            self.free_backends.push(slot);
        }
    }

    /// Connections on removed backends.
    fn draining(&self) -> u64 {
        if !self.configured {
            return self.counters.active;
        }
        self.backends
            .iter()
            .flatten()
            .filter(|b| !b.configured)
            .map(|b| u64::from(b.refs))
            .sum()
    }

    fn snapshot(&self) -> VipSnapshot {
        let listed = self
            .table_slots
            .iter()
            .filter_map(|&s| self.backends[s].as_ref());
        let removed = self.backends.iter().flatten().filter(|b| !b.configured);
        VipSnapshot {
            addr: self.cfg.address,
            port: self.cfg.port,
            removed: !self.configured,
            counters: self.counters,
            backends: listed
                .chain(removed)
                .map(|b| BackendSnapshot {
                    addr: b.cfg.address,
                    port: b.cfg.port,
                    weight: b.cfg.weight,
                    state: b.cfg.state,
                    removed: !b.configured,
                    counters: b.counters,
                })
                .collect(),
        }
    }
}

fn vip_mut(vips: &mut [Option<VipState>], slot: usize) -> &mut VipState {
    vips[slot].as_mut().expect("VIP slot in use")
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
    /// VIP settings as they were at admission: a reconfiguration applies to
    /// new connections only.
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_tries: u8,
    proxy_protocol: ProxyProtocol,
    /// Relaying stopped last service for want of bandwidth tokens.
    throttled: bool,
    /// Splice down before up on the next service (alternates, so neither
    /// direction starves the other of bandwidth tokens).
    down_first: bool,
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
            connect_timeout: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            max_tries: 0,
            proxy_protocol: ProxyProtocol::Off,
            throttled: false,
            down_first: false,
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
    gateway: Option<Ipv4Addr>,
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
    /// Per neighbour (same order): heard from since the last refresh.
    neighbor_heard: Vec<bool>,
    next_neighbor_refresh: Instant,
    mac: EthernetAddress,
    counters: EngineCounters,
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

        let ports = config
            .local_ports
            .clone()
            .filter(|&p| owner_of_port(p, config.lcores) == config.lcore)
            .collect();

        let mut engine = Self {
            iface,
            caps,
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
            gateway: config.gateway,
            conns: Vec::new(),
            free_ids: Vec::new(),
            spare: Vec::new(),
            flows: HashMap::new(),
            ports,
            timers: Timers::default(),
            dirty: Vec::new(),
            handshaking: Vec::new(),
            sink: SocketSet::new(Vec::new()),
            neighbors: Vec::new(),
            neighbor_heard: Vec::new(),
            next_neighbor_refresh: Instant::ZERO,
            mac: config.mac,
            counters: EngineCounters::default(),
        };
        engine.reconfigure_with(&tables)?;
        Ok(engine)
    }

    /// Replaces the VIP configuration (the full list: VIPs left out are
    /// removed). Validates and builds the Maglev tables in line (allocates,
    /// ~1-2 ms per 65537-slot table): call it on the lcore between two polls,
    /// only when the configuration changed. To keep that work off the lcore,
    /// build [`VipTables`] on a control thread and use
    /// [`reconfigure_with`](Self::reconfigure_with). On error nothing changes.
    pub fn reconfigure(&mut self, vips: Vec<Vip>) -> Result<Reconfigured, ConfigError> {
        let tables = VipTables::build(vips, self.lcores)?;
        self.reconfigure_with(&tables)
    }

    /// Applies prepared tables (see [`VipTables`], built for this engine's
    /// lcore count: their limits are split for it): no table is built here,
    /// each VIP's table is shared by pointer. On error nothing changes.
    ///
    /// VIPs and backends are matched by `(addr, port)` with what the engine
    /// has, so counters and connections follow them whatever the list order.
    /// - A new VIP admits SYNs at once.
    /// - A removed VIP stops admitting at once (its SYNs are answered with
    ///   RST); its connections drain: they run to their end untouched, and the
    ///   VIP's counters stay visible (in [`snapshot`](Self::snapshot), marked
    ///   `removed`) until the last one is released.
    /// - Changed VIP settings (limits, timeouts, tries, PROXY protocol,
    ///   affinity) apply to connections admitted from now on; rate and
    ///   bandwidth buckets keep their tokens (clamped to a new burst).
    /// - New connections use the new Maglev table, over backends `Up` with
    ///   weight > 0. Existing connections keep their backend, whatever
    ///   happened to it (removed, weight 0, `Drain`, `Down`): they end on
    ///   their own (or by the backend's RST / idle timeout). A removed
    ///   backend's counters stay until its last connection is released.
    pub fn reconfigure_with(&mut self, tables: &VipTables) -> Result<Reconfigured, ConfigError> {
        if tables.lcores != self.lcores {
            return Err(ConfigError::Lcores {
                tables: tables.lcores,
                engine: self.lcores,
            });
        }
        for p in &tables.vips {
            if p.cfg.address == self.addr {
                return Err(ConfigError::VipIsOwnAddress(p.cfg.address));
            }
            if p.limits.client_rate.is_some() && self.client_table_capacity == 0 {
                return Err(ConfigError::ClientTableCapacity(0));
            }
        }
        let mut r = Reconfigured::default();
        let existing: HashMap<(Ipv4Addr, u16), usize> = self
            .vips
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| ((v.cfg.address, v.cfg.port), i)))
            .collect();
        let mut listed = vec![false; self.vips.len()];
        self.vip_order.clear();
        for p in &tables.vips {
            let slot = match existing.get(&(p.cfg.address, p.cfg.port)) {
                Some(&slot) => {
                    vip_mut(&mut self.vips, slot).update(p, &mut r);
                    slot
                }
                None => {
                    r.vips_added += 1;
                    self.next_vip_uid = self.next_vip_uid.wrapping_add(1);
                    let v = VipState::new(p, self.next_vip_uid, &mut r);
                    match self.free_vips.pop() {
                        Some(slot) => {
                            self.vips[slot] = Some(v);
                            slot
                        }
                        None => {
                            self.vips.push(Some(v));
                            listed.push(false);
                            self.vips.len() - 1
                        }
                    }
                }
            };
            listed[slot] = true;
            self.vip_order.push(slot);
        }
        for (slot, &listed) in listed.iter().enumerate() {
            let Some(v) = self.vips[slot].as_mut() else {
                continue;
            };
            if listed {
                continue;
            }
            if v.configured {
                v.configured = false;
                r.vips_removed += 1;
            }
            if v.counters.active == 0 {
                self.vips[slot] = None;
                self.free_vips.push(slot);
            }
        }
        self.vip_by_endpoint = self
            .vip_order
            .iter()
            .map(|&slot| {
                let v = self.vips[slot].as_ref().expect("configured VIP");
                ((v.cfg.address, v.cfg.port), slot)
            })
            .collect();
        r.draining_connections = self.vips.iter().flatten().map(VipState::draining).sum();

        // Backends of draining VIPs and removed backends still carry traffic:
        // keep resolving them.
        let mut neighbors: Vec<Ipv4Addr> = self
            .vips
            .iter()
            .flatten()
            .flat_map(|v| v.backends.iter().flatten().map(|b| b.cfg.address))
            .filter(|a| self.network.contains_addr(a))
            .chain(self.gateway)
            .collect();
        neighbors.sort_unstable();
        neighbors.dedup();
        if neighbors != self.neighbors {
            self.neighbor_heard = vec![false; neighbors.len()];
            self.neighbors = neighbors;
            // Resolve new backends on the next poll.
            self.next_neighbor_refresh = Instant::ZERO;
        }
        Ok(r)
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
    ///
    /// A neighbour not heard from since the previous refresh (not yet
    /// resolved, say because the port came up after the first requests) is
    /// asked again after [`NEIGHBOR_RETRY`] instead.
    fn refresh_neighbors<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) {
        let all_heard = self.neighbor_heard.iter().all(|&h| h);
        self.neighbor_heard.iter_mut().for_each(|h| *h = false);
        self.next_neighbor_refresh = now + if all_heard { NEIGHBOR_REFRESH } else { NEIGHBOR_RETRY };
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

    /// Counters of VIP `vip` (index in the list last given to
    /// [`new`](Self::new) or [`reconfigure`](Self::reconfigure)).
    pub fn vip_counters(&self, vip: usize) -> Option<&VipCounters> {
        let slot = *self.vip_order.get(vip)?;
        self.vips[slot].as_ref().map(|v| &v.counters)
    }

    /// Counters of backend `backend` (index in the VIP's current list) of
    /// VIP `vip` (index as for [`vip_counters`](Self::vip_counters)).
    pub fn backend_counters(&self, vip: usize, backend: usize) -> Option<&BackendCounters> {
        let v = self.vips[*self.vip_order.get(vip)?].as_ref()?;
        let slot = *v.table_slots.get(backend)?;
        v.backends[slot].as_ref().map(|b| &b.counters)
    }

    fn find_vip(&self, addr: Ipv4Addr, port: u16) -> Option<&VipState> {
        self.vips
            .iter()
            .flatten()
            .find(|v| v.cfg.address == addr && v.cfg.port == port)
    }

    /// Counters of VIP `addr:port`, configured or still draining.
    pub fn vip_counters_for(&self, addr: Ipv4Addr, port: u16) -> Option<&VipCounters> {
        self.find_vip(addr, port).map(|v| &v.counters)
    }

    /// Open connections of a VIP's backend, to follow a drain: `Some(0)`
    /// once a drained backend has no connection left; `None` when the engine
    /// does not know the backend (never configured, or removed and drained).
    pub fn backend_active(
        &self,
        vip_addr: Ipv4Addr,
        vip_port: u16,
        backend_addr: Ipv4Addr,
        backend_port: u16,
    ) -> Option<u64> {
        self.find_vip(vip_addr, vip_port)?
            .backends
            .iter()
            .flatten()
            .find(|b| b.cfg.address == backend_addr && b.cfg.port == backend_port)
            .map(|b| b.counters.active)
    }

    /// Every VIP's and backend's counters, owned (allocates: for publishing,
    /// not for the packet path). Configured VIPs first, in configuration
    /// order, then removed VIPs still draining; within a VIP, its listed
    /// backends in order, then removed ones still draining. Entries of
    /// removed VIPs/backends disappear once drained, and drains end at
    /// different times on different lcores: aggregate by `(addr, port)`.
    pub fn snapshot(&self) -> Vec<VipSnapshot> {
        let listed = self.vip_order.iter().filter_map(|&s| self.vips[s].as_ref());
        let removed = self.vips.iter().flatten().filter(|v| !v.configured);
        listed.chain(removed).map(VipState::snapshot).collect()
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
        addr == self.addr || self.vips.iter().flatten().any(|v| v.cfg.address == addr)
    }

    fn ingress<T: TxToken>(&mut self, now: Instant, frame: &[u8], tx: T) {
        self.counters.frames_in += 1;
        let target = match classify(frame) {
            Frame::Arp { sender, target } if self.is_ours(target) => {
                if let Ok(i) = self.neighbors.binary_search(&sender) {
                    self.neighbor_heard[i] = true;
                }
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

    /// Admission, in order: concurrency limit (`drop_limit`), the client's
    /// rate (`drop_client_rate`), the VIP's rate (`drop_rate`), a backend
    /// with weight (`drop_no_backend`). Rate tokens are taken only from an
    /// admitted SYN, so a client over its limit does not use up the VIP's.
    fn admit(&mut self, now: Instant, vi: usize, key: FlowKey) -> Option<usize> {
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
        client.pause_synack(true);
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
        let vip = vip_mut(&mut self.vips, conn.vip);
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
                        let be = &mut vip.be_mut(bi).counters;
                        be.opened += 1;
                        be.active += 1;
                        conn.opened = true;
                        let vip_ep = vip.cfg.endpoint();
                        if let Some(h) = Header::encode(conn.proxy_protocol, conn.client_ep, vip_ep)
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
                        vip.be_mut(bi).counters.connect_failures += 1;
                        self.connect_next(id, now);
                    }
                }
            }
            Phase::Proxying => {
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
                conn.throttled = false;
                if vip.limits.bandwidth.is_some() {
                    vip.bw_bucket.take((up + down) as u64);
                    // `splice` stops at an empty source, a full destination
                    // or the budget: data left with room for it is throttled.
                    if (c.recv_queue() > 0 && b.can_send()) || (b.recv_queue() > 0 && c.can_send())
                    {
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
                }
                if !conn.fin_to_client && peer_finished(b) {
                    c.close();
                    conn.fin_to_client = true;
                }
                if was_reset(c.state(), conn.client_last) {
                    // A reset SYN-RECEIVED socket sits in LISTEN: close it.
                    c.abort();
                    b.abort();
                    vip.counters.client_resets += 1;
                    conn.phase = Phase::Closing;
                } else if was_reset(b.state(), conn.backend_last) {
                    c.abort();
                    vip.counters.backend_resets += 1;
                    vip.be_mut(bi).counters.resets += 1;
                    conn.phase = Phase::Closing;
                } else if now >= conn.last_active + conn.idle_timeout {
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
        let vip = vip_mut(&mut self.vips, conn.vip);
        if let Some(old) = conn.backend_idx.take() {
            if conn.local_port != 0 {
                let be = &vip.be(old).cfg;
                self.flows.remove(&FlowKey {
                    remote: be.address,
                    local: self.addr,
                    remote_port: be.port,
                    local_port: conn.local_port,
                });
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
        self.flows.insert(
            FlowKey {
                remote: be.cfg.address,
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
                now + conn.connect_timeout
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
        let vip = self.vips[conn.vip].as_ref().expect("VIP slot in use");
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
                self.flows.remove(&FlowKey {
                    remote: be.cfg.address,
                    local: self.addr,
                    remote_port: be.cfg.port,
                    local_port: conn.local_port,
                });
                self.ports.push_back(conn.local_port);
            }
            if conn.opened {
                be.counters.active -= 1;
            }
            vip.unref_backend(bi);
        }
        vip.counters.active -= 1;
        if vip.counters.active == 0 && !vip.configured {
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
/// memory. One copy, straight from ring to ring. At most `budget` bytes
/// (bandwidth limit).
fn splice(from: &mut tcp::Socket, to: &mut tcp::Socket, budget: usize) -> usize {
    let mut moved = 0;
    // The receive ring hands out at most two contiguous pieces (wrap-around).
    for _ in 0..2 {
        if !to.can_send() || moved >= budget {
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
