//! The options of an ng request, from its keys and its `flags` list.
//!
//! Spellings follow rtpengine: a key or flag matches with spaces and hyphens taken as equal
//! (`trust address` = `trust-address`), and we also ignore case, which rtpengine does not. A
//! `key=value` item in `flags` counts as the key `key` (so `rtpengine-ng-client --flags=...`
//! can carry any key; Kamailio already turns them into keys). Anything we do not know is
//! collected as a warning for the reply, never a failure.

use std::net::{IpAddr, SocketAddr};

use super::{
    bencode::{Dict, Value},
    sdp::RtcpAttrMode,
};

/// Lower-case, spaces to hyphens.
fn norm(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace(' ', "-")
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one bool per ng flag, as rtpengine's flags are"
)]
pub struct Options {
    pub sip_source_address: bool,
    pub asymmetric: bool,
    pub strict_source: bool,
    pub port_latching: bool,
    pub replace_origin: bool,
    pub replace_session_connection: bool,
    pub replace_zero_address: bool,
    pub ice_remove: bool,
    pub rtcp_mux: Vec<String>,
    pub rtcp_attr: RtcpAttrMode,
    pub address_family: Option<Family>,
    pub media_address: Option<IpAddr>,
    pub received_from: Option<IpAddr>,
    /// Interface names: [the SDP sender's side, the recipient's side].
    pub direction: [Option<String>; 2],
    /// Next relay on the side that sent this SDP / that receives it.
    pub next_relay: Option<RelayAddr>,
    pub next_relay_recipient: Option<RelayAddr>,
    pub delete_delay: Option<i64>,
    pub fatal: bool,
    /// The client takes rtpengine's `load limit` result (Kamailio sends `supports`).
    pub supports_load_limit: bool,
    pub warnings: Vec<String>,
}

/// Warnings kept per request: a request full of unknown keys must not produce a reply too
/// large for a datagram.
pub const MAX_WARNINGS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A next relay: its address, and its probe port if the call server gave one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl RelayAddr {
    /// `192.0.2.1`, `192.0.2.1:7999`, `2001:db8::1`, `[2001:db8::1]:7999`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Some(Self {
                ip: sa.ip(),
                port: Some(sa.port()),
            });
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        bare.parse().ok().map(|ip| Self { ip, port: None })
    }

    #[must_use]
    pub fn with_default_port(self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(port))
    }
}

const KNOWN_KEYS: &[&str] = &[
    "command",
    "call-id",
    "from-tag",
    "to-tag",
    "via-branch",
    "sdp",
    "flags",
    "replace",
    "direction",
    "received-from",
    "media-address",
    "address-family",
    "ice",
    "rtcp-mux",
    "transport-protocol",
    "delete-delay",
    "supports",
    "next-relay",
    "next-relay-recipient",
    "limit",
    "tos",
    "label",
    "set-label",
    "from-label",
    "to-label",
    "metadata",
    "interface",
    "address",
    "all",
];

