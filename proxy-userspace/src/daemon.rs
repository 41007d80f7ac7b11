//! The relay daemon: wires the sans-IO logic ([`Calls`] and its session engine) to the kernel
//! ([`Dataplane`]), the AF_XDP I/O thread, and the ng listener.
//!
//! Threads:
//! - the **control thread** owns the dataplane, the calls and the engine. It waits on the
//!   punted frames, the ng requests and the engine's next timer, feeds each to the logic and
//!   carries out what comes back: flow updates, frames to send, replies;
//! - the **I/O thread** (`io`) owns the AF_XDP sockets;
//! - the **tokio runtime** on the main thread serves the ng protocol over UDP and handles
//!   SIGINT/SIGTERM, after which the control thread drops the dataplane, which detaches XDP.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::XdpMode;
use crossbeam_channel::{Receiver, Sender, select};
use log::{debug, info, warn};
use proxy_common::{Endpoint, FlowCounters, FlowKey, probe::Kind};

use crate::{
    dataplane::{Dataplane, DataplaneConfig},
    frame::{FrameBuilder, UdpFrame},
    io::{self, IoHandle, Punted, TxFrame},
    nexthop::{KernelPath, Resolution, Resolver},
    ng::{
        bencode::{self, Dict, Value},
        calls::{Calls, CallsConfig, FlowStats},
    },
    probe_auth::{ProbeAuth, Rejected, unix_ms},
    session::{EngineConfig, Event, Output},
    xsk::{self, XskConfig, XskSocket},
};

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub calls: CallsConfig,
    pub engine: EngineConfig,
    /// Extra interfaces to attach XDP to, besides those carrying the media addresses.
    pub xdp_ifaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub listen_ng: SocketAddr,
    /// None: probing off (no secret, no probe port).
    pub probe_secret: Option<Vec<u8>>,
    pub max_flows: u32,
    /// Turn on IPv4/IPv6 forwarding on attached interfaces (needed by bpf_fib_lookup).
    pub set_forwarding: bool,
}

/// Per-daemon counters for the log line and `statistics`.
#[derive(Default, Debug)]
struct DaemonCounters {
    frames_unparsable: u64,
    probes_rejected: HashMap<&'static str, u64>,
    sent_af_xdp: u64,
    sent_kernel: u64,
    send_errors: u64,
    flow_errors: u64,
    blocking_suspected: u64,
    probes_acked: u64,
    probes_failed: u64,
}

/// A request from the ng listener; the reply goes back on the oneshot.
pub struct NgRequest {
    pub dict: Dict,
    pub reply: tokio::sync::oneshot::Sender<Dict>,
}

pub enum Command {
    Ng(NgRequest),
    Stop,
}

/// `FlowStats` on the real maps; CLOCK_MONOTONIC ns (bpf_ktime_get_ns) to `Instant`.
struct Kernel<'a>(&'a Dataplane);

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl FlowStats for Kernel<'_> {
    fn counters(&self, key: &Endpoint) -> Option<FlowCounters> {
        self.0.flow_stats(FlowKey::new(*key)).ok()
    }

    fn last_seen(&self, key: &Endpoint) -> Option<Instant> {
        let c = self.counters(key)?;
        if c.last_seen_ns == 0 {
            return None;
        }
        let ago = monotonic_ns().saturating_sub(c.last_seen_ns);
        Instant::now().checked_sub(Duration::from_nanos(ago))
    }
}

struct Control {
    dp: Dataplane,
    io: IoHandle,
    calls: Calls,
    resolver: Resolver,
    kernel: KernelPath,
    auth: Option<ProbeAuth>,
    probe_port: u16,
    attached: Vec<u32>,
    counters: DaemonCounters,
}

/// The netdev that carries `addr`, from getifaddrs.
fn netdev_of(addr: IpAddr) -> anyhow::Result<String> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of the family it says.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if ip == Some(addr) {
            // SAFETY: ifa_name is NUL-terminated.
            found = Some(
                unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                    .to_string_lossy()
                    .into_owned(),
            );
            break;
        }
    }
    // SAFETY: frees what getifaddrs allocated.
    unsafe { libc::freeifaddrs(ifap) };
    found.ok_or_else(|| anyhow!("no interface in this network namespace has the address {addr}"))
}

