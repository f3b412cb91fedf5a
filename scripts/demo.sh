#!/usr/bin/env bash
# Fulcrum in software mode, end to end, on this machine alone:
# sets up what it needs, builds, brings up the standard topology (network
# namespaces on 198.18.0.0/24), starts three real nginx backends and the real
# DPDK dataplane on a software device (--no-pci: the host's NICs are never touched;
# af_packet on a veth pair the dataplane creates, or FULCRUM_SOFT_DEVICE=tap|af_xdp)
# with the control plane beside it (VIP, backends and HTTP health checks come
# from it through shared memory), pings the dataplane, sends real HTTP
# requests from the client namespace through the VIP 198.18.1.1:80, prints
# which backend served how many and what fulcrumctl reports, and tears
# everything down. Exits non-zero if anything failed.
#
#   scripts/demo.sh                  one instance (as described above)
#   scripts/demo.sh --instances N    N = 2..9 instances behind the router's ECMP
#
# With --instances N, each instance k has its own dataplane and its own control
# plane (in namespace P-lbk, health checks from its kernel address), which
# announces the VIP to the router through its own BIRD (topology.sh up
# --instances N). The demo shows the router's BGP sessions and its multipath
# route to the VIP, sends real HTTP traffic from the outside client P-out and
# prints how many connections each instance carried, compares the instances'
# table digests, takes instance N out of rotation (the router drops its next
# hop, all traffic goes through the others) and puts it back.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
P=${FULCRUM_DEMO_PREFIX:-demo}
REQUESTS=${FULCRUM_DEMO_REQUESTS:-300}
# The dataplane's software device: `[dataplane] software = { DEVICE = "P-dp" }`.
DEVICE=${FULCRUM_SOFT_DEVICE:-af_packet}
case "$DEVICE" in tap|af_packet|af_xdp) ;; *) echo "demo: FULCRUM_SOFT_DEVICE must be tap, af_packet or af_xdp: '$DEVICE'" >&2; exit 2 ;; esac
VIP=198.18.1.1
ROUTER=198.18.0.254

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}
INSTANCES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --instances) [ $# -ge 2 ] || usage; INSTANCES=$2; shift 2 ;;
        --instances=*) INSTANCES=${1#*=}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "demo: unknown argument: $1" >&2; usage ;;
    esac
done
[[ "$INSTANCES" =~ ^[1-9]$ ]] || { echo "demo: --instances must be 1..9: '$INSTANCES'" >&2; exit 2; }

WORK=$(mktemp -d /tmp/fulcrum-demo.XXXXXX)
PIDS=()   # dataplanes and control planes still running (killed on exit)
SHMS=()   # control planes' segments

say() { printf '\n=== %s\n' "$*"; }
forget() { local i; for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" != "$1" ] || unset 'PIDS[i]'; done; }
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    rm -f "${SHMS[@]}"
    # Also stops the BIRDs and removes /var/run/dpdk/<prefix> of every instance.
    scripts/topology.sh down --prefix "$P" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    if [ "$rc" -eq 0 ]; then say "demo: OK"; else say "demo: FAILED (exit $rc)"; fi
}
trap cleanup EXIT
# Interrupted: exit non-zero, so that cleanup reports the failure.
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- shared steps

setup_and_build() {
    say "setup"
    scripts/setup.sh
    say "build"
    cargo build --release --bins 2>&1 | tail -n 3
}

start_backends() {
    say "three nginx backends (198.18.0.21-23:8080), each answering with its name"
    local i d
    for i in 1 2 3; do
        d="$WORK/nginx-be$i"
        mkdir -p "$d/logs"
        cat >"$d/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d;
    uwsgi_temp_path $d; scgi_temp_path $d;
    server {
        listen 198.18.0.2$i:8080;
        keepalive_timeout 0;
        location / { return 200 "be$i\n"; }
    }
}
NGINX
        ip netns exec "$P-be$i" nginx -p "$d" -c "$d/nginx.conf" >"$d/out.log" 2>&1 &
    done
    for i in 1 2 3; do
        for _ in $(seq 100); do
            ip netns exec "$P-be$i" curl -s -m 1 "http://198.18.0.2$i:8080/" >/dev/null && break
            sleep 0.1
        done
        ip netns exec "$P-be$i" curl -sS -m 1 "http://198.18.0.2$i:8080/" >/dev/null
    done
}

