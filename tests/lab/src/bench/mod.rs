//! `mediaproxy bench`: packet rates of every forwarding mode, side by side, in one run, on one
//! harness: generator → relay → sink, each in its own network namespace.
//!
//! - **Generator**: an XDP program run with `BPF_PROG_TEST_RUN` in live-frames mode (what
//!   xdp-trafficgen does): one long call per trial, paced by a token bucket inside the program,
//!   ended by a signal. It writes real RTP (version 2, PT 8, per-flow SSRC, sequence and
//!   timestamp, 214-byte frames of 20 ms G.711) with a send timestamp in the payload and a
//!   complete UDP checksum. Pinned to CPU 0.
//! - **Relay**: the mode under test, pinned to CPU 1, with the relay interface's NAPI in a
//!   thread on CPU 1 too, so the relay's cost is CPU 1's busy time.
//! - **Sink**: an XDP program that counts the frames and their one-way latency (same clock).
//!
//! Each mode's maximum loss-free rate is a binary search for loss below 0.1 % over a fixed
//! window (RFC 2544 style), run several times (the report gives the median: one search on a
//! shared machine is jitter-bound); then its rate and relay-core CPU per packet at overload,
//! the generator flat out, which hold when a loss-free rate does not. Latency and CPU per
//! packet are then measured at one offered load that every mode sustains. `--baseline` adds
//! another build of mediaproxy as a row of the same run, for an A/B of a change.

mod flood;
mod flows;
mod harness;
mod memory;
mod ngload;
mod relays;
mod report;
mod search;
mod socket_relay;

pub use flood::Flood;
use flows::{program_facts, scale_point};
use harness::{Harness, RELAY_CPU, both, cpu_busy_ns, install_signal_handler, sink_histogram};
use ngload::{ng_load, percentile_us};
use relays::{RelayUnderTest, out_dir};
use report::{
    Latency, ModeResult, Report, check, compute_ratios, kernel, machine, print_table, svg,
};
use search::{Overload, Plan, Search, loss_free, median_search, overload};
pub use socket_relay::socket_relay;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, util::nr_cpus};
use mediaproxy_lab_ebpf::FRAME_LEN;
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Short windows and few iterations: every figure, in under two minutes (CI's smoke run).
    #[arg(long)]
    pub quick: bool,
    /// Write all figures here as JSON.
    #[arg(long, default_value = "bench/out/bench.json")]
    pub json: PathBuf,
    /// Write the plot here (SVG).
    #[arg(long, default_value = "bench/out/bench.svg")]
    pub svg: PathBuf,
    /// Only check that this JSON file has a figure for every mode, and exit.
    #[arg(long)]
    pub check: Option<PathBuf>,
    /// Window in milliseconds (default 200); a trial is 7 (quick: 3) windows and passes on the
    /// median window's loss.
    #[arg(long)]
    pub window_ms: Option<u64>,
    /// Only these modes (comma-separated: `XdpNative`, `XdpSkb`, `UserspaceAfXdp`,
    /// `KernelSockets`, `KernelForward`, `Rtpengine`); the ceiling is always measured. A partial
    /// run fails `--check`.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Traffic both ways: generator → relay → sink and sink → relay → generator, the rate
    /// split evenly (the flow scaling stays one-way).
    #[arg(long)]
    pub bidirectional: bool,
    /// Flow counts for the scaling figures (default: 1,1000,100000,1000000).
    #[arg(long, value_delimiter = ',')]
    pub flows: Vec<u64>,
    /// Only time the relay's XDP program under `BPF_PROG_TEST_RUN` (seconds, no traffic): for
    /// an A/B of a change to the program.
    #[arg(long)]
    pub program_only: bool,
    /// Loss-free searches per mode, whose median the report gives (default 3, quick 1).
    #[arg(long)]
    pub runs: Option<u32>,
    /// Also measure this other build of `mediaproxy` as XDP native, beside this one in the same
    /// run (an A/B of a change: `--baseline /path/to/old/mediaproxy`).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

/// Loss-free: under 0.1 % lost in the median window of a trial, the definition of the
/// independent harness the project's performance targets were set on (< 0.1 % over 5 s).
const LOSS_FREE: f64 = 0.001;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    XdpNative,
    /// XDP native, run by the `--baseline` build.
    XdpNativeBaseline,
    XdpSkb,
    UserspaceAfXdp,
    KernelSockets,
    /// The kernel's own IPv4 forwarding of the same frames: a router's path, with no rewrite.
    KernelForward,
    Rtpengine,
    XdpDropCeiling,
}

