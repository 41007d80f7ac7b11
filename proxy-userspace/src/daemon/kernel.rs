//! The kernel side of the control thread: its clock and flow counters, the host's
//! interfaces and addresses, and the network changes the monitor thread reports (links,
//! routes, neighbours, xdp-features), applied to the next hops and the attachments.

use std::{os::fd::AsRawFd, time::Instant};

use anyhow::{Context as _, anyhow};
use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use proxy_common::{Endpoint, FlowKey};

use super::{
    DaemonConfig, NETLINK_POLL_MS, RESYNC_DEBOUNCE,
    control::{Control, Iface},
};
use crate::{
    dataplane::Dataplane,
    egress::Change,
    netdev::FeatureMonitor,
    netlink::{Monitor, NetEvent, Rtnl},
    ng::calls::KernelFlow,
};

/// A flow's counters from the real maps, and when the kernel last forwarded one of its
/// packets (see `Dataplane::last_forwarded` for how late that can be).
pub(super) fn kernel_flow(dp: &Dataplane, key: &Endpoint) -> Option<KernelFlow> {
    let (counters, last_seen) = dp.last_forwarded(FlowKey::new(*key), Instant::now()).ok()?;
    Some(KernelFlow {
        counters,
        last_seen,
    })
}

/// What the kernel told the monitor thread.
pub(super) enum NetChange {
    Net(Vec<NetEvent>),
    /// `(ifindex, xdp features)`; `None` when notifications were lost.
    Features(Option<Vec<(u32, u64)>>),
}

