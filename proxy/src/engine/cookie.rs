//! SYN flood defence: flood mode per VIP, SYNs answered with SYN cookies
//! straight into the TX token the frame came with, and ACKs carrying a valid
//! cookie turned into connections. See the engine's "SYN flood" and
//! [`crate::syncookie`].

use smoltcp::phy::{ChecksumCapabilities, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr, TcpSeqNumber,
};

use super::conn::FlowKey;
use super::ingress::{Discard, OneFrame};
use super::vip::vip_mut;
use super::{millisecond_clock, Engine};
use crate::config::SynCookies;
use crate::syncookie::{
    emit_tcp, frame_len, from_ack, synack_repr, synthesized_syn, ts_decode, ts_encode, Segment,
};

/// Length of the flood-mode windows, and of the engine's tick.
const FLOOD_WINDOW: Duration = Duration::from_secs(1);
/// Ethernet header + ARP for Ethernet/IPv4.
const ARP_FRAME_LEN: usize = 14 + 28;

/// What an ACK for no known connection turned out to be.
pub(super) enum CookieAck {
    /// Not looked at (cookies off, bad checksum, unparsable): today's path.
    NotChecked,
    Rejected,
    /// A connection was created for it (its synthesized SYN already fed).
    Accepted(usize),
    /// Valid, but admission refused it (counted by reason): RST.
    Refused,
}

