//! Tests on literal frames: exact replies, one named case per drop reason,
//! and no-panic sweeps over truncations, corruptions and random bytes.

use core::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet,
    Ipv4Packet,
};

use crate::testdata::*;
use crate::{classify, emit_arp_reply, Classified, DropReason, EthernetAddress, Ipv4Payload, Local, Verdict, ARP_FRAME_LEN};

const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const PEER_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Two addresses, so that matching one that is not first is exercised too.
const LOCAL: Local<'static> = Local {
    mac: OUR_MAC,
    addrs: &[VIP, OUR_IP],
};

// Byte offsets into the fixtures, for the mutations below.
const ETHERTYPE: usize = 12;
const IP: usize = 14;
const L4: usize = IP + 20;
const ARP_OPER: usize = IP + 6;
const ARP_TPA: usize = IP + 24;

/// Runs `respond` on a copy of `frame`; returns the verdict and the bytes after.
fn respond(frame: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = frame.to_vec();
    let verdict = crate::respond(&mut buf, &LOCAL);
    (verdict, buf)
}

/// A copy of `base` changed by `f`.
fn with(base: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = base.to_vec();
    f(&mut frame);
    frame
}

/// A copy of `base` with its IPv4 header changed by `f`, then re-checksummed
/// so that the change, not the checksum, is what gets the frame dropped.
fn with_ipv4(base: &[u8], f: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
    with(base, |frame| {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[IP..]);
        f(&mut ip);
        ip.fill_checksum();
    })
}

/// Checks a reply the way its receiver would, with smoltcp.
fn assert_valid_reply(reply: &[u8]) {
    let eth = EthernetFrame::new_checked(reply).expect("ethernet");
    assert_eq!(eth.src_addr(), OUR_MAC);
    assert!(eth.dst_addr().is_unicast());
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).expect("arp");
            let ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                ..
            } = ArpRepr::parse(&arp).expect("ethernet/ipv4 arp")
            else {
                panic!("not ethernet/ipv4 arp")
            };
            assert_eq!(operation, ArpOperation::Reply);
            assert_eq!(source_hardware_addr, OUR_MAC);
            assert!(LOCAL.addrs.contains(&source_protocol_addr));
            assert_eq!(target_hardware_addr, eth.dst_addr());
            assert_eq!(reply.len(), 42);
        }
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("ipv4");
            assert_eq!(usize::from(ip.total_len()), eth.payload().len());
            assert!(ip.verify_checksum());
            assert!(LOCAL.addrs.contains(&ip.src_addr()));
            assert_eq!(ip.hop_limit(), 64);
            let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("icmp");
            assert!(icmp.verify_checksum());
            assert_eq!(icmp.msg_type(), Icmpv4Message::EchoReply);
        }
        other => panic!("reply with ethertype {other}"),
    }
}

/// Runs `respond` on `frame` and checks what any frame must get: a valid
/// reply no longer than the frame, or a drop that left it untouched.
fn assert_sound(frame: &[u8]) {
    let (verdict, after) = respond(frame);
    match verdict {
        Verdict::Reply { len } => {
            assert!(len <= frame.len());
            assert_valid_reply(&after[..len]);
        }
        Verdict::Drop(_) => assert_eq!(after, frame),
    }
}

#[test]
fn drop_reasons_are_indexed_and_named() {
    assert_eq!(DropReason::COUNT, DropReason::ALL.len());
    for (i, reason) in DropReason::ALL.iter().enumerate() {
        assert_eq!(reason.index(), i);
        let name = reason.name();
        assert!(!name.is_empty() && !name.starts_with('_') && !name.ends_with('_'));
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        for other in &DropReason::ALL[..i] {
            assert_ne!(other.name(), name);
        }
    }
}

#[test]
fn arp_request_is_classified() {
    assert_eq!(
        classify(&ARP_REQUEST, &LOCAL),
        Ok(Classified::ArpRequest {
            sender_mac: PEER_MAC,
            sender_ip: PEER_IP,
            target_ip: OUR_IP,
        })
    );
}

#[test]
fn arp_request_gets_reply() {
    let (verdict, reply) = respond(&ARP_REQUEST);
    assert_eq!(verdict, Verdict::Reply { len: 42 });
    assert_eq!(reply, ARP_REPLY);
}

