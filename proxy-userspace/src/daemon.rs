//! The relay daemon: wires the sans-IO logic (the session [`Engine`] and the ng call model
//! [`Calls`], side by side) to the kernel
//! ([`Dataplane`]), the `AF_XDP` I/O thread, the next hops ([`Egresses`]) and the ng listener.
//!
//! Threads:
//! - the **control thread** owns the dataplane, the engine, the calls and the next hops. It
//!   waits on the punted packets, the ng requests, the kernel's network changes and the
//!   engine's next timer, feeds each to the logic and carries out what comes back: flow
//!   updates, packets to send, replies. Media, probes, ACKs and timers go to the engine
//!   directly; an ng command goes to the calls, which borrow the engine for it;
//! - the **I/O thread** (`io`) owns the `AF_XDP` sockets and the fallback sockets;
//! - the **monitor thread** turns rtnetlink and netdev notifications into messages;
//! - the **tokio runtime** on the main thread serves the ng protocol over UDP and handles
//!   SIGINT/SIGTERM, after which the control thread drops the dataplane, which detaches XDP.
//!
//! The daemon changes nothing on the host but its own programs and sockets: no sysctl. The
//! fast path needs no `forwarding=1` because next hops come from userspace, not from
//! `bpf_fib_lookup`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, select};
use log::{debug, info, warn};
use proxy_common::{
    Endpoint, FlowCounters, FlowKey,
    probe::{Kind, MESSAGE_LEN, ProbeMessage},
    wire::{Header as _, Ipv4Hdr, Ipv6Hdr, UdpHdr},
};

use crate::{
    dataplane::{AttachMode, Dataplane, DataplaneConfig, Egress},
    egress::{Change, Egresses},
    fallback::FallbackSocket,
    frame::{FrameBuilder, UdpFrame},
    io::{self, IoHandle, Packet, Punted, TxFrame},
    netdev::FeatureMonitor,
    netlink::{Monitor, NetEvent, Rtnl},
    nexthop::{KernelPath, Resolution},
    ng::{
        bencode::{self, Dict, Value},
        calls::{Calls, CallsConfig, KernelFlow},
        command::{CommandKind, Request},
        error::NgError,
        reply,
    },
    probe_auth::{ProbeAuth, Rejected, unix_ms},
    session::{Engine, EngineConfig, Event, Output},
    xsk::{self, XskConfig, XskSocket},
};

/// Which XDP mode the daemon attaches in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpModeChoice {
    /// Native where the driver takes it, else generic.
    #[default]
    Auto,
    /// Native, or fail to start.
    Native,
    /// Generic (SKB) everywhere.
    Skb,
}

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub calls: CallsConfig,
    pub engine: EngineConfig,
    /// Extra interfaces to attach XDP to, besides those carrying the media addresses.
    pub xdp_ifaces: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub listen_ng: SocketAddr,
    /// None: probing off (no secret, no probe port).
    pub probe_secret: Option<Vec<u8>>,
    pub max_flows: u32,
    /// The kernel program's events up to this level (`--kernel-log`); `None`: none.
    pub kernel_log: Option<aya_log::Level>,
}

/// How often the daemon expires calls and checks devices for undelivered native frames.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often in-use neighbours are re-validated (`NTF_USE`). Below the kernel's default
/// `base_reachable_time` (30 s), so an entry the fast path uses does not sit STALE for long.
const NEIGHBOUR_KICK: Duration = Duration::from_secs(5);
/// Network changes come in bursts (a link going down removes its routes one by one): the
/// re-resolution waits this long after the first of a burst.
const RESYNC_DEBOUNCE: Duration = Duration::from_millis(10);
/// How often the debug report line is logged.
const REPORT: Duration = Duration::from_secs(10);
/// Punted packets handled before timers are looked at again.
const PUNT_BURST: usize = 256;
/// Depth of the queue of ng requests into the control thread.
const COMMAND_QUEUE: usize = 1024;
/// Packets joined inside the relay per round of the control loop (see `joined_budget`).
const JOIN_BUDGET: u32 = 4096;
/// How long a request may wait for the control thread; the listener waits a little longer,
/// so that it always gets the control thread's answer, be it "Internal timeout".
const NG_DEADLINE: Duration = Duration::from_millis(4500);
const NG_WAIT: Duration = Duration::from_secs(5);
/// The netlink watcher's poll timeout: how soon it notices that the daemon stopped.
const NETLINK_POLL_MS: i32 = 1000;

/// Per-daemon counters for the log line and `statistics`.
#[derive(Default, Debug)]
struct DaemonCounters {
    frames_unparsable: u64,
    probes_rejected: HashMap<&'static str, u64>,
    sent_af_xdp: u64,
    sent_kernel: u64,
    send_errors: u64,
    /// Packets userspace would have sent to an address with no unicast route (local,
    /// broadcast, multicast, anycast, unreachable): not sent.
    send_refused: u64,
    flow_errors: u64,
    blocking_suspected: u64,
    probes_acked: u64,
    probes_failed: u64,
    /// Datagrams the fallback socket received (reassembled fragments, what TC left).
    datagrams: u64,
    reattached: u64,
    /// Punted packets from a source that is never learnt (the host's own addresses, a
    /// subnet broadcast; the engine counts loopback, multicast and the like): dropped.
    martian_sources: u64,
    /// Packets for one of this relay's own media endpoints (a call that loops through the
    /// relay twice), handed to that endpoint's stream inside the relay.
    joined: u64,
    /// ng requests that waited in the queue past their deadline: not run, answered
    /// "Internal timeout".
    ng_stale: u64,
}

