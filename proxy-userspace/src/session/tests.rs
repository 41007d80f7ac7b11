//! Host tests of the session engine: each rule on its own, then two engines in series with a
//! NAT between them, simulated packet by packet, with probing off (the deadlock) and on.

use std::collections::HashMap;

use proxy_common::probe::{Kind, ProbeMessage, Trust};

use super::*;

fn ep(a: [u8; 4], p: u16) -> Endpoint {
    Endpoint::v4(a, p)
}

const PHONE_A: Endpoint = Endpoint::v4([10, 0, 1, 2], 4000);
const PHONE_B: Endpoint = Endpoint::v4([10, 0, 2, 2], 5000);
const LOCAL_A: Endpoint = Endpoint::v4([10, 0, 1, 1], 30000);
const LOCAL_B: Endpoint = Endpoint::v4([10, 0, 2, 1], 30002);
/// Where the next relay's ACKs come from in the unit tests.
const NEXT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(192, 0, 2, 99),
    7999,
));

fn drain(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event { event, .. } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn flows(out: &[Output]) -> Vec<(Endpoint, FlowSpec)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Flow { key, spec } => Some((*key, *spec)),
            _ => None,
        })
        .collect()
}

fn sends(out: &[Output]) -> Vec<(Endpoint, Endpoint, Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::SendMedia { from, to, payload } => Some((*from, *to, payload.clone())),
            _ => None,
        })
        .collect()
}

/// Holding toward a silent side (`--far-side confirmed`), without probes: the mechanics of
/// HOLD on their own.
fn holding() -> EngineConfig {
    EngineConfig {
        far_side: FarSide::Confirmed,
        probing: false,
        ..EngineConfig::default()
    }
}

/// Holding toward a silent side, with probing.
fn confirmed() -> EngineConfig {
    EngineConfig {
        far_side: FarSide::Confirmed,
        ..EngineConfig::default()
    }
}

fn one_relay(cfg: EngineConfig) -> (Engine, StreamId) {
    let mut e = Engine::new(cfg, 1);
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(PHONE_A), Some(PHONE_B)];
    let id = e.add_stream(sc).unwrap();
    (e, id)
}

/// A signed probe from `sender` for our endpoint `target`, to this relay (192.0.2.10).
fn probe_to(target: Endpoint, sender: Endpoint, nonce: u64, timestamp_ms: u64) -> ProbeMessage {
    ProbeMessage {
        kind: Kind::Probe,
        nonce,
        timestamp_ms,
        session: 0,
        target,
        sender,
        receiver: Endpoint::v4([192, 0, 2, 10], 7999),
        unsigned: false,
    }
}

#[test]
fn new_streams_hold_both_ways() {
    let (mut e, _) = one_relay(EngineConfig::default());
    let f = flows(&drain(&mut e));
    assert_eq!(f.len(), 2);
    assert!(
        f.iter()
            .all(|(_, s)| s.state == FlowState::Hold && s.peer.is_none())
    );
}

#[test]
fn latching_both_sides_flips_both_flows_and_releases_the_held_packet() {
    let (mut e, id) = one_relay(holding());
    drain(&mut e);
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    let out = drain(&mut e);
    assert_eq!(
        events(&out),
        vec![Event::Latched {
            side: Side::A,
            peer: PHONE_A,
            rank: Rank::Signalled,
        }]
    );
    assert!(sends(&out).is_empty(), "nowhere to send before B speaks");
    let f = flows(&out);
    assert_eq!(
        f,
        vec![(
            LOCAL_A,
            FlowSpec {
                peer: Some(PHONE_A),
                // No learning window is open (no signalling since the stream was made): a
                // wrong source is dropped in the kernel.
                mismatch: MismatchPolicy::Drop,
                // The kernel gives the signalled endpoint's punts priority.
                hint: Some(PHONE_A),
                ..FlowSpec::hold()
            }
        )]
    );

    e.handle_media(
        LOCAL_B,
        PHONE_B,
        b"b1",
        None,
        t0 + Duration::from_millis(30),
    );
    let out = drain(&mut e);
    // A's held packet goes to B from the relay's B-side port, B's packet to A.
    assert_eq!(
        sends(&out),
        vec![
            (LOCAL_B, PHONE_B, b"a1".to_vec()),
            (LOCAL_A, PHONE_A, b"b1".to_vec())
        ]
    );
    let f: HashMap<_, _> = flows(&out).into_iter().collect();
    let a = f[&LOCAL_A];
    assert_eq!(
        (a.state, a.peer, a.out_src, a.out_dst),
        (FlowState::Forward, Some(PHONE_A), LOCAL_B, PHONE_B)
    );
    let b = f[&LOCAL_B];
    assert_eq!(
        (b.state, b.peer, b.out_src, b.out_dst),
        (FlowState::Forward, Some(PHONE_B), LOCAL_A, PHONE_A)
    );
    // The blocking timer was disarmed by B's packet: nothing is suspected later.
    e.handle_timeout(t0 + Duration::from_secs(5));
    assert!(events(&drain(&mut e)).is_empty());
    let st = e.status(id).unwrap();
    assert!(
        st.iter()
            .all(|s| s.state == FlowState::Forward && s.blocking_suspected.is_none())
    );
}

#[test]
fn silence_from_the_far_side_is_recorded_as_suspected_blocking() {
    let (mut e, id) = one_relay(holding());
    drain(&mut e);
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_millis(200)));
    e.handle_timeout(t0 + Duration::from_millis(199));
    drain(&mut e);
    e.handle_timeout(t0 + Duration::from_millis(200));
    let ev = events(&drain(&mut e));
    assert_eq!(
        ev,
        vec![Event::BlockingSuspected {
            near: Side::A,
            after: Duration::from_millis(200)
        }]
    );
    assert_eq!(
        e.status(id).unwrap()[0].blocking_suspected,
        Some(Duration::from_millis(200))
    );
    // No next relay: no probe. The call works as soon as B speaks.
    e.handle_media(LOCAL_B, PHONE_B, b"b1", None, t0 + Duration::from_secs(3));
    let out = drain(&mut e);
    assert_eq!(sends(&out).len(), 2);
}

#[test]
fn a_spoofed_source_neither_moves_the_latch_nor_gets_forwarded() {
    let (mut e, id) = one_relay(EngineConfig::default());
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a", None, t0);
    e.handle_media(LOCAL_B, PHONE_B, b"b", None, t0);
    drain(&mut e);
    let spoof = ep([10, 0, 1, 66], 4000);
    // The kernel forwarded A's packets a moment ago: A is not silent.
    e.handle_media(
        LOCAL_A,
        spoof,
        b"x",
        Some(t0 + Duration::from_secs(9)),
        t0 + Duration::from_secs(10),
    );
    assert!(drain(&mut e).is_empty());
    let st = e.status(id).unwrap();
    assert_eq!(st[0].latched, Some(PHONE_A));
    assert_eq!(st[0].counters.rejected, 1);
}

