//! The dataplane's configuration file and the EAL arguments derived from it.

use fulcrum_model::{validate_set, Cidr, Facts, Vip};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::Path;

/// The whole configuration file. Unknown keys are errors, so a typo never
/// silently falls back to a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: Dataplane,
    #[serde(default)]
    pub proxy: Proxy,
    #[serde(default)]
    pub forward: Forward,
    /// Virtual services: `[[vip]]` tables (the model's one VIP type).
    #[serde(default, rename = "vip")]
    pub vips: Vec<Vip>,
}

/// Proxy-mode settings shared by every proxy VIP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Bytes per socket buffer; a proxied connection has four (two sockets,
    /// each with a receive and a send buffer).
    pub buffer_size: usize,
    /// Local ports for backend connections, shared out between lcores.
    pub local_ports: PortRange,
    /// Released connections kept with their buffers for reuse, per lcore.
    pub max_spare_connections: usize,
    /// SYN cookies: `"auto"` (per VIP once it has `syn_cookie_threshold`
    /// half-open connections on an lcore), `"always"` or `"off"`.
    pub syn_cookies: SynCookieMode,
    /// Half-open connections per VIP per lcore that start flood mode; >= 1.
    pub syn_cookie_threshold: u32,
    /// Cookie secret, 64 hex digits; instances sharing it validate each
    /// other's cookies. Absent: random per process.
    pub syn_cookie_seed: Option<SeedText>,
    /// A client that has not completed its handshake this long after its SYN
    /// was admitted is dropped (`"5s"`, `"500ms"`).
    pub half_open_timeout: TimeSpan,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            buffer_size: 64 * 1024,
            local_ports: PortRange(32768, 61000),
            max_spare_connections: 1024,
            syn_cookies: SynCookieMode(fulcrum_proxy::SynCookies::Auto),
            syn_cookie_threshold: 128,
            syn_cookie_seed: None,
            half_open_timeout: TimeSpan(std::time::Duration::from_secs(5)),
        }
    }
}

/// `proxy.syn_cookies`: `"auto"`, `"always"` or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynCookieMode(pub fulcrum_proxy::SynCookies);

impl<'de> Deserialize<'de> for SynCookieMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use fulcrum_proxy::SynCookies;
        let s = String::deserialize(d)?;
        match s.as_str() {
            "auto" => Ok(Self(SynCookies::Auto)),
            "always" => Ok(Self(SynCookies::Always)),
            "off" => Ok(Self(SynCookies::Off)),
            _ => Err(serde::de::Error::custom(format!(
                "proxy.syn_cookies: {s:?} is not one of \"auto\", \"always\", \"off\""
            ))),
        }
    }
}

/// `proxy.syn_cookie_seed`: 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedText(pub fulcrum_proxy::syncookie::Seed);

impl<'de> Deserialize<'de> for SeedText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        fulcrum_proxy::syncookie::Seed::from_hex(&s)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("proxy.syn_cookie_seed: {e}")))
    }
}

/// A duration written `"5s"` or `"500ms"` (a whole number and a unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSpan(pub std::time::Duration);

impl TimeSpan {
    fn parse(s: &str) -> Option<Self> {
        let (digits, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit())?);
        let n: u64 = digits.parse().ok()?;
        let d = match unit.trim() {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            _ => return None,
        };
        Some(Self(d))
    }
}

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "proxy.half_open_timeout: {s:?} is not a duration like \"5s\" or \"500ms\""
            ))
        })
    }
}

/// A half-open port range written `"32768-60999"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parsed = s.split_once('-').and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
        match parsed {
            Some((lo, hi)) if lo >= 1024 && lo <= hi && hi < u16::MAX => Ok(PortRange(lo, hi + 1)),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not a port range like \"32768-60999\" (from 1024, low to high)"
            ))),
        }
    }
}

/// Forwarding-mode settings shared by every forwarding VIP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Forward {
    /// Source addresses FullNAT rewrites client addresses to (as DPVS's local
    /// addresses). Replies to them come back through the dataplane, which
    /// answers ARP for them. Required by `fullnat` VIPs.
    pub snat_addresses: Vec<Ipv4Addr>,
    /// Connection-tracking entries per lcore (66 bytes each).
    pub conntrack_entries: usize,
    /// IPv4 MTU towards backends; tunnelled packets must fit. At most, and
    /// by default, the port's (`dataplane.mtu`): see [`Config::forward_mtu`].
    pub mtu: Option<u16>,
    /// DSR/tunnel: new flows tracked per second per lcore; beyond it new flows
    /// are still forwarded by Maglev but not inserted (counted). 0: no cap.
    pub new_flow_rate: u32,
    /// Its burst; 0: one second's worth.
    pub new_flow_burst: u32,
    /// FullNAT: most half-open (SYN-only) flows per lcore; beyond it new SYNs
    /// are dropped (`half_open_full`). Capped at half of the lcore's ports.
    pub half_open_max: u32,
}

