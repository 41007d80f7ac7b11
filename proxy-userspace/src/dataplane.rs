//! The one module that owns aya and the programs' maps.
//!
//! Everything else talks to the fast path through [`Dataplane`]'s typed methods. Userspace
//! keeps a mirror of every flow entry it wrote, so reads of configuration never go to the
//! kernel, and the kernel's maps are only written here, from the control thread.
//!
//! Programs: `mediaproxy` (XDP, native mode) or `mediaproxy_skb` (XDP, generic mode) on each
//! media interface, `mediaproxy_tc` on the same interfaces' TC ingress (the skb path for
//! egresses that drop native frames), and `mediaproxy_lookup` on the network namespace (the
//! fallback socket's steering).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    os::fd::AsRawFd,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, HashMap as BpfHashMap, MapData, PerCpuArray, SockMap, XskMap},
    programs::{
        SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode, sk_lookup::SkLookupLinkId,
        tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use proxy_common::{
    Counter, Endpoint, FlowCounters, FlowEntry, FlowKey, RelayConfig,
    flow::{MAX_INTERFACES, MAX_QUEUES_PER_INTERFACE, place},
};

use crate::nexthop::NextHop;

mod flows;
mod kernel_log;

use kernel_log::KernelLog;

/// The compiled programs, built by build.rs.
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

const XDP_NATIVE: &str = "mediaproxy";
const XDP_SKB: &str = "mediaproxy_skb";
const TC: &str = "mediaproxy_tc";
const LOOKUP: &str = "mediaproxy_lookup";

pub use crate::flow::{FlowSpec, MismatchPolicy};

/// Where a FORWARD flow's packets leave, and whether native XDP frames are delivered there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    pub hop: NextHop,
    /// The egress device takes frames from native XDP (`XDP_TX`, DEVMAP redirect). Without
    /// it native XDP hands the packet to the TC program.
    pub native: bool,
    /// Never `XDP_TX`, a DEVMAP redirect even back out of the ingress interface (a veth:
    /// see `flow_flags::TX_REDIRECT`).
    pub redirect_only: bool,
}

/// The XDP attachment mode of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (SKB) XDP.
    Skb,
}

impl AttachMode {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }

    fn program(self) -> &'static str {
        match self {
            AttachMode::Native => XDP_NATIVE,
            AttachMode::Skb => XDP_SKB,
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Capacity of the flow table (two flows per relayed stream).
    pub max_flows: u32,
    /// The relay's media addresses, which key its flows: the flow array is laid out so that
    /// each gets blocks of its own (`proxy_common::flow::place::layout`). Flows keyed on other
    /// addresses work too, at the hash map's cost where their places are taken.
    pub media_addrs: Vec<IpAddr>,
    /// Probe port, 0 for none.
    pub probe_port: u16,
    /// The kernel program's events (aya-log) up to this level, logged under the target
    /// `mediaproxy::kernel`. `None` (the default) compiles them out of the loaded program.
    pub kernel_log: Option<aya_log::Level>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            max_flows: proxy_common::flow::DEFAULT_MAX_FLOWS,
            media_addrs: Vec::new(),
            probe_port: 0,
            kernel_log: None,
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
    mode: AttachMode,
    xdp: XdpLinkId,
    tc: Option<SchedClassifierLinkId>,
}

/// A slot of the `EGRESS` DEVMAP: the device it sends into, and how many flow entries name
/// it. Flows hold slots, not ifindexes, so a slot goes to another device only when no entry
/// names it any more: a flow is never sent into a device it was not resolved to.
#[derive(Clone, Copy, Debug, Default)]
struct EgressSlot {
    /// 0 once the device went away or was re-attached (or before first use).
    ifindex: u32,
    users: u32,
}

impl EgressSlot {
    fn is_free(self) -> bool {
        self.ifindex == 0 && self.users == 0
    }
}

/// A place of the flow array (see `proxy_common::flow::place`): whether a flow holds it, and
/// the `seq` its element now has.
#[derive(Clone, Copy, Debug, Default)]
struct Place {
    taken: bool,
    seq: u32,
}

