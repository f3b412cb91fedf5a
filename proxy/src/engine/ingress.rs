//! Frames in: each frame is classified (ARP, or a TCP 4-tuple) and handed to
//! smoltcp with the one socket set it concerns, found by one flow-table
//! lookup, through a one-frame device that lends it without copying. A TCP
//! segment to us with an impossible flag set ([`plausible`]) is dropped and
//! counted (`drop_bad_flags`) before anything else, and so is any segment
//! with a bad checksum (`drop_bad_checksum`: verified once, by `classify`;
//! smoltcp does not verify again), before admission or smoltcp. A SYN
//! to a VIP with no connection is admitted first ([`Engine::admit`]), or, in
//! flood mode, answered with a SYN cookie into this frame's TX token
//! (`cookie`); an ACK to a VIP with no connection may carry a cookie and
//! become one; any other segment of an unknown connection goes to the empty
//! sink set, and smoltcp answers it with RST.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::{Device, DeviceCapabilities, RxToken, TxToken};
use smoltcp::time::Instant;

use super::conn::{FlowKey, BACKEND, BOTH, CLIENT};
use super::cookie::CookieAck;
use super::vip::vip_mut;
use super::{Engine, NO_CONN};
use crate::frame::{classify, plausible, Frame, TcpMeta, ACK, RST, SYN};

impl Engine {
    pub(super) fn is_ours(&self, addr: Ipv4Addr) -> bool {
        addr == self.addr || self.vips.iter().flatten().any(|v| v.cfg.address == addr)
    }

    pub(super) fn ingress<T: TxToken>(&mut self, now: Instant, frame: &[u8], tx: T) {
        self.counters.frames_in += 1;
        let target = match classify(frame, &self.verify) {
            Frame::Arp { sender, target } if self.is_ours(target) => {
                if let Ok(i) = self.neighbors.binary_search(&sender) {
                    self.neighbor_heard[i] = true;
                }
                // smoltcp learns neighbours from ARP aimed at us only.
                self.arp_gen = self.arp_gen.wrapping_add(1);
                for i in 0..self.handshaking.len() {
                    self.mark_dirty(self.handshaking[i], BOTH);
                }
                None
            }
            Frame::Tcp(meta) if self.is_ours(meta.dst) => {
                if !plausible(meta.flags) {
                    self.counters.drop_bad_flags += 1;
                    return;
                }
                if meta.bad_checksum {
                    self.counters.drop_bad_checksum += 1;
                    return;
                }
                match self.tcp_target(now, &meta, frame) {
                    Target::Conn(id, client_side) => Some((id, client_side)),
                    Target::Sink => None,
                    Target::Cookie(vi) => {
                        self.send_cookie(vi, frame, tx);
                        return;
                    }
                }
            }
            _ => {
                self.counters.frames_not_ours += 1;
                return;
            }
        };
        let set = match target {
            None => &mut self.sink,
            Some((id, client_side)) => {
                let conn = self.conns[id]
                    .as_mut()
                    .expect("flow table points at live slots");
                if client_side {
                    &mut conn.client
                } else {
                    &mut conn.backend
                }
            }
        };
        self.counters.sockets_visited += set.iter().count() as u64;
        let mut device = OneFrame {
            frame: Some(frame),
            tx: Some(tx),
            caps: &self.caps,
        };
        self.iface.poll_ingress_single(now, &mut device, set);
    }

    /// Where a TCP segment goes: its connection (and side: true = client),
    /// a new connection for a SYN (admitted) or a valid cookie ACK to a VIP,
    /// a cookie answer for a SYN in flood mode, or the sink (RST).
    pub(super) fn tcp_target(&mut self, now: Instant, m: &TcpMeta, frame: &[u8]) -> Target {
        let key = FlowKey {
            remote: m.src,
            local: m.dst,
            remote_port: m.src_port,
            local_port: m.dst_port,
        };
        if m.dst == self.addr {
            // A backend side: its local port names the connection.
            let id = self.by_port[usize::from(m.dst_port)];
            if id != NO_CONN {
                let id = id as usize;
                let conn = self.conns[id].as_ref().expect("by_port points at live slots");
                if conn.backend_ep == SocketAddrV4::new(m.src, m.src_port) {
                    self.mark_dirty(id, BACKEND);
                    return Target::Conn(id, false);
                }
            }
        } else if let Some(&id) = self.flows.get(&key) {
            self.mark_dirty(id, CLIENT);
            return Target::Conn(id, true);
        }
        let Some(&vi) = self.vip_by_endpoint.get(&(m.dst, m.dst_port)) else {
            self.counters.unknown_flow += 1;
            return Target::Sink;
        };
        if m.syn_only {
            vip_mut(&mut self.vips, vi).counters.syns += 1;
            if self.flood_mode(now, vi) {
                return Target::Cookie(vi);
            }
            return match self.admit(now, vi, key, None) {
                Some(id) => Target::Conn(id, true),
                None => Target::Sink,
            };
        }
        if m.flags & ACK != 0 && m.flags & (SYN | RST) == 0 {
            match self.cookie_ack(now, vi, key, frame) {
                CookieAck::Accepted(id) => return Target::Conn(id, true),
                CookieAck::Refused => return Target::Sink,
                CookieAck::Rejected | CookieAck::NotChecked => {}
            }
        }
        self.counters.unknown_flow += 1;
        Target::Sink
    }
}

/// Where [`Engine::tcp_target`] sends a segment.
pub(super) enum Target {
    /// A connection's socket set (true: client side).
    Conn(usize, bool),
    /// The empty set: smoltcp answers with RST.
    Sink,
    /// A SYN to this VIP slot, to be answered with a cookie.
    Cookie(usize),
}

/// A one-frame smoltcp device: lends the frame the engine already took from
/// the real device (and that frame's TX token for an immediate reply) to
/// `poll_ingress_single`, so the engine can choose the socket set after
/// looking at the frame, without copying it.
pub(super) struct OneFrame<'f, T> {
    pub(super) frame: Option<&'f [u8]>,
    pub(super) tx: Option<T>,
    pub(super) caps: &'f DeviceCapabilities,
}

impl<'f> OneFrame<'f, NoTx> {
    /// For `Interface::new`, which only reads the capabilities.
    pub(super) fn caps_only(caps: &'f DeviceCapabilities) -> Self {
        Self {
            frame: None,
            tx: None,
            caps,
        }
    }
}

impl<'f, T: TxToken> Device for OneFrame<'f, T> {
    type RxToken<'a>
        = FrameRx<'f>
    where
        Self: 'a;
    type TxToken<'a>
        = T
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(FrameRx<'f>, T)> {
        let frame = self.frame.take()?;
        Some((FrameRx(frame), self.tx.take()?))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<T> {
        self.tx.take()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

pub(super) struct FrameRx<'f>(&'f [u8]);

impl RxToken for FrameRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// A TX token writing into engine-owned scratch space, for frames the
/// engine feeds smoltcp itself (a cookie's synthesized SYN, a neighbour
/// learnt from a cookie ACK): smoltcp answers neither, and nothing written
/// here would be sent.
pub(super) struct Discard<'a>(pub(super) &'a mut [u8]);

impl TxToken for Discard<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(self.0.len());
        f(&mut self.0[..len])
    }
}

/// TX token type of [`OneFrame::caps_only`], which never hands one out.
pub(super) enum NoTx {}

impl TxToken for NoTx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, _len: usize, _f: F) -> R {
        match self {}
    }
}
