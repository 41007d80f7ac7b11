//! The FORWARD rewrite: new IP addresses and UDP ports, with checksums that stay correct.
//!
//! The XDP program runs this on packet memory and userspace runs it on `AF_XDP` frames, so the
//! host unit tests below exercise the very code the kernel runs.
//!
//! Checksums:
//! - The IPv4 header checksum is always complete on the wire, so it is updated incrementally
//!   (RFC 1624).
//! - A UDP checksum of zero over IPv4 means "none" (RFC 768) and stays zero.
//! - A sender whose NIC finishes the UDP checksum (`CHECKSUM_PARTIAL`, as every veth and most
//!   virtual NICs do) leaves only the folded pseudo-header sum in the field. After a native
//!   XDP redirect nobody finishes it and the receiver drops the packet, so such a packet gets
//!   a full recompute over its payload. A complete checksum gets an incremental update, which
//!   keeps end-to-end error detection: a corrupt payload stays detectably corrupt.
//!
//! A complete checksum that happens to equal the pseudo-header sum is recomputed instead; for
//! an intact packet both paths give the same field.

use crate::{
    csum::{self, Incremental},
    flow::Endpoint,
    wire::{Ipv4Hdr, Ipv6Hdr, UdpHdr},
};

/// What the sender left in the UDP checksum field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpChecksum {
    /// Zero: no checksum (IPv4 only).
    Absent,
    /// Only the pseudo-header sum: the sender's NIC was to finish it.
    Partial,
    /// A complete checksum (possibly wrong; an update keeps it so).
    Complete,
}

#[inline(always)]
#[must_use]
pub fn classify_v4(ip: &Ipv4Hdr, udp: &UdpHdr) -> UdpChecksum {
    let check = udp.check();
    if check == 0 {
        UdpChecksum::Absent
    } else if check == csum::fold(csum::pseudo_header_v4(&ip.src, &ip.dst, udp.len())) {
        UdpChecksum::Partial
    } else {
        UdpChecksum::Complete
    }
}

#[inline(always)]
#[must_use]
pub fn classify_v6(ip: &Ipv6Hdr, udp: &UdpHdr) -> UdpChecksum {
    let check = udp.check();
    if check == 0 {
        UdpChecksum::Absent
    } else if check
        == csum::fold(csum::pseudo_header_v6(
            &ip.src,
            &ip.dst,
            u32::from(udp.len()),
        ))
    {
        UdpChecksum::Partial
    } else {
        UdpChecksum::Complete
    }
}

#[inline(always)]
fn set_ports(udp: &mut UdpHdr, src: &Endpoint, dst: &Endpoint) {
    udp.src_port = *src.port_be();
    udp.dst_port = *dst.port_be();
}

#[inline(always)]
fn udp_header_sum(udp: &UdpHdr) -> u64 {
    // The checksum field itself counts as zero.
    u64::from(udp.src_port()) + u64::from(udp.dst_port()) + u64::from(udp.len())
}

/// Rewrites an IPv4/UDP packet to go from `src` to `dst` (both IPv4 endpoints), with the TTL
/// one lower, as any hop that forwards at wire speed must (two relays that forward to each
/// other by mistake then lose the packet after 64 hops instead of looping it forever). The
/// caller has checked that the TTL is above 1.
///
/// `payload_sum` returns the one's-complement sum (see [`csum::add_bytes`]) of the UDP payload,
/// the bytes after the UDP header; it is called only for a partial checksum.
#[inline(always)]
pub fn rewrite_v4(
    ip: &mut Ipv4Hdr,
    udp: &mut UdpHdr,
    src: &Endpoint,
    dst: &Endpoint,
    payload_sum: impl FnOnce() -> u64,
) {
    let new_src = src.addr_v4();
    let new_dst = dst.addr_v4();
    let kind = classify_v4(ip, udp);

    let ttl = ip.ttl.saturating_sub(1);
    let ip_check = Incremental::new(u16::from_be_bytes(ip.check))
        .replace(&ip.src, new_src)
        .replace(&ip.dst, new_dst)
        .replace(&[ip.ttl, ip.proto], &[ttl, ip.proto])
        .finish();

    match kind {
        UdpChecksum::Absent => set_ports(udp, src, dst),
        UdpChecksum::Complete => {
            let check = Incremental::new(udp.check())
                .replace(&ip.src, new_src)
                .replace(&ip.dst, new_dst)
                .replace(&udp.src_port, src.port_be())
                .replace(&udp.dst_port, dst.port_be())
                .finish();
            set_ports(udp, src, dst);
            udp.check = nonzero(check).to_be_bytes();
        }
        UdpChecksum::Partial => {
            set_ports(udp, src, dst);
            let sum = csum::pseudo_header_v4(new_src, new_dst, udp.len())
                + udp_header_sum(udp)
                + payload_sum();
            udp.check = csum::udp_field(sum).to_be_bytes();
        }
    }
    ip.src = *new_src;
    ip.dst = *new_dst;
    ip.ttl = ttl;
    ip.check = ip_check.to_be_bytes();
}

