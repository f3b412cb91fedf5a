//! In-process test network: the engine and smoltcp peer hosts (a client and
//! backends) on one L2 segment, frames switched by destination MAC, on a fake
//! clock that only moves when the wire is quiet.
#![allow(dead_code)] // each test binary uses part of the harness

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

use fulcrum_model::{Backend, Vip};
use fulcrum_proxy::{Engine, EngineConfig};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, AnySocket};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpProtocol, Ipv4Packet, TcpPacket,
};

pub const ENGINE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;

pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 21 + i as u8)
}

fn mac(last: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 0, last])
}

fn caps() -> DeviceCapabilities {
    let mut c = DeviceCapabilities::default();
    c.medium = Medium::Ethernet;
    c.max_transmission_unit = 1514;
    c
}

/// Frames in and out as owned vectors.
///
/// With a `pool` (the engine's device, see [`Setup::build`]), frame buffers
/// are recycled as a DPDK device recycles mbufs: a received frame's buffer
/// goes back to the pool once consumed and a transmitted frame's buffer
/// comes from it, so what the engine is measured for (`Engine::poll`) does
/// not include the harness's own malloc and free per frame. The wire refills
/// the pool with the buffers of the engine's transmitted frames and bounds it
/// ([`POOL_FRAMES`]), outside `Engine::poll`. Peers have no pool.
#[derive(Default)]
pub struct QueueDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    pub pool: Option<RefCell<Vec<Vec<u8>>>>,
}

/// Bound of the engine device's buffer pool.
pub const POOL_FRAMES: usize = 4096;

/// Capacity of every buffer of the engine device's pool (a whole frame, as
/// an mbuf has), so reusing one never reallocates.
const POOL_FRAME_BYTES: usize = 1514;

pub struct QRx<'a>(Vec<u8>, Option<&'a RefCell<Vec<Vec<u8>>>>);
impl RxToken for QRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0);
        if let Some(pool) = self.1 {
            pool.borrow_mut().push(self.0);
        }
        r
    }
}

pub struct QTx<'a>(&'a mut VecDeque<Vec<u8>>, Option<&'a RefCell<Vec<Vec<u8>>>>);
impl TxToken for QTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = match self.1.and_then(|pool| pool.borrow_mut().pop()) {
            Some(mut buf) => {
                buf.clear();
                buf.resize(len, 0);
                buf
            }
            None => {
                let mut buf = Vec::with_capacity(POOL_FRAME_BYTES.max(len));
                buf.resize(len, 0);
                buf
            }
        };
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = QRx<'a>;
    type TxToken<'a> = QTx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(QRx<'_>, QTx<'_>)> {
        let f = self.rx.pop_front()?;
        let pool = self.pool.as_ref();
        Some((QRx(f, pool), QTx(&mut self.tx, pool)))
    }
    fn transmit(&mut self, _: Instant) -> Option<QTx<'_>> {
        Some(QTx(&mut self.tx, self.pool.as_ref()))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        caps()
    }
}

/// One-frame device so a host can pick the socket set per frame.
struct Single<'a> {
    frame: Option<Vec<u8>>,
    tx: &'a mut VecDeque<Vec<u8>>,
}
impl Device for Single<'_> {
    type RxToken<'b>
        = QRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = QTx<'b>
    where
        Self: 'b;
    fn receive(&mut self, _: Instant) -> Option<(QRx<'_>, QTx<'_>)> {
        let f = self.frame.take()?;
        Some((QRx(f, None), QTx(self.tx, None)))
    }
    fn transmit(&mut self, _: Instant) -> Option<QTx<'_>> {
        Some(QTx(self.tx, None))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        caps()
    }
}

