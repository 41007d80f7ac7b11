//! Calls as the call server sees them, on top of the session engine: offer/answer (RFC 3264)
//! keyed by Call-ID and tags, port allocation, SDP rewriting, teardown, timeouts, and the
//! replies of every ng command. Sans-IO: requests in, replies out. The session engine is not
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

use super::{
    bencode::{Dict, Value},
    flags::{self, Family, Options},
    sdp::{self, MediaRewrite},
};
use crate::{
    ng_dict,
    session::{
        Engine, Latching, ProbePhase, Side, SideStatus, StreamConfig, StreamId, StreamUpdate,
        Unblocked,
    },
};

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
pub const MAX_DELETE_DELAY: Duration = Duration::from_secs(3600);
/// The most calls one `list` reply names, whatever `limit` asks: a reply is one datagram.
pub const MAX_LIST: usize = 256;
/// Kernel flows per media section: RTP and RTCP, one flow per side each.
const FLOWS_PER_MEDIA: usize = 4;

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            port_min: 30000,
            port_max: 40000,
            probe_port: 7999,
            delete_delay: Duration::from_secs(30),
            media_timeout: Duration::from_secs(60),
            keep_ended: Duration::from_secs(30),
            max_calls: 50_000,
            max_media: 16,
            max_flows: 65_536,
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
    pub commands: [u64; COMMANDS.len()],
    pub errors: u64,
    pub managed_sessions: u64,
    pub timeout_sessions: u64,
    pub deleted_sessions: u64,
}

pub const COMMANDS: [&str; 8] = [
    "ping",
    "offer",
    "answer",
    "delete",
    "query",
    "list",
    "statistics",
    "probe",
];

/// What a request's failure says.
#[derive(Debug)]
pub struct NgError(pub String);

type NgResult = Result<Dict, NgError>;

fn err(s: impl Into<String>) -> NgError {
    NgError(s.into())
}

/// rtpengine's words when its session limit is reached: Kamailio, which announces
/// `supports: ["load limit"]`, then moves the call to its next relay.
const LOAD_LIMIT: &str = "Parallel session limit reached";

pub struct Calls {
    cfg: CallsConfig,
    /// The host's own addresses: never a media destination, unless they name one of this
    /// relay's own allocated endpoints (a call that loops through the relay twice).
    local_addrs: std::collections::HashSet<IpAddr>,
    calls: HashMap<String, Call>,
    pools: Vec<PortPool>,
    /// Picks ports; seeded by the caller (from the OS in the daemon).
    rng: rand::rngs::StdRng,
    started: SystemTime,
    counters: NgCounters,
}

