//! Media is delivered in the topologies operators run, with the daemon's default options and
//! calls set up over ng, and with nothing running XDP but the relay:
//! - a container's shape: the relay's interface is a veth whose peer is in a bridge on the
//!   host's side, two-armed and one-armed (both phones on one bridge);
//! - a veth whose peer has GRO on, and one whose peer runs XDP (a test rig's helper);
//! - the same with Kamailio's stock rtpengine module driving the relay;
//! - an egress MTU of 1280 with 1400-byte payloads, and fragmented arrivals, IPv4 and IPv6;
//! - an interface that goes down and up, is deleted and created again, and a neighbour whose
//!   MAC changes, mid-call;
//! - the host's sysctls are left as they were.
//!
//! Each test proves from the relay's counters which path carried the packets.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    scenario::{self, Bridged, OneRelay, Phone, Relay, StreamReport, query_figure, stream},
    testbed::Netns,
};
use mediaproxy_tests::{
    kamailio::{self, Kamailio},
    need_root,
};
use proxy_userspace::ng::bencode::{Dict, Value};

const SECONDS: u16 = 10;
const PACKETS: u16 = SECONDS * 50;

fn statistics(r: &Relay, ns: &Netns) -> Dict {
    let s = scenario::ng(&r.ng(ns).unwrap(), "statistics", &[]).unwrap();
    s.get("statistics")
        .and_then(Value::as_dict)
        .and_then(|s| s.get("mediaproxy"))
        .and_then(Value::as_dict)
        .unwrap()
        .clone()
}

fn xdp(stats: &Dict, counter: &str) -> u64 {
    stats
        .get("xdp")
        .and_then(Value::as_dict)
        .and_then(|x| x.get(counter))
        .and_then(Value::as_int)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or_else(|| panic!("no xdp counter {counter}"))
}

/// The `egress path` the daemon reports for an interface.
fn egress_path(stats: &Dict, ifname: &str) -> String {
    stats
        .get("interfaces")
        .and_then(Value::as_list)
        .into_iter()
        .flatten()
        .filter_map(Value::as_dict)
        .find(|d| d.get_str("name") == Some(ifname))
        .and_then(|d| d.get_str("egress path").map(str::to_owned))
        .unwrap_or_else(|| panic!("no interface {ifname} in {stats:?}"))
}

fn query(r: &Relay, ns: &Netns, call: &str) -> Dict {
    scenario::ng(
        &r.ng(ns).unwrap(),
        "query",
        &[("call-id", Value::str(call))],
    )
    .unwrap()
}

