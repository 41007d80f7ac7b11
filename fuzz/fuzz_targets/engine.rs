//! The session engine driven by any sequence of events (media from the signalled endpoint,
//! the SIP source, strangers, martians; re-INVITEs; probes and ACKs; timers; streams added
//! and removed): never a panic, the held buffer stays bounded, a martian is never latched,
//! and once every stream is removed nothing is left.
#![no_main]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use proxy_common::{
    Endpoint,
    probe::{Kind, ProbeMessage, Trust},
};
use proxy_userspace::session::{
    Engine, EngineConfig, FarSide, Side, StreamConfig, StreamUpdate, is_martian,
};

fn source(k: u8) -> Endpoint {
    match k % 8 {
        0 => Endpoint::v4([10, 0, 1, 2], 4000),  // A's signalled endpoint
        1 => Endpoint::v4([10, 0, 2, 2], 5000),  // B's
        2 => Endpoint::v4([198, 51, 100, 7], u16::from(k) * 7 + 1), // A's SIP source
        3 => Endpoint::v4([127, 0, 0, 1], 4000),
        4 => Endpoint::v4([0, 0, 0, 0], 9),
        5 => Endpoint::v4([224, 0, 0, 1], 5),
        6 => Endpoint::v4([203, 0, 113, k], 1000 + u16::from(k)),
        _ => Endpoint::v6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1], 7),
    }
}

fuzz_target!(|data: &[u8]| {
    // Both policies toward a silent side, by the first byte.
    let cfg = EngineConfig {
        far_side: if data.first().is_some_and(|b| b & 1 == 1) {
            FarSide::Confirmed
        } else {
            FarSide::Signalled
        },
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, 3);
    let t0 = Instant::now();
    let mut now = t0;
    let locals = |i: u16| {
        [
            Endpoint::v4([10, 0, 1, 1], 30000 + i * 2),
            Endpoint::v4([10, 0, 2, 1], 30100 + i * 2),
        ]
    };
    let mut ids = Vec::new();
    for i in 0..2u16 {
        let mut sc = StreamConfig::new(locals(i)[0], locals(i)[1]);
        sc.remote = [Some(source(0)), Some(source(1))];
        sc.sip_source = [source(2).ip(), None];
        sc.next_relay = [None, Some("192.0.2.99:7999".parse().unwrap())];
        sc.rtp_stream = (i == 1).then(|| ids[0]);
        ids.push(e.add_stream(sc).unwrap());
    }
    let mut it = data.chunks(4);
    while let Some(ch) = it.next() {
        let [op, a, b, c] = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0), *ch.get(3).unwrap_or(&0)];
        let stream = usize::from(a % 2);
        let side = usize::from(b % 2);
        match op % 6 {
            0 | 1 => {
                let mut payload = vec![0x80, 8, c, b, 0, 0, 0, 0, 0, 0, 0, a];
                payload.resize(12 + usize::from(c % 4) * 40, 0xd5);
                let local = locals(u16::try_from(stream).unwrap())[side];
                e.handle_media(local, source(c), &payload, None, now);
            }
            2 => {
                let mut upd = StreamUpdate::default();
                upd.remote[side] = Some(source(c));
                upd.signalled[side] = true;
                upd.sip_source[side] = source(a).ip();
                let _ = e.update_stream(ids[stream], &upd, now);
            }
            3 => {
                let msg = ProbeMessage {
                    kind: if c & 1 == 0 { Kind::Probe } else { Kind::Ack },
                    nonce: u64::from(a) | u64::from(b) << 8,
                    timestamp_ms: 0,
                    session: 0,
                    target: locals(u16::try_from(stream).unwrap())[side],
                    sender: source(c),
                    receiver: Endpoint::v4([10, 0, 1, 1], 7999),
                    unsigned: b & 1 == 1,
                };
                let trust = if b & 2 == 0 { Trust::Authenticated } else { Trust::Unverified };
                let from: SocketAddr = source(c).socket_addr().unwrap_or_else(|| "192.0.2.9:1".parse().unwrap());
                match msg.kind {
                    Kind::Probe => e.handle_probe(Endpoint::v4([10, 0, 1, 1], 7999), from, &msg, trust, 0, now),
                    Kind::Ack => e.handle_ack(&msg, from, trust, now),
                }
            }
            4 => {
                now += Duration::from_millis(u64::from(a) * 20);
                e.handle_timeout(now);
            }
            _ => {
                let _ = e.unblock(ids[stream], if side == 0 { Side::A } else { Side::B }, c & 1 == 0, now);
            }
        }
        while e.poll_output().is_some() {}
        for id in &ids {
            if let Some(st) = e.status(*id) {
                for s in st {
                    assert!(s.held <= cfg.held_capacity, "held {}", s.held);
                    if let Some(l) = s.latched {
                        assert!(!is_martian(&l), "latched a martian: {l}");
                    }
                }
            }
        }
    }
    for id in ids {
        e.remove_stream(id).unwrap();
    }
    while e.poll_output().is_some() {}
    assert_eq!(e.stream_count(), 0);
    assert!(e.poll_timeout().is_none_or(|_| true));
});
