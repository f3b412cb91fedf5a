//! Why a frame was dropped.

/// Declares a `DropReason` enum once, so its variants, `ALL`, `index` and
/// the stable names cannot drift apart. Exported: the forwarder declares its
/// own reasons with it. The enum's doc comes first, then `enum;`, then the
/// variants.
#[macro_export]
macro_rules! drop_reasons {
    ($(#[doc = $enum_doc:literal])* enum; $($(#[doc = $doc:literal])+ $variant:ident => $name:literal,)+) => {
        $(#[doc = $enum_doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl DropReason {
            /// How many reasons there are: the length of a counter array.
            pub const COUNT: usize = [$(DropReason::$variant),+].len();

            /// Every reason, in [`index`](Self::index) order.
            pub const ALL: [DropReason; Self::COUNT] = [$(DropReason::$variant),+];

            /// The reason's `snake_case` name. Stable: stats output and tests
            /// use it, so never rename one.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)+
                }
            }

            /// Position in [`ALL`](Self::ALL): the index of this reason's counter.
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

drop_reasons! {
    /// Every reason [`classify`](crate::classify) or
    /// [`respond`](crate::respond) drops a frame.
    ///
    /// One per counter: the dataplane keeps `[u64; DropReason::COUNT]`
    /// indexed by [`index`](Self::index) and reports them by
    /// [`name`](Self::name).
    enum;
    /// Shorter than an Ethernet header.
    EthTruncated => "eth_truncated",
    /// Unicast to a MAC that is not ours.
    OtherHost => "other_host",
    /// To a multicast MAC: we join no groups.
    Multicast => "multicast",
    /// A source we must not answer, as a reply would go to many hosts or
    /// nowhere: a multicast source MAC or ARP sender MAC, or an IPv4 source
    /// that is unspecified, broadcast, multicast or loopback.
    MartianSource => "martian_source",
    /// Neither ARP nor IPv4 (IPv6, VLAN-tagged, LLDP, ...).
    UnsupportedEthertype => "unsupported_ethertype",
    /// ARP shorter than its header or than its addresses.
    ArpMalformed => "arp_malformed",
    /// ARP that is not Ethernet/IPv4 or neither request nor reply; or, where
    /// no TCP stack resolves neighbours, a reply nothing asked for.
    ArpUnsupported => "arp_unsupported",
    /// ARP request for an address that is not ours.
    ArpNotForUs => "arp_not_for_us",
    /// Shorter than a minimal IPv4 header.
    Ipv4Truncated => "ipv4_truncated",
    /// Version not 4, IHL below 5 or past the packet, or total length past
    /// the frame or below the header length.
    Ipv4BadHeader => "ipv4_bad_header",
    /// IPv4 header checksum wrong.
    Ipv4BadChecksum => "ipv4_bad_checksum",
    /// IPv4 to an address that is not ours.
    Ipv4NotForUs => "ipv4_not_for_us",
    /// An IPv4 fragment to us: we do not reassemble.
    Ipv4Fragment => "ipv4_fragment",
    /// ICMP shorter than its 8-byte header.
    IcmpMalformed => "icmp_malformed",
    /// ICMP checksum wrong.
    IcmpBadChecksum => "icmp_bad_checksum",
    /// ICMP other than an echo request.
    IcmpUnsupported => "icmp_unsupported",
    /// TCP shorter than 20 bytes, or data offset below 5 or past the IPv4
    /// payload.
    TcpMalformed => "tcp_malformed",
    /// UDP shorter than 8 bytes, or length field below 8 or past the IPv4
    /// payload.
    UdpMalformed => "udp_malformed",
    /// Well-formed TCP or UDP to us that nothing serves.
    NoService => "no_service",
    /// IPv4 to us carrying neither ICMP, TCP nor UDP.
    UnsupportedProtocol => "unsupported_protocol",
}

