#!/usr/bin/python3
"""Send a bounded flood of malformed frames to the dataplane (run inside P-cli).

    malformed.py DST_MAC [--count N] [--iface eth0] [--dst-ip 198.18.0.2]
                         [--src-ip 198.18.0.10] [--rate PPS] [--kinds a,b,...]

Frames are built by hand (scapy only for the pieces that are easy to get right:
checksums of the well-formed parts) and sent through a plain AF_PACKET raw socket, so
the kernel never fixes a header. Sending is paced (--rate, frames per second) so that
neither the veth backlog nor the tap queue drops frames on the way: the dataplane must
see every frame that was sent.

Kinds and the drop counter each one is expected to raise in the dataplane (the
reasons as packet/src/drop.rs defines them: ipv4_truncated = shorter than a minimal
IPv4 header; ipv4_bad_header = version not 4, IHL below 5 or past the packet, total
length past the frame or below the header length):

  eth_truncated     frame shorter than 14 bytes                     eth_truncated
                    (the kernel refuses to send these on an Ethernet device:
                    AF_PACKET send() fails with EINVAL; they can never cross
                    veth+bridge+tap. Then the script sends instead:)
  eth_header_only   14-byte frame, IPv4 ethertype, no IP header     ipv4_truncated
  ipv4_ihl_short    IPv4 IHL=3 (12-byte header)                     ipv4_bad_header
  ipv4_ihl_long     IPv4 IHL=15 (60 bytes) > total length 28;        ipv4_bad_header
                    the frame does hold 60+ bytes of L3, header
                    checksum valid over the 60 bytes
  ipv4_len_long     IPv4 total length 1000, frame carries 28 bytes  ipv4_bad_header
  ipv4_bad_csum     IPv4/UDP, everything valid but header checksum  ipv4_bad_checksum
  tcp_doff_long     TCP data offset 15 (60 bytes), L4 is 20 bytes   tcp_malformed
  udp_len_long      UDP length 200, L4 is 18 bytes                  udp_malformed

At the end prints one line per kind, then one line of JSON:
  {"sent": {kind: n}, "expect": {drop_counter: n}, "unsendable": {kind: "reason"}}
Exit code 0 when every kind that can be sent was sent.
"""

import argparse
import errno
import json
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800


def mac_bytes(mac):
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError("bad MAC: %r" % mac)
    return bytes(int(p, 16) for p in parts)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_header(src, dst, proto, total_len, ihl=5, options=b"", good_csum=True, ident=0x1234):
    """IPv4 header of ihl*4 bytes (options padded/truncated to fit)."""
    ver_ihl = (4 << 4) | (ihl & 0xF)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        ver_ihl, 0, total_len & 0xFFFF, ident, 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    want = max(ihl * 4, 20)
    hdr = hdr + (options + b"\x01" * want)[: want - 20]  # NOP options
    c = csum(hdr[: ihl * 4] if ihl >= 5 else hdr)
    if not good_csum:
        c = (c ^ 0x5A5A) or 0x1111
    hdr = hdr[:10] + struct.pack("!H", c) + hdr[12:]
    return hdr


def l4_csum(src, dst, proto, seg):
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return csum(pseudo + seg)


def build(kind, eth, src, dst):
    """Return the frame bytes for one kind."""
    if kind == "eth_truncated":
        return eth[:6] + eth[6:12] + b"\x08"  # 13 bytes: half an ethertype
    if kind == "eth_header_only":
        return eth + struct.pack("!H", ETH_P_IP)  # exactly 14 bytes
    ether = eth + struct.pack("!H", ETH_P_IP)
    if kind == "ipv4_ihl_short":
        # 12-byte "header" claimed; total length says 28, frame carries 28 bytes of L3.
        ip = ipv4_header(src, dst, 17, 28, ihl=3)
        return ether + ip + b"\0" * 8
    if kind == "ipv4_ihl_long":
        # Header claims 60 bytes but total length is 28. 64 bytes of L3 present, so the
        # frame is not short: only the header/total-length relation is wrong.
        ip = ipv4_header(src, dst, 17, 28, ihl=15)
        return ether + ip + b"\0" * 4
    if kind == "ipv4_len_long":
        udp = struct.pack("!HHHH", 40000, 9, 8, 0)
        ip = ipv4_header(src, dst, 17, 1000)
        return ether + ip + udp
    if kind == "ipv4_bad_csum":
        payload = b"fulcrum"
        udp = struct.pack("!HHHH", 40001, 9, 8 + len(payload), 0) + payload
        ip = ipv4_header(src, dst, 17, 20 + len(udp), good_csum=False)
        return ether + ip + udp
    if kind == "tcp_doff_long":
        tcp = struct.pack("!HHIIBBHHH", 40002, 80, 1, 0, 15 << 4, 0x02, 65535, 0, 0)
        c = l4_csum(src, dst, 6, tcp)
        tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
        ip = ipv4_header(src, dst, 6, 20 + len(tcp))
        return ether + ip + tcp
    if kind == "udp_len_long":
        payload = b"0123456789"
        udp = struct.pack("!HHHH", 40003, 53, 200, 0) + payload
        ip = ipv4_header(src, dst, 17, 20 + len(udp))
        return ether + ip + udp
    raise ValueError(kind)


