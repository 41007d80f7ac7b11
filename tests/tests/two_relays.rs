//! Two relays in series never deadlock: the field topology (phone A — MP1 — NAT — MP2 —
//! phone B) with the real daemon on both relays, XDP attached, both phones sending RTP from
//! the start. Also: hostile probes, a VPN-style leg, and a single relay whose probe times out.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    scenario::{self, OneRelay, Phone, Relay, SECRET, TwoRelays, query_figure, query_text, stream},
    testbed::{Netns, TapTunnel, link},
};
use mediaproxy_tests::need_root;
use proxy_common::{
    Endpoint,
    probe::{Kind, ProbeMessage},
};
use proxy_userspace::{
    ng::bencode::{Dict, Value},
    probe_auth::{ProbeAuth, unix_ms},
};

const PACKETS: u16 = 150; // 3 s at 20 ms

fn query(r: &Relay, ns: &Netns, call: &str) -> Dict {
    scenario::ng(
        &r.ng(ns).unwrap(),
        "query",
        &[("call-id", Value::str(call))],
    )
    .unwrap()
}

fn statistics(r: &Relay, ns: &Netns) -> Dict {
    let s = scenario::ng(&r.ng(ns).unwrap(), "statistics", &[]).unwrap();
    s.get("statistics")
        .and_then(Value::as_dict)
        .unwrap()
        .get("mediaproxy")
        .and_then(Value::as_dict)
        .unwrap()
        .clone()
}

fn figure(d: &Dict, path: &[&str]) -> i64 {
    let mut cur = d.clone();
    for (i, k) in path.iter().enumerate() {
        let v = cur
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in {cur:?}"))
            .clone();
        if i + 1 == path.len() {
            return v.as_int().unwrap();
        }
        cur = v.as_dict().unwrap().clone();
    }
    unreachable!()
}

fn talk(
    t: &TwoRelays,
    call: &scenario::TwoRelayCall,
    packets: u16,
) -> (scenario::StreamReport, scenario::StreamReport) {
    let mut pa = Phone::bind(&t.a, "10.0.1.2:4000".parse().unwrap()).unwrap();
    let mut pb = Phone::bind(&t.b, "10.0.2.2:5000".parse().unwrap()).unwrap();
    pa.start(call.a_sends_to, call.a_sends_to, 0xa, packets);
    pb.start(call.b_sends_to, call.b_sends_to, 0xb, packets);
    std::thread::sleep(Duration::from_millis(u64::from(packets) * 20 + 400));
    pa.stop();
    pb.stop();
    (stream(&pa, &pb), stream(&pb, &pa))
}

#[test]
fn without_probing_two_relays_deadlock() {
    need_root();
    let t = TwoRelays::build("dl", XdpMode::Driver).unwrap();
    // Holding toward a silent side, and no probes: the deadlock of two latching relays.
    let (r1, r2) = t
        .relays(
            false,
            XdpMode::Driver,
            &["--far-side", "confirmed", "--no-probing"],
        )
        .unwrap();
    let call = scenario::two_relay_call(&t, &r1, &r2, "deadlock", true).unwrap();
    let (ab, ba) = talk(&t, &call, PACKETS);
    assert_eq!(
        (ab.received, ba.received),
        (0, 0),
        "media flowed: the test does not reproduce the field problem"
    );
    assert!(ab.sent >= u64::from(PACKETS) - 1 && ba.sent >= u64::from(PACKETS) - 1);
    let q1 = query(&r1, &t.mp1, "deadlock");
    let q2 = query(&r2, &t.mp2, "deadlock");
    let s1 = query_figure(&q1, "tag-a", "blocking suspected ms");
    let s2 = query_figure(&q2, "tag-b", "blocking suspected ms");
    println!(
        "deadlock: MP1 suspected blocking after {s1} ms, MP2 after {s2} ms; no media in {} s",
        PACKETS / 50
    );
    assert!(
        (200..400).contains(&s1) && (200..400).contains(&s2),
        "both relays report blocking: {s1} ms, {s2} ms"
    );
    assert_eq!(query_text(&q1, "tag-a", "state").as_deref(), Some("HOLD"));
}