#[test]
fn padded_arp_request_gets_minimal_reply() {
    let padded = with(&ARP_REQUEST, |f| f.resize(60, 0));
    let (verdict, reply) = respond(&padded);
    assert_eq!(verdict, Verdict::Reply { len: 42 });
    assert_eq!(reply[..42], ARP_REPLY);
}

#[test]
fn arp_request_for_second_address_answers_as_it() {
    let request = with(&ARP_REQUEST, |f| {
        f[ARP_TPA..ARP_TPA + 4].copy_from_slice(&VIP.octets())
    });
    let (verdict, reply) = respond(&request);
    assert_eq!(verdict, Verdict::Reply { len: 42 });
    let arp = ArpPacket::new_checked(&reply[IP..]).unwrap();
    assert_eq!(arp.source_protocol_addr(), VIP.octets());
    assert_eq!(arp.target_protocol_addr(), PEER_IP.octets());
}

#[test]
fn echo_request_is_classified() {
    assert_eq!(
        classify(&ICMP_ECHO_REQUEST, &LOCAL),
        Ok(Classified::IcmpEchoRequest(Ipv4Payload {
            src: PEER_IP,
            dst: OUR_IP,
            offset: L4,
            len: 64,
        }))
    );
}

#[test]
fn echo_request_gets_reply() {
    let (verdict, reply) = respond(&ICMP_ECHO_REQUEST);
    assert_eq!(verdict, Verdict::Reply { len: 98 });
    assert_eq!(reply, ICMP_ECHO_REPLY);
    assert_valid_reply(&reply);
}

#[test]
fn echo_request_with_options_gets_plain_reply() {
    let (verdict, reply) = respond(&ICMP_ECHO_REQUEST_OPTS);
    assert_eq!(verdict, Verdict::Reply { len: 98 });
    assert_eq!(reply[..98], ICMP_ECHO_REPLY);
}

#[test]
fn echo_request_with_trailing_bytes_gets_reply_without_them() {
    // Bytes past the IPv4 total length (padding, a kept FCS) are neither
    // checksummed nor sent back.
    let trailing = with(&ICMP_ECHO_REQUEST, |f| {
        f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef])
    });
    let (verdict, reply) = respond(&trailing);
    assert_eq!(verdict, Verdict::Reply { len: 98 });
    assert_eq!(reply[..98], ICMP_ECHO_REPLY);
}

#[test]
fn tcp_syn_is_classified_then_dropped_as_unserved() {
    assert_eq!(
        classify(&TCP_SYN, &LOCAL),
        Ok(Classified::Tcp {
            ip: Ipv4Payload {
                src: PEER_IP,
                dst: OUR_IP,
                offset: L4,
                len: 40,
            },
            src_port: 40000,
            dst_port: 80,
        })
    );
    assert_eq!(respond(&TCP_SYN).0, Verdict::Drop(DropReason::NoService));
}

#[test]
fn padded_udp_is_classified_then_dropped_as_unserved() {
    assert_eq!(
        classify(&UDP_PADDED, &LOCAL),
        Ok(Classified::Udp {
            ip: Ipv4Payload {
                src: PEER_IP,
                dst: OUR_IP,
                offset: L4,
                len: 12,
            },
            src_port: 53000,
            dst_port: 53,
        })
    );
    assert_eq!(respond(&UDP_PADDED).0, Verdict::Drop(DropReason::NoService));
}

