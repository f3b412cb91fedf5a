#!/usr/bin/env bash
# The standard software-mode topology for Fulcrum (one-armed, as Maglev/Katran deploy).
#
#   topology.sh up     [--prefix P]
#   topology.sh attach [--prefix P] [--tap NAME] [--timeout SECONDS]
#   topology.sh down   [--prefix P] [--tap NAME]
#   topology.sh status [--prefix P]
#
# Default prefix P=fl, default tap NAME=P-dp. Prefix: 1..8 chars of [a-z0-9], so that
# every interface name fits in 15 chars.
#
#                       namespace P-fab
#                  +-----------------------------+
#  P-cli  eth0 ----|- cli                        |
#  198.18.0.10     |        br0 198.18.0.1/24    |
#  P-be1  eth0 ----|- be1   (control plane addr) |
#  198.18.0.21     |                             |
#  P-be2  eth0 ----|- be2          P-dp (net_tap)|---- fulcrum-dataplane (198.18.0.2)
#  198.18.0.22     |                             |
#  P-be3  eth0 ----|- be3                        |
#  198.18.0.23     +-----------------------------+
#
#  P-rtr  eth0 ----|- rtr                        |
#  198.18.0.254    +-----------------------------+
#    | eth1 198.19.0.1/24  (a router: ip_forward=1)
#    |
#  P-out  eth0 198.19.0.10/24: the outside client, beyond the router
#
#  P-cli routes 198.18.1.0/24 (the VIPs) via 198.18.0.2 (in-fabric client).
#  P-rtr routes 198.18.1.0/24 via 198.18.0.2 and has NO default route: it knows the
#    fabric (198.18.0.0/24), the outside network (198.19.0.0/24) and the VIPs only, so
#    packets to anything else (replies to spoofed sources) die there.
#  P-rtr also has a blackhole route for 198.19.128.0/17, the prefix flood tests spoof
#    their sources from (tests/src/bin/synflood.rs, run in P-out): replies to those
#    sources are discarded there silently (no ICMP back towards the fabric), and
#    rp_filter is 0 on the router, so the spoofed packets are forwarded at all (see
#    cmd_up).
#  P-out's default route is P-rtr (198.19.0.1).
#  P-be1..3 have a default route via P-rtr (198.18.0.254), beside their on-link
#    198.18.0.0/24, so DSR replies (sent straight from the backend) reach P-out.
#  Only 198.18.0.0/15 is used; nothing routes out of the topology.
#
# `up` is NOT idempotent on purpose: it fails if any P-* namespace already exists
# (a leftover topology means an earlier run did not clean up; run `down` first).
# On failure half way, `up` removes what it created.
# `down` is idempotent: it succeeds when nothing exists.
# `attach` waits (bounded, --timeout, default 20 s) for the dataplane's tap interface to
# appear in P-fab or in the root namespace and be brought up by the DPDK port's start
# (so it may be run right after launching the dataplane), moves it into P-fab if needed,
# gives its kernel side a MAC that differs from the DPDK port's (see cmd_attach),
# enslaves it to br0 and sets it up.
# `down` kills every process in the P-* namespaces; a dataplane started in the root
# namespace is not among them: stop it yourself.
set -euo pipefail

die() { printf 'topology: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'topology: %s\n' "$*" >&2; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 1 ] || usage
CMD=$1; shift
PREFIX=fl
TAP=""
TIMEOUT=20
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --tap) [ $# -ge 2 ] || usage; TAP=$2; shift 2 ;;
        --tap=*) TAP=${1#*=}; shift ;;
        --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ "$PREFIX" =~ ^[a-z0-9]{1,8}$ ]] || die "prefix must be 1..8 chars of [a-z0-9]: '$PREFIX'"
TAP=${TAP:-$PREFIX-dp}
[ "${#TAP}" -le 15 ] || die "tap name too long (max 15): '$TAP'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be whole seconds"

