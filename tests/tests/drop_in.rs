//! mediaproxy as a drop-in for rtpengine, with the daemon's defaults and no flags a stock
//! call-server config would not send:
//! - a one-way stream (only A sends: music on hold, an announcement) reaches B, forwarded in
//!   XDP once the relay decided;
//! - early media: B sends before A has sent anything, and A hears it;
//! - a probe toward a plain endpoint costs it at most two packets on the probe port, and
//!   nothing is retried forever;
//! - relays whose probe secrets differ, or that have none, still carry the call;
//! - requests shaped exactly as OpenSIPS's rtpengine module sends them.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    scenario::{
        self, OneRelay, Phone, Relay, StreamReport, TwoRelays, query_figure, query_text, stream,
    },
    testbed::Netns,
};
use mediaproxy_tests::need_root;
use proxy_userspace::ng::bencode::{self, Dict, Value};

const DIRECTION: Option<(&str, &str)> = Some(("internal", "external"));

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

/// phone A — relay — phone B, with GRO on the phones' ends so that the kernel path is native
/// XDP (a bare veth would get the TC path; see the delivery tests).
fn one_relay(tag: &str, extra: &[&str]) -> (OneRelay, Relay) {
    let t = OneRelay::build_plain(tag).unwrap();
    for (ns, ifname) in [(&t.a, "a0"), (&t.b, "b0")] {
        ns.exec(&["ethtool", "-K", ifname, "gro", "on"]).unwrap();
    }
    let relay = Relay::start(
        &t.relay,
        &["internal/10.0.1.1", "external/10.0.2.1"],
        extra,
        false,
        XdpMode::Default,
    )
    .unwrap();
    (t, relay)
}

fn query(r: &Relay, ns: &Netns, call: &str) -> Dict {
    scenario::ng(
        &r.ng(ns).unwrap(),
        "query",
        &[("call-id", Value::str(call))],
    )
    .unwrap()
}

/// Polls `cond` until it holds or `within` is over.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Only A sends, 10 s of it; B never says a word. rtpengine relays such a stream; a relay
/// that waits for both sides to speak never does.
#[test]
fn a_one_way_stream_reaches_the_silent_side_forwarded_in_xdp() {
    need_root();
    let (t, relay) = one_relay("ow", &[]);
    let (a, b) = (addr("10.0.1.2:4000"), addr("10.0.2.2:5000"));
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), "oneway", a, b, DIRECTION).unwrap();
    let mut pa = Phone::bind(&t.a, a).unwrap();
    let pb = Phone::bind(&t.b, b).unwrap();
    let mut pb = pb;
    pa.start(a_to, a_to, 0xa, 500);
    // B listens only: a receive-only party.
    pb.start(b_to, b_to, 0xb, 0);
    wait_until(Duration::from_secs(15), || {
        let s = stream(&pa, &pb);
        s.sent == 500 && s.distinct == 500
    });
    pa.stop();
    pb.stop();
    let ab = stream(&pa, &pb);
    let q = query(&relay, &t.relay, "oneway");
    let (xdp, user) = (
        query_figure(&q, "tag-a", "packets xdp"),
        query_figure(&q, "tag-a", "sent by userspace"),
    );
    println!(
        "one-way: B received {}/{} (first after {:?}); XDP forwarded {xdp}, userspace sent {user}; far end B: {:?}",
        ab.distinct,
        ab.sent,
        ab.setup_delay(),
        query_text(&q, "tag-b", "far end"),
    );
    assert_eq!((ab.sent, ab.distinct), (500, 500), "every packet reached B");
    assert!(
        xdp >= 499 && user <= 1,
        "the kernel forwarded {xdp}, userspace sent {user}: only the first packet (the decision) goes through userspace"
    );
    assert_eq!(query_text(&q, "tag-a", "state").as_deref(), Some("FORWARD"));
}

