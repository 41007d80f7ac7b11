//! FORWARD on the skb path: the TC ingress program, for packets that native XDP cannot send
//! (its egress drops native frames, as a container's veth does) and passed up.
//!
//! The rewrite uses the kernel's checksum helpers rather than our own arithmetic: an skb
//! carries a checksum state (a local sender's `CHECKSUM_PARTIAL`, a NIC's `CHECKSUM_COMPLETE`)
//! that a redirect keeps, and `bpf_l4_csum_replace` updates the field and that state the way
//! the kernel's own NAT does, so the egress device or the receiver finishes it right.
//!
//! What TC cannot send (HOLD, no next hop, larger than the egress MTU, a source to re-check)
//! it leaves to the stack, where the `sk_lookup` program hands the flow's datagrams to the
//! relay's fallback socket in userspace. Everything that is not a flow's it leaves alone.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_csum_diff, bpf_redirect},
    programs::TcContext,
};
use proxy_common::{
    Counter, Endpoint, FlowEntry, FlowKey, FlowState,
    flow::{family, flow_flags},
    wire::{EthHdr, Ipv4Hdr, Ipv6Hdr, ip_proto},
};

use crate::{
    error::Error,
    maps::{self, Flow},
    parse::{self, L3_OFF, Parsed},
    relay::add,
};

/// Enough linear bytes for every header the parser reads: Ethernet, IPv4 with the longest
/// options, UDP.
#[expect(clippy::cast_possible_truncation, reason = "82 bytes")]
const HEADERS: u32 = (core::mem::size_of::<EthHdr>() + 60 + 8) as u32;
/// Offsets of the fields the rewrite touches.
const V4_TTL: usize = L3_OFF + 8;
const V4_CHECK: usize = L3_OFF + 10;
const V4_ADDRS: usize = L3_OFF + 12;
const V6_HOP_LIMIT: usize = L3_OFF + 7;
const V6_ADDRS: usize = L3_OFF + 8;

/// What the program does with a flow's packet, and the counter for it. `None`: not a
/// flow's packet; the stack gets it, uncounted (XDP counted it already).
#[inline(always)]
pub fn handle(ctx: &TcContext) -> Option<(i32, Counter)> {
    let pkt = match parse::parse(ctx) {
        Ok(p) => p,
        // The skb's headers may sit partly outside its linear area: pull them in, once.
        Err(Error::Truncated) if (ctx.data_end() - ctx.data()) < ctx.len() as usize => {
            ctx.pull_data(HEADERS.min(ctx.len())).ok()?;
            parse::parse(ctx).ok()?
        }
        Err(_) => return None,
    };
    let to_userspace = Some((TC_ACT_OK, Counter::TcToUserspace));
    let mut copy = maps::EntryCopy::uninit();
    let entry = match maps::flow(&FlowKey::new(pkt.dst), &mut copy) {
        Flow::Entry(e) => e,
        Flow::None => return None,
        // Up the stack to the fallback socket: userspace relays it under the new entry.
        Flow::Changing => return to_userspace,
    };
    if !pkt.lengths_ok() {
        return None;
    }
    let counters = maps::flow_counters(entry.counter_slot);
    if entry.has_flag(flow_flags::REQUIRE_PEER) && pkt.src != entry.peer {
        if entry.has_flag(flow_flags::MISMATCH_DROP) {
            add(counters, |c| &mut c.mismatch_packets, 1);
            return Some((TC_ACT_SHOT, Counter::TcDropMismatch));
        }
        return to_userspace;
    }
    // As in XDP: what TC cannot send goes up, IPv4 options included (userspace sends the
    // payload on clean).
    let options = pkt.has_ip_options();
    if entry.state() == FlowState::Hold
        || !entry.has_flag(flow_flags::NEXT_HOP)
        || entry.out_src.family() != pkt.family
        || entry.out_dst.family() != pkt.family
        || pkt.ip_len > entry.mtu
        || options
    {
        return to_userspace;
    }
    if pkt.ttl <= 1 {
        return Some((TC_ACT_SHOT, Counter::DropTtl));
    }
    if rewrite(ctx, &pkt, entry).is_err() {
        // A helper refused (the skb could not be made writable): nothing or part of it was
        // written, so the packet must not go on. The stack would drop it as misaddressed.
        return Some((TC_ACT_SHOT, Counter::DropMalformed));
    }
    add(counters, |c| &mut c.fwd_packets, 1);
    add(counters, |c| &mut c.fwd_bytes, u64::from(pkt.udp_len) - 8);
    // SAFETY: plain helper call; it only records the target in the per-CPU redirect info.
    let action = unsafe { bpf_redirect(entry.egress_ifindex, 0) };
    // A TC_ACT_* value (0..=8, or TC_ACT_SHOT on failure): it fits the classifier's i32.
    #[expect(clippy::cast_possible_truncation, reason = "a TC_ACT_* value")]
    let action = action as i32;
    Some((action, Counter::TcFwd))
}

