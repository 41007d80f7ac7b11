//! The call model driven by any sequence of ng requests (offers, answers, re-INVITEs,
//! deletes with any delay, queries, lists with any limit, probes, time passing): never a
//! panic, every reply has a result, the port pool is never over-used, and once every call is
//! deleted and expired nothing is left: no port, no stream (no leak on any failure path).
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use proxy_userspace::{
    ng::{
        bencode::{Dict, Value},
        calls::{Calls, CallsConfig, Interface, KernelFlow},
    },
    session::{Engine, EngineConfig},
};

/// No kernel behind the call model.
fn no_kernel(_: &proxy_common::Endpoint) -> Option<KernelFlow> {
    None
}

/// A small pool (8 pairs per interface), so that running out of ports is often hit.
fn calls() -> Calls {
    Calls::new(
        CallsConfig {
            interfaces: vec![
                Interface::parse("a/10.0.1.1").unwrap(),
                Interface::parse("b/10.0.2.1").unwrap(),
            ],
            port_min: 30000,
            port_max: 30016,
            max_calls: 5,
            max_media: 4,
            max_flows: 40,
            ..CallsConfig::default()
        },
        7,
    )
}

fn sdp(addr: u8, medias: u8, port: u16) -> String {
    let ip = match addr % 5 {
        0 => "10.0.1.2".to_owned(),
        1 => "0.0.0.0".to_owned(),
        2 => "127.0.0.1".to_owned(),
        3 => "10.0.1.1".to_owned(), // the relay's own address
        _ => format!("192.0.2.{addr}"),
    };
    let mut s = format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n");
    for i in 0..medias % 6 {
        let p = if i == 1 { 0 } else { port.wrapping_add(u16::from(i) * 2) };
        s.push_str(&format!("m=audio {p} RTP/AVP 8\r\na=rtcp:{}\r\n", p.wrapping_add(1)));
    }
    s
}

fn int(bytes: &mut std::slice::Iter<'_, u8>) -> i64 {
    let mut b = [0u8; 8];
    for x in &mut b {
        *x = bytes.next().copied().unwrap_or(0);
    }
    i64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut c = calls();
    let mut e = Engine::new(EngineConfig::default(), 7);
    let t0 = Instant::now();
    let mut now = t0;
    let wall = SystemTime::now();
    let mut it = data.iter();
    while let Some(&op) = it.next() {
        let a = it.next().copied().unwrap_or(0);
        let b = it.next().copied().unwrap_or(0);
        let mut d = Dict::new();
        let call = format!("c{}", a % 4);
        let cmd = match op % 9 {
            0 | 1 => "offer",
            2 => "answer",
            3 => "delete",
            4 => "query",
            5 => "list",
            6 => "probe",
            7 => "statistics",
            _ => {
                now += Duration::from_millis(u64::from(a) * 250);
                c.housekeeping(&mut e, now, &no_kernel);
                continue;
            }
        };
        d.push("command", Value::str(cmd));
        d.push("call-id", Value::str(&call));
        d.push("from-tag", Value::str(&format!("f{}", b % 3)));
        match cmd {
            "offer" | "answer" => {
                if cmd == "answer" {
                    d.push("to-tag", Value::str(&format!("t{}", b % 2)));
                }
                d.push("sdp", Value::str(&sdp(a, b, 4000 + u16::from(b))));
                if b & 1 != 0 {
                    d.push(
                        "received-from",
                        Value::List(vec![Value::str("IP4"), Value::str("198.51.100.7")]),
                    );
                }
                if b & 2 != 0 {
                    d.push("flags", Value::List(vec![Value::str("strict source"), Value::str("next-relay=192.0.2.99")]));
                }
                if b & 4 != 0 {
                    d.push("supports", Value::List(vec![Value::str("load limit")]));
                }
            }
            "delete" => {
                d.push("delete-delay", Value::Int(int(&mut it)));
            }
            "list" => {
                d.push("limit", Value::Int(int(&mut it)));
            }
            _ => {}
        }
        let r = c.handle(&mut e, &d, now, wall, &no_kernel);
        assert!(r.get("result").is_some(), "{cmd}: no result in {r:?}");
        assert!(c.ports_in_use() <= 16, "more ports than the pools have");
        while e.poll_output().is_some() {}
    }
    // Delete everything now and let it expire: nothing may be left.
    for i in 0..4 {
        let mut d = Dict::new();
        d.push("command", Value::str("delete"));
        d.push("call-id", Value::str(&format!("c{i}")));
        d.push("delete-delay", Value::Int(0));
        let _ = c.handle(&mut e, &d, now, wall, &no_kernel);
    }
    c.housekeeping(&mut e, now + Duration::from_secs(7200), &no_kernel);
    c.housekeeping(&mut e, now + Duration::from_secs(14_400), &no_kernel);
    assert_eq!(c.ports_in_use(), 0, "ports leaked");
    assert_eq!(e.stream_count(), 0, "streams leaked");
});
