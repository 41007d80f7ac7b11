//! What a command answers, as typed values, and how each is written as an ng reply. The call
//! model fills these; the dictionary layout (rtpengine's key names, in rtpengine's order, with
//! `result` last) is decided only here.

use std::time::{Duration, Instant, SystemTime};

use proxy_common::{Endpoint, FlowCounters, FlowState};

use super::{
    bencode::{Dict, Value},
    command::{CommandKind, Request},
    error::NgError,
};
use crate::{
    ng_dict,
    session::{FarEnd, ProbePhase, SideStatus, Unblocked},
};

/// A successful command's answer.
#[derive(Clone, Debug)]
pub enum Reply {
    Pong,
    /// The rewritten SDP of an offer or answer.
    Sdp(Vec<u8>),
    /// A `delete` that named a side gets the call's report; one that did not, nothing.
    Deleted(Option<CallReport>),
    /// A `delete` of nothing, without `fatal`: a success with rtpengine's warning.
    NothingToDelete,
    Query(CallReport),
    List(Vec<ListedCall>),
    Statistics(Statistics),
    /// How many streams started probing.
    Probes(usize),
}

/// Where a call is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    Active,
    /// Some media sections timed out, others still flow (`list` only).
    PartlyTimedOut,
    /// A delayed `delete` is pending.
    Deleting,
    Deleted,
    TimedOut,
}

impl CallState {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CallState::Active => "active",
            CallState::PartlyTimedOut => "partly timed out",
            CallState::Deleting => "deleting",
            CallState::Deleted => "deleted",
            CallState::TimedOut => "timed out",
        }
    }
}

/// `query`'s view of a call.
#[derive(Clone, Debug)]
pub struct CallReport {
    pub created: SystemTime,
    pub last_signal: SystemTime,
    /// Side A, then side B.
    pub sides: [SideReport; 2],
    pub state: CallState,
}

#[derive(Clone, Debug)]
pub struct SideReport {
    /// The side's tag, or `<untagged N>` before it has one.
    pub tag: String,
    /// The other side's tag, empty before it has one.
    pub peer_tag: String,
    /// Side B's only.
    pub via_branch: Option<String>,
    pub medias: Vec<MediaReport>,
}

#[derive(Clone, Debug)]
pub struct MediaReport {
    pub kind: String,
    pub proto: String,
    pub codec: Option<String>,
    /// RTP first, then RTCP; a removed stream is left out.
    pub streams: Vec<StreamReport>,
    pub rtcp_mux: bool,
    pub asymmetric: bool,
    pub timed_out: bool,
}

#[derive(Clone, Debug)]
pub struct StreamReport {
    pub rtcp: bool,
    pub status: SideStatus,
    /// What the kernel counted (zeros without a kernel flow).
    pub kernel: FlowCounters,
    pub last_seen: Option<Instant>,
}

/// A line of `list`.
#[derive(Clone, Debug)]
pub struct ListedCall {
    pub call_id: String,
    pub state: CallState,
    /// Per RTP stream, in media order.
    pub media: Vec<ListedMedia>,
}

/// A media section in `list`: per side what the far end was and how long its media took to
/// go on.
#[derive(Clone, Copy, Debug)]
pub struct ListedMedia {
    pub index: usize,
    pub far_end: [FarEnd; 2],
    pub unblocked_after: [Option<Duration>; 2],
}

/// `statistics`, rtpengine's sections.
#[derive(Clone, Copy, Debug, Default)]
pub struct Statistics {
    pub uptime: Duration,
    pub sessions: usize,
    /// Streams whose flows all forward in the kernel, and the others.
    pub media_kernel: u64,
    pub media_user: u64,
    pub ports_in_use: usize,
    pub managed_sessions: u64,
    pub timeout_sessions: u64,
    pub deleted_sessions: u64,
    pub kernel_packets: u64,
    pub kernel_bytes: u64,
    pub user_packets: u64,
    pub user_bytes: u64,
    /// By [`CommandKind::index`].
    pub commands: [u64; CommandKind::ALL.len()],
    pub errors: u64,
}

/// The whole reply to a request: the command's answer (or its error), the request's
/// warnings, and `result`.
#[must_use]
pub fn render(req: &Request, outcome: Result<Reply, NgError>, wall: SystemTime) -> Dict {
    match outcome {
        Ok(reply) => {
            let mut d = body(reply, wall);
            let mut warnings = req.options.warnings.clone();
            if let Some(Value::Bytes(w)) = d.get("warning") {
                warnings.insert(0, String::from_utf8_lossy(w).into_owned());
            }
            if !warnings.is_empty() {
                d.set("warning", Value::from(warnings.join("; ")));
            }
            let pong = req.kind == Some(CommandKind::Ping);
            d.push("result", Value::str(if pong { "pong" } else { "ok" }));
            d
        }
        Err(NgError::LoadLimit) if req.options.supports_load_limit => {
            ng_dict! { "result" => "load limit", "message" => NgError::LoadLimit.reason() }
        }
        Err(e) => error(&e),
    }
}