/// A request from the ng listener; the reply goes back on the oneshot.
pub struct NgRequest {
    pub dict: Dict,
    pub reply: tokio::sync::oneshot::Sender<Dict>,
    /// A request still queued at this instant is not run: the listener has answered it
    /// "Internal timeout", and a retransmission must not find it executed behind its back.
    pub deadline: Instant,
}

pub enum Command {
    Ng(NgRequest),
    Stop,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the kernel program's clock (`bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // Monotonic time is never negative.
    ts.tv_sec.unsigned_abs() * 1_000_000_000 + ts.tv_nsec.unsigned_abs()
}

/// A flow's counters from the real maps, its last-seen time turned from `CLOCK_MONOTONIC` ns
/// (`bpf_ktime_get_ns`) into an `Instant`.
fn kernel_flow(dp: &Dataplane, key: &Endpoint) -> Option<KernelFlow> {
    let counters: FlowCounters = dp.flow_stats(FlowKey::new(*key)).ok()?;
    let last_seen = if counters.last_seen_ns == 0 {
        None
    } else {
        let ago = monotonic_ns().saturating_sub(counters.last_seen_ns);
        Instant::now().checked_sub(Duration::from_nanos(ago))
    };
    Some(KernelFlow {
        counters,
        last_seen,
    })
}

/// What the kernel told the monitor thread.
enum NetChange {
    Net(Vec<NetEvent>),
    /// `(ifindex, xdp features)`; `None` when notifications were lost.
    Features(Option<Vec<(u32, u64)>>),
}