/// Unix time in seconds (the cookie epochs' clock).
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Engine {
    /// A SYN to VIP slot `vi` for no connection: whether it is answered with
    /// a cookie. `Auto` turns flood mode on when the VIP has `threshold`
    /// half-open connections. Counts the SYN in the VIP's current window.
    pub(super) fn flood_mode(&mut self, now: Instant, vi: usize) -> bool {
        let threshold = self.cookie_threshold;
        let vip = vip_mut(&mut self.vips, vi);
        vip.window_syns += 1;
        match self.syn_cookies {
            SynCookies::Off => false,
            SynCookies::Always => {
                vip.flood_since.get_or_insert(now);
                true
            }
            SynCookies::Auto => {
                if vip.flood_since.is_none() && vip.counters.half_open >= threshold {
                    vip.flood_since = Some(now);
                    vip.window_start = now;
                    vip.window_syns = 0;
                    self.flooded = true;
                }
                vip.flood_since.is_some()
            }
        }
    }

    /// Once a second (from `poll`): the cookie keys follow the epoch, and a
    /// VIP in flood mode leaves it after a whole window with fewer than
    /// `threshold` SYNs while it has fewer than `threshold` half-open
    /// connections (hysteresis: spoofed half-open entries expiring must not
    /// make room for new spoofed SYNs to reach backends).
    pub(super) fn tick(&mut self, now: Instant) {
        self.next_tick = now + FLOOD_WINDOW;
        if self.syn_cookies == SynCookies::Off {
            return;
        }
        self.keys.update(unix_secs());
        let threshold = self.cookie_threshold;
        let always = self.syn_cookies == SynCookies::Always;
        let mut flooded = false;
        for vip in self.vips.iter_mut().flatten() {
            if always {
                vip.flood_since.get_or_insert(now);
                continue;
            }
            if vip.flood_since.is_some() && now - vip.window_start >= FLOOD_WINDOW {
                if vip.window_syns < threshold && vip.counters.half_open < threshold {
                    vip.flood_since = None;
                }
                vip.window_start = now;
                vip.window_syns = 0;
            }
            flooded |= vip.flood_since.is_some();
        }
        self.flooded = flooded;
    }

    /// Answers a bare SYN (checksums verified by `classify`) to VIP slot `vi`
    /// with a SYN cookie, written into the TX token the SYN came with, to the
    /// SYN's source MAC. Nothing is kept.
    pub(super) fn send_cookie<T: TxToken>(&mut self, vi: usize, frame: &[u8], tx: T) {
        let Some(syn) = Segment::parse(frame) else {
            return;
        };
        let cookie = self.keys.mint(
            &syn.flow(),
            syn.tcp.seq_number.0 as u32,
            syn.tcp.max_seg_size,
        );
        let tsval = ts_encode(millisecond_clock(), syn.offered());
        let repr = synack_repr(&syn.tcp, cookie, tsval, &self.synack);
        let (mac, caps) = (self.mac, &self.caps.checksum);
        tx.consume(frame_len(&repr), |buf| {
            emit_tcp(buf, mac, syn.mac, syn.dst, syn.src, &repr, caps)
        });
        vip_mut(&mut self.vips, vi).counters.cookies_sent += 1;
    }

    /// An ACK (no SYN, no RST) to VIP slot `vi` for no known connection:
    /// unless cookies are off, its acknowledgment number - 1 (checksums
    /// verified on ingress) is validated as a cookie, whatever this
    /// engine's flood mode (another instance sharing the seed may have sent
    /// it). A valid one goes through admission like a SYN, then becomes a
    /// connection whose client socket is fed the SYN the cookie stands for:
    /// the real ACK (the caller hands it on) then finds it in SYN-RECEIVED
    /// with the cookie as ISN and makes it ESTABLISHED.
    pub(super) fn cookie_ack(
        &mut self,
        now: Instant,
        vi: usize,
        key: FlowKey,
        frame: &[u8],
    ) -> CookieAck {
        // Its checksums were verified on ingress (`classify`).
        if self.syn_cookies == SynCookies::Off {
            return CookieAck::NotChecked;
        }
        let Some(ack) = Segment::parse(frame) else {
            return CookieAck::NotChecked;
        };
        let Some(ack_number) = ack.tcp.ack_number else {
            return CookieAck::NotChecked;
        };
        let (client_isn, cookie) = from_ack(ack.tcp.seq_number, ack_number);
        let opts = match ack.tcp.timestamp {
            Some(ts) => ts_decode(ts.tsecr).map(Some),
            None => Some(None),
        };
        let valid = opts.zip(self.keys.check(&ack.flow(), client_isn, cookie));
        let vip = vip_mut(&mut self.vips, vi);
        let Some((opts, mss)) = valid else {
            vip.counters.cookies_rejected += 1;
            return CookieAck::Rejected;
        };
        vip.counters.cookies_validated += 1;
        let Some(id) = self.admit(now, vi, key, Some(cookie)) else {
            return CookieAck::Refused;
        };

        // The SYN the cookie stands for, through smoltcp's own path (built in
        // scratch space: no allocation). A LISTEN socket answers a SYN only at
        // egress, so the discard token is never written to.
        let syn = synthesized_syn(&ack.tcp, mss, opts);
        let len = frame_len(&syn);
        emit_tcp(
            &mut self.scratch_frame[..len],
            ack.mac,
            self.mac,
            ack.src,
            ack.dst,
            &syn,
            &ChecksumCapabilities::default(),
        );
        let conn = self.conns[id].as_mut().expect("just admitted");
        let mut device = OneFrame {
            frame: Some(&self.scratch_frame[..len]),
            tx: Some(Discard(&mut self.scratch_tx)),
            caps: &self.caps,
        };
        self.counters.sockets_visited += 1;
        self.iface
            .poll_ingress_single(now, &mut device, &mut conn.client);
        debug_assert_eq!(
            conn.client.get::<tcp::Socket>(conn.ch).state(),
            tcp::State::SynReceived
        );

        // Reply to whom it came from: an on-link client is reached at the MAC
        // its ACK came from, as our SYN-ACK was. smoltcp learns neighbours
        // only from ARP aimed at us, so it is told with an ARP reply (to our
        // own address, which it needs) it never has to answer.
        if self.network.contains_addr(&ack.src) {
            let arp = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: ack.mac,
                source_protocol_addr: ack.src,
                target_hardware_addr: self.mac,
                target_protocol_addr: self.addr,
            };
            let buf = &mut self.scratch_frame[..ARP_FRAME_LEN];
            let mut eth = EthernetFrame::new_unchecked(&mut *buf);
            EthernetRepr {
                src_addr: ack.mac,
                dst_addr: self.mac,
                ethertype: EthernetProtocol::Arp,
            }
            .emit(&mut eth);
            arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
            let mut device = OneFrame {
                frame: Some(&self.scratch_frame[..ARP_FRAME_LEN]),
                tx: Some(Discard(&mut self.scratch_tx)),
                caps: &self.caps,
            };
            self.iface
                .poll_ingress_single(now, &mut device, &mut self.sink);
            self.arp_gen = self.arp_gen.wrapping_add(1);
        }

        // The socket "sends" its SYN-ACK (the client has had the same one,
        // ours) into the discard token: smoltcp opens its receive window only
        // once it has advertised it, and the client's ACK may carry data.
        let mut device = OneFrame::<Discard> {
            frame: None,
            tx: Some(Discard(&mut self.scratch_tx)),
            caps: &self.caps,
        };
        self.counters.sockets_visited += 1;
        self.iface.poll_egress(now, &mut device, &mut conn.client);
        CookieAck::Accepted(id)
    }
}

/// The ISN a cookie connection's client socket must use.
pub(super) fn cookie_isn(cookie: u32) -> TcpSeqNumber {
    TcpSeqNumber(cookie as i32)
}
