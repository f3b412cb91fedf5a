//! The engine's own cheap frame classification: what it needs to know about
//! a frame (ARP, or a TCP segment's 4-tuple, flags and whether it is a bare
//! SYN) before choosing the socket set smoltcp processes it with. Every TCP
//! segment with plausible flags has its checksums verified here, once: a
//! bare SYN before admission spends anything on it, an ACK before it is
//! taken for a SYN cookie, any other segment before smoltcp sees it; one
//! that fails is dropped and counted (`drop_bad_checksum`). smoltcp is told
//! not to verify again ([`transmit_only`]). Steering a frame
//! to its lcore happens earlier, in the dataplane, with
//! [`fulcrum_model::steer`].

use std::net::Ipv4Addr;

use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket,
};

/// The six classic TCP flags, as bits of [`TcpMeta::flags`] (their positions
/// in the header's flags byte).
pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
pub(crate) const PSH: u8 = 0x08;
pub(crate) const ACK: u8 = 0x10;
pub(crate) const URG: u8 = 0x20;

/// Whether a segment's flags (the six classic ones; ECE, CWR and NS are not
/// looked at) are a combination a TCP peer can send. The rule, once:
///
/// | flags                                  | verdict | why                                        |
/// |----------------------------------------|---------|--------------------------------------------|
/// | none of SYN, ACK, RST (null scan, FIN, PSH, URG, xmas FIN+PSH+URG, ...) | drop | every segment but the first SYN and a RST carries ACK; a receiver drops the rest anyway (RFC 9293 3.10.7) |
/// | SYN+FIN (with anything)                | drop    | opens and closes at once: a scan           |
/// | SYN+RST (with anything)                | drop    | opens and resets at once: a scan           |
/// | FIN without ACK (with anything)        | drop    | a FIN always acknowledges (xmas, FIN scan) |
/// | anything else                          | keep    | SYN, SYN+ACK, RST, RST+ACK, ACK, FIN+ACK, PSH+ACK, URG+ACK, ... |
///
/// SYN's own companions (PSH or URG on a SYN, data on a SYN) are kept: odd,
/// but legal, and smoltcp copes.
pub(crate) fn plausible(flags: u8) -> bool {
    let has = |f: u8| flags & f != 0;
    if !has(SYN | ACK | RST) {
        return false;
    }
    if has(SYN) && (has(FIN) || has(RST)) {
        return false;
    }
    !has(FIN) || has(ACK)
}

/// What the engine needs to know about a frame before smoltcp sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// ARP from `sender`, asking about or answering for `target`.
    Arp {
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
    Tcp(TcpMeta),
    /// Anything else (other protocols, IP fragments, malformed): dropped.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpMeta {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// The six classic flags ([`FIN`] .. [`URG`]); see [`plausible`].
    pub flags: u8,
    /// SYN without ACK or RST: the only segment that may open a connection.
    pub syn_only: bool,
    /// A segment with plausible flags whose IPv4 header checksum or TCP
    /// checksum (pseudo-header, header and payload, bounded by the IPv4 total
    /// length) is wrong. Segments with impossible flags are not checked
    /// (they are dropped for their flags), and only the checksums `checksum`
    /// says are verified on receive (not those the NIC verified).
    pub bad_checksum: bool,
}

/// Parses headers; verifies the checksums of every TCP segment with
/// plausible flags (see [`TcpMeta::bad_checksum`]), the one verification a
/// segment gets. Fragments are `Other`: their ports are not in every fragment.
pub(crate) fn classify(frame: &[u8], checksum: &ChecksumCapabilities) -> Frame {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Frame::Other;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => match ArpPacket::new_checked(eth.payload()) {
            Ok(arp) if arp.protocol_len() == 4 => Frame::Arp {
                sender: Ipv4Addr::from(
                    <[u8; 4]>::try_from(arp.source_protocol_addr()).unwrap_or_default(),
                ),
                target: Ipv4Addr::from(
                    <[u8; 4]>::try_from(arp.target_protocol_addr()).unwrap_or_default(),
                ),
            },
            _ => Frame::Other,
        },
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Frame::Other;
            };
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return Frame::Other;
            }
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return Frame::Other;
            };
            let flags = [
                (tcp.fin(), FIN),
                (tcp.syn(), SYN),
                (tcp.rst(), RST),
                (tcp.psh(), PSH),
                (tcp.ack(), ACK),
                (tcp.urg(), URG),
            ]
            .iter()
            .fold(0, |acc, &(on, bit)| if on { acc | bit } else { acc });
            let syn_only = tcp.syn() && !tcp.ack() && !tcp.rst();
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let bad_checksum = plausible(flags) && !checksums_ok(&ip, &tcp, checksum);
            Frame::Tcp(TcpMeta {
                src,
                dst,
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                flags,
                syn_only,
                bad_checksum,
            })
        }
        _ => Frame::Other,
    }
}

