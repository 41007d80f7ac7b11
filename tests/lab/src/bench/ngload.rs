//! Control-plane load: ng offer/answer latency and the daemon's memory per call.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use proxy_userspace::ng::bencode::Value;

use crate::scenario::{self, binary, sdp};

use super::harness::Harness;
use super::relays::{out_dir, spawn_pinned, wait_ng};
use super::report::NgFigures;

/// Sets up `calls` calls through the daemon, one offer/answer pair at a time, and keeps them.
#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn ng_load(h: &Harness, calls: u64) -> anyhow::Result<NgFigures> {
    eprintln!("  ng: setting up {calls} calls ...");
    let bin = binary()?;
    let bin = bin.to_string_lossy().into_owned();
    let flows = (calls * 4 + 16).to_string();
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let child = spawn_pinned(
        &h.relay,
        &[
            bin.as_str(),
            "run",
            "--interface",
            "internal/10.0.1.1",
            "--interface",
            "external/10.0.2.1",
            "--port-min",
            "2000",
            "--port-max",
            "65000",
            "--max-flows",
            &flows,
        ],
        &dir.join("ng.log"),
    )?;
    let c = wait_ng(&h.relay, "127.0.0.1:22222".parse()?)?;
    let dir_list = Value::List(vec![Value::str("internal"), Value::str("external")]);
    let t0 = Instant::now();
    let mut offer_time = Duration::ZERO;
    let mut held = 0u64;
    let mut stopped_by = "the requested number".to_owned();
    for i in 0..calls {
        let id = format!("load-{i}");
        let t = Instant::now();
        let o = scenario::ng(
            &c,
            "offer",
            &[
                ("call-id", Value::str(&id)),
                ("from-tag", Value::str("a")),
                ("sdp", Value::str(&sdp("10.0.1.2", 4000))),
                ("direction", dir_list.clone()),
            ],
        );
        offer_time += t.elapsed();
        if let Err(e) = o {
            stopped_by = e.to_string();
            break;
        }
        if let Err(e) = scenario::ng(
            &c,
            "answer",
            &[
                ("call-id", Value::str(&id)),
                ("from-tag", Value::str("a")),
                ("to-tag", Value::str("b")),
                ("sdp", Value::str(&sdp("10.0.2.2", 5000))),
            ],
        ) {
            stopped_by = e.to_string();
            break;
        }
        held += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.0.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
            })
        })
        .unwrap_or(0.0);
    let st = scenario::ng(&c, "statistics", &[])?;
    let flows_held = st
        .get("statistics")
        .and_then(Value::as_dict)
        .and_then(|s| s.get("mediaproxy"))
        .and_then(Value::as_dict)
        .and_then(|m| m.get("flows"))
        .and_then(Value::as_int)
        .unwrap_or(0);
    drop(child);
    Ok(NgFigures {
        calls_per_second: held as f64 / secs,
        offers_per_second: held as f64 / offer_time.as_secs_f64().max(1e-9),
        calls_held: held,
        flows_held: flows_held.max(0).unsigned_abs(),
        daemon_rss_mib: rss,
        stopped_by,
    })
}

// ---------------------------------------------------------------------------------------

#[expect(
    clippy::cast_precision_loss,
    reason = "benchmark statistics: counts and durations far below 2^52, where f64 is exact"
)]
pub(super) fn percentile_us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}
