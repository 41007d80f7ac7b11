//! End to end on veth/netns, in native and in SKB mode: phone A — relay — phone B.
//!
//! A flow in HOLD delivers its packets to the `AF_XDP` socket in userspace; after `set_forward`
//! the same stream reaches B with valid checksums and the right addresses, and userspace
//! receives none of its packets (the counters prove it); a frame transmitted over `AF_XDP`
//! from userspace arrives at B. Everything is torn down by guards, even on failure.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use mediaproxy_lab::{
    programs::PassProgram,
    rtp::RtpHeader,
    testbed::{Netns, link, udp_mib},
};
use mediaproxy_tests::need_root;
use proxy_common::{Endpoint, FlowKey};
use proxy_userspace::{
    dataplane::{AttachMode, Dataplane, DataplaneConfig, Egress, FlowSpec},
    frame::{FrameBuilder, UdpFrame},
    io::{self, Packet, TxFrame},
    netlink::interface_mac,
    nexthop::Resolver,
    xsk::{XskConfig, XskSocket},
};

struct Topology {
    a: Netns,
    relay: Netns,
    b: Netns,
}

fn topology(tag: &str) -> Topology {
    let a = Netns::new(&format!("{tag}a")).unwrap();
    let relay = Netns::new(&format!("{tag}r")).unwrap();
    let b = Netns::new(&format!("{tag}b")).unwrap();
    link(&a, "a0", &["10.0.1.2/24"], &relay, "r0", &["10.0.1.1/24"]).unwrap();
    link(&relay, "r1", &["10.0.2.1/24"], &b, "b0", &["10.0.2.2/24"]).unwrap();
    Topology { a, relay, b }
}

