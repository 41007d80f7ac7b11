//! The probe/ACK exchange and the timers: probes in and ACKs back, probing toward a silent
//! side, blocking detection, and the end of a learning window.

use std::{
    cmp::Reverse,
    net::SocketAddr,
    time::{Duration, Instant},
};

use proxy_common::{
    Endpoint,
    probe::{Kind, ProbeMessage, Trust},
};

use super::{Engine, Event, Output, ProbePhase, Side, StreamId, TimerKind, Unblocked};

impl Engine {
    /// A fresh PROBE from `from`, received at our probe endpoint `local`; `trust` says whether
    /// it was authenticated with the deployment secret.
    pub fn handle_probe(
        &mut self,
        local: Endpoint,
        from: SocketAddr,
        msg: &ProbeMessage,
        trust: Trust,
        now_ms: u64,
        now: Instant,
    ) {
        self.counters.probes_received += 1;
        if trust == Trust::Unverified {
            self.counters.unverified += 1;
        }
        let Some(&(id, s)) = self.by_local.get(&msg.target) else {
            // Not one of ours (yet): no ACK, so the prober retries until the call server has
            // set the session up here, and nothing changes.
            self.counters.probes_unknown_session += 1;
            return;
        };
        // Answered in kind: an unverified probe gets an unsigned ACK.
        let mut ack = msg.ack(now_ms, Endpoint::from(from));
        ack.unsigned = trust == Trust::Unverified;
        self.out.push_back(Output::SendAck {
            from: local,
            to: from,
            msg: ack,
        });
        let mut vouched = false;
        if let Some(st) = self.streams.get_mut(&id) {
            let side = st.side_mut(s);
            side.probed_us = true;
            // A probe names the relay behind this side, wherever its NAT put it: its media
            // will come from that address, and ranks as well as a SIP source. If the probe is
            // authenticated; or, unsigned (a relay of another operator), if it names as its
            // sender exactly the media endpoint the call server signalled for this side,
            // which only the parties to the call know. Any other unverified probe ranks
            // nothing.
            vouched = trust == Trust::Authenticated || side.remote == Some(msg.sender);
            if vouched {
                side.relay_ip = Some(from.ip());
            }
        }
        if vouched {
            self.relearn(id, s, now);
        }
        // The prober is alive and its media follows our ACK within a round trip. Its
        // signalled endpoint is worth sending to now only if nothing between us changed
        // address or port: the probe came from the signalled address *and* from the
        // deployment's probe port. A NAT may change both, and what it did to the probe port
        // says nothing about the media port, so then we wait for the media.
        let probe_port = self.cfg.probe_port;
        let trusted = self.streams.get(&id).is_some_and(|st| {
            st.side(s).remote.and_then(|r| r.ip()) == Some(from.ip()) && from.port() == probe_port
        });
        if trusted {
            self.mark_unblocked(id, s, Unblocked::Probe, now);
        } else {
            self.out.push_back(Output::Event {
                stream: id,
                event: Event::ProbedFromElsewhere { side: s, from },
            });
        }
    }

