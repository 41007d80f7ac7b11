//! Types shared by the mediaproxy XDP program (`proxy-ebpf`) and its userspace
//! (`proxy-userspace`): the flow table's keys and values, counters, wire header layouts,
//! checksum arithmetic, the FORWARD rewrite, and the relay-to-relay probe protocol.
//!
//! `no_std` so that the kernel program can use it; the `user` feature adds the `aya::Pod`
//! impls that userspace needs for map access.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod flow;
pub mod packet;
pub mod probe;
pub mod rewrite;
pub mod wire;

pub use flow::{Counter, Endpoint, FlowCounters, FlowEntry, FlowKey, FlowState, RelayConfig};
