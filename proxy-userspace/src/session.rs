//! The relay's media logic as a sans-IO state machine: latching, blocking detection, and the
//! probe/ACK exchange that breaks the deadlock of two relays in series.
//!
//! Events go in ([`Engine::handle`], [`Engine::handle_timeout`] and the stream commands);
//! commands come out of [`Engine::poll_output`]: install or replace a kernel flow, send a media
//! packet from userspace, send a probe or an ACK, report an event. Nothing here touches a
//! socket, a map or a clock: the caller passes `now`. That is what lets the tests below walk
//! every path on the host, without root.
//!
//! # The model
//! A stream (one m= line's RTP, or its RTCP) has two sides, A and B. On each side the relay
//! owns a local endpoint: the peer on that side sends to it, and the relay sends to the peer
//! from it. Packets arriving at `local[X]` go out of `local[Y]` (Y the other side).
//!
//! With symmetric latching (RFC 4961), the relay learns side X's real address from the packets
//! X sends (the learning rule, [`learning`]), accepts X's packets only from there, and sends
//! toward X only there. The direction X→Y is forwarded once X is latched and Y's destination
//! is known: Y latched, or, before Y spoke, Y's signalled (SDP) address. By default
//! ([`FarSide::Signalled`], rtpengine's behaviour) the signalled address is used from X's
//! first packet on, so one-way streams, early media and relays in series flow at once; with
//! [`FarSide::Confirmed`] it is used only once Y is *unblocked*: the relay on Y's side
//! acknowledged our probe, or probed us itself, or the call server said so.
//!
//! # Probing
//! X's first packet, while Y has not spoken, sends a PROBE toward Y: to the next relay the
//! call server named, or else to Y's signalled address at the deployment's probe port (the
//! call server's address for the next relay is the far side's SDP address). An ACK proves a
//! relay is there: Y is unblocked, X's held packets go to Y's signalled address and X→Y flips
//! to FORWARD. A phone there answers nothing; probes toward an address no call server named a
//! relay cost it at most [`EngineConfig::implicit_probe_attempts`] packets. When Y's first
//! packet arrives, Y is latched and Y→X goes to FORWARD too; from then on the kernel forwards
//! both directions and userspace sees nothing of the stream. Silence from Y after X's first
//! packet is still recorded (blocking suspected).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

mod learning;

pub use learning::{Expect, LearnConfig, Learner, Rank, SprayConfig, Sprayers, Verdict};

use proxy_common::{
    Endpoint, FlowState,
    probe::{Kind, ProbeMessage, Trust},
};

use crate::flow::{FlowSpec, MismatchPolicy};

