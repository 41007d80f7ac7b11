//! Next hops for FORWARD flows, kept right while routes, neighbours and devices change.
//!
//! Each FORWARD flow sends to one destination from one relay address. The flows of a
//! destination share its resolution (route, neighbour MAC, MTU), and the destinations of a
//! neighbour entry (the gateway, or an on-link peer) are indexed by it, so that:
//! - a neighbour change (a new MAC, a failed or deleted entry) updates exactly the flows that
//!   use it, from the notification alone, without asking the kernel again;
//! - a route or link change, or lost notifications, re-resolves every destination;
//! - a device whose xdp-features change gets its flows moved between native XDP and the TC
//!   path.
//!
//! Staleness is bounded by the notifications: rtnetlink delivers a change as the kernel makes
//! it, and the daemon applies it on its next loop (milliseconds). If the kernel drops
//! notifications the monitor reports it and everything is re-resolved. A neighbour the fast
//! path keeps using is never confirmed by the stack (XDP bypasses it), so [`Egresses::kick`]
//! asks the kernel to re-validate it periodically (`NTF_USE`, what traffic through the stack
//! would do): a MAC that changed without a gratuitous ARP is learnt within seconds.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::IpAddr,
    time::{Duration, Instant},
};

use proxy_common::{Endpoint, FlowKey, FlowState};

use crate::{
    dataplane::Egress,
    flow::FlowSpec,
    netdev::{Netdev, xdp_act},
    netlink::{Mac, Route},
    nexthop::{NextHop, Resolution, Resolver},
};

/// How long userspace trusts a send-path resolution for a destination no flow uses.
const SEND_READY_TTL: Duration = Duration::from_secs(1);
/// Short: the kernel path resolves the neighbour meanwhile, and `AF_XDP` should take over soon.
const SEND_UNRESOLVED_TTL: Duration = Duration::from_millis(50);
/// Bound on the send-path cache (destinations no flow uses: probes, one-off sends).
const SEND_CACHE_MAX: usize = 65_536;

/// A destination as seen from one of the relay's addresses (policy routing may differ per
/// source).
type DstKey = (Option<IpAddr>, IpAddr);

/// What is known of a device that a next hop leaves through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub veth: bool,
    /// `NETDEV_A_DEV_XDP_FEATURES`; `None` when the kernel does not say (before 6.3).
    pub features: Option<u64>,
    /// Set when the device was seen dropping native frames although its features said it
    /// takes them (its `xdp_tx/xmit` error counters grew): the TC path from then on.
    pub demoted: bool,
}

impl Device {
    /// Whether frames that native XDP transmits into this device are delivered. A veth's
    /// `NDO_XMIT` bit tracks its peer (an XDP program or GRO there); without the kernel's
    /// word, a veth is assumed not to deliver (the container case) and other drivers that
    /// run native XDP are assumed to.
    #[must_use]
    pub fn native(&self) -> bool {
        if self.demoted {
            return false;
        }
        match self.features {
            Some(f) => f & xdp_act::NDO_XMIT != 0,
            None => !self.veth,
        }
    }

    /// How the fast path sends out of this device, for logs and `statistics`.
    #[must_use]
    pub fn path(&self) -> &'static str {
        if self.native() {
            "native XDP"
        } else {
            "TC (skb path)"
        }
    }
}

#[derive(Debug)]
struct Dst {
    route: Option<Route>,
    resolution: Resolution,
    flows: HashSet<FlowKey>,
}

/// A flow whose next hop changed: the daemon writes it to the dataplane.
pub type Change = (FlowKey, Option<Egress>);

pub struct Egresses {
    resolver: Resolver,
    netdev: Option<Netdev>,
    devices: HashMap<u32, Device>,
    dsts: HashMap<DstKey, Dst>,
    by_neighbour: HashMap<(u32, IpAddr), HashSet<DstKey>>,
    flow_dst: HashMap<FlowKey, DstKey>,
    send_cache: HashMap<DstKey, (Resolution, Instant)>,
    /// Lookups that failed (rtnetlink errors), for `statistics`.
    pub errors: u64,
}

fn key_of(spec: &FlowSpec) -> Option<DstKey> {
    Some((spec.out_src.ip(), spec.out_dst.ip()?))
}

