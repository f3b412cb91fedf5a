//! Raw Ethernet/IPv4/TCP and ARP frames, built and parsed by hand, for the tools
//! that talk to the dataplane below the kernel's TCP over AF_PACKET sockets (in
//! their binaries: this crate has no unsafe code): `fulcrum-synflood` (its
//! checksums, MAC helpers and SYN options) and the userspace TCP client
//! `fulcrum-rawtcp`.

use std::net::Ipv4Addr;

pub const ETH: usize = 14;
pub const IP: usize = 20;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// TCP flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A SYN's options as Linux sends them: MSS 1460, SACK permitted, timestamps
/// (TSval at [`SYN_TSVAL_OFFSET`], TSecr 0), NOP, window scale 7.
pub const LINUX_SYN_OPTIONS: [u8; 20] = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7];
/// Where the TSval is in [`LINUX_SYN_OPTIONS`].
pub const SYN_TSVAL_OFFSET: usize = 4 + 2 + 2;

/// One's-complement sum of big-endian 16-bit words (an odd last byte padded).
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds a [`sum16`] and complements it: the checksum to write (0 when checking a
/// block that already holds a correct one).
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The TCP checksum's pseudo-header sum.
pub fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u32 {
    let acc = sum16(&src.octets(), 0);
    sum16(&dst.octets(), acc) + 6 + tcp_len as u32
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("not a MAC: {s:?}"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("not a MAC: {s:?}"))?;
    }
    Ok(mac)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// An interface's own MAC (sysfs).
pub fn iface_mac(iface: &str) -> Result<[u8; 6], String> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).map_err(|e| format!("{iface}: {e}"))?;
    parse_mac(s.trim())
}

// ---------------------------------------------------------------------------- building

/// A TCP segment to build (IPv4, DF, TTL 64), checksums computed.
#[derive(Clone, Debug)]
pub struct TcpOut<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ip_id: u16,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Options, a multiple of 4 bytes long.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl TcpOut<'_> {
    pub fn build(&self) -> Vec<u8> {
        assert!(self.options.len() % 4 == 0 && self.options.len() <= 40, "TCP options: {} bytes", self.options.len());
        let tcp_len = 20 + self.options.len() + self.payload.len();
        let mut f = Vec::with_capacity(ETH + IP + tcp_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&[0x45, 0x00]);
        f.extend_from_slice(&((IP + tcp_len) as u16).to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0x00, 64, 6, 0, 0]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        let ip_csum = fold(sum16(&f[ETH..ETH + IP], 0));
        f[ETH + 10..ETH + 12].copy_from_slice(&ip_csum.to_be_bytes());
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push((((20 + self.options.len()) / 4) as u8) << 4);
        f.push(self.flags);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(self.options);
        f.extend_from_slice(self.payload);
        let csum = fold(sum16(&f[ETH + IP..], pseudo_sum(self.src, self.dst, tcp_len)));
        f[ETH + IP + 16..ETH + IP + 18].copy_from_slice(&csum.to_be_bytes());
        f
    }
}

/// An ARP frame (Ethernet/IPv4): `eth_dst` is the frame's destination (broadcast for
/// a request, or unicast), `target_mac` the ARP target hardware address.
pub fn arp_frame(
    reply: bool,
    eth_dst: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH + 28);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, if reply { 2 } else { 1 }]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip.octets());
    f
}

// ---------------------------------------------------------------------------- parsing

/// The TCP options the client cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub sack_permitted: bool,
    pub wscale: Option<u8>,
    /// (TSval, TSecr).
    pub timestamp: Option<(u32, u32)>,
}

