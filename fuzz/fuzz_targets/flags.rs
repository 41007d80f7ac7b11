//! The ng options reader on any bencoded dictionary: never a panic, and its warnings stay
//! bounded (a reply must fit a datagram).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_userspace::ng::{bencode, flags};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = bencode::decode_dict_prefix(data) {
        let o = flags::parse(&d);
        assert!(o.warnings.len() <= flags::MAX_WARNINGS + 1);
        assert!(o.warnings.iter().all(|w| w.len() <= 204));
    }
});
