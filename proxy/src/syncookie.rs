//! SYN cookies (RFC 4987): the SYN-ACK's initial sequence number carries
//! what the engine would otherwise keep for a half-open connection, so that
//! a SYN costs nothing until the client answers.
//!
//! # Keys
//! A 32-byte secret seed (configured, or random per process). Keys are
//! derived per epoch of [`EPOCH_SECS`] seconds of Unix time, without any new
//! protocol: `key(epoch)` is a 128-bit SipHash key made of two SipHash-2-4
//! outputs, the first keyed by the seed's first 16 bytes, the second by its
//! last 16, each over a domain tag and the epoch (big-endian). Instances
//! sharing a seed (and a clock within a minute) validate each other's
//! cookies. [`Keys`] caches the current and previous epoch's keys; the
//! engine re-derives them only when the epoch changes.
//!
//! # Cookie (32 bits)
//! | bits  | content                                                                 |
//! |-------|-------------------------------------------------------------------------|
//! | 31..3 | top 29 bits of SipHash-2-4(key(epoch), client addr, VIP, client port, VIP port, client ISN) |
//! | 2     | epoch parity                                                            |
//! | 1..0  | MSS index into Linux's IPv4 table [`MSS_TABLE`] (largest entry <= the client's MSS; 536 without the option) |
//!
//! A cookie is valid in its epoch and the next one (64 to 128 s, like
//! Linux's ~2 minutes): the parity bit picks the current or the previous
//! epoch's key, so a cookie two epochs old, or from a future epoch, meets
//! the wrong key and fails.
//!
//! # Window scale and SACK: in the timestamp
//! As Linux does (`cookie_init_timestamp`), and only when the client's SYN
//! carried a timestamp option: our TSval is `(now_ms & !0x3f) | opts`, with
//! `opts` bits 3..0 the client's window scale (0xf: none), bit 4
//! SACK-permitted, bit 5 ECN (always 0 here); if that is ahead of `now_ms`,
//! 64 is subtracted, so it is never ahead of the clock the connection's
//! socket will use afterwards (the client's PAWS check would drop it). The
//! ACK echoes it in TSecr. Without a client timestamp we offer neither window
//! scaling nor SACK (Linux clears them too), only the MSS.

use std::fmt;
use std::hash::Hasher;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use siphasher::sip::SipHasher24;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, TcpTimestampRepr,
};

/// Seconds per key epoch.
pub const EPOCH_SECS: u64 = 64;
/// Linux's IPv4 MSS table (`msstab`): the cookie keeps an index into it.
pub const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];
/// The largest window scale a TCP may use (RFC 7323).
pub const MAX_WSCALE: u8 = 14;

/// Cookie layout: hash bits above this shift.
const HASH_SHIFT: u32 = 3;
/// Cookie layout: the epoch-parity bit.
const EPOCH_BIT_SHIFT: u32 = 2;
/// Cookie layout: the MSS index bits.
const MSS_INDEX_MASK: u32 = 0b11;
/// SipHash's 64-bit output keeps its top 29 bits.
const HASH_OUT_SHIFT: u32 = 64 - 29;

/// Timestamp layout (Linux's `TSBITS`): low bits of TSval carrying options.
const TS_OPT_BITS: u32 = 6;
const TS_OPT_MASK: u32 = (1 << TS_OPT_BITS) - 1;
const TS_WSCALE_MASK: u32 = 0xf;
const TS_SACK: u32 = 1 << 4;
const TS_ECN: u32 = 1 << 5;

const KEY_TAG_0: &[u8] = b"fulcrum syn-cookie key 0";
const KEY_TAG_1: &[u8] = b"fulcrum syn-cookie key 1";

/// Ethernet header, IPv4 header without options.
const ETH_HEADER: usize = 14;
const IPV4_HEADER: usize = 20;
/// What our IPv4 packets carry as TTL (smoltcp's default too).
const HOP_LIMIT: u8 = 64;

/// The 32-byte secret keys derive from. Its `Debug` does not show it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(..)")
    }
}

/// Why a seed's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("{0} characters, expected 64 hex digits")]
    Length(usize),
    #[error("character {0} is not a hex digit")]
    NotHex(usize),
}

