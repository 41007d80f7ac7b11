use super::*;
use crate::{
    ng::bencode::Value,
    session::{EngineConfig, Output},
};

/// The calls and the session engine side by side, as the daemon holds them.
struct Relay {
    calls: Calls,
    engine: Engine,
}

impl Relay {
    fn new(cfg: CallsConfig, engine: EngineConfig, seed: u64) -> Self {
        Self {
            calls: Calls::new(cfg, seed),
            engine: Engine::new(engine, seed),
        }
    }

    fn handle(&mut self, d: &Dict, now: Instant, wall: SystemTime, k: KernelView<'_>) -> Dict {
        self.calls.handle(&mut self.engine, d, now, wall, k)
    }

    fn housekeeping(&mut self, now: Instant, k: KernelView<'_>) {
        self.calls.housekeeping(&mut self.engine, now, k);
    }

    fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn engine_ref(&self) -> &Engine {
        &self.engine
    }

    /// What the relay holds: calls, ports, and the engine's streams.
    fn held(&self) -> (usize, usize, usize) {
        (
            self.calls.call_count(),
            self.calls.ports_in_use(),
            self.engine.stream_count(),
        )
    }
}

impl std::ops::Deref for Relay {
    type Target = Calls;
    fn deref(&self) -> &Calls {
        &self.calls
    }
}

impl std::ops::DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut Calls {
        &mut self.calls
    }
}

/// No kernel.
fn no_kernel(_: &Endpoint) -> Option<KernelFlow> {
    None
}

const OFFER_SDP: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=x-custom:stays\r\na=sendrecv\r\n";
const ANSWER_SDP: &str = "v=0\r\no=bob 2808844564 2808844564 IN IP4 10.0.2.2\r\ns=-\r\nc=IN IP4 10.0.2.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n";

fn cfg() -> CallsConfig {
    CallsConfig {
        interfaces: vec![
            Interface::parse("internal/10.0.1.1").unwrap(),
            Interface::parse("external/10.0.2.1!203.0.113.7").unwrap(),
        ],
        port_min: 30000,
        port_max: 30010,
        ..CallsConfig::default()
    }
}

fn calls() -> Relay {
    Relay::new(cfg(), EngineConfig::default(), 42)
}

fn req(pairs: &[(&str, Value)]) -> Dict {
    let mut d = Dict::new();
    for (k, v) in pairs {
        d.push(k, v.clone());
    }
    d
}

fn s(v: &str) -> Value {
    Value::str(v)
}

fn run(c: &mut Relay, d: &Dict) -> Dict {
    c.handle(d, Instant::now(), SystemTime::now(), &no_kernel)
}

fn offer(c: &mut Relay, call: &str, extra: &[(&str, Value)]) -> Dict {
    let mut d = req(&[
        ("command", s("offer")),
        ("call-id", s(call)),
        ("from-tag", s("ft")),
        ("sdp", s(OFFER_SDP)),
    ]);
    if !extra.iter().any(|(k, _)| *k == "direction") {
        d.push("direction", Value::List(vec![s("internal"), s("external")]));
    }
    for (k, v) in extra {
        d.push(k, v.clone());
    }
    run(c, &d)
}

fn answer(c: &mut Relay, call: &str, extra: &[(&str, Value)]) -> Dict {
    let mut d = req(&[
        ("command", s("answer")),
        ("call-id", s(call)),
        ("from-tag", s("ft")),
        ("to-tag", s("tt")),
        ("sdp", s(ANSWER_SDP)),
    ]);
    for (k, v) in extra {
        d.push(k, v.clone());
    }
    run(c, &d)
}

fn sdp_of(r: &Dict) -> String {
    String::from_utf8(
        r.get("sdp")
            .and_then(Value::as_bytes)
            .expect("reply has sdp")
            .to_vec(),
    )
    .unwrap()
}