/// Rewrites an IPv6/UDP packet to go from `src` to `dst` (both IPv6 endpoints), with the hop
/// limit one lower (see [`rewrite_v4`]). The caller has already rejected a zero checksum,
/// which IPv6 forbids (RFC 8200 section 8.1), and a hop limit of 1 or less.
#[inline(always)]
pub fn rewrite_v6(
    ip: &mut Ipv6Hdr,
    udp: &mut UdpHdr,
    src: &Endpoint,
    dst: &Endpoint,
    payload_sum: impl FnOnce() -> u64,
) {
    let new_src = src.addr_v6();
    let new_dst = dst.addr_v6();
    if classify_v6(ip, udp) == UdpChecksum::Partial {
        set_ports(udp, src, dst);
        let sum = csum::pseudo_header_v6(new_src, new_dst, u32::from(udp.len()))
            + udp_header_sum(udp)
            + payload_sum();
        udp.check = csum::udp_field(sum).to_be_bytes();
    } else {
        let check = Incremental::new(udp.check())
            .replace(&ip.src, new_src)
            .replace(&ip.dst, new_dst)
            .replace(&udp.src_port, src.port_be())
            .replace(&udp.dst_port, dst.port_be())
            .finish();
        set_ports(udp, src, dst);
        udp.check = nonzero(check).to_be_bytes();
    }
    ip.src = *new_src;
    ip.dst = *new_dst;
    ip.hop_limit = ip.hop_limit.saturating_sub(1);
}

/// RFC 768: a UDP checksum that computes to zero is sent as all ones.
#[inline(always)]
const fn nonzero(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "test frames are a few hundred bytes, within the 16-bit length fields"
)]
mod tests {
    use super::*;
    use crate::wire::Header;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The UDP checksum of `seg` from scratch, its checksum field taken as zero, over the
    /// pseudo-header sum `pseudo`.
    fn udp_checksum(pseudo: u64, seg: &[u8]) -> u16 {
        let mut s = seg.to_vec();
        s[6] = 0;
        s[7] = 0;
        csum::udp_field(csum::add_bytes(pseudo, &s))
    }

    fn udp_checksum_v4(ip: &Ipv4Hdr, seg: &[u8]) -> u16 {
        udp_checksum(
            csum::pseudo_header_v4(&ip.src, &ip.dst, seg.len() as u16),
            seg,
        )
    }

    fn udp_checksum_v6(ip: &Ipv6Hdr, seg: &[u8]) -> u16 {
        udp_checksum(
            csum::pseudo_header_v6(&ip.src, &ip.dst, seg.len() as u32),
            seg,
        )
    }

    /// A random IPv4/UDP packet (IP header without options followed by the UDP segment) whose
    /// checksums are complete, partial or absent.
    fn random_v4(rng: &mut StdRng, kind: UdpChecksum) -> Vec<u8> {
        let payload_len = rng.random_range(0..1400usize);
        let udp_len = 8 + payload_len;
        let mut ip = Ipv4Hdr::udp(
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
            0,
            udp_len,
        );
        ip.tos = rng.random();
        csum::fill_ipv4(&mut ip, &[]);
        let udp = UdpHdr::new(rng.random(), rng.random(), udp_len as u16, 0);
        let mut p = [ip.as_bytes(), udp.as_bytes()].concat();
        p.resize(20 + udp_len, 0);
        rng.fill(&mut p[28..]);
        let (iph, seg) = p.split_at_mut(20);
        let ip = Ipv4Hdr::view(iph).unwrap();
        let check = match kind {
            UdpChecksum::Absent => 0,
            UdpChecksum::Complete => udp_checksum_v4(ip, seg),
            UdpChecksum::Partial => {
                csum::fold(csum::pseudo_header_v4(&ip.src, &ip.dst, udp_len as u16))
            }
        };
        seg[6..8].copy_from_slice(&check.to_be_bytes());
        p
    }

    fn random_endpoint_v4(rng: &mut StdRng) -> Endpoint {
        Endpoint::v4(rng.random(), rng.random())
    }

    fn rewrite_packet_v4(p: &mut [u8], src: &Endpoint, dst: &Endpoint) {
        let (iph, seg) = p.split_at_mut(20);
        let (udph, payload) = seg.split_at_mut(8);
        let payload_sum = csum::add_bytes(0, payload);
        rewrite_v4(
            Ipv4Hdr::view_mut(iph).unwrap(),
            UdpHdr::view_mut(udph).unwrap(),
            src,
            dst,
            || payload_sum,
        );
    }

