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

mod media;
mod ports;
mod report;
mod teardown;

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use proxy_common::{Endpoint, FlowCounters};

use self::ports::PortPool;
pub use super::error::NgError;
use super::{
    bencode::Dict,
    command::{Command, CommandKind, Request},
    reply::{self, Reply},
};
use crate::session::{Engine, StreamId};

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
    /// When the kernel last forwarded a packet of the flow, as userspace saw its counter
    /// move (`Dataplane::last_forwarded`: never early, at most a housekeeping period late).
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

    #[must_use]
    pub fn config(&self) -> &CallsConfig {
        &self.cfg
    }

    #[must_use]
    pub fn call_count(&self) -> usize {
        self.calls.values().filter(|c| c.ended.is_none()).count()
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
}

#[cfg(test)]
mod tests;