fn m_port(sdp: &str) -> u16 {
    let m = sdp.lines().find(|l| l.starts_with("m=audio ")).unwrap();
    m.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn ping_pongs() {
    let r = run(&mut calls(), &req(&[("command", s("ping"))]));
    assert_eq!(r.encode(), b"d6:result4:ponge");
}

#[test]
fn offer_then_answer_rewrites_each_sdp_for_its_recipient() {
    let mut c = calls();
    let r = offer(&mut c, "c1", &[]);
    assert_eq!(r.get_str("result"), Some("ok"), "{r:?}");
    let to_b = sdp_of(&r);
    // Goes to B: the relay's B-facing (external, advertised) address and port; the rest kept.
    let pb = m_port(&to_b);
    assert!((30000..30010).contains(&pb) && pb.is_multiple_of(2));
    assert_eq!(
        to_b,
        OFFER_SDP
            .replace("c=IN IP4 10.0.1.2", "c=IN IP4 203.0.113.7")
            .replace("m=audio 4000", &format!("m=audio {pb}"))
    );
    assert_eq!(c.engine_ref().stream_count(), 2, "RTP and RTCP");

    let r = answer(&mut c, "c1", &[]);
    let to_a = sdp_of(&r);
    let pa = m_port(&to_a);
    assert_ne!(pa, pb);
    assert_eq!(
        to_a,
        ANSWER_SDP
            .replace("c=IN IP4 10.0.2.2", "c=IN IP4 10.0.1.1")
            .replace("m=audio 5000", &format!("m=audio {pa}"))
    );

    // The engine knows both signalled addresses and the local ports.
    let (id, _) = c
        .engine_ref()
        .stream_of(&Endpoint::v4([10, 0, 1, 1], pa))
        .unwrap();
    let st = c.engine_ref().status(id).unwrap();
    assert_eq!(st[0].remote, Some(Endpoint::v4([10, 0, 1, 2], 4000)));
    assert_eq!(st[1].remote, Some(Endpoint::v4([10, 0, 2, 2], 5000)));
    assert_eq!(st[1].local, Endpoint::v4([10, 0, 2, 1], pb));
    // Its flows start in HOLD: four of them (RTP and RTCP, each way), some written twice as
    // the answer opened B's learning window.
    let flows: std::collections::HashMap<_, _> = std::iter::from_fn(|| c.engine().poll_output())
        .filter_map(|o| match o {
            Output::Flow { key, spec } => Some((key, spec)),
            _ => None,
        })
        .collect();
    assert_eq!(flows.len(), 4);
    assert!(
        flows
            .values()
            .all(|s| s.state == proxy_common::FlowState::Hold)
    );
}

#[test]
fn a_reinvite_keeps_ports_and_updates_the_address() {
    let mut c = calls();
    let pb = m_port(&sdp_of(&offer(&mut c, "c1", &[])));
    answer(&mut c, "c1", &[]);
    let moved = OFFER_SDP
        .replace("10.0.1.2", "10.0.1.9")
        .replace("m=audio 4000", "m=audio 4100");
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("c1")),
            ("from-tag", s("ft")),
            ("to-tag", s("tt")),
            ("sdp", s(&moved)),
        ]),
    );
    assert_eq!(
        m_port(&sdp_of(&r)),
        pb,
        "same relay port after the re-INVITE"
    );
    let (id, _) = c
        .engine_ref()
        .stream_of(&Endpoint::v4([10, 0, 2, 1], pb))
        .unwrap();
    assert_eq!(
        c.engine_ref().status(id).unwrap()[0].remote,
        Some(Endpoint::v4([10, 0, 1, 9], 4100))
    );
    assert_eq!(c.ports_in_use(), 2);
    // A re-INVITE from the callee (its tag as from-tag) goes to A: A-facing ports.
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("c1")),
            ("from-tag", s("tt")),
            ("to-tag", s("ft")),
            ("sdp", s(ANSWER_SDP)),
        ]),
    );
    assert!(sdp_of(&r).contains("c=IN IP4 10.0.1.1"));
}