/// Polls the rtnetlink and netdev notification sockets and forwards what they say.
fn spawn_monitor(
    mut rtnl: Monitor,
    mut features: Option<FeatureMonitor>,
) -> std::io::Result<Receiver<NetChange>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("mediaproxy-netmon".into())
        .spawn(move || {
            loop {
                let mut pfds = vec![libc::pollfd {
                    fd: rtnl.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                if let Some(f) = &features {
                    pfds.push(libc::pollfd {
                        fd: f.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
                // An error (EINTR) is a spurious wake-up: the reads below find nothing.
                let _ = crate::sys::poll(&mut pfds, NETLINK_POLL_MS);
                let events = rtnl.read();
                if !events.is_empty() && tx.send(NetChange::Net(events)).is_err() {
                    return;
                }
                if let Some(f) = &mut features {
                    let msg = match f.read() {
                        Ok(v) if v.is_empty() => None,
                        Ok(v) => Some(NetChange::Features(Some(v))),
                        Err(_) => Some(NetChange::Features(None)),
                    };
                    if let Some(m) = msg
                        && tx.send(m).is_err()
                    {
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// An interface the relay serves, by name: it may be deleted and created again.
#[derive(Debug)]
struct Iface {
    name: String,
    /// `None` while the device does not exist.
    ifindex: Option<u32>,
    mode: Option<AttachMode>,
    /// Up with carrier: `AF_XDP` sockets are (re)built on the transition to it.
    running: bool,
    queues: u32,
    /// `xdp_tx_errors` + `xdp_xmit_errors` last read, for the runtime check.
    xdp_errors: Option<u64>,
}

struct Control {
    dp: Dataplane,
    io: IoHandle,
    /// The media path: streams, latching, probes, timers.
    engine: Engine,
    /// The signalling: calls, ports, SDP; it changes `engine` only inside a command.
    calls: Calls,
    egresses: Egresses,
    kernel: KernelPath,
    auth: Option<ProbeAuth>,
    probe_port: u16,
    mode: XdpModeChoice,
    ifaces: Vec<Iface>,
    net: Receiver<NetChange>,
    resync_at: Option<Instant>,
    /// The host's own addresses, and the IPv4 broadcast addresses of its subnets: never a
    /// source to learn (XDP sees spoofed ones before the kernel's martian checks do).
    own: std::collections::HashSet<std::net::IpAddr>,
    /// Packets that may still be joined inside the relay in this round of outputs: a bound,
    /// so that two calls whose SDPs name each other's endpoints cannot loop forever.
    joined_budget: u32,
    counters: DaemonCounters,
}

/// The interfaces that carry the media addresses, plus the extra ones, by name.
fn media_devices(cfg: &DaemonConfig) -> anyhow::Result<Vec<String>> {
    let mut rtnl = Rtnl::new().context("rtnetlink")?;
    let addrs = rtnl.addresses().context("listing addresses")?;
    let links = rtnl.links().context("listing links")?;
    let mut names: Vec<String> = Vec::new();
    for i in &cfg.calls.interfaces {
        let ifindex = addrs
            .iter()
            .find(|(_, a)| *a == i.addr)
            .map(|(ix, _)| *ix)
            .ok_or_else(|| {
                anyhow!(
                    "no interface in this network namespace has the address {}",
                    i.addr
                )
            })?;
        let name = links
            .iter()
            .find(|l| l.index == ifindex)
            .map(|l| l.name.clone())
            .ok_or_else(|| anyhow!("the interface carrying {} vanished", i.addr))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for x in &cfg.xdp_ifaces {
        if !names.contains(x) {
            names.push(x.clone());
        }
    }
    Ok(names)
}

impl Control {
    fn new(cfg: &DaemonConfig) -> anyhow::Result<Self> {
        // The probe port is served with or without a secret: unsigned probes are how relays
        // of different operators find each other.
        let probe_port = cfg.calls.probe_port;
        let mut dp = Dataplane::load(&DataplaneConfig {
            max_flows: cfg.max_flows,
            probe_port,
            kernel_log: cfg.kernel_log,
        })?;
        let names = media_devices(cfg)?;
        let fallback = vec![
            FallbackSocket::bind(false).context("the IPv4 fallback socket")?,
            FallbackSocket::bind(true).context("the IPv6 fallback socket")?,
        ];
        dp.attach_lookup(&fallback[0], &fallback[1])?;
        let io = io::spawn(Vec::new(), fallback, probe_port)?;
        let egresses = Egresses::new().context("rtnetlink for next hops")?;
        let monitor = Monitor::new().context("subscribing to rtnetlink notifications")?;
        let features = match egresses.netdev().map(crate::netdev::Netdev::monitor) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                warn!(
                    "no xdp-features notifications ({e}): a veth peer that gains or loses XDP later is noticed only by its error counters"
                );
                None
            }
            None => None,
        };
        let net = spawn_monitor(monitor, features)?;
        let seed = u64::from_ne_bytes(rand::random::<[u8; 8]>());
        let mut c = Self {
            dp,
            io,
            engine: Engine::new(cfg.engine, seed),
            calls: Calls::new(cfg.calls.clone(), seed),
            egresses,
            kernel: KernelPath::new().context("raw sockets for the kernel path")?,
            auth: cfg.probe_secret.as_deref().map(ProbeAuth::new),
            probe_port,
            mode: cfg.xdp_mode,
            ifaces: Vec::new(),
            net,
            resync_at: None,
            own: std::collections::HashSet::new(),
            joined_budget: JOIN_BUDGET,
            counters: DaemonCounters::default(),
        };
        c.refresh_own_addresses();
        for name in names {
            let mut iface = Iface {
                name,
                ifindex: None,
                mode: None,
                running: false,
                queues: 0,
                xdp_errors: None,
            };
            c.attach(&mut iface)?;
            c.sockets(&mut iface)?;
            c.ifaces.push(iface);
        }
        Ok(c)
    }

    /// Attaches the programs to the interface in the chosen mode.
    fn attach(&mut self, iface: &mut Iface) -> anyhow::Result<()> {
        let name = iface.name.clone();
        let (mode, ifindex) = match self.mode {
            XdpModeChoice::Native => (
                AttachMode::Native,
                self.dp.attach(&name, AttachMode::Native)?,
            ),
            XdpModeChoice::Skb => (AttachMode::Skb, self.dp.attach(&name, AttachMode::Skb)?),
            XdpModeChoice::Auto => match self.dp.attach(&name, AttachMode::Native) {
                Ok(i) => (AttachMode::Native, i),
                Err(e) => {
                    warn!("{e:#}; attaching to {name} in generic (SKB) mode instead");
                    (AttachMode::Skb, self.dp.attach(&name, AttachMode::Skb)?)
                }
            },
        };
        iface.ifindex = Some(ifindex);
        iface.mode = Some(mode);
        iface.xdp_errors = crate::ethtool::xdp_errors(&name);
        let link = self.egresses.resolver().link(ifindex).ok().flatten();
        iface.running = link.as_ref().is_some_and(|l| l.up && l.lower_up);
        let egress_path = self
            .egresses
            .device(ifindex)
            .map(|d| (d.path(), d.features));
        let (path, features) = egress_path.unwrap_or(("unknown", None));
        let features = features.map_or_else(|| "unknown".to_owned(), |f| format!("{f:#x}"));
        match mode {
            AttachMode::Native => info!(
                "attached to {name} (ifindex {ifindex}): native XDP{}; xdp-features {features}: flows leaving through {name} are sent by {path}",
                if self.mode == XdpModeChoice::Native {
                    " as asked"
                } else {
                    ""
                },
            ),
            AttachMode::Skb => info!(
                "attached to {name} (ifindex {ifindex}): generic (SKB) XDP, which delivers on any egress; xdp-features {features}"
            ),
        }
        if mode == AttachMode::Native && path != "native XDP" {
            info!(
                "{name} does not take native XDP frames (a veth whose peer runs neither XDP nor GRO, as in a container): native XDP hands those flows to the TC program, which sends them through the device's normal transmit path"
            );
        }
        Ok(())
    }

    /// (Re)builds the interface's `AF_XDP` sockets, one per rx queue.
    fn sockets(&mut self, iface: &mut Iface) -> anyhow::Result<()> {
        let Some(ifindex) = iface.ifindex else {
            return Ok(());
        };
        self.io.remove_interface(ifindex);
        let queues = xsk::rx_queues(&iface.name);
        let mut socks = Vec::new();
        for q in 0..queues {
            let s = XskSocket::bind(ifindex, q, XskConfig::default())
                .with_context(|| format!("AF_XDP socket on {} queue {q}", iface.name))?;
            self.dp.register_socket(ifindex, q, &s)?;
            socks.push(s);
        }
        iface.queues = queues;
        self.io.add_sockets(socks);
        debug!("{}: {queues} AF_XDP socket(s)", iface.name);
        Ok(())
    }

    /// The control loop. Long (about 100 lines) on purpose: one `select!` over everything
    /// that wakes the control thread, and what runs after each wake-up, read best in one
    /// place; each arm calls one handler.
    fn run(mut self, commands: &Receiver<Command>) {
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        let mut next_kick = Instant::now() + NEIGHBOUR_KICK;
        let mut next_report = Instant::now() + REPORT;
        loop {
            let now = Instant::now();
            let mut wake = self
                .engine
                .poll_timeout()
                .map_or(next_housekeeping, |t| t.min(next_housekeeping));
            if let Some(t) = self.resync_at {
                wake = wake.min(t);
            }
            let timeout = wake.saturating_duration_since(now);
            // Probes and ACKs first: control work, never behind a burst of media punts.
            for p in self
                .io
                .priority
                .try_iter()
                .take(PUNT_BURST)
                .collect::<Vec<_>>()
            {
                self.on_punted(&p);
            }
            select! {
                recv(self.io.priority) -> p => {
                    if let Ok(p) = p {
                        self.on_punted(&p);
                    }
                }
                recv(self.io.rx) -> p => if let Ok(p) = p {
                    self.on_punted(&p);
                    // Drain a burst before looking at timers again.
                    for p in self.io.rx.try_iter().take(PUNT_BURST - 1).collect::<Vec<_>>() {
                        self.on_punted(&p);
                    }
                } else {
                    // Without the I/O thread nothing reaches userspace any more: stop, so
                    // that a supervisor restarts the relay, rather than spin.
                    log::error!("the AF_XDP I/O thread stopped");
                    break;
                },
                recv(commands) -> c => match c {
                    Ok(Command::Ng(req)) => {
                        if Instant::now() > req.deadline {
                            self.counters.ng_stale += 1;
                            let _ = req.reply.send(reply::error(&NgError::InternalTimeout));
                        } else {
                            let dp = &self.dp;
                            let request = Request::parse(&req.dict);
                            let mut reply = self.calls.respond(
                                &mut self.engine,
                                &request,
                                Instant::now(),
                                SystemTime::now(),
                                &|key| kernel_flow(dp, key),
                            );
                            if request.kind == Some(CommandKind::Statistics) {
                                self.add_statistics(&mut reply);
                            }
                            let _ = req.reply.send(reply);
                        }
                    }
                    Ok(Command::Stop) | Err(_) => break,
                },
                recv(self.net) -> n => if let Ok(change) = n { self.on_net(change) } else {
                    log::error!("the network monitor thread stopped");
                    break;
                },
                default(timeout) => {}
            }
            let now = Instant::now();
            self.engine.handle_timeout(now);
            if self.resync_at.is_some_and(|t| now >= t) {
                self.resync_at = None;
                // An address came or went: the relay's own set (never a source, never a
                // destination, the probe port's) follows it.
                self.refresh_own_addresses();
                let changes = self.egresses.resync();
                self.apply_changes(changes);
            }
            if now >= next_housekeeping {
                let dp = &self.dp;
                self.calls
                    .housekeeping(&mut self.engine, now, &|key| kernel_flow(dp, key));
                self.check_devices();
                next_housekeeping = now + HOUSEKEEPING;
            }
            if now >= next_kick {
                self.egresses.kick();
                next_kick = now + NEIGHBOUR_KICK;
            }
            self.apply_outputs();
            if now >= next_report {
                next_report = now + REPORT;
                self.report();
            }
        }
        info!("stopping: removing flows and detaching XDP");
        if let Err(e) = self.dp.detach_all() {
            warn!("detaching: {e:#}");
        }
    }

    /// A probe address of this relay: its port is the probe port, and its address the one
    /// the probe arrived at, one of the host's, or an advertised one (behind a 1:1 NAT the
    /// prober knows only that).
    fn is_own_probe_address(&self, receiver: Endpoint, arrived_at: Endpoint) -> bool {
        if receiver.port() != self.probe_port {
            return false;
        }
        let Some(ip) = receiver.ip() else {
            return false;
        };
        receiver.ip() == arrived_at.ip()
            || self.own.contains(&ip)
            || self
                .calls
                .config()
                .interfaces
                .iter()
                .any(|i| i.advertised == Some(ip) || i.addr == ip)
    }

    /// Re-reads the host's addresses: the relay's own, and its subnets' broadcast addresses.
    fn refresh_own_addresses(&mut self) {
        let Ok(list) = self.egresses.resolver().rtnl().address_prefixes() else {
            return;
        };
        let mut own = std::collections::HashSet::new();
        let list_addrs = list.iter().map(|(_, ip, _)| *ip).collect();
        for (_, ip, prefix) in list {
            own.insert(ip);
            if let std::net::IpAddr::V4(a) = ip
                && prefix < 31
            {
                let mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                own.insert(std::net::IpAddr::V4((u32::from(a) | mask).into()));
            }
        }
        self.calls.set_local_addresses(own.iter().copied());
        let addrs: std::collections::HashSet<std::net::IpAddr> = list_addrs;
        if let Err(e) = self.dp.set_local_addresses(&addrs) {
            warn!("the relay's addresses for probes: {e:#}");
        }
        self.own = own;
    }

    fn schedule_resync(&mut self) {
        if self.resync_at.is_none() {
            self.resync_at = Some(Instant::now() + RESYNC_DEBOUNCE);
        }
    }

    fn apply_changes(&mut self, changes: Vec<Change>) {
        for (key, egress) in changes {
            if let Err(e) = self.dp.set_egress(key, egress) {
                self.counters.flow_errors += 1;
                debug!("next hop of flow {}: {e:#}", key.local);
            }
        }
    }

    fn on_net(&mut self, change: NetChange) {
        match change {
            NetChange::Features(Some(list)) => {
                for (ifindex, f) in list {
                    let changes = self.egresses.on_features(ifindex, f);
                    self.apply_changes(changes);
                }
            }
            NetChange::Features(None) => {
                // Lost notifications: forget every device, so that each is asked again.
                let known: Vec<u32> = self.egresses.devices().keys().copied().collect();
                for i in known {
                    self.egresses.forget_link(i);
                }
                self.schedule_resync();
            }
            NetChange::Net(events) => {
                for e in events {
                    self.on_net_event(e);
                }
            }
        }
    }

    fn on_net_event(&mut self, e: NetEvent) {
        match e {
            NetEvent::Neighbour { ifindex, ip, mac } => {
                let changes = self.egresses.on_neighbour(ifindex, ip, mac);
                self.apply_changes(changes);
            }
            NetEvent::Route | NetEvent::Address { .. } | NetEvent::Overflow => {
                self.schedule_resync();
            }
            NetEvent::LinkGone { index, name } => {
                self.egresses.forget_link(index);
                self.schedule_resync();
                if let Some(i) = self.ifaces.iter().position(|f| f.ifindex == Some(index)) {
                    warn!(
                        "{name} (ifindex {index}) was deleted: detached; it is attached again when a device of that name appears"
                    );
                    self.io.remove_interface(index);
                    if let Err(e) = self.dp.detach(index) {
                        debug!("{e:#}");
                    }
                    let f = &mut self.ifaces[i];
                    f.ifindex = None;
                    f.running = false;
                } else {
                    self.dp.forget_device(index);
                }
            }
            NetEvent::Link(link) => {
                self.egresses.forget_link(link.index);
                self.schedule_resync();
                let Some(i) = self.ifaces.iter().position(|f| f.name == link.name) else {
                    return;
                };
                let mut iface = std::mem::replace(
                    &mut self.ifaces[i],
                    Iface {
                        name: String::new(),
                        ifindex: None,
                        mode: None,
                        running: false,
                        queues: 0,
                        xdp_errors: None,
                    },
                );
                if iface.ifindex != Some(link.index) {
                    if let Some(old) = iface.ifindex {
                        self.io.remove_interface(old);
                        let _ = self.dp.detach(old);
                    }
                    match self.attach(&mut iface) {
                        Ok(()) => {
                            self.counters.reattached += 1;
                            info!(
                                "{} is back (ifindex {}): attached again",
                                iface.name, link.index
                            );
                        }
                        Err(e) => warn!("attaching to the new {}: {e:#}", iface.name),
                    }
                    iface.running = false;
                }
                let running = link.up && link.lower_up;
                if running && !iface.running && iface.ifindex.is_some() {
                    // After a down/up or a re-creation the queues may be new: new sockets.
                    if let Err(e) = self.sockets(&mut iface) {
                        warn!("AF_XDP sockets on {}: {e:#}", iface.name);
                    }
                }
                iface.running = running;
                self.ifaces[i] = iface;
            }
        }
    }

    /// The runtime half of delivery detection: a device whose driver counts native frames
    /// it could not deliver (a veth's `xdp_tx_errors` and `xdp_xmit_errors`) and whose count
    /// grew is moved to the TC path, whatever its xdp-features said.
    fn check_devices(&mut self) {
        let mut demote = Vec::new();
        for f in &mut self.ifaces {
            let Some(ifindex) = f.ifindex else { continue };
            let now = crate::ethtool::xdp_errors(&f.name);
            if let (Some(before), Some(after)) = (f.xdp_errors, now)
                && after > before
            {
                demote.push(ifindex);
            }
            f.xdp_errors = now;
        }
        for ifindex in demote {
            let changes = self.egresses.demote(ifindex);
            self.apply_changes(changes);
        }
    }

    /// The daemon's own figures, under `statistics.mediaproxy`.
    fn add_statistics(&mut self, reply: &mut Dict) {
        let mut xdp = Dict::new();
        if let Ok(g) = self.dp.global_counters() {
            for c in proxy_common::Counter::ALL {
                xdp.push(c.name(), Value::from(g.get(c)));
            }
        }
        let io = self.io.stats();
        let e = self.engine.counters();
        let c = &self.counters;
        let mut rejected = Dict::new();
        for k in [
            "malformed",
            "bad MAC",
            "stale",
            "replayed",
            "replay cache full",
            "wrong receiver",
        ] {
            rejected.push(
                k,
                Value::from(c.probes_rejected.get(k).copied().unwrap_or(0)),
            );
        }
        let (dsts, ready) = self.egresses.summary();
        let mut mp = crate::ng_dict! {
            "xdp" => xdp,
            "af_xdp" => crate::ng_dict! {
                "rx frames" => io.rx_frames,
                "rx backlog drops" => io.rx_backlog_drops,
                "rx priority drops" => io.rx_priority_drops,
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
            "sends refused" => c.send_refused,
            "fallback datagrams" => c.datagrams,
            "flow errors" => c.flow_errors,
            "unparsable frames" => c.frames_unparsable,
            "flows" => self.dp.flow_count(),
            "next hops" => crate::ng_dict! {
                "destinations" => dsts,
                "resolved" => ready,
                "lookup errors" => self.egresses.errors,
            },
            "interfaces reattached" => c.reattached,
            "martian sources" => c.martian_sources + e.martian_sources,
            "joined inside the relay" => c.joined,
            "ng requests too late to run" => c.ng_stale,
            "unverified probes and acks" => e.unverified,
            "sprayer packets refused" => e.sprayer_refused,
        };
        // How long each side's media took to go on from its first packet.
        let mut unblocked = Dict::new();
        for (i, n) in e.unblocked_after.iter().enumerate() {
            let label = crate::session::UNBLOCK_BUCKETS_MS
                .get(i)
                .map_or_else(|| "longer".to_owned(), |b| format!("<= {b} ms"));
            unblocked.push(&label, Value::from(*n));
        }
        mp.push("unblocked after", Value::Dict(unblocked));
        mp.push("interfaces", Value::List(self.interface_report()));
        if let Some((_, Value::Dict(st))) = reply.0.iter_mut().find(|(k, _)| k == b"statistics") {
            st.push("mediaproxy", Value::Dict(mp));
        }
    }

    /// Per interface: the XDP mode, whether native frames are delivered there, and which
    /// path flows leaving through it take.
    fn interface_report(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..self.ifaces.len() {
            let (name, ifindex, mode, queues, errors) = {
                let f = &self.ifaces[i];
                (f.name.clone(), f.ifindex, f.mode, f.queues, f.xdp_errors)
            };
            let mut d = crate::ng_dict! { "name" => name.as_str() };
            match ifindex {
                Some(ix) => {
                    d.push("ifindex", Value::from(u64::from(ix)));
                    d.push(
                        "xdp mode",
                        Value::str(mode.map_or("none", AttachMode::name)),
                    );
                    d.push("rx queues", Value::from(u64::from(queues)));
                    if let Some(dev) = self.egresses.device(ix) {
                        d.push(
                            "native frames delivered",
                            Value::str(if dev.native() { "yes" } else { "no" }),
                        );
                        d.push("egress path", Value::str(dev.path()));
                        d.push(
                            "xdp features",
                            Value::str(
                                &dev.features
                                    .map_or_else(|| "unknown".to_owned(), |f| format!("{f:#x}")),
                            ),
                        );
                    }
                    if let Some(e) = errors {
                        d.push("undelivered native frames", Value::from(e));
                    }
                }
                None => {
                    d.push("state", Value::str("deleted: waiting for it to come back"));
                }
            }
            out.push(Value::Dict(d));
        }
        out
    }

    fn report(&self) {
        let g = self.dp.global_counters().unwrap_or_default();
        let io = self.io.stats();
        debug!(
            "calls {} ports {} flows {} | xdp: fwd {} tc {} punt {} | af_xdp rx {} tx {} | {:?}",
            self.calls.call_count(),
            self.calls.ports_in_use(),
            self.dp.flow_count(),
            g.get(proxy_common::Counter::FwdTx) + g.get(proxy_common::Counter::FwdRedirect),
            g.get(proxy_common::Counter::TcFwd),
            g.get(proxy_common::Counter::PuntHold),
            io.rx_frames,
            io.tx_frames,
            self.counters
        );
    }

    /// A PROBE or an ACK at the probe port: authenticated if it can be, then the engine's.
    fn on_probe_message(&mut self, src: Endpoint, dst: Endpoint, payload: &[u8], at: Instant) {
        let checked = match crate::probe_auth::check(self.auth.as_mut(), payload, unix_ms()) {
            // Signed with another secret: a relay of another operator, or a forger.
            // Counted, then taken for what an unsigned message may do, nothing more.
            Err(Rejected::BadMac) => {
                *self.counters.probes_rejected.entry("bad MAC").or_default() += 1;
                crate::probe_auth::check(None, payload, unix_ms())
            }
            other => other,
        };
        match checked {
            Ok((msg, trust)) => {
                let Some(from) = src.socket_addr() else {
                    return;
                };
                // A PROBE names the relay it is for: one of ours, at our probe port. A
                // captured probe replayed at another site with the same private
                // addresses, or at an HA partner, is refused here.
                if msg.kind == Kind::Probe && !self.is_own_probe_address(msg.receiver, dst) {
                    *self
                        .counters
                        .probes_rejected
                        .entry("wrong receiver")
                        .or_default() += 1;
                    debug!("probe from {src} for {}: not this relay", msg.receiver);
                    return;
                }
                match msg.kind {
                    Kind::Probe => self
                        .engine
                        .handle_probe(dst, from, &msg, trust, unix_ms(), at),
                    Kind::Ack => self.engine.handle_ack(&msg, from, trust, at),
                }
            }
            Err(why) => {
                let key = match why {
                    Rejected::Malformed(_) => "malformed",
                    Rejected::BadMac => "bad MAC",
                    Rejected::Stale => "stale",
                    Rejected::Replayed => "replayed",
                    Rejected::Overloaded => "replay cache full",
                };
                *self.counters.probes_rejected.entry(key).or_default() += 1;
                debug!("probe message from {src} refused: {why}");
            }
        }
    }

    fn on_punted(&mut self, p: &Punted) {
        let (src, dst, payload) = match &p.packet {
            Packet::Frame(frame) => match UdpFrame::parse(frame) {
                Ok(f) => (f.src, f.dst, f.payload(frame)),
                Err(e) => {
                    self.counters.frames_unparsable += 1;
                    debug!("unparsable punted frame on ifindex {}: {e}", p.ifindex);
                    return;
                }
            },
            Packet::Datagram { src, dst, payload } => {
                self.counters.datagrams += 1;
                (*src, *dst, payload.as_slice())
            }
        };
        if self.probe_port != 0 && dst.port() == self.probe_port {
            self.on_probe_message(src, dst, payload, p.at);
            return;
        }
        if src.ip().is_some_and(|ip| self.own.contains(&ip)) {
            self.counters.martian_sources += 1;
            return;
        }
        // The engine weighs the kernel's last-seen time only to re-latch after silence, which
        // is off unless the operator turned it on; and only for a packet from someone other
        // than the latched peer. Ask the kernel (a map lookup, a syscall) only then.
        let relatch = self.engine.config().relatch_after.is_some();
        let key = FlowKey::new(dst);
        let foreign = relatch
            && self
                .dp
                .flow_spec(key)
                .is_ok_and(|spec| spec.peer.is_some_and(|peer| peer != src));
        let last_seen = if foreign {
            kernel_flow(&self.dp, &dst).and_then(|k| k.last_seen)
        } else {
            None
        };
        let payload = payload.to_vec();
        self.engine
            .handle_media(dst, src, &payload, last_seen, p.at);
    }

    /// A probe message stamped with the wall clock, signed if it may be and we hold the
    /// secret, unsigned otherwise.
    fn seal(&self, mut msg: ProbeMessage) -> [u8; MESSAGE_LEN] {
        msg.timestamp_ms = unix_ms();
        match &self.auth {
            Some(auth) if !msg.unsigned => auth.sign(&msg),
            _ => msg.emit_unsigned(),
        }
    }

    fn apply_outputs(&mut self) {
        self.joined_budget = JOIN_BUDGET;
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Flow { key, spec } => {
                    let k = FlowKey::new(key);
                    let egress: Option<Egress> = self.egresses.egress_for(k, &spec);
                    let r = if self.dp.has_flow(k) {
                        self.dp.update_flow(k, &spec, egress)
                    } else {
                        self.dp.add_flow(k, &spec, egress)
                    };
                    if let Err(e) = r {
                        self.counters.flow_errors += 1;
                        warn!("flow {key}: {e:#}");
                    }
                }
                Output::RemoveFlow { key } => {
                    let k = FlowKey::new(key);
                    self.egresses.forget_flow(k);
                    if self.dp.has_flow(k)
                        && let Err(e) = self.dp.remove_flow(k)
                    {
                        warn!("removing flow {key}: {e:#}");
                    }
                }
                Output::SendMedia { from, to, payload } => self.send_udp(from, to, &payload),
                Output::SendProbe { to, msg } => {
                    let bytes = self.seal(msg);
                    let from = msg.sender.with_port(self.probe_port);
                    self.send_udp(from, Endpoint::from(to), &bytes);
                }
                Output::SendAck { from, to, msg } => {
                    let bytes = self.seal(msg);
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

    /// Sends a UDP payload from a relay endpoint: as a complete frame over `AF_XDP` when the
    /// next hop is known, attached and large enough, else through the kernel's stack (which
    /// resolves the neighbour or fragments). Never to an address without a unicast route:
    /// that is how a spoofed local source would turn the relay into a path to its own
    /// sockets.
    fn send_udp(&mut self, from: Endpoint, to: Endpoint, payload: &[u8]) {
        let (Some(to_ip), true) = (to.ip(), from.family() == to.family()) else {
            self.counters.send_errors += 1;
            return;
        };
        // One of this relay's own media endpoints (a call that loops through the relay
        // twice, as a B2BUA hairpin makes it): joined inside the relay, never sent out to
        // loop back, and never refused.
        if self.engine.stream_of(&to).is_some() {
            if self.joined_budget == 0 {
                self.counters.send_refused += 1;
                return;
            }
            self.joined_budget -= 1;
            self.counters.joined += 1;
            let payload = payload.to_vec();
            self.engine
                .handle_media(to, from, &payload, None, Instant::now());
            return;
        }
        let ip_header = if to_ip.is_ipv4() {
            Ipv4Hdr::LEN
        } else {
            Ipv6Hdr::LEN
        };
        let ip_len = ip_header + UdpHdr::LEN + payload.len();
        let attached = |ix: u32, ifaces: &[Iface]| ifaces.iter().any(|f| f.ifindex == Some(ix));
        match self.egresses.for_send(from, to_ip, Instant::now()) {
            Resolution::Unreachable => {
                self.counters.send_refused += 1;
                debug!("not sending to {to}: no unicast route");
            }
            Resolution::Ready { hop, .. }
                if attached(hop.ifindex, &self.ifaces) && ip_len <= usize::from(hop.mtu) =>
            {
                let frame = FrameBuilder::udp(from, to)
                    .macs(hop.src_mac, hop.dst_mac)
                    .payload(payload)
                    .build();
                self.io.send(TxFrame {
                    ifindex: hop.ifindex,
                    frame,
                });
                self.counters.sent_af_xdp += 1;
            }
            _ => match self.kernel.send(from, to, payload) {
                Ok(()) => self.counters.sent_kernel += 1,
                Err(e) => {
                    self.counters.send_errors += 1;
                    debug!("kernel path to {to}: {e}");
                }
            },
        }
    }
}

/// Replies by peer and cookie for 30 to 60 s, as rtpengine keeps them, so that a call
/// server's retransmission gets the same answer and never a second allocation. Keyed by the
/// peer too: another client that happens to reuse a cookie gets its own answer, not this
/// one's. Bounded in bytes: past the bound the older generation goes early, and a reply that
/// still does not fit is not cached (its retransmission runs again, which for an offer finds
/// the call and its ports already there).
struct CookieCache {
    current: HashMap<(SocketAddr, Vec<u8>), Arc<Vec<u8>>>,
    old: HashMap<(SocketAddr, Vec<u8>), Arc<Vec<u8>>>,
    current_bytes: usize,
    old_bytes: usize,
    swapped: Instant,
    max_bytes: usize,
}

impl CookieCache {
    const GENERATION: Duration = Duration::from_secs(30);
    /// Replies of a few kB each: room for tens of thousands of requests a minute.
    const MAX_BYTES: usize = 64 << 20;
    /// Bytes counted per entry beyond its cookie and reply: the key's address and two
    /// `Arc`/`Vec` headers, so that many tiny replies cannot outgrow the bound.
    const ENTRY_OVERHEAD: usize = 64;

    fn new() -> Self {
        Self::with_bound(Self::MAX_BYTES)
    }

    fn with_bound(max_bytes: usize) -> Self {
        Self {
            current: HashMap::new(),
            old: HashMap::new(),
            current_bytes: 0,
            old_bytes: 0,
            swapped: Instant::now(),
            max_bytes,
        }
    }

    fn swap(&mut self) {
        self.old = std::mem::take(&mut self.current);
        self.old_bytes = std::mem::take(&mut self.current_bytes);
        self.swapped = Instant::now();
    }

    fn age(&mut self) {
        if self.swapped.elapsed() >= Self::GENERATION {
            self.swap();
        }
    }

    fn get(&mut self, peer: SocketAddr, cookie: &[u8]) -> Option<Arc<Vec<u8>>> {
        self.age();
        let k = (peer, cookie.to_vec());
        self.current.get(&k).or_else(|| self.old.get(&k)).cloned()
    }

    fn insert(&mut self, peer: SocketAddr, cookie: Vec<u8>, reply: Arc<Vec<u8>>) {
        self.age();
        let size = cookie.len() + reply.len() + Self::ENTRY_OVERHEAD;
        if size > self.max_bytes {
            return;
        }
        if self.bytes() + size > self.max_bytes {
            self.swap();
            if self.old_bytes + size > self.max_bytes {
                self.old.clear();
                self.old_bytes = 0;
            }
        }
        self.current_bytes += size;
        if let Some(prev) = self.current.insert((peer, cookie), reply) {
            self.current_bytes -= prev.len().min(self.current_bytes);
        }
    }

    fn bytes(&self) -> usize {
        self.current_bytes + self.old_bytes
    }
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
        return Parsed::Reply(cookie, reply::error(&NgError::MessageTooLarge));
    }
    if body.is_empty() {
        return Parsed::Reply(cookie, reply::error(&NgError::NoPayload));
    }
    if body[0] != b'd' {
        return Parsed::Reply(cookie, reply::error(&NgError::NotADictionary));
    }
    match bencode::decode_dict_prefix(body) {
        Ok(dict) => Parsed::Request(cookie, dict),
        Err(e) => {
            debug!("undecodable ng request: {e}");
            Parsed::Reply(cookie, reply::error(&NgError::BadBencode))
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
                if let Some(cached) = cache.get(peer, &cookie) {
                    debug!("ng request from {peer} is a retransmission: cached reply");
                    let _ = sock.send_to(&cached, peer).await;
                    continue;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let req = NgRequest {
                    dict,
                    reply: tx,
                    deadline: Instant::now() + NG_DEADLINE,
                };
                match to_control.try_send(Command::Ng(req)) {
                    Ok(()) => {}
                    Err(crossbeam_channel::TrySendError::Full(_)) => {
                        // Shed load rather than block the listener; not cached, so a
                        // retransmission may find room.
                        let mut out = cookie.clone();
                        out.push(b' ');
                        reply::error(&NgError::InternalTimeout).encode_into(&mut out);
                        let _ = sock.send_to(&out, peer).await;
                        continue;
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        bail!("the control thread is gone")
                    }
                }
                let reply = match tokio::time::timeout(NG_WAIT, rx).await {
                    Ok(Ok(r)) => r,
                    _ => reply::error(&NgError::InternalTimeout),
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
        cache.insert(peer, cookie, out);
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
///
/// # Errors
/// When the host lacks a capability, an interface or address is missing, or the programs do
/// not load: each with the reason, before anything is attached.
#[expect(
    clippy::needless_pass_by_value,
    reason = "the configuration is the daemon's for its whole life"
)]
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    crate::caps::require()?;
    if cfg.calls.interfaces.is_empty() {
        bail!("no --interface given: the relay needs at least one media address");
    }
    if cfg.probe_secret.is_none() {
        info!(
            "no probe secret given: probes go out unsigned, and only unsigned probes are answered in kind (an unsigned probe or ACK can only release media toward the signalled address)"
        );
    }
    let control = Control::new(&cfg)?;
    let (tx, rx) = crossbeam_channel::bounded::<Command>(COMMAND_QUEUE);
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

    fn peer(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn cookie_cache_returns_the_same_reply() {
        let mut c = CookieCache::new();
        c.insert(
            peer(1),
            b"k".to_vec(),
            Arc::new(b"k d6:result2:oke".to_vec()),
        );
        assert_eq!(
            c.get(peer(1), b"k").unwrap().as_slice(),
            b"k d6:result2:oke"
        );
        assert!(c.get(peer(1), b"other").is_none());
        c.swapped -= CookieCache::GENERATION;
        assert!(
            c.get(peer(1), b"k").is_some(),
            "still there one generation later"
        );
        c.swapped -= CookieCache::GENERATION;
        assert!(c.get(peer(1), b"k").is_none(), "gone after two");
    }

    #[test]
    fn another_peer_reusing_a_cookie_does_not_get_this_reply() {
        let mut c = CookieCache::new();
        c.insert(peer(1), b"0_1_1".to_vec(), Arc::new(b"secret".to_vec()));
        assert!(c.get(peer(2), b"0_1_1").is_none());
        assert!(c.get(peer(1), b"0_1_1").is_some());
    }

    #[test]
    fn cookie_cache_stays_within_its_bytes() {
        let mut c = CookieCache::with_bound(10_000);
        for i in 0..1000u32 {
            c.insert(peer(1), i.to_be_bytes().to_vec(), Arc::new(vec![0; 500]));
            assert!(c.bytes() <= 10_000, "after {i}: {}", c.bytes());
        }
        // The newest is there; the oldest went early.
        assert!(c.get(peer(1), &999u32.to_be_bytes()).is_some());
        assert!(c.get(peer(1), &0u32.to_be_bytes()).is_none());
        // A reply larger than the bound is not cached at all.
        c.insert(peer(1), b"big".to_vec(), Arc::new(vec![0; 20_000]));
        assert!(c.get(peer(1), b"big").is_none());
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