impl TcpOptions {
    /// Parses an options block; `None` if malformed (a length running past the end).
    pub fn parse(mut b: &[u8]) -> Option<TcpOptions> {
        let mut o = TcpOptions::default();
        while let Some(&kind) = b.first() {
            match kind {
                0 => break,
                1 => b = &b[1..],
                _ => {
                    let len = *b.get(1)? as usize;
                    if len < 2 || len > b.len() {
                        return None;
                    }
                    let v = &b[2..len];
                    match (kind, v.len()) {
                        (2, 2) => o.mss = Some(u16::from_be_bytes([v[0], v[1]])),
                        (3, 1) => o.wscale = Some(v[0]),
                        (4, 0) => o.sack_permitted = true,
                        (8, 8) => {
                            o.timestamp = Some((
                                u32::from_be_bytes(v[0..4].try_into().unwrap()),
                                u32::from_be_bytes(v[4..8].try_into().unwrap()),
                            ))
                        }
                        _ => {}
                    }
                    b = &b[len..];
                }
            }
        }
        Some(o)
    }
}

impl std::fmt::Display for TcpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = self.mss {
            parts.push(format!("mss {m}"));
        }
        if self.sack_permitted {
            parts.push("sackOK".to_string());
        }
        if let Some((v, e)) = self.timestamp {
            parts.push(format!("TS val {v} ecr {e}"));
        }
        if let Some(w) = self.wscale {
            parts.push(format!("wscale {w}"));
        }
        write!(f, "[{}]", parts.join(", "))
    }
}

/// A received TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpIn {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: TcpOptions,
    pub payload: Vec<u8>,
    /// Both the IPv4 header's and the TCP checksum verify.
    pub checksums_ok: bool,
}

impl TcpIn {
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }

    /// Sequence space taken: payload, plus one each for SYN and FIN.
    pub fn seg_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.flags & SYN != 0) + u32::from(self.flags & FIN != 0)
    }
}

/// `S.`, `P.`, `F.`, `R` ... as tcpdump writes flags.
pub fn flags_str(flags: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (PSH, 'P'), (RST, 'R')] {
        if flags & bit != 0 {
            s.push(c);
        }
    }
    if flags & ACK != 0 {
        s.push('.');
    }
    s
}

impl std::fmt::Display for TcpIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} > {}:{} [{}] seq {} ack {} win {} options {} length {} (from MAC {}){}",
            self.src,
            self.sport,
            self.dst,
            self.dport,
            flags_str(self.flags),
            self.seq,
            self.ack,
            self.window,
            self.options,
            self.payload.len(),
            format_mac(&self.src_mac),
            if self.checksums_ok { "" } else { " BAD CHECKSUM" }
        )
    }
}

/// A received ARP packet (Ethernet/IPv4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpIn {
    pub reply: bool,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Tcp(TcpIn),
    Arp(ArpIn),
}

fn ip4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn mac6(b: &[u8]) -> [u8; 6] {
    b[..6].try_into().unwrap()
}