/// Both phones talk for `packets` packets of `payload` bytes; returns (A→B, B→A).
#[expect(clippy::too_many_arguments, reason = "the call's endpoints and shape")]
fn talk(
    a_ns: &Netns,
    b_ns: &Netns,
    a: SocketAddr,
    b: SocketAddr,
    a_to: SocketAddr,
    b_to: SocketAddr,
    packets: u16,
    payload: usize,
) -> (StreamReport, StreamReport) {
    let mut pa = Phone::bind(a_ns, a).unwrap();
    let mut pb = Phone::bind(b_ns, b).unwrap();
    pa.start_sized(a_to, a_to, 0xa, packets, payload);
    pb.start_sized(b_to, b_to, 0xb, packets, payload);
    wait_until(
        Duration::from_millis(u64::from(packets) * 20 + 3000),
        || {
            let (ab, ba) = (stream(&pa, &pb), stream(&pb, &pa));
            ab.sent == u64::from(packets)
                && ba.sent == u64::from(packets)
                && ab.distinct == ab.sent
                && ba.distinct == ba.sent
        },
    );
    pa.stop();
    pb.stop();
    (stream(&pa, &pb), stream(&pb, &pa))
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

/// The figures of one topology, for the closing note.
fn report(topology: &str, path: &str, ab: &StreamReport, ba: &StreamReport) {
    println!(
        "delivery | {topology} | {path} | A→B {}/{} | B→A {}/{}",
        ab.distinct, ab.sent, ba.distinct, ba.sent
    );
}

/// Asserts full delivery, and that the kernel, not userspace, carried all but the packets
/// held before the flip (one per direction: the first, sent by userspace).
fn assert_kernel_carried(q: &Dict, ab: &StreamReport, ba: &StreamReport, packets: u16) {
    let n = u64::from(packets);
    assert_eq!((ab.sent, ba.sent), (n, n), "the phones sent everything");
    assert_eq!(
        (ab.distinct, ba.distinct),
        (n, n),
        "every packet delivered, both ways: {ab:?} {ba:?}"
    );
    assert_eq!((ab.wrong_source, ba.wrong_source), (0, 0));
    for tag in ["tag-a", "tag-b"] {
        let kernel = query_figure(q, tag, "packets xdp");
        let user = query_figure(q, tag, "sent by userspace");
        assert!(
            kernel + 2 >= n && user <= 2,
            "from {tag}: the kernel forwarded {kernel} of {n}, userspace sent {user}"
        );
    }
}

#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn container(tag: &str, one_armed: bool) {
    need_root();
    let t = Bridged::build(tag, one_armed).unwrap();
    let relay = Relay::start(&t.relay, &t.interfaces(false), &[], false, XdpMode::Default).unwrap();
    let (a, b) = t.phones(false);
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), tag, a, b, t.direction()).unwrap();
    let (ab, ba) = talk(&t.a, &t.b, a, b, a_to, b_to, PACKETS, 160);
    let q = query(&relay, &t.relay, tag);
    let s = statistics(&relay, &t.relay);
    let topology = if one_armed {
        "one-armed: relay and both phones on one bridge"
    } else {
        "two-armed: each side a veth into its own bridge"
    };
    report(topology, &egress_path(&s, "r0"), &ab, &ba);
    assert_kernel_carried(&q, &ab, &ba, PACKETS);
    // The veth's peer runs neither XDP nor GRO: native frames would be dropped there, so the
    // TC program sent them, and native XDP sent none.
    assert_eq!(egress_path(&s, "r0"), "TC (skb path)");
    let n = u64::from(PACKETS);
    assert!(
        xdp(&s, "tc_fwd") >= 2 * n - 2,
        "TC forwarded {}",
        xdp(&s, "tc_fwd")
    );
    assert_eq!(xdp(&s, "fwd_tx") + xdp(&s, "fwd_redirect"), 0);
}

#[test]
fn container_two_armed() {
    container("dc2", false);
}

#[test]
fn container_one_armed() {
    container("dc1", true);
}

/// A veth whose peer has GRO on advertises `NDO_XMIT`: native redirects are delivered there,
/// `XDP_TX` frames are not (the peer's receive is scheduled for them only when it runs XDP),
/// which is why the relay never uses `XDP_TX` on a veth.
#[test]
fn veth_peer_with_gro() {
    need_root();
    let t = OneRelay::build_plain("dgro").unwrap();
    for (ns, ifname) in [(&t.a, "a0"), (&t.b, "b0")] {
        ns.exec(&["ethtool", "-K", ifname, "gro", "on"]).unwrap();
    }
    native_redirect(&t, "gro", "veth, peer with GRO on");
}

#[test]
fn veth_peer_with_xdp() {
    need_root();
    let t = OneRelay::build("dxdp", XdpMode::Driver).unwrap();
    native_redirect(&t, "xdp", "veth, peer runs XDP");
}

/// A call through `t` whose egress veths take native frames: the kernel carries it, by a
/// native redirect, and nothing goes the TC way.
#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn native_redirect(t: &OneRelay, call: &str, label: &str) {
    let relay = t.start_relay(XdpMode::Default).unwrap();
    let (a, b): (SocketAddr, SocketAddr) = (
        "10.0.1.2:4000".parse().unwrap(),
        "10.0.2.2:5000".parse().unwrap(),
    );
    let (a_to, b_to) = scenario::call(
        &relay.ng(&t.relay).unwrap(),
        call,
        a,
        b,
        Some(("internal", "external")),
    )
    .unwrap();
    let (ab, ba) = talk(&t.a, &t.b, a, b, a_to, b_to, PACKETS, 160);
    let q = query(&relay, &t.relay, call);
    let s = statistics(&relay, &t.relay);
    report(label, &egress_path(&s, "r1"), &ab, &ba);
    assert_kernel_carried(&q, &ab, &ba, PACKETS);
    assert_eq!(egress_path(&s, "r1"), "native XDP");
    assert!(xdp(&s, "fwd_redirect") >= 2 * u64::from(PACKETS) - 2);
    assert_eq!(xdp(&s, "tc_fwd"), 0);
}

