//! The dataplane's library target: its safe DPDK layer ([`dpdk`]), shared with
//! other DPDK programs of the workspace (the kernel-free load generator,
//! `tools/loadgen`). The binary (`main.rs`) uses it from here, so the layer
//! is compiled once and stays the only place with `unsafe`.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod dpdk;

/// The forwarder rewrites mbufs in place (here, not in the binary: the
/// orphan rule wants the impl in the crate that defines `Mbuf`).
impl fulcrum_forward::Frame for dpdk::Mbuf {
    fn bytes(&self) -> &[u8] {
        self.data()
    }

    fn room_mut(&mut self) -> (&mut [u8], usize, usize) {
        dpdk::Mbuf::room_mut(self)
    }
}
