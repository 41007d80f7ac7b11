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
//! Each mode's maximum loss-free rate is a binary search for loss below 0.01 % over a fixed
//! window (RFC 2544 style); latency and CPU per packet are then measured at one offered load
//! that every mode sustains.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    util::nr_cpus,
};
use hdrhistogram::Histogram;
use proxy_common::{
    Endpoint, FlowKey, FlowState,
    bench::{FRAME_LEN, GenConfig, GenState, SinkState, histogram},
};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{AttachMode, Dataplane, DataplaneConfig, Egress, FlowSpec, MismatchPolicy},
    netlink::interface_mac,
    ng::{bencode::Value, client::NgClient},
    scenario::{self, binary, sdp, sdp_media, sdp_of},
    testbed::{Guarded, Netns, link},
};

/// The benchmark's XDP programs, built by build.rs.
#[cfg(feature = "ebpf")]
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mediaproxy-bench"));
#[cfg(not(feature = "ebpf"))]
static BENCH_OBJECT: &[u8] = &[];

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
    /// Window in milliseconds (default 400, quick 200); a trial is 5 (quick: 3) windows and
    /// passes on the median window's loss.
    #[arg(long)]
    pub window_ms: Option<u64>,
    /// Only these modes (comma-separated: XdpNative, XdpSkb, UserspaceAfXdp, KernelSockets,
    /// Rtpengine); the ceiling is always measured. A partial run fails `--check`.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Traffic both ways: generator → relay → sink and sink → relay → generator, the rate
    /// split evenly (the flow scaling stays one-way).
    #[arg(long)]
    pub bidirectional: bool,
    /// Flow counts for the scaling figures (default: 1,1000,100000,1000000).
    #[arg(long, value_delimiter = ',')]
    pub flows: Vec<u64>,
}

const LOSS_FREE: f64 = 0.0001; // 0.01 %

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    XdpNative,
    XdpSkb,
    UserspaceAfXdp,
    KernelSockets,
    Rtpengine,
    XdpDropCeiling,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::XdpNative,
        Mode::XdpSkb,
        Mode::UserspaceAfXdp,
        Mode::KernelSockets,
        Mode::Rtpengine,
        Mode::XdpDropCeiling,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::XdpNative => "XDP FORWARD, native",
            Mode::XdpSkb => "XDP FORWARD, SKB (generic)",
            Mode::UserspaceAfXdp => "userspace over AF_XDP",
            Mode::KernelSockets => "kernel sockets (recvmmsg/sendmmsg)",
            Mode::Rtpengine => "rtpengine 10.5 (userspace)",
            Mode::XdpDropCeiling => "XDP_DROP at ingress (ceiling)",
        }
    }
}

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
    /// Of that, the relay's XDP program (`mediaproxy`), per run (BPF_ENABLE_STATS).
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
    /// BPF_PROG_TEST_RUN, best of three runs of 10^6 repeats: a packet to no flow (XDP_PASS),
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
    /// The relay's XDP program: translated and JITed size, instructions the verifier walked.
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

const GEN_IP: [u8; 4] = [10, 0, 1, 2];
const SINK_IP: [u8; 4] = [10, 0, 2, 2];
const GEN_PORT: u16 = 4000;
const SINK_PORT: u16 = 5000;
const RELAY_CPU: usize = 1;
const GEN_CPU: usize = 0;

struct Harness {
    generator_ns: Netns,
    relay: Netns,
    sink: Netns,
    /// Generator → relay → sink.
    forward: Generator,
    /// Sink → relay → generator, for bidirectional runs.
    reverse: Option<Generator>,
}

/// One traffic source: a generator program sending out of one interface of its namespace.
struct Generator {
    ebpf: Arc<Mutex<Ebpf>>,
    ifindex: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Endpoint,
}

fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pin_pid(pid: i32, cpu: usize) {
    // SAFETY: as above, for another task.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn load_bench(prog: &str, attach: Option<(&str, XdpMode)>) -> anyhow::Result<Ebpf> {
    if BENCH_OBJECT.is_empty() {
        bail!("this build carries no benchmark programs (built without the `ebpf` feature)");
    }
    let mut ebpf = EbpfLoader::new().load(BENCH_OBJECT)?;
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .context("bench program missing")?
        .try_into()?;
    p.load()?;
    if let Some((ifname, mode)) = attach {
        p.attach(ifname, mode)
            .with_context(|| format!("attaching {prog} to {ifname}"))?;
    }
    Ok(ebpf)
}

impl Harness {
    /// The harness, and the sinks' programs (their counters): at the sink, and for
    /// bidirectional runs at the generator too.
    fn build(bidirectional: bool) -> anyhow::Result<(Self, Ebpf, Option<Ebpf>)> {
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
            sink.enter(|| load_bench("bench_sink", Some(("s0", XdpMode::Driver))))??;
        let forward = Generator {
            ebpf: Arc::new(Mutex::new(
                generator_ns.enter(|| load_bench("bench_gen", None))??,
            )),
            ifindex: generator_ns.enter(|| crate::caps::ifindex("g0"))??,
            src_mac: gen_mac,
            dst_mac: relay_in_mac,
            src: Endpoint::v4(GEN_IP, GEN_PORT),
        };
        let (reverse, reverse_sink) = if bidirectional {
            let g = Generator {
                ebpf: Arc::new(Mutex::new(sink.enter(|| load_bench("bench_gen", None))??)),
                ifindex: sink.enter(|| crate::caps::ifindex("s0"))??,
                src_mac: sink_mac,
                dst_mac: relay_out_mac,
                src: Endpoint::v4(SINK_IP, SINK_PORT),
            };
            let counter = generator_ns
                .enter(|| load_bench("bench_sink", Some(("g0", XdpMode::Driver))))??;
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
            },
            sink_prog,
            reverse_sink,
        ))
    }
}

/// Pins the NAPI kthreads of `ifname` (named `napi/<ifname>-<id>`) and makes them
/// SCHED_FIFO: at normal priority, scheduling jitter alone drops a few frames per thousand
/// long before the core is busy, which would make every loss-free rate meaningless.
fn pin_napi_threads(ifname: &str, cpu: usize) {
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
            unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Trials

extern "C" fn on_sigusr1(_: libc::c_int) {}

fn install_signal_handler() {
    // SAFETY: installs a no-op handler without SA_RESTART, so a blocked BPF_PROG_TEST_RUN
    // returns EINTR: that is how a trial ends.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct TrialResult {
    sent: u64,
    received: u64,
    seconds: f64,
    relay_busy_ns: u64,
}

impl TrialResult {
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }

    fn rate(&self) -> u64 {
        (self.received as f64 / self.seconds) as u64
    }
}