fn bool_flag(o: &mut Options, flag: &str) -> bool {
    match flag {
        "trust-address" => o.sip_source_address = false,
        "sip-source-address" => o.sip_source_address = true,
        "symmetric" => o.asymmetric = false,
        "asymmetric" => o.asymmetric = true,
        "strict-source" => o.strict_source = true,
        "port-latching" => o.port_latching = true,
        "no-rtcp-attribute" => o.rtcp_attr = RtcpAttrMode::Omit,
        "full-rtcp-attribute" => o.rtcp_attr = RtcpAttrMode::Full,
        "fatal" => o.fatal = true,
        "replace-origin" => o.replace_origin = true,
        "replace-session-connection" => o.replace_session_connection = true,
        "replace-zero-address" => o.replace_zero_address = true,
        // Accepted for compatibility; they change nothing here.
        "no-port-latching" | "media-handover" | "loop-protect" | "record-call"
        | "no-redis-update" | "reset" | "unidirectional" | "original-sendrecv" | "force"
        | "all" | "debug" => {}
        f if f.starts_with("rtcp-mux-") => o.rtcp_mux.push(f["rtcp-mux-".len()..].to_owned()),
        _ => return false,
    }
    true
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::List(l) => l
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Value::Bytes(_) => v.as_str().map(|s| vec![s.to_owned()]).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn apply_key(o: &mut Options, key: &str, v: &Value) {
    let text = v.as_str().map(str::trim).unwrap_or_default();
    match key {
        "replace" => {
            for r in strings(v) {
                match norm(&r).as_str() {
                    "origin" => o.replace_origin = true,
                    "session-connection" => o.replace_session_connection = true,
                    "zero-address" => o.replace_zero_address = true,
                    "sdp-version" | "username" | "session-name" => {}
                    other => o.warnings.push(format!("unknown replace option '{other}'")),
                }
            }
        }
        "direction" => {
            let d = strings(v);
            // Kamailio sends `direction=x` twice as list items; a single string adds to the list.
            for name in d {
                if o.direction[0].is_none() {
                    o.direction[0] = Some(name);
                } else if o.direction[1].is_none() {
                    o.direction[1] = Some(name);
                }
            }
        }
        "received-from" => {
            let l = strings(v);
            match l.as_slice() {
                [_, addr] | [addr] => match addr.parse() {
                    Ok(ip) => o.received_from = Some(ip),
                    Err(_) => o
                        .warnings
                        .push(format!("invalid received-from address '{addr}'")),
                },
                _ => o
                    .warnings
                    .push("received-from needs [family, address]".into()),
            }
        }
        "media-address" => match text.parse() {
            Ok(ip) => o.media_address = Some(ip),
            Err(_) => o.warnings.push(format!("invalid media address '{text}'")),
        },
        "address-family" => match text {
            "IP4" | "ip4" => o.address_family = Some(Family::V4),
            "IP6" | "ip6" => o.address_family = Some(Family::V6),
            other => o.warnings.push(format!("unknown address family '{other}'")),
        },
        "ice" => match norm(text).as_str() {
            "remove" => o.ice_remove = true,
            "default" => {}
            other => o.warnings.push(format!(
                "ICE '{other}' is not supported; ICE attributes are passed through"
            )),
        },
        "rtcp-mux" => o.rtcp_mux.extend(strings(v).iter().map(|s| norm(s))),
        "delete-delay" => match v.as_int() {
            Some(n) => o.delete_delay = Some(n),
            None => o.warnings.push(format!("invalid delete-delay '{text}'")),
        },
        "supports" => {
            o.supports_load_limit |= strings(v).iter().any(|s| norm(s) == "load-limit");
        }
        "next-relay" | "next-relay-recipient" => match RelayAddr::parse(text) {
            Some(r) if key == "next-relay" => o.next_relay = Some(r),
            Some(r) => o.next_relay_recipient = Some(r),
            None => o.warnings.push(format!("invalid {key} '{text}'")),
        },
        "transport-protocol"
            if !text.is_empty() && !text.starts_with("RTP/AVP") && text != "accept" =>
        {
            o.warnings.push(format!(
                "transport protocol '{text}' is not supported; the m= protocol is kept"
            ));
        }
        _ => {}
    }
}

/// Reads the options of a request.
#[must_use]
pub fn parse(req: &Dict) -> Options {
    let mut o = parse_all(req);
    if o.warnings.len() > MAX_WARNINGS {
        let more = o.warnings.len() - MAX_WARNINGS;
        o.warnings.truncate(MAX_WARNINGS);
        o.warnings.push(format!("and {more} more"));
    }
    for w in &mut o.warnings {
        // One warning quotes at most a key's worth of the request.
        if w.len() > 200 {
            let mut cut = 200;
            while !w.is_char_boundary(cut) {
                cut -= 1;
            }
            w.truncate(cut);
            w.push('…');
        }
    }
    o
}

fn parse_all(req: &Dict) -> Options {
    let mut o = Options::default();
    for (k, v) in &req.0 {
        let Ok(k) = std::str::from_utf8(k) else {
            continue;
        };
        let key = norm(k);
        if key == "flags" {
            continue;
        }
        if !KNOWN_KEYS.contains(&key.as_str()) {
            o.warnings.push(format!("unknown key '{k}'"));
            continue;
        }
        apply_key(&mut o, &key, v);
    }
    // `delete delay` arrives under two spellings from Kamailio; both normalise to one key.
    if let Some(Value::List(flags)) = req.get("flags") {
        for f in flags.iter().filter_map(Value::as_str) {
            if let Some((k, v)) = f.split_once('=') {
                let key = norm(k);
                if KNOWN_KEYS.contains(&key.as_str()) {
                    let value = if key == "replace" || key == "rtcp-mux" || key == "direction" {
                        Value::List(vec![Value::str(v)])
                    } else {
                        Value::str(v)
                    };
                    apply_key(&mut o, &key, &value);
                } else {
                    o.warnings.push(format!("unknown flag '{f}'"));
                }
            } else if !bool_flag(&mut o, &norm(f)) {
                o.warnings.push(format!("unknown flag '{f}'"));
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ng::bencode::decode;

    fn dict(b: &[u8]) -> Dict {
        decode(b).unwrap().as_dict().unwrap().clone()
    }

    #[test]
    fn kamailio_offer_keys() {
        // What Kamailio sends for rtpengine_offer("replace-origin replace-session-connection ICE=remove RTP/AVP").
        let d = dict(b"d8:supportsl10:load limite3:sdp3:v=03:ICE6:remove7:replacel6:origin18:session-connectione18:transport-protocol7:RTP/AVP7:call-id2:c113:received-froml3:IP410:192.0.2.10e8:from-tag2:f17:command5:offere");
        let o = parse(&d);
        assert!(o.replace_origin && o.replace_session_connection && o.ice_remove);
        assert_eq!(o.received_from, Some("192.0.2.10".parse().unwrap()));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn flag_spellings_and_key_value_items() {
        let flags = [
            "trust address",
            "strict-source",
            "ASYMMETRIC",
            "next-relay=1.2.3.4",
            "address-family=IP6",
            "rtcp-mux-offer",
            "frobnicate",
        ];
        let mut d = Dict::new();
        d.push(
            "flags",
            Value::List(flags.iter().map(|f| Value::str(f)).collect()),
        );
        d.push("command", Value::str("offer"));
        let o = parse(&d);
        assert!(o.strict_source && o.asymmetric && !o.sip_source_address);
        assert_eq!(
            o.next_relay,
            Some(RelayAddr {
                ip: "1.2.3.4".parse().unwrap(),
                port: None
            })
        );
        assert_eq!(o.address_family, Some(Family::V6));
        assert_eq!(o.rtcp_mux, vec!["offer".to_owned()]);
        assert_eq!(o.warnings, vec!["unknown flag 'frobnicate'".to_owned()]);
    }

    #[test]
    fn delete_delay_as_int_or_string_and_relay_ports() {
        let d = dict(b"d12:delete delayi0e12:delete-delay1:05:flagsl5:fatalee");
        let o = parse(&d);
        assert_eq!(o.delete_delay, Some(0));
        assert!(o.fatal);
        assert_eq!(
            RelayAddr::parse("[2001:db8::1]:7000").unwrap().port,
            Some(7000)
        );
        assert_eq!(RelayAddr::parse("2001:db8::1").unwrap().port, None);
        assert!(RelayAddr::parse("not an address").is_none());
    }
}
