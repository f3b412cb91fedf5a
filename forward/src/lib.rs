//! Packet-forwarding modes for Fulcrum: L2 direct server return, IPIP/GUE
//! tunnelling and FullNAT, with per-lcore connection tracking.
//!
//! One [`Forwarder`] per lcore, owned by that lcore: no locks, no atomics, no
//! heap allocation per packet (everything is allocated in [`Forwarder::new`]
//! and [`Forwarder::install`]), no panics on any input.
//!
//! # VIPs
//! A VIP is a [`fulcrum_model::Vip`] in a forwarding mode, prepared once off
//! the packet path ([`ForwardVip::build`]: its Maglev table, its rewrite) and
//! shared between lcores; each lcore's forwarder takes the whole set at once
//! ([`Forwarder::install`]), at start and whenever the control plane changes
//! it, keyed by the control plane's VIP id.
//!
//! # Per packet
//! The dataplane passes the mbuf's whole data room and where the frame lies in
//! it ([`Forwarder::process`]); the verdict says where the rewritten frame
//! lies now (tunnel modes prepend into the headroom), or why it is dropped, or
//! that the frame is not for this crate ([`Verdict::NotMine`]: ARP, pings to
//! own addresses, proxy-mode VIPs, ...).
//!
//! # Decisions
//! - **Fragments** to a forwarding VIP are dropped and counted
//!   ([`DropReason::Fragment`]), as Katran does: non-first fragments carry no
//!   ports, so they cannot be matched to the flow's backend without
//!   reassembly or a fragment-tracking table, and a 3-tuple fallback would send
//!   the first and the other fragments of one datagram to different backends.
//! - **ICMP errors** (destination unreachable incl. fragmentation needed, time
//!   exceeded) are matched on the quoted header. To a VIP, about the VIP's
//!   reply to a client: DSR/tunnel forward them unchanged to the flow's
//!   backend (conntrack hit, else the Maglev choice for that tuple, like
//!   Katran); FullNAT translates the quote back to the backend's view
//!   (`backend:port -> snat:port`) and sends it to the backend from the SNAT
//!   address. To a SNAT address, about a FullNAT'ed packet towards a backend:
//!   translated to the client's view and sent to the client from the VIP.
//!   Echo requests to a VIP are answered with `fulcrum_packet::respond`.
//! - **TTL**: tunnel and FullNAT act as a router hop: TTL <= 1 is dropped
//!   ([`DropReason::TtlExceeded`], no ICMP time exceeded is generated), else
//!   decremented. DSR is an L2 hop and leaves TTL alone.
//! - **IPv4 options** pass through DSR and tunnel; FullNAT drops them
//!   ([`DropReason::IpOptions`]): source-route/record-route options would need
//!   rewriting with the addresses.
//! - **Checksums**: the IPv4 header checksum is verified (bad: dropped); L4
//!   checksums are not verified, only updated incrementally (RFC 1624).
//! - **MTU** (tunnel): a packet that would exceed [`ForwarderConfig::mtu`]
//!   once encapsulated is answered with ICMP fragmentation-needed (next-hop
//!   MTU = mtu - overhead) if DF is set, else dropped ([`DropReason::TooBig`]):
//!   we do not fragment.
//! - **GUE** is Katran's format: GUE "variant 1", direct IP-in-UDP with no GUE
//!   header (the inner IPv4 header's version nibble 4 = 0b01.. marks it), to
//!   UDP port 6080 by default, UDP checksum 0 (allowed for IPv4).
//! - **Outer source** (both tunnels): an address in the VIP's `src_prefix`
//!   whose host bits come from a mix of the client address and port
//!   ([`tunnel_entropy`]), so a backend NIC hashing on the outer header spreads
//!   flows (Katran puts client bits in the outer source the same way). GUE also
//!   puts entropy in the UDP source port (49152-65535).
//! - **Neighbours**: a backend's MAC is configured ([`fulcrum_model::Backend::mac`]:
//!   its own, or the gateway's for an off-link tunnel endpoint) or resolved by
//!   ARP ([`Forwarder::observe_arp`], [`Forwarder::poll_arp`]). A flow's entry
//!   stores the MAC at creation.
//!
//! # Under a SYN/ACK flood
//! Spoofed packets create entries too; these rules keep them from pushing
//! out the flows that matter ([`FloodConfig`], [`Timeouts`], [`Counters`]):
//! - **Eviction order.** A full bucket evicts unconfirmed entries (SYN
//!   only, or mid-stream on probation) first, then closing/closed ones, and
//!   an established TCP or UDP flow only when its bucket holds nothing else
//!   ([`Counters::evictions_unconfirmed`], [`Counters::evictions_established`]).
//! - **Short SYN timeout under pressure.** While the table is at least half
//!   full (entries in use, unreclaimed expired ones included), a SYN-only
//!   entry is created and refreshed with [`Timeouts::tcp_syn_pressure`]
//!   (3 s) instead of [`Timeouts::tcp_syn`] (30 s).
//! - **Mid-stream probation** (DSR, tunnel). A TCP packet without SYN, FIN
//!   or RST for an unknown flow (often a live flow moved here from another
//!   load balancer by ECMP) is forwarded to the Maglev backend at once and
//!   tracked in the probation state with [`Timeouts::tcp_probation`] (10 s).
//!   The flow is *alive*, and the entry becomes established (900 s), when a
//!   packet of it arrives at least [`Timeouts::probation_confirm`] (1 s)
//!   after the entry was created; earlier packets only refresh the
//!   probation timeout. A spoofed ACK flood, one packet per tuple, never
//!   confirms. Counted: [`Counters::midstream_flows`],
//!   [`Counters::midstream_confirmed`]. FullNAT still refuses non-SYN new
//!   TCP flows ([`DropReason::NoSyn`]).
//! - **New-flow cap** (DSR, tunnel; Katran's MAX_CONN_RATE). A token bucket
//!   per lcore ([`FloodConfig::new_flow_rate`], [`FloodConfig::new_flow_burst`],
//!   refilled from the `now_ns` the forwarder is given): a new flow without a
//!   token is still forwarded to the backend Maglev picks, but no entry is
//!   made ([`Counters::flows_not_tracked`]); its next packet is a new flow
//!   again, and Maglev gives the same backend while the backend set stays.
//! - **FullNAT half-open quota.** At most [`FloodConfig::half_open_max`]
//!   flows per lcore in the SYN state (client SYN seen, client ACK not yet),
//!   and never more than half of this lcore's source ports
//!   (`ports x addresses / 2`), so half-open flows cannot exhaust the ports
//!   of a backend; further SYNs are dropped ([`DropReason::HalfOpenFull`]).
//!   Expired half-open entries still count until reclaimed: a SYN finding
//!   the quota full first reclaims up to 8 of the oldest.
//! - **Retransmitted SYNs pass a full quota** ("first SYN drop", as DDoS
//!   mitigation appliances authenticate). A SYN dropped for the quota has
//!   its tuple remembered (a fixed table of [`SYN_MEMORY_SLOTS`] per
//!   lcore: 4-way sets of (fingerprint, time), keyed by a hash derived
//!   from [`FloodConfig::port_seed`], the oldest of a set replaced). A SYN
//!   of a remembered tuple arriving 0.5 s to 10 s after it (a real
//!   client's retransmission: Linux resends after 1 s, then 3 s, ...; not
//!   an immediate duplicate) is admitted although the quota is full: the
//!   oldest of up to 8 half-open entries at the head of the half-open ring
//!   (a spoofed SYN that never completed) is freed with its twin and its
//!   source port, and counted ([`Counters::syn_retransmit_admitted`]).
//!   What a client sees under a flood: its first SYN is dropped
//!   (`half_open_full`), its retransmission 1 s later gets through. A
//!   random-source flood never repeats a tuple; an attacker repeating
//!   every tuple halves his own rate and still competes only with other
//!   repeated tuples (and evicts only half-open entries, never an
//!   established flow). The memory holds the last ~1M dropped tuples
//!   (8 MiB): at 100k dropped SYN/s a tuple stays about 10 s.
//! - **Unpredictable FullNAT source ports** (RFC 6056 algorithm 3): the
//!   search starts at a keyed hash of (client address, client port, backend
//!   address, backend port, protocol) over this lcore's (address, port)
//!   space, the key derived from [`FloodConfig::port_seed`], then probes
//!   linearly (at most 64 candidates). The client port is in the hash so
//!   that flows to one backend do not all start at one offset and cluster.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conntrack;
mod csum;
mod datapath;
mod fast;
mod field;
mod neigh;
mod vips;

