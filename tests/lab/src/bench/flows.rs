//! Flow-table scaling (rate at 1 to 1M flows) and the XDP program's own time per packet under
//! `BPF_PROG_TEST_RUN`.

use std::{sync::Mutex, time::Instant};

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
use super::report::{ProgramFacts, ScalePoint};
use super::search::{Plan, loss_free};

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

pub(super) static PROGRAM_FACTS: Mutex<ProgramFacts> = Mutex::new(ProgramFacts {
    xlated_bytes: 0,
    jited_bytes: 0,
    verified_instructions: 0,
    test_run_ns_no_flow: 0.0,
    test_run_ns_forward: 0.0,
});

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

/// Times the relay program with `BPF_PROG_TEST_RUN`. A FORWARD packet is rewritten in place and
/// the next repeat runs on the result, so two flows forward into each other: gen → sink →
/// gen ... and every repeat is a FORWARD.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "flow counts and indices of a benchmark, far below 2^32"
)]
pub(super) fn program_timing(dp: &mut Dataplane, ingress: u32) -> anyhow::Result<(f64, f64)> {
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
    let md = [0u32, FRAME_LEN as u32, 0, ingress, 0, 0];
    // SAFETY: [u32; 6] is plain data: struct xdp_md.
    let md = unsafe { std::slice::from_raw_parts(md.as_ptr().cast::<u8>(), 24) };
    let time = |frame: &[u8]| -> anyhow::Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut out = vec![0u8; 512];
            let r = dp.program()?.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(md),
                repeat: 1_000_000,
                ..TestRunOptions::default()
            })?;
            best = best.min(r.duration.as_nanos() as f64);
        }
        Ok(best)
    };
    let payload = [0u8; 172];
    let no_flow = time(
        &FrameBuilder::udp(k, Endpoint::v4([10, 0, 1, 1], 9))
            .payload(&payload)
            .build(),
    )?;
    let forward = time(&FrameBuilder::udp(k, g).payload(&payload).build())?;
    for key in [g, k] {
        dp.remove_flow(FlowKey::new(key))?;
    }
    Ok((no_flow, forward))
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
    let bytes = map_memory(u64::from(max_flows));
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
    let mut dp = dp;
    let timing = if n == 1 {
        let ingress = h.relay.enter(|| proxy_userspace::caps::ifindex("r0"))??;
        h.relay.enter(|| program_timing(&mut dp, ingress))?.ok()
    } else {
        None
    };
    let facts = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.name_as_str() == Some("mediaproxy"))
        .map(|p| ProgramFacts {
            xlated_bytes: p.size_translated().unwrap_or(0),
            jited_bytes: p.size_jitted(),
            verified_instructions: p.verified_instruction_count().unwrap_or(0),
            test_run_ns_no_flow: timing.map_or(0.0, |t| t.0),
            test_run_ns_forward: timing.map_or(0.0, |t| t.1),
        });
    drop(dp);
    if let Some(f) = facts.filter(|f| f.test_run_ns_forward > 0.0) {
        *PROGRAM_FACTS.lock().expect("not poisoned") = f;
    }
    Ok(ScalePoint {
        flows: n,
        loss_free_pps: s.rate,
        map_bytes_per_flow: bytes as f64 / f64::from(max_flows),
        install_seconds: install,
    })
}