/// Parses an Ethernet frame carrying IPv4/TCP (not fragmented) or Ethernet/IPv4
/// ARP; `None` for anything else or anything truncated. Ethernet padding (short
/// frames) is cut by the IPv4 total length.
pub fn parse_frame(f: &[u8]) -> Option<Parsed> {
    if f.len() < ETH {
        return None;
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let p = &f[ETH..];
    match ethertype {
        ETHERTYPE_ARP => {
            if p.len() < 28 || p[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
                return None;
            }
            let op = u16::from_be_bytes([p[6], p[7]]);
            if op != 1 && op != 2 {
                return None;
            }
            Some(Parsed::Arp(ArpIn {
                reply: op == 2,
                sender_mac: mac6(&p[8..]),
                sender_ip: ip4(&p[14..]),
                target_mac: mac6(&p[18..]),
                target_ip: ip4(&p[24..]),
            }))
        }
        ETHERTYPE_IPV4 => {
            if p.len() < IP || p[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff;
            if ihl < IP || total < ihl + 20 || total > p.len() || p[9] != 6 || frag != 0 {
                return None;
            }
            let (src, dst) = (ip4(&p[12..]), ip4(&p[16..]));
            let t = &p[ihl..total];
            let doff = usize::from(t[12] >> 4) * 4;
            if doff < 20 || doff > t.len() {
                return None;
            }
            let checksums_ok = fold(sum16(&p[..ihl], 0)) == 0 && fold(sum16(t, pseudo_sum(src, dst, t.len()))) == 0;
            Some(Parsed::Tcp(TcpIn {
                dst_mac: mac6(f),
                src_mac: mac6(&f[6..]),
                src,
                dst,
                sport: u16::from_be_bytes([t[0], t[1]]),
                dport: u16::from_be_bytes([t[2], t[3]]),
                seq: u32::from_be_bytes(t[4..8].try_into().unwrap()),
                ack: u32::from_be_bytes(t[8..12].try_into().unwrap()),
                flags: t[13],
                window: u16::from_be_bytes([t[14], t[15]]),
                options: TcpOptions::parse(&t[20..doff])?,
                payload: t[doff..].to_vec(),
                checksums_ok,
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The SYN of synflood's `syn_matches_scapy` (scapy 2.5's bytes), built here.
    #[test]
    fn syn_matches_scapy() {
        let mut opts = LINUX_SYN_OPTIONS;
        opts[SYN_TSVAL_OFFSET..SYN_TSVAL_OFFSET + 4].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        let f = TcpOut {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(198, 19, 200, 7),
            dst: Ipv4Addr::new(198, 18, 1, 3),
            ip_id: 0x4242,
            sport: 40001,
            dport: 5201,
            seq: 0x1234_5678,
            ack: 0,
            flags: SYN,
            window: 64240,
            options: &opts,
            payload: &[],
        }
        .build();
        let want = hex(
            "020000000002 020000000001 0800
             4500 003c 4242 4000 4006 a349 c613c807 c6120103
             9c41 1451 12345678 00000000 a002 faf0 da99 0000
             020405b4 0402 080a 01020304 00000000 01 030307",
        );
        assert_eq!(f, want);
        // And it parses back.
        let Some(Parsed::Tcp(t)) = parse_frame(&f) else { panic!("not parsed") };
        assert!(t.checksums_ok);
        assert_eq!((t.sport, t.dport, t.seq, t.flags, t.window), (40001, 5201, 0x1234_5678, SYN, 64240));
        assert_eq!(
            t.options,
            TcpOptions { mss: Some(1460), sack_permitted: true, wscale: Some(7), timestamp: Some((0x0102_0304, 0)) }
        );
    }

    /// A SYN-ACK as Linux 6.x sends it (captured bytes, tcpdump -xx): MSS 1460,
    /// SACK permitted, timestamps, NOP, wscale 7, from 198.18.1.1:80 to
    /// 198.18.0.99:40001.
    #[test]
    fn parse_synack() {
        let f = hex(
            "0200000000c9 02000000000a 0800
             4500 003c 0000 4000 4006 4d25 c6120101 c6120063
             0050 9c41 a1b2c3d4 12345679 a012 fe88 0000 0000
             020405b4 0402 080a 0000abcd 01020304 01 030307",
        );
        // Put the right checksums in (the capture's were offloaded).
        let mut f = f;
        f[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
        let c = fold(sum16(&f[ETH..ETH + IP], 0));
        f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        let (src, dst) = (Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(198, 18, 0, 99));
        let c = fold(sum16(&f[ETH + IP..], pseudo_sum(src, dst, 40)));
        f[ETH + IP + 16..ETH + IP + 18].copy_from_slice(&c.to_be_bytes());

        let Some(Parsed::Tcp(t)) = parse_frame(&f) else { panic!("not parsed") };
        assert_eq!(t.src_mac, [2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(t.dst_mac, [2, 0, 0, 0, 0, 0xc9]);
        assert_eq!((t.src, t.dst, t.sport, t.dport), (src, dst, 80, 40001));
        assert_eq!((t.seq, t.ack, t.window), (0xa1b2_c3d4, 0x1234_5679, 0xfe88));
        assert!(t.has(SYN | ACK) && !t.has(RST));
        assert_eq!(flags_str(t.flags), "S.");
        assert_eq!(t.seg_len(), 1);
        assert_eq!(
            t.options,
            TcpOptions { mss: Some(1460), sack_permitted: true, wscale: Some(7), timestamp: Some((0xabcd, 0x0102_0304)) }
        );
        assert!(t.checksums_ok);
        // A flipped payload bit fails the TCP checksum.
        f[ETH + IP + 4] ^= 1;
        let Some(Parsed::Tcp(t)) = parse_frame(&f) else { panic!("not parsed") };
        assert!(!t.checksums_ok);
    }

    /// A data segment padded to Ethernet's minimum, and one with FIN: payload cut
    /// at the IPv4 total length; NOP NOP TS options.
    #[test]
    fn parse_data_fin_and_padding() {
        let seg = TcpOut {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(198, 18, 1, 1),
            dst: Ipv4Addr::new(198, 18, 0, 99),
            ip_id: 7,
            sport: 80,
            dport: 40001,
            seq: 100,
            ack: 200,
            flags: FIN | ACK,
            window: 502,
            options: &[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6],
            payload: b"hi",
        };
        let mut f = seg.build();
        assert_eq!(f.len(), 14 + 20 + 32 + 2);
        f.extend_from_slice(&[0; 6]); // trailer padding
        let Some(Parsed::Tcp(t)) = parse_frame(&f) else { panic!("not parsed") };
        assert_eq!(t.payload, b"hi");
        assert_eq!(t.options.timestamp, Some((5, 6)));
        assert_eq!(t.options.mss, None);
        assert_eq!(flags_str(t.flags), "F.");
        assert_eq!(t.seg_len(), 3);
        assert!(t.checksums_ok);
        // A RST (no options).
        let f = TcpOut { flags: RST, options: &[], payload: &[], ..seg }.build();
        let Some(Parsed::Tcp(t)) = parse_frame(&f) else { panic!("not parsed") };
        assert_eq!((flags_str(t.flags).as_str(), t.seg_len(), t.checksums_ok), ("R", 0, true));
        // Truncated and malformed: nothing.
        assert_eq!(parse_frame(&f[..40]), None);
        assert_eq!(TcpOptions::parse(&[2, 4, 5]), None);
        assert_eq!(TcpOptions::parse(&[1, 0, 2, 4]), Some(TcpOptions::default()));
    }

    /// An ARP request as the dataplane sends one (who-has 198.18.0.99 tell
    /// 198.18.0.42), and the reply built to it.
    #[test]
    fn parse_arp() {
        let f = hex(
            "ffffffffffff 0200000000c9 0806
             0001 0800 06 04 0001 0200000000c9 c612002a 000000000000 c6120063
             000000000000000000000000000000000000",
        );
        let Some(Parsed::Arp(a)) = parse_frame(&f) else { panic!("not parsed") };
        assert_eq!(
            a,
            ArpIn {
                reply: false,
                sender_mac: [2, 0, 0, 0, 0, 0xc9],
                sender_ip: Ipv4Addr::new(198, 18, 0, 42),
                target_mac: [0; 6],
                target_ip: Ipv4Addr::new(198, 18, 0, 99),
            }
        );
        let r = arp_frame(true, a.sender_mac, [2, 0, 0, 0, 0, 0x99], a.target_ip, a.sender_mac, a.sender_ip);
        assert_eq!(
            r,
            hex("0200000000c9 020000000099 0806
                 0001 0800 06 04 0002 020000000099 c6120063 0200000000c9 c612002a")
        );
        let Some(Parsed::Arp(b)) = parse_frame(&r) else { panic!("not parsed") };
        assert!(b.reply && b.sender_ip == Ipv4Addr::new(198, 18, 0, 99));
        // Not IPv4 over Ethernet: nothing.
        let mut bad = f.clone();
        bad[ETH + 2] = 0x86;
        assert_eq!(parse_frame(&bad), None);
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("0A:1b:2c:3d:4e:5f"), Ok([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert!(parse_mac("0a:1b:2c").is_err());
        assert_eq!(format_mac(&[0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]), "0a:1b:2c:3d:4e:5f");
    }
}
