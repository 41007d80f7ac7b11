//! Calls as the call server sees them, on top of the session engine: offer/answer (RFC 3264)
//! keyed by Call-ID and tags, port allocation, SDP rewriting, teardown and timeouts. Sans-IO:
//! typed requests ([`Request`]) in, typed replies ([`Reply`]) out; [`super::reply`] writes
//! them as ng dictionaries. The session engine is not
//! ours: the daemon owns it beside the calls and lends it to each command that creates,
//! updates, removes or reads streams, and the kernel's counters come in as a [`KernelView`]
//! for the commands that report them.
//!
//! One call has two sides: A, whose tag came with the first offer, and B. Each m= line gets a
//! port pair (RTP even, RTCP next) facing each side; its RTP and its RTCP are each a stream of
//! the engine. The SDP that goes to a side advertises the relay's address and ports facing that
//! side.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use proxy_common::{Endpoint, FlowCounters, FlowState};

pub use super::error::NgError;
use super::{
    bencode::Dict,
    command::{Command, CommandKind, Delete, OfferAnswer, Probe, Request},
    flags::{Family, Options},
    reply::{
        self, CallReport, CallState, ListedCall, ListedMedia, MediaReport, Reply, SideReport,
        Statistics, StreamReport,
    },
    sdp::{self, MediaRewrite},
};
use crate::session::{Engine, Latching, Side, StreamConfig, StreamId, StreamUpdate};

/// A local address the relay owns, with rtpengine's `--interface NAME/ADDR[!ADVERTISED]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addr: IpAddr,
    /// Written into SDP instead of `addr` (behind a 1:1 NAT).
    pub advertised: Option<IpAddr>,
}

impl Interface {
    /// `NAME/ADDR[!ADV]` or just `ADDR`.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong with `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, rest) = match s.split_once('/') {
            Some((n, r)) if !n.contains(':') || n.parse::<IpAddr>().is_err() => (n.to_owned(), r),
            _ => ("default".to_owned(), s),
        };
        let (addr, adv) = match rest.split_once('!') {
            Some((a, v)) => (a, Some(v)),
            None => (rest, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("bad interface address in {s:?}"))?;
        let advertised = adv
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("bad advertised address in {s:?}"))
            })
            .transpose()?;
        Ok(Self {
            name,
            addr,
            advertised,
        })
    }

    fn sdp_addr(&self) -> IpAddr {
        self.advertised.unwrap_or(self.addr)
    }
}

#[derive(Clone, Debug)]
pub struct CallsConfig {
    pub interfaces: Vec<Interface>,
    pub port_min: u16,
    pub port_max: u16,
    /// The deployment's probe port, the default for a next relay given without one.
    pub probe_port: u16,
    pub delete_delay: Duration,
    pub media_timeout: Duration,
    /// How long an ended call stays visible to `query` and `list`.
    pub keep_ended: Duration,
    /// Calls held at once; an offer for one more gets rtpengine's load-limit answer.
    pub max_calls: usize,
    /// Media sections one offer or answer may carry.
    pub max_media: usize,
    /// Kernel flows the dataplane holds (its `--max-flows`); an offer that would need more
    /// fails instead of advertising ports that have no flow.
    pub max_flows: usize,
}

/// Whether the party that sent this media section takes media at its signalled address
/// before it speaks: not if it said `sendonly` or `inactive`.
fn receives(m: &sdp::Media) -> bool {
    !matches!(m.direction.as_deref(), Some("sendonly" | "inactive"))
}

/// The longest `delete-delay` taken; larger ones are cut to it (rtpengine's default is 30 s).
pub const MAX_DELETE_DELAY: Duration = Duration::from_hours(1);
/// The most calls one `list` reply names, whatever `limit` asks: a reply is one datagram.
pub const MAX_LIST: usize = 256;
/// Kernel flows per media section: RTP and RTCP, one flow per side each.
const FLOWS_PER_MEDIA: usize = 4;

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            // rtpengine's default range.
            port_min: 30_000,
            port_max: 40_000,
            probe_port: proxy_common::probe::DEFAULT_PORT,
            // rtpengine's defaults: `delete-delay` 30 s, `timeout` 60 s.
            delete_delay: Duration::from_secs(30),
            media_timeout: Duration::from_mins(1),
            keep_ended: Duration::from_secs(30),
            // Far above what one relay core carries in userspace signalling (~2,300 calls set up
            // per second) times a call's lifetime in tests; operators size it to their box.
            max_calls: 50_000,
            // Audio, video and a few more: no SIP device offers more m= lines.
            max_media: 16,
            max_flows: proxy_common::flow::DEFAULT_MAX_FLOWS as usize,
        }
    }
}

/// What the kernel counted on one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFlow {
    pub counters: FlowCounters,
    /// When the kernel last accepted a packet on the flow.
    pub last_seen: Option<Instant>,
}

/// The kernel's view of a flow, by the relay endpoint that keys it, read when a command
/// reports it; `&|_| None` where there is no kernel (tests, fuzzing).
pub type KernelView<'a> = &'a dyn Fn(&Endpoint) -> Option<KernelFlow>;

