//! Media packets: whether a source is the side's peer (the learning rule), what a new latch
//! releases, and where each packet goes.

use std::{
    cmp::Reverse,
    time::{Duration, Instant},
};

use proxy_common::Endpoint;

use super::{
    Engine, Event, Expect, FarSide, Latching, Output, ProbePhase, Rank, Side, StreamId, TimerKind,
    UNBLOCK_BUCKETS_MS, Verdict, hold, is_martian,
};

/// A media packet as `handle_media` got it.
#[derive(Clone, Copy)]
pub(super) struct Packet<'a> {
    local: Endpoint,
    from: Endpoint,
    payload: &'a [u8],
    kernel_last_seen: Option<Instant>,
}

/// What learning made of a packet's source.
pub(super) enum Learnt {
    /// The side's peer (latched before, or not a latching side).
    Peer,
    /// Latched now.
    Latched,
    /// Held while the learning rule decides.
    Held,
    Refused,
}

impl Engine {
    /// A media packet punted by the kernel, addressed to the relay endpoint `local`.
    /// `kernel_last_seen` is when the kernel last accepted a packet on that flow (it forwards
    /// without telling us), so that a busy latched peer is never mistaken for a silent one;
    /// only asked for when the operator allows re-latching after silence.
    ///
    /// Three steps: is the source the side's peer (learning it if need be), what a new latch
    /// releases, and where the packet goes.
    pub fn handle_media(
        &mut self,
        local: Endpoint,
        from: Endpoint,
        payload: &[u8],
        kernel_last_seen: Option<Instant>,
        now: Instant,
    ) {
        let Some(&(id, x)) = self.by_local.get(&local) else {
            self.counters.media_unknown_flow += 1;
            return;
        };
        if is_martian(&from) {
            self.counters.martian_sources += 1;
            return;
        }
        let packet = Packet {
            local,
            from,
            payload,
            kernel_last_seen,
        };
        match self.learn(id, x, &packet, now) {
            Learnt::Refused | Learnt::Held => return,
            Learnt::Peer => {}
            Learnt::Latched => {
                if !self.on_latched(id, x, from, now) {
                    return;
                }
            }
        }
        self.relay_packet(id, x, from, payload, now);
    }