/// (local port, remote port, SYN-only) of a TCP frame.
fn tcp_ports(frame: &[u8]) -> Option<(u16, u16, bool)> {
    let t = tcp_seen(frame)?;
    Some((t.dst.1, t.src.1, t.syn && !t.ack))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sock {
    pub shard: usize,
    pub handle: SocketHandle,
}

/// A peer: one smoltcp interface, sockets sharded by port pair so that even
/// 10 000 peer sockets keep the simulation fast.
pub struct Host {
    pub mac: EthernetAddress,
    pub ip: Ipv4Addr,
    pub iface: Interface,
    pub dev: QueueDevice,
    pub sets: Vec<SocketSet<'static>>,
    /// Shards to poll for egress, flagged and listed (so a poll visits only
    /// those, however many shards there are).
    dirty: Vec<bool>,
    dirty_list: Vec<usize>,
    listen_port: Option<u16>,
    buffer: usize,
    /// Shards that received frames in the last poll.
    touched: Vec<usize>,
    /// Whether quiet steps (when the clock moves) walk every socket for
    /// timers; off in the scale test, where no segment is lost and walking
    /// 10 000 peer sockets would flush the CPU caches between engine polls.
    pub timer_scan: bool,
}

impl Host {
    pub fn new(
        mac: EthernetAddress,
        ip: Ipv4Addr,
        gateway: Option<Ipv4Addr>,
        shards: usize,
    ) -> Self {
        let mut dev = QueueDevice::default();
        let mut cfg = Config::new(HardwareAddress::Ethernet(mac));
        cfg.random_seed = u64::from(u32::from(ip));
        let mut iface = Interface::new(cfg, &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(ip), 24)).unwrap());
        if let Some(gw) = gateway {
            iface.routes_mut().add_default_ipv4_route(gw).unwrap();
        }
        Self {
            mac,
            ip,
            iface,
            dev,
            sets: (0..shards).map(|_| SocketSet::new(Vec::new())).collect(),
            dirty: vec![false; shards],
            dirty_list: Vec::new(),
            listen_port: None,
            buffer: 256 * 1024,
            touched: Vec::new(),
            timer_scan: true,
        }
    }

    fn shard(&self, local: u16, remote: u16) -> usize {
        (usize::from(local) + usize::from(remote)) % self.sets.len()
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.buffer]),
            tcp::SocketBuffer::new(vec![0; self.buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s
    }

    pub fn set_buffer(&mut self, bytes: usize) {
        self.buffer = bytes;
    }

    pub fn listen(&mut self, port: u16) {
        self.listen_port = Some(port);
    }

    pub fn connect(&mut self, remote: (Ipv4Addr, u16), local_port: u16) -> Sock {
        let shard = self.shard(local_port, remote.1);
        let mut s = self.new_socket();
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(remote.0), remote.1),
            local_port,
        )
        .unwrap();
        let handle = self.sets[shard].add(s);
        self.mark(shard);
        Sock { shard, handle }
    }

    /// Socket access; marks its set for egress.
    pub fn sock(&mut self, s: Sock) -> &mut tcp::Socket<'static> {
        self.mark(s.shard);
        self.sets[s.shard].get_mut::<tcp::Socket>(s.handle)
    }

    /// Sockets that hold or held a connection (not listening, not idle-closed).
    pub fn connections(&self) -> Vec<Sock> {
        let mut v = Vec::new();
        for (shard, set) in self.sets.iter().enumerate() {
            for (handle, s) in set.iter() {
                if let Some(t) = tcp::Socket::downcast(s) {
                    if t.state() != tcp::State::Listen
                        && (t.state() != tcp::State::Closed || t.recv_queue() > 0)
                    {
                        v.push(Sock { shard, handle });
                    }
                }
            }
        }
        v
    }

    fn ensure_listener(&mut self, shard: usize) {
        let Some(port) = self.listen_port else { return };
        let has = self.sets[shard]
            .iter()
            .any(|(_, s)| tcp::Socket::downcast(s).is_some_and(|t| t.is_listening()));
        if !has {
            let mut s = self.new_socket();
            s.listen(port).unwrap();
            self.sets[shard].add(s);
        }
    }

    /// Connections in shards that received frames in the last poll.
    pub fn touched_connections(&self) -> Vec<Sock> {
        let mut v = Vec::new();
        for &shard in &self.touched {
            for (handle, s) in self.sets[shard].iter() {
                if tcp::Socket::downcast(s).is_some_and(|t| t.state() != tcp::State::Listen) {
                    v.push(Sock { shard, handle });
                }
            }
        }
        v
    }

    pub fn poll(&mut self, now: Instant, full: bool) {
        let full = full && self.timer_scan;
        self.touched.clear();
        while let Some(frame) = self.dev.rx.pop_front() {
            let shard = match tcp_ports(&frame) {
                Some((local, remote, syn)) => {
                    let shard = self.shard(local, remote);
                    if syn && Some(local) == self.listen_port {
                        self.ensure_listener(shard);
                    }
                    shard
                }
                None => 0,
            };
            self.mark(shard);
            if !self.touched.contains(&shard) {
                self.touched.push(shard);
            }
            let mut single = Single {
                frame: Some(frame),
                tx: &mut self.dev.tx,
            };
            self.iface
                .poll_ingress_single(now, &mut single, &mut self.sets[shard]);
        }
        let shards = if full { (0..self.sets.len()).collect() } else { std::mem::take(&mut self.dirty_list) };
        for shard in shards {
            self.dirty[shard] = false;
            while self
                .iface
                .poll_egress(now, &mut self.dev, &mut self.sets[shard])
                == smoltcp::iface::PollResult::SocketStateChanged
            {}
        }
        self.dirty_list.clear();
    }

    fn mark(&mut self, shard: usize) {
        if !self.dirty[shard] {
            self.dirty[shard] = true;
            self.dirty_list.push(shard);
        }
    }
}

