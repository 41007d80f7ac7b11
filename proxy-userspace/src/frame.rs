//! Ethernet/IP/UDP frames in userspace: a checked view of punted frames, the same FORWARD
//! rewrite the kernel does, and a builder for frames we originate (probes, ACKs, tests, the
//! benchmark's traffic).
//!
//! Parsing never panics: every length is checked against the slice, and anything unexpected
//! comes back as a [`FrameError`].

use proxy_common::{
    Endpoint, csum,
    flow::family,
    packet::{self, L3_OFF, Lengths, NotUdp},
    rewrite,
    wire::{EthHdr, Header, Ipv4Hdr, Ipv6Hdr, UdpHdr, VlanHdr, ether_type},
};

pub type Mac = [u8; 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    Truncated,
    NotIp,
    Vlan,
    NotUdp,
    Fragment,
    /// Lengths in the headers contradict each other or the frame.
    BadLength,
    /// IPv6 UDP with a zero checksum: RFC 8200 section 8.1 says to discard it, and the XDP
    /// program drops it.
    NoChecksum,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Truncated => "frame ends inside a header",
            FrameError::NotIp => "not IPv4 or IPv6",
            FrameError::Vlan => "VLAN-tagged",
            FrameError::NotUdp => "not UDP",
            FrameError::Fragment => "IP fragment",
            FrameError::BadLength => "inconsistent lengths",
            FrameError::NoChecksum => "IPv6 UDP without a checksum",
        })
    }
}

impl std::error::Error for FrameError {}

/// Where things are in a UDP frame, after [`UdpFrame::parse`] checked them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpFrame {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub l3_off: usize,
    pub udp_off: usize,
    /// Payload range within the frame.
    pub payload_off: usize,
    pub payload_len: usize,
    pub ttl: u8,
}

impl From<NotUdp> for FrameError {
    fn from(e: NotUdp) -> Self {
        match e {
            NotUdp::NotIp => FrameError::NotIp,
            NotUdp::Vlan => FrameError::Vlan,
            NotUdp::NotUdp => FrameError::NotUdp,
            NotUdp::Fragment => FrameError::Fragment,
            NotUdp::Truncated => FrameError::Truncated,
        }
    }
}

impl UdpFrame {
    /// The kernel program's rules (`proxy_common::packet`), and their verdict on lengths
    /// enforced: userspace only sees frames of our flows.
    ///
    /// # Errors
    ///
    /// [`FrameError`]: the kernel program's rules reject the frame, or its lengths are
    /// inconsistent, or it is IPv6 UDP without a checksum.
    pub fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        let p = packet::parse(frame)?;
        match p.lengths {
            Lengths::Consistent => {}
            Lengths::Inconsistent => return Err(FrameError::BadLength),
            Lengths::NoChecksum => return Err(FrameError::NoChecksum),
        }
        let eth = EthHdr::view(frame).ok_or(FrameError::Truncated)?;
        Ok(Self {
            src_mac: eth.src,
            dst_mac: eth.dst,
            src: p.src,
            dst: p.dst,
            l3_off: L3_OFF,
            udp_off: p.udp_off,
            payload_off: p.udp_off + UdpHdr::LEN,
            payload_len: usize::from(p.udp_len) - UdpHdr::LEN,
            ttl: p.ttl,
        })
    }

    #[must_use]
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.payload_off..self.payload_off + self.payload_len]
    }

    /// The IP packet (no Ethernet header), trailing padding cut off.
    #[must_use]
    pub fn ip_packet<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.l3_off..self.payload_off + self.payload_len]
    }

    /// True if the UDP checksum verifies (or is absent over IPv4).
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the segment's length came from the 16-bit length fields that parse checked"
    )]
    pub fn udp_checksum_ok(&self, frame: &[u8]) -> bool {
        let seg = &frame[self.udp_off..self.payload_off + self.payload_len];
        let check = u16::from_be_bytes([seg[6], seg[7]]);
        let pseudo = match self.src.family() {
            family::V4 => {
                if check == 0 {
                    return true;
                }
                csum::pseudo_header_v4(self.src.addr_v4(), self.dst.addr_v4(), seg.len() as u16)
            }
            _ => csum::pseudo_header_v6(self.src.addr_v6(), self.dst.addr_v6(), seg.len() as u32),
        };
        csum::fold(csum::add_bytes(pseudo, seg)) == 0xffff
    }
}

