#!/usr/bin/env bash
# Instructions per packet of one whole forwarding lcore, on `scripts/bench.sh forward`'s feed,
# counted by valgrind's callgrind (repeatable on a shared VM with no PMU, unlike cycles).
#
#   flock /tmp/fulcrum-dataplane-tests.lock scripts/fwd_callgrind.sh dsr|fullnat|testpmd FLOWS
#       [--bin PATH] [--warmup S] [--window S] [--keep DIR]
#
# dsr:      fulcrum-dataplane (--bin, default $FULCRUM_BIN_DIR or target/release) with bench.sh
#           forward's configuration: one lcore, one net_pcap port (rx_pcap, infinite_rx=1; TX
#           dropped by the PMD), DSR VIP 198.18.1.2:80, new_flow_rate = 0, its conntrack size
#           (2 x max(FLOWS, 1M) entries: the table's load changes the instructions), and its pcap
#           (scripts/fwd_pcapgen.py: one 64-byte ACK per flow).
# fullnat:  the same VIP in FullNAT mode; the pcap has, per flow, a SYN then an ACK, then 14
#           more passes of ACKs (a FullNAT flow needs its SYN; after the first pass its SYN is
#           a packet of an established flow, 1 in 16 of the feed).
# testpmd:  dpdk-testpmd --forward-mode=macswap on the DSR pcap, the reference.
# The program runs under callgrind without hugepages (valgrind maps no hugetlbfs), --no-pci,
# a unique --file-prefix. Fulcrum collects only inside Worker::run (the lcore loop; EAL,
# control and stats threads excluded); testpmd (stripped) has its threads apart and the
# busiest one is taken. After --warmup seconds (default 15: the first pass creates the
# flows, and DSR's mid-stream flows are confirmed by their next packet) the counters are
# zeroed, and --window seconds later (default 20) dumped. Packets = 32 x the calls of the
# PMD's receive burst (net_pcap's infinite RX always fills the burst).
# Printed: instructions per packet of the whole lcore and split: PMD receive
# (rte_eth_rx_burst), PMD transmit (rte_eth_tx_burst), Forwarder::process_burst,
# Forwarder::sweep + poll_arp, everything else (the worker loop, counters, time, stats).
# The sweep is time-driven (1024 table slots a millisecond): under valgrind the lcore is
# ~50x slower, so its share per packet is that much larger than natively; the line
# without it is the one to compare. Valgrind's slowness has one more effect: a DSR pass
# over 1M flows must stay under the probation timeout (10 s), or mid-stream flows expire
# before they are confirmed; the script prints the flows created in the window (must be 0).
# Every wait is bounded; the process and /var/run/dpdk/<prefix> are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'fwd_callgrind: error: %s\n' "$*" >&2; exit 1; }
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
MODE=$1 FLOWS=$2
shift 2
BIN=${FULCRUM_BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release}/fulcrum-dataplane
WARM=15 WINDOW=20 KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --warmup) WARM=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done
case "$MODE" in dsr|fullnat|testpmd) ;; *) die "mode: dsr, fullnat or testpmd" ;; esac
[[ "$FLOWS" =~ ^[0-9]+$ ]] && [ "$FLOWS" -ge 1 ] && [ "$FLOWS" -le 8388608 ] || die "flows: 1..8388608"
for t in valgrind callgrind_control python3 jq; do command -v "$t" >/dev/null || die "$t not found"; done
[ "$MODE" = testpmd ] || [ -x "$BIN" ] || die "$BIN not found (--bin)"