/// The callee's ringback or announcement (a 183 with SDP) before the caller has sent
/// anything: the caller hears it.
#[test]
fn early_media_from_the_callee_reaches_the_caller_before_it_speaks() {
    need_root();
    let (t, relay) = one_relay("em", &[]);
    let (a, b) = (addr("10.0.1.2:4000"), addr("10.0.2.2:5000"));
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), "early", a, b, DIRECTION).unwrap();
    let mut pa = Phone::bind(&t.a, a).unwrap();
    let mut pb = Phone::bind(&t.b, b).unwrap();
    // A listens only, for now.
    pa.start(a_to, a_to, 0xa, 0);
    pb.start(b_to, b_to, 0xb, 100);
    let heard = wait_until(Duration::from_secs(5), || stream(&pb, &pa).distinct >= 50);
    let early = stream(&pb, &pa);
    pa.stop();
    pb.stop();
    println!(
        "early media: A heard {}/{} of B's packets before sending anything (first after {:?})",
        early.distinct,
        early.sent,
        early.setup_delay()
    );
    assert!(heard, "A heard nothing of B's early media: {early:?}");
    assert!(early.distinct + 1 >= early.sent.min(100));
}

/// The relay probes a silent far side's signalled address at the probe port; a phone there
/// answers nothing. It costs the phone at most two packets, the call's media still flows, and
/// the probing ends.
#[test]
fn a_probe_toward_a_plain_endpoint_costs_it_two_packets_at_most() {
    need_root();
    let (t, relay) = one_relay("pe", &[]);
    let (a, b) = (addr("10.0.1.2:4000"), addr("10.0.2.2:5000"));
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), "plain", a, b, DIRECTION).unwrap();
    // What lands on B's probe port.
    let probe_port =
        t.b.enter(|| UdpSocket::bind("10.0.2.2:7999"))
            .unwrap()
            .unwrap();
    probe_port.set_nonblocking(true).unwrap();
    let mut pa = Phone::bind(&t.a, a).unwrap();
    let mut pb = Phone::bind(&t.b, b).unwrap();
    pa.start(a_to, a_to, 0xa, 150);
    pb.start(b_to, b_to, 0xb, 0);
    // Long past every retransmission timeout of the two attempts (100 ms, then 200 ms).
    wait_until(Duration::from_secs(5), || stream(&pa, &pb).sent == 150);
    std::thread::sleep(Duration::from_millis(500));
    let ab = stream(&pa, &pb);
    let mut buf = [0u8; 256];
    let mut probes = 0;
    while probe_port.recv_from(&mut buf).is_ok() {
        probes += 1;
    }
    pa.stop();
    pb.stop();
    let q = query(&relay, &t.relay, "plain");
    println!(
        "plain endpoint: {probes} probe packets reached B's probe port; B received {}/{}; probe toward B: {:?}; far end: {:?}",
        ab.distinct,
        ab.sent,
        query_text(&q, "tag-b", "probe"),
        query_text(&q, "tag-b", "far end"),
    );
    assert!(probes <= 2, "{probes} probe packets reached the phone");
    assert!(ab.distinct + 1 >= ab.sent && ab.sent == 150, "{ab:?}");
    assert_eq!(query_text(&q, "tag-b", "probe").as_deref(), Some("failed"));
    assert_eq!(
        query_text(&q, "tag-b", "far end").as_deref(),
        Some("endpoint")
    );
}

fn write_secret(tag: &str, secret: &str) -> String {
    let p = std::env::temp_dir().join(format!("mp-secret-{tag}-{}", std::process::id()));
    std::fs::write(&p, secret).unwrap();
    p.to_string_lossy().into_owned()
}

fn two_relay_talk(t: &TwoRelays, call: &scenario::TwoRelayCall) -> (StreamReport, StreamReport) {
    let mut pa = Phone::bind(&t.a, addr("10.0.1.2:4000")).unwrap();
    let mut pb = Phone::bind(&t.b, addr("10.0.2.2:5000")).unwrap();
    pa.start(call.a_sends_to, call.a_sends_to, 0xa, 100);
    pb.start(call.b_sends_to, call.b_sends_to, 0xb, 100);
    wait_until(Duration::from_secs(6), || {
        stream(&pa, &pb).sent == 100 && stream(&pb, &pa).sent == 100
    });
    std::thread::sleep(Duration::from_millis(200));
    pa.stop();
    pb.stop();
    (stream(&pa, &pb), stream(&pb, &pa))
}

