#!/usr/bin/env bash
# Benchmarks Fulcrum against a reference, on this machine alone, in one run.
#
#   scripts/bench.sh proxy   [--duration SECONDS] [--connections N] [--prefix P] [--device D]
#                            [--mtu BYTES]  (every link and the dataplane at that MTU; 9000:
#                                            jumbo frames, af_packet only)
#   scripts/bench.sh devices [--duration SECONDS] [--connections N] [--prefix P]
#                            (proxy VIP on each software device: tap, af_packet, af_xdp,
#                             and af_packet with jumbo frames)
#   scripts/bench.sh forward   (packets/s through the forwarding path vs testpmd macswap)
#   scripts/bench.sh synflood  (SYN cookies/s on one lcore vs testpmd macswap on the same SYNs)
#   scripts/bench.sh scale     (proxy engine instructions per request and per new connection vs open connections)
#   scripts/bench.sh capacity  (new connections/s, keep-alive requests/s, Gbps per dataplane lcore;
#                               no kernel: fulcrum-loadgen over net_memif)
#
# Benchmarks print figures and ratios; they assert nothing about speed.
#
# proxy: brings up its own topology (prefix "bench", network namespaces on
# 198.18.0.0/24, torn down on exit whatever happens), three nginx backends
# (198.18.0.21-23:8080, keepalive on) and iperf3 servers (:5201) in the backend
# namespaces, then measures, with the same client tools from the client namespace:
#
#   1. Fulcrum (release binary, one lcore, --no-pci, on software device D: af_packet
#      unless --device or FULCRUM_SOFT_DEVICE says tap or af_xdp), proxy VIPs
#        198.18.1.1:80   -> nginx 8080 (Maglev, per-connection placement)
#        198.18.1.2:5201 -> iperf3 5201 (affinity "client": all of a test's streams
#                           reach the same iperf3 server)
#   2. HAProxy 2.6 (Debian), mode tcp, nbthread 1, inside the fabric namespace on the
#      bridge address the client reaches directly:
#        198.18.0.1:80   -> nginx 8080 (balance roundrobin)
#        198.18.0.1:5201 -> iperf3 5201 (balance source, same reason as above)
#
# The two run one after the other (never at once), on the same topology and backends.
# With 2 or more CPUs, each proxy gets CPU 0 (Fulcrum's lcore 0; HAProxy pinned there)
# and the client and backends are pinned to the other CPUs, so both proxies have one
# core of their own (the kernel's softirq work for the namespaces' veths and bridge
# still runs where the kernel puts it).
# Metrics: wrk requests/s with a new connection per request (Connection: close) and
# with keepalive, p50/p99 latency from wrk --latency, iperf3 throughput with 1 and 8
# parallel streams. Prints a table: metric, Fulcrum, HAProxy, Fulcrum/HAProxy.
# Then CPU per request with 100, 1 000, 9 000 and 10 000 connections open (HAProxy
# only up to what the open-files limit allows it, two descriptors a connection):
# fulcrum-keepalive-load (tests/src/bin) opens N keep-alive connections, and once
# all are open sends requests round-robin over all N, 64 in flight, so only the
# number of open connections changes between the runs. CPU is read with all N open,
# before and after: for Fulcrum its lcores' busy_ns (time in loop iterations that
# had work, from the stats file; in software mode that includes the tap's read and
# write system calls), for HAProxy its process's utime + stime (its socket system
# calls; the kernel's TCP receive work for its packets mostly runs in softirq on
# the sender's side and is not counted). Prints us/request per N and 10k/100.
# Every run is bounded (--duration, default 10 s each); every wait is bounded.
#
# devices: the same topology, backends and Fulcrum VIPs as proxy (no HAProxy), with
# the dataplane started once per software device, one after the other: tap
# (net_tap), af_packet and af_xdp (a veth pair the dataplane creates; see
# dataplane/src/softdev.rs). Each gets the same port MAC, so the peers' ARP caches
# stay right across restarts. Per device: wrk requests/s with a new connection per
# request and with keep-alive, iperf3 Gbit/s with one stream, and the lcore's busy
# time per request (busy_ns over the two wrk runs / their requests; in software mode
# it includes the device's system calls: a tap's read/write, af_packet's sendto, ...)
# and, when `perf stat -e cycles:u` works here, user-space cycles per request of the
# lcore thread. Then af_packet again with jumbo frames: every link of the topology and
# the dataplane at MTU 9000 (`topology.sh mtu`, `[dataplane] mtu`; tap and af_xdp
# cannot carry them in DPDK 22.11). Prints one table, with each run's ratio to tap.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# The benchmark asked for ($1): names it in error messages.
BENCH=${1:-}
die() { printf 'bench%s: error: %s\n' "${BENCH:+ $BENCH}" "$*" >&2; exit 1; }
say() { printf '\n=== %s\n' "$*" >&2; }

# stats_sample FILE JQ: "mtime_s <JQ's output>" from one consistent version of
# the dataplane's stats file (it is replaced by rename about once a second).
stats_sample() {
    local f=$1 filter=$2 m1 m2 body i
    for i in $(seq 100); do
        m1=$(stat -c %.9Y "$f" 2>/dev/null) || { sleep 0.05; continue; }
        body=$(jq -r "$filter" "$f" 2>/dev/null) || { sleep 0.05; continue; }
        m2=$(stat -c %.9Y "$f" 2>/dev/null) || continue
        if [ "$m1" = "$m2" ]; then
            echo "$m1 $body"
            return 0
        fi
    done
    die "could not read $f"
}

# thread_ticks PID: "tid ticks" (utime + stime, in CLK_TCK ticks) of every
# thread of PID, one a line.
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        awk -v tid="${t##*/}" '{ sub(/^.*\) /, ""); print tid, $12 + $13 }' "$t/stat" 2>/dev/null || true
    done
}

# stats_fresh_sample FILE JQ: waits (bounded) for the next rewrite of FILE, then
# samples it: what it shows was counted after this call began.
stats_fresh_sample() {
    local f=$1 m0 i
    m0=$(stat -c %.9Y "$f" 2>/dev/null || echo 0)
    for i in $(seq 100); do
        [ "$(stat -c %.9Y "$f" 2>/dev/null || echo 0)" != "$m0" ] && break
        sleep 0.02
    done
    stats_sample "$f" "$2"
}

# ============================================================================ forward
# scripts/bench.sh forward [--duration S] [--warmup S] [--small-flows N]
#                          [--large-flows N] [--sizes "64 512"] [--profile] [--prefix P]
#                          [--no-huge] [--reference-bin PATH]
#
# Packets per second through the dataplane's forwarding path (DSR VIP
# 198.18.1.2:80, three backends with configured MACs, per-lcore conntrack) on ONE
# lcore, with no kernel in the path, beside dpdk-testpmd --forward-mode=macswap on
# the same virtual device, one after the other (never at once), in the same run.
#
# Feed: one net_pcap port, `rx_pcap=FILE,infinite_rx=1` (DPDK 22.11): at queue set-up
# the PMD copies every packet of FILE into mbufs of the application's pool and then
# replays them in a loop (one rte_ring dequeue/enqueue and one memcpy per packet);
# with no tx_pcap/tx_iface its TX is eth_tx_drop (frees the mbufs, counts them).
# The port's MAC is net_pcap's fixed 02:70:63:61:70:00 (first pcap port of a
# process), checked against the dataplane's `ready:` line. --no-pci, unique
# --file-prefix per process.
# Memory: 2 MB hugepages, as DPDK is meant to run (both programs; every mbuf, and
# so every pcap packet, is then within TLB reach). The script reserves what the
# largest case's pool needs (nr_hugepages raised, and put back as it was on exit,
# also on failure) when hugetlbfs is mounted and the kernel grants the pages;
# otherwise, or with --no-huge, both run with `--no-huge -m` (4 KiB pages: every
# mbuf a TLB miss) and the table says so.
# Files: scripts/fwd_pcapgen.py writes one TCP packet per flow (64-byte frames:
# pure ACKs; 512-byte frames: PSH+ACK with data; FCS excluded, so 60/508 bytes in
# the file), clients 198.19.0.0/16. The first pass over the file creates the
# conntrack entries; the window starts after --warmup seconds (default 3) and lasts
# --duration seconds (default 8); new flows in the window are shown (0 = every
# packet hit an established flow).
# Fulcrum rate: lcore tx_packets from --stats-file at two moments (the file's mtime
# is the sample time). testpmd rate: mean of its Rx-pps lines in the window.
# cycles/packet = TSC Hz (/proc/cpuinfo "cpu MHz") x the forwarding thread's share of
# CPU 1 in the window (its utime+stime from /proc) / pps: perf's cycles event is not
# available in VMs like this one. The share is printed: below 1.00, other processes
# took CPU 1: the table then also gives Mpps per CPU-second (Mpps / share), and the
# ratio, cycles/packet and the last line use that (the rate with CPU 1 to itself).
# Both forwarding lcores run on CPU 1; this script keeps itself on CPU 0.
# --profile: after each Fulcrum window, 3 s of `perf record -e cpu-clock -p` on the
# dataplane, top symbols printed.
# --reference-bin PATH: another fulcrum-dataplane (e.g. an earlier commit's build)
# runs each case too, right after this one and on the same pcap, config and CPU;
# a last table gives both and new/reference, so a change is measured against the
# code before it in one invocation.
# Not part of scripts/test.sh: it prints figures and asserts none.

