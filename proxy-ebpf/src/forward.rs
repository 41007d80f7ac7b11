//! FORWARD: find the next hop, rewrite addresses, ports and checksums, and send.
//!
//! The FIB lookup comes first, on the entry's addresses, so that a packet we cannot send yet
//! (no route, neighbour not resolved, MTU) reaches userspace unmodified and userspace can hand
//! it to the kernel's stack, which resolves the neighbour. Nothing is dropped for want of ARP.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup},
    helpers::{bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use proxy_common::{
    Counter, FlowEntry, csum,
    flow::family,
    rewrite::{self, UdpChecksum},
    wire::{EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr},
};

use crate::{
    access::ptr_at,
    error::Error,
    maps::EGRESS,
    parse::{L3_OFF, Parsed},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Bytes summed per `bpf_csum_diff` call (at most 512, a multiple of 4; a stack buffer).
const CSUM_CHUNK: usize = 64;
/// Payloads up to 1536 bytes (a 1500-byte MTU) get their partial checksum finished in XDP;
/// longer ones (jumbo frames from a local sender, never seen on RTP) go to userspace.
const MAX_CSUM_CHUNKS: usize = 24;

pub enum Sent {
    Tx,
    Redirect(u32),
    /// Not sent: the counter says why; the packet is unmodified.
    NotYet(Counter),
}

#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Parsed, entry: &FlowEntry) -> Result<Sent, Error> {
    if entry.out_src.family() != pkt.family || entry.out_dst.family() != pkt.family {
        return Ok(Sent::NotYet(Counter::PuntFamily));
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(fib) = next_hop(ctx, pkt, entry, ingress) else {
        return Ok(Sent::NotYet(Counter::PuntNoRoute));
    };
    let egress = fib.ifindex;
    if egress != ingress && EGRESS.get(egress).is_none() {
        return Ok(Sent::NotYet(Counter::PuntNoDevmap));
    }

    let payload_off = pkt.udp_off + core::mem::size_of::<UdpHdr>();
    let payload_len = usize::from(pkt.udp_len) - core::mem::size_of::<UdpHdr>();
    let finishable = payload_len <= MAX_CSUM_CHUNKS * CSUM_CHUNK;
    // SAFETY (both headers below): ptr_at bounds-checked them; they do not overlap each other
    // or the Ethernet header, and all have alignment 1.
    let udp = unsafe { &mut *ptr_at::<UdpHdr>(ctx, pkt.udp_off)? };
    if pkt.family == family::V4 {
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, L3_OFF)? };
        let payload_sum = match rewrite::classify_v4(ip, udp) {
            UdpChecksum::Partial if !finishable => return Ok(Sent::NotYet(Counter::PuntOversize)),
            UdpChecksum::Partial => packet_sum(ctx, payload_off, payload_len)?,
            _ => 0,
        };
        rewrite::rewrite_v4(ip, udp, &entry.out_src, &entry.out_dst, || payload_sum);
    } else {
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, L3_OFF)? };
        let payload_sum = match rewrite::classify_v6(ip, udp) {
            UdpChecksum::Partial if !finishable => return Ok(Sent::NotYet(Counter::PuntOversize)),
            UdpChecksum::Partial => packet_sum(ctx, payload_off, payload_len)?,
            _ => 0,
        };
        rewrite::rewrite_v6(ip, udp, &entry.out_src, &entry.out_dst, || payload_sum);
    }
    // SAFETY: bounds-checked by ptr_at; alignment 1.
    let eth = unsafe { &mut *ptr_at::<EthHdr>(ctx, 0)? };
    eth.dst = fib.dmac;
    eth.src = fib.smac;

    if egress == ingress {
        return Ok(Sent::Tx);
    }
    match EGRESS.redirect(egress, 0) {
        Ok(action) => Ok(Sent::Redirect(action)),
        Err(_) => Err(Error::RedirectFailed),
    }
}

