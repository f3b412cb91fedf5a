#include <rte_errno.h>

int fulcrum_rte_errno(void) { return rte_errno; }

/* ---- net_memif disconnect guard (see fulcrum-dataplane's dpdk/memif.rs) ----
 *
 * DPDK 22.11's memif PMD handles a peer's disconnect on the EAL interrupt
 * thread (memif_disconnect): it clears ETH_MEMIF_FLAG_CONNECTED, takes the
 * PMD's cc_lock, releases it, and then munmaps the shared regions, while an
 * lcore may still be inside rte_eth_rx_burst/rte_eth_tx_burst on them (it
 * checked the flag at the burst's start). Holding cc_lock while lcores may be
 * in a burst makes that munmap wait. The PMD's private data is not public, so
 * its head is mirrored here (DPDK 22.11: lib/ethdev/ethdev_driver.h,
 * drivers/net/memif/rte_eth_memif.h) and checked against what is public
 * before it is trusted (fulcrum_memif_private). */
#include <string.h>
#include <rte_ethdev.h>
#include <rte_spinlock.h>
#include <rte_version.h>

struct fulcrum_eth_dev_data_head {
	char name[RTE_ETH_NAME_MAX_LEN];
	void **rx_queues;
	void **tx_queues;
	uint16_t nb_rx_queues;
	uint16_t nb_tx_queues;
	struct rte_eth_dev_sriov sriov;
	void *dev_private;
};

struct fulcrum_eth_dev_head {
	void *burst_fns[6];
	struct fulcrum_eth_dev_data_head *data;
};

struct fulcrum_memif_head {
	uint32_t id;
	uint32_t role;
	uint32_t flags;
	char *socket_filename;
	char secret[24];
	void *cc;
	rte_spinlock_t cc_lock;
	char remote_name[RTE_DEV_NAME_MAX_LEN];
	char remote_if_name[RTE_DEV_NAME_MAX_LEN];
	struct {
		uint8_t log2_ring_size;
		uint8_t num_c2s_rings;
		uint8_t num_s2c_rings;
		uint16_t pkt_buffer_size;
	} cfg, run;
};

#define FULCRUM_MEMIF_FLAG_CONNECTED (1u << 1)

/* ethdev's internal lookup by name (exported, version INTERNAL). */
extern struct fulcrum_eth_dev_head *rte_eth_dev_allocated(const char *name);

void *fulcrum_memif_private(uint16_t port, const char *socket)
{
	char name[RTE_ETH_NAME_MAX_LEN];
	struct rte_eth_dev_info info;
	struct fulcrum_eth_dev_head *dev;
	struct fulcrum_memif_head *pmd;

	if (strncmp(rte_version(), "DPDK 22.11", 10) != 0)
		return NULL;
	if (rte_eth_dev_info_get(port, &info) != 0 || info.driver_name == NULL ||
	    strcmp(info.driver_name, "net_memif") != 0)
		return NULL;
	if (rte_eth_dev_get_name_by_port(port, name) != 0)
		return NULL;
	dev = rte_eth_dev_allocated(name);
	if (dev == NULL || dev->data == NULL || strcmp(dev->data->name, name) != 0)
		return NULL;
	/* A started port: its queue pointers are the public fast-path table's. */
	if (dev->data->nb_rx_queues == 0 || dev->data->rx_queues == NULL ||
	    rte_eth_fp_ops[port].rxq.data == NULL ||
	    dev->data->rx_queues[0] != rte_eth_fp_ops[port].rxq.data[0])
		return NULL;
	pmd = dev->data->dev_private;
	if (pmd == NULL || pmd->role > 1 || pmd->socket_filename == NULL ||
	    strcmp(pmd->socket_filename, socket) != 0)
		return NULL;
	/* memif_dev_configure: the server's rx queues are its c2s rings, the
	 * client's its s2c rings. */
	if (pmd->cfg.num_c2s_rings != (pmd->role == 0 ? dev->data->nb_rx_queues : dev->data->nb_tx_queues) ||
	    pmd->cfg.num_s2c_rings != (pmd->role == 0 ? dev->data->nb_tx_queues : dev->data->nb_rx_queues))
		return NULL;
	return pmd;
}

/* Ring pairs the connection has (fewer than the port's queues when the peer
 * has fewer: the PMD then polls the others on stale or aliased rings). Read
 * after fulcrum_memif_connected said connected: the handshake wrote them first. */
int fulcrum_memif_rings(void *pmd)
{
	struct fulcrum_memif_head *p = pmd;
	return p->run.num_c2s_rings < p->run.num_s2c_rings ? p->run.num_c2s_rings : p->run.num_s2c_rings;
}

int fulcrum_memif_connected(void *pmd)
{
	uint32_t flags = __atomic_load_n(&((struct fulcrum_memif_head *)pmd)->flags, __ATOMIC_SEQ_CST);
	return (flags & FULCRUM_MEMIF_FLAG_CONNECTED) != 0;
}

int fulcrum_memif_trylock(void *pmd)
{
	return rte_spinlock_trylock(&((struct fulcrum_memif_head *)pmd)->cc_lock);
}

void fulcrum_memif_unlock(void *pmd)
{
	rte_spinlock_unlock(&((struct fulcrum_memif_head *)pmd)->cc_lock);
}