/// The IPv4 header and TCP checksums (pseudo-header, header and payload,
/// bounded by the IPv4 total length), those `checksum` says are verified on
/// receive. The same verdicts as smoltcp's `verify_checksum`s (a unit test
/// compares them byte flip by byte flip), computed here in one pass with
/// nothing called: every segment pays this once.
fn checksums_ok(
    ip: &Ipv4Packet<&[u8]>,
    tcp: &TcpPacket<&[u8]>,
    checksum: &ChecksumCapabilities,
) -> bool {
    let header = &ip.as_ref()[..usize::from(ip.header_len())];
    let segment: &[u8] = tcp.as_ref();
    // The pseudo-header in the little-endian word order `ones_sum` uses.
    let pseudo = u128::from(u32::from_le_bytes(ip.src_addr().octets()))
        + u128::from(u32::from_le_bytes(ip.dst_addr().octets()))
        + u128::from(u16::from(u8::from(IpProtocol::Tcp)).swap_bytes())
        + u128::from((segment.len() as u16).swap_bytes());
    (!checksum.ipv4.rx() || fold(ones_sum(0, header)) == 0xffff)
        && (!checksum.tcp.rx() || fold(ones_sum(pseudo, segment)) == 0xffff)
}

/// `sum` plus the one's complement sum (RFC 1071) of `data`, read as
/// little-endian words, added up plainly in 128 bits for [`fold`] to wrap
/// the carries around. Why it is right: 2^16 = 1 modulo 2^16 - 1, so a
/// 64-, 32- or 16-bit little-endian word adds what its 16-bit words add;
/// every piece starts at an even offset, so a byte keeps its place (low or
/// high) within its 16-bit word, and an odd last byte is the low byte of a
/// word padded with zero; summing byte-swapped words gives the byte-swapped
/// sum (RFC 1071 2.B), and 0xffff, what an intact segment sums to, is its
/// own swap.
#[inline]
fn ones_sum(mut sum: u128, data: &[u8]) -> u128 {
    let word = |b: &[u8]| u128::from(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")));
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        sum += word(&c[0..]) + word(&c[8..]) + word(&c[16..]) + word(&c[24..]);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 8 {
        sum += word(rest);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        sum += u128::from(u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        sum += u128::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        sum += u128::from(*last);
    }
    sum
}

/// A one's complement sum kept in 128 bits folded to 16 (0xffff: the data,
/// checksum field included, is intact).
#[inline]
fn fold(sum: u128) -> u16 {
    let s = (sum & u128::from(u64::MAX)) + (sum >> 64); // < 2^65
    let s = (s & 0xffff_ffff) + (s >> 32); // < 2^34
    let mut s = s as u64;
    for _ in 0..3 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// What smoltcp is told about the checksums [`classify`] verifies (IPv4
/// header, TCP): computed on transmit as `checksum` says, never verified on
/// receive, since every segment smoltcp is given was verified here (and
/// nothing but TCP over IPv4, and ARP, reaches it). The cost is paid once.
pub(crate) fn transmit_only(checksum: &ChecksumCapabilities) -> ChecksumCapabilities {
    let tx = |c: &Checksum| if c.tx() { Checksum::Tx } else { Checksum::None };
    let mut caps = checksum.clone();
    caps.ipv4 = tx(&checksum.ipv4);
    caps.tcp = tx(&checksum.tcp);
    caps
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::IpAddress;

    use super::*;
    use crate::testdata::{
        flipped, flipped_in, DATA_PAYLOAD_AT, PADDING_AT, SEQ_LOW_AT, TCP_FLAGS_AT, TTL_AT, VALID_DATA,
        VALID_SYN,
    };

    fn meta(frame: &[u8], caps: &ChecksumCapabilities) -> TcpMeta {
        match classify(frame, caps) {
            Frame::Tcp(m) => m,
            other => panic!("not TCP: {other:?}"),
        }
    }

    /// Every combination of the six classic flags, spelled out, with the
    /// verdict expected of [`plausible`] (true = keep).
    #[test]
    fn plausible_on_all_64_flag_combinations() {
        #[rustfmt::skip]
        const TABLE: [(u8, bool); 64] = [
            // URG ACK PSH RST SYN FIN
            (0b00_0000, false), // null scan
            (0b00_0001, false), // FIN without ACK
            (0b00_0010, true),  // SYN
            (0b00_0011, false), // SYN+FIN
            (0b00_0100, true),  // RST
            (0b00_0101, false), // RST+FIN without ACK
            (0b00_0110, false), // SYN+RST
            (0b00_0111, false), // SYN+RST+FIN
            (0b00_1000, false), // PSH alone
            (0b00_1001, false), // PSH+FIN without ACK
            (0b00_1010, true),  // SYN+PSH
            (0b00_1011, false), // SYN+FIN+PSH
            (0b00_1100, true),  // RST+PSH
            (0b00_1101, false), // RST+PSH+FIN without ACK
            (0b00_1110, false), // SYN+RST+PSH
            (0b00_1111, false), // SYN+RST+PSH+FIN
            (0b01_0000, true),  // ACK
            (0b01_0001, true),  // FIN+ACK
            (0b01_0010, true),  // SYN+ACK
            (0b01_0011, false), // SYN+FIN+ACK
            (0b01_0100, true),  // RST+ACK
            (0b01_0101, true),  // RST+FIN+ACK
            (0b01_0110, false), // SYN+RST+ACK
            (0b01_0111, false), // SYN+RST+FIN+ACK
            (0b01_1000, true),  // PSH+ACK
            (0b01_1001, true),  // PSH+FIN+ACK
            (0b01_1010, true),  // SYN+PSH+ACK
            (0b01_1011, false), // SYN+FIN+PSH+ACK
            (0b01_1100, true),  // RST+PSH+ACK
            (0b01_1101, true),  // RST+PSH+FIN+ACK
            (0b01_1110, false), // SYN+RST+PSH+ACK
            (0b01_1111, false), // all but URG
            (0b10_0000, false), // URG alone
            (0b10_0001, false), // URG+FIN without ACK
            (0b10_0010, true),  // SYN+URG
            (0b10_0011, false), // SYN+FIN+URG
            (0b10_0100, true),  // RST+URG
            (0b10_0101, false), // RST+FIN+URG without ACK
            (0b10_0110, false), // SYN+RST+URG
            (0b10_0111, false), // SYN+RST+FIN+URG
            (0b10_1000, false), // URG+PSH without ACK
            (0b10_1001, false), // xmas: FIN+PSH+URG
            (0b10_1010, true),  // SYN+PSH+URG
            (0b10_1011, false), // SYN+FIN+PSH+URG
            (0b10_1100, true),  // RST+PSH+URG
            (0b10_1101, false), // RST+FIN+PSH+URG without ACK
            (0b10_1110, false), // SYN+RST+PSH+URG
            (0b10_1111, false), // SYN+RST+FIN+PSH+URG
            (0b11_0000, true),  // URG+ACK
            (0b11_0001, true),  // URG+FIN+ACK
            (0b11_0010, true),  // SYN+ACK+URG
            (0b11_0011, false), // SYN+FIN+ACK+URG
            (0b11_0100, true),  // RST+ACK+URG
            (0b11_0101, true),  // RST+FIN+ACK+URG
            (0b11_0110, false), // SYN+RST+ACK+URG
            (0b11_0111, false), // SYN+RST+FIN+ACK+URG
            (0b11_1000, true),  // URG+PSH+ACK
            (0b11_1001, true),  // URG+PSH+FIN+ACK
            (0b11_1010, true),  // SYN+URG+PSH+ACK
            (0b11_1011, false), // SYN+FIN+URG+PSH+ACK
            (0b11_1100, true),  // RST+URG+PSH+ACK
            (0b11_1101, true),  // RST+FIN+URG+PSH+ACK
            (0b11_1110, false), // SYN+RST+URG+PSH+ACK
            (0b11_1111, false), // all six
        ];
        assert_eq!((FIN, SYN, RST, PSH, ACK, URG), (1, 2, 4, 8, 16, 32));
        for (i, &(flags, keep)) in TABLE.iter().enumerate() {
            assert_eq!(usize::from(flags), i, "table row {i} out of order");
            assert_eq!(plausible(flags), keep, "flags {flags:#08b}");
        }
    }

    /// The same verdicts when the flags come off the wire: each combination
    /// written into the frozen SYN's flags byte and classified.
    #[test]
    fn classify_reads_the_six_flags() {
        let caps = ChecksumCapabilities::default();
        for flags in 0u8..64 {
            let mut f = VALID_SYN;
            f[TCP_FLAGS_AT] = flags | 0xc0; // ECE+CWR set too: not looked at
            let m = meta(&f, &caps);
            assert_eq!(m.flags, flags);
            assert_eq!(m.syn_only, flags & (SYN | ACK | RST) == SYN);
        }
    }

    #[test]
    fn valid_syn_passes_the_checksums() {
        let m = meta(&VALID_SYN, &ChecksumCapabilities::default());
        assert_eq!(
            (m.src, m.dst, m.src_port, m.dst_port),
            (
                Ipv4Addr::new(198, 18, 0, 10),
                Ipv4Addr::new(198, 18, 1, 1),
                40000,
                80
            )
        );
        assert_eq!(m.flags, SYN);
        assert!(m.syn_only && !m.bad_checksum);
        // Padding beyond the IPv4 total length is not part of the segment.
        let m = meta(&flipped(PADDING_AT), &ChecksumCapabilities::default());
        assert!(!m.bad_checksum);
    }

    /// Issue 14's SYN: a client's SYN as the kernel hands it down to a veth
    /// with transmit checksum offload on (CHECKSUM_PARTIAL), byte for byte
    /// as tcpdump decoded it on the veth of the failing af_packet setup
    /// (`198.18.0.10.53506 > 198.18.1.1.80: Flags [S], cksum 0x8d5e
    /// (incorrect -> 0x3573), seq 2258281048, win 64240, options [mss
    /// 1460,sackOK,TS val 1194805484 ecr 0,nop,wscale 10]`, IP id 38626, DF,
    /// TTL 64). The TCP checksum field holds only the folded pseudo-header
    /// sum (0x8d5e), which "hardware" was to finish: a bad checksum, dropped
    /// and counted before admission. With the field finished (0x3573, what
    /// the kernel writes when the veth's offloads are off) it is a valid SYN.
    #[test]
    fn checksum_partial_syn_from_a_veth_is_a_bad_checksum() {
        const PARTIAL_SYN: [u8; 74] = [
            0xee, 0xcb, 0x56, 0xf7, 0x86, 0xca, 0x02, 0xfd, 0x71, 0x93, 0x12, 0x30, //
            0x08, 0x00, 0x45, 0x00, 0x00, 0x3c, 0x96, 0xe2, 0x40, 0x00, 0x40, 0x06, //
            0x16, 0xaa, 0xc6, 0x12, 0x00, 0x0a, 0xc6, 0x12, 0x01, 0x01, 0xd1, 0x02, //
            0x00, 0x50, 0x86, 0x9a, 0xa2, 0x58, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, //
            0xfa, 0xf0, 0x8d, 0x5e, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, //
            0x08, 0x0a, 0x47, 0x37, 0x48, 0xec, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, //
            0x03, 0x0a,
        ];
        const TCP_CHECKSUM_AT: usize = 14 + 20 + 16;
        let caps = ChecksumCapabilities::default();
        let m = meta(&PARTIAL_SYN, &caps);
        assert_eq!((m.src_port, m.dst_port, m.flags), (53506, 80, SYN));
        assert!(m.syn_only && m.bad_checksum);
        let mut finished = PARTIAL_SYN;
        finished[TCP_CHECKSUM_AT..TCP_CHECKSUM_AT + 2].copy_from_slice(&[0x35, 0x73]);
        assert!(!meta(&finished, &caps).bad_checksum);
    }

    #[test]
    fn flipped_syn_fails_the_checksums() {
        let caps = ChecksumCapabilities::default();
        // A TCP header byte: the TCP checksum fails.
        assert!(meta(&flipped(SEQ_LOW_AT), &caps).bad_checksum);
        // The TTL: the IPv4 header checksum fails (the TCP one still holds).
        assert!(meta(&flipped(TTL_AT), &caps).bad_checksum);
        // Checksums the NIC verified (not `rx` here) are not verified again.
        let mut offloaded = ChecksumCapabilities::default();
        offloaded.tcp = Checksum::Tx;
        assert!(!meta(&flipped(SEQ_LOW_AT), &offloaded).bad_checksum);
        offloaded.ipv4 = Checksum::None;
        assert!(!meta(&flipped(TTL_AT), &offloaded).bad_checksum);
    }

    /// Every segment is verified here, not only SYNs: a data segment
    /// (PSH+ACK, `hello`) passes intact and is a bad checksum with a payload
    /// byte, a header byte or the TTL flipped; so is a bare ACK.
    #[test]
    fn data_segments_and_acks_are_checksummed_too() {
        let caps = ChecksumCapabilities::default();
        let m = meta(&VALID_DATA, &caps);
        assert_eq!((m.src_port, m.dst_port, m.flags), (40000, 80, PSH | ACK));
        assert!(!m.syn_only && !m.bad_checksum);
        // Padding beyond the IPv4 total length is not part of the segment.
        assert!(!meta(&flipped_in(&VALID_DATA, 59), &caps).bad_checksum);
        assert!(meta(&flipped_in(&VALID_DATA, DATA_PAYLOAD_AT), &caps).bad_checksum);
        assert!(meta(&flipped_in(&VALID_DATA, SEQ_LOW_AT), &caps).bad_checksum);
        assert!(meta(&flipped_in(&VALID_DATA, TTL_AT), &caps).bad_checksum);
        // A bare ACK (the flags byte changed: the checksum no longer holds).
        let mut ack = VALID_DATA;
        ack[TCP_FLAGS_AT] = ACK;
        assert!(meta(&ack, &caps).bad_checksum);
        // Impossible flags are dropped for those, not checksummed.
        let mut null = VALID_DATA;
        null[TCP_FLAGS_AT] = 0;
        assert!(!meta(&null, &caps).bad_checksum);
    }

    /// [`checksums_ok`] agrees with smoltcp's own verification on every
    /// frame here with every byte flipped in turn (odd and even lengths,
    /// header and payload, the padding beyond the IPv4 total length).
    #[test]
    fn own_checksum_agrees_with_smoltcps() {
        // (smoltcp's verdict, ours); `None` when the bytes no longer parse
        // (a flipped IHL, total length or data offset: classify refuses those).
        let verdicts = |frame: &[u8]| {
            let eth = EthernetFrame::new_checked(frame).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
            let theirs = ip.verify_checksum() && tcp.verify_checksum(&src, &dst);
            Some((theirs, checksums_ok(&ip, &tcp, &ChecksumCapabilities::default())))
        };
        let (mut compared, mut bad) = (0, 0);
        for frame in [VALID_SYN, VALID_DATA] {
            assert_eq!(verdicts(&frame), Some((true, true)));
            for at in 14..frame.len() {
                for bit in [0x01, 0x80] {
                    let mut f = frame;
                    f[at] ^= bit;
                    let Some((theirs, ours)) = verdicts(&f) else { continue };
                    assert_eq!(ours, theirs, "byte {at} ^ {bit:#x}");
                    compared += 1;
                    bad += usize::from(!ours);
                }
            }
        }
        assert!(compared > 150 && bad > 150, "{compared} compared, {bad} bad");
    }

    /// What smoltcp is given: checksums computed on transmit as configured,
    /// never verified on receive (verified here instead).
    #[test]
    fn smoltcp_computes_but_does_not_verify() {
        let caps = transmit_only(&ChecksumCapabilities::default());
        assert!(caps.ipv4.tx() && !caps.ipv4.rx() && caps.tcp.tx() && !caps.tcp.rx());
        let mut offloaded = ChecksumCapabilities::default();
        offloaded.tcp = Checksum::Rx;
        offloaded.ipv4 = Checksum::None;
        let caps = transmit_only(&offloaded);
        assert!(!caps.ipv4.tx() && !caps.ipv4.rx() && !caps.tcp.tx() && !caps.tcp.rx());
    }
}