    /// Whether `packet`'s source is side `x`'s peer: the latched one, or one that the
    /// learning rule latches now; else the packet is refused or held while it decides.
    ///
    /// Long (about 90 lines) on purpose: the rule's order (rank, sprayer, first latch or a
    /// better one, then the verdict) is the security argument of the README, and reads as one
    /// sequence here; its parts live in `learning.rs` and in `SideState`.
    pub(super) fn learn(
        &mut self,
        id: StreamId,
        x: Side,
        packet: &Packet<'_>,
        now: Instant,
    ) -> Learnt {
        let Packet {
            local,
            from,
            payload,
            kernel_last_seen,
        } = *packet;
        let rtp_peer = self.rtp_peer(id, x);
        let (learn, spraying, relatch_after, cap) = (
            self.cfg.learning,
            self.cfg.spraying,
            self.cfg.relatch_after,
            self.cfg.held_capacity,
        );
        let Some(stream) = self.streams.get_mut(&id) else {
            return Learnt::Refused;
        };
        let y = x.other();
        let symmetric = stream.cfg.latching[x.idx()] == Latching::Symmetric;
        let strict = stream.cfg.strict_source;
        let rtcp = stream.cfg.rtp_stream.is_some();
        let other_latched = stream.side(y).latched_at;
        let side = stream.side_mut(x);
        if !symmetric || side.latched == Some(from) {
            return Learnt::Peer;
        }
        let expect = Expect {
            signalled: side.remote,
            sip_source: side.sip_source,
            rtp_peer,
            relay: side.relay(),
            rtcp,
        };
        let rank = expect.rank(&from);
        // An unmatched source that reaches endpoint after endpoint sweeps the range: it is
        // refused everywhere, and forgotten where it was a candidate.
        let sprayer = rank == Some(Rank::Unknown)
            && from.ip().is_some_and(|ip| {
                let hit = self
                    .sprayers
                    .observe(&spraying, ip, (local, id, x as u8), now);
                if hit {
                    side.forget(ip);
                }
                hit
            });
        if sprayer {
            self.counters.sprayer_refused += 1;
        }
        let verdict = match (side.latched, rank) {
            (_, None) => Verdict::Refuse,
            _ if sprayer => Verdict::Refuse,
            (None, Some(r)) => {
                side.learner
                    .observe(&learn, &expect, from, r, payload, other_latched, now)
            }
            // Latched: only a strictly better-ranked source, only while the window after
            // signalling is open or the latch is provisional; or, if the operator allows
            // it, any after silence.
            (Some(_), Some(r)) => {
                let provisional = side.provisional();
                let better = (side.learning_until.is_some() || provisional)
                    && side.latch_rank.is_none_or(|lr| r < lr);
                let last = side.last_packet.max(kernel_last_seen);
                let silent = last.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                let after_silence = relatch_after.is_some_and(|after| silent >= after);
                if strict && !provisional {
                    Verdict::Refuse
                } else if after_silence {
                    Verdict::Latch { src: from, rank: r }
                } else if better {
                    side.learner
                        .observe(&learn, &expect, from, r, payload, other_latched, now)
                } else {
                    Verdict::Refuse
                }
            }
        };
        match verdict {
            Verdict::Refuse => {
                side.counters.rejected += 1;
                Learnt::Refused
            }
            Verdict::Wait => {
                let leader = side.learner.leader();
                hold(side, from, payload, cap, leader);
                Learnt::Held
            }
            Verdict::Latch { src, rank } => {
                let event = side.latch(x, src, rank, now);
                self.out.push_back(Output::Event { stream: id, event });
                if src != from {
                    // Another candidate won: this packet's source lost.
                    side.counters.rejected += 1;
                }
                Learnt::Latched
            }
        }
    }

    /// Side `x` just latched: its held packets count, probes toward it stop, and what either
    /// side held goes on. False if the winner was another source than `from`'s (whose
    /// packet then goes nowhere).
    pub(super) fn on_latched(
        &mut self,
        id: StreamId,
        x: Side,
        from: Endpoint,
        now: Instant,
    ) -> bool {
        let Some(stream) = self.streams.get_mut(&id) else {
            return false;
        };
        let side = stream.side_mut(x);
        let won = side.latched;
        // Held packets of the winner count as accepted now.
        let held: Vec<usize> = side.held.iter().map(|(_, p)| p.len()).collect();
        side.counters.packets += held.len() as u64;
        side.counters.bytes += held.iter().sum::<usize>() as u64;
        if side.first_packet.is_none() && !held.is_empty() {
            side.first_packet = Some(now);
        }
        // X spoke: nobody needs to probe toward it any more.
        self.cancel_probe(id, x);
        // Whatever Y was holding for X can go now, and X's held packets toward Y if Y's
        // destination is known.
        self.flush_held(id, x.other(), now);
        self.flush_held(id, x, now);
        if won != Some(from) {
            self.sync_flows(id);
            return false;
        }
        true
    }