#[test]
fn silence_alone_never_moves_a_latch() {
    let (mut e, id) = one_relay(EngineConfig::default());
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a", None, t0);
    e.handle_media(LOCAL_B, PHONE_B, b"b", None, t0);
    drain(&mut e);
    // Phone A on hold for a minute; an attacker sprays its port.
    for (i, from) in [ep([10, 0, 1, 2], 4444), ep([203, 0, 113, 5], 4000)]
        .into_iter()
        .enumerate()
    {
        e.handle_media(
            LOCAL_A,
            from,
            b"x",
            None,
            t0 + Duration::from_secs(60 + i as u64),
        );
    }
    let out = drain(&mut e);
    assert!(sends(&out).is_empty(), "nothing from the sprayer goes on");
    assert_eq!(e.status(id).unwrap()[0].latched, Some(PHONE_A));
    assert_eq!(e.status(id).unwrap()[0].counters.rejected, 2);
}

#[test]
fn with_the_operator_option_a_new_source_after_silence_relatches() {
    let (mut e, id) = one_relay(EngineConfig {
        relatch_after: Some(Duration::from_secs(2)),
        ..EngineConfig::default()
    });
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a", None, t0);
    e.handle_media(LOCAL_B, PHONE_B, b"b", None, t0);
    drain(&mut e);
    let rebound = ep([10, 0, 1, 2], 4444); // NAT rebinding
    e.handle_media(
        LOCAL_A,
        rebound,
        b"a2",
        Some(t0 + Duration::from_secs(1)),
        t0 + Duration::from_secs(4),
    );
    let out = drain(&mut e);
    assert!(events(&out).contains(&Event::Relatched {
        side: Side::A,
        old: PHONE_A,
        new: rebound
    }));
    assert_eq!(sends(&out), vec![(LOCAL_B, PHONE_B, b"a2".to_vec())]);
    let f: HashMap<_, _> = flows(&out).into_iter().collect();
    assert_eq!(
        f[&LOCAL_A].peer,
        Some(rebound),
        "kernel accepts the new source"
    );
    assert_eq!(
        f[&LOCAL_B].out_dst, rebound,
        "kernel sends toward the new source"
    );
    assert_eq!(e.status(id).unwrap()[0].latched, Some(rebound));
}

#[test]
fn strict_source_drops_in_the_kernel_and_never_relatches() {
    let mut e = Engine::new(
        EngineConfig {
            relatch_after: Some(Duration::from_secs(2)),
            ..EngineConfig::default()
        },
        1,
    );
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(PHONE_A), Some(PHONE_B)];
    sc.strict_source = true;
    let id = e.add_stream(sc).unwrap();
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a", None, t0);
    e.handle_media(LOCAL_B, PHONE_B, b"b", None, t0);
    let f = flows(&drain(&mut e));
    assert!(f.iter().all(|(_, s)| s.mismatch == MismatchPolicy::Drop));
    e.handle_media(
        LOCAL_A,
        ep([1, 2, 3, 4], 5),
        b"x",
        None,
        t0 + Duration::from_mins(1),
    );
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.status(id).unwrap()[0].latched, Some(PHONE_A));
}

#[test]
fn the_held_buffer_is_bounded_and_counts_what_it_drops() {
    let (mut e, id) = one_relay(EngineConfig {
        held_capacity: 4,
        ..holding()
    });
    let t0 = Instant::now();
    for i in 0..10u8 {
        e.handle_media(
            LOCAL_A,
            PHONE_A,
            &[i],
            None,
            t0 + Duration::from_millis(u64::from(i) * 20),
        );
    }
    let st = e.status(id).unwrap();
    assert_eq!(
        (
            st[0].held,
            st[0].counters.held_dropped,
            st[0].counters.packets
        ),
        (4, 6, 10)
    );
    drain(&mut e);
    e.handle_media(
        LOCAL_B,
        PHONE_B,
        b"b",
        None,
        t0 + Duration::from_millis(300),
    );
    let s = sends(&drain(&mut e));
    assert_eq!(
        s.iter().map(|(_, _, p)| p.clone()).collect::<Vec<_>>()[..4],
        [vec![6], vec![7], vec![8], vec![9]]
    );
}

#[test]
fn asymmetric_streams_forward_to_the_signalled_address_at_once() {
    let mut e = Engine::new(EngineConfig::default(), 1);
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(PHONE_A), Some(PHONE_B)];
    sc.latching = [Latching::Asymmetric; 2];
    e.add_stream(sc).unwrap();
    let f = flows(&drain(&mut e));
    assert!(
        f.iter()
            .all(|(_, s)| s.state == FlowState::Forward && s.peer.is_none())
    );
}

fn two_sided_with_next_relay() -> (Engine, StreamId, SocketAddr, Endpoint) {
    let mut e = Engine::new(confirmed(), 7);
    let mp2_media = ep([192, 0, 2, 10], 40000);
    let mp2_probe: SocketAddr = "192.0.2.10:7999".parse().unwrap();
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(PHONE_A), Some(mp2_media)];
    sc.next_relay = [None, Some(mp2_probe)];
    let id = e.add_stream(sc).unwrap();
    drain(&mut e);
    (e, id, mp2_probe, mp2_media)
}

fn probes(out: &[Output]) -> Vec<(SocketAddr, ProbeMessage)> {
    out.iter()
        .filter_map(|o| match o {
            Output::SendProbe { to, msg } => Some((*to, *msg)),
            _ => None,
        })
        .collect()
}

