//! Every map of the program, and who writes it.
//!
//! | map             | key                  | written by                                   |
//! |-----------------|----------------------|----------------------------------------------|
//! | `FLOW_ARRAY`    | place of the key     | userspace control thread (add, flip, remove) |
//! | `FLOWS`         | relay address:port   | userspace: the flows whose place is taken     |
//! | `FLOW_COUNTERS` | counter slot (a place's index; after the places, a hash-map flow's) | kernel (plain adds, see `relay::add`); userspace zeroes a slot before reuse |
//! | `COUNTERS`      | `Counter` index      | kernel, per CPU; userspace reads             |
//! | `CONFIG`        | 0                    | userspace at start-up                        |
//! | `XSK_BASE`      | ifindex              | userspace: where the interface's sockets start in `XSKS` |
//! | `XSKS`          | base + rx queue      | userspace, one `AF_XDP` socket per queue       |
//! | `EGRESS`        | egress slot          | userspace, each egress a next hop uses       |
//! | `SOCKETS`       | 0: IPv4, 1: IPv6     | userspace: the fallback sockets `sk_lookup` assigns |
//! | `LOCAL_ADDRS`   | address (port 0)     | userspace: the relay's own addresses (probes)|
//! | `PUNT_TAT`      | `budget::*`          | kernel, per CPU: the global punt budgets     |
//!
//! Userspace resizes `FLOW_ARRAY`, `FLOWS` and `FLOW_COUNTERS` at load time (`--max-flows`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, PerCpuArray, SockMap, XskMap},
};
use proxy_common::{
    Counter, Endpoint, FlowCounters, FlowEntry, FlowKey, RelayConfig,
    flow::{Budget, budget, place},
};

/// Resized by the loader to `--max-flows`.
const MAX_FLOWS: u32 = proxy_common::flow::DEFAULT_MAX_FLOWS;
/// Rx queues per interface that can punt to userspace; shared with userspace.
pub use proxy_common::flow::MAX_QUEUES_PER_INTERFACE;
const MAX_INTERFACES: u32 = proxy_common::flow::MAX_INTERFACES;

/// Most flows: the entry at the key's place (see `proxy_common::flow::place`), found by an
/// array access that the verifier inlines. Resized by the loader with `--max-flows`.
#[map]
static FLOW_ARRAY: Array<FlowEntry> =
    Array::with_max_entries(place::blocks(MAX_FLOWS) * place::BLOCK, 0);

/// The flows whose place another key holds. Allocated as they come (`BPF_F_NO_PREALLOC`):
/// it is sized for every flow, so an unlucky address pool can never fill it, and most of it
/// stays empty.
#[map]
static FLOWS: HashMap<FlowKey, FlowEntry> =
    HashMap::with_max_entries(MAX_FLOWS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// A slot per place of `FLOW_ARRAY` (the flow there counts in the slot of the same index),
/// then one per flow for those in `FLOWS`. Resized by the loader.
#[map]
pub static FLOW_COUNTERS: Array<FlowCounters> =
    Array::with_max_entries(place::blocks(MAX_FLOWS) * place::BLOCK + MAX_FLOWS, 0);

#[map]
#[expect(clippy::cast_possible_truncation, reason = "a few dozen counters")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT as u32, 0);

#[map]
static CONFIG: Array<RelayConfig> = Array::with_max_entries(1, 0);

#[map]
static XSK_BASE: HashMap<u32, u32> = HashMap::with_max_entries(MAX_INTERFACES, 0);

#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_INTERFACES * MAX_QUEUES_PER_INTERFACE, 0);

/// An array, indexed by the slot userspace gives each egress device: the FORWARD path takes no
/// hash lookup for it.
#[map]
pub static EGRESS: DevMap = DevMap::with_max_entries(MAX_INTERFACES, 0);

#[map]
pub static SOCKETS: SockMap = SockMap::with_max_entries(2, 0);

#[map]
static LOCAL_ADDRS: HashMap<Endpoint, u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

#[map]
static PUNT_TAT: PerCpuArray<u64> = PerCpuArray::with_max_entries(budget::COUNT, 0);

/// Addresses of the relay that can receive probes.
const MAX_LOCAL_ADDRS: u32 = 256;

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

/// Whether `addr` (any port) is one of the relay's own addresses.
#[inline(always)]
pub fn is_local(addr: &Endpoint) -> bool {
    let key = addr.with_port(0);
    // SAFETY: a u8 value, only tested for presence.
    unsafe { LOCAL_ADDRS.get(key) }.is_some()
}

/// Takes one punt from the CPU's budget `which` (see `proxy_common::flow::budget`), and for
/// an unsignalled source first from the flow's own (its GCRA state in `counters`).
#[inline(always)]
pub fn take_budget(which: u32, counters: Option<*mut FlowCounters>) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return true;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if which == budget::MEDIA
        && let Some(c) = counters
    {
        // SAFETY: a valid array element for the program run (see `relay::touch`); races
        // between CPUs only let a packet more or less through.
        if !cfg.flow_budget.take(unsafe { &mut (*c).punt_tat_ns }, now) {
            return false;
        }
    }
    let Some(tat) = PUNT_TAT.get_ptr_mut(which) else {
        return true;
    };
    let b: &Budget = match cfg.cpu_budget.get(which as usize) {
        Some(b) => b,
        None => return true,
    };
    // SAFETY: a per-CPU slot, touched only by this CPU.
    b.take(unsafe { &mut *tat }, now)
}