impl Mode {
    const ALL: [Mode; 8] = [
        Mode::XdpNative,
        Mode::XdpNativeBaseline,
        Mode::XdpSkb,
        Mode::UserspaceAfXdp,
        Mode::KernelSockets,
        Mode::KernelForward,
        Mode::Rtpengine,
        Mode::XdpDropCeiling,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::XdpNative => "XDP FORWARD, native",
            Mode::XdpNativeBaseline => "XDP FORWARD, native: baseline build",
            Mode::XdpSkb => "XDP FORWARD, SKB (generic)",
            Mode::UserspaceAfXdp => "userspace over AF_XDP",
            Mode::KernelSockets => "kernel sockets (recvmmsg/sendmmsg)",
            Mode::KernelForward => "kernel IPv4 forwarding (reference, no rewrite)",
            Mode::Rtpengine => "rtpengine 10.5 (userspace)",
            Mode::XdpDropCeiling => "XDP_DROP at ingress (ceiling)",
        }
    }
}

/// Runs the benchmark `a` asks for, or checks a report (`--check`): the generator's ceiling,
/// each mode's loss-free rate, latency and CPU at a common load, flow scaling, the ng load,
/// then the report.
///
/// # Errors
///
/// When the testbed cannot be built or a measurement fails.
pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.check {
        return check(p);
    }
    proxy_userspace::caps::require()?;
    if nr_cpus().map_err(|(_, e)| e)? < 2 {
        bail!("the benchmark pins the generator and the relay to different CPUs: it needs two");
    }
    install_signal_handler();
    let plan = Plan::of(a);
    let started = Instant::now();
    eprintln!(
        "mediaproxy bench ({} profile, {} ms windows): building the topology",
        if a.quick { "quick" } else { "full" },
        plan.window.as_millis()
    );
    let (mut h, mut sink, mut rsink) = Harness::build(a.bidirectional)?;
    h.baseline.clone_from(&a.baseline);
    // First, while no program's run time is being counted.
    let mut report = Report::new(a, &plan);
    report.program = program_facts(&h)?;
    if a.program_only {
        report::print_program(&report.program);
        return Ok(());
    }
    // Per-program run time and count, while this fd lives.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let ceiling = drop_ceiling(&h, &plan, &mut report)?;
    let wanted = |m: Mode| {
        if m == Mode::XdpNativeBaseline {
            return a.baseline.is_some();
        }
        m == Mode::XdpDropCeiling
            || a.modes.is_empty()
            || a.modes
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&format!("{m:?}")))
    };
    for mode in Mode::ALL
        .into_iter()
        .filter(|m| *m != Mode::XdpDropCeiling && wanted(*m))
    {
        let sinks = &mut both(&mut sink, &mut rsink);
        report
            .modes
            .push(loss_free_of(&h, sinks, mode, ceiling, &plan)?);
    }
    latency_and_cpu(&h, &mut sink, &mut rsink, &plan, &wanted, &mut report)?;
    // How the rate holds as flows grow (XDP native).
    for &n in &plan.flows {
        eprintln!("  XDP native with {n} flows ...");
        report
            .scaling
            .push(scale_point(&h, &mut [&mut sink], n, ceiling, &plan)?);
    }
    // What one read of memory costs at the largest table's size: the floor under its figure.
    if let Some(&most) = plan.flows.iter().max() {
        let places = proxy_common::flow::place::blocks(u32::try_from(most)?)
            * proxy_common::flow::place::BLOCK;
        let bytes = places as usize * size_of::<proxy_common::FlowEntry>();
        eprintln!("  memory latency over {} MiB ...", bytes >> 20);
        // A reference, not a figure of the relay: without it the run still reports.
        report.memory = memory::measure(bytes)
            .inspect_err(|e| eprintln!("  memory latency not measured: {e:#}"))
            .ok();
    }
    report.ng = ng_load(&h, if a.quick { 2_000 } else { 30_000 })?;
    compute_ratios(&mut report);
    print_table(&report);
    write(a, &report)?;
    println!(
        "
wrote {} and {} ({:.0} s)",
        a.json.display(),
        a.svg.display(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(out_dir());
    Ok(())
}

impl Plan {
    /// The quick or the full profile, with the command line's overrides.
    fn of(a: &BenchArgs) -> Self {
        let (window_ms, repeats, bisections, runs) = if a.quick {
            (200, 3, 3, 1)
        } else {
            // Short windows, more of them: a window passes only if no stall of the shared
            // core fell into it, and the median of seven is robust to three that did not.
            (200, 7, 7, 3)
        };
        Plan {
            window: Duration::from_millis(a.window_ms.unwrap_or(window_ms)),
            repeats,
            bisections,
            runs: a.runs.unwrap_or(runs).max(1),
            flows: if a.flows.is_empty() {
                vec![1, 1_000, 100_000, 1_000_000]
            } else {
                a.flows.clone()
            },
        }
    }
}

/// The generator's own ceiling, flat out into `XDP_DROP` at the relay's ingress, and the
/// drop program's loss-free rate (the harness's ceiling): the first row of the report.
#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "benchmark rates: positive, far below 2^52"
)]
fn drop_ceiling(h: &Harness, plan: &Plan, report: &mut Report) -> anyhow::Result<u64> {
    let (drop_relay, drop_target) = h.start(Mode::XdpDropCeiling)?;
    let RelayUnderTest::Drop(mut drop_progs) = drop_relay else {
        bail!("the XDP_DROP ceiling started a relay process");
    };
    let mut drop_sinks: Vec<&mut Ebpf> = drop_progs.iter_mut().collect();
    let flat = h.trial(&mut drop_sinks, drop_target, 0, plan.window)?;
    report.generator_ceiling_pps = (flat.sent as f64 / flat.seconds) as u64;
    let ceiling = report.generator_ceiling_pps;
    eprintln!(
        "  generator ceiling: {:.3} Mpps sent, {:.3} Mpps seen by XDP_DROP at the relay",
        ceiling as f64 / 1e6,
        flat.rate() as f64 / 1e6
    );
    let mut runs = Vec::new();
    for _ in 0..plan.runs {
        runs.push(loss_free(
            h,
            &mut drop_sinks,
            drop_target,
            ceiling,
            plan,
            || Ok(None),
            Mode::XdpDropCeiling.label(),
        )?);
    }
    let o = overload(h, &mut drop_sinks, drop_target, plan)?;
    report.modes.push(ModeResult::of(
        Mode::XdpDropCeiling,
        median_search(runs),
        &o,
        String::new(),
    ));
    Ok(ceiling)
}