/// New addresses, ports and MACs, with the IPv4 header and UDP checksums updated by the
/// kernel's helpers.
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &Parsed, entry: &FlowEntry) -> Result<(), i64> {
    let check = pkt.udp_off + 6;
    if pkt.family == family::V4 {
        let old = addrs_v4(&pkt.src, &pkt.dst);
        let new = addrs_v4(&entry.out_src, &entry.out_dst);
        let diff = csum_diff(&old, &new)?;
        ctx.l3_csum_replace(V4_CHECK, 0, diff, 0)?;
        // One hop: TTL down by one (see proxy_common::rewrite), in the same 16-bit word as
        // the protocol for the header checksum.
        let ttl = pkt.ttl - 1;
        let old_word = u16::from_ne_bytes([pkt.ttl, ip_proto::UDP]);
        let new_word = u16::from_ne_bytes([ttl, ip_proto::UDP]);
        ctx.l3_csum_replace(V4_CHECK, u64::from(old_word), u64::from(new_word), 2)?;
        ctx.store(V4_TTL, &ttl, 0)?;
        // The addresses are in the UDP pseudo-header: with BPF_F_PSEUDO_HDR a partial
        // checksum gets its seed updated, a complete one its field (and skb->csum).
        ctx.l4_csum_replace(
            check,
            0,
            diff,
            u64::from(BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0),
        )?;
        ctx.store(V4_ADDRS, &new, 0)?;
    } else {
        let old = addrs_v6(&pkt.src, &pkt.dst);
        let new = addrs_v6(&entry.out_src, &entry.out_dst);
        let diff = csum_diff(&old, &new)?;
        ctx.l4_csum_replace(
            check,
            0,
            diff,
            u64::from(BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0),
        )?;
        ctx.store(V6_ADDRS, &new, 0)?;
        ctx.store(V6_HOP_LIMIT, &(pkt.ttl - 1), 0)?;
    }
    let old_ports = ports(&pkt.src, &pkt.dst);
    let new_ports = ports(&entry.out_src, &entry.out_dst);
    let diff = csum_diff(&old_ports, &new_ports)?;
    // Ports are in the segment itself: a partial checksum's NIC covers them, so only a
    // complete field changes (no BPF_F_PSEUDO_HDR). A zero field over IPv4 stays zero.
    ctx.l4_csum_replace(check, 0, diff, u64::from(BPF_F_MARK_MANGLED_0))?;
    ctx.store(pkt.udp_off, &new_ports, 0)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&entry.dst_mac);
    macs[6..].copy_from_slice(&entry.src_mac);
    ctx.store(0, &macs, 0)?;
    Ok(())
}

#[inline(always)]
fn addrs_v4(src: &Endpoint, dst: &Endpoint) -> [u8; 8] {
    let (s, d) = (src.addr_v4(), dst.addr_v4());
    [s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]
}

#[inline(always)]
fn addrs_v6(src: &Endpoint, dst: &Endpoint) -> [u8; 32] {
    let mut a = [0u8; 32];
    a[..16].copy_from_slice(src.addr_v6());
    a[16..].copy_from_slice(dst.addr_v6());
    a
}

#[inline(always)]
fn ports(src: &Endpoint, dst: &Endpoint) -> [u8; 4] {
    let (s, d) = (src.port_be(), dst.port_be());
    [s[0], s[1], d[0], d[1]]
}

/// The one's-complement difference between two byte strings of equal length (a multiple of
/// four), as `bpf_csum_diff` gives it for the `*_csum_replace` helpers.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "N is a header field's size"
)]
fn csum_diff<const N: usize>(old: &[u8; N], new: &[u8; N]) -> Result<u64, i64> {
    // SAFETY: both buffers are N readable bytes on the stack; the helper only reads them.
    let r = unsafe {
        bpf_csum_diff(
            old.as_ptr().cast_mut().cast(),
            N as u32,
            new.as_ptr().cast_mut().cast(),
            N as u32,
            0,
        )
    };
    if r < 0 { Err(r) } else { Ok(r.cast_unsigned()) }
}

// `Ipv4Hdr` and `Ipv6Hdr` fix the offsets above; keep them honest.
const _: () =
    assert!(core::mem::size_of::<Ipv4Hdr>() == 20 && core::mem::size_of::<Ipv6Hdr>() == 40);