/// One or more named bad frames per reason; every reason must appear.
#[test]
fn bad_frames_are_dropped_for_their_reason() {
    use DropReason::*;
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        ("empty", vec![], EthTruncated),
        ("10 bytes", ICMP_ECHO_REQUEST[..10].to_vec(), EthTruncated),
        ("13 bytes", ICMP_ECHO_REQUEST[..13].to_vec(), EthTruncated),
        (
            "unicast to another mac",
            with(&ICMP_ECHO_REQUEST, |f| f[5] = 0x02),
            OtherHost,
        ),
        (
            "ipv4 multicast mac",
            with(&ICMP_ECHO_REQUEST, |f| {
                f[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1])
            }),
            Multicast,
        ),
        (
            "multicast source mac",
            with(&ICMP_ECHO_REQUEST, |f| f[6] |= 1),
            MartianSource,
        ),
        (
            "arp sender mac broadcast",
            with(&ARP_REQUEST, |f| f[IP + 8..IP + 14].fill(0xff)),
            MartianSource,
        ),
        (
            "ipv4 source broadcast",
            with_ipv4(&ICMP_ECHO_REQUEST, |ip| {
                ip.set_src_addr(Ipv4Addr::BROADCAST)
            }),
            MartianSource,
        ),
        (
            "ipv4 source loopback",
            with_ipv4(&TCP_SYN, |ip| ip.set_src_addr(Ipv4Addr::LOCALHOST)),
            MartianSource,
        ),
        (
            "ipv6 ethertype",
            with(&ICMP_ECHO_REQUEST, |f| {
                f[ETHERTYPE..IP].copy_from_slice(&[0x86, 0xdd])
            }),
            UnsupportedEthertype,
        ),
        (
            "vlan tag",
            with(&ICMP_ECHO_REQUEST, |f| {
                f[ETHERTYPE..IP].copy_from_slice(&[0x81, 0x00])
            }),
            UnsupportedEthertype,
        ),
        (
            "arp header only",
            ARP_REQUEST[..IP + 8].to_vec(),
            ArpMalformed,
        ),
        (
            "arp short of target ip",
            ARP_REQUEST[..41].to_vec(),
            ArpMalformed,
        ),
        (
            "arp for ipv6",
            with(&ARP_REQUEST, |f| {
                f[IP + 2..IP + 4].copy_from_slice(&[0x86, 0xdd])
            }),
            ArpUnsupported,
        ),
        (
            "arp hardware length 8, padded",
            with(&ARP_REQUEST, |f| {
                f.resize(60, 0);
                f[IP + 4] = 8;
            }),
            ArpUnsupported,
        ),
        (
            "arp not for us",
            with(&ARP_REQUEST, |f| f[ARP_TPA + 3] = 99),
            ArpNotForUs,
        ),
        (
            "ethernet header only",
            ICMP_ECHO_REQUEST[..IP].to_vec(),
            Ipv4Truncated,
        ),
        (
            "19-byte ipv4 header",
            ICMP_ECHO_REQUEST[..IP + 19].to_vec(),
            Ipv4Truncated,
        ),
        (
            "ihl 3",
            with(&ICMP_ECHO_REQUEST, |f| f[IP] = 0x43),
            Ipv4BadHeader,
        ),
        (
            "ihl 15 beyond packet",
            with(&UDP_PADDED, |f| f[IP] = 0x4f),
            Ipv4BadHeader,
        ),
        (
            "version 6",
            with(&ICMP_ECHO_REQUEST, |f| f[IP] = 0x65),
            Ipv4BadHeader,
        ),
        (
            "total length beyond frame",
            with(&ICMP_ECHO_REQUEST, |f| {
                f[IP + 2..IP + 4].copy_from_slice(&1500u16.to_be_bytes())
            }),
            Ipv4BadHeader,
        ),
        (
            "total length below header",
            with(&ICMP_ECHO_REQUEST, |f| {
                f[IP + 2..IP + 4].copy_from_slice(&16u16.to_be_bytes())
            }),
            Ipv4BadHeader,
        ),
        (
            "bad header checksum",
            with(&ICMP_ECHO_REQUEST, |f| f[IP + 10] ^= 0x01),
            Ipv4BadChecksum,
        ),
        (
            "ipv4 not for us",
            with_ipv4(&ICMP_ECHO_REQUEST, |ip| {
                ip.set_dst_addr(Ipv4Addr::new(192, 0, 2, 99))
            }),
            Ipv4NotForUs,
        ),
        (
            "ipv4 broadcast",
            with_ipv4(&with(&UDP_PADDED, |f| f[..6].fill(0xff)), |ip| {
                ip.set_dst_addr(Ipv4Addr::BROADCAST)
            }),
            Ipv4NotForUs,
        ),
        (
            "first fragment",
            with_ipv4(&ICMP_ECHO_REQUEST, |ip| ip.set_more_frags(true)),
            Ipv4Fragment,
        ),
        (
            "later fragment",
            with_ipv4(&TCP_SYN, |ip| ip.set_frag_offset(1480)),
            Ipv4Fragment,
        ),
        (
            "icmp 4 bytes",
            with_ipv4(&ICMP_ECHO_REQUEST, |ip| ip.set_total_len(24)),
            IcmpMalformed,
        ),
        (
            "icmp bad checksum",
            with(&ICMP_ECHO_REQUEST, |f| f[L4 + 20] ^= 0x01),
            IcmpBadChecksum,
        ),
        (
            "icmp echo reply",
            with(&ICMP_ECHO_REQUEST, |f| f[L4] = 0),
            IcmpUnsupported,
        ),
        (
            "icmp code 1",
            with(&ICMP_ECHO_REQUEST, |f| f[L4 + 1] = 1),
            IcmpUnsupported,
        ),
        (
            "tcp data offset 15 beyond packet",
            with(&TCP_SYN, |f| f[L4 + 12] = 0xf0),
            TcpMalformed,
        ),
        (
            "tcp data offset 2",
            with(&TCP_SYN, |f| f[L4 + 12] = 0x20),
            TcpMalformed,
        ),
        (
            "tcp 19 bytes",
            with_ipv4(&TCP_SYN, |ip| ip.set_total_len(39)),
            TcpMalformed,
        ),
        (
            "udp 4 bytes",
            with_ipv4(&UDP_PADDED, |ip| ip.set_total_len(24)),
            UdpMalformed,
        ),
        (
            "udp length beyond payload",
            with(&UDP_PADDED, |f| {
                f[L4 + 4..L4 + 6].copy_from_slice(&13u16.to_be_bytes())
            }),
            UdpMalformed,
        ),
        (
            "udp length below header",
            with(&UDP_PADDED, |f| {
                f[L4 + 4..L4 + 6].copy_from_slice(&7u16.to_be_bytes())
            }),
            UdpMalformed,
        ),
        ("tcp syn", TCP_SYN.to_vec(), NoService),
        ("udp", UDP_PADDED.to_vec(), NoService),
        (
            "gre",
            with_ipv4(&TCP_SYN, |ip| {
                ip.set_next_header(smoltcp::wire::IpProtocol::Unknown(47))
            }),
            UnsupportedProtocol,
        ),
    ];

    for (name, frame, reason) in &cases {
        let (verdict, after) = respond(frame);
        assert_eq!(verdict, Verdict::Drop(*reason), "{name}");
        assert_eq!(
            &after, frame,
            "{name}: a dropped frame must be left as it was"
        );
        if *reason != NoService {
            assert_eq!(classify(frame, &LOCAL), Err(*reason), "{name}");
        }
    }
    for reason in DropReason::ALL {
        assert!(
            cases.iter().any(|(_, _, r)| *r == reason),
            "no case for {}",
            reason.name()
        );
    }
}