fn write_sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {path}"))
}

impl Control {
    fn new(cfg: &DaemonConfig) -> anyhow::Result<Self> {
        let probe_port = if cfg.probe_secret.is_some() {
            cfg.calls.probe_port
        } else {
            0
        };
        let mut dp = Dataplane::load(&DataplaneConfig {
            max_flows: cfg.max_flows,
            probe_port,
        })?;
        let mut ifnames: Vec<String> = Vec::new();
        for i in &cfg.calls.interfaces {
            let dev = netdev_of(i.addr)?;
            if !ifnames.contains(&dev) {
                ifnames.push(dev);
            }
        }
        for x in &cfg.xdp_ifaces {
            if !ifnames.contains(x) {
                ifnames.push(x.clone());
            }
        }
        let mut sockets = Vec::new();
        let mut attached = Vec::new();
        for name in &ifnames {
            if cfg.set_forwarding {
                for p in [
                    format!("/proc/sys/net/ipv4/conf/{name}/forwarding"),
                    format!("/proc/sys/net/ipv6/conf/{name}/forwarding"),
                ] {
                    if std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == "0") {
                        write_sysctl(&p, "1")?;
                        info!(
                            "set {p} = 1: bpf_fib_lookup only answers for interfaces that forward"
                        );
                    }
                }
            } else if std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"))
                .is_ok_and(|v| v.trim() == "0")
            {
                warn!(
                    "forwarding is off on {name}: XDP cannot look up next hops there, so FORWARD flows are sent by userspace (see --keep-sysctls)"
                );
            }
            let ifindex = dp.attach(name, cfg.xdp_mode)?;
            let queues = xsk::rx_queues(name);
            for q in 0..queues {
                let s = XskSocket::bind(ifindex, q, XskConfig::default())
                    .with_context(|| format!("AF_XDP socket on {name} queue {q}"))?;
                dp.register_socket(ifindex, q, &s)?;
                sockets.push(s);
            }
            info!(
                "attached XDP to {name} (ifindex {ifindex}, {:?} mode, {queues} rx queue(s))",
                cfg.xdp_mode
            );
            attached.push(ifindex);
        }
        let io = io::spawn(sockets)?;
        let seed = u64::from_ne_bytes(rand::random::<[u8; 8]>());
        Ok(Self {
            dp,
            io,
            calls: Calls::new(cfg.calls.clone(), cfg.engine, seed),
            resolver: Resolver::new()?,
            kernel: KernelPath::new().context("raw sockets for the kernel path")?,
            auth: cfg.probe_secret.as_deref().map(ProbeAuth::new),
            probe_port,
            attached,
            counters: DaemonCounters::default(),
        })
    }

    fn run(mut self, commands: &Receiver<Command>) {
        let mut next_housekeeping = Instant::now() + Duration::from_secs(1);
        let mut next_report = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            let wake = self
                .calls
                .engine_ref()
                .poll_timeout()
                .map_or(next_housekeeping, |t| t.min(next_housekeeping));
            let timeout = wake.saturating_duration_since(now);
            select! {
                recv(self.io.rx) -> p => match p {
                    Ok(p) => {
                        self.on_punted(&p);
                        // Drain a burst before looking at timers again.
                        for p in self.io.rx.try_iter().take(255).collect::<Vec<_>>() {
                            self.on_punted(&p);
                        }
                    }
                    Err(_) => {
                        // Without the I/O thread nothing reaches userspace any more: stop, so
                        // that a supervisor restarts the relay, rather than spin.
                        log::error!("the AF_XDP I/O thread stopped");
                        break;
                    }
                },
                recv(commands) -> c => match c {
                    Ok(Command::Ng(req)) => {
                        let mut reply = self.calls.handle(&req.dict, Instant::now(), SystemTime::now(), &Kernel(&self.dp));
                        if req.dict.get_str("command") == Some("statistics") {
                            self.add_statistics(&mut reply);
                        }
                        let _ = req.reply.send(reply);
                    }
                    Ok(Command::Stop) | Err(_) => break,
                },
                default(timeout) => {}
            }
            let now = Instant::now();
            self.calls.engine().handle_timeout(now);
            if now >= next_housekeeping {
                self.calls.housekeeping(now, &Kernel(&self.dp));
                next_housekeeping = now + Duration::from_secs(1);
            }
            self.apply_outputs();
            if now >= next_report {
                next_report = now + Duration::from_secs(10);
                self.report();
            }
        }
        info!("stopping: removing flows and detaching XDP");
        if let Err(e) = self.dp.detach_all() {
            warn!("detaching: {e:#}");
        }
    }

    /// The daemon's own figures, under `statistics.mediaproxy`.
    fn add_statistics(&self, reply: &mut Dict) {
        let mut xdp = Dict::new();
        if let Ok(g) = self.dp.global_counters() {
            for c in proxy_common::Counter::ALL {
                xdp.push(c.name(), Value::from(g.get(c)));
            }
        }
        let io = self.io.stats();
        let e = self.calls.engine_ref().counters();
        let c = &self.counters;
        let mut rejected = Dict::new();
        for k in ["malformed", "bad MAC", "stale", "replayed"] {
            rejected.push(
                k,
                Value::from(c.probes_rejected.get(k).copied().unwrap_or(0)),
            );
        }
        let mp = crate::ng_dict! {
            "xdp" => xdp,
            "af_xdp" => crate::ng_dict! {
                "rx frames" => io.rx_frames,
                "rx backlog drops" => io.rx_backlog_drops,
                "tx frames" => io.tx_frames,
                "tx ring full" => io.tx_ring_full,
                "tx errors" => io.tx_errors,
            },
            "probes" => crate::ng_dict! {
                "received" => e.probes_received,
                "unknown session" => e.probes_unknown_session,
                "rejected" => rejected,
                "acks received" => e.acks_received,
                "acks unmatched" => e.acks_unmatched,
                "acked" => c.probes_acked,
                "failed" => c.probes_failed,
            },
            "blocking suspected" => c.blocking_suspected,
            "sent over af_xdp" => c.sent_af_xdp,
            "sent via kernel" => c.sent_kernel,
            "send errors" => c.send_errors,
            "flow errors" => c.flow_errors,
            "unparsable frames" => c.frames_unparsable,
            "flows" => self.dp.flow_count(),
        };
        if let Some((_, Value::Dict(st))) = reply.0.iter_mut().find(|(k, _)| k == b"statistics") {
            st.push("mediaproxy", Value::Dict(mp));
        }
    }

    fn report(&self) {
        let g = self.dp.global_counters().unwrap_or_default();
        let io = self.io.stats();
        debug!(
            "calls {} ports {} flows {} | xdp: fwd {} punt {} | af_xdp rx {} tx {} | {:?}",
            self.calls.call_count(),
            self.calls.ports_in_use(),
            self.dp.flow_count(),
            g.get(proxy_common::Counter::FwdTx) + g.get(proxy_common::Counter::FwdRedirect),
            g.get(proxy_common::Counter::PuntHold),
            io.rx_frames,
            io.tx_frames,
            self.counters
        );
    }

    fn on_punted(&mut self, p: &Punted) {
        let f = match UdpFrame::parse(&p.frame) {
            Ok(f) => f,
            Err(e) => {
                self.counters.frames_unparsable += 1;
                debug!("unparsable punted frame on ifindex {}: {e}", p.ifindex);
                return;
            }
        };
        let payload = f.payload(&p.frame);
        if self.probe_port != 0 && f.dst.port() == self.probe_port {
            let Some(auth) = self.auth.as_mut() else {
                return;
            };
            match auth.verify(payload, unix_ms()) {
                Ok(msg) => {
                    let Some(from) = f.src.socket_addr() else {
                        return;
                    };
                    match msg.kind {
                        Kind::Probe => {
                            self.calls
                                .engine()
                                .handle_probe(f.dst, from, &msg, unix_ms(), p.at)
                        }
                        Kind::Ack => self.calls.engine().handle_ack(&msg, p.at),
                    }
                }
                Err(why) => {
                    let key = match why {
                        Rejected::Malformed(_) => "malformed",
                        Rejected::BadMac => "bad MAC",
                        Rejected::Stale => "stale",
                        Rejected::Replayed => "replayed",
                    };
                    *self.counters.probes_rejected.entry(key).or_default() += 1;
                    debug!("probe message from {} refused: {why}", f.src);
                }
            }
            return;
        }
        // The engine only weighs the kernel's last-seen time when a packet comes from someone
        // other than the latched peer (may it re-latch?). Ask the kernel (a map lookup, a
        // syscall) only then; our mirror of the flow knows the peer without one.
        let key = FlowKey::new(f.dst);
        let foreign = self
            .dp
            .flow_spec(key)
            .is_ok_and(|spec| spec.peer.is_some_and(|peer| peer != f.src));
        let last_seen = if foreign {
            Kernel(&self.dp).last_seen(&f.dst)
        } else {
            None
        };
        self.calls
            .engine()
            .handle_media(f.dst, f.src, payload, last_seen, p.at);
    }

    fn apply_outputs(&mut self) {
        while let Some(o) = self.calls.engine().poll_output() {
            match o {
                Output::Flow { key, spec } => {
                    let k = FlowKey::new(key);
                    let r = if self.dp.has_flow(k) {
                        self.dp.update_flow(k, &spec)
                    } else {
                        self.dp.add_flow(k, &spec)
                    };
                    if let Err(e) = r {
                        self.counters.flow_errors += 1;
                        warn!("flow {key}: {e:#}");
                    }
                }
                Output::RemoveFlow { key } => {
                    if self.dp.has_flow(FlowKey::new(key))
                        && let Err(e) = self.dp.remove_flow(FlowKey::new(key))
                    {
                        warn!("removing flow {key}: {e:#}");
                    }
                }
                Output::SendMedia { from, to, payload } => self.send_udp(from, to, &payload),
                Output::SendProbe { to, mut msg } => {
                    let Some(auth) = &self.auth else { continue };
                    msg.timestamp_ms = unix_ms();
                    let bytes = auth.sign(&msg);
                    let from = msg.sender.with_port(self.probe_port);
                    self.send_udp(from, Endpoint::from(to), &bytes);
                }
                Output::SendAck { from, to, mut msg } => {
                    let Some(auth) = &self.auth else { continue };
                    msg.timestamp_ms = unix_ms();
                    let bytes = auth.sign(&msg);
                    self.send_udp(from, Endpoint::from(to), &bytes);
                }
                Output::Event { stream, event } => {
                    match &event {
                        Event::BlockingSuspected { .. } => self.counters.blocking_suspected += 1,
                        Event::ProbeAcked { .. } => self.counters.probes_acked += 1,
                        Event::ProbeFailed { .. } => self.counters.probes_failed += 1,
                        _ => {}
                    }
                    info!("stream {stream}: {event:?}");
                }
            }
        }
    }

    /// Sends a UDP payload from a relay endpoint: as a complete frame over AF_XDP when the
    /// next hop is known and attached, else through the kernel's stack (which resolves it).
    fn send_udp(&mut self, from: Endpoint, to: Endpoint, payload: &[u8]) {
        let (Some(to_sa), true) = (to.socket_addr(), from.family() == to.family()) else {
            self.counters.send_errors += 1;
            return;
        };
        let builder = FrameBuilder::udp(from, to).payload(payload);
        match self.resolver.resolve(to_sa.ip()) {
            Ok(Resolution::Ready(hop)) if self.attached.contains(&hop.ifindex) => {
                self.io.send(TxFrame {
                    ifindex: hop.ifindex,
                    frame: builder.macs(hop.src_mac, hop.dst_mac).build(),
                });
                self.counters.sent_af_xdp += 1;
            }
            _ => {
                let frame = builder.build();
                match self.kernel.send(&frame[14..], to_sa) {
                    Ok(()) => self.counters.sent_kernel += 1,
                    Err(e) => {
                        self.counters.send_errors += 1;
                        debug!("kernel path to {to_sa}: {e}");
                    }
                }
            }
        }
    }
}

