//! The ng decoder on any bytes: it must never panic, and what it accepts must re-encode to
//! exactly the same bytes (the codec keeps key order and every byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_userspace::ng::bencode;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::decode(data) {
        assert_eq!(v.encode(), data);
    }
    if let Ok(d) = bencode::decode_dict_prefix(data) {
        let again = d.encode();
        assert_eq!(bencode::decode(&again).unwrap().as_dict(), Some(&d));
    }
});
