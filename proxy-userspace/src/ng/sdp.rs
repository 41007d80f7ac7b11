//! SDP (RFC 4566/8866) as a media relay needs it: read the media lines and their addresses,
//! and rewrite only what points at media, keeping every other line byte for byte, in order,
//! with its own line ending.
//!
//! Rewritten: `c=` (session and media level) to the relay's address, the `m=` port to the
//! relay's port, `a=rtcp` to the relay's RTCP port (and address, in its long form). On request:
//! the `o=` address (`replace origin`), ICE attributes removed (`ICE=remove`), `a=rtcp-mux`
//! added or removed. Nothing else is touched: codecs, `a=rtpmap`, unknown attributes, order.
//!
//! The parser takes bytes (SDP may carry any octets in `s=` or `i=`) and never panics; it is
//! fuzzed together with the rewriter (`fuzz/fuzz_targets/sdp.rs`).

use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdpError {
    /// Not `v=0` first.
    NoVersion,
    /// A line that is not `<letter>=<value>`.
    BadLine(usize),
    BadMediaLine(usize),
    BadConnectionLine(usize),
    /// A media section without a connection address at either level.
    NoConnection(usize),
}

impl std::fmt::Display for SdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SdpError::NoVersion => f.write_str("SDP does not start with v=0"),
            SdpError::BadLine(n) => write!(f, "SDP line {n} is not <type>=<value>"),
            SdpError::BadMediaLine(n) => write!(f, "SDP line {n}: malformed m= line"),
            SdpError::BadConnectionLine(n) => write!(f, "SDP line {n}: malformed c= line"),
            SdpError::NoConnection(i) => write!(f, "media {} has no c= address", i + 1),
        }
    }
}

impl std::error::Error for SdpError {}

/// One line: its bytes without the ending, and the ending (`\r\n`, `\n` or none).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Line<'a> {
    text: &'a [u8],
    ending: &'a [u8],
}

impl Line<'_> {
    fn kind(&self) -> u8 {
        self.text[0]
    }

    fn value(&self) -> &[u8] {
        &self.text[2..]
    }
}

/// The RTCP attribute of a media section (RFC 3605).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcpAttr {
    pub port: u16,
    pub addr: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, ...
    pub kind: String,
    pub port: u16,
    pub proto: String,
    /// The media-level `c=` address, or else the session's.
    pub addr: IpAddr,
    pub rtcp: Option<RtcpAttr>,
    pub rtcp_mux: bool,
    pub ice: bool,
    /// `a=sendrecv` and friends, if present.
    pub direction: Option<String>,
    /// First payload type's name from `a=rtpmap`, or the static name (for `query`).
    pub codec: Option<String>,
    first: usize,
    end: usize,
}

impl Media {
    /// The address and port RTP comes from, per this SDP.
    #[must_use]
    pub fn rtp_endpoint(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }

    /// Where RTCP comes from: `a=rtcp` or RTP port + 1 (RFC 3550 section 11); RTP's with mux.
    #[must_use]
    pub fn rtcp_endpoint(&self) -> std::net::SocketAddr {
        if self.rtcp_mux {
            return self.rtp_endpoint();
        }
        match self.rtcp {
            Some(r) => std::net::SocketAddr::new(r.addr.unwrap_or(self.addr), r.port),
            None => std::net::SocketAddr::new(self.addr, self.port.wrapping_add(1)),
        }
    }

    /// Port 0: the stream is rejected or disabled.
    #[must_use]
    pub fn is_disabled(&self) -> bool {
        self.port == 0
    }

    /// `c=` is the unspecified address: on hold (RFC 3264 section 8.4, old style).
    #[must_use]
    pub fn is_held(&self) -> bool {
        self.addr.is_unspecified()
    }
}

#[derive(Clone, Debug)]
pub struct Sdp<'a> {
    lines: Vec<Line<'a>>,
    pub media: Vec<Media>,
    pub origin_addr: Option<IpAddr>,
}

fn split_lines(b: &[u8]) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        if let Some(i) = rest.iter().position(|&c| c == b'\n') {
            let (line, ending) = if i > 0 && rest[i - 1] == b'\r' {
                (&rest[..i - 1], &rest[i - 1..=i])
            } else {
                (&rest[..i], &rest[i..=i])
            };
            out.push(Line { text: line, ending });
            rest = &rest[i + 1..];
        } else {
            out.push(Line {
                text: rest,
                ending: &[],
            });
            rest = &[];
        }
    }
    out
}

fn words(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    b.split(|&c| c == b' ').filter(|w| !w.is_empty())
}

