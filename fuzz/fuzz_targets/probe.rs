//! The probe codec and its verifier on any bytes: never a panic; what parses re-emits to the
//! same bytes; nothing verifies without the secret's MAC; a verified message is refused the
//! second time (replay) and never verifies after a byte of it changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_common::probe::{MESSAGE_LEN, ProbeMessage, SIGNED_LEN};
use proxy_userspace::probe_auth::{ProbeAuth, Rejected, check};

fuzz_target!(|data: &[u8]| {
    let now = 1_800_000_000_000u64;
    if let Ok(m) = ProbeMessage::parse(data) {
        let mac: [u8; 16] = data[SIGNED_LEN..].try_into().unwrap();
        assert_eq!(&m.emit(&mac)[..], data);
    }
    let mut auth = ProbeAuth::new(b"fuzzing deployment secret");
    // Random bytes essentially never carry a valid MAC.
    if let Ok(m) = auth.verify(data, now) {
        panic!("forged message accepted: {m:?}");
    }
    // Without a secret, nothing is more than unverified; with one, a random message is never
    // authenticated.
    if let Ok((_, trust)) = check(Some(&mut auth), data, now) {
        assert_eq!(trust, proxy_common::probe::Trust::Unverified);
    }
    // Sign what parses, then tamper with it.
    if let Ok(mut m) = ProbeMessage::parse(data) {
        m.timestamp_ms = now;
        m.unsigned = false;
        let signed = auth.sign(&m);
        assert!(auth.verify(&signed, now).is_ok());
        assert_eq!(auth.verify(&signed, now), Err(Rejected::Replayed));
        let i = usize::from(data.first().copied().unwrap_or(0)) % MESSAGE_LEN;
        let mut bad = signed;
        bad[i] ^= 0x01;
        assert!(auth.verify(&bad, now).is_err(), "tampered byte {i} accepted");
    }
});
