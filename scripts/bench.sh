#!/usr/bin/env bash
# Benchmarks Fulcrum against a reference, on this machine alone, in one run.
#
#   scripts/bench.sh proxy   [--duration SECONDS] [--connections N] [--prefix P] [--device D]
#   scripts/bench.sh devices [--duration SECONDS] [--connections N] [--prefix P]
#                            (proxy VIP on each software device: tap, af_packet, af_xdp)
#   scripts/bench.sh forward   (packets/s through the forwarding path vs testpmd macswap)
#   scripts/bench.sh synflood  (SYN cookies/s on one lcore vs testpmd macswap on the same SYNs)
#   scripts/bench.sh scale     (proxy engine instructions per request vs open connections)
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
# lcore thread. Prints one table, with each device's ratio to tap.
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
    # before the cap refuses the key (unknown keys are errors) and has no cap.
    local FWD_FLOOD_KEYS=1
    [ "$tag" = reference ] && FWD_FLOOD_KEYS=0
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
# scripts/bench.sh scale [--requests K] [--wall-runs R] [--top N] [--keep DIR]
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
    local requests=10000 runs=5 top=12 keep=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --requests) requests=$2; shift 2 ;;
            --wall-runs) runs=$2; shift 2 ;;
            --top) top=$2; shift 2 ;;
            --keep) keep=$2; shift 2 ;;
            -h|--help) scale_usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ "$requests" =~ ^[0-9]+$ ]] && [ "$requests" -ge 1 ] && [ "$requests" -le 100000 ] || die "--requests: 1..100000"
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

    if [ -n "$keep" ]; then
        mkdir -p "$keep" && cp "$work"/callgrind.engine.*.out "$keep"/ && echo "(callgrind files kept in $keep)"
    fi
    echo "scale: ${INSTR[100]}, ${INSTR[1000]}, ${INSTR[10000]} instructions per request; 10k/100 = $(scale_ratio "${INSTR[10000]}" "${INSTR[100]}")"
}

if [ "${1:-}" = scale ]; then
    shift
    scale_main "$@"
    exit 0
fi
# ============================================================================ end of scale

usage() { sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
WHAT=$1; shift
[ "$WHAT" = proxy ] || [ "$WHAT" = devices ] || usage
DURATION=10
CONNS=64
P=bench
# The software device of `proxy` (the fastest here by `bench.sh devices`).
DEVICE=${FULCRUM_SOFT_DEVICE:-af_packet}
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --prefix) P=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "--duration: 1..300 seconds"
[[ "$CONNS" =~ ^[0-9]+$ ]] && [ "$CONNS" -ge 1 ] && [ "$CONNS" -le 5000 ] || die "--connections: 1..5000"
case "$DEVICE" in tap|af_packet|af_xdp) ;; *) die "--device: tap, af_packet or af_xdp, not '$DEVICE'" ;; esac
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
scripts/topology.sh up --prefix "$P" 2>&1 | tail -n 1 >&2
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