#[cfg(test)]
mod testdata;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::time::Duration;

use fulcrum_model::steer::owner_of_port;
use fulcrum_model::{Proto, MAX_VIPS};
use smoltcp::wire::EthernetAddress;

use conntrack::{tick, ticks, State, Table, STATES};
use neigh::Neighbours;
use vips::VipRt;

pub use neigh::ARP_REQUEST_LEN;
pub use vips::{BackendStats, FloodStats, ForwardVip, Installed, VipStats};

/// Memory per connection-tracking entry (one direction of one flow; a
/// FullNAT flow takes two): its 64-byte cache line and its share of the
/// bucket's signature line.
pub const ENTRY_BYTES: usize = conntrack::BYTES_PER_ENTRY;

/// Most frames [`Forwarder::process_burst`] takes at once (a receive burst).
pub const MAX_BURST: usize = 32;

/// Slots of the per-lcore memory of FullNAT SYNs dropped for the
/// half-open quota (8 bytes each; see the crate docs, "Retransmitted SYNs
/// pass a full quota").
pub const SYN_MEMORY_SLOTS: usize = 1 << 20;

/// Default entries per lcore.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Headroom [`Forwarder::process`] needs before the frame for the largest
/// encapsulation (GUE: outer IPv4 + UDP).
pub const MAX_ENCAP_OVERHEAD: usize = 28;

