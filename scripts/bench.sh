#!/usr/bin/env bash
# Benchmarks Fulcrum against a reference, on this machine alone, in one run.
#
#   scripts/bench.sh proxy [--duration SECONDS] [--connections N] [--prefix P]
#
# proxy: brings up its own topology (prefix "bench", network namespaces on
# 198.18.0.0/24, torn down on exit whatever happens), three nginx backends
# (198.18.0.21-23:8080, keepalive on) and iperf3 servers (:5201) in the backend
# namespaces, then measures, with the same client tools from the client namespace:
#
#   1. Fulcrum (release binary, one lcore, net_tap, --no-pci), proxy VIPs
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
# Every run is bounded (--duration, default 10 s each); every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
say() { printf '\n=== %s\n' "$*" >&2; }

[ $# -ge 1 ] || usage
WHAT=$1; shift
[ "$WHAT" = proxy ] || usage
DURATION=10
CONNS=64
P=bench
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --prefix) P=$2; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || die "--duration: 1..300 seconds"
[[ "$CONNS" =~ ^[0-9]+$ ]] && [ "$CONNS" -ge 1 ] && [ "$CONNS" -le 5000 ] || die "--connections: 1..5000"
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, DPDK)"
for t in nginx haproxy wrk iperf3 jq; do
    command -v "$t" >/dev/null || die "$t not found (scripts/setup.sh installs it)"
done

BIN_DIR=${FULCRUM_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
DP_BIN=$BIN_DIR/fulcrum-dataplane
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

if [ ! -x "$DP_BIN" ]; then
    say "build (release)"
    cargo build --release -p fulcrum-dataplane 2>&1 | tail -n 3 >&2
fi
[ -x "$DP_BIN" ] || die "$DP_BIN not found"

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
}

# ---------------------------------------------------------------------------- Fulcrum

say "Fulcrum: $DP_BIN, one lcore"
cat >"$WORK/fulcrum.toml" <<CONF
[dataplane]
address = "198.18.0.2/24"
lcores = "0"
file_prefix = "$P"
software = { tap = "$P-dp" }

[[vip]]
address = "198.18.1.1"
port = 80
mode = "proxy"
max_connections = 10000
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
nsx fab "$DP_BIN" --config "$WORK/fulcrum.toml" --stats-file "$WORK/stats.json" >"$WORK/dataplane.log" 2>&1 &
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

measure fulcrum 198.18.1.1 198.18.1.2

say "Fulcrum: stop (SIGINT)"
kill -INT "$DP_PID"
for _ in $(seq 100); do kill -0 "$DP_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$DP_PID" 2>/dev/null; then kill -KILL "$DP_PID"; fi
wait "$DP_PID" 2>/dev/null || true
DP_PID=""
grep -E 'mbufs in use' "$WORK/dataplane.log" >&2 || true
if [ -s "$WORK/stats.json" ]; then
    jq -c '.vips[]? | {vip: "\(.address):\(.port)", accepted, drop_connect_failed, drop_limit, drop_no_port,
        backends: [.backends[] | {address, opened, connect_failures}]}' "$WORK/stats.json" >&2 || true
fi

# ---------------------------------------------------------------------------- HAProxy

say "HAProxy $(haproxy -v | awk 'NR==1 {print $3}'): mode tcp, nbthread 1, on 198.18.0.1 in $P-fab"
cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
    # Two descriptors per proxied connection: stay inside RLIMIT_NOFILE (often 20000 here).
    maxconn 8000
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

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}
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
