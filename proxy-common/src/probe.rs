//! The relay-to-relay probe protocol: the wire format of a PROBE and its ACK.
//!
//! A relay that suspects blocking sends a PROBE from its probe port to the next relay's probe
//! port (the same port on every relay of a deployment). The next relay answers with an ACK to
//! the PROBE's source address and port, so the ACK comes back through whatever NAT mapping
//! the PROBE opened. Both messages are UDP payloads of exactly [`MESSAGE_LEN`] bytes:
//!
//! ```text
//!  0      4    5    6       8              16             24             32
//!  +------+----+----+-------+--------------+--------------+--------------+
//!  |"MPRB"| ver|type| flags |    nonce     | timestamp ms |   session    |
//!  +------+----+----+-------+--------------+--------------+--------------+
//!  32                        52                        72                 92        108
//!  +-------------------------+-------------------------+------------------+---------+
//!  | target media endpoint   | sender media endpoint   | receiver         |   MAC   |
//!  +-------------------------+-------------------------+------------------+---------+
//! ```
//!
//! - `ver` is 2; `type` 1 = PROBE, 2 = ACK; `flags` is 0, or [`FLAG_UNSIGNED`] for a message
//!   sent without a MAC (its MAC field is zero): the form relays of different operators, who
//!   share no secret, use. An unsigned message can only release media toward the address the
//!   call server signalled anyway, so a forged one gains an attacker nothing.
//! - `nonce` is random per PROBE; an ACK echoes it, and the prober accepts an ACK only for a
//!   nonce it has outstanding.
//! - `timestamp` is the sender's Unix time in milliseconds; receivers reject messages outside
//!   a freshness window and remember nonces inside it, so a replay is recognised.
//! - `session` is a 64-bit tag of the call (a hash of the Call-ID), 0 if unknown.
//!   Informational: relays behind different B2BUAs see different Call-IDs.
//! - `target` is the receiver's media endpoint that the prober will send media to, as the
//!   call server told the prober; it is how the receiver finds the session. `sender` is the
//!   prober's own media endpoint (before any NAT). Both are [`Endpoint`]s (20 bytes).
//! - `receiver` binds the message to the relay it is meant for: in a PROBE, the probe
//!   address the prober sends to (the receiver accepts it only for one of its own or
//!   advertised addresses, so a PROBE captured at one site cannot be replayed at another
//!   that reuses the same private addresses, or at an HA partner); in an ACK, the PROBE's
//!   source as the ACKer saw it.
//! - `MAC` is HMAC-SHA-256 with the deployment secret over bytes 0..92, truncated to 16
//!   bytes. Nobody without the secret can forge an ACK (and make a relay send media
//!   somewhere) or a PROBE (and make a relay change a session).
//!
//! All integers are big-endian.

use crate::flow::Endpoint;

/// The probe port a deployment uses unless it picks another (`--probe-port`): every relay of
/// a deployment listens on the same one. Outside rtpengine's and our default media range
/// (30000-40000) so that it never collides with an allocated media port.
pub const DEFAULT_PORT: u16 = 7999;

pub const MAGIC: [u8; 4] = *b"MPRB";
pub const VERSION: u8 = 2;
pub const MESSAGE_LEN: usize = 108;
/// Bytes covered by the MAC.
pub const SIGNED_LEN: usize = 92;
pub const MAC_LEN: usize = 16;
/// `flags`: the message carries no MAC.
pub const FLAG_UNSIGNED: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Probe = 1,
    Ack = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeMessage {
    pub kind: Kind,
    pub nonce: u64,
    pub timestamp_ms: u64,
    pub session: u64,
    pub target: Endpoint,
    pub sender: Endpoint,
    pub receiver: Endpoint,
    /// Sent without a MAC ([`FLAG_UNSIGNED`]).
    pub unsigned: bool,
}