impl Default for Forward {
    fn default() -> Self {
        let flood = fulcrum_forward::FloodConfig::default();
        Forward {
            snat_addresses: Vec::new(),
            conntrack_entries: 1 << 20,
            mtu: None,
            new_flow_rate: flood.new_flow_rate,
            new_flow_burst: flood.new_flow_burst,
            half_open_max: flood.half_open_max,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// The dataplane's own address with its prefix length, e.g. `198.18.0.2/24`.
    pub address: Cidr,
    /// Default route for replies to clients off our network (a router on it,
    /// e.g. `"198.18.0.254"`): proxy VIPs' connections to such clients go
    /// through it. Kept resolved by the engines' own ARP.
    pub gateway: Option<Ipv4Addr>,
    /// More specific routes: `routes = [{ prefix = "10.0.0.0/8", via = "198.18.0.253" }]`
    /// (`via` on our network). With the gateway, at most
    /// [`fulcrum_proxy::MAX_ROUTES`] in all.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// EAL lcore list (`0`, `0-1`, `1,3`). One RX/TX queue pair per lcore.
    #[serde(default = "defaults::lcores")]
    pub lcores: LcoreList,
    /// Packet buffers in the pool (2^k - 1 is the most memory-efficient).
    #[serde(default = "defaults::mbufs")]
    pub mbufs: u32,
    /// The port's IP MTU, 576 to 9000 (jumbo frames above 1500). Packet
    /// buffers are sized for one whole frame ([`crate::device::frame_room`]),
    /// the proxy engine advertises MSS `mtu - 40` on both sides, and the
    /// device gets it (af_packet's veth from the dataplane, others through
    /// DPDK, which refuses what the driver cannot carry: DPDK 22.11's
    /// net_tap stops at 1504, af_xdp is refused above 1500 here, af_packet
    /// carries 9000); the
    /// network the port is on must carry it too (`topology.sh up --mtu`).
    /// Under SYN cookies, a connection's MSS is at most 1460 (the cookie's
    /// MSS table, as Linux's).
    #[serde(default = "defaults::mtu")]
    pub mtu: u16,
    /// Descriptors per RX and per TX queue.
    #[serde(default = "defaults::descriptors")]
    pub rx_descriptors: u16,
    #[serde(default = "defaults::descriptors")]
    pub tx_descriptors: u16,
    /// EAL `--file-prefix`: keeps several DPDK processes apart; the runtime
    /// directory is `/var/run/dpdk/<file_prefix>`.
    #[serde(default = "defaults::file_prefix")]
    pub file_prefix: String,
    /// Shared-memory segment of the control plane (e.g. `/dev/shm/fulcrum`).
    /// With it, VIPs and backends come from the control plane's published
    /// generations (the file's VIPs serve until the first one arrives), and
    /// counters and a heartbeat go back through it.
    pub shm: Option<std::path::PathBuf>,
    /// Software mode: a virtual device stands in for the NIC (see [`Software`]).
    pub software: Option<Software>,
    /// Hardware mode: the one PCI device the operator names.
    pub hardware: Option<Hardware>,
}

/// One `[dataplane] routes` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// Destination network, `"A.B.C.D/N"` with no host bits set.
    pub prefix: String,
    /// On-link router for it.
    pub via: Ipv4Addr,
}

impl RouteEntry {
    /// Parses `prefix`: the network address and its length.
    fn network(&self) -> Result<(Ipv4Addr, u8), String> {
        let p = &self.prefix;
        let (addr, len) = p
            .split_once('/')
            .ok_or_else(|| format!("{p:?} is not a prefix like 10.0.0.0/8"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{p:?}: {addr:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| (1..=32).contains(l))
            .ok_or_else(|| format!("{p:?}: prefix length {len:?} is not a number from 1 to 32 (a default route is `gateway`)"))?;
        let net = Cidr { addr, prefix_len: len }.network();
        if net != addr {
            return Err(format!("{p:?} has host bits set (the network is {net}/{len})"));
        }
        Ok((addr, len))
    }
}

/// `[dataplane] software`: the device standing in for a NIC, and EAL's memory.
///
/// Written with exactly one device key, e.g. `software = { tap = "fl-dp" }`,
/// `software = { af_packet = "fl-dp" }`, `software = { af_xdp = "fl-dp" }` or
/// `software = { vdev = "net_pcap0,..." }`; which one is [`Software::device`].
#[derive(Debug, Deserialize)]
#[serde(try_from = "SoftwareFile")]
pub struct Software {
    pub device: SoftDevice,
    /// Whether EAL uses hugepages (`"auto"`, `"on"`, `"off"`).
    pub hugepages: Hugepages,
    /// Memory for EAL, in MiB, when running without hugepages.
    pub no_huge_memory_mb: u32,
    /// Frames the kernel queues on the tap towards the dataplane (the
    /// interface's `txqueuelen`; only with `tap`). net_tap has no descriptor
    /// ring: this kernel queue is the port's whole receive buffer, and the
    /// kernel's default (1000) drops most of a burst of many connections'
    /// first windows. See [`Software::tap_queue_len`].
    pub tap_queue_len: Option<u32>,
    /// Frames in each af_packet RX (and TX) ring (only with `af_packet`). See
    /// [`Software::af_packet_frames`].
    pub af_packet_frames: Option<u32>,
    /// The port's MAC (`"02:00:00:00:00:01"`), so that a restarted dataplane
    /// keeps its address as a restarted machine keeps its NIC's. Absent: the
    /// device's own (net_tap's random one; the veth's).
    pub mac: Option<[u8; 6]>,
}

/// The software device: one concept, one place. Every kind but `Vdev` has a
/// kernel interface named by the operator, in the dataplane's own network
/// namespace, that `scripts/topology.sh attach` puts on a bridge; the
/// dataplane never touches anything else of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoftDevice {
    /// `net_tap`: DPDK creates the kernel interface (a tap) itself. Every
    /// frame is a read or write system call on the lcore.
    Tap(String),
    /// `net_af_packet` on a veth pair the dataplane creates: the kernel side
    /// has the operator's name, the DPDK side [`veth_peer_name`]. Frames are
    /// copied through PACKET_MMAP rings; one `sendto` kicks a whole burst.
    AfPacket(String),
    /// `net_af_xdp` on such a veth pair (XDP on the DPDK side, copy mode).
    AfXdp(String),
    /// Any DPDK virtual device, given as EAL's `--vdev` argument (benchmarks
    /// with no kernel in the path: `net_pcap0,rx_pcap=...`, `net_memif0,...`).
    Vdev(String),
}

/// Largest kernel interface name for `af_packet`/`af_xdp`: the DPDK side's
/// name adds [`VETH_PEER_SUFFIX`] and must fit IFNAMSIZ - 1 = 15 bytes.
pub const VETH_NAME_MAX: usize = 15 - VETH_PEER_SUFFIX.len();
/// Appended to the kernel side's name to name the DPDK side of the veth.
pub const VETH_PEER_SUFFIX: &str = "-d";

/// The DPDK side of the veth whose kernel side is `iface`.
pub fn veth_peer_name(iface: &str) -> String {
    format!("{iface}{VETH_PEER_SUFFIX}")
}

impl SoftDevice {
    /// The key it is written with in `[dataplane] software`.
    pub fn key(&self) -> &'static str {
        match self {
            SoftDevice::Tap(_) => "tap",
            SoftDevice::AfPacket(_) => "af_packet",
            SoftDevice::AfXdp(_) => "af_xdp",
            SoftDevice::Vdev(_) => "vdev",
        }
    }

    /// The kernel interface the operator attaches (tap or veth kernel side).
    pub fn kernel_iface(&self) -> Option<&str> {
        match self {
            SoftDevice::Tap(n) | SoftDevice::AfPacket(n) | SoftDevice::AfXdp(n) => Some(n),
            SoftDevice::Vdev(_) => None,
        }
    }

