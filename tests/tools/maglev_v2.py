#!/usr/bin/env python3
"""Independent reference for Fulcrum's Maglev table: Katran's MaglevHashV2
population loop (katran/lib/MaglevHashV2.cpp, generateHashRing), written from
the algorithm, not from maglev/src/lib.rs.

Input (stdin), one backend per line, in the caller's list order:
    <key> <offset_hash> <skip_hash> <weight>
all decimal u64 (weight u32). `offset_hash` and `skip_hash` are the two
64-bit hashes of the backend's key (Katran: two MurmurHash3 of the endpoint
hash; Fulcrum: two seeded xxh3 of the key's little-endian bytes); this script
only reduces them, as Katran's genMaglevPermutation does:
    offset = offset_hash % size
    skip   = skip_hash % (size - 1) + 1
Usage: maglev_v2.py <size>  <  backends
Output: one line per slot 0..size-1: the owning backend's input index, or -1
for an empty table.

Population (Katran): every round, each backend in turn adds its weight to its
credit; when credit >= max_weight it pays max_weight and claims the next free
slot of its permutation (offset + next * skip) % size, next counting every
slot it has tried. Stops when every slot is owned.

Fulcrum's two documented choices on top of Katran, applied here explicitly:
  * backends are visited in ascending key order (Katran: the caller's order),
    so the table does not depend on how the list is ordered;
  * weight-0 backends take no part; if no backend has weight the table is
    empty (Katran would fill it with weight-0 endpoints).
"""
import sys


def populate(size, backends):
    """backends: list of (index, key, offset_hash, skip_hash, weight)."""
    live = sorted((b for b in backends if b[4] > 0), key=lambda b: b[1])
    if not live:
        return []
    perm = [(oh % size, sh % (size - 1) + 1) for (_, _, oh, sh, _) in live]
    nxt = [0] * len(live)
    credit = [0] * len(live)
    max_weight = max(b[4] for b in live)
    ring = [-1] * size
    runs = 0
    while True:
        for i, b in enumerate(live):
            credit[i] += b[4]
            if credit[i] < max_weight:
                continue
            credit[i] -= max_weight
            offset, skip = perm[i]
            cur = (offset + nxt[i] * skip) % size
            while ring[cur] >= 0:
                nxt[i] += 1
                cur = (offset + nxt[i] * skip) % size
            ring[cur] = b[0]
            nxt[i] += 1
            runs += 1
            if runs == size:
                return ring


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: maglev_v2.py <size> < 'key offset_hash skip_hash weight' lines")
    size = int(sys.argv[1])
    backends = []
    for n, line in enumerate(l for l in sys.stdin.read().splitlines() if l.strip()):
        key, oh, sh, w = (int(x) for x in line.split())
        backends.append((n, key, oh, sh, w))
    ring = populate(size, backends)
    out = sys.stdout
    if not ring:
        out.write("\n".join("-1" for _ in range(size)) + "\n")
    else:
        out.write("\n".join(str(x) for x in ring) + "\n")


if __name__ == "__main__":
    main()