fn counters_of(kernel: KernelView<'_>, key: &Endpoint) -> FlowCounters {
    kernel(key).map(|k| k.counters).unwrap_or_default()
}

fn last_seen_of(kernel: KernelView<'_>, key: &Endpoint) -> Option<Instant> {
    kernel(key).and_then(|k| k.last_seen)
}

/// Even ports for RTP in `[min, max)`, each with the odd port after it for RTCP. A pair is
/// picked at random among the free ones, so that the next call's ports cannot be guessed from
/// this one's (RTP Bleed's spray works best against sequential ports).
struct PortPool {
    min: u16,
    pairs: Vec<bool>,
    used: usize,
}

impl PortPool {
    fn new(min: u16, max: u16) -> Self {
        let min = min.saturating_add(min % 2);
        let n = usize::from(max.saturating_sub(min)) / 2;
        Self {
            min,
            pairs: vec![false; n],
            used: 0,
        }
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "i counts pairs within the pool's u16 port range"
    )]
    fn alloc(&mut self, rng: &mut impl rand::Rng) -> Option<u16> {
        let n = self.pairs.len();
        if self.used >= n {
            return None;
        }
        // A random start, then the next free pair: uniform enough, and bounded work.
        let start = rng.random_range(0..n);
        for k in 0..n {
            let i = (start + k) % n;
            if !self.pairs[i] {
                self.pairs[i] = true;
                self.used += 1;
                return Some(self.min + 2 * i as u16);
            }
        }
        None
    }

    fn free(&mut self, port: u16) {
        if port < self.min {
            return;
        }
        let i = usize::from((port - self.min) / 2);
        if let Some(p) = self.pairs.get_mut(i)
            && *p
        {
            *p = false;
            self.used -= 1;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Deleted,
    Timeout,
}

#[derive(Debug)]
struct CallMedia {
    kind: String,
    proto: String,
    codec: Option<String>,
    /// RTP port facing side A and side B; RTCP is the next one. 0: none (disabled media).
    ports: [u16; 2],
    rtp: Option<StreamId>,
    rtcp: Option<StreamId>,
    rtcp_mux: [bool; 2],
    timed_out: bool,
}

#[derive(Debug)]
struct Call {
    created: SystemTime,
    last_signal: SystemTime,
    tags: [Option<String>; 2],
    via_branch: Option<String>,
    ifaces: [usize; 2],
    medias: Vec<CallMedia>,
    /// Options of the last signal per side (what the SDP from that side asked for).
    asymmetric: [bool; 2],
    strict_source: bool,
    delete_at: Option<Instant>,
    ended: Option<(Ended, Instant)>,
}

/// Counters for `statistics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NgCounters {
    /// By [`CommandKind::index`].
    pub commands: [u64; CommandKind::ALL.len()],
    pub errors: u64,
    pub managed_sessions: u64,
    pub timeout_sessions: u64,
    pub deleted_sessions: u64,
}

/// The RTP and RTCP endpoints one side signalled for a media section (none while on hold).
struct Remotes {
    rtp: Option<Endpoint>,
    rtcp: Option<Endpoint>,
}

impl Remotes {
    fn of(m: &sdp::Media, o: &Options) -> Self {
        let source_ip = |ip: IpAddr| {
            if o.sip_source_address {
                o.received_from.unwrap_or(ip)
            } else {
                ip
            }
        };
        let rtcp = m.rtcp_endpoint();
        Self {
            rtp: (!m.is_held()).then(|| Endpoint::from(SocketAddr::new(source_ip(m.addr), m.port))),
            rtcp: (!m.is_held())
                .then(|| Endpoint::from(SocketAddr::new(source_ip(rtcp.ip()), rtcp.port()))),
        }
    }
}

/// What one offer or answer asks of its call's streams, worked out once for all its media.
struct Signal<'a> {
    call_id: &'a str,
    /// The side the SDP came from.
    sender: Side,
    /// Next relays by side, with their probe ports.
    relays: [Option<SocketAddr>; 2],
    session_tag: u64,
    latching: [Latching; 2],
    strict_source: bool,
    o: &'a Options,
    now: Instant,
}

/// Every call the relay holds, its ports, and the ng counters. The streams of its calls live
/// in the session engine that each command is lent.
pub struct Calls {
    cfg: CallsConfig,
    /// The host's own addresses: never a media destination, unless they name one of this
    /// relay's own allocated endpoints (a call that loops through the relay twice).
    local_addrs: std::collections::HashSet<IpAddr>,
    #[expect(
        clippy::struct_field_names,
        reason = "the calls of `Calls`, keyed by Call-ID"
    )]
    calls: HashMap<String, Call>,
    pools: Vec<PortPool>,
    /// Picks ports; seeded by the caller (from the OS in the daemon).
    rng: rand::rngs::StdRng,
    started: SystemTime,
    counters: NgCounters,
}