    /// The veth pair the dataplane creates: `(kernel side, DPDK side)`.
    pub fn veth(&self) -> Option<(&str, String)> {
        match self {
            SoftDevice::AfPacket(n) | SoftDevice::AfXdp(n) => Some((n, veth_peer_name(n))),
            SoftDevice::Tap(_) | SoftDevice::Vdev(_) => None,
        }
    }

    /// EAL's `--vdev` value. `queues`: the lcores' RX/TX queue pairs (the
    /// kernel spreads flows over af_packet's and af_xdp's queues itself);
    /// `mtu`: the port's IP MTU (sizes af_packet's ring frames);
    /// `af_packet_frames`: frames a ring ([`Software::af_packet_frames`]).
    pub fn eal_vdev(&self, queues: usize, mac: Option<[u8; 6]>, mtu: u16, af_packet_frames: u32) -> String {
        match self {
            SoftDevice::Tap(n) => match mac {
                Some(m) => format!("net_tap0,iface={n},mac={}", mac_text(m)),
                None => format!("net_tap0,iface={n}"),
            },
            // TPACKET_V2 rings: ring frames of `frame_room` bytes (2048 at
            // MTU 1500: a 1514-byte frame and the ring header; 10240 for
            // jumbo frames), two to a block (blocks are whole pages);
            // `af_packet_frames` frames a queue (default 16384, see
            // Software::af_packet_frames). The kernel's drops at a full RX
            // ring are read from its sockets (dpdk::RxRings) and counted
            // (`rx_ring_full`): DPDK 22.11's PMD does not.
            // qdisc_bypass: our frames go straight to
            // the veth's xmit (it has no queue to speak of anyway).
            // DPDK 22.11's af_packet declares a 1518-byte maximum frame to
            // ethdev whatever its ring frames hold, so its MTU is not set
            // through DPDK: the dataplane gives the veth its MTU (softdev).
            SoftDevice::AfPacket(n) => {
                let frame = crate::device::frame_room(mtu);
                format!(
                    "net_af_packet0,iface={},qpairs={queues},blocksz={},framesz={frame},framecnt={af_packet_frames},qdisc_bypass=1",
                    veth_peer_name(n),
                    2 * u32::from(frame),
                )
            }
            // Queues count from 0 on the veth's (one per lcore); copy mode is
            // what a veth offers (no zero-copy driver support).
            SoftDevice::AfXdp(n) => format!("net_af_xdp0,iface={},start_queue=0,queue_count={queues}", veth_peer_name(n)),
            SoftDevice::Vdev(v) => v.clone(),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// `[dataplane] software` as written; [`Software`] is what it means.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SoftwareFile {
    tap: Option<String>,
    af_packet: Option<String>,
    af_xdp: Option<String>,
    vdev: Option<String>,
    #[serde(default)]
    hugepages: Hugepages,
    #[serde(default = "defaults::no_huge_memory_mb")]
    no_huge_memory_mb: u32,
    tap_queue_len: Option<u32>,
    af_packet_frames: Option<u32>,
    mac: Option<String>,
}

impl TryFrom<SoftwareFile> for Software {
    type Error = String;

    fn try_from(f: SoftwareFile) -> Result<Self, String> {
        let iface = |key: &str, name: String, max: usize| {
            let ok = !name.is_empty()
                && name.len() <= max
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if ok {
                Ok(name)
            } else {
                Err(format!(
                    "dataplane.software.{key}: {name:?} is not a valid interface name (1 to {max} of A-Z a-z 0-9 - _ .)"
                ))
            }
        };
        let given = [f.tap.is_some(), f.af_packet.is_some(), f.af_xdp.is_some(), f.vdev.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("dataplane.software: set exactly one of `tap`, `af_packet`, `af_xdp` and `vdev`".into());
        }
        let device = if let Some(n) = f.tap {
            SoftDevice::Tap(iface("tap", n, 15)?)
        } else if let Some(n) = f.af_packet {
            SoftDevice::AfPacket(iface("af_packet", n, VETH_NAME_MAX)?)
        } else if let Some(n) = f.af_xdp {
            SoftDevice::AfXdp(iface("af_xdp", n, VETH_NAME_MAX)?)
        } else {
            let vdev = f.vdev.unwrap_or_default();
            if !vdev.starts_with("net_") || vdev.chars().any(char::is_whitespace) {
                return Err(format!("dataplane.software.vdev: {vdev:?} is not a DPDK virtual device like net_pcap0,..."));
            }
            SoftDevice::Vdev(vdev)
        };
        if f.no_huge_memory_mb < 64 {
            return Err("dataplane.software.no_huge_memory_mb: at least 64 is needed".into());
        }
        match f.tap_queue_len {
            Some(_) if !matches!(device, SoftDevice::Tap(_)) => {
                return Err("dataplane.software.tap_queue_len: only a `tap` has a kernel queue".into())
            }
            Some(n) if !(64..=1 << 20).contains(&n) => {
                return Err(format!("dataplane.software.tap_queue_len: {n} is not in 64..=1048576"))
            }
            _ => {}
        }
        match f.af_packet_frames {
            Some(_) if !matches!(device, SoftDevice::AfPacket(_)) => {
                return Err("dataplane.software.af_packet_frames: only an `af_packet` device has rings".into())
            }
            Some(n) if !(AF_PACKET_FRAMES_MIN..=AF_PACKET_FRAMES_MAX).contains(&n) || !n.is_power_of_two() => {
                return Err(format!(
                    "dataplane.software.af_packet_frames: {n} is not a power of two in {AF_PACKET_FRAMES_MIN}..={AF_PACKET_FRAMES_MAX}"
                ))
            }
            _ => {}
        }
        let mac = match f.mac {
            None => None,
            Some(_) if matches!(device, SoftDevice::Vdev(_)) => {
                return Err("dataplane.software.mac: give a `vdev` its MAC in its own arguments".into())
            }
            Some(text) => Some(parse_unicast_mac(&text).ok_or_else(|| {
                format!("dataplane.software.mac: {text:?} is not a unicast MAC like \"02:00:00:00:00:01\"")
            })?),
        };
        Ok(Software { device, hugepages: f.hugepages, no_huge_memory_mb: f.no_huge_memory_mb, tap_queue_len: f.tap_queue_len, af_packet_frames: f.af_packet_frames, mac })
    }
}

/// `aa:bb:cc:dd:ee:ff`, not multicast (nor broadcast) and not all zeros.
fn parse_unicast_mac(text: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut m {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && m[0] & 1 == 0 && m != [0; 6]).then_some(m)
}

impl Software {
    /// Kernel-side queue of the tap (frames), `tap_queue_len` or the default.
    ///
    /// Why deeper than the kernel's 1000: the kernel tail-drops at this queue
    /// whenever the lcore (which also runs, inside its own writes to the tap,
    /// the kernel's receive path for everything it sends) falls behind. A
    /// connection that loses its whole window there has no ACK clock left and
    /// can only retransmit on its RTO timer, doubling every time; 500 clients
    /// starting at once (500 x 10 segments of initial window) lost all of it
    /// for two out of three connections, and a few, losing every backed-off
    /// retransmission too, stayed silent past the proxy's idle timeout.
    pub fn tap_queue_len(&self) -> u32 {
        self.tap_queue_len.unwrap_or_else(defaults::tap_queue_len)
    }

    /// Frames in each of af_packet's rings, `af_packet_frames` or the default.
    ///
    /// Why 16384 (32 MiB of ring each way a queue, the tap queue's depth):
    /// the RX ring is the port's whole receive buffer, and bursts of many
    /// connections' windows must fit. With 4096, 500 concurrent bulk
    /// connections (proxy::bulk_echo_concurrent) overflowed it: backends'
    /// SYN-ACKs were lost and 89-109 of 500 connections failed to connect;
    /// with 16384, 500 of 500 and 3x faster. Such drops are counted
    /// (`rx_ring_full`). Kernel memory: frames x frame room, per ring, two
    /// rings per lcore (16384 at MTU 9000: 160 MiB a ring). A power of two:
    /// blocks hold two frames.
    pub fn af_packet_frames(&self) -> u32 {
        self.af_packet_frames.unwrap_or_else(defaults::af_packet_frames)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// PCI address of the NIC port, e.g. `0000:03:00.0`; passed as `-a`.
    pub pci: String,
}

/// Whether software mode uses hugepages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hugepages {
    /// Use them when hugetlbfs is mounted with enough free pages for the
    /// pool, else `--no-huge`.
    #[default]
    Auto,
    On,
    Off,
}

mod defaults {
    use super::LcoreList;
    pub fn lcores() -> LcoreList {
        LcoreList(vec![0])
    }
    pub fn mbufs() -> u32 {
        8191
    }
    pub fn mtu() -> u16 {
        crate::device::DEFAULT_MTU
    }
    pub fn descriptors() -> u16 {
        1024
    }
    pub fn file_prefix() -> String {
        "fulcrum".into()
    }
    pub fn no_huge_memory_mb() -> u32 {
        512
    }
    pub fn tap_queue_len() -> u32 {
        16384
    }
    pub fn af_packet_frames() -> u32 {
        16384
    }
}

/// Bounds of `[dataplane] software.af_packet_frames`.
const AF_PACKET_FRAMES_MIN: u32 = 16;
const AF_PACKET_FRAMES_MAX: u32 = 1 << 16;

/// A set of lcore ids, written as EAL writes them (`0-1,3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LcoreList(pub Vec<u32>);

impl<'de> Deserialize<'de> for LcoreList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// EAL's limit on lcore ids.
const MAX_LCORE: u32 = 128;

impl std::str::FromStr for LcoreList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut ids = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let num = |t: &str| {
                t.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n < MAX_LCORE)
                    .ok_or_else(|| format!("{t:?} in lcore list {s:?} is not a core number below {MAX_LCORE}"))
            };
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(part)?, num(part)?),
            };
            if lo > hi {
                return Err(format!("range {part:?} in lcore list {s:?} runs backwards"));
            }
            for id in lo..=hi {
                if ids.contains(&id) {
                    return Err(format!("lcore {id} appears twice in {s:?}"));
                }
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(LcoreList(ids))
    }
}

