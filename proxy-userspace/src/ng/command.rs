//! An ng request, parsed once: which command it is and its typed fields. Everything the call
//! model reads of a request is here; nothing after this reads the raw dictionary.
//!
//! The checks run in rtpengine's order, so that a request missing several keys names the
//! same one rtpengine would (the SDP body first, then the call-id, then the tags).

use super::{
    bencode::{Dict, Value},
    error::NgError,
    flags::{self, Options},
};

/// The commands we answer, in the order `statistics` counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    Ping,
    Offer,
    Answer,
    Delete,
    Query,
    List,
    Statistics,
    /// Ours: start probing toward a call's next relay now.
    Probe,
}

impl CommandKind {
    pub const ALL: [CommandKind; 8] = [
        CommandKind::Ping,
        CommandKind::Offer,
        CommandKind::Answer,
        CommandKind::Delete,
        CommandKind::Query,
        CommandKind::List,
        CommandKind::Statistics,
        CommandKind::Probe,
    ];

    /// The `command` value, as call servers spell it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Ping => "ping",
            CommandKind::Offer => "offer",
            CommandKind::Answer => "answer",
            CommandKind::Delete => "delete",
            CommandKind::Query => "query",
            CommandKind::List => "list",
            CommandKind::Statistics => "statistics",
            CommandKind::Probe => "probe",
        }
    }

    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Its place in [`CommandKind::ALL`] (and in the `statistics` counters).
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// `offer` or `answer` (RFC 3264): an SDP from one side of a call, to rewrite for the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferAnswer {
    pub call_id: String,
    pub from_tag: String,
    /// Required in an answer; in an offer, a re-INVITE's.
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    /// The SDP body as it came: bytes, since SDP may carry any octets in `s=` or `i=`.
    pub sdp: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub call_id: String,
    /// Empty tags count as absent, as in rtpengine.
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub call_id: String,
    /// The side to probe toward; every side with a next relay without it.
    pub from_tag: Option<String>,
}

/// A typed ng request. What its `flags` and option keys say is in [`Request::options`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ping,
    Offer(OfferAnswer),
    Answer(OfferAnswer),
    Delete(Delete),
    Query {
        call_id: String,
    },
    /// At most `limit` calls (before [`super::calls::MAX_LIST`] applies).
    List {
        limit: usize,
    },
    Statistics,
    Probe(Probe),
}

impl Command {
    #[must_use]
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Ping => CommandKind::Ping,
            Command::Offer(_) => CommandKind::Offer,
            Command::Answer(_) => CommandKind::Answer,
            Command::Delete(_) => CommandKind::Delete,
            Command::Query { .. } => CommandKind::Query,
            Command::List { .. } => CommandKind::List,
            Command::Statistics => CommandKind::Statistics,
            Command::Probe(_) => CommandKind::Probe,
        }
    }
}

/// One ng datagram's dictionary, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The command named, when it is one we know: counted even if the rest is malformed.
    pub kind: Option<CommandKind>,
    /// The flags and option keys; their warnings go into a successful reply.
    pub options: Options,
    /// The typed request, or why it is malformed.
    pub command: Result<Command, NgError>,
}

/// `list` without a `limit`.
const DEFAULT_LIST_LIMIT: i64 = 32;

impl Request {
    #[must_use]
    pub fn parse(d: &Dict) -> Self {
        let name = d.get_str("command");
        let kind = name.and_then(CommandKind::from_name);
        let command = match kind {
            Some(k) => parse_command(k, d),
            None if d.get("command").is_none() => Err(NgError::NoCommand),
            // Any other `command`: a name we do not know, or not a string at all.
            None => Err(NgError::UnknownCommand),
        };
        Self {
            kind,
            options: flags::parse(d),
            command,
        }
    }
}

fn parse_command(kind: CommandKind, d: &Dict) -> Result<Command, NgError> {
    Ok(match kind {
        CommandKind::Ping => Command::Ping,
        CommandKind::Offer => Command::Offer(offer_answer(d, false)?),
        CommandKind::Answer => Command::Answer(offer_answer(d, true)?),
        CommandKind::Delete => Command::Delete(Delete {
            call_id: call_id(d)?,
            from_tag: non_empty(d, "from-tag"),
            to_tag: non_empty(d, "to-tag"),
        }),
        CommandKind::Query => Command::Query {
            call_id: call_id(d)?,
        },
        CommandKind::List => {
            let limit = d
                .get("limit")
                .and_then(Value::as_int)
                .unwrap_or(DEFAULT_LIST_LIMIT);
            if limit < 0 {
                return Err(NgError::NegativeLimit);
            }
            Command::List {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            }
        }
        CommandKind::Statistics => Command::Statistics,
        CommandKind::Probe => Command::Probe(Probe {
            call_id: call_id(d)?,
            from_tag: string(d, "from-tag"),
        }),
    })
}

