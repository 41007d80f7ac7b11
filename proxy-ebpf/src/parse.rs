//! Ethernet → IPv4/IPv6 → UDP, as far as the relay needs it; the XDP and the TC program
//! share it.
//!
//! Rules, in order: VLAN-tagged frames go to the kernel (its VLAN devices own them); anything
//! but IPv4/IPv6 carrying UDP goes to the kernel; IPv4 fragments and IPv6 extension headers go
//! to the kernel; a frame that ends inside a header goes to the kernel, which drops it.
//! Length consistency is checked here but enforced by the caller only for flows that are ours,
//! so that the host's other traffic is never judged by us.

use proxy_common::{
    Endpoint,
    flow::family,
    wire::{EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, ether_type, ip_proto},
};

use crate::{
    access::{Packet, ptr_at},
    error::Error,
};

pub const L3_OFF: usize = core::mem::size_of::<EthHdr>();

pub struct Parsed {
    pub family: u8,
    pub udp_off: usize,
    pub udp_len: u16,
    /// IP total length (IPv4) or header plus payload length (IPv6): what the FIB's MTU check
    /// needs.
    pub ip_len: u16,
    /// The UDP length fits the IP payload, the IP length fits the frame, and IPv6 carries a
    /// checksum.
    pub lengths_ok: bool,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
}

#[inline(always)]
pub fn parse<C: Packet>(ctx: &C) -> Result<Parsed, Error> {
    // SAFETY: ptr_at checked that the header lies inside the packet; EthHdr has alignment 1.
    let eth = unsafe { &*ptr_at::<EthHdr>(ctx, 0)? };
    match eth.ether_type() {
        ether_type::IPV4 => parse_v4(ctx),
        ether_type::IPV6 => parse_v6(ctx),
        ether_type::VLAN | ether_type::QINQ => Err(Error::Vlan),
        _ => Err(Error::NotIp),
    }
}

#[inline(always)]
fn frame_len<C: Packet>(ctx: &C) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn parse_v4<C: Packet>(ctx: &C) -> Result<Parsed, Error> {
    // SAFETY: bounds checked by ptr_at; alignment 1.
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, L3_OFF)? };
    if ip.version() != 4 {
        return Err(Error::NotIp);
    }
    if ip.proto != ip_proto::UDP {
        return Err(Error::NotUdp);
    }
    if ip.is_fragment() {
        return Err(Error::Fragment);
    }
    let ihl = ip.header_len();
    if ihl < core::mem::size_of::<Ipv4Hdr>() {
        return Err(Error::Truncated);
    }
    let udp_off = L3_OFF + ihl;
    // SAFETY: bounds checked by ptr_at; alignment 1.
    let udp = unsafe { &*ptr_at::<UdpHdr>(ctx, udp_off)? };
    let ip_len = ip.total_len();
    let udp_len = udp.len();
    let lengths_ok = usize::from(udp_len) >= core::mem::size_of::<UdpHdr>()
        && usize::from(ip_len) >= ihl + usize::from(udp_len)
        && L3_OFF + usize::from(ip_len) <= frame_len(ctx);
    Ok(Parsed {
        family: family::V4,
        udp_off,
        udp_len,
        ip_len,
        lengths_ok,
        src: Endpoint::v4(ip.src, udp.src_port()),
        dst: Endpoint::v4(ip.dst, udp.dst_port()),
        ttl: ip.ttl,
    })
}

#[inline(always)]
fn parse_v6<C: Packet>(ctx: &C) -> Result<Parsed, Error> {
    // SAFETY: bounds checked by ptr_at; alignment 1.
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, L3_OFF)? };
    if ip.version() != 6 {
        return Err(Error::NotIp);
    }
    // Extension headers (including fragments) are rare on media and left to the kernel.
    if ip.next_hdr != ip_proto::UDP {
        return Err(Error::NotUdp);
    }
    let udp_off = L3_OFF + core::mem::size_of::<Ipv6Hdr>();
    // SAFETY: bounds checked by ptr_at; alignment 1.
    let udp = unsafe { &*ptr_at::<UdpHdr>(ctx, udp_off)? };
    let payload_len = ip.payload_len();
    let udp_len = udp.len();
    let ip_len = payload_len.saturating_add(core::mem::size_of::<Ipv6Hdr>() as u16);
    let lengths_ok = usize::from(udp_len) >= core::mem::size_of::<UdpHdr>()
        && payload_len >= udp_len
        && udp_off + usize::from(payload_len) <= frame_len(ctx)
        && udp.check() != 0;
    Ok(Parsed {
        family: family::V6,
        udp_off,
        udp_len,
        ip_len,
        lengths_ok,
        src: Endpoint::v6(ip.src, udp.src_port()),
        dst: Endpoint::v6(ip.dst, udp.dst_port()),
        ttl: ip.hop_limit,
    })
}
