//! Which source a side of a stream latches to: the learning rule that an attacker spraying
//! the port range cannot win.
//!
//! Every source is ranked against what signalling said about the side, best first:
//! 0. the signalled endpoint itself, address and port (an authenticated relay probe confirms
//!    as much);
//! 1. the SIP source address (Kamailio's `received-from`): a phone behind a NAT speaks from
//!    there, on whatever port the NAT picked; for RTCP, the address its RTP stream latched to;
//! 2. the signalled address on another port;
//! 3. anything else.
//!
//! Ranks 0 and 1 latch on their first packet. Ranks 2 and 3 are candidates: the relay holds
//! their packets and latches the best candidate once it has sent [`LearnConfig::packets`]
//! consistent packets (RTP: one SSRC, sequence numbers in order) and
//! [`LearnConfig::min_wait`] has passed since the first candidate spoke, unless a better-ranked
//! source appears first. Where signalling gave the side anything to match (an SDP endpoint, a
//! SIP source, a relay), a rank 3 source waits [`LearnConfig::anchored_wait`] instead, counted
//! from when the *other* side latched: a sprayer that reaches the port before the phones speak
//! sends a consistent stream just as easily, and the real peer, which answers the other
//! side's media, gets that long to show up and win by its rank. The held packets of the winner are then delivered, so learning costs
//! no audio; the others are dropped and counted. The budget: [`LearnConfig::max_candidates`]
//! sources tracked at once and the side's held buffer (16 packets by default).
//!
//! A source address that shows up unmatched (rank 3) at [`SprayConfig::ports`] or more of the
//! relay's endpoints within [`SprayConfig::window`], or on both sides of one stream, is a
//! sprayer: a phone sends to one port per media section, on its own side of the call; a
//! sweep of the port range reaches all of them. Its unmatched packets are
//! refused everywhere for [`SprayConfig::ban`], and whatever it held as a candidate is
//! forgotten, so that it cannot win a side however long it sprays before the phone speaks.
//!
//! A latched side does not move on silence. After a signalling event (a re-INVITE) it may
//! move, for a window, to a strictly better-ranked source only.
//!
//! Sans-IO: packets and `now` in, a verdict out.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use proxy_common::Endpoint;

/// How a source compares with what signalling said, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rank {
    /// The signalled endpoint exactly, or one an authenticated probe confirmed.
    Signalled = 0,
    /// From the SIP source address (for RTCP: the address its RTP stream latched to).
    SipSource = 1,
    /// The signalled address, another port.
    SignalledAddress = 2,
    /// Nothing signalled matches.
    Unknown = 3,
}

impl Rank {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Rank::Signalled => "signalled endpoint",
            Rank::SipSource => "SIP source address",
            Rank::SignalledAddress => "signalled address, other port",
            Rank::Unknown => "unsignalled source",
        }
    }

    /// Ranks that latch on their first packet.
    #[must_use]
    pub fn immediate(self) -> bool {
        self <= Rank::SipSource
    }
}

/// What signalling said about a side, against which sources are ranked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// The signalled (SDP) endpoint.
    pub signalled: Option<Endpoint>,
    /// The SIP source address of the side's last signalling.
    pub sip_source: Option<IpAddr>,
    /// For an RTCP stream: the address its RTP stream latched to on this side. RTCP is learnt
    /// only from there (a NAT may give it another port), or from its exact signalled endpoint.
    pub rtp_peer: Option<IpAddr>,
    /// The address an authenticated relay probe or ACK for this side came from: the next
    /// relay, behind whatever NAT, whose media follows from there.
    pub relay: Option<IpAddr>,
    /// This is an RTCP stream.
    pub rtcp: bool,
}

impl Expect {
    /// Signalling gave something a real peer would match; an unmatched source then has to
    /// wait [`LearnConfig::anchored_wait`].
    #[must_use]
    pub fn anchored(&self) -> bool {
        self.signalled
            .and_then(|s| s.ip())
            .is_some_and(|ip| !ip.is_unspecified())
            || self.sip_source.is_some()
            || self.relay.is_some()
            || self.rtp_peer.is_some()
    }