impl Calls {
    #[must_use]
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
        let ip = ep.ip().map_or_else(|| "?".to_owned(), |i| i.to_string());
        if crate::session::is_martian(&ep) {
            return Err(err(format!("Invalid address in SDP: {ip}")));
        }
        let own = ep.ip().is_some_and(|i| self.local_addrs.contains(&i));
        if own && engine.stream_of(&ep).is_none() {
            return Err(err(format!(
                "Invalid address in SDP: {ip} is the relay's own"
            )));
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

    /// Handles one ng request; the reply always has `result` (and `error-reason` on error).
    pub fn handle(
        &mut self,
        engine: &mut Engine,
        req: &Dict,
        now: Instant,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> Dict {
        let command = req.get_str("command").unwrap_or_default().to_owned();
        if let Some(i) = COMMANDS.iter().position(|c| *c == command) {
            self.counters.commands[i] += 1;
        }
        let opts = flags::parse(req);
        let result = match command.as_str() {
            "ping" => Ok(ng_dict! {}),
            "offer" => self.offer_answer(engine, req, &opts, true, now, wall),
            "answer" => self.offer_answer(engine, req, &opts, false, now, wall),
            "delete" => self.delete(engine, req, &opts, now, wall, kernel),
            "query" => self.query(engine, req, wall, kernel),
            "list" => self.list(engine, req),
            "statistics" => Ok(self.statistics(engine, wall, kernel)),
            "probe" => self.probe(engine, req, &opts, now),
            "" if req.get("command").is_none() => {
                Err(err("Dictionary contains no key \"command\""))
            }
            _ => Err(err("Unrecognized command")),
        };
        match result {
            Ok(mut reply) => {
                let mut warnings = opts.warnings;
                if let Some(Value::Bytes(w)) = reply.get("warning") {
                    warnings.insert(0, String::from_utf8_lossy(w).into_owned());
                }
                if !warnings.is_empty() {
                    reply.set("warning", Value::from(warnings.join("; ")));
                }
                reply.push(
                    "result",
                    Value::str(if command == "ping" { "pong" } else { "ok" }),
                );
                reply
            }
            Err(NgError(reason)) if reason == LOAD_LIMIT && opts.supports_load_limit => {
                self.counters.errors += 1;
                ng_dict! { "result" => "load limit", "message" => reason }
            }
            Err(NgError(reason)) => {
                self.counters.errors += 1;
                ng_dict! { "result" => "error", "error-reason" => reason }
            }
        }
    }

    fn iface_for(&self, name: Option<&str>, family: Option<Family>) -> Result<usize, NgError> {
        if self.cfg.interfaces.is_empty() {
            return Err(err("no interface configured"));
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
            .ok_or_else(|| err("no interface of the requested address family"))
    }

    fn offer_answer(
        &mut self,
        engine: &mut Engine,
        req: &Dict,
        o: &Options,
        is_offer: bool,
        now: Instant,
        wall: SystemTime,
    ) -> NgResult {
        let sdp_bytes = req
            .get_any(&["sdp", "SDP"])
            .and_then(Value::as_bytes)
            .ok_or_else(|| err("No SDP body in message"))?;
        let call_id = req
            .get_any(&["call-id", "call-ID", "call id", "call ID"])
            .and_then(Value::as_str)
            .ok_or_else(|| err("No call-id in message"))?
            .to_owned();
        let from_tag = req
            .get_str("from-tag")
            .ok_or_else(|| err("No from-tag in message"))?
            .to_owned();
        let to_tag = req.get_str("to-tag").map(str::to_owned);
        if !is_offer && to_tag.is_none() {
            return Err(err("No to-tag in message"));
        }
        let parsed = sdp::parse(sdp_bytes).map_err(|e| err(format!("Failed to parse SDP: {e}")))?;
        if parsed.media.len() > self.cfg.max_media {
            return Err(err(format!(
                "Too many media sections ({}, at most {})",
                parsed.media.len(),
                self.cfg.max_media
            )));
        }
        if !is_offer && !self.calls.contains_key(&call_id) {
            return Err(err("Unknown call-id"));
        }
        if !self.calls.contains_key(&call_id) && self.call_count() >= self.cfg.max_calls {
            return Err(err(LOAD_LIMIT));
        }
        let known = self.calls.get(&call_id).map_or(0, |c| c.medias.len());
        let new_medias = parsed.media.len().saturating_sub(known);
        let flows_now = engine.stream_count() * 2;
        if flows_now + new_medias * FLOWS_PER_MEDIA > self.cfg.max_flows {
            return Err(err(LOAD_LIMIT));
        }
        // rtpengine's convention: an answer's SDP comes from the to-tag's side.
        let sender_tag = if is_offer {
            from_tag.clone()
        } else {
            to_tag.clone().unwrap_or_default()
        };

        let new_call = !self.calls.contains_key(&call_id);
        if new_call {
            let a = self.iface_for(o.direction[0].as_deref(), None)?;
            let b = self.iface_for(o.direction[1].as_deref(), o.address_family)?;
            self.calls.insert(
                call_id.clone(),
                Call {
                    created: wall,
                    last_signal: wall,
                    tags: [Some(from_tag.clone()), to_tag.clone()],
                    via_branch: req.get_str("via-branch").map(str::to_owned),
                    ifaces: [a, b],
                    medias: Vec::new(),
                    asymmetric: [false; 2],
                    strict_source: false,
                    delete_at: None,
                    ended: None,
                },
            );
            self.counters.managed_sessions += 1;
        }
        let call = self.calls.get_mut(&call_id).expect("inserted above");
        if call.ended.is_some() {
            return Err(err("Call has ended"));
        }
        let sender = if call.tags[0].as_deref() == Some(sender_tag.as_str()) {
            Side::A
        } else if call.tags[1].is_none() || call.tags[1].as_deref() == Some(sender_tag.as_str()) {
            call.tags[1] = Some(sender_tag.clone());
            Side::B
        } else {
            // A new tag on an existing call (forking): it takes over side B.
            call.tags[1] = Some(sender_tag.clone());
            Side::B
        };
        let recipient = sender.other();
        if let Some(t) = &to_tag
            && call.tags[recipient as usize].is_none()
        {
            call.tags[recipient as usize] = Some(t.clone());
        }
        call.last_signal = wall;
        call.delete_at = None;
        call.asymmetric[sender as usize] = o.asymmetric;
        call.strict_source |= o.strict_source;

        let probe_port = self.cfg.probe_port;
        let mut relays: [Option<SocketAddr>; 2] = [None, None];
        relays[sender as usize] = o.next_relay.map(|r| r.with_default_port(probe_port));
        relays[recipient as usize] = o
            .next_relay_recipient
            .map(|r| r.with_default_port(probe_port));
        let session_tag = tag_of(&call_id);

        let mut created = Vec::new();
        let result = self.apply_media(
            engine,
            &call_id,
            &parsed,
            o,
            sender,
            relays,
            session_tag,
            now,
            &mut created,
        );
        if let Err(e) = result {
            // Nothing allocated for this request survives a failure. Last first: releasing a
            // media section truncates the call's list there, which would hide later ones.
            for (media, ports) in created.into_iter().rev() {
                self.release_media(engine, &call_id, media, ports);
            }
            if new_call {
                self.calls.remove(&call_id);
                self.counters.managed_sessions -= 1;
            }
            return Err(e);
        }
        let call = &self.calls[&call_id];
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
        let body = sdp::rewrite(&parsed, &rw);
        Ok(ng_dict! { "sdp" => Value::Bytes(body) })
    }

    /// Creates or updates the streams of each m= line. `created` collects what this request
    /// allocated, so that a failure can undo it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are the request's parts"
    )]
    fn apply_media(
        &mut self,
        engine: &mut Engine,
        call_id: &str,
        parsed: &sdp::Sdp<'_>,
        o: &Options,
        sender: Side,
        relays: [Option<SocketAddr>; 2],
        session_tag: u64,
        now: Instant,
        created: &mut Vec<(usize, [u16; 2])>,
    ) -> Result<(), NgError> {
        let s = sender as usize;
        for (i, m) in parsed.media.iter().enumerate() {
            let source_ip = |ip: IpAddr| {
                if o.sip_source_address {
                    o.received_from.unwrap_or(ip)
                } else {
                    ip
                }
            };
            let remote_rtp =
                (!m.is_held()).then(|| Endpoint::from(SocketAddr::new(source_ip(m.addr), m.port)));
            let rtcp_sa = m.rtcp_endpoint();
            let remote_rtcp = (!m.is_held())
                .then(|| Endpoint::from(SocketAddr::new(source_ip(rtcp_sa.ip()), rtcp_sa.port())));
            let mux_offered = m.rtcp_mux;
            if !m.is_disabled() {
                for ep in [remote_rtp, remote_rtcp].into_iter().flatten() {
                    self.check_sdp_endpoint(engine, ep)?;
                }
            }
            let call = self.calls.get_mut(call_id).expect("caller checked");
            let asym = call.asymmetric;
            let strict = call.strict_source;
            let latching = asym.map(|a| {
                if a {
                    Latching::Asymmetric
                } else {
                    Latching::Symmetric
                }
            });
            if let Some(existing) = call.medias.get_mut(i) {
                existing.rtcp_mux[s] = mux_offered;
                existing.rtcp_mux[1 - s] = mux_decision(&o.rtcp_mux, mux_offered);
                if m.is_disabled() || existing.rtp.is_none() {
                    continue;
                }
                let mut upd = StreamUpdate {
                    latching: latching.map(Some),
                    strict_source: Some(strict),
                    ..StreamUpdate::default()
                };
                upd.next_relay = relays;
                upd.remote[s] = remote_rtp;
                upd.sip_source[s] = o.received_from;
                upd.signalled[s] = true;
                upd.receives[s] = Some(receives(m));
                let (rtp, rtcp) = (existing.rtp, existing.rtcp);
                if let Some(id) = rtp {
                    engine
                        .update_stream(id, &upd, now)
                        .map_err(|e| err(e.to_string()))?;
                }
                upd.remote[s] = remote_rtcp;
                upd.next_relay = [None, None];
                // RTCP flows whatever the direction (RFC 3264 section 5.1).
                upd.receives[s] = None;
                if let Some(id) = rtcp {
                    engine
                        .update_stream(id, &upd, now)
                        .map_err(|e| err(e.to_string()))?;
                }
                continue;
            }
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
            media.rtcp_mux[s] = mux_offered;
            media.rtcp_mux[1 - s] = mux_decision(&o.rtcp_mux, mux_offered);
            if m.is_disabled() {
                call.medias.push(media);
                continue;
            }
            let ifaces = call.ifaces;
            let mut ports = [0u16; 2];
            for side in [0, 1] {
                let Some(p) = self.pools[ifaces[side]].alloc(&mut self.rng) else {
                    // The first side's pair is not in `created` yet: give it back here.
                    if side == 1 {
                        self.pools[ifaces[0]].free(ports[0]);
                    }
                    return Err(err("Ran out of ports"));
                };
                ports[side] = p;
            }
            created.push((i, ports));
            let local = |side: usize, port: u16| {
                Endpoint::from(SocketAddr::new(
                    self.cfg.interfaces[ifaces[side]].addr,
                    port,
                ))
            };
            let mut rtp_cfg = StreamConfig::new(local(0, ports[0]), local(1, ports[1]));
            rtp_cfg.latching = latching;
            rtp_cfg.strict_source = strict;
            rtp_cfg.session_tag = session_tag;
            rtp_cfg.next_relay = relays;
            rtp_cfg.remote[s] = remote_rtp;
            rtp_cfg.sip_source[s] = o.received_from;
            rtp_cfg.receives[s] = receives(m);
            let mut rtcp_cfg = StreamConfig::new(local(0, ports[0] + 1), local(1, ports[1] + 1));
            rtcp_cfg.latching = latching;
            rtcp_cfg.strict_source = strict;
            rtcp_cfg.session_tag = session_tag;
            rtcp_cfg.remote[s] = remote_rtcp;
            rtcp_cfg.sip_source[s] = o.received_from;
            media.ports = ports;
            let rtp_id = engine.add_stream(rtp_cfg).map_err(|e| err(e.to_string()))?;
            media.rtp = Some(rtp_id);
            rtcp_cfg.rtp_stream = Some(rtp_id);
            let call = self.calls.get_mut(call_id).expect("caller checked");
            call.medias.push(media);
            let rtcp = engine
                .add_stream(rtcp_cfg)
                .map_err(|e| err(e.to_string()))?;
            let call = self.calls.get_mut(call_id).expect("caller checked");
            call.medias.last_mut().expect("pushed").rtcp = Some(rtcp);
        }
        let call = self.calls.get(call_id).expect("caller checked");
        if call.medias.len() < parsed.media.len() {
            return Err(err("Incomplete SDP specification"));
        }
        Ok(())
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
        for id in streams {
            let _ = engine.remove_stream(id);
        }
        for ports in to_free {
            for side in 0..2 {
                self.pools[ifaces[side]].free(ports[side]);
            }
        }
        match why {
            Ended::Deleted => self.counters.deleted_sessions += 1,
            Ended::Timeout => self.counters.timeout_sessions += 1,
        }
    }

    fn delete(
        &mut self,
        engine: &mut Engine,
        req: &Dict,
        o: &Options,
        now: Instant,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> NgResult {
        let call_id = req
            .get_any(&["call-id", "call-ID", "call id", "call ID"])
            .and_then(Value::as_str)
            .ok_or_else(|| err("No call-id in message"))?
            .to_owned();
        let from_tag = req.get_str("from-tag").filter(|t| !t.is_empty());
        let to_tag = req.get_str("to-tag").filter(|t| !t.is_empty());
        let not_found = "Call-ID not found or tags didn't match";
        let Some(call) = self.calls.get(&call_id).filter(|c| c.ended.is_none()) else {
            if o.fatal {
                return Err(err(not_found));
            }
            return Ok(ng_dict! { "warning" => not_found });
        };
        let tags_match = [from_tag, to_tag]
            .iter()
            .flatten()
            .all(|t| call.tags.iter().flatten().any(|c| c == t));
        if !tags_match {
            if o.fatal {
                return Err(err(not_found));
            }
            return Ok(ng_dict! { "warning" => not_found });
        }
        let reply = if from_tag.is_some() {
            self.call_stats(engine, &call_id, wall, kernel)
        } else {
            Dict::new()
        };
        // Any integer a client sends is taken, within bounds: negative means the default,
        // beyond an hour means an hour.
        let delay = match o.delete_delay {
            Some(d) if d >= 0 => Duration::from_secs(d.unsigned_abs()).min(MAX_DELETE_DELAY),
            _ => self.cfg.delete_delay,
        };
        if delay.is_zero() {
            self.teardown(engine, &call_id, Ended::Deleted, now);
            self.calls.remove(&call_id);
        } else if let Some(call) = self.calls.get_mut(&call_id) {
            call.delete_at = Some(now.checked_add(delay).unwrap_or(now));
        }
        Ok(reply)
    }

    fn query(
        &self,
        engine: &Engine,
        req: &Dict,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> NgResult {
        let call_id = req
            .get_any(&["call-id", "call-ID", "call id", "call ID"])
            .and_then(Value::as_str)
            .ok_or_else(|| err("No call-id in message"))?;
        if !self.calls.contains_key(call_id) {
            return Err(err("Unknown call-id"));
        }
        Ok(self.call_stats(engine, call_id, wall, kernel))
    }

    fn list(&self, engine: &Engine, req: &Dict) -> NgResult {
        let limit = req.get("limit").and_then(Value::as_int).unwrap_or(32);
        if limit < 0 {
            return Err(err("invalid limit, must be >= 0"));
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_LIST);
        let mut ids: Vec<&String> = self.calls.keys().collect();
        ids.sort();
        ids.truncate(limit);
        let states: Vec<Value> = ids
            .iter()
            .map(|id| {
                let c = &self.calls[*id];
                let state = match c.ended {
                    Some((Ended::Timeout, _)) => "timed out",
                    Some((Ended::Deleted, _)) => "deleted",
                    None if c.delete_at.is_some() => "deleting",
                    None if c.medias.iter().any(|m| m.timed_out) => "partly timed out",
                    None => "active",
                };
                let mut d = ng_dict! { "call-id" => id.as_str(), "state" => state };
                d.push("media", Value::str(&self.media_summary(engine, c)));
                Value::Dict(d)
            })
            .collect();
        Ok(ng_dict! {
            "calls" => ids.iter().map(|id| Value::str(id)).collect::<Vec<_>>(),
            "mediaproxy" => ng_dict! { "calls" => states },
        })
    }

    /// Per RTP stream of a call, what each side's far end was and how long its media took to
    /// go on: `"m0 A relay 3 ms, B endpoint 0 ms"` (`-` where nothing went on yet).
    fn media_summary(&self, engine: &Engine, c: &Call) -> String {
        let mut out = Vec::new();
        for (i, m) in c.medias.iter().enumerate() {
            let Some(st) = m.rtp.and_then(|id| engine.status(id)) else {
                continue;
            };
            let side = |x: &SideStatus| {
                let after = x
                    .unblocked_after
                    .map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
                format!("{} {after}", x.far_end.name())
            };
            out.push(format!("m{i} A {}, B {}", side(&st[0]), side(&st[1])));
        }
        out.join("; ")
    }

    fn probe(&mut self, engine: &mut Engine, req: &Dict, o: &Options, now: Instant) -> NgResult {
        let call_id = req
            .get_any(&["call-id", "call-ID", "call id", "call ID"])
            .and_then(Value::as_str)
            .ok_or_else(|| err("No call-id in message"))?
            .to_owned();
        let call = self
            .calls
            .get_mut(&call_id)
            .filter(|c| c.ended.is_none())
            .ok_or_else(|| err("Unknown call-id"))?;
        // The side to probe toward: the one with `from-tag`, or every side with a next relay.
        let sides: Vec<Side> = match req.get_str("from-tag") {
            Some(t) => vec![
                match call.tags.iter().position(|c| c.as_deref() == Some(t)) {
                    Some(0) => Side::A,
                    Some(_) => Side::B,
                    None => return Err(err("Unknown tag")),
                },
            ],
            None => Side::BOTH.to_vec(),
        };
        let relay = o
            .next_relay
            .map(|r| r.with_default_port(self.cfg.probe_port));
        let streams: Vec<StreamId> = call.medias.iter().filter_map(|m| m.rtp).collect();
        let mut probed = 0usize;
        let mut last_err = None;
        for id in streams {
            for &side in &sides {
                if let Some(r) = relay {
                    let mut upd = StreamUpdate::default();
                    upd.next_relay[side as usize] = Some(r);
                    let _ = engine.update_stream(id, &upd, now);
                }
                match engine.unblock(id, side, true, now) {
                    Ok(()) => probed += 1,
                    Err(e) => last_err = Some(e),
                }
            }
        }
        if probed == 0 {
            return Err(err(last_err.map_or_else(
                || "No media to probe".to_owned(),
                |e| format!("Cannot probe: {e}"),
            )));
        }
        Ok(ng_dict! { "probes" => probed })
    }

    fn statistics(&self, engine: &Engine, wall: SystemTime, kernel: KernelView<'_>) -> Dict {
        let uptime = wall
            .duration_since(self.started)
            .unwrap_or_default()
            .as_secs();
        let (
            mut k_packets,
            mut k_bytes,
            mut u_packets,
            mut u_bytes,
            mut kernel_media,
            mut user_media,
        ) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for id in engine.stream_ids() {
            let Some(st) = engine.status(id) else {
                continue;
            };
            let mut forwarding = true;
            for s in &st {
                let k = counters_of(kernel, &s.local);
                k_packets += k.fwd_packets;
                k_bytes += k.fwd_bytes;
                u_packets += s.counters.sent;
                u_bytes += s.counters.bytes;
                forwarding &= s.state == FlowState::Forward;
            }
            if forwarding {
                kernel_media += 1
            } else {
                user_media += 1
            }
        }
        let mut control = Dict::new();
        for (i, c) in COMMANDS.iter().enumerate() {
            control.push(
                &format!("total{c}count"),
                Value::from(self.counters.commands[i]),
            );
        }
        control.push("errorcount", Value::from(self.counters.errors));
        ng_dict! {
            "statistics" => ng_dict! {
                "currentstatistics" => ng_dict! {
                    "sessionsown" => self.call_count(),
                    "sessionstotal" => self.call_count(),
                    "media_kernel" => kernel_media,
                    "media_userspace" => user_media,
                    "ports_in_use" => self.ports_in_use(),
                },
                "totalstatistics" => ng_dict! {
                    "uptime" => uptime.to_string(),
                    "managedsessions" => self.counters.managed_sessions,
                    "timeoutsessions" => self.counters.timeout_sessions,
                    "regularterminatedsessions" => self.counters.deleted_sessions,
                    "relayedpackets_kernel" => k_packets,
                    "relayedbytes_kernel" => k_bytes,
                    "relayedpackets_user" => u_packets,
                    "relayedbytes_user" => u_bytes,
                    "relayedpackets" => k_packets + u_packets,
                },
                "controlstatistics" => control,
            },
        }
    }

    /// The query-style statistics of a call.
    fn call_stats(
        &self,
        engine: &Engine,
        call_id: &str,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> Dict {
        let Some(call) = self.calls.get(call_id) else {
            return Dict::new();
        };
        let epoch = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let mut tags = Dict::new();
        let mut totals = [[0u64; 3]; 2]; // [RTP, RTCP] x [packets, bytes, errors]
        for side in Side::BOTH {
            let tag = call.tags[side as usize]
                .clone()
                .unwrap_or_else(|| format!("<untagged {}>", side as usize));
            let mut medias = Vec::new();
            for (i, m) in call.medias.iter().enumerate() {
                let mut streams = Vec::new();
                for (kind, id) in [("RTP", m.rtp), ("RTCP", m.rtcp)] {
                    let Some(st) = id.and_then(|id| engine.status(id)) else {
                        continue;
                    };
                    let s = &st[side as usize];
                    let k = counters_of(kernel, &s.local);
                    let ingress_p = k.fwd_packets + k.punt_packets;
                    let ingress_b = k.fwd_bytes + k.punt_bytes;
                    let t = &mut totals[usize::from(kind == "RTCP")];
                    t[0] += ingress_p;
                    t[1] += ingress_b;
                    t[2] += k.mismatch_packets;
                    let mut d = stream_dict(s, kind, &k, last_seen_of(kernel, &s.local), wall);
                    d.set("stats", Value::Dict(ng_dict! { "packets" => ingress_p, "bytes" => ingress_b, "errors" => k.mismatch_packets }));
                    streams.push(Value::Dict(d));
                }
                let mut flags = vec![
                    Value::str("initialized"),
                    Value::str("send"),
                    Value::str("recv"),
                ];
                if m.rtcp_mux[side as usize] {
                    flags.push(Value::str("rtcp-mux"));
                }
                if call.asymmetric[side as usize] {
                    flags.push(Value::str("asymmetric"));
                }
                let mut md = ng_dict! { "index" => i + 1, "type" => m.kind.as_str(), "protocol" => m.proto.as_str() };
                if let Some(c) = &m.codec {
                    md.push("codec", Value::str(c));
                }
                md.push("streams", Value::List(streams));
                md.push("flags", Value::List(flags));
                if m.timed_out {
                    md.push(
                        "mediaproxy",
                        Value::Dict(ng_dict! { "state" => "timed out" }),
                    );
                }
                medias.push(Value::Dict(md));
            }
            let other = call.tags[1 - side as usize].clone().unwrap_or_default();
            let mut td = ng_dict! { "tag" => tag.as_str() };
            if side == Side::B
                && let Some(b) = &call.via_branch
            {
                td.push("via-branch", Value::str(b));
            }
            td.push("created", Value::from(epoch(call.created).as_secs()));
            let peer = Value::List(vec![Value::Dict(
                ng_dict! { "tag" => other.as_str(), "type" => "offer/answer" },
            )]);
            td.push("subscriptions", peer.clone());
            td.push("subscribers", peer);
            td.push("medias", Value::List(medias));
            tags.push(&tag, Value::Dict(td));
        }
        let total = |t: [u64; 3]| {
            Value::Dict(ng_dict! { "packets" => t[0], "bytes" => t[1], "errors" => t[2] })
        };
        let state = match call.ended {
            Some((Ended::Timeout, _)) => "timed out",
            Some((Ended::Deleted, _)) => "deleted",
            None if call.delete_at.is_some() => "deleting",
            None => "active",
        };
        ng_dict! {
            "created" => epoch(call.created).as_secs(),
            "created_us" => u64::from(epoch(call.created).subsec_micros()),
            "last signal" => epoch(call.last_signal).as_secs(),
            "SSRC" => Dict::new(),
            "tags" => tags,
            "totals" => ng_dict! { "RTP" => total(totals[0]), "RTCP" => total(totals[1]) },
            "mediaproxy" => ng_dict! { "state" => state },
        }
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
        for id in streams {
            let _ = engine.remove_stream(id);
        }
        for p in ports {
            for side in 0..2 {
                self.pools[ifaces[side]].free(p[side]);
            }
        }
        if all {
            self.teardown(engine, call_id, Ended::Timeout, now);
        }
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

fn endpoint_dict(e: Option<Endpoint>) -> Value {
    match e.and_then(|e| e.socket_addr()) {
        Some(sa) => Value::Dict(ng_dict! {
            "family" => if sa.is_ipv4() { "IPv4" } else { "IPv6" },
            "address" => sa.ip().to_string(),
            "port" => sa.port(),
        }),
        None => Value::Dict(Dict::new()),
    }
}

fn stream_dict(
    s: &SideStatus,
    kind: &str,
    k: &FlowCounters,
    last_seen: Option<Instant>,
    wall: SystemTime,
) -> Dict {
    let local = s.local.socket_addr();
    let mut d = Dict::new();
    if let Some(l) = local {
        d.push("local port", Value::from(l.port()));
        d.push("local address", Value::from(l.ip().to_string()));
        d.push(
            "family",
            Value::str(if l.is_ipv4() { "IPv4" } else { "IPv6" }),
        );
    }
    d.push("endpoint", endpoint_dict(s.latched));
    d.push("advertised endpoint", endpoint_dict(s.remote));
    if let Some(t) = last_seen {
        let ago = Instant::now().saturating_duration_since(t);
        let at = wall.checked_sub(ago).unwrap_or(wall);
        d.push(
            "last packet",
            Value::from(
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            ),
        );
    }
    let mut flags = vec![Value::str(kind), Value::str("filled")];
    if s.latched.is_some() {
        flags.push(Value::str("confirmed"));
    }
    if s.state == FlowState::Forward {
        flags.push(Value::str("kernelized"));
    }
    d.push("flags", Value::List(flags));
    let probe = match s.probe {
        ProbePhase::Idle => ng_dict! { "state" => "idle" },
        ProbePhase::Probing { attempts } => {
            ng_dict! { "state" => "probing", "attempts" => u64::from(attempts) }
        }
        ProbePhase::Acked { rtt } => {
            ng_dict! { "state" => "acked", "rtt ms" => rtt.as_millis() as u64 }
        }
        ProbePhase::Failed { attempts } => {
            ng_dict! { "state" => "failed", "attempts" => u64::from(attempts) }
        }
        ProbePhase::Cancelled { attempts } => {
            ng_dict! { "state" => "cancelled: the far side spoke first", "attempts" => u64::from(attempts) }
        }
    };
    let mut mp = ng_dict! {
        "state" => if s.state == FlowState::Forward { "FORWARD" } else { "HOLD" },
        "latched" => if s.latched.is_some() { "yes" } else { "no" },
    };
    if let Some(dst) = s.destination {
        mp.push("forwarding to", endpoint_dict(Some(dst)));
    }
    if let Some(after) = s.blocking_suspected {
        mp.push(
            "blocking suspected ms",
            Value::from(after.as_millis() as u64),
        );
    }
    if let Some(r) = s.next_relay {
        mp.push("next relay", Value::from(r.to_string()));
    }
    mp.push("far end", Value::str(s.far_end.name()));
    if let Some(after) = s.unblocked_after {
        mp.push("unblocked after ms", Value::from(after.as_millis() as u64));
    }
    mp.push("probe", Value::Dict(probe));
    if let Some(by) = s.unblocked {
        mp.push(
            "unblocked by",
            Value::str(match by {
                Unblocked::Ack => "ack",
                Unblocked::Probe => "probe",
                Unblocked::Command => "command",
            }),
        );
    }
    mp.push("packets xdp", Value::from(k.fwd_packets));
    mp.push("bytes xdp", Value::from(k.fwd_bytes));
    mp.push("packets userspace", Value::from(s.counters.packets));
    mp.push("bytes userspace", Value::from(s.counters.bytes));
    mp.push("sent by userspace", Value::from(s.counters.sent));
    mp.push("packets punted", Value::from(k.punt_packets));
    mp.push(
        "rejected sources",
        Value::from(s.counters.rejected + k.mismatch_packets),
    );
    mp.push("held", Value::from(s.held));
    mp.push("held dropped", Value::from(s.counters.held_dropped));
    d.push("mediaproxy", Value::Dict(mp));
    d
}

#[cfg(test)]
mod tests;
