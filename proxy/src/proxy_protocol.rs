//! PROXY protocol headers (HAProxy, `proxy-protocol.txt`, version 2.9 of the
//! document) sent to a backend before any client byte, so the backend learns the
//! client's address although the TCP connection comes from the load balancer.
//!
//! Only what a TCP-over-IPv4 proxy sends is implemented: v1 `TCP4` lines and
//! v2 `PROXY` command with family `TCP over IPv4` and no TLVs.

use std::io::Write;
use std::net::SocketAddrV4;

use fulcrum_model::ProxyProtocol;

/// Longest header this module produces: a v1 TCP4 line with four
/// 15-character addresses and 5-digit ports is 56 bytes; v2 is 28.
pub const MAX_HEADER_LEN: usize = 56;

/// v2 signature: fixed 12 bytes that cannot start a v1 line or common protocols.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// An encoded header, on the stack (no allocation per connection).
#[derive(Clone, Copy)]
pub struct Header {
    buf: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl Header {
    /// Encodes the header announcing a connection from `client` to `vip`
    /// (source = client, destination = the address the client connected to):
    /// v1, a human-readable line (`PROXY TCP4 198.18.0.10 198.18.1.1 40000 80\r\n`);
    /// v2, 28 binary bytes. `None` for [`ProxyProtocol::Off`].
    pub fn encode(kind: ProxyProtocol, client: SocketAddrV4, vip: SocketAddrV4) -> Option<Self> {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let len = match kind {
            ProxyProtocol::Off => return None,
            ProxyProtocol::V1 => {
                let mut w = &mut buf[..];
                // Cannot fail: the longest possible line fits MAX_HEADER_LEN.
                write!(
                    w,
                    "PROXY TCP4 {} {} {} {}\r\n",
                    client.ip(),
                    vip.ip(),
                    client.port(),
                    vip.port()
                )
                .expect("v1 header fits MAX_HEADER_LEN");
                MAX_HEADER_LEN - w.len()
            }
            ProxyProtocol::V2 => {
                buf[..12].copy_from_slice(&V2_SIGNATURE);
                buf[12] = 0x21; // version 2, command PROXY
                buf[13] = 0x11; // AF_INET, SOCK_STREAM
                buf[14..16].copy_from_slice(&12u16.to_be_bytes());
                buf[16..20].copy_from_slice(&client.ip().octets());
                buf[20..24].copy_from_slice(&vip.ip().octets());
                buf[24..26].copy_from_slice(&client.port().to_be_bytes());
                buf[26..28].copy_from_slice(&vip.port().to_be_bytes());
                28
            }
        };
        Some(Self { buf, len })
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(a: [u8; 4], p: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), p)
    }

    #[test]
    fn v1_literal() {
        let h = Header::encode(
            ProxyProtocol::V1,
            ep([198, 18, 0, 10], 40000),
            ep([198, 18, 1, 1], 80),
        )
        .unwrap();
        assert_eq!(
            h.as_bytes(),
            b"PROXY TCP4 198.18.0.10 198.18.1.1 40000 80\r\n"
        );
    }

    #[test]
    fn v1_longest_fits() {
        let h = Header::encode(
            ProxyProtocol::V1,
            ep([255, 255, 255, 255], 65535),
            ep([255, 255, 255, 255], 65535),
        )
        .unwrap();
        assert_eq!(
            h.as_bytes(),
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(h.as_bytes().len(), MAX_HEADER_LEN);
    }

    #[test]
    fn v2_literal() {
        let h = Header::encode(
            ProxyProtocol::V2,
            ep([198, 18, 0, 10], 40000),
            ep([198, 18, 1, 1], 80),
        )
        .unwrap();
        let expected: [u8; 28] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // v2, PROXY
            0x11, // TCP over IPv4
            0x00, 0x0C, // 12 address bytes follow
            198, 18, 0, 10, // source address
            198, 18, 1, 1, // destination address
            0x9C, 0x40, // source port 40000
            0x00, 0x50, // destination port 80
        ];
        assert_eq!(h.as_bytes(), &expected);
    }

    #[test]
    fn off_encodes_nothing() {
        assert!(
            Header::encode(ProxyProtocol::Off, ep([1, 2, 3, 4], 1), ep([5, 6, 7, 8], 2)).is_none()
        );
    }
}