/// `mode`'s loss-free rate: its relay started, warmed up (the generator's side latched) and
/// checked to forward where it says, then the search.
fn loss_free_of(
    h: &Harness,
    sinks: &mut [&mut Ebpf],
    mode: Mode,
    ceiling: u64,
    plan: &Plan,
) -> anyhow::Result<ModeResult> {
    eprintln!("  {} ...", mode.label());
    let (relay, target) = h.start(mode)?;
    let mut relay = Some(relay);
    h.trial(sinks, target, 1000, Duration::from_millis(200))?;
    let note = h.check_state(mode)?;
    let mut target = target;
    let mut runs = Vec::new();
    for _ in 0..plan.runs {
        runs.push(loss_free(
            h,
            sinks,
            target,
            ceiling,
            plan,
            || {
                // rtpengine 10.5 stalls a stream for good after an overload: start it afresh,
                // with its session set up again.
                if mode != Mode::Rtpengine {
                    return Ok(None);
                }
                drop(relay.take());
                std::thread::sleep(Duration::from_millis(300));
                let (r, t) = h.start(mode)?;
                relay = Some(r);
                target = t;
                Ok(Some(t))
            },
            mode.label(),
        )?);
    }
    // Last, since rtpengine may not recover from it.
    let o = overload(h, sinks, target, plan)?;
    drop(relay);
    std::thread::sleep(Duration::from_millis(200));
    Ok(ModeResult::of(mode, median_search(runs), &o, note))
}