WORK=$(mktemp -d /tmp/fulcrum-fwd-callgrind.XXXXXX)
PREFIX="fwdcg-$$"
PID=""
cleanup() {
    set +e
    [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "/var/run/dpdk/$PREFIX"
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$WORK"/* "$KEEP"/ 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MAC=02:70:63:61:70:00
PCAP=$WORK/feed.pcap
PACKETS=$FLOWS
if [ "$MODE" = fullnat ]; then
    PACKETS=$((FLOWS * 16))
    python3 - "$PCAP" "$FLOWS" <<'PY'
import struct, sys
out, flows = sys.argv[1], int(sys.argv[2])
dst, src, vip = bytes.fromhex("027063617000"), bytes.fromhex("020000000010"), bytes([198, 18, 1, 2])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def frame(i, flags):
    sip = bytes([198, 19, (i >> 8) & 0xFF, i & 0xFF])
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0x4000, 64, 6, 0, sip, vip))
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    tcp = bytearray(struct.pack("!HHIIBBHHH", 10000 + (i >> 16), 80, 1, 1 if flags & 0x10 else 0, 0x50, flags, 65535, 0, 0))
    tcp[16:18] = struct.pack("!H", csum(sip + vip + struct.pack("!BBH", 0, 6, 20) + bytes(tcp)))
    return dst + src + b"\x08\x00" + bytes(ip) + bytes(tcp) + bytes(6)
rec = struct.Struct("<IIII")
with open(out, "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(flows):
        for fl in (0x02, 0x10):
            f.write(rec.pack(1, 0, 60, 60) + frame(i, fl))
    for _ in range(14):
        for i in range(flows):
            f.write(rec.pack(1, 0, 60, 60) + frame(i, 0x10))
PY
else
    python3 scripts/fwd_pcapgen.py --out "$PCAP" --flows "$FLOWS" --frame-len 60 --dst-mac "$MAC" --vip 198.18.1.2 --port 80
fi
MBUFS=$((PACKETS + 32767))
# bench.sh forward's table for every case: twice its large case (1M flows by default), so a
# case's load, and the signature scan's length, are the bench's.
CONNTRACK=1024
while [ "$CONNTRACK" -lt $((2 * FLOWS)) ] || [ "$CONNTRACK" -lt $((2 * 1048576)) ]; do CONNTRACK=$((CONNTRACK * 2)); done
MEM=$((MBUFS * 4 / 1024 + 768))

ready() { # ready PATTERN LOG: waits (bounded) for PATTERN in LOG while the program lives
    local i
    for i in $(seq 6000); do
        grep -q "$1" "$2" && return 0
        kill -0 "$PID" 2>/dev/null || { tail -n 20 "$2" >&2; die "the program exited"; }
        sleep 0.1
    done
    die "not ready in 600 s"
}

if [ "$MODE" = testpmd ]; then
    command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found"
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$WORK/cg.out" \
        dpdk-testpmd --no-pci -l 0,1 --main-lcore 0 --file-prefix "$PREFIX" --no-huge -m "$MEM" \
        --vdev="net_pcap0,rx_pcap=$PCAP,infinite_rx=1" -- --forward-mode=macswap --port-topology=loop \
        --nb-cores=1 --rxq=1 --txq=1 --total-num-mbufs="$MBUFS" --stats-period 1 </dev/null >"$WORK/run.log" 2>&1 &
    PID=$!
    ready 'Rx-pps' "$WORK/run.log"
else
    fwd_mode=$MODE
    cat >"$WORK/fulcrum.toml" <<CONF
[dataplane]
address = "198.18.0.2/24"
lcores = "1"
mbufs = $MBUFS
file_prefix = "$PREFIX"
software = { vdev = "net_pcap0,rx_pcap=$PCAP,infinite_rx=1", hugepages = "off", no_huge_memory_mb = $MEM }

[forward]
conntrack_entries = $CONNTRACK
new_flow_rate = 0
$([ "$MODE" = fullnat ] && echo 'snat_addresses = ["198.18.0.3"]')

[[vip]]
address = "198.18.1.2"
port = 80
mode = "$fwd_mode"
backends = [
  { address = "198.18.0.21", port = 80, mac = "02:00:00:00:00:21" },
  { address = "198.18.0.22", port = 80, mac = "02:00:00:00:00:22" },
  { address = "198.18.0.23", port = 80, mac = "02:00:00:00:00:23" },
]
CONF
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*Worker::run*' \
        --callgrind-out-file="$WORK/cg.out" "$BIN" --config "$WORK/fulcrum.toml" --stats-file "$WORK/stats.json" >"$WORK/run.log" 2>&1 &
    PID=$!
    ready ' ready: ' "$WORK/run.log"
fi
sleep "$WARM"
new0=$(jq -r '.forward.new_flows // 0' "$WORK/stats.json" 2>/dev/null || echo 0)
callgrind_control -z "$PID" >/dev/null
sleep "$WINDOW"
callgrind_control -d "$PID" >/dev/null
new1=$(jq -r '.forward.new_flows // 0' "$WORK/stats.json" 2>/dev/null || echo 0)
kill -INT "$PID" 2>/dev/null || true
for _ in $(seq 600); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$PID" 2>/dev/null || true
wait "$PID" 2>/dev/null || true
PID=""
[ "$MODE" = testpmd ] || echo "flows created in (about) the window: $((new1 - new0))"

# The window's dump (cg.out.1, per thread cg.out.1-NN; cg.out* without .1 is the exit's):
# the collecting thread's file (testpmd: the busiest of its threads).
CG=$(for f in "$WORK"/cg.out.1*; do
    [ -s "$f" ] && grep -q '^fn=' "$f" && echo "$(awk '/^(summary|totals):/ { print $2; exit }' "$f") $f"
done | sort -n | tail -n 1 | cut -d' ' -f2)
[ -n "$CG" ] || die "no callgrind dump"
python3 - "$CG" "$MODE $FLOWS flows" <<'PY'
import collections, re, sys
names = {}
def name(s):
    m = re.match(r"\((\d+)\)\s*(.*)", s)
    if not m:
        return s
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names[m.group(1)]
self_cost, call_cost, calls = collections.Counter(), collections.Counter(), collections.Counter()
cur = cfn = None
pending = None
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if line.startswith("fn="):
        cur = name(line[3:])
    elif line.startswith("cfn="):
        cfn = name(line[4:])
    elif line.startswith("calls="):
        pending = int(line[6:].split()[0])
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) < 2:
            continue
        ir = int(parts[1])
        if pending is not None:
            if cfn != cur:
                call_cost[(cur, cfn)] += ir
            calls[cfn] += pending
            pending = None
        else:
            self_cost[cur] += ir
