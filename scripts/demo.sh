#!/usr/bin/env bash
# Fulcrum in software mode, end to end, on this machine alone:
# sets up what it needs, builds, brings up the standard topology (network
# namespaces on 198.18.0.0/24), starts the real DPDK dataplane on net_tap
# (--no-pci: the host's NICs are never touched), sends real traffic from the
# client namespace, prints what happened and tears everything down.
# Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
P=${FULCRUM_DEMO_PREFIX:-demo}
WORK=$(mktemp -d /tmp/fulcrum-demo.XXXXXX)
DP_PID=""

say() { printf '\n=== %s\n' "$*"; }
cleanup() {
    local rc=$?
    if [ -n "$DP_PID" ] && kill -0 "$DP_PID" 2>/dev/null; then kill -KILL "$DP_PID" 2>/dev/null || true; fi
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

cat >"$WORK/fulcrum.toml" <<CONF
[dataplane]
address = "198.18.0.2/24"
lcores = "0"
file_prefix = "$P"
software = { tap = "$P-dp" }
CONF
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

say "stop the dataplane (SIGINT)"
kill -INT "$DP_PID"
rc=0
wait "$DP_PID" || rc=$?
DP_PID=""
grep -E 'lcore [0-9]+:|port [0-9]+:|mbufs in use' "$WORK/dataplane.log"
[ "$rc" -eq 0 ] || { echo "dataplane exited with $rc"; exit 1; }
grep -q 'mbufs in use: 0 ' "$WORK/dataplane.log" || { echo "mbufs leaked"; exit 1; }