/// Latency and CPU per packet of every mode at one load that every mode sustains: 80 % of
/// the lowest loss-free rate.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
fn latency_and_cpu(
    h: &Harness,
    sink: &mut Ebpf,
    rsink: &mut Option<Ebpf>,
    plan: &Plan,
    wanted: &dyn Fn(Mode) -> bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let lowest = report
        .modes
        .iter()
        .map(|m| m.loss_free_pps)
        .filter(|r| *r > 0)
        .min()
        .unwrap_or(1000);
    let common = (lowest * 8 / 10).max(1000);
    eprintln!(
        "  latency and CPU at {:.1} kpps (80 % of the lowest loss-free rate)",
        common as f64 / 1e3
    );
    let idle_busy = {
        let b0 = cpu_busy_ns(RELAY_CPU);
        std::thread::sleep(plan.window);
        cpu_busy_ns(RELAY_CPU).saturating_sub(b0)
    };
    for mode in Mode::ALL.into_iter().filter(|m| wanted(*m)) {
        let (relay, target) = h.start(mode)?;
        let measure = |progs: &mut [&mut Ebpf]| -> anyhow::Result<(Latency, f64)> {
            h.trial(progs, target, 1000, Duration::from_millis(200))?;
            let r = h.trial(progs, target, common, plan.window * plan.repeats)?;
            let mut hist = sink_histogram(progs[0])?;
            for p in progs.iter().skip(1) {
                hist.add(sink_histogram(p)?)?;
            }
            let lat = Latency {
                offered_pps: common,
                p50_us: percentile_us(&hist, 0.5),
                p99_us: percentile_us(&hist, 0.99),
                p999_us: percentile_us(&hist, 0.999),
                max_us: hist.max() as f64 / 1000.0,
                samples: hist.len(),
            };
            // The core's background load, measured idle, is not the relay's.
            Ok((
                lat,
                r.relay_busy_ns.saturating_sub(idle_busy) as f64 / r.received.max(1) as f64,
            ))
        };
        let (lat, cpu) = if let RelayUnderTest::Drop(mut p) = relay {
            measure(&mut p.iter_mut().collect::<Vec<_>>())?
        } else {
            let m = measure(&mut both(sink, rsink))?;
            drop(relay);
            m
        };
        let label = format!("{mode:?}");
        let Some(entry) = report.modes.iter_mut().find(|m| m.mode == label) else {
            bail!("{label}: no loss-free result to add latency to");
        };
        entry.latency = Some(lat);
        entry.cpu_ns_per_packet = Some(cpu);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

impl ModeResult {
    /// `mode`'s row from the median of its loss-free searches (with every search's rate) and
    /// its overload trial.
    fn of(mode: Mode, (s, runs): (Search, Vec<u64>), o: &Overload, note: String) -> Self {
        // The sink's program runs on the relay core (a veth redirect runs the peer's XDP in
        // the sender's context) but is no part of the relay; the drop ceiling's counting
        // program is the relay there.
        let sink = if mode == Mode::XdpDropCeiling {
            0.0
        } else {
            o.prog_ns[1].unwrap_or(0.0)
        };
        ModeResult {
            mode: format!("{mode:?}"),
            label: mode.label().into(),
            loss_free_pps: s.rate,
            cpu_ns_per_packet_at_loss_free: s.cpu_ns,
            xdp_program_ns: s.prog_ns[0],
            sink_program_ns: s.prog_ns[1],
            trials: s.trials,
            loss_free_runs: runs,
            overload_pps: o.rate,
            cpu_ns_per_packet_at_overload: o.cpu_ns,
            cpu_ns_per_packet_at_overload_without_sink: o.cpu_ns.map(|c| c - sink),
            xdp_program_ns_at_overload: o.prog_ns[0],
            sink_program_ns_at_overload: o.prog_ns[1],
            note,
            ..ModeResult::default()
        }
    }
}

impl Report {
    /// An empty report of this machine and this run's settings.
    #[expect(clippy::cast_possible_truncation, reason = "a window of milliseconds")]
    fn new(a: &BenchArgs, plan: &Plan) -> Self {
        Report {
            machine: machine(),
            kernel: kernel(),
            cpus: nr_cpus().unwrap_or(0),
            profile: if a.quick { "quick" } else { "full" }.into(),
            window_ms: plan.window.as_millis() as u64,
            windows_per_trial: plan.repeats,
            frame_bytes: FRAME_LEN,
            bidirectional: a.bidirectional,
            ..Report::default()
        }
    }
}

/// Writes the report's JSON and its plot where `a` says.
fn write(a: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    for (path, text) in [
        (&a.json, serde_json::to_string_pretty(report)?),
        (&a.svg, svg(report)),
    ] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}
