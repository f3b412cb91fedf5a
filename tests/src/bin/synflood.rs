//! `fulcrum-synflood`: a TCP SYN / ACK flood generator for the flood tests.
//!
//! Sends crafted Ethernet frames through an AF_PACKET raw socket on one interface
//! (run it inside a test namespace with `ip netns exec`), in `sendmmsg` batches of
//! prebuilt frames of which only the varied fields are rewritten per packet:
//! source address (random in `--src`), source port, sequence (and acknowledgement)
//! numbers, IPv4 id and TCP timestamp; the IPv4 and TCP checksums are computed for
//! each frame.
//!
//! ```text
//! fulcrum-synflood --dst 198.18.1.3 --dport 5201 (--syn | --ack)
//!     [--iface eth0] [--dst-mac MAC | --gateway IP] [--src 198.19.128.0/17]
//!     [--rate PPS] [--duration SECS | --count N] [--batch N] [--seed N]
//! ```
//!
//! - `--syn`: SYNs shaped like Linux's (MSS 1460, SACK permitted, timestamps, window
//!   scale 7; window 64240, DF, TTL 64). `--ack`: bare ACKs with random seq/ack.
//! - `--dst-mac`: the next hop's MAC; or `--gateway`: ping it once and take its MAC
//!   from the kernel's neighbour table (`/proc/net/arp`).
//! - `--rate 0` (default): as fast as possible. Stops after `--duration` seconds or
//!   `--count` packets (the first reached), or on SIGINT/SIGTERM.
//!
//! Prints on exit one line (stdout):
//! `synflood mode=syn sent=N seconds=S pps=P send_errors=E`.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_tests::rawframe::{fold, iface_mac, parse_mac, sum16, LINUX_SYN_OPTIONS, SYN_TSVAL_OFFSET};

// ---------------------------------------------------------------------------- frames

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Syn,
    Ack,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Syn => "syn",
            Mode::Ack => "ack",
        }
    }

    /// TCP header length (options included).
    fn tcp_len(self) -> usize {
        match self {
            Mode::Syn => 40,
            Mode::Ack => 20,
        }
    }

    fn frame_len(self) -> usize {
        ETH + IP + self.tcp_len()
    }
}

use fulcrum_tests::rawframe::{ETH, IP};
/// Offsets in the frame.
const IP_ID: usize = ETH + 4;
const IP_CSUM: usize = ETH + 10;
const IP_SRC: usize = ETH + 12;
const TCP: usize = ETH + IP;
const TCP_SPORT: usize = TCP;
const TCP_SEQ: usize = TCP + 4;
const TCP_ACK: usize = TCP + 8;
const TCP_CSUM: usize = TCP + 16;
/// The SYN's TSval.
const TCP_TSVAL: usize = TCP + 20 + SYN_TSVAL_OFFSET;
/// Largest frame built (SYN).
const MAX_FRAME: usize = ETH + IP + 40;