impl LcoreList {
    /// EAL's `-l` syntax.
    fn to_eal(&self) -> String {
        self.0.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

/// A configuration problem, naming the file, the field and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Per-lcore mempool cache size.
pub const MBUF_CACHE: u32 = 256;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let config: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let d = &self.dataplane;
        match (&d.software, &d.hardware) {
            (Some(_), Some(_)) => return Err("dataplane: set either `software` or `hardware`, not both".into()),
            (None, None) => {
                return Err("dataplane: set `software = { af_packet = \"NAME\" }` (or `tap`, `af_xdp`: for trying Fulcrum) or `hardware = { pci = \"0000:03:00.0\" }`".into())
            }
            _ => {}
        }
        if matches!(d.software.as_ref().map(|s| &s.device), Some(SoftDevice::AfXdp(_))) && d.mtu > crate::device::DEFAULT_MTU {
            return Err(format!(
                "dataplane.mtu: {} with af_xdp: DPDK 22.11's af_xdp puts each packet buffer in one page of its \
                 UMEM, and buffers for frames above 1514 bytes do not fit one: use af_packet for jumbo frames",
                d.mtu
            ));
        }
        if let (Some(SoftDevice::AfXdp(_)), n @ 2..) = (d.software.as_ref().map(|s| &s.device), d.lcores.0.len()) {
            return Err(format!(
                "dataplane.software.af_xdp: {n} lcores, but net_af_xdp takes one queue per combined channel and a veth \
                 has none (it is given one): use one lcore, or af_packet or tap for several"
            ));
        }
        if let Some(hw) = &d.hardware {
            if !is_pci_address(&hw.pci) {
                return Err(format!(
                    "dataplane.hardware.pci: {:?} is not a PCI address like 0000:03:00.0",
                    hw.pci
                ));
            }
        }
        if d.file_prefix.is_empty()
            || d.file_prefix.len() > 64
            || !d.file_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(format!(
                "dataplane.file_prefix: {:?} must be 1 to 64 of A-Z a-z 0-9 - _",
                d.file_prefix
            ));
        }
        if d.lcores.0.is_empty() {
            return Err("dataplane.lcores: at least one lcore is needed".into());
        }
        for (name, n) in [("rx_descriptors", d.rx_descriptors), ("tx_descriptors", d.tx_descriptors)] {
            if !(64..=16384).contains(&n) || !n.is_power_of_two() {
                return Err(format!("dataplane.{name}: {n} must be a power of two from 64 to 16384"));
            }
        }
        self.validate_routes()?;
        self.validate_vips()?;
        let needed = self.min_mbufs();
        if d.mbufs < needed {
            return Err(format!(
                "dataplane.mbufs: {} is too few for {} queue(s) of {} RX descriptors plus per-lcore caches; at least {needed} are needed",
                d.mbufs,
                d.lcores.0.len(),
                d.rx_descriptors
            ));
        }
        // Without hugepages (`off`, or `auto` falling back), EAL's -m must
        // hold the pool, whose buffers grow with the MTU.
        if let Some(sw) = d.software.as_ref().filter(|sw| !matches!(sw.hugepages, Hugepages::On)) {
            let need = self.hugepage_bytes().div_ceil(1 << 20);
            if u64::from(sw.no_huge_memory_mb) < need {
                return Err(format!(
                    "dataplane.software.no_huge_memory_mb: {} MiB cannot hold {} packet buffers of {} bytes (mtu {}) and EAL's own memory: at least {need} are needed (or fewer mbufs)",
                    sw.no_huge_memory_mb,
                    d.mbufs,
                    self.frame_room(),
                    d.mtu
                ));
            }
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), String> {
        let d = &self.dataplane;
        let on_link = |field: &str, a: Ipv4Addr| {
            if a == d.address.addr {
                Err(format!("{field}: {a} is the dataplane's own address, not a router"))
            } else if !d.address.contains(a) || a.is_broadcast() || a.is_unspecified() {
                Err(format!("{field}: {a} is not on-link (not in the dataplane's network {})", d.address))
            } else {
                Ok(())
            }
        };
        if let Some(gw) = d.gateway {
            on_link("dataplane.gateway", gw)?;
        }
        let room = fulcrum_proxy::MAX_ROUTES - usize::from(d.gateway.is_some());
        if d.routes.len() > room {
            let gw = if d.gateway.is_some() { ", of which the gateway takes one" } else { "" };
            return Err(format!(
                "dataplane.routes: {} routes, at most {room} (smoltcp's iface-max-route-count is {}{gw})",
                d.routes.len(),
                fulcrum_proxy::MAX_ROUTES
            ));
        }
        let mut seen = Vec::new();
        for (i, r) in d.routes.iter().enumerate() {
            let net = r.network().map_err(|e| format!("dataplane.routes[{i}].prefix: {e}"))?;
            on_link(&format!("dataplane.routes[{i}].via"), r.via)?;
            if seen.contains(&net) {
                return Err(format!("dataplane.routes[{i}].prefix: {} is listed twice", r.prefix));
            }
            seen.push(net);
        }
        Ok(())
    }