fwd_usage() { sed -n '/^# scripts\/bench.sh forward/,/^# Not part of scripts/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

FWD_DP_PID=""
FWD_TP_PID=""
FWD_WORK=""
FWD_PREFIXES=()
FWD_HUGE=1
FWD_HP_SYSFS=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
FWD_HP_RESTORE=""

# The memory options of each program: hugepages (files unlinked once mapped, so
# none outlives the process), or --no-huge with MEM MiB.
fwd_dp_memory() { if [ "$FWD_HUGE" = 1 ]; then echo 'hugepages = "on"'; else echo "hugepages = \"off\", no_huge_memory_mb = $1"; fi; }
fwd_tp_memory() { if [ "$FWD_HUGE" = 1 ]; then echo "--huge-unlink"; else echo "--no-huge -m $1"; fi; }

# fwd_reserve_hugepages MBUFS: makes sure MBUFS mbufs fit in free 2 MB hugepages
# (2368 bytes each, as the dataplane counts them, plus 256 MiB for EAL, rings and
# testpmd's extras); raises nr_hugepages if needed, remembering the old value.
# Returns 1, with the reason on stderr, when it cannot.
fwd_reserve_hugepages() {
    local need free total got
    need=$(( ($1 * 2368 + (256 << 20)) / (2 << 20) + 1 ))
    [ -w "$FWD_HP_SYSFS" ] || { echo "no writable $FWD_HP_SYSFS" >&2; return 1; }
    awk '$3 == "hugetlbfs" { f = 1 } END { exit !f }' /proc/mounts || { echo "hugetlbfs is not mounted (scripts/setup.sh mounts it)" >&2; return 1; }
    free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    [ "$free" -ge "$need" ] && return 0
    total=$(cat "$FWD_HP_SYSFS")
    FWD_HP_RESTORE=$total
    echo $((total + need - free)) >"$FWD_HP_SYSFS" 2>/dev/null || true
    got=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    [ "$got" -ge "$need" ] && return 0
    echo "the kernel granted $got free 2 MB pages of the $need needed" >&2
    return 1
}

fwd_cleanup() {
    local rc=$? p
    set +e
    [ -n "$FWD_DP_PID" ] && kill -KILL "$FWD_DP_PID" 2>/dev/null
    [ -n "$FWD_TP_PID" ] && kill -KILL "$FWD_TP_PID" 2>/dev/null
    for p in "${FWD_PREFIXES[@]}"; do rm -rf "/var/run/dpdk/$p"; done
    [ -n "$FWD_WORK" ] && rm -rf "$FWD_WORK"
    [ -n "$FWD_HP_RESTORE" ] && echo "$FWD_HP_RESTORE" >"$FWD_HP_SYSFS" 2>/dev/null
    [ "$rc" -eq 0 ] || echo "bench $BENCH: FAILED (exit $rc)" >&2
}

# fwd_stop PID SECONDS: SIGINT, a bounded wait, then SIGKILL.
fwd_stop() {
    local pid=$1 secs=$2 i
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq $((secs * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "    pid $pid did not stop in ${secs}s: killed" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# fwd_max_delta BEFORE AFTER: the largest per-thread tick increase (the polling lcore's).
fwd_max_delta() { awk 'NR == FNR { a[$1] = $2; next } ($1 in a) && $2 - a[$1] > m { m = $2 - a[$1] } END { print m + 0 }' <(echo "$1") <(echo "$2"); }
# fwd_share TICKS1 TICKS2 SECONDS: the thread's share of one CPU over the window.
fwd_share() { awk -v a="$1" -v b="$2" -v s="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (s <= 0) print "n/a"; else printf "%.2f", (b - a) / hz / s }'; }

# fwd_profile OUT PID: 3 s of perf (cpu-clock) on the dataplane's threads, top symbols.
fwd_profile() {
    local out=$1 pid=$2
    if ! command -v perf >/dev/null; then echo "    (perf not installed)" >&2; return 0; fi
    perf record -q -e cpu-clock -F 1999 -p "$pid" -o "$out" -- sleep 3 >/dev/null 2>&1 || { echo "    (perf record failed)" >&2; return 0; }
    echo "    perf (cpu-clock, the dataplane's threads, 3 s), top symbols:" >&2
    { perf report -i "$out" --no-children --stdio --sort dso,symbol 2>/dev/null |
        awk '/^ +[0-9.]+%/ && n++ < 14 { sub(/[ -]+$/, ""); gsub(/   */, "  "); print "  " $0 }' >&2; } || true
}

# fwd_dp_section PREFIX MBUFS PCAP MEM_MB: the [dataplane] table of every net_pcap
# bench: one lcore on CPU 1, PCAP replayed in a loop, the PMD's TX drops (counts).
fwd_dp_section() {
    cat <<CONF
[dataplane]
address = "198.18.0.2/24"
lcores = "1"
mbufs = $2
file_prefix = "$1"
software = { vdev = "net_pcap0,rx_pcap=$3,infinite_rx=1", $(fwd_dp_memory "$4") }
CONF
}

# fwd_dp_window DIR BIN PREFIX FILTER: runs BIN on DIR/fulcrum.toml (file_prefix PREFIX),
# waits for its `ready:` line and checks the port's MAC against FWD_MAC, lets it run
# FWD_WARMUP seconds, then samples the stats file (jq FILTER, one @tsv row) at both
# ends of a FWD_DURATION window: sets FWD_S_A and FWD_S_B ("mtime_s <row>") and
# FWD_R_SHARE (the lcore thread's share of CPU 1 in the window); --profile; stops it
# and prints its exit report. Runs in the main shell (not in $(...)), so the EXIT
# trap sees its pid.
fwd_dp_window() {
    local dir=$1 bin=$2 prefix=$3 filter=$4
    "$bin" --config "$dir/fulcrum.toml" --stats-file "$dir/stats.json" >"$dir/dataplane.log" 2>&1 &
    FWD_DP_PID=$!
    local i
    for i in $(seq 1200); do
        grep -q ' ready: ' "$dir/dataplane.log" && break
        kill -0 "$FWD_DP_PID" 2>/dev/null || { tail -n 20 "$dir/dataplane.log" >&2; die "the dataplane exited"; }
        sleep 0.1
    done
    grep -q ' ready: ' "$dir/dataplane.log" || { tail -n 20 "$dir/dataplane.log" >&2; die "the dataplane was not ready in 120 s"; }
    local mac
    mac=$(grep -o ' ready: .* mac [0-9a-f:]*' "$dir/dataplane.log" | awk '{print $NF}')
    [ "$mac" = "$FWD_MAC" ] || die "the port's MAC is $mac, the pcap was written for $FWD_MAC"
    echo "    ready ($(grep -o 'ready: port [0-9]* ([a-z_0-9]*) mac [0-9a-f:]*' "$dir/dataplane.log"))" >&2
    sleep "$FWD_WARMUP"
    local k1 k2 w1 w2
    k1=$(thread_ticks "$FWD_DP_PID")
    w1=$(date +%s.%N)
    FWD_S_A=$(stats_fresh_sample "$dir/stats.json" "$filter") || die "no stats from the dataplane"
    sleep "$FWD_DURATION"
    FWD_S_B=$(stats_fresh_sample "$dir/stats.json" "$filter") || die "no stats from the dataplane"
    k2=$(thread_ticks "$FWD_DP_PID")
    w2=$(date +%s.%N)
    FWD_R_SHARE=$(fwd_share 0 "$(fwd_max_delta "$k1" "$k2")" "$(awk -v a="$w1" -v b="$w2" 'BEGIN { print b - a }')")
    [ "$FWD_PROFILE" = 1 ] && fwd_profile "$dir/perf.data" "$FWD_DP_PID"
    fwd_stop "$FWD_DP_PID" 30
    FWD_DP_PID=""
    rm -rf "/var/run/dpdk/$prefix"
    local exitline
    exitline=$(grep -o 'lcore [0-9]*: rx .*' "$dir/dataplane.log" | tail -n 1 || true)
    echo "    ${exitline:-no exit report}; $(grep -o 'mbufs in use: .*' "$dir/dataplane.log" || echo 'no mbuf report')" >&2
}

# fwd_run_fulcrum NAME PCAP MBUFS MEM_MB: sets FWD_R_MPPS, FWD_R_NEW (flows created in the
# window), FWD_R_DROPS, FWD_R_SHARE. Runs in the main shell (not in $(...)), as above.
fwd_run_fulcrum() {
    local name=$1 pcap=$2 mbufs=$3 mem=$4 bin=${5:-$FWD_DP_BIN} tag=${6:-fulcrum}
    local prefix="${FWD_P}-dp-$$" dir="$FWD_WORK/$name-$tag"
    # This build caps new tracked flows per second (DSR/tunnel); the pcap's first
    # pass must create every flow, so the cap is off. A reference build from
    # before the cap refuses the key (unknown keys are errors) and has no cap;
    # one that knows the key (its binary names it) gets it too, or its first
    # pass over a large pcap is still creating flows in the window.
    local FWD_FLOOD_KEYS=1
    [ "$tag" = reference ] && ! grep -q new_flow_rate "$bin" && FWD_FLOOD_KEYS=0
    mkdir -p "$dir"
    FWD_PREFIXES+=("$prefix")
    cat >"$dir/fulcrum.toml" <<CONF
$(fwd_dp_section "$prefix" "$mbufs" "$pcap" "$mem")

[forward]
# Twice the largest flow count: 31-way buckets at <= 50% load spill (rarely) and never evict.
conntrack_entries = $FWD_CONNTRACK$([ "$FWD_FLOOD_KEYS" = 1 ] && printf '\n# Every flow of the pcap tracked on the first pass (no new-flow cap).\nnew_flow_rate = 0')

[[vip]]
address = "198.18.1.2"
port = 80
mode = "dsr"
backends = [
  { address = "198.18.0.21", port = 80, mac = "02:00:00:00:00:21" },
  { address = "198.18.0.22", port = 80, mac = "02:00:00:00:00:22" },
  { address = "198.18.0.23", port = 80, mac = "02:00:00:00:00:23" },
]
CONF
    # "mtime_s tx rx new_flows evictions"
    fwd_dp_window "$dir" "$bin" "$prefix" '[([.lcores[].tx_packets] | add), ([.lcores[].rx_packets] | add),
        (.forward.new_flows // 0), (.forward.evictions // 0)] | @tsv'
    local a=$FWD_S_A b=$FWD_S_B drops
    drops=$(jq -r '[(.forward.drops // {} | to_entries[] | select(.value > 0) | "\(.key)=\(.value)")] | join(",")' "$dir/stats.json" 2>/dev/null || true)
    # shellcheck disable=SC2086
    set -- $a $b
    # $1 t1 $2 tx1 $3 rx1 $4 new1 $5 ev1 | $6 t2 $7 tx2 $8 rx2 $9 new2 ${10} ev2
    read -r FWD_R_MPPS FWD_R_NEW FWD_R_DROPS < <(awk -v t1="$1" -v x1="$2" -v r1="$3" -v n1="$4" -v e1="$5" -v t2="$6" -v x2="$7" -v r2="$8" -v n2="$9" -v e2="${10}" -v d="${drops:-none}" \
        'BEGIN { dt = t2 - t1; if (dt <= 0) { print "nan nan nan"; exit }
                 printf "    window %.3f s: tx %d, rx %d packets; new flows %d, evictions %d; drops: %s\n", dt, x2 - x1, r2 - r1, n2 - n1, e2 - e1, d > "/dev/stderr";
                 printf "%.3f %d %s\n", (x2 - x1) / dt / 1e6, n2 - n1, d }')
}

# fwd_run_testpmd NAME PCAP MBUFS MEM_MB: sets FWD_R_MPPS (main shell, as above).
fwd_run_testpmd() {
    local name=$1 pcap=$2 mbufs=$3 mem=$4
    local prefix="${FWD_P}-tp-$$" dir="$FWD_WORK/$name-testpmd"
    mkdir -p "$dir"
    FWD_PREFIXES+=("$prefix")
    # testpmd without a terminal: --stats-period, or it exits at once; stdin from /dev/null.
    # shellcheck disable=SC2046
    dpdk-testpmd --no-pci -l 0,1 --main-lcore 0 --file-prefix "$prefix" $(fwd_tp_memory "$mem") \
        --vdev="net_pcap0,rx_pcap=$pcap,infinite_rx=1" -- \
        --forward-mode=macswap --port-topology=loop --nb-cores=1 --rxq=1 --txq=1 \
        --total-num-mbufs="$mbufs" --stats-period 1 </dev/null >"$dir/testpmd.log" 2>&1 &
    FWD_TP_PID=$!
    local i
    for i in $(seq 1200); do
        grep -q 'Rx-pps' "$dir/testpmd.log" && break
        kill -0 "$FWD_TP_PID" 2>/dev/null || { tail -n 20 "$dir/testpmd.log" >&2; die "testpmd exited"; }
        sleep 0.1
    done
    grep -q 'Rx-pps' "$dir/testpmd.log" || { tail -n 20 "$dir/testpmd.log" >&2; die "testpmd did not start forwarding in 120 s"; }
    sleep "$FWD_WARMUP"
    local skip k1 k2 w1 w2
    skip=$(grep -c 'Rx-pps' "$dir/testpmd.log")
    k1=$(thread_ticks "$FWD_TP_PID")
    w1=$(date +%s.%N)
    # Its stats loop prints about every 2 s here: make sure at least 2 lines fall in the window.
    sleep "$FWD_DURATION"
    for i in $(seq 100); do
        [ "$(grep -c 'Rx-pps' "$dir/testpmd.log")" -ge $((skip + 2)) ] && break
        sleep 0.1
    done
    k2=$(thread_ticks "$FWD_TP_PID")
    w2=$(date +%s.%N)
    FWD_R_SHARE=$(fwd_share 0 "$(fwd_max_delta "$k1" "$k2")" "$(awk -v a="$w1" -v b="$w2" 'BEGIN { print b - a }')")
    fwd_stop "$FWD_TP_PID" 30
    FWD_TP_PID=""
    rm -rf "/var/run/dpdk/$prefix"
    grep -q 'macswap packet forwarding' "$dir/testpmd.log" || die "testpmd did not run macswap forwarding (see $dir/testpmd.log)"
    FWD_R_MPPS=$(awk -v skip="$skip" '/Rx-pps:/ { n++; if (n > skip) { s += $2; k++; v = v " " sprintf("%.2f", $2 / 1e6) } }
        END { if (k == 0) { print "nan"; exit }
              printf "    testpmd Rx-pps in the window (Mpps):%s\n", v > "/dev/stderr"; printf "%.3f\n", s / k / 1e6 }' "$dir/testpmd.log")
}

# fwd_setup: what every net_pcap bench checks and sets up once its options are read
# (FWD_DURATION, FWD_WARMUP, FWD_P): root, tools, the EXIT trap (fwd_cleanup), this
# script on CPU 0, FWD_DP_BIN (FULCRUM_BIN_DIR, else a release build), FWD_WORK,
# FWD_MAC, FWD_MHZ.
fwd_setup() {
    [[ "$FWD_DURATION" =~ ^[0-9]+$ ]] && [ "$FWD_DURATION" -ge 2 ] && [ "$FWD_DURATION" -le 120 ] || die "--duration: 2..120 seconds"
    [[ "$FWD_WARMUP" =~ ^[0-9]+$ ]] && [ "$FWD_WARMUP" -ge 1 ] && [ "$FWD_WARMUP" -le 60 ] || die "--warmup: 1..60 seconds"
    [[ "$FWD_P" =~ ^[A-Za-z0-9_-]{1,40}$ ]] || die "--prefix: 1 to 40 of A-Z a-z 0-9 - _"
    [ "$(id -u)" -eq 0 ] || die "needs root (DPDK)"
    [ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (testpmd: a main and a forwarding lcore)"
    local t
    for t in dpdk-testpmd jq python3 taskset awk; do
        command -v "$t" >/dev/null || die "$t not found (scripts/setup.sh installs it)"
    done

    trap fwd_cleanup EXIT
    trap 'exit 130' INT TERM
    # This script, its pollers and the pcap writer stay off CPU 1 (the forwarding lcore).
    taskset -pc 0 $$ >/dev/null

    if [ -n "${FULCRUM_BIN_DIR:-}" ]; then
        FWD_DP_BIN=$FULCRUM_BIN_DIR/fulcrum-dataplane
    else
        say "build (release)"
        cargo build --release -p fulcrum-dataplane 2>&1 | tail -n 1 >&2
        FWD_DP_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/fulcrum-dataplane
    fi
    [ -x "$FWD_DP_BIN" ] || die "$FWD_DP_BIN not found"

    FWD_WORK=$(mktemp -d "/tmp/fulcrum-bench-$BENCH.XXXXXX")
    # net_pcap's MAC for the first pcap port of a process ('p' 'c' 'a' 'p', index 0).
    FWD_MAC=02:70:63:61:70:00
    FWD_MHZ=$(awk -F: '/^cpu MHz/ { gsub(/ /, "", $2); print $2; exit }' /proc/cpuinfo)
    [ -n "$FWD_MHZ" ] || die "no 'cpu MHz' in /proc/cpuinfo"
}

# fwd_mem_for N: MiB of memory for N pcap packets without hugepages. EAL then has
# 4 KiB pages and a pool object (2176-byte data room + headers, ~2.4 KiB) never
# straddles a page, so every mbuf takes 4 KiB. The pcap's packets all sit in mbufs
# (infinite_rx), plus a working margin.
fwd_mem_for() { echo $(( ($1 + 32767) * 4 / 1024 + 768 )); }

# fwd_fit_memory N FLOOR NOTE: sets FWD_FIT to N, halved (not below FLOOR) until its
# memory fits beside 2 GiB spare (one DPDK process at a time, plus the pcap files and
# the tables), and FWD_NOTE (printf NOTE FWD_FIT N) when it had to; then reserves
# hugepages for it (or sets FWD_HUGE=0). Main shell only: the old nr_hugepages must
# reach the EXIT trap.
fwd_fit_memory() {
    local n=$1 avail_mb
    avail_mb=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
    FWD_FIT=$n
    while [ "$(fwd_mem_for "$FWD_FIT")" -gt $((avail_mb - 2048)) ] && [ "$FWD_FIT" -gt "$2" ]; do
        FWD_FIT=$((FWD_FIT / 2))
    done
    FWD_NOTE=""
    if [ "$FWD_FIT" -ne "$n" ]; then
        # shellcheck disable=SC2059
        FWD_NOTE="only $avail_mb MiB available: $(printf "$3" "$FWD_FIT" "$n")"
        echo "bench $BENCH: $FWD_NOTE" >&2
    fi
    if [ "$FWD_HUGE" = 1 ] && ! fwd_reserve_hugepages $((FWD_FIT + 32767)) 2>"$FWD_WORK/hugepages.err"; then
        FWD_HUGE=0
        echo "bench $BENCH: no hugepages ($(cat "$FWD_WORK/hugepages.err")): both run with --no-huge" >&2
    fi
}

fwd_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
# Mpps per CPU-second of the forwarding thread (= Mpps when it had CPU 1 to itself).
fwd_per_cpu() { awk -v p="$1" -v s="$2" 'BEGIN { if (p == "nan" || s == "n/a" || s + 0 < 0.05) print "n/a"; else printf "%.3f", p / (s > 1 ? 1 : s) }'; }
# Cycles the forwarding thread ran per packet: TSC MHz / Mpps per CPU-second.
fwd_cyc() { awk -v p="$1" -v m="$FWD_MHZ" 'BEGIN { if (p == "n/a" || p + 0 == 0) print "n/a"; else printf "%.0f", m / p }'; }

fwd_main() {
    FWD_DURATION=8
    FWD_WARMUP=3
    FWD_SMALL=4096
    FWD_LARGE=1048576
    FWD_SIZES="64 512"
    FWD_PROFILE=0
    FWD_P=fwdbench
    FWD_REF_BIN=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --duration) FWD_DURATION=$2; shift 2 ;;
            --warmup) FWD_WARMUP=$2; shift 2 ;;
            --small-flows) FWD_SMALL=$2; shift 2 ;;
            --large-flows) FWD_LARGE=$2; shift 2 ;;
            --sizes) FWD_SIZES=$2; shift 2 ;;
            --profile) FWD_PROFILE=1; shift ;;
            --prefix) FWD_P=$2; shift 2 ;;
            --no-huge) FWD_HUGE=0; shift ;;
            --reference-bin) FWD_REF_BIN=$2; shift 2 ;;
            -h|--help) fwd_usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ "$FWD_SMALL" =~ ^[0-9]+$ ]] && [ "$FWD_SMALL" -ge 1 ] || die "--small-flows: a positive number"
    [[ "$FWD_LARGE" =~ ^[0-9]+$ ]] && [ "$FWD_LARGE" -ge 1 ] && [ "$FWD_LARGE" -le 8388608 ] || die "--large-flows: 1..8388608"
    local s
    for s in $FWD_SIZES; do [[ "$s" =~ ^[0-9]+$ ]] && [ "$s" -ge 64 ] && [ "$s" -le 1518 ] || die "--sizes: frame sizes 64..1518"; done
    [ -z "$FWD_REF_BIN" ] || [ -x "$FWD_REF_BIN" ] || die "--reference-bin: $FWD_REF_BIN is not an executable"
    fwd_setup
    local large
    fwd_fit_memory "$FWD_LARGE" "$FWD_SMALL" "the large case uses %s flows instead of %s"
    large=$FWD_FIT
    FWD_CONNTRACK=1024
    while [ "$FWD_CONNTRACK" -lt $((2 * large)) ] || [ "$FWD_CONNTRACK" -lt $((2 * FWD_SMALL)) ]; do FWD_CONNTRACK=$((FWD_CONNTRACK * 2)); done

    declare -A FR TR NF DR FS TS PC_F PC_T RR RS
    local size flows name pcap mbufs mem r
    local cases=()
    for size in $FWD_SIZES; do
        for flows in "$FWD_SMALL" "$large"; do
            name="${size}B-${flows}"
            cases+=("$name")
            pcap="$FWD_WORK/$name.pcap"
            mbufs=$((flows + 32767))
            mem=$(fwd_mem_for "$flows")
            say "$size-byte frames, $flows flows: pcap, then Fulcrum, then testpmd macswap ($(fwd_tp_memory "$mem"), $mbufs mbufs, ${FWD_WARMUP}s warm-up, ${FWD_DURATION}s window)"
            python3 "$ROOT/scripts/fwd_pcapgen.py" --out "$pcap" --flows "$flows" \
                --frame-len $((size - 4)) --dst-mac "$FWD_MAC" --vip 198.18.1.2 --port 80 ||
                die "writing $pcap"
            echo "    Fulcrum:" >&2
            fwd_run_fulcrum "$name" "$pcap" "$mbufs" "$mem"
            FR[$name]=$FWD_R_MPPS NF[$name]=$FWD_R_NEW DR[$name]=$FWD_R_DROPS FS[$name]=$FWD_R_SHARE
            if [ -n "$FWD_REF_BIN" ]; then
                echo "    reference ($FWD_REF_BIN):" >&2
                fwd_run_fulcrum "$name" "$pcap" "$mbufs" "$mem" "$FWD_REF_BIN" reference
                RR[$name]=$FWD_R_MPPS RS[$name]=$FWD_R_SHARE
            fi
            echo "    testpmd macswap:" >&2
            fwd_run_testpmd "$name" "$pcap" "$mbufs" "$mem"
            TR[$name]=$FWD_R_MPPS TS[$name]=$FWD_R_SHARE
            rm -f "$pcap"
            echo "    => Fulcrum ${FR[$name]} Mpps (lcore thread had ${FS[$name]} of CPU 1), testpmd macswap ${TR[$name]} Mpps (${TS[$name]})" >&2
        done
    done

    echo
    echo "Fulcrum forwarding (DSR VIP, per-lcore conntrack) vs dpdk-testpmd macswap, one forwarding lcore each"
    echo "(CPU 1), one net_pcap port (rx_pcap, infinite_rx=1; tx dropped by the PMD), --no-pci, $([ "$FWD_HUGE" = 1 ] && echo "2 MB hugepages" || echo "--no-huge (4 KiB pages)"),"
    echo "${FWD_WARMUP}s warm-up then a ${FWD_DURATION}s window; TSC ${FWD_MHZ} MHz (/proc/cpuinfo; no PMU cycle counter in this VM)."
    local fmt='%-5s %8s | %8s %8s %9s | %8s %8s %6s | %8s %8s | %6s\n'
    # shellcheck disable=SC2059
    printf "$fmt" frame flows "Fulcrum" "testpmd" "CPU" "Fulcrum" "testpmd" "ratio" "Fulcrum" "testpmd" "new"
    # shellcheck disable=SC2059
    printf "$fmt" "" "" "Mpps" "Mpps" "share F/T" "Mpps/CPU" "Mpps/CPU" "" "cyc/pkt" "cyc/pkt" "flows"
    local name fpc tpc
    for name in "${cases[@]}"; do
        fpc=$(fwd_per_cpu "${FR[$name]}" "${FS[$name]}")
        tpc=$(fwd_per_cpu "${TR[$name]}" "${TS[$name]}")
        PC_F[$name]=$fpc PC_T[$name]=$tpc
        # shellcheck disable=SC2059
        printf "$fmt" "${name%%-*}" "${name#*-}" "${FR[$name]}" "${TR[$name]}" "${FS[$name]}/${TS[$name]}" \
            "$fpc" "$tpc" "$(fwd_ratio "$fpc" "$tpc")" "$(fwd_cyc "$fpc")" "$(fwd_cyc "$tpc")" "${NF[$name]}"
    done
    echo "Mpps: measured. CPU share: CPU time (utime+stime) the forwarding thread got in the window, 1.00 = all of"
    echo "CPU 1; below that, other processes ran on CPU 1. Mpps/CPU = Mpps / share (the rate with CPU 1 to itself,"
    echo "ignoring co-runners' cache pollution); ratio and cycles/packet use it. New flows: conntrack entries created"
    echo "in the window (0 = every packet hit an established flow)."
    local key="64B-$large"
    if [ -z "${FR[$key]:-}" ]; then
        key="${cases[-1]}"
        echo "the summary is for ${key%%-*} frames over ${key#*-} established flows (64-byte frames were not measured)"
    elif [ -n "$FWD_NOTE" ]; then
        echo "the summary is for 64-byte frames over $large established flows ($FWD_NOTE)"
    else
        echo "the summary is for 64-byte frames over $large established flows (measured ${FR[$key]} Mpps at CPU share ${FS[$key]})"
    fi
    if [ -n "$FWD_REF_BIN" ]; then
        echo
        echo "This build vs the reference ($FWD_REF_BIN), same cases, run back to back (Mpps per CPU-second):"
        local rfmt='%-5s %8s | %8s %10s %6s\n'
        # shellcheck disable=SC2059
        printf "$rfmt" frame flows "this" "reference" "ratio"
        local rpc
        for name in "${cases[@]}"; do
            rpc=$(fwd_per_cpu "${RR[$name]}" "${RS[$name]}")
            # shellcheck disable=SC2059
            printf "$rfmt" "${name%%-*}" "${name#*-}" "${PC_F[$name]}" "$rpc" "$(fwd_ratio "${PC_F[$name]}" "$rpc")"
        done
    fi
    echo "forward: ${PC_F[$key]} Mpps per lcore, $(fwd_ratio "${PC_F[$key]}" "${PC_T[$key]}") of testpmd macswap, $(fwd_cyc "${PC_F[$key]}") cycles/packet"
}

