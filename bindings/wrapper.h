/* Everything Fulcrum uses from DPDK. bindgen reads this with the exact
 * `pkg-config --cflags libdpdk` flags so struct layouts match the C side. */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_ring.h>

/* rte_errno is a per-lcore macro; bindgen cannot see it. */
int fulcrum_rte_errno(void);
