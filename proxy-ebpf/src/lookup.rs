//! The `sk_lookup` program: UDP datagrams that the kernel's stack delivers to one of the relay's
//! flows go to the relay's fallback socket, whatever their port.
//!
//! They are the few that no XDP verdict covers: datagrams the kernel reassembled from
//! fragments, and what the TC program left to the stack (no next hop yet, larger than the
//! egress MTU, a flow in HOLD while XDP is being re-attached). Without this they would meet
//! no socket and be answered with ICMP port unreachable. Everything else takes the normal
//! socket lookup.

use aya_ebpf::{bindings::sk_action, programs::SkLookupContext};
use proxy_common::{Endpoint, FlowKey, flow::family, wire::ip_proto};

use crate::maps::{self, SOCKETS};

/// Indices of the two fallback sockets in `SOCKETS`.
const SOCKET_V4: u32 = 0;
const SOCKET_V6: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[inline(always)]
pub fn handle(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the context pointer is the kernel's bpf_sk_lookup for this lookup, valid for
    // the program run; only its plain fields are read.
    let l = unsafe { &*ctx.lookup };
    if l.protocol != u32::from(ip_proto::UDP) {
        return sk_action::SK_PASS;
    }
    // local_port is in host order (unlike every other port in the context), and a port.
    #[expect(clippy::cast_possible_truncation, reason = "a port in a u32")]
    let port = l.local_port as u16;
    let (local, index) = match l.family {
        AF_INET => (Endpoint::v4(l.local_ip4.to_ne_bytes(), port), SOCKET_V4),
        AF_INET6 => {
            // Context fields must be loaded at a constant offset from the context pointer;
            // copying the array would make LLVM form a pointer into the context first, which
            // the verifier refuses. One volatile load per word keeps each load direct.
            // SAFETY: reads plain u32 fields of the live context.
            let w = |i: usize| unsafe { core::ptr::read_volatile(&raw const l.local_ip6[i]) };
            let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&w0.to_ne_bytes());
            a[4..8].copy_from_slice(&w1.to_ne_bytes());
            a[8..12].copy_from_slice(&w2.to_ne_bytes());
            a[12..].copy_from_slice(&w3.to_ne_bytes());
            (Endpoint::v6(a, port), SOCKET_V6)
        }
        _ => return sk_action::SK_PASS,
    };
    let probe = maps::probe_port();
    let mut copy = maps::EntryCopy::uninit();
    let ours = !matches!(
        maps::flow(&FlowKey::new(local), &mut copy),
        maps::Flow::None
    ) || (probe != [0, 0] && *local.port_be() == probe);
    if ours && local.family() != family::UNSET {
        // A failed assignment (the socket is gone) falls back to the normal lookup.
        let _ = SOCKETS.redirect_sk_lookup(ctx, index, 0);
    }
    sk_action::SK_PASS
}