/// Connection-tracking timeouts (IPVS/DPVS-like defaults, shortened for
/// half-open and reset flows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// After a SYN, until the handshake completes: 30 s (while the table
    /// is under pressure, [`Timeouts::tcp_syn_pressure`] instead).
    pub tcp_syn: Duration,
    /// Established: 900 s (IPVS's default).
    pub tcp_established: Duration,
    /// After a FIN in either direction: 60 s.
    pub tcp_closing: Duration,
    /// After a RST: 10 s (IPVS's CLOSE), so stragglers still find the backend.
    pub tcp_closed: Duration,
    /// UDP, refreshed by every packet: 300 s (IPVS's default).
    pub udp: Duration,
    /// SYN-only entries while the table is under pressure (at least half
    /// full): 3 s. Long enough for a handshake and a retransmitted SYN
    /// (which refreshes it); short, so a SYN flood's entries go fast.
    pub tcp_syn_pressure: Duration,
    /// Mid-stream entries (created by a TCP packet without SYN) until
    /// confirmed: 10 s.
    pub tcp_probation: Duration,
    /// A mid-stream entry is confirmed (established) by a packet of its
    /// flow arriving at least this long after its creation: 1 s.
    pub probation_confirm: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(30),
            tcp_established: Duration::from_secs(900),
            tcp_closing: Duration::from_secs(60),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(300),
            tcp_syn_pressure: Duration::from_secs(3),
            tcp_probation: Duration::from_secs(10),
            probation_confirm: Duration::from_secs(1),
        }
    }
}

/// Default [`FloodConfig::new_flow_rate`]: Katran's MAX_CONN_RATE.
pub const DEFAULT_NEW_FLOW_RATE: u32 = 125_000;

/// Flood defences (see the crate docs, "Under a SYN/ACK flood").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodConfig {
    /// DSR/tunnel: new tracked flows per second per lcore; beyond it new
    /// flows are forwarded by Maglev without an entry. 0: no cap.
    /// Default [`DEFAULT_NEW_FLOW_RATE`].
    pub new_flow_rate: u32,
    /// Token bucket depth (flows tracked at once after a quiet spell); 0:
    /// one second's worth (`new_flow_rate`). Default 0.
    pub new_flow_burst: u32,
    /// FullNAT: most flows per lcore in the SYN state. 0, or anything above
    /// half this lcore's source ports x addresses: that half. Default 16384.
    pub half_open_max: u32,
    /// Seed of the FullNAT source-port hash key (RFC 6056). Keep it secret;
    /// `Default` draws one at random per process.
    pub port_seed: u64,
}

impl Default for FloodConfig {
    fn default() -> Self {
        use std::hash::BuildHasher;
        FloodConfig {
            new_flow_rate: DEFAULT_NEW_FLOW_RATE,
            new_flow_burst: 0,
            half_open_max: 16_384,
            port_seed: std::collections::hash_map::RandomState::new().hash_one(0x6056u64),
        }
    }
}

/// Everything a [`Forwarder`] needs.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// Our MAC: source of everything we send, and the only unicast MAC we accept.
    pub mac: [u8; 6],
    /// Our own addresses. The first is the ARP sender address; all are FullNAT
    /// source (SNAT) addresses, tried in order.
    pub addrs: Vec<Ipv4Addr>,
    /// This lcore's index.
    pub lcore: usize,
    /// Number of lcores (ports `p` with `p % lcores == lcore` are ours).
    pub lcores: usize,
    /// FullNAT source ports, half-open `[lo, hi)`; same range as proxy mode's
    /// local ports (they share `owner_of_port`, so do not let both modes use
    /// the same address:port range at once).
    pub local_ports: (u16, u16),
    /// Connection-tracking entries for this lcore (rounded up to whole buckets of 31).
    pub capacity: usize,
    /// Connection-tracking timeouts.
    pub timeouts: Timeouts,
    /// Shown the connection-tracking table's memory once, when it has been
    /// allocated and zeroed: the dataplane has the kernel move it onto
    /// transparent huge pages. `|_| {}` for none.
    pub table_memory_hint: fn(&mut [u8]),
    /// IPv4 MTU towards backends (encapsulated packets must fit).
    pub mtu: u16,
    /// Most addresses the ARP table tracks.
    pub neighbours: usize,
    /// Maglev flow-hash seed (`fulcrum_maglev::DEFAULT_FLOW_SEED`); must be
    /// the same on every load balancer.
    pub flow_seed: u64,
    /// Flood defences (`FloodConfig::default()` for the defaults).
    pub flood: FloodConfig,
}

