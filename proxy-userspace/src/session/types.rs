//! The engine's vocabulary: sides, stream configurations and updates, its settings, what it
//! outputs and reports, and its errors.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use proxy_common::{Endpoint, FlowState, probe::ProbeMessage};

use super::{LearnConfig, Rank, SprayConfig, StreamId};
use crate::flow::FlowSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    A = 0,
    B = 1,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub(super) const fn idx(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Latching {
    /// Learn each side's address from its first packet (RFC 4961). rtpengine: `symmetric`.
    #[default]
    Symmetric,
    /// Send to the signalled address, accept from anywhere. rtpengine: `asymmetric`.
    Asymmetric,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// The relay's endpoints facing side A and side B.
    pub local: [Endpoint; 2],
    /// The signalled media address of each side, if known.
    pub remote: [Option<Endpoint>; 2],
    /// The next relay's probe address on each side (its IP and the deployment's probe port),
    /// if the call server told us there is one.
    pub next_relay: [Option<SocketAddr>; 2],
    /// Per side: learn its address from its first packet, or trust the signalled one.
    pub latching: [Latching; 2],
    /// Packets from a source other than the latched one are dropped in the kernel instead of
    /// being shown to userspace (rtpengine: `strict source`). No re-latching then.
    pub strict_source: bool,
    /// A tag of the call for probe messages (hash of the Call-ID), 0 if none.
    pub session_tag: u64,
    /// Per side: the SIP source address of its signalling (Kamailio's `received-from`),
    /// which ranks a source second after the signalled endpoint.
    pub sip_source: [Option<IpAddr>; 2],
    /// For an RTCP stream, its RTP stream: RTCP is learnt only from the addresses that stream
    /// latched to.
    pub rtp_stream: Option<StreamId>,
    /// Per side: it takes media, by its SDP direction (not `sendonly` or `inactive`). A side
    /// that does not is sent nothing at its signalled address before it speaks.
    pub receives: [bool; 2],
}

impl StreamConfig {
    #[must_use]
    pub fn new(local_a: Endpoint, local_b: Endpoint) -> Self {
        Self {
            local: [local_a, local_b],
            remote: [None, None],
            next_relay: [None, None],
            latching: [Latching::Symmetric; 2],
            strict_source: false,
            session_tag: 0,
            sip_source: [None, None],
            rtp_stream: None,
            receives: [true; 2],
        }
    }
}

/// New signalling for an existing stream; see [`super::Engine::update_stream`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamUpdate {
    pub remote: [Option<Endpoint>; 2],
    pub next_relay: [Option<SocketAddr>; 2],
    pub latching: [Option<Latching>; 2],
    pub strict_source: Option<bool>,
    pub sip_source: [Option<IpAddr>; 2],
    /// Sides whose signalling this is (the SDP came from them): their learning window opens.
    pub signalled: [bool; 2],
    pub receives: [Option<bool>; 2],
}

