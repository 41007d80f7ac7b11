//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Sums are kept as `u64` one's-complement accumulators of big-endian 16-bit words and folded
//! at the end, so that a caller can add a header, a pseudo-header and a payload sum computed
//! elsewhere (for example by `bpf_csum_diff`) in any order.

/// Adds `bytes` to `sum` as big-endian 16-bit words; an odd trailing byte is padded with zero.
#[inline(always)]
#[must_use]
pub fn add_bytes(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// Folds a one's-complement accumulator into 16 bits (end-around carry).
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "four folds leave at most 16 bits"
)]
pub const fn fold(mut sum: u64) -> u16 {
    // Four rounds reduce any u64 to 16 bits; a fixed count keeps the eBPF verifier happy.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The final UDP checksum field for a full sum. RFC 768: a computed zero is sent as all ones,
/// because zero in the field means "no checksum".
#[inline(always)]
#[must_use]
pub const fn udp_field(sum: u64) -> u16 {
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

/// The IPv4 pseudo-header sum for UDP (RFC 768).
#[inline(always)]
#[must_use]
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], udp_len: u16) -> u64 {
    let sum = add_bytes(add_bytes(0, src), dst);
    sum + u64::from(crate::wire::ip_proto::UDP) + u64::from(udp_len)
}

/// The IPv6 pseudo-header sum for UDP (RFC 8200 section 8.1).
#[inline(always)]
#[must_use]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], udp_len: u32) -> u64 {
    let sum = add_bytes(add_bytes(0, src), dst);
    sum + u64::from(crate::wire::ip_proto::UDP)
        + u64::from(udp_len >> 16)
        + u64::from(udp_len & 0xffff)
}

/// Sets an IPv4 header's checksum, over the header and its `options`.
#[inline(always)]
pub fn fill_ipv4(ip: &mut crate::wire::Ipv4Hdr, options: &[u8]) {
    use crate::wire::Header as _;
    ip.check = [0; 2];
    let sum = add_bytes(add_bytes(0, ip.as_bytes()), options);
    ip.check = (!fold(sum)).to_be_bytes();
}

/// Checksum over a whole header or message: `!fold(sum)`.
#[inline(always)]
#[must_use]
pub fn of_bytes(bytes: &[u8]) -> u16 {
    !fold(add_bytes(0, bytes))
}

/// Incremental checksum update, RFC 1624 equation 3: `HC' = ~(~HC + ~m + m')`.
///
/// Unlike equation 2 it never produces the `0xffff`-for-`0` anomaly of RFC 1141.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Incremental {
    sum: u64,
}

impl Incremental {
    #[inline(always)]
    pub const fn new(check: u16) -> Self {
        Self {
            sum: (!check) as u64,
        }
    }

    #[inline(always)]
    pub const fn replace_u16(mut self, old: u16, new: u16) -> Self {
        self.sum += (!old) as u64 + new as u64;
        self
    }

    /// Replaces a field of `N` bytes (`N` even) at an even offset of the checksummed data.
    #[inline(always)]
    pub fn replace<const N: usize>(mut self, old: &[u8; N], new: &[u8; N]) -> Self {
        let mut i = 0;
        while i + 1 < N {
            let o = u16::from_be_bytes([old[i], old[i + 1]]);
            let n = u16::from_be_bytes([new[i], new[i + 1]]);
            self = self.replace_u16(o, n);
            i += 2;
        }
        self
    }

    #[inline(always)]
    #[must_use]
    pub const fn finish(self) -> u16 {
        !fold(self.sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_bytes(0, &data)), 0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(add_bytes(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn ipv4_header_checksum_of_a_known_header() {
        // Header from Wikipedia's IPv4 checksum example: checksum b861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(of_bytes(&hdr), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(of_bytes(&hdr), 0);
    }

    #[test]
    fn incremental_matches_recompute_on_random_words() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1624);
        for _ in 0..10_000 {
            let mut data = [0u8; 40];
            rng.fill(&mut data[..]);
            data[10] = 0;
            data[11] = 0;
            let check = of_bytes(&data);
            data[10..12].copy_from_slice(&check.to_be_bytes());

            let at = 2 * rng.random_range(6..=18usize); // an even offset past the checksum
            let old: [u8; 4] = data[at..at + 4].try_into().unwrap();
            let new: [u8; 4] = rng.random();
            data[at..at + 4].copy_from_slice(&new);
            let updated = Incremental::new(check).replace(&old, &new).finish();
            data[10..12].copy_from_slice(&[0, 0]);
            // Folded sums of non-zero data lie in 1..=0xffff on both paths, so RFC 1624 eqn 3
            // agrees with a recompute bit for bit.
            assert_eq!(updated, of_bytes(&data));
        }
    }
}