/// An error reply.
#[must_use]
pub fn error(e: &NgError) -> Dict {
    ng_dict! { "result" => "error", "error-reason" => e.reason() }
}

fn body(reply: Reply, wall: SystemTime) -> Dict {
    match reply {
        Reply::Pong | Reply::Deleted(None) => Dict::new(),
        Reply::Sdp(body) => ng_dict! { "sdp" => Value::Bytes(body) },
        Reply::Deleted(Some(r)) | Reply::Query(r) => call(&r, wall),
        Reply::NothingToDelete => ng_dict! { "warning" => NgError::CallNotFound.reason() },
        Reply::List(calls) => list(&calls),
        Reply::Statistics(s) => statistics(&s),
        Reply::Probes(n) => ng_dict! { "probes" => n },
    }
}

fn list(calls: &[ListedCall]) -> Dict {
    let states: Vec<Value> = calls
        .iter()
        .map(|c| {
            let mut d = ng_dict! { "call-id" => c.call_id.as_str(), "state" => c.state.name() };
            d.push("media", Value::str(&media_summary(c)));
            Value::Dict(d)
        })
        .collect();
    ng_dict! {
        "calls" => calls.iter().map(|c| Value::str(&c.call_id)).collect::<Vec<_>>(),
        "mediaproxy" => ng_dict! { "calls" => states },
    }
}

