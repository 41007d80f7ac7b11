//! Header layouts as they sit on the wire: Ethernet, IPv4, IPv6 and UDP.
//!
//! Every field is a byte array or a `u8`, so every header has alignment 1 and no invalid bit
//! pattern. The kernel program casts bounds-checked packet pointers to these types; userspace
//! views byte slices through [`Header::view`]. Multi-byte fields stay in network order and are
//! read through accessors, so byte order lives here and nowhere else.

/// A header type that may be viewed in place over packet bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, have alignment 1, no padding, and accept every bit pattern.
pub unsafe trait Header: Sized {
    /// Length of the fixed part of the header in bytes.
    const LEN: usize = core::mem::size_of::<Self>();

    /// Views the first `LEN` bytes of `bytes` as this header, or `None` if there are fewer.
    #[must_use]
    fn view(bytes: &[u8]) -> Option<&Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        // SAFETY: length checked above; alignment 1 and any bit pattern are valid (trait contract).
        Some(unsafe { &*bytes.as_ptr().cast::<Self>() })
    }

    /// Mutable variant of [`Header::view`].
    fn view_mut(bytes: &mut [u8]) -> Option<&mut Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        // SAFETY: as in `view`; the exclusive borrow of `bytes` makes the reference unique.
        Some(unsafe { &mut *bytes.as_mut_ptr().cast::<Self>() })
    }

    /// The header's bytes.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self` is plain bytes without padding (trait contract).
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(self).cast::<u8>(), Self::LEN) }
    }
}

/// Copies `src` into `dst`, byte by byte. For the BPF programs: there an array assignment
/// into packet memory became a call to a `memmove` subprogram: a BPF-to-BPF call, a byte
/// loop, and a return through the kernel's return-thunk mitigation. With a `memset` for the
/// parsed endpoint (see `Endpoint::v4`), three such calls took about 30 ns of an IPv4
/// FORWARD's 100 under `BPF_PROG_TEST_RUN`. Volatile stores keep LLVM from turning the loop
/// back into a copy.
#[inline(always)]
pub fn copy_bytes<const N: usize>(dst: &mut [u8; N], src: &[u8; N]) {
    for (d, s) in dst.iter_mut().zip(src) {
        // SAFETY: `d` is a valid, exclusively borrowed byte.
        unsafe { core::ptr::write_volatile(d, *s) };
    }
}

/// EtherType values the relay looks at.
pub mod ether_type {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86DD;
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88A8;
}