/// Engine + client (hosts[0]) + backends (hosts[1..]).
pub struct Wire {
    pub now: Instant,
    pub engine: Engine,
    pub engine_dev: QueueDevice,
    pub engine_mac: EthernetAddress,
    pub hosts: Vec<Host>,
    /// Wall time spent inside `Engine::poll`.
    pub engine_time: std::time::Duration,
    /// Poll the engine only when a frame is waiting for it or its
    /// `poll_at` is due (as a dataplane sleeping on `poll_delay` would),
    /// instead of every step: shows that `poll_at` covers every wake-up.
    pub lazy_engine: bool,
    /// When `Some`, every frame the engine transmits is appended here, in
    /// order: what a capture on the wire next to the engine would see.
    pub engine_tx_log: Option<Vec<Vec<u8>>>,
    full: bool,
}

pub struct Setup {
    pub backends: usize,
    /// Which backends accept connections on BACKEND_PORT.
    pub listening: Vec<bool>,
    pub weights: Vec<u32>,
    pub shards: usize,
    pub config: EngineConfig,
    pub vip: Vip,
}

impl Setup {
    pub fn new(backends: usize) -> Self {
        let mut config = EngineConfig::new(mac(2), ENGINE_IP, 24);
        config.buffer_size = 64 * 1024;
        let vip = Vip::proxy(
            VIP,
            VIP_PORT,
            (0..backends)
                .map(|i| Backend::new(backend_ip(i), BACKEND_PORT, 1))
                .collect(),
        );
        Self {
            backends,
            listening: vec![true; backends],
            weights: vec![1; backends],
            shards: 1,
            config,
            vip,
        }
    }

