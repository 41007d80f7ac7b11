#![expect(
    clippy::cast_possible_truncation,
    reason = "test sizes far below the types' limits"
)]

use super::*;

#[test]
fn a_sweep_of_the_port_range_is_a_sprayer_a_phone_is_not() {
    let cfg = SprayConfig::default();
    let mut s = Sprayers::default();
    let now = Instant::now();
    let ip: IpAddr = ATTACKER.ip().unwrap();
    for p in 0..3u16 {
        assert!(!s.observe(
            &cfg,
            ip,
            (Endpoint::v4([10, 0, 0, 1], 30_000 + p * 2), 1, 0),
            now
        ));
    }
    // The same endpoint again and again: still one phone's worth.
    let phone: IpAddr = NAT.ip().unwrap();
    for _ in 0..100 {
        assert!(!s.observe(
            &cfg,
            phone,
            (Endpoint::v4([10, 0, 0, 1], 31_000), 1, 0),
            now
        ));
    }
    assert!(s.observe(&cfg, ip, (Endpoint::v4([10, 0, 0, 1], 30_006), 1, 0), now));
    assert!(
        s.observe(&cfg, ip, (Endpoint::v4([10, 0, 0, 1], 30_000), 1, 0), now),
        "banned"
    );
    assert!(
        !s.observe(
            &cfg,
            ip,
            (Endpoint::v4([10, 0, 0, 1], 30_000), 1, 0),
            now + cfg.ban
        ),
        "the ban ends"
    );
    // Both sides of one stream: a sprayer at once.
    let both: IpAddr = "203.0.113.77".parse().unwrap();
    assert!(!s.observe(&cfg, both, (Endpoint::v4([10, 0, 1, 1], 30_100), 7, 0), now));
    assert!(s.observe(&cfg, both, (Endpoint::v4([10, 0, 2, 1], 30_102), 7, 1), now));
    // Spread over more than the window: never a sprayer.
    let slow: IpAddr = "198.51.100.200".parse().unwrap();
    for p in 0..10u16 {
        let at = now + (cfg.window + Duration::from_secs(1)) * u32::from(p);
        assert!(!s.observe(
            &cfg,
            slow,
            (Endpoint::v4([10, 0, 0, 1], 32_000 + p * 2), 1, 0),
            at
        ));
    }
}

#[test]
fn the_tracking_is_bounded() {
    let cfg = SprayConfig {
        tracked: 8,
        ..SprayConfig::default()
    };
    let mut s = Sprayers::default();
    let now = Instant::now();
    for i in 0..1000u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i));
        let _ = s.observe(&cfg, ip, (Endpoint::v4([10, 0, 0, 1], 30_000), 1, 0), now);
    }
    assert!(s.tracks.len() <= 8);
}

const SDP: Endpoint = Endpoint::v4([192, 0, 2, 10], 4000);
const NAT: Endpoint = Endpoint::v4([198, 51, 100, 7], 61_234);
const ATTACKER: Endpoint = Endpoint::v4([203, 0, 113, 66], 1234);

fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 172];
    p[0] = 0x80;
    p[1] = 8;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn expect() -> Expect {
    Expect {
        signalled: Some(SDP),
        sip_source: NAT.ip(),
        ..Expect::default()
    }
}

#[test]
fn ranks_follow_what_signalling_said() {
    let e = expect();
    assert_eq!(e.rank(&SDP), Some(Rank::Signalled));
    assert_eq!(e.rank(&NAT), Some(Rank::SipSource));
    assert_eq!(e.rank(&SDP.with_port(4002)), Some(Rank::SignalledAddress));
    assert_eq!(e.rank(&ATTACKER), Some(Rank::Unknown));
    let rtcp = Expect {
        signalled: Some(SDP.with_port(4001)),
        rtp_peer: NAT.ip(),
        rtcp: true,
        ..Expect::default()
    };
    assert_eq!(rtcp.rank(&SDP.with_port(4001)), Some(Rank::Signalled));
    assert_eq!(rtcp.rank(&NAT.with_port(9)), Some(Rank::SipSource));
    assert_eq!(
        rtcp.rank(&ATTACKER),
        None,
        "RTCP only from its RTP's address"
    );
}

#[test]
fn the_signalled_endpoint_and_the_sip_source_latch_at_once() {
    let cfg = LearnConfig::default();
    let now = Instant::now();
    for (src, rank) in [(SDP, Rank::Signalled), (NAT, Rank::SipSource)] {
        let mut l = Learner::default();
        assert_eq!(
            l.observe(&cfg, &expect(), src, rank, &rtp(1, 1), None, now),
            Verdict::Latch { src, rank }
        );
    }
}

