//! The loss-free search (binary, RFC 2544 style) and the kernel's per-program run time.

use std::{collections::BTreeMap, time::Duration};

use aya::Ebpf;

use super::LOSS_FREE;
use super::harness::{Harness, Target};

pub(super) struct Plan {
    pub(super) window: Duration,
    /// Windows per trial; the median decides.
    pub(super) repeats: u32,
    /// Bisection steps after the halving phase found a loss-free rate.
    pub(super) bisections: u32,
    /// Loss-free searches per mode; the report gives their median (a single search on a
    /// shared machine is jitter-bound).
    pub(super) runs: u32,
    pub(super) flows: Vec<u64>,
}

/// The highest loss-free rate in `(0, hi]`: halve from `hi` until a trial passes, then bisect
/// between the last pass and the last failure. `after_overload` may restart the relay and
/// return a new target.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn loss_free(
    h: &Harness,
    sinks: &mut [&mut Ebpf],
    mut target: Target,
    hi: u64,
    plan: &Plan,
    mut after_overload: impl FnMut() -> anyhow::Result<Option<Target>>,
    progress: &str,
) -> anyhow::Result<Search> {
    let mut trials = Vec::new();
    // Per passing rate: CPU per packet, the programs' times, and the rate the generator
    // really sent (with many flows it may fall short of the rate asked, and a trial it could
    // not offer must not count as that rate loss-free).
    let mut cpu_at: BTreeMap<u64, (f64, [Option<f64>; 2], u64)> = BTreeMap::new();
    let mut ok =
        |rate: u64, target: Target, trials: &mut Vec<(u64, f64)>| -> anyhow::Result<bool> {
            eprint!(
                "\r  {progress}: trial {} at {:.3} Mpps ...          ",
                trials.len() + 1,
                rate as f64 / 1e6
            );
            // A trial is several windows and passes on the median: the cores of a shared or
            // virtual machine stall now and then for a millisecond or more (the p99.9 latencies
            // show it), which no relay can buffer through a 256-slot veth ring, and which says
            // nothing about the relay's own limit. A loss that persists is in the median.
            let mut windows = Vec::new();
            let before = snapshot();
            for _ in 0..plan.repeats {
                windows.push(h.trial(sinks, target, rate, plan.window)?);
            }
            let progs = prog_ns(before, snapshot());
            windows.sort_by(|a, b| a.loss().total_cmp(&b.loss()));
            let median = windows[windows.len() / 2];
            trials.push((rate, median.loss()));
            if median.loss() < LOSS_FREE {
                cpu_at.insert(
                    rate,
                    (
                        median.relay_busy_ns as f64 / median.received.max(1) as f64,
                        progs,
                        median.sent_rate(),
                    ),
                );
            }
            Ok(median.loss() < LOSS_FREE)
        };
    let mut rate = hi;
    let mut failed = None;
    let mut passed = None;
    while rate >= 1_000 {
        if ok(rate, target, &mut trials)? {
            passed = Some(rate);
            break;
        }
        failed = Some(rate);
        if let Some(t) = after_overload()? {
            target = t;
        }
        rate /= 2;
    }
    let (Some(mut lo), Some(mut hi)) = (passed, failed) else {
        eprint!("\r{:80}\r", "");
        let rate = passed.unwrap_or(0);
        let at = cpu_at.get(&rate).copied();
        return Ok(Search {
            rate: at.map_or(rate, |a| a.2.min(rate)),
            cpu_ns: at.map(|a| a.0),
            prog_ns: at.map_or([None, None], |a| a.1),
            trials,
        });
    };
    for _ in 0..plan.bisections {
        if hi - lo <= hi / 50 {
            break;
        }
        let mid = u64::midpoint(lo, hi);
        if ok(mid, target, &mut trials)? {
            lo = mid;
        } else {
            hi = mid;
            if let Some(t) = after_overload()? {
                target = t;
            }
        }
    }
    eprint!("\r{:80}\r", "");
    let at = cpu_at.get(&lo).copied();
    Ok(Search {
        rate: at.map_or(lo, |a| a.2.min(lo)),
        cpu_ns: at.map(|a| a.0),
        prog_ns: at.map_or([None, None], |a| a.1),
        trials,
    })
}