impl Seed {
    /// 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, SeedError> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(SeedError::Length(s.chars().count()));
        }
        let nibble = |i: usize| {
            (b[i] as char)
                .to_digit(16)
                .map(|d| d as u8)
                .ok_or(SeedError::NotHex(i))
        };
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
        }
        Ok(Self(out))
    }

    /// One random seed per process (every engine of the process shares it),
    /// drawn on first use from the OS; logged once: cookies minted with it
    /// are valid on this instance only.
    pub fn process_random() -> Self {
        static SEED: OnceLock<Seed> = OnceLock::new();
        *SEED.get_or_init(|| {
            tracing::info!(
                "syn_cookie_seed not configured: random per process, cookies valid on this instance only"
            );
            Seed(random_bytes())
        })
    }
}

fn random_bytes() -> [u8; 32] {
    use std::io::Read;
    let mut out = [0u8; 32];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut out));
    if from_os.is_err() {
        // No /dev/urandom: std's per-process random hasher keys.
        use std::hash::BuildHasher;
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let v = std::collections::hash_map::RandomState::new().hash_one(i);
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// The epoch of a Unix time.
pub fn epoch_of(unix_secs: u64) -> u64 {
    unix_secs / EPOCH_SECS
}

/// One epoch's 128-bit SipHash key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochKey {
    pub epoch: u64,
    k0: u64,
    k1: u64,
}

impl EpochKey {
    pub fn derive(seed: &Seed, epoch: u64) -> Self {
        let half = |key: &[u8], tag: &[u8]| {
            let key: [u8; 16] = key.try_into().expect("16 bytes");
            let mut h = SipHasher24::new_with_key(&key);
            h.write(tag);
            h.write(&epoch.to_be_bytes());
            h.finish()
        };
        Self {
            epoch,
            k0: half(&seed.0[..16], KEY_TAG_0),
            k1: half(&seed.0[16..], KEY_TAG_1),
        }
    }
}

/// A connection's 4-tuple, as the client sent its SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub client: Ipv4Addr,
    pub vip: Ipv4Addr,
    pub client_port: u16,
    pub vip_port: u16,
}

/// Top 29 bits of SipHash-2-4 over the 4-tuple and the client's ISN, all
/// big-endian (16 bytes).
fn hash(key: &EpochKey, flow: &Flow, client_isn: u32) -> u32 {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&flow.client.octets());
    b[4..8].copy_from_slice(&flow.vip.octets());
    b[8..10].copy_from_slice(&flow.client_port.to_be_bytes());
    b[10..12].copy_from_slice(&flow.vip_port.to_be_bytes());
    b[12..16].copy_from_slice(&client_isn.to_be_bytes());
    let mut h = SipHasher24::new_with_keys(key.k0, key.k1);
    h.write(&b);
    (h.finish() >> HASH_OUT_SHIFT) as u32
}

/// Index into [`MSS_TABLE`]: the largest entry not above the client's MSS
/// (0, i.e. 536, without the option or below 536).
pub fn mss_index(client_mss: Option<u16>) -> u8 {
    let Some(mss) = client_mss else { return 0 };
    MSS_TABLE.iter().rposition(|&t| t <= mss).unwrap_or(0) as u8
}

/// The cookie for a SYN (see the module doc for its layout).
pub fn encode(key: &EpochKey, flow: &Flow, client_isn: u32, mss_index: u8) -> u32 {
    (hash(key, flow, client_isn) << HASH_SHIFT)
        | (((key.epoch & 1) as u32) << EPOCH_BIT_SHIFT)
        | (u32::from(mss_index) & MSS_INDEX_MASK)
}

/// The MSS a cookie carries, if it is valid for `flow` and `client_isn` with
/// the `current` epoch's key or the one before (`previous`).
pub fn decode(
    current: &EpochKey,
    previous: &EpochKey,
    flow: &Flow,
    client_isn: u32,
    cookie: u32,
) -> Option<u16> {
    let parity = u64::from((cookie >> EPOCH_BIT_SHIFT) & 1);
    let key = if parity == current.epoch & 1 {
        current
    } else {
        previous
    };
    (hash(key, flow, client_isn) == cookie >> HASH_SHIFT)
        .then(|| MSS_TABLE[(cookie & MSS_INDEX_MASK) as usize])
}