/// What userspace wrote for one flow, and what it last saw of its forward counter.
#[derive(Clone, Debug)]
struct Flow {
    spec: FlowSpec,
    egress: Option<Egress>,
    /// As written, with `seq` 0 (the element's own is in its [`Place`]).
    entry: FlowEntry,
    /// Its place in the flow array, or `None`: in the `FLOWS` hash map.
    place: Option<u32>,
    seen: std::cell::Cell<Forwarded>,
}

/// A flow's forward counter at a read, and the time of the read that last saw it move.
#[derive(Clone, Copy, Debug, Default)]
struct Forwarded {
    packets: u64,
    moved_at: Option<std::time::Instant>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    flow_array: Array<MapData, FlowEntry>,
    /// The flow array's places, by index.
    places: Vec<Place>,
    layout: place::Layout,
    flows: BpfHashMap<MapData, FlowKey, FlowEntry>,
    flow_counters: Array<MapData, FlowCounters>,
    counters: PerCpuArray<MapData, u64>,
    xsks: XskMap<MapData>,
    xsk_base: BpfHashMap<MapData, u32, u32>,
    /// Interfaces with sockets, by XSKS range; 0 marks a free range.
    xsk_bases: Vec<u32>,
    egress: DevMap<MapData>,
    /// The `EGRESS` slots, by index (see [`EgressSlot`]).
    egress_slots: Vec<EgressSlot>,
    sockets: SockMap<MapData>,
    local_addrs: BpfHashMap<MapData, Endpoint, u8>,
    local_set: HashSet<IpAddr>,
    attachments: Vec<Attachment>,
    lookup: Option<SkLookupLinkId>,
    /// Userspace's copy of every flow entry, in the array or in `FLOWS`.
    mirror: HashMap<FlowKey, Flow>,
    /// Counter slots of flows in the hash map, freed; a flow at a place counts in the slot
    /// of its place's index.
    free_slots: Vec<u32>,
    /// Hash-map counter slots handed out so far, after the places' own.
    next_slot: u32,
    max_flows: u32,
    _kernel_log: Option<KernelLog>,
}

/// The program `name` of the object, as its type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program `{name}` missing from the object"))?
        .try_into()?)
}

#[expect(
    clippy::missing_errors_doc,
    reason = "each method fails only when the kernel refuses a bpf() call, and says which"
)]
impl Dataplane {
    /// Loads and verifies the programs and creates their maps; attaches nothing yet.
    pub fn load(cfg: &DataplaneConfig) -> anyhow::Result<Self> {
        crate::caps::raise_memlock();
        // 0 turns every event off; the verifier then drops their code (the level is read-only
        // data of the program).
        let level = cfg.kernel_log.map_or(0u8, |l| l as u8);
        let addrs: Vec<Endpoint> = cfg
            .media_addrs
            .iter()
            .map(|ip| Endpoint::from(std::net::SocketAddr::new(*ip, 0)))
            .collect();
        let layout = place::layout(cfg.max_flows, &addrs);
        if layout.shared > 0 {
            log::warn!(
                "{} pairs of the media addresses share blocks of the flow array at every layout tried ({} blocks): a flow of the second address on a port the first one's flow uses goes to the hash map, a hash lookup per packet",
                layout.shared,
                layout.blocks
            );
        }
        let places = layout.blocks * place::BLOCK;
        // A counter slot per place, then one per flow for the hash map's.
        let slots = places.checked_add(cfg.max_flows).ok_or_else(|| {
            anyhow!(
                "--max-flows {} is too large: the flow array's {places} places and the flows' counters exceed 2^32 slots",
                cfg.max_flows
            )
        })?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FLOW_ARRAY", places)
            .map_max_entries("FLOWS", cfg.max_flows)
            .map_max_entries("FLOW_COUNTERS", slots)
            .override_global(aya_log::LEVEL, &level, true)
            .load(object()?)
            .map_err(|e| crate::caps::explain_load_error(&e))?;
        for name in [XDP_NATIVE, XDP_SKB] {
            program::<Xdp>(&mut ebpf, name)?
                .load()
                .map_err(|e| crate::caps::explain_program_error(&e))?;
        }
        program::<SchedClassifier>(&mut ebpf, TC)?
            .load()
            .map_err(|e| crate::caps::explain_program_error(&e))?;
        program::<SkLookup>(&mut ebpf, LOOKUP)?
            .load()
            .map_err(|e| crate::caps::explain_program_error(&e))?;

        let flow_array = Array::try_from(take(&mut ebpf, "FLOW_ARRAY")?)?;
        let flows = BpfHashMap::try_from(take(&mut ebpf, "FLOWS")?)?;
        let flow_counters = Array::try_from(take(&mut ebpf, "FLOW_COUNTERS")?)?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
        let xsks = XskMap::try_from(take(&mut ebpf, "XSKS")?)?;
        let xsk_base = BpfHashMap::try_from(take(&mut ebpf, "XSK_BASE")?)?;
        let egress = DevMap::try_from(take(&mut ebpf, "EGRESS")?)?;
        let sockets = SockMap::try_from(take(&mut ebpf, "SOCKETS")?)?;
        let local_addrs = BpfHashMap::try_from(take(&mut ebpf, "LOCAL_ADDRS")?)?;
        let mut config: Array<MapData, RelayConfig> = Array::try_from(take(&mut ebpf, "CONFIG")?)?;
        config
            .set(0, RelayConfig::new(cfg.probe_port, layout), 0)
            .context("writing CONFIG")?;
        let kernel_log = cfg
            .kernel_log
            .map(|_| KernelLog::start(&mut ebpf))
            .transpose()?;
        Ok(Self {
            ebpf,
            flow_array,
            places: vec![Place::default(); places as usize],
            layout,
            flows,
            flow_counters,
            counters,
            xsks,
            xsk_base,
            xsk_bases: Vec::new(),
            egress,
            egress_slots: Vec::new(),
            sockets,
            local_addrs,
            local_set: HashSet::new(),
            attachments: Vec::new(),
            lookup: None,
            mirror: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            max_flows: cfg.max_flows,
            _kernel_log: kernel_log,
        })
    }

