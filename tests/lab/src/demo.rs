//! `mediaproxy demo`: the README's first command. Builds namespace topologies, runs the real
//! daemon in them, sets calls up over ng, streams RTP both ways, and prints what happened.

use std::time::{Duration, Instant};

use aya::programs::XdpMode;

use proxy_userspace::ng::bencode::{Dict, Value};

use crate::scenario::{self, Bridged, Phone, Relay, TwoRelays, query_figure, query_text, stream};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// XDP mode for the two-relay runs (relays and the test rig's pass programs); the
    /// container runs use the daemon's defaults.
    #[arg(long, default_value = "native", value_parser = ["native", "skb"])]
    pub mode: String,
    /// Seconds of media per run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u16,
}

fn mode(a: &DemoArgs) -> XdpMode {
    if a.mode == "skb" {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    }
}

/// # Errors
///
/// If the host lacks what the relay needs, or a scenario fails.
pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    proxy_userspace::caps::require()?;
    let packets = a.seconds * 50;
    println!(
        "mediaproxy demo ({} XDP, {} s of 20 ms RTP each way per run)\n",
        a.mode, a.seconds
    );
    for one_armed in [false, true] {
        container(packets, one_armed)?;
    }
    for v in [Variant::Deadlock, Variant::Probed, Variant::Default] {
        two_relays(a, packets, v)?;
    }
    println!("\nAll namespaces, links and programs are removed on exit.");
    Ok(())
}

fn line(label: &str, s: &scenario::StreamReport) -> String {
    let setup = s
        .setup_delay()
        .map_or("never".to_owned(), |d| format!("{} ms", d.as_millis()));
    format!(
        "{label}: sent {}, received {}, lost {}, first packet delivered after {setup}",
        s.sent,
        s.distinct,
        s.lost()
    )
}

