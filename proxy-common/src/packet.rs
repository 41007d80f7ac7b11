//! The packet rules, written once: Ethernet → IPv4/IPv6 → UDP, as far as the relay reads it.
//! The XDP and TC programs run them over their one bounds-checked accessor, userspace over
//! byte slices (`frame.rs`); the `BPF_PROG_TEST_RUN` fixtures and the differential test hold
//! both to the same verdict on every frame.
//!
//! Rules, in order: VLAN-tagged frames are not ours (the kernel's VLAN devices own them);
//! anything but IPv4/IPv6 carrying UDP is not ours; IPv4 fragments and IPv6 extension headers
//! are left to the kernel; a frame that ends inside a header, or an IPv4 header shorter than
//! its fixed part, is truncated. Length consistency is judged here but acted on by the caller
//! only for flows that are ours, so that the host's other traffic is never judged by us.
//!
//! Why an accessor trait and not slices: the BPF verifier learns a packet pointer's readable
//! range only from comparing that pointer against `data_end`, so the kernel side cannot hand
//! out slices; its accessor does the comparison, and these rules never index memory
//! themselves.

use crate::{
    Endpoint,
    flow::family,
    wire::{EthHdr, Header, Ipv4Hdr, Ipv6Hdr, UdpHdr, ether_type, ip_proto},
};

/// Read access to a packet's bytes through fixed-size headers.
pub trait Packet {
    /// The header `T` at `offset` bytes, or `None` if the packet ends first.
    fn header<T: Header>(&self, offset: usize) -> Option<&T>;
    /// The packet's length in bytes.
    fn frame_len(&self) -> usize;
}

impl Packet for [u8] {
    #[inline]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        T::view(self.get(offset..)?)
    }

    #[inline]
    fn frame_len(&self) -> usize {
        self.len()
    }
}

/// Where the IP header starts: right after an untagged Ethernet header.
pub const L3_OFF: usize = EthHdr::LEN;

/// A frame the relay does not read further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotUdp {
    NotIp,
    Vlan,
    NotUdp,
    Fragment,
    /// The frame ends inside a header, or an IPv4 header is shorter than 20 bytes.
    Truncated,
}

/// Whether the lengths in the headers agree with each other and with the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lengths {
    Consistent,
    /// The UDP length is below 8 or beyond the IP payload, or the IP length beyond the frame.
    Inconsistent,
    /// IPv6 UDP with a zero checksum: RFC 8200 section 8.1 says to discard it.
    NoChecksum,
}

/// What the rules read from a UDP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub family: u8,
    pub udp_off: usize,
    pub udp_len: u16,
    /// IP total length (IPv4) or header plus payload length (IPv6): what the egress MTU is
    /// compared with.
    pub ip_len: u16,
    pub lengths: Lengths,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
}

impl Parsed {
    #[inline(always)]
    #[must_use]
    pub fn lengths_ok(&self) -> bool {
        matches!(self.lengths, Lengths::Consistent)
    }

    /// True if IPv4 options sit between the IP and UDP headers.
    #[inline(always)]
    #[must_use]
    pub fn has_ip_options(&self) -> bool {
        self.family == family::V4 && self.udp_off != L3_OFF + Ipv4Hdr::LEN
    }
}

/// Reads the Ethernet, IP and UDP headers of `p` by the rules above.
///
/// # Errors
///
/// [`NotUdp`]: why the frame is not a UDP datagram these rules take (truncated, VLAN-tagged, not
/// IP, not UDP, a fragment).
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(p: &P) -> Result<Parsed, NotUdp> {
    let eth = p.header::<EthHdr>(0).ok_or(NotUdp::Truncated)?;
    match eth.ether_type() {
        ether_type::IPV4 => parse_v4(p),
        ether_type::IPV6 => parse_v6(p),
        ether_type::VLAN | ether_type::QINQ => Err(NotUdp::Vlan),
        _ => Err(NotUdp::NotIp),
    }
}

#[inline(always)]
fn parse_v4<P: Packet + ?Sized>(p: &P) -> Result<Parsed, NotUdp> {
    let ip = p.header::<Ipv4Hdr>(L3_OFF).ok_or(NotUdp::Truncated)?;
    if ip.version() != 4 {
        return Err(NotUdp::NotIp);
    }
    if ip.proto != ip_proto::UDP {
        return Err(NotUdp::NotUdp);
    }
    if ip.is_fragment() {
        return Err(NotUdp::Fragment);
    }
    let ihl = ip.header_len();
    if ihl < Ipv4Hdr::LEN {
        return Err(NotUdp::Truncated);
    }
    let udp_off = L3_OFF + ihl;
    let udp = p.header::<UdpHdr>(udp_off).ok_or(NotUdp::Truncated)?;
    let ip_len = ip.total_len();
    let udp_len = udp.len();
    let consistent = usize::from(udp_len) >= UdpHdr::LEN
        && usize::from(ip_len) >= ihl + usize::from(udp_len)
        && L3_OFF + usize::from(ip_len) <= p.frame_len();
    Ok(Parsed {
        family: family::V4,
        udp_off,
        udp_len,
        ip_len,
        lengths: if consistent {
            Lengths::Consistent
        } else {
            Lengths::Inconsistent
        },
        src: Endpoint::v4(ip.src, udp.src_port()),
        dst: Endpoint::v4(ip.dst, udp.dst_port()),
        ttl: ip.ttl,
    })
}

#[inline(always)]
fn parse_v6<P: Packet + ?Sized>(p: &P) -> Result<Parsed, NotUdp> {
    let ip = p.header::<Ipv6Hdr>(L3_OFF).ok_or(NotUdp::Truncated)?;
    if ip.version() != 6 {
        return Err(NotUdp::NotIp);
    }
    // Extension headers (including fragments) are rare on media and left to the kernel.
    if ip.next_hdr != ip_proto::UDP {
        return Err(NotUdp::NotUdp);
    }
    let udp_off = L3_OFF + Ipv6Hdr::LEN;
    let udp = p.header::<UdpHdr>(udp_off).ok_or(NotUdp::Truncated)?;
    let payload_len = ip.payload_len();
    let udp_len = udp.len();
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the IPv6 header is 40 bytes"
    )]
    let ip_len = payload_len.saturating_add(Ipv6Hdr::LEN as u16);
    let lengths = if usize::from(udp_len) < UdpHdr::LEN
        || payload_len < udp_len
        || udp_off + usize::from(payload_len) > p.frame_len()
    {
        Lengths::Inconsistent
    } else if udp.check() == 0 {
        Lengths::NoChecksum
    } else {
        Lengths::Consistent
    };
    Ok(Parsed {
        family: family::V6,
        udp_off,
        udp_len,
        ip_len,
        lengths,
        src: Endpoint::v6(ip.src, udp.src_port()),
        dst: Endpoint::v6(ip.dst, udp.dst_port()),
        ttl: ip.hop_limit,
    })
}