#[test]
fn errors_have_precise_reasons_and_allocate_nothing() {
    let mut c = calls();
    let cases: Vec<(Dict, &str)> = vec![
        (
            req(&[("call-id", s("x"))]),
            "Dictionary contains no key \"command\"",
        ),
        (req(&[("command", s("nonsense"))]), "Unrecognized command"),
        (
            req(&[
                ("command", s("offer")),
                ("call-id", s("x")),
                ("from-tag", s("f")),
            ]),
            "No SDP body in message",
        ),
        (
            req(&[
                ("command", s("offer")),
                ("from-tag", s("f")),
                ("sdp", s(OFFER_SDP)),
            ]),
            "No call-id in message",
        ),
        (
            req(&[
                ("command", s("offer")),
                ("call-id", s("x")),
                ("sdp", s(OFFER_SDP)),
            ]),
            "No from-tag in message",
        ),
        (
            req(&[
                ("command", s("answer")),
                ("call-id", s("x")),
                ("from-tag", s("f")),
                ("sdp", s(ANSWER_SDP)),
            ]),
            "No to-tag in message",
        ),
        (
            req(&[
                ("command", s("answer")),
                ("call-id", s("nope")),
                ("from-tag", s("f")),
                ("to-tag", s("t")),
                ("sdp", s(ANSWER_SDP)),
            ]),
            "Unknown call-id",
        ),
        (
            req(&[("command", s("query")), ("call-id", s("nope"))]),
            "Unknown call-id",
        ),
        (
            req(&[("command", s("list")), ("limit", Value::Int(-1))]),
            "invalid limit, must be >= 0",
        ),
    ];
    for (d, reason) in cases {
        let r = run(&mut c, &d);
        assert_eq!(
            (r.get_str("result"), r.get_str("error-reason")),
            (Some("error"), Some(reason)),
            "{d:?}"
        );
    }
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("x")),
            ("from-tag", s("f")),
            ("sdp", s("v=0\r\nm=audio x\r\n")),
        ]),
    );
    assert!(
        r.get_str("error-reason")
            .unwrap()
            .starts_with("Failed to parse SDP")
    );
    assert_eq!(c.held(), (0, 0, 0));
}

#[test]
fn an_exhausted_port_range_fails_cleanly_and_leaks_nothing() {
    let mut c = Relay::new(
        CallsConfig {
            port_min: 30000,
            port_max: 30004,
            ..cfg()
        },
        EngineConfig::default(),
        1,
    );
    // 2 pairs per interface: one call fits (one media), the second call's offer does not.
    assert_eq!(offer(&mut c, "c1", &[]).get_str("result"), Some("ok"));
    assert_eq!(offer(&mut c, "c2", &[]).get_str("result"), Some("ok"));
    let two_media = format!("{OFFER_SDP}m=video 4002 RTP/AVP 96\r\n");
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("c3")),
            ("from-tag", s("f")),
            ("sdp", s(&two_media)),
        ]),
    );
    assert_eq!(r.get_str("error-reason"), Some("Ran out of ports"));
    assert_eq!(c.held(), (2, 4, 4));
    run(
        &mut c,
        &req(&[
            ("command", s("delete")),
            ("call-id", s("c1")),
            ("delete-delay", Value::Int(0)),
        ]),
    );
    assert_eq!(c.ports_in_use(), 2, "a deleted call frees its ports");
    assert_eq!(offer(&mut c, "c4", &[]).get_str("result"), Some("ok"));
}

#[test]
fn unknown_flags_warn_and_known_ones_apply() {
    let mut c = calls();
    let flags = Value::List(vec![
        s("trust address"),
        s("frobnicate"),
        s("strict source"),
        s("ICE=remove"),
    ]);
    let r = offer(
        &mut c,
        "c1",
        &[
            ("flags", flags),
            ("replace", Value::List(vec![s("origin")])),
        ],
    );
    assert_eq!(r.get_str("result"), Some("ok"));
    assert_eq!(r.get_str("warning"), Some("unknown flag 'frobnicate'"));
    assert!(sdp_of(&r).contains("o=alice 2890844526 2890844526 IN IP4 203.0.113.7"));
    let flows: Vec<_> = std::iter::from_fn(|| c.engine().poll_output())
        .filter_map(|o| match o {
            Output::Flow { spec, .. } => Some(spec),
            _ => None,
        })
        .collect();
    assert!(
        flows
            .iter()
            .all(|f| f.mismatch == crate::flow::MismatchPolicy::Drop),
        "strict source"
    );
}

