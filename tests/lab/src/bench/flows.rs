//! Flow-table scaling (rate at 1 to 1M flows) and the XDP program's own time per packet under
//! `BPF_PROG_TEST_RUN`.

use std::{net::IpAddr, time::Instant};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions},
};
use mediaproxy_lab_ebpf::FRAME_LEN;
use proxy_common::{Endpoint, FlowKey, FlowState};

use proxy_userspace::dataplane::{
    AttachMode, Dataplane, DataplaneConfig, Egress, FlowSpec, MismatchPolicy,
};

use super::harness::{
    GEN_IP, GEN_PORT, Harness, RELAY_CPU, SINK_IP, SINK_PORT, Target, pin_napi_threads,
};
use super::report::{ProgramFacts, ScalePoint, Timed};
use super::search::{Plan, loss_free, overload, paired_overload};

/// Memory of the maps with `max_entries` entries, from /proc/self/fdinfo.
pub(super) fn map_memory(max_entries: u64) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.filter_map(Result::ok) {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("max_entries:") == Some(max_entries) && info.contains("map_type:") {
            total += field("memlock:").unwrap_or(0);
        }
    }
    total
}

/// The next hop from `from` to `to` in the relay's namespace (static neighbours there). The
/// sink's side runs an XDP program, so native frames are delivered.
pub(super) fn bench_egress(from: Endpoint, to: Endpoint) -> anyhow::Result<Egress> {
    let (Some(src), Some(dst)) = (from.ip(), to.ip()) else {
        bail!("unset endpoint");
    };
    // No source: the program-timing flows use synthetic ones that are not local.
    let _ = src;
    let (_, r) = proxy_userspace::nexthop::Resolver::new()?.resolve(None, dst)?;
    let hop = r.ready().with_context(|| {
        format!("no resolved next hop to {dst} in the relay's namespace: {r:?}")
    })?;
    Ok(Egress {
        hop,
        native: true,
        redirect_only: true,
    })
}

/// Repeats per `BPF_PROG_TEST_RUN` call. The kernel runs every repeat on the same buffer, and
/// each FORWARD lowers the TTL by one: from 255, 250 repeats are all FORWARDs (at TTL 1 the
/// program would time its drop path instead).
const REPEAT: u32 = 250;
/// Calls per figure; the figure is their median.
const CALLS: usize = 201;

/// The relay program's time per packet under `BPF_PROG_TEST_RUN`: per figure, the median and
/// the fastest of the calls. On a shared VM the calls fall into a fast and a slow level (the
/// host's interference, for tens of milliseconds at a time), so the fastest is the program's
/// own cost and the median what a noisy core gives.
#[derive(Clone, Copy, Debug)]
pub(super) struct ProgramTiming {
    pub no_flow: Timed,
    pub forward: Timed,
    pub forward_partial: Timed,
    /// An `XDP_PASS` program on the same frame: the harness's own cost per run.
    pub floor: Timed,
}

