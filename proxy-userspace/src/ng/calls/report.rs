//! What the calls report: `query`, `list` and `statistics`, built from the call records,
//! the engine's streams and the kernel's counters.

use std::time::SystemTime;

use proxy_common::FlowState;

use super::{Call, Calls, Ended, KernelView, MAX_LIST, NgError, counters_of};
use crate::{
    ng::reply::{
        CallReport, CallState, ListedCall, ListedMedia, MediaReport, Reply, SideReport, Statistics,
        StreamReport,
    },
    session::{Engine, Side},
};

impl Calls {
    pub(super) fn query(
        &self,
        engine: &Engine,
        call_id: &str,
        kernel: KernelView<'_>,
    ) -> Result<Reply, NgError> {
        self.report(engine, call_id, kernel)
            .map(Reply::Query)
            .ok_or(NgError::UnknownCallId)
    }

    /// `query`'s view of a call, ended or not.
    pub(super) fn report(
        &self,
        engine: &Engine,
        call_id: &str,
        kernel: KernelView<'_>,
    ) -> Option<CallReport> {
        let call = self.calls.get(call_id)?;
        let state = match call_state(call) {
            // `query` has no partial state: a call with live media is active.
            CallState::PartlyTimedOut => CallState::Active,
            s => s,
        };
        Some(CallReport {
            created: call.created,
            last_signal: call.last_signal,
            sides: Side::BOTH.map(|side| side_report(engine, call, side, kernel)),
            state,
        })
    }

    pub(super) fn list(&self, engine: &Engine, limit: usize) -> Vec<ListedCall> {
        let mut ids: Vec<&String> = self.calls.keys().collect();
        ids.sort();
        ids.truncate(limit.min(MAX_LIST));
        ids.into_iter()
            .map(|id| {
                let c = &self.calls[id];
                ListedCall {
                    call_id: id.clone(),
                    state: call_state(c),
                    media: c
                        .medias
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| {
                            let [a, b] = engine.status(m.rtp?)?;
                            Some(ListedMedia {
                                index: i,
                                far_end: [a.far_end, b.far_end],
                                unblocked_after: [a.unblocked_after, b.unblocked_after],
                            })
                        })
                        .collect(),
                }
            })
            .collect()
    }

    pub(super) fn statistics(
        &self,
        engine: &Engine,
        wall: SystemTime,
        kernel: KernelView<'_>,
    ) -> Statistics {
        let mut st = Statistics {
            uptime: wall.duration_since(self.started).unwrap_or_default(),
            sessions: self.call_count(),
            ports_in_use: self.ports_in_use(),
            managed_sessions: self.counters.managed_sessions,
            timeout_sessions: self.counters.timeout_sessions,
            deleted_sessions: self.counters.deleted_sessions,
            commands: self.counters.commands,
            errors: self.counters.errors,
            ..Statistics::default()
        };
        for id in engine.stream_ids() {
            let Some(sides) = engine.status(id) else {
                continue;
            };
            let mut forwarding = true;
            for s in &sides {
                let k = counters_of(kernel, &s.local);
                st.kernel_packets += k.fwd_packets;
                st.kernel_bytes += k.fwd_bytes;
                st.user_packets += s.counters.sent;
                st.user_bytes += s.counters.bytes;
                forwarding &= s.state == FlowState::Forward;
            }
            if forwarding {
                st.media_kernel += 1;
            } else {
                st.media_user += 1;
            }
        }
        st
    }
}

fn call_state(c: &Call) -> CallState {
    match c.ended {
        Some((Ended::Timeout, _)) => CallState::TimedOut,
        Some((Ended::Deleted, _)) => CallState::Deleted,
        None if c.delete_at.is_some() => CallState::Deleting,
        None if c.medias.iter().any(|m| m.timed_out) => CallState::PartlyTimedOut,
        None => CallState::Active,
    }
}

/// One side of a call as `query` reports it, with the kernel's counters of its flows.
fn side_report(engine: &Engine, call: &Call, side: Side, kernel: KernelView<'_>) -> SideReport {
    let i = side as usize;
    let medias = call
        .medias
        .iter()
        .map(|m| MediaReport {
            kind: m.kind.clone(),
            proto: m.proto.clone(),
            codec: m.codec.clone(),
            streams: [(false, m.rtp), (true, m.rtcp)]
                .into_iter()
                .filter_map(|(rtcp, id)| {
                    let [a, b] = engine.status(id?)?;
                    let status = if side == Side::A { a } else { b };
                    let k = kernel(&status.local);
                    Some(StreamReport {
                        rtcp,
                        kernel: k.map(|k| k.counters).unwrap_or_default(),
                        last_seen: k.and_then(|k| k.last_seen),
                        status,
                    })
                })
                .collect(),
            rtcp_mux: m.rtcp_mux[i],
            asymmetric: call.asymmetric[i],
            timed_out: m.timed_out,
        })
        .collect();
    SideReport {
        tag: call.tags[i]
            .clone()
            .unwrap_or_else(|| format!("<untagged {i}>")),
        peer_tag: call.tags[1 - i].clone().unwrap_or_default(),
        via_branch: if side == Side::B {
            call.via_branch.clone()
        } else {
            None
        },
        medias,
    }
}
