//! The one module that owns aya and the XDP program's maps.
//!
//! Everything else talks to the fast path through [`Dataplane`]'s typed methods. Userspace
//! keeps a mirror of every flow entry it wrote, so reads of configuration never go to the
//! kernel, and the kernel's maps are only written here, from the control thread.

use std::{collections::HashMap, os::fd::AsRawFd};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray, XskMap},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use proxy_common::{
    Counter, Endpoint, FlowCounters, FlowEntry, FlowKey, FlowState, RelayConfig,
    flow::{MAX_INTERFACES, MAX_QUEUES_PER_INTERFACE, flow_flags},
};

/// The compiled XDP program, built by build.rs.
#[cfg(feature = "ebpf")]
pub static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mediaproxy-xdp"));
/// Built without the `ebpf` feature (the fuzz targets): nothing to load.
#[cfg(not(feature = "ebpf"))]
pub static XDP_OBJECT: &[u8] = &[];

fn object() -> anyhow::Result<&'static [u8]> {
    if XDP_OBJECT.is_empty() {
        bail!("this build carries no XDP program (built without the `ebpf` feature)");
    }
    Ok(XDP_OBJECT)
}

/// How the kernel treats a packet whose source is not the latched peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MismatchPolicy {
    /// Hand it to userspace, which may re-latch (the default: a peer behind a NAT whose
    /// mapping changed must be able to come back).
    #[default]
    Punt,
    /// Drop it in the kernel and count it.
    Drop,
}

/// What userspace asks of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    pub state: FlowState,
    /// The latched source; `None` forwards from any source.
    pub peer: Option<Endpoint>,
    pub mismatch: MismatchPolicy,
    /// The relay's address and port toward the destination.
    pub out_src: Endpoint,
    /// The destination, unset until known.
    pub out_dst: Endpoint,
    /// 0: let the FIB decide.
    pub egress_ifindex: u32,
}

impl FlowSpec {
    #[must_use]
    pub fn hold() -> Self {
        Self {
            state: FlowState::Hold,
            peer: None,
            mismatch: MismatchPolicy::default(),
            out_src: Endpoint::UNSET,
            out_dst: Endpoint::UNSET,
            egress_ifindex: 0,
        }
    }

    fn entry(&self, counter_slot: u32) -> FlowEntry {
        let mut e = FlowEntry::hold(counter_slot);
        e.set_state(self.state);
        if let Some(peer) = self.peer {
            e.peer = peer;
            e.flags |= flow_flags::REQUIRE_PEER;
        }
        if self.mismatch == MismatchPolicy::Drop {
            e.flags |= flow_flags::MISMATCH_DROP;
        }
        e.out_src = self.out_src;
        e.out_dst = self.out_dst;
        e.egress_ifindex = self.egress_ifindex;
        e
    }
}

#[derive(Clone, Copy, Debug)]
pub struct DataplaneConfig {
    /// Capacity of the flow table (two flows per relayed stream).
    pub max_flows: u32,
    /// Probe port, 0 for none.
    pub probe_port: u16,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            probe_port: 0,
        }
    }
}

/// Summed over CPUs, indexed by [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters(pub [u64; Counter::COUNT]);

impl GlobalCounters {
    #[must_use]
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Counters that changed between `earlier` and `self`, by name.
    #[must_use]
    pub fn delta(&self, earlier: &Self) -> Vec<(&'static str, u64)> {
        Counter::ALL
            .iter()
            .filter_map(|&c| {
                let d = self.get(c).saturating_sub(earlier.get(c));
                (d > 0).then_some((c.name(), d))
            })
            .collect()
    }
}

struct Attachment {
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    link: XdpLinkId,
}

pub struct Dataplane {
    ebpf: Ebpf,
    flows: BpfHashMap<MapData, FlowKey, FlowEntry>,
    flow_counters: Array<MapData, FlowCounters>,
    counters: PerCpuArray<MapData, u64>,
    xsks: XskMap<MapData>,
    xsk_base: BpfHashMap<MapData, u32, u32>,
    /// Interfaces with sockets, in the order of their XSKS ranges.
    xsk_bases: Vec<u32>,
    egress: DevMapHash<MapData>,
    attachments: Vec<Attachment>,
    /// Userspace's copy of every entry in `FLOWS`.
    mirror: HashMap<FlowKey, FlowEntry>,
    free_slots: Vec<u32>,
    next_slot: u32,
    max_flows: u32,
}