/// Times the relay program with `BPF_PROG_TEST_RUN`. A FORWARD packet is rewritten in place and
/// the next repeat runs on the result, so two flows forward into each other: gen → sink →
/// gen ... and every repeat is a FORWARD, which the program's counters confirm.
///
/// The partial-checksum case uses the same trick: the pseudo-header and the UDP header sums
/// are the same both ways (the sums are symmetric in source and destination), so a payload
/// whose sum makes the complete checksum equal the pseudo-header sum is classified as partial
/// on every repeat, and every repeat finishes the checksum over the whole payload.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the frame length, far below 2^32"
)]
pub(super) fn program_timing(dp: &mut Dataplane, ingress: u32) -> anyhow::Result<ProgramTiming> {
    use proxy_common::Counter;
    use proxy_userspace::frame::FrameBuilder;
    let g = Endpoint::v4(GEN_IP, GEN_PORT);
    let k = Endpoint::v4(SINK_IP, SINK_PORT);
    for (key, peer) in [(g, k), (k, g)] {
        let spec = FlowSpec {
            state: FlowState::Forward,
            peer: Some(peer),
            mismatch: MismatchPolicy::Drop,
            out_src: key,
            hint: None,
            hint_ip: None,
            out_dst: peer,
        };
        let egress = bench_egress(key, peer)?;
        dp.add_flow(FlowKey::new(key), &spec, Some(egress))?;
    }
    let time = |prog: &aya::programs::Xdp, frame: &[u8]| -> anyhow::Result<Timed> {
        let md = [0u32, frame.len() as u32, 0, ingress, 0, 0];
        // SAFETY: [u32; 6] is plain data: struct xdp_md.
        let md = unsafe { std::slice::from_raw_parts(md.as_ptr().cast::<u8>(), 24) };
        let mut runs = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let mut out = vec![0u8; 512];
            let r = prog.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(md),
                repeat: REPEAT,
                ..TestRunOptions::default()
            })?;
            runs.push(r.duration.as_nanos() as f64);
        }
        runs.sort_by(f64::total_cmp);
        Ok(Timed {
            median_ns: runs[runs.len() / 2],
            fastest_ns: runs[0],
        })
    };
    let forwards = |dp: &Dataplane| -> anyhow::Result<u64> {
        let c = dp.global_counters()?;
        Ok(c.get(Counter::FwdRedirect) + c.get(Counter::FwdTx))
    };
    let timed_forward = |dp: &Dataplane, frame: &[u8], what: &str| -> anyhow::Result<Timed> {
        let before = forwards(dp)?;
        let ns = time(dp.program()?, frame)?;
        let n = forwards(dp)? - before;
        if n != u64::from(REPEAT) * CALLS as u64 {
            bail!(
                "{what}: {n} of {} repeats forwarded",
                u64::from(REPEAT) * CALLS as u64
            );
        }
        Ok(ns)
    };
    let complete = FrameBuilder::udp(k, g)
        .ttl(255)
        .payload(&[0u8; FRAME_LEN - 42])
        .build();
    let forward = timed_forward(dp, &complete, "complete checksum")?;
    let partial = partial_looking_frame(k, g, 160)?;
    let forward_partial = timed_forward(dp, &partial, "partial checksum")?;
    let no_flow = time(
        dp.program()?,
        &FrameBuilder::udp(k, Endpoint::v4([10, 0, 1, 1], 9))
            .payload(&[0u8; FRAME_LEN - 42])
            .build(),
    )?;
    let pass = crate::programs::load("pass", None)?;
    let pass: &aya::programs::Xdp = pass
        .program("pass")
        .context("lab program pass missing")?
        .try_into()?;
    let floor = time(pass, &complete)?;
    for key in [g, k] {
        dp.remove_flow(FlowKey::new(key))?;
    }
    Ok(ProgramTiming {
        no_flow,
        forward,
        forward_partial,
        floor,
    })
}

/// The relay program's size and its time per packet: a relay program with just the two
/// timing flows, on the harness's relay interfaces. Run while `BPF_ENABLE_STATS` is off, whose
/// two clock reads per run would be timed too.
pub(super) fn program_facts(h: &Harness) -> anyhow::Result<ProgramFacts> {
    h.relay.enter(|| -> anyhow::Result<ProgramFacts> {
        let mut dp = Dataplane::load(&DataplaneConfig {
            max_flows: 2,
            probe_port: 0,
            ..DataplaneConfig::default()
        })?;
        let ingress = dp.attach("r0", AttachMode::Native)?;
        dp.attach("r1", AttachMode::Native)?;
        let t = program_timing(&mut dp, ingress)?;
        let info = dp.program()?.info()?;
        Ok(ProgramFacts {
            xlated_bytes: info.size_translated().unwrap_or(0),
            jited_bytes: info.size_jitted(),
            verified_instructions: info.verified_instruction_count().unwrap_or(0),
            test_run_ns_no_flow: t.no_flow,
            test_run_ns_forward: t.forward,
            test_run_ns_forward_partial: t.forward_partial,
            test_run_ns_floor: t.floor,
        })
    })?
}

