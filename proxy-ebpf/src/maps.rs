//! Every map of the program, and who writes it.
//!
//! | map             | key                  | written by                                   |
//! |-----------------|----------------------|----------------------------------------------|
//! | `FLOWS`         | relay address:port   | userspace control thread (add, flip, remove) |
//! | `FLOW_COUNTERS` | counter slot         | kernel (atomic adds); userspace zeroes a slot before reuse |
//! | `COUNTERS`      | `Counter` index      | kernel, per CPU; userspace reads             |
//! | `CONFIG`        | 0                    | userspace at start-up                        |
//! | `XSKS`          | rx queue index       | userspace, one AF_XDP socket per queue       |
//! | `EGRESS`        | ifindex              | userspace, each attached interface           |
//!
//! Userspace may resize `FLOWS` and `FLOW_COUNTERS` at load time (`--max-flows`).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray, XskMap},
};
use proxy_common::{Counter, FlowCounters, FlowEntry, FlowKey, RelayConfig};

const MAX_FLOWS: u32 = 65_536;
/// Upper bound on rx queues per interface that can punt to userspace.
const MAX_QUEUES: u32 = 256;
const MAX_INTERFACES: u32 = 256;

#[map]
pub static FLOWS: HashMap<FlowKey, FlowEntry> = HashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
pub static FLOW_COUNTERS: Array<FlowCounters> = Array::with_max_entries(MAX_FLOWS, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT as u32, 0);

#[map]
static CONFIG: Array<RelayConfig> = Array::with_max_entries(1, 0);

#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

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
