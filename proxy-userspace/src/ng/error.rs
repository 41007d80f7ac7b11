//! Why an ng request failed, each with the `error-reason` text call servers see. The texts
//! are rtpengine's where rtpengine has one: call servers log them, and a few decide on them,
//! so they must not change.

use std::{fmt, net::IpAddr};

use super::sdp::SdpError;
use crate::session::StreamError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NgError {
    // The datagram, before it is a request (the listener answers these itself).
    /// Larger than one UDP datagram may be.
    MessageTooLarge,
    /// A cookie and nothing after it.
    NoPayload,
    /// Not a bencode dictionary.
    NotADictionary,
    /// A dictionary that does not decode.
    BadBencode,
    /// Waited in the queue past its deadline, or the control thread did not answer in time.
    InternalTimeout,

    // The request's keys.
    NoCommand,
    UnknownCommand,
    NoSdp,
    NoCallId,
    NoFromTag,
    NoToTag,
    NegativeLimit,

    // The call model.
    BadSdp(SdpError),
    TooManyMedia {
        got: usize,
        max: usize,
    },
    UnknownCallId,
    /// rtpengine's words when its session limit is reached: Kamailio, which announces
    /// `supports: ["load limit"]`, then moves the call to its next relay.
    LoadLimit,
    CallEnded,
    NoInterface,
    NoInterfaceOfFamily,
    /// Loopback, multicast, broadcast or unspecified: the relay would be a reflector.
    MartianSdpAddress(Option<IpAddr>),
    /// One of the host's own addresses, and none of this relay's media endpoints.
    OwnSdpAddress(Option<IpAddr>),
    Stream(StreamError),
    OutOfPorts,
    IncompleteSdp,
    /// `delete` of a call that is not there, or whose tags are not the ones given.
    CallNotFound,
    UnknownTag,
    NoMediaToProbe,
    CannotProbe(StreamError),
}

impl NgError {
    /// The reply's `error-reason` (or, for [`NgError::LoadLimit`], its `message`).
    #[must_use]
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// An address as the reason names it: `?` for an endpoint without one.
struct Ip(Option<IpAddr>);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("?"),
        }
    }
}

impl fmt::Display for NgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NgError::MessageTooLarge => f.write_str("Message too large"),
            NgError::NoPayload => f.write_str("Invalid data (no payload)"),
            NgError::NotADictionary => f.write_str("Invalid NG data format"),
            NgError::BadBencode => f.write_str("Could not decode bencode dictionary"),
            NgError::InternalTimeout => f.write_str("Internal timeout"),
            NgError::NoCommand => f.write_str("Dictionary contains no key \"command\""),
            NgError::UnknownCommand => f.write_str("Unrecognized command"),
            NgError::NoSdp => f.write_str("No SDP body in message"),
            NgError::NoCallId => f.write_str("No call-id in message"),
            NgError::NoFromTag => f.write_str("No from-tag in message"),
            NgError::NoToTag => f.write_str("No to-tag in message"),
            NgError::NegativeLimit => f.write_str("invalid limit, must be >= 0"),
            NgError::BadSdp(e) => write!(f, "Failed to parse SDP: {e}"),
            NgError::TooManyMedia { got, max } => {
                write!(f, "Too many media sections ({got}, at most {max})")
            }
            NgError::UnknownCallId => f.write_str("Unknown call-id"),
            NgError::LoadLimit => f.write_str("Parallel session limit reached"),
            NgError::CallEnded => f.write_str("Call has ended"),
            NgError::NoInterface => f.write_str("no interface configured"),
            NgError::NoInterfaceOfFamily => {
                f.write_str("no interface of the requested address family")
            }
            NgError::MartianSdpAddress(ip) => write!(f, "Invalid address in SDP: {}", Ip(*ip)),
            NgError::OwnSdpAddress(ip) => {
                write!(f, "Invalid address in SDP: {} is the relay's own", Ip(*ip))
            }
            NgError::Stream(e) => write!(f, "{e}"),
            NgError::OutOfPorts => f.write_str("Ran out of ports"),
            NgError::IncompleteSdp => f.write_str("Incomplete SDP specification"),
            NgError::CallNotFound => f.write_str("Call-ID not found or tags didn't match"),
            NgError::UnknownTag => f.write_str("Unknown tag"),
            NgError::NoMediaToProbe => f.write_str("No media to probe"),
            NgError::CannotProbe(e) => write!(f, "Cannot probe: {e}"),
        }
    }
}

impl std::error::Error for NgError {}

impl From<StreamError> for NgError {
    fn from(e: StreamError) -> Self {
        NgError::Stream(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts call servers see, byte for byte.
    #[test]
    fn reasons_are_rtpengines_texts() {
        let cases = [
            (NgError::NoCommand, "Dictionary contains no key \"command\""),
            (NgError::UnknownCommand, "Unrecognized command"),
            (NgError::UnknownCallId, "Unknown call-id"),
            (NgError::LoadLimit, "Parallel session limit reached"),
            (NgError::BadBencode, "Could not decode bencode dictionary"),
            (
                NgError::TooManyMedia { got: 17, max: 16 },
                "Too many media sections (17, at most 16)",
            ),
            (
                NgError::OwnSdpAddress(Some("10.0.1.1".parse().unwrap())),
                "Invalid address in SDP: 10.0.1.1 is the relay's own",
            ),
            (
                NgError::MartianSdpAddress(None),
                "Invalid address in SDP: ?",
            ),
            (
                NgError::CannotProbe(StreamError::NoNextRelay(crate::session::Side::A)),
                "Cannot probe: side A has no next relay to probe",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.reason(), text);
        }
    }
}
