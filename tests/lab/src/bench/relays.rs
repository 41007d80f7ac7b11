//! The relays under test: mediaproxy in each mode, rtpengine, and the kernel-socket relay,
//! started in the relay namespace with the generator's flow set up over ng.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, programs::XdpMode};

use proxy_userspace::ng::{bencode::Value, client::NgClient};

use crate::{
    scenario::{self, binary, sdp, sdp_media, sdp_of},
    testbed::{Guarded, Netns},
};

use super::Mode;
use super::harness::{
    GEN_IP, GEN_PORT, Harness, RELAY_CPU, SINK_IP, SINK_PORT, Target, pin_napi_threads,
};

/// What runs as the relay; dropping it stops it.
pub(super) enum RelayUnderTest {
    Process {
        _child: Guarded,
    },
    /// `XDP_DROP` counters at the relay's ingress (the ceiling), one per direction.
    Drop(Vec<Ebpf>),
    /// Nothing runs: the relay namespace routes the frames itself (its interfaces forward, and
    /// its neighbours are static).
    Router,
}

pub(super) fn spawn_pinned(ns: &Netns, args: &[&str], log: &Path) -> anyhow::Result<Guarded> {
    let f = std::fs::File::create(log)?;
    let mut cmd = ns.spawn(args)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(RELAY_CPU, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
            Ok(())
        });
    }
    Ok(Guarded(cmd.spawn()?))
}

pub(super) fn wait_ng(ns: &Netns, addr: SocketAddr) -> anyhow::Result<NgClient> {
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
pub(super) fn ng_call(c: &NgClient, call: &str) -> anyhow::Result<(u16, u16)> {
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

pub(super) fn rtpengine_args(log_dir: &Path) -> Vec<String> {
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

pub(super) fn out_dir() -> PathBuf {
    std::env::temp_dir().join(format!("mediaproxy-bench-{}", std::process::id()))
}

impl Harness {
    /// Starts `mode`'s relay and returns it with the generator's target.
    #[expect(
        clippy::too_many_lines,
        reason = "one relay's setup, read top to bottom as its steps happen"
    )]
    pub(super) fn start(&self, mode: Mode) -> anyhow::Result<(RelayUnderTest, Target)> {
        let dir = out_dir();
        std::fs::create_dir_all(&dir)?;
        let bin = binary()?;
        let bin = bin.to_string_lossy().into_owned();
        let mut target = Target {
            dst_ip: [10, 0, 1, 1],
            dst_port: 30000,
            flows: 1,
            ports_per_ip: 1,
            reverse_ip: [10, 0, 2, 1],
            reverse_port: 30002,
            both_ways: self.reverse.is_some(),
        };
        let relay = match mode {
            Mode::XdpNative | Mode::XdpNativeBaseline | Mode::XdpSkb | Mode::UserspaceAfXdp => {
                let bin = match (mode, &self.baseline) {
                    (Mode::XdpNativeBaseline, Some(b)) => b.to_string_lossy().into_owned(),
                    (Mode::XdpNativeBaseline, None) => bail!("no --baseline build to measure"),
                    _ => bin.clone(),
                };
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
                let lab = scenario::lab_binary()?;
                let g = spawn_pinned(
                    &self.relay,
                    &[
                        &*lab.to_string_lossy(),
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
            Mode::KernelForward => {
                // Addressed to the far end itself, through the relay as a router.
                (target.dst_ip, target.dst_port) = (SINK_IP, SINK_PORT);
                (target.reverse_ip, target.reverse_port) = (GEN_IP, GEN_PORT);
                RelayUnderTest::Router
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
                let mut progs = vec![self.relay.enter(|| {
                    crate::programs::load("bench_sink", Some(("r0", XdpMode::Driver)))
                })??];
                if self.reverse.is_some() {
                    progs.push(self.relay.enter(|| {
                        crate::programs::load("bench_sink", Some(("r1", XdpMode::Driver)))
                    })??);
                }
                RelayUnderTest::Drop(progs)
            }
        };
        pin_napi_threads("r0", RELAY_CPU);
        pin_napi_threads("r1", RELAY_CPU);
        Ok((relay, target))
    }
}