/// `"m0 A relay 3 ms, B endpoint 0 ms"` (`-` where nothing went on yet).
fn media_summary(c: &ListedCall) -> String {
    let side = |m: &ListedMedia, i: usize| {
        let after = m.unblocked_after[i]
            .map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
        format!("{} {after}", m.far_end[i].name())
    };
    c.media
        .iter()
        .map(|m| format!("m{} A {}, B {}", m.index, side(m, 0), side(m, 1)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn statistics(s: &Statistics) -> Dict {
    let mut control = Dict::new();
    for k in CommandKind::ALL {
        control.push(
            &format!("total{}count", k.name()),
            Value::from(s.commands[k.index()]),
        );
    }
    control.push("errorcount", Value::from(s.errors));
    ng_dict! {
        "statistics" => ng_dict! {
            "currentstatistics" => ng_dict! {
                "sessionsown" => s.sessions,
                "sessionstotal" => s.sessions,
                "media_kernel" => s.media_kernel,
                "media_userspace" => s.media_user,
                "ports_in_use" => s.ports_in_use,
            },
            "totalstatistics" => ng_dict! {
                "uptime" => s.uptime.as_secs().to_string(),
                "managedsessions" => s.managed_sessions,
                "timeoutsessions" => s.timeout_sessions,
                "regularterminatedsessions" => s.deleted_sessions,
                "relayedpackets_kernel" => s.kernel_packets,
                "relayedbytes_kernel" => s.kernel_bytes,
                "relayedpackets_user" => s.user_packets,
                "relayedbytes_user" => s.user_bytes,
                "relayedpackets" => s.kernel_packets + s.user_packets,
            },
            "controlstatistics" => control,
        },
    }
}

fn epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// A packet count, a byte count and an error count.
type Totals = [u64; 3];

fn totals_dict(t: Totals) -> Value {
    Value::Dict(ng_dict! { "packets" => t[0], "bytes" => t[1], "errors" => t[2] })
}

/// `query`'s reply (and a tagged `delete`'s).
fn call(r: &CallReport, wall: SystemTime) -> Dict {
    let mut tags = Dict::new();
    let mut totals = [[0u64; 3]; 2]; // [RTP, RTCP]
    for side in &r.sides {
        let medias = side
            .medias
            .iter()
            .enumerate()
            .map(|(i, m)| Value::Dict(media(i, m, &mut totals, wall)))
            .collect();
        let mut td = ng_dict! { "tag" => side.tag.as_str() };
        if let Some(b) = &side.via_branch {
            td.push("via-branch", Value::str(b));
        }
        td.push("created", Value::from(epoch(r.created).as_secs()));
        let peer = Value::List(vec![Value::Dict(
            ng_dict! { "tag" => side.peer_tag.as_str(), "type" => "offer/answer" },
        )]);
        td.push("subscriptions", peer.clone());
        td.push("subscribers", peer);
        td.push("medias", Value::List(medias));
        tags.push(&side.tag, Value::Dict(td));
    }
    ng_dict! {
        "created" => epoch(r.created).as_secs(),
        "created_us" => u64::from(epoch(r.created).subsec_micros()),
        "last signal" => epoch(r.last_signal).as_secs(),
        "SSRC" => Dict::new(),
        "tags" => tags,
        "totals" => ng_dict! { "RTP" => totals_dict(totals[0]), "RTCP" => totals_dict(totals[1]) },
        "mediaproxy" => ng_dict! { "state" => r.state.name() },
    }
}

/// One media section of one side; its streams' ingress goes into `totals`.
fn media(i: usize, m: &MediaReport, totals: &mut [Totals; 2], wall: SystemTime) -> Dict {
    let mut streams = Vec::new();
    for sr in &m.streams {
        let k = &sr.kernel;
        let ingress = [
            k.fwd_packets + k.punt_packets,
            k.fwd_bytes + k.punt_bytes,
            k.mismatch_packets,
        ];
        let sums = &mut totals[usize::from(sr.rtcp)];
        for (sum, add) in sums.iter_mut().zip(ingress) {
            *sum += add;
        }
        let mut d = stream(sr, wall);
        d.set("stats", totals_dict(ingress));
        streams.push(Value::Dict(d));
    }
    let mut flags = vec![
        Value::str("initialized"),
        Value::str("send"),
        Value::str("recv"),
    ];
    if m.rtcp_mux {
        flags.push(Value::str("rtcp-mux"));
    }
    if m.asymmetric {
        flags.push(Value::str("asymmetric"));
    }
    let mut md =
        ng_dict! { "index" => i + 1, "type" => m.kind.as_str(), "protocol" => m.proto.as_str() };
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
    md
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

/// One stream of one side: rtpengine's keys, then ours under `mediaproxy`.
fn stream(r: &StreamReport, wall: SystemTime) -> Dict {
    let s = &r.status;
    let mut d = Dict::new();
    if let Some(l) = s.local.socket_addr() {
        d.push("local port", Value::from(l.port()));
        d.push("local address", Value::from(l.ip().to_string()));
        d.push(
            "family",
            Value::str(if l.is_ipv4() { "IPv4" } else { "IPv6" }),
        );
    }
    d.push("endpoint", endpoint_dict(s.latched));
    d.push("advertised endpoint", endpoint_dict(s.remote));
    if let Some(t) = r.last_seen {
        let ago = Instant::now().saturating_duration_since(t);
        let at = wall.checked_sub(ago).unwrap_or(wall);
        d.push("last packet", Value::from(epoch(at).as_secs()));
    }
    let mut flags = vec![
        Value::str(if r.rtcp { "RTCP" } else { "RTP" }),
        Value::str("filled"),
    ];
    if s.latched.is_some() {
        flags.push(Value::str("confirmed"));
    }
    if s.state == FlowState::Forward {
        flags.push(Value::str("kernelized"));
    }
    d.push("flags", Value::List(flags));
    d.push("mediaproxy", Value::Dict(relay_state(s, &r.kernel)));
    d
}

fn probe_dict(p: ProbePhase) -> Dict {
    match p {
        ProbePhase::Idle => ng_dict! { "state" => "idle" },
        ProbePhase::Probing { attempts } => {
            ng_dict! { "state" => "probing", "attempts" => u64::from(attempts) }
        }
        ProbePhase::Acked { rtt } => {
            ng_dict! { "state" => "acked", "rtt ms" => millis(rtt) }
        }
        ProbePhase::Failed { attempts } => {
            ng_dict! { "state" => "failed", "attempts" => u64::from(attempts) }
        }
        ProbePhase::Cancelled { attempts } => {
            ng_dict! { "state" => "cancelled: the far side spoke first", "attempts" => u64::from(attempts) }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the relay did with one side of a stream: latching, probing, counters.
fn relay_state(s: &SideStatus, k: &FlowCounters) -> Dict {
    let mut mp = ng_dict! {
        "state" => if s.state == FlowState::Forward { "FORWARD" } else { "HOLD" },
        "latched" => if s.latched.is_some() { "yes" } else { "no" },
    };
    if let Some(dst) = s.destination {
        mp.push("forwarding to", endpoint_dict(Some(dst)));
    }
    if let Some(after) = s.blocking_suspected {
        mp.push("blocking suspected ms", Value::from(millis(after)));
    }
    if let Some(r) = s.next_relay {
        mp.push("next relay", Value::from(r.to_string()));
    }
    mp.push("far end", Value::str(s.far_end.name()));
    if let Some(after) = s.unblocked_after {
        mp.push("unblocked after ms", Value::from(millis(after)));
    }
    mp.push("probe", Value::Dict(probe_dict(s.probe)));
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
    mp
}
