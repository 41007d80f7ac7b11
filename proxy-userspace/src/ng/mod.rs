//! rtpengine's ng control protocol: the codec ([`bencode`]), SDP rewriting ([`sdp`]), and the
//! call model behind the commands ([`calls`]).

pub mod bencode;
pub mod sdp;