/// Two relays of different operators: their probe secrets differ. With the defaults the call
/// flows at once; holding toward a silent side (`--far-side confirmed`) it unblocks too,
/// through the unsigned retry that a relay with another secret answers.
#[test]
fn relays_whose_probe_secrets_differ_still_carry_the_call() {
    need_root();
    for (tag, extra, named) in [
        ("sd", &[][..], false),
        ("sc", &["--far-side", "confirmed"][..], true),
    ] {
        let t = TwoRelays::build(tag, XdpMode::Driver).unwrap();
        let s1 = write_secret(&format!("{tag}1"), "enterprise-secret-0123456789abcdef");
        let s2 = write_secret(&format!("{tag}2"), "carrier-secret-fedcba9876543210");
        let mut x1 = vec!["--probe-secret-file", &s1];
        x1.extend_from_slice(extra);
        let mut x2 = vec!["--probe-secret-file", &s2];
        x2.extend_from_slice(extra);
        let r1 = Relay::start(
            &t.mp1,
            &["internal/10.0.1.1", "external/10.1.0.2"],
            &x1,
            false,
            XdpMode::Driver,
        )
        .unwrap();
        let r2 = Relay::start(
            &t.mp2,
            &["internal/10.0.2.1", "external/192.0.2.10"],
            &x2,
            false,
            XdpMode::Driver,
        )
        .unwrap();
        let call = scenario::two_relay_call(&t, &r1, &r2, "secrets", named).unwrap();
        let (ab, ba) = two_relay_talk(&t, &call);
        println!(
            "different secrets ({}): A→B first after {:?}, {}/{}; B→A first after {:?}, {}/{}",
            if named {
                "--far-side confirmed, next relays named"
            } else {
                "defaults, no flags"
            },
            ab.setup_delay(),
            ab.distinct,
            ab.sent,
            ba.setup_delay(),
            ba.distinct,
            ba.sent
        );
        for (dir, s) in [("A→B", &ab), ("B→A", &ba)] {
            assert!(
                s.setup_delay()
                    .is_some_and(|d| d < Duration::from_millis(500)),
                "{dir} ({tag}) never flowed or late: {s:?}\nMP1:\n{}\nMP2:\n{}",
                r1.log_text(),
                r2.log_text()
            );
            assert!(s.distinct + 3 >= s.sent, "{dir} ({tag}): {s:?}");
        }
        for f in [s1, s2] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Sends `dict` exactly as OpenSIPS's rtpengine module frames it (cookie
/// `<pid>_<rand>_<seq>` and one space, then the bencode dictionary with the keys in its
/// order) and returns the reply's dictionary, checking the cookie comes back.
fn opensips(sock: &UdpSocket, to: SocketAddr, seq: u32, body: &[u8]) -> Dict {
    let cookie = format!("4711_{}_{seq}", 100 + seq);
    let mut msg = format!("{cookie} ").into_bytes();
    msg.extend_from_slice(body);
    sock.send_to(&msg, to).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = sock.recv_from(&mut buf).expect("a reply");
    let reply = &buf[..n];
    let rest = reply
        .strip_prefix(format!("{cookie} ").as_bytes())
        .unwrap_or_else(|| {
            panic!(
                "reply without the cookie: {}",
                String::from_utf8_lossy(reply)
            )
        });
    bencode::decode_dict_prefix(rest).unwrap()
}

/// An OpenSIPS request body: a dictionary with these keys in this order.
fn dict_bytes(pairs: &[(&str, Value)]) -> Vec<u8> {
    let mut d = Dict::new();
    for (k, v) in pairs {
        d.push(k, v.clone());
    }
    let mut out = Vec::new();
    d.encode_into(&mut out);
    out
}

/// OpenSIPS's rtpengine module (modules/rtpengine/rtpengine.c): `sdp` first, then the flags'
/// own keys, `replace`, `call-id`, `received-from` (always), the tags, `command` last; no
/// `supports`, no `via-branch` by default; `delete` with no tags; `ping` alone.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, read top to bottom as its steps happen"
)]
fn requests_shaped_as_opensips_sends_them_carry_a_call() {
    need_root();
    let (t, relay) = one_relay("os", &[]);
    let ng = relay.ng;
    let sock = t
        .relay
        .enter(|| UdpSocket::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let s = Value::str;
    let list = |v: &[&str]| Value::List(v.iter().map(|x| Value::str(x)).collect());

    // The module's ping, at start-up and for disabled nodes: `d7:command4:pinge`.
    let pong = opensips(&sock, ng, 0, b"d7:command4:pinge");
    assert_eq!(pong.get_str("result"), Some("pong"));

    let offer_sdp = scenario::sdp("10.0.1.2", 4000);
    let offer = opensips(
        &sock,
        ng,
        1,
        &dict_bytes(&[
            ("sdp", s(&offer_sdp)),
            ("direction", list(&["internal", "external"])),
            ("replace", list(&["origin", "session-connection"])),
            ("call-id", s("abc@host")),
            ("received-from", list(&["IP4", "10.0.1.2"])),
            ("from-tag", s("ft1")),
            ("command", s("offer")),
        ]),
    );
    assert_eq!(offer.get_str("result"), Some("ok"), "{offer:?}");
    let b_to = scenario::sdp_media(&scenario::sdp_of(&offer).unwrap()).unwrap();
    let answer = opensips(
        &sock,
        ng,
        2,
        &dict_bytes(&[
            ("sdp", s(&scenario::sdp("10.0.2.2", 5000))),
            ("replace", list(&["origin", "session-connection"])),
            ("call-id", s("abc@host")),
            ("received-from", list(&["IP4", "10.0.2.2"])),
            ("from-tag", s("ft1")),
            ("to-tag", s("tt1")),
            ("command", s("answer")),
        ]),
    );
    assert_eq!(answer.get_str("result"), Some("ok"), "{answer:?}");
    let a_to = scenario::sdp_media(&scenario::sdp_of(&answer).unwrap()).unwrap();

    let mut pa = Phone::bind(&t.a, addr("10.0.1.2:4000")).unwrap();
    let mut pb = Phone::bind(&t.b, addr("10.0.2.2:5000")).unwrap();
    pa.start(a_to, a_to, 0xa, 100);
    pb.start(b_to, b_to, 0xb, 100);
    wait_until(Duration::from_secs(6), || {
        stream(&pa, &pb).distinct == 100 && stream(&pb, &pa).distinct == 100
    });
    pa.stop();
    pb.stop();
    let (ab, ba) = (stream(&pa, &pb), stream(&pb, &pa));
    println!(
        "OpenSIPS-shaped call: A→B {}/{} B→A {}/{}",
        ab.distinct, ab.sent, ba.distinct, ba.sent
    );
    assert!(ab.distinct == 100 && ba.distinct == 100, "{ab:?} {ba:?}");

    // `$rtpstat`: a query with both tags.
    let q = opensips(
        &sock,
        ng,
        3,
        &dict_bytes(&[
            ("call-id", s("abc@host")),
            ("received-from", list(&["IP4", "10.0.1.2"])),
            ("from-tag", s("ft1")),
            ("to-tag", s("tt1")),
            ("command", s("query")),
        ]),
    );
    assert_eq!(q.get_str("result"), Some("ok"), "{q:?}");
    // An error the module reads as `error-reason` and does not fail over on.
    let bad = opensips(
        &sock,
        ng,
        4,
        &dict_bytes(&[
            ("sdp", s(&scenario::sdp("10.0.2.2", 5000))),
            ("call-id", s("no-such-call")),
            ("received-from", list(&["IP4", "10.0.2.2"])),
            ("from-tag", s("x")),
            ("to-tag", s("y")),
            ("command", s("answer")),
        ]),
    );
    assert_eq!(bad.get_str("result"), Some("error"));
    assert_eq!(bad.get_str("error-reason"), Some("Unknown call-id"));
    // `rtpengine_delete()` on the BYE: no tags at all.
    let del = opensips(
        &sock,
        ng,
        5,
        &dict_bytes(&[
            ("call-id", s("abc@host")),
            ("received-from", list(&["IP4", "10.0.1.2"])),
            ("command", s("delete")),
        ]),
    );
    assert_eq!(del.get_str("result"), Some("ok"), "{del:?}");
    // The same bytes again (the module retransmits with the same cookie): the same reply,
    // from the cache, not a second delete.
    let again = opensips(
        &sock,
        ng,
        5,
        &dict_bytes(&[
            ("call-id", s("abc@host")),
            ("received-from", list(&["IP4", "10.0.1.2"])),
            ("command", s("delete")),
        ]),
    );
    assert_eq!(again, del);
}