fn ascii(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// `IN IP4 192.0.2.1` (also with a `/ttl` multicast suffix, which we keep but ignore).
fn parse_connection(v: &[u8]) -> Option<IpAddr> {
    let mut w = words(v);
    if w.next()? != b"IN" {
        return None;
    }
    let family = w.next()?;
    let addr = ascii(w.next()?)?;
    let addr = addr.split('/').next()?;
    let ip: IpAddr = addr.parse().ok()?;
    match (family, ip) {
        (b"IP4", IpAddr::V4(_)) | (b"IP6", IpAddr::V6(_)) => Some(ip),
        _ => None,
    }
}

fn static_codec(pt: &str) -> Option<&'static str> {
    Some(match pt {
        "0" => "PCMU/8000",
        "3" => "GSM/8000",
        "4" => "G723/8000",
        "8" => "PCMA/8000",
        "9" => "G722/8000",
        "18" => "G729/8000",
        _ => return None,
    })
}

/// An `m=` line (line `i` of `n`): the media section it opens, and its first payload type.
fn media_line(v: &[u8], i: usize, n: usize) -> Result<(Media, Option<String>), SdpError> {
    let bad = SdpError::BadMediaLine(i + 1);
    let w: Vec<&[u8]> = words(v).collect();
    if w.len() < 3 {
        return Err(bad);
    }
    let kind = ascii(w[0]).ok_or(bad.clone())?.to_owned();
    let port_s = ascii(w[1]).ok_or(bad.clone())?;
    let port: u16 = port_s
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(bad.clone())?;
    let proto = ascii(w[2]).ok_or(bad)?.to_owned();
    let first_pt = w.get(3).and_then(|p| ascii(p)).map(str::to_owned);
    let media = Media {
        kind,
        port,
        proto,
        addr: IpAddr::from([0, 0, 0, 0]),
        rtcp: None,
        rtcp_mux: false,
        ice: false,
        direction: None,
        codec: None,
        first: i,
        end: n,
    };
    Ok((media, first_pt))
}

/// An `a=` line inside a media section, whose first payload type is `first_pt`.
fn media_attribute(m: &mut Media, v: &[u8], first_pt: Option<&str>) {
    if let Some(r) = v.strip_prefix(b"rtcp:") {
        let mut w = words(r);
        let port = w.next().and_then(ascii).and_then(|p| p.parse().ok());
        let rest: Vec<u8> = w
            .flat_map(|x| x.iter().copied().chain(std::iter::once(b' ')))
            .collect();
        if let Some(port) = port {
            m.rtcp = Some(RtcpAttr {
                port,
                addr: parse_connection(&rest),
            });
        }
    } else if v == b"rtcp-mux" {
        m.rtcp_mux = true;
    } else if v.starts_with(b"ice-") || v.starts_with(b"candidate:") {
        m.ice = true;
    } else if matches!(v, b"sendrecv" | b"sendonly" | b"recvonly" | b"inactive") {
        m.direction = ascii(v).map(str::to_owned);
    } else if let Some(r) = v.strip_prefix(b"rtpmap:") {
        let mut w = words(r);
        let pt = w.next().and_then(ascii);
        if m.codec.is_none() && pt.is_some() && pt == first_pt {
            m.codec = w.next().and_then(ascii).map(str::to_owned);
        }
    }
}

/// Parses an SDP body. Parsing stops at the first empty line, as rtpengine does.
///
/// # Errors
///
/// The first line that is not valid SDP for the relay, as an [`SdpError`].
#[expect(
    clippy::missing_panics_doc,
    reason = "a media section's address slot exists once its m= line is read"
)]
pub fn parse(body: &[u8]) -> Result<Sdp<'_>, SdpError> {
    let mut lines = split_lines(body);
    if let Some(blank) = lines.iter().position(|l| l.text.is_empty()) {
        lines.truncate(blank);
    }
    if lines.first().map(|l| l.text) != Some(b"v=0") {
        return Err(SdpError::NoVersion);
    }
    for (i, l) in lines.iter().enumerate() {
        // A CR inside a line (not before its LF) is no line ending RFC 4566 allows; kept, it
        // would become one when a rewrite drops what follows it.
        if l.text.len() < 2
            || l.text[1] != b'='
            || !l.text[0].is_ascii_lowercase()
            || l.text.contains(&b'\r')
        {
            return Err(SdpError::BadLine(i + 1));
        }
    }
    let mut session_addr = None;
    let mut origin_addr = None;
    let mut media: Vec<Media> = Vec::new();
    let mut media_addr: Vec<Option<IpAddr>> = Vec::new();
    let mut first_first_pt: Vec<Option<String>> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let in_media = !media.is_empty();
        match l.kind() {
            b'o' if !in_media => {
                let w: Vec<&[u8]> = words(l.value()).collect();
                if w.len() >= 6 {
                    origin_addr = ascii(w[5]).and_then(|a| a.parse().ok());
                }
            }
            b'c' => {
                let addr = parse_connection(l.value()).ok_or(SdpError::BadConnectionLine(i + 1))?;
                if in_media {
                    *media_addr.last_mut().expect("in media") = Some(addr);
                } else {
                    session_addr = Some(addr);
                }
            }
            b'm' => {
                let (m, first_pt) = media_line(l.value(), i, lines.len())?;
                if let Some(prev) = media.last_mut() {
                    prev.end = i;
                }
                first_first_pt.push(first_pt);
                media.push(m);
                media_addr.push(None);
            }
            b'a' => {
                if let (Some(m), Some(first_pt)) = (media.last_mut(), first_first_pt.last()) {
                    media_attribute(m, l.value(), first_pt.as_deref());
                }
            }
            _ => {}
        }
    }
    for (i, (m, addr)) in media.iter_mut().zip(media_addr).enumerate() {
        m.addr = addr.or(session_addr).ok_or(SdpError::NoConnection(i))?;
        if m.codec.is_none() {
            m.codec = first_first_pt[i]
                .as_deref()
                .and_then(static_codec)
                .map(str::to_owned);
        }
    }
    Ok(Sdp {
        lines,
        media,
        origin_addr,
    })
}