    /// Attaches the XDP program in `mode` and the TC program to `ifname`, each with a
    /// `bpf_link`, so that they go away with this process.
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> anyhow::Result<u32> {
        let ifindex = crate::caps::ifindex(ifname)?;
        let prog: &mut Xdp = program(&mut self.ebpf, mode.program())?;
        let xdp = prog
            .attach_to_if_index(ifindex, mode.xdp_mode())
            .map_err(|e| crate::caps::explain_attach_error(&e, ifname, mode.xdp_mode()))?;
        let tc_prog: &mut SchedClassifier = program(&mut self.ebpf, TC)?;
        let tc = match tc_prog.attach(ifname, TcAttachType::Ingress) {
            Ok(l) => Some(l),
            Err(e) => {
                // Undo the XDP half: an interface is attached whole or not at all.
                if let Ok(p) = self.xdp_program(mode) {
                    let _ = p.detach(xdp);
                }
                return Err(anyhow!(
                    "attaching the TC program to {ifname} ingress failed: {e} (the skb path for egresses that drop native XDP frames needs TCX, Linux 6.6, or a clsact qdisc)"
                ));
            }
        };
        self.attachments.push(Attachment {
            ifname: ifname.to_owned(),
            ifindex,
            mode,
            xdp,
            tc,
        });
        Ok(ifindex)
    }

    fn xdp_program(&mut self, mode: AttachMode) -> anyhow::Result<&mut Xdp> {
        program(&mut self.ebpf, mode.program())
    }

