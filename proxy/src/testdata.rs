//! Frames as literal bytes, frozen (built once by hand, checksums computed
//! then), shared by the unit tests and, through `#[path]`, the integration
//! tests.
#![allow(dead_code)] // each includer uses part of it

/// A valid bare SYN, Ethernet 02:00:00:00:00:0a -> 02:00:00:00:00:02, IPv4
/// 198.18.0.10:40000 -> 198.18.1.1:80 (the test harness's client and VIP),
/// seq 0x12345678, window 64240, MSS 1460 option, no payload; padded to the
/// Ethernet minimum with two 0xee bytes beyond the IPv4 total length (44),
/// which no checksum covers.
pub const VALID_SYN: [u8; 60] = [
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, //
    0x08, 0x00, 0x45, 0x00, 0x00, 0x2c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, //
    0x9b, 0x68, 0xc6, 0x12, 0x00, 0x0a, 0xc6, 0x12, 0x01, 0x01, 0x9c, 0x40, //
    0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, //
    0xfa, 0xf0, 0x0a, 0xc9, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0xee, 0xee, //
];

/// Offset of the IPv4 TTL in [`VALID_SYN`] (header checksum covers it, the
/// TCP checksum does not).
pub const TTL_AT: usize = 22;
/// Offset of the last byte of the TCP sequence number in [`VALID_SYN`].
pub const SEQ_LOW_AT: usize = 41;
/// Offset of the TCP flags byte in [`VALID_SYN`].
pub const TCP_FLAGS_AT: usize = 47;
/// Offset of the first padding byte in [`VALID_SYN`].
pub const PADDING_AT: usize = 58;

/// [`VALID_SYN`] with byte `at` XOR 0x01.
pub fn flipped(at: usize) -> [u8; 60] {
    let mut f = VALID_SYN;
    f[at] ^= 0x01;
    f
}