/// How far a received message could be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Signed with the deployment secret, fresh and not a replay.
    Authenticated,
    /// Unsigned (or signed where we hold no secret), fresh: it may only release media toward
    /// the signalled address.
    Unverified,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Not [`MESSAGE_LEN`] bytes.
    Length,
    BadMagic,
    UnknownVersion,
    UnknownType,
    /// Unknown flags, an endpoint's padding not zero, an unknown address family, or an
    /// unsigned message with a MAC.
    Malformed,
}

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const FLAGS: Range<usize> = 6..8;
    pub const NONCE: Range<usize> = 8..16;
    pub const TIMESTAMP: Range<usize> = 16..24;
    pub const SESSION: Range<usize> = 24..32;
    pub const TARGET: Range<usize> = 32..52;
    pub const SENDER: Range<usize> = 52..72;
    pub const RECEIVER: Range<usize> = 72..92;
    pub const MAC: Range<usize> = 92..108;
}

fn u64_at(b: &[u8], r: core::ops::Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

fn endpoint_at(b: &[u8], r: core::ops::Range<usize>) -> Result<Endpoint, ProbeError> {
    let e = &b[r];
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&e[..16]);
    let port = u16::from_be_bytes([e[16], e[17]]);
    if e[19] != 0 {
        return Err(ProbeError::Malformed);
    }
    match e[18] {
        crate::flow::family::V4 if addr[4..].iter().all(|&x| x == 0) => {
            Ok(Endpoint::v4([addr[0], addr[1], addr[2], addr[3]], port))
        }
        crate::flow::family::V6 => Ok(Endpoint::v6(addr, port)),
        crate::flow::family::UNSET if addr == [0; 16] && port == 0 => Ok(Endpoint::UNSET),
        _ => Err(ProbeError::Malformed),
    }
}

fn put_endpoint(b: &mut [u8], e: &Endpoint) {
    b[..16].copy_from_slice(e.addr_v6());
    b[16..18].copy_from_slice(e.port_be());
    b[18] = e.family();
    b[19] = 0;
}

impl ProbeMessage {
    /// Parses a message; the MAC is not checked here (see [`ProbeMessage::mac_of`]).
    ///
    /// # Errors
    ///
    /// [`ProbeError`] if `b` is not one well-formed message: wrong length, magic, version or type,
    /// or malformed fields.
    pub fn parse(b: &[u8]) -> Result<Self, ProbeError> {
        if b.len() != MESSAGE_LEN {
            return Err(ProbeError::Length);
        }
        if b[field::MAGIC] != MAGIC {
            return Err(ProbeError::BadMagic);
        }
        if b[field::VERSION] != VERSION {
            return Err(ProbeError::UnknownVersion);
        }
        let kind = match b[field::KIND] {
            1 => Kind::Probe,
            2 => Kind::Ack,
            _ => return Err(ProbeError::UnknownType),
        };
        let unsigned = match u16::from_be_bytes([b[field::FLAGS.start], b[field::FLAGS.start + 1]])
        {
            0 => false,
            FLAG_UNSIGNED if b[field::MAC].iter().all(|&x| x == 0) => true,
            _ => return Err(ProbeError::Malformed),
        };
        Ok(Self {
            kind,
            nonce: u64_at(b, field::NONCE),
            timestamp_ms: u64_at(b, field::TIMESTAMP),
            session: u64_at(b, field::SESSION),
            target: endpoint_at(b, field::TARGET)?,
            sender: endpoint_at(b, field::SENDER)?,
            receiver: endpoint_at(b, field::RECEIVER)?,
            unsigned,
        })
    }