/// Why the configuration or a backend update is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The Maglev table could not be built.
    #[error("maglev: {0}")]
    Maglev(#[from] fulcrum_maglev::MaglevError),
    /// The VIP's own fields are invalid ([`fulcrum_model::Vip::validate`]).
    #[error("{0}")]
    Invalid(#[from] fulcrum_model::Invalid),
    /// A proxy-mode VIP: terminated by the proxy engine, not forwarded.
    #[error("{0} is a proxy VIP, not a forwarding one")]
    NotForwarding(String),
    /// VIP ids are `0..fulcrum_model::MAX_VIPS`.
    #[error("VIP id {0} is not below {max}", max = fulcrum_model::MAX_VIPS)]
    BadId(u16),
    /// The same id twice in one [`Forwarder::install`].
    #[error("VIP id {0} is listed twice")]
    DuplicateId(u16),
    /// The same address, port and protocol under two ids in one install.
    #[error("{0} is already installed under id {1}")]
    DuplicateVip(String, u16),
    /// Every internal VIP index of this forwarder's life has been used (one
    /// per VIP added or changed in identity; see [`Forwarder::install`]).
    #[error("internal VIP indices exhausted ({0} VIPs added or changed since start): restart the forwarder")]
    IndicesExhausted(u32),
    /// Tunnel mode without its settings.
    #[error("tunnel mode without tunnel settings")]
    NoTunnel,
    /// FullNAT needs at least one own address and owned ports.
    #[error("FullNAT VIP configured but no own address or no local port owned by lcore {0}")]
    NoSnatPorts(usize),
    /// `lcore >= lcores`.
    #[error("lcore {0} out of {1}")]
    BadLcore(usize, usize),
    /// Source prefix length above 32.
    #[error("tunnel source prefix length {0} > 32")]
    BadPrefix(u8),
    /// The neighbour table is full.
    #[error("neighbour table full ({0} entries)")]
    NeighboursFull(usize),
    /// The connection-tracking table could not be allocated.
    #[error("connection-tracking table of {entries} entries ({bytes} bytes): {error}")]
    Memory {
        /// Entries asked for.
        entries: usize,
        /// Bytes that takes.
        bytes: usize,
        /// What the system said.
        error: String,
    },
}

fulcrum_packet::drop_reasons! {
    /// Every reason [`Forwarder::process`] drops a frame; one counter each.
    enum;
    /// `start`/`len` do not lie within the buffer.
    BadBuffer => "bad_buffer",
    /// Shorter than a minimal IPv4 header.
    Ipv4Truncated => "ipv4_truncated",
    /// Version, IHL or total length inconsistent with the frame.
    Ipv4BadHeader => "ipv4_bad_header",
    /// IPv4 header checksum wrong.
    Ipv4BadChecksum => "ipv4_bad_checksum",
    /// Source address unspecified, broadcast, multicast or loopback.
    MartianSource => "martian_source",
    /// An IPv4 fragment to a VIP: not forwarded (see crate docs).
    Fragment => "fragment",
    /// TCP header truncated or data offset bad.
    TcpMalformed => "tcp_malformed",
    /// UDP header truncated or length bad.
    UdpMalformed => "udp_malformed",
    /// ICMP to a VIP that is truncated, or an error with an unusable quote.
    IcmpMalformed => "icmp_malformed",
    /// ICMP checksum wrong.
    IcmpBadChecksum => "icmp_bad_checksum",
    /// ICMP to a VIP that is neither an echo request nor an error we forward.
    IcmpUnsupported => "icmp_unsupported",
    /// ICMP error about a FullNAT flow we do not track.
    IcmpNoFlow => "icmp_no_flow",
    /// TTL <= 1 where we route (tunnel, FullNAT).
    TtlExceeded => "ttl_exceeded",
    /// IPv4 options on a FullNAT packet.
    IpOptions => "ip_options",
    /// Every backend of the VIP is drained (or there are none).
    NoBackend => "no_backend",
    /// The backend's MAC is not resolved yet (an ARP request is queued).
    NeighbourUnresolved => "neighbour_unresolved",
    /// Not enough headroom in the buffer to encapsulate.
    NoHeadroom => "no_headroom",
    /// Too big to encapsulate within the MTU and DF clear (we do not fragment).
    TooBig => "too_big",
    /// New FullNAT TCP flow that does not start with a SYN.
    NoSyn => "no_syn",
    /// No free FullNAT source port for this backend.
    NoPort => "no_port",
    /// New FullNAT SYN while this lcore's half-open quota is full.
    HalfOpenFull => "half_open_full",
}

/// What to do with a frame.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send `buf[start..start + len]` out of the port it came in on (may
    /// differ from the input's start and length). `u32`s (buffers beyond
    /// 4 GiB are refused as [`DropReason::BadBuffer`]), so that a verdict
    /// travels in registers, not through memory.
    Transmit {
        /// New start of the frame in the buffer.
        start: u32,
        /// New length.
        len: u32,
    },
    /// Free it; counted under the reason.
    Drop(DropReason),
    /// Not for the forwarding modes: leave it to the dataplane's other paths.
    /// The frame is untouched.
    NotMine,
}