# Inclusive cost by symbol, the files of inlined code merged.
incl = collections.Counter(self_cost)
for (a, _), v in call_cost.items():
    incl[a] += v
total = sum(self_cost.values())
def by(pred):
    return [k for k in incl if pred(k)]
# testpmd is stripped and inlines rte_eth_rx/tx_burst: then the net_pcap PMD's own
# (unnamed) receive and transmit functions, by their offsets in Debian's DPDK 22.11
# librte_net_pcap.so.23.0 (eth_pcap_rx_infinite, eth_tx_drop).
rx = by(lambda k: k.startswith("rte_eth_rx_burst")) or by(lambda k: k == "0x0000000000003f70")
tx = by(lambda k: k.startswith("rte_eth_tx_burst")) or by(lambda k: k == "0x00000000000069f0")
bursts = sum(calls[k] for k in rx)
if bursts == 0:
    sys.exit("no receive bursts found in the dump")
pk = 32 * bursts
g = lambda keys: sum(incl[k] for k in keys) / pk
rxp, txp = g(rx), g(tx)
fw = g(["fulcrum_forward::Forwarder::process_burst"])
sweep = g(["fulcrum_forward::Forwarder::sweep"])
arp = g(["fulcrum_forward::Forwarder::poll_arp"])
whole = total / pk
print(f"{sys.argv[2]}: {pk:,} packets, {whole:.1f} instructions/packet in the lcore "
      f"({whole - sweep:.1f} without the time-driven sweep)")
print(f"  PMD receive {rxp:.1f}, PMD transmit {txp:.1f}, Forwarder::process_burst {fw:.1f}, "
      f"sweep {sweep:.1f} + poll_arp {arp:.1f}, everything else {whole - rxp - txp - fw - sweep - arp:.1f}")
PY