    /// Detaches from one interface (it went away, or gets attached anew) and forgets its
    /// `AF_XDP` range and its DEVMAP slot.
    pub fn detach(&mut self, ifindex: u32) -> anyhow::Result<()> {
        let Some(i) = self.attachments.iter().position(|a| a.ifindex == ifindex) else {
            return Ok(());
        };
        let a = self.attachments.remove(i);
        let mut errors = Vec::new();
        if let Err(e) = self.xdp_program(a.mode).and_then(|p| Ok(p.detach(a.xdp)?)) {
            errors.push(format!("XDP: {e:#}"));
        }
        if let Some(tc) = a.tc {
            let r: anyhow::Result<()> = (|| {
                let p: &mut SchedClassifier = program(&mut self.ebpf, TC)?;
                Ok(p.detach(tc)?)
            })();
            if let Err(e) = r {
                errors.push(format!("TC: {e:#}"));
            }
        }
        self.forget_device(ifindex);
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("detaching from {}: {}", a.ifname, errors.join("; "))
        }
    }

    /// Drops the `AF_XDP` range and the DEVMAP slot of a device (gone, or re-attached).
    pub fn forget_device(&mut self, ifindex: u32) {
        if let Some(slot) = self.xsk_bases.iter().position(|&i| i == ifindex) {
            self.xsk_bases[slot] = 0;
            let _ = self.xsk_base.remove(&ifindex);
        }
        // The kernel itself clears an unregistered device out of every DEVMAP; the slot is
        // given to another device only once no flow names it.
        for s in &mut self.egress_slots {
            if s.ifindex == ifindex {
                s.ifindex = 0;
            }
        }
    }

    /// Detaches from every interface and the namespace. Dropping the `Dataplane` does the same.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for ifindex in self
            .attachments
            .iter()
            .map(|a| a.ifindex)
            .collect::<Vec<_>>()
        {
            if let Err(e) = self.detach(ifindex) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(l) = self.lookup.take() {
            let r: anyhow::Result<()> = (|| {
                let p: &mut SkLookup = program(&mut self.ebpf, LOOKUP)?;
                Ok(p.detach(l)?)
            })();
            if let Err(e) = r {
                errors.push(format!("sk_lookup: {e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    /// `(ifname, ifindex, mode)` of each attachment.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, u32, AttachMode)> {
        self.attachments
            .iter()
            .map(|a| (a.ifname.as_str(), a.ifindex, a.mode))
    }

    /// Steers the stack's datagrams for flows to these sockets (IPv4, IPv6): attaches the
    /// `sk_lookup` program to the calling thread's network namespace.
    pub fn attach_lookup(&mut self, v4: &impl AsRawFd, v6: &impl AsRawFd) -> anyhow::Result<()> {
        self.sockets
            .set(0, v4, 0)
            .context("adding the IPv4 fallback socket to SOCKETS")?;
        self.sockets
            .set(1, v6, 0)
            .context("adding the IPv6 fallback socket to SOCKETS")?;
        let netns = std::fs::File::open("/proc/thread-self/ns/net")
            .context("opening this thread's network namespace")?;
        let p: &mut SkLookup = program(&mut self.ebpf, LOOKUP)?;
        self.lookup = Some(
            p.attach(netns)
                .context("attaching the sk_lookup program to the network namespace")?,
        );
        Ok(())
    }

    /// The relay's own addresses: probes are punted only when sent to one of them.
    pub fn set_local_addresses(&mut self, addrs: &HashSet<IpAddr>) -> anyhow::Result<()> {
        let key = |ip: &IpAddr| Endpoint::from(std::net::SocketAddr::new(*ip, 0));
        for gone in self.local_set.difference(addrs) {
            let _ = self.local_addrs.remove(&key(gone));
        }
        for new in addrs.difference(&self.local_set) {
            self.local_addrs
                .insert(key(new), 1, 0)
                .with_context(|| format!("adding {new} to LOCAL_ADDRS"))?;
        }
        self.local_set.clone_from(addrs);
        Ok(())
    }

    /// Lets native XDP redirect into `ifindex` (an egress that some next hop uses) and returns
    /// its `EGRESS` slot. The kernel resolves the ifindex in the network namespace of the
    /// calling thread, so flows with a next hop must be written from the relay's namespace.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "slots are below MAX_INTERFACES (64), checked before they are made"
    )]
    fn egress_slot(&mut self, ifindex: u32) -> anyhow::Result<u32> {
        if let Some(i) = self.egress_slots.iter().position(|s| s.ifindex == ifindex) {
            return Ok(i as u32);
        }
        let i = match self.egress_slots.iter().position(|s| s.is_free()) {
            Some(free) => free,
            None if (self.egress_slots.len() as u32) < MAX_INTERFACES => {
                self.egress_slots.push(EgressSlot::default());
                self.egress_slots.len() - 1
            }
            None => bail!("more than {MAX_INTERFACES} egress interfaces"),
        };
        self.egress
            .set(i as u32, ifindex, None, 0)
            .with_context(|| format!("adding ifindex {ifindex} to the EGRESS devmap"))?;
        self.egress_slots[i].ifindex = ifindex;
        Ok(i as u32)
    }

    /// Counts a flow entry in or out of the users of its egress slot.
    fn use_egress_slot(&mut self, entry: &FlowEntry, users: fn(u32) -> u32) {
        if entry.has_flag(proxy_common::flow::flow_flags::NEXT_HOP)
            && let Some(s) = self.egress_slots.get_mut(entry.egress_slot as usize)
        {
            s.users = users(s.users);
        }
    }

    /// Routes punted packets of rx queue `queue` of `ifindex` to this `AF_XDP` socket, which
    /// must be bound to that interface and queue.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "slots are below MAX_INTERFACES (64), checked before they are made"
    )]
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
        let slot = if let Some(slot) = self.xsk_bases.iter().position(|&i| i == ifindex) {
            slot
        } else {
            let slot = match self.xsk_bases.iter().position(|&i| i == 0) {
                Some(free) => free,
                None if (self.xsk_bases.len() as u32) < MAX_INTERFACES => {
                    self.xsk_bases.push(0);
                    self.xsk_bases.len() - 1
                }
                None => bail!("more than {MAX_INTERFACES} interfaces with AF_XDP sockets"),
            };
            let base = slot as u32 * MAX_QUEUES_PER_INTERFACE;
            self.xsk_base
                .insert(ifindex, base, 0)
                .with_context(|| format!("registering ifindex {ifindex} in XSK_BASE"))?;
            self.xsk_bases[slot] = ifindex;
            slot
        };
        let base = slot as u32 * MAX_QUEUES_PER_INTERFACE;
        self.xsks
            .set(base + queue, socket.as_raw_fd(), 0)
            .with_context(|| {
                format!("registering the AF_XDP socket of ifindex {ifindex} queue {queue}")
            })
    }

    pub fn global_counters(&self) -> anyhow::Result<GlobalCounters> {
        let mut out = GlobalCounters::default();
        for c in Counter::ALL {
            let per_cpu = self.counters.get(&(c as u32), 0)?;
            out.0[c as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// The native XDP program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> anyhow::Result<&Xdp> {
        self.program_of(AttachMode::Native)
    }

    /// The XDP program of `mode`, for `BPF_PROG_TEST_RUN`.
    pub fn program_of(&self, mode: AttachMode) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program(mode.program())
            .ok_or_else(|| anyhow!("program `{}` missing", mode.program()))?
            .try_into()?)
    }

    /// The TC program, for `BPF_PROG_TEST_RUN`.
    pub fn tc_program(&self) -> anyhow::Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(TC)
            .ok_or_else(|| anyhow!("program `{TC}` missing"))?
            .try_into()?)
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

