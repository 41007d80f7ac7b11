//! The one bounds-checked accessor for packet memory. Nothing else in the programs does
//! pointer arithmetic on packet data.

use aya_ebpf::programs::{TcContext, XdpContext};
use proxy_common::{packet::Packet, wire::Header};

use crate::error::Error;

/// A context with direct packet access: XDP frames and TC socket buffers alike, so that the
/// packet rules are written once for both programs (and for userspace, `proxy_common::packet`).
pub trait Context {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Context for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Context for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` bytes into the packet, or `Error::Truncated` if the packet
/// ends before `offset + size_of::<T>()`.
///
/// `T` must be one of the alignment-1 wire types of `proxy_common::wire` (or a byte array).
/// Callers dereference the pointer; each such site says why that is sound.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Context, offset: usize) -> Result<*mut T, Error> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Offsets come from header fields, so bound them before the addition: the verifier needs
    // a known maximum, and no valid offset reaches 64 KiB.
    if offset > 0xffff {
        return Err(Error::Truncated);
    }
    // The verifier only learns a packet pointer's readable range from a comparison of that
    // same pointer plus a constant against data_end. LLVM likes to fold `offset + size` into
    // one scalar first (notably for loop induction variables), which leaves the pointer with
    // no known range. Reading the pointer back through a volatile stack slot stops the fold.
    let slot = start + offset;
    // SAFETY: reads a local.
    let ptr = unsafe { core::ptr::read_volatile(&raw const slot) };
    if ptr + core::mem::size_of::<T>() > end {
        return Err(Error::Truncated);
    }
    Ok(ptr as *mut T)
}

/// A context's packet as the shared rules read it: every header through [`ptr_at`].
pub struct Frame<'a, C>(pub &'a C);

impl<C: Context> Packet for Frame<'_, C> {
    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        // SAFETY: ptr_at checked that the header lies inside the packet; `Header` types have
        // alignment 1 and accept any bit pattern.
        ptr_at::<T>(self.0, offset).ok().map(|p| unsafe { &*p })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }
}

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "test frames are a few hundred bytes"
)]
mod tests {
    use proxy_common::{
        Endpoint,
        packet::{self, Lengths, NotUdp},
        wire::{EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, ether_type},
    };

    use super::*;

    /// Host memory standing in for a packet: `data` and `data_end` as the kernel gives them.
    struct Buf(Vec<u8>);

    impl Context for Buf {
        fn data(&self) -> usize {
            self.0.as_ptr() as usize
        }
        fn data_end(&self) -> usize {
            self.0.as_ptr() as usize + self.0.len()
        }
    }

    fn v4_frame(payload: usize) -> Vec<u8> {
        let udp_len = UdpHdr::LEN + payload;
        let mut f = EthHdr::new([2; 6], [4; 6], ether_type::IPV4)
            .as_bytes()
            .to_vec();
        let mut ip = Ipv4Hdr::udp([10, 0, 0, 1], [10, 0, 0, 2], 64, 1, 0, udp_len);
        proxy_common::csum::fill_ipv4(&mut ip, &[]);
        f.extend_from_slice(ip.as_bytes());
        f.extend_from_slice(UdpHdr::new(4000, 30000, udp_len as u16, 0).as_bytes());
        f.resize(f.len() + payload, 0xab);
        f
    }

    fn v6_frame(payload: usize, check: u16) -> Vec<u8> {
        let udp_len = (UdpHdr::LEN + payload) as u16;
        let mut f = EthHdr::new([2; 6], [4; 6], ether_type::IPV6)
            .as_bytes()
            .to_vec();
        f.extend_from_slice(Ipv6Hdr::udp([0x20; 16], [0x30; 16], 64, udp_len).as_bytes());
        f.extend_from_slice(UdpHdr::new(4000, 30000, udp_len, check).as_bytes());
        f.resize(f.len() + payload, 0xab);
        f
    }

    #[test]
    fn the_accessor_allows_exactly_the_packets_bytes() {
        let b = Buf(vec![0; 42]);
        assert!(ptr_at::<UdpHdr>(&b, 34).is_ok(), "ends at the last byte");
        assert_eq!(ptr_at::<UdpHdr>(&b, 35), Err(Error::Truncated));
        assert_eq!(ptr_at::<[u8; 1]>(&b, 0x1_0000), Err(Error::Truncated));
        assert_eq!(
            ptr_at::<[u8; 1]>(&Buf(Vec::new()), 0),
            Err(Error::Truncated)
        );
    }

    /// The kernel's accessor and userspace's slices give the shared rules the same bytes, so
    /// the same verdict, on every prefix and on every corrupted byte of a frame.
    #[test]
    fn the_context_and_a_slice_get_the_same_verdicts() {
        for f in [v4_frame(172), v6_frame(172, 0x1234), v6_frame(20, 0)] {
            for n in 0..=f.len() {
                let cut = f[..n].to_vec();
                assert_eq!(
                    packet::parse(&Frame(&Buf(cut.clone()))),
                    packet::parse(&cut[..])
                );
            }
            for i in 0..f.len().min(64) {
                let mut bad = f.clone();
                bad[i] ^= 0x5a;
                assert_eq!(
                    packet::parse(&Frame(&Buf(bad.clone()))),
                    packet::parse(&bad[..])
                );
            }
        }
    }

    #[test]
    fn the_rules_read_what_the_relay_needs() {
        let f = v4_frame(172);
        let p = packet::parse(&Frame(&Buf(f))).expect("a UDP frame");
        assert_eq!(p.src, Endpoint::v4([10, 0, 0, 1], 4000));
        assert_eq!(p.dst, Endpoint::v4([10, 0, 0, 2], 30000));
        assert_eq!((p.udp_off, p.udp_len, p.ip_len, p.ttl), (34, 180, 200, 64));
        assert!(p.lengths_ok() && !p.has_ip_options());
        let no_check = packet::parse(&Frame(&Buf(v6_frame(20, 0)))).expect("a UDP frame");
        assert_eq!(no_check.lengths, Lengths::NoChecksum);
        let mut short_ihl = v4_frame(172);
        short_ihl[14] = 0x44;
        assert_eq!(
            packet::parse(&Frame(&Buf(short_ihl))),
            Err(NotUdp::Truncated)
        );
        let mut long_udp = v4_frame(172);
        long_udp[38..40].copy_from_slice(&400u16.to_be_bytes());
        let p = packet::parse(&Frame(&Buf(long_udp))).expect("headers complete");
        assert_eq!(p.lengths, Lengths::Inconsistent);
    }
}
