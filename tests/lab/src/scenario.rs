//! Ready-made topologies and media for the demo and the integration tests: real daemons in
//! network namespaces, phones that send and count RTP, and the ng calls that set them up.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;

use proxy_userspace::ng::{
    bencode::{Dict, Value},
    client::NgClient,
};

use crate::{
    programs::PassProgram,
    rtp::RtpHeader,
    testbed::{Guarded, Netns, link},
};

/// The relay's `mediaproxy` binary: `MEDIAPROXY_BIN`, else the one beside this executable.
///
/// # Errors
///
/// If no such binary is found.
pub fn binary() -> anyhow::Result<PathBuf> {
    sibling("MEDIAPROXY_BIN", "mediaproxy", "proxy-userspace")
}

/// The lab's own `mediaproxy-lab` binary (the benchmark's socket relay runs as one):
/// `MEDIAPROXY_LAB_BIN`, else the one beside this executable.
///
/// # Errors
///
/// If no such binary is found.
pub fn lab_binary() -> anyhow::Result<PathBuf> {
    sibling("MEDIAPROXY_LAB_BIN", "mediaproxy-lab", "mediaproxy-lab")
}

/// `var` if set; else `name` in this executable's directory (an install, or `target/<profile>`
/// for `mediaproxy-lab`), or in its parent (`target/<profile>/deps/<test>` for a test).
fn sibling(var: &str, name: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent();
    [dir, dir.and_then(std::path::Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|c| c.is_file())
        .with_context(|| {
            format!(
                "cannot find the {name} binary: build it (cargo build -p {package}) or set {var}"
            )
        })
}

/// A relay daemon running in a namespace; stopped (SIGTERM, then detach) on drop.
pub struct Relay {
    pub ns_name: String,
    pub ng: SocketAddr,
    pub log: PathBuf,
    _child: Guarded,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The daemon read its secret at start; its log is only for a failing test's message.
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub const SECRET: &str = "demo-deployment-secret-0123456789";

impl Relay {
    /// Starts `mediaproxy run` in `ns` with these media addresses and extra arguments, and
    /// waits until it answers an ng ping.
    ///
    /// # Errors
    ///
    /// If the binary is missing, its files cannot be written, or it does not start and answer.
    pub fn start(
        ns: &Netns,
        interfaces: &[&str],
        extra: &[&str],
        probing: bool,
        mode: XdpMode,
    ) -> anyhow::Result<Self> {
        let bin = binary()?;
        let dir = std::env::temp_dir().join(format!("mediaproxy-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let secret = dir.join("probe.secret");
        std::fs::write(&secret, SECRET)?;
        let log = dir.join("relay.log");
        let mut args: Vec<String> = vec![bin.to_string_lossy().into_owned(), "run".into()];
        // `Default`: the daemon's own default, as a user who gives no option gets it.
        match mode {
            XdpMode::Default => {}
            XdpMode::Skb => args.extend(["--xdp-mode".into(), "skb".into()]),
            _ => args.extend(["--xdp-mode".into(), "native".into()]),
        }
        for i in interfaces {
            args.push("--interface".into());
            args.push((*i).into());
        }
        if probing {
            args.push("--probe-secret-file".into());
            args.push(secret.to_string_lossy().into_owned());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        let logfile = std::fs::File::create(&log)?;
        let child = ns
            .spawn(&args_ref)?
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            .spawn()
            .context("starting mediaproxy")?;
        let relay = Self {
            ns_name: ns.name().to_owned(),
            ng: "127.0.0.1:22222".parse()?,
            log,
            _child: Guarded(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ping = relay.ng(ns).and_then(|c| {
                let mut d = Dict::new();
                d.push("command", Value::str("ping"));
                let mut c = c;
                c.tries = 1;
                c.request(&d)
            });
            if ping.is_ok_and(|r| r.get_str("result") == Some("pong")) {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                bail!(
                    "mediaproxy in {} did not come up; its log:\n{}",
                    ns.name(),
                    relay.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's process id.
    #[must_use]
    #[expect(
        clippy::used_underscore_binding,
        reason = "the child is held for its Drop and only asked its pid here"
    )]
    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// The daemon's resident memory, in bytes (`VmRSS`).
    ///
    /// # Errors
    ///
    /// If `/proc/<pid>/status` cannot be read or has no `VmRSS`.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .context("no VmRSS")?
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }

    /// An ng client inside the relay's namespace.
    ///
    /// # Errors
    ///
    /// If the client cannot be created in `ns`.
    pub fn ng(&self, ns: &Netns) -> anyhow::Result<NgClient> {
        let addr = self.ng;
        ns.enter(move || NgClient::new(addr))?
    }

    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One direction of RTP between two phones: what was sent and what arrived.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    pub first_sent: Option<Instant>,
    pub first_received: Option<Instant>,
    /// Distinct sequence numbers received (duplicates do not count twice).
    pub distinct: u64,
    /// Packets that arrived from somewhere other than the expected relay address.
    pub wrong_source: u64,
    /// When each packet arrived, in order.
    pub arrivals: Vec<Instant>,
    /// Payload bytes of the largest packet that arrived.
    pub largest: usize,
}

impl StreamReport {
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.distinct)
    }

    /// Time from the first packet sent to the first delivered.
    #[must_use]
    pub fn setup_delay(&self) -> Option<Duration> {
        Some(
            self.first_received?
                .saturating_duration_since(self.first_sent?),
        )
    }
}

/// A phone: a UDP socket in its namespace that sends RTP every 20 ms to the relay and counts
/// what comes back.
pub struct Phone {
    sock: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    report_rx: Arc<Mutex<StreamReport>>,
    sent: Arc<Mutex<(u64, Option<Instant>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Phone {
    /// # Errors
    ///
    /// If the socket cannot be bound in `ns` or configured.
    pub fn bind(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let sock = ns.enter(move || UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Self {
            sock: Arc::new(sock),
            stop: Arc::new(AtomicBool::new(false)),
            report_rx: Arc::new(Mutex::new(StreamReport::default())),
            sent: Arc::new(Mutex::new((0, None))),
            threads: Vec::new(),
        })
    }

    /// Starts sending `count` G.711 packets, 20 ms apart, to `to`, and receiving; packets from
    /// any source but `expect_from` count as wrong.
    pub fn start(&mut self, to: SocketAddr, expect_from: SocketAddr, ssrc: u32, count: u16) {
        self.start_sized(to, expect_from, ssrc, count, 160);
    }

    /// As [`Phone::start`], with `payload` bytes after each RTP header.
    ///
    /// # Panics
    ///
    /// If one of the phone's threads panicked holding its counters (a poisoned lock).
    pub fn start_sized(
        &mut self,
        to: SocketAddr,
        expect_from: SocketAddr,
        ssrc: u32,
        count: u16,
        payload: usize,
    ) {
        let (sock, stop, sent) = (self.sock.clone(), self.stop.clone(), self.sent.clone());
        self.threads.push(std::thread::spawn(move || {
            let t0 = Instant::now();
            for n in 0..count {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = t0 + Duration::from_millis(20) * u32::from(n);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if sock
                    .send_to(&RtpHeader::packet(ssrc, n, payload), to)
                    .is_ok()
                {
                    let mut s = sent.lock().expect("not poisoned");
                    s.0 += 1;
                    s.1.get_or_insert_with(Instant::now);
                }
            }
        }));
        let (sock, stop, report) = (self.sock.clone(), self.stop.clone(), self.report_rx.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let now = Instant::now();
                let mut r = report.lock().expect("not poisoned");
                r.received += 1;
                r.first_received.get_or_insert(now);
                r.arrivals.push(now);
                r.largest = r.largest.max(n.saturating_sub(RtpHeader::LEN));
                if from != expect_from {
                    r.wrong_source += 1;
                }
                if let Some(h) = RtpHeader::parse(&buf[..n])
                    && seen.insert(h.seq)
                {
                    r.distinct += 1;
                }
            }
        }));
    }

    /// What the far phone received from this one is in *its* report; this is what arrived
    /// here, combined with what was sent from here.
    ///
    /// # Panics
    ///
    /// If one of the phone's threads panicked holding its counters (a poisoned lock).
    #[must_use]
    pub fn received(&self) -> StreamReport {
        self.report_rx.lock().expect("not poisoned").clone()
    }

    /// How many packets were sent from here, and when the first was.
    ///
    /// # Panics
    ///
    /// If one of the phone's threads panicked holding its counters (a poisoned lock).
    #[must_use]
    pub fn sent(&self) -> (u64, Option<Instant>) {
        *self.sent.lock().expect("not poisoned")
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The report of the stream `from` → `to`.
#[must_use]
pub fn stream(from: &Phone, to: &Phone) -> StreamReport {
    let (sent, first_sent) = from.sent();
    StreamReport {
        sent,
        first_sent,
        ..to.received()
    }
}

#[must_use]
pub fn sdp(ip: &str, port: u16) -> String {
    let family = if ip.contains(':') { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=- 1 1 IN {family} {ip}\r\ns=mediaproxy\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// Runs one ng command; fails on an error reply.
///
/// # Errors
///
/// If the request fails or the reply is an error.
pub fn ng(client: &NgClient, command: &str, pairs: &[(&str, Value)]) -> anyhow::Result<Dict> {
    let mut d = Dict::new();
    d.push("command", Value::str(command));
    for (k, v) in pairs {
        d.push(k, v.clone());
    }
    let r = client.request(&d)?;
    if r.get_str("result") == Some("error") {
        bail!(
            "{command}: {}",
            r.get_str("error-reason").unwrap_or("error")
        );
    }
    Ok(r)
}

/// The `c=` address and the `m=audio` port of an SDP body.
///
/// # Errors
///
/// If the body has no `c=` line or `m=audio` port, or they do not parse.
pub fn sdp_media(sdp: &[u8]) -> anyhow::Result<SocketAddr> {
    let s = String::from_utf8_lossy(sdp);
    let ip = s
        .lines()
        .find_map(|l| {
            l.strip_prefix("c=IN IP4 ")
                .or_else(|| l.strip_prefix("c=IN IP6 "))
        })
        .context("no c= line")?;
    let port = s
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .context("no m=audio line")?;
    Ok(SocketAddr::new(ip.trim().parse()?, port.parse()?))
}

/// # Errors
///
/// If the reply has no `sdp`.
pub fn sdp_of(reply: &Dict) -> anyhow::Result<Vec<u8>> {
    Ok(reply
        .get("sdp")
        .and_then(Value::as_bytes)
        .context("reply without sdp")?
        .to_vec())
}

/// Sums a per-stream figure of the `mediaproxy` dictionaries in a query reply, over the
/// streams of the tag `tag` (RTP only).
#[must_use]
pub fn query_figure(q: &Dict, tag: &str, key: &str) -> u64 {
    let Some(t) = q
        .get("tags")
        .and_then(Value::as_dict)
        .and_then(|t| t.get(tag))
        .and_then(Value::as_dict)
    else {
        return 0;
    };
    let Some(medias) = t.get("medias").and_then(Value::as_list) else {
        return 0;
    };
    medias
        .iter()
        .filter_map(Value::as_dict)
        .filter_map(|m| m.get("streams").and_then(Value::as_list))
        .filter_map(|s| s.first())
        .filter_map(Value::as_dict)
        .filter_map(|s| s.get("mediaproxy").and_then(Value::as_dict))
        .filter_map(|mp| mp.get(key).and_then(Value::as_int))
        .map(|v| v.max(0).unsigned_abs())
        .sum()
}

/// The text of a per-stream field (RTP stream of `tag`), e.g. `state`.
#[must_use]
pub fn query_text(q: &Dict, tag: &str, key: &str) -> Option<String> {
    let t = q.get("tags")?.as_dict()?.get(tag)?.as_dict()?;
    let s = t
        .get("medias")?
        .as_list()?
        .first()?
        .as_dict()?
        .get("streams")?
        .as_list()?
        .first()?
        .as_dict()?;
    let mp = s.get("mediaproxy")?.as_dict()?;
    match mp.get(key)? {
        Value::Dict(d) => d.get_str("state").map(str::to_owned),
        v => v.as_str().map(str::to_owned),
    }
}

/// Sets one call up over ng the way a call server does (offer from A, answer from B) and
/// returns where each phone must send: `(a_sends_to, b_sends_to)`. `direction` names the
/// relay's interfaces toward A and toward B.
///
/// # Errors
///
/// If an ng command fails or a reply has no usable SDP.
pub fn call(
    client: &NgClient,
    call_id: &str,
    a: SocketAddr,
    b: SocketAddr,
    direction: Option<(&str, &str)>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let mut keys = vec![
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("tag-a")),
        ("sdp", Value::str(&sdp(&a.ip().to_string(), a.port()))),
    ];
    if let Some((x, y)) = direction {
        keys.push(("direction", Value::List(vec![Value::str(x), Value::str(y)])));
    }
    let offer = ng(client, "offer", &keys)?;
    let b_sends_to = sdp_media(&sdp_of(&offer)?)?;
    let answer = ng(
        client,
        "answer",
        &[
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(&sdp(&b.ip().to_string(), b.port()))),
        ],
    )?;
    let a_sends_to = sdp_media(&sdp_of(&answer)?)?;
    Ok((a_sends_to, b_sends_to))
}

/// The container shape: the relay's interfaces are veths whose peers sit in Linux bridges in
/// another namespace (the host's side, where Docker, Kubernetes and LXC put them), and the
/// phones hang off the same bridges. Nothing runs XDP but the relay.
///
/// Two-armed: `br0` carries 10.0.1.0/24 and `fd00:1::/64` (relay `r0` .1, phone A `a0` .2),
/// `br1` carries 10.0.2.0/24 and `fd00:2::/64` (relay `r1` .1, phone B `b0` .2). One-armed: only
/// `br0`, with the relay `r0` .1, A .2 and B .3 on it; the relay sends everything back out of
/// the interface it came in on.
pub struct Bridged {
    pub relay: Netns,
    pub host: Netns,
    pub a: Netns,
    pub b: Netns,
    pub one_armed: bool,
}

impl Bridged {
    /// # Errors
    ///
    /// If a namespace, link or bridge cannot be set up.
    pub fn build(tag: &str, one_armed: bool) -> anyhow::Result<Self> {
        let relay = Netns::new(&format!("{tag}r"))?;
        let host = Netns::new(&format!("{tag}h"))?;
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        let t = Self {
            relay,
            host,
            a,
            b,
            one_armed,
        };
        t.host.ip(&["link", "add", "br0", "type", "bridge"])?;
        t.host.ip(&["link", "set", "br0", "up"])?;
        if !one_armed {
            t.host.ip(&["link", "add", "br1", "type", "bridge"])?;
            t.host.ip(&["link", "set", "br1", "up"])?;
        }
        t.plug(
            &t.relay,
            "r0",
            "hr0",
            "br0",
            &["10.0.1.1/24", "fd00:1::1/64"],
        )?;
        t.plug(&t.a, "a0", "ha0", "br0", &["10.0.1.2/24", "fd00:1::2/64"])?;
        if one_armed {
            t.plug(&t.b, "b0", "hb0", "br0", &["10.0.1.3/24", "fd00:1::3/64"])?;
        } else {
            t.plug(
                &t.relay,
                "r1",
                "hr1",
                "br1",
                &["10.0.2.1/24", "fd00:2::1/64"],
            )?;
            t.plug(&t.b, "b0", "hb0", "br1", &["10.0.2.2/24", "fd00:2::2/64"])?;
        }
        Ok(t)
    }

    /// A veth from `ns` (`ifname`, with these addresses) into `bridge` on the host side
    /// (`host_if`): what a container runtime does. Also used to re-create a deleted link.
    ///
    /// # Errors
    ///
    /// If a command that sets the link up fails.
    pub fn plug(
        &self,
        ns: &Netns,
        ifname: &str,
        host_if: &str,
        bridge: &str,
        addrs: &[&str],
    ) -> anyhow::Result<()> {
        crate::testbed::veth(ns, ifname, &self.host, host_if)?;
        self.host.ip(&["link", "set", host_if, "master", bridge])?;
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["-6", "addr", "add", addr, "dev", ifname, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifname])?;
            }
        }
        Ok(())
    }

    /// The relay's media addresses, rtpengine style, for `family` 4 or 6.
    #[must_use]
    pub fn interfaces(&self, v6: bool) -> Vec<&'static str> {
        match (self.one_armed, v6) {
            (true, false) => vec!["10.0.1.1"],
            (true, true) => vec!["fd00:1::1"],
            (false, false) => vec!["internal/10.0.1.1", "external/10.0.2.1"],
            (false, true) => vec!["internal/fd00:1::1", "external/fd00:2::1"],
        }
    }

    /// The phones' media addresses.
    #[must_use]
    #[expect(
        clippy::missing_panics_doc,
        reason = "parses only literals that are addresses"
    )]
    pub fn phones(&self, v6: bool) -> (SocketAddr, SocketAddr) {
        let s = |x: &str| x.parse().expect("a literal address");
        match (self.one_armed, v6) {
            (true, false) => (s("10.0.1.2:4000"), s("10.0.1.3:5000")),
            (true, true) => (s("[fd00:1::2]:4000"), s("[fd00:1::3]:5000")),
            (false, false) => (s("10.0.1.2:4000"), s("10.0.2.2:5000")),
            (false, true) => (s("[fd00:1::2]:4000"), s("[fd00:2::2]:5000")),
        }
    }

    /// `direction` for an offer: the interfaces toward A and B.
    #[must_use]
    pub fn direction(&self) -> Option<(&'static str, &'static str)> {
        (!self.one_armed).then_some(("internal", "external"))
    }
}

