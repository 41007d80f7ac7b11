//! The harness: generator → relay → sink in three namespaces, the benchmark's XDP programs,
//! CPU pinning, and one trial (offer a rate for a window, count what arrived).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    util::nr_cpus,
};
use hdrhistogram::Histogram;
use mediaproxy_lab_ebpf::{FRAME_LEN, GenConfig, GenState, SinkState, histogram};
use proxy_common::Endpoint;

use proxy_userspace::{
    netlink::interface_mac,
    ng::{bencode::Value, client::NgClient},
};

use crate::{
    scenario::{self},
    testbed::{Netns, link},
};

use super::Mode;

pub(super) const GEN_IP: [u8; 4] = [10, 0, 1, 2];
pub(super) const SINK_IP: [u8; 4] = [10, 0, 2, 2];
pub(super) const GEN_PORT: u16 = 4000;
pub(super) const SINK_PORT: u16 = 5000;
pub(super) const RELAY_CPU: usize = 1;
pub(super) const GEN_CPU: usize = 0;

pub(super) struct Harness {
    pub(super) generator_ns: Netns,
    pub(super) relay: Netns,
    pub(super) sink: Netns,
    /// Generator → relay → sink.
    pub(super) forward: Generator,
    /// Sink → relay → generator, for bidirectional runs.
    pub(super) reverse: Option<Generator>,
    /// The other `mediaproxy` build measured as [`Mode::XdpNativeBaseline`].
    pub(super) baseline: Option<std::path::PathBuf>,
}

/// One traffic source: a generator program sending out of one interface of its namespace.
pub(super) struct Generator {
    pub(super) ebpf: Arc<Mutex<Ebpf>>,
    pub(super) ifindex: u32,
    pub(super) src_mac: [u8; 6],
    pub(super) dst_mac: [u8; 6],
    pub(super) src: Endpoint,
}

pub(super) fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(super) fn pin_pid(pid: i32, cpu: usize) {
    // SAFETY: as above, for another task.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

impl Harness {
    /// The harness, and the sinks' programs (their counters): at the sink, and for
    /// bidirectional runs at the generator too.
    #[expect(
        clippy::too_many_lines,
        reason = "one measurement, read top to bottom as its steps happen"
    )]
    pub(super) fn build(bidirectional: bool) -> anyhow::Result<(Self, Ebpf, Option<Ebpf>)> {
        let generator_ns = Netns::new("bg")?;
        let relay = Netns::new("br")?;
        let sink = Netns::new("bs")?;
        link(
            &generator_ns,
            "g0",
            &["10.0.1.2/24"],
            &relay,
            "r0",
            &["10.0.1.1/24"],
        )?;
        link(
            &relay,
            "r1",
            &["10.0.2.1/24"],
            &sink,
            "s0",
            &["10.0.2.2/24"],
        )?;
        let mac = |ns: &Netns, ifname: &'static str| ns.enter(move || interface_mac(ifname));
        let gen_mac = mac(&generator_ns, "g0")??;
        let relay_in_mac = mac(&relay, "r0")??;
        let relay_out_mac = mac(&relay, "r1")??;
        let sink_mac = mac(&sink, "s0")??;
        let hex = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        // Static neighbours everywhere: no ARP in a measurement.
        generator_ns.ip(&[
            "neigh",
            "replace",
            "10.0.1.1",
            "lladdr",
            &hex(relay_in_mac),
            "dev",
            "g0",
            "nud",
            "permanent",
        ])?;
        relay.ip(&[
            "neigh",
            "replace",
            "10.0.1.2",
            "lladdr",
            &hex(gen_mac),
            "dev",
            "r0",
            "nud",
            "permanent",
        ])?;
        relay.ip(&[
            "neigh",
            "replace",
            "10.0.2.2",
            "lladdr",
            &hex(sink_mac),
            "dev",
            "r1",
            "nud",
            "permanent",
        ])?;
        sink.ip(&[
            "neigh",
            "replace",
            "10.0.2.1",
            "lladdr",
            &hex(relay_out_mac),
            "dev",
            "s0",
            "nud",
            "permanent",
        ])?;
        for i in ["r0", "r1"] {
            relay.sysctl(&format!("net.ipv4.conf.{i}.forwarding=1"))?;
        }
        // The relay's receive work in a NAPI thread on the relay's core (not on the
        // generator's, where veth would otherwise run it). GRO gives the veth a NAPI instance
        // in every mode (and lets it take XDP frames when no XDP program is attached).
        for i in ["r0", "r1"] {
            relay.exec(&["ethtool", "-K", i, "gro", "on"])?;
            relay.exec(&["sh", "-c", &format!("echo 1 > /sys/class/net/{i}/threaded")])?;
            pin_napi_threads(i, RELAY_CPU);
        }
        let sink_prog =
            sink.enter(|| crate::programs::load("bench_sink", Some(("s0", XdpMode::Driver))))??;
        let forward = Generator {
            ebpf: Arc::new(Mutex::new(
                generator_ns.enter(|| crate::programs::load("bench_gen", None))??,
            )),
            ifindex: generator_ns.enter(|| proxy_userspace::caps::ifindex("g0"))??,
            src_mac: gen_mac,
            dst_mac: relay_in_mac,
            src: Endpoint::v4(GEN_IP, GEN_PORT),
        };
        let (reverse, reverse_sink) = if bidirectional {
            let g = Generator {
                ebpf: Arc::new(Mutex::new(
                    sink.enter(|| crate::programs::load("bench_gen", None))??,
                )),
                ifindex: sink.enter(|| proxy_userspace::caps::ifindex("s0"))??,
                src_mac: sink_mac,
                dst_mac: relay_out_mac,
                src: Endpoint::v4(SINK_IP, SINK_PORT),
            };
            let counter = generator_ns
                .enter(|| crate::programs::load("bench_sink", Some(("g0", XdpMode::Driver))))??;
            (Some(g), Some(counter))
        } else {
            (None, None)
        };
        Ok((
            Self {
                generator_ns,
                relay,
                sink,
                forward,
                reverse,
                baseline: None,
            },
            sink_prog,
            reverse_sink,
        ))
    }
}

