//! `mediaproxy`: the relay daemon and its tools.

use std::{
    ffi::OsString, net::SocketAddr, os::unix::process::CommandExt as _, path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use proxy_userspace::{
    daemon::{self, DaemonConfig, XdpModeChoice},
    ng::{
        bencode::{Dict, Value},
        calls::{CallsConfig, Interface},
        client::NgClient,
    },
    session::{EngineConfig, FarSide},
};

/// Where the ng protocol listens unless told otherwise: rtpengine's documented default, so a
/// call server's stock `rtpengine_sock` finds us.
const DEFAULT_NG: &str = "127.0.0.1:22222";

/// A duration's whole milliseconds, for a command-line default.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Parser)]
#[command(
    name = "mediaproxy",
    version,
    about = "An XDP media relay for VoIP, driven by rtpengine's ng protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Native (driver) XDP where the driver takes it, else generic. Flows whose egress drops
    /// native XDP frames (a container's veth) are sent by the TC program.
    Auto,
    /// Native (driver) XDP, or refuse to start. Flows whose egress drops native frames are
    /// still sent by the TC program.
    Native,
    /// Generic XDP in the network stack everywhere: slower, delivers on any egress.
    Skb,
}

impl From<Mode> for XdpModeChoice {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => XdpModeChoice::Auto,
            Mode::Native => XdpModeChoice::Native,
            Mode::Skb => XdpModeChoice::Skb,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay.
    Run(RunArgs),
    /// Check that this host can run the relay, and say what is missing; with `--interface`,
    /// also which path flows leaving through each interface would take.
    Check {
        /// An interface to examine (repeatable).
        #[arg(long = "interface")]
        interfaces: Vec<String>,
    },
    /// Send one ng command to a running relay and print the reply.
    Ctl(CtlArgs),
    /// Build a namespace topology and show media flowing through one relay, and through two
    /// relays in series behind a NAT (runs `mediaproxy-lab demo`; `--help` for its options).
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measure packet rates of every forwarding mode side by side, and rtpengine's (runs
    /// `mediaproxy-lab bench`; `--help` for its options).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A media address, as rtpengine's: NAME/ADDR[!ADVERTISED] or ADDR. Repeatable; the
    /// first is the default. XDP is attached to the interfaces that carry these addresses.
    #[arg(long = "interface", required = true)]
    interfaces: Vec<String>,
    /// Also attach XDP to this interface (media arriving on an interface without a media
    /// address). Repeatable.
    #[arg(long = "xdp-iface")]
    xdp_ifaces: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: Mode,
    /// Where the ng protocol listens (Kamailio's `rtpengine_sock`).
    #[arg(long, default_value = DEFAULT_NG)]
    listen_ng: SocketAddr,
    #[arg(long, default_value_t = CallsConfig::default().port_min)]
    port_min: u16,
    #[arg(long, default_value_t = CallsConfig::default().port_max)]
    port_max: u16,
    /// The deployment's probe port, the same on every relay.
    #[arg(long, default_value_t = proxy_common::probe::DEFAULT_PORT)]
    probe_port: u16,
    /// File holding the deployment's probe secret, shared by its relays. Without one, probes
    /// and ACKs go unsigned, which relays of other operators answer in kind; an unsigned
    /// message can only release media toward the signalled address.
    #[arg(long)]
    probe_secret_file: Option<PathBuf>,
    /// Never probe (probes from others are still answered).
    #[arg(long)]
    no_probing: bool,
    /// Where media toward a party that has not spoken goes: `signalled` (the default, as
    /// rtpengine): to its SDP address at once, so one-way streams and early media flow;
    /// `confirmed`: held until it speaks or a relay there answers a probe (no early media
    /// toward a silent party, nothing toward an unconfirmed address).
    #[arg(long, value_enum, default_value = "signalled")]
    far_side: FarSideArg,
    /// Silence from the far side after the near side's first packet before blocking is
    /// suspected.
    #[arg(long, default_value_t = millis(EngineConfig::default().blocking_timeout))]
    blocking_timeout_ms: u64,
    #[arg(long, default_value_t = millis(EngineConfig::default().probe_rto))]
    probe_rto_ms: u64,
    #[arg(long, default_value_t = EngineConfig::default().probe_attempts)]
    probe_attempts: u32,
    /// A new source may take over a latched peer silent this long (0, the default: never).
    /// A risk: hold, VAD/DTX and RTCP's 5 s interval give a port-spraying attacker exactly
    /// such a silence to take the side over (RTP Bleed). Re-INVITEs re-open learning anyway.
    #[arg(long, default_value_t = 0)]
    relatch_after_secs: u64,
    /// Calls held at once; more get rtpengine's load-limit answer.
    #[arg(long, default_value_t = CallsConfig::default().max_calls)]
    max_calls: usize,
    /// Media idle this long is torn down.
    #[arg(long, default_value_t = CallsConfig::default().media_timeout.as_secs())]
    media_timeout_secs: u64,
    /// Default for `delete` without `delete-delay`.
    #[arg(long, default_value_t = CallsConfig::default().delete_delay.as_secs())]
    delete_delay_secs: u64,
    /// Flow table capacity (two flows per RTP or RTCP stream). Kernel memory: 168-byte places
    /// in the flow array for two to four times as many flows (a power of two of 65,536-place
    /// blocks), and 48 bytes of counters per place and per flow; about 31 MiB at the default,
    /// 500 MiB at 1,000,000.
    #[arg(long, default_value_t = proxy_common::flow::DEFAULT_MAX_FLOWS)]
    max_flows: u32,
    /// Log the XDP program's events up to this level, under the target `mediaproxy::kernel`
    /// (today: every packet it drops, and why, at `debug`). `off`, the default, leaves them
    /// out of the loaded program, so they cost nothing per packet. For diagnosis, not for a
    /// relay under load: at `debug` a flood is a flood of log lines.
    #[arg(long, value_enum, default_value = "off")]
    kernel_log: KernelLog,
    /// Never let XDP forward: every packet goes through userspace (`AF_XDP` in, rewrite, `AF_XDP`
    /// out). For measuring that path; a relay in service does not want it.
    #[arg(long)]
    userspace_only: bool,
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The relay's ng address.
    #[arg(long, default_value = DEFAULT_NG)]
    ng: SocketAddr,
    /// The command: ping, offer, answer, delete, query, list, statistics, probe.
    command: String,
    /// Request keys as key=value. Values for flags, replace, direction, rtcp-mux and
    /// received-from are comma-separated lists; sdp=@FILE reads a file; an integer value
    /// for delete-delay or limit is sent as an integer.
    pairs: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut logger = env_logger::Builder::new();
    logger.filter_level(log::LevelFilter::Info);
    // The kernel's events are logged at their own level: asking for them lets them through
    // the default filter too (RUST_LOG, parsed after, still has the last word).
    if let Cmd::Run(a) = &cli.command {
        logger.filter_module("mediaproxy::kernel", a.kernel_log.filter());
    }
    logger.parse_env(env_logger::Env::default()).init();
    match cli.command {
        Cmd::Run(a) => run(a),
        Cmd::Check { interfaces } => {
            let missing = proxy_userspace::caps::check();
            if missing.is_empty() {
                println!(
                    "ok: root, kernel BTF, AF_XDP, kernel {:?}",
                    proxy_userspace::caps::kernel_version().unwrap_or_default()
                );
            }
            for m in &missing {
                println!("missing: {}", m.0);
            }
            let mut bad = missing.len();
            for i in &interfaces {
                match proxy_userspace::egress::describe_interface(i) {
                    Ok(lines) => {
                        println!("{i}:");
                        for l in lines {
                            println!("  {l}");
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        println!("{i}: {e:#}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} problem(s) found");
            }
            Ok(())
        }
        Cmd::Ctl(a) => ctl(&a),
        Cmd::Demo { args } => lab("demo", &args),
        Cmd::Bench { args } => lab("bench", &args),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KernelLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLog {
    /// The log filter that lets the asked-for events through.
    fn filter(self) -> log::LevelFilter {
        match self {
            KernelLog::Off => log::LevelFilter::Off,
            KernelLog::Error => log::LevelFilter::Error,
            KernelLog::Warn => log::LevelFilter::Warn,
            KernelLog::Info => log::LevelFilter::Info,
            KernelLog::Debug => log::LevelFilter::Debug,
            KernelLog::Trace => log::LevelFilter::Trace,
        }
    }

    fn level(self) -> Option<aya_log::Level> {
        match self {
            KernelLog::Off => None,
            KernelLog::Error => Some(aya_log::Level::Error),
            KernelLog::Warn => Some(aya_log::Level::Warn),
            KernelLog::Info => Some(aya_log::Level::Info),
            KernelLog::Debug => Some(aya_log::Level::Debug),
            KernelLog::Trace => Some(aya_log::Level::Trace),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FarSideArg {
    Signalled,
    Confirmed,
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let interfaces = a
        .interfaces
        .iter()
        .map(|s| Interface::parse(s).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.port_min >= a.port_max || a.port_max - a.port_min < 4 {
        bail!("--port-min must be below --port-max, with room for at least two port pairs");
    }
    let probe_secret = a
        .probe_secret_file
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?
        .map(|s| s.trim_ascii().to_vec());
    if probe_secret.as_ref().is_some_and(|s| s.len() < 16) {
        bail!("the probe secret must be at least 16 bytes");
    }
    daemon::run(DaemonConfig {
        calls: CallsConfig {
            interfaces,
            port_min: a.port_min,
            port_max: a.port_max,
            probe_port: a.probe_port,
            delete_delay: Duration::from_secs(a.delete_delay_secs),
            media_timeout: Duration::from_secs(a.media_timeout_secs),
            max_calls: a.max_calls,
            max_flows: a.max_flows as usize,
            ..CallsConfig::default()
        },
        engine: EngineConfig {
            blocking_timeout: Duration::from_millis(a.blocking_timeout_ms),
            probing: !a.no_probing,
            far_side: match a.far_side {
                FarSideArg::Signalled => FarSide::Signalled,
                FarSideArg::Confirmed => FarSide::Confirmed,
            },
            probe_port: a.probe_port,
            probe_rto: Duration::from_millis(a.probe_rto_ms),
            probe_attempts: a.probe_attempts,
            relatch_after: (a.relatch_after_secs > 0)
                .then(|| Duration::from_secs(a.relatch_after_secs)),
            kernel_forwarding: !a.userspace_only,
            ..EngineConfig::default()
        },
        xdp_ifaces: a.xdp_ifaces,
        xdp_mode: a.xdp_mode.into(),
        listen_ng: a.listen_ng,
        probe_secret,
        max_flows: a.max_flows,
        kernel_log: a.kernel_log.level(),
    })
}

/// Runs `mediaproxy-lab <command>`, the binary installed beside this one, in place of this
/// process (as `git foo` runs `git-foo`). The lab builds namespaces, generators and rtpengine
/// around a relay; it depends on the relay's library, so the relay cannot link it.
fn lab(command: &str, args: &[OsString]) -> anyhow::Result<()> {
    let lab = match std::env::var_os("MEDIAPROXY_LAB_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("mediaproxy-lab"),
    };
    let err = std::process::Command::new(&lab)
        .arg(command)
        .args(args)
        .exec();
    Err(err).with_context(|| {
        format!(
            "running {} (the demo and the benchmark ship in mediaproxy-lab: cargo build -p mediaproxy-lab)",
            lab.display()
        )
    })
}

fn ctl(a: &CtlArgs) -> anyhow::Result<()> {
    let mut d = Dict::new();
    d.push("command", Value::str(&a.command));
    for p in &a.pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("{p:?} is not key=value"))?;
        let value = match k {
            "flags" | "replace" | "direction" | "rtcp-mux" | "received-from" => {
                Value::List(v.split(',').map(Value::str).collect())
            }
            "delete-delay" | "limit" => v.parse::<i64>().map_or_else(|_| Value::str(v), Value::Int),
            _ => match v.strip_prefix('@') {
                Some(path) => {
                    Value::Bytes(std::fs::read(path).with_context(|| format!("reading {path}"))?)
                }
                None => Value::str(v),
            },
        };
        d.push(k, value);
    }
    let reply = NgClient::new(a.ng)?.request(&d)?;
    if let Some(sdp) = reply.get("sdp").and_then(Value::as_bytes) {
        println!("{}", String::from_utf8_lossy(sdp));
    }
    println!("{reply:#?}");
    if reply.get_str("result") == Some("error") {
        bail!("{}", reply.get_str("error-reason").unwrap_or("error"));
    }
    Ok(())
}
