//! The relay's media logic as a sans-IO state machine: latching, blocking detection, and the
//! probe/ACK exchange that breaks the deadlock of two relays in series.
//!
//! Events go in ([`Engine::handle_media`], [`Engine::handle_probe`], [`Engine::handle_ack`],
//! [`Engine::handle_timeout`] and the stream commands);
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
//! X sends (the learning rule, `learning.rs`), accepts X's packets only from there, and sends
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
mod media;
mod probing;
mod types;

pub use learning::{Expect, LearnConfig, Learner, Rank, SprayConfig, Sprayers, Verdict};
pub use types::{
    EngineConfig, EngineCounters, Event, FarEnd, FarSide, Latching, Output, ProbePhase, Side,
    SideCounters, SideStatus, StreamConfig, StreamError, StreamUpdate, UNBLOCK_BUCKETS_MS,
    Unblocked,
};

use proxy_common::{Endpoint, FlowState};

use crate::flow::{FlowSpec, MismatchPolicy};

pub type StreamId = u64;

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