/// Per interface of the relay: its XDP mode and the path flows leaving through it take.
fn paths(stats: &Dict) -> String {
    let mp = stats
        .get("statistics")
        .and_then(Value::as_dict)
        .and_then(|s| s.get("mediaproxy"))
        .and_then(Value::as_dict);
    mp.and_then(|m| m.get("interfaces"))
        .and_then(Value::as_list)
        .into_iter()
        .flatten()
        .filter_map(Value::as_dict)
        .map(|d| {
            format!(
                "{}: {} XDP, egress by {}",
                d.get_str("name").unwrap_or("?"),
                d.get_str("xdp mode").unwrap_or("?"),
                d.get_str("egress path").unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The container shape: the relay's interfaces are veths into bridges on the host's side, as
/// Docker, Kubernetes and LXC connect a container; nothing but the relay runs XDP. Default
/// daemon options, as a new user runs it.
#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn container(packets: u16, one_armed: bool) -> anyhow::Result<()> {
    if one_armed {
        println!(
            "== One-armed relay (cloud style): relay, phone A (10.0.1.2) and phone B (10.0.1.3) on one bridge =="
        );
    } else {
        println!(
            "== A relay in a container: phone A (10.0.1.2) — bridge — relay — bridge — phone B (10.0.2.2) =="
        );
    }
    let t = Bridged::build(if one_armed { "demo1" } else { "demo0" }, one_armed)?;
    let relay = Relay::start(&t.relay, &t.interfaces(false), &[], false, XdpMode::Default)?;
    let c = relay.ng(&t.relay)?;
    let (a, b) = t.phones(false);
    let (a_to, b_to) = scenario::call(&c, "demo-1", a, b, t.direction())?;
    println!("  ng offer/answer: A sends to {a_to}, B sends to {b_to}; both flows start in HOLD");
    let mut pa = Phone::bind(&t.a, a)?;
    let mut pb = Phone::bind(&t.b, b)?;
    pa.start(a_to, a_to, 0xa, packets);
    pb.start(b_to, b_to, 0xb, packets);
    std::thread::sleep(Duration::from_millis(u64::from(packets) * 20 + 300));
    pa.stop();
    pb.stop();
    let q = scenario::ng(&c, "query", &[("call-id", Value::str("demo-1"))])?;
    let st = scenario::ng(&c, "statistics", &[])?;
    println!("  {}", line("A→B", &stream(&pa, &pb)));
    println!("  {}", line("B→A", &stream(&pb, &pa)));
    println!("  relay: {}", paths(&st));
    for (tag, side) in [("tag-a", "A"), ("tag-b", "B")] {
        println!(
            "  relay, packets from {side}: punted to userspace while HOLD {}, then {}: forwarded by the kernel {}, by userspace {}",
            query_figure(&q, tag, "packets punted"),
            query_text(&q, tag, "state").unwrap_or_default(),
            query_figure(&q, tag, "packets xdp"),
            query_figure(&q, tag, "sent by userspace"),
        );
    }
    scenario::ng(
        &c,
        "delete",
        &[
            ("call-id", Value::str("demo-1")),
            ("delete-delay", Value::Int(0)),
        ],
    )?;
    println!();
    Ok(())
}

/// The three ways two relays in series can meet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Both hold toward a silent side and never probe: the deadlock of latching relays.
    Deadlock,
    /// Both hold toward a silent side (`--far-side confirmed`); the call servers name the
    /// next relay, and the probe/ACK exchange unblocks.
    Probed,
    /// The defaults, and no flags: what a stock call-server config gets.
    Default,
}

#[expect(
    clippy::many_single_char_names,
    reason = "one letter per endpoint of the scenario (phones a and b, ...), as the other tests name them"
)]
fn two_relays(a: &DemoArgs, packets: u16, v: Variant) -> anyhow::Result<()> {
    let (title, tag, probing, extra, named): (&str, &str, bool, &[&str], bool) = match v {
        Variant::Deadlock => (
            "holding toward a silent side, no probes",
            "demo2",
            false,
            &["--far-side", "confirmed", "--no-probing"],
            true,
        ),
        Variant::Probed => (
            "holding toward a silent side, next relays named, probing",
            "demo3",
            true,
            &["--far-side", "confirmed"],
            true,
        ),
        Variant::Default => (
            "default options, no flags from the call servers",
            "demo4",
            false,
            &[],
            false,
        ),
    };
    println!(
        "== Two relays in series: A — MP1 — NAT (192.0.2.1, port-changing) — MP2 — B; {title} =="
    );
    let t = TwoRelays::build(tag, mode(a))?;
    let (r1, r2) = t.relays(probing, mode(a), extra)?;
    let call = scenario::two_relay_call(&t, &r1, &r2, "demo-2", named)?;
    let mut pa = Phone::bind(&t.a, "10.0.1.2:4000".parse()?)?;
    let mut pb = Phone::bind(&t.b, "10.0.2.2:5000".parse()?)?;
    let started = Instant::now();
    pa.start(call.a_sends_to, call.a_sends_to, 0xa, packets);
    pb.start(call.b_sends_to, call.b_sends_to, 0xb, packets);
    std::thread::sleep(Duration::from_millis(u64::from(packets) * 20 + 300));
    pa.stop();
    pb.stop();
    let ab = stream(&pa, &pb);
    let ba = stream(&pb, &pa);
    println!("  {}", line("A→B", &ab));
    println!("  {}", line("B→A", &ba));
    let q1 = scenario::ng(
        &r1.ng(&t.mp1)?,
        "query",
        &[("call-id", Value::str("demo-2"))],
    )?;
    let q2 = scenario::ng(
        &r2.ng(&t.mp2)?,
        "query",
        &[("call-id", Value::str("demo-2"))],
    )?;
    for (name, q, near) in [("MP1", &q1, "tag-a"), ("MP2", &q2, "tag-b")] {
        let suspected = query_figure(q, near, "blocking suspected ms");
        let far = if near == "tag-a" { "tag-b" } else { "tag-a" };
        println!(
            "  {name}: blocking suspected {}; probe toward the other relay: {}; punted before the flip {} (near) / {} (far); XDP forwarded {} / {}",
            if suspected > 0 {
                format!("after {suspected} ms")
            } else {
                "no".to_owned()
            },
            query_text(q, far, "probe").unwrap_or_else(|| "-".into()),
            query_figure(q, near, "packets punted"),
            query_figure(q, far, "packets punted"),
            query_figure(q, near, "packets xdp"),
            query_figure(q, far, "packets xdp"),
        );
    }
    if v != Variant::Deadlock {
        match (ab.setup_delay(), ba.setup_delay()) {
            (Some(x), Some(y)) => println!(
                "  => unblocked: media flows both ways ({} ms and {} ms after the first packet)",
                x.as_millis(),
                y.as_millis()
            ),
            _ => println!(
                "  => media did NOT flow in both directions; MP1's log:\n{}\nMP2's log:\n{}",
                r1.log_text(),
                r2.log_text()
            ),
        }
    } else if ab.distinct == 0 && ba.distinct == 0 {
        println!(
            "  => deadlock: each relay waits for the other, no media in {} ms",
            started.elapsed().as_millis()
        );
    } else {
        println!("  => unexpected: media flowed without probing while holding");
    }
    println!();
    Ok(())
}
