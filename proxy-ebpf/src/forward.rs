//! FORWARD in XDP: rewrite addresses, ports, MACs and checksums from the flow entry, and send.
//!
//! Everything that decides whether XDP can send the packet comes before the first write, so
//! a packet we cannot send (no next hop yet, larger than the egress MTU, an egress that drops
//! native frames) leaves this module unmodified: userspace, or the TC program, takes it as
//! it came.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use proxy_common::{
    Counter, FlowEntry, csum,
    flow::{family, flow_flags},
    rewrite::{self, UdpChecksum},
    wire::{self, EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr},
};

use crate::{
    access::ptr_at,
    error::Error,
    maps::EGRESS,
    parse::{L3_OFF, Parsed},
};

/// Bytes summed per `bpf_csum_diff` call (at most 512, a multiple of 4; a stack buffer).
const CSUM_CHUNK: usize = 64;
#[expect(clippy::cast_possible_truncation, reason = "64")]
const CSUM_CHUNK_U32: u32 = CSUM_CHUNK as u32;
/// Payloads up to 1536 bytes (a 1500-byte MTU) get their partial checksum finished in XDP;
/// longer ones (jumbo frames from a local sender, never seen on RTP) go to userspace.
const MAX_CSUM_CHUNKS: usize = 24;

pub enum Sent {
    Tx,
    Redirect(u32),
    /// Not sent: for the TC program, which sends through the egress device's stack path.
    /// The packet is unmodified.
    SkbPath,
    /// Not sent: the counter says why; the packet is unmodified.
    NotYet(Counter),
}

#[inline(always)]
pub fn forward<const SKB: bool>(
    ctx: &XdpContext,
    pkt: &Parsed,
    entry: &FlowEntry,
) -> Result<Sent, Error> {
    if entry.out_src.family() != pkt.family || entry.out_dst.family() != pkt.family {
        return Ok(Sent::NotYet(Counter::PuntFamily));
    }
    if !entry.has_flag(flow_flags::NEXT_HOP) {
        return Ok(Sent::NotYet(Counter::PuntNoNextHop));
    }
    if pkt.ip_len > entry.mtu {
        return Ok(Sent::NotYet(Counter::PuntTooBig));
    }
    // IPv4 options (source routing among them) are not the relay's to forward: userspace
    // sends the payload on in a clean datagram. Rare on media, so the slow path is fine.
    if pkt.has_ip_options() {
        return Ok(Sent::NotYet(Counter::PuntIpOptions));
    }
    if pkt.ttl <= 1 {
        return Err(Error::Ttl);
    }
    // Native frames reach an egress only if its driver takes them (userspace knows from the
    // kernel's xdp-features); generic XDP transmits through the device's own path.
    if !SKB && !entry.has_flag(flow_flags::NATIVE_TX) {
        return Ok(Sent::SkbPath);
    }

    let payload_off = pkt.udp_off + core::mem::size_of::<UdpHdr>();
    let payload_len = usize::from(pkt.udp_len) - core::mem::size_of::<UdpHdr>();
    // SAFETY (both headers below): ptr_at bounds-checked them; they do not overlap each other
    // or the Ethernet header, and all have alignment 1.
    let udp = unsafe { &mut *ptr_at::<UdpHdr>(ctx, pkt.udp_off)? };
    // The entry's precomputed sums cover the destination and everything written; only the
    // arriving source's words are summed here, once, for the classification and both updates.
    let rewrite = (&entry.out_src, &entry.out_dst, &entry.csum);
    if pkt.family == family::V4 {
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, L3_OFF)? };
        let src_sum = csum::add_bytes(0, &ip.src);
        let kind = entry.csum.classify(udp, src_sum);
        let sum = match payload_sum::<SKB>(ctx, kind, payload_off, payload_len)? {
            Ok(sum) => sum,
            Err(not_sent) => return Ok(not_sent),
        };
        rewrite::rewrite_v4_with(ip, udp, rewrite, kind, src_sum, || sum);
    } else {
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, L3_OFF)? };
        let src_sum = csum::add_bytes(0, &ip.src);
        let kind = entry.csum.classify(udp, src_sum);
        let sum = match payload_sum::<SKB>(ctx, kind, payload_off, payload_len)? {
            Ok(sum) => sum,
            Err(not_sent) => return Ok(not_sent),
        };
        rewrite::rewrite_v6_with(ip, udp, rewrite, kind, src_sum, || sum);
    }
    // SAFETY: bounds-checked by ptr_at; alignment 1.
    let eth = unsafe { &mut *ptr_at::<EthHdr>(ctx, 0)? };
    wire::copy_bytes(&mut eth.dst, &entry.dst_mac);
    wire::copy_bytes(&mut eth.src, &entry.src_mac);

    let egress = entry.egress_ifindex;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel's ifindex is a u32"
    )]
    let ingress = ctx.ingress_ifindex() as u32;
    if egress == ingress && !entry.has_flag(flow_flags::TX_REDIRECT) {
        return Ok(Sent::Tx);
    }
    match EGRESS.redirect(entry.egress_slot, 0) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => Ok(Sent::Redirect(action)),
        _ => Err(Error::RedirectFailed),
    }
}

