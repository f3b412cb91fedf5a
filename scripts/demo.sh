#!/usr/bin/env bash
# Fulcrum in software mode, end to end, on this machine alone:
# sets up what it needs, builds, brings up the standard topology (network
# namespaces on 198.18.0.0/24), starts three real nginx backends and the real
# DPDK dataplane on net_tap (--no-pci: the host's NICs are never touched)
# with the control plane beside it (VIP, backends and HTTP health checks come
# from it through shared memory), pings the dataplane, sends real HTTP
# requests from the client namespace through the VIP 198.18.1.1:80, prints
# which backend served how many and what fulcrumctl reports, and tears
# everything down. Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
P=${FULCRUM_DEMO_PREFIX:-demo}
WORK=$(mktemp -d /tmp/fulcrum-demo.XXXXXX)
DP_PID=""
CP_PID=""
SHM=/dev/shm/fulcrum-$P

say() { printf '\n=== %s\n' "$*"; }
cleanup() {
    local rc=$?
    if [ -n "$DP_PID" ] && kill -0 "$DP_PID" 2>/dev/null; then kill -KILL "$DP_PID" 2>/dev/null || true; fi
    if [ -n "$CP_PID" ] && kill -0 "$CP_PID" 2>/dev/null; then kill -KILL "$CP_PID" 2>/dev/null || true; fi
    rm -f "$SHM"
    scripts/topology.sh down --prefix "$P" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    if [ "$rc" -eq 0 ]; then say "demo: OK"; else say "demo: FAILED (exit $rc)"; fi
}
trap cleanup EXIT

say "setup"
scripts/setup.sh
say "build"
cargo build --release --bins 2>&1 | tail -n 3

say "topology (prefix $P)"
scripts/topology.sh down --prefix "$P" >/dev/null 2>&1 || true
scripts/topology.sh up --prefix "$P"

REQUESTS=${FULCRUM_DEMO_REQUESTS:-300}

say "three nginx backends (198.18.0.21-23:8080), each answering with its name"
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

cat >"$WORK/controlplane.toml" <<CONF
[controlplane]
shm = "$SHM"
socket = "$WORK/control.sock"
state_file = "$WORK/controlplane.json"
prometheus = ""
health_source = "198.18.0.1"

[[vip]]
address = "198.18.1.1"
port = 80
mode = "proxy"
health = { kind = "http", path = "/", expect_status = 200, interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }
backends = [
  { address = "198.18.0.21", port = 8080, weight = 1 },
  { address = "198.18.0.22", port = 8080, weight = 1 },
  { address = "198.18.0.23", port = 8080, weight = 1 },
]
CONF
cat >"$WORK/fulcrum.toml" <<CONF
[dataplane]
address = "198.18.0.2/24"
lcores = "0"
file_prefix = "$P"
shm = "$SHM"
software = { tap = "$P-dp" }
CONF
CTL=("$ROOT/target/release/fulcrumctl" --socket "$WORK/control.sock")

say "control plane config"
cat "$WORK/controlplane.toml"
say "start fulcrum-controlplane in $P-fab (health checks from 198.18.0.1)"
rm -f "$SHM"
ip netns exec "$P-fab" "$ROOT/target/release/fulcrum-controlplane" --config "$WORK/controlplane.toml" \
    >"$WORK/controlplane.log" 2>&1 &
CP_PID=$!
for _ in $(seq 100); do
    "${CTL[@]}" status >/dev/null 2>&1 && break
    kill -0 "$CP_PID" 2>/dev/null || { cat "$WORK/controlplane.log"; exit 1; }
    sleep 0.1
done
"${CTL[@]}" status

say "dataplane config"
cat "$WORK/fulcrum.toml"

say "start fulcrum-dataplane in $P-fab"
ip netns exec "$P-fab" "$ROOT/target/release/fulcrum-dataplane" \
    --config "$WORK/fulcrum.toml" --stats-file "$WORK/stats.json" >"$WORK/dataplane.log" 2>&1 &
DP_PID=$!
for _ in $(seq 300); do
    grep -q ' ready: ' "$WORK/dataplane.log" && break
    kill -0 "$DP_PID" 2>/dev/null || { cat "$WORK/dataplane.log"; exit 1; }
    sleep 0.1
done
grep ' ready: ' "$WORK/dataplane.log" || { cat "$WORK/dataplane.log"; exit 1; }
scripts/topology.sh attach --prefix "$P" --tap "$P-dp"

say "ping the dataplane from the client namespace"
ip netns exec "$P-cli" ping -c 5 -i 0.2 -W 1 198.18.0.2
say "client's neighbour table"
ip netns exec "$P-cli" ip neigh show 198.18.0.2

say "waiting for the health checks to mark the three backends up"
for _ in $(seq 100); do
    "${CTL[@]}" health --json | python3 -c 'import json, sys
sys.exit(0 if [b["published"] for b in json.load(sys.stdin)] == ["up"] * 3 else 1)' && break
    sleep 0.1
done
"${CTL[@]}" health

say "$REQUESTS HTTP requests from the client to the VIP 198.18.1.1:80, one connection each"
ok=0; failed=0
: >"$WORK/answers"
for _ in $(seq "$REQUESTS"); do
    if ip netns exec "$P-cli" curl -sS -m 5 http://198.18.1.1/ >>"$WORK/answers"; then
        ok=$((ok + 1))
    else
        failed=$((failed + 1))
    fi
done
echo "requests: $ok succeeded, $failed failed"
echo "served by:"
sort "$WORK/answers" | uniq -c | sed 's/^/  /'
say "load: wrk, 5 s, 50 connections, a new connection per request"
ip netns exec "$P-cli" wrk -t1 -c50 -d5s -H 'Connection: close' http://198.18.1.1/ | sed -n '1,/Transfer/p'
say "fulcrumctl status"
"${CTL[@]}" status
say "fulcrumctl health"
"${CTL[@]}" health
say "fulcrumctl stats"
"${CTL[@]}" stats

say "stop the dataplane (SIGINT)"
kill -INT "$DP_PID"
rc=0
wait "$DP_PID" || rc=$?
DP_PID=""
grep -E 'lcore [0-9]+:|port [0-9]+:|mbufs in use' "$WORK/dataplane.log"
[ "$rc" -eq 0 ] || { echo "dataplane exited with $rc"; exit 1; }
say "stop the control plane (SIGTERM)"
kill -TERM "$CP_PID"
wait "$CP_PID" || true
CP_PID=""
say "the dataplane's counters for the VIP (its stats file, written at exit)"
python3 - "$WORK/stats.json" <<'PY'
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

grep -q 'mbufs in use: 0 ' "$WORK/dataplane.log" || { echo "mbufs leaked"; exit 1; }
[ "$failed" -eq 0 ] || { echo "$failed HTTP requests failed"; exit 1; }
