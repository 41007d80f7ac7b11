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
    /// Highest rate with loss below 0.1 % (the median of the searches).
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
    /// Every loss-free search's rate; `loss_free_pps` is their median.
    pub loss_free_runs: Vec<u64>,
    /// The rate the sink received with the generator flat out (the median window).
    pub overload_pps: u64,
    /// Relay core busy time per packet at overload.
    pub cpu_ns_per_packet_at_overload: Option<f64>,
    /// The same without the sink's program, which runs on the relay core but is not the
    /// relay's (for the `XDP_DROP` ceiling, whose counting program is the relay, nothing is
    /// taken off).
    pub cpu_ns_per_packet_at_overload_without_sink: Option<f64>,
    /// The relay's and the sink's XDP program per run at overload.
    pub xdp_program_ns_at_overload: Option<f64>,
    pub sink_program_ns_at_overload: Option<f64>,
    /// Rate ratios in the same run: loss-free rate over the `XDP_DROP` ceiling's, and over
    /// rtpengine's (loss-free and at overload).
    pub vs_drop: Option<f64>,
    pub vs_rtpengine: Option<f64>,
    pub vs_rtpengine_at_overload: Option<f64>,
    pub note: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgramFacts {
    pub xlated_bytes: u32,
    pub jited_bytes: u32,
    pub verified_instructions: u32,
    /// `BPF_PROG_TEST_RUN`, ns per run over 201 calls of 250 repeats: a packet to no flow
    /// (`XDP_PASS`), a FORWARD of a 214-byte frame with a complete UDP checksum (lookup,
    /// rewrite, redirect), the same with a partial checksum and a 160-byte payload (summed in
    /// the program), and an `XDP_PASS` program on the same frame (the harness's own cost).
    pub test_run_ns_no_flow: Timed,
    pub test_run_ns_forward: Timed,
    pub test_run_ns_forward_partial: Timed,
    pub test_run_ns_floor: Timed,
}

/// A time per run under `BPF_PROG_TEST_RUN` (see `flows::ProgramTiming`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Timed {
    pub median_ns: f64,
    pub fastest_ns: f64,
}

impl std::fmt::Display for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} / {:.0} ns", self.median_ns, self.fastest_ns)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScalePoint {
    pub flows: u64,
    pub loss_free_pps: u64,
    /// Received rate and relay core busy time per packet with the generator flat out.
    pub overload_pps: u64,
    pub cpu_ns_per_packet_at_overload: f64,
    /// Kernel memory of the flow table and counters, per flow (from the maps' fdinfo).
    pub map_bytes_per_flow: f64,
    pub install_seconds: f64,
    /// Relay core busy time per packet at overload on this table, medians of rounds that
    /// alternate traffic to every flow and to one of them: `[every flow, one flow]`. Side by
    /// side, the VM's slow and fast phases fall on both alike, which separate scaling points
    /// (each its own table, minutes apart) cannot promise.
    #[serde(default)]
    pub paired_cpu_ns_at_overload: Option<[f64; 2]>,
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
    /// The memory system's latency at the largest table's size (see `memory`).
    #[serde(default)]
    pub memory: Option<super::memory::MemoryLatency>,
    /// The relay's XDP program: translated and `JITed` size, instructions the verifier walked.
    pub program: ProgramFacts,
    /// An infinite ratio (a figure over a 0) is null in JSON, and infinite again when read.
    #[serde(deserialize_with = "ratios_from_json")]
    pub ratios: BTreeMap<String, f64>,
    pub ng: NgFigures,
}

fn ratios_from_json<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::INFINITY)))
        .collect())
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

fn mode_of(r: &Report, m: Mode) -> Option<&ModeResult> {
    r.modes.iter().find(|x| x.mode == format!("{m:?}"))
}

/// [`div`] of two figures of the run, 0 when either was not measured.
fn ratio(a: Option<f64>, b: Option<f64>) -> f64 {
    a.zip(b).map_or(0.0, |(a, b)| div(a, b))
}