/// The first packet probes at once (no timer in between), retries back off, and the episode
/// ends after the configured attempts; the first attempt is signed, the retries go unsigned
/// (a relay of another operator answers those).
#[test]
fn a_first_packet_probes_the_next_relay_at_once_with_backoff_then_gives_up() {
    let (mut e, id, mp2_probe, mp2_media) = two_sided_with_next_relay();
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    let p = probes(&drain(&mut e));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, mp2_probe);
    assert_eq!(
        (p[0].1.kind, p[0].1.target, p[0].1.sender, p[0].1.unsigned),
        (Kind::Probe, mp2_media, LOCAL_B, false)
    );
    let mut sent_at = vec![t0];
    let mut nonces = vec![p[0].1.nonce];
    loop {
        let t = e.poll_timeout().unwrap();
        e.handle_timeout(t);
        let out = drain(&mut e);
        if let Some(Event::ProbeFailed { attempts, .. }) = events(&out).last() {
            assert_eq!(*attempts, 6);
            sent_at.push(t);
            break;
        }
        for (_, m) in probes(&out) {
            assert!(m.unsigned, "retries go unsigned");
            sent_at.push(t);
            nonces.push(m.nonce);
        }
    }
    let ms: Vec<u128> = sent_at
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(ms, vec![100, 200, 400, 800, 1600, 3200]);
    nonces.sort_unstable();
    nonces.dedup();
    assert_eq!(nonces.len(), 6, "a fresh nonce per transmission");
    assert_eq!(
        e.status(id).unwrap()[1].probe,
        ProbePhase::Failed { attempts: 6 }
    );
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn an_ack_releases_the_held_packet_to_the_next_relay_before_it_speaks() {
    let (mut e, id, _, mp2_media) = two_sided_with_next_relay();
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    let probe = probes(&drain(&mut e))[0].1;
    e.handle_media(
        LOCAL_A,
        PHONE_A,
        b"a2",
        None,
        t0 + Duration::from_millis(20),
    );
    drain(&mut e);
    let t_ack = t0 + Duration::from_millis(30);
    // The next relay sits behind a NAT: its ACK comes from the NAT's address.
    let nat_probe: SocketAddr = "198.51.100.7:60999".parse().unwrap();
    e.handle_ack(
        &probe.ack(0, Endpoint::from(NEXT)),
        nat_probe,
        Trust::Authenticated,
        t_ack,
    );
    let out = drain(&mut e);
    assert!(events(&out).contains(&Event::ProbeAcked {
        toward: Side::B,
        rtt: Duration::from_millis(30)
    }));
    assert!(events(&out).contains(&Event::Unblocked {
        side: Side::B,
        by: Unblocked::Ack
    }));
    assert_eq!(
        sends(&out),
        vec![
            (LOCAL_B, mp2_media, b"a1".to_vec()),
            (LOCAL_B, mp2_media, b"a2".to_vec())
        ]
    );
    let f: HashMap<_, _> = flows(&out).into_iter().collect();
    assert_eq!(
        f[&LOCAL_A].state,
        FlowState::Forward,
        "near-to-far goes to XDP"
    );
    assert_eq!(f[&LOCAL_A].out_dst, mp2_media);
    assert!(
        f.get(&LOCAL_B).is_none_or(|s| s.state == FlowState::Hold),
        "far-to-near waits for the far side's first packet"
    );

    // The far side's first packet arrives through that NAT, on another port: the address
    // the authenticated ACK came from ranks with a SIP source, so it latches at once and
    // both directions forward.
    let natted = ep([198, 51, 100, 7], 61000);
    e.handle_media(
        LOCAL_B,
        natted,
        b"b1",
        None,
        t_ack + Duration::from_millis(15),
    );
    let out = drain(&mut e);
    let f: HashMap<_, _> = flows(&out).into_iter().collect();
    assert_eq!(f[&LOCAL_B].state, FlowState::Forward);
    assert_eq!(f[&LOCAL_A].out_dst, natted, "A's media follows the latch");
    assert_eq!(e.status(id).unwrap()[1].latched, Some(natted));
    // A second, duplicated ACK matches nothing.
    e.handle_ack(
        &probe.ack(0, Endpoint::from(NEXT)),
        NEXT,
        Trust::Authenticated,
        t_ack + Duration::from_millis(50),
    );
    assert_eq!(e.counters().acks_unmatched, 1);
}

#[test]
fn an_ack_for_another_target_is_refused() {
    let (mut e, _, _, _) = two_sided_with_next_relay();
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    let probe = probes(&drain(&mut e))[0].1;
    let mut forged = probe.ack(0, Endpoint::from(NEXT));
    forged.target = ep([203, 0, 113, 9], 1234);
    e.handle_ack(
        &forged,
        NEXT,
        Trust::Authenticated,
        t0 + Duration::from_millis(210),
    );
    assert!(sends(&drain(&mut e)).is_empty());
    assert_eq!(e.counters().acks_unmatched, 1);
    // The wrong ACK did not consume the nonce: the right one that follows still works.
    e.handle_ack(
        &probe.ack(0, Endpoint::from(NEXT)),
        NEXT,
        Trust::Authenticated,
        t0 + Duration::from_millis(220),
    );
    let out = drain(&mut e);
    assert_eq!(sends(&out).len(), 1, "the held packet goes on the good ACK");
    assert!(
        events(&out)
            .iter()
            .any(|e| matches!(e, Event::ProbeAcked { .. }))
    );
}

#[test]
fn a_probe_for_one_of_our_endpoints_is_acked_and_unblocks_that_side() {
    let mut e = Engine::new(confirmed(), 3);
    let mp1_media = ep([10, 1, 0, 2], 30002); // as signalled, behind a NAT
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(mp1_media), Some(PHONE_B)];
    let id = e.add_stream(sc).unwrap();
    let t0 = Instant::now();
    e.handle_media(LOCAL_B, PHONE_B, b"b1", None, t0);
    drain(&mut e);
    // No NAT in between: the probe comes from the signalled address.
    let from: SocketAddr = "10.1.0.2:7999".parse().unwrap();
    let probe = probe_to(LOCAL_A, mp1_media, 99, 5);
    let here = ep([192, 0, 2, 10], 7999);
    e.handle_probe(
        here,
        from,
        &probe,
        Trust::Authenticated,
        6,
        t0 + Duration::from_millis(250),
    );
    let out = drain(&mut e);
    let acks: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::SendAck { from: f, to, msg } => {
                assert_eq!(*f, here);
                Some((*to, *msg))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        vec![(from, probe.ack(6, Endpoint::from(from)))],
        "the ACK goes back to the probe's source"
    );
    assert!(events(&out).contains(&Event::Unblocked {
        side: Side::A,
        by: Unblocked::Probe
    }));
    assert_eq!(sends(&out), vec![(LOCAL_A, mp1_media, b"b1".to_vec())]);
    assert_eq!(e.status(id).unwrap()[0].unblocked, Some(Unblocked::Probe));
}