/// Where packets toward a side that has not spoken yet go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FarSide {
    /// To its signalled address, from the near side's first packet on, in the kernel, while a
    /// probe runs; the side's own first packet then moves the destination to where it speaks
    /// from. rtpengine does the same: one-way streams (music on hold, announcements), early
    /// media and relays in series flow at once. The price: media toward an address nobody has
    /// confirmed, the one the call server gave.
    Signalled,
    /// Held until the side speaks, a relay there answers a probe, or the call server says so.
    /// Nothing goes toward an unconfirmed address, and there is no early media toward a
    /// silent party or a phone that never sends.
    Confirmed,
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// How long after a side's first packet the other side may stay silent before blocking
    /// is suspected. 200 ms is ten packets at 20 ms packetisation: far beyond the skew of two
    /// phones starting at once plus a few round trips, short enough that a blocked call's
    /// users hear little of it.
    pub blocking_timeout: Duration,
    /// Whether a side's first packet probes toward the far side (a named next relay, or its
    /// signalled address).
    pub probing: bool,
    /// Where packets toward a side that has not spoken go.
    pub far_side: FarSide,
    /// The deployment's probe port, where a signalled address is probed.
    pub probe_port: u16,
    /// Probes toward a signalled address that no `next-relay` named: it may be a phone, which
    /// a call then costs at most this many packets on the probe port.
    pub implicit_probe_attempts: u32,
    /// First probe retransmission timeout; doubled on each retry.
    pub probe_rto: Duration,
    /// Probes sent before giving up.
    pub probe_attempts: u32,
    /// Packets held per side while its destination is unknown; older ones are dropped and
    /// counted.
    pub held_capacity: usize,
    /// A new source may take over a latched side after the latched peer has been silent this
    /// long (a NAT rebinding). `None` (the default): never, because silence (hold, VAD/DTX,
    /// RTCP's 5 s interval) is exactly the window a port-spraying attacker waits for. An
    /// operator option, documented as that risk.
    pub relatch_after: Option<Duration>,
    /// How a side picks its source (see [`LearnConfig`]).
    pub learning: LearnConfig,
    /// Who counts as spraying the port range (see [`SprayConfig`]).
    pub spraying: SprayConfig,
    /// After a signalling event, how long a latched side may still move to a better-ranked
    /// source (a re-INVITE from a phone that moved); rtpengine's window is the same 3 s.
    pub learning_window: Duration,
    /// Let the kernel forward latched flows (FORWARD). Off: every packet goes through
    /// userspace, for measuring that path.
    pub kernel_forwarding: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            blocking_timeout: Duration::from_millis(200),
            probing: true,
            far_side: FarSide::Signalled,
            probe_port: proxy_common::probe::DEFAULT_PORT,
            implicit_probe_attempts: 2,
            probe_rto: Duration::from_millis(100),
            probe_attempts: 6,
            held_capacity: 16,
            relatch_after: None,
            learning: LearnConfig::default(),
            spraying: SprayConfig::default(),
            learning_window: Duration::from_secs(3),
            kernel_forwarding: true,
        }
    }
}

/// Why a side's signalled address is trusted before it latched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unblocked {
    /// The next relay acknowledged our probe.
    Ack,
    /// The next relay probed us.
    Probe,
    /// The call server said so.
    Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbePhase {
    Idle,
    Probing {
        attempts: u32,
    },
    Acked {
        rtt: Duration,
    },
    /// Gave up after the last attempt.
    Failed {
        attempts: u32,
    },
    /// Stopped because the far side spoke first.
    Cancelled {
        attempts: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Latched {
        side: Side,
        peer: Endpoint,
        rank: Rank,
    },
    Relatched {
        side: Side,
        old: Endpoint,
        new: Endpoint,
    },
    /// A source was refused: it matches nothing the side may learn, or the side is latched.
    /// Reported once per side and source kind, not per packet.
    Refused {
        side: Side,
        from: Endpoint,
    },
    BlockingSuspected {
        near: Side,
        after: Duration,
    },
    ProbeSent {
        toward: Side,
        attempt: u32,
        to: SocketAddr,
    },
    ProbeAcked {
        toward: Side,
        rtt: Duration,
    },
    ProbeFailed {
        toward: Side,
        attempts: u32,
    },
    Unblocked {
        side: Side,
        by: Unblocked,
    },
    /// The next relay on `side` probed us from an address other than its signalled one (a NAT
    /// is between us): we answered, and wait for its media to latch.
    ProbedFromElsewhere {
        side: Side,
        from: SocketAddr,
    },
    /// Packets from `near` now go to `to` (userspace sent the held ones; XDP does the rest).
    Forwarding {
        from: Side,
        to: Endpoint,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Install or replace the kernel flow keyed by the relay endpoint `key`.
    Flow {
        key: Endpoint,
        spec: FlowSpec,
    },
    RemoveFlow {
        key: Endpoint,
    },
    /// Send a UDP payload from a relay endpoint (userspace path).
    SendMedia {
        from: Endpoint,
        to: Endpoint,
        payload: Vec<u8>,
    },
    /// Sign and send from the probe port.
    SendProbe {
        to: SocketAddr,
        msg: ProbeMessage,
    },
    /// Sign and send from `from` (the probe endpoint the PROBE arrived at).
    SendAck {
        from: Endpoint,
        to: SocketAddr,
        msg: ProbeMessage,
    },
    Event {
        stream: StreamId,
        event: Event,
    },
}

/// Per-side counters of the userspace path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SideCounters {
    /// Packets from this side that userspace saw and accepted.
    pub packets: u64,
    pub bytes: u64,
    /// Of those, sent on by userspace (held packets on unblock, slow path).
    pub sent: u64,
    /// From a source other than the latched one, not forwarded.
    pub rejected: u64,
    /// Held packets dropped because the buffer was full or the stream ended, or because
    /// their source lost the learning.
    pub held_dropped: u64,
}

/// What `query` reports of one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideStatus {
    pub local: Endpoint,
    pub remote: Option<Endpoint>,
    pub latched: Option<Endpoint>,
    pub next_relay: Option<SocketAddr>,
    /// State of the kernel flow for packets *from* this side.
    pub state: FlowState,
    /// Forwarding target for packets *to* this side.
    pub destination: Option<Endpoint>,
    pub unblocked: Option<Unblocked>,
    pub blocking_suspected: Option<Duration>,
    pub probe: ProbePhase,
    pub held: usize,
    pub counters: SideCounters,
    /// How the latched source matched what signalling said.
    pub latch_rank: Option<Rank>,
    /// Candidate sources while learning.
    pub candidates: usize,
    /// The learning window after signalling is open.
    pub learning: bool,
    /// What the far end of this side turned out to be.
    pub far_end: FarEnd,
    /// From this side's first packet to the first one sent on toward the other side.
    pub unblocked_after: Option<Duration>,
}