    pub fn build(mut self) -> Wire {
        for (b, w) in self.vip.backends.iter_mut().zip(&self.weights) {
            b.weight = *w;
        }
        self.config.vips = vec![self.vip];
        let engine = Engine::new(self.config).expect("valid config");
        let mut hosts = vec![Host::new(mac(10), CLIENT_IP, Some(ENGINE_IP), self.shards)];
        for i in 0..self.backends {
            let mut h = Host::new(mac(21 + i as u8), backend_ip(i), None, self.shards);
            if self.listening[i] {
                h.listen(BACKEND_PORT);
            }
            hosts.push(h);
        }
        Wire {
            now: Instant::from_secs(1),
            engine,
            engine_dev: QueueDevice {
                pool: Some(RefCell::new(
                    (0..POOL_FRAMES).map(|_| Vec::with_capacity(POOL_FRAME_BYTES)).collect(),
                )),
                ..QueueDevice::default()
            },
            engine_mac: mac(2),
            hosts,
            engine_time: std::time::Duration::ZERO,
            lazy_engine: false,
            engine_tx_log: None,
            full: true,
        }
    }
}

impl Wire {
    pub fn client(&mut self) -> &mut Host {
        &mut self.hosts[0]
    }

    pub fn backend(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[1 + i]
    }

    /// One round: everyone polls, frames are switched. When nothing moved,
    /// the clock advances 1 ms. Returns whether frames moved.
    pub fn step(&mut self) -> bool {
        let due = !self.lazy_engine
            || !self.engine_dev.rx.is_empty()
            || self.engine.poll_at().is_some_and(|at| at <= self.now);
        if due {
            let t0 = std::time::Instant::now();
            self.engine.poll(self.now, &mut self.engine_dev);
            self.engine_time += t0.elapsed();
        }
        let now = self.now;
        let full = self.full;
        for h in &mut self.hosts {
            h.poll(now, full);
        }
        let moved = self.switch();
        self.full = !moved;
        if !moved {
            self.now += Duration::from_millis(1);
        }
        moved
    }

    fn switch(&mut self) -> bool {
        let mut frames: Vec<(usize, Vec<u8>)> = Vec::new();
        frames.extend(self.engine_dev.tx.drain(..).map(|f| (usize::MAX, f)));
        if let Some(log) = self.engine_tx_log.as_mut() {
            log.extend(frames.iter().map(|(_, f)| f.clone()));
        }
        for (i, h) in self.hosts.iter_mut().enumerate() {
            frames.extend(h.dev.tx.drain(..).map(|f| (i, f)));
        }
        let moved = !frames.is_empty();
        for (from, f) in frames {
            let dst = EthernetFrame::new_unchecked(&f[..]).dst_addr();
            if dst == self.engine_mac || (dst.is_broadcast() && from != usize::MAX) {
                // A whole frame's capacity: it joins the engine's pool once read.
                let mut copy = Vec::with_capacity(POOL_FRAME_BYTES.max(f.len()));
                copy.extend_from_slice(&f);
                self.engine_dev.rx.push_back(copy);
            }
            for (i, h) in self.hosts.iter_mut().enumerate() {
                if i != from && (dst == h.mac || dst.is_broadcast()) {
                    h.dev.rx.push_back(f.clone());
                }
            }
            if from == usize::MAX {
                if let Some(pool) = &self.engine_dev.pool {
                    pool.borrow_mut().push(f);
                }
            }
        }
        if let Some(pool) = &self.engine_dev.pool {
            let mut pool = pool.borrow_mut();
            let keep = pool.len().min(POOL_FRAMES);
            pool.truncate(keep);
        }
        moved
    }

    /// Steps until `done` holds (checked after every step) or `limit` of
    /// simulated time passes; returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Wire) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Runs `app` every step for `limit` of simulated time.
    pub fn run_for(&mut self, limit: Duration, mut app: impl FnMut(&mut Wire)) {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            app(self);
        }
    }

    /// Moves the clock forward at once (no frames are exchanged meanwhile).
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.full = true;
    }
}