if [ "${1:-}" = forward ]; then
    shift
    fwd_main "$@"
    exit 0
fi
# ============================================================================ end of forward

# ============================================================================ synflood
# scripts/bench.sh synflood [--duration S] [--warmup S] [--syns N] [--no-auto]
#                           [--profile] [--prefix P] [--no-huge]
#
# SYN cookies per second on ONE lcore with no kernel in the path, beside
# dpdk-testpmd --forward-mode=macswap on the same frames, one after the other
# (never at once), in the same run. The harness is `forward`'s (above, functions
# fwd_*): one net_pcap port `rx_pcap=FILE,infinite_rx=1` whose TX drops (counts)
# frames, the lcore on CPU 1, 2 MB hugepages reserved for the run (or --no-huge),
# --no-pci, a unique --file-prefix per process, a --warmup (default 3 s) then a
# --duration window (default 8 s), the thread's CPU share and cycles/packet from
# /proc and the TSC, --profile (perf cpu-clock on the dataplane, top symbols).
# Feed: scripts/syn_pcapgen.py writes --syns N (default 1 048 576) distinct SYNs
# (source address and port pairs) to the proxy VIP 198.18.1.1:80 from random
# sources in 198.19.0.0/16, random ports, ISNs and timestamps, shaped like
# Linux's (74-byte frames: MSS 1460, SACK permitted, timestamps, window scale 7),
# valid checksums, to net_pcap's port MAC; the file loops.
# Fulcrum: a proxy VIP with three backends (198.18.0.21-23:8080, addresses only:
# none is ever contacted), `[proxy] syn_cookies = "always"` and a fixed
# syn_cookie_seed: every SYN has its checksums verified and is answered with a
# SYN-ACK carrying a cookie, built and sent to the SYN's source MAC (dropped and
# counted by the PMD); nothing is kept. Rate: the VIP's `cookies_sent` (`.vips[]`
# in the stats file) at both ends of the window; the lcore's tx_packets and
# rx_packets are shown beside it as a cross-check. They agree to within a few
# percent: the VIP's counters come from the lcore's report, published every
# 200 ms, the lcore's are read live, so at each end of the window the former lag.
# Then, unless --no-auto, the same with `syn_cookies = "auto"` (threshold 128):
# the first SYNs are admitted as connections (their backends never answer ARP)
# until 128 are half-open, then flood mode answers the rest with cookies; its
# window, after the warm-up, is in flood mode. Shown in the table, not in the
# last line.
# testpmd: macswap on the same pcap (rate: its Rx-pps lines in the window).
# Ratio = Fulcrum cookies Mpps / testpmd Mpps, both per CPU-second of the lcore
# thread (= Mpps when it had CPU 1 to itself), as in forward. The last line:
#   synflood: <Mpps> Mpps cookies per lcore, <ratio> of testpmd macswap
# Not part of scripts/test.sh: it prints figures and asserts none.

syn_usage() { sed -n '/^# scripts\/bench.sh synflood/,/^# Not part of scripts/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

SYN_VIP=198.18.1.1
SYN_PORT=80

# syn_run_fulcrum MODE PCAP MBUFS MEM_MB: the dataplane with syn_cookies = MODE on PCAP;
# sets SYN_R_COOKIES, SYN_R_TX, SYN_R_RX (Mpps in the window) and FWD_R_SHARE. Main shell.
syn_run_fulcrum() {
    local mode=$1 pcap=$2 mbufs=$3 mem=$4
    local prefix="${FWD_P}-dp-$$" dir="$FWD_WORK/syn-$mode"
    mkdir -p "$dir"
    FWD_PREFIXES+=("$prefix")
    cat >"$dir/fulcrum.toml" <<CONF
$(fwd_dp_section "$prefix" "$mbufs" "$pcap" "$mem")

[proxy]
syn_cookies = "$mode"
# Fixed, so that runs are alike (the cookie work does not depend on it).
syn_cookie_seed = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[[vip]]
address = "$SYN_VIP"
port = $SYN_PORT
mode = "proxy"
backends = [
  { address = "198.18.0.21", port = 8080 },
  { address = "198.18.0.22", port = 8080 },
  { address = "198.18.0.23", port = 8080 },
]
CONF
    local vip=".vips[]? | select(.address == \"$SYN_VIP\" and .port == $SYN_PORT)"
    # "mtime_s tx rx cookies_sent syns"
    fwd_dp_window "$dir" "$FWD_DP_BIN" "$prefix" "[([.lcores[].tx_packets] | add), ([.lcores[].rx_packets] | add),
        ([$vip | .cookies_sent] | add // 0), ([$vip | .syns] | add // 0)] | @tsv"
    echo "    at exit: $(jq -r "[($vip | \"VIP syns \(.syns), cookies_sent \(.cookies_sent), accepted \(.accepted), half_open \(.half_open), flood_lcores \(.flood_lcores), drop_half_open_timeout \(.drop_half_open_timeout)\"),
        (.proxy | \"proxy drop_bad_checksum \(.drop_bad_checksum), drop_bad_flags \(.drop_bad_flags), frames_not_ours \(.frames_not_ours), unknown_flow \(.unknown_flow)\")] | join(\"; \")" "$dir/stats.json" 2>/dev/null || echo 'no stats')" >&2
    # shellcheck disable=SC2086
    set -- $FWD_S_A $FWD_S_B
    # $1 t1 $2 tx1 $3 rx1 $4 ck1 $5 syn1 | $6 t2 $7 tx2 $8 rx2 $9 ck2 ${10} syn2
    read -r SYN_R_COOKIES SYN_R_TX SYN_R_RX < <(awk -v t1="$1" -v x1="$2" -v r1="$3" -v c1="$4" -v s1="$5" \
        -v t2="$6" -v x2="$7" -v r2="$8" -v c2="$9" -v s2="${10}" \
        'BEGIN { dt = t2 - t1; if (dt <= 0) { print "nan nan nan"; exit }
                 printf "    window %.3f s: rx %d, syns %d, cookies sent %d, tx %d\n", dt, r2 - r1, s2 - s1, c2 - c1, x2 - x1 > "/dev/stderr";
                 printf "%.3f %.3f %.3f\n", (c2 - c1) / dt / 1e6, (x2 - x1) / dt / 1e6, (r2 - r1) / dt / 1e6 }')
}

syn_main() {
    FWD_DURATION=8
    FWD_WARMUP=3
    FWD_PROFILE=0
    FWD_P=synbench
    local syns=1048576 auto=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --duration) FWD_DURATION=$2; shift 2 ;;
            --warmup) FWD_WARMUP=$2; shift 2 ;;
            --syns) syns=$2; shift 2 ;;
            --no-auto) auto=0; shift ;;
            --profile) FWD_PROFILE=1; shift ;;
            --prefix) FWD_P=$2; shift 2 ;;
            --no-huge) FWD_HUGE=0; shift ;;
            -h|--help) syn_usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ "$syns" =~ ^[0-9]+$ ]] && [ "$syns" -ge 1024 ] && [ "$syns" -le 8388608 ] || die "--syns: 1024..8388608"
    fwd_setup
    fwd_fit_memory "$syns" 4096 "the pcap holds %s SYNs instead of %s"
    syns=$FWD_FIT
    local pcap=$FWD_WORK/syns.pcap mbufs=$((syns + 32767)) mem
    mem=$(fwd_mem_for "$syns")
    say "pcap: $syns SYNs to $SYN_VIP:$SYN_PORT (scripts/syn_pcapgen.py)"
    python3 "$ROOT/scripts/syn_pcapgen.py" --out "$pcap" --syns "$syns" --dst-mac "$FWD_MAC" \
        --vip "$SYN_VIP" --port "$SYN_PORT" || die "writing $pcap"

    declare -A MP SH TX RX
    local modes=(always) m
    [ "$auto" = 1 ] && modes+=(auto)
    for m in "${modes[@]}"; do
        say "Fulcrum, syn_cookies = \"$m\" ($(fwd_tp_memory "$mem" | sed 's/--huge-unlink/2 MB hugepages/'), $mbufs mbufs, ${FWD_WARMUP}s warm-up, ${FWD_DURATION}s window)"
        syn_run_fulcrum "$m" "$pcap" "$mbufs" "$mem"
        MP[$m]=$SYN_R_COOKIES TX[$m]=$SYN_R_TX RX[$m]=$SYN_R_RX SH[$m]=$FWD_R_SHARE
        echo "    => ${MP[$m]} Mpps cookies sent (lcore thread had ${SH[$m]} of CPU 1)" >&2
    done
    say "testpmd macswap, same pcap"
    fwd_run_testpmd syn "$pcap" "$mbufs" "$mem"
    MP[testpmd]=$FWD_R_MPPS SH[testpmd]=$FWD_R_SHARE TX[testpmd]=- RX[testpmd]=-
    echo "    => ${MP[testpmd]} Mpps (${SH[testpmd]})" >&2
    rm -f "$pcap"

    echo
    echo "Fulcrum SYN cookies (proxy VIP, every SYN answered with a cookie SYN-ACK) vs dpdk-testpmd macswap, one lcore"
    echo "each (CPU 1), one net_pcap port (rx_pcap of $syns distinct 74-byte SYNs, infinite_rx=1; tx dropped by the PMD),"
    echo "--no-pci, $([ "$FWD_HUGE" = 1 ] && echo "2 MB hugepages" || echo "--no-huge (4 KiB pages)"), ${FWD_WARMUP}s warm-up then a ${FWD_DURATION}s window; TSC ${FWD_MHZ} MHz (/proc/cpuinfo)."
    local fmt='%-24s | %8s %8s %8s | %6s | %8s %8s | %6s\n' pc tpc
    # shellcheck disable=SC2059
    printf "$fmt" run "Mpps" "tx" "rx" "CPU" "Mpps/CPU" "cyc/pkt" "ratio"
    # shellcheck disable=SC2059
    printf "$fmt" "" "" "Mpps" "Mpps" "share" "" "" "to tp"
    tpc=$(fwd_per_cpu "${MP[testpmd]}" "${SH[testpmd]}")
    for m in "${modes[@]}" testpmd; do
        pc=$(fwd_per_cpu "${MP[$m]}" "${SH[$m]}")
        # shellcheck disable=SC2059
        printf "$fmt" "$([ "$m" = testpmd ] && echo "testpmd macswap" || echo "Fulcrum cookies ($m)")" "${MP[$m]}" "${TX[$m]}" "${RX[$m]}" \
            "${SH[$m]}" "$pc" "$(fwd_cyc "$pc")" "$(fwd_ratio "$pc" "$tpc")"
    done
    echo "Mpps: Fulcrum = the VIP's cookies_sent per second, testpmd = its Rx-pps (every frame swapped and sent back);"
    echo "tx/rx: the lcore's tx_packets/rx_packets per second (cross-check). CPU share: CPU time (utime+stime) the lcore"
    echo "thread got in the window, 1.00 = all of CPU 1. Mpps/CPU = Mpps / share; ratio and cycles/packet use it."
    [ -z "$FWD_NOTE" ] || echo "($FWD_NOTE)"
    local f
    f=$(fwd_per_cpu "${MP[always]}" "${SH[always]}")
    echo "synflood: $f Mpps cookies per lcore, $(fwd_ratio "$f" "$tpc") of testpmd macswap"
}

if [ "${1:-}" = synflood ]; then
    shift
    syn_main "$@"
    exit 0
fi
# ============================================================================ end of synflood


# ============================================================================ scale
# scripts/bench.sh scale [--requests K] [--new-connections C] [--wall-runs R] [--top N] [--keep DIR]
#
# Cost per request of the proxy engine (crate proxy) with 100, 1 000 and 10 000
# open connections, in-process: proxy/examples/scale.rs opens N idle client
# connections through the engine on the in-memory wire and fake clock of
# proxy/tests/common (the scenario of proxy/tests/scale.rs; every connection
# carries one request during set-up, so all are in their steady state), then
# sends K sequential echo requests (default 10 000) round-robin over the N
# connections, inside one function, `scale_measured`: at 10 000 connections
# each request meets a connection the 9 999 others have pushed out of the
# caches, at 100 every connection stays cached. Per N it prints:
#   instructions/request  instructions executed inside Engine::poll during the
#       requests only, counted by valgrind's callgrind: collection off at start,
#       toggled on and off on entry and exit of Engine::poll
#       (--toggle-collect), and all counts zeroed on entry to scale_measured
#       (--zero-before), so the set-up (opening the N connections) and the
#       simulated peers (client and backends) are excluded. Deterministic to
#       within a few hundred instructions per run (HashMap seeds are random).
#   us/request (median)  wall time inside Engine::poll per request, release
#       build, native (not under valgrind), median of R runs (default 5): noisy
#       on a shared machine; grows with cache misses at 10 000 connections.
#   sockets visited/request  the engine's `sockets_visited` counter (sockets
#       smoltcp iterated: ingress, egress, poll_at) per request.
# and the ratios 1k/100 and 10k/100; then, from the callgrind profiles, the
# engine's top functions by instructions (self cost) at 100 and at 10 000, and
# the functions whose instructions grew the most between the two.
# Then the cost of a new connection, with 100 and with 10 000 others open
# (`scale --new N C`, common::scale_new_connections): C connections (default
# 2 000) one after the other, each a whole life: the client's SYN, admission,
# the backend connection opened, the held SYN-ACK released, one echo request
# and its answer, the backend closing, the client closing, both sides closed
# and the connection released (its backend connection with it); after as
# many again not measured (warm-up). Same columns per connection (callgrind
# on Engine::poll, zeroed on entry to scale_measured_new; wall time; visits),
# and the top functions by instructions per connection at 100.
# Wall time is only indicative on a loaded machine; instructions are the figure.
# Needs valgrind (callgrind_annotate). About a minute in all. Not part of
# scripts/test.sh: it prints figures, asserts none (tests/scale.rs asserts).
# --keep DIR keeps the callgrind files (callgrind.engine.<N>.out) in DIR.

scale_usage() { sed -n '/^# scripts\/bench.sh scale/,/^# --keep DIR/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# scale_self_costs FILE: "<instructions>\t<function>" per function (self cost,
# summed over the source files a function's inlined code comes from).
scale_self_costs() {
    # Call edges entered before the counters were zeroed have a call count of 0
    # and callgrind_annotate would book their inclusive cost as self cost.
    sed 's/^calls=0 /calls=1 /' "$1" >"$1.fixed"
    callgrind_annotate --auto=no --threshold=100 "$1.fixed" 2>/dev/null |
        sed -n '/file:function/,$p' |
        awk 'match($0, /^ *[0-9,]+ \( *[0-9.]+%\)  /) {
                 n = substr($0, 1, RLENGTH); sub(/\(.*/, "", n); gsub(/[ ,]/, "", n)
                 r = substr($0, RLENGTH + 1); f = substr(r, index(r, ":") + 1); sub(/ \[[^]]*\]$/, "", f)
                 s[f] += n
             }
             END { for (f in s) printf "%d\t%s\n", s[f], f }' |
        sort -t$'\t' -k1,1nr
}

# scale_short NAME: a function name cut to fit a table column.
scale_short() { awk -v w=72 '{ if (length($0) > w) print substr($0, 1, w - 3) "..."; else print }'; }

