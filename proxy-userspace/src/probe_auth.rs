//! Signing and checking probe messages (`proxy_common::probe`): HMAC-SHA-256 with the
//! deployment secret, a freshness window and a replay cache. Sans-IO: the caller passes the
//! current Unix time in milliseconds.
//!
//! The replay cache remembers each authentic message (by its MAC, so two different messages
//! with one nonce are two messages) for as long as it could pass the freshness check. It is
//! bounded, and it fails closed: when it is full of messages that are all still fresh, a new
//! one is refused rather than an old one forgotten, since forgetting a fresh one would make
//! it replayable. Only holders of the secret can fill it.

use std::collections::{HashSet, VecDeque};

use hmac::{Hmac, Mac};
use proxy_common::probe::{MAC_LEN, MESSAGE_LEN, ProbeError, ProbeMessage, SIGNED_LEN, Trust};
use sha2::Sha256;

/// How far a message's timestamp may be from ours, either way.
pub const FRESHNESS_MS: u64 = 30_000;
/// Authentic messages remembered for replay detection: a minute of probing at over 3,000
/// messages a second, about 10 MB.
const REPLAY_CAPACITY: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    Malformed(ProbeError),
    BadMac,
    Stale,
    Replayed,
    /// The replay cache is full of fresh messages: refused until some expire.
    Overloaded,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Malformed(e) => write!(f, "malformed ({e:?})"),
            Rejected::BadMac => f.write_str("bad MAC"),
            Rejected::Stale => f.write_str("timestamp outside the freshness window"),
            Rejected::Replayed => f.write_str("replayed"),
            Rejected::Overloaded => f.write_str("replay cache full"),
        }
    }
}

type MacTag = [u8; MAC_LEN];

pub struct ProbeAuth {
    key: Vec<u8>,
    seen: HashSet<MacTag>,
    /// `(expires at, tag)` in insertion order.
    order: VecDeque<(u64, MacTag)>,
    capacity: usize,
}

impl ProbeAuth {
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        Self::with_capacity(secret, REPLAY_CAPACITY)
    }

    #[must_use]
    pub fn with_capacity(secret: &[u8], capacity: usize) -> Self {
        Self {
            key: secret.to_vec(),
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    #[must_use]
    pub fn sign(&self, msg: &ProbeMessage) -> [u8; MESSAGE_LEN] {
        let mut m = self.mac();
        m.update(&msg.signed_bytes());
        let full = m.finalize().into_bytes();
        let mut tag = [0u8; MAC_LEN];
        tag.copy_from_slice(&full[..MAC_LEN]);
        msg.emit(&tag)
    }

    /// Parses and authenticates a message, and remembers it so that a replay is refused.
    ///
    /// # Errors
    ///
    /// [`Rejected`]: malformed, bad MAC, stale, replayed, or the replay cache is full.
    pub fn verify(&mut self, bytes: &[u8], now_ms: u64) -> Result<ProbeMessage, Rejected> {
        let msg = ProbeMessage::parse(bytes).map_err(Rejected::Malformed)?;
        let tag = ProbeMessage::mac_of(bytes).ok_or(Rejected::Malformed(ProbeError::Length))?;
        let mut m = self.mac();
        m.update(&bytes[..SIGNED_LEN]);
        m.verify_truncated_left(tag).map_err(|_| Rejected::BadMac)?;
        if msg.timestamp_ms.abs_diff(now_ms) > FRESHNESS_MS {
            return Err(Rejected::Stale);
        }
        let mut id = [0u8; MAC_LEN];
        id.copy_from_slice(tag);
        if self.seen.contains(&id) {
            return Err(Rejected::Replayed);
        }
        self.expire(now_ms);
        if self.seen.len() >= self.capacity {
            return Err(Rejected::Overloaded);
        }
        self.seen.insert(id);
        // Remember it until it could no longer pass the freshness check.
        self.order
            .push_back((msg.timestamp_ms.saturating_add(FRESHNESS_MS), id));
        Ok(msg)
    }

    /// Forgets what can no longer pass the freshness check. Expiry times are not in
    /// insertion order (timestamps vary by the peers' clocks), so the whole queue is swept
    /// when the front is not yet due but the cache is full.
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(until, id)) = self.order.front() {
            if until >= now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
        if self.seen.len() >= self.capacity {
            let seen = &mut self.seen;
            self.order.retain(|&(until, id)| {
                let keep = until >= now_ms;
                if !keep {
                    seen.remove(&id);
                }
                keep
            });
        }
    }
}