#[test]
fn with_probing_two_relays_unblock_and_xdp_forwards() {
    need_root();
    let t = TwoRelays::build("ub", XdpMode::Driver).unwrap();
    // Holding toward a silent side: the probe/ACK exchange alone unblocks.
    let (r1, r2) = t
        .relays(true, XdpMode::Driver, &["--far-side", "confirmed"])
        .unwrap();
    let call = scenario::two_relay_call(&t, &r1, &r2, "unblock", true).unwrap();
    let (ab, ba) = talk(&t, &call, PACKETS);
    let (d_ab, d_ba) = (
        ab.setup_delay().expect("A→B never flowed"),
        ba.setup_delay().expect("B→A never flowed"),
    );
    let q1 = query(&r1, &t.mp1, "unblock");
    let q2 = query(&r2, &t.mp2, "unblock");
    let punted1 = query_figure(&q1, "tag-a", "packets punted");
    let punted2 = query_figure(&q2, "tag-b", "packets punted");
    println!(
        "unblock (--far-side confirmed): A→B first packet after {} ms, B→A after {} ms; lost {} / {}; punted before the flip MP1 {punted1}, MP2 {punted2}",
        d_ab.as_millis(),
        d_ba.as_millis(),
        ab.lost(),
        ba.lost()
    );
    // The first packet probes at once: a few round trips (sub-millisecond on veth; the
    // margin is for a loaded CI machine), no timer.
    for d in [d_ab, d_ba] {
        assert!(d <= Duration::from_millis(150), "unblocked after {d:?}");
    }
    assert_eq!(
        query_text(&q1, "tag-b", "probe").as_deref(),
        Some("acked"),
        "MP1's probe toward MP2"
    );
    assert!(
        ab.lost() <= 2 && ba.lost() <= 2,
        "lost {} and {}",
        ab.lost(),
        ba.lost()
    );
    assert_eq!((ab.wrong_source, ba.wrong_source), (0, 0));
    // The kernel forwards, not userspace: every relay flow is in FORWARD, and all but the
    // packets before the flip went through XDP.
    for (q, tags) in [(&q1, ["tag-a", "tag-b"]), (&q2, ["tag-a", "tag-b"])] {
        for tag in tags {
            assert_eq!(
                query_text(q, tag, "state").as_deref(),
                Some("FORWARD"),
                "{tag}"
            );
            let xdp = query_figure(q, tag, "packets xdp");
            let punted = query_figure(q, tag, "packets punted");
            assert!(
                xdp + punted >= u64::from(PACKETS) - 2,
                "{tag}: xdp {xdp} + punted {punted}"
            );
            assert!(
                punted <= 20,
                "{tag}: {punted} packets went through userspace"
            );
        }
    }
}