/// Per-lcore counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Drops by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
    /// Frames transmitted (forwarded, translated, or answered).
    pub transmitted: u64,
    /// Frames handed back as [`Verdict::NotMine`].
    pub not_mine: u64,
    /// Flows created.
    pub new_flows: u64,
    /// Live entries evicted because their bucket was full (all classes).
    pub evictions: u64,
    /// Of `evictions`: unconfirmed entries (SYN only, or on probation).
    pub evictions_unconfirmed: u64,
    /// Of `evictions`: established TCP and UDP entries (only when the
    /// bucket held nothing else).
    pub evictions_established: u64,
    /// TCP entries created mid-stream (first packet not a SYN; DSR, tunnel).
    pub midstream_flows: u64,
    /// Of those, confirmed alive (see [`Timeouts::probation_confirm`]).
    pub midstream_confirmed: u64,
    /// DSR/tunnel new-flow packets forwarded by Maglev without an entry
    /// (the new-flow cap, [`FloodConfig::new_flow_rate`]).
    pub flows_not_tracked: u64,
    /// Expired entries reclaimed.
    pub expired: u64,
    /// FullNAT SYNs admitted past a full half-open quota because they were
    /// retransmissions of a SYN dropped for it 0.5 s to 10 s before (each
    /// freed the oldest half-open flow; see the crate docs).
    pub syn_retransmit_admitted: u64,
    /// ICMP errors forwarded to a backend or translated to a client.
    pub icmp_errors_forwarded: u64,
    /// ICMP fragmentation-needed sent to clients.
    pub icmp_too_big_sent: u64,
    /// Echo requests to VIPs answered.
    pub echo_replies: u64,
    /// ARP requests emitted.
    pub arp_requests: u64,
    /// ARP packets that updated a neighbour.
    pub arp_learned: u64,
}

/// Traffic counters of a VIP or a backend (both directions for FullNAT;
/// bytes are IPv4 total lengths as received).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows created.
    pub new_flows: u64,
}

/// One lcore's forwarding state.
pub struct Forwarder {
    mac: EthernetAddress,
    addrs: Vec<Ipv4Addr>,
    /// Addresses of the installed VIPs, each once.
    vip_addrs: Vec<Ipv4Addr>,
    /// `vip_key` of each installed VIP, dense: what the per-packet VIP
    /// lookup scans; `vip_ids[i]` is the id of the VIP `vip_keys[i]` names.
    vip_keys: Vec<u64>,
    vip_ids: Vec<u16>,
    lcore: usize,
    lcores: usize,
    /// Our ports in `local_ports`, ascending (allocated once).
    ports: Vec<u16>,
    /// Keys of the source-port hash (from `FloodConfig::port_seed`).
    port_keys: [u64; 3],
    table: Table,
    timeouts: Ticks,
    /// Per-state timeouts without pressure, and `tcp_syn_pressure`:
    /// `timeouts.by_state[SynSent]` is set from these by the pressure.
    syn_ticks: (u32, u32),
    /// The new-flow cap (DSR, tunnel).
    new_flows: TokenBucket,
    /// Effective FullNAT half-open quota.
    half_open_max: usize,
    /// Half-open FullNAT entries, oldest first (a ring of `half_open_max`
    /// indexes): where the quota looks for expired ones to reclaim.
    half_open_ring: Ring,
    /// Tuples of FullNAT SYNs dropped for the quota, to admit their
    /// retransmissions.
    syn_memory: SynMemory,
    mtu: u16,
    neigh: Neighbours,
    /// Installed VIPs by id (`MAX_VIPS` slots).
    vips: Vec<Option<VipRt>>,
    /// The next internal VIP index (see [`Forwarder::install`]).
    next_index: u32,
    /// The last `VipRt::backends_stamp` given (0: none yet).
    next_stamp: u32,
    flow_seed: u64,
    counters: Counters,
}

/// A VIP's address, port and protocol in one word, for
/// [`datapath::find_vip`]'s scan.
#[inline]
fn vip_key(addr: Ipv4Addr, port: u16, proto: u8) -> u64 {
    u64::from(u32::from(addr)) << 24 | u64::from(port) << 8 | u64::from(proto)
}

/// The tunnel entropy of a client flow: outer source host bits come from its
/// low bits, the GUE source port from its high bits. A multiplicative mix of
/// the client address and port (stable across load balancers and restarts):
/// `x = (client ^ (port << 16 | port)) * 0x9E3779B1 (mod 2^32); x ^ (x >> 16)`.
pub fn tunnel_entropy(client: Ipv4Addr, client_port: u16) -> u32 {
    let p = u32::from(client_port);
    let x = (u32::from(client) ^ (p << 16 | p)).wrapping_mul(0x9E37_79B1);
    x ^ (x >> 16)
}

