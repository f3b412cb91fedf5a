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

/// [`update16`]/[`update32`] for several changed fields, folded once:
/// `Update::new(c).addr(a, a2).word(w, w2).finish()` is exactly
/// `update16(update32(c, a, a2), w, w2)`. Each update takes the previous
/// result's complement, which is the previous fold; a fold of a sum is 0
/// only for a zero sum and otherwise the sum's one representative in
/// 1..=0xffff (mod 0xffff), so folding the sum of the sums once gives the
/// same value as folding after every field (tested).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update(u32);

impl Update {
    #[inline(always)]
    pub(crate) fn new(check: u16) -> Update {
        Update(u32::from(!check))
    }

    /// A 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub(crate) fn word(self, old: u16, new: u16) -> Update {
        Update(self.0 + u32::from(!old) + u32::from(new))
    }

    /// A 32-bit field changed.
    #[inline(always)]
    pub(crate) fn addr(self, old: u32, new: u32) -> Update {
        Update(self.0 + u32::from(!(old >> 16) as u16) + u32::from(!(old as u16)) + (new >> 16) + (new & 0xffff))
    }

    #[inline(always)]
    pub(crate) fn finish(self) -> u16 {
        !fold(self.0)
    }

    /// No change yet: the start of a sum of changes to add later
    /// ([`Update::partial`], [`Update::with`]).
    #[inline(always)]
    pub(crate) fn changes() -> Update {
        Update(0)
    }

    /// The changes so far, folded: their sum modulo 0xffff, 0 only for a
    /// zero sum, so adding it ([`Update::with`]) in place of the changes
    /// gives the same [`Update::finish`] (the argument of this type's doc).
    #[inline(always)]
    pub(crate) fn partial(self) -> u16 {
        fold(self.0)
    }

    /// Adds changes summed by [`Update::partial`].
    #[inline(always)]
    pub(crate) fn with(self, partial: u16) -> Update {
        Update(self.0 + u32::from(partial))
    }
}

/// Full checksum of `data` (RFC 1071): verifies every IPv4 header, so it
/// sums 32-bit words into a 64-bit accumulator (the one's-complement sum is
/// the same in any word size, RFC 1071 section 2(A)) and folds once.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    // A 16-bit word counts the same at either half of a 32-bit one
    // (2^16 = 1 modulo 2^16 - 1); an odd last byte is a word's high byte.
    match *words.remainder() {
        [a, b, c] => sum += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => sum += u64::from(u16::from_be_bytes([a, b])),
        [a] => sum += u64::from(a) << 8,
        _ => {}
    }
    // 64 -> 33 -> 32 bits, then the 16-bit fold.
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    !fold(sum as u32)
}

/// [`checksum`] of an option-less IPv4 header: five words, no loop (the
/// reference of [`header20_ok`]).
#[cfg(test)]
pub(crate) fn checksum20(h: &[u8; 20]) -> u16 {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let sum = w(0) + w(4) + w(8) + w(12) + w(16);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    !fold(sum as u32)
}

/// Whether an option-less IPv4 header's checksum verifies
/// (`checksum20(h) == 0`) without folding: the plain sum `s` of its words
/// is congruent to their one's-complement sum modulo 0xffff (2^16 = 1
/// there), and folding keeps that residue and never turns a non-zero sum
/// into 0, so the folded sum is all ones (verified) exactly when `s` is a
/// non-zero multiple of 0xffff. The words are read in the machine's byte
/// order: swapping a word's bytes multiplies it by 2^8 modulo 0xffff
/// (RFC 1071 section 2(B)), which keeps "a multiple of 0xffff" and
/// "non-zero". A multiple of the odd 0xffff is, times its inverse modulo
/// 2^64, at most `u64::MAX / 0xffff`: one multiply and a compare.
#[inline(always)]
pub(crate) fn header20_ok(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let sum = w(0) + w(4) + w(8) + w(12) + w(16);
    sum != 0 && sum.wrapping_mul(INVERSE_FFFF) <= u64::MAX / 0xffff
}

/// 0xffff's inverse modulo 2^64 (`0xffff * INVERSE_FFFF` wraps to 1).
const INVERSE_FFFF: u64 = 0xfffe_fffe_fffe_ffff;

#[cfg(test)]
mod tests {
    use super::*;

