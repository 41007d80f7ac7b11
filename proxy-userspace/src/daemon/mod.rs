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
//!
//! [`Engine`]: crate::session::Engine
//! [`Calls`]: crate::ng::calls::Calls
//! [`Dataplane`]: crate::dataplane::Dataplane
//! [`Egresses`]: crate::egress::Egresses

mod control;
mod kernel;
mod ng;
mod packets;
mod stats;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use log::info;

use self::control::Control;
pub use self::ng::{Command, NgRequest};
use crate::{ng::calls::CallsConfig, session::EngineConfig};

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
            r = ng::serve_ng(sock, tx.clone()) => r,
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
    use crate::ng::calls::Interface;

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
