//! The control thread's state ([`Control`], the interfaces it serves) and its loop: setup,
//! attaching XDP, the `AF_XDP` sockets, and the `select!` that hands each wake-up to a
//! handler.

use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use crossbeam_channel::{Receiver, select};
use log::{debug, info, warn};

use super::{
    Command, DaemonConfig, DaemonCounters, HOUSEKEEPING, JOIN_BUDGET, NEIGHBOUR_KICK, PUNT_BURST,
    REPORT, XdpModeChoice,
    kernel::{NetChange, kernel_flow, media_devices, spawn_monitor},
};
use crate::{
    dataplane::{AttachMode, Dataplane, DataplaneConfig},
    egress::Egresses,
    fallback::FallbackSocket,
    io::{self, IoHandle},
    netlink::Monitor,
    nexthop::KernelPath,
    ng::{
        calls::Calls,
        command::{CommandKind, Request},
        error::NgError,
        reply,
    },
    probe_auth::ProbeAuth,
    session::Engine,
    xsk::{self, XskConfig, XskSocket},
};

/// An interface the relay serves, by name: it may be deleted and created again.
#[derive(Debug)]
pub(super) struct Iface {
    pub(super) name: String,
    /// `None` while the device does not exist.
    pub(super) ifindex: Option<u32>,
    pub(super) mode: Option<AttachMode>,
    /// Up with carrier: `AF_XDP` sockets are (re)built on the transition to it.
    pub(super) running: bool,
    pub(super) queues: u32,
    /// `xdp_tx_errors` + `xdp_xmit_errors` last read, for the runtime check.
    pub(super) xdp_errors: Option<u64>,
}

pub(super) struct Control {
    pub(super) dp: Dataplane,
    pub(super) io: IoHandle,
    /// The media path: streams, latching, probes, timers.
    pub(super) engine: Engine,
    /// The signalling: calls, ports, SDP; it changes `engine` only inside a command.
    pub(super) calls: Calls,
    pub(super) egresses: Egresses,
    pub(super) kernel: KernelPath,
    pub(super) auth: Option<ProbeAuth>,
    pub(super) probe_port: u16,
    mode: XdpModeChoice,
    pub(super) ifaces: Vec<Iface>,
    net: Receiver<NetChange>,
    pub(super) resync_at: Option<Instant>,
    /// The host's own addresses, and the IPv4 broadcast addresses of its subnets: never a
    /// source to learn (XDP sees spoofed ones before the kernel's martian checks do).
    pub(super) own: std::collections::HashSet<std::net::IpAddr>,
    /// Packets that may still be joined inside the relay in this round of outputs: a bound,
    /// so that two calls whose SDPs name each other's endpoints cannot loop forever.
    pub(super) joined_budget: u32,
    pub(super) counters: DaemonCounters,
}

impl Control {
    pub(super) fn new(cfg: &DaemonConfig) -> anyhow::Result<Self> {
        // The probe port is served with or without a secret: unsigned probes are how relays
        // of different operators find each other.
        let probe_port = cfg.calls.probe_port;
        let mut dp = Dataplane::load(&DataplaneConfig {
            max_flows: cfg.max_flows,
            media_addrs: cfg.calls.interfaces.iter().map(|i| i.addr).collect(),
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
    pub(super) fn attach(&mut self, iface: &mut Iface) -> anyhow::Result<()> {
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
    pub(super) fn sockets(&mut self, iface: &mut Iface) -> anyhow::Result<()> {
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
    pub(super) fn run(mut self, commands: &Receiver<Command>) {
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
}