#[test]
fn direction_and_address_family_pick_interfaces() {
    let mut c = Relay::new(
        CallsConfig {
            interfaces: vec![
                Interface::parse("pub/10.0.2.1").unwrap(),
                Interface::parse("priv/10.0.1.1").unwrap(),
                Interface::parse("v6/fd00::1").unwrap(),
            ],
            ..cfg()
        },
        EngineConfig::default(),
        1,
    );
    let r = offer(
        &mut c,
        "c1",
        &[("direction", Value::List(vec![s("priv"), s("pub")]))],
    );
    assert!(sdp_of(&r).contains("c=IN IP4 10.0.2.1"));
    let r = offer(&mut c, "c2", &[("address family", s("IP6"))]);
    assert!(sdp_of(&r).contains("c=IN IP6 fd00::1"), "{}", sdp_of(&r));
}

#[test]
fn query_reports_tags_medias_and_relay_state() {
    let mut c = calls();
    offer(&mut c, "c1", &[]);
    answer(&mut c, "c1", &[("next-relay", s("10.0.2.2"))]);
    let r = run(
        &mut c,
        &req(&[("command", s("query")), ("call-id", s("c1"))]),
    );
    assert_eq!(r.get_str("result"), Some("ok"));
    let tags = r.get("tags").and_then(Value::as_dict).unwrap();
    let ft = tags.get("ft").and_then(Value::as_dict).unwrap();
    let medias = ft.get("medias").and_then(Value::as_list).unwrap();
    let m = medias[0].as_dict().unwrap();
    assert_eq!(m.get_str("type"), Some("audio"));
    assert_eq!(m.get_str("codec"), Some("PCMA/8000"));
    let streams = m.get("streams").and_then(Value::as_list).unwrap();
    assert_eq!(streams.len(), 2);
    let rtp = streams[0].as_dict().unwrap();
    let mp = rtp.get("mediaproxy").and_then(Value::as_dict).unwrap();
    assert_eq!(mp.get_str("state"), Some("HOLD"));
    assert_eq!(mp.get_str("latched"), Some("no"));
    let tt = tags.get("tt").and_then(Value::as_dict).unwrap();
    let rtp_b = tt.get("medias").and_then(Value::as_list).unwrap()[0]
        .as_dict()
        .unwrap()
        .get("streams")
        .and_then(Value::as_list)
        .unwrap()[0]
        .as_dict()
        .unwrap()
        .clone();
    let mp_b = rtp_b.get("mediaproxy").and_then(Value::as_dict).unwrap();
    assert_eq!(
        mp_b.get_str("next relay"),
        Some("10.0.2.2:7999"),
        "next relay on the answerer's side"
    );
    assert!(
        r.get("totals")
            .and_then(Value::as_dict)
            .unwrap()
            .get("RTP")
            .is_some()
    );
}