/// Replies by cookie for 30 to 60 s, as rtpengine does, so a call server's retransmission
/// gets the same answer and never a second allocation.
struct CookieCache {
    current: HashMap<Vec<u8>, Arc<Vec<u8>>>,
    old: HashMap<Vec<u8>, Arc<Vec<u8>>>,
    swapped: Instant,
}

impl CookieCache {
    const GENERATION: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self {
            current: HashMap::new(),
            old: HashMap::new(),
            swapped: Instant::now(),
        }
    }

    fn age(&mut self) {
        if self.swapped.elapsed() >= Self::GENERATION {
            self.old = std::mem::take(&mut self.current);
            self.swapped = Instant::now();
        }
    }

    fn get(&mut self, cookie: &[u8]) -> Option<Arc<Vec<u8>>> {
        self.age();
        self.current
            .get(cookie)
            .or_else(|| self.old.get(cookie))
            .cloned()
    }

    fn insert(&mut self, cookie: Vec<u8>, reply: Arc<Vec<u8>>) {
        self.age();
        self.current.insert(cookie, reply);
    }
}

fn error_reply(reason: &str) -> Dict {
    let mut d = Dict::new();
    d.push("result", Value::str("error"));
    d.push("error-reason", Value::str(reason));
    d
}

/// The largest ng request we take: one UDP datagram.
const MAX_REQUEST: usize = 65_507;

