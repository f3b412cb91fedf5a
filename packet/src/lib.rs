//! Fulcrum's per-frame packet logic, with no DPDK in it.
//!
//! The dataplane hands every received frame (an mbuf's bytes) to [`respond`],
//! which either rewrites it in place into the reply to send back out of the
//! same port, or says why it is dropped. [`classify`] is the validating half of
//! that, exposed on its own so the dataplane can hand TCP and UDP to a stack.
//!
//! Header parsing is smoltcp's `wire` module; this crate only adds the
//! decisions on top of it.
//!
//! # Contract
//! Both entry points run on every frame, so they:
//! - never panic, whatever the bytes: every header is length-checked with
//!   smoltcp's `new_checked`/`check_len` before any accessor is used, and the
//!   tests feed every truncation and every single-byte corruption of valid
//!   frames;
//! - never allocate: the crate is `no_std` without `alloc`, so it cannot;
//! - take no locks and keep no state: everything they need is in [`Local`].

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod classify;
mod drop;
mod respond;

#[cfg(test)]
mod testdata;
#[cfg(test)]
mod tests;

pub use classify::{classify, Classified, Ipv4Payload};
pub use drop::DropReason;
pub use respond::{emit_arp_reply, respond, Verdict, ARP_FRAME_LEN};
/// Re-exported so callers can build a [`Local`] without depending on smoltcp.
pub use smoltcp::wire::EthernetAddress;

use core::net::Ipv4Addr;

/// Who we are on the wire: the frames we accept and the addresses we answer as.
///
/// `addrs` is borrowed rather than owned so the dataplane decides where the
/// list lives and how big it is, and checking a frame costs no copy. It is
/// searched linearly: fine for the handful of addresses a port has.
#[derive(Clone, Copy, Debug)]
pub struct Local<'a> {
    /// Our MAC: unicast frames to any other MAC are not ours.
    pub mac: EthernetAddress,
    /// Our IPv4 addresses: ARP and IPv4 to any other address is not ours.
    pub addrs: &'a [Ipv4Addr],
}

impl Local<'_> {
    fn owns(&self, addr: Ipv4Addr) -> bool {
        self.addrs.contains(&addr)
    }
}