EXPECT = {
    "eth_truncated": "eth_truncated",
    "eth_header_only": "ipv4_truncated",
    "ipv4_ihl_short": "ipv4_bad_header",
    "ipv4_ihl_long": "ipv4_bad_header",
    "ipv4_len_long": "ipv4_bad_header",
    "ipv4_bad_csum": "ipv4_bad_checksum",
    "tcp_doff_long": "tcp_malformed",
    "udp_len_long": "udp_malformed",
}
DEFAULT_KINDS = [
    "eth_truncated", "ipv4_ihl_short", "ipv4_ihl_long", "ipv4_len_long",
    "ipv4_bad_csum", "tcp_doff_long", "udp_len_long",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dst_mac")
    ap.add_argument("--count", type=int, default=2000, help="frames of each kind (max 100000)")
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--dst-ip", default="198.18.0.2")
    ap.add_argument("--src-ip", default="198.18.0.10")
    ap.add_argument("--rate", type=float, default=20000.0, help="frames per second (max 200000)")
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS))
    ap.add_argument("--timeout", type=float, default=60.0, help="hard time limit, seconds")
    a = ap.parse_args()

    if not 0 < a.count <= 100000:
        ap.error("--count must be in 1..100000")
    if not 0 < a.rate <= 200000:
        ap.error("--rate must be in (0, 200000]")
    for ip in (a.dst_ip, a.src_ip):
        o = socket.inet_aton(ip)
        if not (o[0] == 198 and o[1] in (18, 19)):
            ap.error("addresses must be in 198.18.0.0/15: %s" % ip)
    kinds = [k for k in a.kinds.split(",") if k]
    for k in kinds:
        if k not in EXPECT:
            ap.error("unknown kind %r (known: %s)" % (k, ", ".join(EXPECT)))

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((a.iface, 0))
    with open("/sys/class/net/%s/address" % a.iface) as f:
        src_mac = mac_bytes(f.read().strip())
    eth = mac_bytes(a.dst_mac) + src_mac

    sent = {}
    unsendable = {}
    deadline = time.monotonic() + a.timeout
    gap = 1.0 / a.rate
    batch = max(1, min(32, int(a.rate / 1000)))  # frames between pacing checks

    queue = list(kinds)
    while queue:
        kind = queue.pop(0)
        frame = build(kind, eth, a.src_ip, a.dst_ip)
        n = 0
        start = time.monotonic()
        try:
            while n < a.count:
                if time.monotonic() > deadline:
                    print("malformed: time limit reached", file=sys.stderr)
                    break
                try:
                    s.send(frame)
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # queue full: back off, resend
                        time.sleep(0.001)
                        continue
                    raise
                n += 1
                if n % batch == 0:
                    ahead = start + n * gap - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError as e:
            if n == 0 and e.errno == errno.EINVAL and kind == "eth_truncated":
                unsendable[kind] = "send() of a %d-byte frame failed: %s" % (len(frame), e.strerror)
                print("malformed: %s: %s; sending eth_header_only (14 bytes) instead"
                      % (kind, unsendable[kind]))
                queue.insert(0, "eth_header_only")
                continue
            raise
        sent[kind] = n
        print("malformed: sent %6d x %-16s (%3d bytes) -> expect drop %s"
              % (n, kind, len(frame), EXPECT[kind]))
        sys.stdout.flush()

    expect = {}
    for kind, n in sent.items():
        expect[EXPECT[kind]] = expect.get(EXPECT[kind], 0) + n
    print(json.dumps({"sent": sent, "expect": expect, "unsendable": unsendable}, sort_keys=True))
    return 0 if sum(sent.values()) == a.count * len(sent) else 1


if __name__ == "__main__":
    sys.exit(main())
