#!/usr/bin/env python3
"""Writes a pcap of TCP SYNs for `scripts/bench.sh synflood`: N distinct SYNs
to VIP:PORT from random sources in 198.19.0.0/16 (inside the benchmarking range
198.18.0.0/15, away from the topology's 198.18.0.0/24 and the VIPs'
198.18.1.0/24), random source ports (1024-65535), ISNs, IP ids and TCP
timestamps. net_pcap (infinite_rx=1) replays the file in a loop: a spoofed SYN
flood with no kernel in the path.

  syn_pcapgen.py --out FILE --syns N --dst-mac MAC
                 [--src-mac MAC] [--vip 198.18.1.1] [--port 80] [--seed S]

Each SYN is shaped like Linux's: 74-byte frame (78 on the wire with the FCS),
DF, TTL 64, window 64240, options MSS 1460, SACK permitted, timestamps
(TSval random, TSecr 0), NOP, window scale 7. Every (source address, source
port) pair is distinct; IPv4 and TCP checksums are correct. The same --seed
writes the same file. Standard library only (no scapy needed).
"""
import argparse
import ipaddress
import random
import struct
import sys

from fwd_pcapgen import csum_add, mac, sum16


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--syns", type=int, required=True)
    p.add_argument("--dst-mac", type=mac, required=True)
    p.add_argument("--src-mac", type=mac, default=mac("02:00:00:00:00:10"))
    p.add_argument("--vip", default="198.18.1.1")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if not 1 <= a.syns <= 16 << 20:
        sys.exit("--syns: 1 .. 16777216")

    rng = random.Random(a.seed)
    eth = a.dst_mac + a.src_mac + b"\x08\x00"
    # MSS 1460, SACK permitted, timestamps (TSval patched per SYN), NOP, wscale 7.
    opt_head = struct.pack("!BBHBB", 2, 4, 1460, 4, 2)
    opt_tail = struct.pack("!BBBB", 1, 3, 3, 7)
    tcp_len = 20 + len(opt_head) + 10 + len(opt_tail)
    assert tcp_len == 40
    ip_total = 20 + tcp_len
    frame_len = 14 + ip_total
    vip = int(ipaddress.IPv4Address(a.vip))
    client_base = int(ipaddress.IPv4Address("198.19.0.0"))

    # One's-complement sums of the fixed parts; per SYN the source address,
    # source port, ISN, IP id and TSval (and so the checksums) change.
    ip_fixed = sum16(struct.pack("!BBHHHBBH", 0x45, 0, ip_total, 0, 0x4000, 64, 6, 0) + struct.pack("!I", vip))
    tcp_fixed = csum_add(
        sum16(struct.pack("!I", vip)),  # pseudo-header destination
        6,
        tcp_len,  # pseudo-header protocol and TCP length
        sum16(struct.pack("!HIIBBHHH", a.port, 0, 0, tcp_len // 4 << 4, 0x02, 64240, 0, 0)),
        sum16(opt_head + struct.pack("!BBII", 8, 10, 0, 0) + opt_tail),
    )

    # Little-endian pcap, microsecond timestamps, DLT_EN10MB.
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    rec_hdr = struct.Struct("<IIII")
    ip_hdr = struct.Struct("!BBHHHBBHII")
    tcp_hdr = struct.Struct("!HHIIBBHHH")
    ts_opt = struct.Struct("!BBII")
    seen = set()
    with open(a.out, "wb") as f:
        i = 0
        while i < a.syns:
            host = rng.getrandbits(16)
            sport = rng.randint(1024, 65535)
            if (host, sport) in seen:
                continue
            seen.add((host, sport))
            src = client_base + host
            isn = rng.getrandbits(32)
            ipid = rng.getrandbits(16)
            tsval = rng.getrandbits(32)
            s_src = (src >> 16) + (src & 0xFFFF)
            ip_c = (~csum_add(ip_fixed, s_src, ipid)) & 0xFFFF
            tcp_c = (~csum_add(tcp_fixed, s_src, sport, isn >> 16, isn & 0xFFFF, tsval >> 16, tsval & 0xFFFF)) & 0xFFFF
            out += rec_hdr.pack(i // 1000000, i % 1000000, frame_len, frame_len)
            out += eth
            out += ip_hdr.pack(0x45, 0, ip_total, ipid, 0x4000, 64, 6, ip_c, src, vip)
            out += tcp_hdr.pack(sport, a.port, isn, 0, tcp_len // 4 << 4, 0x02, 64240, tcp_c, 0)
            out += opt_head + ts_opt.pack(8, 10, tsval, 0) + opt_tail
            i += 1
            if len(out) > 1 << 22:
                f.write(out)
                out.clear()
        f.write(out)


if __name__ == "__main__":
    main()
