//! The mediaproxy XDP program: the media relay's fast path.
//!
//! This file holds only policy: which outcome maps to which action, and the one place that
//! counts it. Parsing lives in `parse`, the XDP flow decision in `relay`, its FORWARD rewrite
//! in `forward`, the skb-path FORWARD in `tc`, the fallback socket's steering in `lookup`,
//! and every map in `maps`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Every function of the program is inlined into its entry point: the verifier then follows
// each packet pointer's bounds within one frame, and no BPF-to-BPF call costs a jump.
#![expect(clippy::inline_always, reason = "BPF: see above")]
// On the host only the unit tests reach the logic; the entry points that use it are BPF-only.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

// The modules compile for the host too, where their logic is unit-tested (`cargo test -p
// proxy-ebpf`); only the program entry points below are BPF-only.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "proxy-ebpf is an eBPF program: proxy-userspace's build.rs builds it for bpfel-unknown-none"
    );
    std::process::exit(1);
}

mod access;
mod error;
mod forward;
mod lookup;
mod maps;
mod parse;
mod relay;
mod tc;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, xdp_action},
        macros::{classifier, sk_lookup, xdp},
        programs::{SkLookupContext, TcContext, XdpContext},
    };
    use proxy_common::Counter;

    use crate::{lookup, maps, relay, tc};

    #[inline(always)]
    fn xdp_entry<const SKB: bool>(ctx: &XdpContext) -> u32 {
        maps::count(Counter::Frames);
        let (action, counter) = match relay::handle::<SKB>(ctx) {
            Ok(verdict) => (verdict.action, verdict.counter),
            Err(e) => {
                // An event for an operator who runs with `--kernel-log debug`. The level is a
                // constant of the loaded program (read-only data, off unless asked), so with
                // it off the verifier removes this branch: no cost per packet.
                if e.action() == xdp_action::XDP_DROP {
                    aya_log_ebpf::debug!(ctx, "dropped: {}", e.reason());
                }
                (e.action(), e.counter())
            }
        };
        maps::count(counter);
        action
    }

    /// Attached in native (driver) mode to every interface that carries media.
    #[xdp]
    pub fn mediaproxy(ctx: XdpContext) -> u32 {
        xdp_entry::<false>(&ctx)
    }

    /// The same program for generic (SKB) mode: there XDP_TX and redirects go through the
    /// egress device's normal transmit path, so they are delivered on any device.
    #[xdp]
    pub fn mediaproxy_skb(ctx: XdpContext) -> u32 {
        xdp_entry::<true>(&ctx)
    }

    /// TC ingress on the same interfaces: forwards what XDP passed because its egress takes
    /// no native frames.
    #[classifier]
    pub fn mediaproxy_tc(ctx: TcContext) -> i32 {
        match tc::handle(&ctx) {
            Some((action, counter)) => {
                maps::count(counter);
                action
            }
            None => TC_ACT_OK as i32,
        }
    }

    /// Steers the stack's datagrams for a flow (reassembled fragments, what TC left) to the
    /// fallback socket.
    #[sk_lookup]
    pub fn mediaproxy_lookup(ctx: SkLookupContext) -> u32 {
        lookup::handle(&ctx)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; bpf-linker fails the link first.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
