//! rtpengine's ng control protocol: the codec ([`bencode`]), request options ([`flags`]), SDP
//! rewriting ([`sdp`]), and the call model behind the commands ([`calls`]).

pub mod bencode;
pub mod calls;
pub mod client;
pub mod flags;
pub mod sdp;