fn valid_frames() -> [Vec<u8>; 6] {
    [
        ARP_REQUEST.to_vec(),
        with(&ARP_REQUEST, |f| f.resize(60, 0)),
        ICMP_ECHO_REQUEST.to_vec(),
        ICMP_ECHO_REQUEST_OPTS.to_vec(),
        TCP_SYN.to_vec(),
        UDP_PADDED.to_vec(),
    ]
}

#[test]
fn every_truncation_is_handled() {
    for frame in valid_frames() {
        for len in 0..=frame.len() {
            assert_sound(&frame[..len]);
        }
    }
}

#[test]
fn every_single_byte_corruption_is_handled() {
    for frame in valid_frames() {
        for i in 0..frame.len() {
            for flip in 1..=u8::MAX {
                assert_sound(&with(&frame, |f| f[i] ^= flip));
            }
        }
    }
}

/// Random frames, steered towards our MAC, ARP/IPv4, unfragmented IPv4 to our
/// address with a valid checksum, so that most get past the outer layers.
#[test]
fn random_frames_are_handled() {
    // xorshift64: deterministic, so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut drops = [0u32; DropReason::COUNT];
    let mut replies = 0;
    for _ in 0..200_000 {
        let len = next() % 128;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let steer = next();
        if frame.len() >= IP {
            if steer & 0b11 != 0 {
                frame[..6].copy_from_slice(&OUR_MAC.0);
            }
            frame[6] &= 0xfe;
            let ethertype = if steer & 0b100 != 0 {
                [0x08, 0x00]
            } else {
                [0x08, 0x06]
            };
            frame[ETHERTYPE..IP].copy_from_slice(&ethertype);
        }
        if frame.len() >= L4 && frame[ETHERTYPE..IP] == [0x08, 0x00] {
            frame[IP] = 0x45;
            let total_len = (frame.len() - IP) as u16;
            frame[IP + 2..IP + 4].copy_from_slice(&total_len.to_be_bytes());
            if steer & 0b1000 != 0 {
                frame[IP + 6..IP + 8].fill(0);
            }
            frame[IP + 9] = [1, 6, 17, 47][(steer >> 4) as usize % 4];
            frame[IP + 16..L4].copy_from_slice(&OUR_IP.octets());
            if steer & 0b100_0000 != 0 {
                Ipv4Packet::new_unchecked(&mut frame[IP..]).fill_checksum();
            }
            if frame[IP + 9] == 1 && frame.len() >= L4 + 4 && steer & 0b1000_0000 != 0 {
                frame[L4..L4 + 2].copy_from_slice(&[8, 0]);
                if steer & 0b1_0000_0000 != 0 {
                    Icmpv4Packet::new_unchecked(&mut frame[L4..]).fill_checksum();
                }
            }
        }
        match classify(&frame, &LOCAL) {
            Ok(Classified::IcmpEchoRequest(_)) => replies += 1,
            Ok(_) => {}
            Err(reason) => drops[reason.index()] += 1,
        }
        assert_sound(&frame);
    }
    // The steering must have reached every layer, or this tests little.
    assert!(replies > 0, "never answered a ping");
    for deep in [
        DropReason::ArpUnsupported,
        DropReason::Ipv4Fragment,
        DropReason::IcmpBadChecksum,
        DropReason::TcpMalformed,
        DropReason::UdpMalformed,
        DropReason::UnsupportedProtocol,
    ] {
        assert!(drops[deep.index()] > 0, "never reached {}", deep.name());
    }
}