# fulcrumctl against the control plane whose files are in directory $1.
ctl() { local d=$1; shift; "$BIN/fulcrumctl" --socket "$d/control.sock" "$@"; }

# write_controlplane_conf DIR SHM HEALTH_SOURCE [EXTRA_TOML]: the VIP, its three
# backends and their HTTP health checks.
write_controlplane_conf() {
    local d=$1 shm=$2 source=$3 extra=${4:-}
    cat >"$d/controlplane.toml" <<CONF
[controlplane]
shm = "$shm"
socket = "$d/control.sock"
state_file = "$d/controlplane.json"
prometheus = ""
health_source = "$source"
${extra}
[[vip]]
address = "$VIP"
port = 80
mode = "proxy"
health = { kind = "http", path = "/", expect_status = 200, interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }
backends = [
  { address = "198.18.0.21", port = 8080, weight = 1 },
  { address = "198.18.0.22", port = 8080, weight = 1 },
  { address = "198.18.0.23", port = 8080, weight = 1 },
]
CONF
}

# write_dataplane_conf DIR ADDRESS LCORE FILE_PREFIX SHM TAP [EXTRA_TOML]
write_dataplane_conf() {
    local d=$1 addr=$2 lcore=$3 prefix=$4 shm=$5 tap=$6 extra=${7:-}
    cat >"$d/fulcrum.toml" <<CONF
[dataplane]
address = "$addr/24"
lcores = "$lcore"
file_prefix = "$prefix"
shm = "$shm"
software = { $DEVICE = "$tap" }
${extra}
CONF
    sed -i '${/^$/d}' "$d/fulcrum.toml"
}

# start_controlplane DIR NETNS SHM: starts it and waits until it answers; its pid in CP_PID.
start_controlplane() {
    local d=$1 ns=$2 shm=$3
    rm -f "$shm"
    SHMS+=("$shm")
    ip netns exec "$ns" "$BIN/fulcrum-controlplane" --config "$d/controlplane.toml" \
        >"$d/controlplane.log" 2>&1 &
    CP_PID=$!
    PIDS+=("$CP_PID")
    for _ in $(seq 100); do
        ctl "$d" status >/dev/null 2>&1 && break
        kill -0 "$CP_PID" 2>/dev/null || { cat "$d/controlplane.log"; exit 1; }
        sleep 0.1
    done
}

# start_dataplane DIR: starts it in P-fab and waits for its ready line; its pid in DP_PID.
start_dataplane() {
    local d=$1
    ip netns exec "$P-fab" "$BIN/fulcrum-dataplane" \
        --config "$d/fulcrum.toml" --stats-file "$d/stats.json" >"$d/dataplane.log" 2>&1 &
    DP_PID=$!
    PIDS+=("$DP_PID")
    for _ in $(seq 300); do
        grep -q ' ready: ' "$d/dataplane.log" && break
        kill -0 "$DP_PID" 2>/dev/null || { cat "$d/dataplane.log"; exit 1; }
        sleep 0.1
    done
    grep ' ready: ' "$d/dataplane.log" || { cat "$d/dataplane.log"; exit 1; }
}

# wait_healthy DIR: until the control plane publishes the three backends up.
wait_healthy() {
    for _ in $(seq 100); do
        ctl "$1" health --json | python3 -c 'import json, sys
sys.exit(0 if [b["published"] for b in json.load(sys.stdin)] == ["up"] * 3 else 1)' && break
        sleep 0.1
    done
}

# stop_dataplane DIR PID: SIGINT, its exit summary; fails if it exits non-zero.
stop_dataplane() {
    local d=$1 pid=$2 rc=0
    kill -INT "$pid"
    wait "$pid" || rc=$?
    forget "$pid"
    grep -E 'lcore [0-9]+:|port [0-9]+:|mbufs in use' "$d/dataplane.log"
    [ "$rc" -eq 0 ] || { echo "dataplane exited with $rc"; exit 1; }
}

stop_controlplane() {
    kill -TERM "$1"
    wait "$1" || true
    forget "$1"
}

# print_stats_file DIR: the dataplane's counters for the VIP (written at exit).
print_stats_file() {
    python3 - "$1/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for v in s.get("vips", []):
    print(f"VIP {v['address']}:{v['port']}: accepted {v['accepted']}, active {v['active']}, "
          f"bytes from clients {v['bytes_from_clients']}, to clients {v['bytes_to_clients']}")
    for b in v["backends"]:
        print(f"  backend {b['address']}:{b['port']} weight {b['weight']}: opened {b['opened']}, "
              f"connect failures {b['connect_failures']}, bytes to {b['bytes_to_backend']} from {b['bytes_from_backend']}")
print("mbufs in use:", s["mbufs_in_use"], "of", s["mbufs_total"])
PY
}