    /// The gateway and routes as the proxy engine takes them (validated).
    pub fn static_routes(&self) -> Vec<fulcrum_proxy::StaticRoute> {
        self.dataplane
            .routes
            .iter()
            .filter_map(|r| {
                let (prefix, prefix_len) = r.network().ok()?;
                Some(fulcrum_proxy::StaticRoute { prefix, prefix_len, via: r.via })
            })
            .collect()
    }

    fn validate_vips(&self) -> Result<(), String> {
        let own = self.dataplane.address.addr;
        let p = &self.proxy;
        if !(1024..=16 << 20).contains(&p.buffer_size) {
            return Err(format!("proxy.buffer_size: {} must be from 1024 to 16777216 bytes", p.buffer_size));
        }
        if p.syn_cookie_threshold == 0 {
            return Err("proxy.syn_cookie_threshold: must be at least 1".into());
        }
        if p.half_open_timeout.0.is_zero() {
            return Err("proxy.half_open_timeout: must be above zero".into());
        }
        if usize::from(p.local_ports.1 - p.local_ports.0) < self.dataplane.lcores.0.len() {
            return Err("proxy.local_ports: fewer ports than lcores".into());
        }
        for a in &self.forward.snat_addresses {
            if *a == own || a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                return Err(format!("forward.snat_addresses: {a} cannot be a SNAT address"));
            }
        }
        let mtus = crate::device::MTU_RANGE;
        let port_mtu = self.dataplane.mtu;
        if !mtus.contains(&port_mtu) {
            return Err(format!("dataplane.mtu: {port_mtu} must be from {} to {}", mtus.start(), mtus.end()));
        }
        if let Some(mtu) = self.forward.mtu {
            if mtu < *mtus.start() || mtu > port_mtu {
                return Err(format!(
                    "forward.mtu: {mtu} must be from {} to the port's MTU (dataplane.mtu, {port_mtu})",
                    mtus.start()
                ));
            }
        }
        if !(1024..=1 << 26).contains(&self.forward.conntrack_entries) {
            return Err(format!("forward.conntrack_entries: {} must be from 1024 to 67108864", self.forward.conntrack_entries));
        }
        validate_set(&self.vips).map_err(|e| e.to_string())?;
        let facts = self.facts(true);
        for (i, v) in self.vips.iter().enumerate() {
            let at = format!("vip[{i}] ({})", v.endpoint());
            v.validate_for(&facts).map_err(|e| e.at(&at).to_string())?;
            if v.health.is_some() {
                return Err(format!("{at}.health: health checks are run by the control plane, not by the dataplane's file"));
            }
        }
        Ok(())
    }

    /// What this dataplane is, for the checks that depend on it; the control
    /// plane validates against the same (published in the segment's report).
    pub fn facts(&self, forwarding: bool) -> Facts {
        Facts {
            address: self.dataplane.address.addr,
            snat_addresses: self.forward.snat_addresses.clone(),
            lcores: self.dataplane.lcores.0.len() as u32,
            forwarding,
        }
    }

    /// What the RX rings, the lcore caches and one burst in flight per lcore
    /// hold at most, with headroom for transmit queues.
    fn min_mbufs(&self) -> u32 {
        let d = &self.dataplane;
        let lcores = d.lcores.0.len() as u32;
        lcores * (u32::from(d.rx_descriptors) + u32::from(d.tx_descriptors) + MBUF_CACHE + 2 * 32)
    }

    /// The EAL argument list. Software mode always passes `--no-pci`, so the
    /// host's own NICs are never probed; hardware mode allows exactly the one
    /// device the operator named. `extra` (from the command line after `--`)
    /// comes last.
    pub fn eal_args(&self, hugepages_usable: bool, extra: &[String]) -> Vec<String> {
        let d = &self.dataplane;
        let mut args = vec![
            "fulcrum-dataplane".to_owned(),
            "-l".to_owned(),
            d.lcores.to_eal(),
            format!("--file-prefix={}", d.file_prefix),
        ];
        if let Some(sw) = &d.software {
            args.push("--no-pci".into());
            args.push(format!("--vdev={}", sw.device.eal_vdev(d.lcores.0.len(), sw.mac, d.mtu, sw.af_packet_frames())));
            let huge = match sw.hugepages {
                Hugepages::On => true,
                Hugepages::Off => false,
                Hugepages::Auto => hugepages_usable,
            };
            if huge {
                // Hugepage files are unlinked once mapped, so none outlives us.
                args.push("--huge-unlink".into());
            } else {
                args.push("--no-huge".into());
                args.push(format!("-m{}", sw.no_huge_memory_mb));
            }
        }
        if let Some(hw) = &d.hardware {
            args.push(format!("-a{}", hw.pci));
            args.push("--huge-unlink".into());
        }
        args.extend(extra.iter().cloned());
        args
    }

    /// Whether this is software mode (whose idle lcores back off).
    pub fn is_software(&self) -> bool {
        self.dataplane.software.is_some()
    }
}