/// Room on the program's stack for a copy of an entry out of the flow array (8-byte
/// aligned, as the verifier wants the copy's word stores).
pub type EntryCopy = core::mem::MaybeUninit<FlowEntry>;
const ENTRY_WORDS: usize = core::mem::size_of::<FlowEntry>() / 8;

/// What the flow table holds for a key.
pub enum Flow<'a> {
    /// The flow's entry: a hash map element, or a copy of its place taken whole (never part
    /// old and part new).
    Entry(&'a FlowEntry),
    /// Userspace is rewriting the flow's entry right now.
    Changing,
    None,
}

/// The flow of `key`: at its place in the array (copied into `copy`), else in the hash map.
#[inline(always)]
pub fn flow<'a>(key: &FlowKey, copy: &'a mut EntryCopy) -> Flow<'a> {
    let (mask, shift) = CONFIG
        .get(0)
        .map_or((0, 0), |c| (c.place_mask, u32::from(c.place_shift)));
    let at = place::of(key, mask, shift);
    // With many flows both the entry and its counters are cache misses (and TLB misses: the
    // maps have 4 KiB pages), each as long as the rest of a FORWARD. The counters of the flow
    // at a place are in the slot of the same index (userspace gives it), so their load can
    // start now, beside the entry's, instead of after it: it is the entry's slot that the
    // packet counts in later. For a flow in the hash map it is a wasted load, not a wrong one.
    if let Some(c) = FLOW_COUNTERS.get_ptr(at) {
        // SAFETY: a live element of FLOW_COUNTERS; the value is not used.
        unsafe { core::ptr::read_volatile(&raw const (*c).fwd_packets) };
    }
    if let Some(p) = FLOW_ARRAY.get_ptr(at) {
        // SAFETY: a live element of FLOW_ARRAY for the program run.
        match unsafe { read_place(p, key, copy) } {
            Flow::None => {}
            found => return found,
        }
    }
    // SAFETY: hash entries are only replaced whole by userspace (BPF_MAP_UPDATE_ELEM), and the
    // memory stays mapped for the program run. The kernel may hand a replaced element to the
    // next update at once, so a run reading one exactly then could mix two entries of this
    // map: the window the array's seqlock closes, left open for the flows whose place another
    // address holds (and the rare update of one).
    match unsafe { FLOWS.get(key) } {
        Some(e) => Flow::Entry(e),
        None => Flow::None,
    }
}

/// Copies the entry at `p` if it is `key`'s, as a seqlock reader: userspace writes an array
/// element in place (an array map update is a `memcpy` into the live element), so the copy
/// counts only if `seq` was even before it and unchanged after it. Userspace makes `seq` odd
/// in one update, writes the fields in the next and makes `seq` even in a third, each a
/// separate system call (`Dataplane::write_place`), so any field it changes is written
/// while `seq` is odd. The loads are volatile, in program order, and x86 does not reorder
/// loads with loads: a copy that saw a new field sees the odd or the advanced `seq` after it.
///
/// SAFETY: `p` must point at a live element of `FLOW_ARRAY`, whose values the kernel aligns
/// to 8 bytes.
#[inline(always)]
unsafe fn read_place<'a>(p: *const FlowEntry, key: &FlowKey, copy: &'a mut EntryCopy) -> Flow<'a> {
    // SAFETY (all reads): within the element, as the caller promises.
    let seq = unsafe { core::ptr::read_volatile(&raw const (*p).seq) };
    // A filter before the copy: a place mostly holds no key, or another address's.
    if unsafe { (*p).key } != *key {
        return Flow::None;
    }
    if seq & 1 != 0 {
        return Flow::Changing;
    }
    let src = p.cast::<u64>();
    let dst = copy.as_mut_ptr().cast::<u64>();
    for i in 0..ENTRY_WORDS {
        // SAFETY: word i of the element and of the copy.
        unsafe { dst.add(i).write(core::ptr::read_volatile(src.add(i))) };
    }
    let again = unsafe { core::ptr::read_volatile(&raw const (*p).seq) };
    // SAFETY: every word was written above; an entry is plain data of exactly ENTRY_WORDS
    // words (the layout tests), and any bit pattern is a valid one.
    let entry = unsafe { copy.assume_init_ref() };
    if again != seq || entry.key != *key {
        return Flow::Changing;
    }
    Flow::Entry(entry)
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