/// The fixed part of every frame: everything but the varied fields, which
/// [`fill`] writes (with the checksums).
fn template(mode: Mode, src_mac: [u8; 6], dst_mac: [u8; 6], dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let tcp_len = mode.tcp_len();
    let mut f = Vec::with_capacity(mode.frame_len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    // IPv4: version 4, IHL 5, TOS 0, total length, id (varied), DF, TTL 64, TCP,
    // checksum (computed), source (varied), destination.
    f.extend_from_slice(&[0x45, 0x00]);
    f.extend_from_slice(&((IP + tcp_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0x00, 64, 6, 0, 0]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(&dst.octets());
    // TCP: ports, seq, ack, data offset, flags, window, checksum, urgent.
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0; 8]);
    f.push(((tcp_len / 4) as u8) << 4);
    match mode {
        Mode::Syn => {
            f.push(0x02);
            f.extend_from_slice(&64240u16.to_be_bytes());
        }
        Mode::Ack => {
            f.push(0x10);
            f.extend_from_slice(&502u16.to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    if mode == Mode::Syn {
        // Linux's order: MSS 1460, SACK permitted, timestamps (TSval varied,
        // TSecr 0), NOP, window scale 7.
        f.extend_from_slice(&LINUX_SYN_OPTIONS);
    }
    debug_assert_eq!(f.len(), mode.frame_len());
    f
}

/// The varied fields of one packet.
#[derive(Clone, Copy, Debug)]
struct Fields {
    src: u32,
    sport: u16,
    seq: u32,
    ack: u32,
    ip_id: u16,
    tsval: u32,
}

/// Writes `x`'s fields into a frame made by [`template`] and computes its IPv4
/// header and TCP checksums.
fn fill(frame: &mut [u8], mode: Mode, x: &Fields) {
    frame[IP_ID..IP_ID + 2].copy_from_slice(&x.ip_id.to_be_bytes());
    frame[IP_SRC..IP_SRC + 4].copy_from_slice(&x.src.to_be_bytes());
    frame[TCP_SPORT..TCP_SPORT + 2].copy_from_slice(&x.sport.to_be_bytes());
    frame[TCP_SEQ..TCP_SEQ + 4].copy_from_slice(&x.seq.to_be_bytes());
    let ack = if mode == Mode::Ack { x.ack } else { 0 };
    frame[TCP_ACK..TCP_ACK + 4].copy_from_slice(&ack.to_be_bytes());
    if mode == Mode::Syn {
        frame[TCP_TSVAL..TCP_TSVAL + 4].copy_from_slice(&x.tsval.to_be_bytes());
    }
    frame[IP_CSUM..IP_CSUM + 2].copy_from_slice(&[0, 0]);
    let ip_csum = fold(sum16(&frame[ETH..ETH + IP], 0));
    frame[IP_CSUM..IP_CSUM + 2].copy_from_slice(&ip_csum.to_be_bytes());
    // Pseudo-header: source, destination, zero + protocol, TCP length.
    let tcp_len = mode.tcp_len();
    let mut acc = sum16(&frame[IP_SRC..IP_SRC + 8], 0);
    acc += 6 + tcp_len as u32;
    frame[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&[0, 0]);
    let tcp_csum = fold(sum16(&frame[TCP..TCP + tcp_len], acc));
    frame[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&tcp_csum.to_be_bytes());
}

/// xorshift64*: fast, good enough to scatter sources and ports.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Random fields: a source in `net/len` (host bits random), a port from 1024.
fn random_fields(rng: &mut Rng, net: u32, host_mask: u32, tsval: u32) -> Fields {
    let a = rng.next();
    let b = rng.next();
    Fields {
        src: net | (a as u32 & host_mask),
        sport: 1024 + ((a >> 32) as u16 % (65535 - 1024)),
        seq: b as u32,
        ack: (b >> 32) as u32,
        ip_id: (a >> 48) as u16,
        tsval,
    }
}

// ---------------------------------------------------------------------------- arguments

struct Args {
    iface: String,
    dst_mac: Option<[u8; 6]>,
    gateway: Option<Ipv4Addr>,
    src_net: u32,
    src_len: u8,
    dst: Ipv4Addr,
    dport: u16,
    mode: Mode,
    rate: u64,
    duration: Option<Duration>,
    count: Option<u64>,
    batch: usize,
    seed: Option<u64>,
}

fn parse_prefix(s: &str) -> Result<(u32, u8), String> {
    let (a, l) = s.split_once('/').ok_or_else(|| format!("not a prefix: {s:?}"))?;
    let a: Ipv4Addr = a.parse().map_err(|_| format!("not a prefix: {s:?}"))?;
    let l: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("bad prefix length: {s:?}"))?;
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    Ok((u32::from(a) & mask, l))
}

const USAGE: &str = "usage: fulcrum-synflood --dst IP --dport PORT (--syn | --ack) [--iface eth0] \
                     [--dst-mac MAC | --gateway IP] [--src 198.19.128.0/17] [--rate PPS] \
                     [--duration SECS | --count N] [--batch N] [--seed N]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        iface: "eth0".into(),
        dst_mac: None,
        gateway: None,
        src_net: u32::from(Ipv4Addr::new(198, 19, 128, 0)),
        src_len: 17,
        dst: Ipv4Addr::UNSPECIFIED,
        dport: 0,
        mode: Mode::Syn,
        rate: 0,
        duration: None,
        count: None,
        batch: 64,
        seed: None,
    };
    let mut mode = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--iface" => a.iface = val()?,
            "--dst-mac" => a.dst_mac = Some(parse_mac(&val()?)?),
            "--gateway" => a.gateway = Some(val()?.parse().map_err(|e| format!("--gateway: {e}"))?),
            "--src" => (a.src_net, a.src_len) = parse_prefix(&val()?)?,
            "--dst" => a.dst = val()?.parse().map_err(|e| format!("--dst: {e}"))?,
            "--dport" => a.dport = val()?.parse().map_err(|e| format!("--dport: {e}"))?,
            "--syn" => mode = Some(Mode::Syn),
            "--ack" => mode = Some(Mode::Ack),
            "--rate" => a.rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--duration" => {
                let s: f64 = val()?.parse().map_err(|e| format!("--duration: {e}"))?;
                a.duration = Some(Duration::try_from_secs_f64(s).map_err(|e| format!("--duration: {e}"))?);
            }
            "--count" => a.count = Some(val()?.parse().map_err(|e| format!("--count: {e}"))?),
            "--batch" => a.batch = val()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--seed" => a.seed = Some(val()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    a.mode = mode.ok_or_else(|| format!("--syn or --ack is required\n{USAGE}"))?;
    if a.dst.is_unspecified() || a.dport == 0 {
        return Err(format!("--dst and --dport are required\n{USAGE}"));
    }
    if a.duration.is_none() && a.count.is_none() {
        return Err(format!("--duration or --count is required\n{USAGE}"));
    }
    if a.dst_mac.is_none() && a.gateway.is_none() {
        return Err(format!("--dst-mac or --gateway is required\n{USAGE}"));
    }
    a.batch = a.batch.clamp(1, 1024);
    Ok(a)
}

