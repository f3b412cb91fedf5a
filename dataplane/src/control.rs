//! The dataplane's side of the shared-memory contract with the control plane
//! (`fulcrum-shm`): configuration generations in, counters and a heartbeat out.
//!
//! A non-lcore control thread polls for new generations, builds the proxy
//! engines' Maglev tables there (off the packet path) and hands every lcore
//! the result through a one-slot lock-free queue (newest wins); each lcore
//! swaps it in between two polls. Each lcore writes its own counter block.
//! While the control plane is away nothing changes: the last good generation
//! keeps serving.

use crate::counters::LcoreSnapshot;
use crate::stats::LcoreReport;
use fulcrum_proxy::{Affinity, BackendConfig, BackendState, ProxyProtocol, RateLimit, VipConfig, VipTables};
use fulcrum_shm as shm;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

/// A configuration generation, ready for an lcore to install.
pub struct Applied {
    pub generation: u64,
    /// Every proxy VIP's settings and Maglev table, shared by all lcores.
    pub tables: Arc<VipTables>,
    /// Proxy VIP endpoints, for steering.
    pub vips: Vec<(Ipv4Addr, u16)>,
    /// Where each VIP's and backend's counters go in the shared segment.
    pub ids: CounterIds,
    /// New backend sets for the forwarding VIPs the dataplane's file
    /// declares, by forwarding VIP index.
    pub forward: Vec<(usize, fulcrum_forward::BackendSet)>,
}

/// A forwarding VIP as the dataplane's file declares it: the published
/// generation may change its backends, not its mode's details.
pub struct ForwardVipFile {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub tcp: bool,
    /// Configured next-hop MACs, by backend address.
    pub macs: HashMap<Ipv4Addr, [u8; 6]>,
}

/// An address and port.
type Endpoint = (Ipv4Addr, u16);

/// Counter slots of the shared segment, by VIP and backend endpoint.
#[derive(Default)]
pub struct CounterIds {
    vips: HashMap<Endpoint, u16>,
    backends: HashMap<(Endpoint, Endpoint), u32>,
}

/// Turns a published generation into what the lcores install. Proxy VIPs are
/// taken whole; limits are split evenly between lcores, which enforce them
/// without sharing. Forwarding VIPs must also be in the dataplane's file
/// (which holds their SNAT and tunnel settings): their backends are replaced.
pub fn prepare(
    gen: &shm::ConfigGeneration,
    generation: u64,
    lcores: usize,
    forward_vips: &[ForwardVipFile],
) -> Result<Applied, String> {
    let share = |n: u32| n.div_ceil(lcores as u32).max(1);
    let mut ids = CounterIds::default();
    let mut vips = Vec::new();
    let mut configs = Vec::new();
    for v in gen.vips.iter().filter(|v| v.mode == shm::Mode::Proxy && v.proto == shm::Proto::Tcp) {
        ids.vips.insert((v.addr, v.port), v.id);
        vips.push((v.addr, v.port));
        let backends = v
            .backends
            .iter()
            .map(|b| {
                ids.backends.insert(((v.addr, v.port), (b.addr, b.port)), b.slot);
                let mut c = BackendConfig::new(b.addr, b.port, b.weight);
                c.state = match b.state {
                    shm::BackendState::Up => BackendState::Up,
                    shm::BackendState::Drain => BackendState::Drain,
                    shm::BackendState::Down => BackendState::Down,
                };
                c
            })
            .collect();
        let mut c = VipConfig::new(v.addr, v.port, backends);
        c.table_size = v.table_size;
        c.affinity = match v.affinity {
            shm::Affinity::Flow => Affinity::ClientAddrPort,
            shm::Affinity::Client => Affinity::ClientAddr,
        };
        c.max_connections = v.max_connections;
        c.connect_timeout = Duration::from_millis(u64::from(v.connect_timeout_ms));
        c.max_connect_tries = v.connect_tries;
        c.idle_timeout = Duration::from_millis(u64::from(v.idle_timeout_ms));
        c.proxy_protocol = match v.proxy_protocol {
            shm::ProxyProtocol::Off => ProxyProtocol::Off,
            shm::ProxyProtocol::V1 => ProxyProtocol::V1,
            shm::ProxyProtocol::V2 => ProxyProtocol::V2,
        };
        c.new_conn_rate = v.new_conn_rate.map(|r| RateLimit::new(share(r.rate_per_sec), share(r.burst)));
        c.client_rate = v.per_client_rate.map(|r| RateLimit::new(share(r.rate_per_sec), share(r.burst)));
        c.bandwidth = v.bandwidth_bytes_per_sec.map(|b| b.div_ceil(lcores as u64).max(1));
        configs.push(c);
    }
    let tables = VipTables::build(configs).map_err(|e| e.to_string())?;
    let mut forward = Vec::new();
    for v in gen.vips.iter().filter(|v| v.mode != shm::Mode::Proxy) {
        let tcp = v.proto == shm::Proto::Tcp;
        let Some(i) = forward_vips.iter().position(|f| (f.addr, f.port, f.tcp) == (v.addr, v.port, tcp)) else {
            tracing::warn!(
                "generation {generation}: forwarding VIP {}:{} is not in the dataplane's file; ignored",
                v.addr,
                v.port
            );
            continue;
        };
        let backends = v
            .backends
            .iter()
            .map(|b| fulcrum_forward::ForwardBackend {
                addr: b.addr,
                port: b.port,
                // Down and draining backends take no new flows; tracked
                // flows keep them.
                weight: if b.state == shm::BackendState::Up { b.weight } else { 0 },
                mac: forward_vips[i].macs.get(&b.addr).copied(),
            })
            .collect();
        let set = fulcrum_forward::BackendSet::build(backends, v.table_size).map_err(|e| e.to_string())?;
        forward.push((i, set));
    }
    Ok(Applied {
        generation,
        tables,
        vips,
        ids,
        forward,
    })
}