/// What to write for `a=rtcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RtcpAttrMode {
    /// Rewrite an existing attribute in its own form; add none.
    #[default]
    Keep,
    /// Remove it (`no rtcp attribute`).
    Omit,
    /// Always write `a=rtcp:PORT IN IP4 addr` (`full rtcp attribute`).
    Full,
}

/// The relay's side of one media section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaRewrite {
    pub rtp_port: u16,
    pub rtcp_port: u16,
    /// Whether the rewritten section carries `a=rtcp-mux`.
    pub rtcp_mux: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one bool per SDP attribute the relay looks at"
)]
pub struct Rewrite {
    /// The relay's address as written into `c=` (and `o=`, `a=rtcp`).
    pub addr: IpAddr,
    /// One per media section, in order.
    pub media: Vec<MediaRewrite>,
    pub replace_origin: bool,
    /// Rewrite a session-level `c=` even if every media section has its own.
    pub replace_session_connection: bool,
    /// Replace `0.0.0.0`/`::` too, instead of keeping the hold.
    pub replace_zero_address: bool,
    pub remove_ice: bool,
    pub rtcp_attr: RtcpAttrMode,
}

fn family_word(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IP4" } else { "IP6" }
}

fn connection_value(ip: IpAddr) -> String {
    format!("IN {} {ip}", family_word(ip))
}

fn is_ice_attr(v: &[u8]) -> bool {
    v.starts_with(b"ice-")
        || v.starts_with(b"candidate:")
        || v == b"end-of-candidates"
        || v.starts_with(b"remote-candidates:")
}

/// Rewrites `sdp` for the relay. `rw.media` must have one entry per media section.
#[must_use]
pub fn rewrite(sdp: &Sdp<'_>, rw: &Rewrite) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(sdp.lines.iter().map(|l| l.text.len() + 2).sum::<usize>() + 64);
    // The ending used for lines we add: the body's own.
    let eol: &[u8] = sdp
        .lines
        .iter()
        .find(|l| !l.ending.is_empty())
        .map_or(b"\r\n", |l| l.ending);
    let media_at = |line: usize| sdp.media.iter().rposition(|m| m.first <= line);
    let mut push = |text: &[u8], ending: &[u8]| {
        out.extend_from_slice(text);
        out.extend_from_slice(ending);
    };
    let all_media_have_c = sdp
        .media
        .iter()
        .all(|m| sdp.lines[m.first..m.end].iter().any(|l| l.kind() == b'c'));
    for (i, line) in sdp.lines.iter().enumerate() {
        let section = media_at(i).map(|k| (&sdp.media[k], rw.media.get(k).copied()));
        match rewrite_line(i, line, section, rw, all_media_have_c) {
            LineOut::Keep => push(line.text, line.ending),
            LineOut::Drop => {}
            LineOut::Replace(text) => push(&text, line.ending),
        }
        if let Some((m, Some(r))) = section
            && i + 1 == m.end
            && !m.is_disabled()
        {
            add_generated(&mut push, m, r, rw, eol, line.ending.is_empty());
        }
    }
    out
}