impl Forwarder {
    /// Allocates everything: the conntrack table (`capacity` x
    /// [`ENTRY_BYTES`]), the port list. No VIP yet: see [`Forwarder::install`].
    ///
    /// # Errors
    /// See [`ForwardError`].
    pub fn new(config: ForwarderConfig) -> Result<Self, ForwardError> {
        let lcores = config.lcores.max(1);
        if config.lcore >= lcores {
            return Err(ForwardError::BadLcore(config.lcore, lcores));
        }
        let (lo, hi) = config.local_ports;
        let ports: Vec<u16> = (lo..hi).filter(|&p| owner_of_port(p, lcores) == config.lcore).collect();
        let t = &config.timeouts;
        let to = |d: Duration| ticks(d.as_nanos().min(u128::from(u64::MAX)) as u64);
        let mut by_state = [1; STATES];
        for (s, d) in [
            (State::SynSent, t.tcp_syn),
            (State::Established, t.tcp_established),
            (State::Closing, t.tcp_closing),
            (State::Closed, t.tcp_closed),
            (State::Udp, t.udp),
            (State::Probation, t.tcp_probation),
        ] {
            by_state[s as usize] = to(d);
        }
        let space = ports.len().saturating_mul(config.addrs.len());
        let fl = &config.flood;
        // Half the port space, but one when there is a single candidate.
        let half = (space / 2).max(space.min(1));
        let half_open_max = match fl.half_open_max as usize {
            0 => half,
            n => n.min(half),
        };
        Ok(Forwarder {
            mac: EthernetAddress(config.mac),
            addrs: config.addrs.clone(),
            vip_addrs: Vec::new(),
            vip_keys: Vec::new(),
            vip_ids: Vec::new(),
            lcore: config.lcore,
            lcores,
            ports,
            port_keys: datapath::port_keys(fl.port_seed),
            table: Table::new(config.capacity, config.table_memory_hint).map_err(|e| {
                ForwardError::Memory {
                    entries: config.capacity,
                    bytes: config.capacity.saturating_mul(ENTRY_BYTES),
                    error: e.to_string(),
                }
            })?,
            timeouts: Ticks {
                by_state,
                confirm: to(t.probation_confirm),
            },
            syn_ticks: (to(t.tcp_syn), to(t.tcp_syn_pressure)),
            new_flows: TokenBucket::new(fl.new_flow_rate, fl.new_flow_burst),
            half_open_max,
            half_open_ring: Ring::new(half_open_max),
            syn_memory: SynMemory::new(SYN_MEMORY_SLOTS, fl.port_seed),
            mtu: config.mtu,
            neigh: Neighbours::new(config.neighbours),
            vips: (0..MAX_VIPS).map(|_| None).collect(),
            next_index: 0,
            next_stamp: 0,
            flow_seed: config.flow_seed,
            counters: Counters::default(),
        })
    }

    /// Whether any VIP is installed (the dataplane skips the forwarder when none is).
    pub fn has_vips(&self) -> bool {
        !self.vip_ids.is_empty()
    }

    /// The id of the installed VIP `addr:port/proto` (exact port; 0 for an
    /// all-ports VIP).
    pub fn vip_id(&self, addr: Ipv4Addr, port: u16, proto: Proto) -> Option<u16> {
        let k = vip_key(addr, port, proto.number());
        let i = self.vip_keys.iter().position(|&x| x == k)?;
        self.vip_ids.get(i).copied()
    }

    /// Counters of this lcore.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Connection-tracking entries in use (expired, unreclaimed ones included).
    pub fn conntrack_len(&self) -> usize {
        self.table.live()
    }

    /// Connection-tracking capacity in entries.
    pub fn conntrack_capacity(&self) -> usize {
        self.table.capacity()
    }

    /// FullNAT flows in the SYN state on this lcore (expired, unreclaimed
    /// ones included), and the effective quota ([`FloodConfig::half_open_max`]).
    pub fn half_open(&self) -> (usize, usize) {
        (self.table.half_open(), self.half_open_max)
    }

    /// Reclaims expired entries among the next `budget` table slots (call
    /// when idle; expiry is also lazy, so this is optional).
    pub fn sweep(&mut self, now_ns: u64, budget: usize) {
        let n = self.table.sweep(tick(now_ns), budget);
        self.counters.expired += n;
    }

    /// Feeds an ARP frame (request or reply, before `respond` rewrites it);
    /// learns the sender's MAC if it is a tracked backend address. Returns
    /// whether it did.
    pub fn observe_arp(&mut self, now_ns: u64, frame: &[u8]) -> bool {
        let learned = self.neigh.observe(frame, now_ns);
        self.counters.arp_learned += u64::from(learned);
        learned
    }

    /// Writes the next due ARP request (for an unresolved or stale backend
    /// neighbour) into `buf` and returns its length ([`ARP_REQUEST_LEN`]),
    /// to be sent out of the port. Call until `None` every millisecond or
    /// so; cheap when nothing is due.
    pub fn poll_arp(&mut self, now_ns: u64, buf: &mut [u8]) -> Option<usize> {
        let our_ip = *self.addrs.first()?;
        let n = self.neigh.poll(now_ns, (self.mac, our_ip), buf)?;
        self.counters.arp_requests += 1;
        Some(n)
    }