    /// A packet from side `x`'s peer: counted, then sent toward the other side, or held (and
    /// blocking suspected) while that side's destination is unknown.
    pub(super) fn relay_packet(
        &mut self,
        id: StreamId,
        x: Side,
        from: Endpoint,
        payload: &[u8],
        now: Instant,
    ) {
        let cap = self.cfg.held_capacity;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let y = x.other();
        let side = stream.side_mut(x);
        side.counters.packets += 1;
        side.counters.bytes += payload.len() as u64;
        side.last_packet = Some(now);
        if side.first_packet.is_none() {
            side.first_packet = Some(now);
        }
        if let Some(dst) = stream.destination(y) {
            let from_ep = stream.side(y).local;
            stream.side_mut(x).counters.sent += 1;
            self.out.push_back(Output::SendMedia {
                from: from_ep,
                to: dst,
                payload: payload.to_vec(),
            });
            self.note_sent(id, x, now);
        } else {
            let side = stream.side_mut(x);
            hold(side, from, payload, cap, None);
            let other_silent = stream.side(y).latched.is_none();
            let side = stream.side_mut(x);
            if other_silent && side.blocking_deadline.is_none() && side.blocking_suspected.is_none()
            {
                let at = now + self.cfg.blocking_timeout;
                side.blocking_deadline = Some(at);
                self.timers.push(Reverse((at, id, x, TimerKind::Blocking)));
            }
        }
        self.probe_if_silent(id, y, now);
        self.sync_flows(id);
    }

    /// X spoke and `y` has not: probe toward `y` now, no timer in between (once per episode).
    /// An RTCP stream leaves it to its RTP stream, unless it holds until confirmed.
    pub(super) fn probe_if_silent(&mut self, id: StreamId, y: Side, now: Instant) {
        let (probing, far_side) = (self.cfg.probing, self.cfg.far_side);
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        let rtcp = stream.cfg.rtp_stream.is_some();
        let side = stream.side(y);
        if probing
            && side.latched.is_none()
            && side.unblocked.is_none()
            && side.probe == ProbePhase::Idle
            && (!rtcp || far_side == FarSide::Confirmed)
        {
            self.start_probe(id, y, now, false);
        }
    }

    /// The first packet from `x` went on toward the other side: the time it took is recorded.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "milliseconds of a session's age fit a u64 for 584 million years"
    )]
    pub(super) fn note_sent(&mut self, id: StreamId, x: Side, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(x);
        if side.first_sent.is_some() {
            return;
        }
        side.first_sent = Some(now);
        let after = side
            .first_packet
            .map_or(0, |f| now.saturating_duration_since(f).as_millis() as u64);
        let bucket = UNBLOCK_BUCKETS_MS
            .iter()
            .position(|&b| after <= b)
            .unwrap_or(UNBLOCK_BUCKETS_MS.len());
        self.counters.unblocked_after[bucket] += 1;
    }

    /// Sends what `x` held toward `x.other()`, if its destination is known now.
    pub(super) fn flush_held(&mut self, id: StreamId, x: Side, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let y = x.other();
        let Some(dst) = stream.destination(y) else {
            return;
        };
        // A side still learning holds candidates' packets: they go nowhere until one wins.
        if stream.cfg.latching[x.idx()] == Latching::Symmetric && stream.side(x).latched.is_none() {
            return;
        }
        let from = stream.side(y).local;
        let held: Vec<Vec<u8>> = stream.side_mut(x).held.drain(..).map(|(_, p)| p).collect();
        if held.is_empty() {
            return;
        }
        stream.side_mut(x).counters.sent += held.len() as u64;
        stream.side_mut(x).blocking_deadline = None;
        for payload in held {
            self.out.push_back(Output::SendMedia {
                from,
                to: dst,
                payload,
            });
        }
        self.note_sent(id, x, now);
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::Forwarding { from: x, to: dst },
        });
    }

    /// Emits the kernel flows that changed.
    pub(super) fn sync_flows(&mut self, id: StreamId) {
        let kernel_forwarding = self.cfg.kernel_forwarding;
        let relatch = self.cfg.relatch_after.is_some();
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        for s in Side::BOTH {
            let spec = stream.flow_spec(s, kernel_forwarding, relatch);
            if stream.installed[s.idx()] != Some(spec) {
                stream.installed[s.idx()] = Some(spec);
                self.out.push_back(Output::Flow {
                    key: stream.side(s).local,
                    spec,
                });
            }
        }
    }
}
