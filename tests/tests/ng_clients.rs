//! The call-server interface driven by real clients: Debian's `rtpengine-ng-client`, a real
//! Kamailio with its `rtpengine` module, and a side-by-side comparison with Debian's rtpengine.

use std::{collections::BTreeSet, net::SocketAddr, path::Path, process::Stdio, time::Duration};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    scenario::{self, OneRelay, Phone, query_figure, query_text, stream},
    testbed::{Guarded, Netns},
};
use mediaproxy_tests::{
    kamailio::{self, Kamailio},
    need_root, sip,
};
use proxy_userspace::ng::{
    bencode::{Dict, Value},
    client::NgClient,
};

/// Runs `rtpengine-ng-client` inside the relay's namespace; returns its stdout.
fn ng_client(ns: &Netns, port: u16, args: &[&str]) -> String {
    let mut full = vec!["rtpengine-ng-client", "--proxy-address=127.0.0.1"];
    let p = format!("--proxy-port={port}");
    full.push(&p);
    full.extend_from_slice(args);
    let out = ns
        .exec(&full)
        .unwrap_or_else(|e| panic!("rtpengine-ng-client {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The "New SDP" the client printed.
fn new_sdp(out: &str) -> String {
    let after = out
        .split("New SDP:")
        .nth(1)
        .unwrap_or_else(|| panic!("no new SDP in:\n{out}"));
    let body = after
        .split("-----8<-----8<-----8<-----8<-----8<-----\n")
        .nth(1)
        .unwrap();
    body.split("----->8-----")
        .next()
        .unwrap()
        .trim_end()
        .to_owned()
}

fn m_port(sdp: &str) -> u16 {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, read top to bottom as its steps happen"
)]
fn rtpengine_ng_client_drives_a_call_to_forward() {
    need_root();
    let t = OneRelay::build("cli", XdpMode::Driver).unwrap();
    let relay = t.start_relay(XdpMode::Driver).unwrap();
    let dir = std::env::temp_dir().join(format!("mp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let offer = write(&dir, "offer.sdp", &scenario::sdp("10.0.1.2", 4000));
    let answer = write(&dir, "answer.sdp", &scenario::sdp("10.0.2.2", 5000));
    let reinvite = write(
        &dir,
        "reinvite.sdp",
        &scenario::sdp("10.0.1.2", 4000).replace("o=- 1 1", "o=- 1 2"),
    );

    assert!(ng_client(&t.relay, 22222, &["ping"]).contains("pong"));
    let out = ng_client(
        &t.relay,
        22222,
        &[
            "offer",
            "--call-id=cli-1",
            "--from-tag=ft",
            &format!("--sdp-file={offer}"),
            "--replace-origin",
            "--direction=internal,external",
            "--flags=trust-address",
        ],
    );
    let to_b = new_sdp(&out);
    let pb = m_port(&to_b);
    assert!(
        to_b.contains("c=IN IP4 10.0.2.1") && to_b.contains("o=- 1 1 IN IP4 10.0.2.1"),
        "{to_b}"
    );
    assert!(
        to_b.replace('\r', "")
            .contains("a=rtpmap:8 PCMA/8000\na=ptime:20\na=sendrecv"),
        "other lines kept in order: {to_b}"
    );

    // A retransmission (same cookie) gets the same reply and allocates nothing more.
    let ours = relay.ng(&t.relay).unwrap();
    let mut req = Dict::new();
    for (k, v) in [
        ("command", "offer"),
        ("call-id", "cli-2"),
        ("from-tag", "x"),
    ] {
        req.push(k, Value::str(v));
    }
    req.push("sdp", Value::str(&scenario::sdp("10.0.1.2", 4100)));
    let first = ours.request_with_cookie("retrans-1", &req).unwrap();
    let ports = |c: &NgClient| {
        scenario::ng(c, "statistics", &[])
            .unwrap()
            .get("statistics")
            .and_then(Value::as_dict)
            .unwrap()
            .get("currentstatistics")
            .and_then(Value::as_dict)
            .unwrap()
            .get("ports_in_use")
            .and_then(Value::as_int)
            .unwrap()
    };
    let before = ports(&ours);
    let second = ours.request_with_cookie("retrans-1", &req).unwrap();
    assert_eq!(first, second, "a retransmitted offer gets the same answer");
    assert_eq!(ports(&ours), before, "and no second allocation");
    scenario::ng(
        &ours,
        "delete",
        &[
            ("call-id", Value::str("cli-2")),
            ("delete-delay", Value::Int(0)),
        ],
    )
    .unwrap();

    let out = ng_client(
        &t.relay,
        22222,
        &[
            "answer",
            "--call-id=cli-1",
            "--from-tag=ft",
            "--to-tag=tt",
            &format!("--sdp-file={answer}"),
            "--replace-origin",
        ],
    );
    let to_a = new_sdp(&out);
    let pa = m_port(&to_a);
    assert!(to_a.contains("c=IN IP4 10.0.1.1"), "{to_a}");

    // re-INVITE: same ports.
    let out = ng_client(
        &t.relay,
        22222,
        &[
            "offer",
            "--call-id=cli-1",
            "--from-tag=ft",
            "--to-tag=tt",
            &format!("--sdp-file={reinvite}"),
        ],
    );
    assert_eq!(m_port(&new_sdp(&out)), pb, "re-INVITE keeps the relay port");

    // A probe request from the call server; no next relay named on A's side: A's signalled
    // address is probed, at the probe port.
    let out = ng_client(
        &t.relay,
        22222,
        &["probe", "--call-id=cli-1", "--from-tag=ft"],
    );
    assert!(out.contains("probes => '1'"), "{out}");
    // An unknown tag gets a precise error.
    let out = t.relay.exec(&[
        "rtpengine-ng-client",
        "--proxy-address=127.0.0.1",
        "--proxy-port=22222",
        "probe",
        "--call-id=cli-1",
        "--from-tag=nobody",
    ]);
    assert!(format!("{out:?}").contains("Unknown tag"), "{out:?}");
    let out = ng_client(
        &t.relay,
        22222,
        &[
            "probe",
            "--call-id=cli-1",
            "--from-tag=tt",
            "--flags=next-relay=10.0.2.2",
        ],
    );
    assert!(out.contains("probes"), "{out}");

    let q = ng_client(&t.relay, 22222, &["query", "--call-id=cli-1"]);
    assert!(q.contains("HOLD") && q.contains("tags"), "{q}");

    // Media through the allocated ports reaches FORWARD.
    let a_to: SocketAddr = format!("10.0.1.1:{pa}").parse().unwrap();
    let b_to: SocketAddr = format!("10.0.2.1:{pb}").parse().unwrap();
    let mut phone_a = Phone::bind(&t.a, "10.0.1.2:4000".parse().unwrap()).unwrap();
    let mut phone_b = Phone::bind(&t.b, "10.0.2.2:5000".parse().unwrap()).unwrap();
    phone_a.start(a_to, a_to, 1, 50);
    phone_b.start(b_to, b_to, 2, 50);
    std::thread::sleep(Duration::from_millis(1400));
    phone_a.stop();
    phone_b.stop();
    assert!(stream(&phone_a, &phone_b).distinct >= 49 && stream(&phone_b, &phone_a).distinct >= 49);
    let q = scenario::ng(&ours, "query", &[("call-id", Value::str("cli-1"))]).unwrap();
    for tag in ["ft", "tt"] {
        assert_eq!(
            query_text(&q, tag, "state").as_deref(),
            Some("FORWARD"),
            "{tag}"
        );
        assert!(query_figure(&q, tag, "packets xdp") >= 45, "{tag}");
    }
    let flows = |c: &NgClient| {
        scenario::ng(c, "statistics", &[])
            .unwrap()
            .get("statistics")
            .and_then(Value::as_dict)
            .unwrap()
            .get("mediaproxy")
            .and_then(Value::as_dict)
            .unwrap()
            .get("flows")
            .and_then(Value::as_int)
            .unwrap()
    };
    assert_eq!(flows(&ours), 4, "RTP and RTCP, one flow per direction");
    let out = ng_client(
        &t.relay,
        22222,
        &[
            "delete",
            "--call-id=cli-1",
            "--from-tag=ft",
            "--delete-delay=0",
        ],
    );
    assert!(
        out.contains("tags"),
        "delete with a tag returns statistics: {out}"
    );
    assert_eq!(flows(&ours), 0, "delete removed the flows");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn a_sip_call_through_kamailio_and_mediaproxy() {
    need_root();
    let t = OneRelay::build("kam", XdpMode::Driver).unwrap();
    let relay = t.start_relay(XdpMode::Driver).unwrap();
    let kam = Kamailio::start(
        &t.relay,
        &kamailio::config(
            &["10.0.1.1", "10.0.2.1"],
            "direction=internal direction=external",
        ),
    )
    .unwrap();
    let ua_a: SocketAddr = "10.0.1.2:5061".parse().unwrap();
    let ua_b: SocketAddr = "10.0.2.2:5062".parse().unwrap();
    let c = kamailio::sip_call(
        &t.a,
        &t.b,
        ua_a,
        ua_b,
        "10.0.1.1:5060".parse().unwrap(),
        "10.0.1.2:4000".parse().unwrap(),
        "10.0.2.2:5000".parse().unwrap(),
        "kamailio-call-1@test",
        &relay,
        &kam,
    )
    .unwrap();
    // Each phone sends to what its received SDP says: the relay, not the other phone.
    let (a_to, b_to) = (c.a_sends_to, c.b_sends_to);
    assert_eq!(
        a_to.ip().to_string(),
        "10.0.1.1",
        "the 200 OK's SDP points A at the relay"
    );
    assert_eq!(
        b_to.ip().to_string(),
        "10.0.2.1",
        "the INVITE's SDP points B at the relay"
    );
    let mut pa = Phone::bind(&t.a, "10.0.1.2:4000".parse().unwrap()).unwrap();
    let mut pb = Phone::bind(&t.b, "10.0.2.2:5000".parse().unwrap()).unwrap();
    pa.start(a_to, a_to, 1, 100);
    pb.start(b_to, b_to, 2, 100);
    std::thread::sleep(Duration::from_millis(2400));
    pa.stop();
    pb.stop();
    let (ab, ba) = (stream(&pa, &pb), stream(&pb, &pa));
    println!(
        "kamailio call: A→B {}/{}, B→A {}/{}",
        ab.distinct, ab.sent, ba.distinct, ba.sent
    );
    assert!(
        ab.distinct >= 99 && ba.distinct >= 99,
        "media through the relay: {ab:?} {ba:?}"
    );
    let ng = relay.ng(&t.relay).unwrap();
    let q = scenario::ng(
        &ng,
        "query",
        &[("call-id", Value::str("kamailio-call-1@test"))],
    )
    .unwrap();
    assert_eq!(
        query_text(&q, "alice-tag", "state").as_deref(),
        Some("FORWARD")
    );
    assert!(query_figure(&q, "alice-tag", "packets xdp") >= 95);

    // BYE: Kamailio deletes the call on the relay.
    let sock_b = c.callee_sock;
    let callee_bye = std::thread::spawn(move || {
        let (bye, from) = sip::recv(&sock_b, Duration::from_secs(5), |m| {
            m.start.starts_with("BYE ")
        })
        .unwrap();
        sock_b
            .send_to(&sip::reply(&bye, "200 OK").render(), from)
            .unwrap();
    });
    let r = c.caller.bye(&c.remote_target).unwrap();
    assert_eq!(r.status(), Some(200));
    callee_bye.join().unwrap();
    let l = scenario::ng(&ng, "list", &[]).unwrap();
    let state = l
        .get("mediaproxy")
        .and_then(Value::as_dict)
        .unwrap()
        .get("calls")
        .and_then(Value::as_list)
        .unwrap()[0]
        .as_dict()
        .unwrap()
        .get_str("state")
        .unwrap()
        .to_owned();
    assert_eq!(state, "deleting", "rtpengine_delete() reached the relay");
}

/// Lines of an SDP with port numbers normalised.
fn sdp_lines(sdp: &str) -> BTreeSet<String> {
    sdp.lines()
        .map(|l| {
            let mut out = String::new();
            let mut digits = String::new();
            for c in l.chars() {
                if c.is_ascii_digit() {
                    digits.push(c);
                } else {
                    if !digits.is_empty() {
                        out.push_str(
                            if digits
                                .parse::<u32>()
                                .is_ok_and(|n| (30000..40000).contains(&n))
                            {
                                "PORT"
                            } else {
                                &digits
                            },
                        );
                        digits.clear();
                    }
                    out.push(c);
                }
            }
            if !digits.is_empty() {
                out.push_str(
                    if digits
                        .parse::<u32>()
                        .is_ok_and(|n| (30000..40000).contains(&n))
                    {
                        "PORT"
                    } else {
                        &digits
                    },
                );
            }
            out
        })
        .collect()
}

fn keys(d: &Dict) -> BTreeSet<String> {
    d.keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Compares the two replies to the same request; returns the differences as README lines.
fn compare(label: &str, theirs: &Dict, ours: &Dict, diffs: &mut BTreeSet<String>) {
    for k in keys(theirs).difference(&keys(ours)) {
        diffs.insert(format!("{label}: key `{k}` only in rtpengine's reply"));
    }
    for k in keys(ours).difference(&keys(theirs)) {
        diffs.insert(format!("{label}: key `{k}` only in mediaproxy's reply"));
    }
    if theirs.get_str("result") != ours.get_str("result") {
        diffs.insert(format!(
            "{label}: result `{}` vs `{}`",
            theirs.get_str("result").unwrap_or("-"),
            ours.get_str("result").unwrap_or("-")
        ));
    }
    if theirs.get_str("error-reason") != ours.get_str("error-reason") {
        diffs.insert(format!(
            "{label}: error-reason `{}` vs `{}`",
            theirs.get_str("error-reason").unwrap_or("-"),
            ours.get_str("error-reason").unwrap_or("-")
        ));
    }
    if let (Some(a), Some(b)) = (
        theirs.get("sdp").and_then(Value::as_str),
        ours.get("sdp").and_then(Value::as_str),
    ) {
        let (la, lb) = (sdp_lines(a), sdp_lines(b));
        for l in la.difference(&lb) {
            diffs.insert(format!("{label}: SDP line `{l}` only from rtpengine"));
        }
        for l in lb.difference(&la) {
            diffs.insert(format!("{label}: SDP line `{l}` only from mediaproxy"));
        }
    }
    for nested in ["statistics", "totals"] {
        if let (Some(a), Some(b)) = (
            theirs.get(nested).and_then(Value::as_dict),
            ours.get(nested).and_then(Value::as_dict),
        ) {
            for k in keys(a).difference(&keys(b)) {
                diffs.insert(format!("{label}: `{nested}.{k}` only in rtpengine's reply"));
            }
            for k in keys(b).difference(&keys(a)) {
                diffs.insert(format!(
                    "{label}: `{nested}.{k}` only in mediaproxy's reply"
                ));
            }
        }
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, read top to bottom as its steps happen"
)]
fn parity_with_rtpengine() {
    need_root();
    let t = OneRelay::build("par", XdpMode::Driver).unwrap();
    let relay = t.start_relay(XdpMode::Driver).unwrap();
    let dir = std::env::temp_dir().join(format!("mp-par-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("rtpengine.log")).unwrap();
    let pid = dir.join("rtpengine.pid");
    let rtpe = t
        .relay
        .spawn(&[
            "rtpengine",
            "--table=-1",
            "--interface=internal/10.0.1.1",
            "--interface=external/10.0.2.1",
            "--listen-ng=127.0.0.1:2223",
            "--foreground",
            "--log-stderr",
            "--pidfile",
            &pid.to_string_lossy(),
        ])
        .unwrap()
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _rtpe = Guarded(rtpe);
    let theirs = t
        .relay
        .enter(|| NgClient::new("127.0.0.1:2223".parse().unwrap()))
        .unwrap()
        .unwrap();
    let ours = relay.ng(&t.relay).unwrap();
    let mut ping = Dict::new();
    ping.push("command", Value::str("ping"));
    for _ in 0..50 {
        if theirs.request(&ping).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let ice_sdp = "v=0\r\no=- 1545997027 1 IN IP4 10.0.1.2\r\ns=tester\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=candidate:1 1 UDP 2130706431 10.0.1.2 4000 typ host\r\na=x-unknown:keep\r\na=ptime:20\r\na=sendrecv\r\n";
    let dir_list = Value::List(vec![Value::str("internal"), Value::str("external")]);
    let cases: Vec<(&str, Vec<(&str, Value)>)> = vec![
        ("ping", vec![("command", Value::str("ping"))]),
        (
            "offer",
            vec![
                ("command", Value::str("offer")),
                ("call-id", Value::str("par-1")),
                ("from-tag", Value::str("ft")),
                ("sdp", Value::str(&scenario::sdp("10.0.1.2", 4000))),
                ("direction", dir_list.clone()),
            ],
        ),
        (
            "answer",
            vec![
                ("command", Value::str("answer")),
                ("call-id", Value::str("par-1")),
                ("from-tag", Value::str("ft")),
                ("to-tag", Value::str("tt")),
                ("sdp", Value::str(&scenario::sdp("10.0.2.2", 5000))),
            ],
        ),
        (
            "offer with replace origin, session connection and ICE=remove",
            vec![
                ("command", Value::str("offer")),
                ("call-id", Value::str("par-2")),
                ("from-tag", Value::str("ft")),
                ("sdp", Value::str(ice_sdp)),
                (
                    "replace",
                    Value::List(vec![Value::str("origin"), Value::str("session connection")]),
                ),
                ("ICE", Value::str("remove")),
                ("direction", dir_list),
            ],
        ),
        (
            "query",
            vec![
                ("command", Value::str("query")),
                ("call-id", Value::str("par-1")),
            ],
        ),
        ("list", vec![("command", Value::str("list"))]),
        ("statistics", vec![("command", Value::str("statistics"))]),
        (
            "answer to an unknown call",
            vec![
                ("command", Value::str("answer")),
                ("call-id", Value::str("nope")),
                ("from-tag", Value::str("a")),
                ("to-tag", Value::str("b")),
                ("sdp", Value::str(&scenario::sdp("10.0.2.2", 5000))),
            ],
        ),
        (
            "offer without call-id",
            vec![
                ("command", Value::str("offer")),
                ("from-tag", Value::str("a")),
                ("sdp", Value::str(&scenario::sdp("10.0.2.2", 5000))),
            ],
        ),
        (
            "offer with an unknown flag",
            vec![
                ("command", Value::str("offer")),
                ("call-id", Value::str("par-3")),
                ("from-tag", Value::str("ft")),
                ("sdp", Value::str(&scenario::sdp("10.0.1.2", 4002))),
                ("flags", Value::List(vec![Value::str("frobnicate")])),
            ],
        ),
        (
            "delete",
            vec![
                ("command", Value::str("delete")),
                ("call-id", Value::str("par-1")),
                ("from-tag", Value::str("ft")),
            ],
        ),
        (
            "delete of an unknown call",
            vec![
                ("command", Value::str("delete")),
                ("call-id", Value::str("nope")),
            ],
        ),
    ];
    let mut diffs = BTreeSet::new();
    for (label, pairs) in cases {
        let mut d = Dict::new();
        for (k, v) in pairs {
            d.push(k, v);
        }
        let a = theirs
            .request(&d)
            .unwrap_or_else(|e| panic!("rtpengine, {label}: {e}"));
        let b = ours
            .request(&d)
            .unwrap_or_else(|e| panic!("mediaproxy, {label}: {e}"));
        compare(label, &a, &b, &mut diffs);
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let undocumented: Vec<&String> = diffs
        .iter()
        .filter(|d| !readme.contains(&format!("- {d}")))
        .collect();
    println!(
        "{} field-level differences from rtpengine:\n{}",
        diffs.len(),
        diffs
            .iter()
            .map(|d| format!("- {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        undocumented.is_empty(),
        "differences missing from the README's known differences:\n{}",
        undocumented
            .iter()
            .map(|d| format!("- {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = std::fs::remove_dir_all(dir);
}