impl Dataplane {
    /// Loads and verifies the program and creates its maps; attaches nothing yet.
    pub fn load(cfg: &DataplaneConfig) -> anyhow::Result<Self> {
        crate::caps::raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FLOWS", cfg.max_flows)
            .map_max_entries("FLOW_COUNTERS", cfg.max_flows)
            .load(object()?)
            .map_err(|e| crate::caps::explain_load_error(&e))?;
        let prog: &mut Xdp = ebpf
            .program_mut("mediaproxy")
            .ok_or_else(|| anyhow!("program `mediaproxy` missing from the object"))?
            .try_into()?;
        prog.load()
            .map_err(|e| crate::caps::explain_program_error(&e))?;

        let flows = BpfHashMap::try_from(take(&mut ebpf, "FLOWS")?)?;
        let flow_counters = Array::try_from(take(&mut ebpf, "FLOW_COUNTERS")?)?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
        let xsks = XskMap::try_from(take(&mut ebpf, "XSKS")?)?;
        let xsk_base = BpfHashMap::try_from(take(&mut ebpf, "XSK_BASE")?)?;
        let egress = DevMapHash::try_from(take(&mut ebpf, "EGRESS")?)?;
        let mut config: Array<MapData, RelayConfig> = Array::try_from(take(&mut ebpf, "CONFIG")?)?;
        config
            .set(0, RelayConfig::new(cfg.probe_port), 0)
            .context("writing CONFIG")?;
        Ok(Self {
            ebpf,
            flows,
            flow_counters,
            counters,
            xsks,
            xsk_base,
            xsk_bases: Vec::new(),
            egress,
            attachments: Vec::new(),
            mirror: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            max_flows: cfg.max_flows,
        })
    }

    /// Attaches the program to `ifname` with a bpf_link, so it goes away with this process,
    /// and lets XDP redirect out of it.
    pub fn attach(&mut self, ifname: &str, mode: XdpMode) -> anyhow::Result<u32> {
        let ifindex = crate::caps::ifindex(ifname)?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("mediaproxy")
            .ok_or_else(|| anyhow!("program `mediaproxy` missing"))?
            .try_into()?;
        let link = prog
            .attach_to_if_index(ifindex, mode)
            .map_err(|e| crate::caps::explain_attach_error(&e, ifname, mode))?;
        self.allow_egress(ifindex)?;
        self.attachments.push(Attachment {
            ifname: ifname.to_owned(),
            ifindex,
            mode,
            link,
        });
        Ok(ifindex)
    }

    /// Lets XDP redirect out of `ifindex` (attached interfaces are added by [`Self::attach`]).
    pub fn allow_egress(&mut self, ifindex: u32) -> anyhow::Result<()> {
        self.egress
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding ifindex {ifindex} to the EGRESS devmap"))
    }

