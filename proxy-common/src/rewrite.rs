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
//!
//! Two forms, one result: [`rewrite_v4`] and [`rewrite_v6`] sum every word they replace, and
//! serve userspace. The XDP program runs [`rewrite_v4_with`] and [`rewrite_v6_with`], which
//! take the words the flow entry fixes as sums userspace made once ([`CsumDelta::of`]) and add
//! only the arriving source's. Both add the very same integers, so they write the same bytes;
//! the tests below hold them to it on random packets.

pub use crate::flow::CsumDelta;
use crate::{
    csum::{self, Incremental},
    flow::{Endpoint, family},
    wire::{self, Ipv4Hdr, Ipv6Hdr, UdpHdr, ip_proto},
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

/// The IPv4 header checksum's term for the TTL word (TTL, protocol) going one lower: the
/// complement of the old word plus the new one, `0xffff - w + (w - 0x100)`, whatever `w` (the
/// TTL is above 1 when the rewrite runs).
const TTL_WORD_CHANGE: u64 = 0xffff - 0x100;

/// The complements of `bytes`' 16-bit words, summed: what replacing them adds to a checksum
/// (RFC 1624). `bytes` has an even length.
#[inline(always)]
fn complement_words(bytes: &[u8]) -> u64 {
    (bytes.len() / 2) as u64 * 0xffff - csum::add_bytes(0, bytes)
}

impl CsumDelta {
    /// The sums for a flow whose packets arrive at `local` (its key) and leave from `out_src`
    /// to `out_dst`. Endpoints of another family than `local`'s give sums the program never
    /// uses: it forwards only within one family.
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "at most 25 words of 16 bits: far below 2^32"
    )]
    pub fn of(local: &Endpoint, out_src: &Endpoint, out_dst: &Endpoint) -> Self {
        let (old_dst, new_src, new_dst): (&[u8], &[u8], &[u8]) = if local.family() == family::V6 {
            (local.addr_v6(), out_src.addr_v6(), out_dst.addr_v6())
        } else {
            (local.addr_v4(), out_src.addr_v4(), out_dst.addr_v4())
        };
        let new_addrs = csum::add_bytes(csum::add_bytes(0, new_src), new_dst);
        let addrs = complement_words(old_dst) + new_addrs;
        let new_ports = u64::from(out_src.port()) + u64::from(out_dst.port());
        let proto = u64::from(ip_proto::UDP);
        Self {
            ip: (addrs + TTL_WORD_CHANGE) as u32,
            udp: (addrs + u64::from(!local.port()) + new_ports) as u32,
            pseudo_in: (csum::add_bytes(0, old_dst) + proto) as u32,
            pseudo_out: (new_addrs + proto + new_ports) as u32,
        }
    }

    /// What the sender left in the UDP checksum field of a packet whose source address words
    /// sum to `src_sum` (see [`classify_v4`]).
    #[inline(always)]
    #[must_use]
    pub fn classify(&self, udp: &UdpHdr, src_sum: u64) -> UdpChecksum {
        let check = udp.check();
        if check == 0 {
            UdpChecksum::Absent
        } else if check == csum::fold(u64::from(self.pseudo_in) + src_sum + u64::from(udp.len())) {
            UdpChecksum::Partial
        } else {
            UdpChecksum::Complete
        }
    }

    /// The new UDP checksum field of a packet that arrived with `kind` in it, from its old
    /// field, source port and length (plain values: a header copied whole costs the program a
    /// load per byte).
    #[inline(always)]
    fn udp_field(
        &self,
        (check, src_port, len): (u16, u16, u16),
        kind: UdpChecksum,
        not_src: u64,
        payload_sum: impl FnOnce() -> u64,
    ) -> [u8; 2] {
        match kind {
            UdpChecksum::Absent => [0, 0],
            UdpChecksum::Complete => {
                let sum = u64::from(!check) + u64::from(self.udp) + not_src + u64::from(!src_port);
                nonzero(!csum::fold(sum)).to_be_bytes()
            }
            UdpChecksum::Partial => {
                let sum = u64::from(self.pseudo_out) + 2 * u64::from(len) + payload_sum();
                csum::udp_field(sum).to_be_bytes()
            }
        }
    }
}

/// [`rewrite_v4`] with the flow's precomputed sums: `kind` is what
/// [`CsumDelta::classify`] said of the packet, and `src_sum` the sum of its source address
/// words that it was given. The same bytes as [`rewrite_v4`] for a flow keyed on the packet's
/// destination.
#[inline(always)]
pub fn rewrite_v4_with(
    ip: &mut Ipv4Hdr,
    udp: &mut UdpHdr,
    entry: (&Endpoint, &Endpoint, &CsumDelta),
    kind: UdpChecksum,
    src_sum: u64,
    payload_sum: impl FnOnce() -> u64,
) {
    let (src, dst, delta) = entry;
    let not_src = 2 * 0xffff - src_sum;
    let ip_sum = u64::from(!u16::from_be_bytes(ip.check)) + u64::from(delta.ip) + not_src;
    udp.check = delta.udp_field(
        (udp.check(), udp.src_port(), udp.len()),
        kind,
        not_src,
        payload_sum,
    );
    set_ports(udp, src, dst);
    ip.src = *src.addr_v4();
    ip.dst = *dst.addr_v4();
    ip.ttl = ip.ttl.saturating_sub(1);
    ip.check = (!csum::fold(ip_sum)).to_be_bytes();
}