/// What becomes of one line of the body.
enum LineOut {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// Line `i`, in the media section `section` (with its rewrite, if the relay has one) or at
/// session level.
fn rewrite_line(
    i: usize,
    line: &Line<'_>,
    section: Option<(&Media, Option<MediaRewrite>)>,
    rw: &Rewrite,
    all_media_have_c: bool,
) -> LineOut {
    let v = line.value();
    let keep_zero = |ip: IpAddr| ip.is_unspecified() && !rw.replace_zero_address;
    let c_line = || format!("c={}", connection_value(rw.addr)).into_bytes();
    match (line.kind(), section) {
        (b'o', None) if rw.replace_origin => {
            origin_line(v, rw.addr).map_or(LineOut::Keep, LineOut::Replace)
        }
        (b'c', None) => {
            let ip = parse_connection(v);
            let rewrite_it =
                (rw.replace_session_connection || !all_media_have_c) && !ip.is_some_and(keep_zero);
            if rewrite_it {
                LineOut::Replace(c_line())
            } else {
                LineOut::Keep
            }
        }
        (b'c', Some((m, Some(_)))) => {
            if keep_zero(m.addr) || m.is_disabled() {
                LineOut::Keep
            } else {
                LineOut::Replace(c_line())
            }
        }
        (b'm', Some((m, Some(r)))) if i == m.first => LineOut::Replace(media_line_for(v, m, r)),
        (b'a', Some((m, Some(r)))) if !m.is_disabled() => media_attribute_for(v, m, r, rw),
        (b'a', None) if rw.remove_ice && is_ice_attr(v) => LineOut::Drop,
        _ => LineOut::Keep,
    }
}

/// `o=` with the relay's address; `None` for one too short to rewrite.
fn origin_line(v: &[u8], addr: IpAddr) -> Option<Vec<u8>> {
    let w: Vec<&[u8]> = words(v).collect();
    if w.len() < 6 {
        return None;
    }
    let mut text = b"o=".to_vec();
    for part in &w[..3] {
        text.extend_from_slice(part);
        text.push(b' ');
    }
    text.extend_from_slice(format!("IN {} {}", family_word(addr), addr).as_bytes());
    Some(text)
}

/// `m=` with the relay's port (parsing made sure it has at least three words).
fn media_line_for(v: &[u8], m: &Media, r: MediaRewrite) -> Vec<u8> {
    let w: Vec<&[u8]> = words(v).collect();
    let mut text = b"m=".to_vec();
    text.extend_from_slice(w[0]);
    text.push(b' ');
    if m.is_disabled() {
        text.extend_from_slice(w[1]);
    } else {
        text.extend_from_slice(r.rtp_port.to_string().as_bytes());
        // A `/count` suffix (RFC 4566 hierarchical ports) is kept.
        if let Some(slash) = w[1].iter().position(|&c| c == b'/') {
            text.extend_from_slice(&w[1][slash..]);
        }
    }
    for part in &w[2..] {
        text.push(b' ');
        text.extend_from_slice(part);
    }
    text
}

/// An `a=` line of a media section the relay carries.
fn media_attribute_for(v: &[u8], m: &Media, r: MediaRewrite, rw: &Rewrite) -> LineOut {
    let full = || format!("a=rtcp:{} {}", rtcp_port(r), connection_value(rw.addr)).into_bytes();
    if v.starts_with(b"rtcp:") {
        match rw.rtcp_attr {
            RtcpAttrMode::Omit => LineOut::Drop,
            RtcpAttrMode::Full => LineOut::Replace(full()),
            RtcpAttrMode::Keep if m.rtcp.is_some_and(|a| a.addr.is_some()) => {
                LineOut::Replace(full())
            }
            RtcpAttrMode::Keep => LineOut::Replace(format!("a=rtcp:{}", rtcp_port(r)).into_bytes()),
        }
    } else if v == b"rtcp-mux" {
        if r.rtcp_mux {
            LineOut::Keep
        } else {
            LineOut::Drop
        }
    } else if rw.remove_ice && is_ice_attr(v) {
        LineOut::Drop
    } else {
        LineOut::Keep
    }
}

fn rtcp_port(r: MediaRewrite) -> u16 {
    if r.rtcp_mux { r.rtp_port } else { r.rtcp_port }
}

/// Lines added at the end of a media section: `a=rtcp-mux` when it is to be offered and was
/// not there, and the long `a=rtcp` when asked for and absent.
fn add_generated(
    push: &mut impl FnMut(&[u8], &[u8]),
    m: &Media,
    r: MediaRewrite,
    rw: &Rewrite,
    eol: &[u8],
    last_line_unterminated: bool,
) {
    let mut lines = Vec::new();
    if rw.rtcp_attr == RtcpAttrMode::Full && m.rtcp.is_none() {
        lines.push(format!(
            "a=rtcp:{} {}",
            rtcp_port(r),
            connection_value(rw.addr)
        ));
    }
    if r.rtcp_mux && !m.rtcp_mux {
        lines.push("a=rtcp-mux".to_owned());
    }
    if lines.is_empty() {
        return;
    }
    if last_line_unterminated {
        push(b"", eol);
    }
    let n = lines.len();
    for (k, l) in lines.into_iter().enumerate() {
        push(
            l.as_bytes(),
            if k + 1 == n && last_line_unterminated {
                b""
            } else {
                eol
            },
        );
    }
}

#[cfg(test)]
mod tests;