# http_requests NETNS N: N HTTP requests to the VIP, one connection each; prints
# which backend served how many; sets FAILED.
http_requests() {
    local ns=$1 n=$2 ok=0
    FAILED=0
    : >"$WORK/answers"
    for _ in $(seq "$n"); do
        if ip netns exec "$ns" curl -sS -m 5 "http://$VIP/" >>"$WORK/answers"; then
            ok=$((ok + 1))
        else
            FAILED=$((FAILED + 1))
        fi
    done
    echo "requests: $ok succeeded, $FAILED failed"
    echo "served by:"
    sort "$WORK/answers" | uniq -c | sed 's/^/  /'
}

# wrk_load NETNS SECONDS: wrk with 50 connections, a new connection per request.
wrk_load() {
    ip netns exec "$1" wrk -t1 -c50 -d"$2"s -H 'Connection: close' "http://$VIP/" | sed -n '1,/Transfer/p'
}

# ---------------------------------------------------------------- one instance

demo_single() {
    local D=$WORK SHM=/dev/shm/fulcrum-$P
    say "topology (prefix $P)"
    scripts/topology.sh down --prefix "$P" >/dev/null 2>&1 || true
    scripts/topology.sh up --prefix "$P"

    start_backends

    write_controlplane_conf "$D" "$SHM" 198.18.0.1
    write_dataplane_conf "$D" 198.18.0.2 0 "$P" "$SHM" "$P-dp"

    say "control plane config"
    cat "$D/controlplane.toml"
    say "start fulcrum-controlplane in $P-fab (health checks from 198.18.0.1)"
    start_controlplane "$D" "$P-fab" "$SHM"
    local cp=$CP_PID
    ctl "$D" status

    say "dataplane config"
    cat "$D/fulcrum.toml"

    say "start fulcrum-dataplane in $P-fab"
    start_dataplane "$D"
    local dp=$DP_PID
    scripts/topology.sh attach --prefix "$P" --tap "$P-dp"

    say "ping the dataplane from the client namespace"
    ip netns exec "$P-cli" ping -c 5 -i 0.2 -W 1 198.18.0.2
    say "client's neighbour table"
    ip netns exec "$P-cli" ip neigh show 198.18.0.2

    say "waiting for the health checks to mark the three backends up"
    wait_healthy "$D"
    ctl "$D" health

    say "$REQUESTS HTTP requests from the client to the VIP $VIP:80, one connection each"
    http_requests "$P-cli" "$REQUESTS"
    say "load: wrk, 5 s, 50 connections, a new connection per request"
    wrk_load "$P-cli" 5
    say "fulcrumctl status"
    ctl "$D" status
    say "fulcrumctl health"
    ctl "$D" health
    say "fulcrumctl stats"
    ctl "$D" stats

    say "stop the dataplane (SIGINT)"
    stop_dataplane "$D" "$dp"
    say "stop the control plane (SIGTERM)"
    stop_controlplane "$cp"
    say "the dataplane's counters for the VIP (its stats file, written at exit)"
    print_stats_file "$D"

    grep -q 'mbufs in use: 0 ' "$D/dataplane.log" || { echo "mbufs leaked"; exit 1; }
    [ "$FAILED" -eq 0 ] || { echo "$FAILED HTTP requests failed"; exit 1; }
}

# ---------------------------------------------------------------- several instances

# Per instance k (from `topology.sh up --instances N`): dataplane address, tap,
# EAL file prefix, namespace, kernel address, BIRD socket, routes file.
declare -A I_DP I_TAP I_FP I_NS I_KA I_BIRD I_ROUTES
I_CP=() I_DPPID=()
RTR_BIRD=""

idir() { echo "$WORK/lb$1"; }

# The next hops of the router's route to the VIP, sorted, one line.
router_nexthops() {
    ip -n "$P-rtr" route show "$VIP" | grep -o 'via [0-9.]*' | awk '{print $2}' | sort | xargs
}

