#!/usr/bin/env python3
"""Writes a pcap of TCP packets for `scripts/bench.sh forward`: one packet per
flow, FLOWS distinct flows from clients in 198.19.0.0/16 (inside the benchmarking
range 198.18.0.0/15, away from the topology's 198.18.0.0/24 and the VIPs'
198.18.1.0/24) to VIP:PORT. net_pcap (infinite_rx=1) replays the file in a loop,
so every pass after the first hits established conntrack entries.

  fwd_pcapgen.py --out FILE --flows N --frame-len 60|508|... --dst-mac MAC
                 [--src-mac MAC] [--vip 198.18.1.2] [--port 80]

--frame-len is the captured frame without the 4-byte FCS: 60 is a 64-byte frame
on the wire (a pure ACK, 6 bytes of Ethernet padding), 508 a 512-byte frame
(PSH+ACK with 454 bytes of payload). Flow i: client 198.19.(i % 65536) as a
16-bit host number, source port 10000 + i // 65536. IPv4 and TCP checksums are
correct (incrementally computed). Standard library only (no scapy needed).
"""
import argparse
import ipaddress
import struct
import sys


def csum_add(*vals):
    s = sum(vals)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def sum16(b):
    if len(b) % 2:
        b += b"\0"
    return csum_add(*struct.unpack("!%dH" % (len(b) // 2), b))


def mac(s):
    b = bytes(int(x, 16) for x in s.split(":"))
    if len(b) != 6:
        raise argparse.ArgumentTypeError(f"{s!r} is not a MAC address")
    return b


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--flows", type=int, required=True)
    p.add_argument("--frame-len", type=int, default=60)
    p.add_argument("--dst-mac", type=mac, required=True)
    p.add_argument("--src-mac", type=mac, default=mac("02:00:00:00:00:10"))
    p.add_argument("--vip", default="198.18.1.2")
    p.add_argument("--port", type=int, default=80)
    a = p.parse_args()
    if not 1 <= a.flows <= 65536 * 55535:
        sys.exit("--flows: 1 .. 65536 x 55535")
    if not 60 <= a.frame_len <= 1514:
        sys.exit("--frame-len: 60 .. 1514")

    eth = a.dst_mac + a.src_mac + b"\x08\x00"
    payload_len = max(0, a.frame_len - 54)
    # A 60-byte frame carries a 40-byte IP packet and 6 bytes of padding.
    payload = bytes((i * 7 + 1) & 0xFF for i in range(payload_len)) if a.frame_len > 60 else b""
    pad = b"\0" * (a.frame_len - 54 - len(payload))
    ip_total = 40 + len(payload)
    flags = 0x18 if payload else 0x10  # PSH+ACK with data, else ACK
    vip = int(ipaddress.IPv4Address(a.vip))
    client_base = int(ipaddress.IPv4Address("198.19.0.0"))

    # Fixed parts' one's-complement sums; per flow only the source address,
    # the source port (and so the checksums) change.
    ip_fixed = sum16(struct.pack("!BBHHHBBH", 0x45, 0, ip_total, 0, 0x4000, 64, 6, 0) + struct.pack("!I", vip))
    tcp_fixed = csum_add(
        sum16(struct.pack("!I", vip)),  # pseudo-header destination
        6,
        20 + len(payload),  # pseudo-header protocol and TCP length
        sum16(struct.pack("!HIIBBHHH", a.port, 1, 1, 0x50, flags, 65535, 0, 0)),
        sum16(payload),
    )

    # Little-endian pcap, microsecond timestamps, DLT_EN10MB.
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    rec_hdr = struct.Struct("<IIII")
    ip_hdr = struct.Struct("!BBHHHBBHII")
    tcp_hdr = struct.Struct("!HHIIBBHHH")
    with open(a.out, "wb") as f:
        for i in range(a.flows):
            src = client_base + (i & 0xFFFF)
            sport = 10000 + (i >> 16)
            s_src = (src >> 16) + (src & 0xFFFF)
            ip_c = (~csum_add(ip_fixed, s_src)) & 0xFFFF
            tcp_c = (~csum_add(tcp_fixed, s_src, sport)) & 0xFFFF
            out += rec_hdr.pack(1, i % 1000000, a.frame_len, a.frame_len)
            out += eth
            out += ip_hdr.pack(0x45, 0, ip_total, i & 0xFFFF, 0x4000, 64, 6, 0, src, vip)
            # The IP id varies with i: fold it into the header checksum too.
            ip_c = (~csum_add((~ip_c) & 0xFFFF, i & 0xFFFF)) & 0xFFFF
            out[-10:-8] = struct.pack("!H", ip_c)
            out += tcp_hdr.pack(sport, a.port, 1, 1, 0x50, flags, 65535, tcp_c, 0)
            out += payload
            out += pad
            if len(out) > 1 << 22:
                f.write(out)
                out.clear()
        f.write(out)


if __name__ == "__main__":
    main()