/// (client ISN, cookie) an ACK completing a cookie handshake stands for:
/// its sequence number - 1 and its acknowledgment number - 1 (wrapping).
pub fn from_ack(seq: TcpSeqNumber, ack: TcpSeqNumber) -> (u32, u32) {
    ((seq - 1).0 as u32, (ack - 1).0 as u32)
}

/// The current and previous epoch's keys, derived when the epoch changes.
#[derive(Clone, Debug)]
pub struct Keys {
    seed: Seed,
    current: EpochKey,
    previous: EpochKey,
}

impl Keys {
    pub fn new(seed: Seed, unix_secs: u64) -> Self {
        let epoch = epoch_of(unix_secs);
        Self {
            seed,
            current: EpochKey::derive(&seed, epoch),
            previous: EpochKey::derive(&seed, epoch.wrapping_sub(1)),
        }
    }

    /// Moves to the epoch of `unix_secs` if it changed (a comparison
    /// otherwise: no key derivation per packet).
    pub fn update(&mut self, unix_secs: u64) {
        let epoch = epoch_of(unix_secs);
        if epoch == self.current.epoch {
            return;
        }
        self.previous = if epoch == self.current.epoch.wrapping_add(1) {
            self.current
        } else {
            EpochKey::derive(&self.seed, epoch.wrapping_sub(1))
        };
        self.current = EpochKey::derive(&self.seed, epoch);
    }

    pub fn epoch(&self) -> u64 {
        self.current.epoch
    }

    /// The cookie for a SYN with the current key.
    pub fn mint(&self, flow: &Flow, client_isn: u32, client_mss: Option<u16>) -> u32 {
        encode(&self.current, flow, client_isn, mss_index(client_mss))
    }

    /// The MSS a cookie carries if it is valid (current or previous epoch).
    pub fn check(&self, flow: &Flow, client_isn: u32, cookie: u32) -> Option<u16> {
        decode(&self.current, &self.previous, flow, client_isn, cookie)
    }
}

/// Options a client offered in its SYN, kept in our TSval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TsOptions {
    /// The client's window scale (`None`: not offered).
    pub wscale: Option<u8>,
    pub sack: bool,
}

/// Our TSval for a cookie SYN-ACK (Linux's `cookie_init_timestamp`):
/// `now_ms` with its low 6 bits replaced by the options, never ahead of
/// `now_ms` (wrapping arithmetic, as timestamps are).
pub fn ts_encode(now_ms: u32, opts: TsOptions) -> u32 {
    let mut bits = opts
        .wscale
        .map_or(TS_WSCALE_MASK, |w| u32::from(w.min(MAX_WSCALE)));
    if opts.sack {
        bits |= TS_SACK;
    }
    let ts = (now_ms & !TS_OPT_MASK) | bits;
    if ts > now_ms {
        ts.wrapping_sub(1 << TS_OPT_BITS)
    } else {
        ts
    }
}

/// The options a TSecr echoes; `None` when its ECN bit is set (we never
/// set it: not our timestamp, as Linux's `cookie_ecn_ok` would say).
pub fn ts_decode(tsecr: u32) -> Option<TsOptions> {
    if tsecr & TS_ECN != 0 {
        return None;
    }
    let wscale = match tsecr & TS_WSCALE_MASK {
        TS_WSCALE_MASK => None,
        w => Some(w as u8),
    };
    Some(TsOptions {
        wscale,
        sack: tsecr & TS_SACK != 0,
    })
}

/// The window-scale shift a smoltcp socket with an `rx_capacity`-byte
/// receive buffer uses (as `tcp::Socket::reset` computes it).
pub fn window_shift(rx_capacity: usize) -> u8 {
    let log2 = (usize::BITS - rx_capacity.leading_zeros()) as usize;
    log2.saturating_sub(16) as u8
}

/// A TCP segment in an Ethernet/IPv4 frame, parsed without checksum checks
/// (the caller verifies them first: `frame::checksums_ok`).
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub mac: EthernetAddress,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tcp: TcpRepr<'a>,
}