pub type StreamId = u64;

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

    const fn idx(self) -> usize {
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

/// New signalling for an existing stream; see [`Engine::update_stream`].
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
    /// How a side picks its source (see [`learning`]).
    pub learning: LearnConfig,
    /// Who counts as spraying the port range (see [`learning`]).
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

#[derive(Debug)]
struct SideState {
    local: Endpoint,
    remote: Option<Endpoint>,
    next_relay: Option<SocketAddr>,
    sip_source: Option<IpAddr>,
    /// Where an authenticated probe or ACK for this side came from.
    relay_ip: Option<IpAddr>,
    latched: Option<Endpoint>,
    /// When it first latched.
    latched_at: Option<Instant>,
    latch_rank: Option<Rank>,
    learner: Learner,
    /// The learning window after a signalling event is open until this instant.
    learning_until: Option<Instant>,
    /// Last accepted packet from this side (through userspace).
    last_packet: Option<Instant>,
    first_packet: Option<Instant>,
    /// Packets waiting: from candidates while the side learns, from the latched source
    /// while the far side's destination is unknown. Each with its source.
    held: VecDeque<(Endpoint, Vec<u8>)>,
    blocking_deadline: Option<Instant>,
    blocking_suspected: Option<Duration>,
    unblocked: Option<Unblocked>,
    probe: ProbePhase,
    /// Nonces of this probing episode and when each was sent.
    probe_nonces: Vec<(u64, Instant)>,
    probe_next: Option<Instant>,
    /// Where this episode probes (the named next relay, or the signalled address at the
    /// probe port) and how many attempts it may take.
    probe_to: Option<SocketAddr>,
    probe_max: u32,
    /// A relay on this side probed us.
    probed_us: bool,
    /// When the first packet from this side was sent on toward the other side.
    first_sent: Option<Instant>,
    counters: SideCounters,
}

impl SideState {
    /// Forgets `ip` as a candidate, and drops what it had held.
    fn forget(&mut self, ip: IpAddr) {
        self.learner.forget(ip);
        let before = self.held.len();
        self.held.retain(|(s, _)| s.ip() != Some(ip));
        self.counters.held_dropped += (before - self.held.len()) as u64;
    }

    /// Latches `src`, won at `rank`: the winner's held packets go on, everything else held
    /// was a loser's. The event to report.
    fn latch(&mut self, x: Side, src: Endpoint, rank: Rank, now: Instant) -> Event {
        let old = self.latched.replace(src);
        self.latched_at.get_or_insert(now);
        self.latch_rank = Some(rank);
        self.learner.reset();
        let before = self.held.len();
        self.held.retain(|(s, _)| *s == src);
        self.counters.held_dropped += (before - self.held.len()) as u64;
        match old {
            None => Event::Latched {
                side: x,
                peer: src,
                rank,
            },
            Some(old) => Event::Relatched {
                side: x,
                old,
                new: src,
            },
        }
    }

    /// Latched to a source that matched nothing signalling said, although signalling said
    /// something (a sprayer that got there first, or a phone whose media comes from neither
    /// its SDP address nor its SIP source). Such a latch stays open to any better-ranked
    /// source, whenever it shows up: that source is closer to what the call server said, and
    /// an attacker gains it only by spoofing the signalled address, which gets them nothing
    /// back.
    fn provisional(&self) -> bool {
        self.latch_rank == Some(Rank::Unknown)
            && (self
                .remote
                .and_then(|r| r.ip())
                .is_some_and(|ip| !ip.is_unspecified())
                || self.sip_source.is_some()
                || self.relay().is_some())
    }

    /// Where this side's relay is: where an authenticated probe or ACK came from, or else
    /// where the call server said it is (`next-relay`). Its media ranks with a SIP source.
    fn relay(&self) -> Option<IpAddr> {
        self.relay_ip.or(self.next_relay.map(|r| r.ip()))
    }

    fn new(local: Endpoint, remote: Option<Endpoint>, next_relay: Option<SocketAddr>) -> Self {
        Self {
            local,
            remote,
            next_relay,
            sip_source: None,
            relay_ip: None,
            latched: None,
            latched_at: None,
            latch_rank: None,
            learner: Learner::default(),
            learning_until: None,
            last_packet: None,
            first_packet: None,
            held: VecDeque::new(),
            blocking_deadline: None,
            blocking_suspected: None,
            unblocked: None,
            probe: ProbePhase::Idle,
            probe_nonces: Vec::new(),
            probe_next: None,
            probe_to: None,
            probe_max: 0,
            probed_us: false,
            first_sent: None,
            counters: SideCounters::default(),
        }
    }
}

#[derive(Debug)]
struct Stream {
    cfg: StreamConfig,
    sides: [SideState; 2],
    /// The flow specs last emitted, keyed by side: only changes are emitted.
    installed: [Option<FlowSpec>; 2],
    far_side: FarSide,
}

impl Stream {
    fn side(&self, s: Side) -> &SideState {
        &self.sides[s.idx()]
    }

    fn side_mut(&mut self, s: Side) -> &mut SideState {
        &mut self.sides[s.idx()]
    }

    /// Where packets toward side `to` go, if anywhere yet: its latched address, or else its
    /// signalled one when that may be used (see [`FarSide`]; never `0.0.0.0`, hold).
    fn destination(&self, to: Side) -> Option<Endpoint> {
        let s = self.side(to);
        if let Some(l) = s.latched {
            return Some(l);
        }
        let signalled = s
            .remote
            .filter(|r| r.ip().is_some_and(|ip| !ip.is_unspecified()));
        if self.cfg.latching[to.idx()] == Latching::Asymmetric || s.unblocked.is_some() {
            return signalled;
        }
        if self.far_side == FarSide::Signalled && self.cfg.receives[to.idx()] {
            return signalled;
        }
        None
    }

    fn far_end(&self, s: Side) -> FarEnd {
        let side = self.side(s);
        if side.probed_us || matches!(side.probe, ProbePhase::Acked { .. }) {
            FarEnd::Relay
        } else if side.latched.is_some() || matches!(side.probe, ProbePhase::Failed { .. }) {
            FarEnd::Endpoint
        } else {
            FarEnd::Unknown
        }
    }

    /// The kernel flow for packets arriving from `from`.
    ///
    /// A wrong source is dropped in the kernel (and counted there, at no syscall) unless
    /// userspace may still take it: during the learning window after signalling, when the
    /// operator allowed re-latching after silence (neither under `strict source`), or while
    /// the latch is provisional. The punts are budgeted in the kernel either way.
    fn flow_spec(&self, from: Side, kernel_forwarding: bool, relatch: bool) -> FlowSpec {
        let to = from.other();
        let side = self.side(from);
        let peer = match self.cfg.latching[from.idx()] {
            Latching::Symmetric => side.latched,
            // Asymmetric: any source, unless strict, which holds it to the signalled one.
            Latching::Asymmetric if self.cfg.strict_source => side.remote,
            Latching::Asymmetric => None,
        };
        let ready = match self.cfg.latching[from.idx()] {
            Latching::Symmetric => peer.is_some(),
            Latching::Asymmetric => true,
        };
        let mut spec = FlowSpec::hold();
        spec.hint = side.remote;
        spec.hint_ip = side.sip_source.or(side.relay_ip);
        let learning = side.learning_until.is_some();
        spec.mismatch = if side.provisional() || (!self.cfg.strict_source && (learning || relatch))
        {
            MismatchPolicy::Punt
        } else {
            MismatchPolicy::Drop
        };
        if let (true, true, Some(dst)) = (kernel_forwarding, ready, self.destination(to)) {
            spec.state = FlowState::Forward;
            spec.peer = peer;
            spec.out_src = self.side(to).local;
            spec.out_dst = dst;
        } else {
            // HOLD still remembers the latched peer, so the kernel's mismatch counter means
            // something before the flip too.
            spec.peer = peer;
        }
        spec
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Blocking,
    Probe,
    /// The learning window after signalling closes.
    LearnEnd,
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

pub struct Engine {
    cfg: EngineConfig,
    streams: HashMap<StreamId, Stream>,
    by_local: HashMap<Endpoint, (StreamId, Side)>,
    by_nonce: HashMap<u64, (StreamId, Side)>,
    timers: BinaryHeap<Reverse<(Instant, StreamId, Side, TimerKind)>>,
    out: VecDeque<Output>,
    next_id: StreamId,
    counters: EngineCounters,
    sprayers: Sprayers,
    /// Source of probe nonces; the caller seeds it (from the OS) so tests stay deterministic.
    rng: rand::rngs::StdRng,
}

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

/// A media packet as `handle_media` got it.
#[derive(Clone, Copy)]
struct Packet<'a> {
    local: Endpoint,
    from: Endpoint,
    payload: &'a [u8],
    kernel_last_seen: Option<Instant>,
}

/// What learning made of a packet's source.
enum Learnt {
    /// The side's peer (latched before, or not a latching side).
    Peer,
    /// Latched now.
    Latched,
    /// Held while the learning rule decides.
    Held,
    Refused,
}

impl Engine {
    #[must_use]
    pub fn new(cfg: EngineConfig, seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            cfg,
            streams: HashMap::new(),
            by_local: HashMap::new(),
            by_nonce: HashMap::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            next_id: 1,
            counters: EngineCounters::default(),
            sprayers: Sprayers::default(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    #[must_use]
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// Creates a stream; its two flows start in HOLD.
    ///
    /// # Errors
    ///
    /// [`StreamError`] if the two local endpoints are the same or one is already in use.
    pub fn add_stream(&mut self, cfg: StreamConfig) -> Result<StreamId, StreamError> {
        if cfg.local[0] == cfg.local[1] {
            return Err(StreamError::SameEndpoints);
        }
        for l in cfg.local {
            if self.by_local.contains_key(&l) {
                return Err(StreamError::LocalInUse(l));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut stream = Stream {
            sides: [
                SideState::new(cfg.local[0], cfg.remote[0], cfg.next_relay[0]),
                SideState::new(cfg.local[1], cfg.remote[1], cfg.next_relay[1]),
            ],
            cfg,
            installed: [None, None],
            far_side: self.cfg.far_side,
        };
        for s in Side::BOTH {
            stream.side_mut(s).sip_source = cfg.sip_source[s.idx()];
        }
        for s in Side::BOTH {
            self.by_local.insert(cfg.local[s.idx()], (id, s));
        }
        self.streams.insert(id, stream);
        self.sync_flows(id);
        Ok(id)
    }

    /// Applies new signalling (a re-INVITE) to a stream without breaking what forwards:
    /// latches stay, and a side's destination only changes if its signalled address did and
    /// it has not latched. `None` fields leave things as they are.
    ///
    /// # Errors
    ///
    /// [`StreamError::UnknownStream`] if there is no such stream.
    pub fn update_stream(
        &mut self,
        id: StreamId,
        upd: &StreamUpdate,
        now: Instant,
    ) -> Result<(), StreamError> {
        let window = self.cfg.learning_window;
        let rtp_peers = Side::BOTH.map(|s| self.rtp_peer(id, s));
        let stream = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        let rtcp = stream.cfg.rtp_stream.is_some();
        for s in Side::BOTH {
            let i = s.idx();
            if let Some(l) = upd.latching[i] {
                stream.cfg.latching[i] = l;
            }
            if let Some(r) = upd.receives[i] {
                stream.cfg.receives[i] = r;
            }
            let side = stream.side_mut(s);
            if upd.remote[i].is_some() {
                side.remote = upd.remote[i];
            }
            if upd.next_relay[i].is_some() {
                side.next_relay = upd.next_relay[i];
            }
            if upd.sip_source[i].is_some() {
                side.sip_source = upd.sip_source[i];
            }
            if upd.signalled[i] {
                // A signalling event: the side may move to a better-ranked source for a
                // while (a phone that moved sends from its new signalled endpoint). Its
                // current latch is ranked against what was just signalled.
                let expect = Expect {
                    signalled: side.remote,
                    sip_source: side.sip_source,
                    rtp_peer: rtp_peers[i],
                    relay: side.relay(),
                    rtcp,
                };
                side.latch_rank = side.latched.and_then(|l| expect.rank(&l));
                side.learner.reset();
                let until = now + window;
                side.learning_until = Some(until);
                self.timers
                    .push(Reverse((until, id, s, TimerKind::LearnEnd)));
            }
        }
        if let Some(strict) = upd.strict_source {
            stream.cfg.strict_source = strict;
        }
        stream.cfg.remote = [stream.sides[0].remote, stream.sides[1].remote];
        stream.cfg.next_relay = [stream.sides[0].next_relay, stream.sides[1].next_relay];
        stream.cfg.sip_source = [stream.sides[0].sip_source, stream.sides[1].sip_source];
        for s in Side::BOTH {
            self.flush_held(id, s.other(), now);
        }
        self.sync_flows(id);
        Ok(())
    }

    /// Ends a stream: its flows are removed and held packets dropped (and counted).
    ///
    /// # Errors
    ///
    /// [`StreamError::UnknownStream`] if there is no such stream.
    pub fn remove_stream(&mut self, id: StreamId) -> Result<[SideStatus; 2], StreamError> {
        let status = self.status(id).ok_or(StreamError::UnknownStream(id))?;
        let stream = self
            .streams
            .remove(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        for side in &stream.sides {
            self.by_local.remove(&side.local);
            for (n, _) in &side.probe_nonces {
                self.by_nonce.remove(n);
            }
            self.out.push_back(Output::RemoveFlow { key: side.local });
        }
        Ok(status)
    }

    /// The call server says side `side`'s next relay is there and reachable, or asks us to
    /// probe it now: with `probe`, a probe goes out at once (and the held packets follow its
    /// ACK); without, the side is trusted at its signalled address immediately.
    ///
    /// # Errors
    ///
    /// [`StreamError`] if there is no such stream, or a probe is asked for a side whose next relay
    /// or media address is unknown.
    pub fn unblock(
        &mut self,
        id: StreamId,
        side: Side,
        probe: bool,
        now: Instant,
    ) -> Result<(), StreamError> {
        let stream = self
            .streams
            .get(&id)
            .ok_or(StreamError::UnknownStream(id))?;
        if probe {
            if stream.side(side).remote.is_none() {
                return Err(StreamError::NoRemote(side));
            }
            if !self.start_probe(id, side, now, true) {
                return Err(StreamError::NoNextRelay(side));
            }
        } else {
            self.mark_unblocked(id, side, Unblocked::Command, now);
        }
        Ok(())
    }

    #[must_use]
    pub fn stream_of(&self, local: &Endpoint) -> Option<(StreamId, Side)> {
        self.by_local.get(local).copied()
    }

    pub fn stream_ids(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams.keys().copied()
    }

    #[must_use]
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    #[must_use]
    pub fn status(&self, id: StreamId) -> Option<[SideStatus; 2]> {
        let st = self.streams.get(&id)?;
        Some(Side::BOTH.map(|s| {
            let side = st.side(s);
            SideStatus {
                local: side.local,
                remote: side.remote,
                latched: side.latched,
                next_relay: side.next_relay,
                state: st.installed[s.idx()].map_or(FlowState::Hold, |f| f.state),
                destination: st.destination(s),
                unblocked: side.unblocked,
                blocking_suspected: side.blocking_suspected,
                probe: side.probe,
                held: side.held.len(),
                counters: side.counters,
                latch_rank: side.latch_rank,
                candidates: side.learner.len(),
                learning: side.learning_until.is_some(),
                far_end: st.far_end(s),
                unblocked_after: side
                    .first_sent
                    .zip(side.first_packet)
                    .map(|(sent, first)| sent.saturating_duration_since(first)),
            }
        }))
    }

    /// For an RTCP stream, the address its RTP stream latched to on side `s`.
    fn rtp_peer(&self, id: StreamId, s: Side) -> Option<IpAddr> {
        let rtp = self.streams.get(&id)?.cfg.rtp_stream?;
        self.streams.get(&rtp)?.side(s).latched?.ip()
    }

    /// A media packet punted by the kernel, addressed to the relay endpoint `local`.
    /// `kernel_last_seen` is when the kernel last accepted a packet on that flow (it forwards
    /// without telling us), so that a busy latched peer is never mistaken for a silent one;
    /// only asked for when the operator allows re-latching after silence.
    ///
    /// Three steps: is the source the side's peer (learning it if need be), what a new latch
    /// releases, and where the packet goes.
    pub fn handle_media(
        &mut self,
        local: Endpoint,
        from: Endpoint,
        payload: &[u8],
        kernel_last_seen: Option<Instant>,
        now: Instant,
    ) {
        let Some(&(id, x)) = self.by_local.get(&local) else {
            self.counters.media_unknown_flow += 1;
            return;
        };
        if is_martian(&from) {
            self.counters.martian_sources += 1;
            return;
        }
        let packet = Packet {
            local,
            from,
            payload,
            kernel_last_seen,
        };
        match self.learn(id, x, &packet, now) {
            Learnt::Refused | Learnt::Held => return,
            Learnt::Peer => {}
            Learnt::Latched => {
                if !self.on_latched(id, x, from, now) {
                    return;
                }
            }
        }
        self.relay_packet(id, x, from, payload, now);
    }

    /// Whether `packet`'s source is side `x`'s peer: the latched one, or one that the
    /// learning rule latches now; else the packet is refused or held while it decides.
    ///
    /// Long (about 90 lines) on purpose: the rule's order (rank, sprayer, first latch or a
    /// better one, then the verdict) is the security argument of the README, and reads as one
    /// sequence here; its parts live in `learning.rs` and in `SideState`.
    fn learn(&mut self, id: StreamId, x: Side, packet: &Packet<'_>, now: Instant) -> Learnt {
        let Packet {
            local,
            from,
            payload,
            kernel_last_seen,
        } = *packet;
        let rtp_peer = self.rtp_peer(id, x);
        let (learn, spraying, relatch_after, cap) = (
            self.cfg.learning,
            self.cfg.spraying,
            self.cfg.relatch_after,
            self.cfg.held_capacity,
        );
        let Some(stream) = self.streams.get_mut(&id) else {
            return Learnt::Refused;
        };
        let y = x.other();
        let symmetric = stream.cfg.latching[x.idx()] == Latching::Symmetric;
        let strict = stream.cfg.strict_source;
        let rtcp = stream.cfg.rtp_stream.is_some();
        let other_latched = stream.side(y).latched_at;
        let side = stream.side_mut(x);
        if !symmetric || side.latched == Some(from) {
            return Learnt::Peer;
        }
        let expect = Expect {
            signalled: side.remote,
            sip_source: side.sip_source,
            rtp_peer,
            relay: side.relay(),
            rtcp,
        };
        let rank = expect.rank(&from);
        // An unmatched source that reaches endpoint after endpoint sweeps the range: it is
        // refused everywhere, and forgotten where it was a candidate.
        let sprayer = rank == Some(Rank::Unknown)
            && from.ip().is_some_and(|ip| {
                let hit = self
                    .sprayers
                    .observe(&spraying, ip, (local, id, x as u8), now);
                if hit {
                    side.forget(ip);
                }
                hit
            });
        if sprayer {
            self.counters.sprayer_refused += 1;
        }
        let verdict = match (side.latched, rank) {
            (_, None) => Verdict::Refuse,
            _ if sprayer => Verdict::Refuse,
            (None, Some(r)) => {
                side.learner
                    .observe(&learn, &expect, from, r, payload, other_latched, now)
            }
            // Latched: only a strictly better-ranked source, only while the window after
            // signalling is open or the latch is provisional; or, if the operator allows
            // it, any after silence.
            (Some(_), Some(r)) => {
                let provisional = side.provisional();
                let better = (side.learning_until.is_some() || provisional)
                    && side.latch_rank.is_none_or(|lr| r < lr);
                let last = side.last_packet.max(kernel_last_seen);
                let silent = last.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                let after_silence = relatch_after.is_some_and(|after| silent >= after);
                if strict && !provisional {
                    Verdict::Refuse
                } else if after_silence {
                    Verdict::Latch { src: from, rank: r }
                } else if better {
                    side.learner
                        .observe(&learn, &expect, from, r, payload, other_latched, now)
                } else {
                    Verdict::Refuse
                }
            }
        };
        match verdict {
            Verdict::Refuse => {
                side.counters.rejected += 1;
                Learnt::Refused
            }
            Verdict::Wait => {
                let leader = side.learner.leader();
                hold(side, from, payload, cap, leader);
                Learnt::Held
            }
            Verdict::Latch { src, rank } => {
                let event = side.latch(x, src, rank, now);
                self.out.push_back(Output::Event { stream: id, event });
                if src != from {
                    // Another candidate won: this packet's source lost.
                    side.counters.rejected += 1;
                }
                Learnt::Latched
            }
        }
    }

    /// Side `x` just latched: its held packets count, probes toward it stop, and what either
    /// side held goes on. False if the winner was another source than `from`'s (whose
    /// packet then goes nowhere).
    fn on_latched(&mut self, id: StreamId, x: Side, from: Endpoint, now: Instant) -> bool {
        let Some(stream) = self.streams.get_mut(&id) else {
            return false;
        };
        let side = stream.side_mut(x);
        let won = side.latched;
        // Held packets of the winner count as accepted now.
        let held: Vec<usize> = side.held.iter().map(|(_, p)| p.len()).collect();
        side.counters.packets += held.len() as u64;
        side.counters.bytes += held.iter().sum::<usize>() as u64;
        if side.first_packet.is_none() && !held.is_empty() {
            side.first_packet = Some(now);
        }
        // X spoke: nobody needs to probe toward it any more.
        self.cancel_probe(id, x);
        // Whatever Y was holding for X can go now, and X's held packets toward Y if Y's
        // destination is known.
        self.flush_held(id, x.other(), now);
        self.flush_held(id, x, now);
        if won != Some(from) {
            self.sync_flows(id);
            return false;
        }
        true
    }

    /// A packet from side `x`'s peer: counted, then sent toward the other side, or held (and
    /// blocking suspected) while that side's destination is unknown.
    fn relay_packet(
        &mut self,
        id: StreamId,
        x: Side,
        from: Endpoint,
        payload: &[u8],
        now: Instant,
    ) {
        let cap = self.cfg.held_capacity;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let y = x.other();
        let side = stream.side_mut(x);
        side.counters.packets += 1;
        side.counters.bytes += payload.len() as u64;
        side.last_packet = Some(now);
        if side.first_packet.is_none() {
            side.first_packet = Some(now);
        }
        if let Some(dst) = stream.destination(y) {
            let from_ep = stream.side(y).local;
            stream.side_mut(x).counters.sent += 1;
            self.out.push_back(Output::SendMedia {
                from: from_ep,
                to: dst,
                payload: payload.to_vec(),
            });
            self.note_sent(id, x, now);
        } else {
            let side = stream.side_mut(x);
            hold(side, from, payload, cap, None);
            let other_silent = stream.side(y).latched.is_none();
            let side = stream.side_mut(x);
            if other_silent && side.blocking_deadline.is_none() && side.blocking_suspected.is_none()
            {
                let at = now + self.cfg.blocking_timeout;
                side.blocking_deadline = Some(at);
                self.timers.push(Reverse((at, id, x, TimerKind::Blocking)));
            }
        }
        self.probe_if_silent(id, y, now);
        self.sync_flows(id);
    }

    /// X spoke and `y` has not: probe toward `y` now, no timer in between (once per episode).
    /// An RTCP stream leaves it to its RTP stream, unless it holds until confirmed.
    fn probe_if_silent(&mut self, id: StreamId, y: Side, now: Instant) {
        let (probing, far_side) = (self.cfg.probing, self.cfg.far_side);
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        let rtcp = stream.cfg.rtp_stream.is_some();
        let side = stream.side(y);
        if probing
            && side.latched.is_none()
            && side.unblocked.is_none()
            && side.probe == ProbePhase::Idle
            && (!rtcp || far_side == FarSide::Confirmed)
        {
            self.start_probe(id, y, now, false);
        }
    }

    /// The first packet from `x` went on toward the other side: the time it took is recorded.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "milliseconds of a session's age fit a u64 for 584 million years"
    )]
    fn note_sent(&mut self, id: StreamId, x: Side, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(x);
        if side.first_sent.is_some() {
            return;
        }
        side.first_sent = Some(now);
        let after = side
            .first_packet
            .map_or(0, |f| now.saturating_duration_since(f).as_millis() as u64);
        let bucket = UNBLOCK_BUCKETS_MS
            .iter()
            .position(|&b| after <= b)
            .unwrap_or(UNBLOCK_BUCKETS_MS.len());
        self.counters.unblocked_after[bucket] += 1;
    }

    /// A fresh PROBE from `from`, received at our probe endpoint `local`; `trust` says whether
    /// it was authenticated with the deployment secret.
    pub fn handle_probe(
        &mut self,
        local: Endpoint,
        from: SocketAddr,
        msg: &ProbeMessage,
        trust: Trust,
        now_ms: u64,
        now: Instant,
    ) {
        self.counters.probes_received += 1;
        if trust == Trust::Unverified {
            self.counters.unverified += 1;
        }
        let Some(&(id, s)) = self.by_local.get(&msg.target) else {
            // Not one of ours (yet): no ACK, so the prober retries until the call server has
            // set the session up here, and nothing changes.
            self.counters.probes_unknown_session += 1;
            return;
        };
        // Answered in kind: an unverified probe gets an unsigned ACK.
        let mut ack = msg.ack(now_ms, Endpoint::from(from));
        ack.unsigned = trust == Trust::Unverified;
        self.out.push_back(Output::SendAck {
            from: local,
            to: from,
            msg: ack,
        });
        let mut vouched = false;
        if let Some(st) = self.streams.get_mut(&id) {
            let side = st.side_mut(s);
            side.probed_us = true;
            // A probe names the relay behind this side, wherever its NAT put it: its media
            // will come from that address, and ranks as well as a SIP source. If the probe is
            // authenticated; or, unsigned (a relay of another operator), if it names as its
            // sender exactly the media endpoint the call server signalled for this side,
            // which only the parties to the call know. Any other unverified probe ranks
            // nothing.
            vouched = trust == Trust::Authenticated || side.remote == Some(msg.sender);
            if vouched {
                side.relay_ip = Some(from.ip());
            }
        }
        if vouched {
            self.relearn(id, s, now);
        }
        // The prober is alive and its media follows our ACK within a round trip. Its
        // signalled endpoint is worth sending to now only if nothing between us changed
        // address or port: the probe came from the signalled address *and* from the
        // deployment's probe port. A NAT may change both, and what it did to the probe port
        // says nothing about the media port, so then we wait for the media.
        let probe_port = self.cfg.probe_port;
        let trusted = self.streams.get(&id).is_some_and(|st| {
            st.side(s).remote.and_then(|r| r.ip()) == Some(from.ip()) && from.port() == probe_port
        });
        if trusted {
            self.mark_unblocked(id, s, Unblocked::Probe, now);
        } else {
            self.out.push_back(Output::Event {
                stream: id,
                event: Event::ProbedFromElsewhere { side: s, from },
            });
        }
    }

    /// A fresh ACK from `from`.
    ///
    /// The ACK is checked against what was asked (target, sender, an outstanding probe)
    /// before its nonce is consumed: an ACK for the wrong target leaves the probe waiting for
    /// the right one. Its nonce, random and sent only to the far side, is what an unverified
    /// ACK proves; it releases media toward the signalled address, nothing more.
    pub fn handle_ack(&mut self, msg: &ProbeMessage, from: SocketAddr, trust: Trust, now: Instant) {
        self.counters.acks_received += 1;
        if trust == Trust::Unverified {
            self.counters.unverified += 1;
        }
        let Some(&(id, y)) = self.by_nonce.get(&msg.nonce) else {
            self.counters.acks_unmatched += 1;
            return;
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        // The ACK must answer what we asked: same target and sender.
        if side.remote != Some(msg.target)
            || side.local != msg.sender
            || !matches!(side.probe, ProbePhase::Probing { .. })
        {
            self.counters.acks_unmatched += 1;
            return;
        }
        let sent_at = side
            .probe_nonces
            .iter()
            .find(|(n, _)| *n == msg.nonce)
            .map(|(_, t)| *t);
        let rtt = sent_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        side.probe = ProbePhase::Acked { rtt };
        side.probe_next = None;
        // The next relay answered from here: its media follows from the same address. The
        // nonce, random and sent only toward the signalled address, vouches for an unsigned
        // ACK as the MAC does for a signed one.
        side.relay_ip = Some(from.ip());
        for (n, _) in side.probe_nonces.drain(..) {
            self.by_nonce.remove(&n);
        }
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::ProbeAcked { toward: y, rtt },
        });
        self.mark_unblocked(id, y, Unblocked::Ack, now);
        self.relearn(id, y, now);
    }

    /// A probe or ACK just named side `s`'s relay: if its media is already
    /// held as a candidate's, it ranks with a SIP source now and wins at once. Its latest
    /// held packet goes through the learning again (the earlier ones follow as the winner's).
    fn relearn(&mut self, id: StreamId, s: Side, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(s);
        if side.latched.is_some() {
            return;
        }
        let relay = side.relay_ip;
        let Some(i) = side
            .held
            .iter()
            .rposition(|(src, _)| src.ip().is_some() && src.ip() == relay)
        else {
            return;
        };
        let Some((src, payload)) = side.held.remove(i) else {
            return;
        };
        let local = side.local;
        self.handle_media(local, src, &payload, None, now);
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, ..))| *t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id, side, kind))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match kind {
                TimerKind::Blocking => self.on_blocking_timer(id, side, at, now),
                TimerKind::Probe => self.on_probe_timer(id, side, at, now),
                TimerKind::LearnEnd => self.on_learn_end(id, side, at),
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The learning window after signalling closes: a latched side now takes only its
    /// source, and the kernel drops the others.
    fn on_learn_end(&mut self, id: StreamId, x: Side, at: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(x);
        if side.learning_until != Some(at) {
            return; // a later signalling event reopened it
        }
        side.learning_until = None;
        if side.latched.is_some() {
            side.learner.reset();
        }
        self.sync_flows(id);
    }

    /// `x` has waited for `y` since its first packet.
    fn on_blocking_timer(&mut self, id: StreamId, x: Side, at: Instant, now: Instant) {
        let probing = self.cfg.probing;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let y = x.other();
        if stream.side(x).blocking_deadline != Some(at) {
            return; // stale timer
        }
        stream.side_mut(x).blocking_deadline = None;
        if stream.destination(y).is_some() {
            return; // resolved meanwhile
        }
        let after = stream
            .side(x)
            .first_packet
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        stream.side_mut(x).blocking_suspected = Some(after);
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::BlockingSuspected { near: x, after },
        });
        // Probing started with X's first packet; if it ended without an answer and the
        // call server named a relay, one more episode.
        let named = stream.side(y).next_relay.is_some();
        if probing && named && matches!(stream.side(y).probe, ProbePhase::Idle) {
            self.start_probe(id, y, now, false);
        }
    }

    fn on_probe_timer(&mut self, id: StreamId, y: Side, at: Instant, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        if side.probe_next != Some(at) {
            return;
        }
        side.probe_next = None;
        let ProbePhase::Probing { attempts } = side.probe else {
            return;
        };
        if attempts >= side.probe_max {
            side.probe = ProbePhase::Failed { attempts };
            for (n, _) in side.probe_nonces.drain(..) {
                self.by_nonce.remove(&n);
            }
            self.out.push_back(Output::Event {
                stream: id,
                event: Event::ProbeFailed {
                    toward: y,
                    attempts,
                },
            });
            return;
        }
        self.send_probe(id, y, attempts + 1, now);
    }

    /// Starts a probing episode toward side `y`: to its named next relay, or else to its
    /// signalled address at the deployment's probe port (fewer attempts: it may be a phone).
    /// Returns whether it started.
    fn start_probe(&mut self, id: StreamId, y: Side, now: Instant, forced: bool) -> bool {
        let (probe_port, named_attempts, implicit_attempts) = (
            self.cfg.probe_port,
            self.cfg.probe_attempts,
            self.cfg.implicit_probe_attempts,
        );
        let Some(stream) = self.streams.get_mut(&id) else {
            return false;
        };
        let side = stream.side_mut(y);
        let Some(remote) = side
            .remote
            .and_then(|r| r.socket_addr())
            .filter(|r| !r.ip().is_unspecified())
        else {
            return false;
        };
        let (to, max) = match side.next_relay {
            Some(r) => (r, named_attempts),
            None if probe_port != 0 => {
                (SocketAddr::new(remote.ip(), probe_port), implicit_attempts)
            }
            None => return false,
        };
        if max == 0
            || (!forced
                && matches!(
                    side.probe,
                    ProbePhase::Probing { .. } | ProbePhase::Acked { .. }
                ))
        {
            return false;
        }
        side.probe_to = Some(to);
        side.probe_max = max;
        for (n, _) in side.probe_nonces.drain(..) {
            self.by_nonce.remove(&n);
        }
        self.send_probe(id, y, 1, now);
        true
    }

    fn send_probe(&mut self, id: StreamId, y: Side, attempt: u32, now: Instant) {
        use rand::Rng;
        let nonce: u64 = self.rng.random();
        let rto = self.cfg.probe_rto * 2u32.saturating_pow(attempt - 1).min(64);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let tag = stream.cfg.session_tag;
        let side = stream.side_mut(y);
        let (Some(to), Some(target)) = (side.probe_to, side.remote) else {
            return;
        };
        side.probe = ProbePhase::Probing { attempts: attempt };
        side.probe_nonces.push((nonce, now));
        let next = now + rto;
        side.probe_next = Some(next);
        let msg = ProbeMessage {
            kind: Kind::Probe,
            nonce,
            timestamp_ms: 0, // the I/O side stamps the wall clock when it signs
            session: tag,
            target,
            sender: side.local,
            receiver: Endpoint::from(to),
            // The first attempt is signed (where the deployment has a secret); retries go
            // unsigned, so that a relay of another operator, whose secret differs, answers.
            unsigned: attempt > 1,
        };
        self.by_nonce.insert(nonce, (id, y));
        self.timers.push(Reverse((next, id, y, TimerKind::Probe)));
        self.out.push_back(Output::SendProbe { to, msg });
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::ProbeSent {
                toward: y,
                attempt,
                to,
            },
        });
    }

    fn cancel_probe(&mut self, id: StreamId, y: Side) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        if let ProbePhase::Probing { attempts } = side.probe {
            side.probe = ProbePhase::Cancelled { attempts };
        }
        side.probe_next = None;
        for (n, _) in side.probe_nonces.drain(..) {
            self.by_nonce.remove(&n);
        }
    }

    fn mark_unblocked(&mut self, id: StreamId, y: Side, by: Unblocked, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        if side.unblocked.is_none() {
            side.unblocked = Some(by);
            self.out.push_back(Output::Event {
                stream: id,
                event: Event::Unblocked { side: y, by },
            });
        }
        self.flush_held(id, y.other(), now);
        self.sync_flows(id);
    }

    /// Sends what `x` held toward `x.other()`, if its destination is known now.
    fn flush_held(&mut self, id: StreamId, x: Side, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let y = x.other();
        let Some(dst) = stream.destination(y) else {
            return;
        };
        // A side still learning holds candidates' packets: they go nowhere until one wins.
        if stream.cfg.latching[x.idx()] == Latching::Symmetric && stream.side(x).latched.is_none() {
            return;
        }
        let from = stream.side(y).local;
        let held: Vec<Vec<u8>> = stream.side_mut(x).held.drain(..).map(|(_, p)| p).collect();
        if held.is_empty() {
            return;
        }
        stream.side_mut(x).counters.sent += held.len() as u64;
        stream.side_mut(x).blocking_deadline = None;
        for payload in held {
            self.out.push_back(Output::SendMedia {
                from,
                to: dst,
                payload,
            });
        }
        self.note_sent(id, x, now);
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::Forwarding { from: x, to: dst },
        });
    }

    /// Emits the kernel flows that changed.
    fn sync_flows(&mut self, id: StreamId) {
        let kernel_forwarding = self.cfg.kernel_forwarding;
        let relatch = self.cfg.relatch_after.is_some();
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        for s in Side::BOTH {
            let spec = stream.flow_spec(s, kernel_forwarding, relatch);
            if stream.installed[s.idx()] != Some(spec) {
                stream.installed[s.idx()] = Some(spec);
                self.out.push_back(Output::Flow {
                    key: stream.side(s).local,
                    spec,
                });
            }
        }
    }
}