scale_main() {
    local requests=10000 newconns=2000 runs=5 top=12 keep=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --requests) requests=$2; shift 2 ;;
            --new-connections) newconns=$2; shift 2 ;;
            --wall-runs) runs=$2; shift 2 ;;
            --top) top=$2; shift 2 ;;
            --keep) keep=$2; shift 2 ;;
            -h|--help) scale_usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ "$requests" =~ ^[0-9]+$ ]] && [ "$requests" -ge 1 ] && [ "$requests" -le 100000 ] || die "--requests: 1..100000"
    [[ "$newconns" =~ ^[0-9]+$ ]] && [ "$newconns" -ge 1 ] && [ "$newconns" -le 15000 ] || die "--new-connections: 1..15000"
    [[ "$runs" =~ ^[0-9]+$ ]] && [ "$runs" -ge 1 ] && [ "$runs" -le 50 ] || die "--wall-runs: 1..50"
    [[ "$top" =~ ^[0-9]+$ ]] && [ "$top" -ge 1 ] && [ "$top" -le 100 ] || die "--top: 1..100"
    for t in valgrind callgrind_annotate cargo; do
        command -v "$t" >/dev/null || die "$t not found"
    done

    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    local bin=$target/release/examples/scale
    say "build: cargo build --release -p fulcrum-proxy --example scale (target $target)"
    CARGO_TARGET_DIR=$target cargo build --release -p fulcrum-proxy --example scale 2>&1 | tail -n 2 >&2
    [ -x "$bin" ] || die "$bin not found"

    local work
    work=$(mktemp -d /tmp/fulcrum-bench-scale.XXXXXX)
    # shellcheck disable=SC2064 # expand now: $work is local
    trap "rm -rf '$work'" EXIT
    trap 'exit 130' INT TERM

    local sizes=(100 1000 10000)
    declare -A INSTR US USMIN VISITS
    local n i out us visits line
    for n in "${sizes[@]}"; do
        say "$n open connections: $runs native runs of $requests requests (wall time), then one under callgrind (instructions)"
        : >"$work/us.$n"
        for i in $(seq "$runs"); do
            out=$(timeout 120 "$bin" "$n" "$requests") || die "$bin $n $requests failed"
            echo "    $out" >&2
            line=$(echo "$out" | grep '^scale_result ')
            us=$(echo "$line" | sed -n 's/.* us_per_request=\([0-9.]*\).*/\1/p')
            visits=$(echo "$line" | sed -n 's/.* sockets_visited_per_request=\([0-9.]*\).*/\1/p')
            [ -n "$us" ] && [ -n "$visits" ] || die "unexpected output: $out"
            echo "$us" >>"$work/us.$n"
            VISITS[$n]=$visits
        done
        US[$n]=$(sort -n "$work/us.$n" | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
        USMIN[$n]=$(sort -n "$work/us.$n" | awk 'NR == 1 { printf "%.2f", $1 }')
        local cg=$work/callgrind.engine.$n.out t0=$SECONDS
        timeout 300 valgrind --tool=callgrind --collect-atstart=no \
            --toggle-collect='*Engine::poll*' --zero-before='*scale_measured*' \
            --compress-strings=no --compress-pos=no \
            --callgrind-out-file="$cg" "$bin" "$n" "$requests" >"$work/cg.$n.log" 2>&1 ||
            { tail -n 20 "$work/cg.$n.log" >&2; die "callgrind run failed (N=$n)"; }
        out=$(grep '^scale_result ' "$work/cg.$n.log")
        [ "$(echo "$out" | sed -n 's/.* sockets_visited_per_request=\([0-9.]*\).*/\1/p')" = "${VISITS[$n]}" ] ||
            die "under callgrind the run differed: $out"
        local total
        total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$cg")
        [ -n "$total" ] && [ "$total" -gt 0 ] || die "no instruction total in $cg"
        INSTR[$n]=$(awk -v t="$total" -v k="$requests" 'BEGIN { printf "%.0f", t / k }')
        echo "    callgrind ($((SECONDS - t0)) s): $total instructions in Engine::poll for $requests requests = ${INSTR[$n]}/request" >&2
        scale_self_costs "$cg" >"$work/self.$n"
    done

    local new_sizes=(100 10000)
    declare -A NINSTR NUS NUSMIN NVISITS
    for n in "${new_sizes[@]}"; do
        say "$n open connections: $runs native runs of $newconns new connections (wall time), then one under callgrind (instructions)"
        : >"$work/nus.$n"
        for i in $(seq "$runs"); do
            out=$(timeout 300 "$bin" --new "$n" "$newconns") || die "$bin --new $n $newconns failed"
            echo "    $out" >&2
            line=$(echo "$out" | grep '^scale_new_result ')
            us=$(echo "$line" | sed -n 's/.* us_per_connection=\([0-9.]*\).*/\1/p')
            visits=$(echo "$line" | sed -n 's/.* sockets_visited_per_connection=\([0-9.]*\).*/\1/p')
            [ -n "$us" ] && [ -n "$visits" ] || die "unexpected output: $out"
            echo "$us" >>"$work/nus.$n"
            NVISITS[$n]=$visits
        done
        NUS[$n]=$(sort -n "$work/nus.$n" | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
        NUSMIN[$n]=$(sort -n "$work/nus.$n" | awk 'NR == 1 { printf "%.2f", $1 }')
        local cg=$work/callgrind.engine.new.$n.out t0=$SECONDS
        timeout 600 valgrind --tool=callgrind --collect-atstart=no \
            --toggle-collect='*Engine::poll*' --zero-before='*scale_measured_new*' \
            --compress-strings=no --compress-pos=no \
            --callgrind-out-file="$cg" "$bin" --new "$n" "$newconns" >"$work/cgn.$n.log" 2>&1 ||
            { tail -n 20 "$work/cgn.$n.log" >&2; die "callgrind run failed (--new, N=$n)"; }
        out=$(grep '^scale_new_result ' "$work/cgn.$n.log")
        [ "$(echo "$out" | sed -n 's/.* sockets_visited_per_connection=\([0-9.]*\).*/\1/p')" = "${NVISITS[$n]}" ] ||
            die "under callgrind the run differed: $out"
        local total
        total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$cg")
        [ -n "$total" ] && [ "$total" -gt 0 ] || die "no instruction total in $cg"
        NINSTR[$n]=$(awk -v t="$total" -v k="$newconns" 'BEGIN { printf "%.0f", t / k }')
        echo "    callgrind ($((SECONDS - t0)) s): $total instructions in Engine::poll for $newconns new connections = ${NINSTR[$n]}/connection" >&2
        scale_self_costs "$cg" >"$work/selfnew.$n"
    done

    scale_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
    echo
    echo "Proxy engine cost per request vs open connections (proxy/examples/scale.rs: in-memory wire, fake clock;"
    echo "$requests sequential echo requests, round-robin over the open connections; Engine::poll only, simulated peers excluded)"
    printf '%-18s %14s %12s %12s %14s\n' "open connections" "instr/request" "us/req min" "us/req med" "visits/request"
    printf '%-18s %14s %12s %12s %14s\n' ---------------- ------------- ---------- ---------- --------------
    for n in "${sizes[@]}"; do
        printf '%-18s %14s %12s %12s %14s\n' "$n" "${INSTR[$n]}" "${USMIN[$n]}" "${US[$n]}" "${VISITS[$n]}"
    done
    local big
    for big in 1000 10000; do
        printf '%-18s %14s %12s %12s %14s\n' "ratio $((big / 1000))k/100" "$(scale_ratio "${INSTR[$big]}" "${INSTR[100]}")" \
            "$(scale_ratio "${USMIN[$big]}" "${USMIN[100]}")" "$(scale_ratio "${US[$big]}" "${US[100]}")" \
            "$(scale_ratio "${VISITS[$big]}" "${VISITS[100]}")"
    done
    echo "(instructions: callgrind, Engine::poll inclusive, requests only; us: wall time in Engine::poll per request,"
    echo " native release build, min and median of $runs runs (load average now: $(cut -d' ' -f1 /proc/loadavg) on $(nproc) CPUs);"
    echo " visits: sockets smoltcp iterated, engine counter)"

    local a=100 b=10000
    echo
    echo "Top $top functions by instructions per request inside Engine::poll (self cost), $a vs $b open connections"
    printf '%10s %10s  %s\n' "at $a" "at $b" function
    join -t$'\t' -1 2 -2 2 -a1 -a2 -e0 -o 0,1.1,2.1 \
        <(sort -t$'\t' -k2,2 "$work/self.$a") <(sort -t$'\t' -k2,2 "$work/self.$b") |
        awk -F'\t' -v k="$requests" '{ printf "%d\t%.0f\t%.0f\t%s\n", $2 + $3, $2 / k, $3 / k, $1 }' |
        sort -t$'\t' -k1,1nr | awk -v t="$top" 'NR <= t' |
        while IFS=$'\t' read -r _ x y f; do printf '%10s %10s  %s\n' "$x" "$y" "$(echo "$f" | scale_short)"; done
    echo
    echo "Largest changes per request from $a to $b open connections (self cost)"
    printf '%10s %10s %10s  %s\n' "at $a" "at $b" change function
    join -t$'\t' -1 2 -2 2 -a1 -a2 -e0 -o 0,1.1,2.1 \
        <(sort -t$'\t' -k2,2 "$work/self.$a") <(sort -t$'\t' -k2,2 "$work/self.$b") |
        awk -F'\t' -v k="$requests" '{ d = ($3 - $2) / k; printf "%.0f\t%.0f\t%.0f\t%+.0f\t%s\n", (d < 0 ? -d : d), $2 / k, $3 / k, d, $1 }' |
        sort -t$'\t' -k1,1nr | awk 'NR <= 8' |
        while IFS=$'\t' read -r _ x y d f; do printf '%10s %10s %10s  %s\n' "$x" "$y" "$d" "$(echo "$f" | scale_short)"; done

    echo
    echo "Proxy engine cost per new connection (same wire; $newconns connections one after the other, each: SYN,"
    echo "backend connection, one echo request, backend and client close, released; beside N idle open connections)"
    printf '%-18s %14s %12s %12s %14s\n' "open connections" "instr/conn" "us/conn min" "us/conn med" "visits/conn"
    printf '%-18s %14s %12s %12s %14s\n' ---------------- ---------- ----------- ----------- -----------
    for n in "${new_sizes[@]}"; do
        printf '%-18s %14s %12s %12s %14s\n' "$n" "${NINSTR[$n]}" "${NUSMIN[$n]}" "${NUS[$n]}" "${NVISITS[$n]}"
    done
    printf '%-18s %14s %12s %12s %14s\n' "ratio 10k/100" "$(scale_ratio "${NINSTR[10000]}" "${NINSTR[100]}")" \
        "$(scale_ratio "${NUSMIN[10000]}" "${NUSMIN[100]}")" "$(scale_ratio "${NUS[10000]}" "${NUS[100]}")" \
        "$(scale_ratio "${NVISITS[10000]}" "${NVISITS[100]}")"
    echo
    echo "Top $top functions by instructions per new connection inside Engine::poll (self cost), 100 open"
    printf '%10s  %s\n' "at 100" function
    awk -F'\t' -v k="$newconns" '{ printf "%.0f\t%s\n", $1 / k, $2 }' "$work/selfnew.100" | awk -v t="$top" 'NR <= t' |
        while IFS=$'\t' read -r x f; do printf '%10s  %s\n' "$x" "$(echo "$f" | scale_short)"; done

    if [ -n "$keep" ]; then
        mkdir -p "$keep" && cp "$work"/callgrind.engine.*.out "$keep"/ && echo "(callgrind files kept in $keep)"
    fi
    echo "scale: ${INSTR[100]}, ${INSTR[1000]}, ${INSTR[10000]} instructions per request; 10k/100 = $(scale_ratio "${INSTR[10000]}" "${INSTR[100]}")"
    echo "scale: ${NINSTR[100]}, ${NINSTR[10000]} instructions per new connection (100, 10 000 open); 10k/100 = $(scale_ratio "${NINSTR[10000]}" "${NINSTR[100]}")"
}

if [ "${1:-}" = scale ]; then
    shift
    scale_main "$@"
    exit 0
fi
# ============================================================================ end of scale

# ============================================================================ capacity
# scripts/bench.sh capacity [--duration S] [--warmup S] [--conn-connections N]
#                           [--ka-connections N] [--bulk-connections N]
#                           [--callgrind-seconds S] [--no-callgrind] [--no-huge] [--prefix P]
#                           [--reference-bin PATH] [--phases LIST]
#
# --phases: comma-separated subset of conn,ka,bulk,cg1.conn,cg1.ka,cg1.bulk,cg2.conn,cg2.ka
# (default all; for iterating on one figure). Each native phase also prints the frames the
# dataplane received and sent per unit (request, connection, KiB) in its window.
# The dataplane's own capacity through a proxy VIP, with no kernel on the path:
# fulcrum-loadgen (tools/loadgen: a DPDK process of its own, one lcore, smoltcp
# clients 198.18.0.100-115 and smoltcp backends 198.18.0.21-23:8080 answering a
# fixed 64-byte HTTP/1.1 response, every byte of every request and response
# checked) is joined to the dataplane (198.18.0.2, proxy VIP 198.18.1.1:80 ->
# the three backends) by net_memif: the dataplane's port is the memif server,
# the generator's the client, over a control socket /run/fulcrum-cap-<pid>-<n>.sock
# and shared memory. Both --no-pci, unique --file-prefix each; 2 MB hugepages
# (files unlinked once mapped) when enough are free, else --no-huge (--no-huge forces it).
# One dataplane lcore on CPU 1, the generator on CPU 0 (this script too). Phases:
#   (a) new connections/s: one request per connection, the backend closes after
#       its response (Connection: close), --conn-connections at once (default 128);
#   (b) keep-alive requests/s: --ka-connections open connections (default 128),
#       one request in flight on each, so that many in flight in all;
#   (c) bulk: --bulk-connections (default 8) connections each streaming a
#       verified pattern from a backend; Gbps of payload through the VIP.
# Each phase: a fresh dataplane and generator, --warmup s (default 3), then a
# --duration s window (default 10) sampled at both ends: the generator's status
# file (verified responses / payload bytes, its own busy_ns) and the dataplane's
# stats file (the lcore's busy_ns: time in loop iterations that had work).
# Printed per phase: the raw rate; the lcore's busy share (busy_ns / window) and
# its thread's CPU share (on-CPU time from /proc/<pid>/task/<tid>/schedstat); the
# rate per busy second of the lcore = raw rate / min(busy share, CPU share): the
# capacity figure, what one fully busy lcore would do, valid as long as the
# generator (or the round trips between the two) is what holds the raw rate back;
# with 2 cores the generator usually saturates first. Why the min: the lcore's
# real work time is at most its busy time (wall time of iterations that had work,
# which on a shared machine includes being preempted inside them) and at most its
# CPU time (which includes idle spinning before the back-off sleeps), so dividing
# by the smaller gives the tighter figure that is still a lower bound. Busy-time
# cycles per request (or per byte) = that time x TSC Hz / units; the generator's
# busy share and its thread's CPU share, so the reader sees which side
# saturated. perf stat -e instructions:u,cycles:u on the lcore's thread when the
# machine has hardware counters (checked with `perf stat -e instructions:u true`;
# VMs like these print <not supported>: then said so and skipped).
# Instructions per request: callgrind. The dataplane runs under
# `valgrind --tool=callgrind --toggle-collect='*Worker::run*'` (only the lcore
# loops; EAL, control and stats threads excluded), the generator natively: under
# valgrind the dataplane is ~50x slower, so its lcores are saturated (every loop
# iteration has work, so no busy-poll idle iterations inflate the count; the
# lcores' busy share in the window is printed to show it). After 4 s of warm-up
# (ARP, first connections) the counters are zeroed (callgrind_control -z) and
# --callgrind-seconds (default 10) later dumped (-d); instructions / responses
# verified by the generator in between (read just before and after each command,
# their mean), bulk: per KiB of payload. Done for (a), (b), (c) with one lcore and
# for (a), (b) with TWO lcores (lcores 0,1, two memif queue pairs; the generator
# spreads its shards over both queues, the dataplane steers each flow to its
# owner lcore), whose instructions per request (summed over both lcores) are
# compared with one lcore's (two lcores and a generator do not fit two cores, so
# rates are not compared). Valgrind runs one thread at a time, so two lcores are
# not both saturated: one runs dry while the other holds the CPU, and its idle
# iterations (1024 spins before each back-off sleep) land in the lcore-loop count.
# So each run also gives the instructions inside Worker::receive and Engine::poll
# only (the inclusive costs of Worker::run's calls to them, from the same dump): no idle iteration
# calls them, so that figure is idle-free at any load, and its 2/1 ratio is the
# comparison to read (it leaves out the per-iteration driver RX/TX calls and loop
# overhead, ~3% of a saturated lcore's loop here). Saturated lcores process full
# bursts: these are the instructions of a busy dataplane.
# --reference-bin PATH: another fulcrum-dataplane (e.g. main's build) runs each
# native phase and the one-lcore callgrind phases (a), (b) too, right after this
# build's, same generator, config and CPUs; a last table gives both and this/ref,
# so a change is measured against the code before it in one invocation.
# DPVS's published figure (200k new connections/s per worker, FullNAT, real NICs)
# is printed beside ours as a reference line. Last line:
#   capacity: <N> new connections/s, <M> requests/s per lcore
# (N, M per busy lcore-second). Every wait is bounded; processes, sockets,
# /var/run/dpdk/<prefix> and the work directory are removed on exit, also on failure.
# Not part of scripts/test.sh: it prints figures and asserts none (the generator
# does fail the run if any response or request differed from what was sent).

cap_usage() { sed -n '/^# scripts\/bench.sh capacity/,/^# Not part of scripts\/test.sh: it prints figures and asserts none (the generator/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

CAP_DP_PID=""
CAP_GEN_PID=""
CAP_WORK=""
CAP_PREFIXES=()
CAP_SOCKETS=()

cap_cleanup() {
    local rc=$? p
    set +e
    [ -n "$CAP_GEN_PID" ] && kill -KILL "$CAP_GEN_PID" 2>/dev/null
    [ -n "$CAP_DP_PID" ] && kill -KILL "$CAP_DP_PID" 2>/dev/null
    wait 2>/dev/null
    for p in "${CAP_PREFIXES[@]}"; do rm -rf "/var/run/dpdk/$p"; done
    for p in "${CAP_SOCKETS[@]}"; do rm -f "$p"; done
    [ -n "$CAP_WORK" ] && rm -rf "$CAP_WORK"
    [ "$rc" -eq 0 ] || echo "bench $BENCH: FAILED (exit $rc)" >&2
}

# cap_stop PID SECONDS: SIGINT, a bounded wait, then SIGKILL; returns the exit status.
cap_stop() {
    local pid=$1 secs=$2 i rc=0
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq $((secs * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "    pid $pid did not stop in ${secs}s: killed" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    return "$rc"
}

# cap_gen_sample: "time responses bulk_bytes busy_ns closed_ok failed timeouts" from the generator's status file.
cap_gen_sample() {
    local i row
    for i in $(seq 50); do
        row=$(jq -r '[.time, .responses, .bulk_bytes, .busy_ns, .closed_ok, .failed, .timeouts] | @tsv' "$1" 2>/dev/null) && [ -n "$row" ] && { echo "$row"; return 0; }
        sleep 0.02
    done
    die "could not read the generator's status file $1"
}

# cap_run_ns PID TID: nanoseconds the thread has run on a CPU (schedstat), 0 if unknown.
cap_run_ns() { awk '{ print $1 + 0 }' "/proc/$1/task/$2/schedstat" 2>/dev/null || echo 0; }

# cap_config FILE PREFIX SOCKET LCORES [valgrind]: the dataplane's configuration
# (tools/loadgen/dataplane.toml, shared with tests/tests/loadgen.rs).
cap_config() {
    local mem='hugepages = "on"'
    [ "$CAP_HUGE" = 1 ] || mem='hugepages = "off", no_huge_memory_mb = 512'
    # Under callgrind always without hugepages (valgrind maps no hugetlbfs).
    [ "${5:-}" = valgrind ] && mem='hugepages = "off", no_huge_memory_mb = 256'
    sed -e "s|@FILE_PREFIX@|$2|" -e "s|@SOCKET@|$3|" -e "s|@LCORES@|$4|" -e "s|@MEMORY@|$mem|" \
        "$ROOT/tools/loadgen/dataplane.toml" >"$1"
}

# cap_start NAME MODE LCORES CONNS GEN_SECONDS [valgrind]: starts a dataplane (under
# callgrind with "valgrind") and the generator against it; sets CAP_DIR.
cap_start() {
    local name=$1 mode=$2 lcores=$3 conns=$4 secs=$5 vg=${6:-}
    CAP_N=$((CAP_N + 1))
    CAP_DIR=$CAP_WORK/$name
    mkdir -p "$CAP_DIR"
    local dprefix="${CAP_P}-dp-$$-$CAP_N" gprefix="${CAP_P}-gen-$$-$CAP_N" sock="/run/fulcrum-cap-$$-$CAP_N.sock"
    CAP_PREFIXES+=("$dprefix" "$gprefix")
    CAP_SOCKETS+=("$sock")
    rm -f "$sock"
    cap_config "$CAP_DIR/fulcrum.toml" "$dprefix" "$sock" "$lcores" "$vg"
    local queues
    queues=$(echo "$lcores" | tr ',' '\n' | wc -l)
    local ready_wait=600
    if [ "$vg" = valgrind ]; then
        valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*Worker::run*' \
            --callgrind-out-file="$CAP_DIR/callgrind.out" \
            "${CAP_BIN_NOW:-$CAP_DP_BIN}" --config "$CAP_DIR/fulcrum.toml" --stats-file "$CAP_DIR/stats.json" >"$CAP_DIR/dataplane.log" 2>&1 &
        ready_wait=3000
    else
        "${CAP_BIN_NOW:-$CAP_DP_BIN}" --config "$CAP_DIR/fulcrum.toml" --stats-file "$CAP_DIR/stats.json" >"$CAP_DIR/dataplane.log" 2>&1 &
    fi
    CAP_DP_PID=$!
    local i
    for i in $(seq "$ready_wait"); do
        grep -q ' ready: ' "$CAP_DIR/dataplane.log" && break
        kill -0 "$CAP_DP_PID" 2>/dev/null || { tail -n 20 "$CAP_DIR/dataplane.log" >&2; die "the dataplane exited"; }
        sleep 0.1
    done
    grep -q ' ready: ' "$CAP_DIR/dataplane.log" || { tail -n 20 "$CAP_DIR/dataplane.log" >&2; die "the dataplane was not ready in $((ready_wait / 10)) s"; }
    local huge=()
    [ "$CAP_HUGE" = 1 ] || huge=(--no-huge --memory-mb 768)
    "$CAP_GEN_BIN" --socket "$sock" --file-prefix "$gprefix" --lcore 0 --mode "$mode" --connections "$conns" \
        --queues "$queues" --duration "$secs" --status-file "$CAP_DIR/gen.json" --linger 120 --link-timeout 60 "${huge[@]}" \
        >"$CAP_DIR/gen.out" 2>"$CAP_DIR/gen.err" &
    CAP_GEN_PID=$!
    for i in $(seq 900); do
        grep -q 'memif link up' "$CAP_DIR/gen.err" 2>/dev/null && break
        kill -0 "$CAP_GEN_PID" 2>/dev/null || { tail -n 20 "$CAP_DIR/gen.err" >&2; die "the generator exited"; }
        sleep 0.1
    done
    grep -q 'memif link up' "$CAP_DIR/gen.err" || { tail -n 20 "$CAP_DIR/gen.err" >&2; die "the memif link did not come up in 90 s"; }
}

# cap_finish SECONDS: waits (bounded) for the generator's summary (JSON), stops the
# dataplane first (a memif peer that goes away under a polling lcore can crash it),
# then the generator; dies if the generator found a bad byte. Prints its summary.
cap_finish() {
    local secs=$1 i
    for i in $(seq $((secs * 10))); do
        grep -q '^{' "$CAP_DIR/gen.out" && break
        kill -0 "$CAP_GEN_PID" 2>/dev/null || break
        sleep 0.1
    done
    cap_stop "$CAP_DP_PID" 120 || echo "    the dataplane exited with status $?" >&2
    CAP_DP_PID=""
    local rc=0
    cap_stop "$CAP_GEN_PID" 30 || rc=$?
    CAP_GEN_PID=""
    grep -q '^{' "$CAP_DIR/gen.out" || { tail -n 20 "$CAP_DIR/gen.err" >&2; die "the generator printed no summary"; }
    [ "$rc" -eq 0 ] || { tail -n 5 "$CAP_DIR/gen.err" >&2; die "the generator failed (exit $rc): $(grep -o 'error: .*' "$CAP_DIR/gen.err" | tail -n 1)"; }
    # The summary: one JSON record (fulcrum-loadgen-status's Status) on stdout.
    echo "    generator: $(jq -r 'del(.time, .mode, .loops, .rx_missed, .unknown, .inbox_full, .in_flight) | to_entries | map("\(.key)=\(.value)") | join(" ")' "$CAP_DIR/gen.out")" >&2
    echo "    dataplane: $(grep -o 'lcore [0-9]*: rx .*' "$CAP_DIR/dataplane.log" | tr '\n' ';' | sed 's/;$//')" >&2
}

# cap_window NAME MODE CONNS: one native measurement; sets C[NAME.*].
cap_window() {
    local name=$1 mode=$2 conns=$3
    say "$name: $mode, $conns connections, one lcore (CPU 1), generator on CPU 0: ${CAP_WARMUP}s warm-up, ${CAP_DURATION}s window"
    cap_start "$name" "$mode" 1 "$conns" $((CAP_WARMUP + CAP_DURATION + 3))
    local k0 k1 k2 tid
    k0=$(thread_ticks "$CAP_DP_PID")
    sleep "$CAP_WARMUP"
    k1=$(thread_ticks "$CAP_DP_PID")
    # The lcore's thread: the one that ran most during the warm-up.
    tid=$(awk 'NR == FNR { a[$1] = $2; next } ($1 in a) { d = $2 - a[$1]; if (d >= m) { m = d; t = $1 } } END { print t }' <(echo "$k0") <(echo "$k1"))
    local g1 d1 g2 d2 gk1 gk2 perf_out="" gtid r1 r2 gr1 gr2
    gk1=$(thread_ticks "$CAP_GEN_PID")
    d1=$(stats_fresh_sample "$CAP_DIR/stats.json" '([.lcores[].busy_ns] | add), ([.lcores[].rx_packets] | add), ([.lcores[].tx_packets] | add)' | tr '\n' ' ')
    g1=$(cap_gen_sample "$CAP_DIR/gen.json")
    r1=$(cap_run_ns "$CAP_DP_PID" "$tid")
    # The generator's polling thread: the one that ran most so far.
    gtid=$(echo "$gk1" | sort -k2,2nr | awk 'NR == 1 { print $1 }')
    gr1=$(cap_run_ns "$CAP_GEN_PID" "$gtid")
    if [ "$CAP_PERF" = 1 ]; then
        perf stat -x, -e instructions:u,cycles:u -t "$tid" -o "$CAP_DIR/perf.csv" -- sleep "$CAP_DURATION" 2>/dev/null || true
        perf_out=$CAP_DIR/perf.csv
    else
        sleep "$CAP_DURATION"
    fi
    d2=$(stats_fresh_sample "$CAP_DIR/stats.json" '([.lcores[].busy_ns] | add), ([.lcores[].rx_packets] | add), ([.lcores[].tx_packets] | add)' | tr '\n' ' ')
    g2=$(cap_gen_sample "$CAP_DIR/gen.json")
    r2=$(cap_run_ns "$CAP_DP_PID" "$tid")
    gr2=$(cap_run_ns "$CAP_GEN_PID" "$gtid")
    cap_finish 60
    # Frames the dataplane received and sent per unit in the window (the ACK work).
    local fr1 ft1 fr2 ft2
    read -r _ _ fr1 ft1 <<<"$d1"; read -r _ _ fr2 ft2 <<<"$d2"
    d1=$(echo "$d1" | cut -d' ' -f1,2); d2=$(echo "$d2" | cut -d' ' -f1,2)
    local hz gen_ticks dp_ticks
    hz=$(getconf CLK_TCK)
    # On-CPU nanoseconds, as CLK_TCK ticks for the computation below.
    gen_ticks=$(awk -v a="$gr1" -v b="$gr2" -v hz="$hz" 'BEGIN { print (b - a) * hz / 1e9 }')
    dp_ticks=$(awk -v a="$r1" -v b="$r2" -v hz="$hz" 'BEGIN { print (b - a) * hz / 1e9 }')
    local instr="" cyc=""
    if [ -n "$perf_out" ] && [ -s "$perf_out" ]; then
        instr=$(awk -F, '$3 ~ /^instructions/ && $1 ~ /^[0-9]+$/ { print $1 }' "$perf_out")
        cyc=$(awk -F, '$3 ~ /^cycles/ && $1 ~ /^[0-9]+$/ { print $1 }' "$perf_out")
    fi
    # shellcheck disable=SC2086
    set -- $d1 $d2 $g1 $g2
    # $1 dt1 $2 busy1 | $3 dt2 $4 busy2 | $5 t1 $6 resp1 $7 bytes1 $8 gbusy1 $9 ok1 ${10} failed1 ${11} to1 | ${12} t2 ${13} resp2 ${14} bytes2 ${15} gbusy2 ${16} ok2 ${17} failed2 ${18} to2
    read -r C[$name.rate] C[$name.busy] C[$name.per_busy] C[$name.cycles] C[$name.gen_busy] C[$name.gen_cpu] C[$name.dp_cpu] C[$name.pinstr] C[$name.pcyc] C[$name.errors] < <(
        awk -v mode="$mode" -v mhz="$CAP_MHZ" -v hz="$hz" -v gt="$gen_ticks" -v dt_ticks="${dp_ticks:-0}" -v pi="${instr:-}" -v pc="${cyc:-}" \
            -v dp1="$1" -v b1="$2" -v dp2="$3" -v b2="$4" -v t1="$5" -v r1="$6" -v y1="$7" -v gb1="$8" -v f1="${10}" -v o1="${11}" \
            -v t2="${12}" -v r2="${13}" -v y2="${14}" -v gb2="${15}" -v f2="${17}" -v o2="${18}" 'BEGIN {
            gdt = t2 - t1; ddt = dp2 - dp1
            if (gdt <= 0 || ddt <= 0) { print "nan nan nan nan nan nan nan n/a n/a nan"; exit }
            units = (mode == "bulk") ? (y2 - y1) : (r2 - r1)
            rate = (mode == "bulk") ? units * 8 / gdt / 1e9 : units / gdt
            busy = (b2 - b1) / 1e9 / ddt
            cpu = dt_ticks / hz / gdt
            # Work time <= busy time (which includes preemption inside busy
            # iterations) and <= CPU time (which includes idle spinning): the
            # smaller is the tighter bound, so rate / it is a lower bound on
            # what a fully busy lcore does.
            work = (cpu > 0 && cpu < busy) ? cpu : busy
            per = (work > 0) ? rate / work : 0
            # busy-time cycles per unit (request, or byte for bulk)
            cyc = (units > 0) ? work * gdt * mhz * 1e6 / units : 0
            pinstr = (pi != "" && units > 0) ? sprintf("%.0f", pi / units) : "n/a"
            pcyc = (pc != "" && units > 0) ? sprintf("%.0f", pc / units) : "n/a"
            printf "%s %.2f %s %s %.2f %.2f %.2f %s %s %d\n", (mode == "bulk") ? sprintf("%.2f", rate) : sprintf("%.0f", rate), busy,
                (mode == "bulk") ? sprintf("%.2f", per) : sprintf("%.0f", per), (mode == "bulk") ? sprintf("%.2f", cyc) : sprintf("%.0f", cyc),
                (gb2 - gb1) / 1e9 / gdt, gt / hz / gdt, dt_ticks / hz / gdt, pinstr, pcyc, (f2 - f1) + (o2 - o1)
        }')
    read -r C[$name.frx] C[$name.ftx] < <(awk -v m="$mode" -v a="$fr1" -v b="$fr2" -v c="$ft1" -v d="$ft2" -v u1="$(echo "$g1" | cut -f2,3)" -v u2="$(echo "$g2" | cut -f2,3)" 'BEGIN {
        split(u1, x, "\t"); split(u2, y, "\t"); u = (m == "bulk") ? (y[2] - x[2]) / 1024 : y[1] - x[1]
        if (u <= 0) { print "n/a n/a"; exit } printf "%.2f %.2f\n", (b - a) / u, (d - c) / u }')
    echo "    frames per $([ "$mode" = bulk ] && echo KiB || echo unit) in the window: dataplane received ${C[$name.frx]}, sent ${C[$name.ftx]}" >&2
    echo "    window: ${C[$name.rate]} $( [ "$mode" = bulk ] && echo Gbps || echo /s ), lcore busy ${C[$name.busy]} (CPU ${C[$name.dp_cpu]}), per busy lcore-second ${C[$name.per_busy]}; generator busy ${C[$name.gen_busy]} (CPU ${C[$name.gen_cpu]}); failed+timeouts ${C[$name.errors]}" >&2
}

# cap_cg_work FILE: instructions in the calls Worker::run makes to
# Worker::receive and Engine::poll (the inclusive costs on those call edges of
# the callgrind dump; names compressed or not): the lcore's work on received
# frames and in the engine, never run by an idle iteration (the loop calls them
# only with frames or a due timer).
cap_cg_work() {
    awk 'function nm(s,   id, rest) {
             if (match(s, /^\([0-9]+\)/)) {
                 id = substr(s, 1, RLENGTH); rest = substr(s, RLENGTH + 2)
                 if (rest != "") names[id] = rest
                 return names[id]
             }
             return s
         }
         /^fn=/ { f = nm(substr($0, 4)); inrun = (f == "fulcrum_dataplane::worker::Worker::run"); next }
         /^cfn=/ { c = nm(substr($0, 5)); next }
         /^calls=/ {
             want = inrun && (c == "fulcrum_dataplane::worker::Worker::receive" || c == "fulcrum_proxy::engine::Engine::poll")
             getline
             if (want) s += $2
             next
         }
         END { printf "%.0f\n", s }' "$1"
}

# cap_callgrind NAME MODE LCORES CONNS: instructions in the lcore loop(s) per
# verified response (bulk: per KiB of payload), dataplane under callgrind, counted
# in a window: counters zeroed (callgrind_control -z) after CAP_CG_WARMUP seconds,
# dumped (-d) CAP_CG_SECONDS later; the generator's counts are read just before
# and just after each command (their mean). Sets C[NAME.instr], C[NAME.busy].
cap_callgrind() {
    local name=$1 mode=$2 lcores=$3 conns=$4
    say "$name: $mode, $conns connections, lcores $lcores under callgrind: ${CAP_CG_WARMUP}s warm-up, ${CAP_CG_SECONDS}s window"
    cap_start "$name" "$mode" "$lcores" "$conns" $((CAP_CG_WARMUP + CAP_CG_SECONDS + 10)) valgrind
    sleep "$CAP_CG_WARMUP"
    local a1 a2 b1 b2 d1 d2
    d1=$(stats_sample "$CAP_DIR/stats.json" '[.lcores[].busy_ns] | add')
    a1=$(cap_gen_sample "$CAP_DIR/gen.json")
    timeout 60 callgrind_control -z "$CAP_DP_PID" >"$CAP_DIR/cgctl.log" 2>&1 || { cat "$CAP_DIR/cgctl.log" >&2; die "callgrind_control -z failed"; }
    a2=$(cap_gen_sample "$CAP_DIR/gen.json")
    sleep "$CAP_CG_SECONDS"
    b1=$(cap_gen_sample "$CAP_DIR/gen.json")
    timeout 60 callgrind_control -d "$CAP_DP_PID" >>"$CAP_DIR/cgctl.log" 2>&1 || { cat "$CAP_DIR/cgctl.log" >&2; die "callgrind_control -d failed"; }
    b2=$(cap_gen_sample "$CAP_DIR/gen.json")
    d2=$(stats_sample "$CAP_DIR/stats.json" '[.lcores[].busy_ns] | add')
    cap_finish $((CAP_CG_SECONDS + 60))
    local dump=$CAP_DIR/callgrind.out.1 total col unit
    [ -s "$dump" ] || die "callgrind wrote no dump ($dump)"
    total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dump")
    [ -n "$total" ] && [ "$total" -gt 0 ] || die "no instruction total in $dump"
    # status row: time responses bulk_bytes ...
    if [ "$mode" = bulk ]; then col=3; unit=KiB; else col=2; unit=request; fi
    local work
    work=$(cap_cg_work "$dump")
    C[$name.work]=$(awk -v w="$work" -v a1="$a1" -v a2="$a2" -v b1="$b1" -v b2="$b2" -v c="$col" -v bulk="$([ "$mode" = bulk ] && echo 1 || echo 0)" 'BEGIN {
        split(a1, x1, "\t"); split(a2, x2, "\t"); split(b1, y1, "\t"); split(b2, y2, "\t")
        u = (y1[c] + y2[c]) / 2 - (x1[c] + x2[c]) / 2
        if (u <= 0 || w <= 0) { print "n/a"; exit }
        if (bulk) printf "%.1f\n", w / (u / 1024); else printf "%.0f\n", w / u }')
    read -r C[$name.instr] C[$name.units] C[$name.busy] < <(awk -v t="$total" -v c="$col" -v bulk="$([ "$mode" = bulk ] && echo 1 || echo 0)" \
        -v a1="$a1" -v a2="$a2" -v b1="$b1" -v b2="$b2" -v d1="$d1" -v d2="$d2" -v n="$(echo "$lcores" | tr ',' '\n' | wc -l)" 'BEGIN {
        split(a1, x1, "\t"); split(a2, x2, "\t"); split(b1, y1, "\t"); split(b2, y2, "\t"); split(d1, p, " "); split(d2, q, " ")
        u = (y1[c] + y2[c]) / 2 - (x1[c] + x2[c]) / 2
        busy = (q[1] > p[1]) ? (q[2] - p[2]) / 1e9 / (q[1] - p[1]) / n : 0
        if (u <= 0) { printf "n/a 0 %.2f\n", busy; exit }
        printf "%s %.0f %.2f\n", bulk ? sprintf("%.1f", t / (u / 1024)) : sprintf("%.0f", t / u), u, busy }')
    echo "    callgrind: $total instructions in the lcore loop(s) for ${C[$name.units]} $([ "$mode" = bulk ] && echo "payload bytes" || echo responses) = ${C[$name.instr]} per $unit (receive + engine only: ${C[$name.work]}); lcore(s) busy ${C[$name.busy]} of the window (1.00: saturated)" >&2
}

# cap_per_busy RATE SHARE DECIMALS: RATE / SHARE.
cap_per_busy() { awk -v r="$1" -v b="$2" -v d="$3" 'BEGIN { if (r == "nan" || b == "nan" || b + 0 <= 0) print "n/a"; else printf "%.*f", d, r / b }'; }

cap_main() {
    CAP_DURATION=10
    CAP_WARMUP=3
    CAP_CG_SECONDS=10
    CAP_CG_WARMUP=4
    CAP_P=cap
    CAP_HUGE=1
    local conn_c=128 ka_c=128 bulk_c=8 callgrind=1 ref="" phases=",conn,ka,bulk,cg1.conn,cg1.ka,cg1.bulk,cg2.conn,cg2.ka,"
    while [ $# -gt 0 ]; do
        case "$1" in
            --duration) CAP_DURATION=$2; shift 2 ;;
            --warmup) CAP_WARMUP=$2; shift 2 ;;
            --conn-connections) conn_c=$2; shift 2 ;;
            --ka-connections) ka_c=$2; shift 2 ;;
            --bulk-connections) bulk_c=$2; shift 2 ;;
            --callgrind-seconds) CAP_CG_SECONDS=$2; shift 2 ;;
            --no-callgrind) callgrind=0; shift ;;
            --no-huge) CAP_HUGE=0; shift ;;
            --prefix) CAP_P=$2; shift 2 ;;
            --reference-bin) ref=$2; shift 2 ;;
            --phases) phases=",$2,"; shift 2 ;;
            -h|--help) cap_usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ "$CAP_DURATION" =~ ^[0-9]+$ ]] && [ "$CAP_DURATION" -ge 2 ] && [ "$CAP_DURATION" -le 120 ] || die "--duration: 2..120 seconds"
    [[ "$CAP_WARMUP" =~ ^[0-9]+$ ]] && [ "$CAP_WARMUP" -ge 1 ] && [ "$CAP_WARMUP" -le 60 ] || die "--warmup: 1..60 seconds"
    [[ "$CAP_CG_SECONDS" =~ ^[0-9]+$ ]] && [ "$CAP_CG_SECONDS" -ge 2 ] && [ "$CAP_CG_SECONDS" -le 120 ] || die "--callgrind-seconds: 2..120"
    local v
    for v in "$conn_c" "$ka_c" "$bulk_c"; do
        [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -ge 1 ] && [ "$v" -le 20000 ] || die "connections: 1..20000"
    done
    [[ "$CAP_P" =~ ^[A-Za-z0-9_-]{1,20}$ ]] && [ "${CAP_P#-}" = "$CAP_P" ] || die "--prefix: 1 to 20 of A-Z a-z 0-9 - _, not starting with -"
    [ "$(id -u)" -eq 0 ] || die "needs root (DPDK)"
    [ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (one for the dataplane's lcore, one for the generator)"
    local t
    for t in jq awk taskset; do command -v "$t" >/dev/null || die "$t not found (scripts/setup.sh installs it)"; done
    if [ "$callgrind" = 1 ]; then
        for t in valgrind callgrind_control; do command -v "$t" >/dev/null || die "$t not found (or pass --no-callgrind)"; done
    fi
    [ -e /usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0/librte_net_memif.so ] || ls /usr/lib/*/dpdk/pmds-*/librte_net_memif.so >/dev/null 2>&1 ||
        die "DPDK's net_memif PMD (librte_net_memif.so) is not installed"

    trap cap_cleanup EXIT
    trap 'exit 130' INT TERM
    taskset -pc 0 $$ >/dev/null

    if [ -n "${FULCRUM_BIN_DIR:-}" ]; then
        CAP_DP_BIN=$FULCRUM_BIN_DIR/fulcrum-dataplane
        CAP_GEN_BIN=$FULCRUM_BIN_DIR/fulcrum-loadgen
    else
        say "build (release): fulcrum-dataplane, fulcrum-loadgen"
        cargo build --release -p fulcrum-dataplane -p fulcrum-loadgen 2>&1 | tail -n 1 >&2
        CAP_DP_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/fulcrum-dataplane
        CAP_GEN_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/fulcrum-loadgen
    fi
    [ -x "$CAP_DP_BIN" ] || die "$CAP_DP_BIN not found"
    [ -z "$ref" ] || [ -x "$ref" ] || die "--reference-bin: $ref is not an executable"
    [ -x "$CAP_GEN_BIN" ] || die "$CAP_GEN_BIN not found"
    CAP_WORK=$(mktemp -d /tmp/fulcrum-bench-capacity.XXXXXX)
    CAP_N=0
    CAP_MHZ=$(awk -F: '/^cpu MHz/ { gsub(/ /, "", $2); print $2; exit }' /proc/cpuinfo)
    [ -n "$CAP_MHZ" ] || die "no 'cpu MHz' in /proc/cpuinfo"
    if [ "$CAP_HUGE" = 1 ]; then
        # dataplane 16383 + generator 32767 mbufs (~2.4 KiB each) + EAL: ~256 MB.
        local free
        free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
        if ! awk '$3 == "hugetlbfs" { f = 1 } END { exit !f }' /proc/mounts || [ "${free:-0}" -lt 200 ]; then
            echo "bench $BENCH: fewer than 200 free 2 MB hugepages or no hugetlbfs mount: both run with --no-huge" >&2
            CAP_HUGE=0
        fi
    fi
    CAP_PERF=0
    local perf_note
    if ! command -v perf >/dev/null; then
        perf_note="perf not installed"
    elif perf stat -x, -e instructions:u,cycles:u true 2>&1 | grep -q '^[0-9][0-9]*,.*instructions'; then
        CAP_PERF=1
        perf_note="perf stat -e instructions:u,cycles:u on the lcore's thread"
    else
        perf_note="perf stat -e instructions:u,cycles:u: <not supported> here (no hardware PMU in this VM): no perf figures"
    fi
    echo "bench $BENCH: $perf_note" >&2

    declare -gA C
    CAP_BIN_NOW=""
    # cap_both FUNCTION NAME ARGS...: this build, then (with --reference-bin) the reference as ref.NAME.
    cap_both() {
        local fn=$1 name=$2
        shift 2
        CAP_BIN_NOW=""
        "$fn" "$name" "$@"
        if [ -n "$ref" ]; then
            CAP_BIN_NOW=$ref
            "$fn" "ref.$name" "$@"
            CAP_BIN_NOW=""
        fi
    }
    # cap_phase NAME CMD...: runs CMD when --phases lists NAME (default: all).
    cap_phase() { local n=$1; shift; [[ "$phases" == *",$n,"* ]] && "$@"; return 0; }
    cap_phase conn cap_both cap_window conn conn "$conn_c"
    cap_phase ka cap_both cap_window ka keepalive "$ka_c"
    cap_phase bulk cap_both cap_window bulk bulk "$bulk_c"
    if [ "$callgrind" = 1 ]; then
        cap_phase cg1.conn cap_both cap_callgrind cg1.conn conn 1 "$conn_c"
        cap_phase cg1.ka cap_both cap_callgrind cg1.ka keepalive 1 "$ka_c"
        cap_phase cg1.bulk cap_both cap_callgrind cg1.bulk bulk 1 "$bulk_c"
        cap_phase cg2.conn cap_callgrind cg2.conn conn 0,1 "$conn_c"
        cap_phase cg2.ka cap_callgrind cg2.ka keepalive 0,1 "$ka_c"
    fi
    local na=n/a
    for v in cg1.conn cg1.ka cg1.bulk cg2.conn cg2.ka; do C[$v.instr]=${C[$v.instr]:-$na}; C[$v.busy]=${C[$v.busy]:-$na}; C[$v.work]=${C[$v.work]:-$na}; done

    echo
    echo "Fulcrum capacity through proxy VIP 198.18.1.1:80 -> 3 backends, ONE dataplane lcore (CPU 1), no kernel on the path:"
    echo "fulcrum-loadgen (smoltcp clients + backends, DPDK, CPU 0) <-> net_memif <-> fulcrum-dataplane; ${CAP_DURATION}s windows after ${CAP_WARMUP}s warm-up"
    echo "($(if [ "$CAP_HUGE" = 1 ]; then echo "2 MB hugepages"; else echo "--no-huge"; fi); TSC ${CAP_MHZ} MHz; load average now $(cut -d' ' -f1 /proc/loadavg) on $(getconf _NPROCESSORS_ONLN) CPUs)"
    local f='%-26s %10s %6s %6s %14s %13s %14s %6s %6s %8s\n' k
    # Phases left out by --phases print n/a.
    for v in conn ka bulk; do
        for k in rate busy dp_cpu per_busy cycles gen_busy gen_cpu pinstr errors; do C[$v.$k]=${C[$v.$k]:-$na}; done
    done
    # shellcheck disable=SC2059
    {
    printf "$f" phase "raw rate" lcore lcore "per busy" busy-cycles instructions gen gen perf
    printf "$f" "" "" busy CPU lcore-second "per unit" "per unit (cg)" busy CPU "instr/u"
    printf "$f" -------------------------- ---------- ------ ------ -------------- ------------- -------------- ------ ------ --------
    printf "$f" "(a) new connections/s" "${C[conn.rate]}" "${C[conn.busy]}" "${C[conn.dp_cpu]}" "${C[conn.per_busy]}" "${C[conn.cycles]}/conn" "${C[cg1.conn.instr]}/conn" "${C[conn.gen_busy]}" "${C[conn.gen_cpu]}" "${C[conn.pinstr]}"
    printf "$f" "(b) keep-alive requests/s" "${C[ka.rate]}" "${C[ka.busy]}" "${C[ka.dp_cpu]}" "${C[ka.per_busy]}" "${C[ka.cycles]}/req" "${C[cg1.ka.instr]}/req" "${C[ka.gen_busy]}" "${C[ka.gen_cpu]}" "${C[ka.pinstr]}"
    printf "$f" "(c) bulk Gbps (payload)" "${C[bulk.rate]}" "${C[bulk.busy]}" "${C[bulk.dp_cpu]}" "${C[bulk.per_busy]}" "${C[bulk.cycles]}/B" "${C[cg1.bulk.instr]}/KiB" "${C[bulk.gen_busy]}" "${C[bulk.gen_cpu]}" "${C[bulk.pinstr]}"
    }
    echo "raw rate: measured; lcore busy: the lcore's busy_ns / window (loop iterations that had work; idle ones back off),"
    echo "lcore CPU: its thread's on-CPU share (schedstat; busy + idle spinning; below busy: it was preempted inside busy"
    echo "iterations); per busy lcore-second = raw rate / min(lcore busy, lcore CPU): the capacity figure, a lower bound on"
    echo "what a fully busy lcore does (the raw rate was held back by the generator, or by the round trips between the"
    echo "two, whenever the lcore was not busy all the time); busy-cycles = that time x TSC per unit;"
    echo "instructions (cg) = callgrind, lcore loop, saturated (below); gen busy = the generator's own busy_ns share (iterations"
    echo "with work), gen CPU = its thread's CPU share (it busy-polls: below 1.00, other processes took CPU 0 from it)."
    echo "by busy_ns alone (raw rate / lcore busy; on a shared machine busy_ns also counts preemption inside busy iterations):"
    echo "(a) $(cap_per_busy "${C[conn.rate]}" "${C[conn.busy]}" 0) new connections/s, (b) $(cap_per_busy "${C[ka.rate]}" "${C[ka.busy]}" 0) requests/s, (c) $(cap_per_busy "${C[bulk.rate]}" "${C[bulk.busy]}" 2) Gbps per busy lcore-second."
    echo "connections at once: (a) $conn_c, (b) $ka_c (one request in flight each), (c) $bulk_c streams; failed+timed out in the"
    echo "windows: (a) ${C[conn.errors]}, (b) ${C[ka.errors]}, (c) ${C[bulk.errors]}. $perf_note."
    echo "frames the dataplane received/sent per unit: (a) ${C[conn.frx]:-n/a}/${C[conn.ftx]:-n/a} per connection," \
        "(b) ${C[ka.frx]:-n/a}/${C[ka.ftx]:-n/a} per request, (c) ${C[bulk.frx]:-n/a}/${C[bulk.ftx]:-n/a} per KiB"
    if [ "$callgrind" = 1 ]; then
        echo
        echo "Instructions per request (callgrind), one vs TWO dataplane lcores. 'lcore loop': everything in Worker::run;"
        echo "'receive+engine': only Worker::receive and Engine::poll, which no idle iteration runs (so busy-poll idle"
        echo "iterations cannot inflate it; it leaves out the per-iteration driver RX/TX calls and loop overhead). busy: the"
        echo "lcores' busy share in the window (1.00: saturated, the two figures then differ only by that per-iteration work)."
        printf '%-36s %14s %14s %10s\n' "" "1 lcore" "2 lcores" "2/1"
        printf '%-36s %14s %14s %10s\n' ------------------------------------ -------------- -------------- ----------
        printf '%-36s %14s %14s %10s\n' "(a) new connection, lcore loop" "${C[cg1.conn.instr]}" "${C[cg2.conn.instr]}" "$(fwd_ratio "${C[cg2.conn.instr]}" "${C[cg1.conn.instr]}")"
        printf '%-36s %14s %14s %10s\n' "(a) new connection, receive+engine" "${C[cg1.conn.work]}" "${C[cg2.conn.work]}" "$(fwd_ratio "${C[cg2.conn.work]}" "${C[cg1.conn.work]}")"
        printf '%-36s %14s %14s %10s\n' "(b) keep-alive, lcore loop" "${C[cg1.ka.instr]}" "${C[cg2.ka.instr]}" "$(fwd_ratio "${C[cg2.ka.instr]}" "${C[cg1.ka.instr]}")"
        printf '%-36s %14s %14s %10s\n' "(b) keep-alive, receive+engine" "${C[cg1.ka.work]}" "${C[cg2.ka.work]}" "$(fwd_ratio "${C[cg2.ka.work]}" "${C[cg1.ka.work]}")"
        printf '%-36s %14s %14s\n' "    busy (a)" "${C[cg1.conn.busy]}" "${C[cg2.conn.busy]}"
        printf '%-36s %14s %14s\n' "    busy (b)" "${C[cg1.ka.busy]}" "${C[cg2.ka.busy]}"
        echo "(c) bulk, one lcore: ${C[cg1.bulk.instr]} instructions per KiB of payload in the lcore loop, ${C[cg1.bulk.work]} in"
        echo "    receive+engine (busy ${C[cg1.bulk.busy]})"
        echo "(two lcores: lcores 0,1, two memif queue pairs, flows steered to their owner lcore; rates not compared:"
        echo " two lcores and a generator do not fit two cores)"
    fi
    # Phases left out by --phases print n/a.
    for v in conn ka bulk ref.conn ref.ka ref.bulk; do C[$v.per_busy]=${C[$v.per_busy]:-$na}; C[$v.rate]=${C[$v.rate]:-$na}; done
    if [ -n "$ref" ]; then
        for v in ref.cg1.conn ref.cg1.ka ref.cg1.bulk cg1.conn cg1.ka cg1.bulk; do C[$v.instr]=${C[$v.instr]:-$na}; done
        echo
        echo "This build vs the reference ($ref), same run, same generator:"
        printf '%-44s %14s %14s %9s\n' metric "this build" reference this/ref
        printf '%-44s %14s %14s %9s\n' -------------------------------------------- -------------- -------------- ---------
        printf '%-44s %14s %14s %9s\n' "(a) new connections/s per busy lcore-second" "${C[conn.per_busy]}" "${C[ref.conn.per_busy]}" "$(fwd_ratio "${C[conn.per_busy]}" "${C[ref.conn.per_busy]}")"
        printf '%-44s %14s %14s %9s\n' "(b) keep-alive requests/s per busy lcore-s" "${C[ka.per_busy]}" "${C[ref.ka.per_busy]}" "$(fwd_ratio "${C[ka.per_busy]}" "${C[ref.ka.per_busy]}")"
        printf '%-44s %14s %14s %9s\n' "(c) bulk Gbps per busy lcore-second" "${C[bulk.per_busy]}" "${C[ref.bulk.per_busy]}" "$(fwd_ratio "${C[bulk.per_busy]}" "${C[ref.bulk.per_busy]}")"
        printf '%-44s %14s %14s %9s\n' "(a) raw new connections/s" "${C[conn.rate]}" "${C[ref.conn.rate]}" "$(fwd_ratio "${C[conn.rate]}" "${C[ref.conn.rate]}")"
        printf '%-44s %14s %14s %9s\n' "(b) raw keep-alive requests/s" "${C[ka.rate]}" "${C[ref.ka.rate]}" "$(fwd_ratio "${C[ka.rate]}" "${C[ref.ka.rate]}")"
        if [ "$callgrind" = 1 ]; then
            printf '%-44s %14s %14s %9s\n' "(a) instructions per connection (callgrind)" "${C[cg1.conn.instr]}" "${C[ref.cg1.conn.instr]}" "$(fwd_ratio "${C[cg1.conn.instr]}" "${C[ref.cg1.conn.instr]}")"
            printf '%-44s %14s %14s %9s\n' "(b) instructions per request (callgrind)" "${C[cg1.ka.instr]}" "${C[ref.cg1.ka.instr]}" "$(fwd_ratio "${C[cg1.ka.instr]}" "${C[ref.cg1.ka.instr]}")"
            printf '%-44s %14s %14s %9s\n' "(c) instructions per KiB (callgrind)" "${C[cg1.bulk.instr]}" "${C[ref.cg1.bulk.instr]}" "$(fwd_ratio "${C[cg1.bulk.instr]}" "${C[ref.cg1.bulk.instr]}")"
        fi
    fi
    echo
    echo "reference: DPVS (published): 200000 new connections/s per worker, FullNAT, real NICs; Fulcrum here:" \
        "${C[conn.per_busy]} new connections/s per busy lcore-second ($(fwd_ratio "${C[conn.per_busy]}" 200000) of DPVS's figure; proxy mode: full TCP termination on both sides)"
    echo "capacity: ${C[conn.per_busy]} new connections/s, ${C[ka.per_busy]} requests/s per lcore"
}

if [ "${1:-}" = capacity ]; then
    shift
    cap_main "$@"
    exit 0
fi
# ============================================================================ end of capacity

usage() { sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
WHAT=$1; shift
[ "$WHAT" = proxy ] || [ "$WHAT" = devices ] || usage
DURATION=10
CONNS=64
P=bench
# The software device of `proxy` (the fastest here by `bench.sh devices`).
DEVICE=${FULCRUM_SOFT_DEVICE:-af_packet}
MTU=1500
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --prefix) P=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --mtu) MTU=$2; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "--duration: 1..300 seconds"
[[ "$CONNS" =~ ^[0-9]+$ ]] && [ "$CONNS" -ge 1 ] && [ "$CONNS" -le 5000 ] || die "--connections: 1..5000"
case "$DEVICE" in tap|af_packet|af_xdp) ;; *) die "--device: tap, af_packet or af_xdp, not '$DEVICE'" ;; esac
[[ "$MTU" =~ ^[0-9]{3,4}$ ]] && [ "$MTU" -ge 576 ] && [ "$MTU" -le 9000 ] || die "--mtu: 576..9000"
[ "$WHAT" = proxy ] || [ "$MTU" = 1500 ] || die "--mtu is for proxy (devices measures MTU 9000 itself)"
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, DPDK)"
for t in nginx haproxy wrk iperf3 jq; do
    command -v "$t" >/dev/null || die "$t not found (scripts/setup.sh installs it)"
