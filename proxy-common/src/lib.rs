//! Types shared by the mediaproxy XDP program (`proxy-ebpf`) and its userspace
//! (`proxy-userspace`): the flow table's keys and values, counters, wire header layouts,
//! checksum arithmetic, the FORWARD rewrite, and the relay-to-relay probe protocol.
//!
//! `no_std` so that the kernel program can use it; the `user` feature adds the `aya::Pod`
//! impls that userspace needs for map access.
#![cfg_attr(not(test), no_std)]
// What the XDP program calls per packet is `#[inline(always)]`: inlined, the verifier checks
// it against its caller's bounds checks, and no BPF-to-BPF call costs a jump.
#![expect(
    clippy::inline_always,
    reason = "the eBPF programs' per-packet path: see above"
)]

pub mod csum;
pub mod flow;
pub mod packet;
pub mod probe;
pub mod rewrite;
pub mod wire;

pub use flow::{Counter, Endpoint, FlowCounters, FlowEntry, FlowKey, FlowState, RelayConfig};
