//! Offer and answer (and `probe`): admitting a request, the call's record and sides, each
//! m= line's ports and streams, and the SDP rewritten for the side that receives it.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Instant, SystemTime},
};

use proxy_common::Endpoint;

use super::{Call, CallMedia, Calls, FLOWS_PER_MEDIA, Interface, NgError};
use crate::{
    ng::{
        command::{OfferAnswer, Probe},
        flags::{Family, Options},
        reply::Reply,
        sdp::{self, MediaRewrite},
    },
    session::{Engine, Latching, Side, StreamConfig, StreamId, StreamUpdate},
};

/// Whether the party that sent this media section takes media at its signalled address
/// before it speaks: not if it said `sendonly` or `inactive`.
fn receives(m: &sdp::Media) -> bool {
    !matches!(m.direction.as_deref(), Some("sendonly" | "inactive"))
}

/// The RTP and RTCP endpoints one side signalled for a media section (none while on hold).
struct Remotes {
    rtp: Option<Endpoint>,
    rtcp: Option<Endpoint>,
}

impl Remotes {
    fn of(m: &sdp::Media, o: &Options) -> Self {
        let source_ip = |ip: IpAddr| {
            if o.sip_source_address {
                o.received_from.unwrap_or(ip)
            } else {
                ip
            }
        };
        let rtcp = m.rtcp_endpoint();
        Self {
            rtp: (!m.is_held()).then(|| Endpoint::from(SocketAddr::new(source_ip(m.addr), m.port))),
            rtcp: (!m.is_held())
                .then(|| Endpoint::from(SocketAddr::new(source_ip(rtcp.ip()), rtcp.port()))),
        }
    }
}

/// What one offer or answer asks of its call's streams, worked out once for all its media.
struct Signal<'a> {
    call_id: &'a str,
    /// The side the SDP came from.
    sender: Side,
    /// Next relays by side, with their probe ports.
    relays: [Option<SocketAddr>; 2],
    session_tag: u64,
    latching: [Latching; 2],
    strict_source: bool,
    o: &'a Options,
    now: Instant,
}

impl Calls {
    /// An SDP endpoint the relay may send to: not loopback, multicast, broadcast or
    /// unspecified, and not one of the host's own addresses unless it is one of this relay's
    /// allocated endpoints, where the call is joined inside the relay.
    fn check_sdp_endpoint(&self, engine: &Engine, ep: Endpoint) -> Result<(), NgError> {
        if crate::session::is_martian(&ep) {
            return Err(NgError::MartianSdpAddress(ep.ip()));
        }
        let own = ep.ip().is_some_and(|i| self.local_addrs.contains(&i));
        if own && engine.stream_of(&ep).is_none() {
            return Err(NgError::OwnSdpAddress(ep.ip()));
        }
        Ok(())
    }

    fn iface_for(&self, name: Option<&str>, family: Option<Family>) -> Result<usize, NgError> {
        if self.cfg.interfaces.is_empty() {
            return Err(NgError::NoInterface);
        }
        let fam_ok = |i: &Interface| match family {
            Some(Family::V4) => i.addr.is_ipv4(),
            Some(Family::V6) => i.addr.is_ipv6(),
            None => true,
        };
        if let Some(n) = name
            && let Some(i) = self
                .cfg
                .interfaces
                .iter()
                .position(|i| i.name == n && fam_ok(i))
        {
            return Ok(i);
        }
        self.cfg
            .interfaces
            .iter()
            .position(fam_ok)
            .ok_or(NgError::NoInterfaceOfFamily)
    }

