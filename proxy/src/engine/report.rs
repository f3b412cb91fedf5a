//! What the engine reports: counters (engine, VIP, backend), owned
//! snapshots for publishing, and gauges of connections, buffers and ports.
//! Reads only; nothing here is on the packet path.

use std::net::Ipv4Addr;

use smoltcp::socket::tcp;

use super::vip::VipState;
use super::Engine;
use crate::counters::{BackendCounters, EngineCounters, VipCounters, VipSnapshot};

impl Engine {
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Counters of VIP `vip` (index in the list last given to
    /// [`new`](Self::new) or [`reconfigure`](Self::reconfigure)).
    pub fn vip_counters(&self, vip: usize) -> Option<&VipCounters> {
        let slot = *self.vip_order.get(vip)?;
        self.vips[slot].as_ref().map(|v| &v.counters)
    }

    /// Counters of backend `backend` (index in the VIP's current list) of
    /// VIP `vip` (index as for [`vip_counters`](Self::vip_counters)).
    pub fn backend_counters(&self, vip: usize, backend: usize) -> Option<&BackendCounters> {
        let v = self.vips[*self.vip_order.get(vip)?].as_ref()?;
        let slot = *v.table_slots.get(backend)?;
        v.backends[slot].as_ref().map(|b| &b.counters)
    }

    pub(super) fn find_vip(&self, addr: Ipv4Addr, port: u16) -> Option<&VipState> {
        self.vips
            .iter()
            .flatten()
            .find(|v| v.cfg.address == addr && v.cfg.port == port)
    }

    /// Counters of VIP `addr:port`, configured or still draining.
    pub fn vip_counters_for(&self, addr: Ipv4Addr, port: u16) -> Option<&VipCounters> {
        self.find_vip(addr, port).map(|v| &v.counters)
    }

    /// Open connections of a VIP's backend, to follow a drain: `Some(0)`
    /// once a drained backend has no connection left; `None` when the engine
    /// does not know the backend (never configured, or removed and drained).
    pub fn backend_active(
        &self,
        vip_addr: Ipv4Addr,
        vip_port: u16,
        backend_addr: Ipv4Addr,
        backend_port: u16,
    ) -> Option<u64> {
        self.find_vip(vip_addr, vip_port)?
            .backends
            .iter()
            .flatten()
            .find(|b| b.cfg.address == backend_addr && b.cfg.port == backend_port)
            .map(|b| b.counters.active)
    }

    /// Every VIP's and backend's counters, owned (allocates: for publishing,
    /// not for the packet path). Configured VIPs first, in configuration
    /// order, then removed VIPs still draining; within a VIP, its listed
    /// backends in order, then removed ones still draining. Entries of
    /// removed VIPs/backends disappear once drained, and drains end at
    /// different times on different lcores: aggregate by `(addr, port)`.
    pub fn snapshot(&self) -> Vec<VipSnapshot> {
        let listed = self.vip_order.iter().filter_map(|&s| self.vips[s].as_ref());
        let removed = self.vips.iter().flatten().filter(|v| !v.configured);
        listed.chain(removed).map(VipState::snapshot).collect()
    }

    /// Live connections (admitted, not yet released).
    pub fn connections(&self) -> usize {
        self.conns.len() - self.free_ids.len()
    }

    /// Sockets of live connections (two each); 0 when idle.
    pub fn socket_count(&self) -> usize {
        self.connections() * 2
    }

    /// Released connections kept for reuse, with their buffers.
    pub fn spare_connections(&self) -> usize {
        self.spare.len()
    }

    /// Payload bytes held in socket buffers right now (walks all connections:
    /// for monitoring and tests). Bounded by 4 x `buffer_size` per connection.
    pub fn buffered_bytes(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .map(|c| {
                let a = c.client.get::<tcp::Socket>(c.ch);
                let b = c.backend.get::<tcp::Socket>(c.bh);
                a.recv_queue() + a.send_queue() + b.recv_queue() + b.send_queue()
            })
            .sum()
    }

    /// Bytes of socket buffer allocated (live and spare connections).
    pub fn allocated_buffer_bytes(&self) -> usize {
        (self.connections() + self.spare.len()) * 4 * self.buffer_size
    }

    /// Local ports free for new backend connections.
    pub fn free_ports(&self) -> usize {
        self.ports.len()
    }
}
