//! A flood costs the attacker, not the calls: the benchmark's generator sends wrong-source
//! media to every port of the relay's range and frames to the probe port (of the relay's own
//! address and of one that is not), flat out, at the relay, while two calls forward in XDP
//! and a third is set up. The relay's own counters show what was refused; the figures (the
//! new call's unblock time, ng ping p50/p99, the flood's rate) are printed for the closing
//! note, not asserted.
//!
//! ```text
//!  phone A 10.0.1.2 ── r0 [relay] r1 ── phone B 10.0.2.2
//!                          r2 198.18.0.1 ── attacker 198.18.0.2 (the benchmark generator)
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    bench::Flood,
    scenario::{self, Phone, Relay, StreamReport, query_figure, stream},
    testbed::{Netns, link},
};
use mediaproxy_tests::need_root;
use proxy_common::Endpoint;
use proxy_userspace::ng::bencode::{Dict, Value};

const PORT_MIN: u16 = 30_000;
const PORT_MAX: u16 = 30_019;
const PROBE_PORT: u16 = 7999;
/// The existing calls talk through the whole test: 16 s of 20 ms packets.
const PACKETS: u16 = 800;
/// Flood windows alternate between the media ports and the probe port.
const SLICE: Duration = Duration::from_millis(500);
const SLICES: u32 = 16;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

fn statistics(r: &Relay, ns: &Netns) -> Dict {
    let s = scenario::ng(&r.ng(ns).unwrap(), "statistics", &[]).unwrap();
    s.get("statistics")
        .and_then(Value::as_dict)
        .and_then(|s| s.get("mediaproxy"))
        .and_then(Value::as_dict)
        .unwrap()
        .clone()
}

