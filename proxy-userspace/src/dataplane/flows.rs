//! The flow table: what userspace writes for each flow (the entry from the session's
//! [`FlowSpec`] and the next hop), its counters' slots, and userspace's mirror of it.

use std::{cell::Cell, time::Instant};

use anyhow::{Context as _, anyhow, bail};
use proxy_common::{
    Endpoint, FlowCounters, FlowEntry, FlowKey, FlowState, flow::flow_flags, rewrite::CsumDelta,
};

use super::{Dataplane, Egress, Flow, FlowSpec, Forwarded, MismatchPolicy};

/// What a free place of the flow array holds: all zero, as the kernel created it. Its key is
/// unset, so no packet's key ever matches it.
const EMPTY: FlowEntry = FlowEntry::hold(FlowKey::new(Endpoint::UNSET), 0);

/// The map entry of a flow: [`crate::flow`] holds the pure description, the layout of the
/// kernel's entry is this module's.
impl FlowSpec {
    /// The entry of flow `key`; `egress` is the next hop and its `EGRESS` slot.
    fn entry(&self, key: &FlowKey, counter_slot: u32, egress: Option<(&Egress, u32)>) -> FlowEntry {
        let mut e = FlowEntry::hold(*key, counter_slot);
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
        e.csum = CsumDelta::of(&key.local, &self.out_src, &self.out_dst);
        e.hint = self.hint.unwrap_or(Endpoint::UNSET);
        e.hint_ip = self.hint_ip.map_or(Endpoint::UNSET, |ip| {
            Endpoint::from(std::net::SocketAddr::new(ip, 0))
        });
        if let Some((g, slot)) = egress {
            e.flags |= flow_flags::NEXT_HOP;
            e.egress_slot = slot;
            if g.native {
                e.flags |= flow_flags::NATIVE_TX;
            }
            if g.redirect_only {
                e.flags |= flow_flags::TX_REDIRECT;
            }
            e.egress_ifindex = g.hop.ifindex;
            e.src_mac = g.hop.src_mac;
            e.dst_mac = g.hop.dst_mac;
            e.mtu = g.hop.mtu;
        }
        e
    }
}

#[expect(
    clippy::missing_errors_doc,
    reason = "each method fails only when the kernel refuses a bpf() call, and says which"
)]
impl Dataplane {
    /// Creates a flow. Fails if it exists or the table is full; nothing changes then.
    pub fn add_flow(
        &mut self,
        key: FlowKey,
        spec: &FlowSpec,
        egress: Option<Egress>,
    ) -> anyhow::Result<()> {
        if self.mirror.contains_key(&key) {
            bail!("flow {:?} exists", key.local);
        }
        let egress_slot = egress
            .map(|g| self.egress_slot(g.hop.ifindex))
            .transpose()?;
        if self.mirror.len() >= self.max_flows as usize {
            bail!("flow table full ({} flows)", self.max_flows);
        }
        // The program's seqlock copy of a place relies on x86's load ordering (see
        // `maps::read_place` in proxy-ebpf); elsewhere every flow goes to the hash map, whose
        // elements userspace replaces whole.
        let i = self.layout.place(&key);
        let place = (cfg!(target_arch = "x86_64")
            && self.places.get(i as usize).is_some_and(|p| !p.taken))
        .then_some(i);
        // A flow at a place counts in the slot of the same index, which the program starts
        // fetching beside the entry (`maps::flow` in proxy-ebpf); the others in the slots
        // after the places.
        let slot = match place {
            Some(i) => i,
            None => self.alloc_slot()?,
        };
        let entry = spec.entry(&key, slot, egress.as_ref().zip(egress_slot));
        let written = self
            .flow_counters
            .set(slot, FlowCounters::default(), 0)
            .map_err(anyhow::Error::from)
            .and_then(|()| match place {
                Some(i) => self.write_place(i, &EMPTY, &entry),
                None => Ok(self.flows.insert(key, entry, 0)?),
            });
        if let Err(e) = written {
            if place.is_none() {
                self.free_slots.push(slot);
            }
            return Err(e).with_context(|| format!("adding flow {:?}", key.local));
        }
        if let Some(i) = place {
            self.places[i as usize].taken = true;
        }
        self.remember(key, spec, egress, entry, place);
        Ok(())
    }