#[test]
fn a_probe_through_a_nat_is_acked_but_the_signalled_address_is_not_trusted() {
    let mut e = Engine::new(confirmed(), 3);
    let mp1_media = ep([10, 1, 0, 2], 30002);
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(mp1_media), Some(PHONE_B)];
    let id = e.add_stream(sc).unwrap();
    let t0 = Instant::now();
    e.handle_media(LOCAL_B, PHONE_B, b"b1", None, t0);
    drain(&mut e);
    let from: SocketAddr = "198.51.100.7:61000".parse().unwrap();
    let probe = probe_to(LOCAL_A, mp1_media, 5, 5);
    e.handle_probe(
        ep([192, 0, 2, 10], 7999),
        from,
        &probe,
        Trust::Authenticated,
        6,
        t0,
    );
    let out = drain(&mut e);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::SendAck { to, .. } if *to == from))
    );
    assert!(
        sends(&out).is_empty(),
        "held media is not sent to an address behind the NAT"
    );
    assert!(events(&out).contains(&Event::ProbedFromElsewhere {
        side: Side::A,
        from
    }));
    assert_eq!(e.status(id).unwrap()[0].unblocked, None);
    assert_eq!(e.status(id).unwrap()[1].held, 1);
}

#[test]
fn a_probe_for_an_unknown_endpoint_changes_nothing() {
    let (mut e, id) = one_relay(EngineConfig::default());
    drain(&mut e);
    let before = e.status(id);
    let probe = probe_to(ep([10, 9, 9, 9], 1), ep([10, 9, 9, 8], 1), 1, 0);
    e.handle_probe(
        ep([10, 0, 1, 1], 7999),
        "10.9.9.8:7999".parse().unwrap(),
        &probe,
        Trust::Authenticated,
        0,
        Instant::now(),
    );
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.status(id), before);
    assert_eq!(e.counters().probes_unknown_session, 1);
}

#[test]
fn probe_now_from_the_call_server_probes_immediately() {
    let (mut e, id, mp2_probe, _) = two_sided_with_next_relay();
    e.unblock(id, Side::B, true, Instant::now()).unwrap();
    let p = probes(&drain(&mut e));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, mp2_probe);
    // No next relay named on A's side: its signalled address is probed, at the probe port.
    e.unblock(id, Side::A, true, Instant::now()).unwrap();
    let p = probes(&drain(&mut e));
    assert_eq!(p[0].0, "10.0.1.2:7999".parse().unwrap());
    // Told without a probe: trusted at once.
    e.unblock(id, Side::A, false, Instant::now()).unwrap();
    assert_eq!(e.status(id).unwrap()[0].unblocked, Some(Unblocked::Command));
}

#[test]
fn removing_a_stream_removes_its_flows_and_forgets_its_probes() {
    let (mut e, id, _, _) = two_sided_with_next_relay();
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    e.handle_timeout(t0 + Duration::from_millis(200));
    let probe = probes(&drain(&mut e))[0].1;
    e.remove_stream(id).unwrap();
    let out = drain(&mut e);
    assert_eq!(
        out,
        vec![
            Output::RemoveFlow { key: LOCAL_A },
            Output::RemoveFlow { key: LOCAL_B }
        ]
    );
    e.handle_ack(
        &probe.ack(0, Endpoint::from(NEXT)),
        NEXT,
        Trust::Authenticated,
        t0 + Duration::from_millis(220),
    );
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(t0 + Duration::from_secs(10));
    assert!(
        drain(&mut e).is_empty(),
        "stale timers of a removed stream do nothing"
    );
    assert_eq!(e.stream_count(), 0);
    assert!(
        e.add_stream(StreamConfig::new(LOCAL_A, LOCAL_B)).is_ok(),
        "endpoints are free again"
    );
}

#[test]
fn endpoints_cannot_be_shared_between_streams() {
    let (mut e, _) = one_relay(EngineConfig::default());
    assert_eq!(
        e.add_stream(StreamConfig::new(LOCAL_A, ep([1, 1, 1, 1], 1))),
        Err(StreamError::LocalInUse(LOCAL_A))
    );
    assert_eq!(
        e.add_stream(StreamConfig::new(LOCAL_A, LOCAL_A)),
        Err(StreamError::SameEndpoints)
    );
}

#[test]
fn a_reinvite_keeps_forwarding_flows_and_latches() {
    let (mut e, id) = one_relay(EngineConfig::default());
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a", None, t0);
    e.handle_media(LOCAL_B, PHONE_B, b"b", None, t0);
    drain(&mut e);
    let new_b = ep([10, 0, 2, 9], 6000);
    let upd = StreamUpdate {
        remote: [None, Some(new_b)],
        ..StreamUpdate::default()
    };
    e.update_stream(id, &upd, t0 + Duration::from_secs(1))
        .unwrap();
    // Latched B stays the destination: no forwarding changes for a mere SDP update (only
    // the kernel's priority hint for B's punts follows the new signalled endpoint).
    for (key, spec) in flows(&drain(&mut e)) {
        assert_eq!(spec.state, FlowState::Forward, "{key}");
        assert_eq!(
            spec.peer,
            Some(if key == LOCAL_A { PHONE_A } else { PHONE_B })
        );
        assert_eq!(spec.out_dst, if key == LOCAL_A { PHONE_B } else { PHONE_A });
    }
    assert_eq!(e.status(id).unwrap()[1].remote, Some(new_b));
}

// ---------------------------------------------------------------------------------------
// Two relays in series with a NAT between them, simulated.

/// phone A — MP1 ==(inside 10.1.0.0/24)== NAT 192.0.2.1 ==(outside)== MP2 — phone B
struct Net {
    mp1: Engine,
    mp2: Engine,
    /// Kernel flows of each relay, as the engines last asked.
    k1: HashMap<Endpoint, FlowSpec>,
    k2: HashMap<Endpoint, FlowSpec>,
    nat: HashMap<Endpoint, Endpoint>, // inside -> outside
    nat_rev: HashMap<Endpoint, Endpoint>,
    next_nat_port: u16,
    /// (deliver at, from, to, payload, `is_probe_port`)
    wire: Vec<(Instant, Endpoint, Endpoint, Vec<u8>)>,
    delivered_a: Vec<Instant>,
    delivered_b: Vec<Instant>,
    kernel_forwarded: u64,
    punted: u64,
    events1: Vec<Event>,
    events2: Vec<Event>,
    /// How probes and ACKs check out at the receiver: relays of one deployment share a
    /// secret; relays of different operators do not.
    trust: Trust,
}