    /// Detaches from every interface. Dropping the `Dataplane` does the same.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("mediaproxy")
            .ok_or_else(|| anyhow!("program `mediaproxy` missing"))?
            .try_into()?;
        for a in self.attachments.drain(..) {
            prog.detach(a.link)
                .with_context(|| format!("detaching from {}", a.ifname))?;
            let _ = self.egress.remove(a.ifindex);
        }
        Ok(())
    }

    /// `(ifname, ifindex, mode)` of each attachment.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, u32, XdpMode)> {
        self.attachments
            .iter()
            .map(|a| (a.ifname.as_str(), a.ifindex, a.mode))
    }

    /// Routes punted packets of rx queue `queue` of `ifindex` to this AF_XDP socket, which
    /// must be bound to that interface and queue.
    pub fn register_socket(
        &mut self,
        ifindex: u32,
        queue: u32,
        socket: &impl AsRawFd,
    ) -> anyhow::Result<()> {
        if queue >= MAX_QUEUES_PER_INTERFACE {
            bail!(
                "rx queue {queue} of ifindex {ifindex}: only {MAX_QUEUES_PER_INTERFACE} queues per interface can punt"
            );
        }
        let base = match self.xsk_bases.iter().position(|&i| i == ifindex) {
            Some(slot) => slot as u32 * MAX_QUEUES_PER_INTERFACE,
            None => {
                if self.xsk_bases.len() as u32 >= MAX_INTERFACES {
                    bail!("more than {MAX_INTERFACES} interfaces with AF_XDP sockets");
                }
                let base = self.xsk_bases.len() as u32 * MAX_QUEUES_PER_INTERFACE;
                self.xsk_base
                    .insert(ifindex, base, 0)
                    .with_context(|| format!("registering ifindex {ifindex} in XSK_BASE"))?;
                self.xsk_bases.push(ifindex);
                base
            }
        };
        self.xsks
            .set(base + queue, socket.as_raw_fd(), 0)
            .with_context(|| {
                format!("registering the AF_XDP socket of ifindex {ifindex} queue {queue}")
            })
    }

    /// Creates a flow. Fails if it exists or the table is full; nothing changes then.
    pub fn add_flow(&mut self, key: FlowKey, spec: &FlowSpec) -> anyhow::Result<()> {
        if self.mirror.contains_key(&key) {
            bail!("flow {:?} exists", key.local);
        }
        let slot = self.alloc_slot()?;
        let entry = spec.entry(slot);
        if let Err(e) = self
            .flow_counters
            .set(slot, FlowCounters::default(), 0)
            .and_then(|()| self.flows.insert(key, entry, 0))
        {
            self.free_slots.push(slot);
            return Err(e).with_context(|| format!("adding flow {:?}", key.local));
        }
        self.mirror.insert(key, entry);
        Ok(())
    }

    /// Replaces a flow's settings in one map update; its counters carry on.
    pub fn update_flow(&mut self, key: FlowKey, spec: &FlowSpec) -> anyhow::Result<()> {
        let old = *self
            .mirror
            .get(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        let entry = spec.entry(old.counter_slot);
        if entry == old {
            return Ok(());
        }
        self.flows
            .insert(key, entry, 0)
            .with_context(|| format!("updating flow {:?}", key.local))?;
        self.mirror.insert(key, entry);
        Ok(())
    }

    /// Flips a flow to FORWARD toward `out_dst`, from `out_src`, accepting only `peer`.
    pub fn set_forward(
        &mut self,
        key: FlowKey,
        peer: Option<Endpoint>,
        out_src: Endpoint,
        out_dst: Endpoint,
    ) -> anyhow::Result<()> {
        let mut spec = self.flow_spec(key)?;
        spec.state = FlowState::Forward;
        spec.peer = peer;
        spec.out_src = out_src;
        spec.out_dst = out_dst;
        self.update_flow(key, &spec)
    }

    /// The settings of a flow as userspace last wrote them.
    pub fn flow_spec(&self, key: FlowKey) -> anyhow::Result<FlowSpec> {
        let e = self
            .mirror
            .get(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        Ok(FlowSpec {
            state: e.state(),
            peer: e.has_flag(flow_flags::REQUIRE_PEER).then_some(e.peer),
            mismatch: if e.has_flag(flow_flags::MISMATCH_DROP) {
                MismatchPolicy::Drop
            } else {
                MismatchPolicy::Punt
            },
            out_src: e.out_src,
            out_dst: e.out_dst,
            egress_ifindex: e.egress_ifindex,
        })
    }

    /// Removes a flow and returns its final counters.
    pub fn remove_flow(&mut self, key: FlowKey) -> anyhow::Result<FlowCounters> {
        let entry = self
            .mirror
            .remove(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        self.flows
            .remove(&key)
            .with_context(|| format!("removing flow {:?}", key.local))?;
        let counters = self
            .flow_counters
            .get(&entry.counter_slot, 0)
            .unwrap_or_default();
        self.free_slots.push(entry.counter_slot);
        Ok(counters)
    }

    pub fn flow_stats(&self, key: FlowKey) -> anyhow::Result<FlowCounters> {
        let e = self
            .mirror
            .get(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        Ok(self.flow_counters.get(&e.counter_slot, 0)?)
    }

    pub fn has_flow(&self, key: FlowKey) -> bool {
        self.mirror.contains_key(&key)
    }

    pub fn flow_count(&self) -> usize {
        self.mirror.len()
    }

    pub fn global_counters(&self) -> anyhow::Result<GlobalCounters> {
        let mut out = GlobalCounters::default();
        for c in Counter::ALL {
            let per_cpu = self.counters.get(&(c as u32), 0)?;
            out.0[c as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// The program's fd, for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program("mediaproxy")
            .ok_or_else(|| anyhow!("program `mediaproxy` missing"))?
            .try_into()?)
    }

    fn alloc_slot(&mut self) -> anyhow::Result<u32> {
        if let Some(s) = self.free_slots.pop() {
            return Ok(s);
        }
        if self.next_slot >= self.max_flows {
            bail!("flow table full ({} flows)", self.max_flows);
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

/// The XDP_PASS program, for the far end of a veth that the relay redirects into.
/// Detaches when dropped.
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    pub fn attach(ifname: &str, mode: XdpMode) -> anyhow::Result<Self> {
        crate::caps::raise_memlock();
        let mut ebpf = EbpfLoader::new()
            // The maps are created anyway; keep them tiny.
            .map_max_entries("FLOWS", 1)
            .map_max_entries("FLOW_COUNTERS", 1)
            .load(object()?)
            .map_err(|e| crate::caps::explain_load_error(&e))?;
        let prog: &mut Xdp = ebpf
            .program_mut("pass")
            .ok_or_else(|| anyhow!("program `pass` missing"))?
            .try_into()?;
        prog.load()?;
        let ifindex = crate::caps::ifindex(ifname)?;
        prog.attach_to_if_index(ifindex, mode)
            .map_err(|e| crate::caps::explain_attach_error(&e, ifname, mode))?;
        Ok(Self { _ebpf: ebpf })
    }
}