/// Sends one UDP datagram from `from` in `ns`.
fn send_from(ns: &Netns, from: &str, to: SocketAddr, payload: Vec<u8>, times: usize) {
    let from: SocketAddr = from.parse().unwrap();
    ns.enter(move || {
        let s = UdpSocket::bind(from).unwrap();
        for _ in 0..times {
            s.send_to(&payload, to).unwrap();
        }
    })
    .unwrap();
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, read top to bottom as its steps happen"
)]
fn hostile_probes_change_nothing_and_the_call_still_unblocks() {
    need_root();
    let t = TwoRelays::build("ho", XdpMode::Driver).unwrap();
    let (r1, r2) = t
        .relays(true, XdpMode::Driver, &["--far-side", "confirmed"])
        .unwrap();
    let call = scenario::two_relay_call(&t, &r1, &r2, "hostile", true).unwrap();
    let q_before = query(&r2, &t.mp2, "hostile");
    // MP2's media endpoint facing MP1 (the target a real probe names).
    let target: SocketAddr = {
        let tags = q_before.get("tags").and_then(Value::as_dict).unwrap();
        let s = tags
            .get("tag-a")
            .and_then(Value::as_dict)
            .unwrap()
            .get("medias")
            .and_then(Value::as_list)
            .unwrap()[0]
            .as_dict()
            .unwrap()
            .get("streams")
            .and_then(Value::as_list)
            .unwrap()[0]
            .as_dict()
            .unwrap()
            .clone();
        SocketAddr::new(
            s.get_str("local address").unwrap().parse().unwrap(),
            u16::try_from(s.get("local port").unwrap().as_int().unwrap()).unwrap(),
        )
    };
    let probe_addr: SocketAddr = "192.0.2.10:7999".parse().unwrap();
    let probe = |nonce: u64, target: SocketAddr| ProbeMessage {
        kind: Kind::Probe,
        nonce,
        timestamp_ms: unix_ms(),
        session: 0,
        target: Endpoint::from(target),
        // Not MP1's media endpoint (an odd port is never an RTP one): an attacker does not
        // know the call's signalled endpoints.
        sender: Endpoint::from("10.1.0.2:30001".parse::<SocketAddr>().unwrap()),
        receiver: Endpoint::from(probe_addr),
        unsigned: false,
    };
    let attacker = ProbeAuth::new(b"not the deployment secret!");
    let insider = ProbeAuth::new(SECRET.as_bytes());
    // An attacker on the outside (the NAT's public side) without the secret.
    send_from(
        &t.nat,
        "192.0.2.1:40000",
        probe_addr,
        attacker.sign(&probe(1, target)).to_vec(),
        1,
    );
    // A forged ACK for a nonce nobody sent, and garbage on the probe port.
    send_from(
        &t.nat,
        "192.0.2.1:40001",
        probe_addr,
        attacker
            .sign(&probe(2, target).ack(unix_ms(), Endpoint::from(probe_addr)))
            .to_vec(),
        1,
    );
    send_from(
        &t.nat,
        "192.0.2.1:40002",
        probe_addr,
        b"MPRB garbage".to_vec(),
        1,
    );
    // A valid probe for a session MP2 does not have.
    send_from(
        &t.nat,
        "192.0.2.1:40003",
        probe_addr,
        insider
            .sign(&probe(3, "192.0.2.10:9".parse().unwrap()))
            .to_vec(),
        1,
    );
    // A valid probe, then its replay, from an address that is not MP1's: acked, but it
    // neither unblocks nor latches anything.
    let valid = insider.sign(&probe(4, target)).to_vec();
    send_from(&t.nat, "192.0.2.1:40004", probe_addr, valid.clone(), 1);
    send_from(&t.nat, "192.0.2.1:40004", probe_addr, valid, 1);
    // A flood.
    send_from(
        &t.nat,
        "192.0.2.1:40005",
        probe_addr,
        attacker.sign(&probe(5, target)).to_vec(),
        20_000,
    );
    std::thread::sleep(Duration::from_millis(500));

    let st = statistics(&r2, &t.mp2);
    let bad_mac = figure(&st, &["probes", "rejected", "bad MAC"]);
    let replayed = figure(&st, &["probes", "rejected", "replayed"]);
    let malformed = figure(&st, &["probes", "rejected", "malformed"]);
    let unknown = figure(&st, &["probes", "unknown session"]);
    let unmatched = figure(&st, &["probes", "acks unmatched"]);
    println!(
        "hostile: bad MAC {bad_mac}, replayed {replayed}, malformed {malformed}, unknown session {unknown}, unmatched ACKs {unmatched}"
    );
    // The flood may overflow the socket or the AF_XDP ring; what arrives is counted.
    assert!((2..=20_002).contains(&bad_mac), "bad MAC {bad_mac}");
    assert_eq!((replayed, malformed, unknown), (1, 1, 1));
    let q_after = query(&r2, &t.mp2, "hostile");
    for key in ["state", "latched", "unblocked by", "forwarding to"] {
        assert_eq!(
            query_text(&q_after, "tag-a", key),
            query_text(&q_before, "tag-a", key),
            "{key} changed"
        );
    }

    let (ab, ba) = talk(&t, &call, 100);
    assert!(
        ab.distinct >= 98 && ba.distinct >= 98,
        "the legitimate call did not unblock: {} / {}",
        ab.distinct,
        ba.distinct
    );
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: its topology, call set-up, media and checks"
)]
fn a_vpn_leg_unblocks_the_same_way() {
    need_root();
    // A — MP1 ~(TAP "VPN" 10.9.0.0/24)~ MP2 — B; no NAT, but the same deadlock.
    let mode = XdpMode::Skb;
    let a = Netns::new("vpa").unwrap();
    let mp1 = Netns::new("vpm1").unwrap();
    let mp2 = Netns::new("vpm2").unwrap();
    let b = Netns::new("vpb").unwrap();
    link(&a, "a0", &["10.0.1.2/24"], &mp1, "m1a", &["10.0.1.1/24"]).unwrap();
    link(&mp2, "m2b", &["10.0.2.1/24"], &b, "b0", &["10.0.2.2/24"]).unwrap();
    let _vpn = TapTunnel::new(&mp1, "10.9.0.1/24", &mp2, "10.9.0.2/24", "vpn0").unwrap();
    let r1 = Relay::start(
        &mp1,
        &["internal/10.0.1.1", "external/10.9.0.1"],
        &["--far-side", "confirmed"],
        true,
        mode,
    )
    .unwrap();
    let r2 = Relay::start(
        &mp2,
        &["internal/10.0.2.1", "external/10.9.0.2"],
        &["--far-side", "confirmed"],
        true,
        mode,
    )
    .unwrap();
    let c1 = r1.ng(&mp1).unwrap();
    let c2 = r2.ng(&mp2).unwrap();
    let dir = |x: &str, y: &str| Value::List(vec![Value::str(x), Value::str(y)]);
    let id = Value::str("vpn");
    let o1 = scenario::ng(
        &c1,
        "offer",
        &[
            ("call-id", id.clone()),
            ("from-tag", Value::str("tag-a")),
            ("sdp", Value::str(&scenario::sdp("10.0.1.2", 4000))),
            ("direction", dir("internal", "external")),
        ],
    )
    .unwrap();
    let o2 = scenario::ng(
        &c2,
        "offer",
        &[
            ("call-id", id.clone()),
            ("from-tag", Value::str("tag-a")),
            ("sdp", Value::Bytes(scenario::sdp_of(&o1).unwrap())),
            ("direction", dir("external", "internal")),
            ("next-relay", Value::str("10.9.0.1")),
        ],
    )
    .unwrap();
    let a2 = scenario::ng(
        &c2,
        "answer",
        &[
            ("call-id", id.clone()),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(&scenario::sdp("10.0.2.2", 5000))),
        ],
    )
    .unwrap();
    let a1 = scenario::ng(
        &c1,
        "answer",
        &[
            ("call-id", id.clone()),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::Bytes(scenario::sdp_of(&a2).unwrap())),
            ("next-relay", Value::str("10.9.0.2")),
        ],
    )
    .unwrap();
    let to1 = scenario::sdp_media(&scenario::sdp_of(&a1).unwrap()).unwrap();
    let to2 = scenario::sdp_media(&scenario::sdp_of(&o2).unwrap()).unwrap();
    let mut pa = Phone::bind(&a, "10.0.1.2:4000".parse().unwrap()).unwrap();
    let mut pb = Phone::bind(&b, "10.0.2.2:5000".parse().unwrap()).unwrap();
    pa.start(to1, to1, 1, 100);
    pb.start(to2, to2, 2, 100);
    std::thread::sleep(Duration::from_millis(2400));
    pa.stop();
    pb.stop();
    let (ab, ba) = (stream(&pa, &pb), stream(&pb, &pa));
    let (d1, d2) = (
        ab.setup_delay().expect("A→B never flowed"),
        ba.setup_delay().expect("B→A never flowed"),
    );
    println!(
        "vpn leg: unblocked after {} ms / {} ms, lost {} / {}",
        d1.as_millis(),
        d2.as_millis(),
        ab.lost(),
        ba.lost()
    );
    assert!(d1 <= Duration::from_millis(400) && d2 <= Duration::from_millis(400));
    assert!(ab.lost() <= 2 && ba.lost() <= 2);
    // Both relays hold toward each other and both probe; whichever probe lands first is
    // ACKed and confirms the leg for both, so the other relay's may never complete. One of
    // the two exchanges did the unblocking.
    let q1 = query(&r1, &mp1, "vpn");
    let q2 = query(&r2, &mp2, "vpn");
    let probes = (
        query_text(&q1, "tag-b", "probe"),
        query_text(&q2, "tag-a", "probe"),
    );
    assert!(
        probes.0.as_deref() == Some("acked") || probes.1.as_deref() == Some("acked"),
        "neither MP1's probe toward MP2 nor MP2's toward MP1 was ACKed: {probes:?}"
    );
}