    /// Writes `new` over `old` at place `i` of the flow array, in the three updates the
    /// program's seqlock reader relies on (`maps::read_place` in proxy-ebpf): `seq` made odd
    /// alone, then the fields with `seq` still odd, then `seq` made even. A program run that
    /// copies the element meanwhile sees `seq` odd or moved and punts the packet to
    /// userspace, never a mix of two entries. Should an update fail, the old entry goes back;
    /// should that fail too, the place reads as changing and its packets come to userspace.
    fn write_place(&mut self, i: u32, old: &FlowEntry, new: &FlowEntry) -> anyhow::Result<()> {
        let seq = self.places[i as usize].seq;
        let (odd, even) = (seq.wrapping_add(1), seq.wrapping_add(2));
        let at = |e: &FlowEntry, seq| {
            let mut e = *e;
            e.seq = seq;
            e
        };
        self.flow_array.set(i, at(old, odd), 0)?;
        let written = self
            .flow_array
            .set(i, at(new, odd), 0)
            .and_then(|()| self.flow_array.set(i, at(new, even), 0));
        if written.is_err() {
            let _ = self.flow_array.set(i, at(old, even), 0);
        }
        self.places[i as usize].seq = even;
        Ok(written?)
    }

    /// Userspace's copy of what the kernel now holds for `key`.
    fn remember(
        &mut self,
        key: FlowKey,
        spec: &FlowSpec,
        egress: Option<Egress>,
        entry: FlowEntry,
        place: Option<u32>,
    ) {
        self.use_egress_slot(&entry, |n| n + 1);
        let mut seen = Cell::default();
        if let Some(old) = self.mirror.remove(&key) {
            self.use_egress_slot(&old.entry, |n| n.saturating_sub(1));
            // The counters carry on, and so does what was seen of them.
            seen = old.seen;
        }
        self.mirror.insert(
            key,
            Flow {
                spec: *spec,
                egress,
                entry,
                place,
                seen,
            },
        );
    }

    /// Replaces a flow's settings; its counters carry on.
    pub fn update_flow(
        &mut self,
        key: FlowKey,
        spec: &FlowSpec,
        egress: Option<Egress>,
    ) -> anyhow::Result<()> {
        let (old_entry, place) = self
            .mirror
            .get(&key)
            .map(|f| (f.entry, f.place))
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        let egress_slot = egress
            .map(|g| self.egress_slot(g.hop.ifindex))
            .transpose()?;
        let entry = spec.entry(
            &key,
            old_entry.counter_slot,
            egress.as_ref().zip(egress_slot),
        );
        if entry != old_entry {
            match place {
                Some(i) => self.write_place(i, &old_entry, &entry),
                None => Ok(self.flows.insert(key, entry, 0)?),
            }
            .with_context(|| format!("updating flow {:?}", key.local))?;
        }
        self.remember(key, spec, egress, entry, place);
        Ok(())
    }

    /// Gives a flow a new next hop (or none), keeping what the session logic asked.
    pub fn set_egress(&mut self, key: FlowKey, egress: Option<Egress>) -> anyhow::Result<()> {
        let spec = self.flow_spec(key)?;
        self.update_flow(key, &spec, egress)
    }

    /// Flips a flow to FORWARD toward `out_dst`, from `out_src`, accepting only `peer`.
    pub fn set_forward(
        &mut self,
        key: FlowKey,
        peer: Option<Endpoint>,
        out_src: Endpoint,
        out_dst: Endpoint,
        egress: Option<Egress>,
    ) -> anyhow::Result<()> {
        let mut spec = self.flow_spec(key)?;
        spec.state = FlowState::Forward;
        spec.peer = peer;
        spec.out_src = out_src;
        spec.out_dst = out_dst;
        self.update_flow(key, &spec, egress)
    }

