#!/usr/bin/env bash
# Prepare this machine for building and testing Fulcrum in software mode.
#
#  * installs the Debian packages the project needs (apt-get update only when
#    something is missing);
#  * checks that a Rust toolchain (cargo) is present;
#  * reserves 2 MB hugepages and mounts hugetlbfs at /dev/hugepages when it can;
#    when it cannot, software mode falls back to --no-huge (not an error).
#
# Idempotent: safe to run any number of times. Leaves system services alone
# (tests start their own nginx/haproxy/... inside network namespaces).
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

PACKAGES=(
    libdpdk-dev dpdk dpdk-dev
    clang libclang-dev pkg-config
    iproute2 iputils-ping iputils-arping
    curl python3-scapy
    nginx-light socat ncat iperf3 wrk haproxy
    tcpdump procps jq
    ethtool
    bird2
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        log "WARNING: not root and no sudo; package install and hugepages may fail"
    fi
fi

# ---------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    case "$status" in
        ii*) ;;
        *) missing+=("$p") ;;
    esac
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "all ${#PACKAGES[@]} Debian packages already installed"
else
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # policy-rc.d is not touched: services the packages start are left as the
    # distribution configures them.
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    log "packages installed"
fi

# ---------------------------------------------------------------- rust
if command -v cargo >/dev/null 2>&1; then
    log "rust toolchain: $(cargo --version) / $(rustc --version 2>/dev/null || echo 'rustc ?')"
else
    log "ERROR: cargo not found on PATH. Install a Rust toolchain (rustup, or Debian's"
    log "       'cargo' package) before building Fulcrum; this script does not fetch one."
    exit 1
fi

if pkg-config --exists libdpdk 2>/dev/null; then
    log "DPDK $(pkg-config --modversion libdpdk)"
else
    log "WARNING: pkg-config cannot find libdpdk"
fi

# ---------------------------------------------------------------- hugepages
HP_WANT=${FULCRUM_HUGEPAGES:-512}          # 2 MB pages
HP_SYSFS=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
HP_DIR=/dev/hugepages

hugepages_ok=1
fallback() {
    hugepages_ok=0
    log "hugepages: $* -- software mode will fall back to --no-huge"
}

if [ ! -e "$HP_SYSFS" ]; then
    fallback "kernel has no 2 MB hugepage support"
else
    have=$(cat "$HP_SYSFS")
    if [ "$have" -ge "$HP_WANT" ]; then
        log "hugepages: $have x 2 MB already reserved"
    else
        # Only reserve when memory clearly allows it (want + 1 GiB headroom).
        avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
        need_kb=$(( (HP_WANT - have) * 2048 + 1024 * 1024 ))
        if [ "${avail_kb:-0}" -lt "$need_kb" ]; then
            fallback "not enough free memory to reserve $HP_WANT x 2 MB"
        elif ! { echo "$HP_WANT" | $SUDO tee "$HP_SYSFS" >/dev/null; } 2>/dev/null; then
            fallback "cannot write $HP_SYSFS"
        else
            have=$(cat "$HP_SYSFS")
            if [ "$have" -gt 0 ]; then
                log "hugepages: $have x 2 MB reserved (wanted $HP_WANT)"
            else
                fallback "kernel reserved none"
            fi
        fi
    fi
    if [ "$hugepages_ok" -eq 1 ]; then
        if awk -v d="$HP_DIR" '$2 == d && $3 == "hugetlbfs" {found=1} END {exit !found}' /proc/mounts; then
            log "hugetlbfs already mounted at $HP_DIR"
        elif $SUDO mkdir -p "$HP_DIR" && $SUDO mount -t hugetlbfs -o pagesize=2M nodev "$HP_DIR" 2>/dev/null; then
            log "hugetlbfs mounted at $HP_DIR"
        else
            fallback "cannot mount hugetlbfs at $HP_DIR"
        fi
    fi
fi

log "done (hugepages: $([ "$hugepages_ok" -eq 1 ] && echo yes || echo 'no, --no-huge'))"