fn sock(ns: &Netns, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = ns.enter(move || UdpSocket::bind(addr)).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// Receives until `n` packets came or the timeout ran out; returns (payload, source) pairs.
fn recv_n(s: &UdpSocket, n: usize, within: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < n && Instant::now() < deadline {
        if let Ok((len, from)) = s.recv_from(&mut buf) {
            got.push((buf[..len].to_vec(), from));
        }
    }
    got
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario, read top to bottom as its steps happen"
)]
fn run(mode: XdpMode, tag: &str) {
    need_root();
    let attach = if mode == XdpMode::Skb {
        AttachMode::Skb
    } else {
        AttachMode::Native
    };
    let t = topology(tag);
    // Native redirect into a veth only delivers if the peer runs XDP too.
    let _pass_a =
        t.a.enter(move || PassProgram::attach("a0", mode))
            .unwrap()
            .unwrap();
    let _pass_b =
        t.b.enter(move || PassProgram::attach("b0", mode))
            .unwrap()
            .unwrap();

    let (mut dp, io, r1) = t
        .relay
        .enter(move || {
            let mut dp = Dataplane::load(&DataplaneConfig::default()).unwrap();
            let r0 = dp.attach("r0", attach).unwrap();
            let r1 = dp.attach("r1", attach).unwrap();
            let mut socks = Vec::new();
            for ifindex in [r0, r1] {
                let s = XskSocket::bind(ifindex, 0, XskConfig::default()).unwrap();
                dp.register_socket(ifindex, 0, &s).unwrap();
                socks.push(s);
            }
            (dp, io::spawn(socks, Vec::new(), 0).unwrap(), r1)
        })
        .unwrap();

    let phone_a = sock(&t.a, "10.0.1.2:4000");
    let phone_b = sock(&t.b, "10.0.2.2:5000");
    let relay_a = Endpoint::v4([10, 0, 1, 1], 30000);
    let relay_b = Endpoint::v4([10, 0, 2, 1], 30002);
    let ep_a = Endpoint::v4([10, 0, 1, 2], 4000);
    let ep_b = Endpoint::v4([10, 0, 2, 2], 5000);
    dp.add_flow(FlowKey::new(relay_a), &FlowSpec::hold(), None)
        .unwrap();
    dp.add_flow(FlowKey::new(relay_b), &FlowSpec::hold(), None)
        .unwrap();

    // HOLD: every packet reaches userspace, none reaches B.
    for n in 0..20 {
        phone_a
            .send_to(&RtpHeader::g711_packet(0xa, n), "10.0.1.1:30000")
            .unwrap();
    }
    let mut punted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while punted.len() < 20 && Instant::now() < deadline {
        if let Ok(p) = io.rx.recv_timeout(Duration::from_millis(100)) {
            let Packet::Frame(frame) = p.packet else {
                continue;
            };
            let f = UdpFrame::parse(&frame).unwrap();
            if f.dst == relay_a {
                punted.push(f);
                let h = RtpHeader::parse(f.payload(&frame)).unwrap();
                assert_eq!(h.seq as usize, punted.len() - 1, "punted in order");
            }
        }
    }
    assert_eq!(punted.len(), 20, "HOLD packets delivered to AF_XDP");
    assert!(punted.iter().all(|f| f.src == ep_a));
    assert!(
        recv_n(&phone_b, 1, Duration::from_millis(300)).is_empty(),
        "B got media while HOLD"
    );
    let held = dp.flow_stats(FlowKey::new(relay_a)).unwrap();
    assert_eq!((held.punt_packets, held.fwd_packets), (20, 0));
    assert_eq!(held.punt_bytes, 20 * 172);

    // FORWARD both ways. The relay has not talked to either phone yet, so resolve their
    // neighbours first: until then XDP punts for the kernel's ARP (fixture-tested), and this
    // test is about the fast path.
    for (peer_ns, peer_if, ip, relay_if) in [
        (&t.b, "b0", "10.0.2.2", "r1"),
        (&t.a, "a0", "10.0.1.2", "r0"),
    ] {
        let mac = peer_ns
            .enter(move || interface_mac(peer_if).unwrap())
            .unwrap();
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        t.relay
            .ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac,
                "dev",
                relay_if,
                "nud",
                "reachable",
            ])
            .unwrap();
    }
    // The next hops, as the daemon resolves them; the phones' veth ends run an XDP program,
    // so native frames are delivered there.
    let egress = |from: Endpoint, to: Endpoint| -> Egress {
        let hop = t
            .relay
            .enter(move || {
                Resolver::new()
                    .unwrap()
                    .resolve(from.ip(), to.ip().unwrap())
                    .unwrap()
                    .1
            })
            .unwrap()
            .ready()
            .expect("neighbour resolved");
        Egress {
            hop,
            native: true,
            redirect_only: true,
        }
    };
    let (to_b, to_a) = (egress(relay_b, ep_b), egress(relay_a, ep_a));
    // The DEVMAP takes ifindexes in the namespace of the thread that writes it.
    t.relay
        .enter(|| {
            dp.set_forward(FlowKey::new(relay_a), Some(ep_a), relay_b, ep_b, Some(to_b))
                .unwrap();
            dp.set_forward(FlowKey::new(relay_b), Some(ep_b), relay_a, ep_a, Some(to_a))
                .unwrap();
        })
        .unwrap();
    let rx_before = io.stats().rx_frames;
    let csum_errors_before = udp_mib(&t.b, "InCsumErrors").unwrap();
    let before_fwd = dp.global_counters().unwrap();
    for n in 20..120 {
        phone_a
            .send_to(&RtpHeader::g711_packet(0xa, n), "10.0.1.1:30000")
            .unwrap();
    }
    let at_b = recv_n(&phone_b, 100, Duration::from_secs(3));
    assert_eq!(
        at_b.len(),
        100,
        "B received every forwarded packet; XDP counters: {:?}; next hop {:?}",
        dp.global_counters().unwrap().delta(&before_fwd),
        dp.flow_egress(FlowKey::new(relay_a))
    );
    for (i, (payload, from)) in at_b.iter().enumerate() {
        assert_eq!(
            *from,
            "10.0.2.1:30002".parse::<SocketAddr>().unwrap(),
            "source rewritten to the relay"
        );
        assert_eq!(RtpHeader::parse(payload).unwrap().seq as usize, 20 + i);
    }
    assert_eq!(
        udp_mib(&t.b, "InCsumErrors").unwrap(),
        csum_errors_before,
        "B counted checksum errors"
    );
    for n in 0..50 {
        phone_b
            .send_to(&RtpHeader::g711_packet(0xb, n), "10.0.2.1:30002")
            .unwrap();
    }
    let at_a = recv_n(&phone_a, 50, Duration::from_secs(3));
    assert_eq!(at_a.len(), 50, "A received every packet from B");
    assert!(
        at_a.iter()
            .all(|(_, from)| *from == "10.0.1.1:30000".parse::<SocketAddr>().unwrap())
    );

    let a_to_b = dp.flow_stats(FlowKey::new(relay_a)).unwrap();
    let b_to_a = dp.flow_stats(FlowKey::new(relay_b)).unwrap();
    assert_eq!(
        (a_to_b.fwd_packets, a_to_b.punt_packets),
        (100, 20),
        "A→B: XDP forwarded, nothing more punted"
    );
    assert_eq!((b_to_a.fwd_packets, b_to_a.punt_packets), (50, 0));
    assert_eq!(
        io.rx
            .try_iter()
            .filter(|p| match &p.packet {
                Packet::Frame(frame) =>
                    UdpFrame::parse(frame).is_ok_and(|f| f.dst == relay_a || f.dst == relay_b),
                Packet::Datagram { .. } => true,
            })
            .count(),
        0,
        "userspace saw a forwarded packet"
    );
    let rx_after = io.stats().rx_frames;
    // Only IPv6 neighbour discovery and the like may have been punted... and they are not:
    // they are not UDP to a flow. So the socket received nothing at all.
    assert_eq!(rx_after, rx_before, "AF_XDP frames received after the flip");

    // AF_XDP TX: a frame built in userspace, sent from the relay to B.
    let hop = t
        .relay
        .enter(|| {
            Resolver::new()
                .unwrap()
                .resolve(None, "10.0.2.2".parse().unwrap())
                .unwrap()
                .1
        })
        .unwrap();
    let hop = hop
        .ready()
        .unwrap_or_else(|| panic!("B's neighbour should be known after forwarding: {hop:?}"));
    assert_eq!(hop.ifindex, r1);
    let frame = FrameBuilder::udp(relay_b, ep_b)
        .macs(hop.src_mac, hop.dst_mac)
        .payload(b"sent over AF_XDP")
        .build();
    let tx_before = io.stats().tx_frames;
    io.send(TxFrame {
        ifindex: hop.ifindex,
        frame,
    });
    let got = recv_n(&phone_b, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "frame from AF_XDP TX arrived at B");
    assert_eq!(got[0].0, b"sent over AF_XDP");
    // The I/O thread counts after the kernel took the frame; B may be faster.
    let deadline = Instant::now() + Duration::from_secs(1);
    while io.stats().tx_frames < tx_before + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(io.stats().tx_frames, tx_before + 1);

    dp.detach_all().unwrap();
    let links = t.relay.ip(&["link", "show"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("xdp"),
        "XDP still attached after detach"
    );
}

#[test]
fn native_mode() {
    run(XdpMode::Driver, "e2n");
}

#[test]
fn skb_mode() {
    run(XdpMode::Skb, "e2s");
}
