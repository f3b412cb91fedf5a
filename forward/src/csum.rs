//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! Field values are taken as they sit on the wire (big-endian 16-bit words);
//! the one's-complement sum is byte-order independent in the sense of RFC 1071
//! section 2(B), but working on the numeric big-endian values keeps it simple.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 16-bit word of the covered data changed from `old` to `new`.
#[inline]
pub(crate) fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// New checksum after a 32-bit field (an IPv4 address) changed.
#[inline]
pub(crate) fn update32(check: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
}

/// Full checksum of `data` (RFC 1071), for headers we build from scratch.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    // Re-fold so a long buffer cannot overflow the accumulator between folds.
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_matches_full_recompute() {
        // An IPv4 header; change src, ttl, and compare with a full recompute.
        let mut h = [
            0x45u8, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0, 0, 0xc0, 0xa8, 0x00,
            0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&h), 0);
        let old_src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let new_src = 0x0a00_00ffu32;
        h[12..16].copy_from_slice(&new_src.to_be_bytes());
        let c = update32(c, old_src, new_src);
        let old_w = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let c = update16(c, old_w, u16::from_be_bytes([h[8], h[9]]));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }
}