/// The payload sum the rewrite needs for a checksum of `kind` (none but for a partial one),
/// or what becomes of a packet XDP does not finish.
#[inline(always)]
fn payload_sum<const SKB: bool>(
    ctx: &XdpContext,
    kind: UdpChecksum,
    off: usize,
    len: usize,
) -> Result<Result<u64, Sent>, Error> {
    match kind {
        // Under generic XDP a partial checksum means an skb in CHECKSUM_PARTIAL state, which
        // the egress NIC (or skb_checksum_help) will finish from the pseudo-header sum: a
        // completed field would then be summed twice. TC's checksum helpers know the skb's
        // state and update it right.
        UdpChecksum::Partial if SKB => Ok(Err(Sent::SkbPath)),
        UdpChecksum::Partial if len > MAX_CSUM_CHUNKS * CSUM_CHUNK => {
            Ok(Err(Sent::NotYet(Counter::PuntOversize)))
        }
        UdpChecksum::Partial => packet_sum(ctx, off, len).map(Ok),
        UdpChecksum::Absent | UdpChecksum::Complete => Ok(Ok(0)),
    }
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
    // Zeroed by volatile stores: a zeroed array literal became a call to a `memset`
    // subprogram (see `wire::copy_bytes`).
    let mut raw = core::mem::MaybeUninit::<[u64; CSUM_CHUNK / 8]>::uninit();
    zero_words(raw.as_mut_ptr());
    // SAFETY: every word was written just above.
    let buf = unsafe { raw.assume_init_mut() };
    let mut sum = 0u64;
    let full = len / CSUM_CHUNK;
    for i in 0..MAX_CSUM_CHUNKS {
        if i >= full {
            break;
        }
        sum += load_and_sum(ctx, off + i * CSUM_CHUNK, buf, CSUM_CHUNK)?;
    }
    let tail = len % CSUM_CHUNK;
    if tail > 0 {
        // Zero bytes do not change the sum, so the tail is summed as a whole zero-padded
        // buffer; that also pads an odd last byte as RFC 1071 says.
        zero_words(buf);
        sum += load_and_sum(ctx, off + full * CSUM_CHUNK, buf, tail)?;
    }
    Ok(sum)
}

/// Zeroes `buf` with volatile stores, which LLVM cannot turn into a call to a byte-wise
/// `memset` (a subprogram call, and a loop the verifier walks byte by byte).
#[inline(always)]
fn zero_words(buf: *mut [u64; CSUM_CHUNK / 8]) {
    let words = buf.cast::<u64>();
    for i in 0..CSUM_CHUNK / 8 {
        // SAFETY: word i of a buffer the caller owns (initialised or not), aligned.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Copies `n` (`1..=CSUM_CHUNK`) packet bytes at `off` into `buf` and sums all of `buf`.
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
    // Packet offsets and chunk lengths are below 64 KiB (ptr_at bounds them), so they fit.
    #[expect(clippy::cast_possible_truncation, reason = "below 64 KiB")]
    let (off, n) = (off as u32, n as u32);
    // SAFETY: as above.
    let r = unsafe { bpf_xdp_load_bytes(ctx.ctx, off, buf.as_mut_ptr().cast(), n) };
    if r < 0 {
        return Err(Error::Malformed);
    }
    // SAFETY: buf is CSUM_CHUNK initialised bytes, a multiple of 4 and at most 512.
    let r = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().cast(),
            CSUM_CHUNK_U32,
            0,
        )
    };
    if r < 0 {
        return Err(Error::Malformed);
    }
    // bpf_csum_diff sums native (little-endian) words; the one's-complement sum is
    // byte-order independent up to a byte swap (RFC 1071 section 2(B)).
    Ok(u64::from(csum::fold(r.cast_unsigned()).swap_bytes()))
}