/// Rewrites a parsed frame in place to go from `src` to `dst`, with new MAC addresses:
/// the userspace twin of the XDP FORWARD path, using the same rewrite code.
///
/// # Panics
///
/// If `parsed` is not what [`UdpFrame::parse`] returned for `frame`.
pub fn rewrite(
    frame: &mut [u8],
    parsed: &UdpFrame,
    src: &Endpoint,
    dst: &Endpoint,
    src_mac: Mac,
    dst_mac: Mac,
) {
    let payload_sum = csum::add_bytes(0, parsed.payload(frame));
    let (head, seg) = frame.split_at_mut(parsed.udp_off);
    let udp = UdpHdr::view_mut(seg).expect("parse checked the UDP header");
    let l3 = &mut head[parsed.l3_off..];
    if parsed.src.family() == family::V4 {
        let ip = Ipv4Hdr::view_mut(l3).expect("parse checked the IPv4 header");
        rewrite::rewrite_v4(ip, udp, src, dst, || payload_sum);
    } else {
        let ip = Ipv6Hdr::view_mut(l3).expect("parse checked the IPv6 header");
        rewrite::rewrite_v6(ip, udp, src, dst, || payload_sum);
    }
    let eth = EthHdr::view_mut(frame).expect("parse checked the Ethernet header");
    eth.src = src_mac;
    eth.dst = dst_mac;
}

/// How the builder fills the UDP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpChecksumMode {
    /// Correct and complete.
    Full,
    /// Zero: none (IPv4 only).
    Zero,
    /// Only the pseudo-header sum, as a sender with checksum offload leaves it.
    Partial,
    /// This exact value.
    Raw(u16),
}

/// Builds Ethernet/IPv4-or-IPv6/UDP frames, Katran-style:
/// `FrameBuilder::udp(src, dst).macs(a, b).payload(p).build()`.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    src_mac: Mac,
    dst_mac: Mac,
    vlan: Option<u16>,
    src: Endpoint,
    dst: Endpoint,
    ttl: u8,
    ip_id: u16,
    ip_options: Vec<u8>,
    checksum: UdpChecksumMode,
    payload: Vec<u8>,
}