/// Busy jiffies of one CPU from /proc/stat, in ns.
fn cpu_busy_ns(cpu: usize) -> u64 {
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
struct Target {
    dst_ip: [u8; 4],
    dst_port: u16,
    flows: u32,
    ports_per_ip: u32,
    /// The relay's port facing the sink, where the reverse generator sends.
    reverse_port: u16,
    /// Run the reverse generator too (bidirectional runs; never for the flow scaling).
    both_ways: bool,
}

fn zero_sink(ebpf: &mut Ebpf) -> anyhow::Result<()> {
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

fn sink_count(ebpf: &Ebpf) -> anyhow::Result<u64> {
    let st: PerCpuArray<_, SinkState> =
        PerCpuArray::try_from(ebpf.map("SINK_STATE").context("SINK_STATE")?)?;
    Ok(st.get(&0, 0)?.iter().map(|s| s.packets).sum())
}

fn sink_histogram(ebpf: &Ebpf) -> anyhow::Result<Histogram<u64>> {
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
    fn trial(
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
                    dst_ip: [10, 0, 2, 1],
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
fn run_generators(
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

/// The benchmark's generator aimed at a relay, for the flood test: frames from `src` out of
/// one interface of a namespace, at a paced rate or flat out.
pub struct Flood {
    ns: Netns,
    generator: Generator,
}

impl Flood {
    /// Loads the generator in `ns` (which the flood owns from then on), sending out of
    /// `ifname` toward `dst_mac`.
    pub fn new(
        ns: Netns,
        ifname: &'static str,
        src: Endpoint,
        dst_mac: [u8; 6],
    ) -> anyhow::Result<Self> {
        install_signal_handler();
        let ebpf = ns.enter(|| load_bench("bench_gen", None))??;
        let ifindex = ns.enter(move || crate::caps::ifindex(ifname))??;
        let src_mac = ns.enter(move || interface_mac(ifname))??;
        Ok(Self {
            ns,
            generator: Generator {
                ebpf: Arc::new(Mutex::new(ebpf)),
                ifindex,
                src_mac,
                dst_mac,
                src,
            },
        })
    }

    /// Sends to `ports` consecutive ports from `dst` for `window`, at `rate_pps` (0: as fast
    /// as the generator goes); returns the frames sent.
    pub fn run(
        &self,
        dst: Endpoint,
        ports: u32,
        rate_pps: u64,
        window: Duration,
    ) -> anyhow::Result<u64> {
        let g = &self.generator;
        let cfg = GenConfig {
            rate_pps,
            flows: ports.max(1),
            ports_per_ip: ports.max(1),
            ifindex: g.ifindex,
            dst_port: dst.port(),
            src_port: g.src.port(),
            src_mac: g.src_mac,
            dst_mac: g.dst_mac,
            src_ip: *g.src.addr_v4(),
            dst_ip: *dst.addr_v4(),
            _pad: [0; 4],
        };
        run_generators(&[(&self.ns, g, cfg)], window)
    }
}

/// One long live-frames test run of `g`'s program, until a signal ends it.
fn run_generator(g: &Generator, tid: &AtomicU64) -> anyhow::Result<()> {
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

struct Plan {
    window: Duration,
    /// Windows per trial; the median decides.
    repeats: u32,
    /// Bisection steps after the halving phase found a loss-free rate.
    bisections: u32,
    flows: Vec<u64>,
}

/// The highest loss-free rate in `(0, hi]`: halve from `hi` until a trial passes, then bisect
/// between the last pass and the last failure. `after_overload` may restart the relay and
/// return a new target.
fn loss_free(
    h: &Harness,
    sinks: &mut [&mut Ebpf],
    mut target: Target,
    hi: u64,
    plan: &Plan,
    mut after_overload: impl FnMut() -> anyhow::Result<Option<Target>>,
    progress: &str,
) -> anyhow::Result<Search> {
    let mut trials = Vec::new();
    let mut cpu_at: BTreeMap<u64, (f64, [Option<f64>; 2])> = BTreeMap::new();
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
            rate,
            cpu_ns: at.map(|a| a.0),
            prog_ns: at.map_or([None, None], |a| a.1),
            trials,
        });
    };
    for _ in 0..plan.bisections {
        if hi - lo <= hi / 50 {
            break;
        }
        let mid = (lo + hi) / 2;
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
        rate: lo,
        cpu_ns: at.map(|a| a.0),
        prog_ns: at.map_or([None, None], |a| a.1),
        trials,
    })
}

/// Accumulated run time and count of every loaded program called `name` (BPF_ENABLE_STATS is
/// held for the whole benchmark).
fn prog_stats(name: &str) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0, 0), |(t, n), p| {
            (t + p.run_time().as_nanos() as u64, n + p.run_count())
        })
}

/// Nanoseconds per run of the relay's and the sink's XDP programs between two snapshots.
fn prog_ns(before: [(u64, u64); 2], after: [(u64, u64); 2]) -> [Option<f64>; 2] {
    [0, 1].map(|i| {
        let runs = after[i].1.saturating_sub(before[i].1);
        (runs > 0).then(|| after[i].0.saturating_sub(before[i].0) as f64 / runs as f64)
    })
}

fn snapshot() -> [(u64, u64); 2] {
    [prog_stats("mediaproxy"), prog_stats("bench_sink")]
}