    /// Marsaglia's xorshift generators: the tests' reproducible inputs.
    fn xorshift32(mut x: u32) -> impl FnMut() -> u32 {
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        }
    }

    fn xorshift64(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// The 16-bit sum of RFC 1071, word by word: the reference.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn checksum_matches_16_bit_reference() {
        let mut next = xorshift32(0x1234_5678);
        for len in 0..200 {
            for fill in [0x00u8, 0xff, 0x01] {
                let mut v = vec![fill; len];
                assert_eq!(checksum(&v), reference(&v), "len {len} fill {fill}");
                for b in v.iter_mut() {
                    *b = next() as u8;
                }
                assert_eq!(checksum(&v), reference(&v), "len {len} random");
                if let Ok(h) = <&[u8; 20]>::try_from(&v[..]) {
                    assert_eq!(checksum20(h), reference(&v));
                    assert_eq!(header20_ok(h), checksum20(h) == 0);
                    // The same header with its checksum field made right.
                    let mut ok = *h;
                    ok[10..12].fill(0);
                    let c = checksum20(&ok);
                    ok[10..12].copy_from_slice(&c.to_be_bytes());
                    assert!(header20_ok(&ok) && checksum20(&ok) == 0, "len {len} fill {fill}");
                    ok[15] ^= 0x40;
                    assert!(!header20_ok(&ok) && checksum20(&ok) != 0);
                }
            }
        }
    }

    /// Changes summed ahead (`partial`) and added with `with` finish as
    /// the same changes made one by one, on random and edge values.
    #[test]
    fn partial_changes_equal_the_changes() {
        let mut rnd = xorshift64(0x2545_f491_4f6c_dd1d);
        let edge = [0u32, 0xffff, 0xffff_ffff, 0x0001_0000, 1];
        for n in 0..300_000usize {
            let mut v = [0u32; 7];
            for (k, w) in v.iter_mut().enumerate() {
                *w = if n % 2 == 0 { edge[(rnd() as usize + k) % edge.len()] } else { rnd() as u32 };
            }
            let [c, a, a2, b, b2, p, p2] = v;
            let (c, p, p2) = (c as u16, p as u16, p2 as u16);
            let at_once = Update::new(c).addr(a, a2).addr(b, b2).word(p, p2).finish();
            let ahead = Update::changes().addr(a, a2).addr(b, b2).word(p, p2).partial();
            assert_eq!(Update::new(c).with(ahead).finish(), at_once, "{v:?}");
            let ip = Update::changes().addr(a, a2).partial();
            let ttl = (b as u16, b2 as u16);
            assert_eq!(Update::new(c).with(ip).word(ttl.0, ttl.1).finish(), Update::new(c).addr(a, a2).word(ttl.0, ttl.1).finish(), "{v:?}");
        }
    }

    /// `header20_ok` agrees with the folded checksum on random headers,
    /// each also with its checksum field made right (both forms of zero:
    /// 0x0000 and 0xffff), one bit flipped, and the all-zero and all-ones
    /// headers.
    #[test]
    fn header20_ok_matches_checksum20() {
        let mut rnd = xorshift64(0x9e37_79b9_7f4a_7c15);
        assert_eq!(0xffffu64.wrapping_mul(INVERSE_FFFF), 1);
        assert!((0..1u64 << 36).step_by(0xfff1).all(|s| (s.wrapping_mul(INVERSE_FFFF) <= u64::MAX / 0xffff) == (s % 0xffff == 0)));
        assert!(!header20_ok(&[0; 20]) && checksum20(&[0; 20]) != 0);
        assert!(header20_ok(&[0xff; 20]) && checksum20(&[0xff; 20]) == 0);
        for n in 0..200_000 {
            let mut h = [0u8; 20];
            for b in h.iter_mut() {
                // Sparse bytes now and then: sums near the multiples of 0xffff.
                *b = if n % 3 == 0 { (rnd() % 3) as u8 * 0x7f } else { rnd() as u8 };
            }
            assert_eq!(header20_ok(&h), checksum20(&h) == 0, "{h:?}");
            h[10..12].fill(0);
            let c = checksum20(&h);
            for c in [c, !c] {
                let mut ok = h;
                ok[10..12].copy_from_slice(&c.to_be_bytes());
                assert_eq!(header20_ok(&ok), checksum20(&ok) == 0, "{ok:?}");
                if c == checksum20(&h) {
                    assert!(header20_ok(&ok), "{ok:?}");
                }
                ok[(rnd() % 20) as usize] ^= 1 << (rnd() % 8);
                assert_eq!(header20_ok(&ok), checksum20(&ok) == 0, "{ok:?}");
            }
        }
    }

    /// `Update` over several fields is the chain of single updates, bit
    /// for bit, edge values (0, 0xffff) included.
    #[test]
    fn update_once_equals_update_chain() {
        let mut next = xorshift32(0x9e37_79b9);
        let edge = [0u32, 0xffff, 0xffff_0000, 0xffff_ffff, 1, 0x0001_0000];
        for i in 0..200_000 {
            let pick = |v: u32, n: usize| if i % 3 == 0 { edge[(v as usize + n) % edge.len()] } else { v };
            let c = pick(next(), 0) as u16;
            let (a, a2) = (pick(next(), 1), pick(next(), 2));
            let (b, b2) = (pick(next(), 3), pick(next(), 4));
            let (w, w2) = (pick(next(), 5) as u16, pick(next(), 0) as u16);
            let (v, v2) = (pick(next(), 1) as u16, pick(next(), 2) as u16);
            let chain = update16(update16(update32(update32(c, a, a2), b, b2), w, w2), v, v2);
            let once = Update::new(c).addr(a, a2).addr(b, b2).word(w, w2).word(v, v2).finish();
            assert_eq!(once, chain, "{c:#x} {a:#x}->{a2:#x} {b:#x}->{b2:#x} {w:#x}->{w2:#x} {v:#x}->{v2:#x}");
        }
    }

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