#[test]
fn the_probe_command_probes_toward_the_next_relay() {
    let mut c = calls();
    offer(&mut c, "c1", &[]);
    answer(
        &mut c,
        "c1",
        &[("flags", Value::List(vec![s("next-relay=10.0.2.2:7000")]))],
    );
    std::iter::from_fn(|| c.engine().poll_output()).for_each(drop);
    let r = run(
        &mut c,
        &req(&[
            ("command", s("probe")),
            ("call-id", s("c1")),
            ("from-tag", s("tt")),
        ]),
    );
    assert_eq!(r.get_str("result"), Some("ok"), "{r:?}");
    let probes: Vec<_> = std::iter::from_fn(|| c.engine().poll_output())
        .filter_map(|o| match o {
            Output::SendProbe { to, msg } => Some((to, msg)),
            _ => None,
        })
        .collect();
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].0, "10.0.2.2:7000".parse().unwrap());
    assert_eq!(
        probes[0].1.target,
        Endpoint::v4([10, 0, 2, 2], 5000),
        "target: B's media address"
    );
    let r = run(
        &mut c,
        &req(&[
            ("command", s("probe")),
            ("call-id", s("c1")),
            ("from-tag", s("ft")),
        ]),
    );
    // No next relay named on A's side: its signalled address is probed at the probe port.
    assert_eq!(r.get_str("result"), Some("ok"), "{r:?}");
    let probes: Vec<_> = std::iter::from_fn(|| c.engine().poll_output())
        .filter_map(|o| match o {
            Output::SendProbe { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(probes, vec!["10.0.1.2:7999".parse().unwrap()]);
}

#[test]
fn delete_with_delay_keeps_media_until_it_expires() {
    let mut c = calls();
    offer(&mut c, "c1", &[]);
    answer(&mut c, "c1", &[]);
    let t0 = Instant::now();
    let r = c.handle(
        &req(&[
            ("command", s("delete")),
            ("call-id", s("c1")),
            ("from-tag", s("ft")),
            ("delete-delay", s("5")),
        ]),
        t0,
        SystemTime::now(),
        &no_kernel,
    );
    assert_eq!(r.get_str("result"), Some("ok"));
    assert!(
        r.get("tags").is_some(),
        "delete with a tag returns the call's statistics"
    );
    c.housekeeping(t0 + Duration::from_secs(4), &no_kernel);
    assert_eq!(
        c.ports_in_use(),
        2,
        "one port pair per side, kept during the delay"
    );
    c.housekeeping(t0 + Duration::from_secs(5), &no_kernel);
    assert_eq!(c.held(), (0, 0, 0));
    let r = run(
        &mut c,
        &req(&[("command", s("delete")), ("call-id", s("c1"))]),
    );
    assert_eq!(
        r.get_str("warning"),
        Some("Call-ID not found or tags didn't match")
    );
    let r = run(
        &mut c,
        &req(&[
            ("command", s("delete")),
            ("call-id", s("c1")),
            ("flags", Value::List(vec![s("fatal")])),
        ]),
    );
    assert_eq!(
        r.get_str("error-reason"),
        Some("Call-ID not found or tags didn't match")
    );
}

/// A kernel that last saw a packet on every flow at one instant, and counted nothing.
fn idle(at: Instant) -> impl Fn(&Endpoint) -> Option<KernelFlow> {
    move |_| {
        Some(KernelFlow {
            counters: FlowCounters::default(),
            last_seen: Some(at),
        })
    }
}

#[test]
fn silent_media_times_out_and_is_reported() {
    let mut c = Relay::new(
        CallsConfig {
            media_timeout: Duration::from_secs(10),
            ..cfg()
        },
        EngineConfig::default(),
        1,
    );
    offer(&mut c, "c1", &[]);
    let t0 = Instant::now();
    c.housekeeping(t0 + Duration::from_secs(5), &idle(t0));
    assert_eq!(c.call_count(), 1);
    c.housekeeping(t0 + Duration::from_secs(11), &idle(t0));
    assert_eq!(c.held(), (0, 0, 0));
    let r = run(
        &mut c,
        &req(&[("command", s("query")), ("call-id", s("c1"))]),
    );
    assert_eq!(
        r.get("mediaproxy")
            .and_then(Value::as_dict)
            .and_then(|d| d.get_str("state")),
        Some("timed out")
    );
    let r = run(&mut c, &req(&[("command", s("list"))]));
    let states = r
        .get("mediaproxy")
        .and_then(Value::as_dict)
        .unwrap()
        .get("calls")
        .and_then(Value::as_list)
        .unwrap();
    assert_eq!(
        states[0].as_dict().unwrap().get_str("state"),
        Some("timed out")
    );
    c.housekeeping(t0 + Duration::from_mins(1), &idle(t0));
    assert_eq!(
        run(&mut c, &req(&[("command", s("list"))]))
            .get("calls")
            .and_then(Value::as_list)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn statistics_has_rtpengine_sections() {
    let mut c = calls();
    offer(&mut c, "c1", &[]);
    let r = run(&mut c, &req(&[("command", s("statistics"))]));
    let st = r.get("statistics").and_then(Value::as_dict).unwrap();
    for k in ["currentstatistics", "totalstatistics", "controlstatistics"] {
        assert!(st.get(k).is_some(), "{k}");
    }
    let cur = st
        .get("currentstatistics")
        .and_then(Value::as_dict)
        .unwrap();
    assert_eq!(cur.get("sessionsown").and_then(Value::as_int), Some(1));
}

// Findings of the hostile-networks review, each pinned down.

/// `delete-delay` of `i64::MAX` once made `Instant + Duration` panic and stopped the daemon.
#[test]
fn any_delete_delay_is_taken_within_bounds() {
    let mut c = calls();
    for (i, d) in [i64::MAX, i64::MIN, -1, 0, 1 << 40].into_iter().enumerate() {
        let call = format!("c{i}");
        offer(&mut c, &call, &[]);
        let r = run(
            &mut c,
            &req(&[
                ("command", s("delete")),
                ("call-id", s(&call)),
                ("delete-delay", Value::Int(d)),
            ]),
        );
        assert_eq!(r.get_str("result"), Some("ok"), "delete-delay {d}");
    }
    c.housekeeping(
        Instant::now() + MAX_DELETE_DELAY + Duration::from_secs(1),
        &no_kernel,
    );
    assert_eq!(
        c.call_count(),
        0,
        "every delayed delete happens within an hour"
    );
}

/// Running out of ports between the two sides of a media section, or part-way through a
/// multi-media offer, gives back everything that request took.
#[test]
fn a_partial_allocation_leaks_nothing_two_sides_or_many_media() {
    // One pair facing A, three facing B: the B side has room when A has none.
    let mut c = Relay::new(
        CallsConfig {
            interfaces: vec![
                Interface::parse("internal/10.0.1.1").unwrap(),
                Interface::parse("external/10.0.2.1").unwrap(),
            ],
            port_min: 30000,
            port_max: 30006,
            ..CallsConfig::default()
        },
        EngineConfig::default(),
        9,
    );
    let four_media = format!(
        "{OFFER_SDP}m=video 4002 RTP/AVP 96\r\nm=audio 0 RTP/AVP 8\r\nm=video 4006 RTP/AVP 96\r\nm=audio 4008 RTP/AVP 8\r\n"
    );
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("big")),
            ("from-tag", s("f")),
            ("sdp", s(&four_media)),
        ]),
    );
    assert_eq!(r.get_str("error-reason"), Some("Ran out of ports"));
    assert_eq!(
        (
            c.ports_in_use(),
            c.engine_ref().stream_count(),
            c.call_count()
        ),
        (0, 0, 0)
    );
    // All the ports are free again: three one-media calls fit.
    for i in 0..3 {
        assert_eq!(
            offer(&mut c, &format!("c{i}"), &[]).get_str("result"),
            Some("ok")
        );
    }
}