FAB=$PREFIX-fab
LEAVES=(cli be1 be2 be3)
declare -A LEAF_ADDR=([cli]=198.18.0.10 [be1]=198.18.0.21 [be2]=198.18.0.22 [be3]=198.18.0.23)
ROUTER_FAB_ADDR=198.18.0.254
ROUTER_OUT_ADDR=198.19.0.1
OUT_ADDR=198.19.0.10
# Sources the flood tests spoof (blackholed at the router).
SPOOF_PREFIX=198.19.128.0/17
ALL_NS=("$FAB" "$PREFIX-cli" "$PREFIX-be1" "$PREFIX-be2" "$PREFIX-be3" "$PREFIX-rtr" "$PREFIX-out")

ns_exists() { [ -e "/var/run/netns/$1" ]; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

quiet_ns() {
    # Disable IPv6 (no router solicitations / MLD noise on the wire).
    local ns=$1
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 >/dev/null
    nsx "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 >/dev/null
    nsx "$ns" ip link set lo up
}

cmd_up() {
    for ns in "${ALL_NS[@]}"; do
        ns_exists "$ns" && die "namespace $ns already exists (run: $0 down --prefix $PREFIX)"
    done
    # From here on, any failure (set -e exits the script) removes what was created.
    UP_DONE=0
    trap '[ "$UP_DONE" = 1 ] || { log "up failed; cleaning up"; set +e; cmd_down >/dev/null 2>&1; }' EXIT

    ip netns add "$FAB"
    quiet_ns "$FAB"
    nsx "$FAB" ip link add br0 type bridge stp_state 0 forward_delay 0
    nsx "$FAB" ip addr add 198.18.0.1/24 dev br0
    nsx "$FAB" ip link set br0 up
    # Do not let netfilter look at bridged frames: tests send malformed IP on purpose.
    if nsx "$FAB" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
        nsx "$FAB" sysctl -qw net.bridge.bridge-nf-call-iptables=0 >/dev/null || true
        nsx "$FAB" sysctl -qw net.bridge.bridge-nf-call-ip6tables=0 >/dev/null 2>&1 || true
        nsx "$FAB" sysctl -qw net.bridge.bridge-nf-call-arptables=0 >/dev/null 2>&1 || true
    fi

    for leaf in "${LEAVES[@]}"; do
        local ns=$PREFIX-$leaf
        ip netns add "$ns"
        quiet_ns "$ns"
        # Create the pair inside P-fab (so no name clash in the root namespace),
        # then move the leaf end out and rename it eth0.
        nsx "$FAB" ip link add "$leaf" type veth peer name "$leaf-l"
        nsx "$FAB" ip link set "$leaf-l" netns "$ns"
        nsx "$ns" ip link set "$leaf-l" name eth0
        nsx "$ns" ip addr add "${LEAF_ADDR[$leaf]}/24" dev eth0
        nsx "$ns" ip link set eth0 up
        nsx "$FAB" ip link set "$leaf" master br0
        nsx "$FAB" ip link set "$leaf" up
    done
    # VIPs live in 198.18.1.0/24 behind the dataplane.
    nsx "$PREFIX-cli" ip route add 198.18.1.0/24 via 198.18.0.2 dev eth0

    # The router: one leg on br0, one on the outside network with its client.
    local rtr=$PREFIX-rtr out=$PREFIX-out
    ip netns add "$rtr"
    quiet_ns "$rtr"
    nsx "$FAB" ip link add rtr type veth peer name rtr-l
    nsx "$FAB" ip link set rtr-l netns "$rtr"
    nsx "$rtr" ip link set rtr-l name eth0
    nsx "$rtr" ip addr add "$ROUTER_FAB_ADDR/24" dev eth0
    nsx "$rtr" ip link set eth0 up
    nsx "$FAB" ip link set rtr master br0
    nsx "$FAB" ip link set rtr up
    ip netns add "$out"
    quiet_ns "$out"
    nsx "$rtr" ip link add eth1 type veth peer name out-l
    nsx "$rtr" ip link set out-l netns "$out"
    nsx "$out" ip link set out-l name eth0
    nsx "$rtr" ip addr add "$ROUTER_OUT_ADDR/24" dev eth1
    nsx "$rtr" ip link set eth1 up
    nsx "$out" ip addr add "$OUT_ADDR/24" dev eth0
    nsx "$out" ip link set eth0 up
    nsx "$rtr" sysctl -qw net.ipv4.ip_forward=1 >/dev/null
    # No redirects: a router telling fabric hosts about shorter paths would make
    # their routing depend on what they heard.
    nsx "$rtr" sysctl -qw net.ipv4.conf.all.send_redirects=0 >/dev/null
    nsx "$rtr" sysctl -qw net.ipv4.conf.default.send_redirects=0 >/dev/null
    nsx "$rtr" sysctl -qw net.ipv4.conf.eth0.send_redirects=0 >/dev/null
    nsx "$rtr" ip route add 198.18.1.0/24 via 198.18.0.2 dev eth0
    # Flood tests send from P-out with sources spoofed in $SPOOF_PREFIX (inside
    # 198.18.0.0/15, so nothing leaves the benchmarking range). On the Internet a
    # router cannot filter random sources: an edge router in front of a load balancer
    # has routes (a default, or a full table) back to nearly every address, so strict
    # reverse-path filtering passes spoofed packets anyway, and where routing is
    # asymmetric it drops legitimate ones. Model that: no reverse-path filter here
    # (with rp_filter=1 the kernel would drop these sources for arriving on eth1
    # while their route is the blackhole), and replies to them go to a blackhole:
    # they die at the router, as replies to unrouted sources die somewhere upstream.
    nsx "$rtr" sysctl -qw net.ipv4.conf.all.rp_filter=0 >/dev/null
    nsx "$rtr" sysctl -qw net.ipv4.conf.default.rp_filter=0 >/dev/null
    nsx "$rtr" sysctl -qw net.ipv4.conf.eth0.rp_filter=0 >/dev/null
    nsx "$rtr" sysctl -qw net.ipv4.conf.eth1.rp_filter=0 >/dev/null
    nsx "$rtr" ip route add blackhole "$SPOOF_PREFIX"
    nsx "$out" ip route add default via "$ROUTER_OUT_ADDR" dev eth0
    # Backends answer outside clients (DSR) through the router; their on-link
    # 198.18.0.0/24 route stays the more specific one.
    for leaf in be1 be2 be3; do
        nsx "$PREFIX-$leaf" ip route add default via "$ROUTER_FAB_ADDR" dev eth0
    done
    UP_DONE=1
    log "up: prefix $PREFIX (namespaces: ${ALL_NS[*]})"
}

tap_in_fab() { ns_exists "$FAB" && nsx "$FAB" ip link show dev "$TAP" >/dev/null 2>&1; }
tap_in_root() { ip link show dev "$TAP" >/dev/null 2>&1; }
# IFF_UP in the interface flags: net_tap creates the interface down when EAL probes the
# vdev and sets it up in rte_eth_dev_start(), so "up" means the port is started.
tap_is_up() {
    local flags
    if [ "$1" = fab ]; then
        flags=$(nsx "$FAB" cat "/sys/class/net/$TAP/flags" 2>/dev/null) || return 1
    else
        flags=$(cat "/sys/class/net/$TAP/flags" 2>/dev/null) || return 1
    fi
    [ $((flags & 1)) -eq 1 ]
}

cmd_attach() {
    ns_exists "$FAB" || die "namespace $FAB does not exist (run: $0 up --prefix $PREFIX)"
    # Wait (bounded) for the tap to exist AND for the DPDK port to be started. Touching it
    # earlier breaks things: rte_eth_dev_start() sets the kernel side's MAC again (undoing
    # the change below), and net_tap opens its queues by interface name (TUNSETIFF) in
    # the namespace the DPDK process runs in, so moving the interface out of the root
    # namespace before the port is started makes net_tap create a second interface there.
    local steps=$((TIMEOUT * 10)) i=0 where="" seen=""
    while [ "$i" -lt "$steps" ]; do
        if tap_in_fab; then seen=fab; tap_is_up fab && { where=fab; break; }
        elif tap_in_root; then seen=root; tap_is_up root && { where=root; break; }
        fi
        sleep 0.1
        i=$((i + 1))
    done
    case "$where" in
        fab) ;;
        root)
            log "attach: moving $TAP from the root namespace into $FAB"
            ip link set dev "$TAP" netns "$FAB"
            ;;
        *)
            if [ -n "$seen" ]; then
                die "tap interface $TAP exists (in ${seen/fab/$FAB}) but was not brought up within ${TIMEOUT}s: the DPDK port was never started"
            fi
            die "tap interface $TAP did not appear in $FAB nor in the root namespace within ${TIMEOUT}s (is the dataplane running with --vdev=net_tap0,iface=$TAP?)"
            ;;
    esac
    # net_tap gives the kernel side of the tap the same MAC as the DPDK port. As a
    # bridge port that MAC would be a "local" address of br0: the bridge would deliver
    # unicast frames for the dataplane to its own stack instead of forwarding them out
    # of the tap. Give the kernel side a different (random, locally administered) MAC;
    # net_tap hands every frame the kernel sends out of the tap to the DPDK port anyway.
    local cur new
    cur=$(nsx "$FAB" cat "/sys/class/net/$TAP/address")
    new=$cur
    while [ "$new" = "$cur" ]; do
        new=$(printf '02:fd:%02x:%02x:%02x:%02x' $((RANDOM % 256)) $((RANDOM % 256)) \
            $((RANDOM % 256)) $((RANDOM % 256)))
    done
    # rte_eth_dev_start() replays the port's MAC onto the kernel side just after it sets
    # the link up: if that lands after our change, set ours again. Done when it has held
    # for 0.5 s (bounded: 5 s).
    local held=0 now
    for ((i = 0; i < 50 && held < 5; i++)); do
        now=$(nsx "$FAB" cat "/sys/class/net/$TAP/address")
        if [ "$now" = "$new" ]; then
            held=$((held + 1))
        else
            nsx "$FAB" ip link set dev "$TAP" address "$new"
            held=0
        fi
        sleep 0.1
    done
    [ "$held" -ge 5 ] || die "could not give the kernel side of $TAP its own MAC (it keeps reverting to $now)"
    nsx "$FAB" sysctl -qw "net.ipv6.conf.$TAP.disable_ipv6=1" >/dev/null 2>&1 || true
    nsx "$FAB" ip link set dev "$TAP" master br0
    nsx "$FAB" ip link set dev "$TAP" up
    log "attach: $TAP is on br0 in $FAB (dataplane MAC $cur, kernel side now $new)"
}