#[cfg(all(test, feature = "ebpf"))]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

    /// No program calls a `memset` or `memmove` subprogram. LLVM emits one for a zeroed or
    /// copied byte array (an endpoint, a MAC address), and each is a BPF-to-BPF call whose
    /// return pays the kernel's return-thunk mitigation: three of them took about 30 ns of an
    /// IPv4 FORWARD's 100 (see `proxy_common::wire::copy_bytes`). A `memcpy` call is left
    /// only in aya-log's event path, which is dead code unless `--kernel-log` turns it on.
    #[test]
    fn the_programs_call_no_memory_subprograms() {
        let elf = object::File::parse(super::XDP_OBJECT).expect("the embedded ELF");
        let mut sections = 0;
        for section in elf.sections() {
            let name = section.name().unwrap_or_default();
            if !matches!(name, "xdp" | "classifier" | "sk_lookup") {
                continue;
            }
            sections += 1;
            for (_, r) in section.relocations() {
                if let RelocationTarget::Symbol(i) = r.target() {
                    let sym = elf.symbol_by_index(i).expect("a relocation's symbol");
                    let callee = sym.name().unwrap_or_default();
                    assert!(
                        !matches!(callee, "memset" | "memmove"),
                        "the {name} program calls {callee}"
                    );
                }
            }
        }
        assert_eq!(sections, 3, "the xdp, classifier and sk_lookup programs");
    }
}