/// The outcome of a loss-free search.
struct Search {
    rate: u64,
    /// Relay core busy time per packet in the trial at `rate`.
    cpu_ns: Option<f64>,
    /// Time per run of the relay's XDP program and of the sink's, in that trial.
    prog_ns: [Option<f64>; 2],
    trials: Vec<(u64, f64)>,
}

// ---------------------------------------------------------------------------------------
// Relays under test

/// What runs as the relay; dropping it stops it.
enum RelayUnderTest {
    Process {
        _child: Guarded,
    },
    /// XDP_DROP counters at the relay's ingress (the ceiling), one per direction.
    Drop(Vec<Ebpf>),
}

fn spawn_pinned(ns: &Netns, args: &[&str], log: &Path) -> anyhow::Result<Guarded> {
    let f = std::fs::File::create(log)?;
    let mut cmd = ns.spawn(args)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(RELAY_CPU, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
    Ok(Guarded(cmd.spawn()?))
}

fn wait_ng(ns: &Netns, addr: SocketAddr) -> anyhow::Result<NgClient> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = ns.enter(move || NgClient::new(addr))??;
        c.tries = 1;
        if scenario::ng(&c, "ping", &[]).is_ok() {
            c.tries = 5;
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("no ng reply from {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sets up one call over ng; returns the relay ports the generator and the sink send to.
fn ng_call(c: &NgClient, call: &str) -> anyhow::Result<(u16, u16)> {
    let dir = Value::List(vec![Value::str("internal"), Value::str("external")]);
    let o = scenario::ng(
        c,
        "offer",
        &[
            ("call-id", Value::str(call)),
            ("from-tag", Value::str("gen")),
            ("sdp", Value::str(&sdp("10.0.1.2", GEN_PORT))),
            ("direction", dir),
        ],
    )?;
    let from_sink = sdp_media(&sdp_of(&o)?)?.port();
    let a = scenario::ng(
        c,
        "answer",
        &[
            ("call-id", Value::str(call)),
            ("from-tag", Value::str("gen")),
            ("to-tag", Value::str("sink")),
            ("sdp", Value::str(&sdp("10.0.2.2", SINK_PORT))),
        ],
    )?;
    Ok((sdp_media(&sdp_of(&a)?)?.port(), from_sink))
}

fn rtpengine_args(log_dir: &Path) -> Vec<String> {
    vec![
        "rtpengine".into(),
        "--table=-1".into(),
        "--interface=internal/10.0.1.1".into(),
        "--interface=external/10.0.2.1".into(),
        "--listen-ng=127.0.0.1:2223".into(),
        "--foreground".into(),
        "--log-stderr".into(),
        "--log-level=4".into(),
        format!("--pidfile={}", log_dir.join("rtpengine.pid").display()),
    ]
}

fn out_dir() -> PathBuf {
    std::env::temp_dir().join(format!("mediaproxy-bench-{}", std::process::id()))
}

impl Harness {
    /// Starts `mode`'s relay and returns it with the generator's target.
    fn start(&self, mode: Mode) -> anyhow::Result<(RelayUnderTest, Target)> {
        let dir = out_dir();
        std::fs::create_dir_all(&dir)?;
        let bin = binary()?;
        let bin = bin.to_string_lossy().into_owned();
        let mut target = Target {
            dst_ip: [10, 0, 1, 1],
            dst_port: 30000,
            flows: 1,
            ports_per_ip: 1,
            reverse_port: 30002,
            both_ways: self.reverse.is_some(),
        };
        let relay = match mode {
            Mode::XdpNative | Mode::XdpSkb | Mode::UserspaceAfXdp => {
                let xdp_mode = if mode == Mode::XdpSkb {
                    "skb"
                } else {
                    "native"
                };
                let mut args = vec![
                    bin.as_str(),
                    "run",
                    "--interface",
                    "internal/10.0.1.1",
                    "--interface",
                    "external/10.0.2.1",
                    "--xdp-mode",
                    xdp_mode,
                ];
                if mode == Mode::UserspaceAfXdp {
                    args.push("--userspace-only");
                }
                let g = spawn_pinned(&self.relay, &args, &dir.join(format!("{mode:?}.log")))?;
                let ng_addr: SocketAddr = "127.0.0.1:22222".parse()?;
                let c = wait_ng(&self.relay, ng_addr)?;
                target.dst_port = ng_call(&c, "bench")?.0;
                // Latch both sides: one packet from the sink, a short burst from the generator.
                let relay_b = {
                    let q = scenario::ng(&c, "query", &[("call-id", Value::str("bench"))])?;
                    let port = q
                        .get("tags")
                        .and_then(Value::as_dict)
                        .and_then(|t| t.get("sink"))
                        .and_then(Value::as_dict)
                        .and_then(|t| t.get("medias"))
                        .and_then(Value::as_list)
                        .and_then(|m| m.first())
                        .and_then(Value::as_dict)
                        .and_then(|m| m.get("streams"))
                        .and_then(Value::as_list)
                        .and_then(|s| s.first())
                        .and_then(Value::as_dict)
                        .and_then(|s| s.get("local port"))
                        .and_then(Value::as_int)
                        .context("relay port facing the sink")?;
                    SocketAddr::new([10, 0, 2, 1].into(), u16::try_from(port)?)
                };
                target.reverse_port = relay_b.port();
                self.sink.enter(move || -> anyhow::Result<()> {
                    let s = std::net::UdpSocket::bind("10.0.2.2:5000")?;
                    s.send_to(&crate::rtp::RtpHeader::g711_packet(0x5, 0), relay_b)?;
                    Ok(())
                })??;
                RelayUnderTest::Process { _child: g }
            }
            Mode::KernelSockets => {
                let g = spawn_pinned(
                    &self.relay,
                    &[
                        bin.as_str(),
                        "bench-socket-relay",
                        "--listen",
                        "10.0.1.1:30000",
                        "--from",
                        "10.0.2.1:30002",
                        "--to",
                        "10.0.2.2:5000",
                        "--back-to",
                        "10.0.1.2:4000",
                    ],
                    &dir.join("sockets.log"),
                )?;
                std::thread::sleep(Duration::from_millis(300));
                RelayUnderTest::Process { _child: g }
            }
            Mode::Rtpengine => {
                let args = rtpengine_args(&dir);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let g = spawn_pinned(&self.relay, &args, &dir.join("rtpengine.log"))?;
                let c = wait_ng(&self.relay, "127.0.0.1:2223".parse()?)?;
                (target.dst_port, target.reverse_port) = ng_call(&c, "bench")?;
                RelayUnderTest::Process { _child: g }
            }
            Mode::XdpDropCeiling => {
                let mut progs = vec![
                    self.relay
                        .enter(|| load_bench("bench_sink", Some(("r0", XdpMode::Driver))))??,
                ];
                if self.reverse.is_some() {
                    progs.push(
                        self.relay
                            .enter(|| load_bench("bench_sink", Some(("r1", XdpMode::Driver))))??,
                    );
                }
                RelayUnderTest::Drop(progs)
            }
        };
        pin_napi_threads("r0", RELAY_CPU);
        pin_napi_threads("r1", RELAY_CPU);
        Ok((relay, target))
    }
}

impl Harness {
    /// Makes sure a mediaproxy mode measures what it says: XDP modes forward in the kernel,
    /// the userspace mode does not.
    fn check_state(&self, mode: Mode) -> anyhow::Result<String> {
        let want = match mode {
            Mode::XdpNative | Mode::XdpSkb => "FORWARD",
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
fn both<'a>(sink: &'a mut Ebpf, reverse: &'a mut Option<Ebpf>) -> Vec<&'a mut Ebpf> {
    let mut v = vec![sink];
    if let Some(r) = reverse.as_mut() {
        v.push(r);
    }
    v
}

/// Sets up `calls` calls through the daemon, one offer/answer pair at a time, and keeps them.
fn ng_load(h: &Harness, calls: u64) -> anyhow::Result<NgFigures> {
    eprintln!("  ng: setting up {calls} calls ...");
    let bin = binary()?;
    let bin = bin.to_string_lossy().into_owned();
    let flows = (calls * 4 + 16).to_string();
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let child = spawn_pinned(
        &h.relay,
        &[
            bin.as_str(),
            "run",
            "--interface",
            "internal/10.0.1.1",
            "--interface",
            "external/10.0.2.1",
            "--port-min",
            "2000",
            "--port-max",
            "65000",
            "--max-flows",
            &flows,
        ],
        &dir.join("ng.log"),
    )?;
    let c = wait_ng(&h.relay, "127.0.0.1:22222".parse()?)?;
    let dir_list = Value::List(vec![Value::str("internal"), Value::str("external")]);
    let t0 = Instant::now();
    let mut offer_time = Duration::ZERO;
    let mut held = 0u64;
    let mut stopped_by = "the requested number".to_owned();
    for i in 0..calls {
        let id = format!("load-{i}");
        let t = Instant::now();
        let o = scenario::ng(
            &c,
            "offer",
            &[
                ("call-id", Value::str(&id)),
                ("from-tag", Value::str("a")),
                ("sdp", Value::str(&sdp("10.0.1.2", 4000))),
                ("direction", dir_list.clone()),
            ],
        );
        offer_time += t.elapsed();
        if let Err(e) = o {
            stopped_by = e.to_string();
            break;
        }
        if let Err(e) = scenario::ng(
            &c,
            "answer",
            &[
                ("call-id", Value::str(&id)),
                ("from-tag", Value::str("a")),
                ("to-tag", Value::str("b")),
                ("sdp", Value::str(&sdp("10.0.2.2", 5000))),
            ],
        ) {
            stopped_by = e.to_string();
            break;
        }
        held += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.0.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
            })
        })
        .unwrap_or(0.0);
    let st = scenario::ng(&c, "statistics", &[])?;
    let flows_held = st
        .get("statistics")
        .and_then(Value::as_dict)
        .and_then(|s| s.get("mediaproxy"))
        .and_then(Value::as_dict)
        .and_then(|m| m.get("flows"))
        .and_then(Value::as_int)
        .unwrap_or(0);
    drop(child);
    Ok(NgFigures {
        calls_per_second: held as f64 / secs,
        offers_per_second: held as f64 / offer_time.as_secs_f64().max(1e-9),
        calls_held: held,
        flows_held: flows_held.max(0).unsigned_abs(),
        daemon_rss_mib: rss,
        stopped_by,
    })
}

// ---------------------------------------------------------------------------------------

fn percentile_us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Memory of the maps with `max_entries` entries, from /proc/self/fdinfo.
fn map_memory(max_entries: u64) -> u64 {
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

static PROGRAM_FACTS: Mutex<ProgramFacts> = Mutex::new(ProgramFacts {
    xlated_bytes: 0,
    jited_bytes: 0,
    verified_instructions: 0,
    test_run_ns_no_flow: 0.0,
    test_run_ns_forward: 0.0,
});

/// The next hop from `from` to `to` in the relay's namespace (static neighbours there). The
/// sink's side runs an XDP program, so native frames are delivered.
fn bench_egress(from: Endpoint, to: Endpoint) -> anyhow::Result<Egress> {
    let (Some(src), Some(dst)) = (from.ip(), to.ip()) else {
        bail!("unset endpoint");
    };
    // No source: the program-timing flows use synthetic ones that are not local.
    let _ = src;
    let (_, r) = crate::nexthop::Resolver::new()?.resolve(None, dst)?;
    let hop = r.ready().with_context(|| {
        format!("no resolved next hop to {dst} in the relay's namespace: {r:?}")
    })?;
    Ok(Egress {
        hop,
        native: true,
        redirect_only: true,
    })
}

/// Times the relay program with BPF_PROG_TEST_RUN. A FORWARD packet is rewritten in place and
/// the next repeat runs on the result, so two flows forward into each other: gen → sink →
/// gen ... and every repeat is a FORWARD.
fn program_timing(dp: &mut Dataplane, ingress: u32) -> anyhow::Result<(f64, f64)> {
    use crate::frame::FrameBuilder;
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
fn scale_point(
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
        let ingress = h.relay.enter(|| crate::caps::ifindex("r0"))??;
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

/// The classic userspace relay, as a baseline: one socket in, one out, recvmmsg/sendmmsg in
/// batches of 64. Runs as `mediaproxy bench-socket-relay` in the relay's namespace.
pub fn socket_relay(
    listen: SocketAddr,
    from: SocketAddr,
    to: SocketAddr,
    back_to: SocketAddr,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let a = std::net::UdpSocket::bind(listen)?;
    let b = std::net::UdpSocket::bind(from)?;
    for s in [&a, &b] {
        // A tuned relay takes a large receive buffer (SO_RCVBUFFORCE: root may exceed
        // rmem_max).
        let size: libc::c_int = 4 << 20;
        // SAFETY: valid int option.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                4,
            )
        };
    }
    // The reverse direction, on its own thread (both on the relay's core).
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    std::thread::spawn(move || relay_loop(&b2, &a2, back_to));
    relay_loop(&a, &b, to);
    Ok(())
}

/// Moves datagrams from `rx` to `to` through `tx` in batches of 64 (recvmmsg/sendmmsg).
fn relay_loop(rx: &std::net::UdpSocket, tx: &std::net::UdpSocket, to: SocketAddr) {
    use std::os::fd::AsRawFd as _;
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    loop {
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; each points at its own iovec.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = std::ptr::from_mut(v);
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs describes BATCH valid buffers.
        let n = unsafe {
            libc::recvmmsg(
                rx.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        let (addr, len) = sockaddr(to);
        let mut out_iov: Vec<libc::iovec> = (0..n)
            .map(|i| libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: msgs[i].msg_len as usize,
            })
            .collect();
        let mut out: Vec<libc::mmsghdr> = out_iov
            .iter_mut()
            .map(|v| {
                // SAFETY: as above.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = std::ptr::from_mut(v);
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_name = std::ptr::from_ref(&addr).cast_mut().cast();
                m.msg_hdr.msg_namelen = len;
                m
            })
            .collect();
        // SAFETY: out describes n valid buffers and a valid destination.
        unsafe { libc::sendmmsg(tx.as_raw_fd(), out.as_mut_ptr(), n as u32, 0) };
    }
}

fn sockaddr(sa: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data and large enough for either family.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut st).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut st).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

fn machine() -> String {
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

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.check {
        return check(p);
    }
    crate::caps::require()?;
    if nr_cpus().map_err(|(_, e)| e)? < 2 {
        bail!("the benchmark pins the generator and the relay to different CPUs: it needs two");
    }
    install_signal_handler();
    // Per-program run time and count, while this fd lives.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let mut plan = if a.quick {
        Plan {
            window: Duration::from_millis(a.window_ms.unwrap_or(200)),
            repeats: 3,
            bisections: 3,
            flows: vec![1, 1_000, 100_000, 1_000_000],
        }
    } else {
        Plan {
            window: Duration::from_millis(a.window_ms.unwrap_or(400)),
            repeats: 5,
            bisections: 7,
            flows: vec![1, 1_000, 100_000, 1_000_000],
        }
    };
    if !a.flows.is_empty() {
        plan.flows.clone_from(&a.flows);
    }
    let started = Instant::now();
    eprintln!(
        "mediaproxy bench ({} profile, {} ms windows): building the topology",
        if a.quick { "quick" } else { "full" },
        plan.window.as_millis()
    );
    let (h, mut sink, mut rsink) = Harness::build(a.bidirectional)?;
    let mut report = Report {
        machine: machine(),
        kernel: kernel(),
        cpus: nr_cpus().unwrap_or(0),
        profile: if a.quick {
            "quick".into()
        } else {
            "full".into()
        },
        window_ms: plan.window.as_millis() as u64,
        windows_per_trial: plan.repeats,
        frame_bytes: FRAME_LEN,
        bidirectional: a.bidirectional,
        ..Report::default()
    };

    // The generator's own ceiling: flat out, into XDP_DROP at the relay's ingress.
    let (drop_relay, drop_target) = h.start(Mode::XdpDropCeiling)?;
    let RelayUnderTest::Drop(mut drop_progs) = drop_relay else {
        unreachable!()
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
    let s = loss_free(
        &h,
        &mut drop_sinks,
        drop_target,
        ceiling,
        &plan,
        || Ok(None),
        Mode::XdpDropCeiling.label(),
    )?;
    report.modes.push(ModeResult {
        mode: format!("{:?}", Mode::XdpDropCeiling),
        label: Mode::XdpDropCeiling.label().into(),
        loss_free_pps: s.rate,
        cpu_ns_per_packet_at_loss_free: s.cpu_ns,
        xdp_program_ns: s.prog_ns[0],
        sink_program_ns: s.prog_ns[1],
        trials: s.trials,
        ..ModeResult::default()
    });
    drop(drop_sinks);
    drop(drop_progs);

    let wanted = |m: Mode| {
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
        eprintln!("  {} ...", mode.label());
        let (relay, target) = h.start(mode)?;
        let mut relay = Some(relay);
        // Warm up (and latch the generator's side).
        h.trial(
            &mut both(&mut sink, &mut rsink),
            target,
            1000,
            Duration::from_millis(200),
        )?;
        let note = h.check_state(mode)?;
        let s = loss_free(
            &h,
            &mut both(&mut sink, &mut rsink),
            target,
            ceiling,
            &plan,
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
                Ok(Some(t))
            },
            mode.label(),
        )?;
        report.modes.push(ModeResult {
            mode: format!("{mode:?}"),
            label: mode.label().into(),
            loss_free_pps: s.rate,
            cpu_ns_per_packet_at_loss_free: s.cpu_ns,
            xdp_program_ns: s.prog_ns[0],
            sink_program_ns: s.prog_ns[1],
            trials: s.trials,
            note,
            ..ModeResult::default()
        });
        drop(relay);
        std::thread::sleep(Duration::from_millis(200));
    }

    // Latency and CPU at one load that every mode sustains.
    let common = report
        .modes
        .iter()
        .map(|m| m.loss_free_pps)
        .filter(|r| *r > 0)
        .min()
        .unwrap_or(1000)
        * 8
        / 10;
    let common = common.max(1000);
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
        let (lat, cpu) = match relay {
            RelayUnderTest::Drop(mut p) => measure(&mut p.iter_mut().collect::<Vec<_>>())?,
            other => {
                let m = measure(&mut both(&mut sink, &mut rsink))?;
                drop(other);
                m
            }
        };
        let entry = report
            .modes
            .iter_mut()
            .find(|m| m.mode == format!("{mode:?}"))
            .expect("measured above");
        entry.latency = Some(lat);
        entry.cpu_ns_per_packet = Some(cpu);
        std::thread::sleep(Duration::from_millis(200));
    }

    // How the rate holds as flows grow (XDP native).
    for &n in &plan.flows {
        eprintln!("  XDP native with {n} flows ...");
        report
            .scaling
            .push(scale_point(&h, &mut [&mut sink], n, ceiling, &plan)?);
    }

    report.ng = ng_load(&h, if a.quick { 2_000 } else { 30_000 })?;
    report.program = PROGRAM_FACTS.lock().expect("not poisoned").clone();
    compute_ratios(&mut report);
    print_table(&report);
    if let Some(parent) = a.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.json, serde_json::to_string_pretty(&report)?)?;
    if let Some(parent) = a.svg.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.svg, svg(&report))?;
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

fn rate_of(r: &Report, m: Mode) -> f64 {
    r.modes
        .iter()
        .find(|x| x.mode == format!("{m:?}"))
        .map_or(0.0, |x| x.loss_free_pps as f64)
}

fn p99_of(r: &Report, m: Mode) -> f64 {
    r.modes
        .iter()
        .find(|x| x.mode == format!("{m:?}"))
        .and_then(|x| x.latency.as_ref())
        .map_or(0.0, |l| l.p99_us)
}

fn compute_ratios(r: &mut Report) {
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

fn print_table(r: &Report) {
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
fn svg(r: &Report) -> String {
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
fn check(path: &Path) -> anyhow::Result<()> {
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
