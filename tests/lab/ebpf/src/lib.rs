//! Types shared by the benchmark's XDP programs (the traffic generator and the sink, in
//! `main.rs`) and the lab's `bench`. `no_std` for the kernel side; the `user` feature adds the
//! `aya::Pod` impls that userspace needs for map access.
#![cfg_attr(not(test), no_std)]
#![expect(
    clippy::inline_always,
    reason = "the generator's per-frame path: inlined into the XDP program"
)]

/// Marks benchmark frames (after the RTP header), so the sink counts only those.
pub const MAGIC: [u8; 4] = *b"MPBG";

/// Offsets in a benchmark frame: Ethernet, IPv4 without options, UDP, RTP.
pub mod offsets {
    pub const IP: usize = 14;
    pub const UDP: usize = 34;
    pub const RTP: usize = 42;
    /// `bpf_ktime_get_ns()` at transmission, native byte order.
    pub const SENT_NS: usize = 54;
    pub const MAGIC: usize = 62;
}

/// 20 ms of G.711: 12 bytes of RTP header and 160 of audio.
pub const RTP_LEN: usize = 172;
/// The whole frame: 14 + 20 + 8 + 172 = 214 bytes.
pub const FRAME_LEN: usize = offsets::RTP + RTP_LEN;

/// Generator settings, one element, written by userspace before each trial.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// Frames per second; 0 for as fast as possible.
    pub rate_pps: u64,
    /// Flows to cycle through, one frame each in turn.
    pub flows: u32,
    /// Destination ports per destination address before the address steps up.
    pub ports_per_ip: u32,
    /// Interface to send out of.
    pub ifindex: u32,
    /// Destination base port (host order).
    pub dst_port: u16,
    pub src_port: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    /// Destination base address; flow `i` goes to `dst_ip + i / ports_per_ip`.
    pub dst_ip: [u8; 4],
    #[expect(
        clippy::pub_underscore_fields,
        reason = "padding of the C layout shared with userspace"
    )]
    pub _pad: [u8; 4],
}

/// Generator state, per CPU (a trial runs on one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenState {
    pub start_ns: u64,
    /// Frames sent.
    pub sent: u64,
    /// Frames the pacer held back (not yet due).
    pub not_due: u64,
}

/// Latency histogram: 250 ns buckets up to 100 µs, then 10 µs buckets up to 10 ms, then one
/// overflow bucket.
pub mod histogram {
    pub const FINE_NS: u64 = 250;
    pub const FINE_UNTIL_NS: u64 = 100_000;
    pub const COARSE_NS: u64 = 10_000;
    pub const COARSE_UNTIL_NS: u64 = 10_000_000;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a bucket count below a thousand"
    )]
    pub const FINE: u32 = (FINE_UNTIL_NS / FINE_NS) as u32;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a bucket count below a thousand"
    )]
    pub const COARSE: u32 = ((COARSE_UNTIL_NS - FINE_UNTIL_NS) / COARSE_NS) as u32;
    pub const BUCKETS: u32 = FINE + COARSE + 1;

    #[inline(always)]
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "bucket indices below BUCKETS"
    )]
    pub const fn bucket(ns: u64) -> u32 {
        if ns < FINE_UNTIL_NS {
            (ns / FINE_NS) as u32
        } else if ns < COARSE_UNTIL_NS {
            FINE + ((ns - FINE_UNTIL_NS) / COARSE_NS) as u32
        } else {
            FINE + COARSE
        }
    }

    /// The middle of a bucket, in ns (the overflow bucket reports its lower bound).
    #[must_use]
    pub const fn midpoint(b: u32) -> u64 {
        if b < FINE {
            b as u64 * FINE_NS + FINE_NS / 2
        } else if b < FINE + COARSE {
            FINE_UNTIL_NS + (b - FINE) as u64 * COARSE_NS + COARSE_NS / 2
        } else {
            COARSE_UNTIL_NS
        }
    }
}

/// Sink counters, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkState {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) plain data without padding (layout tests below).
    unsafe impl aya::Pod for super::GenConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GenState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SinkState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(size_of::<GenConfig>(), 48);
        assert_eq!(
            8 + 4 + 4 + 4 + 2 + 2 + 6 + 6 + 4 + 4 + 4,
            48,
            "no implicit padding"
        );
        assert_eq!(core::mem::offset_of!(GenConfig, _pad) + 4, 48);
        assert_eq!(size_of::<GenState>(), 24);
        assert_eq!(size_of::<SinkState>(), 16);
        assert_eq!(FRAME_LEN, 214);
    }

    #[test]
    fn histogram_buckets_cover_the_range() {
        use histogram::*;
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(99_999), FINE - 1);
        assert_eq!(bucket(100_000), FINE);
        assert_eq!(bucket(9_999_999), FINE + COARSE - 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for b in 0..BUCKETS - 1 {
            assert_eq!(bucket(midpoint(b)), b);
        }
    }
}
