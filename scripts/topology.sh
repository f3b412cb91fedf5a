#!/usr/bin/env bash
# The standard software-mode topology for Fulcrum (one-armed, as Maglev/Katran deploy).
#
#   topology.sh up     [--prefix P] [--instances N] [--mtu BYTES]
#   topology.sh attach [--prefix P] [--tap NAME | --instance K] [--timeout SECONDS]
#   topology.sh down   [--prefix P] [--tap NAME]
#   topology.sh status [--prefix P]
#   topology.sh mtu    [--prefix P] --mtu BYTES
#
# Default prefix P=fl, default tap NAME=P-dp. Prefix: 1..8 chars of [a-z0-9], so that
# every interface name fits in 15 chars. --instances N (1..9): N Fulcrum instances
# announcing the VIPs over BGP to the router (see "Several instances" below).
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
#  --mtu BYTES (576..9000, default 1500): the IP MTU of every link `up` makes (jumbo
#    frames: 9000); `mtu --mtu BYTES` changes it on a topology that is up. The dataplane gives its own interface its `[dataplane] mtu`; the
#    bridge takes the smallest MTU of its ports, as Linux bridges do.
#  P-be1..3 have a default route via P-rtr (198.18.0.254), beside their on-link
#    198.18.0.0/24, so DSR replies (sent straight from the backend) reach P-out.
#  Only 198.18.0.0/15 is used; nothing routes out of the topology.
#
# `up` is NOT idempotent on purpose: it fails if any P-* namespace already exists
# (a leftover topology means an earlier run did not clean up; run `down` first).
# On failure half way, `up` removes what it created.
# `down` is idempotent: it succeeds when nothing exists.
# `attach` waits (bounded, --timeout, default 20 s) for the dataplane's interface (a tap,
# or the kernel side of the veth an af_packet/af_xdp dataplane creates: the same to
# this script) to appear in P-fab or in the root namespace and be brought up once the DPDK port has started
# (so it may be run right after launching the dataplane), moves it into P-fab if needed,
# gives its kernel side a MAC that differs from the DPDK port's (see cmd_attach),
# enslaves it to br0 and sets it up.
# `down` kills every process in the P-* namespaces; a dataplane started in the root
# namespace is not among them: stop it yourself.
#
# Several instances (`up --instances N`, N = 1..9): the same topology, except:
#  * instance k's dataplane has address 198.18.0.2 (k = 1) or 198.18.0.(40+k) (k >= 2;
#    .3 stays free for FullNAT's SNAT address) and tap P-dp (k = 1) or P-dpk; it runs
#    in P-fab like the single dataplane, with EAL file prefix P (k = 1) or P-dpk, and
#    `attach --instance k` puts its tap on br0;
#  * instance k has a kernel namespace P-lbk, eth0 198.18.0.(50+k)/24 on br0, default
#    route via the router: its control plane, its BIRD and its health checks live there
#    (BIRD cannot speak from the dataplane's address: DPDK owns it). Its BIRD (AS 65001)
#    announces the static routes of the routes file (written by the control plane:
#    `route 198.18.1.1/32 via <dataplane address>;` lines, empty at first) to the router
#    in BGP session `uplink`, with the dataplane's address as next hop (third-party
#    next hop on the shared subnet) and nothing else;
#  * the router P-rtr has NO static VIP route: it runs BIRD (AS 65000), one eBGP session
#    per instance (import all, export none), and installs the VIP routes in its kernel
#    table with `merge paths on` (ECMP over the instances announcing a VIP) and
#    fib_multipath_hash_policy=1 (L4 hash: connections of one client spread).
#    BGP: hold time 3 s, keepalive 1 s, error wait time 1, 5 (a session comes back
#    within ~5 s of an error); BFD 100 ms x 5 on every session, so a silent peer
#    (host lost, link down, BIRD frozen) is declared down after ~0.5 s (the hold
#    timer, 3 s, is the fallback); a peer that closes its session (BIRD stopped or
#    killed) is withdrawn at once.
#  * files (configs, control sockets, pidfiles, logs, routes files) live in
#    /run/fulcrum-topology/P/{rtr,lb1,lb2,...}; `up` prints one line per instance
#    (stdout) with what its control plane needs; `down` stops every BIRD by its
#    pidfile and removes the directory; `status` shows the BGP sessions.
#  * P-cli still routes 198.18.1.0/24 via 198.18.0.2 (instance 1), not through BGP.
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
INSTANCES=""
INSTANCE=""
MTU=1500
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --tap) [ $# -ge 2 ] || usage; TAP=$2; shift 2 ;;
        --tap=*) TAP=${1#*=}; shift ;;
        --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        --instances) [ $# -ge 2 ] || usage; INSTANCES=$2; shift 2 ;;
        --instances=*) INSTANCES=${1#*=}; shift ;;
        --instance) [ $# -ge 2 ] || usage; INSTANCE=$2; shift 2 ;;
        --instance=*) INSTANCE=${1#*=}; shift ;;
        --mtu) [ $# -ge 2 ] || usage; MTU=$2; shift 2 ;;
        --mtu=*) MTU=${1#*=}; shift ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ "$PREFIX" =~ ^[a-z0-9]{1,8}$ ]] || die "prefix must be 1..8 chars of [a-z0-9]: '$PREFIX'"
MAX_INSTANCES=9
[[ "$MTU" =~ ^[0-9]{3,4}$ ]] && [ "$MTU" -ge 576 ] && [ "$MTU" -le 9000 ] || die "--mtu must be 576..9000 bytes: '$MTU'"
if [ -n "$INSTANCES" ]; then
    [[ "$INSTANCES" =~ ^[1-9]$ ]] || die "--instances must be 1..$MAX_INSTANCES: '$INSTANCES'"
fi
if [ -n "$INSTANCE" ]; then
    [[ "$INSTANCE" =~ ^[1-9]$ ]] || die "--instance must be 1..$MAX_INSTANCES: '$INSTANCE'"
    [ -z "$TAP" ] || die "give --tap or --instance, not both"
fi

# Instance k's addresses and names (see "Several instances" above).
inst_dp_addr() { if [ "$1" -eq 1 ]; then echo 198.18.0.2; else echo "198.18.0.$((40 + $1))"; fi; }
inst_tap() { if [ "$1" -eq 1 ]; then echo "$PREFIX-dp"; else echo "$PREFIX-dp$1"; fi; }
inst_file_prefix() { if [ "$1" -eq 1 ]; then echo "$PREFIX"; else echo "$PREFIX-dp$1"; fi; }
inst_lb_addr() { echo "198.18.0.$((50 + $1))"; }
inst_ns() { echo "$PREFIX-lb$1"; }

if [ -n "$INSTANCE" ]; then TAP=$(inst_tap "$INSTANCE"); fi
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
# Instance namespaces P-lb1..P-lb9 (only with --instances; `down` looks for all).
LB_NS=()
for ((k = 1; k <= MAX_INSTANCES; k++)); do LB_NS+=("$(inst_ns "$k")"); done
# BIRD's files (configs, sockets, pidfiles, logs, routes files).
RUNDIR=/run/fulcrum-topology/$PREFIX
ROUTER_AS=65000
INSTANCE_AS=65001

ns_exists() { [ -e "/var/run/netns/$1" ]; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

quiet_ns() {
    # Disable IPv6 (no router solicitations / MLD noise on the wire).
    local ns=$1
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 >/dev/null
    nsx "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 >/dev/null
    nsx "$ns" ip link set lo up
}

# Every link `up` made, in every namespace of the topology, gets --mtu (veth ends
# first; each bridge then follows its ports).
set_mtu_everywhere() {
    local ns dev
    for ns in "${ALL_NS[@]}" "${LB_NS[@]}"; do
        ns_exists "$ns" || continue
        for dev in $(nsx "$ns" ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
            nsx "$ns" ip link set dev "$dev" mtu "$MTU"
        done
    done
    log "links set to MTU $MTU"
}

cmd_up() {
    for ns in "${ALL_NS[@]}" "${LB_NS[@]}"; do
        ns_exists "$ns" && die "namespace $ns already exists (run: $0 down --prefix $PREFIX)"
    done
    [ ! -e "$RUNDIR" ] || die "$RUNDIR already exists (run: $0 down --prefix $PREFIX)"
    if [ -n "$INSTANCES" ]; then
        command -v bird >/dev/null && command -v birdc >/dev/null ||
            die "--instances needs BIRD 2 (bird, birdc): apt-get install bird2 (scripts/setup.sh installs it)"
    fi
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
    if [ -z "$INSTANCES" ]; then
        nsx "$rtr" ip route add 198.18.1.0/24 via 198.18.0.2 dev eth0
    fi
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
    if [ -n "$INSTANCES" ]; then
        up_instances
    fi
    [ "$MTU" = 1500 ] || set_mtu_everywhere
    UP_DONE=1
    if [ -n "$INSTANCES" ]; then
        log "up: prefix $PREFIX, $INSTANCES instance(s) (namespaces: ${ALL_NS[*]} ${LB_NS[*]:0:$INSTANCES})"
        print_instances
    else
        log "up: prefix $PREFIX (namespaces: ${ALL_NS[*]})"
    fi
}

# ---------------------------------------------------------------- several instances

# BGP timers and BFD, the same on both ends of every session.
bgp_timers() {
    cat <<EOF
    hold time 3;
    keepalive time 1;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 5;
    bfd on;
EOF
}

bfd_protocol() {
    cat <<EOF
protocol bfd {
    interface "eth0" {
        min rx interval 100 ms;
        min tx interval 100 ms;
        idle tx interval 1000 ms;
        multiplier 5;
    };
}
EOF
}

write_router_conf() {
    local dir=$RUNDIR/rtr k
    {
        cat <<EOF
# BIRD of the router $PREFIX-rtr (written by topology.sh up --instances $INSTANCES).
log "$dir/bird.log" all;
router id $ROUTER_FAB_ADDR;

protocol device {
    scan time 10;
}

# VIP routes learnt over BGP go to the kernel; several instances announcing the same
# VIP make one multipath route (ECMP).
protocol kernel {
    ipv4 {
        import none;
        export all;
    };
    merge paths on;
}

EOF
        bfd_protocol
        echo
        for ((k = 1; k <= INSTANCES; k++)); do
            cat <<EOF
protocol bgp lb$k {
    description "instance $k ($(inst_ns "$k"), dataplane $(inst_dp_addr "$k"))";
    local $ROUTER_FAB_ADDR as $ROUTER_AS;
    neighbor $(inst_lb_addr "$k") as $INSTANCE_AS;
$(bgp_timers)
    ipv4 {
        import all;
        export none;
    };
}

EOF
        done
    } >"$dir/bird.conf"
}

write_instance_conf() {
    local k=$1 dir=$RUNDIR/lb$1
    cat >"$dir/bird.conf" <<EOF
# BIRD of instance $k ($(inst_ns "$k"); written by topology.sh up --instances $INSTANCES).
# The control plane writes the routes file and runs \`birdc -s $dir/bird.ctl configure\`.
log "$dir/bird.log" all;
router id $(inst_lb_addr "$k");

protocol device {
    scan time 10;
}

# One line per VIP this instance serves: route 198.18.1.1/32 via $(inst_dp_addr "$k");
protocol static vips {
    ipv4;
    include "$dir/routes.conf";
}

$(bfd_protocol)

# Announces the VIPs (only the routes of \`vips\`) to the router, next hop the
# dataplane's address: the static routes' gateway, on the subnet shared with the
# router, is kept as the BGP next hop (third-party next hop); the export filter sets
# it explicitly too, so no BIRD default can turn it into this speaker's address.
protocol bgp uplink {
    description "router $PREFIX-rtr";
    local $(inst_lb_addr "$k") as $INSTANCE_AS;
    neighbor $ROUTER_FAB_ADDR as $ROUTER_AS;
$(bgp_timers)
    ipv4 {
        import none;
        export filter {
            if proto != "vips" then reject;
            bgp_next_hop = $(inst_dp_addr "$k");
            accept;
        };
    };
}
EOF
}

# Start BIRD in namespace $1 with the files of $RUNDIR/$2 (config checked first).
start_bird() {
    local ns=$1 dir=$RUNDIR/$2
    bird -p -c "$dir/bird.conf" || die "BIRD config $dir/bird.conf does not parse"
    # bird forks into the background once its socket is open.
    nsx "$ns" bird -c "$dir/bird.conf" -s "$dir/bird.ctl" -P "$dir/bird.pid"
}

up_instances() {
    local k ns leaf
    mkdir -p "$RUNDIR/rtr"
    # ECMP over the instances, hashing on the L4 ports too.
    nsx "$PREFIX-rtr" sysctl -qw net.ipv4.fib_multipath_hash_policy=1 >/dev/null
    for ((k = 1; k <= INSTANCES; k++)); do
        ns=$(inst_ns "$k")
        leaf=lb$k
        ip netns add "$ns"
        quiet_ns "$ns"
        nsx "$FAB" ip link add "$leaf" type veth peer name "$leaf-l"
        nsx "$FAB" ip link set "$leaf-l" netns "$ns"
        nsx "$ns" ip link set "$leaf-l" name eth0
        nsx "$ns" ip addr add "$(inst_lb_addr "$k")/24" dev eth0
        nsx "$ns" ip link set eth0 up
        nsx "$FAB" ip link set "$leaf" master br0
        nsx "$FAB" ip link set "$leaf" up
        nsx "$ns" ip route add default via "$ROUTER_FAB_ADDR" dev eth0
        mkdir -p "$RUNDIR/$leaf"
        : >"$RUNDIR/$leaf/routes.conf"
        write_instance_conf "$k"
    done
    write_router_conf
    echo "$INSTANCES" >"$RUNDIR/instances"
    start_bird "$PREFIX-rtr" rtr
    for ((k = 1; k <= INSTANCES; k++)); do
        start_bird "$(inst_ns "$k")" "lb$k"
    done
    # Bounded wait for every session to be established (no routes yet).
    local i=0 down_list
    while :; do
        down_list=()
        for ((k = 1; k <= INSTANCES; k++)); do
            [ "$(bgp_state "$RUNDIR/rtr/bird.ctl" "lb$k")" = Established ] || down_list+=("lb$k")
        done
        [ "${#down_list[@]}" -gt 0 ] || break
        i=$((i + 1))
        if [ "$i" -gt 200 ]; then
            birdc -s "$RUNDIR/rtr/bird.ctl" show protocols >&2 || true
            die "BGP sessions not established within 20 s: ${down_list[*]} (logs: $RUNDIR/*/bird.log)"
        fi
        sleep 0.1
    done
    log "up: BGP sessions established with $INSTANCES instance(s) after $((i / 10)).$((i % 10)) s"
}

# The info column of BGP protocol $2 at the BIRD of socket $1 ("Established", "Active", ...).
bgp_state() {
    birdc -s "$1" show protocols "$2" 2>/dev/null | awk -v p="$2" '$1 == p { print $6 }'
}

print_instances() {
    local k
    for ((k = 1; k <= INSTANCES; k++)); do
        printf 'instance=%d dataplane_address=%s tap=%s file_prefix=%s netns=%s kernel_address=%s bird_socket=%s routes_file=%s bird_config=%s\n' \
            "$k" "$(inst_dp_addr "$k")" "$(inst_tap "$k")" "$(inst_file_prefix "$k")" "$(inst_ns "$k")" \
            "$(inst_lb_addr "$k")" "$RUNDIR/lb$k/bird.ctl" "$RUNDIR/lb$k/routes.conf" "$RUNDIR/lb$k/bird.conf"
    done
}

# SIGTERM every BIRD of this prefix by its pidfile (BIRD then removes the routes it
# installed), wait up to 3 s, then SIGKILL.
stop_birds() {
    [ -d "$RUNDIR" ] || return 0
    local f pid pids=()
    for f in "$RUNDIR"/*/bird.pid; do
        [ -f "$f" ] || continue
        pid=$(tr -dc '0-9' <"$f")
        [ -n "$pid" ] || continue
        # A pidfile left by a BIRD that died long ago may name a recycled pid.
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = bird ] || continue
        pids+=("$pid")
    done
    [ "${#pids[@]}" -gt 0 ] || return 0
    log "down: stopping BIRD (pid ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local i alive=()
    for ((i = 0; i < 30; i++)); do
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ "${#alive[@]}" -gt 0 ] || return 0
        sleep 0.1
    done
    log "down: SIGKILL BIRD ${alive[*]}"
    kill -KILL "${alive[@]}" 2>/dev/null || true
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
    stop_birds
    kill_ns_pids "${ALL_NS[@]}" "${LB_NS[@]}"
    local ns k t
    for ns in "${ALL_NS[@]}" "${LB_NS[@]}"; do
        if ns_exists "$ns"; then
            ip netns delete "$ns" 2>/dev/null || log "down: warning: could not delete $ns"
        fi
    done
    if tap_in_root; then
        ip link delete dev "$TAP" 2>/dev/null || log "down: warning: could not delete $TAP"
    fi
    # Instances' taps (P-dp2..) left in the root namespace, and the DPDK sides
    # (NAME-d) of veth pairs an af_packet/af_xdp dataplane running in the root
    # namespace left there (deleting either side of a veth deletes both).
    for ((k = 1; k <= MAX_INSTANCES; k++)); do
        for t in "$(inst_tap "$k")" "$(inst_tap "$k")-d"; do
            [ "$t" != "$TAP" ] || continue
            if ip link show dev "$t" >/dev/null 2>&1; then
                ip link delete dev "$t" 2>/dev/null || log "down: warning: could not delete $t"
            fi
        done
    done
    # DPDK runtime dirs for --file-prefix P and every P-<suffix> (P-dpk of instances
    # k >= 2, or any other dataplane a test starts in this topology: the `-` keeps
    # them apart from other topologies' prefixes), and hugepage files left by a
    # killed process.
    rm -rf "/var/run/dpdk/$PREFIX"
    rm -f /dev/hugepages/"$PREFIX"map_* 2>/dev/null || true
    for t in /var/run/dpdk/"$PREFIX"-*; do
        [ -e "$t" ] && rm -rf "$t"
    done
    rm -f /dev/hugepages/"$PREFIX"-*map_* 2>/dev/null || true
    rm -rf "$RUNDIR"
    rmdir /run/fulcrum-topology 2>/dev/null || true
    log "down: prefix $PREFIX removed"
}

cmd_status() {
    local ns k n
    for ns in "${ALL_NS[@]}"; do
        if ns_exists "$ns"; then
            echo "== $ns"
            nsx "$ns" ip -br addr
        else
            echo "== $ns (absent)"
        fi
    done
    for ns in "${LB_NS[@]}"; do
        if ns_exists "$ns"; then
            echo "== $ns"
            nsx "$ns" ip -br addr
        fi
    done
    [ -f "$RUNDIR/instances" ] || return 0
    INSTANCES=$(cat "$RUNDIR/instances")
    echo "== instances"
    print_instances
    for n in rtr $(for ((k = 1; k <= INSTANCES; k++)); do echo "lb$k"; done); do
        echo "== BIRD $n ($RUNDIR/$n/bird.ctl)"
        birdc -s "$RUNDIR/$n/bird.ctl" show protocols 2>&1 || true
    done
    if ns_exists "$PREFIX-rtr"; then
        echo "== $PREFIX-rtr routes to the VIPs (198.18.1.0/24)"
        nsx "$PREFIX-rtr" ip route show root 198.18.1.0/24
    fi
}

case "$CMD" in
    up) cmd_up ;;
    attach) cmd_attach ;;
    down) cmd_down ;;
    status) cmd_status ;;
    mtu) ns_exists "$FAB" || die "no topology with prefix $PREFIX"; set_mtu_everywhere ;;
    *) usage ;;
esac
