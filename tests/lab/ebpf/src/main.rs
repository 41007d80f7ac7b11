//! The benchmark's XDP programs: a traffic generator run with `BPF_PROG_TEST_RUN` in live-frames
//! mode (as xdp-trafficgen does), and a sink that counts frames and their latency. Not part of
//! the relay; the lab's `bench` loads them.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::{bpf_csum_diff, bpf_ktime_get_ns, bpf_redirect},
        macros::{map, xdp},
        maps::{Array, PerCpuArray},
        programs::XdpContext,
    };
    use mediaproxy_lab_ebpf::{
        FRAME_LEN, GenConfig, GenState, MAGIC, RTP_LEN, SinkState, histogram, offsets,
    };
    use proxy_common::{
        csum,
        wire::{EthHdr, Header as _, Ipv4Hdr, UdpHdr, ether_type},
    };

    #[map]
    static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);
    #[map]
    static GEN_STATE: PerCpuArray<GenState> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static SINK_STATE: PerCpuArray<SinkState> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static SINK_LATENCY: PerCpuArray<u64> = PerCpuArray::with_max_entries(histogram::BUCKETS, 0);

    /// The one bounds-checked accessor: `N` bytes at `off`.
    #[inline(always)]
    fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<&'static mut [u8; N]> {
        let start = ctx.data();
        if start + off + N > ctx.data_end() {
            return None;
        }
        // SAFETY: checked above; [u8; N] has alignment 1.
        Some(unsafe { &mut *((start + off) as *mut [u8; N]) })
    }

    /// Writes a complete, valid frame for the next flow and sends it, or drops it when the
    /// pacer says it is not due. Live-frame pages are recycled without being reset, so every
    /// byte the receivers look at is written each time.
    #[xdp]
    pub fn bench_gen(ctx: XdpContext) -> u32 {
        let (Some(cfg), Some(st)) = (GEN_CONFIG.get(0), GEN_STATE.get_ptr_mut(0)) else {
            return xdp_action::XDP_ABORTED;
        };
        // SAFETY: our CPU's element; a test run stays on one CPU.
        let st = unsafe { &mut *st };
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if st.start_ns == 0 {
            st.start_ns = now;
        }
        if cfg.rate_pps != 0 {
            // A token bucket with a burst of 16 frames: small enough for a default socket
            // receive buffer (veth hands XDP frames on as page-sized skbs), large enough to
            // absorb the pacing jitter of a busy core.
            let due = (now - st.start_ns) * cfg.rate_pps / 1_000_000_000 + 16;
            if st.sent >= due {
                st.not_due += 1;
                return xdp_action::XDP_DROP;
            }
        }
        let Some(f) = bytes::<FRAME_LEN>(&ctx, 0) else {
            return xdp_action::XDP_ABORTED;
        };
        // Every flow once per cycle, in a scattered order: a relay's packets arrive from its
        // flows interleaved, not in the order of its tables, and in table order (or at any
        // short constant step) the CPU's prefetcher would hide every cache miss the table's
        // size causes. The stride is a prime far above any flow count, so a permutation, and
        // its remainder is large for every count the bench uses (435,761 for 10^6, 35,761 for
        // 10^5, 761 for 10^3): no short step through the table.
        const STRIDE: u64 = 2_654_435_761;
        let flow = if cfg.flows > 1 {
            let n = u64::from(cfg.flows);
            ((st.sent % n) * STRIDE % n) as u32
        } else {
            0
        };
        let per_ip = if cfg.ports_per_ip == 0 {
            1
        } else {
            cfg.ports_per_ip
        };
        let dst_ip = (u32::from_be_bytes(cfg.dst_ip) + flow / per_ip).to_be_bytes();
        let dst_port = (u32::from(cfg.dst_port) + flow % per_ip) as u16;
        let seq = st.sent as u16;

        let eth = EthHdr::new(cfg.dst_mac, cfg.src_mac, ether_type::IPV4);
        f[..offsets::IP].copy_from_slice(eth.as_bytes());
        let mut ip = Ipv4Hdr::udp(cfg.src_ip, dst_ip, 64, 0, 0, FRAME_LEN - offsets::UDP);
        csum::fill_ipv4(&mut ip, &[]);
        f[offsets::IP..offsets::UDP].copy_from_slice(ip.as_bytes());
        let udp = offsets::UDP;
        let udp_hdr = UdpHdr::new(cfg.src_port, dst_port, (8 + RTP_LEN) as u16, 0);
        f[udp..offsets::RTP].copy_from_slice(udp_hdr.as_bytes());
        let rtp = offsets::RTP;
        f[rtp] = 0x80;
        f[rtp + 1] = 8;
        f[rtp + 2..rtp + 4].copy_from_slice(&seq.to_be_bytes());
        f[rtp + 4..rtp + 8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        f[rtp + 8..rtp + 12].copy_from_slice(&flow.to_be_bytes());
        f[offsets::SENT_NS..offsets::SENT_NS + 8].copy_from_slice(&now.to_ne_bytes());
        f[offsets::MAGIC..offsets::MAGIC + 4].copy_from_slice(&MAGIC);
        // A complete UDP checksum, as real senders (and their NICs) produce.
        // SAFETY: the UDP segment is 180 bytes (a multiple of 4) inside the checked frame.
        let seg = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                f[udp..].as_mut_ptr().cast(),
                (8 + RTP_LEN) as u32,
                0,
            )
        };
        let sum = u64::from(csum::fold(seg as u64).swap_bytes())
            + csum::pseudo_header_v4(&cfg.src_ip, &dst_ip, (8 + RTP_LEN) as u16);
        f[udp + 6..udp + 8].copy_from_slice(&csum::udp_field(sum).to_be_bytes());
        st.sent += 1;
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(cfg.ifindex, 0) as u32 }
    }

    /// Attached to the far end of a veth that a relay redirects into: a native-mode redirect
    /// into a veth is delivered only when its peer runs an XDP program. For test rigs.
    #[xdp]
    pub fn pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Counts benchmark frames and their one-way latency, and drops everything. Attached at
    /// the sink, or at the relay's ingress for the XDP_DROP ceiling.
    #[xdp]
    pub fn bench_sink(ctx: XdpContext) -> u32 {
        let Some(f) = bytes::<{ offsets::MAGIC + 4 }>(&ctx, 0) else {
            return xdp_action::XDP_DROP;
        };
        if f[offsets::MAGIC..offsets::MAGIC + 4] != MAGIC {
            return xdp_action::XDP_DROP;
        }
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&f[offsets::SENT_NS..offsets::SENT_NS + 8]);
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let lat = now.saturating_sub(u64::from_ne_bytes(sent));
        if let Some(st) = SINK_STATE.get_ptr_mut(0) {
            // SAFETY: our CPU's element.
            unsafe {
                (*st).packets += 1;
                (*st).bytes += (ctx.data_end() - ctx.data()) as u64;
            }
        }
        if let Some(b) = SINK_LATENCY.get_ptr_mut(histogram::bucket(lat)) {
            // SAFETY: our CPU's element.
            unsafe { *b += 1 };
        }
        xdp_action::XDP_DROP
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