/// Checks a received message as this relay can: with a secret (`auth`), a signed message is
/// authenticated or refused (bad MAC, stale, replayed); an unsigned one, or a signed one where
/// we hold no secret, is accepted as [`Trust::Unverified`] if fresh. Unverified messages are
/// kept out of the replay cache: they may only release media toward the signalled address,
/// which repeating them does not change.
///
/// # Errors
///
/// [`Rejected`]: malformed, bad MAC, stale, replayed, or the replay cache is full.
pub fn check(
    auth: Option<&mut ProbeAuth>,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(ProbeMessage, Trust), Rejected> {
    let msg = ProbeMessage::parse(bytes).map_err(Rejected::Malformed)?;
    match auth {
        Some(a) if !msg.unsigned => a.verify(bytes, now_ms).map(|m| (m, Trust::Authenticated)),
        _ if msg.timestamp_ms.abs_diff(now_ms) > FRESHNESS_MS => Err(Rejected::Stale),
        _ => Ok((msg, Trust::Unverified)),
    }
}

/// The current Unix time in milliseconds.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "milliseconds since 1970 fit a u64 for 584 million years"
)]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::{Endpoint, probe::Kind};

    fn probe(nonce: u64, ts: u64) -> ProbeMessage {
        ProbeMessage {
            kind: Kind::Probe,
            nonce,
            timestamp_ms: ts,
            session: 1,
            target: Endpoint::v4([10, 0, 0, 2], 40000),
            sender: Endpoint::v4([10, 0, 0, 1], 30002),
            receiver: Endpoint::v4([10, 0, 0, 2], 7999),
            unsigned: false,
        }
    }

    #[test]
    fn unsigned_messages_are_unverified_and_signed_ones_need_the_secret() {
        let mut auth = ProbeAuth::new(b"secret");
        let now = 5_000_000;
        let signed = auth.sign(&probe(1, now));
        let unsigned = probe(2, now).emit_unsigned();
        assert_eq!(
            check(Some(&mut auth), &signed, now).unwrap().1,
            Trust::Authenticated
        );
        assert_eq!(
            check(Some(&mut auth), &signed, now),
            Err(Rejected::Replayed)
        );
        assert_eq!(
            check(Some(&mut auth), &unsigned, now).unwrap().1,
            Trust::Unverified
        );
        let other = ProbeAuth::new(b"another operator").sign(&probe(3, now));
        assert_eq!(check(Some(&mut auth), &other, now), Err(Rejected::BadMac));
        assert_eq!(check(None, &other, now).unwrap().1, Trust::Unverified);
        let stale = probe(4, now - FRESHNESS_MS - 1).emit_unsigned();
        assert_eq!(check(None, &stale, now), Err(Rejected::Stale));
    }

    #[test]
    fn accepts_once_then_refuses_the_replay() {
        let mut auth = ProbeAuth::new(b"deployment secret");
        let b = auth.sign(&probe(7, 1_000_000));
        assert_eq!(auth.verify(&b, 1_000_500), Ok(probe(7, 1_000_000)));
        assert_eq!(auth.verify(&b, 1_000_600), Err(Rejected::Replayed));
        // The ACK for the same nonce is a different message.
        let ack = auth.sign(&probe(7, 1_000_000).ack(1_000_700, Endpoint::v4([10, 0, 0, 1], 7999)));
        assert!(auth.verify(&ack, 1_000_800).is_ok());
    }

    #[test]
    fn refuses_wrong_secret_tampering_and_staleness() {
        let mut auth = ProbeAuth::new(b"ours");
        let theirs = ProbeAuth::new(b"theirs");
        assert_eq!(
            auth.verify(&theirs.sign(&probe(1, 5_000_000)), 5_000_000),
            Err(Rejected::BadMac)
        );
        let mut b = auth.sign(&probe(2, 5_000_000));
        b[33] ^= 1; // redirect the target
        assert_eq!(auth.verify(&b, 5_000_000), Err(Rejected::BadMac));
        let old = auth.sign(&probe(3, 5_000_000 - FRESHNESS_MS - 1));
        assert_eq!(auth.verify(&old, 5_000_000), Err(Rejected::Stale));
        assert!(matches!(
            auth.verify(b"short", 0),
            Err(Rejected::Malformed(_))
        ));
    }

    #[test]
    fn under_pressure_fresh_messages_are_never_forgotten_so_never_replayable() {
        let mut auth = ProbeAuth::with_capacity(b"k", 100);
        let now = 1_000_000;
        let first = auth.sign(&probe(0, now));
        auth.verify(&first, now).unwrap();
        for n in 1..100 {
            auth.verify(&auth.sign(&probe(n, now)), now).unwrap();
        }
        // Full of fresh messages: a new one is refused, and the first is still remembered.
        assert_eq!(
            auth.verify(&auth.sign(&probe(500, now)), now),
            Err(Rejected::Overloaded)
        );
        assert_eq!(auth.verify(&first, now + 1), Err(Rejected::Replayed));
        // Once they would be stale anyway, there is room again.
        let later = now + FRESHNESS_MS + 1;
        assert!(auth.verify(&auth.sign(&probe(501, later)), later).is_ok());
    }

    #[test]
    fn two_messages_with_one_nonce_are_not_replays_of_each_other() {
        let mut auth = ProbeAuth::new(b"k");
        let good = probe(9, 1_000_000);
        let mut other = good;
        other.target = Endpoint::v4([10, 0, 0, 3], 40000);
        assert!(auth.verify(&auth.sign(&other), 1_000_000).is_ok());
        assert!(auth.verify(&auth.sign(&good), 1_000_000).is_ok());
    }

    #[test]
    fn forgets_nonces_once_they_would_be_stale_anyway() {
        let mut auth = ProbeAuth::new(b"k");
        for n in 0..100 {
            let b = auth.sign(&probe(n, 1_000_000 + n));
            auth.verify(&b, 1_000_000 + n).unwrap();
        }
        let later = 1_000_000 + 100 + FRESHNESS_MS + 1;
        let b = auth.sign(&probe(1000, later));
        auth.verify(&b, later).unwrap();
        assert_eq!(auth.seen.len(), 1);
    }
}