/// IP protocol numbers.
pub mod ip_proto {
    pub const UDP: u8 = 17;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

impl EthHdr {
    #[inline(always)]
    #[must_use]
    pub const fn new(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Self {
        Self {
            dst,
            src,
            ether_type: ether_type.to_be_bytes(),
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn ether_type(&self) -> u16 {
        u16::from_be_bytes(self.ether_type)
    }
}

/// An 802.1Q/802.1ad tag as it follows the MAC addresses: TCI, then the inner EtherType.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

impl VlanHdr {
    #[inline(always)]
    #[must_use]
    pub const fn ether_type(&self) -> u16 {
        u16::from_be_bytes(self.ether_type)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    /// Flags (3 bits) and fragment offset (13 bits).
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    const MORE_FRAGMENTS: u16 = 0x2000;
    const OFFSET_MASK: u16 = 0x1fff;
    /// Don't fragment: what media senders set (they do path MTU discovery, RFC 8085).
    const DONT_FRAGMENT: u16 = 0x4000;

    /// A header for a UDP datagram of `udp_len` bytes after `options_len` bytes of options
    /// (a multiple of 4), DF set, checksum zero: fill it with `csum::fill_ipv4`.
    #[inline(always)]
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the IPv4 header is at most 60 bytes and the packet at most 65,535: the caller's lengths fit the header's fields"
    )]
    pub const fn udp(
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
        id: u16,
        options_len: usize,
        udp_len: usize,
    ) -> Self {
        let header_len = core::mem::size_of::<Self>() + options_len;
        Self {
            vihl: 0x40 | (header_len / 4) as u8,
            tos: 0,
            tot_len: ((header_len + udp_len) as u16).to_be_bytes(),
            id: id.to_be_bytes(),
            frag_off: Self::DONT_FRAGMENT.to_be_bytes(),
            ttl,
            proto: ip_proto::UDP,
            check: [0; 2],
            src,
            dst,
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn version(&self) -> u8 {
        self.vihl >> 4
    }

    /// Header length in bytes, options included.
    #[inline(always)]
    #[must_use]
    pub const fn header_len(&self) -> usize {
        ((self.vihl & 0x0f) as usize) * 4
    }

    #[inline(always)]
    #[must_use]
    pub const fn total_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len)
    }

    /// True for any fragment: the first (MF set) as well as later ones (offset > 0).
    #[inline(always)]
    #[must_use]
    pub const fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & (Self::MORE_FRAGMENTS | Self::OFFSET_MASK) != 0
    }
}

// SAFETY: repr(C), all fields are u8 or u8 arrays.
unsafe impl Header for EthHdr {}
// SAFETY: as above.
unsafe impl Header for VlanHdr {}
// SAFETY: as above.
unsafe impl Header for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Header for Ipv6Hdr {}
// SAFETY: as above.
unsafe impl Header for UdpHdr {}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub vtcfl: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Hdr {
    /// A header for a UDP datagram of `udp_len` bytes: traffic class and flow label zero.
    #[inline(always)]
    #[must_use]
    pub const fn udp(src: [u8; 16], dst: [u8; 16], hop_limit: u8, udp_len: u16) -> Self {
        Self {
            vtcfl: [0x60, 0, 0, 0],
            payload_len: udp_len.to_be_bytes(),
            next_hdr: ip_proto::UDP,
            hop_limit,
            src,
            dst,
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn version(&self) -> u8 {
        self.vtcfl[0] >> 4
    }

    #[inline(always)]
    #[must_use]
    pub const fn payload_len(&self) -> u16 {
        u16::from_be_bytes(self.payload_len)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

impl UdpHdr {
    #[inline(always)]
    #[must_use]
    pub const fn new(src_port: u16, dst_port: u16, len: u16, check: u16) -> Self {
        Self {
            src_port: src_port.to_be_bytes(),
            dst_port: dst_port.to_be_bytes(),
            len: len.to_be_bytes(),
            check: check.to_be_bytes(),
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.src_port)
    }

    #[inline(always)]
    #[must_use]
    pub const fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }

    #[inline(always)]
    #[must_use]
    #[expect(
        clippy::len_without_is_empty,
        reason = "the header's length field, not a container's length"
    )]
    pub const fn len(&self) -> u16 {
        u16::from_be_bytes(self.len)
    }

    #[inline(always)]
    #[must_use]
    pub const fn check(&self) -> u16 {
        u16::from_be_bytes(self.check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_match_the_rfcs() {
        assert_eq!(EthHdr::LEN, 14);
        assert_eq!(VlanHdr::LEN, 4);
        assert_eq!(Ipv4Hdr::LEN, 20);
        assert_eq!(Ipv6Hdr::LEN, 40);
        assert_eq!(UdpHdr::LEN, 8);
        assert_eq!(core::mem::align_of::<Ipv6Hdr>(), 1);
        assert_eq!(core::mem::align_of::<Ipv4Hdr>(), 1);
    }

    #[test]
    fn ipv4_accessors_read_network_order() {
        // 20-byte header with options flag ihl=6, MF set.
        let bytes = [
            0x46, 0, 0x01, 0x02, 0, 0, 0x20, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let ip = Ipv4Hdr::view(&bytes).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 24);
        assert_eq!(ip.total_len(), 0x0102);
        assert!(ip.is_fragment());
        assert!(Ipv4Hdr::view(&bytes[..19]).is_none());
    }

    #[test]
    fn later_fragments_are_fragments_too() {
        let mut ip = Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            tot_len: [0, 28],
            id: [0; 2],
            frag_off: [0x40, 0], // DF only
            ttl: 64,
            proto: 17,
            check: [0; 2],
            src: [0; 4],
            dst: [0; 4],
        };
        assert!(!ip.is_fragment());
        ip.frag_off = [0x00, 0x10];
        assert!(ip.is_fragment());
    }
}