impl FrameBuilder {
    /// `src` and `dst` must be of the same family.
    #[must_use]
    pub fn udp(src: Endpoint, dst: Endpoint) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src,
            dst,
            ttl: 64,
            ip_id: 0,
            ip_options: Vec::new(),
            checksum: UdpChecksumMode::Full,
            payload: Vec::new(),
        }
    }

    #[must_use]
    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    #[must_use]
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    #[must_use]
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    #[must_use]
    pub fn ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    /// IPv4 options (padded to a multiple of 4 bytes with end-of-list).
    #[must_use]
    pub fn ip_options(mut self, opts: &[u8]) -> Self {
        self.ip_options = opts.to_vec();
        while !self.ip_options.len().is_multiple_of(4) {
            self.ip_options.push(0);
        }
        self
    }

    #[must_use]
    pub fn checksum(mut self, mode: UdpChecksumMode) -> Self {
        self.checksum = mode;
        self
    }

    #[must_use]
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the length fields are 16 bits wide; the builder makes frames of Ethernet size"
    )]
    pub fn build(&self) -> Vec<u8> {
        let udp_len = UdpHdr::LEN + self.payload.len();
        let v6 = self.src.family() == family::V6;
        let ethertype = if v6 {
            ether_type::IPV6
        } else {
            ether_type::IPV4
        };
        let mut f = Vec::with_capacity(64 + udp_len);
        match self.vlan {
            Some(id) => {
                f.extend_from_slice(
                    EthHdr::new(self.dst_mac, self.src_mac, ether_type::VLAN).as_bytes(),
                );
                let tag = VlanHdr {
                    tci: id.to_be_bytes(),
                    ether_type: ethertype.to_be_bytes(),
                };
                f.extend_from_slice(tag.as_bytes());
            }
            None => {
                f.extend_from_slice(EthHdr::new(self.dst_mac, self.src_mac, ethertype).as_bytes());
            }
        }
        let pseudo = if v6 {
            let (src, dst) = (*self.src.addr_v6(), *self.dst.addr_v6());
            f.extend_from_slice(Ipv6Hdr::udp(src, dst, self.ttl, udp_len as u16).as_bytes());
            csum::pseudo_header_v6(&src, &dst, udp_len as u32)
        } else {
            let (src, dst) = (*self.src.addr_v4(), *self.dst.addr_v4());
            let mut ip = Ipv4Hdr::udp(
                src,
                dst,
                self.ttl,
                self.ip_id,
                self.ip_options.len(),
                udp_len,
            );
            csum::fill_ipv4(&mut ip, &self.ip_options);
            f.extend_from_slice(ip.as_bytes());
            f.extend_from_slice(&self.ip_options);
            csum::pseudo_header_v4(&src, &dst, udp_len as u16)
        };
        let udp_start = f.len();
        let udp = UdpHdr::new(self.src.port(), self.dst.port(), udp_len as u16, 0);
        f.extend_from_slice(udp.as_bytes());
        f.extend_from_slice(&self.payload);
        let check = match self.checksum {
            UdpChecksumMode::Full => csum::udp_field(csum::add_bytes(pseudo, &f[udp_start..])),
            UdpChecksumMode::Zero => 0,
            UdpChecksumMode::Partial => csum::fold(pseudo),
            UdpChecksumMode::Raw(v) => v,
        };
        f[udp_start + 6..udp_start + 8].copy_from_slice(&check.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], p: u16) -> Endpoint {
        Endpoint::v4(a, p)
    }

    #[test]
    fn built_frames_parse_back_and_verify() {
        for opts in [&[][..], &[0x94, 0x04, 0, 0][..]] {
            let f = FrameBuilder::udp(v4([10, 0, 0, 1], 4000), v4([10, 0, 0, 2], 5000))
                .ip_options(opts)
                .payload(b"hello")
                .build();
            let p = UdpFrame::parse(&f).unwrap();
            assert_eq!(p.src, v4([10, 0, 0, 1], 4000));
            assert_eq!(p.dst, v4([10, 0, 0, 2], 5000));
            assert_eq!(p.payload(&f), b"hello");
            assert!(p.udp_checksum_ok(&f));
            assert_eq!(csum::of_bytes(&f[14..14 + 20 + opts.len()]), 0);
        }
        let src = Endpoint::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1);
        let dst = Endpoint::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 2);
        let f = FrameBuilder::udp(src, dst).payload(&[1, 2, 3]).build();
        let p = UdpFrame::parse(&f).unwrap();
        assert_eq!((p.src, p.dst), (src, dst));
        assert!(p.udp_checksum_ok(&f));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = FrameBuilder::udp(v4([10, 0, 0, 1], 1), v4([10, 0, 0, 2], 2))
            .payload(&[0xab; 20])
            .build();
        for n in 0..f.len() {
            assert!(
                UdpFrame::parse(&f[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
        assert_eq!(UdpFrame::parse(&f[..13]), Err(FrameError::Truncated));
    }

    #[test]
    fn rejects_what_the_kernel_passes() {
        let base = FrameBuilder::udp(v4([10, 0, 0, 1], 1), v4([10, 0, 0, 2], 2));
        assert_eq!(
            UdpFrame::parse(&base.clone().vlan(7).build()),
            Err(FrameError::Vlan)
        );
        let mut frag = base.build();
        frag[20] = 0x20; // MF
        assert_eq!(UdpFrame::parse(&frag), Err(FrameError::Fragment));
        let mut tcp = base.build();
        tcp[23] = 6;
        assert_eq!(UdpFrame::parse(&tcp), Err(FrameError::NotUdp));
        let mut long_udp = base.build();
        long_udp[38] = 0x10; // UDP length beyond the IP payload
        assert_eq!(UdpFrame::parse(&long_udp), Err(FrameError::BadLength));
    }

    #[test]
    #[expect(
        clippy::many_single_char_names,
        reason = "f, p, s, d: frame, parsed frame, source, destination, as in the other tests here"
    )]
    fn userspace_rewrite_completes_a_partial_checksum() {
        let f0 = FrameBuilder::udp(v4([10, 0, 1, 2], 4000), v4([10, 0, 1, 1], 30000))
            .checksum(UdpChecksumMode::Partial)
            .payload(&[7; 172])
            .build();
        let mut f = f0.clone();
        let p = UdpFrame::parse(&f).unwrap();
        assert!(!p.udp_checksum_ok(&f));
        let (s, d) = (v4([10, 0, 2, 1], 30002), v4([10, 0, 2, 2], 5000));
        rewrite(&mut f, &p, &s, &d, [2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8]);
        let q = UdpFrame::parse(&f).unwrap();
        assert_eq!((q.src, q.dst), (s, d));
        assert!(q.udp_checksum_ok(&f));
        assert_eq!(&f[0..12], &[2, 0, 0, 0, 0, 8, 2, 0, 0, 0, 0, 9]);
        let expect = FrameBuilder::udp(s, d)
            .macs([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8])
            .ttl(63)
            .payload(&[7; 172])
            .build();
        assert_eq!(f, expect);
    }
}
