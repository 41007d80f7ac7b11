//! The XDP program's per-packet decision: pass, punt to userspace, forward, or hand the
//! packet to the TC program.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use proxy_common::{
    Counter, FlowCounters, FlowEntry, FlowKey, FlowState,
    flow::{budget, flow_flags},
};

use crate::{
    error::Error,
    forward,
    maps::{self, Flow, XSKS},
    parse::{self, Parsed},
};

/// A packet the program took care of: the XDP action and the counter that records it.
pub struct Verdict {
    pub action: u32,
    pub counter: Counter,
}

/// `SKB`: the program runs as generic (SKB-mode) XDP, whose `XDP_TX` and redirects go
/// through the egress device's normal transmit path and are delivered on any device.
#[inline(always)]
pub fn handle<const SKB: bool>(ctx: &XdpContext) -> Result<Verdict, Error> {
    let pkt = parse::parse(ctx)?;

    // Probes and ACKs arrive at the probe port of the relay's own addresses; the same port
    // on another destination is the host's other traffic, not ours to punt.
    let probe_port = maps::probe_port();
    if probe_port != [0, 0] && *pkt.dst.port_be() == probe_port && maps::is_local(&pkt.dst) {
        if !maps::take_budget(budget::PROBES, None) {
            return Err(Error::ProbeBudget);
        }
        return punt(ctx, Counter::PuntProbe);
    }

    let mut copy = maps::EntryCopy::uninit();
    let found = maps::flow(&FlowKey::new(pkt.dst), &mut copy);
    // Judged only for a flow's packets: the host's other traffic is not ours to judge.
    if !matches!(found, Flow::None) && !pkt.lengths_ok() {
        return Err(Error::Malformed);
    }
    let entry = match found {
        Flow::Entry(e) => e,
        Flow::None => return Err(Error::NoFlow),
        // Userspace relays it under whatever it is writing; the CPU's budget holds a flood
        // back (the flow's own is in the entry being written).
        Flow::Changing => {
            if !maps::take_budget(budget::MEDIA, None) {
                return Err(Error::PuntBudget);
            }
            return punt(ctx, Counter::PuntChanging);
        }
    };
    let counters = maps::flow_counters(entry.counter_slot);
    let payload = u64::from(pkt.udp_len) - 8;

    // The source check comes first, in HOLD too: a strict flow drops a spoofer before
    // userspace ever sees it, and only the peer's packets count as the flow's activity (a
    // spoofer must not keep a silent flow alive or block a re-latch).
    if entry.has_flag(flow_flags::REQUIRE_PEER) && pkt.src != entry.peer {
        add(counters, |c| &mut c.mismatch_packets, 1);
        if entry.has_flag(flow_flags::MISMATCH_DROP) {
            return Err(Error::Mismatch);
        }
        return punt_budgeted(ctx, &pkt, entry, counters, payload, Counter::PuntMismatch);
    }
    // No clock is read per packet (a helper call, a fifth of a FORWARD's cost): userspace
    // tells a flow's activity from its forward counter moving (`Dataplane::last_forwarded`),
    // and sees every punted packet itself.
    if entry.state() == FlowState::Hold {
        return punt_budgeted(ctx, &pkt, entry, counters, payload, Counter::PuntHold);
    }
    forward_flow::<SKB>(ctx, &pkt, entry, counters, payload)
}

/// A flow's punt, within its budget: a packet from the source signalling named takes the
/// priority budget, any other the flow's and the CPU's, so that a flood neither reaches the
/// control thread nor crowds out the real peer.
#[inline(always)]
fn punt_budgeted(
    ctx: &XdpContext,
    pkt: &Parsed,
    entry: &FlowEntry,
    counters: Option<*mut FlowCounters>,
    payload: u64,
    why: Counter,
) -> Result<Verdict, Error> {
    let (which, per_flow) = if entry.hinted(&pkt.src) {
        (budget::PRIORITY, None)
    } else {
        (budget::MEDIA, counters)
    };
    if !maps::take_budget(which, per_flow) {
        return Err(Error::PuntBudget);
    }
    punt_counted(ctx, counters, payload, why)
}

#[inline(always)]
fn forward_flow<const SKB: bool>(
    ctx: &XdpContext,
    pkt: &Parsed,
    entry: &FlowEntry,
    counters: Option<*mut FlowCounters>,
    payload: u64,
) -> Result<Verdict, Error> {
    let (action, counter) = match forward::forward::<SKB>(ctx, pkt, entry)? {
        forward::Sent::Tx => (xdp_action::XDP_TX, Counter::FwdTx),
        forward::Sent::Redirect(action) => (action, Counter::FwdRedirect),
        // Untouched: the TC program forwards it (and counts it in the flow's counters).
        forward::Sent::SkbPath => {
            return Ok(Verdict {
                action: xdp_action::XDP_PASS,
                counter: Counter::PassSkbPath,
            });
        }
        // Untouched: userspace hands it to the kernel's stack.
        forward::Sent::NotYet(why) => {
            return punt_budgeted(ctx, pkt, entry, counters, payload, why);
        }
    };
    add(counters, |c| &mut c.fwd_packets, 1);
    add(counters, |c| &mut c.fwd_bytes, payload);
    Ok(Verdict { action, counter })
}

#[inline(always)]
fn punt_counted(
    ctx: &XdpContext,
    counters: Option<*mut FlowCounters>,
    payload: u64,
    why: Counter,
) -> Result<Verdict, Error> {
    let verdict = punt(ctx, why)?;
    add(counters, |c| &mut c.punt_packets, 1);
    add(counters, |c| &mut c.punt_bytes, payload);
    Ok(verdict)
}

/// Hands the frame to the `AF_XDP` socket of the queue it arrived on.
#[inline(always)]
fn punt(ctx: &XdpContext, why: Counter) -> Result<Verdict, Error> {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel's ifindex is a u32"
    )]
    let ingress = ctx.ingress_ifindex() as u32;
    let index = maps::xsk_index(ingress, ctx.rx_queue_index()).ok_or(Error::NoSocket)?;
    match XSKS.redirect(index, 0) {
        Ok(action) => Ok(Verdict {
            action,
            counter: why,
        }),
        Err(_) => Err(Error::NoSocket),
    }
}

/// Adds to one per-flow counter, without a locked instruction. A flow is one 5-tuple, which
/// the NIC's RSS hashes to one queue, so its packets are counted on one CPU and the slot's
/// cache line stays there. Should two CPUs ever count the same flow at once (a sender whose
/// packets reach the relay through several queues), an add can be lost, never corrupted: the
/// counters are traffic statistics, and the lost fraction is that of the overlap.
#[inline(always)]
pub fn add(
    counters: Option<*mut FlowCounters>,
    field: impl FnOnce(&mut FlowCounters) -> &mut u64,
    n: u64,
) {
    if let Some(c) = counters {
        // SAFETY: a valid array element (see above); the field is 8-byte aligned inside it.
        let field = unsafe { field(&mut *c) };
        *field = field.wrapping_add(n);
    }
}
