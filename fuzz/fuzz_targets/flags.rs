//! The ng request reader (the typed command and its options) on any bencoded dictionary:
//! never a panic, and its warnings stay bounded (a reply must fit a datagram).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_userspace::ng::{bencode, command::Request, flags};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = bencode::decode_dict_prefix(data) {
        let o = flags::parse(&d);
        assert!(o.warnings.len() <= flags::MAX_WARNINGS + 1);
        assert!(o.warnings.iter().all(|w| w.len() <= 204));
        let r = Request::parse(&d);
        assert_eq!(r.options, o, "the request reads its options the same way");
        if let Ok(c) = &r.command {
            assert_eq!(Some(c.kind()), r.kind, "a typed command is of the kind named");
        }
    }
});
