//! Ethernet ports and their queues.

use super::{DpdkError, Mbuf, MbufBatch, Mempool, PortId, QueueId, Result, SocketId, BURST};
use std::ffi::CStr;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

/// How to configure a port.
#[derive(Debug, Clone)]
pub struct PortConf {
    pub queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// The IP MTU to give the device, or `None` to leave it as the device
    /// has it (1500, or what the one who made the interface set: the
    /// dataplane sets an af_packet veth's MTU itself, see softdev).
    pub mtu: Option<u16>,
}

/// What one transmit call did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub packets: usize,
    pub bytes: usize,
    /// Frames the device did not take (queue full); they were freed.
    pub dropped: usize,
}

/// Link state as reported by the driver.
#[derive(Debug, Clone, Copy)]
pub struct LinkStatus {
    pub up: bool,
    pub speed_mbps: u32,
}

/// The basic per-port counters kept by the driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Frames the NIC dropped because no descriptor was free.
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// Receive failures for lack of mbufs.
    pub rx_nombuf: u64,
}

/// The MTUs a device takes, as ethdev checks them (DPDK 22.11's
/// `eth_dev_validate_mtu`): at most its largest frame less the link overhead,
/// which is what the driver declares beyond its largest MTU, or the Ethernet
/// header and CRC (18 bytes) when it declares no largest MTU.
fn mtu_range(info: &dpdk_sys::rte_eth_dev_info) -> (u16, u16) {
    const HEADER_AND_CRC: u32 = 18;
    let overhead = if info.max_mtu != u16::MAX && info.max_rx_pktlen > u32::from(info.max_mtu) {
        info.max_rx_pktlen - u32::from(info.max_mtu)
    } else {
        HEADER_AND_CRC
    };
    let by_frame = u16::try_from(info.max_rx_pktlen.saturating_sub(overhead)).unwrap_or(u16::MAX);
    (info.min_mtu, info.max_mtu.min(by_frame))
}

/// A configured and started port. Its queues borrow it, so it cannot be
/// stopped or closed while any lcore still holds one.
pub struct Port<'pool> {
    id: PortId,
    queues: u16,
    queues_taken: AtomicBool,
    _pool: PhantomData<&'pool Mempool>,
}

impl<'pool> Port<'pool> {
    /// The ports EAL probed (in software mode: the vdevs on the command line).
    pub fn available() -> Vec<PortId> {
        let mut ids = Vec::new();
        let mut next = 0u16;
        loop {
            // SAFETY: EAL is initialised before any port is used; the call only
            // scans the device table from `next` and returns RTE_MAX_ETHPORTS
            // when there is none.
            let id = unsafe { dpdk_sys::rte_eth_find_next(next) };
            if u32::from(id) >= dpdk_sys::RTE_MAX_ETHPORTS || id < next {
                return ids;
            }
            ids.push(PortId(id as u16));
            next = id + 1;
        }
    }