impl Calls {
    #[must_use]
    #[expect(
        clippy::unusual_byte_groupings,
        reason = "grouped as words: 5eed 0f 9047"
    )]
    pub fn new(cfg: CallsConfig, seed: u64) -> Self {
        use rand::SeedableRng;
        let pools = cfg
            .interfaces
            .iter()
            .map(|_| PortPool::new(cfg.port_min, cfg.port_max))
            .collect();
        let local_addrs = cfg
            .interfaces
            .iter()
            .flat_map(|i| [Some(i.addr), i.advertised])
            .flatten()
            .collect();
        Self {
            local_addrs,
            cfg,
            calls: HashMap::new(),
            pools,
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_0f_9047),
            started: SystemTime::now(),
            counters: NgCounters::default(),
        }
    }

    /// Makes every call's last signalling `by` older (the timeout reads the wall clock).
    #[cfg(test)]
    pub(crate) fn age_signalling_for_tests(&mut self, by: Duration) {
        for c in self.calls.values_mut() {
            c.last_signal = c.last_signal.checked_sub(by).unwrap_or(c.last_signal);
        }
    }

    /// The host's addresses as the daemon sees them (besides the configured interfaces').
    pub fn set_local_addresses(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        self.local_addrs = self
            .cfg
            .interfaces
            .iter()
            .flat_map(|i| [Some(i.addr), i.advertised])
            .flatten()
            .chain(addrs)
            .collect();
    }

    /// An SDP endpoint the relay may send to: not loopback, multicast, broadcast or
    /// unspecified, and not one of the host's own addresses unless it is one of this relay's
    /// allocated endpoints, where the call is joined inside the relay.
    fn check_sdp_endpoint(&self, engine: &Engine, ep: Endpoint) -> Result<(), NgError> {
        if crate::session::is_martian(&ep) {
            return Err(NgError::MartianSdpAddress(ep.ip()));
        }
        let own = ep.ip().is_some_and(|i| self.local_addrs.contains(&i));
        if own && engine.stream_of(&ep).is_none() {
            return Err(NgError::OwnSdpAddress(ep.ip()));
        }
        Ok(())
    }

    #[must_use]
    pub fn config(&self) -> &CallsConfig {
        &self.cfg
    }

    #[must_use]
    pub fn call_count(&self) -> usize {
        self.calls.values().filter(|c| c.ended.is_none()).count()
    }

    #[must_use]
    pub fn ports_in_use(&self) -> usize {
        self.pools.iter().map(|p| p.used).sum()
    }

    /// Parses, runs and renders one ng request; the reply always has `result` (and
    /// `error-reason` on error).
    pub fn handle(
        &mut self,
        engine: &mut Engine,
        req: &Dict,
        now: Instant,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> Dict {
        self.respond(engine, &Request::parse(req), now, wall, kernel)
    }

    /// Runs a parsed request and renders its reply.
    pub fn respond(
        &mut self,
        engine: &mut Engine,
        req: &Request,
        now: Instant,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> Dict {
        let outcome = self.execute(engine, req, now, wall, kernel);
        reply::render(req, outcome, wall)
    }

    /// Runs a parsed request: counted under its command even when malformed, and as an error
    /// when it fails.
    ///
    /// # Errors
    ///
    /// The [`NgError`] that the reply reports to the call server.
    pub fn execute(
        &mut self,
        engine: &mut Engine,
        req: &Request,
        now: Instant,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> Result<Reply, NgError> {
        if let Some(k) = req.kind {
            self.counters.commands[k.index()] += 1;
        }
        let o = &req.options;
        let outcome = match &req.command {
            Err(e) => Err(e.clone()),
            Ok(Command::Ping) => Ok(Reply::Pong),
            Ok(Command::Offer(r)) => self.offer_answer(engine, r, o, true, now, wall),
            Ok(Command::Answer(r)) => self.offer_answer(engine, r, o, false, now, wall),
            Ok(Command::Delete(r)) => self.delete(engine, r, o, now, kernel),
            Ok(Command::Query { call_id }) => self.query(engine, call_id, kernel),
            Ok(Command::List { limit }) => Ok(Reply::List(self.list(engine, *limit))),
            Ok(Command::Statistics) => Ok(Reply::Statistics(self.statistics(engine, wall, kernel))),
            Ok(Command::Probe(r)) => self.probe(engine, r, o, now).map(Reply::Probes),
        };
        if outcome.is_err() {
            self.counters.errors += 1;
        }
        outcome
    }

    fn iface_for(&self, name: Option<&str>, family: Option<Family>) -> Result<usize, NgError> {
        if self.cfg.interfaces.is_empty() {
            return Err(NgError::NoInterface);
        }
        let fam_ok = |i: &Interface| match family {
            Some(Family::V4) => i.addr.is_ipv4(),
            Some(Family::V6) => i.addr.is_ipv6(),
            None => true,
        };
        if let Some(n) = name
            && let Some(i) = self
                .cfg
                .interfaces
                .iter()
                .position(|i| i.name == n && fam_ok(i))
        {
            return Ok(i);
        }
        self.cfg
            .interfaces
            .iter()
            .position(fam_ok)
            .ok_or(NgError::NoInterfaceOfFamily)
    }

    /// An offer or an answer: the call and its streams follow the SDP, and the SDP comes back
    /// rewritten for the side that receives it.
    fn offer_answer(
        &mut self,
        engine: &mut Engine,
        r: &OfferAnswer,
        o: &Options,
        is_offer: bool,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Reply, NgError> {
        let parsed = sdp::parse(&r.sdp).map_err(NgError::BadSdp)?;
        self.admit(engine, &r.call_id, parsed.media.len(), is_offer)?;
        let new_call = !self.calls.contains_key(&r.call_id);
        if new_call {
            self.open_call(r, o, wall)?;
        }
        let sender = self.take_signal(r, o, is_offer, wall)?;
        let call = self.calls.get(&r.call_id).ok_or(NgError::UnknownCallId)?;
        let probe_port = self.cfg.probe_port;
        let mut relays: [Option<SocketAddr>; 2] = [None, None];
        relays[sender as usize] = o.next_relay.map(|x| x.with_default_port(probe_port));
        relays[sender.other() as usize] = o
            .next_relay_recipient
            .map(|x| x.with_default_port(probe_port));
        let signal = Signal {
            call_id: &r.call_id,
            sender,
            relays,
            session_tag: tag_of(&r.call_id),
            latching: call.asymmetric.map(|a| {
                if a {
                    Latching::Asymmetric
                } else {
                    Latching::Symmetric
                }
            }),
            strict_source: call.strict_source,
            o,
            now,
        };
        let mut created = Vec::new();
        if let Err(e) = self.apply_media(engine, &parsed, &signal, &mut created) {
            // Nothing allocated for this request survives a failure. Last first: releasing a
            // media section truncates the call's list there, which would hide later ones.
            for (media, ports) in created.into_iter().rev() {
                self.release_media(engine, &r.call_id, media, ports);
            }
            if new_call {
                self.calls.remove(&r.call_id);
                self.counters.managed_sessions -= 1;
            }
            return Err(e);
        }
        self.rewrite_for(&r.call_id, &parsed, sender.other(), o)
            .map(Reply::Sdp)
    }

    /// Whether the relay takes this offer or answer at all, before anything is allocated.
    fn admit(
        &self,
        engine: &Engine,
        call_id: &str,
        medias: usize,
        is_offer: bool,
    ) -> Result<(), NgError> {
        if medias > self.cfg.max_media {
            return Err(NgError::TooManyMedia {
                got: medias,
                max: self.cfg.max_media,
            });
        }
        let known = self.calls.get(call_id);
        if !is_offer && known.is_none() {
            return Err(NgError::UnknownCallId);
        }
        if known.is_none() && self.call_count() >= self.cfg.max_calls {
            return Err(NgError::LoadLimit);
        }
        let new_medias = medias.saturating_sub(known.map_or(0, |c| c.medias.len()));
        let flows_now = engine.stream_count() * 2;
        if flows_now + new_medias * FLOWS_PER_MEDIA > self.cfg.max_flows {
            return Err(NgError::LoadLimit);
        }
        Ok(())
    }

    /// A call's first offer: its record, with the interfaces its sides face.
    fn open_call(&mut self, r: &OfferAnswer, o: &Options, wall: SystemTime) -> Result<(), NgError> {
        let a = self.iface_for(o.direction[0].as_deref(), None)?;
        let b = self.iface_for(o.direction[1].as_deref(), o.address_family)?;
        self.calls.insert(
            r.call_id.clone(),
            Call {
                created: wall,
                last_signal: wall,
                tags: [Some(r.from_tag.clone()), r.to_tag.clone()],
                via_branch: r.via_branch.clone(),
                ifaces: [a, b],
                medias: Vec::new(),
                asymmetric: [false; 2],
                strict_source: false,
                delete_at: None,
                ended: None,
            },
        );
        self.counters.managed_sessions += 1;
        Ok(())
    }

    /// Which side sent this SDP, by its tag; the call takes the signal's tags and options.
    fn take_signal(
        &mut self,
        r: &OfferAnswer,
        o: &Options,
        is_offer: bool,
        wall: SystemTime,
    ) -> Result<Side, NgError> {
        // rtpengine's convention: an answer's SDP comes from the to-tag's side.
        let sender_tag = if is_offer {
            r.from_tag.as_str()
        } else {
            r.to_tag.as_deref().unwrap_or_default()
        };
        let call = self
            .calls
            .get_mut(&r.call_id)
            .ok_or(NgError::UnknownCallId)?;
        if call.ended.is_some() {
            return Err(NgError::CallEnded);
        }
        let sender = if call.tags[0].as_deref() == Some(sender_tag) {
            Side::A
        } else {
            // Side B's tag, its first one, or a new tag on an existing call (forking): it
            // takes over side B.
            call.tags[1] = Some(sender_tag.to_owned());
            Side::B
        };
        let recipient = sender.other();
        if let Some(t) = &r.to_tag
            && call.tags[recipient as usize].is_none()
        {
            call.tags[recipient as usize] = Some(t.clone());
        }
        call.last_signal = wall;
        call.delete_at = None;
        call.asymmetric[sender as usize] = o.asymmetric;
        call.strict_source |= o.strict_source;
        Ok(sender)
    }

    /// The SDP for `recipient`: the relay's address and ports facing it.
    fn rewrite_for(
        &self,
        call_id: &str,
        parsed: &sdp::Sdp<'_>,
        recipient: Side,
        o: &Options,
    ) -> Result<Vec<u8>, NgError> {
        let call = self.calls.get(call_id).ok_or(NgError::UnknownCallId)?;
        let iface = &self.cfg.interfaces[call.ifaces[recipient as usize]];
        let addr = o.media_address.unwrap_or_else(|| iface.sdp_addr());
        let rw = sdp::Rewrite {
            addr,
            media: call
                .medias
                .iter()
                .take(parsed.media.len())
                .map(|m| MediaRewrite {
                    rtp_port: m.ports[recipient as usize],
                    rtcp_port: m.ports[recipient as usize].wrapping_add(1),
                    rtcp_mux: m.rtcp_mux[recipient as usize],
                })
                .collect(),
            replace_origin: o.replace_origin,
            replace_session_connection: o.replace_session_connection,
            replace_zero_address: o.replace_zero_address,
            remove_ice: o.ice_remove,
            rtcp_attr: o.rtcp_attr,
        };
        Ok(sdp::rewrite(parsed, &rw))
    }

    /// Creates or updates the streams of each m= line. `created` collects what this request
    /// allocated, so that a failure can undo it.
    fn apply_media(
        &mut self,
        engine: &mut Engine,
        parsed: &sdp::Sdp<'_>,
        sig: &Signal<'_>,
        created: &mut Vec<(usize, [u16; 2])>,
    ) -> Result<(), NgError> {
        let s = sig.sender as usize;
        for (i, m) in parsed.media.iter().enumerate() {
            let remote = Remotes::of(m, sig.o);
            if !m.is_disabled() {
                for ep in [remote.rtp, remote.rtcp].into_iter().flatten() {
                    self.check_sdp_endpoint(engine, ep)?;
                }
            }
            let call = self
                .calls
                .get_mut(sig.call_id)
                .ok_or(NgError::UnknownCallId)?;
            let Some(existing) = call.medias.get_mut(i) else {
                self.add_media(engine, i, m, &remote, sig, created)?;
                continue;
            };
            existing.rtcp_mux[s] = m.rtcp_mux;
            existing.rtcp_mux[1 - s] = mux_decision(&sig.o.rtcp_mux, m.rtcp_mux);
            if !m.is_disabled() && existing.rtp.is_some() {
                update_streams(engine, [existing.rtp, existing.rtcp], m, &remote, sig)?;
            }
        }
        let call = self.calls.get(sig.call_id).ok_or(NgError::UnknownCallId)?;
        if call.medias.len() < parsed.media.len() {
            return Err(NgError::IncompleteSdp);
        }
        Ok(())
    }

    /// A media section the call did not have: its ports and its RTP and RTCP streams (none
    /// for a disabled one).
    #[expect(
        clippy::similar_names,
        reason = "rtp_ and rtcp_ name the two streams of one media section"
    )]
    fn add_media(
        &mut self,
        engine: &mut Engine,
        i: usize,
        m: &sdp::Media,
        remote: &Remotes,
        sig: &Signal<'_>,
        created: &mut Vec<(usize, [u16; 2])>,
    ) -> Result<(), NgError> {
        let s = sig.sender as usize;
        let mut media = CallMedia {
            kind: m.kind.clone(),
            proto: m.proto.clone(),
            codec: m.codec.clone(),
            ports: [0, 0],
            rtp: None,
            rtcp: None,
            rtcp_mux: [false; 2],
            timed_out: false,
        };
        media.rtcp_mux[s] = m.rtcp_mux;
        media.rtcp_mux[1 - s] = mux_decision(&sig.o.rtcp_mux, m.rtcp_mux);
        let call = self
            .calls
            .get_mut(sig.call_id)
            .ok_or(NgError::UnknownCallId)?;
        if m.is_disabled() {
            call.medias.push(media);
            return Ok(());
        }
        let ifaces = call.ifaces;
        let ports = self.alloc_ports(ifaces)?;
        created.push((i, ports));
        let local = |side: usize, port: u16| {
            Endpoint::from(SocketAddr::new(
                self.cfg.interfaces[ifaces[side]].addr,
                port,
            ))
        };
        let mut rtp_cfg = StreamConfig::new(local(0, ports[0]), local(1, ports[1]));
        rtp_cfg.latching = sig.latching;
        rtp_cfg.strict_source = sig.strict_source;
        rtp_cfg.session_tag = sig.session_tag;
        rtp_cfg.next_relay = sig.relays;
        rtp_cfg.remote[s] = remote.rtp;
        rtp_cfg.sip_source[s] = sig.o.received_from;
        rtp_cfg.receives[s] = receives(m);
        let mut rtcp_cfg = StreamConfig::new(local(0, ports[0] + 1), local(1, ports[1] + 1));
        rtcp_cfg.latching = sig.latching;
        rtcp_cfg.strict_source = sig.strict_source;
        rtcp_cfg.session_tag = sig.session_tag;
        rtcp_cfg.remote[s] = remote.rtcp;
        rtcp_cfg.sip_source[s] = sig.o.received_from;
        media.ports = ports;
        let rtp_id = engine.add_stream(rtp_cfg)?;
        media.rtp = Some(rtp_id);
        rtcp_cfg.rtp_stream = Some(rtp_id);
        let call = self
            .calls
            .get_mut(sig.call_id)
            .ok_or(NgError::UnknownCallId)?;
        call.medias.push(media);
        let rtcp_id = engine.add_stream(rtcp_cfg)?;
        if let Some(last) = call.medias.last_mut() {
            last.rtcp = Some(rtcp_id);
        }
        Ok(())
    }

    /// A port pair facing each side of a call.
    fn alloc_ports(&mut self, ifaces: [usize; 2]) -> Result<[u16; 2], NgError> {
        let mut ports = [0u16; 2];
        for side in [0, 1] {
            let Some(p) = self.pools[ifaces[side]].alloc(&mut self.rng) else {
                // The first side's pair is not in the request's allocations yet: give it
                // back here.
                if side == 1 {
                    self.pools[ifaces[0]].free(ports[0]);
                }
                return Err(NgError::OutOfPorts);
            };
            ports[side] = p;
        }
        Ok(ports)
    }

    /// Undoes the allocation of media `i` (a failed request).
    fn release_media(&mut self, engine: &mut Engine, call_id: &str, i: usize, ports: [u16; 2]) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let ifaces = call.ifaces;
        if let Some(m) = call.medias.get_mut(i) {
            for id in [m.rtp.take(), m.rtcp.take()].into_iter().flatten() {
                let _ = engine.remove_stream(id);
            }
        }
        call.medias.truncate(i);
        for side in 0..2 {
            if ports[side] != 0 {
                self.pools[ifaces[side]].free(ports[side]);
            }
        }
    }

    /// Tears a call's media down: streams, flows and ports. The record stays for `query`.
    /// Removes media streams from the engine and gives their port pairs back to the pools.
    fn release(
        &mut self,
        engine: &mut Engine,
        ifaces: [usize; 2],
        streams: Vec<StreamId>,
        ports: Vec<[u16; 2]>,
    ) {
        for id in streams {
            let _ = engine.remove_stream(id);
        }
        for p in ports {
            for side in 0..2 {
                self.pools[ifaces[side]].free(p[side]);
            }
        }
    }

    fn teardown(&mut self, engine: &mut Engine, call_id: &str, why: Ended, now: Instant) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if call.ended.is_some() {
            return;
        }
        call.ended = Some((why, now));
        let ifaces = call.ifaces;
        let mut to_free = Vec::new();
        let mut streams = Vec::new();
        for m in &mut call.medias {
            streams.extend([m.rtp.take(), m.rtcp.take()].into_iter().flatten());
            if m.ports != [0, 0] {
                to_free.push(m.ports);
            }
        }
        self.release(engine, ifaces, streams, to_free);
        match why {
            Ended::Deleted => self.counters.deleted_sessions += 1,
            Ended::Timeout => self.counters.timeout_sessions += 1,
        }
    }

    fn delete(
        &mut self,
        engine: &mut Engine,
        r: &Delete,
        o: &Options,
        now: Instant,
        kernel: KernelView<'_>,
    ) -> Result<Reply, NgError> {
        let tags_match = |call: &Call| {
            [&r.from_tag, &r.to_tag]
                .into_iter()
                .flatten()
                .all(|t| call.tags.iter().flatten().any(|c| c == t))
        };
        let found = self
            .calls
            .get(&r.call_id)
            .is_some_and(|c| c.ended.is_none() && tags_match(c));
        if !found {
            return if o.fatal {
                Err(NgError::CallNotFound)
            } else {
                Ok(Reply::NothingToDelete)
            };
        }
        let report = if r.from_tag.is_some() {
            self.report(engine, &r.call_id, kernel)
        } else {
            None
        };
        // Any integer a client sends is taken, within bounds: negative means the default,
        // beyond an hour means an hour.
        let delay = match o.delete_delay {
            Some(d) if d >= 0 => Duration::from_secs(d.unsigned_abs()).min(MAX_DELETE_DELAY),
            _ => self.cfg.delete_delay,
        };
        if delay.is_zero() {
            self.teardown(engine, &r.call_id, Ended::Deleted, now);
            self.calls.remove(&r.call_id);
        } else if let Some(call) = self.calls.get_mut(&r.call_id) {
            call.delete_at = Some(now.checked_add(delay).unwrap_or(now));
        }
        Ok(Reply::Deleted(report))
    }

    fn query(
        &self,
        engine: &Engine,
        call_id: &str,
        kernel: KernelView<'_>,
    ) -> Result<Reply, NgError> {
        self.report(engine, call_id, kernel)
            .map(Reply::Query)
            .ok_or(NgError::UnknownCallId)
    }

    /// `query`'s view of a call, ended or not.
    fn report(&self, engine: &Engine, call_id: &str, kernel: KernelView<'_>) -> Option<CallReport> {
        let call = self.calls.get(call_id)?;
        let state = match call_state(call) {
            // `query` has no partial state: a call with live media is active.
            CallState::PartlyTimedOut => CallState::Active,
            s => s,
        };
        Some(CallReport {
            created: call.created,
            last_signal: call.last_signal,
            sides: Side::BOTH.map(|side| side_report(engine, call, side, kernel)),
            state,
        })
    }

    fn list(&self, engine: &Engine, limit: usize) -> Vec<ListedCall> {
        let mut ids: Vec<&String> = self.calls.keys().collect();
        ids.sort();
        ids.truncate(limit.min(MAX_LIST));
        ids.into_iter()
            .map(|id| {
                let c = &self.calls[id];
                ListedCall {
                    call_id: id.clone(),
                    state: call_state(c),
                    media: c
                        .medias
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| {
                            let [a, b] = engine.status(m.rtp?)?;
                            Some(ListedMedia {
                                index: i,
                                far_end: [a.far_end, b.far_end],
                                unblocked_after: [a.unblocked_after, b.unblocked_after],
                            })
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Starts probing toward a call's next relays now: how many streams do.
    fn probe(
        &mut self,
        engine: &mut Engine,
        r: &Probe,
        o: &Options,
        now: Instant,
    ) -> Result<usize, NgError> {
        let call = self
            .calls
            .get(&r.call_id)
            .filter(|c| c.ended.is_none())
            .ok_or(NgError::UnknownCallId)?;
        // The side to probe toward: the one with `from-tag`, or every side with a next relay.
        let sides: Vec<Side> = match &r.from_tag {
            Some(t) => vec![match call.tags.iter().position(|c| c.as_ref() == Some(t)) {
                Some(0) => Side::A,
                Some(_) => Side::B,
                None => return Err(NgError::UnknownTag),
            }],
            None => Side::BOTH.to_vec(),
        };
        let relay = o
            .next_relay
            .map(|x| x.with_default_port(self.cfg.probe_port));
        let streams: Vec<StreamId> = call.medias.iter().filter_map(|m| m.rtp).collect();
        let mut probed = 0usize;
        let mut last_err = None;
        for id in streams {
            for &side in &sides {
                if let Some(x) = relay {
                    let mut upd = StreamUpdate::default();
                    upd.next_relay[side as usize] = Some(x);
                    let _ = engine.update_stream(id, &upd, now);
                }
                match engine.unblock(id, side, true, now) {
                    Ok(()) => probed += 1,
                    Err(e) => last_err = Some(e),
                }
            }
        }
        if probed == 0 {
            return Err(last_err.map_or(NgError::NoMediaToProbe, NgError::CannotProbe));
        }
        Ok(probed)
    }

    fn statistics(&self, engine: &Engine, wall: SystemTime, kernel: KernelView<'_>) -> Statistics {
        let mut st = Statistics {
            uptime: wall.duration_since(self.started).unwrap_or_default(),
            sessions: self.call_count(),
            ports_in_use: self.ports_in_use(),
            managed_sessions: self.counters.managed_sessions,
            timeout_sessions: self.counters.timeout_sessions,
            deleted_sessions: self.counters.deleted_sessions,
            commands: self.counters.commands,
            errors: self.counters.errors,
            ..Statistics::default()
        };
        for id in engine.stream_ids() {
            let Some(sides) = engine.status(id) else {
                continue;
            };
            let mut forwarding = true;
            for s in &sides {
                let k = counters_of(kernel, &s.local);
                st.kernel_packets += k.fwd_packets;
                st.kernel_bytes += k.fwd_bytes;
                st.user_packets += s.counters.sent;
                st.user_bytes += s.counters.bytes;
                forwarding &= s.state == FlowState::Forward;
            }
            if forwarding {
                st.media_kernel += 1;
            } else {
                st.media_user += 1;
            }
        }
        st
    }

    /// Ends delayed deletes and idle media; call about once a second.
    pub fn housekeeping(&mut self, engine: &mut Engine, now: Instant, kernel: KernelView<'_>) {
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.ended.is_none() && c.delete_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.teardown(engine, &id, Ended::Deleted, now);
            self.calls.remove(&id);
        }
        let expired: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.ended
                    .is_some_and(|(_, at)| now.saturating_duration_since(at) >= self.cfg.keep_ended)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.calls.remove(&id);
        }
        let timeout = self.cfg.media_timeout;
        let ids: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.ended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let signal_age = {
                let c = &self.calls[&id];
                SystemTime::now()
                    .duration_since(c.last_signal)
                    .unwrap_or_default()
            };
            let mut idle_medias = Vec::new();
            for (i, m) in self.calls[&id].medias.iter().enumerate() {
                if m.timed_out || m.rtp.is_none() {
                    continue;
                }
                let last = [m.rtp, m.rtcp]
                    .into_iter()
                    .flatten()
                    .filter_map(|sid| engine.status(sid))
                    .flat_map(|st| st.into_iter().map(|s| last_seen_of(kernel, &s.local)))
                    .flatten()
                    .max();
                let idle = match last {
                    Some(t) => now.saturating_duration_since(t),
                    None => signal_age,
                };
                if idle >= timeout {
                    idle_medias.push(i);
                }
            }
            // A call with no live media at all (every m= line disabled, or none) would
            // otherwise never end: it times out on its signalling's age.
            let live = self.calls[&id]
                .medias
                .iter()
                .any(|m| !m.timed_out && m.rtp.is_some());
            if !live && signal_age >= timeout {
                self.teardown(engine, &id, Ended::Timeout, now);
                continue;
            }
            self.time_out_medias(engine, &id, &idle_medias, now);
        }
    }

    fn time_out_medias(
        &mut self,
        engine: &mut Engine,
        call_id: &str,
        idle: &[usize],
        now: Instant,
    ) {
        if idle.is_empty() {
            return;
        }
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let ifaces = call.ifaces;
        let mut streams = Vec::new();
        let mut ports = Vec::new();
        for &i in idle {
            let m = &mut call.medias[i];
            m.timed_out = true;
            streams.extend([m.rtp.take(), m.rtcp.take()].into_iter().flatten());
            ports.push(std::mem::take(&mut m.ports));
        }
        let all = call.medias.iter().all(|m| m.timed_out || m.ports == [0, 0]);
        self.release(engine, ifaces, streams, ports);
        if all {
            self.teardown(engine, call_id, Ended::Timeout, now);
        }
    }
}

/// The RTP and RTCP streams of a media section the call already has, after a re-INVITE or
/// the answer: the sender's side takes what its SDP says.
#[expect(
    clippy::similar_names,
    reason = "rtp and rtcp name the two streams of one media section"
)]
fn update_streams(
    engine: &mut Engine,
    [rtp, rtcp]: [Option<StreamId>; 2],
    m: &sdp::Media,
    remote: &Remotes,
    sig: &Signal<'_>,
) -> Result<(), NgError> {
    let s = sig.sender as usize;
    let mut upd = StreamUpdate {
        latching: sig.latching.map(Some),
        strict_source: Some(sig.strict_source),
        ..StreamUpdate::default()
    };
    upd.next_relay = sig.relays;
    upd.remote[s] = remote.rtp;
    upd.sip_source[s] = sig.o.received_from;
    upd.signalled[s] = true;
    upd.receives[s] = Some(receives(m));
    if let Some(id) = rtp {
        engine.update_stream(id, &upd, sig.now)?;
    }
    upd.remote[s] = remote.rtcp;
    upd.next_relay = [None, None];
    // RTCP flows whatever the direction (RFC 3264 section 5.1).
    upd.receives[s] = None;
    if let Some(id) = rtcp {
        engine.update_stream(id, &upd, sig.now)?;
    }
    Ok(())
}