impl<'a> Segment<'a> {
    pub fn parse(frame: &'a [u8]) -> Option<Self> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let mac = eth.src_addr();
        let ip = Ipv4Packet::new_checked(&frame[ETH_HEADER..]).ok()?;
        if ip.next_header() != IpProtocol::Tcp {
            return None;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let ip_payload =
            &frame[ETH_HEADER..][usize::from(ip.header_len())..usize::from(ip.total_len())];
        let tcp = TcpPacket::new_checked(ip_payload).ok()?;
        let tcp = TcpRepr::parse(
            &tcp,
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &ChecksumCapabilities::ignored(),
        )
        .ok()?;
        Some(Self { mac, src, dst, tcp })
    }

    pub fn flow(&self) -> Flow {
        Flow {
            client: self.src,
            vip: self.dst,
            client_port: self.tcp.src_port,
            vip_port: self.tcp.dst_port,
        }
    }

    /// What the client offered that our TSval will carry.
    pub fn offered(&self) -> TsOptions {
        TsOptions {
            wscale: self.tcp.window_scale,
            sack: self.tcp.sack_permitted,
        }
    }
}

/// Our side of a cookie SYN-ACK.
#[derive(Debug, Clone, Copy)]
pub struct SynAckSpec {
    pub mac: EthernetAddress,
    /// Receive window, unscaled (a SYN-ACK's window is never scaled).
    pub window: u16,
    /// Our MSS (frame size - Ethernet, IPv4 and TCP headers).
    pub mss: u16,
    /// Our window-scale shift ([`window_shift`] of the client socket's buffer).
    pub wscale: u8,
}

/// The SYN-ACK answering `syn` with `cookie` as ISN: MSS always; window
/// scale and SACK-permitted only if the client offered them and a
/// timestamp; the timestamp (`tsval`, echoing the client's) if it sent one.
pub fn synack_repr(
    syn: &TcpRepr<'_>,
    cookie: u32,
    tsval: u32,
    spec: &SynAckSpec,
) -> TcpRepr<'static> {
    let ts = syn.timestamp.is_some();
    TcpRepr {
        src_port: syn.dst_port,
        dst_port: syn.src_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(cookie as i32),
        ack_number: Some(syn.seq_number + 1),
        window_len: spec.window,
        window_scale: (ts && syn.window_scale.is_some()).then_some(spec.wscale),
        max_seg_size: Some(spec.mss),
        sack_permitted: ts && syn.sack_permitted,
        sack_ranges: [None; 3],
        timestamp: syn.timestamp.map(|t| TcpTimestampRepr::new(tsval, t.tsval)),
        payload: &[],
    }
}

/// Length of the frame [`emit_tcp`] writes for `tcp`.
pub fn frame_len(tcp: &TcpRepr<'_>) -> usize {
    ETH_HEADER + IPV4_HEADER + tcp.buffer_len()
}

/// Writes an Ethernet/IPv4/TCP frame into `buf` (at least [`frame_len`]
/// long), checksums as `caps` says (as smoltcp does for its own frames).
#[allow(clippy::too_many_arguments)]
pub fn emit_tcp(
    buf: &mut [u8],
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tcp: &TcpRepr<'_>,
    caps: &ChecksumCapabilities,
) {
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let ip_repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: HOP_LIMIT,
    };
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER..]);
    ip_repr.emit(&mut ip, caps);
    let mut t = TcpPacket::new_unchecked(&mut buf[ETH_HEADER + IPV4_HEADER..][..tcp.buffer_len()]);
    tcp.emit(&mut t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), caps);
}