/// Holds a packet of `side`, within `cap`: when full, the oldest packet that is not the
/// learning leader's goes first (so a sprayer cannot push the likely winner's audio out).
fn hold(
    side: &mut SideState,
    from: Endpoint,
    payload: &[u8],
    cap: usize,
    leader: Option<Endpoint>,
) {
    if side.held.len() >= cap.max(1) {
        let victim = side
            .held
            .iter()
            .position(|(s, _)| Some(*s) != leader)
            .unwrap_or(0);
        side.held.remove(victim);
        side.counters.held_dropped += 1;
    }
    side.held.push_back((from, payload.to_vec()));
}

/// A source that is never latched, whatever signalling says: loopback (also as an
/// IPv4-mapped IPv6 address), unspecified, `0.0.0.0/8`, multicast, limited broadcast, port 0.
/// The daemon adds what only the routing table knows (the relay's own and broadcast
/// addresses).
#[must_use]
pub fn is_martian(e: &Endpoint) -> bool {
    if e.port() == 0 {
        return true;
    }
    match e.ip() {
        None => true,
        Some(IpAddr::V4(a)) => martian_v4(a),
        Some(IpAddr::V6(a)) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.to_ipv4_mapped().is_some_and(martian_v4)
        }
    }
}

fn martian_v4(a: std::net::Ipv4Addr) -> bool {
    a.is_loopback() || a.octets()[0] == 0 || a.is_multicast() || a.is_broadcast()
}

#[cfg(test)]
mod tests;