    /// The signed part, for computing the MAC.
    #[must_use]
    pub fn signed_bytes(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION] = VERSION;
        b[field::KIND] = self.kind as u8;
        let flags = if self.unsigned { FLAG_UNSIGNED } else { 0 };
        b[field::FLAGS].copy_from_slice(&flags.to_be_bytes());
        b[field::NONCE].copy_from_slice(&self.nonce.to_be_bytes());
        b[field::TIMESTAMP].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[field::SESSION].copy_from_slice(&self.session.to_be_bytes());
        put_endpoint(&mut b[field::TARGET], &self.target);
        put_endpoint(&mut b[field::SENDER], &self.sender);
        put_endpoint(&mut b[field::RECEIVER], &self.receiver);
        b
    }

    /// The complete message with `mac` appended.
    #[must_use]
    pub fn emit(&self, mac: &[u8; MAC_LEN]) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[..SIGNED_LEN].copy_from_slice(&self.signed_bytes());
        b[field::MAC].copy_from_slice(mac);
        b
    }

    /// The message without a MAC ([`FLAG_UNSIGNED`]).
    #[must_use]
    pub fn emit_unsigned(&self) -> [u8; MESSAGE_LEN] {
        Self {
            unsigned: true,
            ..*self
        }
        .emit(&[0; MAC_LEN])
    }

    /// The MAC carried by a raw message (which must be [`MESSAGE_LEN`] bytes).
    #[must_use]
    pub fn mac_of(b: &[u8]) -> Option<&[u8]> {
        (b.len() == MESSAGE_LEN).then(|| &b[field::MAC])
    }

    /// The ACK that answers this PROBE, which came from `prober` (as seen here).
    #[must_use]
    pub fn ack(&self, timestamp_ms: u64, prober: Endpoint) -> Self {
        Self {
            kind: Kind::Ack,
            timestamp_ms,
            receiver: prober,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProbeMessage {
        ProbeMessage {
            kind: Kind::Probe,
            nonce: 0x0102_0304_0506_0708,
            timestamp_ms: 1_780_000_000_000,
            session: 42,
            target: Endpoint::v4([192, 0, 2, 10], 40000),
            sender: Endpoint::v6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                30002,
            ),
            receiver: Endpoint::v4([192, 0, 2, 10], 7999),
            unsigned: false,
        }
    }

    #[test]
    fn roundtrip() {
        let m = sample();
        let b = m.emit(&[0xaa; MAC_LEN]);
        assert_eq!(&b[..4], b"MPRB");
        assert_eq!(ProbeMessage::parse(&b), Ok(m));
        assert_eq!(ProbeMessage::mac_of(&b), Some(&[0xaa; MAC_LEN][..]));
        let ack = m.ack(5, Endpoint::v4([198, 51, 100, 1], 40_123));
        assert_eq!(ack.kind, Kind::Ack);
        assert_eq!(ack.receiver, Endpoint::v4([198, 51, 100, 1], 40_123));
        assert_eq!(
            (ack.nonce, ack.target, ack.sender),
            (m.nonce, m.target, m.sender)
        );
    }

    #[test]
    fn rejects_malformed_input() {
        let b = sample().emit(&[0; MAC_LEN]);
        assert_eq!(
            ProbeMessage::parse(&b[..MESSAGE_LEN - 1]),
            Err(ProbeError::Length)
        );
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::BadMagic));
        let mut bad = b;
        bad[4] = 9;
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::UnknownVersion));
        let mut bad = b;
        bad[5] = 3;
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::UnknownType));
        let mut bad = b;
        bad[7] = 2;
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::Malformed));
        let mut bad = sample().emit(&[0xaa; MAC_LEN]);
        bad[7] = 1; // unsigned, yet with a MAC
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::Malformed));
        let u = sample().emit_unsigned();
        assert_eq!(
            ProbeMessage::parse(&u),
            Ok(ProbeMessage {
                unsigned: true,
                ..sample()
            })
        );
        let mut bad = b;
        bad[32 + 18] = 5; // family
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::Malformed));
        let mut bad = b;
        bad[32 + 6] = 1; // IPv4 endpoint with junk past its 4 address bytes
        assert_eq!(ProbeMessage::parse(&bad), Err(ProbeError::Malformed));
    }

    #[test]
    fn any_bytes_parse_or_fail_cleanly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(88);
        for _ in 0..20_000 {
            let mut b = sample().emit(&[0; MAC_LEN]);
            let flips = rng.random_range(1..4);
            for _ in 0..flips {
                let i = rng.random_range(0..MESSAGE_LEN);
                b[i] = rng.random();
            }
            if let Ok(m) = ProbeMessage::parse(&b) {
                assert_eq!(&m.emit(&b[SIGNED_LEN..].try_into().unwrap())[..], &b[..]);
            }
        }
    }
}