fn is_pci_address(s: &str) -> bool {
    // dddd:bb:dd.f
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10].contains(&i) || c.is_ascii_hexdigit())
        && (b'0'..=b'7').contains(&b[11])
}

/// Bytes one mbuf takes in the pool beyond its frame room: the 128-byte
/// headroom, the 128-byte `rte_mbuf` and the mempool's object header (2368
/// in all for 2048 bytes of room, measured with DPDK 22.11).
const MBUF_OVERHEAD: u64 = 2368 - 2048;
/// EAL's own hugepage use beside the pool (measured: under 4 MiB), with headroom.
const EAL_OVERHEAD: u64 = 16 << 20;

impl Config {
    /// Hugepage memory this configuration needs.
    pub fn hugepage_bytes(&self) -> u64 {
        u64::from(self.dataplane.mbufs) * (u64::from(self.frame_room()) + MBUF_OVERHEAD) + EAL_OVERHEAD
    }

    /// Frame room of each packet buffer, for the port's MTU.
    pub fn frame_room(&self) -> u16 {
        crate::device::frame_room(self.dataplane.mtu)
    }

    /// The forwarder's MTU towards backends: `forward.mtu`, or the port's.
    pub fn forward_mtu(&self) -> u16 {
        self.forward.mtu.unwrap_or(self.dataplane.mtu)
    }
}