/// `gw`'s MAC from `/proc/net/arp` (complete entries on `iface`), after one ping
/// so the kernel resolves it.
fn resolve(iface: &str, gw: Ipv4Addr) -> Result<[u8; 6], String> {
    let lookup = || -> Option<[u8; 6]> {
        let text = std::fs::read_to_string("/proc/net/arp").ok()?;
        text.lines().skip(1).find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let complete = w.get(2).and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok()).is_some_and(|f| f & 2 != 0);
            (w.len() >= 6 && w[0] == gw.to_string() && w[5] == iface && complete).then(|| parse_mac(w[3]).ok()).flatten()
        })
    };
    if let Some(m) = lookup() {
        return Ok(m);
    }
    let out = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "2", "-I", iface, &gw.to_string()])
        .output()
        .map_err(|e| format!("ping: {e}"))?;
    lookup().ok_or_else(|| format!("no neighbour entry for {gw} on {iface} after ping ({})", out.status))
}

// ---------------------------------------------------------------------------- sending

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// An AF_PACKET raw socket bound to one interface, send only (protocol 0: it
/// receives nothing).
struct PacketSocket(libc::c_int);

impl PacketSocket {
    fn open(iface: &str) -> Result<PacketSocket, String> {
        let name = std::ffi::CString::new(iface).map_err(|_| "bad interface name".to_string())?;
        // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(format!("no interface {iface}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(format!("socket(AF_PACKET): {}", std::io::Error::last_os_error()));
        }
        let sock = PacketSocket(fd);
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                fd,
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("bind({iface}): {}", std::io::Error::last_os_error()));
        }
        // Skip the qdisc layer (best effort), and a large send buffer.
        for (level, opt, val) in [
            (libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1),
            (libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20),
        ] {
            let v: libc::c_int = val;
            // SAFETY: `v` is a c_int living across the call; its size is passed.
            unsafe {
                libc::setsockopt(fd, level, opt, std::ptr::from_ref(&v).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t);
            }
        }
        Ok(sock)
    }

    /// Sends `frames` (one `sendmmsg` per call, repeated until all went or an error
    /// other than a full buffer). Returns how many were sent and the errors seen.
    fn send_all(&self, frames: &mut [[u8; MAX_FRAME]], len: usize, errors: &mut u64) -> usize {
        let mut iovs: Vec<libc::iovec> = frames
            .iter_mut()
            .map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: len })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all-zero is valid (no name, no control).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = std::ptr::from_mut(iov);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut done = 0;
        let mut stalls = 0;
        while done < hdrs.len() && !STOP.load(Ordering::Relaxed) {
            let rest = &mut hdrs[done..];
            // SAFETY: `rest` points at `rest.len()` initialised mmsghdrs whose iovecs
            // point into `frames`, all alive and unaliased for the call's duration.
            let n = unsafe { libc::sendmmsg(self.0, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
            if n > 0 {
                done += n as usize;
                stalls = 0;
                continue;
            }
            *errors += 1;
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) if stalls < 1000 => {
                    stalls += 1;
                    std::thread::yield_now();
                }
                _ => {
                    eprintln!("synflood: sendmmsg: {e}");
                    break;
                }
            }
        }
        done
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