/// The SYN a validated cookie ACK stands for: sequence number `ack.seq - 1`,
/// the cookie's MSS, and, if the ACK carries a timestamp, the window scale
/// and SACK-permitted its TSecr echoes and a timestamp option whose TSval is
/// the ACK's. Without a timestamp: MSS only.
pub fn synthesized_syn<'a>(ack: &TcpRepr<'_>, mss: u16, opts: Option<TsOptions>) -> TcpRepr<'a> {
    let ts = ack.timestamp.zip(opts);
    TcpRepr {
        src_port: ack.src_port,
        dst_port: ack.dst_port,
        control: TcpControl::Syn,
        seq_number: ack.seq_number - 1,
        ack_number: None,
        window_len: ack.window_len,
        window_scale: ts.and_then(|(_, o)| o.wscale),
        max_seg_size: Some(mss),
        sack_permitted: ts.is_some_and(|(_, o)| o.sack),
        sack_ranges: [None; 3],
        timestamp: ts.map(|(t, _)| TcpTimestampRepr::new(t.tsval, 0)),
        payload: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::VALID_SYN;

    const SEED: Seed = Seed([0x42; 32]);
    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600;

    fn flow() -> Flow {
        Flow {
            client: Ipv4Addr::new(198, 18, 0, 10),
            vip: Ipv4Addr::new(198, 18, 1, 1),
            client_port: 40000,
            vip_port: 80,
        }
    }

    #[test]
    fn seed_from_hex() {
        let s = Seed::from_hex(&"0123456789abcdefABCDEF".repeat(3)[..64]).unwrap();
        assert_eq!(s.0[0], 0x01);
        assert_eq!(s.0[7], 0xef);
        assert_eq!(s.0[8], 0xab);
        assert_eq!(Seed::from_hex("00"), Err(SeedError::Length(2)));
        let mut bad = "0".repeat(64);
        bad.replace_range(5..6, "g");
        assert_eq!(Seed::from_hex(&bad), Err(SeedError::NotHex(5)));
        assert_eq!(format!("{s:?}"), "Seed(..)");
    }

    #[test]
    fn mss_table_boundaries() {
        for (mss, idx) in [
            (None, 0),
            (Some(0), 0),
            (Some(535), 0),
            (Some(536), 0),
            (Some(1299), 0),
            (Some(1300), 1),
            (Some(1439), 1),
            (Some(1440), 2),
            (Some(1459), 2),
            (Some(1460), 3),
            (Some(9000), 3),
        ] {
            assert_eq!(mss_index(mss), idx, "{mss:?}");
            let keys = Keys::new(SEED, T0);
            let c = keys.mint(&flow(), 0x1234_5678, mss);
            assert_eq!(
                keys.check(&flow(), 0x1234_5678, c),
                Some(MSS_TABLE[usize::from(idx)])
            );
        }
    }

    #[test]
    fn cookie_layout() {
        let keys = Keys::new(SEED, T0);
        let c = keys.mint(&flow(), 7, Some(1440));
        assert_eq!(c & 0b11, 2, "MSS index");
        assert_eq!(u64::from((c >> 2) & 1), epoch_of(T0) & 1, "epoch parity");
        // The same inputs give the same cookie; another instance with the seed too.
        assert_eq!(c, Keys::new(SEED, T0 + 10).mint(&flow(), 7, Some(1440)));
    }

    #[test]
    fn expiry() {
        let minted = Keys::new(SEED, T0);
        let c = minted.mint(&flow(), 99, Some(1460));
        let at = |secs: u64| Keys::new(SEED, secs).check(&flow(), 99, c);
        assert_eq!(at(T0), Some(1460), "same epoch");
        assert_eq!(at(T0 + EPOCH_SECS), Some(1460), "next epoch: previous key");
        assert_eq!(at(T0 + 2 * EPOCH_SECS), None, "two epochs later");
        assert_eq!(at(T0 - EPOCH_SECS), None, "from a future epoch");
        // Updating in place agrees with fresh keys.
        let mut k = Keys::new(SEED, T0);
        k.update(T0 + EPOCH_SECS);
        assert_eq!(k.check(&flow(), 99, c), Some(1460));
        k.update(T0 + 2 * EPOCH_SECS);
        assert_eq!(k.check(&flow(), 99, c), None);
        k.update(T0);
        assert_eq!(k.check(&flow(), 99, c), Some(1460), "clock stepped back");
    }

    #[test]
    fn wrong_secret_rejected() {
        let c = Keys::new(SEED, T0).mint(&flow(), 5, None);
        let other = Keys::new(Seed([0x43; 32]), T0);
        assert_eq!(other.check(&flow(), 5, c), None);
        let mut half = SEED;
        half.0[31] ^= 1;
        assert_eq!(Keys::new(half, T0).check(&flow(), 5, c), None);
    }

    #[test]
    fn any_flipped_bit_rejected() {
        let keys = Keys::new(SEED, T0);
        let f = flow();
        let isn = 0xdead_beef;
        let c = keys.mint(&f, isn, Some(1460));
        for bit in 0..32 {
            let a = Ipv4Addr::from(u32::from(f.client) ^ (1 << bit));
            let v = Ipv4Addr::from(u32::from(f.vip) ^ (1 << bit));
            assert_eq!(
                keys.check(&Flow { client: a, ..f }, isn, c),
                None,
                "client bit {bit}"
            );
            assert_eq!(
                keys.check(&Flow { vip: v, ..f }, isn, c),
                None,
                "vip bit {bit}"
            );
            assert_eq!(keys.check(&f, isn ^ (1 << bit), c), None, "isn bit {bit}");
            if bit < 16 {
                let p = 1u16 << bit;
                let cp = Flow {
                    client_port: f.client_port ^ p,
                    ..f
                };
                let vp = Flow {
                    vip_port: f.vip_port ^ p,
                    ..f
                };
                assert_eq!(keys.check(&cp, isn, c), None, "client port bit {bit}");
                assert_eq!(keys.check(&vp, isn, c), None, "vip port bit {bit}");
            }
            // The cookie's hash and parity bits (the MSS bits are not authenticated,
            // like Linux's: any index is a valid MSS).
            if bit >= 2 {
                assert_eq!(
                    keys.check(&f, isn, c ^ (1 << bit)),
                    None,
                    "cookie bit {bit}"
                );
            }
        }
    }

    /// The engine validates `ack.ack_number - 1` with client ISN `ack.seq - 1`,
    /// in TCP sequence arithmetic (wrapping).
    #[test]
    fn sequence_numbers_wrap() {
        let keys = Keys::new(SEED, T0);
        // Client ISN 0xFFFFFFFF: its ACK's seq is 0.
        let c = keys.mint(&flow(), 0xffff_ffff, None);
        let ack_seq = TcpSeqNumber(0);
        assert_eq!(keys.check(&flow(), (ack_seq - 1).0 as u32, c), Some(536));
        // The ISN of a SYN-ACK answering client ISN 0xFFFFFFFF acknowledges 0.
        let mut syn = Segment::parse(&VALID_SYN).unwrap().tcp;
        syn.seq_number = TcpSeqNumber(-1);
        let spec = SynAckSpec {
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            window: 1,
            mss: 1460,
            wscale: 0,
        };
        assert_eq!(
            synack_repr(&syn, c, 0, &spec).ack_number,
            Some(TcpSeqNumber(0))
        );
        // A cookie at the top of the space: the client's ACK number wraps to 0.
        assert_eq!(
            from_ack(TcpSeqNumber(0), TcpSeqNumber(0)),
            (0xffff_ffff, 0xffff_ffff)
        );
        assert_eq!(
            from_ack(TcpSeqNumber(1), TcpSeqNumber(0x7fff_ffff)),
            (0, 0x7fff_fffe)
        );
        let (isn, cookie) = from_ack(TcpSeqNumber(0), TcpSeqNumber(c as i32) + 1);
        assert_eq!(keys.check(&flow(), isn, cookie), Some(536));
    }

    #[test]
    fn timestamp_options_round_trip() {
        for now in [0x1234_5678u32, 0x40, 0x3f, 0x10, 0, 0xffff_ffff] {
            for w in (0..=MAX_WSCALE).map(Some).chain([None]) {
                for sack in [false, true] {
                    let o = TsOptions { wscale: w, sack };
                    let ts = ts_encode(now, o);
                    assert_eq!(ts_decode(ts), Some(o), "now {now:#x} {o:?}");
                    // Never ahead of the clock, at most 64 ms behind.
                    assert!(
                        now.wrapping_sub(ts) < 64 || now == ts,
                        "now {now:#x} ts {ts:#x}"
                    );
                    assert_eq!(ts & 0x20, 0, "ECN bit stays clear");
                }
            }
        }
        assert_eq!(
            ts_encode(
                0x1234_5678,
                TsOptions {
                    wscale: Some(7),
                    sack: true
                }
            ),
            0x1234_5657
        );
        assert_eq!(ts_encode(0x1234_5640, TsOptions::default()), 0x1234_560f);
        assert_eq!(ts_decode(0x0e).unwrap().wscale, Some(14));
        assert_eq!(ts_decode(0x0f).unwrap().wscale, None);
        assert_eq!(ts_decode(0x2f), None, "ECN bit: not a timestamp we sent");
    }

    #[test]
    fn window_shift_as_smoltcp() {
        assert_eq!(window_shift(1024), 0);
        assert_eq!(window_shift(65535), 0);
        assert_eq!(window_shift(64 * 1024), 1);
        assert_eq!(window_shift(256 * 1024), 3);
        assert_eq!(window_shift(16 << 20), 9);
    }

    /// A literal SYN ([`VALID_SYN`]: MSS 1460, no timestamp) answered with a
    /// fixed seed and time: the exact SYN-ACK bytes.
    #[test]
    fn literal_synack() {
        let syn = Segment::parse(&VALID_SYN).unwrap();
        let keys = Keys::new(SEED, T0);
        let cookie = keys.mint(
            &syn.flow(),
            syn.tcp.seq_number.0 as u32,
            syn.tcp.max_seg_size,
        );
        let spec = SynAckSpec {
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            window: 65535,
            mss: 1460,
            wscale: 1,
        };
        let repr = synack_repr(
            &syn.tcp,
            cookie,
            ts_encode(0x1234_5678, syn.offered()),
            &spec,
        );
        let mut buf = vec![0u8; frame_len(&repr)];
        emit_tcp(
            &mut buf,
            spec.mac,
            syn.mac,
            syn.dst,
            syn.src,
            &repr,
            &ChecksumCapabilities::default(),
        );
        #[rustfmt::skip]
        const EXPECTED: [u8; 58] = [
            // Ethernet: to the SYN's source MAC, from ours.
            0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
            // IPv4 198.18.1.1 -> 198.18.0.10, total length 44, TTL 64.
            0x45, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0xad, 0x9c,
            0xc6, 0x12, 0x01, 0x01, 0xc6, 0x12, 0x00, 0x0a,
            // TCP 80 -> 40000, seq = cookie, ack = 0x12345679, SYN+ACK, window 65535.
            0x00, 0x50, 0x9c, 0x40, 0x6f, 0x35, 0x17, 0x8b, 0x12, 0x34, 0x56, 0x79,
            0x60, 0x12, 0xff, 0xff, 0x7e, 0xe8, 0x00, 0x00,
            // MSS 1460 only (no timestamp: no window scale, no SACK).
            0x02, 0x04, 0x05, 0xb4,
        ];
        assert_eq!(buf, EXPECTED, "{buf:02x?}");
        assert_eq!(cookie, 0x6f35_178b);
        assert_eq!(keys.check(&syn.flow(), 0x1234_5678, cookie), Some(1460));
    }

    /// With a timestamp in the SYN: window scale and SACK-permitted offered,
    /// TSval carries the client's options, TSecr echoes its TSval.
    #[test]
    fn synack_options_with_timestamp() {
        let mut syn = Segment::parse(&VALID_SYN).unwrap();
        syn.tcp.window_scale = Some(7);
        syn.tcp.sack_permitted = true;
        syn.tcp.timestamp = Some(TcpTimestampRepr::new(1000, 0));
        let spec = SynAckSpec {
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            window: 65535,
            mss: 1460,
            wscale: 3,
        };
        let tsval = ts_encode(0x1234_5678, syn.offered());
        let r = synack_repr(&syn.tcp, 1, tsval, &spec);
        assert_eq!(
            (r.window_scale, r.sack_permitted, r.max_seg_size),
            (Some(3), true, Some(1460))
        );
        assert_eq!(r.timestamp, Some(TcpTimestampRepr::new(0x1234_5657, 1000)));
        // Window scale not offered: none in answer; SACK alone still offered.
        syn.tcp.window_scale = None;
        let r = synack_repr(&syn.tcp, 1, ts_encode(5000, syn.offered()), &spec);
        assert_eq!((r.window_scale, r.sack_permitted), (None, true));
        // Synthesized SYN from an ACK echoing the TSval.
        let mut ack = syn.tcp;
        ack.control = TcpControl::None;
        ack.seq_number = TcpSeqNumber(0);
        ack.timestamp = Some(TcpTimestampRepr::new(1001, tsval));
        let s = synthesized_syn(&ack, 1460, ts_decode(tsval));
        assert_eq!(s.seq_number, TcpSeqNumber(-1));
        assert_eq!((s.window_scale, s.sack_permitted), (Some(7), true));
        assert_eq!(s.timestamp, Some(TcpTimestampRepr::new(1001, 0)));
        ack.timestamp = None;
        let s = synthesized_syn(&ack, 536, ts_decode(tsval));
        assert_eq!(
            (s.window_scale, s.sack_permitted, s.timestamp),
            (None, false, None)
        );
        assert_eq!(s.max_seg_size, Some(536));
    }
}
