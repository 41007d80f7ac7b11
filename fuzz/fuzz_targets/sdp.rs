//! The SDP parser and rewriter on any bytes: never a panic; a body that parses rewrites into
//! one that parses again, with the same media, the relay's ports, and every line that does
//! not point at media kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_userspace::ng::sdp::{self, MediaRewrite, Rewrite, RtcpAttrMode};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, body)) = data.split_first() else { return };
    let Ok(parsed) = sdp::parse(body) else { return };
    let rw = Rewrite {
        addr: if knobs & 1 == 0 { "203.0.113.1".parse().unwrap() } else { "2001:db8::1".parse().unwrap() },
        media: (0..parsed.media.len()).map(|i| MediaRewrite { rtp_port: 30000 + 2 * i as u16, rtcp_port: 30001 + 2 * i as u16, rtcp_mux: knobs & 2 != 0 }).collect(),
        replace_origin: knobs & 4 != 0,
        replace_session_connection: knobs & 8 != 0,
        replace_zero_address: knobs & 16 != 0,
        remove_ice: knobs & 32 != 0,
        rtcp_attr: match knobs >> 6 { 0 => RtcpAttrMode::Keep, 1 => RtcpAttrMode::Omit, _ => RtcpAttrMode::Full },
    };
    let out = sdp::rewrite(&parsed, &rw);
    let again = sdp::parse(&out).expect("a rewritten body parses");
    assert_eq!(again.media.len(), parsed.media.len());
    for (i, (m, n)) in parsed.media.iter().zip(&again.media).enumerate() {
        assert_eq!(m.kind, n.kind);
        if m.port != 0 {
            assert_eq!(n.port, 30000 + 2 * i as u16);
        }
    }
});