kill_ns_pids() {
    # SIGTERM every process in the given namespaces, wait up to 3 s, then SIGKILL.
    local pids=() ns p
    for ns in "$@"; do
        ns_exists "$ns" || continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$p"); done
    done
    [ "${#pids[@]}" -gt 0 ] || return 0
    log "down: stopping ${#pids[@]} process(es): ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local i=0 alive
    while [ "$i" -lt 30 ]; do
        alive=()
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [ "${#alive[@]}" -gt 0 ] || return 0
        sleep 0.1
        i=$((i + 1))
    done
    log "down: SIGKILL ${alive[*]}"
    kill -KILL "${alive[@]}" 2>/dev/null || true
    i=0
    while [ "$i" -lt 30 ]; do
        alive=()
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [ "${#alive[@]}" -gt 0 ] || return 0
        sleep 0.1
        i=$((i + 1))
    done
    log "down: warning: processes still alive: ${alive[*]}"
}

cmd_down() {
    kill_ns_pids "${ALL_NS[@]}"
    local ns
    for ns in "${ALL_NS[@]}"; do
        if ns_exists "$ns"; then
            ip netns delete "$ns" 2>/dev/null || log "down: warning: could not delete $ns"
        fi
    done
    if tap_in_root; then
        ip link delete dev "$TAP" 2>/dev/null || log "down: warning: could not delete $TAP"
    fi
    # DPDK runtime dir for --file-prefix P, and hugepage files left by a killed process.
    rm -rf "/var/run/dpdk/$PREFIX"
    rm -f /dev/hugepages/"$PREFIX"map_* 2>/dev/null || true
    log "down: prefix $PREFIX removed"
}

cmd_status() {
    local ns
    for ns in "${ALL_NS[@]}"; do
        if ns_exists "$ns"; then
            echo "== $ns"
            nsx "$ns" ip -br addr
        else
            echo "== $ns (absent)"
        fi
    done
}

case "$CMD" in
    up) cmd_up ;;
    attach) cmd_attach ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) usage ;;
esac