#[test]
fn with_one_relay_the_probe_times_out_and_the_call_works_once_the_far_end_sends() {
    need_root();
    let t = OneRelay::build("pt", XdpMode::Driver).unwrap();
    let relay = Relay::start(
        &t.relay,
        &["internal/10.0.1.1", "external/10.0.2.1"],
        &[
            "--probe-attempts",
            "3",
            "--probe-rto-ms",
            "50",
            "--far-side",
            "confirmed",
        ],
        true,
        XdpMode::Driver,
    )
    .unwrap();
    let c = relay.ng(&t.relay).unwrap();
    let dir = Value::List(vec![Value::str("internal"), Value::str("external")]);
    let o = scenario::ng(
        &c,
        "offer",
        &[
            ("call-id", Value::str("solo")),
            ("from-tag", Value::str("a")),
            ("sdp", Value::str(&scenario::sdp("10.0.1.2", 4000))),
            ("direction", dir),
        ],
    )
    .unwrap();
    // The call server believes a relay is at B's address; there is only a phone.
    let an = scenario::ng(
        &c,
        "answer",
        &[
            ("call-id", Value::str("solo")),
            ("from-tag", Value::str("a")),
            ("to-tag", Value::str("b")),
            ("sdp", Value::str(&scenario::sdp("10.0.2.2", 5000))),
            ("next-relay", Value::str("10.0.2.2")),
        ],
    )
    .unwrap();
    let a_to = scenario::sdp_media(&scenario::sdp_of(&an).unwrap()).unwrap();
    let b_to = scenario::sdp_media(&scenario::sdp_of(&o).unwrap()).unwrap();
    let mut pa = Phone::bind(&t.a, "10.0.1.2:4000".parse().unwrap()).unwrap();
    let mut pb = Phone::bind(&t.b, "10.0.2.2:5000".parse().unwrap()).unwrap();
    let t0 = Instant::now();
    pa.start(a_to, a_to, 1, 100);
    std::thread::sleep(Duration::from_secs(1));
    let q = query(&relay, &t.relay, "solo");
    assert_eq!(
        query_text(&q, "b", "probe").as_deref(),
        Some("failed"),
        "probing gave up: {q:?}"
    );
    assert!(query_figure(&q, "a", "blocking suspected ms") >= 200);
    assert_eq!(
        pb.received().received,
        0,
        "nothing reaches B before B speaks"
    );
    pb.start(b_to, b_to, 2, 50);
    std::thread::sleep(Duration::from_millis(1200));
    pa.stop();
    pb.stop();
    let ab = stream(&pa, &pb);
    let ba = stream(&pb, &pa);
    let first = ab.first_received.expect("A→B never flowed") - t0;
    println!(
        "one relay: probe failed, A→B flowed {} ms after A's first packet (B started at 1000 ms)",
        first.as_millis()
    );
    assert!(first >= Duration::from_secs(1) && first <= Duration::from_millis(1300));
    assert!(ba.lost() <= 1, "B→A lost {}", ba.lost());
}

