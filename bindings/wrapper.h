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

/* net_memif disconnect guard (shim.c): the PMD's private data of a started
 * net_memif port on `socket` (NULL unless DPDK 22.11's layout checks out),
 * its CONNECTED flag, the connection's ring pairs, and its control-channel lock. */
void *fulcrum_memif_private(uint16_t port, const char *socket);
int fulcrum_memif_connected(void *pmd);
int fulcrum_memif_rings(void *pmd);
int fulcrum_memif_trylock(void *pmd);
void fulcrum_memif_unlock(void *pmd);
