//! rtpengine's ng control protocol: the codec ([`bencode`]), a request parsed once into a typed
//! [`command::Command`] with its options ([`flags`]) or a typed [`error::NgError`], SDP
//! rewriting ([`sdp`]), the call model behind the commands ([`calls`]), and the reply written
//! from what the model answers ([`reply`]).

pub mod bencode;
pub mod calls;
pub mod client;
pub mod command;
pub mod error;
pub mod flags;
pub mod reply;
pub mod sdp;