/// Pins the NAPI kthreads of `ifname` (named `napi/<ifname>-<id>`) and makes them
/// `SCHED_FIFO`: at normal priority, scheduling jitter alone drops a few frames per thousand
/// long before the core is busy, which would make every loss-free rate meaningless.
pub(super) fn pin_napi_threads(ifname: &str, cpu: usize) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with(&format!("napi/{ifname}-")) {
            pin_pid(pid, cpu);
            let param = libc::sched_param { sched_priority: 50 };
            // SAFETY: valid sched_param for an existing task.
            unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &raw const param) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Trials

extern "C" fn on_sigusr1(_: libc::c_int) {}

pub(super) fn install_signal_handler() {
    // SAFETY: installs a no-op handler without SA_RESTART, so a blocked BPF_PROG_TEST_RUN
    // returns EINTR: that is how a trial ends.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigemptyset(&raw mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &raw const sa, std::ptr::null_mut());
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TrialResult {
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) seconds: f64,
    pub(super) relay_busy_ns: u64,
}

impl TrialResult {
    #[expect(
        clippy::cast_precision_loss,
        reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
    )]
    pub(super) fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    #[expect(
        clippy::cast_precision_loss,
        reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
    )]
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive packet rate far below 2^64"
    )]
    pub(super) fn rate(&self) -> u64 {
        (self.received as f64 / self.seconds) as u64
    }

    /// The rate the generators really sent.
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive packet rate far below 2^52"
    )]
    pub(super) fn sent_rate(&self) -> u64 {
        (self.sent as f64 / self.seconds) as u64
    }
}

/// Busy jiffies of one CPU from /proc/stat, in ns.
#[expect(clippy::cast_sign_loss, reason = "clock ticks per second, at least 1")]
pub(super) fn cpu_busy_ns(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * 1_000_000_000 / hz
}

/// What the generator targets in a trial.
#[derive(Clone, Copy, Debug)]
pub(super) struct Target {
    pub(super) dst_ip: [u8; 4],
    pub(super) dst_port: u16,
    pub(super) flows: u32,
    pub(super) ports_per_ip: u32,
    /// Where the reverse generator sends: the relay's address and port facing the sink.
    pub(super) reverse_ip: [u8; 4],
    pub(super) reverse_port: u16,
    /// Run the reverse generator too (bidirectional runs; never for the flow scaling).
    pub(super) both_ways: bool,
}