    /// The settings of a flow as userspace last wrote them.
    pub fn flow_spec(&self, key: FlowKey) -> anyhow::Result<FlowSpec> {
        Ok(self
            .mirror
            .get(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?
            .spec)
    }

    /// The next hop a flow was given.
    #[must_use]
    pub fn flow_egress(&self, key: FlowKey) -> Option<Egress> {
        self.mirror.get(&key).and_then(|f| f.egress)
    }

    /// Removes a flow and returns its final counters.
    pub fn remove_flow(&mut self, key: FlowKey) -> anyhow::Result<FlowCounters> {
        let flow = self
            .mirror
            .remove(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        match flow.place {
            Some(i) => {
                if let Err(e) = self.write_place(i, &flow.entry, &EMPTY) {
                    // Still the flow's (the old entry went back): keep it, so that a retry
                    // can remove it.
                    self.mirror.insert(key, flow);
                    return Err(e).with_context(|| format!("removing flow {:?}", key.local));
                }
                self.places[i as usize].taken = false;
            }
            None => {
                if let Err(e) = self.flows.remove(&key) {
                    self.mirror.insert(key, flow);
                    return Err(e).with_context(|| format!("removing flow {:?}", key.local));
                }
            }
        }
        self.use_egress_slot(&flow.entry, |n| n.saturating_sub(1));
        let counters = self
            .flow_counters
            .get(&flow.entry.counter_slot, 0)
            .unwrap_or_default();
        if flow.place.is_none() {
            self.free_slots.push(flow.entry.counter_slot);
        }
        Ok(counters)
    }

    pub fn flow_stats(&self, key: FlowKey) -> anyhow::Result<FlowCounters> {
        let f = self
            .mirror
            .get(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        Ok(self.flow_counters.get(&f.entry.counter_slot, 0)?)
    }

    /// A flow's counters, and when the kernel last forwarded one of its packets as far as
    /// userspace can tell (`None`: never).
    ///
    /// The kernel reads no clock per packet (a helper call on every FORWARD). Its forward
    /// counter moving between two reads says the flow forwarded in between, and the time of
    /// the read that saw it move is kept. So the answer is never early (a forwarding flow is
    /// never taken for a silent one) and late by at most the time between two reads: the
    /// control thread reads every call's flows once a second. Punted packets userspace sees
    /// itself.
    pub fn last_forwarded(
        &self,
        key: FlowKey,
        now: Instant,
    ) -> anyhow::Result<(FlowCounters, Option<Instant>)> {
        let f = self
            .mirror
            .get(&key)
            .ok_or_else(|| anyhow!("no flow {:?}", key.local))?;
        let counters = self.flow_counters.get(&f.entry.counter_slot, 0)?;
        let mut seen = f.seen.get();
        if counters.fwd_packets != seen.packets {
            seen = Forwarded {
                packets: counters.fwd_packets,
                moved_at: Some(now),
            };
            f.seen.set(seen);
        }
        Ok((counters, seen.moved_at))
    }

    #[must_use]
    pub fn has_flow(&self, key: FlowKey) -> bool {
        self.mirror.contains_key(&key)
    }

    #[must_use]
    pub fn flow_count(&self) -> usize {
        self.mirror.len()
    }

    /// A counter slot for a flow in the hash map: after the places' own slots.
    fn alloc_slot(&mut self) -> anyhow::Result<u32> {
        if let Some(s) = self.free_slots.pop() {
            return Ok(s);
        }
        if self.next_slot >= self.max_flows {
            bail!("flow table full ({} flows)", self.max_flows);
        }
        self.next_slot += 1;
        Ok(self.places_len() + self.next_slot - 1)
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "the places are the map's max_entries, a u32"
    )]
    fn places_len(&self) -> u32 {
        self.places.len() as u32
    }
}
