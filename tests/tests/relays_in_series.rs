//! Two relays in series across an enterprise NAT, driven by two real Kamailio instances
//! whose configs differ from a stock rtpengine one only in `rtpengine_sock`: Kamailio's own
//! sample config (`WITH_NAT`, `WITH_RTPENGINE`) and a plain one calling `rtpengine_offer` /
//! `rtpengine_answer` with `replace-origin replace-session-connection`. Each Kamailio knows
//! only its own relay. Phone A calls phone B with SIP; media flows both ways. The same
//! topology runs with Debian's rtpengine as both relays, in the same run, and the time to
//! first audio per direction is printed side by side.
//!
//! ```text
//!  enterprise LAN 10.1.0.0/24                      internet 192.0.2.0/24
//!  phone A .3 ─┐                                ┌─ Kamailio 2 + relay 2 .10
//!  K1 + relay 1 .2 ─┤ NAT .1 ══ 192.0.2.1 (masquerade) ┤
//!                                               └─ phone B .20 (registered at K2)
//! ```

use std::{
    net::{SocketAddr, UdpSocket},
    process::Stdio,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    scenario::{self, Phone, Relay, StreamReport, stream},
    testbed::{Guarded, Netns, veth},
};
use mediaproxy_tests::{
    kamailio::{self, Kamailio},
    need_root, sip,
};
use proxy_userspace::ng::{
    bencode::{Dict, Value},
    client::NgClient,
};

const PHONE_A: &str = "10.1.0.3";
const EDGE: &str = "10.1.0.2";
const CARRIER: &str = "192.0.2.10";
const PHONE_B: &str = "192.0.2.20";
const PACKETS: u16 = 150;
/// Phone B's number, registered at the carrier's proxy.
const NUMBER: &str = "+4930123456";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

struct Net {
    a: Netns,
    e: Netns,
    nat: Netns,
    _inet: Netns,
    c: Netns,
    b: Netns,
}

