//! The mediaproxy XDP program: the media relay's fast path.
//!
//! This file holds only policy: which outcome maps to which XDP action, and the one place
//! that counts it. Parsing lives in `parse`, the flow decision in `relay`, the FORWARD
//! rewrite in `forward`, and every map in `maps`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "proxy-ebpf is an eBPF program: proxy-userspace's build.rs builds it for bpfel-unknown-none"
    );
    std::process::exit(1);
}

#[cfg(target_arch = "bpf")]
mod access;
#[cfg(target_arch = "bpf")]
mod error;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod relay;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use proxy_common::Counter;

    use crate::{maps, relay};

    /// Attached to every interface that carries media.
    #[xdp]
    pub fn mediaproxy(ctx: XdpContext) -> u32 {
        maps::count(Counter::Frames);
        let (action, counter) = match relay::handle(&ctx) {
            Ok(verdict) => (verdict.action, verdict.counter),
            Err(e) => (e.action(), e.counter()),
        };
        maps::count(counter);
        action
    }

    /// Attached to the far end of a veth that the relay redirects into: a native-mode
    /// redirect into a veth only delivers when its peer runs an XDP program.
    #[xdp]
    pub fn pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
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
