//! Header field offsets, one module per header, the way smoltcp's `wire`
//! names them: a multi-byte field is a [`Field`] (a byte range within its
//! header), a one-byte field an offset. The packet path reads and writes
//! through these names only ([`at`] moves a field to where its header starts).

/// A field's bytes within its header.
pub(crate) type Field = core::ops::Range<usize>;

/// `field` of a header that starts `by` bytes in.
#[inline(always)]
pub(crate) const fn at(field: Field, by: usize) -> Field {
    field.start + by..field.end + by
}

/// Ethernet II.
pub(crate) mod ethernet {
    use super::Field;
    pub(crate) const DESTINATION: Field = 0..6;
    pub(crate) const SOURCE: Field = 6..12;
    pub(crate) const ETHERTYPE: Field = 12..14;
    pub(crate) const HEADER_LEN: usize = 14;
    /// EtherType IPv4, as its bytes.
    pub(crate) const IPV4: [u8; 2] = [0x08, 0x00];
}

/// IPv4 (RFC 791).
pub(crate) mod ipv4 {
    use super::Field;
    pub(crate) const VER_IHL: usize = 0;
    pub(crate) const DSCP_ECN: usize = 1;
    pub(crate) const LENGTH: Field = 2..4;
    pub(crate) const IDENT: Field = 4..6;
    pub(crate) const FLG_OFF: Field = 6..8;
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTOCOL: usize = 9;
    /// TTL and protocol as one 16-bit word (what the checksum update sees).
    pub(crate) const TTL_PROTOCOL: Field = 8..10;
    pub(crate) const CHECKSUM: Field = 10..12;
    pub(crate) const SRC_ADDR: Field = 12..16;
    pub(crate) const DST_ADDR: Field = 16..20;
    /// Without options.
    pub(crate) const HEADER_LEN: usize = 20;
    /// `VER_IHL` of a header without options.
    pub(crate) const VER_IHL_PLAIN: u8 = 0x45;
    /// In `FLG_OFF`: don't fragment.
    pub(crate) const DF: u16 = 0x4000;
    /// In `FLG_OFF`: more fragments and the fragment offset (non-zero: a fragment).
    pub(crate) const MF_OFFSET: u16 = 0x3fff;
    /// In `FLG_OFF`: the fragment offset (zero: the first fragment).
    pub(crate) const OFFSET: u16 = 0x1fff;
}

/// TCP (RFC 9293).
pub(crate) mod tcp {
    use super::Field;
    pub(crate) const SRC_PORT: Field = 0..2;
    pub(crate) const DST_PORT: Field = 2..4;
    /// Data offset in the high nibble.
    pub(crate) const DATA_OFF: usize = 12;
    pub(crate) const FLAGS: usize = 13;
    pub(crate) const CHECKSUM: Field = 16..18;
    pub(crate) const HEADER_LEN: usize = 20;
}

/// UDP (RFC 768).
pub(crate) mod udp {
    use super::Field;
    pub(crate) const SRC_PORT: Field = 0..2;
    pub(crate) const DST_PORT: Field = 2..4;
    pub(crate) const LENGTH: Field = 4..6;
    pub(crate) const CHECKSUM: Field = 6..8;
    pub(crate) const HEADER_LEN: usize = 8;
}

/// ICMPv4 (RFC 792, RFC 1191).
pub(crate) mod icmp {
    use super::Field;
    pub(crate) const TYPE: usize = 0;
    pub(crate) const CODE: usize = 1;
    pub(crate) const CHECKSUM: Field = 2..4;
    /// Destination unreachable, fragmentation needed: the next hop's MTU.
    pub(crate) const NEXT_HOP_MTU: Field = 6..8;
    /// Type, code, checksum and the 4 bytes before the quote.
    pub(crate) const HEADER_LEN: usize = 8;
}