pub(super) fn zero_sink(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let n = nr_cpus().map_err(|(_, e)| e)?;
    let mut st: PerCpuArray<_, SinkState> =
        PerCpuArray::try_from(ebpf.map_mut("SINK_STATE").context("SINK_STATE")?)?;
    st.set(0, PerCpuValues::try_from(vec![SinkState::default(); n])?, 0)?;
    let mut lat: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map_mut("SINK_LATENCY").context("SINK_LATENCY")?)?;
    for b in 0..histogram::BUCKETS {
        lat.set(b, PerCpuValues::try_from(vec![0u64; n])?, 0)?;
    }
    Ok(())
}

pub(super) fn sink_count(ebpf: &Ebpf) -> anyhow::Result<u64> {
    let st: PerCpuArray<_, SinkState> =
        PerCpuArray::try_from(ebpf.map("SINK_STATE").context("SINK_STATE")?)?;
    Ok(st.get(&0, 0)?.iter().map(|s| s.packets).sum())
}

pub(super) fn sink_histogram(ebpf: &Ebpf) -> anyhow::Result<Histogram<u64>> {
    let lat: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map("SINK_LATENCY").context("SINK_LATENCY")?)?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for b in 0..histogram::BUCKETS {
        let n: u64 = lat.get(&b, 0)?.iter().sum();
        if n > 0 {
            h.record_n(histogram::midpoint(b).max(1), n)?;
        }
    }
    Ok(h)
}

impl Harness {
    /// Runs the generators at `rate` in all (split between the directions; 0: flat out) for
    /// `window`; `sinks` count.
    pub(super) fn trial(
        &self,
        sinks: &mut [&mut Ebpf],
        target: Target,
        rate: u64,
        window: Duration,
    ) -> anyhow::Result<TrialResult> {
        for s in sinks.iter_mut() {
            zero_sink(s)?;
        }
        let reverse = self.reverse.as_ref().filter(|_| target.both_ways);
        let share = if reverse.is_some() { rate / 2 } else { rate };
        let mut gens: Vec<(&Netns, &Generator, GenConfig)> = vec![(
            &self.generator_ns,
            &self.forward,
            GenConfig {
                rate_pps: share,
                flows: target.flows.max(1),
                ports_per_ip: target.ports_per_ip.max(1),
                ifindex: self.forward.ifindex,
                dst_port: target.dst_port,
                src_port: self.forward.src.port(),
                src_mac: self.forward.src_mac,
                dst_mac: self.forward.dst_mac,
                src_ip: *self.forward.src.addr_v4(),
                dst_ip: target.dst_ip,
                _pad: [0; 4],
            },
        )];
        if let Some(r) = reverse {
            gens.push((
                &self.sink,
                r,
                GenConfig {
                    rate_pps: share,
                    flows: 1,
                    ports_per_ip: 1,
                    ifindex: r.ifindex,
                    dst_port: target.reverse_port,
                    src_port: r.src.port(),
                    src_mac: r.src_mac,
                    dst_mac: r.dst_mac,
                    src_ip: *r.src.addr_v4(),
                    dst_ip: target.reverse_ip,
                    _pad: [0; 4],
                },
            ));
        }
        let busy0 = cpu_busy_ns(RELAY_CPU);
        let t0 = Instant::now();
        let sent = run_generators(&gens, window)?;
        let seconds = t0.elapsed().as_secs_f64();
        // Frames still in flight arrive within a few ms.
        std::thread::sleep(Duration::from_millis(50));
        let busy = cpu_busy_ns(RELAY_CPU).saturating_sub(busy0);
        let mut received = 0u64;
        for s in sinks.iter() {
            received += sink_count(s)?;
        }
        if std::env::var_os("MEDIAPROXY_BENCH_DEBUG").is_some() {
            let mib = |k| crate::testbed::udp_mib(&self.relay, k).unwrap_or(0);
            eprintln!(
                "\n    trial at {rate} pps: sent {sent}, received {received}, {seconds:.3} s; relay UDP InDatagrams {} InCsumErrors {} RcvbufErrors {} NoPorts {}",
                mib("InDatagrams"),
                mib("InCsumErrors"),
                mib("RcvbufErrors"),
                mib("NoPorts")
            );
        }
        Ok(TrialResult {
            sent,
            received,
            seconds,
            relay_busy_ns: busy,
        })
    }
}

