//! Deterministic pseudo-random byte streams and checksums for end-to-end data checks.
//!
//! A stream is a function of `(seed, offset)`, so a sender and a receiver produce and
//! verify it chunk by chunk, at any chunk boundaries, without keeping it in memory.

use xxhash_rust::xxh3::Xxh3;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fill `buf` with the bytes of stream `seed` starting at byte `offset`.
pub fn fill_at(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (pos / 8));
        let bytes = word.to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// xxh3-64 of the first `len` bytes of stream `seed`.
pub fn checksum_of(seed: u64, len: u64) -> u64 {
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill_at(seed, off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.digest()
}

/// Generates stream `seed` chunk by chunk (for a sender), hashing what it produced.
pub struct Generator {
    seed: u64,
    offset: u64,
    hash: Xxh3,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator { seed, offset: 0, hash: Xxh3::new() }
    }

    /// Fill `buf` with the next bytes of the stream.
    pub fn next_chunk(&mut self, buf: &mut [u8]) {
        fill_at(self.seed, self.offset, buf);
        self.hash.update(buf);
        self.offset += buf.len() as u64;
    }

    /// Bytes produced so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// xxh3-64 of everything produced so far.
    pub fn checksum(&self) -> u64 {
        self.hash.digest()
    }
}

/// Checks received bytes against stream `seed` (for a receiver): hashes what arrived
/// and remembers the first offset that differs from the expected stream.
pub struct Verifier {
    seed: u64,
    offset: u64,
    hash: Xxh3,
    expected: Vec<u8>,
    first_mismatch: Option<u64>,
}

impl Verifier {
    pub fn new(seed: u64) -> Self {
        Verifier { seed, offset: 0, hash: Xxh3::new(), expected: Vec::new(), first_mismatch: None }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hash.update(data);
        if self.first_mismatch.is_none() {
            self.expected.resize(data.len(), 0);
            fill_at(self.seed, self.offset, &mut self.expected);
            if let Some(i) = data.iter().zip(&self.expected).position(|(a, b)| a != b) {
                self.first_mismatch = Some(self.offset + i as u64);
            }
        }
        self.offset += data.len() as u64;
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// xxh3-64 of everything received so far.
    pub fn checksum(&self) -> u64 {
        self.hash.digest()
    }

    /// Offset of the first byte that differed from the stream, if any.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn chunking_does_not_matter() {
        let mut whole = vec![0u8; 1000];
        fill_at(7, 0, &mut whole);
        let mut g = Generator::new(7);
        let mut v = Verifier::new(7);
        let mut got = Vec::new();
        for n in [1usize, 3, 8, 13, 200, 775] {
            let mut b = vec![0u8; n];
            g.next_chunk(&mut b);
            v.update(&b);
            got.extend_from_slice(&b);
        }
        assert_eq!(got, whole);
        assert_eq!(g.checksum(), v.checksum());
        assert_eq!(g.checksum(), checksum_of(7, 1000));
        assert_eq!(v.first_mismatch(), None);
        let mut other = vec![0u8; 16];
        fill_at(8, 0, &mut other);
        assert_ne!(other[..], whole[..16]);
        let mut v2 = Verifier::new(7);
        let mut bad = whole[..100].to_vec();
        bad[42] ^= 1;
        v2.update(&bad);
        assert_eq!(v2.first_mismatch(), Some(42));
    }
}