/// phone A — relay — phone B.
pub struct OneRelay {
    pub a: Netns,
    pub relay: Netns,
    pub b: Netns,
    _pass: Vec<PassProgram>,
}

impl OneRelay {
    /// The two-armed relay of this topology, `internal/10.0.1.1` toward A and
    /// `external/10.0.2.1` toward B, probing off, attached in `mode`.
    ///
    /// # Errors
    ///
    /// As [`Relay::start`].
    pub fn start_relay(&self, mode: XdpMode) -> anyhow::Result<Relay> {
        Relay::start(
            &self.relay,
            &["internal/10.0.1.1", "external/10.0.2.1"],
            &[],
            false,
            mode,
        )
    }

    /// With an `XDP_PASS` program on each phone's end, so that native XDP frames are
    /// delivered there (a test rig's helper; see [`Bridged`] for what a container is).
    ///
    /// # Errors
    ///
    /// If a namespace or link cannot be set up, or a pass program cannot be attached.
    #[expect(
        clippy::used_underscore_binding,
        reason = "the programs are held for their Drop"
    )]
    pub fn build(tag: &str, mode: XdpMode) -> anyhow::Result<Self> {
        let mut t = Self::build_plain(tag)?;
        t._pass = vec![
            t.a.enter(move || PassProgram::attach("a0", mode))??,
            t.b.enter(move || PassProgram::attach("b0", mode))??,
        ];
        Ok(t)
    }

    /// Without anything on the phones' ends.
    ///
    /// # Errors
    ///
    /// If a namespace or link cannot be set up.
    pub fn build_plain(tag: &str) -> anyhow::Result<Self> {
        let a = Netns::new(&format!("{tag}a"))?;
        let relay = Netns::new(&format!("{tag}r"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        link(&a, "a0", &["10.0.1.2/24"], &relay, "r0", &["10.0.1.1/24"])?;
        link(&relay, "r1", &["10.0.2.1/24"], &b, "b0", &["10.0.2.2/24"])?;
        a.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        b.ip(&["route", "add", "default", "via", "10.0.2.1"])?;
        Ok(Self {
            a,
            relay,
            b,
            _pass: Vec::new(),
        })
    }
}

/// phone A — MP1 — NAT (port-changing masquerade) — MP2 — phone B: the field topology of
/// two relays in series, where MP2 cannot reach MP1 until MP1 sends.
pub struct TwoRelays {
    pub a: Netns,
    pub mp1: Netns,
    pub nat: Netns,
    pub mp2: Netns,
    pub b: Netns,
    _pass: Vec<PassProgram>,
}

pub const NAT_PUBLIC: &str = "192.0.2.1";
pub const MP2_PUBLIC: &str = "192.0.2.10";

impl TwoRelays {
    /// # Errors
    ///
    /// If a namespace, link or route cannot be set up.
    pub fn build(tag: &str, mode: XdpMode) -> anyhow::Result<Self> {
        let a = Netns::new(&format!("{tag}a"))?;
        let mp1 = Netns::new(&format!("{tag}m1"))?;
        let nat = Netns::new(&format!("{tag}n"))?;
        let mp2 = Netns::new(&format!("{tag}m2"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        link(&a, "a0", &["10.0.1.2/24"], &mp1, "m1a", &["10.0.1.1/24"])?;
        link(&mp1, "m1n", &["10.1.0.2/24"], &nat, "nin", &["10.1.0.1/24"])?;
        link(
            &nat,
            "nout",
            &["192.0.2.1/24"],
            &mp2,
            "m2n",
            &["192.0.2.10/24"],
        )?;
        link(&mp2, "m2b", &["10.0.2.1/24"], &b, "b0", &["10.0.2.2/24"])?;
        a.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        mp1.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
        b.ip(&["route", "add", "default", "via", "10.0.2.1"])?;
        nat.sysctl("net.ipv4.ip_forward=1")?;
        // A port-changing NAT: the case latching exists for.
        let rules = "table ip nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"nout\" masquerade random\n }\n}\n";
        let path = std::env::temp_dir().join(format!("{}.nft", nat.name()));
        std::fs::write(&path, rules)?;
        nat.exec(&["nft", "-f", &path.to_string_lossy()])?;
        let _ = std::fs::remove_file(&path);
        let pass = vec![
            a.enter(move || PassProgram::attach("a0", mode))??,
            nat.enter(move || PassProgram::attach("nin", mode))??,
            nat.enter(move || PassProgram::attach("nout", mode))??,
            b.enter(move || PassProgram::attach("b0", mode))??,
        ];
        Ok(Self {
            a,
            mp1,
            nat,
            mp2,
            b,
            _pass: pass,
        })
    }

    /// Starts both relays.
    ///
    /// # Errors
    ///
    /// If a relay does not start.
    pub fn relays(
        &self,
        probing: bool,
        mode: XdpMode,
        extra: &[&str],
    ) -> anyhow::Result<(Relay, Relay)> {
        let r1 = Relay::start(
            &self.mp1,
            &["internal/10.0.1.1", "external/10.1.0.2"],
            extra,
            probing,
            mode,
        )?;
        let r2 = Relay::start(
            &self.mp2,
            &["internal/10.0.2.1", "external/192.0.2.10"],
            extra,
            probing,
            mode,
        )?;
        Ok((r1, r2))
    }
}

/// The addresses the phones must send to, after the call was set up through both relays.
pub struct TwoRelayCall {
    pub a_sends_to: SocketAddr,
    pub b_sends_to: SocketAddr,
}

/// Sets up one call through MP1 and MP2 the way two call servers would: offer through MP1
/// then MP2, answer through MP2 then MP1. MP2's call server tells it the next relay (MP1) is
/// behind the NAT's public address; MP1's learns MP2 from the answer.
///
/// # Errors
///
/// If an ng command fails or a reply has no usable SDP.
pub fn two_relay_call(
    t: &TwoRelays,
    r1: &Relay,
    r2: &Relay,
    call_id: &str,
    next_relay: bool,
) -> anyhow::Result<TwoRelayCall> {
    let c1 = r1.ng(&t.mp1)?;
    let c2 = r2.ng(&t.mp2)?;
    let dir = |a: &str, b: &str| Value::List(vec![Value::str(a), Value::str(b)]);
    let o1 = ng(
        &c1,
        "offer",
        &[
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("tag-a")),
            ("sdp", Value::str(&sdp("10.0.1.2", 4000))),
            ("direction", dir("internal", "external")),
        ],
    )?;
    let mut o2_keys = vec![
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("tag-a")),
        ("sdp", Value::Bytes(sdp_of(&o1)?)),
        ("direction", dir("external", "internal")),
    ];
    if next_relay {
        o2_keys.push(("next-relay", Value::str(NAT_PUBLIC)));
    }
    let o2 = ng(&c2, "offer", &o2_keys)?;
    let b_sends_to = sdp_media(&sdp_of(&o2)?)?;
    let a2 = ng(
        &c2,
        "answer",
        &[
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(&sdp("10.0.2.2", 5000))),
        ],
    )?;
    let mut a1_keys = vec![
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("tag-a")),
        ("to-tag", Value::str("tag-b")),
        ("sdp", Value::Bytes(sdp_of(&a2)?)),
    ];
    if next_relay {
        a1_keys.push(("next-relay", Value::str(MP2_PUBLIC)));
    }
    let a1 = ng(&c1, "answer", &a1_keys)?;
    let a_sends_to = sdp_media(&sdp_of(&a1)?)?;
    Ok(TwoRelayCall {
        a_sends_to,
        b_sends_to,
    })
}