fn run(a: &Args) -> Result<(), String> {
    let src_mac = iface_mac(&a.iface)?;
    let dst_mac = match (a.dst_mac, a.gateway) {
        (Some(m), _) => m,
        (None, Some(gw)) => resolve(&a.iface, gw)?,
        (None, None) => unreachable!("checked in parse_args"),
    };
    let sock = PacketSocket::open(&a.iface)?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let tpl = template(a.mode, src_mac, dst_mac, a.dst, a.dport);
    let len = tpl.len();
    let mut frames = vec![[0u8; MAX_FRAME]; a.batch];
    for f in &mut frames {
        f[..len].copy_from_slice(&tpl);
    }
    let host_mask = if a.src_len >= 32 { 0 } else { u32::MAX >> a.src_len };
    let seed = a.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id()) << 40
    });
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let limit = a.count.unwrap_or(u64::MAX);
    eprintln!(
        "synflood: {} to {}:{} from {}/{} via {} dst-mac {} rate {} pps{}",
        a.mode.name(),
        a.dst,
        a.dport,
        Ipv4Addr::from(a.src_net),
        a.src_len,
        a.iface,
        dst_mac.map(|b| format!("{b:02x}")).join(":"),
        a.rate,
        if a.rate == 0 { " (max)" } else { "" }
    );
    while sent < limit && !STOP.load(Ordering::Relaxed) {
        let elapsed = start.elapsed();
        if a.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let mut n = (limit - sent).min(a.batch as u64) as usize;
        if a.rate > 0 {
            // Packets due by now; if none, sleep until the next one is.
            let due = (elapsed.as_secs_f64() * a.rate as f64) as u64;
            if due <= sent {
                let next = Duration::from_secs_f64((sent + 1) as f64 / a.rate as f64);
                std::thread::sleep(next.saturating_sub(elapsed).min(Duration::from_millis(5)));
                continue;
            }
            n = n.min((due - sent) as usize);
        }
        let tsval = (elapsed.as_millis() as u32).wrapping_add(seed as u32);
        for f in &mut frames[..n] {
            let x = random_fields(&mut rng, a.src_net, host_mask, tsval);
            fill(&mut f[..len], a.mode, &x);
        }
        sent += sock.send_all(&mut frames[..n], len, &mut errors) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "synflood mode={} sent={sent} seconds={secs:.3} pps={:.0} send_errors={errors}",
        a.mode.name(),
        sent as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synflood: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

    fn fields() -> Fields {
        Fields {
            src: u32::from(Ipv4Addr::new(198, 19, 200, 7)),
            sport: 40001,
            seq: 0x1234_5678,
            ack: 0x9abc_def0,
            ip_id: 0x4242,
            tsval: 0x0102_0304,
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn build(mode: Mode, x: &Fields) -> Vec<u8> {
        let mut f = template(mode, SRC_MAC, DST_MAC, Ipv4Addr::new(198, 18, 1, 3), 5201);
        fill(&mut f, mode, x);
        f
    }

    /// The SYN, byte for byte as scapy 2.5 builds it (checksums included):
    /// `Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
    ///  IP(src="198.19.200.7", dst="198.18.1.3", id=0x4242, flags="DF", ttl=64) /
    ///  TCP(sport=40001, dport=5201, seq=0x12345678, flags="S", window=64240,
    ///      options=[("MSS",1460),("SAckOK",b""),("Timestamp",(0x01020304,0)),
    ///               ("NOP",None),("WScale",7)])`.
    #[test]
    fn syn_matches_scapy() {
        let want = hex(
            "020000000002 020000000001 0800
             4500 003c 4242 4000 4006 a349 c613c807 c6120103
             9c41 1451 12345678 00000000 a002 faf0 da99 0000
             020405b4 0402 080a 01020304 00000000 01 030307",
        );
        assert_eq!(want.len(), 74);
        assert_eq!(build(Mode::Syn, &fields()), want);
    }

    /// The ACK as scapy builds it: `... / TCP(sport=40001, dport=5201,
    /// seq=0x12345678, ack=0x9abcdef0, flags="A", window=502)`.
    #[test]
    fn ack_matches_scapy() {
        let want = hex(
            "020000000002 020000000001 0800
             4500 0028 4242 4000 4006 a35d c613c807 c6120103
             9c41 1451 12345678 9abcdef0 5010 01f6 c5c1 0000",
        );
        assert_eq!(want.len(), 54);
        assert_eq!(build(Mode::Ack, &fields()), want);
    }

    /// Every random frame verifies: the IPv4 header and the TCP segment (with its
    /// pseudo-header) sum to 0xffff, and sources stay in the prefix.
    #[test]
    fn random_frames_verify() {
        let (net, len) = parse_prefix("198.19.128.0/17").unwrap();
        let mask = u32::MAX >> len;
        let mut rng = Rng(7);
        for mode in [Mode::Syn, Mode::Ack] {
            let mut f = template(mode, SRC_MAC, DST_MAC, Ipv4Addr::new(198, 18, 1, 2), 80);
            for i in 0..10_000 {
                let x = random_fields(&mut rng, net, mask, i);
                fill(&mut f, mode, &x);
                assert_eq!(fold(sum16(&f[ETH..ETH + IP], 0)), 0, "IPv4 checksum");
                let t = mode.tcp_len();
                let pseudo = sum16(&f[IP_SRC..IP_SRC + 8], 6 + t as u32);
                assert_eq!(fold(sum16(&f[TCP..TCP + t], pseudo)), 0, "TCP checksum");
                let src = u32::from_be_bytes(f[IP_SRC..IP_SRC + 4].try_into().unwrap());
                assert_eq!(src & !mask, net);
                assert!(u16::from_be_bytes([f[TCP], f[TCP + 1]]) >= 1024);
            }
        }
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_prefix("198.19.128.5/17"), Ok((u32::from(Ipv4Addr::new(198, 19, 128, 0)), 17)));
        assert!(parse_prefix("198.19.128.0/33").is_err());
        assert_eq!(parse_mac("0A:1b:2c:3d:4e:5f"), Ok([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert!(parse_mac("0a:1b:2c").is_err());
    }
}