const MP1_A: Endpoint = Endpoint::v4([10, 0, 1, 1], 30000);
const MP1_B: Endpoint = Endpoint::v4([10, 1, 0, 2], 30002);
const MP1_PROBE: Endpoint = Endpoint::v4([10, 1, 0, 2], 7999);
const MP2_A: Endpoint = Endpoint::v4([192, 0, 2, 10], 40000);
const MP2_B: Endpoint = Endpoint::v4([10, 0, 2, 1], 40002);
const MP2_PROBE: Endpoint = Endpoint::v4([192, 0, 2, 10], 7999);
const NAT_IP: [u8; 4] = [192, 0, 2, 1];
const HOP: Duration = Duration::from_millis(2);

impl Net {
    /// `named`: the call servers named each relay's next relay (`next-relay`); without, each
    /// knows only the far side's signalled address.
    fn new(cfg: EngineConfig, named: bool) -> Self {
        let mut mp1 = Engine::new(cfg, 11);
        let mut mp2 = Engine::new(cfg, 22);
        let mut s1 = StreamConfig::new(MP1_A, MP1_B);
        s1.remote = [Some(PHONE_A), Some(MP2_A)];
        if named {
            s1.next_relay = [None, Some(MP2_PROBE.socket_addr().unwrap())];
        }
        mp1.add_stream(s1).unwrap();
        let mut s2 = StreamConfig::new(MP2_A, MP2_B);
        // MP1 signalled its inside address; the NAT's address would not help either.
        s2.remote = [Some(MP1_B), Some(PHONE_B)];
        if named {
            s2.next_relay = [
                Some(Endpoint::v4(NAT_IP, 7999).socket_addr().unwrap()),
                None,
            ];
        }
        mp2.add_stream(s2).unwrap();
        Self {
            mp1,
            mp2,
            k1: HashMap::new(),
            k2: HashMap::new(),
            nat: HashMap::new(),
            nat_rev: HashMap::new(),
            next_nat_port: 50000,
            wire: Vec::new(),
            delivered_a: Vec::new(),
            delivered_b: Vec::new(),
            kernel_forwarded: 0,
            punted: 0,
            events1: Vec::new(),
            events2: Vec::new(),
            trust: Trust::Authenticated,
        }
    }

    /// Puts a packet on the wire, through the NAT where it crosses it.
    fn send(&mut self, now: Instant, from: Endpoint, to: Endpoint, payload: Vec<u8>) {
        let inside = |e: &Endpoint| e.addr_v4()[..3] == [10, 1, 0];
        let mut from = from;
        if inside(&from) && !inside(&to) {
            from = *self.nat.entry(from).or_insert_with(|| {
                self.next_nat_port += 7; // a port-changing NAT
                Endpoint::v4(NAT_IP, self.next_nat_port)
            });
            self.nat_rev
                .insert(from, *self.nat.iter().find(|(_, o)| **o == from).unwrap().0);
        }
        let mut to = to;
        if to.addr_v4() == &NAT_IP {
            match self.nat_rev.get(&to) {
                Some(i) => to = *i,
                None => return, // no mapping: the NAT drops it
            }
        } else if inside(&to) && !inside(&from) {
            return; // private address, unreachable from outside
        }
        self.wire.push((now + HOP, from, to, payload));
    }

    fn apply(&mut self, which: u8, now: Instant) {
        loop {
            let (e, k) = if which == 1 {
                (&mut self.mp1, &mut self.k1)
            } else {
                (&mut self.mp2, &mut self.k2)
            };
            let Some(o) = e.poll_output() else { break };
            match o {
                Output::Flow { key, spec } => {
                    k.insert(key, spec);
                }
                Output::RemoveFlow { key } => {
                    k.remove(&key);
                }
                Output::SendMedia { from, to, payload } => self.send(now, from, to, payload),
                Output::SendProbe { to, msg } => {
                    let src = if which == 1 { MP1_PROBE } else { MP2_PROBE };
                    let mut bytes = vec![1];
                    bytes.extend_from_slice(
                        &ProbeMessage {
                            timestamp_ms: 1,
                            ..msg
                        }
                        .emit(&[0; 16]),
                    );
                    self.send(now, src, Endpoint::from(to), bytes);
                }
                Output::SendAck { from: src, to, msg } => {
                    let mut bytes = vec![2];
                    bytes.extend_from_slice(&msg.emit(&[0; 16]));
                    self.send(now, src, Endpoint::from(to), bytes);
                }
                Output::Event { event, .. } => {
                    if which == 1 {
                        self.events1.push(event);
                    } else {
                        self.events2.push(event);
                    }
                }
            }
        }
    }

    /// Delivers a packet to a relay: its kernel flow forwards it, or the engine gets it.
    fn arrive(&mut self, which: u8, now: Instant, from: Endpoint, to: Endpoint, payload: Vec<u8>) {
        if to.port() == 7999 {
            let msg = ProbeMessage::parse(&payload[1..]).unwrap();
            let e = if which == 1 {
                &mut self.mp1
            } else {
                &mut self.mp2
            };
            match msg.kind {
                Kind::Probe => {
                    e.handle_probe(to, from.socket_addr().unwrap(), &msg, self.trust, 2, now);
                }
                Kind::Ack => e.handle_ack(&msg, from.socket_addr().unwrap(), self.trust, now),
            }
            self.apply(which, now);
            return;
        }
        let k = if which == 1 { &self.k1 } else { &self.k2 };
        let spec = k.get(&to).copied();
        match spec {
            Some(s) if s.state == FlowState::Forward && s.peer.is_none_or(|p| p == from) => {
                self.kernel_forwarded += 1;
                self.send(now, s.out_src, s.out_dst, payload);
            }
            Some(_) => {
                self.punted += 1;
                let e = if which == 1 {
                    &mut self.mp1
                } else {
                    &mut self.mp2
                };
                e.handle_media(to, from, &payload, None, now);
                self.apply(which, now);
            }
            None => {}
        }
    }

    /// Both phones send every 20 ms from `t0`; runs until `until`.
    fn run(&mut self, t0: Instant, until: Duration) {
        self.apply(1, t0);
        self.apply(2, t0);
        let mut now = t0;
        let mut next_media = t0;
        while now < t0 + until {
            if now >= next_media {
                self.send(now, PHONE_A, MP1_A, b"rtp-a".to_vec());
                self.send(now, PHONE_B, MP2_B, b"rtp-b".to_vec());
                next_media += Duration::from_millis(20);
            }
            let due: Vec<_> = {
                let (due, rest): (Vec<_>, Vec<_>) =
                    self.wire.drain(..).partition(|(t, ..)| *t <= now);
                self.wire = rest;
                due
            };
            for (_, from, to, payload) in due {
                if to == PHONE_A {
                    self.delivered_a.push(now);
                } else if to == PHONE_B {
                    self.delivered_b.push(now);
                } else if to.addr_v4()[..3] == [10, 1, 0] || to == MP1_A {
                    self.arrive(1, now, from, to, payload);
                } else {
                    self.arrive(2, now, from, to, payload);
                }
            }
            for which in [1, 2] {
                let e = if which == 1 {
                    &mut self.mp1
                } else {
                    &mut self.mp2
                };
                if e.poll_timeout().is_some_and(|t| t <= now) {
                    e.handle_timeout(now);
                    self.apply(which, now);
                }
            }
            now += Duration::from_millis(1);
        }
    }
}