#[test]
#[expect(
    clippy::format_push_string,
    reason = "a test's SDP, built line by line"
)]
fn too_many_media_sections_are_refused_before_anything_is_allocated() {
    let mut c = calls();
    let mut sdp = OFFER_SDP.to_owned();
    for i in 0..CallsConfig::default().max_media {
        sdp.push_str(&format!("m=audio {} RTP/AVP 8\r\n", 5000 + 2 * i));
    }
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("m")),
            ("from-tag", s("f")),
            ("sdp", s(&sdp)),
        ]),
    );
    assert!(
        r.get_str("error-reason")
            .unwrap()
            .starts_with("Too many media sections")
    );
    assert_eq!((c.ports_in_use(), c.call_count()), (0, 0));
}

/// Past the call limit (or the kernel's flow table), Kamailio gets rtpengine's load-limit
/// answer and moves on to its next relay; a client that did not announce it gets an error.
#[test]
fn the_call_limit_answers_load_limit_to_those_who_take_it() {
    let mut c = Relay::new(
        CallsConfig {
            max_calls: 1,
            ..cfg()
        },
        EngineConfig::default(),
        3,
    );
    assert_eq!(offer(&mut c, "one", &[]).get_str("result"), Some("ok"));
    let r = offer(
        &mut c,
        "two",
        &[("supports", Value::List(vec![s("load limit")]))],
    );
    assert_eq!(r.get_str("result"), Some("load limit"));
    assert_eq!(r.get_str("message"), Some("Parallel session limit reached"));
    let r = offer(&mut c, "three", &[]);
    assert_eq!(r.get_str("result"), Some("error"));
    assert_eq!(
        r.get_str("error-reason"),
        Some("Parallel session limit reached")
    );
    // A re-offer of the call it holds is no new call.
    assert_eq!(offer(&mut c, "one", &[]).get_str("result"), Some("ok"));
}

