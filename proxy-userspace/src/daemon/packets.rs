//! The control thread's packets: punted media and probe messages in, the engine's outputs
//! (flows, media, probes, ACKs, events) out, and sending over `AF_XDP` or the kernel.

use std::time::Instant;

use log::{debug, info, warn};
use proxy_common::{
    Endpoint, FlowKey,
    probe::{Kind, MESSAGE_LEN, ProbeMessage},
    wire::{Header as _, Ipv4Hdr, Ipv6Hdr, UdpHdr},
};

use super::{
    JOIN_BUDGET,
    control::{Control, Iface},
    kernel::kernel_flow,
};
use crate::{
    dataplane::Egress,
    frame::{FrameBuilder, UdpFrame},
    io::{Packet, Punted, TxFrame},
    nexthop::Resolution,
    probe_auth::{Rejected, unix_ms},
    session::{Event, Output},
};

impl Control {
    /// A probe address of this relay: its port is the probe port, and its address the one
    /// the probe arrived at, one of the host's, or an advertised one (behind a 1:1 NAT the
    /// prober knows only that).
    fn is_own_probe_address(&self, receiver: Endpoint, arrived_at: Endpoint) -> bool {
        if receiver.port() != self.probe_port {
            return false;
        }
        let Some(ip) = receiver.ip() else {
            return false;
        };
        receiver.ip() == arrived_at.ip()
            || self.own.contains(&ip)
            || self
                .calls
                .config()
                .interfaces
                .iter()
                .any(|i| i.advertised == Some(ip) || i.addr == ip)
    }

    /// A PROBE or an ACK at the probe port: authenticated if it can be, then the engine's.
    fn on_probe_message(&mut self, src: Endpoint, dst: Endpoint, payload: &[u8], at: Instant) {
        let checked = match crate::probe_auth::check(self.auth.as_mut(), payload, unix_ms()) {
            // Signed with another secret: a relay of another operator, or a forger.
            // Counted, then taken for what an unsigned message may do, nothing more.
            Err(Rejected::BadMac) => {
                *self.counters.probes_rejected.entry("bad MAC").or_default() += 1;
                crate::probe_auth::check(None, payload, unix_ms())
            }
            other => other,
        };
        match checked {
            Ok((msg, trust)) => {
                let Some(from) = src.socket_addr() else {
                    return;
                };
                // A PROBE names the relay it is for: one of ours, at our probe port. A
                // captured probe replayed at another site with the same private
                // addresses, or at an HA partner, is refused here.
                if msg.kind == Kind::Probe && !self.is_own_probe_address(msg.receiver, dst) {
                    *self
                        .counters
                        .probes_rejected
                        .entry("wrong receiver")
                        .or_default() += 1;
                    debug!("probe from {src} for {}: not this relay", msg.receiver);
                    return;
                }
                match msg.kind {
                    Kind::Probe => self
                        .engine
                        .handle_probe(dst, from, &msg, trust, unix_ms(), at),
                    Kind::Ack => self.engine.handle_ack(&msg, from, trust, at),
                }
            }
            Err(why) => {
                let key = match why {
                    Rejected::Malformed(_) => "malformed",
                    Rejected::BadMac => "bad MAC",
                    Rejected::Stale => "stale",
                    Rejected::Replayed => "replayed",
                    Rejected::Overloaded => "replay cache full",
                };
                *self.counters.probes_rejected.entry(key).or_default() += 1;
                debug!("probe message from {src} refused: {why}");
            }
        }
    }

    pub(super) fn on_punted(&mut self, p: &Punted) {
        let (src, dst, payload) = match &p.packet {
            Packet::Frame(frame) => match UdpFrame::parse(frame) {
                Ok(f) => (f.src, f.dst, f.payload(frame)),
                Err(e) => {
                    self.counters.frames_unparsable += 1;
                    debug!("unparsable punted frame on ifindex {}: {e}", p.ifindex);
                    return;
                }
            },
            Packet::Datagram { src, dst, payload } => {
                self.counters.datagrams += 1;
                (*src, *dst, payload.as_slice())
            }
        };
        if self.probe_port != 0 && dst.port() == self.probe_port {
            self.on_probe_message(src, dst, payload, p.at);
            return;
        }
        if src.ip().is_some_and(|ip| self.own.contains(&ip)) {
            self.counters.martian_sources += 1;
            return;
        }
        // The engine weighs the kernel's last-seen time only to re-latch after silence, which
        // is off unless the operator turned it on; and only for a packet from someone other
        // than the latched peer. Ask the kernel (a map lookup, a syscall) only then.
        let relatch = self.engine.config().relatch_after.is_some();
        let key = FlowKey::new(dst);
        let foreign = relatch
            && self
                .dp
                .flow_spec(key)
                .is_ok_and(|spec| spec.peer.is_some_and(|peer| peer != src));
        let last_seen = if foreign {
            kernel_flow(&self.dp, &dst).and_then(|k| k.last_seen)
        } else {
            None
        };
        let payload = payload.to_vec();
        self.engine
            .handle_media(dst, src, &payload, last_seen, p.at);
    }