done

BIN_DIR=${FULCRUM_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
DP_BIN=$BIN_DIR/fulcrum-dataplane
LOAD_BIN=$BIN_DIR/fulcrum-keepalive-load
WORK=$(mktemp -d /tmp/fulcrum-bench.XXXXXX)
DP_PID=""
HA_PID=""

cleanup() {
    local rc=$?
    set +e
    [ -n "$DP_PID" ] && kill -KILL "$DP_PID" 2>/dev/null
    [ -n "$HA_PID" ] && kill -KILL "$HA_PID" 2>/dev/null
    # Kills every process left in the namespaces (nginx, iperf3, ...) and removes them.
    scripts/topology.sh down --prefix "$P" >/dev/null 2>&1
    rm -rf "$WORK"
    [ "$rc" -eq 0 ] || echo "bench: FAILED (exit $rc)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ ! -x "$DP_BIN" ] || [ ! -x "$LOAD_BIN" ]; then
    say "build (release)"
    cargo build --release -p fulcrum-dataplane -p fulcrum-tests --bins 2>&1 | tail -n 3 >&2
fi
[ -x "$DP_BIN" ] || die "$DP_BIN not found"
[ -x "$LOAD_BIN" ] || die "$LOAD_BIN not found"
# HAProxy holds two descriptors per connection: the open-files limit (which a
# container may not let even root raise) bounds its connections.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
HA_MAXCONN=$(( (NOFILE - 100) / 2 ))
[ "$HA_MAXCONN" -gt 12000 ] && HA_MAXCONN=12000

nsx() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
    PROXY_CPU=(taskset -c 0)
    PEERS_CPU=(taskset -c "1-$((NCPU - 1))")
else
    PROXY_CPU=()
    PEERS_CPU=()
fi

# wait_tcp NS IP PORT: bounded wait (10 s) until IP:PORT accepts from namespace NS.
wait_tcp() {
    local ns=$1 ip=$2 port=$3 i
    for i in $(seq 100); do
        nsx "$ns" bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$ip:$port does not accept connections from $P-$ns"
}

say "topology (prefix $P)"
if [ -e "/var/run/netns/$P-fab" ]; then
    echo "removing a leftover topology $P" >&2
    scripts/topology.sh down --prefix "$P" >/dev/null 2>&1 || true
fi
scripts/topology.sh up --prefix "$P" --mtu "$MTU" 2>&1 | tail -n 1 >&2
# Many short connections from one client: reuse TIME_WAIT ports, widen the range.
nsx cli sysctl -qw net.ipv4.tcp_tw_reuse=1
nsx cli sysctl -qw net.ipv4.ip_local_port_range="1024 65000"

say "backends: nginx on 198.18.0.21-23:8080 (keepalive on), iperf3 on :5201"
for i in 1 2 3; do
    d=$WORK/nginx-be$i
    mkdir -p "$d"
    cat >"$d/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    server {
        listen 198.18.0.2$i:8080 backlog=4096;
        location / { default_type text/plain; return 200 "be$i\n"; }
    }
}
NGINX
    nsx "be$i" "${PEERS_CPU[@]}" nginx -p "$d" -c "$d/nginx.conf" -e stderr >"$d/out.log" 2>&1 &
    nsx "be$i" "${PEERS_CPU[@]}" iperf3 -s -B "198.18.0.2$i" -p 5201 >"$WORK/iperf3-be$i.log" 2>&1 &
