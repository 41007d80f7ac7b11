//! The report: its JSON shape, the ratios between modes, the table, the plot, and `--check`.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, bail};
use aya::util::nr_cpus;
use serde::{Deserialize, Serialize};

use super::Mode;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub offered_pps: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub samples: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: String,
    pub label: String,
    /// Highest rate with loss below 0.01 %.
    pub loss_free_pps: u64,
    /// (offered pps, loss fraction) of every trial of the search.
    pub trials: Vec<(u64, f64)>,
    pub latency: Option<Latency>,
    /// Relay core busy time per forwarded packet, at the common load (includes the cost of
    /// waking up for few packets).
    pub cpu_ns_per_packet: Option<f64>,
    /// The same at the mode's own loss-free rate (the cost when busy).
    pub cpu_ns_per_packet_at_loss_free: Option<f64>,
    /// Of that, the relay's XDP program (`mediaproxy`), per run (`BPF_ENABLE_STATS`).
    pub xdp_program_ns: Option<f64>,
    /// And the sink's counting program, which runs on the relay core too.
    pub sink_program_ns: Option<f64>,
    pub note: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgramFacts {
    pub xlated_bytes: u32,
    pub jited_bytes: u32,
    pub verified_instructions: u32,
    /// `BPF_PROG_TEST_RUN`, best of three runs of 10^6 repeats: a packet to no flow (`XDP_PASS`),
    /// a FORWARD packet (lookup, FIB, rewrite, redirect), and the same with the FIB lookup's
    /// share estimated by a flow whose next hop the FIB cannot give (no neighbour).
    pub test_run_ns_no_flow: f64,
    pub test_run_ns_forward: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScalePoint {
    pub flows: u64,
    pub loss_free_pps: u64,
    /// Kernel memory of the flow table and counters, per flow (from the maps' fdinfo).
    pub map_bytes_per_flow: f64,
    pub install_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub machine: String,
    pub kernel: String,
    pub cpus: usize,
    pub profile: String,
    pub window_ms: u64,
    pub windows_per_trial: u32,
    pub frame_bytes: usize,
    /// Both directions at once, rates in total.
    pub bidirectional: bool,
    /// The most the generator pushed with nothing paced (its own ceiling).
    pub generator_ceiling_pps: u64,
    pub modes: Vec<ModeResult>,
    pub scaling: Vec<ScalePoint>,
    /// The relay's XDP program: translated and `JITed` size, instructions the verifier walked.
    pub program: ProgramFacts,
    pub ratios: BTreeMap<String, f64>,
    pub ng: NgFigures,
}

/// The call-server interface under load: offer/answer pairs per second, and how many calls
/// one instance held.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NgFigures {
    /// Calls set up (one offer and one answer each, one audio m= line: RTP and RTCP streams,
    /// four kernel flows) per second, one request at a time.
    pub calls_per_second: f64,
    /// Offers per second within that (the offer half of each pair).
    pub offers_per_second: f64,
    pub calls_held: u64,
    pub flows_held: u64,
    /// The daemon's resident memory with all of them.
    pub daemon_rss_mib: f64,
    /// Why it stopped at `calls_held`.
    pub stopped_by: String,
}

// ---------------------------------------------------------------------------------------
// Topology

pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    format!(
        "{cpu}; {} CPUs; {}",
        nr_cpus().unwrap_or(0),
        mem.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

pub(super) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn rate_of(r: &Report, m: Mode) -> f64 {
    r.modes
        .iter()
        .find(|x| x.mode == format!("{m:?}"))
        .map_or(0.0, |x| x.loss_free_pps as f64)
}

pub(super) fn p99_of(r: &Report, m: Mode) -> f64 {
    r.modes
        .iter()
        .find(|x| x.mode == format!("{m:?}"))
        .and_then(|x| x.latency.as_ref())
        .map_or(0.0, |l| l.p99_us)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn compute_ratios(r: &mut Report) {
    let native = rate_of(r, Mode::XdpNative);
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    r.ratios.insert(
        "xdp_native_vs_rtpengine (target >= 10)".into(),
        div(native, rate_of(r, Mode::Rtpengine)),
    );
    r.ratios.insert(
        "xdp_native_vs_kernel_sockets (target >= 10)".into(),
        div(native, rate_of(r, Mode::KernelSockets)),
    );
    r.ratios.insert(
        "xdp_native_vs_kernel_forwarding (target >= 3)".into(),
        div(native, rate_of(r, Mode::KernelForward)),
    );
    r.ratios.insert(
        "xdp_native_vs_ceiling (target >= 0.5)".into(),
        div(native, rate_of(r, Mode::XdpDropCeiling)),
    );
    r.ratios.insert(
        "xdp_native_p99_vs_rtpengine_p99 (target <= 0.1)".into(),
        div(p99_of(r, Mode::XdpNative), p99_of(r, Mode::Rtpengine)),
    );
    let one = r
        .scaling
        .iter()
        .find(|s| s.flows == 1)
        .map_or(0.0, |s| s.loss_free_pps as f64);
    let million = r
        .scaling
        .iter()
        .find(|s| s.flows == 1_000_000)
        .map_or(0.0, |s| s.loss_free_pps as f64);
    r.ratios.insert(
        "rate_1M_flows_vs_1_flow (target >= 0.8)".into(),
        div(million, one),
    );
}

#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn print_table(r: &Report) {
    println!(
        "
machine: {} | kernel {}",
        r.machine, r.kernel
    );
    println!(
        "frames: {} bytes (20 ms G.711 RTP); window {} ms; generator ceiling {:.3} Mpps
",
        r.frame_bytes,
        r.window_ms,
        r.generator_ceiling_pps as f64 / 1e6
    );
    println!(
        "{:38} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "mode", "loss-free", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "ns/pkt@LF", "ns/pkt@CL"
    );
    for m in &r.modes {
        let l = m.latency.clone().unwrap_or_default();
        println!(
            "{:38} {:>8.3} Mpps {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>10.0}",
            m.label,
            m.loss_free_pps as f64 / 1e6,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            m.cpu_ns_per_packet_at_loss_free.unwrap_or(0.0),
            m.cpu_ns_per_packet.unwrap_or(0.0)
        );
    }
    if let Some(l) = r.modes.first().and_then(|m| m.latency.as_ref()) {
        println!(
            "(latency and ns/pkt@CL at the common load, {:.1} kpps offered to every mode; ns/pkt@LF: relay core busy time per packet at the mode's own loss-free rate)",
            l.offered_pps as f64 / 1e3
        );
    }
    println!(
        "
{:>10} {:>14} {:>14} {:>12}",
        "flows", "loss-free", "map B/flow", "install s"
    );
    for s in &r.scaling {
        println!(
            "{:>10} {:>9.3} Mpps {:>14.0} {:>12.2}",
            s.flows,
            s.loss_free_pps as f64 / 1e6,
            s.map_bytes_per_flow,
            s.install_seconds
        );
    }
    println!(
        "\nper packet at the loss-free rate: relay core busy time, of which the relay's XDP program and the sink's"
    );
    for m in &r.modes {
        if let (Some(c), Some(x)) = (m.cpu_ns_per_packet_at_loss_free, m.xdp_program_ns) {
            println!(
                "  {:38} {c:>7.0} ns, XDP program {x:>5.0} ns, sink program {:>5.0} ns",
                m.label,
                m.sink_program_ns.unwrap_or(0.0)
            );
        }
    }
    println!(
        "relay XDP program: {} B translated, {} B JITed, {} instructions verified",
        r.program.xlated_bytes, r.program.jited_bytes, r.program.verified_instructions
    );
    println!(
        "BPF_PROG_TEST_RUN, per run: {:.0} ns to pass a packet to no flow, {:.0} ns to FORWARD one",
        r.program.test_run_ns_no_flow, r.program.test_run_ns_forward
    );
    println!();
    for (k, v) in &r.ratios {
        println!("{k}: {v:.2}");
    }
    println!(
        "\nng: {:.0} calls/s set up (offer + answer, one at a time; {:.0} offers/s); {} calls held ({} kernel flows, daemon RSS {:.0} MiB), stopped by: {}",
        r.ng.calls_per_second,
        r.ng.offers_per_second,
        r.ng.calls_held,
        r.ng.flows_held,
        r.ng.daemon_rss_mib,
        r.ng.stopped_by
    );
}

/// A plot of loss-free rate and p99 latency per mode.
#[expect(
    clippy::many_single_char_names,
    reason = "SVG geometry: w, h, x, y as the SVG attributes name them"
)]
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
#[expect(clippy::format_push_string, reason = "an SVG built element by element")]
pub(super) fn svg(r: &Report) -> String {
    let w = 900.0;
    let row = 34.0;
    let h = 120.0 + row * r.modes.len() as f64 * 2.0;
    let max_rate = r
        .modes
        .iter()
        .map(|m| m.loss_free_pps)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_p99 = r
        .modes
        .iter()
        .filter_map(|m| m.latency.as_ref())
        .map(|l| l.p99_us)
        .fold(1.0, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s.push_str(&format!("<text x=\"20\" y=\"28\" font-size=\"16\">mediaproxy bench: loss-free rate (Mpps) and p99 latency (µs) per mode, {} B frames</text>\n", r.frame_bytes));
    let x0 = 300.0;
    let bar = w - x0 - 120.0;
    for (i, m) in r.modes.iter().enumerate() {
        let y = 60.0 + i as f64 * row;
        let len = bar * m.loss_free_pps as f64 / max_rate;
        s.push_str(&format!("<text x=\"20\" y=\"{}\">{}</text><rect x=\"{x0}\" y=\"{}\" width=\"{len:.1}\" height=\"20\" fill=\"#3b7dd8\"/><text x=\"{:.1}\" y=\"{}\">{:.3}</text>\n", y + 15.0, m.label, y, x0 + len + 6.0, y + 15.0, m.loss_free_pps as f64 / 1e6));
    }
    let off = 80.0 + r.modes.len() as f64 * row;
    for (i, m) in r.modes.iter().enumerate() {
        let y = off + i as f64 * row;
        let p99 = m.latency.as_ref().map_or(0.0, |l| l.p99_us);
        let len = bar * p99 / max_p99;
        s.push_str(&format!("<text x=\"20\" y=\"{}\">{}</text><rect x=\"{x0}\" y=\"{}\" width=\"{len:.1}\" height=\"20\" fill=\"#d8783b\"/><text x=\"{:.1}\" y=\"{}\">{:.1} µs</text>\n", y + 15.0, m.label, y, x0 + len + 6.0, y + 15.0, p99));
    }
    s.push_str("</svg>\n");
    s
}

/// Fails unless every mode and every scaling point has its figures.
pub(super) fn check(path: &Path) -> anyhow::Result<()> {
    let r: Report = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    for m in Mode::ALL {
        let Some(x) = r.modes.iter().find(|x| x.mode == format!("{m:?}")) else {
            bail!("no figures for {}", m.label())
        };
        if x.loss_free_pps == 0
            || x.latency.as_ref().is_none_or(|l| l.samples == 0)
            || x.cpu_ns_per_packet.is_none()
        {
            bail!("incomplete figures for {}: {x:?}", m.label());
        }
    }
    if r.ng.calls_held == 0 || r.ng.calls_per_second <= 0.0 {
        bail!("no ng figures");
    }
    for n in [1u64, 1_000, 100_000, 1_000_000] {
        if !r
            .scaling
            .iter()
            .any(|s| s.flows == n && s.loss_free_pps > 0 && s.map_bytes_per_flow > 0.0)
        {
            bail!("no scaling figure for {n} flows");
        }
    }
    println!(
        "{}: every mode and flow count has its figures",
        path.display()
    );
    Ok(())
}