    /// The source's rank, or `None` if it may not be learnt at all (RTCP from an address its
    /// RTP stream did not latch to).
    #[must_use]
    pub fn rank(&self, src: &Endpoint) -> Option<Rank> {
        if self.signalled == Some(*src) {
            return Some(Rank::Signalled);
        }
        let ip = src.ip()?;
        if self.rtcp {
            return (self.rtp_peer == Some(ip)).then_some(Rank::SipSource);
        }
        if self.sip_source == Some(ip) || self.relay == Some(ip) {
            return Some(Rank::SipSource);
        }
        if self.signalled.and_then(|s| s.ip()) == Some(ip) {
            return Some(Rank::SignalledAddress);
        }
        Some(Rank::Unknown)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnConfig {
    /// Consistent packets a rank 2 or 3 candidate must send before it may win.
    pub packets: u32,
    /// How long after the first candidate spoke a rank 2 or 3 candidate may win: time for a
    /// better-ranked source to show up.
    pub min_wait: Duration,
    /// How long after the first candidate spoke an unmatched (rank 3) source may win on a
    /// side that signalling anchored (see [`Expect::anchored`]). rtpengine's heuristic
    /// learning waits the same 3 s.
    pub anchored_wait: Duration,
    /// Candidate sources tracked at once; more are refused until a decision.
    pub max_candidates: usize,
}

impl Default for LearnConfig {
    fn default() -> Self {
        Self {
            // Five packets of 20 ms audio: 100 ms, a fraction of what a phone sends before
            // anyone notices, and more than a sprayer sends to one port of a range it sweeps.
            packets: 5,
            min_wait: Duration::from_millis(100),
            anchored_wait: Duration::from_secs(3),
            max_candidates: 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    src: Endpoint,
    rank: Rank,
    /// Packets in a row that agree (one SSRC, sequence numbers in order).
    consistent: u32,
    ssrc: Option<u32>,
    last_seq: Option<u16>,
}

/// The outcome of one packet from a not (yet) accepted source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Latch `src` (maybe not the packet's own source: the best candidate won now).
    Latch { src: Endpoint, rank: Rank },
    /// Held while the decision is pending.
    Wait,
    /// Not learnable, or no room for another candidate: dropped.
    Refuse,
}

/// RTP's SSRC and sequence number, if the payload is RTP version 2 (not RTCP: its packet
/// types 200-204 sit where RTP's marker and payload type are).
fn rtp_header(p: &[u8]) -> Option<(u32, u16)> {
    if p.len() < 12 || p[0] >> 6 != 2 || (200..=204).contains(&p[1]) {
        return None;
    }
    Some((
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// The candidates of one side while it learns.
#[derive(Clone, Debug, Default)]
pub struct Learner {
    candidates: Vec<Candidate>,
    first: Option<Instant>,
}

impl Learner {
    /// One packet from `src`, ranked `rank`, that the side has not accepted.
    /// `other_latched`: when the other side of the stream latched, if it has; an unmatched
    /// source on an anchored side waits from then.
    #[expect(
        clippy::too_many_arguments,
        reason = "one packet and what it is judged by"
    )]
    #[expect(
        clippy::similar_names,
        reason = "ssrc and seq are RTP's own field names"
    )]
    pub fn observe(
        &mut self,
        cfg: &LearnConfig,
        expect: &Expect,
        src: Endpoint,
        rank: Rank,
        payload: &[u8],
        other_latched: Option<Instant>,
        now: Instant,
    ) -> Verdict {
        if rank.immediate() {
            return Verdict::Latch { src, rank };
        }
        let i = match self.candidates.iter().position(|c| c.src == src) {
            Some(i) => i,
            None if self.candidates.len() >= cfg.max_candidates => return Verdict::Refuse,
            None => {
                self.candidates.push(Candidate {
                    src,
                    rank,
                    consistent: 0,
                    ssrc: None,
                    last_seq: None,
                });
                self.candidates.len() - 1
            }
        };
        self.first.get_or_insert(now);
        let c = &mut self.candidates[i];
        match rtp_header(payload) {
            Some((ssrc, seq)) => {
                let in_order = c.ssrc == Some(ssrc)
                    && c.last_seq
                        .is_some_and(|l| (1..=3).contains(&seq.wrapping_sub(l)));
                c.consistent = if in_order { c.consistent + 1 } else { 1 };
                c.ssrc = Some(ssrc);
                c.last_seq = Some(seq);
            }
            // Not RTP (garbage, STUN): nothing to be consistent about, so it can never win.
            None => c.consistent = 0,
        }
        let waited = self
            .first
            .map_or(Duration::ZERO, |f| now.saturating_duration_since(f));
        let anchored_ok =
            other_latched.is_some_and(|t| now.saturating_duration_since(t) >= cfg.anchored_wait);
        let wait = |r: Rank| {
            if r == Rank::Unknown && expect.anchored() {
                if anchored_ok {
                    cfg.anchored_wait
                } else {
                    Duration::MAX
                }
            } else {
                cfg.min_wait
            }
        };
        let best = self
            .candidates
            .iter()
            .filter(|c| c.consistent >= cfg.packets)
            .min_by_key(|c| (c.rank, std::cmp::Reverse(c.consistent)))
            .copied();
        match best {
            Some(b) if waited >= wait(b.rank) => Verdict::Latch {
                src: b.src,
                rank: b.rank,
            },
            _ => Verdict::Wait,
        }
    }

    /// Forgets the candidates from `ip` (a sprayer).
    pub fn forget(&mut self, ip: IpAddr) {
        self.candidates.retain(|c| c.src.ip() != Some(ip));
        if self.candidates.is_empty() {
            self.first = None;
        }
    }

    /// Forgets every candidate (the side latched, or signalling changed).
    pub fn reset(&mut self) {
        self.candidates.clear();
        self.first = None;
    }

    /// The candidate that would win now if it had sent enough, for the held buffer's
    /// eviction: its packets are kept longest.
    #[must_use]
    pub fn leader(&self) -> Option<Endpoint> {
        self.candidates
            .iter()
            .min_by_key(|c| (c.rank, std::cmp::Reverse(c.consistent)))
            .map(|c| c.src)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SprayConfig {
    /// Distinct relay endpoints an unmatched source may reach before it counts as a sprayer.
    /// A phone reaches one per media section (its RTCP is never unmatched: it is learnt from
    /// its RTP's address only), so four is two video calls' worth from one address with no
    /// signalling match at all, which no phone does and every sweep of a port range does.
    pub ports: usize,
    /// How recent those must be.
    pub window: Duration,
    /// How long a sprayer stays refused.
    pub ban: Duration,
    /// Addresses tracked at once. Beyond it the oldest unflagged one is forgotten (it can
    /// start over); banned addresses are kept until their ban ends, up to the same number,
    /// and past that every unmatched source is refused (fail closed).
    pub tracked: usize,
}

impl Default for SprayConfig {
    fn default() -> Self {
        Self {
            ports: 4,
            window: Duration::from_secs(10),
            ban: Duration::from_mins(1),
            tracked: 65_536,
        }
    }
}

#[derive(Clone, Debug)]
struct Track {
    since: Instant,
    /// The endpoints reached, with the stream and side each belongs to.
    endpoints: Vec<(Endpoint, u64, u8)>,
}

/// Unmatched sources and the relay endpoints they reached: who is spraying the port range.
#[derive(Clone, Debug, Default)]
pub struct Sprayers {
    tracks: HashMap<IpAddr, Track>,
    banned: HashMap<IpAddr, Instant>,
}

impl Sprayers {
    /// An unmatched source from `ip` reached the relay endpoint `local`, side `side` of stream
    /// `stream`. Returns whether `ip` is a sprayer (now or already).
    pub fn observe(
        &mut self,
        cfg: &SprayConfig,
        ip: IpAddr,
        (local, stream, side): (Endpoint, u64, u8),
        now: Instant,
    ) -> bool {
        if let Some(&until) = self.banned.get(&ip) {
            if now < until {
                return true;
            }
            self.banned.remove(&ip);
        }
        if self.banned.len() >= cfg.tracked {
            self.banned.retain(|_, until| now < *until);
            if self.banned.len() >= cfg.tracked {
                return true;
            }
        }
        if !self.tracks.contains_key(&ip) && self.tracks.len() >= cfg.tracked {
            let oldest = self
                .tracks
                .iter()
                .min_by_key(|(_, t)| t.since)
                .map(|(ip, _)| *ip);
            if let Some(o) = oldest {
                self.tracks.remove(&o);
            }
        }
        let t = self.tracks.entry(ip).or_insert_with(|| Track {
            since: now,
            endpoints: Vec::new(),
        });
        if now.saturating_duration_since(t.since) > cfg.window {
            t.since = now;
            t.endpoints.clear();
        }
        if !t.endpoints.iter().any(|(e, ..)| *e == local) {
            t.endpoints.push((local, stream, side));
        }
        let both_sides = t
            .endpoints
            .iter()
            .any(|&(_, st, sd)| st == stream && sd != side);
        if both_sides || t.endpoints.len() >= cfg.ports {
            self.tracks.remove(&ip);
            self.banned.insert(ip, now + cfg.ban);
            return true;
        }
        false
    }

    #[must_use]
    pub fn banned(&self) -> usize {
        self.banned.len()
    }
}

#[cfg(test)]
mod tests;