/// Lcore-level counter names in the segment: traffic and load, then drop reasons.
pub fn lcore_counter_names(example: &LcoreSnapshot) -> Vec<String> {
    ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "busy_ns", "handed_over", "taken_over"]
        .into_iter()
        .map(str::to_owned)
        .chain(example.drops.keys().map(|k| format!("drop_{k}")))
        .collect()
}

/// Writes one lcore's counters into its block (only that lcore calls this).
pub fn publish(
    block: &shm::LcoreCounters<'_>,
    lcore: &LcoreSnapshot,
    report: Option<&LcoreReport>,
    ids: Option<&CounterIds>,
) {
    let traffic = [
        lcore.rx_packets,
        lcore.rx_bytes,
        lcore.tx_packets,
        lcore.tx_bytes,
        lcore.busy_ns,
        lcore.handed_over,
        lcore.taken_over,
    ];
    for (i, v) in traffic.into_iter().chain(lcore.drops.values().copied()).enumerate() {
        block.set(i, v);
    }
    let (Some(engine), Some(ids)) = (report.and_then(|r| r.proxy.as_ref()), ids) else {
        return;
    };
    for vip in &engine.vips {
        let Some(&id) = ids.vips.get(&(vip.addr, vip.port)) else {
            continue;
        };
        let c = &vip.counters;
        for (field, v) in [
            (shm::VIP_ACCEPTED, c.accepted),
            (shm::VIP_ACTIVE, c.active),
            (shm::VIP_BYTES_IN, c.bytes_from_clients),
            (shm::VIP_BYTES_OUT, c.bytes_to_clients),
            (shm::VIP_DROP_LIMIT, c.drop_limit),
            (shm::VIP_DROP_RATE, c.drop_rate),
            (shm::VIP_DROP_CLIENT_RATE, c.drop_client_rate),
            (shm::VIP_DROP_NO_BACKEND, c.drop_no_backend),
            (shm::VIP_DROP_CONNECT_FAILED, c.drop_connect_failed),
            (shm::VIP_DROP_IDLE, c.drop_idle_timeout),
            (shm::VIP_RESETS, c.client_resets + c.backend_resets),
        ] {
            block.vip_set(id, field, v);
        }
        for b in &vip.backends {
            let Some(&slot) = ids.backends.get(&((vip.addr, vip.port), (b.addr, b.port))) else {
                continue;
            };
            let c = &b.counters;
            for (field, v) in [
                (shm::BACKEND_ATTEMPTS, c.attempts),
                (shm::BACKEND_OPENED, c.opened),
                (shm::BACKEND_ACTIVE, c.active),
                (shm::BACKEND_CONNECT_FAILURES, c.connect_failures),
                (shm::BACKEND_RESETS, c.resets),
                (shm::BACKEND_BYTES_TO, c.bytes_to_backend),
                (shm::BACKEND_BYTES_FROM, c.bytes_from_backend),
            ] {
                block.backend_set(slot, field, v);
            }
        }
    }
}