/// What is at the far end of a side, as far as the relay can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FarEnd {
    /// Not known yet (a probe is out, or nothing has happened).
    Unknown,
    /// A relay: it acknowledged our probe, or probed us.
    Relay,
    /// A plain endpoint: it spoke, or no relay answered our probes, and its signalled address
    /// or its latched one is used.
    Endpoint,
}

impl FarEnd {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            FarEnd::Unknown => "unknown",
            FarEnd::Relay => "relay",
            FarEnd::Endpoint => "endpoint",
        }
    }
}

/// Engine-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub probes_received: u64,
    pub probes_unknown_session: u64,
    pub acks_received: u64,
    /// ACKs that match no outstanding probe (late, duplicated, or for an ended stream).
    pub acks_unmatched: u64,
    pub media_unknown_flow: u64,
    /// Packets from a source that is never latched (loopback, unspecified, multicast,
    /// broadcast, port 0): dropped before any learning.
    pub martian_sources: u64,
    /// Probes and ACKs that were unsigned or could not be checked (no shared secret).
    pub unverified: u64,
    /// Unmatched packets refused because their source sprays the port range.
    pub sprayer_refused: u64,
    /// Sides by time from their first packet to the first one sent on, in buckets up to
    /// [`UNBLOCK_BUCKETS_MS`] (the last: longer).
    pub unblocked_after: [u64; UNBLOCK_BUCKETS_MS.len() + 1],
}

/// Upper bounds, in ms, of the unblock-time buckets `statistics` reports.
pub const UNBLOCK_BUCKETS_MS: [u64; 7] = [1, 10, 50, 100, 200, 500, 1000];

/// Why a stream command failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// One of the local endpoints is already used by another stream.
    LocalInUse(Endpoint),
    UnknownStream(StreamId),
    /// A and B must be different endpoints.
    SameEndpoints,
    /// Probing needs the next relay's media address (the probe's target).
    NoRemote(Side),
    /// Probing needs to know where the next relay is.
    NoNextRelay(Side),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::LocalInUse(e) => write!(f, "local endpoint {e} is in use"),
            StreamError::UnknownStream(id) => write!(f, "no stream {id}"),
            StreamError::SameEndpoints => {
                f.write_str("the two sides need different local endpoints")
            }
            StreamError::NoRemote(s) => write!(f, "side {s:?} has no media address to probe for"),
            StreamError::NoNextRelay(s) => write!(f, "side {s:?} has no next relay to probe"),
        }
    }
}

impl std::error::Error for StreamError {}