/// [`rewrite_v6`] with the flow's precomputed sums (see [`rewrite_v4_with`]).
#[inline(always)]
pub fn rewrite_v6_with(
    ip: &mut Ipv6Hdr,
    udp: &mut UdpHdr,
    entry: (&Endpoint, &Endpoint, &CsumDelta),
    kind: UdpChecksum,
    src_sum: u64,
    payload_sum: impl FnOnce() -> u64,
) {
    let (src, dst, delta) = entry;
    let not_src = 8 * 0xffff - src_sum;
    udp.check = delta.udp_field(
        (udp.check(), udp.src_port(), udp.len()),
        kind,
        not_src,
        payload_sum,
    );
    set_ports(udp, src, dst);
    wire::copy_bytes(&mut ip.src, src.addr_v6());
    wire::copy_bytes(&mut ip.dst, dst.addr_v6());
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

    /// The precomputed form against the summing one: the same bytes on every packet, for
    /// complete, partial, absent and corrupt checksums (a wrong one stays as wrong), and for
    /// a flow that accepts any source (the arriving source is not the entry's business).
    #[test]
    fn precomputed_rewrite_writes_the_same_bytes() {
        let mut rng = StdRng::seed_from_u64(1624);
        for i in 0..20_000 {
            let kind = [
                UdpChecksum::Complete,
                UdpChecksum::Partial,
                UdpChecksum::Absent,
            ][i % 3];
            let v6 = i % 2 == 1;
            let mut p = if v6 {
                random_v6(&mut rng, kind)
            } else {
                random_v4(&mut rng, kind)
            };
            if i % 7 == 0 {
                let n = p.len() - 1;
                p[n] ^= 0x11; // a wrong checksum
            }
            let (src, dst) = if v6 {
                (
                    Endpoint::v6(rng.random(), rng.random()),
                    Endpoint::v6(rng.random(), rng.random()),
                )
            } else {
                (random_endpoint_v4(&mut rng), random_endpoint_v4(&mut rng))
            };
            let mut q = p.clone();
            let hl = if v6 { 40 } else { 20 };
            let (iph, seg) = p.split_at_mut(hl);
            let (udph, payload) = seg.split_at_mut(8);
            let ps = csum::add_bytes(0, payload);
            let udp = UdpHdr::view_mut(udph).unwrap();
            let (iq, sq) = q.split_at_mut(hl);
            let uq = UdpHdr::view_mut(&mut sq[..8]).unwrap();
            if v6 {
                let ip = Ipv6Hdr::view_mut(iph).unwrap();
                let local = Endpoint::v6(ip.dst, udp.dst_port());
                rewrite_v6(ip, udp, &src, &dst, || ps);
                let iq = Ipv6Hdr::view_mut(iq).unwrap();
                let delta = CsumDelta::of(&local, &src, &dst);
                let src_sum = csum::add_bytes(0, &iq.src);
                let kind = delta.classify(uq, src_sum);
                assert_eq!(kind, classify_v6(iq, uq), "case {i}");
                rewrite_v6_with(iq, uq, (&src, &dst, &delta), kind, src_sum, || ps);
            } else {
                let ip = Ipv4Hdr::view_mut(iph).unwrap();
                let local = Endpoint::v4(ip.dst, udp.dst_port());
                ip.ttl = rng.random_range(2..=255);
                iq[8] = ip.ttl;
                csum::fill_ipv4(ip, &[]);
                iq.copy_from_slice(ip.as_bytes());
                rewrite_v4(ip, udp, &src, &dst, || ps);
                let iq = Ipv4Hdr::view_mut(iq).unwrap();
                let delta = CsumDelta::of(&local, &src, &dst);
                let src_sum = csum::add_bytes(0, &iq.src);
                let kind = delta.classify(uq, src_sum);
                assert_eq!(kind, classify_v4(iq, uq), "case {i}");
                rewrite_v4_with(iq, uq, (&src, &dst, &delta), kind, src_sum, || ps);
            }
            assert_eq!(p, q, "case {i} ({kind:?}, v6: {v6})");
        }
    }

    /// A random IPv6/UDP packet (like [`random_v4`]; IPv6 has no absent checksum, so that
    /// kind gives a complete one).
    fn random_v6(rng: &mut StdRng, kind: UdpChecksum) -> Vec<u8> {
        let payload_len = rng.random_range(0..1400usize);
        let udp_len = 8 + payload_len;
        let ip = Ipv6Hdr::udp(rng.random(), rng.random(), 64, udp_len as u16);
        let udp = UdpHdr::new(rng.random(), rng.random(), udp_len as u16, 0);
        let mut p = [ip.as_bytes(), udp.as_bytes()].concat();
        p.resize(40 + udp_len, 0);
        rng.fill(&mut p[48..]);
        let (iph, seg) = p.split_at_mut(40);
        let ip = Ipv6Hdr::view(iph).unwrap();
        let check = if kind == UdpChecksum::Partial {
            csum::fold(csum::pseudo_header_v6(&ip.src, &ip.dst, udp_len as u32))
        } else {
            udp_checksum_v6(ip, seg)
        };
        seg[6..8].copy_from_slice(&check.to_be_bytes());
        p
    }
}
