#!/usr/bin/env bash
# Build and test Fulcrum: setup, release build of every binary, then every crate's unit
# tests and the integration tests (real dataplane in network namespaces, on the
# harness's default software device, or FULCRUM_SOFT_DEVICE=tap|af_packet|af_xdp),
# one test at a time, and then a smoke set on net_tap (FULCRUM_SMOKE_DEVICE to change
# it): the demo path (dataplane and control plane up, ARP, ping, clean exit), a proxy
# VIP, DSR and FullNAT, and the outside client through the router. Leftover test
# topologies (prefix t + 5 hex digits) are removed on exit, whatever happened.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# The integration tests run the release binaries from here (see tests/src/lib.rs).
export FULCRUM_BIN_DIR=${FULCRUM_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

LOG=$(mktemp /tmp/fulcrum-test.XXXXXX.log)
declare -a STEPS=()
START=$(date +%s)

# The harness writes /run/fulcrum-tests/<prefix>.owner (the test process's pid) for each
# topology it builds: a topology whose owner is still alive belongs to a test run going
# on concurrently (another shell, another developer) and is left alone.
OWNER_DIR=/run/fulcrum-tests
owner_alive() {
    local f="$OWNER_DIR/$1.owner" pid
    [ -r "$f" ] || return 1
    pid=$(head -n1 "$f" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}
remove_topology() {
    local prefix=$1
    owner_alive "$prefix" && return 0
    echo "test.sh: removing leftover topology $prefix" >&2
    "$ROOT/scripts/topology.sh" down --prefix "$prefix" >/dev/null 2>&1 || true
    rm -f "$OWNER_DIR/$prefix.owner"
}
cleanup_topologies() {
    local ns prefix d
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^t[0-9a-f]\{5\}-' || true); do
        prefix=${ns%%-*}
        [ -e "/var/run/netns/$ns" ] || continue   # already removed with its prefix
        remove_topology "$prefix"
    done
    # Runtime dirs of test prefixes whose namespaces are gone already.
    # (P itself, and P-<suffix> of further dataplanes in the same topology.)
    for d in /var/run/dpdk/t????? /var/run/dpdk/t?????-*; do
        [ -e "$d" ] || continue
        prefix=$(basename "$d")
        prefix=${prefix%%-*}
        [[ "$prefix" =~ ^t[0-9a-f]{5}$ ]] || continue
        [ -e "/var/run/netns/$prefix-fab" ] && continue   # its namespaces are handled above
        remove_topology "$prefix"
    done
    # BIRD files (and daemons, stopped by pidfile) of --instances topologies.
    for d in /run/fulcrum-topology/t?????; do
        [ -e "$d" ] || continue
        prefix=$(basename "$d")
        [[ "$prefix" =~ ^t[0-9a-f]{5}$ ]] || continue
        remove_topology "$prefix"
    done
    for d in "$OWNER_DIR"/t?????.owner; do
        [ -e "$d" ] || continue
        prefix=$(basename "$d" .owner)
        owner_alive "$prefix" || rm -f "$d"
    done
}

summary() {
    local rc=$?
    set +e
    cleanup_topologies
    echo
    echo "==================== fulcrum test summary ===================="
    local s
    for s in "${STEPS[@]}"; do echo "  $s"; done
    if [ -s "$LOG" ]; then
        local passed failed ignored
        passed=$(grep -E '^test result:' "$LOG" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
        failed=$(grep -E '^test result:' "$LOG" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
        ignored=$(grep -E '^test result:' "$LOG" | sed -E 's/.* ([0-9]+) ignored.*/\1/' | awk '{s+=$1} END {print s+0}')
        echo "  test binaries: $(grep -cE '^test result:' "$LOG")  ignored: $ignored"
        echo "  time: $(( $(date +%s) - START )) s"
        echo "summary: $passed passed, $failed failed"
        if [ "$failed" -gt 0 ]; then
            echo "  failed tests:"
            grep -E '^test .* \.\.\. FAILED$' "$LOG" | sed 's/^/    /'
        fi
    fi
    echo "  result: $([ "$rc" -eq 0 ] && echo OK || echo "FAILED (exit $rc)")"
    echo "=============================================================="
    rm -f "$LOG"
    exit "$rc"
}
trap summary EXIT

step() {
    local name=$1; shift
    local t0=$(date +%s) rc=0
    echo "==> $name: $*"
    "$@" || rc=$?
    STEPS+=("$(printf '%-8s %-6s %4ss  %s' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAIL")" $(( $(date +%s) - t0 )) "$*")")
    return "$rc"
}

cleanup_topologies
step setup scripts/setup.sh
step build cargo build --release --workspace --bins
if [ ! -x "$FULCRUM_BIN_DIR/fulcrum-dataplane" ]; then
    echo "test.sh: $FULCRUM_BIN_DIR/fulcrum-dataplane was not built" >&2
    exit 1
fi
run_tests() {
    cargo test --release --workspace -- --test-threads=1 2>&1 | tee "$LOG"
}
# The smoke set on the other device: "<test binary> <test name>".
SMOKE_DEVICE=${FULCRUM_SMOKE_DEVICE:-tap}
SMOKE=(
    "foundation ping_and_arp"
    "foundation sigterm_clean_exit_of_both_daemons"
    "proxy http_spread_equal_weights"
    "forward dsr_http_and_iperf3"
    "forward fullnat_http_and_iperf3"
    "edge outside_client_through_the_router"
)
run_smoke() {
    local entry bin name
    for entry in "${SMOKE[@]}"; do
        read -r bin name <<<"$entry"
        FULCRUM_SOFT_DEVICE=$SMOKE_DEVICE cargo test --release -p fulcrum-tests --test "$bin" -- \
            --test-threads=1 --exact "$name" 2>&1 | tee -a "$LOG" || return 1
    done
}
RC=0
step test run_tests || RC=1
step "smoke-$SMOKE_DEVICE" run_smoke || RC=1
exit "$RC"