#[test]
fn arp_reply_is_classified_for_the_stack_and_not_answered() {
    let reply = with(&ARP_REQUEST, |f| f[ARP_OPER + 1] = 2);
    let Ok(Classified::ArpReply { sender_mac, sender_ip }) = classify(&reply, &LOCAL) else {
        panic!("an ARP reply to us must classify as ArpReply");
    };
    // Sender hardware and protocol addresses follow the 8-byte ARP header.
    assert_eq!(sender_mac.0, reply[IP + 8..IP + 14]);
    assert_eq!(sender_ip.octets(), reply[IP + 14..IP + 18]);
    let (verdict, after) = respond(&reply);
    assert_eq!(verdict, Verdict::Drop(DropReason::ArpUnsupported));
    assert_eq!(after, reply);
    let not_ours = with(&reply, |f| f[ARP_TPA + 3] = 99);
    assert_eq!(classify(&not_ours, &LOCAL), Err(DropReason::ArpNotForUs));
}

#[test]
fn emitted_arp_reply_parses_and_short_buffers_are_refused() {
    let mac = |b| EthernetAddress([2, 0, 0, 0, 0, b]);
    let (from, to) = ((mac(1), Ipv4Addr::new(198, 18, 0, 10)), (mac(2), Ipv4Addr::new(198, 18, 0, 2)));
    let mut frame = [0u8; 64];
    assert_eq!(emit_arp_reply(&mut frame, from, to), Some(ARP_FRAME_LEN));
    let local = Local { mac: to.0, addrs: &[to.1] };
    assert_eq!(
        classify(&frame[..ARP_FRAME_LEN], &local),
        Ok(Classified::ArpReply { sender_mac: from.0, sender_ip: from.1 })
    );
    assert_eq!(emit_arp_reply(&mut frame[..ARP_FRAME_LEN - 1], from, to), None);
}