done
for i in 1 2 3; do
    wait_tcp "be$i" "198.18.0.2$i" 8080
    wait_tcp "be$i" "198.18.0.2$i" 5201
done

# ---------------------------------------------------------------------------- measuring

# wrk_run URL [extra wrk args...]: prints "req_per_s p50_ms p99_ms errors requests"
wrk_run() {
    local url=$1; shift
    local out
    out=$(nsx cli "${PEERS_CPU[@]}" timeout --kill-after=5 $((DURATION + 30)) \
        wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "$@" "$url" 2>&1) || {
        echo "$out" >&2
        echo "nan nan nan nan nan"
        return 0
    }
    echo "$out" | sed 's/^/    /' >&2
    # Latency lines: "     50%  123.00us" (units us, ms, s).
    local to_ms='function ms(v){ if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }'
    local rps p50 p99 errs
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    p50=$(echo "$out" | awk "$to_ms"' $1 == "50%" {printf "%.3f", ms($2)}')
    p99=$(echo "$out" | awk "$to_ms"' $1 == "99%" {printf "%.3f", ms($2)}')
    errs=$(echo "$out" | awk '/Socket errors:/ {gsub(",", ""); s = $4 + $6 + $8 + $10} /Non-2xx/ {s += $5} END {print s + 0}')
    # "  123456 requests in 10.00s, 12.34MB read"
    local reqs
    reqs=$(echo "$out" | awk '$2 == "requests" && $3 == "in" {print $1}')
    echo "${rps:-nan} ${p50:-nan} ${p99:-nan} ${errs:-0} ${reqs:-nan}"
}