#[test]
fn two_relays_behind_a_nat_deadlock_without_probing() {
    let mut net = Net::new(holding(), true);
    let t0 = Instant::now();
    net.run(t0, Duration::from_secs(5));
    assert!(
        net.delivered_a.is_empty() && net.delivered_b.is_empty(),
        "media flowed without probing"
    );
    assert!(
        net.events1
            .iter()
            .any(|e| matches!(e, Event::BlockingSuspected { near: Side::A, .. }))
    );
    assert!(
        net.events2
            .iter()
            .any(|e| matches!(e, Event::BlockingSuspected { near: Side::B, .. }))
    );
}

#[test]
fn two_relays_behind_a_nat_unblock_with_probing() {
    let mut net = Net::new(confirmed(), true);
    let t0 = Instant::now();
    net.run(t0, Duration::from_secs(3));
    let first_b = *net.delivered_b.first().expect("B never heard A");
    let first_a = *net.delivered_a.first().expect("A never heard B");
    // No timer: the first packet's hop (2 ms), probe and ACK (2 hops each), the held
    // packet's 2 hops to B.
    let unblock = first_b - t0;
    assert!(
        unblock <= Duration::from_millis(20),
        "A→B after {unblock:?}"
    );
    assert!(
        first_a - t0 <= Duration::from_millis(40),
        "B→A after {:?}",
        first_a - t0
    );
    assert!(net.events1.iter().any(|e| matches!(
        e,
        Event::ProbeAcked {
            toward: Side::B,
            ..
        }
    )));
    // Steady state: the kernels forward everything; the punted packets are the ones before
    // the flips, a handful per stream.
    assert!(net.punted <= 30, "punted {}", net.punted);
    assert!(
        net.kernel_forwarded > 500,
        "kernel forwarded {}",
        net.kernel_forwarded
    );
    let (a, b) = (net.delivered_a.len(), net.delivered_b.len());
    assert!(a >= 135 && b >= 135, "delivered A {a}, B {b} of 150");
}

/// The default (`FarSide::Signalled`), and no `next-relay` anywhere: each relay knows only
/// the far side's signalled address, as behind a stock call-server config. MP1 sends A's
/// first packet to MP2 at once; MP2 learns MP1 through the NAT (its probe, authenticated
/// here, names the relay), and media flows both ways within a few hops, with nothing lost
/// but what B sent toward MP1's unreachable inside address before that.
#[test]
fn two_relays_behind_a_nat_flow_at_once_with_no_flags() {
    let mut net = Net::new(EngineConfig::default(), false);
    // Relays of different operators: no shared secret.
    net.trust = Trust::Unverified;
    let t0 = Instant::now();
    net.run(t0, Duration::from_secs(3));
    let first_b = *net.delivered_b.first().expect("B never heard A");
    let first_a = *net.delivered_a.first().expect("A never heard B");
    assert!(
        first_b - t0 <= Duration::from_millis(10),
        "A→B after {:?}",
        first_b - t0
    );
    assert!(
        first_a - t0 <= Duration::from_millis(30),
        "B→A after {:?}",
        first_a - t0
    );
    let (a, b) = (net.delivered_a.len(), net.delivered_b.len());
    assert!(a >= 145 && b >= 148, "delivered A {a}, B {b} of 150");
    assert!(
        net.kernel_forwarded > 500,
        "kernel forwarded {}",
        net.kernel_forwarded
    );
}

// ---------------------------------------------------------------------------------------
// The learning rule against RTP Bleed and RTP Inject.

/// An RTP packet of stream `ssrc`, sequence `seq`.
fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

const ATTACKER: Endpoint = Endpoint::v4([203, 0, 113, 66], 1234);

/// A spray reaches both of the relay's ports before the phones speak: nothing from it is
/// delivered (inject), nothing is sent to it (bleed), and the phones latch on their first
/// packets.
#[test]
fn a_spray_before_the_phones_speak_wins_nothing() {
    let (mut e, id) = one_relay(EngineConfig::default());
    drain(&mut e);
    let t0 = Instant::now();
    for i in 0..40u16 {
        let at = t0 + Duration::from_millis(u64::from(i) * 5);
        e.handle_media(LOCAL_A, ATTACKER, &rtp(7, i), None, at);
        e.handle_media(LOCAL_B, ATTACKER.with_port(999), &rtp(8, i), None, at);
    }
    let out = drain(&mut e);
    assert!(sends(&out).is_empty(), "the spray went somewhere");
    let t1 = t0 + Duration::from_millis(300);
    e.handle_media(LOCAL_A, PHONE_A, &rtp(1, 0), None, t1);
    e.handle_media(LOCAL_B, PHONE_B, &rtp(2, 0), None, t1);
    let out = drain(&mut e);
    let st = e.status(id).unwrap();
    assert_eq!(
        (st[0].latched, st[1].latched),
        (Some(PHONE_A), Some(PHONE_B))
    );
    for (from, to, p) in sends(&out) {
        assert!(to == PHONE_A || to == PHONE_B, "bleed to {to}");
        assert!(p == rtp(1, 0) || p == rtp(2, 0), "inject from {from}");
    }
    assert_eq!(sends(&out).len(), 2);
}