    /// An offer or an answer: the call and its streams follow the SDP, and the SDP comes back
    /// rewritten for the side that receives it.
    pub(super) fn offer_answer(
        &mut self,
        engine: &mut Engine,
        r: &OfferAnswer,
        o: &Options,
        is_offer: bool,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Reply, NgError> {
        let parsed = sdp::parse(&r.sdp).map_err(NgError::BadSdp)?;
        self.admit(engine, &r.call_id, parsed.media.len(), is_offer)?;
        let new_call = !self.calls.contains_key(&r.call_id);
        if new_call {
            self.open_call(r, o, wall)?;
        }
        let sender = self.take_signal(r, o, is_offer, wall)?;
        let call = self.calls.get(&r.call_id).ok_or(NgError::UnknownCallId)?;
        let probe_port = self.cfg.probe_port;
        let mut relays: [Option<SocketAddr>; 2] = [None, None];
        relays[sender as usize] = o.next_relay.map(|x| x.with_default_port(probe_port));
        relays[sender.other() as usize] = o
            .next_relay_recipient
            .map(|x| x.with_default_port(probe_port));
        let signal = Signal {
            call_id: &r.call_id,
            sender,
            relays,
            session_tag: tag_of(&r.call_id),
            latching: call.asymmetric.map(|a| {
                if a {
                    Latching::Asymmetric
                } else {
                    Latching::Symmetric
                }
            }),
            strict_source: call.strict_source,
            o,
            now,
        };
        let mut created = Vec::new();
        if let Err(e) = self.apply_media(engine, &parsed, &signal, &mut created) {
            // Nothing allocated for this request survives a failure. Last first: releasing a
            // media section truncates the call's list there, which would hide later ones.
            for (media, ports) in created.into_iter().rev() {
                self.release_media(engine, &r.call_id, media, ports);
            }
            if new_call {
                self.calls.remove(&r.call_id);
                self.counters.managed_sessions -= 1;
            }
            return Err(e);
        }
        self.rewrite_for(&r.call_id, &parsed, sender.other(), o)
            .map(Reply::Sdp)
    }

    /// Whether the relay takes this offer or answer at all, before anything is allocated.
    fn admit(
        &self,
        engine: &Engine,
        call_id: &str,
        medias: usize,
        is_offer: bool,
    ) -> Result<(), NgError> {
        if medias > self.cfg.max_media {
            return Err(NgError::TooManyMedia {
                got: medias,
                max: self.cfg.max_media,
            });
        }
        let known = self.calls.get(call_id);
        if !is_offer && known.is_none() {
            return Err(NgError::UnknownCallId);
        }
        if known.is_none() && self.call_count() >= self.cfg.max_calls {
            return Err(NgError::LoadLimit);
        }
        let new_medias = medias.saturating_sub(known.map_or(0, |c| c.medias.len()));
        let flows_now = engine.stream_count() * 2;
        if flows_now + new_medias * FLOWS_PER_MEDIA > self.cfg.max_flows {
            return Err(NgError::LoadLimit);
        }
        Ok(())
    }

    /// A call's first offer: its record, with the interfaces its sides face.
    fn open_call(&mut self, r: &OfferAnswer, o: &Options, wall: SystemTime) -> Result<(), NgError> {
        let a = self.iface_for(o.direction[0].as_deref(), None)?;
        let b = self.iface_for(o.direction[1].as_deref(), o.address_family)?;
        self.calls.insert(
            r.call_id.clone(),
            Call {
                created: wall,
                last_signal: wall,
                tags: [Some(r.from_tag.clone()), r.to_tag.clone()],
                via_branch: r.via_branch.clone(),
                ifaces: [a, b],
                medias: Vec::new(),
                asymmetric: [false; 2],
                strict_source: false,
                delete_at: None,
                ended: None,
            },
        );
        self.counters.managed_sessions += 1;
        Ok(())
    }

    /// Which side sent this SDP, by its tag; the call takes the signal's tags and options.
    fn take_signal(
        &mut self,
        r: &OfferAnswer,
        o: &Options,
        is_offer: bool,
        wall: SystemTime,
    ) -> Result<Side, NgError> {
        // rtpengine's convention: an answer's SDP comes from the to-tag's side.
        let sender_tag = if is_offer {
            r.from_tag.as_str()
        } else {
            r.to_tag.as_deref().unwrap_or_default()
        };
        let call = self
            .calls
            .get_mut(&r.call_id)
            .ok_or(NgError::UnknownCallId)?;
        if call.ended.is_some() {
            return Err(NgError::CallEnded);
        }
        let sender = if call.tags[0].as_deref() == Some(sender_tag) {
            Side::A
        } else {
            // Side B's tag, its first one, or a new tag on an existing call (forking): it
            // takes over side B.
            call.tags[1] = Some(sender_tag.to_owned());
            Side::B
        };
        let recipient = sender.other();
        if let Some(t) = &r.to_tag
            && call.tags[recipient as usize].is_none()
        {
            call.tags[recipient as usize] = Some(t.clone());
        }
        call.last_signal = wall;
        call.delete_at = None;
        call.asymmetric[sender as usize] = o.asymmetric;
        call.strict_source |= o.strict_source;
        Ok(sender)
    }

    /// The SDP for `recipient`: the relay's address and ports facing it.
    fn rewrite_for(
        &self,
        call_id: &str,
        parsed: &sdp::Sdp<'_>,
        recipient: Side,
        o: &Options,
    ) -> Result<Vec<u8>, NgError> {
        let call = self.calls.get(call_id).ok_or(NgError::UnknownCallId)?;
        let iface = &self.cfg.interfaces[call.ifaces[recipient as usize]];
        let addr = o.media_address.unwrap_or_else(|| iface.sdp_addr());
        let rw = sdp::Rewrite {
            addr,
            media: call
                .medias
                .iter()
                .take(parsed.media.len())
                .map(|m| MediaRewrite {
                    rtp_port: m.ports[recipient as usize],
                    rtcp_port: m.ports[recipient as usize].wrapping_add(1),
                    rtcp_mux: m.rtcp_mux[recipient as usize],
                })
                .collect(),
            replace_origin: o.replace_origin,
            replace_session_connection: o.replace_session_connection,
            replace_zero_address: o.replace_zero_address,
            remove_ice: o.ice_remove,
            rtcp_attr: o.rtcp_attr,
        };
        Ok(sdp::rewrite(parsed, &rw))
    }

    /// Creates or updates the streams of each m= line. `created` collects what this request
    /// allocated, so that a failure can undo it.
    fn apply_media(
        &mut self,
        engine: &mut Engine,
        parsed: &sdp::Sdp<'_>,
        sig: &Signal<'_>,
        created: &mut Vec<(usize, [u16; 2])>,
    ) -> Result<(), NgError> {
        let s = sig.sender as usize;
        for (i, m) in parsed.media.iter().enumerate() {
            let remote = Remotes::of(m, sig.o);
            if !m.is_disabled() {
                for ep in [remote.rtp, remote.rtcp].into_iter().flatten() {
                    self.check_sdp_endpoint(engine, ep)?;
                }
            }
            let call = self
                .calls
                .get_mut(sig.call_id)
                .ok_or(NgError::UnknownCallId)?;
            let Some(existing) = call.medias.get_mut(i) else {
                self.add_media(engine, i, m, &remote, sig, created)?;
                continue;
            };
            existing.rtcp_mux[s] = m.rtcp_mux;
            existing.rtcp_mux[1 - s] = mux_decision(&sig.o.rtcp_mux, m.rtcp_mux);
            if !m.is_disabled() && existing.rtp.is_some() {
                update_streams(engine, [existing.rtp, existing.rtcp], m, &remote, sig)?;
            }
        }
        let call = self.calls.get(sig.call_id).ok_or(NgError::UnknownCallId)?;
        if call.medias.len() < parsed.media.len() {
            return Err(NgError::IncompleteSdp);
        }
        Ok(())
    }

    /// A media section the call did not have: its ports and its RTP and RTCP streams (none
    /// for a disabled one).
    #[expect(
        clippy::similar_names,
        reason = "rtp_ and rtcp_ name the two streams of one media section"
    )]
    fn add_media(
        &mut self,
        engine: &mut Engine,
        i: usize,
        m: &sdp::Media,
        remote: &Remotes,
        sig: &Signal<'_>,
        created: &mut Vec<(usize, [u16; 2])>,
    ) -> Result<(), NgError> {
        let s = sig.sender as usize;
        let mut media = CallMedia {
            kind: m.kind.clone(),
            proto: m.proto.clone(),
            codec: m.codec.clone(),
            ports: [0, 0],
            rtp: None,
            rtcp: None,
            rtcp_mux: [false; 2],
            timed_out: false,
        };
        media.rtcp_mux[s] = m.rtcp_mux;
        media.rtcp_mux[1 - s] = mux_decision(&sig.o.rtcp_mux, m.rtcp_mux);
        let call = self
            .calls
            .get_mut(sig.call_id)
            .ok_or(NgError::UnknownCallId)?;
        if m.is_disabled() {
            call.medias.push(media);
            return Ok(());
        }
        let ifaces = call.ifaces;
        let ports = self.alloc_ports(ifaces)?;
        created.push((i, ports));
        let local = |side: usize, port: u16| {
            Endpoint::from(SocketAddr::new(
                self.cfg.interfaces[ifaces[side]].addr,
                port,
            ))
        };
        let mut rtp_cfg = StreamConfig::new(local(0, ports[0]), local(1, ports[1]));
        rtp_cfg.latching = sig.latching;
        rtp_cfg.strict_source = sig.strict_source;
        rtp_cfg.session_tag = sig.session_tag;
        rtp_cfg.next_relay = sig.relays;
        rtp_cfg.remote[s] = remote.rtp;
        rtp_cfg.sip_source[s] = sig.o.received_from;
        rtp_cfg.receives[s] = receives(m);
        let mut rtcp_cfg = StreamConfig::new(local(0, ports[0] + 1), local(1, ports[1] + 1));
        rtcp_cfg.latching = sig.latching;
        rtcp_cfg.strict_source = sig.strict_source;
        rtcp_cfg.session_tag = sig.session_tag;
        rtcp_cfg.remote[s] = remote.rtcp;
        rtcp_cfg.sip_source[s] = sig.o.received_from;
        media.ports = ports;
        let rtp_id = engine.add_stream(rtp_cfg)?;
        media.rtp = Some(rtp_id);
        rtcp_cfg.rtp_stream = Some(rtp_id);
        let call = self
            .calls
            .get_mut(sig.call_id)
            .ok_or(NgError::UnknownCallId)?;
        call.medias.push(media);
        let rtcp_id = engine.add_stream(rtcp_cfg)?;
        if let Some(last) = call.medias.last_mut() {
            last.rtcp = Some(rtcp_id);
        }
        Ok(())
    }

    /// Starts probing toward a call's next relays now: how many streams do.
    pub(super) fn probe(
        &mut self,
        engine: &mut Engine,
        r: &Probe,
        o: &Options,
        now: Instant,
    ) -> Result<usize, NgError> {
        let call = self
            .calls
            .get(&r.call_id)
            .filter(|c| c.ended.is_none())
            .ok_or(NgError::UnknownCallId)?;
        // The side to probe toward: the one with `from-tag`, or every side with a next relay.
        let sides: Vec<Side> = match &r.from_tag {
            Some(t) => vec![match call.tags.iter().position(|c| c.as_ref() == Some(t)) {
                Some(0) => Side::A,
                Some(_) => Side::B,
                None => return Err(NgError::UnknownTag),
            }],
            None => Side::BOTH.to_vec(),
        };
        let relay = o
            .next_relay
            .map(|x| x.with_default_port(self.cfg.probe_port));
        let streams: Vec<StreamId> = call.medias.iter().filter_map(|m| m.rtp).collect();
        let mut probed = 0usize;
        let mut last_err = None;
        for id in streams {
            for &side in &sides {
                if let Some(x) = relay {
                    let mut upd = StreamUpdate::default();
                    upd.next_relay[side as usize] = Some(x);
                    let _ = engine.update_stream(id, &upd, now);
                }
                match engine.unblock(id, side, true, now) {
                    Ok(()) => probed += 1,
                    Err(e) => last_err = Some(e),
                }
            }
        }
        if probed == 0 {
            return Err(last_err.map_or(NgError::NoMediaToProbe, NgError::CannotProbe));
        }
        Ok(probed)
    }
}

