//! Every map of the program, and who writes it.
//!
//! | map             | key                  | written by                                   |
//! |-----------------|----------------------|----------------------------------------------|
//! | `FLOWS`         | relay address:port   | userspace control thread (add, flip, remove) |
//! | `FLOW_COUNTERS` | counter slot         | kernel (atomic adds); userspace zeroes a slot before reuse |
//! | `COUNTERS`      | `Counter` index      | kernel, per CPU; userspace reads             |
//! | `CONFIG`        | 0                    | userspace at start-up                        |
//! | `XSK_BASE`      | ifindex              | userspace: where the interface's sockets start in `XSKS` |
//! | `XSKS`          | base + rx queue      | userspace, one AF_XDP socket per queue       |
//! | `EGRESS`        | ifindex              | userspace, each egress a next hop uses       |
//! | `SOCKETS`       | 0: IPv4, 1: IPv6     | userspace: the fallback sockets sk_lookup assigns |
//!
//! Userspace may resize `FLOWS` and `FLOW_COUNTERS` at load time (`--max-flows`).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray, SockMap, XskMap},
};
use proxy_common::{Counter, FlowCounters, FlowEntry, FlowKey, RelayConfig};

const MAX_FLOWS: u32 = 65_536;
/// Rx queues per interface that can punt to userspace; shared with userspace.
pub use proxy_common::flow::MAX_QUEUES_PER_INTERFACE;
const MAX_INTERFACES: u32 = proxy_common::flow::MAX_INTERFACES;

#[map]
pub static FLOWS: HashMap<FlowKey, FlowEntry> = HashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
pub static FLOW_COUNTERS: Array<FlowCounters> = Array::with_max_entries(MAX_FLOWS, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT as u32, 0);

#[map]
static CONFIG: Array<RelayConfig> = Array::with_max_entries(1, 0);

#[map]
static XSK_BASE: HashMap<u32, u32> = HashMap::with_max_entries(MAX_INTERFACES, 0);

#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_INTERFACES * MAX_QUEUES_PER_INTERFACE, 0);

#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

#[map]
pub static SOCKETS: SockMap = SockMap::with_max_entries(2, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and XDP does not preempt itself.
        unsafe { *c += 1 };
    }
}

/// The probe port in network order, or `[0, 0]` when probing is off.
#[inline(always)]
pub fn probe_port() -> [u8; 2] {
    match CONFIG.get(0) {
        Some(cfg) => cfg.probe_port,
        None => [0, 0],
    }
}

#[inline(always)]
pub fn flow(key: &FlowKey) -> Option<&'static FlowEntry> {
    // SAFETY: entries are only replaced whole by userspace (BPF_MAP_UPDATE_ELEM), and a
    // replaced element stays valid for the rest of this program run (RCU).
    unsafe { FLOWS.get(key) }
}

#[inline(always)]
pub fn flow_counters(slot: u32) -> Option<*mut FlowCounters> {
    FLOW_COUNTERS.get_ptr_mut(slot)
}

/// The XSKS index of the socket for this interface's rx queue. XSKMAP keys are plain
/// indices, and every interface has a queue 0, so each interface gets its own range.
#[inline(always)]
pub fn xsk_index(ifindex: u32, queue: u32) -> Option<u32> {
    if queue >= MAX_QUEUES_PER_INTERFACE {
        return None;
    }
    // SAFETY: u32 values, copied out at once.
    let base = unsafe { XSK_BASE.get(ifindex) }.copied()?;
    Some(base + queue)
}