/// `--xdp-mode native`, asked for explicitly on a container's veth: obeyed (native XDP
/// attached), and the flows still delivered, through TC.
#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn explicit_native_mode_on_a_container_still_delivers() {
    need_root();
    let t = Bridged::build("dnat", false).unwrap();
    let relay = Relay::start(&t.relay, &t.interfaces(false), &[], false, XdpMode::Driver).unwrap();
    let (a, b) = t.phones(false);
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), "n", a, b, t.direction()).unwrap();
    let (ab, ba) = talk(&t.a, &t.b, a, b, a_to, b_to, 100, 160);
    let q = query(&relay, &t.relay, "n");
    let s = statistics(&relay, &t.relay);
    assert_kernel_carried(&q, &ab, &ba, 100);
    assert!(
        relay.log_text().contains("native XDP as asked"),
        "{}",
        relay.log_text()
    );
    assert!(
        relay.log_text().contains("does not take native XDP frames"),
        "the log says which path those flows take"
    );
    assert!(xdp(&s, "tc_fwd") >= 198);
}

/// Kamailio 5.6 with its stock rtpengine module, on the container's bridges.
#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn container_with_kamailio() {
    need_root();
    let t = Bridged::build("dkam", false).unwrap();
    let relay = Relay::start(&t.relay, &t.interfaces(false), &[], false, XdpMode::Default).unwrap();
    let kam = Kamailio::start(
        &t.relay,
        &kamailio::config(
            &["10.0.1.1", "10.0.2.1"],
            "direction=internal direction=external",
        ),
    )
    .unwrap();
    let (a, b) = t.phones(false);
    let c = kamailio::sip_call(
        &t.a,
        &t.b,
        "10.0.1.2:5061".parse().unwrap(),
        "10.0.2.2:5062".parse().unwrap(),
        "10.0.1.1:5060".parse().unwrap(),
        a,
        b,
        "kam-bridge@test",
        &relay,
        &kam,
    )
    .unwrap();
    let (ab, ba) = talk(&t.a, &t.b, a, b, c.a_sends_to, c.b_sends_to, PACKETS, 160);
    let q = query(&relay, &t.relay, "kam-bridge@test");
    let s = statistics(&relay, &t.relay);
    report(
        "two-armed bridge, Kamailio",
        &egress_path(&s, "r0"),
        &ab,
        &ba,
    );
    let n = u64::from(PACKETS);
    assert_eq!((ab.distinct, ba.distinct), (n, n), "{ab:?} {ba:?}");
    for tag in ["alice-tag", "bob-tag"] {
        assert!(query_figure(&q, tag, "packets xdp") + 2 >= n);
    }
    assert!(xdp(&s, "tc_fwd") >= 2 * n - 2);
}

/// The B side's network has an MTU of 1280; 1400-byte payloads go both ways. A→B is larger
/// than the relay's egress MTU: the kernel fragments it (IPv4), or the relay does as the
/// source (IPv6). B→A arrives fragmented (B's stack fragments it): the kernel reassembles it,
/// the fallback socket hands it to userspace, which sends it on whole.
#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn mtu(tag: &str, v6: bool) {
    need_root();
    let t = Bridged::build(tag, false).unwrap();
    for (ns, ifname) in [
        (&t.relay, "r1"),
        (&t.host, "hr1"),
        (&t.host, "br1"),
        (&t.b, "b0"),
        (&t.host, "hb0"),
    ] {
        ns.ip(&["link", "set", ifname, "mtu", "1280"]).unwrap();
    }
    let relay = Relay::start(&t.relay, &t.interfaces(v6), &[], false, XdpMode::Default).unwrap();
    let (a, b) = t.phones(v6);
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), tag, a, b, t.direction()).unwrap();
    let packets = 100;
    let (ab, ba) = talk(&t.a, &t.b, a, b, a_to, b_to, packets, 1400);
    let s = statistics(&relay, &t.relay);
    let family = if v6 { "IPv6" } else { "IPv4" };
    println!(
        "mtu {family}: A→B {}/{} (largest {} bytes), B→A {}/{} (largest {} bytes); punted too big {}, fallback datagrams {}, sent via kernel {}",
        ab.distinct,
        ab.sent,
        ab.largest,
        ba.distinct,
        ba.sent,
        ba.largest,
        xdp(&s, "punt_too_big") + xdp(&s, "tc_to_userspace"),
        s.get("fallback datagrams")
            .and_then(Value::as_int)
            .unwrap_or(-1),
        s.get("sent via kernel")
            .and_then(Value::as_int)
            .unwrap_or(-1),
    );
    let n = u64::from(packets);
    assert_eq!((ab.distinct, ba.distinct), (n, n), "{ab:?} {ba:?}");
    assert_eq!(
        (ab.largest, ba.largest),
        (1400, 1400),
        "payloads arrived whole"
    );
    let fallback = s
        .get("fallback datagrams")
        .and_then(Value::as_int)
        .unwrap_or(0);
    assert!(
        fallback >= i64::from(packets) - 1,
        "B's fragmented datagrams reached userspace: {fallback}"
    );
}