/// What to do with one datagram before it reaches the control thread.
enum Parsed {
    /// No cookie: rtpengine sends nothing back either.
    Ignore,
    Reply(Vec<u8>, Dict),
    Request(Vec<u8>, Dict),
}

fn parse_datagram(d: &[u8], truncated: bool) -> Parsed {
    let Some(space) = d.iter().position(|&b| b == b' ') else {
        return Parsed::Ignore;
    };
    if space == 0 {
        return Parsed::Ignore;
    }
    let cookie = d[..space].to_vec();
    let body = &d[space + 1..];
    if truncated {
        return Parsed::Reply(cookie, error_reply("Message too large"));
    }
    if body.is_empty() {
        return Parsed::Reply(cookie, error_reply("Invalid data (no payload)"));
    }
    if body[0] != b'd' {
        return Parsed::Reply(cookie, error_reply("Invalid NG data format"));
    }
    match bencode::decode_dict_prefix(body) {
        Ok(dict) => Parsed::Request(cookie, dict),
        Err(e) => {
            debug!("undecodable ng request: {e}");
            Parsed::Reply(cookie, error_reply("Could not decode bencode dictionary"))
        }
    }
}

async fn serve_ng(sock: tokio::net::UdpSocket, to_control: Sender<Command>) -> anyhow::Result<()> {
    let mut cache = CookieCache::new();
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let cookie_and_reply = match parse_datagram(&buf[..n], n > MAX_REQUEST) {
            Parsed::Ignore => {
                warn!("ng datagram without a cookie from {peer}: ignored");
                continue;
            }
            Parsed::Reply(cookie, dict) => (cookie, dict),
            Parsed::Request(cookie, dict) => {
                if let Some(cached) = cache.get(&cookie) {
                    debug!("ng request from {peer} is a retransmission: cached reply");
                    let _ = sock.send_to(&cached, peer).await;
                    continue;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                if to_control
                    .send(Command::Ng(NgRequest { dict, reply: tx }))
                    .is_err()
                {
                    bail!("the control thread is gone");
                }
                let reply = match tokio::time::timeout(Duration::from_secs(5), rx).await {
                    Ok(Ok(r)) => r,
                    _ => error_reply("Internal timeout"),
                };
                (cookie, reply)
            }
        };
        let (cookie, reply) = cookie_and_reply;
        let mut out = cookie.clone();
        out.push(b' ');
        reply.encode_into(&mut out);
        let out = Arc::new(out);
        if let Err(e) = sock.send_to(&out, peer).await {
            warn!("ng reply to {peer}: {e}");
        }
        cache.insert(cookie, out);
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    crate::caps::require()?;
    if cfg.calls.interfaces.is_empty() {
        bail!("no --interface given: the relay needs at least one media address");
    }
    if cfg.probe_secret.is_none() {
        info!(
            "no probe secret given: probing is off, and probes from other relays are not answered"
        );
    }
    let control = Control::new(&cfg)?;
    let (tx, rx) = crossbeam_channel::bounded::<Command>(1024);
    let thread = std::thread::Builder::new()
        .name("mediaproxy-control".into())
        .spawn(move || control.run(&rx))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let sock = tokio::net::UdpSocket::bind(cfg.listen_ng)
            .await
            .with_context(|| format!("binding the ng listener to {}", cfg.listen_ng))?;
        info!("ng protocol on udp {}", cfg.listen_ng);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serve_ng(sock, tx.clone()) => r,
            _ = tokio::signal::ctrl_c() => { info!("SIGINT"); Ok(()) }
            _ = term.recv() => { info!("SIGTERM"); Ok(()) }
        }
    });
    let _ = tx.send(Command::Stop);
    thread
        .join()
        .map_err(|_| anyhow!("the control thread panicked"))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ng::calls::Interface;

    #[test]
    fn datagrams_without_a_cookie_get_no_reply() {
        assert!(matches!(parse_datagram(b"nocookie", false), Parsed::Ignore));
        assert!(matches!(
            parse_datagram(b" d7:command4:pinge", false),
            Parsed::Ignore
        ));
    }

    #[test]
    fn bad_payloads_get_rtpengines_error_strings() {
        let reason = |d: &[u8], t: bool| match parse_datagram(d, t) {
            Parsed::Reply(c, r) => (c, r.get_str("error-reason").unwrap().to_owned()),
            _ => panic!("expected a reply"),
        };
        assert_eq!(
            reason(b"c1 ", false),
            (b"c1".to_vec(), "Invalid data (no payload)".to_owned())
        );
        assert_eq!(reason(b"c2 hello", false).1, "Invalid NG data format");
        assert_eq!(
            reason(b"c3 d7:command", false).1,
            "Could not decode bencode dictionary"
        );
        assert_eq!(reason(b"c4 d7:command4:pinge", true).1, "Message too large");
        assert!(matches!(
            parse_datagram(b"c5 d7:command4:pinge", false),
            Parsed::Request(..)
        ));
    }

    #[test]
    fn cookie_cache_returns_the_same_reply() {
        let mut c = CookieCache::new();
        c.insert(b"k".to_vec(), Arc::new(b"k d6:result2:oke".to_vec()));
        assert_eq!(c.get(b"k").unwrap().as_slice(), b"k d6:result2:oke");
        assert!(c.get(b"other").is_none());
        c.swapped -= CookieCache::GENERATION;
        assert!(c.get(b"k").is_some(), "still there one generation later");
        c.swapped -= CookieCache::GENERATION;
        assert!(c.get(b"k").is_none(), "gone after two");
    }

    #[test]
    fn interfaces_parse_like_rtpengines() {
        let i = Interface::parse("pub/192.0.2.1!203.0.113.1").unwrap();
        assert_eq!(
            (
                i.name.as_str(),
                i.addr.to_string(),
                i.advertised.unwrap().to_string()
            ),
            ("pub", "192.0.2.1".into(), "203.0.113.1".into())
        );
        assert_eq!(Interface::parse("2001:db8::1").unwrap().name, "default");
        assert!(Interface::parse("x/notanip").is_err());
    }
}