# wait_nexthops ADDR...: until the router's route to the VIP has exactly these
# next hops (bounded: 20 s); prints how long it took.
wait_nexthops() {
    local want t0=$(date +%s%N) i
    want=$(printf '%s\n' "$@" | sort | xargs)
    for ((i = 0; i < 200; i++)); do
        [ "$(router_nexthops)" = "$want" ] && break
        sleep 0.1
    done
    [ "$(router_nexthops)" = "$want" ] || {
        echo "the router's route to $VIP goes via '$(router_nexthops)', not '$want'"
        birdc -s "$RTR_BIRD" show protocols || true
        exit 1
    }
    echo "router: $VIP via $want after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

show_router() {
    say "router $P-rtr: BGP sessions (birdc show protocols)"
    ip netns exec "$P-rtr" birdc -s "$RTR_BIRD" show protocols
    say "router $P-rtr: kernel route to the VIP"
    ip -n "$P-rtr" route show "$VIP"
}

# Connections each instance's dataplane accepted for the VIP, space separated
# (fulcrumctl --json stats; the control plane reads the counters every second).
connections() {
    local k out=()
    for ((k = 1; k <= INSTANCES; k++)); do
        out+=("$(ctl "$(idir "$k")" --json stats | python3 -c 'import json, sys
print(sum(v["connections_total"] for v in json.load(sys.stdin)["vips"]))')")
    done
    echo "${out[*]}"
}

# carried BEFORE AFTER: prints each instance's share of the connections between
# two connections() readings; sets CARRIED (per instance, space separated).
carried() {
    CARRIED=$(python3 - "$1" "$2" "$INSTANCES" <<'PY'
import sys
before, after, n = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3])
per = [int(a) - int(b) for a, b in zip(after, before)]
total = sum(per) or 1
for k, c in enumerate(per, 1):
    print(f"  instance {k}: {c} connections ({100 * c / total:.1f} %)", file=sys.stderr)
print(" ".join(map(str, per)))
PY
)
}

# Same table everywhere: every instance reports the same digest for the VIP.
compare_digests() {
    local k digests=() d
    for ((k = 1; k <= INSTANCES; k++)); do
        d=""
        for _ in $(seq 100); do
            d=$(ctl "$(idir "$k")" --json vip list | python3 -c 'import json, sys
print(" ".join("%s=%s" % (v["vip"], (v.get("table") or {}).get("digest") or "-") for v in json.load(sys.stdin)))')
            [[ "$d" != *=- && -n "$d" ]] && break
            sleep 0.1
        done
        digests+=("$d")
        echo "instance $k: $d"
    done
    for d in "${digests[@]}"; do
        [ "$d" = "${digests[0]}" ] || { echo "the instances' table digests differ"; exit 1; }
    done
    echo "table digests: equal on all $INSTANCES instances"
}

demo_instances() {
    local k d ns hops=() before after
    say "topology (prefix $P, $INSTANCES instances, BGP to the router)"
    scripts/topology.sh down --prefix "$P" >/dev/null 2>&1 || true
    scripts/topology.sh up --prefix "$P" --instances "$INSTANCES" | tee "$WORK/instances"
    local line kv key val
    while read -r line; do
        for kv in $line; do
            key=${kv%%=*} val=${kv#*=}
            case "$key" in
                instance) k=$val ;;
                dataplane_address) I_DP[$k]=$val ;;
                tap) I_TAP[$k]=$val ;;
                file_prefix) I_FP[$k]=$val ;;
                netns) I_NS[$k]=$val ;;
                kernel_address) I_KA[$k]=$val ;;
                bird_socket) I_BIRD[$k]=$val ;;
                routes_file) I_ROUTES[$k]=$val ;;
            esac
        done
    done <"$WORK/instances"
    RTR_BIRD=$(dirname "$(dirname "${I_BIRD[1]}")")/rtr/bird.ctl

    start_backends

    local ncpu
    ncpu=$(nproc)
    for ((k = 1; k <= INSTANCES; k++)); do
        d=$(idir "$k"); mkdir -p "$d"
        hops+=("${I_DP[$k]}")
        write_controlplane_conf "$d" "/dev/shm/fulcrum-$P-$k" "${I_KA[$k]}" "
