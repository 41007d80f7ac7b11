//! The fixed RTP header (RFC 3550 section 5.1), as the demo, the tests and the benchmark
//! generate and check media. The relay itself never looks inside RTP.

/// The fields of the fixed 12-byte header we use; CSRCs and extensions are not emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    pub const LEN: usize = 12;

    /// Parses a packet's fixed header; `None` for anything that is not RTP version 2.
    #[must_use]
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < Self::LEN || b[0] >> 6 != 2 {
            return None;
        }
        Some(Self {
            payload_type: b[1] & 0x7f,
            marker: b[1] & 0x80 != 0,
            seq: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    /// Writes the header into the first 12 bytes of `b`.
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = 0x80;
        b[1] = self.payload_type | if self.marker { 0x80 } else { 0 };
        b[2..4].copy_from_slice(&self.seq.to_be_bytes());
        b[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        b[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }

    /// A 20 ms G.711 packet (160 payload bytes), sequence `n` of stream `ssrc`.
    #[must_use]
    pub fn g711_packet(ssrc: u32, n: u16) -> Vec<u8> {
        Self::packet(ssrc, n, 160)
    }

    /// Packet `n` of stream `ssrc` with `payload` bytes after the header (a large one, for
    /// MTU tests, stands for a video frame or a high-rate codec).
    #[must_use]
    pub fn packet(ssrc: u32, n: u16, payload: usize) -> Vec<u8> {
        let mut p = vec![0xd5u8; Self::LEN + payload]; // PCMA silence
        Self {
            payload_type: 8,
            marker: n == 0,
            seq: n,
            timestamp: u32::from(n) * 160,
            ssrc,
        }
        .emit(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects_other_versions() {
        let p = RtpHeader::g711_packet(0xdead_beef, 7);
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!(
            (h.seq, h.timestamp, h.ssrc, h.payload_type),
            (7, 1120, 0xdead_beef, 8)
        );
        assert!(RtpHeader::parse(&p[..11]).is_none());
        let mut v1 = p.clone();
        v1[0] = 0x40;
        assert!(RtpHeader::parse(&v1).is_none());
    }
}