    /// A fresh ACK from `from`.
    ///
    /// The ACK is checked against what was asked (target, sender, an outstanding probe)
    /// before its nonce is consumed: an ACK for the wrong target leaves the probe waiting for
    /// the right one. Its nonce, random and sent only to the far side, is what an unverified
    /// ACK proves; it releases media toward the signalled address, nothing more.
    pub fn handle_ack(&mut self, msg: &ProbeMessage, from: SocketAddr, trust: Trust, now: Instant) {
        self.counters.acks_received += 1;
        if trust == Trust::Unverified {
            self.counters.unverified += 1;
        }
        let Some(&(id, y)) = self.by_nonce.get(&msg.nonce) else {
            self.counters.acks_unmatched += 1;
            return;
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        // The ACK must answer what we asked: same target and sender.
        if side.remote != Some(msg.target)
            || side.local != msg.sender
            || !matches!(side.probe, ProbePhase::Probing { .. })
        {
            self.counters.acks_unmatched += 1;
            return;
        }
        let sent_at = side
            .probe_nonces
            .iter()
            .find(|(n, _)| *n == msg.nonce)
            .map(|(_, t)| *t);
        let rtt = sent_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        side.probe = ProbePhase::Acked { rtt };
        side.probe_next = None;
        // The next relay answered from here: its media follows from the same address. The
        // nonce, random and sent only toward the signalled address, vouches for an unsigned
        // ACK as the MAC does for a signed one.
        side.relay_ip = Some(from.ip());
        for (n, _) in side.probe_nonces.drain(..) {
            self.by_nonce.remove(&n);
        }
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::ProbeAcked { toward: y, rtt },
        });
        self.mark_unblocked(id, y, Unblocked::Ack, now);
        self.relearn(id, y, now);
    }

    /// A probe or ACK just named side `s`'s relay: if its media is already
    /// held as a candidate's, it ranks with a SIP source now and wins at once. Its latest
    /// held packet goes through the learning again (the earlier ones follow as the winner's).
    pub(super) fn relearn(&mut self, id: StreamId, s: Side, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(s);
        if side.latched.is_some() {
            return;
        }
        let relay = side.relay_ip;
        let Some(i) = side
            .held
            .iter()
            .rposition(|(src, _)| src.ip().is_some() && src.ip() == relay)
        else {
            return;
        };
        let Some((src, payload)) = side.held.remove(i) else {
            return;
        };
        let local = side.local;
        self.handle_media(local, src, &payload, None, now);
    }

    /// The learning window after signalling closes: a latched side now takes only its
    /// source, and the kernel drops the others.
    pub(super) fn on_learn_end(&mut self, id: StreamId, x: Side, at: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(x);
        if side.learning_until != Some(at) {
            return; // a later signalling event reopened it
        }
        side.learning_until = None;
        if side.latched.is_some() {
            side.learner.reset();
        }
        self.sync_flows(id);
    }

    /// `x` has waited for `y` since its first packet.
    pub(super) fn on_blocking_timer(&mut self, id: StreamId, x: Side, at: Instant, now: Instant) {
        let probing = self.cfg.probing;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let y = x.other();
        if stream.side(x).blocking_deadline != Some(at) {
            return; // stale timer
        }
        stream.side_mut(x).blocking_deadline = None;
        if stream.destination(y).is_some() {
            return; // resolved meanwhile
        }
        let after = stream
            .side(x)
            .first_packet
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        stream.side_mut(x).blocking_suspected = Some(after);
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::BlockingSuspected { near: x, after },
        });
        // Probing started with X's first packet; if it ended without an answer and the
        // call server named a relay, one more episode.
        let named = stream.side(y).next_relay.is_some();
        if probing && named && matches!(stream.side(y).probe, ProbePhase::Idle) {
            self.start_probe(id, y, now, false);
        }
    }

    pub(super) fn on_probe_timer(&mut self, id: StreamId, y: Side, at: Instant, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        if side.probe_next != Some(at) {
            return;
        }
        side.probe_next = None;
        let ProbePhase::Probing { attempts } = side.probe else {
            return;
        };
        if attempts >= side.probe_max {
            side.probe = ProbePhase::Failed { attempts };
            for (n, _) in side.probe_nonces.drain(..) {
                self.by_nonce.remove(&n);
            }
            self.out.push_back(Output::Event {
                stream: id,
                event: Event::ProbeFailed {
                    toward: y,
                    attempts,
                },
            });
            return;
        }
        self.send_probe(id, y, attempts + 1, now);
    }

    /// Starts a probing episode toward side `y`: to its named next relay, or else to its
    /// signalled address at the deployment's probe port (fewer attempts: it may be a phone).
    /// Returns whether it started.
    pub(super) fn start_probe(
        &mut self,
        id: StreamId,
        y: Side,
        now: Instant,
        forced: bool,
    ) -> bool {
        let (probe_port, named_attempts, implicit_attempts) = (
            self.cfg.probe_port,
            self.cfg.probe_attempts,
            self.cfg.implicit_probe_attempts,
        );
        let Some(stream) = self.streams.get_mut(&id) else {
            return false;
        };
        let side = stream.side_mut(y);
        let Some(remote) = side
            .remote
            .and_then(|r| r.socket_addr())
            .filter(|r| !r.ip().is_unspecified())
        else {
            return false;
        };
        let (to, max) = match side.next_relay {
            Some(r) => (r, named_attempts),
            None if probe_port != 0 => {
                (SocketAddr::new(remote.ip(), probe_port), implicit_attempts)
            }
            None => return false,
        };
        if max == 0
            || (!forced
                && matches!(
                    side.probe,
                    ProbePhase::Probing { .. } | ProbePhase::Acked { .. }
                ))
        {
            return false;
        }
        side.probe_to = Some(to);
        side.probe_max = max;
        for (n, _) in side.probe_nonces.drain(..) {
            self.by_nonce.remove(&n);
        }
        self.send_probe(id, y, 1, now);
        true
    }

    pub(super) fn send_probe(&mut self, id: StreamId, y: Side, attempt: u32, now: Instant) {
        use rand::Rng;
        let nonce: u64 = self.rng.random();
        let rto = self.cfg.probe_rto * 2u32.saturating_pow(attempt - 1).min(64);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let tag = stream.cfg.session_tag;
        let side = stream.side_mut(y);
        let (Some(to), Some(target)) = (side.probe_to, side.remote) else {
            return;
        };
        side.probe = ProbePhase::Probing { attempts: attempt };
        side.probe_nonces.push((nonce, now));
        let next = now + rto;
        side.probe_next = Some(next);
        let msg = ProbeMessage {
            kind: Kind::Probe,
            nonce,
            timestamp_ms: 0, // the I/O side stamps the wall clock when it signs
            session: tag,
            target,
            sender: side.local,
            receiver: Endpoint::from(to),
            // The first attempt is signed (where the deployment has a secret); retries go
            // unsigned, so that a relay of another operator, whose secret differs, answers.
            unsigned: attempt > 1,
        };
        self.by_nonce.insert(nonce, (id, y));
        self.timers.push(Reverse((next, id, y, TimerKind::Probe)));
        self.out.push_back(Output::SendProbe { to, msg });
        self.out.push_back(Output::Event {
            stream: id,
            event: Event::ProbeSent {
                toward: y,
                attempt,
                to,
            },
        });
    }

    pub(super) fn cancel_probe(&mut self, id: StreamId, y: Side) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        if let ProbePhase::Probing { attempts } = side.probe {
            side.probe = ProbePhase::Cancelled { attempts };
        }
        side.probe_next = None;
        for (n, _) in side.probe_nonces.drain(..) {
            self.by_nonce.remove(&n);
        }
    }

    pub(super) fn mark_unblocked(&mut self, id: StreamId, y: Side, by: Unblocked, now: Instant) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let side = stream.side_mut(y);
        if side.unblocked.is_none() {
            side.unblocked = Some(by);
            self.out.push_back(Output::Event {
                stream: id,
                event: Event::Unblocked { side: y, by },
            });
        }
        self.flush_held(id, y.other(), now);
        self.sync_flows(id);
    }
}
