//! What the session logic asks of one kernel flow, as plain data: the engine emits it, the
//! dataplane writes it into the maps. It lives apart from both so that the sans-IO engine
//! does not depend on the module that owns aya.

use std::net::IpAddr;

use proxy_common::{Endpoint, FlowState};

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

/// What the session logic asks of one flow. Where its packets leave (the next hop) is the
/// daemon's business: see `dataplane::Egress`.
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
    /// What signalling said of the sending side: its endpoint, and its SIP source (or
    /// confirmed relay) address. The kernel gives their punts priority over a flood's.
    pub hint: Option<Endpoint>,
    pub hint_ip: Option<IpAddr>,
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
            hint: None,
            hint_ip: None,
        }
    }
}