    /// The MAC learned for `addr`, if any (diagnostics).
    pub fn neighbour(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.neigh.mac_of(addr)
    }

    /// Which lcore must process `frame` (see
    /// [`fulcrum_model::steer::owner_of_flow`], [`owner_of_port`]); `None` when it is not a forwarding frame or
    /// cannot be parsed (process it locally: it will be dropped or handed
    /// back as `NotMine`). ICMP errors are steered by their quoted tuple.
    pub fn owner(&self, frame: &[u8]) -> Option<usize> {
        datapath::owner(self, frame)
    }

    /// Processes one frame. `buf` is the mbuf's whole data room and the frame
    /// is `buf[start..start + len]`; tunnel modes need
    /// [`MAX_ENCAP_OVERHEAD`] bytes of headroom before `start`. Never panics,
    /// never allocates; on `Drop` and `NotMine` the frame is unchanged.
    pub fn process(&mut self, now_ns: u64, buf: &mut [u8], start: usize, len: usize) -> Verdict {
        let v = datapath::process(self, now_ns, buf, start, len);
        self.count(v)
    }

    /// Processes a burst: `verdicts[i]` is what [`Forwarder::process`] would
    /// have said of `frames[i]` (for the first `min(frames, verdicts)`
    /// frames), and the frames are rewritten the same way.
    ///
    /// Faster than one call per frame: it parses and hashes every frame of
    /// the plain shape first (the fast path, `fast.rs`), asking `prefetch`
    /// for each flow's bucket signature line, then for the entry line it
    /// points at, and only then acts, so a burst waits for its table misses
    /// together, not one after another; an established flow's packet then
    /// goes straight to its rewrite. Other frames, and new flows, take
    /// [`Forwarder::process`]'s path. `prefetch` is a cache hint for an
    /// address (it must not dereference it; this crate has no unsafe code to
    /// issue one itself); a no-op hint is correct, only slower.
    pub fn process_burst<F: Frame>(
        &mut self,
        now_ns: u64,
        frames: &mut [F],
        verdicts: &mut [Verdict],
        prefetch: impl Fn(*const u8),
    ) {
        let n = frames.len().min(verdicts.len());
        let now = tick(now_ns);
        for (frames, verdicts) in frames[..n].chunks_mut(MAX_BURST).zip(verdicts[..n].chunks_mut(MAX_BURST)) {
            let mut lanes = [None; MAX_BURST];
            for (lane, fr) in lanes.iter_mut().zip(frames.iter()) {
                *lane = fast::stage(self, fr.bytes());
                if let Some(p) = lane.as_ref().and_then(|l| self.table.sig_line(&l.hashed)) {
                    prefetch(p);
                }
            }
            for lane in lanes.iter_mut().flatten() {
                if let Some(p) = self.table.probe(&mut lane.hashed) {
                    prefetch(p);
                }
            }
            for ((fr, lane), v) in frames.iter_mut().zip(&lanes).zip(verdicts.iter_mut()) {
                let (buf, start, len) = fr.room_mut();
                if let Some(l) = lane {
                    if fast::act(self, now, buf, start, l, v) {
                        continue;
                    }
                }
                let verdict = datapath::process(self, now_ns, buf, start, len);
                *v = self.count(verdict);
            }
        }
    }

    #[inline]
    fn count(&mut self, v: Verdict) -> Verdict {
        match v {
            Verdict::Transmit { .. } => self.counters.transmitted += 1,
            Verdict::Drop(r) => self.counters.drops[r.index()] += 1,
            Verdict::NotMine => self.counters.not_mine += 1,
        }
        v
    }
}

/// Timeouts in ticks, as the packet path uses them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticks {
    /// By [`State`] value (index 0 unused).
    pub by_state: [u32; STATES],
    /// [`Timeouts::probation_confirm`].
    pub confirm: u32,
}

/// Nanotokens per token of [`TokenBucket`]: one token per flow, refilled
/// at `rate` nanotokens per nanosecond (= `rate` tokens per second), so
/// refilling needs no division.
const NANO: u64 = 1_000_000_000;

/// A token bucket of new flows: `rate` per second, `depth` at most.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    /// Flows per second; 0: unlimited.
    rate: u64,
    /// Most nanotokens held (`burst x NANO`).
    depth: u64,
    nanotokens: u64,
    /// When it was last refilled (ns); time going backwards refills nothing.
    at_ns: u64,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = if burst == 0 { rate } else { burst };
        let depth = u64::from(burst) * NANO;
        TokenBucket { rate: u64::from(rate), depth, nanotokens: depth, at_ns: 0 }
    }

    /// Takes a token if there is one (refilling first); always with no cap.
    #[inline]
    pub(crate) fn take(&mut self, now_ns: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        if now_ns > self.at_ns {
            let add = (now_ns - self.at_ns).saturating_mul(self.rate);
            self.nanotokens = self.nanotokens.saturating_add(add).min(self.depth);
            self.at_ns = now_ns;
        }
        match self.nanotokens.checked_sub(NANO) {
            Some(left) => {
                self.nanotokens = left;
                true
            }
            None => false,
        }
    }
}