impl Net {
    #[expect(
        clippy::used_underscore_binding,
        reason = "the namespace is held for its Drop and configured here"
    )]
    fn build(tag: &str, random_ports: bool) -> anyhow::Result<Self> {
        let n = |s: &str| Netns::new(&format!("{tag}{s}"));
        let t = Self {
            a: n("a")?,
            e: n("e")?,
            nat: n("n")?,
            _inet: n("i")?,
            c: n("c")?,
            b: n("b")?,
        };
        // The enterprise LAN: a bridge in the NAT box.
        t.nat.ip(&["link", "add", "lan", "type", "bridge"])?;
        t.nat.ip(&["addr", "add", "10.1.0.1/24", "dev", "lan"])?;
        t.nat.ip(&["link", "set", "lan", "up"])?;
        for (ns, ifname, port, addr) in [
            (&t.a, "a0", "la", "10.1.0.3/24"),
            (&t.e, "e0", "le", "10.1.0.2/24"),
        ] {
            veth(ns, ifname, &t.nat, port)?;
            t.nat.ip(&["link", "set", port, "master", "lan"])?;
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
            ns.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
        }
        // The internet: a bridge joining the NAT's outside, the carrier and phone B.
        t._inet.ip(&["link", "add", "wan", "type", "bridge"])?;
        t._inet.ip(&["link", "set", "wan", "up"])?;
        for (ns, ifname, port, addr) in [
            (&t.nat, "nout", "in", "192.0.2.1/24"),
            (&t.c, "c0", "ic", "192.0.2.10/24"),
            (&t.b, "b0", "ib", "192.0.2.20/24"),
        ] {
            veth(ns, ifname, &t._inet, port)?;
            t._inet.ip(&["link", "set", port, "master", "wan"])?;
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        t.nat.sysctl("net.ipv4.ip_forward=1")?;
        let how = if random_ports {
            "masquerade random"
        } else {
            "masquerade"
        };
        let rules = format!(
            "table ip nat {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"nout\" {how}\n }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}.nft", t.nat.name()));
        std::fs::write(&path, rules)?;
        t.nat.exec(&["nft", "-f", &path.to_string_lossy()])?;
        let _ = std::fs::remove_file(&path);
        Ok(t)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RelayKind {
    Mediaproxy,
    Rtpengine,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    /// Kamailio's sample config, `WITH_NAT` and `WITH_RTPENGINE`.
    Sample,
    /// A plain proxy config with `replace-origin replace-session-connection`.
    Plain,
}

/// A relay of either kind, one-armed on `ip`, with its ng socket for Kamailio.
enum Running {
    Ours(Relay),
    Theirs(
        #[expect(dead_code, reason = "kills rtpengine on drop")] Guarded,
        std::path::PathBuf,
    ),
}

impl Running {
    fn start(kind: RelayKind, ns: &Netns, ip: &str) -> anyhow::Result<(Self, &'static str)> {
        match kind {
            RelayKind::Mediaproxy => Ok((
                Running::Ours(Relay::start(ns, &[ip], &[], false, XdpMode::Default)?),
                "udp:127.0.0.1:22222",
            )),
            RelayKind::Rtpengine => {
                let dir = std::env::temp_dir().join(format!("mp-rtpe-{}", ns.name()));
                std::fs::create_dir_all(&dir)?;
                let log = std::fs::File::create(dir.join("rtpengine.log"))?;
                let iface = format!("--interface={ip}");
                let pid = dir.join("rtpengine.pid").to_string_lossy().into_owned();
                let child = ns
                    .spawn(&[
                        "rtpengine",
                        "--table=-1",
                        &iface,
                        "--listen-ng=127.0.0.1:2223",
                        "--port-min=30000",
                        "--port-max=30999",
                        "--foreground",
                        "--log-stderr",
                        "--pidfile",
                        &pid,
                    ])?
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?;
                let guard = Guarded(child);
                let c = ns.enter(|| NgClient::new(addr("127.0.0.1:2223")))??;
                let mut ping = Dict::new();
                ping.push("command", Value::str("ping"));
                let deadline = Instant::now() + Duration::from_secs(20);
                while c.request(&ping).is_err() {
                    anyhow::ensure!(Instant::now() < deadline, "rtpengine did not come up");
                    std::thread::sleep(Duration::from_millis(100));
                }
                // The stock sample config's own socket.
                Ok((Running::Theirs(guard, dir), "udp:127.0.0.1:2223"))
            }
        }
    }

    fn log(&self) -> String {
        match self {
            Running::Ours(r) => r.log_text(),
            Running::Theirs(_, dir) => {
                std::fs::read_to_string(dir.join("rtpengine.log")).unwrap_or_default()
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Theirs(_, dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One call through both Kamailios and both relays; returns the two directions' reports.
#[expect(clippy::similar_names, reason = "caller and callee, as SIP names them")]
fn call(
    kind: RelayKind,
    config: Config,
    random_ports: bool,
    tag: &str,
) -> (StreamReport, StreamReport) {
    let t = Net::build(tag, random_ports).unwrap();
    let (r1, sock1) = Running::start(kind, &t.e, EDGE).unwrap();
    let (r2, sock2) = Running::start(kind, &t.c, CARRIER).unwrap();
    // The enterprise's proxy hands calls to numbers to the carrier's (the sample's PSTN
    // routing); the carrier's delivers them to its registered subscriber.
    let cfg = |sock: &str, gw: Option<&str>| match config {
        Config::Sample => kamailio::stock_config(sock, gw).unwrap(),
        Config::Plain => kamailio::plain_config(sock),
    };
    let k1 = Kamailio::start_at(&t.e, &cfg(sock1, Some(CARRIER)), addr("10.1.0.2:5060")).unwrap();
    let k2 = Kamailio::start_at(&t.c, &cfg(sock2, None), addr("192.0.2.10:5060")).unwrap();
    let logs = || {
        format!(
            "K1:\n{}\nK2:\n{}\nrelay 1:\n{}\nrelay 2:\n{}",
            k1.log(),
            k2.log(),
            r1.log(),
            r2.log()
        )
    };

    let ua_a = addr("10.1.0.3:5060");
    let ua_b = addr("192.0.2.20:5060");
    let sock_a = t.a.enter(move || UdpSocket::bind(ua_a)).unwrap().unwrap();
    let sock_b = t.b.enter(move || UdpSocket::bind(ua_b)).unwrap().unwrap();
    let (callee_uri, preloaded) = match config {
        // B registered at K2; A calls B's address of record there.
        Config::Sample => {
            sip::register(&sock_b, ua_b, addr("192.0.2.10:5060"), NUMBER)
                .unwrap_or_else(|e| panic!("REGISTER: {e}\n{}", logs()));
            (format!("sip:{NUMBER}@{EDGE}"), Vec::new())
        }
        // A's route set names both proxies.
        Config::Plain => (
            format!("sip:bob@{ua_b}"),
            vec![
                "<sip:10.1.0.2;lr>".to_owned(),
                "<sip:192.0.2.10;lr>".to_owned(),
            ],
        ),
    };
    let b_sdp = scenario::sdp(PHONE_B, 5000);
    let callee = std::thread::spawn(move || {
        let inv = sip::answer(&sock_b, ua_b, &b_sdp, Duration::from_secs(10));
        (inv, sock_b)
    });
    let mut caller = sip::Caller {
        sock: sock_a,
        local: ua_a,
        proxy: addr("10.1.0.2:5060"),
        call_id: format!("{tag}-call@10.1.0.3"),
        callee_uri: callee_uri.clone(),
        route: Vec::new(),
        to_header: format!("<{callee_uri}>"),
        preloaded,
    };
    let ok = caller
        .invite(&scenario::sdp(PHONE_A, 4000))
        .unwrap_or_else(|e| {
            let list = |ns: &Netns| {
                ns.enter(|| NgClient::new(addr("127.0.0.1:22222")))
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|c| scenario::ng(&c, "list", &[]).ok())
            };
            panic!(
                "INVITE: {e}\nrelay 1 calls: {:?}\nrelay 2 calls: {:?}\n{}",
                list(&t.e),
                list(&t.c),
                logs()
            )
        });
    let (invite, _sock_b) = callee.join().unwrap();
    let invite = invite.unwrap_or_else(|e| panic!("B got no INVITE: {e}\n{}", logs()));
    let remote_target = format!("sip:bob@{ua_b}");
    caller.ack(&remote_target).unwrap();
    let a_to = scenario::sdp_media(ok.body.as_bytes()).unwrap();
    let b_to = scenario::sdp_media(invite.body.as_bytes()).unwrap();

    // Both phones start at the 200 OK, as phones do.
    let mut pa = Phone::bind(&t.a, addr("10.1.0.3:4000")).unwrap();
    let mut pb = Phone::bind(&t.b, addr("192.0.2.20:5000")).unwrap();
    pa.start(a_to, a_to, 0xa, PACKETS);
    pb.start(b_to, b_to, 0xb, PACKETS);
    let deadline = Instant::now() + Duration::from_millis(u64::from(PACKETS) * 20 + 3000);
    while Instant::now() < deadline
        && (stream(&pa, &pb).distinct < u64::from(PACKETS) - 5
            || stream(&pb, &pa).distinct < u64::from(PACKETS) - 5
            || stream(&pa, &pb).sent < u64::from(PACKETS))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    pa.stop();
    pb.stop();
    let (ab, ba) = (stream(&pa, &pb), stream(&pb, &pa));
    let _ = caller.bye(&remote_target);
    if kind == RelayKind::Mediaproxy && (ab.distinct == 0 || ba.distinct == 0) {
        println!("{}", logs());
    }
    (ab, ba)
}

fn ms(s: &StreamReport) -> String {
    s.setup_delay().map_or_else(
        || "never".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

#[test]
fn two_relays_behind_a_nat_with_stock_kamailio_configs_carry_media_both_ways() {
    need_root();
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut n = 0;
    for config in [Config::Sample, Config::Plain] {
        for random_ports in [false, true] {
            for kind in [RelayKind::Mediaproxy, RelayKind::Rtpengine] {
                n += 1;
                let (ab, ba) = call(kind, config, random_ports, &format!("rs{n}"));
                let label = format!(
                    "{:<10} | {:<32} | {:<26}",
                    match kind {
                        RelayKind::Mediaproxy => "mediaproxy",
                        RelayKind::Rtpengine => "rtpengine",
                    },
                    match config {
                        Config::Sample => "Kamailio sample (WITH_NAT)",
                        Config::Plain => "plain rtpengine_offer/answer",
                    },
                    if random_ports {
                        "port-randomising NAT"
                    } else {
                        "port-keeping NAT"
                    },
                );
                rows.push(format!(
                    "first audio | {label} | A→B {:>9} ({}/{}) | B→A {:>9} ({}/{})",
                    ms(&ab),
                    ab.distinct,
                    ab.sent,
                    ms(&ba),
                    ba.distinct,
                    ba.sent
                ));
                for (dir, s) in [("A→B", &ab), ("B→A", &ba)] {
                    let min = u64::from(PACKETS) * 9 / 10;
                    if s.distinct < min {
                        failures.push(format!(
                            "{label}: {dir} delivered {} of {}",
                            s.distinct, s.sent
                        ));
                    }
                }
            }
        }
    }
    for r in &rows {
        println!("{r}");
    }
    assert!(
        failures.is_empty(),
        "media did not flow both ways:\n{}",
        failures.join("\n")
    );
}