fn call_state(c: &Call) -> CallState {
    match c.ended {
        Some((Ended::Timeout, _)) => CallState::TimedOut,
        Some((Ended::Deleted, _)) => CallState::Deleted,
        None if c.delete_at.is_some() => CallState::Deleting,
        None if c.medias.iter().any(|m| m.timed_out) => CallState::PartlyTimedOut,
        None => CallState::Active,
    }
}

/// One side of a call as `query` reports it, with the kernel's counters of its flows.
fn side_report(engine: &Engine, call: &Call, side: Side, kernel: KernelView<'_>) -> SideReport {
    let i = side as usize;
    let medias = call
        .medias
        .iter()
        .map(|m| MediaReport {
            kind: m.kind.clone(),
            proto: m.proto.clone(),
            codec: m.codec.clone(),
            streams: [(false, m.rtp), (true, m.rtcp)]
                .into_iter()
                .filter_map(|(rtcp, id)| {
                    let [a, b] = engine.status(id?)?;
                    let status = if side == Side::A { a } else { b };
                    let k = kernel(&status.local);
                    Some(StreamReport {
                        rtcp,
                        kernel: k.map(|k| k.counters).unwrap_or_default(),
                        last_seen: k.and_then(|k| k.last_seen),
                        status,
                    })
                })
                .collect(),
            rtcp_mux: m.rtcp_mux[i],
            asymmetric: call.asymmetric[i],
            timed_out: m.timed_out,
        })
        .collect();
    SideReport {
        tag: call.tags[i]
            .clone()
            .unwrap_or_else(|| format!("<untagged {i}>")),
        peer_tag: call.tags[1 - i].clone().unwrap_or_default(),
        via_branch: if side == Side::B {
            call.via_branch.clone()
        } else {
            None
        },
        medias,
    }
}

/// rtpengine's rtcp-mux options, for the side that receives the SDP: mux offered onward?
fn mux_decision(opts: &[String], offered: bool) -> bool {
    let has = |o: &str| opts.iter().any(|x| x == o);
    if has("reject") || has("demux") {
        return false;
    }
    offered || has("offer") || has("require")
}

/// A 64-bit tag of the Call-ID for probe messages (FNV-1a).
fn tag_of(call_id: &str) -> u64 {
    call_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