    /// A probe message stamped with the wall clock, signed if it may be and we hold the
    /// secret, unsigned otherwise.
    fn seal(&self, mut msg: ProbeMessage) -> [u8; MESSAGE_LEN] {
        msg.timestamp_ms = unix_ms();
        match &self.auth {
            Some(auth) if !msg.unsigned => auth.sign(&msg),
            _ => msg.emit_unsigned(),
        }
    }

    pub(super) fn apply_outputs(&mut self) {
        self.joined_budget = JOIN_BUDGET;
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Flow { key, spec } => {
                    let k = FlowKey::new(key);
                    let egress: Option<Egress> = self.egresses.egress_for(k, &spec);
                    let r = if self.dp.has_flow(k) {
                        self.dp.update_flow(k, &spec, egress)
                    } else {
                        self.dp.add_flow(k, &spec, egress)
                    };
                    if let Err(e) = r {
                        self.counters.flow_errors += 1;
                        warn!("flow {key}: {e:#}");
                    }
                }
                Output::RemoveFlow { key } => {
                    let k = FlowKey::new(key);
                    self.egresses.forget_flow(k);
                    if self.dp.has_flow(k)
                        && let Err(e) = self.dp.remove_flow(k)
                    {
                        warn!("removing flow {key}: {e:#}");
                    }
                }
                Output::SendMedia { from, to, payload } => self.send_udp(from, to, &payload),
                Output::SendProbe { to, msg } => {
                    let bytes = self.seal(msg);
                    let from = msg.sender.with_port(self.probe_port);
                    self.send_udp(from, Endpoint::from(to), &bytes);
                }
                Output::SendAck { from, to, msg } => {
                    let bytes = self.seal(msg);
                    self.send_udp(from, Endpoint::from(to), &bytes);
                }
                Output::Event { stream, event } => {
                    match &event {
                        Event::BlockingSuspected { .. } => self.counters.blocking_suspected += 1,
                        Event::ProbeAcked { .. } => self.counters.probes_acked += 1,
                        Event::ProbeFailed { .. } => self.counters.probes_failed += 1,
                        _ => {}
                    }
                    info!("stream {stream}: {event:?}");
                }
            }
        }
    }

    /// Sends a UDP payload from a relay endpoint: as a complete frame over `AF_XDP` when the
    /// next hop is known, attached and large enough, else through the kernel's stack (which
    /// resolves the neighbour or fragments). Never to an address without a unicast route:
    /// that is how a spoofed local source would turn the relay into a path to its own
    /// sockets.
    fn send_udp(&mut self, from: Endpoint, to: Endpoint, payload: &[u8]) {
        let (Some(to_ip), true) = (to.ip(), from.family() == to.family()) else {
            self.counters.send_errors += 1;
            return;
        };
        // One of this relay's own media endpoints (a call that loops through the relay
        // twice, as a B2BUA hairpin makes it): joined inside the relay, never sent out to
        // loop back, and never refused.
        if self.engine.stream_of(&to).is_some() {
            if self.joined_budget == 0 {
                self.counters.send_refused += 1;
                return;
            }
            self.joined_budget -= 1;
            self.counters.joined += 1;
            let payload = payload.to_vec();
            self.engine
                .handle_media(to, from, &payload, None, Instant::now());
            return;
        }
        let ip_header = if to_ip.is_ipv4() {
            Ipv4Hdr::LEN
        } else {
            Ipv6Hdr::LEN
        };
        let ip_len = ip_header + UdpHdr::LEN + payload.len();
        let attached = |ix: u32, ifaces: &[Iface]| ifaces.iter().any(|f| f.ifindex == Some(ix));
        match self.egresses.for_send(from, to_ip, Instant::now()) {
            Resolution::Unreachable => {
                self.counters.send_refused += 1;
                debug!("not sending to {to}: no unicast route");
            }
            Resolution::Ready { hop, .. }
                if attached(hop.ifindex, &self.ifaces) && ip_len <= usize::from(hop.mtu) =>
            {
                let frame = FrameBuilder::udp(from, to)
                    .macs(hop.src_mac, hop.dst_mac)
                    .payload(payload)
                    .build();
                self.io.send(TxFrame {
                    ifindex: hop.ifindex,
                    frame,
                });
                self.counters.sent_af_xdp += 1;
            }
            _ => match self.kernel.send(from, to, payload) {
                Ok(()) => self.counters.sent_kernel += 1,
                Err(e) => {
                    self.counters.send_errors += 1;
                    debug!("kernel path to {to}: {e}");
                }
            },
        }
    }
}
