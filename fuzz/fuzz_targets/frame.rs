//! The userspace frame parser on any bytes: never a panic, and what it accepts is
//! self-consistent (the payload lies inside the frame, the endpoints have one family).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_userspace::frame::UdpFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = UdpFrame::parse(data) {
        assert!(f.payload_off + f.payload_len <= data.len());
        assert_eq!(f.src.family(), f.dst.family());
        let _ = f.payload(data);
        let _ = f.ip_packet(data);
        let _ = f.udp_checksum_ok(data);
    }
});