/// Polls the rtnetlink and netdev notification sockets and forwards what they say.
pub(super) fn spawn_monitor(
    mut rtnl: Monitor,
    mut features: Option<FeatureMonitor>,
) -> std::io::Result<Receiver<NetChange>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("mediaproxy-netmon".into())
        .spawn(move || {
            loop {
                let mut pfds = vec![libc::pollfd {
                    fd: rtnl.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                if let Some(f) = &features {
                    pfds.push(libc::pollfd {
                        fd: f.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
                // An error (EINTR) is a spurious wake-up: the reads below find nothing.
                let _ = crate::sys::poll(&mut pfds, NETLINK_POLL_MS);
                let events = rtnl.read();
                if !events.is_empty() && tx.send(NetChange::Net(events)).is_err() {
                    return;
                }
                if let Some(f) = &mut features {
                    let msg = match f.read() {
                        Ok(v) if v.is_empty() => None,
                        Ok(v) => Some(NetChange::Features(Some(v))),
                        Err(_) => Some(NetChange::Features(None)),
                    };
                    if let Some(m) = msg
                        && tx.send(m).is_err()
                    {
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// The interfaces that carry the media addresses, plus the extra ones, by name.
pub(super) fn media_devices(cfg: &DaemonConfig) -> anyhow::Result<Vec<String>> {
    let mut rtnl = Rtnl::new().context("rtnetlink")?;
    let addrs = rtnl.addresses().context("listing addresses")?;
    let links = rtnl.links().context("listing links")?;
    let mut names: Vec<String> = Vec::new();
    for i in &cfg.calls.interfaces {
        let ifindex = addrs
            .iter()
            .find(|(_, a)| *a == i.addr)
            .map(|(ix, _)| *ix)
            .ok_or_else(|| {
                anyhow!(
                    "no interface in this network namespace has the address {}",
                    i.addr
                )
            })?;
        let name = links
            .iter()
            .find(|l| l.index == ifindex)
            .map(|l| l.name.clone())
            .ok_or_else(|| anyhow!("the interface carrying {} vanished", i.addr))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for x in &cfg.xdp_ifaces {
        if !names.contains(x) {
            names.push(x.clone());
        }
    }
    Ok(names)
}

impl Control {
    /// Re-reads the host's addresses: the relay's own, and its subnets' broadcast addresses.
    pub(super) fn refresh_own_addresses(&mut self) {
        let Ok(list) = self.egresses.resolver().rtnl().address_prefixes() else {
            return;
        };
        let mut own = std::collections::HashSet::new();
        let list_addrs = list.iter().map(|(_, ip, _)| *ip).collect();
        for (_, ip, prefix) in list {
            own.insert(ip);
            if let std::net::IpAddr::V4(a) = ip
                && prefix < 31
            {
                let mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                own.insert(std::net::IpAddr::V4((u32::from(a) | mask).into()));
            }
        }
        self.calls.set_local_addresses(own.iter().copied());
        let addrs: std::collections::HashSet<std::net::IpAddr> = list_addrs;
        if let Err(e) = self.dp.set_local_addresses(&addrs) {
            warn!("the relay's addresses for probes: {e:#}");
        }
        self.own = own;
    }

    fn schedule_resync(&mut self) {
        if self.resync_at.is_none() {
            self.resync_at = Some(Instant::now() + RESYNC_DEBOUNCE);
        }
    }

    pub(super) fn apply_changes(&mut self, changes: Vec<Change>) {
        for (key, egress) in changes {
            if let Err(e) = self.dp.set_egress(key, egress) {
                self.counters.flow_errors += 1;
                debug!("next hop of flow {}: {e:#}", key.local);
            }
        }
    }

    pub(super) fn on_net(&mut self, change: NetChange) {
        match change {
            NetChange::Features(Some(list)) => {
                for (ifindex, f) in list {
                    let changes = self.egresses.on_features(ifindex, f);
                    self.apply_changes(changes);
                }
            }
            NetChange::Features(None) => {
                // Lost notifications: forget every device, so that each is asked again.
                let known: Vec<u32> = self.egresses.devices().keys().copied().collect();
                for i in known {
                    self.egresses.forget_link(i);
                }
                self.schedule_resync();
            }
            NetChange::Net(events) => {
                for e in events {
                    self.on_net_event(e);
                }
            }
        }
    }

    fn on_net_event(&mut self, e: NetEvent) {
        match e {
            NetEvent::Neighbour { ifindex, ip, mac } => {
                let changes = self.egresses.on_neighbour(ifindex, ip, mac);
                self.apply_changes(changes);
            }
            NetEvent::Route | NetEvent::Address { .. } | NetEvent::Overflow => {
                self.schedule_resync();
            }
            NetEvent::LinkGone { index, name } => {
                self.egresses.forget_link(index);
                self.schedule_resync();
                if let Some(i) = self.ifaces.iter().position(|f| f.ifindex == Some(index)) {
                    warn!(
                        "{name} (ifindex {index}) was deleted: detached; it is attached again when a device of that name appears"
                    );
                    self.io.remove_interface(index);
                    if let Err(e) = self.dp.detach(index) {
                        debug!("{e:#}");
                    }
                    let f = &mut self.ifaces[i];
                    f.ifindex = None;
                    f.running = false;
                } else {
                    self.dp.forget_device(index);
                }
            }
            NetEvent::Link(link) => {
                self.egresses.forget_link(link.index);
                self.schedule_resync();
                let Some(i) = self.ifaces.iter().position(|f| f.name == link.name) else {
                    return;
                };
                let mut iface = std::mem::replace(
                    &mut self.ifaces[i],
                    Iface {
                        name: String::new(),
                        ifindex: None,
                        mode: None,
                        running: false,
                        queues: 0,
                        xdp_errors: None,
                    },
                );
                if iface.ifindex != Some(link.index) {
                    if let Some(old) = iface.ifindex {
                        self.io.remove_interface(old);
                        let _ = self.dp.detach(old);
                    }
                    match self.attach(&mut iface) {
                        Ok(()) => {
                            self.counters.reattached += 1;
                            info!(
                                "{} is back (ifindex {}): attached again",
                                iface.name, link.index
                            );
                        }
                        Err(e) => warn!("attaching to the new {}: {e:#}", iface.name),
                    }
                    iface.running = false;
                }
                let running = link.up && link.lower_up;
                if running && !iface.running && iface.ifindex.is_some() {
                    // After a down/up or a re-creation the queues may be new: new sockets.
                    if let Err(e) = self.sockets(&mut iface) {
                        warn!("AF_XDP sockets on {}: {e:#}", iface.name);
                    }
                }
                iface.running = running;
                self.ifaces[i] = iface;
            }
        }
    }

    /// The runtime half of delivery detection: a device whose driver counts native frames
    /// it could not deliver (a veth's `xdp_tx_errors` and `xdp_xmit_errors`) and whose count
    /// grew is moved to the TC path, whatever its xdp-features said.
    pub(super) fn check_devices(&mut self) {
        let mut demote = Vec::new();
        for f in &mut self.ifaces {
            let Some(ifindex) = f.ifindex else { continue };
            let now = crate::ethtool::xdp_errors(&f.name);
            if let (Some(before), Some(after)) = (f.xdp_errors, now)
                && after > before
            {
                demote.push(ifindex);
            }
            f.xdp_errors = now;
        }
        for ifindex in demote {
            let changes = self.egresses.demote(ifindex);
            self.apply_changes(changes);
        }
    }
}