/// `a / b`; infinite when only `b` is 0 (rtpengine forwarding nothing at overload), so the
/// JSON says null and the table `inf`, never a ratio of 0 that reads as a miss.
fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// The ratios the targets are judged by, all between figures of this run; and per mode, its
/// rates over the drop ceiling's and rtpengine's.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn compute_ratios(r: &mut Report) {
    // `None`: not measured in this run (a mode or a flow count left out); its ratios are 0.
    let rate = |m| mode_of(r, m).map(|x| x.loss_free_pps as f64);
    let over = |m| mode_of(r, m).map(|x| x.overload_pps as f64);
    let p99 = |m| {
        mode_of(r, m)
            .and_then(|x| x.latency.as_ref())
            .map(|l| l.p99_us)
    };
    let cpu_ol = |m| mode_of(r, m).and_then(|x| x.cpu_ns_per_packet_at_overload_without_sink);
    let scale = |n: u64| r.scaling.iter().find(|s| s.flows == n).cloned();
    let (one, million) = (scale(1), scale(1_000_000));
    let (native, native_ol) = (rate(Mode::XdpNative), over(Mode::XdpNative));
    let mut ratios = Vec::new();
    for (name, m, target) in [
        ("kernel_forwarding", Mode::KernelForward, 3),
        ("kernel_sockets", Mode::KernelSockets, 10),
        ("rtpengine", Mode::Rtpengine, 100),
    ] {
        ratios.push((
            format!("xdp_native_vs_{name} (target >= {target})"),
            ratio(native, rate(m)),
        ));
        ratios.push((
            format!("xdp_native_vs_{name}_at_overload (target >= {target})"),
            ratio(native_ol, over(m)),
        ));
    }
    let both = |f: fn(&ScalePoint) -> f64| ratio(million.as_ref().map(f), one.as_ref().map(f));
    ratios.extend([
        (
            "xdp_native_vs_ceiling (target >= 0.5)".to_owned(),
            ratio(native, rate(Mode::XdpDropCeiling)),
        ),
        (
            "xdp_native_p99_vs_rtpengine_p99 (target <= 0.1)".to_owned(),
            ratio(p99(Mode::XdpNative), p99(Mode::Rtpengine)),
        ),
        (
            "xdp_native_cpu_at_overload_vs_drop, sink excluded (target <= 2)".to_owned(),
            ratio(cpu_ol(Mode::XdpNative), cpu_ol(Mode::XdpDropCeiling)),
        ),
        (
            "rate_1M_flows_vs_1_flow (target >= 0.8)".to_owned(),
            both(|s| s.loss_free_pps as f64),
        ),
        (
            "rate_1M_flows_vs_1_flow_at_overload (target >= 0.8)".to_owned(),
            both(|s| s.overload_pps as f64),
        ),
        (
            "cpu_1_flow_vs_1M_flows_at_overload (target >= 0.8)".to_owned(),
            // Time per packet: one flow's over the million's.
            ratio(
                one.as_ref().map(|s| s.cpu_ns_per_packet_at_overload),
                million.as_ref().map(|s| s.cpu_ns_per_packet_at_overload),
            ),
        ),
        (
            "cpu_1_flow_vs_1M_flows_at_overload, paired on the 1M table (target >= 0.8)".to_owned(),
            million
                .as_ref()
                .and_then(|m| m.paired_cpu_ns_at_overload)
                .map_or(0.0, |[all, one]| div(one, all)),
        ),
    ]);
    let drop = rate(Mode::XdpDropCeiling);
    let (rtpe, rtpe_ol) = (rate(Mode::Rtpengine), over(Mode::Rtpengine));
    r.ratios.extend(ratios);
    for m in &mut r.modes {
        m.vs_drop = Some(ratio(Some(m.loss_free_pps as f64), drop));
        m.vs_rtpengine = Some(ratio(Some(m.loss_free_pps as f64), rtpe));
        m.vs_rtpengine_at_overload = Some(ratio(Some(m.overload_pps as f64), rtpe_ol));
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn print_table(r: &Report) {
    println!("\nmachine: {} | kernel {}", r.machine, r.kernel);
    println!(
        "frames: {} bytes (20 ms G.711 RTP); window {} ms; generator ceiling {:.3} Mpps{}\n",
        r.frame_bytes,
        r.window_ms,
        r.generator_ceiling_pps as f64 / 1e6,
        if r.bidirectional {
            "; both directions at once, rates in total"
        } else {
            ""
        }
    );
    println!(
        "{:38} {:>10} {:>7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11}",
        "mode",
        "loss-free",
        "x drop",
        "x rtpe",
        "overload",
        "x rtpe OL",
        "p50 µs",
        "p99 µs",
        "ns/pkt@CL",
        "ns/pkt@OL",
        "OL-sink"
    );
    for m in &r.modes {
        let l = m.latency.clone().unwrap_or_default();
        println!(
            "{:38} {:>5.3} Mpps {:>7.2} {:>8.1} {:>5.3} Mpps {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>10.0} {:>11.0}",
            m.label,
            m.loss_free_pps as f64 / 1e6,
            m.vs_drop.unwrap_or(0.0),
            m.vs_rtpengine.unwrap_or(0.0),
            m.overload_pps as f64 / 1e6,
            m.vs_rtpengine_at_overload.unwrap_or(0.0),
            l.p50_us,
            l.p99_us,
            m.cpu_ns_per_packet.unwrap_or(0.0),
            m.cpu_ns_per_packet_at_overload.unwrap_or(0.0),
            m.cpu_ns_per_packet_at_overload_without_sink.unwrap_or(0.0),
        );
    }
    if let Some(l) = r.modes.first().and_then(|m| m.latency.as_ref()) {
        println!(
            "(loss-free: the median of each mode's searches; x drop, x rtpe: its loss-free rate over the XDP_DROP ceiling's and rtpengine's; overload: the generator flat out; latency and ns/pkt@CL at the common load, {:.1} kpps offered to every mode; ns/pkt@OL: relay core busy time per packet at overload, OL-sink without the sink's program)",
            l.offered_pps as f64 / 1e3
        );
    }
    println!("\nloss-free searches per mode (Mpps):");
    for m in &r.modes {
        let runs: Vec<String> = m
            .loss_free_runs
            .iter()
            .map(|x| format!("{:.3}", *x as f64 / 1e6))
            .collect();
        println!("  {:38} {}", m.label, runs.join(", "));
    }
    print_scaling(r);
    print_program(&r.program);
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

/// The flow scaling, and where each mode's time per packet goes.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
fn print_scaling(r: &Report) {
    println!(
        "\n{:>10} {:>14} {:>14} {:>12} {:>14} {:>12}",
        "flows", "loss-free", "overload", "ns/pkt@OL", "map B/flow", "install s"
    );
    for s in &r.scaling {
        println!(
            "{:>10} {:>9.3} Mpps {:>9.3} Mpps {:>12.0} {:>14.0} {:>12.2}",
            s.flows,
            s.loss_free_pps as f64 / 1e6,
            s.overload_pps as f64 / 1e6,
            s.cpu_ns_per_packet_at_overload,
            s.map_bytes_per_flow,
            s.install_seconds
        );
        if let Some([all, one]) = s.paired_cpu_ns_at_overload {
            println!(
                "{:>10} paired on this table, alternating: {all:.0} ns/pkt@OL to every flow, {one:.0} to one ({:.2})",
                "",
                div(one, all)
            );
        }
    }
    if let Some(m) = &r.memory {
        println!(
            "{:>10} memory: a dependent read in random order over {} MiB (the largest table's flow array) takes {:.0} ns with 4 KiB pages, as BPF maps are mapped; {}; within {} KiB, {:.0} ns",
            "",
            m.table_bytes >> 20,
            m.small_pages_ns,
            m.huge_pages_ns.map_or_else(
                || "no huge pages given here".to_string(),
                |h| format!("{h:.0} ns with 2 MiB pages")
            ),
            m.cached_bytes >> 10,
            m.cached_ns
        );
    }
    println!(
        "\nper packet at the loss-free rate and at overload: relay core busy time, of which the relay's XDP program and the sink's"
    );
    for m in &r.modes {
        if let (Some(c), Some(x)) = (m.cpu_ns_per_packet_at_loss_free, m.xdp_program_ns) {
            println!(
                "  {:38} loss-free {c:>7.0} ns (XDP program {x:>5.0}, sink {:>5.0}); overload {:>7.0} ns (XDP program {:>5.0}, sink {:>5.0})",
                m.label,
                m.sink_program_ns.unwrap_or(0.0),
                m.cpu_ns_per_packet_at_overload.unwrap_or(0.0),
                m.xdp_program_ns_at_overload.unwrap_or(0.0),
                m.sink_program_ns_at_overload.unwrap_or(0.0),
            );
        }
    }
}

/// The relay program's size and time per packet.
pub(super) fn print_program(p: &ProgramFacts) {
    println!(
        "relay XDP program: {} B translated, {} B JITed, {} instructions verified",
        p.xlated_bytes, p.jited_bytes, p.verified_instructions
    );
    println!(
        "BPF_PROG_TEST_RUN, ns per run (median / fastest of 201 calls): FORWARD {} (complete UDP checksum), {} (partial, 160-byte payload); no flow {}; an XDP_PASS program {} (the harness's own cost)",
        p.test_run_ns_forward,
        p.test_run_ns_forward_partial,
        p.test_run_ns_no_flow,
        p.test_run_ns_floor
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
    let w = 1100.0;
    let row = 34.0;
    let h = 120.0 + row * r.modes.len() as f64 * 2.0;
    let max_rate = r
        .modes
        .iter()
        .map(|m| m.loss_free_pps.max(m.overload_pps))
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
    s.push_str(&format!("<text x=\"20\" y=\"28\" font-size=\"16\">mediaproxy bench: rate per mode (Mpps; loss-free dark, at overload light; its ratio to XDP_DROP and to rtpengine), then p99 latency (µs); {} B frames{}</text>\n", r.frame_bytes, if r.bidirectional { ", both directions" } else { "" }));
    let x0 = 330.0;
    let bar = w - x0 - 330.0;
    for (i, m) in r.modes.iter().enumerate() {
        let y = 60.0 + i as f64 * row;
        let lf = bar * m.loss_free_pps as f64 / max_rate;
        let ol = bar * m.overload_pps as f64 / max_rate;
        s.push_str(&format!(
            "<text x=\"20\" y=\"{}\">{}</text><rect x=\"{x0}\" y=\"{}\" width=\"{ol:.1}\" height=\"10\" fill=\"#a9c6ef\"/><rect x=\"{x0}\" y=\"{}\" width=\"{lf:.1}\" height=\"12\" fill=\"#3b7dd8\"/><text x=\"{:.1}\" y=\"{}\">{:.3} / {:.3} · {:.2}× drop · {:.0}× rtpengine</text>\n",
            y + 15.0,
            m.label,
            y + 12.0,
            y,
            x0 + lf.max(ol) + 6.0,
            y + 15.0,
            m.loss_free_pps as f64 / 1e6,
            m.overload_pps as f64 / 1e6,
            m.vs_drop.unwrap_or(0.0),
            m.vs_rtpengine.unwrap_or(0.0),
        ));
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
    // The baseline is an optional A/B row.
    for m in Mode::ALL
        .into_iter()
        .filter(|m| *m != Mode::XdpNativeBaseline)
    {
        let Some(x) = r.modes.iter().find(|x| x.mode == format!("{m:?}")) else {
            bail!("no figures for {}", m.label())
        };
        if x.loss_free_pps == 0
            // A userspace relay may forward nothing at overload: the receive work on its
            // core (the NAPI thread, at real-time priority) takes all of it.
            || x.overload_pps == 0
                && !matches!(
                    m,
                    Mode::Rtpengine | Mode::KernelSockets | Mode::UserspaceAfXdp
                )
            || x.latency.as_ref().is_none_or(|l| l.samples == 0)
            || x.cpu_ns_per_packet.is_none()
            || x.cpu_ns_per_packet_at_overload.is_none() && x.overload_pps > 0
        {
            bail!("incomplete figures for {}: {x:?}", m.label());
        }
    }
    if r.ng.calls_held == 0 || r.ng.calls_per_second <= 0.0 {
        bail!("no ng figures");
    }
    for n in [1u64, 1_000, 100_000, 1_000_000] {
        if !r.scaling.iter().any(|s| {
            s.flows == n && s.loss_free_pps > 0 && s.overload_pps > 0 && s.map_bytes_per_flow > 0.0
        }) {
            bail!("no scaling figure for {n} flows");
        }
    }
    println!(
        "{}: every mode and flow count has its figures",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ModeResult, Report, compute_ratios};
    use crate::bench::Mode;

    /// Over a measured 0 a ratio is infinite; over a figure the run did not measure (a mode
    /// left out with `--modes`, a flow count left out) it is 0, never infinitely good.
    #[test]
    #[expect(clippy::float_cmp, reason = "0.0 is written, not computed")]
    fn a_ratio_is_infinite_only_over_a_measured_zero() {
        let mode = |m: Mode, pps: u64| ModeResult {
            mode: format!("{m:?}"),
            loss_free_pps: pps,
            overload_pps: pps,
            ..ModeResult::default()
        };
        let mut r = Report {
            modes: vec![mode(Mode::XdpNative, 1000), mode(Mode::Rtpengine, 0)],
            ..Report::default()
        };
        compute_ratios(&mut r);
        let at = |k: &str| r.ratios[k];
        assert!(at("xdp_native_vs_rtpengine (target >= 100)").is_infinite());
        assert_eq!(at("xdp_native_vs_kernel_sockets (target >= 10)"), 0.0);
        assert_eq!(
            at("cpu_1_flow_vs_1M_flows_at_overload (target >= 0.8)"),
            0.0
        );
    }

    /// A ratio over a 0 (rtpengine forwarding nothing at overload) is written as null and
    /// read back as infinite, so that `--check` reads every report the bench writes.
    #[test]
    fn an_infinite_ratio_survives_the_json() {
        let mut r = Report::default();
        r.ratios.insert("over nothing".into(), f64::INFINITY);
        r.ratios.insert("plain".into(), 2.5);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""over nothing":null"#), "{json}");
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.ratios, r.ratios);
    }
}