/// Accumulated run time and count of every loaded program called `name` (`BPF_ENABLE_STATS` is
/// held for the whole benchmark).
#[expect(
    clippy::cast_possible_truncation,
    reason = "benchmark durations far below 2^64 nanoseconds"
)]
pub(super) fn prog_stats(name: &str) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0, 0), |(t, n), p| {
            (t + p.run_time().as_nanos() as u64, n + p.run_count())
        })
}

/// Nanoseconds per run of the relay's and the sink's XDP programs between two snapshots.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn prog_ns(before: [(u64, u64); 2], after: [(u64, u64); 2]) -> [Option<f64>; 2] {
    [0, 1].map(|i| {
        let runs = after[i].1.saturating_sub(before[i].1);
        (runs > 0).then(|| after[i].0.saturating_sub(before[i].0) as f64 / runs as f64)
    })
}

pub(super) fn snapshot() -> [(u64, u64); 2] {
    [prog_stats("mediaproxy"), prog_stats("bench_sink")]
}

/// A relay under overload: the generator flat out, `plan.repeats` windows, the median window.
/// At overload the relay core is saturated, so its busy time per packet is what a packet
/// costs; unlike a loss-free rate it does not hinge on one stall of a shared core.
pub(super) struct Overload {
    pub(super) rate: u64,
    /// Relay core busy time per packet received by the sink; `None` if none arrived (a
    /// userspace relay starved by the receive work on its core).
    pub(super) cpu_ns: Option<f64>,
    /// Time per run of the relay's XDP program and of the sink's.
    pub(super) prog_ns: [Option<f64>; 2],
}

#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn overload(
    h: &Harness,
    sinks: &mut [&mut Ebpf],
    target: Target,
    plan: &Plan,
) -> anyhow::Result<Overload> {
    let before = snapshot();
    let mut windows = Vec::new();
    for _ in 0..plan.repeats {
        windows.push(h.trial(sinks, target, 0, plan.window)?);
    }
    let prog_ns = prog_ns(before, snapshot());
    windows.sort_by_key(super::harness::TrialResult::rate);
    let m = windows[windows.len() / 2];
    Ok(Overload {
        rate: m.rate(),
        cpu_ns: (m.received > 0).then(|| m.relay_busy_ns as f64 / m.received as f64),
        prog_ns,
    })
}

/// Relay core busy time per packet at overload with traffic to every flow of `target` and to
/// its first flow only, in `rounds` alternating pairs on the same table: the medians,
/// `[every flow, one flow]`.
pub(super) fn paired_overload(
    h: &Harness,
    sinks: &mut [&mut Ebpf],
    target: Target,
    plan: &Plan,
    rounds: usize,
) -> anyhow::Result<Option<[f64; 2]>> {
    let one = Target { flows: 1, ..target };
    let (mut all_ns, mut one_ns) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        all_ns.extend(overload(h, sinks, target, plan)?.cpu_ns);
        one_ns.extend(overload(h, sinks, one, plan)?.cpu_ns);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    Ok(median(all_ns).zip(median(one_ns)).map(|(a, o)| [a, o]))
}

/// The median of `runs` loss-free searches, with every run's rate.
pub(super) fn median_search(mut runs: Vec<Search>) -> (Search, Vec<u64>) {
    let rates = runs.iter().map(|s| s.rate).collect();
    runs.sort_by_key(|s| s.rate);
    let i = runs.len() / 2;
    (runs.swap_remove(i), rates)
}

/// The outcome of a loss-free search.
pub(super) struct Search {
    pub(super) rate: u64,
    /// Relay core busy time per packet in the trial at `rate`.
    pub(super) cpu_ns: Option<f64>,
    /// Time per run of the relay's XDP program and of the sink's, in that trial.
    pub(super) prog_ns: [Option<f64>; 2],
    pub(super) trials: Vec<(u64, f64)>,
}

// ---------------------------------------------------------------------------------------
// Relays under test