/// Whether hugetlbfs is mounted and its free default-size pages hold `needed`
/// bytes (software mode's `auto`).
pub fn hugepages_usable(needed: u64) -> bool {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs")))
        .unwrap_or(false);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let free_bytes = field("HugePages_Free:") * field("Hugepagesize:") * 1024;
    mounted && free_bytes >= needed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    const SOFTWARE: &str = "[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\n";

    #[test]
    fn software_mode_never_probes_pci() {
        let c = parse(SOFTWARE).unwrap();
        let args = c.eal_args(false, &[]);
        assert!(args.contains(&"--no-pci".to_owned()));
        assert!(args.contains(&"--vdev=net_tap0,iface=fl0".to_owned()));
        assert!(args.contains(&"--no-huge".to_owned()));
        let huge = c.eal_args(true, &[]);
        assert!(!huge.contains(&"--no-huge".to_owned()));
        assert!(huge.contains(&"--huge-unlink".to_owned()));
        assert!(args.contains(&"--file-prefix=fulcrum".to_owned()));
    }

    #[test]
    fn software_devices() {
        let eal = |dev: &str| {
            let c = parse(&format!("[dataplane]\naddress = \"198.18.0.2/24\"\nlcores = \"0-1\"\nmbufs = 8191\nsoftware = {{ {dev} }}\n")).unwrap();
            let args = c.eal_args(false, &[]);
            assert!(args.contains(&"--no-pci".to_owned()), "{args:?}");
            let vdevs: Vec<String> = args.iter().filter(|a| a.starts_with("--vdev=")).cloned().collect();
            assert_eq!(vdevs.len(), 1, "{args:?}");
            (c.dataplane.software.unwrap().device, vdevs[0].clone())
        };
        let (d, v) = eal("af_packet = \"fl-dp\"");
        assert_eq!(d, SoftDevice::AfPacket("fl-dp".into()));
        assert_eq!(d.veth(), Some(("fl-dp", "fl-dp-d".to_owned())));
        assert_eq!(d.kernel_iface(), Some("fl-dp"));
        assert!(v.starts_with("--vdev=net_af_packet0,iface=fl-dp-d,qpairs=2,"), "{v}");
        assert!(v.contains(",framecnt=16384,"), "{v}");
        let (_, v) = eal("af_packet = \"fl-dp\", af_packet_frames = 64");
        assert!(v.contains(",framecnt=64,"), "{v}");
        let e = parse("[dataplane]\naddress = \"198.18.0.2/24\"\nlcores = \"0-1\"\nmbufs = 8191\nsoftware = { af_xdp = \"fl-dp\" }\n").unwrap_err();
        assert!(e.starts_with("dataplane.software.af_xdp: 2 lcores"), "{e}");
        let c = parse("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_xdp = \"fl-dp\" }\n").unwrap();
        assert_eq!(c.dataplane.software.as_ref().unwrap().device, SoftDevice::AfXdp("fl-dp".into()));
        assert!(c.eal_args(false, &[]).contains(&"--vdev=net_af_xdp0,iface=fl-dp-d,start_queue=0,queue_count=1".to_owned()));
        let (d, v) = eal("tap = \"fl-dp\", mac = \"02:00:00:00:00:2a\"");
        assert_eq!((d.veth(), d.kernel_iface()), (None, Some("fl-dp")));
        assert_eq!(v, "--vdev=net_tap0,iface=fl-dp,mac=02:00:00:00:00:2a");
        let (d, v) = eal("vdev = \"net_null0\"");
        assert_eq!((d.veth(), d.kernel_iface(), v.as_str()), (None, None, "--vdev=net_null0"));
        // The DPDK side's name still fits IFNAMSIZ.
        let longest = "a".repeat(VETH_NAME_MAX);
        assert_eq!(veth_peer_name(&longest).len(), 15);
        let c = parse(&format!("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = {{ af_xdp = \"{longest}\", mac = \"02:00:00:00:00:01\" }}\n")).unwrap();
        assert_eq!(c.dataplane.software.unwrap().mac, Some([2, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn jumbo_frames_size_buffers_rings_and_the_engine() {
        let c = parse(SOFTWARE).unwrap();
        assert_eq!((c.dataplane.mtu, c.frame_room(), c.forward_mtu()), (1500, 2048, 1500));
        let af_packet = |extra: &str| {
            let c = parse(&format!("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = {{ af_packet = \"fl-dp\" }}\n{extra}")).unwrap();
            let vdev = c.eal_args(false, &[]).into_iter().find(|a| a.starts_with("--vdev=")).unwrap();
            (c, vdev)
        };
        // MTU 1500: the rings as they always were.
        let (c, v) = af_packet("");
        assert_eq!(v, "--vdev=net_af_packet0,iface=fl-dp-d,qpairs=1,blocksz=4096,framesz=2048,framecnt=16384,qdisc_bypass=1");
        assert_eq!(c.hugepage_bytes(), 8191 * 2368 + (16 << 20));
        // MTU 9000: 10240-byte ring frames and buffers, two frames a block.
        let (c, v) = af_packet("mtu = 9000\n");
        assert_eq!(v, "--vdev=net_af_packet0,iface=fl-dp-d,qpairs=1,blocksz=20480,framesz=10240,framecnt=16384,qdisc_bypass=1");
        assert_eq!((c.frame_room(), c.forward_mtu()), (10240, 9000));
        assert_eq!(c.hugepage_bytes(), 8191 * (10240 + 320) + (16 << 20));
        // The forwarder's path MTU towards backends may be lower than the port's.
        let (c, _) = af_packet("mtu = 9000\n[forward]\nmtu = 1500\n");
        assert_eq!(c.forward_mtu(), 1500);
    }

    #[test]
    fn frame_room_holds_the_frame_and_the_ring_header() {
        use crate::device::{frame_len, frame_room, MTU_RANGE};
        assert_eq!([frame_room(576), frame_room(1500), frame_room(1938), frame_room(1939), frame_room(9000)], [2048, 2048, 2048, 4096, 10240]);
        for mtu in MTU_RANGE {
            let room = usize::from(frame_room(mtu));
            assert!(room >= frame_len(mtu) + 96 && room % 2048 == 0 && room - 2048 < frame_len(mtu) + 96, "{mtu}");
        }
    }

    #[test]
    fn tap_queue_is_deeper_than_the_kernel_default() {
        let sw = |text: &str| parse(text).unwrap().dataplane.software.unwrap();
        assert_eq!(sw(SOFTWARE).tap_queue_len(), 16384);
        let set = "[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\", tap_queue_len = 4096 }\n";
        assert_eq!(sw(set).tap_queue_len(), 4096);
    }

    #[test]
    fn hardware_mode_allows_only_the_named_device() {
        let c = parse("[dataplane]\naddress = \"10.0.0.2/24\"\nhardware = { pci = \"0000:03:00.0\" }\n").unwrap();
        let args = c.eal_args(true, &[]);
        assert!(args.contains(&"-a0000:03:00.0".to_owned()));
        assert!(args.contains(&"--huge-unlink".to_owned()));
        assert!(!args.contains(&"--no-pci".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--vdev")));
    }

    #[test]
    fn gateway_and_routes() {
        let text = "[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\ngateway = \"198.18.0.254\"\n\
                    routes = [{ prefix = \"10.0.0.0/8\", via = \"198.18.0.253\" }]\n";
        let c = parse(text).unwrap();
        assert_eq!(c.dataplane.gateway, Some(Ipv4Addr::new(198, 18, 0, 254)));
        let r = c.static_routes();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].prefix, r[0].prefix_len, r[0].via), (Ipv4Addr::new(10, 0, 0, 0), 8, Ipv4Addr::new(198, 18, 0, 253)));
        assert!(parse(SOFTWARE).unwrap().dataplane.gateway.is_none());
    }

    #[test]
    fn too_many_routes_name_smoltcps_limit() {
        let max = fulcrum_proxy::MAX_ROUTES;
        let routes = |n: usize| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("{{ prefix = \"10.{i}.0.0/16\", via = \"198.18.0.253\" }}"))
                .collect();
            format!("routes = [{}]\n", list.join(", "))
        };
        parse(&format!("{SOFTWARE}{}", routes(max))).unwrap();
        let e = parse(&format!("{SOFTWARE}{}", routes(max + 1))).unwrap_err();
        assert_eq!(e, format!("dataplane.routes: {} routes, at most {max} (smoltcp's iface-max-route-count is {max})", max + 1));
        let gw = format!("{SOFTWARE}gateway = \"198.18.0.254\"\n");
        parse(&format!("{gw}{}", routes(max - 1))).unwrap();
        let e = parse(&format!("{gw}{}", routes(max))).unwrap_err();
        assert!(e.starts_with(&format!("dataplane.routes: {max} routes, at most {}", max - 1)), "{e}");
        assert!(e.contains("the gateway takes one"), "{e}");
    }

    #[test]
    fn lcore_lists() {
        assert_eq!("0-1".parse::<LcoreList>().unwrap().0, vec![0, 1]);
        assert_eq!("3,0-1".parse::<LcoreList>().unwrap().0, vec![0, 1, 3]);
        assert!("1-0".parse::<LcoreList>().is_err());
        assert!("0,0".parse::<LcoreList>().is_err());
        assert!("x".parse::<LcoreList>().is_err());
        assert!("200".parse::<LcoreList>().is_err());
    }

    #[test]
    fn syn_cookie_settings() {
        let c = parse(SOFTWARE).unwrap();
        assert_eq!(c.proxy.syn_cookies.0, fulcrum_proxy::SynCookies::Auto);
        assert_eq!((c.proxy.syn_cookie_threshold, c.proxy.syn_cookie_seed), (128, None));
        assert_eq!(c.proxy.half_open_timeout.0, std::time::Duration::from_secs(5));
        let seed = "00".repeat(31) + "ff";
        let c = parse(&format!(
            "{SOFTWARE}[proxy]\nsyn_cookies = \"always\"\nsyn_cookie_threshold = 7\nsyn_cookie_seed = \"{seed}\"\nhalf_open_timeout = \"250ms\"\n"
        ))
        .unwrap();
        assert_eq!(c.proxy.syn_cookies.0, fulcrum_proxy::SynCookies::Always);
        assert_eq!(c.proxy.syn_cookie_threshold, 7);
        assert_eq!(c.proxy.syn_cookie_seed.unwrap().0 .0[31], 0xff);
        assert_eq!(c.proxy.half_open_timeout.0, std::time::Duration::from_millis(250));
        let bad = [
            ("syn_cookies = \"on\"".to_string(), "proxy.syn_cookies: \"on\""),
            ("syn_cookie_threshold = 0".to_string(), "proxy.syn_cookie_threshold"),
            ("syn_cookie_seed = \"abc\"".to_string(), "proxy.syn_cookie_seed: 3 characters"),
            (format!("syn_cookie_seed = \"{}\"", "x".repeat(64)), "proxy.syn_cookie_seed: character 0"),
            ("half_open_timeout = \"5\"".to_string(), "proxy.half_open_timeout: \"5\""),
            ("half_open_timeout = \"5 min\"".to_string(), "proxy.half_open_timeout"),
            ("half_open_timeout = \"0s\"".to_string(), "proxy.half_open_timeout: must be above zero"),
        ];
        for (line, expect) in bad {
            let e = parse(&format!("{SOFTWARE}[proxy]\n{line}\n")).unwrap_err();
            assert!(e.contains(expect), "{line:?}: error {e:?} should mention {expect:?}");
        }
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases = [
            ("[dataplane]\naddress = \"198.18.0.2\"\nsoftware = { tap = \"fl0\" }\n", "prefix length"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\n", "set `software"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"a-very-long-tap-name\" }\n", "dataplane.software.tap"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nmbufs = 100\n", "dataplane.mbufs"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nrx_descriptors = 1000\n", "rx_descriptors"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nlcorse = \"0\"\n", "lcorse"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nhardware = { pci = \"eth0\" }\n", "dataplane.hardware.pci"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"a\", vdev = \"net_null0\" }\n", "exactly one"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { vdev = \"0000:03:00.0\" }\n", "dataplane.software.vdev"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nfile_prefix = \"../x\"\n", "file_prefix"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\", tap_queue_len = 10 }\n", "tap_queue_len"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { vdev = \"net_null0\", tap_queue_len = 4096 }\n", "tap_queue_len"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_packet = \"fl0\", tap_queue_len = 4096 }\n", "dataplane.software.tap_queue_len: only a `tap`"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_packet = \"fl0\", af_xdp = \"fl0\" }\n", "exactly one of `tap`, `af_packet`, `af_xdp` and `vdev`"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { hugepages = \"off\" }\n", "exactly one"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_packet = \"fl0\", af_packet_frames = 100 }\n", "dataplane.software.af_packet_frames: 100 is not a power of two in 16..=65536"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_packet = \"fl0\", af_packet_frames = 8 }\n", "dataplane.software.af_packet_frames: 8 is not"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\", af_packet_frames = 64 }\n", "dataplane.software.af_packet_frames: only an `af_packet`"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_packet = \"fourteen-chars\" }\n", "dataplane.software.af_packet: \"fourteen-chars\" is not a valid interface name (1 to 13"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_xdp = \"a b\" }\n", "dataplane.software.af_xdp"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_xdp = \"fl0\", mac = \"01:00:00:00:00:01\" }\n", "dataplane.software.mac: \"01:00:00:00:00:01\" is not a unicast MAC"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\", mac = \"02:00:00:00:00\" }\n", "dataplane.software.mac"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { vdev = \"net_null0\", mac = \"02:00:00:00:00:01\" }\n", "dataplane.software.mac: give a `vdev`"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_pakcet = \"fl0\" }\n", "af_pakcet"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\ngateway = \"198.18.1.1\"\n", "dataplane.gateway: 198.18.1.1 is not on-link"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\ngateway = \"198.18.0.2\"\n", "dataplane.gateway: 198.18.0.2 is the dataplane's own address"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\ngateway = \"x\"\n", "gateway"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nroutes = [{ prefix = \"10.0.0.0\", via = \"198.18.0.253\" }]\n", "dataplane.routes[0].prefix"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nroutes = [{ prefix = \"10.0.0.0/33\", via = \"198.18.0.253\" }]\n", "dataplane.routes[0].prefix"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nroutes = [{ prefix = \"10.0.0.1/8\", via = \"198.18.0.253\" }]\n", "host bits set (the network is 10.0.0.0/8)"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nroutes = [{ prefix = \"0.0.0.0/0\", via = \"198.18.0.253\" }]\n", "a default route is `gateway`"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nroutes = [{ prefix = \"10.0.0.0/8\", via = \"10.0.0.1\" }]\n", "dataplane.routes[0].via: 10.0.0.1 is not on-link"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nroutes = [{ prefix = \"10.0.0.0/8\", via = \"198.18.0.253\" }, { prefix = \"10.0.0.0/8\", via = \"198.18.0.252\" }]\n", "dataplane.routes[1].prefix: 10.0.0.0/8 is listed twice"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nroutes = [{ prefix = \"10.0.0.0/8\", gw = \"198.18.0.253\" }]\n", "gw"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nmtu = 9001\n", "dataplane.mtu: 9001 must be from 576 to 9000"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_packet = \"fl0\", no_huge_memory_mb = 256 }\nmtu = 9000\nmbufs = 32767\n", "dataplane.software.no_huge_memory_mb: 256 MiB cannot hold 32767 packet buffers of 10240 bytes (mtu 9000) and EAL's own memory: at least 346 are needed"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nmtu = 500\n", "dataplane.mtu: 500 must be from 576 to 9000"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { af_xdp = \"fl0\" }\nmtu = 3000\n", "dataplane.mtu: 3000 with af_xdp"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\nmtu = \"jumbo\"\n", "mtu"),
            ("[dataplane]\naddress = \"198.18.0.2/24\"\nsoftware = { tap = \"fl0\" }\n[forward]\nmtu = 1600\n", "forward.mtu: 1600 must be from 576 to the port's MTU (dataplane.mtu, 1500)"),
        ];
        for (text, expect) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expect), "{text:?}: error {e:?} should mention {expect:?}");
        }
    }
}