/// A spray of one port (no sweep to give it away) before anybody speaks wins nothing,
/// however long: an unmatched source waits from the other side's latch. If the other side
/// speaks and this one stays silent past the wait, the spray wins, but only provisionally:
/// the phone's first packet from its signalled endpoint takes the side back, and from then on
/// the spray gets nothing.
#[test]
fn a_long_spray_of_one_port_wins_only_provisionally_and_only_after_the_other_side_spoke() {
    let (mut e, id) = one_relay(EngineConfig {
        probing: false,
        ..EngineConfig::default()
    });
    drain(&mut e);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    for i in 0..500u16 {
        e.handle_media(LOCAL_A, ATTACKER, &rtp(7, i), None, at(u64::from(i) * 20));
    }
    assert_eq!(e.status(id).unwrap()[0].latched, None, "10 s of spray won");
    assert!(sends(&drain(&mut e)).is_empty());
    // B speaks; A stays silent; the spray goes on.
    e.handle_media(LOCAL_B, PHONE_B, &rtp(2, 0), None, at(10_000));
    for i in 500..700u16 {
        e.handle_media(LOCAL_A, ATTACKER, &rtp(7, i), None, at(u64::from(i) * 20));
    }
    let st = e.status(id).unwrap();
    assert_eq!(st[0].latched, Some(ATTACKER));
    assert_eq!(st[0].latch_rank, Some(Rank::Unknown));
    drain(&mut e);
    let t1 = at(15_000);
    e.handle_media(LOCAL_A, PHONE_A, &rtp(1, 0), None, t1);
    assert_eq!(e.status(id).unwrap()[0].latched, Some(PHONE_A));
    drain(&mut e);
    for i in 700..760u16 {
        e.handle_media(
            LOCAL_A,
            ATTACKER,
            &rtp(7, i),
            None,
            t1 + Duration::from_millis(u64::from(i)),
        );
    }
    assert_eq!(e.status(id).unwrap()[0].latched, Some(PHONE_A));
    assert!(sends(&drain(&mut e)).is_empty(), "the spray went somewhere");
}

/// A phone behind a port-randomising NAT never matches its signalled endpoint; the spray
/// reaches its port first, from another address. Its SIP source address (Kamailio's
/// received-from) makes it win at once.
#[test]
fn a_phone_behind_a_port_changing_nat_wins_by_its_sip_source_address() {
    let mut e = Engine::new(EngineConfig::default(), 1);
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    let private = ep([192, 168, 1, 20], 4000);
    sc.remote = [Some(private), Some(PHONE_B)];
    sc.sip_source = [Some("198.51.100.7".parse().unwrap()), None];
    let id = e.add_stream(sc).unwrap();
    let t0 = Instant::now();
    for i in 0..10 {
        e.handle_media(LOCAL_A, ATTACKER, &rtp(7, i), None, t0);
    }
    let natted = ep([198, 51, 100, 7], 61_234);
    e.handle_media(
        LOCAL_A,
        natted,
        &rtp(1, 0),
        None,
        t0 + Duration::from_millis(50),
    );
    assert_eq!(e.status(id).unwrap()[0].latched, Some(natted));
    assert_eq!(e.status(id).unwrap()[0].latch_rank, Some(Rank::SipSource));
}

/// Without any signalled match, a source needs consistent RTP and time to win; a sprayer
/// sending one packet per port sweep never gets there.
#[test]
fn an_unsignalled_source_wins_only_by_a_consistent_stream() {
    let mut e = Engine::new(EngineConfig::default(), 1);
    let sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    let id = e.add_stream(sc).unwrap();
    let t0 = Instant::now();
    for i in 0..30u16 {
        // Each sweep: a new SSRC and sequence.
        e.handle_media(
            LOCAL_A,
            ATTACKER,
            &rtp(u32::from(i), i * 977),
            None,
            t0 + Duration::from_millis(u64::from(i) * 20),
        );
    }
    assert_eq!(e.status(id).unwrap()[0].latched, None);
    let phone = ep([198, 51, 100, 99], 7000);
    for i in 0..6u16 {
        e.handle_media(
            LOCAL_A,
            phone,
            &rtp(42, i),
            None,
            t0 + Duration::from_millis(700 + u64::from(i) * 20),
        );
    }
    assert_eq!(e.status(id).unwrap()[0].latched, Some(phone));
}

/// RTCP is learnt only from the address its RTP stream latched to.
#[test]
#[expect(
    clippy::similar_names,
    reason = "rtp_ and rtcp_ name the two streams of one media section"
)]
fn rtcp_is_learnt_only_from_its_rtp_streams_address() {
    let mut e = Engine::new(EngineConfig::default(), 1);
    let mut rtp_cfg = StreamConfig::new(LOCAL_A, LOCAL_B);
    rtp_cfg.remote = [Some(PHONE_A), Some(PHONE_B)];
    let rtp_id = e.add_stream(rtp_cfg).unwrap();
    let mut rtcp_cfg = StreamConfig::new(LOCAL_A.with_port(30001), LOCAL_B.with_port(30003));
    rtcp_cfg.remote = [Some(PHONE_A.with_port(4001)), Some(PHONE_B.with_port(5001))];
    rtcp_cfg.rtp_stream = Some(rtp_id);
    let rtcp_id = e.add_stream(rtcp_cfg).unwrap();
    let t0 = Instant::now();
    let rtcp_pkt = [0x80, 200, 0, 6, 0, 0, 0, 1];
    // Before RTP latched, an RTCP packet from elsewhere is refused.
    e.handle_media(LOCAL_A.with_port(30001), ATTACKER, &rtcp_pkt, None, t0);
    assert_eq!(e.status(rtcp_id).unwrap()[0].latched, None);
    e.handle_media(LOCAL_A, PHONE_A, &rtp(1, 0), None, t0);
    // RTP latched to PHONE_A: its RTCP, from another port (a NAT), is accepted.
    let nat_port = PHONE_A.with_port(4555);
    e.handle_media(LOCAL_A.with_port(30001), nat_port, &rtcp_pkt, None, t0);
    assert_eq!(e.status(rtcp_id).unwrap()[0].latched, Some(nat_port));
}

/// A re-INVITE opens a window in which a better-ranked source takes a latched side over (a
/// phone that moved); a worse-ranked one does not, and after the window nothing does.
#[test]
fn a_reinvite_lets_a_better_source_take_over_for_a_while_only() {
    let (mut e, id) = one_relay(EngineConfig::default());
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, &rtp(1, 0), None, t0);
    e.handle_media(LOCAL_B, PHONE_B, &rtp(2, 0), None, t0);
    let moved = ep([10, 0, 1, 77], 4100);
    let upd = StreamUpdate {
        remote: [Some(moved), None],
        signalled: [true, false],
        ..StreamUpdate::default()
    };
    let t1 = t0 + Duration::from_secs(10);
    e.update_stream(id, &upd, t1).unwrap();
    drain(&mut e);
    // A stranger in the window: refused (worse than the old latch, now unsignalled).
    e.handle_media(
        LOCAL_A,
        ATTACKER,
        &rtp(9, 0),
        None,
        t1 + Duration::from_millis(10),
    );
    assert_eq!(e.status(id).unwrap()[0].latched, Some(PHONE_A));
    // The newly signalled endpoint: takes over.
    e.handle_media(
        LOCAL_A,
        moved,
        &rtp(3, 0),
        None,
        t1 + Duration::from_millis(20),
    );
    assert_eq!(e.status(id).unwrap()[0].latched, Some(moved));
    // After the window closes, the kernel drops other sources and userspace refuses them.
    e.handle_timeout(t1 + Duration::from_secs(4));
    let f: HashMap<_, _> = flows(&drain(&mut e)).into_iter().collect();
    assert_eq!(f[&LOCAL_A].mismatch, MismatchPolicy::Drop);
    e.handle_media(
        LOCAL_A,
        PHONE_A,
        &rtp(1, 9),
        None,
        t1 + Duration::from_secs(5),
    );
    assert_eq!(e.status(id).unwrap()[0].latched, Some(moved));
}