#[test]
fn a_full_flow_table_fails_the_offer_instead_of_advertising_dead_ports() {
    let mut c = Relay::new(
        CallsConfig {
            max_flows: 4,
            ..cfg()
        },
        EngineConfig::default(),
        3,
    );
    assert_eq!(offer(&mut c, "one", &[]).get_str("result"), Some("ok"));
    let r = offer(&mut c, "two", &[]);
    assert_eq!(
        r.get_str("error-reason"),
        Some("Parallel session limit reached")
    );
    assert_eq!(
        c.engine_ref().stream_count(),
        2,
        "only the first call's RTP and RTCP"
    );
}

#[test]
fn sdp_addresses_that_would_make_the_relay_a_reflector_are_refused() {
    let mut c = calls();
    for bad in [
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "0.1.2.3",
        "10.0.2.1",
        "203.0.113.7",
    ] {
        let sdp = OFFER_SDP.replace("10.0.1.2", bad);
        let r = run(
            &mut c,
            &req(&[
                ("command", s("offer")),
                ("call-id", s(bad)),
                ("from-tag", s("f")),
                ("sdp", s(&sdp)),
            ]),
        );
        assert!(
            r.get_str("error-reason")
                .is_some_and(|e| e.starts_with("Invalid address in SDP")),
            "{bad}: {r:?}"
        );
    }
    assert_eq!((c.ports_in_use(), c.call_count()), (0, 0));
    // 0.0.0.0 is hold, and stays supported.
    let held = OFFER_SDP.replace("10.0.1.2", "0.0.0.0");
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("hold")),
            ("from-tag", s("f")),
            ("sdp", s(&held)),
        ]),
    );
    assert_eq!(r.get_str("result"), Some("ok"));
}

/// A call that loops through the relay twice (a B2BUA hairpin): the second leg's SDP names
/// the first leg's own endpoint, which is joined, not refused.
#[test]
fn an_sdp_naming_one_of_our_own_endpoints_is_accepted_for_joining() {
    let mut c = calls();
    let first = offer(&mut c, "leg1", &[]);
    let out = String::from_utf8(first.get("sdp").unwrap().as_bytes().unwrap().to_vec()).unwrap();
    // The first leg's SDP toward B advertises 203.0.113.7 (the external interface's
    // advertised address); the hairpin brings the internal address back in.
    let port: u16 = out
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let ours = OFFER_SDP
        .replace("10.0.1.2", "10.0.2.1")
        .replace("m=audio 4000", &format!("m=audio {port}"));
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("leg2")),
            ("from-tag", s("f2")),
            ("sdp", s(&ours)),
        ]),
    );
    assert_eq!(r.get_str("result"), Some("ok"), "{r:?}");
}

#[test]
fn ports_are_picked_at_random_not_in_sequence() {
    let mut c = Relay::new(
        CallsConfig {
            port_min: 30000,
            port_max: 40000,
            ..cfg()
        },
        EngineConfig::default(),
        5,
    );
    let ports: Vec<u16> = (0..20)
        .map(|i| {
            let r = offer(&mut c, &format!("c{i}"), &[]);
            let sdp =
                String::from_utf8(r.get("sdp").unwrap().as_bytes().unwrap().to_vec()).unwrap();
            sdp.lines()
                .find_map(|l| l.strip_prefix("m=audio "))
                .and_then(|r| r.split(' ').next())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let sequential = ports.windows(2).filter(|w| w[1] == w[0] + 2).count();
    assert!(sequential < 3, "ports look sequential: {ports:?}");
}

#[test]
fn a_media_less_call_times_out() {
    let mut c = calls();
    let none = "v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n";
    let r = run(
        &mut c,
        &req(&[
            ("command", s("offer")),
            ("call-id", s("empty")),
            ("from-tag", s("f")),
            ("sdp", s(none)),
        ]),
    );
    assert_eq!(r.get_str("result"), Some("ok"));
    assert_eq!(c.call_count(), 1);
    // Housekeeping reads signalling age from the wall clock; pretend it is old.
    c.age_signalling_for_tests(Duration::from_hours(1));
    c.housekeeping(Instant::now(), &no_kernel);
    assert_eq!(c.call_count(), 0);
}