fn figure(stats: &Dict, group: &str, key: &str) -> u64 {
    stats
        .get(group)
        .and_then(Value::as_dict)
        .and_then(|x| x.get(key))
        .and_then(Value::as_int)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or_else(|| panic!("no figure {group}.{key}"))
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "a percentile's index, within the slice"
)]
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, read top to bottom as its steps happen"
)]
#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "test counts far below the fields' limits"
)]
#[expect(
    clippy::cast_precision_loss,
    reason = "a ratio of packet counts far below 2^52"
)]
fn a_flood_costs_the_attacker_not_the_calls() {
    need_root();
    let a = Netns::new("fla").unwrap();
    let relay_ns = Netns::new("flr").unwrap();
    let b = Netns::new("flb").unwrap();
    let x = Netns::new("flx").unwrap();
    link(
        &a,
        "a0",
        &["10.0.1.2/24"],
        &relay_ns,
        "r0",
        &["10.0.1.1/24"],
    )
    .unwrap();
    link(
        &relay_ns,
        "r1",
        &["10.0.2.1/24"],
        &b,
        "b0",
        &["10.0.2.2/24"],
    )
    .unwrap();
    link(
        &x,
        "x0",
        &["198.18.0.2/24"],
        &relay_ns,
        "r2",
        &["198.18.0.1/24"],
    )
    .unwrap();
    // GRO on the phones' ends: native redirects are delivered there, so the calls forward in
    // XDP proper (a container's bare veth gets the TC path; see the delivery tests).
    for (ns, ifname) in [(&a, "a0"), (&b, "b0")] {
        ns.exec(&["ethtool", "-K", ifname, "gro", "on"]).unwrap();
    }
    let (min, max) = (PORT_MIN.to_string(), PORT_MAX.to_string());
    let relay = Relay::start(
        &relay_ns,
        &[
            "internal/10.0.1.1",
            "external/10.0.2.1",
            "attack/198.18.0.1",
        ],
        &["--port-min", &min, "--port-max", &max],
        true,
        XdpMode::Default,
    )
    .unwrap();
    let relay_mac = relay_ns
        .enter(|| proxy_userspace::netlink::interface_mac("r2"))
        .unwrap()
        .unwrap();
    let flood = Flood::new(x, "x0", Endpoint::v4([198, 18, 0, 2], 9999), relay_mac).unwrap();
    let ng = relay.ng(&relay_ns).unwrap();
    let direction = Some(("internal", "external"));

    // Two calls forwarding before the flood.
    let mut calls = Vec::new();
    for (i, (pa, pb)) in [(4000u16, 5000u16), (4002, 5002)].into_iter().enumerate() {
        let (ea, eb) = (
            addr(&format!("10.0.1.2:{pa}")),
            addr(&format!("10.0.2.2:{pb}")),
        );
        let id = format!("flood-{i}");
        let (a_to, b_to) = scenario::call(&ng, &id, ea, eb, direction).unwrap();
        let mut phone_a = Phone::bind(&a, ea).unwrap();
        let mut phone_b = Phone::bind(&b, eb).unwrap();
        phone_a.start(a_to, a_to, 0xa0 + i as u32, PACKETS);
        phone_b.start(b_to, b_to, 0xb0 + i as u32, PACKETS);
        calls.push((id, phone_a, phone_b));
    }
    // Past the learning window: a wrong source is now dropped in the kernel.
    std::thread::sleep(Duration::from_secs(4));
    let before = statistics(&relay, &relay_ns);
    let rss_before = relay.rss().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let pings: Arc<Mutex<(Vec<Duration>, u32)>> = Arc::default();
    let flood_sent = std::thread::scope(|scope| {
        let flooding = scope.spawn(|| {
            let mut sent = 0u64;
            let t0 = Instant::now();
            for slice in 0..SLICES {
                let (dst, ports) = match slice % 4 {
                    0 => (Endpoint::v4([10, 0, 2, 1], PORT_MIN), 20),
                    1 => (Endpoint::v4([10, 0, 2, 1], PROBE_PORT), 1),
                    2 => (Endpoint::v4([10, 0, 1, 1], PORT_MIN), 20),
                    // The probe port of an address that is not the relay's: passed on, never
                    // punted.
                    _ => (Endpoint::v4([10, 0, 2, 77], PROBE_PORT), 1),
                };
                sent += flood.run(dst, ports, 0, SLICE).unwrap();
            }
            (sent, t0.elapsed())
        });
        let (stop2, pings2) = (stop.clone(), pings.clone());
        let relay_ref = &relay;
        let relay_ns_ref = &relay_ns;
        scope.spawn(move || {
            let mut c = relay_ref.ng(relay_ns_ref).unwrap();
            c.tries = 1;
            let mut ping = Dict::new();
            ping.push("command", Value::str("ping"));
            while !stop2.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = c
                    .request(&ping)
                    .is_ok_and(|r| r.get_str("result") == Some("pong"));
                let mut p = pings2.lock().unwrap();
                if ok {
                    p.0.push(t.elapsed());
                } else {
                    p.1 += 1;
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // A new call, set up while the flood runs.
        std::thread::sleep(Duration::from_secs(2));
        let (ea, eb) = (addr("10.0.1.2:4004"), addr("10.0.2.2:5004"));
        let (a_to, b_to) = scenario::call(&ng, "flood-new", ea, eb, direction).unwrap();
        let mut new_a = Phone::bind(&a, ea).unwrap();
        let mut new_b = Phone::bind(&b, eb).unwrap();
        new_a.start(a_to, a_to, 0xaa, 150);
        new_b.start(b_to, b_to, 0xbb, 150);
        let sent = flooding.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        new_a.stop();
        new_b.stop();
        (sent, stream(&new_a, &new_b), stream(&new_b, &new_a))
    });
    let ((sent, took), new_ab, new_ba) = flood_sent;
    let after = statistics(&relay, &relay_ns);
    let rss_after = relay.rss().unwrap();
    let delta = |g: &str, k: &str| figure(&after, g, k).saturating_sub(figure(&before, g, k));

    let mut reports: Vec<(String, StreamReport, StreamReport, u64)> = Vec::new();
    for (id, mut pa, mut pb) in calls {
        // Let the calls finish.
        let deadline = Instant::now() + Duration::from_secs(20);
        while pa.sent().0 < u64::from(PACKETS) || pb.sent().0 < u64::from(PACKETS) {
            assert!(Instant::now() < deadline, "the phones stopped sending");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        pa.stop();
        pb.stop();
        let q = scenario::ng(&ng, "query", &[("call-id", Value::str(&id))]).unwrap();
        let xdp =
            query_figure(&q, "tag-a", "packets xdp") + query_figure(&q, "tag-b", "packets xdp");
        reports.push((id, stream(&pa, &pb), stream(&pb, &pa), xdp));
    }

    let mut p = pings.lock().unwrap().clone();
    p.0.sort();
    let pps = sent as f64 / took.as_secs_f64();
    println!(
        "flood | {sent} frames in {:.1} s: {:.2} Mpps at the relay (wrong-source media and probe port, alternating)",
        took.as_secs_f64(),
        pps / 1e6
    );
    println!(
        "flood | refused in the kernel: drop_mismatch {} | drop_punt_budget {} | drop_probe_budget {} | punted probes {} | pass_no_flow {}",
        delta("xdp", "drop_mismatch"),
        delta("xdp", "drop_punt_budget"),
        delta("xdp", "drop_probe_budget"),
        delta("xdp", "punt_probe"),
        delta("xdp", "pass_no_flow"),
    );
    println!(
        "flood | control: rx backlog drops {} | rx priority drops {} | probes rejected {:?}",
        delta("af_xdp", "rx backlog drops"),
        delta("af_xdp", "rx priority drops"),
        after
            .get("probes")
            .and_then(Value::as_dict)
            .and_then(|d| d.get("rejected")),
    );
    println!(
        "flood | new call unblocked: A→B first audio after {:?}, B→A after {:?}; delivered {}/{} and {}/{}",
        new_ab.setup_delay(),
        new_ba.setup_delay(),
        new_ab.distinct,
        new_ab.sent,
        new_ba.distinct,
        new_ba.sent
    );
    println!(
        "flood | ng ping during the flood: p50 {:?} p99 {:?} max {:?} over {} pings, {} unanswered",
        percentile(&p.0, 0.5),
        percentile(&p.0, 0.99),
        p.0.last().copied().unwrap_or_default(),
        p.0.len(),
        p.1
    );
    println!(
        "flood | daemon memory: {} KiB before, {} KiB after",
        rss_before / 1024,
        rss_after / 1024
    );
    for (id, ab, ba, xdp) in &reports {
        println!(
            "flood | {id}: A→B {}/{} B→A {}/{}, {xdp} forwarded in XDP",
            ab.distinct, ab.sent, ba.distinct, ba.sent
        );
    }

    // The flood reached the relay and was refused in the kernel, counted.
    assert!(sent > 100_000, "the generator ran: {sent}");
    assert!(
        delta("xdp", "drop_mismatch") > 0,
        "wrong sources dropped in the kernel"
    );
    assert!(
        delta("xdp", "drop_probe_budget") > 0,
        "probe punts beyond the budget refused and counted"
    );
    assert!(
        delta("xdp", "punt_probe") < sent / 4,
        "the probe port of another address is not punted"
    );
    // Control work lost nothing: every ping answered, no probe-port frame lost in the queue,
    // the new call set up and unblocked both ways.
    assert_eq!(p.1, 0, "ng pings unanswered during the flood");
    assert_eq!(delta("af_xdp", "rx priority drops"), 0);
    for (dir, s) in [("A→B", &new_ab), ("B→A", &new_ba)] {
        assert!(
            s.sent >= 100 && s.distinct + 2 >= s.sent,
            "new call {dir}: {} of {} delivered",
            s.distinct,
            s.sent
        );
    }
    // The existing calls kept every packet, forwarded in XDP.
    for (id, ab, ba, xdp) in &reports {
        let n = u64::from(PACKETS);
        assert_eq!((ab.sent, ba.sent), (n, n));
        assert!(
            ab.distinct * 100 >= n * 99 && ba.distinct * 100 >= n * 99,
            "{id}: {} and {} of {n} delivered",
            ab.distinct,
            ba.distinct
        );
        assert!(
            *xdp + 4 >= 2 * n,
            "{id}: {xdp} of {} forwarded in XDP",
            2 * n
        );
    }
    // Memory stayed flat.
    assert!(
        rss_after < rss_before + 16 * 1024 * 1024,
        "the daemon grew from {rss_before} to {rss_after} bytes"
    );
}