#[test]
fn martian_sources_are_never_latched() {
    let (mut e, id) = one_relay(EngineConfig::default());
    let t0 = Instant::now();
    for m in [
        ep([127, 0, 0, 1], 4000),
        ep([0, 0, 0, 0], 4000),
        ep([0, 9, 9, 9], 4000),
        ep([224, 0, 0, 9], 4000),
        ep([255, 255, 255, 255], 4000),
        ep([10, 0, 1, 2], 0),
        Endpoint::from("[::ffff:127.0.0.1]:4000".parse::<SocketAddr>().unwrap()),
        Endpoint::v6(
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
            4000,
        ),
        Endpoint::from("[::1]:4000".parse::<SocketAddr>().unwrap()),
    ] {
        e.handle_media(LOCAL_A, m, &rtp(1, 0), None, t0);
        assert_eq!(e.status(id).unwrap()[0].latched, None, "{m}");
    }
    assert_eq!(e.counters().martian_sources, 9);
}

/// The default: toward a side that has not spoken, its signalled address at once (a one-way
/// stream, early media); a side whose SDP said `sendonly` or `inactive` gets nothing there
/// before it speaks; and the side's own first packet moves the destination to where it
/// speaks from.
#[test]
fn a_silent_side_gets_media_at_its_signalled_address_unless_it_said_it_takes_none() {
    let mut e = Engine::new(
        EngineConfig {
            probing: false,
            ..EngineConfig::default()
        },
        1,
    );
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(PHONE_A), Some(PHONE_B)];
    let id = e.add_stream(sc).unwrap();
    drain(&mut e);
    let t0 = Instant::now();
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    let out = drain(&mut e);
    assert_eq!(sends(&out), vec![(LOCAL_B, PHONE_B, b"a1".to_vec())]);
    let f: HashMap<_, _> = flows(&out).into_iter().collect();
    assert_eq!(
        (f[&LOCAL_A].state, f[&LOCAL_A].out_dst),
        (FlowState::Forward, PHONE_B),
        "the rest goes in the kernel"
    );
    let st = e.status(id).unwrap();
    assert_eq!(st[0].unblocked_after, Some(Duration::ZERO));
    assert_eq!(e.counters().unblocked_after[0], 1);
    // B speaks from elsewhere (a NAT): A's media follows it.
    let natted = ep([198, 51, 100, 7], 61_000);
    let mut upd = StreamUpdate::default();
    upd.sip_source[1] = natted.ip();
    e.update_stream(id, &upd, t0).unwrap();
    e.handle_media(LOCAL_B, natted, b"b1", None, t0 + Duration::from_millis(40));
    let f: HashMap<_, _> = flows(&drain(&mut e)).into_iter().collect();
    assert_eq!(f[&LOCAL_A].out_dst, natted);

    // `sendonly` from B: nothing goes to B's signalled address before B speaks.
    let mut e = Engine::new(
        EngineConfig {
            probing: false,
            ..EngineConfig::default()
        },
        1,
    );
    let mut sc = StreamConfig::new(LOCAL_A, LOCAL_B);
    sc.remote = [Some(PHONE_A), Some(PHONE_B)];
    sc.receives = [true, false];
    e.add_stream(sc).unwrap();
    drain(&mut e);
    e.handle_media(LOCAL_A, PHONE_A, b"a1", None, t0);
    assert!(sends(&drain(&mut e)).is_empty(), "sent to a sendonly party");
}

/// A sweep of the port range, however long before the phones speak, wins nothing anywhere:
/// its source reaches endpoint after endpoint unmatched, and is refused as a sprayer.
#[test]
fn a_long_sweep_of_the_range_wins_no_side() {
    let mut e = Engine::new(EngineConfig::default(), 1);
    let mut ids = Vec::new();
    for i in 0..3u16 {
        let mut sc = StreamConfig::new(
            LOCAL_A.with_port(30_000 + i * 4),
            LOCAL_B.with_port(30_002 + i * 4),
        );
        sc.remote = [
            Some(PHONE_A.with_port(4000 + i)),
            Some(PHONE_B.with_port(5000 + i)),
        ];
        ids.push((e.add_stream(sc).unwrap(), i));
    }
    drain(&mut e);
    let t0 = Instant::now();
    // Ten seconds of a consistent stream to every port, each every 20 ms.
    for n in 0..500u16 {
        let at = t0 + Duration::from_millis(u64::from(n) * 20);
        for &(_, i) in &ids {
            for local in [
                LOCAL_A.with_port(30_000 + i * 4),
                LOCAL_B.with_port(30_002 + i * 4),
            ] {
                e.handle_media(local, ATTACKER, &rtp(u32::from(local.port()), n), None, at);
            }
        }
    }
    assert!(sends(&drain(&mut e)).is_empty(), "the sweep went somewhere");
    for &(id, _) in &ids {
        let st = e.status(id).unwrap();
        assert_eq!((st[0].latched, st[1].latched), (None, None));
    }
    assert!(e.counters().sprayer_refused > 2_500);
    // The phones then speak and get their call.
    let t1 = t0 + Duration::from_secs(11);
    let (id, i) = ids[0];
    e.handle_media(
        LOCAL_A.with_port(30_000 + i * 4),
        PHONE_A.with_port(4000 + i),
        &rtp(1, 0),
        None,
        t1,
    );
    e.handle_media(
        LOCAL_B.with_port(30_002 + i * 4),
        PHONE_B.with_port(5000 + i),
        &rtp(2, 0),
        None,
        t1,
    );
    let st = e.status(id).unwrap();
    assert_eq!(
        (st[0].latched, st[1].latched),
        (
            Some(PHONE_A.with_port(4000 + i)),
            Some(PHONE_B.with_port(5000 + i))
        )
    );
    for (_, to, _) in sends(&drain(&mut e)) {
        assert_ne!(to, ATTACKER, "bleed");
    }
}