/// A fixed ring of entry indexes (allocated once; pushing onto a full ring
/// drops the oldest).
pub(crate) struct Ring {
    slots: Vec<u32>,
    head: usize,
    len: usize,
}

impl Ring {
    fn new(n: usize) -> Self {
        Ring { slots: vec![0; n], head: 0, len: 0 }
    }

    pub(crate) fn push(&mut self, i: u32) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        if self.len == n {
            self.head = (self.head + 1) % n;
            self.len -= 1;
        }
        if let Some(s) = self.slots.get_mut((self.head + self.len) % n) {
            *s = i;
            self.len += 1;
        }
    }

    pub(crate) fn pop(&mut self) -> Option<u32> {
        let n = self.slots.len();
        if self.len == 0 || n == 0 {
            return None;
        }
        let i = *self.slots.get(self.head)?;
        self.head = (self.head + 1) % n;
        self.len -= 1;
        Some(i)
    }
}

/// Ways of a [`SynMemory`] set.
const SYN_WAYS: usize = 4;

/// A fixed memory of tuples (FullNAT SYNs dropped for the half-open quota)
/// and when each was first seen: sets of [`SYN_WAYS`] slots of
/// `fingerprint << 32 | tick`, picked by a keyed hash; a new tuple takes a
/// free slot of its set, else the oldest. Fingerprint 0: free.
pub(crate) struct SynMemory {
    slots: Vec<u64>,
    keys: [u64; 3],
}

/// What [`SynMemory::seen`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not remembered (or too long ago): remembered now.
    First,
    /// Remembered, but less than the window's start ago: left as it was.
    TooSoon,
    /// Remembered within the window: the slot, to [`SynMemory::forget`].
    Again(usize),
}

impl SynMemory {
    /// A free slot (written, not just zeroed: the pages are touched now,
    /// not on the packet path).
    const FREE: u64 = u32::MAX as u64;

    fn new(slots: usize, seed: u64) -> Self {
        let sets = slots.div_ceil(SYN_WAYS).max(1);
        SynMemory {
            slots: vec![Self::FREE; sets * SYN_WAYS],
            keys: datapath::port_keys(seed ^ 0x5359_4e5f_5245_5458),
        }
    }

    /// Memory in slots (fixed).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether `key`'s SYN was seen `window.0..=window.1` ticks before
    /// `now`; remembers it as first seen now unless it was seen less than
    /// `window.0` ago.
    pub(crate) fn seen(&mut self, key: &conntrack::Key, now: u32, window: (u32, u32)) -> Seen {
        let sets = self.slots.len() / SYN_WAYS;
        if sets == 0 {
            return Seen::First;
        }
        let start = datapath::port_start(&self.keys, (key.src, key.sport), (key.dst, key.dport), key.proto, sets) * SYN_WAYS;
        // Fingerprint from other bits of the same keys.
        let fp = (datapath::port_start(&self.keys, (key.dst, key.dport), (key.src, key.sport), key.proto, 1 << 32) as u32).max(1);
        let Some(set) = self.slots.get_mut(start..start + SYN_WAYS) else { return Seen::First };
        let age = |s: u64| now.wrapping_sub(s as u32);
        let is_free = |s: u64| s >> 32 == 0;
        let hit = set.iter().position(|&s| (s >> 32) as u32 == fp);
        if let Some(w) = hit {
            let a = set.get(w).map_or(0, |&s| age(s));
            if a < window.0 {
                return Seen::TooSoon;
            }
            if a <= window.1 {
                return Seen::Again(start + w);
            }
        }
        // A stale sighting is renewed in place; a new tuple takes a free
        // slot, else the oldest.
        let victim = hit
            .or_else(|| set.iter().position(|&s| is_free(s)))
            .or_else(|| (0..SYN_WAYS).max_by_key(|&w| set.get(w).map_or(0, |&s| age(s))))
            .unwrap_or(0);
        if let Some(s) = set.get_mut(victim) {
            *s = u64::from(fp) << 32 | u64::from(now);
        }
        Seen::First
    }

    /// Frees slot `i` (its retransmission was admitted).
    pub(crate) fn forget(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = Self::FREE;
        }
    }
}

/// A frame in a buffer the forwarder may rewrite in place (an mbuf), for
/// [`Forwarder::process_burst`].
pub trait Frame {
    /// The frame's bytes.
    fn bytes(&self) -> &[u8];
    /// The whole buffer and where the frame lies in it: `(buf, start, len)`
    /// as [`Forwarder::process`] takes them. Must show the same bytes as
    /// [`Frame::bytes`].
    fn room_mut(&mut self) -> (&mut [u8], usize, usize);
}