    #[test]
    fn v4_rewrite_matches_a_recompute_on_random_packets() {
        let mut rng = StdRng::seed_from_u64(768);
        for i in 0..5000 {
            let kind = [UdpChecksum::Complete, UdpChecksum::Partial][i % 2];
            let mut p = random_v4(&mut rng, kind);
            let (src, dst) = (random_endpoint_v4(&mut rng), random_endpoint_v4(&mut rng));
            rewrite_packet_v4(&mut p, &src, &dst);

            let (iph, seg) = p.split_at(20);
            let ip = Ipv4Hdr::view(iph).unwrap();
            let udp = UdpHdr::view(seg).unwrap();
            assert_eq!(&ip.src, src.addr_v4());
            assert_eq!(&ip.dst, dst.addr_v4());
            assert_eq!(udp.src_port(), src.port());
            assert_eq!(udp.dst_port(), dst.port());
            assert_eq!(csum::of_bytes(iph), 0, "IPv4 header checksum, case {i}");
            assert_eq!(
                udp.check(),
                udp_checksum_v4(ip, seg),
                "UDP checksum, case {i} ({kind:?})"
            );
        }
    }

    #[test]
    fn v4_absent_checksum_stays_absent() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut p = random_v4(&mut rng, UdpChecksum::Absent);
        rewrite_packet_v4(
            &mut p,
            &random_endpoint_v4(&mut rng),
            &random_endpoint_v4(&mut rng),
        );
        assert_eq!(&p[26..28], &[0, 0]);
        assert_eq!(csum::of_bytes(&p[..20]), 0);
    }

    #[test]
    fn a_corrupt_payload_stays_detectably_corrupt() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = random_v4(&mut rng, UdpChecksum::Complete);
        p[40] ^= 0x5a; // corrupt after the checksum was computed
        rewrite_packet_v4(
            &mut p,
            &random_endpoint_v4(&mut rng),
            &random_endpoint_v4(&mut rng),
        );
        let ip = Ipv4Hdr::view(&p[..20]).unwrap();
        assert_ne!(
            UdpHdr::view(&p[20..]).unwrap().check(),
            udp_checksum_v4(ip, &p[20..])
        );
    }

    #[test]
    fn v6_rewrite_matches_a_recompute_on_random_packets() {
        let mut rng = StdRng::seed_from_u64(8200);
        for i in 0..3000 {
            let payload_len = rng.random_range(0..1400usize);
            let udp_len = 8 + payload_len;
            let ip = Ipv6Hdr::udp(rng.random(), rng.random(), 64, udp_len as u16);
            let udp = UdpHdr::new(rng.random(), rng.random(), udp_len as u16, 0);
            let mut p = [ip.as_bytes(), udp.as_bytes()].concat();
            p.resize(40 + udp_len, 0);
            rng.fill(&mut p[48..]);
            let partial = i % 2 == 1;
            {
                let (iph, seg) = p.split_at_mut(40);
                let ip = Ipv6Hdr::view(iph).unwrap();
                let check = if partial {
                    csum::fold(csum::pseudo_header_v6(&ip.src, &ip.dst, udp_len as u32))
                } else {
                    udp_checksum_v6(ip, seg)
                };
                seg[6..8].copy_from_slice(&check.to_be_bytes());
            }
            let src = Endpoint::v6(rng.random(), rng.random());
            let dst = Endpoint::v6(rng.random(), rng.random());
            let (iph, seg) = p.split_at_mut(40);
            let (udph, payload) = seg.split_at_mut(8);
            let ps = csum::add_bytes(0, payload);
            rewrite_v6(
                Ipv6Hdr::view_mut(iph).unwrap(),
                UdpHdr::view_mut(udph).unwrap(),
                &src,
                &dst,
                || ps,
            );
            let ip = Ipv6Hdr::view(&p[..40]).unwrap();
            assert_eq!(&ip.src, src.addr_v6());
            assert_eq!(&ip.dst, dst.addr_v6());
            let seg = &p[40..];
            assert_eq!(
                UdpHdr::view(seg).unwrap().check(),
                udp_checksum_v6(ip, seg),
                "case {i}"
            );
        }
    }

    #[test]
    fn classification() {
        let mut rng = StdRng::seed_from_u64(3);
        for kind in [
            UdpChecksum::Absent,
            UdpChecksum::Partial,
            UdpChecksum::Complete,
        ] {
            let p = random_v4(&mut rng, kind);
            let ip = Ipv4Hdr::view(&p[..20]).unwrap();
            let udp = UdpHdr::view(&p[20..]).unwrap();
            assert_eq!(classify_v4(ip, udp), kind);
        }
    }
}