#[test]
fn mtu_and_fragments_ipv4() {
    mtu("dm4", false);
}

#[test]
fn mtu_and_fragments_ipv6() {
    mtu("dm6", true);
}

/// The longest silence at B's phone that starts at or after `from` and before `to`.
fn first_after(arrivals: &[Instant], t: Instant) -> Option<Duration> {
    arrivals
        .iter()
        .find(|&&x| x >= t)
        .map(|&x| x.saturating_duration_since(t))
}

/// Mid-call: the relay's B-facing interface goes down and up; then it is deleted and created
/// again with the same name (a new ifindex); then phone B's MAC changes. Media resumes each
/// time.
#[test]
fn interfaces_that_change() {
    need_root();
    let t = Bridged::build("dflap", false).unwrap();
    t.b.sysctl("net.ipv4.conf.b0.arp_notify=1").unwrap();
    let relay = Relay::start(&t.relay, &t.interfaces(false), &[], false, XdpMode::Default).unwrap();
    let (a, b) = t.phones(false);
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), "flap", a, b, t.direction()).unwrap();
    let packets: u16 = 50 * 14;
    let mut pa = Phone::bind(&t.a, a).unwrap();
    let mut pb = Phone::bind(&t.b, b).unwrap();
    pa.start(a_to, a_to, 0xa, packets);
    pb.start(b_to, b_to, 0xb, packets);
    let flowing = |p: &Phone| {
        let n = p.received().arrivals.len();
        wait_until(Duration::from_secs(3), || {
            p.received().arrivals.len() >= n + 10
        })
    };
    assert!(
        flowing(&pb) && flowing(&pa),
        "media flows before the changes"
    );

    // Down for a second, then up.
    t.relay.ip(&["link", "set", "r1", "down"]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    t.relay.ip(&["link", "set", "r1", "up"]).unwrap();
    let up = Instant::now();
    assert!(flowing(&pb) && flowing(&pa), "media resumes after down/up");

    // Deleted, then created again under the same name (what a container restart does).
    t.relay.ip(&["link", "del", "r1"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    t.plug(
        &t.relay,
        "r1",
        "hr1",
        "br1",
        &["10.0.2.1/24", "fd00:2::1/64"],
    )
    .unwrap();
    let recreated = Instant::now();
    assert!(
        flowing(&pb) && flowing(&pa),
        "media resumes after re-creation"
    );

    // Phone B's MAC changes; it announces it (gratuitous ARP, as on a failover).
    t.b.ip(&["link", "set", "b0", "address", "02:00:00:0b:0b:0b"])
        .unwrap();
    let moved = Instant::now();
    assert!(flowing(&pb), "media reaches B at its new MAC");

    // After all that, the kernel carries the media again, not userspace: over a second, TC
    // forwarded both directions' packets and userspace sent none of them.
    let s0 = statistics(&relay, &t.relay);
    std::thread::sleep(Duration::from_secs(1));
    let s1 = statistics(&relay, &t.relay);
    let delta = |k: &str| xdp(&s1, k) - xdp(&s0, k);
    let sent = |s: &Dict, k: &str| s.get(k).and_then(Value::as_int).unwrap_or(0);
    let user = sent(&s1, "sent via kernel") + sent(&s1, "sent over af_xdp")
        - sent(&s0, "sent via kernel")
        - sent(&s0, "sent over af_xdp");
    assert!(
        delta("tc_fwd") >= 90,
        "TC forwarded {} in a second",
        delta("tc_fwd")
    );
    assert!(user <= 2, "userspace sent {user} packets in that second");

    pa.stop();
    pb.stop();
    let at_b = pb.received().arrivals;
    let at_a = pa.received().arrivals;
    let gap = |v: &[Instant], t| first_after(v, t).expect("media after the change");
    println!(
        "flap: after up, first packet at B {} ms, at A {} ms; after re-creation at B {} ms, at A {} ms; after B's MAC change at B {} ms",
        gap(&at_b, up).as_millis(),
        gap(&at_a, up).as_millis(),
        gap(&at_b, recreated).as_millis(),
        gap(&at_a, recreated).as_millis(),
        gap(&at_b, moved).as_millis(),
    );
    for (what, v, at) in [
        ("B after up", &at_b, up),
        ("A after up", &at_a, up),
        ("B after re-creation", &at_b, recreated),
        ("A after re-creation", &at_a, recreated),
        ("B after its MAC changed", &at_b, moved),
    ] {
        assert!(
            gap(v, at) <= Duration::from_secs(1),
            "{what}: {:?}",
            gap(v, at)
        );
    }
    let s = statistics(&relay, &t.relay);
    assert!(s.get("interfaces reattached").and_then(Value::as_int) >= Some(1));
}

/// Every forwarding-related sysctl of the relay's namespace.
fn sysctls(ns: &Netns) -> Vec<(String, String)> {
    let out = ns
        .exec(&[
            "sh",
            "-c",
            "for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/forwarding /proc/sys/net/ipv4/conf/*/rp_filter /proc/sys/net/ipv6/conf/*/forwarding /proc/sys/net/ipv6/conf/*/accept_ra; do echo \"$f $(cat $f)\"; done",
        ])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The relay's view of its neighbours, `ip neigh` style, without the states that move on
/// their own (REACHABLE/STALE/DELAY...): what the host's operator configured.
fn static_neighbours(ns: &Netns) -> String {
    let out = ns.ip(&["neigh", "show", "nud", "permanent"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host's sysctls, and its static neighbour entries, are as they were while the relay
/// runs (long enough for its periodic neighbour re-validation) and after it stopped.
#[test]
fn the_hosts_sysctls_and_static_neighbours_are_left_alone() {
    need_root();
    let t = Bridged::build("dsys", false).unwrap();
    let mac = String::from_utf8_lossy(
        &t.b.exec(&["cat", "/sys/class/net/b0/address"])
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    t.relay
        .ip(&[
            "neigh",
            "replace",
            "10.0.2.2",
            "lladdr",
            &mac,
            "dev",
            "r1",
            "nud",
            "permanent",
        ])
        .unwrap();
    let before = sysctls(&t.relay);
    let neigh_before = static_neighbours(&t.relay);
    assert!(before.iter().any(|(k, _)| k.ends_with("r0/forwarding")));
    assert!(neigh_before.contains("10.0.2.2"), "{neigh_before}");
    let relay = Relay::start(&t.relay, &t.interfaces(false), &[], false, XdpMode::Default).unwrap();
    let (a, b) = t.phones(false);
    let (a_to, b_to) =
        scenario::call(&relay.ng(&t.relay).unwrap(), "sys", a, b, t.direction()).unwrap();
    // Past the daemon's 5 s neighbour re-validation.
    let (ab, ba) = talk(&t.a, &t.b, a, b, a_to, b_to, 350, 160);
    assert_eq!((ab.distinct, ba.distinct), (350, 350));
    assert_eq!(sysctls(&t.relay), before, "sysctls while the relay runs");
    assert_eq!(
        static_neighbours(&t.relay),
        neigh_before,
        "static neighbours while it runs"
    );
    drop(relay);
    assert_eq!(sysctls(&t.relay), before, "sysctls after it stopped");
    assert_eq!(
        static_neighbours(&t.relay),
        neigh_before,
        "static neighbours after it stopped"
    );
}