fn offer_answer(d: &Dict, is_answer: bool) -> Result<OfferAnswer, NgError> {
    let sdp = d
        .get_any(&["sdp", "SDP"])
        .and_then(Value::as_bytes)
        .ok_or(NgError::NoSdp)?
        .to_vec();
    let call_id = call_id(d)?;
    let from_tag = string(d, "from-tag").ok_or(NgError::NoFromTag)?;
    let to_tag = string(d, "to-tag");
    if is_answer && to_tag.is_none() {
        return Err(NgError::NoToTag);
    }
    Ok(OfferAnswer {
        call_id,
        from_tag,
        to_tag,
        via_branch: string(d, "via-branch"),
        sdp,
    })
}

/// The spellings of `call-id` that clients send.
fn call_id(d: &Dict) -> Result<String, NgError> {
    d.get_any(&["call-id", "call-ID", "call id", "call ID"])
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(NgError::NoCallId)
}

fn string(d: &Dict, key: &str) -> Option<String> {
    d.get_str(key).map(str::to_owned)
}

fn non_empty(d: &Dict, key: &str) -> Option<String> {
    d.get_str(key).filter(|t| !t.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ng::bencode::decode;

    fn parse(b: &[u8]) -> Request {
        Request::parse(decode(b).unwrap().as_dict().unwrap())
    }

    #[test]
    fn an_offer_is_typed_once_with_its_options() {
        let r = parse(
            b"d7:command5:offer7:call ID2:c18:from-tag2:f13:sdp3:v=010:via-branch2:z93:ICE6:removee",
        );
        assert_eq!(r.kind, Some(CommandKind::Offer));
        assert_eq!(
            r.command,
            Ok(Command::Offer(OfferAnswer {
                call_id: "c1".into(),
                from_tag: "f1".into(),
                to_tag: None,
                via_branch: Some("z9".into()),
                sdp: b"v=0".to_vec(),
            }))
        );
        assert!(r.options.ice_remove);
    }

    /// A request missing several keys names the first one rtpengine checks.
    #[test]
    fn malformed_requests_name_what_is_missing_in_rtpengines_order() {
        let cases: [(&[u8], NgError); 7] = [
            (b"d7:call-id1:xe", NgError::NoCommand),
            (b"d7:commandi5ee", NgError::UnknownCommand),
            (b"d7:command0:e", NgError::UnknownCommand),
            (b"d7:command6:answere", NgError::NoSdp),
            (b"d7:command6:answer3:sdp3:v=0e", NgError::NoCallId),
            (
                b"d7:command6:answer3:sdp3:v=07:call-id1:xe",
                NgError::NoFromTag,
            ),
            (
                b"d7:command6:answer3:sdp3:v=07:call-id1:x8:from-tag1:fe",
                NgError::NoToTag,
            ),
        ];
        for (b, e) in cases {
            assert_eq!(parse(b).command, Err(e), "{}", String::from_utf8_lossy(b));
        }
        // Counted under its command even so.
        assert_eq!(
            parse(b"d7:command6:answere").kind,
            Some(CommandKind::Answer)
        );
    }

    #[test]
    fn delete_list_and_probe_fields() {
        assert_eq!(
            parse(b"d7:command6:delete7:call-id1:x8:from-tag0:6:to-tag1:te").command,
            Ok(Command::Delete(Delete {
                call_id: "x".into(),
                from_tag: None,
                to_tag: Some("t".into()),
            }))
        );
        assert_eq!(
            parse(b"d7:command4:liste").command,
            Ok(Command::List { limit: 32 })
        );
        assert_eq!(
            parse(b"d7:command4:list5:limiti-1ee").command,
            Err(NgError::NegativeLimit)
        );
        // An empty from-tag is a tag here, as before: it matches no side.
        assert_eq!(
            parse(b"d7:command5:probe7:call-id1:x8:from-tag0:e").command,
            Ok(Command::Probe(Probe {
                call_id: "x".into(),
                from_tag: Some(String::new()),
            }))
        );
    }

    #[test]
    fn command_names_round_trip() {
        for k in CommandKind::ALL {
            assert_eq!(CommandKind::from_name(k.name()), Some(k));
            assert_eq!(CommandKind::ALL[k.index()], k);
        }
    }
}