[bgp]
bird_socket = \"${I_BIRD[$k]}\"
routes_file = \"${I_ROUTES[$k]}\"
next_hop = \"${I_DP[$k]}\"
"
        # Replies to P-out (beyond the router) leave through the gateway.
        write_dataplane_conf "$d" "${I_DP[$k]}" $(((k - 1) % ncpu)) "${I_FP[$k]}" \
            "/dev/shm/fulcrum-$P-$k" "${I_TAP[$k]}" "gateway = \"$ROUTER\""
    done
    say "instance 1: control plane config (the others differ in addresses and files only)"
    cat "$(idir 1)/controlplane.toml"
    say "instance 1: dataplane config"
    cat "$(idir 1)/fulcrum.toml"

    for ((k = 1; k <= INSTANCES; k++)); do
        d=$(idir "$k")
        say "instance $k: fulcrum-controlplane in ${I_NS[$k]} (health checks from ${I_KA[$k]}, BIRD ${I_BIRD[$k]})"
        start_controlplane "$d" "${I_NS[$k]}" "/dev/shm/fulcrum-$P-$k"
        I_CP[$k]=$CP_PID
        say "instance $k: fulcrum-dataplane ${I_DP[$k]} in $P-fab (tap ${I_TAP[$k]}, file prefix ${I_FP[$k]})"
        start_dataplane "$d"
        I_DPPID[$k]=$DP_PID
        scripts/topology.sh attach --prefix "$P" --instance "$k"
    done

    say "ping every dataplane from the client namespace"
    for ((k = 1; k <= INSTANCES; k++)); do
        ip netns exec "$P-cli" ping -c 3 -i 0.2 -W 1 "${I_DP[$k]}" | tail -n 2
    done

    say "waiting for the health checks and for the router to learn $VIP from every instance"
    for ((k = 1; k <= INSTANCES; k++)); do wait_healthy "$(idir "$k")"; done
    ctl "$(idir 1)" health
    wait_nexthops "${hops[@]}"
    show_router

    say "$REQUESTS HTTP requests from the outside client $P-out to $VIP:80, one connection each"
    before=$(connections)
    http_requests "$P-out" "$REQUESTS"
    [ "$FAILED" -eq 0 ] || { echo "$FAILED HTTP requests failed"; exit 1; }
    say "load from $P-out: wrk, 5 s, 50 connections, a new connection per request"
    wrk_load "$P-out" 5
    sleep 2
    after=$(connections)
    say "connections each instance carried (fulcrumctl stats, connections_total)"
    carried "$before" "$after"
    local total=0 c min
    for c in $CARRIED; do total=$((total + c)); done
    min=$((total / INSTANCES / 4))
    for c in $CARRIED; do
        [ "$c" -ge "$min" ] || { echo "an instance carried $c of $total connections: ECMP did not spread them"; exit 1; }
    done

    say "fulcrumctl vip list on every instance (ANNOUNCED, DIGEST)"
    for ((k = 1; k <= INSTANCES; k++)); do
        echo "-- instance $k"
        ctl "$(idir "$k")" vip list
    done
    say "table digests (fulcrumctl --json vip list)"
    compare_digests

    local n=$INSTANCES
    say "fulcrumctl rotation out on instance $n: it withdraws $VIP, its dataplane keeps running"
    ctl "$(idir "$n")" rotation out
    wait_nexthops "${hops[@]:0:n-1}"
    show_router
    echo "-- instance $n"
    ctl "$(idir "$n")" vip list
    say "traffic from $P-out with instance $n out of rotation"
    before=$(connections)
    http_requests "$P-out" 100
    [ "$FAILED" -eq 0 ] || { echo "$FAILED HTTP requests failed"; exit 1; }
    wrk_load "$P-out" 3
    sleep 2
    after=$(connections)
    say "connections each instance carried while instance $n was out"
    carried "$before" "$after"
    c=$(echo "$CARRIED" | awk '{print $NF}')
    [ "$c" -eq 0 ] || { echo "instance $n carried $c connections while out of rotation"; exit 1; }

    say "fulcrumctl rotation in on instance $n"
    ctl "$(idir "$n")" rotation in
    wait_nexthops "${hops[@]}"
    ip -n "$P-rtr" route show "$VIP"

    for ((k = 1; k <= INSTANCES; k++)); do
        d=$(idir "$k")
        say "instance $k: stop the dataplane (SIGINT) and the control plane (SIGTERM)"
        stop_dataplane "$d" "${I_DPPID[$k]}"
        stop_controlplane "${I_CP[$k]}"
        print_stats_file "$d"
        grep -q 'mbufs in use: 0 ' "$d/dataplane.log" || { echo "instance $k: mbufs leaked"; exit 1; }
    done
}

setup_and_build
if [ "$INSTANCES" -eq 1 ]; then
    demo_single
else
    demo_instances
fi