/// The defaults and no flags from the call servers (each knows only its own relay): media
/// flows both ways at once, MP1 sending to MP2's signalled address from A's first packet and
/// MP2 learning MP1 through the NAT, vouched for by MP1's unsigned probe (no shared secret).
#[test]
fn with_default_options_two_relays_flow_at_once_without_flags() {
    need_root();
    let t = TwoRelays::build("df", XdpMode::Driver).unwrap();
    let (r1, r2) = t.relays(false, XdpMode::Driver, &[]).unwrap();
    let call = scenario::two_relay_call(&t, &r1, &r2, "default", false).unwrap();
    let (ab, ba) = talk(&t, &call, PACKETS);
    let q1 = query(&r1, &t.mp1, "default");
    let q2 = query(&r2, &t.mp2, "default");
    println!(
        "default, no flags: A→B first packet after {:?}, B→A after {:?}; delivered {}/{} and {}/{}; MP1 sees MP2 as {:?}, MP2 sees MP1 as {:?}",
        ab.setup_delay(),
        ba.setup_delay(),
        ab.distinct,
        ab.sent,
        ba.distinct,
        ba.sent,
        query_text(&q1, "tag-b", "far end"),
        query_text(&q2, "tag-a", "far end"),
    );
    if ab
        .setup_delay()
        .is_none_or(|d| d > Duration::from_millis(100))
    {
        println!("MP1:\n{}\nMP2:\n{}", r1.log_text(), r2.log_text());
    }
    let (d_ab, d_ba) = (
        ab.setup_delay().expect("A→B never flowed"),
        ba.setup_delay().expect("B→A never flowed"),
    );
    for d in [d_ab, d_ba] {
        assert!(d <= Duration::from_millis(150), "first audio after {d:?}");
    }
    assert!(ab.distinct + 2 >= ab.sent && ba.distinct + 2 >= ba.sent);
    assert_eq!(
        query_text(&q1, "tag-b", "far end").as_deref(),
        Some("relay")
    );
    assert_eq!(
        query_text(&q2, "tag-a", "far end").as_deref(),
        Some("relay")
    );
    for (q, tag) in [
        (&q1, "tag-a"),
        (&q1, "tag-b"),
        (&q2, "tag-a"),
        (&q2, "tag-b"),
    ] {
        assert_eq!(
            query_text(q, tag, "state").as_deref(),
            Some("FORWARD"),
            "{tag}"
        );
    }
}