/// Backend behaviour used by many tests: read a request line ending in '\n',
/// answer `"<backend index>:<request>"`, then close.
pub fn serve_lines(
    w: &mut Wire,
    backends: usize,
    seen: &mut std::collections::HashMap<(usize, Sock), Vec<u8>>,
) {
    for b in 0..backends {
        for s in w.backend(b).connections() {
            let sock = w.backend(b).sock(s);
            let buf = seen.entry((b, s)).or_default();
            if buf.last() == Some(&b'\n') {
                continue;
            }
            while sock.can_recv() {
                sock.recv(|d| {
                    buf.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
            if buf.last() == Some(&b'\n') {
                let reply = format!("{b}:{}", String::from_utf8_lossy(buf));
                sock.send_slice(reply.as_bytes()).unwrap();
                sock.close();
            }
        }
    }
}

/// Drains everything readable from a socket into `out`.
pub fn read_all(s: &mut tcp::Socket, out: &mut Vec<u8>) {
    while s.can_recv() {
        s.recv(|d| {
            out.extend_from_slice(d);
            (d.len(), ())
        })
        .unwrap();
    }
}

/// FNV-1a, to compare large transfers.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Wire {
    /// Adds a client host at `ip` (same segment, engine as gateway); returns
    /// its index in `hosts`.
    pub fn add_client(&mut self, ip: Ipv4Addr) -> usize {
        let n = self.hosts.len() as u8;
        let shards = self.hosts[0].sets.len();
        self.hosts
            .push(Host::new(mac(100 + n), ip, Some(ENGINE_IP), shards));
        self.hosts.len() - 1
    }
}

/// Client side of [`serve_lines`] exchanges: each socket sends
/// `"hello from <port>\n"` once it can, then reads until the backend closes.
pub struct Exchange {
    pub host: usize,
    pub socks: Vec<(u16, Sock)>,
    sent: Vec<bool>,
    pub got: Vec<Vec<u8>>,
    done: Vec<bool>,
}

impl Exchange {
    pub fn new(host: usize, socks: Vec<(u16, Sock)>) -> Self {
        let n = socks.len();
        Self {
            host,
            socks,
            sent: vec![false; n],
            got: vec![Vec::new(); n],
            done: vec![false; n],
        }
    }

    /// Opens `ports` from host `host` to `vip`.
    pub fn open(
        w: &mut Wire,
        host: usize,
        vip: (Ipv4Addr, u16),
        ports: std::ops::Range<u16>,
    ) -> Self {
        let socks = ports.map(|p| (p, w.hosts[host].connect(vip, p))).collect();
        Self::new(host, socks)
    }

    /// One round of client work; true when every exchange is complete.
    pub fn drive(&mut self, w: &mut Wire) -> bool {
        for (i, &(port, s)) in self.socks.iter().enumerate() {
            let sock = w.hosts[self.host].sock(s);
            if !self.sent[i] && sock.may_send() {
                sock.send_slice(format!("hello from {port}\n").as_bytes())
                    .unwrap();
                self.sent[i] = true;
            }
            read_all(sock, &mut self.got[i]);
            if !sock.may_recv() && self.sent[i] && !self.done[i] {
                self.done[i] = true;
                sock.close();
            }
        }
        self.done.iter().all(|&d| d)
    }

    /// Runs until every exchange completes (backends `0..backends` serving
    /// lines); returns (port, response) pairs.
    pub fn run(mut self, w: &mut Wire, backends: usize) -> Vec<(u16, String)> {
        let mut seen = std::collections::HashMap::new();
        let ok = w.run_until(Duration::from_secs(20), |w| {
            let done = self.drive(w);
            serve_lines(w, backends, &mut seen);
            done
        });
        assert!(
            ok,
            "not all responses completed: {} of {}",
            self.done.iter().filter(|d| **d).count(),
            self.socks.len()
        );
        self.socks
            .iter()
            .zip(self.got)
            .map(|(&(port, _), g)| (port, String::from_utf8(g).unwrap()))
            .collect()
    }
}

/// Steps until the engine holds no connection (at most 5 s).
pub fn settle(w: &mut Wire) {
    let ok = w.run_until(Duration::from_secs(5), |w| w.engine.connections() == 0);
    assert!(
        ok,
        "engine still holds {} connections",
        w.engine.connections()
    );
}

/// The scale scenario (tests/scale.rs, examples/scale.rs): three echo
/// backends, small buffers, and `n` client connections opened through the
/// engine, established and quiet (last ACKs landed, peers' timer walks off),
/// each having carried one echo request already: the requests measured next
/// find every connection in its steady state (buffers written once, pages
/// faulted in), not paying first touches. Returns the wire and the client
/// sockets.
pub fn scale_open_connections(n: u16) -> (Wire, Vec<Sock>) {
    let mut s = Setup::new(3);
    // About one peer socket per shard: a peer's egress poll then walks one
    // socket, as a kernel would, instead of dozens whose cold state would
    // flush the engine's from the caches between its polls.
    s.shards = 16_384;
    s.config.buffer_size = 2048;
    s.vip.max_connections = u32::from(n) + 10;
    let mut w = s.build();
    for h in &mut w.hosts {
        h.set_buffer(2048);
    }

    // Open n idle connections, in batches.
    let mut socks = Vec::new();
    let mut next_port = 10_000u16;
    while socks.len() < usize::from(n) {
        let batch: Vec<_> = (0..500.min(usize::from(n) - socks.len()))
            .map(|_| {
                next_port += 1;
                w.client().connect((VIP, VIP_PORT), next_port)
            })
            .collect();
        let ok = w.run_until(Duration::from_secs(10), |w| {
            batch
                .iter()
                .all(|&s| w.client().sock(s).state() == tcp::State::Established)
        });
        assert!(ok, "batch did not establish");
        socks.extend(batch);
    }
    // Let the last ACKs land.
    w.run_until(Duration::from_millis(50), |_| false);
    assert_eq!(w.engine.connections(), usize::from(n));
    for h in &mut w.hosts {
        h.timer_scan = false;
    }
    scale_echo_requests(&mut w, &socks, socks.len());
    (w, socks)
}

/// What `scale_echo_requests` cost the engine.
pub struct ScaleCost {
    pub requests: usize,
    /// Sockets smoltcp iterated (engine counter `sockets_visited`).
    pub sockets_visited: u64,
    /// Wall time inside `Engine::poll`.
    pub engine_time: std::time::Duration,
}

/// The three backends echo what their touched connections received (and
/// then close them, if `then_close`).
fn echo_on_backends(w: &mut Wire, then_close: bool) {
    for b in 0..3 {
        for s in w.backend(b).touched_connections() {
            let sock = w.backend(b).sock(s);
            if sock.can_recv() {
                let mut req = Vec::new();
                read_all(sock, &mut req);
                if sock.may_send() {
                    sock.send_slice(&req).unwrap();
                    if then_close {
                        sock.close();
                    }
                }
            }
        }
    }
}

/// `requests` sequential echo requests ("ping\n", echoed by the backend)
/// over connections spread evenly across `socks` (wrapping round when there
/// are more requests than connections), then the trailing ACKs.
pub fn scale_echo_requests(w: &mut Wire, socks: &[Sock], requests: usize) -> ScaleCost {
    let visits0 = w.engine.counters().sockets_visited;
    let time0 = w.engine_time;
    let step = (socks.len() / requests).max(1);
    for (i, &c) in socks
        .iter()
        .step_by(step)
        .cycle()
        .take(requests)
        .enumerate()
    {
        w.client().sock(c).send_slice(b"ping\n").unwrap();
        let mut got = Vec::new();
        let ok = w.run_until(Duration::from_secs(2), |w| {
            echo_on_backends(w, false);
            read_all(w.client().sock(c), &mut got);
            got == b"ping\n"
        });
        assert!(ok, "request {i} not echoed");
    }
    // Include the trailing ACKs of the last request.
    w.run_until(Duration::from_millis(20), |_| false);
    ScaleCost {
        requests,
        sockets_visited: w.engine.counters().sockets_visited - visits0,
        engine_time: w.engine_time - time0,
    }
}

/// The backend Maglev picks first for a client port from `CLIENT_IP` to
/// `VIP:vip_port` (an index into `weights`): what the engine must choose.
pub fn expected_backend(weights: &[u32], client_port: u16, vip_port: u16) -> usize {
    use fulcrum_maglev::{backend_key, flow_hash, Backend, MaglevTable, DEFAULT_FLOW_SEED};
    use std::net::IpAddr;
    let keys: Vec<Backend> = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Backend {
            key: backend_key(IpAddr::V4(backend_ip(i)), BACKEND_PORT),
            weight,
        })
        .collect();
    let table = MaglevTable::build(&keys, 65537).unwrap();
    let h = flow_hash(DEFAULT_FLOW_SEED, IpAddr::V4(CLIENT_IP), client_port, IpAddr::V4(VIP), vip_port, 6);
    table.lookup(h).unwrap()
}

/// A TCP segment as seen on the wire: source and destination endpoints and
/// the SYN/ACK/RST flags; `None` for anything but IPv4/TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeen {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
}