/// Configures each generator, runs them all for `window` (each a live-frames test run on the
/// generator's CPU, ended by a signal), and returns the frames they sent.
pub(super) fn run_generators(
    gens: &[(&Netns, &Generator, GenConfig)],
    window: Duration,
) -> anyhow::Result<u64> {
    let n = nr_cpus().map_err(|(_, e)| e)?;
    for (_, g, cfg) in gens {
        let mut e = g.ebpf.lock().expect("not poisoned");
        let mut c: Array<_, GenConfig> =
            Array::try_from(e.map_mut("GEN_CONFIG").context("GEN_CONFIG")?)?;
        c.set(0, *cfg, 0)?;
        let mut st: PerCpuArray<_, GenState> =
            PerCpuArray::try_from(e.map_mut("GEN_STATE").context("GEN_STATE")?)?;
        st.set(0, PerCpuValues::try_from(vec![GenState::default(); n])?, 0)?;
    }
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut running = Vec::new();
        for (ns, g, _) in gens {
            let tid = Arc::new(AtomicU64::new(0));
            let tid2 = tid.clone();
            let h = std::thread::Builder::new()
                .spawn_scoped(scope, move || ns.enter(move || run_generator(g, &tid2))?)?;
            running.push((tid, h));
        }
        std::thread::sleep(window);
        for (tid, _) in &running {
            while tid.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            // SAFETY: the thread is alive until joined below; the signal ends its run.
            unsafe {
                libc::pthread_kill(tid.load(Ordering::SeqCst) as libc::pthread_t, libc::SIGUSR1)
            };
        }
        for (_, h) in running {
            h.join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        }
        Ok(())
    })?;
    let mut sent = 0u64;
    for (_, g, _) in gens {
        let e = g.ebpf.lock().expect("not poisoned");
        let st: PerCpuArray<_, GenState> =
            PerCpuArray::try_from(e.map("GEN_STATE").context("GEN_STATE")?)?;
        sent += st.get(&0, 0)?.iter().map(|s| s.sent).sum::<u64>();
    }
    Ok(sent)
}

/// One long live-frames test run of `g`'s program, until a signal ends it.
#[expect(
    clippy::cast_possible_truncation,
    reason = "a benchmark's counts, far below 2^32"
)]
pub(super) fn run_generator(g: &Generator, tid: &AtomicU64) -> anyhow::Result<()> {
    pin_to(GEN_CPU)?;
    // SAFETY: pthread_self has no preconditions.
    tid.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
    let e = g.ebpf.lock().expect("not poisoned");
    let p: &Xdp = e.program("bench_gen").context("bench_gen")?.try_into()?;
    let md = [0u32, FRAME_LEN as u32, 0, g.ifindex, 0, 0];
    // SAFETY: [u32; 6] is plain data: struct xdp_md.
    let md_bytes = unsafe { std::slice::from_raw_parts(md.as_ptr().cast::<u8>(), 24) };
    let frame = [0u8; FRAME_LEN];
    let r = p.test_run(TestRunOptions {
        data_in: Some(&frame),
        ctx_in: Some(md_bytes),
        repeat: u32::MAX,
        attrs: TestRunAttrs::new().xdp_live_frames(64),
        ..TestRunOptions::default()
    });
    match r {
        Ok(_) => Ok(()),
        // EINTR is how the trial ends.
        Err(aya::programs::ProgramError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::EINTR) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

impl Harness {
    /// Makes sure a mediaproxy mode measures what it says: XDP modes forward in the kernel,
    /// the userspace mode does not.
    pub(super) fn check_state(&self, mode: Mode) -> anyhow::Result<String> {
        let want = match mode {
            Mode::XdpNative | Mode::XdpNativeBaseline | Mode::XdpSkb => "FORWARD",
            Mode::UserspaceAfXdp => "HOLD",
            _ => return Ok(String::new()),
        };
        let c = self
            .relay
            .enter(|| NgClient::new("127.0.0.1:22222".parse().expect("literal")))??;
        let q = scenario::ng(&c, "query", &[("call-id", Value::str("bench"))])?;
        let got = scenario::query_text(&q, "gen", "state").unwrap_or_default();
        if got != want {
            bail!(
                "{}: the generator's flow is {got}, expected {want}",
                mode.label()
            );
        }
        Ok(format!("generator's flow in {got} after warm-up"))
    }
}

/// The sinks of a run: at the sink, and at the generator for bidirectional runs.
pub(super) fn both<'a>(sink: &'a mut Ebpf, reverse: &'a mut Option<Ebpf>) -> Vec<&'a mut Ebpf> {
    let mut v = vec![sink];
    if let Some(r) = reverse.as_mut() {
        v.push(r);
    }
    v
}
