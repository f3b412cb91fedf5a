//! A connection: its two one-socket sets (client side, backend side), its
//! phase and the VIP settings it was admitted with. A released connection
//! keeps its sockets and buffers in the engine's bounded spare pool.

use std::net::{Ipv4Addr, SocketAddrV4};

use fulcrum_model::ProxyProtocol;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Client SYN received (SYN-ACK paused), or a cookie ACK (client
    /// established); no backend tried yet.
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
pub(super) struct Conn {
    pub(super) client: SocketSet<'static>,
    pub(super) backend: SocketSet<'static>,
    pub(super) ch: SocketHandle,
    pub(super) bh: SocketHandle,
    pub(super) vip: usize,
    pub(super) client_ep: SocketAddrV4,
    /// VIP settings as they were at admission: a reconfiguration applies to
    /// new connections only.
    pub(super) connect_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_tries: u8,
    pub(super) proxy_protocol: ProxyProtocol,
    /// Relaying stopped last service for want of bandwidth tokens.
    pub(super) throttled: bool,
    /// Splice down before up on the next service (alternates, so neither
    /// direction starves the other of bandwidth tokens).
    pub(super) down_first: bool,
    /// Maglev hash of the client (address+port or address).
    pub(super) hash: u64,
    pub(super) tries: u8,
    pub(super) backend_idx: Option<usize>,
    /// The backend connection reached ESTABLISHED (counted as active).
    pub(super) opened: bool,
    /// Local port of the backend connection; 0 when none is held. While
    /// held, `Engine::by_port[local_port]` is this connection.
    pub(super) local_port: u16,
    /// The backend's endpoint while `local_port` is held: what a segment
    /// found through `Engine::by_port` must come from.
    pub(super) backend_ep: SocketAddrV4,
    pub(super) phase: Phase,
    /// Last time payload moved either way. Segments alone do not count: our
    /// own retransmissions and probes draw ACKs from a peer that has stopped
    /// talking, and must not keep an idle connection alive.
    pub(super) last_active: Instant,
    /// Socket states seen at the end of the previous service, to tell a
    /// RST (CLOSED from an open state) from an orderly close.
    pub(super) client_last: State,
    pub(super) backend_last: State,
    pub(super) fin_to_backend: bool,
    pub(super) fin_to_client: bool,
    pub(super) dirty: bool,
    /// Sides whose socket may have changed since the last `settle`
    /// ([`CLIENT`], [`BACKEND`]): only those are polled for egress and asked
    /// their `poll_at`; an untouched side's `poll_at` is the one cached below.
    pub(super) touched: u8,
    /// smoltcp's `poll_at` of each side's set, as of the last `transmit` that
    /// had the side touched.
    pub(super) client_at: Option<Instant>,
    pub(super) backend_at: Option<Instant>,
    /// `Engine::arp_gen` at the last `settle`: a neighbour learnt since can
    /// change a waiting socket's `poll_at`, so both sides count as touched.
    pub(super) arp_gen: u32,
    /// Index in `Engine::handshaking` while the client has no SYN-ACK yet.
    pub(super) handshake_pos: Option<usize>,
    /// While half-open (listed in `handshaking`): when the client must have
    /// completed its handshake (`half_open_timeout` after admission).
    pub(super) half_open_deadline: Option<Instant>,
    /// Admitted from the ACK of a valid SYN cookie: the client was
    /// ESTABLISHED at admission, never half-open.
    pub(super) cookie: bool,
}

impl Conn {
    pub(super) fn new(buffer_size: usize) -> Self {
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
            backend_ep: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            phase: Phase::New,
            last_active: Instant::ZERO,
            client_last: State::Closed,
            backend_last: State::Closed,
            fin_to_backend: false,
            fin_to_client: false,
            dirty: false,
            touched: 0,
            client_at: None,
            backend_at: None,
            arp_gen: 0,
            handshake_pos: None,
            half_open_deadline: None,
            cookie: false,
        }
    }
}

/// `Conn::touched` bits.
pub(super) const CLIENT: u8 = 1;
pub(super) const BACKEND: u8 = 2;
pub(super) const BOTH: u8 = CLIENT | BACKEND;

/// Flow-table key: a segment's (remote, local) endpoints as we receive it.
/// Client sides only: a backend side is found by its local port
/// (`Engine::by_port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FlowKey {
    pub(super) remote: Ipv4Addr,
    pub(super) local: Ipv4Addr,
    pub(super) remote_port: u16,
    pub(super) local_port: u16,
}

/// The 12 bytes in two integer writes: the flow table's hasher (SipHash,
/// randomly keyed: clients choose their addresses and ports) costs per
/// `write` call, and the derived `Hash` made four.
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(u32::from(self.remote)) << 32 | u64::from(u32::from(self.local)));
        state.write_u32(u32::from(self.remote_port) << 16 | u32::from(self.local_port));
    }
}