    /// Configures `conf.queues` RX/TX queue pairs on port `id`, each receiving
    /// into `pool`, and starts the port.
    pub fn start(id: PortId, conf: &PortConf, pool: &'pool Mempool, socket: SocketId) -> Result<Port<'pool>> {
        let q = conf.queues;
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: info is a valid out-parameter; an invalid port id is reported.
        let ret = unsafe { dpdk_sys::rte_eth_dev_info_get(id.0, &mut info) };
        if ret != 0 {
            return Err(DpdkError::new(format!("rte_eth_dev_info_get(port {id})"), ret));
        }
        if q == 0 || q > info.max_rx_queues || q > info.max_tx_queues {
            return Err(DpdkError {
                op: format!("configure port {id}"),
                code: 22,
                message: format!(
                    "{q} queue pairs requested, the device supports {} RX / {} TX",
                    info.max_rx_queues, info.max_tx_queues
                ),
            });
        }
        let eth_conf = dpdk_sys::rte_eth_conf::default();
        // SAFETY: eth_conf is a valid zeroed configuration (no offloads, no RSS).
        let ret = unsafe { dpdk_sys::rte_eth_dev_configure(id.0, q, q, &eth_conf) };
        if ret != 0 {
            return Err(DpdkError::new(format!("rte_eth_dev_configure(port {id})"), ret));
        }
        // From here on the port must be closed on error: Port's Drop does it.
        let port = Port {
            id,
            queues: q,
            queues_taken: AtomicBool::new(false),
            _pool: PhantomData,
        };
        if let Some(mtu) = conf.mtu {
            let (min, max) = mtu_range(&info);
            if !(min..=max).contains(&mtu) {
                return Err(DpdkError {
                    op: format!("set MTU of port {id}"),
                    code: 22,
                    message: format!(
                        "MTU {mtu} requested, the device takes {min} to {max} (its largest frame: {} bytes)",
                        info.max_rx_pktlen
                    ),
                });
            }
            // SAFETY: the port is configured and not started; the driver
            // validates the value (net_tap sets its kernel interface's MTU).
            let ret = unsafe { dpdk_sys::rte_eth_dev_set_mtu(id.0, mtu) };
            if ret != 0 {
                return Err(DpdkError::new(format!("rte_eth_dev_set_mtu(port {id}, {mtu})"), ret));
            }
        }
        for queue in 0..q {
            // SAFETY: the port is configured with q queues; a NULL rxconf/txconf
            // means the driver's defaults; the pool outlives the port ('pool).
            let ret = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    id.0,
                    queue,
                    conf.rx_descriptors,
                    socket.0 as u32,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if ret != 0 {
                return Err(DpdkError::new(format!("rte_eth_rx_queue_setup(port {id}, queue {queue})"), ret));
            }
            // SAFETY: as above.
            let ret = unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(id.0, queue, conf.tx_descriptors, socket.0 as u32, std::ptr::null())
            };
            if ret != 0 {
                return Err(DpdkError::new(format!("rte_eth_tx_queue_setup(port {id}, queue {queue})"), ret));
            }
        }
        // SAFETY: every queue is set up.
        let ret = unsafe { dpdk_sys::rte_eth_dev_start(id.0) };
        if ret != 0 {
            return Err(DpdkError::new(format!("rte_eth_dev_start(port {id})"), ret));
        }
        Ok(port)
    }

    /// Hands out the RX/TX queue pairs, once: pair `i` is meant for the `i`th
    /// lcore. They borrow the port, so it cannot be closed under them.
    pub fn take_queues(&self) -> Option<Vec<(RxQueue<'_>, TxQueue<'_>)>> {
        if self.queues_taken.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(
            (0..self.queues)
                .map(|i| {
                    let rx = RxQueue { port: self.id, queue: QueueId(i), _port: PhantomData };
                    let tx = TxQueue { port: self.id, queue: QueueId(i), _port: PhantomData };
                    (rx, tx)
                })
                .collect(),
        )
    }

    pub fn id(&self) -> PortId {
        self.id
    }

    /// The driver's name for the port (e.g. `net_tap0`).
    pub fn name(&self) -> String {
        let mut buf = [0 as std::ffi::c_char; 64];
        // SAFETY: buf is 64 bytes, RTE_ETH_NAME_MAX_LEN; the call NUL-terminates.
        let ret = unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(self.id.0, buf.as_mut_ptr()) };
        if ret != 0 {
            return format!("port{}", self.id);
        }
        // SAFETY: the buffer now holds a NUL-terminated string.
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    pub fn mac(&self) -> [u8; 6] {
        let mut addr = dpdk_sys::rte_ether_addr::default();
        // SAFETY: addr is a valid out-parameter for a configured port.
        let ret = unsafe { dpdk_sys::rte_eth_macaddr_get(self.id.0, &mut addr) };
        if ret != 0 {
            tracing::warn!("{}", DpdkError::new("rte_eth_macaddr_get", ret));
        }
        addr.addr_bytes
    }

    pub fn link(&self) -> LinkStatus {
        let mut link = dpdk_sys::rte_eth_link::default();
        // SAFETY: link is a valid out-parameter; the call does not wait.
        unsafe { dpdk_sys::rte_eth_link_get_nowait(self.id.0, &mut link) };
        LinkStatus {
            up: link.link_status() != 0,
            speed_mbps: link.link_speed,
        }
    }

    pub fn stats(&self) -> PortStats {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: s is a valid out-parameter for a started port.
        unsafe { dpdk_sys::rte_eth_stats_get(self.id.0, &mut s) };
        PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }

    /// The driver's extended statistics, by name.
    pub fn xstats(&self) -> Vec<(String, u64)> {
        // SAFETY: a NULL buffer with size 0 asks for the count.
        let n = unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id.0, std::ptr::null_mut(), 0) };
        let Ok(n) = usize::try_from(n) else {
            return Vec::new();
        };
        let mut names = vec![dpdk_sys::rte_eth_xstat_name::default(); n];
        let mut values = vec![dpdk_sys::rte_eth_xstat::default(); n];
        // SAFETY: both buffers hold n entries, as passed.
        let got_names = unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id.0, names.as_mut_ptr(), n as u32) };
        // SAFETY: as above.
        let got_values = unsafe { dpdk_sys::rte_eth_xstats_get(self.id.0, values.as_mut_ptr(), n as u32) };
        if got_names != n as i32 || got_values != n as i32 {
            return Vec::new();
        }
        values
            .iter()
            .filter_map(|v| {
                let name = names.get(usize::try_from(v.id).ok()?)?;
                // SAFETY: DPDK NUL-terminates each 64-byte name.
                let name = unsafe { CStr::from_ptr(name.name.as_ptr()) };
                Some((name.to_string_lossy().into_owned(), v.value))
            })
            .collect()
    }
}

impl Drop for Port<'_> {
    /// Stops and closes the port; closing releases every mbuf the driver holds.
    fn drop(&mut self) {
        // SAFETY: no queue outlives the port (they borrow it), so no lcore polls
        // it any more; stop on an unstarted port only returns an error.
        unsafe {
            dpdk_sys::rte_eth_dev_stop(self.id.0);
            dpdk_sys::rte_eth_dev_close(self.id.0);
        }
    }
}

/// A receive queue, owned by one lcore.
pub struct RxQueue<'port> {
    port: PortId,
    queue: QueueId,
    _port: PhantomData<&'port AtomicBool>,
}

/// A transmit queue, owned by one lcore.
pub struct TxQueue<'port> {
    port: PortId,
    queue: QueueId,
    _port: PhantomData<&'port AtomicBool>,
}

impl RxQueue<'_> {
    /// Receives up to the batch's free room; returns how many arrived.
    pub fn recv(&mut self, batch: &mut MbufBatch) -> usize {
        let have = batch.len();
        let room = (BURST - have) as u16;
        if room == 0 || !super::gate_open(self.port) {
            return 0;
        }
        // SAFETY: the slots from `have` on are free and `room` long; &mut self
        // means only this lcore polls the queue; the driver writes valid mbufs
        // into the first n slots and transfers their ownership to us.
        let n = unsafe { dpdk_sys::rte_eth_rx_burst(self.port.0, self.queue.0, batch.slots_mut().add(have), room) };
        // SAFETY: slots 0..have+n now hold mbufs we own.
        unsafe { batch.set_len(have + usize::from(n)) };
        usize::from(n)
    }
}

impl TxQueue<'_> {
    /// Transmits the batch. Whatever the device did not take is freed and
    /// reported as dropped, so the batch is always empty afterwards.
    pub fn send(&mut self, batch: &mut MbufBatch) -> Sent {
        let len = batch.len();
        if len == 0 {
            return Sent::default();
        }
        let total_bytes = batch.bytes();
        if !super::gate_open(self.port) {
            batch.drain().for_each(drop::<Mbuf>);
            return Sent { packets: 0, bytes: 0, dropped: len };
        }
        // SAFETY: slots 0..len hold mbufs we own; &mut self means only this lcore
        // uses the queue; the driver takes ownership of the first n it returns.
        let n = usize::from(unsafe { dpdk_sys::rte_eth_tx_burst(self.port.0, self.queue.0, batch.slots_mut(), len as u16) });
        batch.consume_front(n);
        let dropped = batch.len();
        let dropped_bytes = batch.bytes();
        batch.drain().for_each(drop::<Mbuf>);
        Sent {
            packets: n,
            bytes: total_bytes - dropped_bytes,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mtu_range;

    fn info(max_rx_pktlen: u32, min_mtu: u16, max_mtu: u16) -> dpdk_sys::rte_eth_dev_info {
        dpdk_sys::rte_eth_dev_info { max_rx_pktlen, min_mtu, max_mtu, ..Default::default() }
    }

    /// What DPDK 22.11's drivers declare, and the MTUs ethdev then takes.
    #[test]
    fn mtu_range_as_ethdev_checks_it() {
        // net_tap: a 1522-byte frame, no largest MTU: header and CRC off.
        assert_eq!(mtu_range(&info(1522, 46, u16::MAX)), (46, 1504));
        // net_af_xdp (copy mode): both given, the overhead is their difference.
        assert_eq!(mtu_range(&info(3560, 68, 3542)), (68, 3542));
        // net_af_packet: RTE_ETHER_MAX_LEN.
        assert_eq!(mtu_range(&info(1518, 68, u16::MAX)), (68, 1500));
        // A NIC with jumbo frames and a largest MTU below its frame limit.
        assert_eq!(mtu_range(&info(9728, 68, 9000)), (68, 9000));
    }
}