/// The FIB's answer for the rewritten packet, if it can be sent now.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    pkt: &Parsed,
    entry: &FlowEntry,
    ingress: u32,
) -> Option<bpf_fib_lookup> {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is its documented neutral input.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.l4_protocol = proxy_common::wire::ip_proto::UDP;
    fib.sport = u16::from_ne_bytes(*entry.out_src.port_be());
    fib.dport = u16::from_ne_bytes(*entry.out_dst.port_be());
    // Host order: the kernel compares it with the route's MTU and answers FRAG_NEEDED.
    fib.__bindgen_anon_1.tot_len = pkt.ip_len;
    let mut flags = 0;
    fib.ifindex = if entry.egress_ifindex != 0 {
        // Pinned egress: look up as the output path of that interface.
        flags = BPF_FIB_LOOKUP_OUTPUT;
        entry.egress_ifindex
    } else {
        ingress
    };
    if pkt.family == family::V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(*entry.out_src.addr_v4());
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*entry.out_dst.addr_v4());
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(entry.out_src.addr_v6());
        fib.__bindgen_anon_4.ipv6_dst = words(entry.out_dst.addr_v6());
    }
    // SAFETY: ctx.ctx is the live xdp_md; fib is a valid, correctly sized buffer.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    (rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some(fib)
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// One's-complement sum (big-endian words, as `csum::add_bytes`) of `len` packet bytes at
/// `off`. Only needed for packets whose sender left a partial checksum.
///
/// The bytes are copied in 64-byte chunks with `bpf_xdp_load_bytes` and summed with
/// `bpf_csum_diff`. Walking packet pointers instead makes the verifier track every offset
/// precisely and explode the state space; helper offsets are plain scalars. The loop body
/// has one exit and the short tail is summed once after it, so the verifier can prune the
/// loop's exit states instead of walking the rest of the program from each of them.
#[inline(always)]
fn packet_sum(ctx: &XdpContext, off: usize, len: usize) -> Result<u64, Error> {
    let mut buf = [0u64; CSUM_CHUNK / 8];
    let mut sum = 0u64;
    let full = len / CSUM_CHUNK;
    for i in 0..MAX_CSUM_CHUNKS {
        if i >= full {
            break;
        }
        sum += load_and_sum(ctx, off + i * CSUM_CHUNK, &mut buf, CSUM_CHUNK)?;
    }
    let tail = len % CSUM_CHUNK;
    if tail > 0 {
        // Zero bytes do not change the sum, so the tail is summed as a whole zero-padded
        // buffer; that also pads an odd last byte as RFC 1071 says. Volatile stores stop
        // LLVM from calling a byte-wise memset, which the verifier would walk byte by byte.
        for w in &mut buf {
            // SAFETY: w is a valid, aligned u64.
            unsafe { core::ptr::write_volatile(w, 0) };
        }
        sum += load_and_sum(ctx, off + full * CSUM_CHUNK, &mut buf, tail)?;
    }
    Ok(sum)
}

/// Copies `n` (1..=CSUM_CHUNK) packet bytes at `off` into `buf` and sums all of `buf`.
#[inline(always)]
fn load_and_sum(
    ctx: &XdpContext,
    off: usize,
    buf: &mut [u64; CSUM_CHUNK / 8],
    n: usize,
) -> Result<u64, Error> {
    // Spelled so that the verifier sees 1..=CSUM_CHUNK.
    let n = ((n - 1) & (CSUM_CHUNK - 1)) + 1;
    // SAFETY: buf has CSUM_CHUNK >= n writable bytes; the helper checks the packet bounds.
    let r = unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, buf.as_mut_ptr().cast(), n as u32) };
    if r < 0 {
        return Err(Error::Malformed);
    }
    // SAFETY: buf is CSUM_CHUNK initialised bytes, a multiple of 4 and at most 512.
    let r = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().cast(),
            CSUM_CHUNK as u32,
            0,
        )
    };
    if r < 0 {
        return Err(Error::Malformed);
    }
    // bpf_csum_diff sums native (little-endian) words; the one's-complement sum is
    // byte-order independent up to a byte swap (RFC 1071 section 2(B)).
    Ok(u64::from(csum::fold(r as u64).swap_bytes()))
}