# iperf_run HOST STREAMS: prints "Gbit/s bytes" received (nan nan on failure, with the
# reason on stderr)
iperf_run() {
    local host=$1 streams=$2 out gbps bytes
    out=$(nsx cli "${PEERS_CPU[@]}" timeout --kill-after=5 $((DURATION + 30)) \
        iperf3 -c "$host" -p 5201 -t "$DURATION" -P "$streams" -J 2>&1) || true
    gbps=$(echo "$out" | jq -r 'if .error then empty else .end.sum_received.bits_per_second / 1e9 | . * 1000 | round / 1000 end' 2>/dev/null || true)
    bytes=$(echo "$out" | jq -r 'if .error then empty else .end.sum_received.bytes end' 2>/dev/null || true)
    if [ -z "$gbps" ]; then
        echo "    iperf3 failed: $(echo "$out" | jq -r '.error // empty' 2>/dev/null || true)" >&2
        echo "$out" | tail -n 5 | sed 's/^/    /' >&2
        echo "nan nan"
        return 0
    fi
    echo "    ${gbps} Gbit/s" >&2
    echo "$gbps ${bytes:-nan}"
}

# ---- cycles per request / per byte, over each wrk and iperf3 window
# Fulcrum: its own cycles, user space only, on its lcore's thread (the thread of the
# dataplane that used the most CPU in the window): what it would spend on a NIC,
# where no kernel is in its path. HAProxy: its total cycles, user + kernel, every
# thread of its process (its socket system calls; the kernel's TCP receive work
# for its packets mostly runs in softirq on the sender's side and is counted
# for neither). Two ways to count, chosen once by cyc_probe:
#   perf     `perf stat -e cycles:u -t TID` (Fulcrum; TID = the dataplane's busiest
#            thread so far, its lcore) and `perf stat -e cycles:u,cycles:k -p PID`
#            (HAProxy), when the CPU's cycle counter is available;
#   cputime  otherwise (virtual machines without a PMU: `perf stat -e cycles true`
#            says "<not supported>"): CPU time from /proc/PID/task/*/stat (utime =
#            user, stime = kernel, in CLK_TCK ticks) times the clock rate from
#            /proc/cpuinfo ("cpu MHz"): cycles at the nominal clock. The total
#            per thread is exact; its user/kernel split is the kernel's tick sampling.
CYC_MODE=""
CYC_MHZ=""
cyc_probe() {
    CYC_MHZ=$(awk -F: '/^cpu MHz/ { printf "%.0f", $2; exit }' /proc/cpuinfo)
    [ -n "$CYC_MHZ" ] || CYC_MHZ=nan
    if command -v perf >/dev/null && perf stat -x, -e cycles:u -- true 2>&1 >/dev/null | grep -q '^[0-9]'; then
        CYC_MODE=perf
    else
        CYC_MODE=cputime
    fi
}

# thread_times PID: "tid utime stime" (CLK_TCK ticks) of every thread of PID, one a line.
thread_times() {
    local t
    for t in /proc/"$1"/task/*; do
        awk -v tid="${t##*/}" '{ sub(/^.*\) /, ""); print tid, $12, $13 }' "$t/stat" 2>/dev/null || true
    done
}

# cyc_pid WHO: the pid of Fulcrum's dataplane (the process running $DP_BIN) or of
# HAProxy (the haproxy process in namespace $P-fab).
cyc_pid() {
    local p exe
    if [ "$1" = fulcrum ]; then
        exe=$(readlink -f "$DP_BIN")
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/exe" 2>/dev/null)" = "$exe" ] && { echo "${p#/proc/}"; return 0; }
        done
    else
        for p in $(ip netns pids "$P-fab"); do
            [ "$(cat "/proc/$p/comm" 2>/dev/null)" = haproxy ] && { echo "$p"; return 0; }
        done
    fi
    die "no $1 process found"
}

CYC_PID=""
CYC_T0=""
CYC_PERF_PID=""
# cyc_begin WHO: opens a counting window on WHO's process (fulcrum or haproxy).
cyc_begin() {
    local who=$1
    [ -n "$CYC_MODE" ] || cyc_probe
    CYC_PID=$(cyc_pid "$who") || die "cannot count cycles: no $who process"
    CYC_T0=$(thread_times "$CYC_PID")
    CYC_PERF_PID=""
    if [ "$CYC_MODE" = perf ]; then
        if [ "$who" = fulcrum ]; then
            local tid
            tid=$(echo "$CYC_T0" | awk '{ print $1, $2 + $3 }' | sort -k2,2nr | awk 'NR == 1 { print $1 }')
            perf stat -x, -e cycles:u -t "$tid" -o "$WORK/cyc.perf" >/dev/null 2>&1 &
        else
            perf stat -x, -e cycles:u,cycles:k -p "$CYC_PID" -o "$WORK/cyc.perf" >/dev/null 2>&1 &
        fi
        CYC_PERF_PID=$!
    fi
}

# cyc_end WHO KEY COUNT: closes the window opened by cyc_begin; R[WHO.KEY] = cycles
# per unit of COUNT (requests or bytes; Fulcrum: user space of its lcore thread;
# HAProxy: user + kernel) and R[WHO.KEY.all] = user + kernel (Fulcrum: its lcore
# thread's).
cyc_end() {
    local who=$1 key=$2 count=$3 t1 u s
    R[$who.$key]=nan
    R[$who.$key.all]=nan
    t1=$(thread_times "$CYC_PID")
    if [ "$who" = fulcrum ]; then
        # The lcore: the thread with the largest CPU time in the window.
        read -r u s <<<"$(awk 'NR == FNR { u[$1] = $2; s[$1] = $3; next }
            ($1 in u) { d = $2 - u[$1] + $3 - s[$1]; if (d >= m) { m = d; bu = $2 - u[$1]; bs = $3 - s[$1] } }
            END { print bu + 0, bs + 0 }' <(echo "$CYC_T0") <(echo "$t1"))"
    else
        read -r u s <<<"$(awk 'NR == FNR { u[$1] = $2; s[$1] = $3; next }
            ($1 in u) { bu += $2 - u[$1]; bs += $3 - s[$1] } END { print bu + 0, bs + 0 }' <(echo "$CYC_T0") <(echo "$t1"))"
    fi
    local hz own all
    hz=$(getconf CLK_TCK)
    own=$(awk -v t="$u" -v hz="$hz" -v m="$CYC_MHZ" 'BEGIN { printf "%.0f", t / hz * m * 1e6 }')
    all=$(awk -v t="$((u + s))" -v hz="$hz" -v m="$CYC_MHZ" 'BEGIN { printf "%.0f", t / hz * m * 1e6 }')
    [ "$who" = haproxy ] && own=$all
    if [ -n "$CYC_PERF_PID" ]; then
        kill -INT "$CYC_PERF_PID" 2>/dev/null
        wait "$CYC_PERF_PID" 2>/dev/null || true
        own=$(awk -F, '$3 ~ /^cycles/ && $1 ~ /^[0-9]+$/ { t += $1 } END { print t + 0 }' "$WORK/cyc.perf")
        [ "$who" = haproxy ] && all=$own
        CYC_PERF_PID=""
    fi
    local unit=requests
    [[ $key == *byte* ]] && unit=bytes
    echo "    cycles ($CYC_MODE): utime $u, stime $s ticks; $who's own: $own cycles for $count $unit" >&2
    [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -gt 0 ] || return 0
    R[$who.$key]=$(awk -v c="$own" -v n="$count" 'BEGIN { f = (c / n < 10) ? "%.3f" : "%.0f"; printf f, c / n }')
    R[$who.$key.all]=$(awk -v c="$all" -v n="$count" 'BEGIN { f = (c / n < 10) ? "%.3f" : "%.0f"; printf f, c / n }')
}


declare -A R

# Open connections for the CPU-per-request runs: the cost of a request with
# this many other connections open (their state pushed out of the caches).
OPEN_SIZES=(100 1000 9000 10000)

# fulcrum_cost: nanoseconds the dataplane's lcores spent in iterations with
# work (busy_ns, summed), from a stats file written after the call began.
fulcrum_cost() { stats_fresh_sample "$WORK/stats.json" '[.lcores[].busy_ns] | add' | awk '{ print $2 }'; }
# haproxy_cost: HAProxy's CPU time in nanoseconds (utime + stime of the haproxy
# process in the fabric namespace; $HA_PID is the shell that started it).
haproxy_cost() {
    local p
    for p in $(ip netns pids "$P-fab"); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = haproxy ] || continue
        thread_ticks "$p" | awk -v hz="$(getconf CLK_TCK)" '{ t += $2 } END { printf "%.0f\n", t * 1e9 / hz }'
        return 0
    done
    die "no haproxy process in $P-fab"
}

# open_load WHO HOST:PORT N COST: $LOAD_BIN holds N keep-alive connections open,
# then sends requests round-robin over them for DURATION with 64 in flight; COST
# (a function printing nanoseconds) is read with all N open, before and after.
# Sets R[WHO.open.N.rps] and R[WHO.open.N.us] (CPU microseconds per request).
open_load() {
    local who=$1 target=$2 n=$3 cost=$4 go=$WORK/go.$who.$n log=$WORK/load.$who.$n pid c0 c1 line i
    say "$who: $n open connections, keep-alive requests round-robin over them, ${DURATION}s"
    R[$who.open.$n.rps]=nan
    R[$who.open.$n.us]=nan
    nsx cli "${PEERS_CPU[@]}" timeout --kill-after=5 $((DURATION + 150)) "$LOAD_BIN" --connect "$target" \
        --connections "$n" --threads 2 --window 32 --seconds "$DURATION" --go "$go" >"$log" 2>"$log.err" &
    pid=$!
    for i in $(seq 600); do
        grep -q '^open ' "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q '^open ' "$log"; then
        kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        sed 's/^/    /' "$log.err" | tail -n 5 >&2
        echo "    could not open $n connections" >&2
        return 0
    fi
    c0=$($cost) || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; echo "    CPU not readable" >&2; return 0; }
    touch "$go"
    if ! wait "$pid"; then
        sed 's/^/    /' "$log.err" | tail -n 5 >&2
        echo "    the load failed: $(tail -n 1 "$log")" >&2
        return 0
    fi
    c1=$($cost) || { echo "    CPU not readable" >&2; return 0; }
    line=$(grep '^done ' "$log")
    echo "    $line" >&2
    read -r R[$who.open.$n.rps] R[$who.open.$n.us] <<<"$(echo "$line" | awk -v c0="$c0" -v c1="$c1" '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "%.0f %.2f\n", v["requests"] / v["seconds"], (c1 - c0) / 1000 / v["requests"] }')"
    echo "    ${R[$who.open.$n.rps]} requests/s, ${R[$who.open.$n.us]} us of CPU per request" >&2
}