# wrk_run URL [extra wrk args...]: prints "req_per_s p50_ms p99_ms errors"
wrk_run() {
    local url=$1; shift
    local out
    out=$(nsx cli "${PEERS_CPU[@]}" timeout --kill-after=5 $((DURATION + 30)) \
        wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "$@" "$url" 2>&1) || {
        echo "$out" >&2
        echo "nan nan nan nan"
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
    echo "${rps:-nan} ${p50:-nan} ${p99:-nan} ${errs:-0}"
}

# iperf_run HOST STREAMS: prints Gbit/s received (nan on failure, with the reason on stderr)
iperf_run() {
    local host=$1 streams=$2 out gbps
    out=$(nsx cli "${PEERS_CPU[@]}" timeout --kill-after=5 $((DURATION + 30)) \
        iperf3 -c "$host" -p 5201 -t "$DURATION" -P "$streams" -J 2>&1) || true
    gbps=$(echo "$out" | jq -r 'if .error then empty else .end.sum_received.bits_per_second / 1e9 | . * 1000 | round / 1000 end' 2>/dev/null || true)
    if [ -z "$gbps" ]; then
        echo "    iperf3 failed: $(echo "$out" | jq -r '.error // empty' 2>/dev/null || true)" >&2
        echo "$out" | tail -n 5 | sed 's/^/    /' >&2
        echo "nan"
        return 0
    fi
    echo "    ${gbps} Gbit/s" >&2
    echo "$gbps"
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
    local who=$1 http_host=$2 iperf_host=$3 r
    say "$who: wrk, new connection per request (Connection: close), ${DURATION}s, $CONNS connections"
    read -r R[$who.close.rps] R[$who.close.p50] R[$who.close.p99] R[$who.close.err] \
        <<<"$(wrk_run "http://$http_host/" -H 'Connection: close')"
    say "$who: wrk, keepalive, ${DURATION}s, $CONNS connections"
    read -r R[$who.ka.rps] R[$who.ka.p50] R[$who.ka.p99] R[$who.ka.err] <<<"$(wrk_run "http://$http_host/")"
    say "$who: iperf3, 1 stream, ${DURATION}s"
    R[$who.iperf1]=$(iperf_run "$iperf_host" 1)
    say "$who: iperf3, 8 parallel streams, ${DURATION}s"
    R[$who.iperf8]=$(iperf_run "$iperf_host" 8)
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
            read -r R[$dev.close.rps] R[$dev.close.p50] R[$dev.close.p99] R[$dev.close.err] \
                <<<"$(wrk_run "http://198.18.1.1/" -H 'Connection: close')"
        else
            read -r R[$dev.ka.rps] R[$dev.ka.p50] R[$dev.ka.p99] R[$dev.ka.err] <<<"$(wrk_run "http://198.18.1.1/")"
        fi
        c=$(lcore_cycles_stop)
        b1=$(fulcrum_cost)
        R[$dev.$kind.busy]=$(per_request "$((b1 - b0))" "${R[$dev.$kind.rps]}")
        R[$dev.$kind.cycles]=$(per_request "$c" "${R[$dev.$kind.rps]}")
        echo "    lcore busy $(( (b1 - b0) / 1000000 )) ms: ${R[$dev.$kind.busy]} ns/request; cycles:u/request ${R[$dev.$kind.cycles]}" >&2
    done
    say "$dev: iperf3, 1 stream, ${DURATION}s"
    R[$dev.iperf1]=$(iperf_run 198.18.1.2 1)
}

DEVICES=(tap af_packet af_xdp)
devices_main() {
    local dev
    for dev in "${DEVICES[@]}"; do
        fulcrum_start "$dev"
        device_measure "$dev"
        fulcrum_stop
    done
    echo
    echo "Software devices, proxy VIP, one Fulcrum lcore ($NCPU cores; ${DURATION}s per run; wrk -t2 -c$CONNS$([ "$NCPU" -ge 2 ] && echo "; lcore on CPU 0, client and backends on CPU 1-$((NCPU - 1))"))"
    echo "busy ns/req: the lcore's busy time (iterations with work, device system calls included) per request"
    printf '%-10s %12s %12s %10s %13s %13s %12s %12s %9s %9s %9s\n' device "short req/s" "ka req/s" "1s Gbit/s" \
        "short ns/req" "ka ns/req" "short cyc/r" "ka cyc/r" "short/tap" "ka/tap" "Gb/tap"
    for dev in "${DEVICES[@]}"; do
        printf '%-10s %12s %12s %10s %13s %13s %12s %12s %9s %9s %9s\n' "$dev" "${R[$dev.close.rps]}" "${R[$dev.ka.rps]}" \
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

# fulcrum_start DEVICE: the dataplane on DEVICE with the proxy VIPs, ready,
# attached, warmed up; its pid in DP_PID, its stats in $WORK/stats.json.
fulcrum_start() {
    local device=$1
    say "Fulcrum: $DP_BIN, one lcore, software device $device"
    cat >"$WORK/fulcrum.toml" <<CONF
[dataplane]
address = "198.18.0.2/24"
lcores = "0"
file_prefix = "$P"
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

fulcrum_start "$DEVICE"
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
echo "(requests/s and Gbit/s: higher is better; latency: lower is better)"

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