pub fn tcp_seen(frame: &[u8]) -> Option<TcpSeen> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let t = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(TcpSeen {
        src: (ip.src_addr(), t.src_port()),
        dst: (ip.dst_addr(), t.dst_port()),
        syn: t.syn(),
        ack: t.ack(),
        rst: t.rst(),
    })
}

/// First client port of [`scale_new_connections`] (the idle connections of
/// [`scale_open_connections`] use 10 001 upwards).
pub const SCALE_NEW_FIRST_PORT: u16 = 30_000;

/// `count` new connections, one after the other, each a whole life: the
/// client connects to the VIP from a fresh port (SYN, the engine's backend
/// connection, the held SYN-ACK), sends "ping\n"; the backend answers it and
/// closes; the client reads the answer to the end and closes. Each
/// connection is done when the engine has released it (both of its sockets
/// closed, its backend connection with it) and the client socket is CLOSED;
/// the client socket is then removed from its host. Ports `first_port..`.
/// Ends with the trailing segments of the last one. The engine's connection
/// count must be back where it was.
pub fn scale_new_connections(w: &mut Wire, first_port: u16, count: usize) -> ScaleCost {
    let visits0 = w.engine.counters().sockets_visited;
    let time0 = w.engine_time;
    let open = w.engine.connections();
    assert!(
        usize::from(first_port) + count <= usize::from(u16::MAX),
        "client ports run out"
    );
    for i in 0..count {
        let port = first_port + i as u16;
        let c = w.client().connect((VIP, VIP_PORT), port);
        let mut sent = false;
        let mut got = Vec::new();
        let ok = w.run_until(Duration::from_secs(2), |w| {
            echo_on_backends(w, true);
            let sock = w.client().sock(c);
            if !sent && sock.may_send() {
                sock.send_slice(b"ping\n").unwrap();
                sent = true;
            }
            read_all(sock, &mut got);
            if sent && !sock.may_recv() && sock.may_send() {
                sock.close();
            }
            sock.state() == tcp::State::Closed && w.engine.connections() == open
        });
        assert!(ok, "new connection {i} (port {port}) did not complete");
        assert_eq!(got, b"ping\n", "new connection {i}: answer");
        w.client().sets[c.shard].remove(c.handle);
    }
    // Include the trailing segments of the last connection.
    w.run_until(Duration::from_millis(20), |_| false);
    assert_eq!(w.engine.connections(), open);
    ScaleCost {
        requests: count,
        sockets_visited: w.engine.counters().sockets_visited - visits0,
        engine_time: w.engine_time - time0,
    }
}