measure() {
    local who=$1 http_host=$2 iperf_host=$3 r n_req n_bytes
    say "$who: wrk, new connection per request (Connection: close), ${DURATION}s, $CONNS connections"
    cyc_begin "$who"
    read -r R[$who.close.rps] R[$who.close.p50] R[$who.close.p99] R[$who.close.err] n_req \
        <<<"$(wrk_run "http://$http_host/" -H 'Connection: close')"
    cyc_end "$who" close.cyc "$n_req"
    say "$who: wrk, keepalive, ${DURATION}s, $CONNS connections"
    cyc_begin "$who"
    read -r R[$who.ka.rps] R[$who.ka.p50] R[$who.ka.p99] R[$who.ka.err] n_req <<<"$(wrk_run "http://$http_host/")"
    cyc_end "$who" ka.cyc "$n_req"
    say "$who: iperf3, 1 stream, ${DURATION}s"
    cyc_begin "$who"
    read -r R[$who.iperf1] n_bytes <<<"$(iperf_run "$iperf_host" 1)"
    cyc_end "$who" iperf1.cycbyte "$n_bytes"
    say "$who: iperf3, 8 parallel streams, ${DURATION}s"
    cyc_begin "$who"
    read -r R[$who.iperf8] n_bytes <<<"$(iperf_run "$iperf_host" 8)"
    cyc_end "$who" iperf8.cycbyte "$n_bytes"
    local n
    for n in "${OPEN_SIZES[@]}"; do
        if [ "$who" = haproxy ] && [ "$n" -gt "$HA_MAXCONN" ]; then
            say "haproxy: $n open connections: skipped, maxconn $HA_MAXCONN (open-files limit $NOFILE)"
            R[$who.open.$n.rps]=n/a
            R[$who.open.$n.us]=n/a
            continue
        fi
        open_load "$who" "$http_host:80" "$n" "${who}_cost"
    done
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}

# ---------------------------------------------------------------------------- devices

# lcore_cycles_start: `perf stat -e cycles:u` on the dataplane's lcore thread (lcore 0
# is EAL's main thread: the process's first thread) into $WORK/perf.out; sets PERF_PID,
# empty when perf cannot count cycles here. lcore_cycles_stop: prints the count, or n/a.
PERF_OK=""
lcore_cycles_start() {
    PERF_PID=""
    if [ -z "$PERF_OK" ]; then
        PERF_OK=no
        command -v perf >/dev/null && perf stat -x, -e cycles:u true 2>&1 | grep -q '^[0-9]' && PERF_OK=yes
    fi
    [ "$PERF_OK" = yes ] || return 0
    perf stat -x, -e cycles:u -t "$DP_PID" -o "$WORK/perf.out" >/dev/null 2>&1 &
    PERF_PID=$!
}
lcore_cycles_stop() {
    if [ -z "$PERF_PID" ]; then echo n/a; return 0; fi
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    awk -F, '$3 ~ /cycles/ && $1 ~ /^[0-9]+$/ { print $1; f = 1 } END { if (!f) print "n/a" }' "$WORK/perf.out" 2>/dev/null || echo n/a
}

# per_request TOTAL RPS: TOTAL / (RPS x DURATION), or nan.
per_request() {
    awk -v t="$1" -v r="$2" -v d="$DURATION" -v scale="${3:-1}" 'BEGIN {
        if (t == "n/a" || t == "nan" || r == "nan" || r + 0 == 0) print "n/a"; else printf "%.0f", t / scale / (r * d) }'
}

# device_measure DEVICE: requests/s (short, keep-alive), iperf3 1 stream, and the
# lcore's busy ns and user cycles per request of each wrk run, into R[DEVICE.*].
device_measure() {
    local dev=$1 b0 b1 c kind
    for kind in close ka; do
        say "$dev: wrk, $([ $kind = close ] && echo 'new connection per request (Connection: close)' || echo keepalive), ${DURATION}s, $CONNS connections"
        b0=$(fulcrum_cost)
        lcore_cycles_start
        if [ $kind = close ]; then
            read -r R[$dev.close.rps] R[$dev.close.p50] R[$dev.close.p99] R[$dev.close.err] _ \
                <<<"$(wrk_run "http://198.18.1.1/" -H 'Connection: close')"
        else
            read -r R[$dev.ka.rps] R[$dev.ka.p50] R[$dev.ka.p99] R[$dev.ka.err] _ <<<"$(wrk_run "http://198.18.1.1/")"
        fi
        c=$(lcore_cycles_stop)
        b1=$(fulcrum_cost)
        R[$dev.$kind.busy]=$(per_request "$((b1 - b0))" "${R[$dev.$kind.rps]}")
        R[$dev.$kind.cycles]=$(per_request "$c" "${R[$dev.$kind.rps]}")
        echo "    lcore busy $(( (b1 - b0) / 1000000 )) ms: ${R[$dev.$kind.busy]} ns/request; cycles:u/request ${R[$dev.$kind.cycles]}" >&2
    done
    say "$dev: iperf3, 1 stream, ${DURATION}s"
    read -r R[$dev.iperf1] _ <<<"$(iperf_run 198.18.1.2 1)"
}

DEVICES=(tap af_packet af_xdp)
# The jumbo-frame run: af_packet at this MTU, labelled af_packet/MTU.
JUMBO_MTU=9000
devices_main() {
    local dev
    for dev in "${DEVICES[@]}"; do
        fulcrum_start "$dev"
        device_measure "$dev"
        fulcrum_stop
    done
    scripts/topology.sh mtu --prefix "$P" --mtu "$JUMBO_MTU"
    fulcrum_start af_packet "$JUMBO_MTU"
    device_measure "af_packet/$JUMBO_MTU"
    fulcrum_stop
    DEVICES+=("af_packet/$JUMBO_MTU")
    echo
    echo "Software devices, proxy VIP, one Fulcrum lcore ($NCPU cores; ${DURATION}s per run; wrk -t2 -c$CONNS$([ "$NCPU" -ge 2 ] && echo "; lcore on CPU 0, client and backends on CPU 1-$((NCPU - 1))"))"
    echo "busy ns/req: the lcore's busy time (iterations with work, device system calls included) per request"
    printf '%-14s %12s %12s %10s %13s %13s %12s %12s %9s %9s %9s\n' device "short req/s" "ka req/s" "1s Gbit/s" \
        "short ns/req" "ka ns/req" "short cyc/r" "ka cyc/r" "short/tap" "ka/tap" "Gb/tap"
    for dev in "${DEVICES[@]}"; do
        printf '%-14s %12s %12s %10s %13s %13s %12s %12s %9s %9s %9s\n' "$dev" "${R[$dev.close.rps]}" "${R[$dev.ka.rps]}" \
            "${R[$dev.iperf1]}" "${R[$dev.close.busy]}" "${R[$dev.ka.busy]}" "${R[$dev.close.cycles]}" "${R[$dev.ka.cycles]}" \
            "$(ratio "${R[$dev.close.rps]}" "${R[tap.close.rps]}")" "$(ratio "${R[$dev.ka.rps]}" "${R[tap.ka.rps]}")" \
            "$(ratio "${R[$dev.iperf1]}" "${R[tap.iperf1]}")"
    done
    echo "errors (short, keep-alive): $(for dev in "${DEVICES[@]}"; do printf '%s %s/%s  ' "$dev" "${R[$dev.close.err]}" "${R[$dev.ka.err]}"; done)"
    [ "$PERF_OK" = yes ] || echo "(cyc/r n/a: perf stat -e cycles:u is not supported on this machine)"
}

# ---------------------------------------------------------------------------- Fulcrum

# The port's MAC on every device (the peers' ARP caches stay right when
# `devices` restarts the dataplane on another one).
DP_MAC=02:00:00:00:00:02

# fulcrum_start DEVICE [MTU]: the dataplane on DEVICE (at MTU, default 1500) with the
# proxy VIPs, ready, attached, warmed up; its pid in DP_PID, its stats in $WORK/stats.json.
fulcrum_start() {
    local device=$1 mtu=${2:-1500}
    say "Fulcrum: $DP_BIN, one lcore, software device $device, MTU $mtu"
    cat >"$WORK/fulcrum.toml" <<CONF
[dataplane]
address = "198.18.0.2/24"
lcores = "0"
file_prefix = "$P"
mtu = $mtu
software = { $device = "$P-dp", mac = "$DP_MAC" }

[[vip]]
address = "198.18.1.1"
port = 80
mode = "proxy"
max_connections = 12000
backends = [
  { address = "198.18.0.21", port = 8080, weight = 1 },
  { address = "198.18.0.22", port = 8080, weight = 1 },
  { address = "198.18.0.23", port = 8080, weight = 1 },
]

[[vip]]
address = "198.18.1.2"
port = 5201
mode = "proxy"
affinity = "client"
backends = [
  { address = "198.18.0.21", port = 5201, weight = 1 },
  { address = "198.18.0.22", port = 5201, weight = 1 },
  { address = "198.18.0.23", port = 5201, weight = 1 },
]
CONF
    rm -f "$WORK/stats.json"
    # Not through nsx (a function: $! would be the subshell's pid, not the dataplane's).
    ip netns exec "$P-fab" "$DP_BIN" --config "$WORK/fulcrum.toml" --stats-file "$WORK/stats.json" >"$WORK/dataplane.log" 2>&1 &
    DP_PID=$!
    for _ in $(seq 300); do
        grep -q ' ready: ' "$WORK/dataplane.log" && break
        kill -0 "$DP_PID" 2>/dev/null || { cat "$WORK/dataplane.log" >&2; die "the dataplane exited"; }
        sleep 0.1
    done
    grep -q ' ready: ' "$WORK/dataplane.log" || { cat "$WORK/dataplane.log" >&2; die "the dataplane was not ready in 30 s"; }
    scripts/topology.sh attach --prefix "$P" --tap "$P-dp" 2>&1 | tail -n 1 >&2
    wait_tcp cli 198.18.1.1 80
    wait_tcp cli 198.18.1.2 5201
    # Warm-up (not measured), 4 s of short connections: the dataplane resolves a
    # backend's MAC on first use, and smoltcp sends at most one ARP request per second,
    # so the first connections to each backend can fail over while that happens; an
    # iperf3 test whose control connection failed over would have its streams on another
    # server. (Its ARP requests sent at start-up went out before the tap was on the
    # bridge.)
    say "Fulcrum: warm-up, 4 s"
    nsx cli timeout 20 wrk -t1 -c8 -d4s -H 'Connection: close' http://198.18.1.1/ >/dev/null 2>&1 || true
    jq -c '[.vips[0].backends[] | {address, opened, connect_failures}]' "$WORK/stats.json" >&2 || true
}

# fulcrum_stop: SIGINT (bounded), its exit report and the VIPs' counters.
fulcrum_stop() {
    say "Fulcrum: stop (SIGINT)"
    kill -INT "$DP_PID"
    for _ in $(seq 100); do kill -0 "$DP_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$DP_PID" 2>/dev/null; then kill -KILL "$DP_PID"; fi
    wait "$DP_PID" 2>/dev/null || true
    DP_PID=""
    grep -E 'mbufs in use|signal received|ERROR' "$WORK/dataplane.log" >&2 || true
    # Its interface (tap, or veth) goes with it; the next start needs the name.
    for _ in $(seq 100); do nsx fab ip link show dev "$P-dp" >/dev/null 2>&1 || break; sleep 0.1; done
    if nsx fab ip link show dev "$P-dp" >/dev/null 2>&1; then
        tail -n 5 "$WORK/dataplane.log" >&2
        die "$P-dp still exists 10 s after the dataplane exited"
    fi
    if [ -s "$WORK/stats.json" ]; then
        jq -c '.vips[]? | {vip: "\(.address):\(.port)", accepted, drop_connect_failed, drop_limit, drop_no_port,
            backends: [.backends[] | {address, opened, connect_failures}]}' "$WORK/stats.json" >&2 || true
    fi
}

if [ "$WHAT" = devices ]; then
    devices_main
    exit 0
fi

fulcrum_start "$DEVICE" "$MTU"
measure fulcrum 198.18.1.1 198.18.1.2
fulcrum_stop

# ---------------------------------------------------------------------------- HAProxy

say "HAProxy $(haproxy -v | awk 'NR==1 {print $3}'): mode tcp, nbthread 1, on 198.18.0.1 in $P-fab"
cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
    # Two descriptors per proxied connection: stay inside RLIMIT_NOFILE ($NOFILE).
    maxconn $HA_MAXCONN
    log stderr format short local0 warning

defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch

frontend http_in
    bind 198.18.0.1:80
    default_backend nginx

backend nginx
    balance roundrobin
    server be1 198.18.0.21:8080
    server be2 198.18.0.22:8080
    server be3 198.18.0.23:8080

frontend iperf_in
    bind 198.18.0.1:5201
    default_backend iperf

backend iperf
    balance source
    server be1 198.18.0.21:5201
    server be2 198.18.0.22:5201
    server be3 198.18.0.23:5201
CONF
haproxy -c -f "$WORK/haproxy.cfg" >&2
nsx fab "${PROXY_CPU[@]}" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HA_PID=$!
wait_tcp cli 198.18.0.1 80
wait_tcp cli 198.18.0.1 5201

measure haproxy 198.18.0.1 198.18.0.1

kill -TERM "$HA_PID" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$HA_PID" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$HA_PID" 2>/dev/null || true
wait "$HA_PID" 2>/dev/null || true
HA_PID=""

# ---------------------------------------------------------------------------- table

row() {
    local name=$1 key=$2
    printf '%-44s %12s %12s %10s\n' "$name" "${R[fulcrum.$key]}" "${R[haproxy.$key]}" "$(ratio "${R[fulcrum.$key]}" "${R[haproxy.$key]}")"
}
echo
echo "Fulcrum vs HAProxy ($NCPU cores; ${DURATION}s per run; wrk -t2 -c$CONNS; one Fulcrum lcore, HAProxy nbthread 1$([ "$NCPU" -ge 2 ] && echo "; proxies on CPU 0, client and backends on CPU 1-$((NCPU - 1))"))"
printf '%-44s %12s %12s %10s\n' metric Fulcrum HAProxy Ful/HAP
printf '%-44s %12s %12s %10s\n' ------ ------- ------- -------
row "short connections: requests/s"            close.rps
row "short connections: p50 latency (ms)"      close.p50
row "short connections: p99 latency (ms)"      close.p99
row "short connections: errors"                close.err
row "keepalive: requests/s"                    ka.rps
row "keepalive: p50 latency (ms)"              ka.p50
row "keepalive: p99 latency (ms)"              ka.p99
row "keepalive: errors"                        ka.err
row "iperf3, 1 stream: Gbit/s"                 iperf1
row "iperf3, 8 streams: Gbit/s"                iperf8
row "short connections: cycles/request"        close.cyc
row "keepalive: cycles/request"                ka.cyc
row "iperf3, 1 stream: cycles/byte"            iperf1.cycbyte
row "iperf3, 8 streams: cycles/byte"           iperf8.cycbyte
echo "(requests/s and Gbit/s: higher is better; latency and cycles: lower is better)"
echo "(cycles: Fulcrum = its own, user space of its lcore thread; HAProxy = its total, user + kernel, all its"
echo " threads; counted $([ "$CYC_MODE" = perf ] && echo "by perf stat (cycles:u; cycles:u + cycles:k)" ||
    echo "as CPU time x $CYC_MHZ MHz (no cycle counter here: perf stat -e cycles says <not supported>)")"
echo " over each wrk / iperf3 window; issue 14 asks Ful/HAP <= 0.25 per request and <= 1 per byte)"
row "Fulcrum lcore user+kernel: short, cyc/req"   close.cyc.all
row "Fulcrum lcore user+kernel: keepalive, cyc/req" ka.cyc.all
row "Fulcrum lcore user+kernel: 1 stream, cyc/B"  iperf1.cycbyte.all
row "Fulcrum lcore user+kernel: 8 streams, cyc/B" iperf8.cycbyte.all
echo "(the same windows with the kernel time of Fulcrum's lcore thread: on net_tap, the tap's system calls)"

echo
echo "CPU per request vs open connections (fulcrum-keepalive-load: N keep-alive connections open, requests"
echo "round-robin over all N, 64 in flight; microseconds of CPU per request: Fulcrum = its lcore's busy time,"
echo "HAProxy = its process CPU time, user + system)"
printf '%-22s %12s %12s %12s %12s %10s\n' "open connections" "Fulcrum us" "HAProxy us" "Fulcrum rps" "HAProxy rps" "Ful/HAP us"
printf '%-22s %12s %12s %12s %12s %10s\n' ---------------- ---------- ---------- ----------- ----------- ----------
for n in "${OPEN_SIZES[@]}"; do
    printf '%-22s %12s %12s %12s %12s %10s\n' "$n" "${R[fulcrum.open.$n.us]}" "${R[haproxy.open.$n.us]}" \
        "${R[fulcrum.open.$n.rps]}" "${R[haproxy.open.$n.rps]}" "$(ratio "${R[fulcrum.open.$n.us]}" "${R[haproxy.open.$n.us]}")"
done
first=${OPEN_SIZES[0]}
for n in "${OPEN_SIZES[@]:1}"; do
    printf '%-22s %12s %12s\n' "ratio $n/$first" "$(ratio "${R[fulcrum.open.$n.us]}" "${R[fulcrum.open.$first.us]}")" \
        "$(ratio "${R[haproxy.open.$n.us]}" "${R[haproxy.open.$first.us]}")"
done
[ "$HA_MAXCONN" -ge "${OPEN_SIZES[-1]}" ] ||
    echo "(HAProxy n/a: maxconn $HA_MAXCONN, two descriptors per connection within the open-files limit $NOFILE)"