impl Egresses {
    /// # Errors
    ///
    /// If an rtnetlink socket or the kernel-path send sockets cannot be opened.
    pub fn new() -> io::Result<Self> {
        let netdev = match Netdev::open() {
            Ok(n) => n,
            Err(e) => {
                log::warn!("the netdev netlink family is not usable ({e}): xdp-features unknown");
                None
            }
        };
        Ok(Self {
            resolver: Resolver::new()?,
            netdev,
            devices: HashMap::new(),
            dsts: HashMap::new(),
            by_neighbour: HashMap::new(),
            flow_dst: HashMap::new(),
            send_cache: HashMap::new(),
            errors: 0,
        })
    }

    #[must_use]
    pub fn netdev(&self) -> Option<&Netdev> {
        self.netdev.as_ref()
    }

    pub fn resolver(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    /// The device, looked up (name, driver kind, xdp-features) on first use.
    pub fn device(&mut self, ifindex: u32) -> Option<&Device> {
        if !self.devices.contains_key(&ifindex) {
            let link = self.resolver.link(ifindex).ok().flatten()?;
            let features = self
                .netdev
                .as_mut()
                .and_then(|n| n.xdp_features(ifindex).ok().flatten());
            self.devices.insert(
                ifindex,
                Device {
                    veth: link.is_veth(),
                    name: link.name,
                    features,
                    demoted: false,
                },
            );
        }
        self.devices.get(&ifindex)
    }

    #[must_use]
    pub fn devices(&self) -> &HashMap<u32, Device> {
        &self.devices
    }

    fn egress(&mut self, r: &Resolution) -> Option<Egress> {
        let hop = r.ready()?;
        let dev = self.device(hop.ifindex);
        let native = dev.is_some_and(Device::native);
        let redirect_only = dev.is_none_or(|d| d.veth);
        Some(Egress {
            hop,
            native,
            redirect_only,
        })
    }

    /// The next hop for a flow the session logic just (re)wrote; registers the flow under its
    /// destination so that later changes reach it.
    pub fn egress_for(&mut self, key: FlowKey, spec: &FlowSpec) -> Option<Egress> {
        let dst = (spec.state == FlowState::Forward)
            .then(|| key_of(spec))
            .flatten();
        if self.flow_dst.get(&key).copied() != dst {
            self.forget_flow(key);
        }
        let dk = dst?;
        if !self.dsts.contains_key(&dk) {
            let (route, resolution) = match self.resolver.resolve(dk.0, dk.1) {
                Ok(r) => r,
                Err(e) => {
                    self.errors += 1;
                    log::warn!("resolving the next hop to {}: {e}", dk.1);
                    (None, Resolution::Unreachable)
                }
            };
            if let Some(n) = resolution.neighbour() {
                self.by_neighbour.entry(n).or_default().insert(dk);
            }
            self.dsts.insert(
                dk,
                Dst {
                    route,
                    resolution,
                    flows: HashSet::new(),
                },
            );
        }
        let d = self.dsts.get_mut(&dk)?;
        d.flows.insert(key);
        self.flow_dst.insert(key, dk);
        let r = d.resolution;
        self.egress(&r)
    }

    /// The flow is gone or no longer forwards.
    pub fn forget_flow(&mut self, key: FlowKey) {
        let Some(dk) = self.flow_dst.remove(&key) else {
            return;
        };
        let Some(d) = self.dsts.get_mut(&dk) else {
            return;
        };
        d.flows.remove(&key);
        if d.flows.is_empty() {
            let n = d.resolution.neighbour();
            self.dsts.remove(&dk);
            if let Some(n) = n
                && let Some(set) = self.by_neighbour.get_mut(&n)
            {
                set.remove(&dk);
                if set.is_empty() {
                    self.by_neighbour.remove(&n);
                }
            }
        }
    }

    /// A neighbour entry changed: the destinations behind it get the new MAC (or lose it),
    /// from the notification alone.
    pub fn on_neighbour(&mut self, ifindex: u32, ip: IpAddr, mac: Option<Mac>) -> Vec<Change> {
        self.send_cache
            .retain(|_, (r, _)| r.neighbour() != Some((ifindex, ip)));
        let Some(keys) = self.by_neighbour.get(&(ifindex, ip)).cloned() else {
            return Vec::new();
        };
        let Ok(Some(link)) = self.resolver.link(ifindex) else {
            return self.resync_keys(keys.into_iter().collect());
        };
        let mut out = Vec::new();
        for dk in keys {
            let Some(d) = self.dsts.get_mut(&dk) else {
                continue;
            };
            let Some(route) = d.route else { continue };
            let r = Resolver::with_mac(&route, &link, ip, mac);
            if r != d.resolution {
                d.resolution = r;
                let flows: Vec<FlowKey> = d.flows.iter().copied().collect();
                let g = self.egress(&r);
                out.extend(flows.into_iter().map(|k| (k, g)));
            }
        }
        out
    }

    /// A device's xdp-features changed (its veth peer got or lost XDP or GRO): its flows move
    /// between native XDP and the TC path.
    pub fn on_features(&mut self, ifindex: u32, features: u64) -> Vec<Change> {
        let Some(d) = self.devices.get_mut(&ifindex) else {
            return Vec::new();
        };
        let was = d.native();
        d.features = Some(features);
        let now = d.native();
        if was != now {
            log::info!(
                "{} (ifindex {ifindex}): native XDP frames {} delivered there now (xdp-features {features:#x}); its flows use {}",
                d.name,
                if now { "are" } else { "are no longer" },
                d.path()
            );
        }
        self.flows_via(ifindex, was != now)
    }

    /// The device dropped native frames although it claimed to take them.
    pub fn demote(&mut self, ifindex: u32) -> Vec<Change> {
        let Some(d) = self.devices.get_mut(&ifindex) else {
            return Vec::new();
        };
        if d.demoted {
            return Vec::new();
        }
        d.demoted = true;
        log::warn!(
            "{} (ifindex {ifindex}) dropped native XDP frames although its xdp-features say it takes them: its flows use the TC path from now on",
            d.name
        );
        self.flows_via(ifindex, true)
    }

    fn flows_via(&mut self, ifindex: u32, changed: bool) -> Vec<Change> {
        if !changed {
            return Vec::new();
        }
        let rs: Vec<(Resolution, Vec<FlowKey>)> = self
            .dsts
            .values()
            .filter(|d| d.resolution.ready().is_some_and(|h| h.ifindex == ifindex))
            .map(|d| (d.resolution, d.flows.iter().copied().collect()))
            .collect();
        let mut out = Vec::new();
        for (r, flows) in rs {
            let g = self.egress(&r);
            out.extend(flows.into_iter().map(|k| (k, g)));
        }
        out
    }

    /// A link changed or went away: what is cached of it goes.
    pub fn forget_link(&mut self, ifindex: u32) {
        self.resolver.forget_link(ifindex);
        self.devices.remove(&ifindex);
        self.send_cache.clear();
    }

    /// Re-resolves every destination (routes, links or addresses changed, or notifications
    /// were lost) and returns the flows whose next hop changed.
    pub fn resync(&mut self) -> Vec<Change> {
        self.send_cache.clear();
        let keys: Vec<DstKey> = self.dsts.keys().copied().collect();
        self.resync_keys(keys)
    }

    fn resync_keys(&mut self, keys: Vec<DstKey>) -> Vec<Change> {
        let mut out = Vec::new();
        for dk in keys {
            let (route, r) = match self.resolver.resolve(dk.0, dk.1) {
                Ok(x) => x,
                Err(e) => {
                    self.errors += 1;
                    log::warn!("re-resolving the next hop to {}: {e}", dk.1);
                    continue;
                }
            };
            let Some(d) = self.dsts.get_mut(&dk) else {
                continue;
            };
            d.route = route;
            if r == d.resolution {
                continue;
            }
            let old = d.resolution.neighbour();
            d.resolution = r;
            let flows: Vec<FlowKey> = d.flows.iter().copied().collect();
            if old != r.neighbour() {
                if let Some(n) = old
                    && let Some(set) = self.by_neighbour.get_mut(&n)
                {
                    set.remove(&dk);
                }
                if let Some(n) = r.neighbour() {
                    self.by_neighbour.entry(n).or_default().insert(dk);
                }
            }
            let g = self.egress(&r);
            out.extend(flows.into_iter().map(|k| (k, g)));
        }
        out
    }

    /// Where userspace sends a packet from `from` to `to`: the resolution a flow already has,
    /// or a fresh one cached briefly.
    pub fn for_send(&mut self, from: Endpoint, to: IpAddr, now: Instant) -> Resolution {
        let dk = (from.ip(), to);
        if let Some(d) = self.dsts.get(&dk) {
            return d.resolution;
        }
        if let Some((r, at)) = self.send_cache.get(&dk) {
            let ttl = if r.ready().is_some() {
                SEND_READY_TTL
            } else {
                SEND_UNRESOLVED_TTL
            };
            if now.saturating_duration_since(*at) < ttl {
                return *r;
            }
        }
        let r = if let Ok((_, r)) = self.resolver.resolve(dk.0, dk.1) {
            r
        } else {
            self.errors += 1;
            Resolution::Unreachable
        };
        if self.send_cache.len() >= SEND_CACHE_MAX {
            self.send_cache.clear();
        }
        self.send_cache.insert(dk, (r, now));
        r
    }

    /// Asks the kernel to re-validate every STALE neighbour a FORWARD flow uses, as traffic
    /// through the stack would (`NTF_USE`): the entry is probed, and a changed MAC comes back
    /// as a notification. Entries in any other state are left alone.
    pub fn kick(&mut self) {
        let neighbours: Vec<(u32, IpAddr)> = self
            .dsts
            .values()
            .filter_map(|d| match d.resolution {
                Resolution::Ready { hop, neighbour } => Some((hop.ifindex, neighbour)),
                _ => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for (ifindex, ip) in neighbours {
            // Never a static (PERMANENT) entry: the kernel's NTF_USE would clear it.
            let kicked = match self.resolver.rtnl().neighbour_is_stale(ifindex, ip) {
                Ok(true) => self.resolver.rtnl().use_neighbour(ifindex, ip),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
            if kicked.is_err() {
                self.errors += 1;
            }
        }
    }

    /// Destinations with FORWARD flows, and how many of them have a next hop.
    #[must_use]
    pub fn summary(&self) -> (usize, usize) {
        (
            self.dsts.len(),
            self.dsts
                .values()
                .filter(|d| d.resolution.ready().is_some())
                .count(),
        )
    }

    /// The resolved next hop of a flow, if any.
    #[must_use]
    pub fn hop_of(&self, key: &FlowKey) -> Option<NextHop> {
        let dk = self.flow_dst.get(key)?;
        self.dsts.get(dk)?.resolution.ready()
    }
}

/// What the relay would do with an interface: its driver, its xdp-features, whether native
/// XDP frames are delivered there, and so which path flows leaving through it take.
///
/// # Errors
///
/// If there is no such interface or rtnetlink cannot be asked about it.
pub fn describe_interface(ifname: &str) -> anyhow::Result<Vec<String>> {
    let index = crate::caps::ifindex(ifname)?;
    let link = crate::netlink::Rtnl::new()?
        .link(index)?
        .ok_or_else(|| anyhow::anyhow!("no interface named {ifname:?}"))?;
    let features = crate::netdev::Netdev::open()
        .ok()
        .flatten()
        .and_then(|mut n| n.xdp_features(index).ok().flatten());
    let dev = Device {
        name: link.name.clone(),
        veth: link.is_veth(),
        features,
        demoted: false,
    };
    let act = crate::netdev::xdp_act::BASIC;
    let mut out = vec![
        format!(
            "ifindex {index}, {}, MTU {}, {}",
            link.kind.as_deref().unwrap_or("physical"),
            link.mtu,
            if link.up && link.lower_up {
                "up"
            } else {
                "down"
            }
        ),
        match features {
            Some(f) => format!(
                "xdp-features {f:#x}: native XDP {}, native frames {} delivered there",
                if f & act != 0 {
                    "supported"
                } else {
                    "not supported (generic XDP will be used)"
                },
                if dev.native() { "are" } else { "are not" }
            ),
            None => "xdp-features unknown (kernel before 6.3): assumed from the driver kind".into(),
        },
        format!("flows leaving through {ifname} are sent by {}", dev.path()),
    ];
    if dev.veth && !dev.native() {
        out.push(
            "  (a veth whose peer runs neither XDP nor GRO, as in a container: native frames would be dropped there)".into(),
        );
    }
    if dev.veth {
        out.push("  (on a veth the relay redirects rather than XDP_TX, which stalls behind a GRO-only peer)".into());
    }
    if let Some(e) = crate::ethtool::xdp_errors(ifname) {
        out.push(format!(
            "native XDP frames the driver could not deliver so far: {e}"
        ));
    }
    Ok(out)
}