#[test]
fn a_sprayer_never_wins_against_a_consistent_stream_nor_alone_with_few_packets() {
    let cfg = LearnConfig::default();
    let t0 = Instant::now();
    let mut l = Learner::default();
    // A spray: one packet per port sweep, new SSRC and sequence each time.
    for i in 0..20u16 {
        let v = l.observe(
            &cfg,
            &Expect::default(),
            ATTACKER,
            Rank::Unknown,
            &rtp(u32::from(i) * 7919, i * 1000),
            None,
            t0 + Duration::from_millis(u64::from(i) * 40),
        );
        assert_eq!(v, Verdict::Wait, "packet {i}");
    }
    // A phone behind a NAT without a SIP source: consistent, and it wins.
    let phone = Endpoint::v4([198, 51, 100, 99], 7000);
    let mut last = Verdict::Wait;
    for s in 0..5 {
        last = l.observe(
            &cfg,
            &Expect::default(),
            phone,
            Rank::Unknown,
            &rtp(42, 100 + s),
            None,
            t0 + Duration::from_millis(900 + u64::from(s) * 20),
        );
    }
    assert_eq!(
        last,
        Verdict::Latch {
            src: phone,
            rank: Rank::Unknown
        }
    );
}

/// Where signalling anchored the side, a consistent unmatched stream (a sprayer that got
/// to the port first, or a phone that matches nothing) waits the anchored window, and a
/// matching source that shows up meanwhile wins.
#[test]
fn an_unmatched_stream_waits_longer_where_signalling_anchored_the_side() {
    let cfg = LearnConfig::default();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut l = Learner::default();
    for s in 0..100u16 {
        let v = l.observe(
            &cfg,
            &expect(),
            ATTACKER,
            Rank::Unknown,
            &rtp(9, s),
            None,
            at(u64::from(s) * 20),
        );
        assert_eq!(v, Verdict::Wait, "packet {s} at {} ms", u64::from(s) * 20);
    }
    assert_eq!(
        l.observe(
            &cfg,
            &expect(),
            NAT,
            Rank::SipSource,
            &rtp(1, 0),
            None,
            at(2100)
        ),
        Verdict::Latch {
            src: NAT,
            rank: Rank::SipSource
        }
    );
    // Nobody better came: the unmatched stream wins once the window has passed since the
    // other side latched (here: at once).
    let mut l = Learner::default();
    let mut last = Verdict::Wait;
    for s in 0..=150u16 {
        last = l.observe(
            &cfg,
            &expect(),
            ATTACKER,
            Rank::Unknown,
            &rtp(9, s),
            Some(t0),
            at(u64::from(s) * 20),
        );
    }
    // Before the other side latched, it never wins, however long it sends.
    let mut l = Learner::default();
    for s in 0..=500u16 {
        assert_eq!(
            l.observe(
                &cfg,
                &expect(),
                ATTACKER,
                Rank::Unknown,
                &rtp(9, s),
                None,
                at(u64::from(s) * 20),
            ),
            Verdict::Wait
        );
    }
    assert_eq!(
        last,
        Verdict::Latch {
            src: ATTACKER,
            rank: Rank::Unknown
        }
    );
}

#[test]
fn a_better_rank_wins_over_a_candidate_that_came_first() {
    let cfg = LearnConfig::default();
    let t0 = Instant::now();
    let mut l = Learner::default();
    let other_port = SDP.with_port(4002);
    for s in 0..4 {
        assert_eq!(
            l.observe(
                &cfg,
                &Expect::default(),
                ATTACKER,
                Rank::Unknown,
                &rtp(9, s),
                None,
                t0 + Duration::from_millis(u64::from(s) * 20)
            ),
            Verdict::Wait
        );
    }
    for s in 0..5 {
        let v = l.observe(
            &cfg,
            &Expect::default(),
            other_port,
            Rank::SignalledAddress,
            &rtp(5, s),
            None,
            t0 + Duration::from_millis(200 + u64::from(s) * 20),
        );
        if s == 4 {
            assert_eq!(
                v,
                Verdict::Latch {
                    src: other_port,
                    rank: Rank::SignalledAddress
                }
            );
        }
    }
}

#[test]
fn candidates_are_bounded() {
    let cfg = LearnConfig::default();
    let now = Instant::now();
    let mut l = Learner::default();
    for p in 0..cfg.max_candidates as u16 {
        assert_eq!(
            l.observe(
                &cfg,
                &Expect::default(),
                ATTACKER.with_port(p + 1),
                Rank::Unknown,
                &rtp(1, 1),
                None,
                now
            ),
            Verdict::Wait
        );
    }
    assert_eq!(
        l.observe(
            &cfg,
            &Expect::default(),
            ATTACKER.with_port(999),
            Rank::Unknown,
            &rtp(1, 1),
            None,
            now
        ),
        Verdict::Refuse
    );
    assert_eq!(l.len(), cfg.max_candidates);
}

#[test]
fn garbage_payloads_count_but_never_panic() {
    let cfg = LearnConfig::default();
    let now = Instant::now();
    let mut l = Learner::default();
    for n in 0..40usize {
        let _ = l.observe(
            &cfg,
            &expect(),
            ATTACKER,
            Rank::Unknown,
            &vec![0xa5; n],
            None,
            now,
        );
    }
}