/// The RTP and RTCP streams of a media section the call already has, after a re-INVITE or
/// the answer: the sender's side takes what its SDP says.
#[expect(
    clippy::similar_names,
    reason = "rtp and rtcp name the two streams of one media section"
)]
fn update_streams(
    engine: &mut Engine,
    [rtp, rtcp]: [Option<StreamId>; 2],
    m: &sdp::Media,
    remote: &Remotes,
    sig: &Signal<'_>,
) -> Result<(), NgError> {
    let s = sig.sender as usize;
    let mut upd = StreamUpdate {
        latching: sig.latching.map(Some),
        strict_source: Some(sig.strict_source),
        ..StreamUpdate::default()
    };
    upd.next_relay = sig.relays;
    upd.remote[s] = remote.rtp;
    upd.sip_source[s] = sig.o.received_from;
    upd.signalled[s] = true;
    upd.receives[s] = Some(receives(m));
    if let Some(id) = rtp {
        engine.update_stream(id, &upd, sig.now)?;
    }
    upd.remote[s] = remote.rtcp;
    upd.next_relay = [None, None];
    // RTCP flows whatever the direction (RFC 3264 section 5.1).
    upd.receives[s] = None;
    if let Some(id) = rtcp {
        engine.update_stream(id, &upd, sig.now)?;
    }
    Ok(())
}

/// rtpengine's rtcp-mux options, for the side that receives the SDP: mux offered onward?
fn mux_decision(opts: &[String], offered: bool) -> bool {
    let has = |o: &str| opts.iter().any(|x| x == o);
    if has("reject") || has("demux") {
        return false;
    }
    offered || has("offer") || has("require")
}

/// A 64-bit tag of the Call-ID for probe messages (FNV-1a).
fn tag_of(call_id: &str) -> u64 {
    call_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