/// An IPv4 frame from `src` to `dst` with `len` payload bytes whose complete UDP checksum
/// equals the folded pseudo-header sum, so the program takes it for a partial checksum on
/// every repeat (see [`program_timing`]).
fn partial_looking_frame(src: Endpoint, dst: Endpoint, len: usize) -> anyhow::Result<Vec<u8>> {
    use proxy_common::csum;
    use proxy_userspace::frame::FrameBuilder;
    let (Some(IpAddr::V4(s)), Some(IpAddr::V4(d))) = (src.ip(), dst.ip()) else {
        bail!("IPv4 endpoints only");
    };
    let udp_len = u16::try_from(len + 8)?;
    let pseudo = csum::fold(csum::pseudo_header_v4(&s.octets(), &d.octets(), udp_len));
    let mut payload = vec![0u8; len];
    for x in 0..=u16::MAX {
        payload[len - 2..].copy_from_slice(&x.to_be_bytes());
        let frame = FrameBuilder::udp(src, dst)
            .ttl(255)
            .payload(&payload)
            .build();
        let check = u16::from_be_bytes([frame[40], frame[41]]);
        if check == pseudo {
            return Ok(frame);
        }
    }
    bail!("no payload makes the checksum look partial")
}

/// Installs `n` FORWARD flows and measures the loss-free rate through them.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "flow counts and indices of a benchmark, far below 2^32"
)]
pub(super) fn scale_point(
    h: &Harness,
    sinks: &mut [&mut Ebpf],
    n: u64,
    ceiling: u64,
    plan: &Plan,
) -> anyhow::Result<ScalePoint> {
    const PER_IP: u64 = 50_000;
    // Two more for the program timing.
    let max_flows = u32::try_from(n + 2)?;
    let t0 = Instant::now();
    let dp = h.relay.enter(move || -> anyhow::Result<Dataplane> {
        let mut dp = Dataplane::load(&DataplaneConfig {
            max_flows,
            probe_port: 0,
            ..DataplaneConfig::default()
        })?;
        dp.attach("r0", AttachMode::Native)?;
        dp.attach("r1", AttachMode::Native)?;
        let spec = FlowSpec {
            state: FlowState::Forward,
            peer: Some(Endpoint::v4(GEN_IP, GEN_PORT)),
            mismatch: MismatchPolicy::Drop,
            out_src: Endpoint::v4([10, 0, 2, 1], 40_000),
            hint: None,
            hint_ip: None,
            out_dst: Endpoint::v4(SINK_IP, SINK_PORT),
        };
        let egress = bench_egress(spec.out_src, spec.out_dst)?;
        for i in 0..n {
            let ip = u32::from_be_bytes([10, 0, 1, 10]) + (i / PER_IP) as u32;
            let key = Endpoint::v4(ip.to_be_bytes(), 10_000 + (i % PER_IP) as u16);
            dp.add_flow(FlowKey::new(key), &spec, Some(egress))?;
        }
        Ok(dp)
    })??;
    let install = t0.elapsed().as_secs_f64();
    pin_napi_threads("r0", RELAY_CPU);
    // The flow array is sized by its places, the hash map by the flows, the counters by both
    // (a slot per place, then one per flow for the hash map's).
    let places =
        u64::from(proxy_common::flow::place::blocks(max_flows) * proxy_common::flow::place::BLOCK);
    let flows = u64::from(max_flows);
    let bytes = map_memory(flows) + map_memory(places) + map_memory(places + flows);
    let target = Target {
        dst_ip: [10, 0, 1, 10],
        dst_port: 10_000,
        flows: u32::try_from(n)?,
        ports_per_ip: PER_IP as u32,
        reverse_ip: [0; 4],
        reverse_port: 0,
        both_ways: false,
    };
    let s = loss_free(
        h,
        sinks,
        target,
        ceiling,
        plan,
        || Ok(None),
        &format!("{n} flows"),
    )?;
    let o = overload(h, sinks, target, plan)?;
    // The largest table also against one of its own flows, side by side: the figure the
    // 1M-flow target is judged by.
    let paired = if n >= 1_000_000 {
        paired_overload(h, sinks, target, plan, 5)?
    } else {
        None
    };
    drop(dp);
    Ok(ScalePoint {
        flows: n,
        loss_free_pps: s.rate,
        overload_pps: o.rate,
        cpu_ns_per_packet_at_overload: o.cpu_ns.unwrap_or(0.0),
        map_bytes_per_flow: bytes as f64 / f64::from(max_flows),
        install_seconds: install,
        paired_cpu_ns_at_overload: paired,
    })
}
