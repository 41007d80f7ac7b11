//! A minimal SIP user agent over UDP, enough for one call through Kamailio: INVITE with SDP,
//! 200 OK with SDP, ACK, BYE. Test harness only: no retransmission timers beyond a resend of
//! the INVITE, no authentication, one dialog.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A SIP message: start line, headers in order, body.
#[derive(Clone, Debug)]
pub struct Message {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Message {
    /// # Errors
    ///
    /// If `b` has no end of headers or no start line.
    pub fn parse(b: &[u8]) -> anyhow::Result<Self> {
        let text = String::from_utf8_lossy(b);
        let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
        let mut lines = head.split("\r\n");
        let start = lines.next().context("empty message")?.to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Self {
            start,
            headers,
            body: body.to_owned(),
        })
    }

    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[must_use]
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[must_use]
    pub fn status(&self) -> Option<u16> {
        self.start
            .strip_prefix("SIP/2.0 ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    #[must_use]
    #[expect(
        clippy::format_push_string,
        reason = "a SIP message built line by line"
    )]
    pub fn render(&self) -> Vec<u8> {
        let mut s = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            if !k.eq_ignore_ascii_case("Content-Length") {
                s.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        s.push_str(&format!(
            "Content-Length: {}\r\n\r\n{}",
            self.body.len(),
            self.body
        ));
        s.into_bytes()
    }
}

/// # Errors
///
/// If no wanted message arrives `within`, or the socket fails.
pub fn recv(
    sock: &UdpSocket,
    within: Duration,
    mut want: impl FnMut(&Message) -> bool,
) -> anyhow::Result<(Message, SocketAddr)> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(m) = Message::parse(&buf[..n]) else {
            continue;
        };
        if want(&m) {
            return Ok((m, from));
        }
    }
    bail!("no matching SIP message within {within:?}")
}

/// The caller: sends INVITE through the proxy and returns the 200 OK.
pub struct Caller {
    pub sock: UdpSocket,
    pub local: SocketAddr,
    pub proxy: SocketAddr,
    pub call_id: String,
    pub callee_uri: String,
    pub route: Vec<String>,
    pub to_header: String,
    /// A preloaded route set for the INVITE (RFC 3261 section 8.1.2): the proxies it must
    /// cross, first hop first.
    pub preloaded: Vec<String>,
}

impl Caller {
    fn base(&self, method: &str, uri: &str, cseq: u32, branch: &str) -> Message {
        Message {
            start: format!("{method} {uri} SIP/2.0"),
            headers: vec![
                (
                    "Via".into(),
                    format!("SIP/2.0/UDP {};branch=z9hG4bK{branch};rport", self.local),
                ),
                ("Max-Forwards".into(), "70".into()),
                (
                    "From".into(),
                    // The caller's domain is its proxy's, as a phone's is its registrar's.
                    format!("<sip:alice@{}>;tag=alice-tag", self.proxy.ip()),
                ),
                ("To".into(), self.to_header.clone()),
                ("Call-ID".into(), self.call_id.clone()),
                ("CSeq".into(), format!("{cseq} {method}")),
                ("Contact".into(), format!("<sip:alice@{}>", self.local)),
            ],
            body: String::new(),
        }
    }

    /// # Errors
    ///
    /// If sending fails, or no 200 OK comes after three tries.
    pub fn invite(&mut self, sdp: &str) -> anyhow::Result<Message> {
        let mut m = self.base("INVITE", &self.callee_uri.clone(), 1, "inv1");
        for r in &self.preloaded {
            m.headers.push(("Route".into(), r.clone()));
        }
        m.headers
            .push(("Content-Type".into(), "application/sdp".into()));
        sdp.clone_into(&mut m.body);
        let mut seen = Vec::new();
        for _ in 0..3 {
            self.sock.send_to(&m.render(), self.proxy)?;
            if let Ok((ok, _)) = recv(&self.sock, Duration::from_secs(2), |r| {
                seen.push(r.start.clone());
                r.status() == Some(200)
            }) {
                // The route set is the Record-Route list as it came (RFC 3261 section 12.1.2).
                self.route = ok
                    .all("Record-Route")
                    .iter()
                    .flat_map(|v| v.split(','))
                    .map(|s| s.trim().to_owned())
                    .collect();
                ok.header("To")
                    .unwrap_or_default()
                    .clone_into(&mut self.to_header);
                return Ok(ok);
            }
        }
        bail!("no 200 OK to the INVITE; replies: {seen:?}")
    }

    fn in_dialog(&self, method: &str, remote_target: &str, cseq: u32, branch: &str) -> Message {
        let mut m = self.base(method, remote_target, cseq, branch);
        for r in &self.route {
            m.headers.push(("Route".into(), r.clone()));
        }
        m
    }

    /// # Errors
    ///
    /// If sending fails.
    pub fn ack(&self, remote_target: &str) -> anyhow::Result<()> {
        let m = self.in_dialog("ACK", remote_target, 1, "ack1");
        self.sock.send_to(&m.render(), self.proxy)?;
        Ok(())
    }

    /// # Errors
    ///
    /// If sending fails, or no answer to the BYE comes.
    pub fn bye(&self, remote_target: &str) -> anyhow::Result<Message> {
        let m = self.in_dialog("BYE", remote_target, 2, "bye1");
        self.sock.send_to(&m.render(), self.proxy)?;
        Ok(recv(&self.sock, Duration::from_secs(3), |r| {
            r.status().is_some() && r.header("CSeq").is_some_and(|c| c.ends_with("BYE"))
        })?
        .0)
    }
}

/// Registers `user` at `registrar` from `local` (contact there), for an hour; returns once
/// the registrar said 200.
///
/// # Errors
///
/// If sending fails, or no 200 OK comes.
pub fn register(
    sock: &UdpSocket,
    local: SocketAddr,
    registrar: SocketAddr,
    user: &str,
) -> anyhow::Result<()> {
    let aor = format!("sip:{user}@{}", registrar.ip());
    let m = Message {
        start: format!("REGISTER sip:{} SIP/2.0", registrar.ip()),
        headers: vec![
            (
                "Via".into(),
                format!("SIP/2.0/UDP {local};branch=z9hG4bKreg1;rport"),
            ),
            ("Max-Forwards".into(), "70".into()),
            ("From".into(), format!("<{aor}>;tag=reg-tag")),
            ("To".into(), format!("<{aor}>")),
            ("Call-ID".into(), format!("reg-{user}@{}", local.ip())),
            ("CSeq".into(), "1 REGISTER".into()),
            ("Contact".into(), format!("<sip:{user}@{local}>")),
            ("Expires".into(), "3600".into()),
        ],
        body: String::new(),
    };
    for _ in 0..3 {
        sock.send_to(&m.render(), registrar)?;
        if recv(sock, Duration::from_secs(2), |r| r.status() == Some(200)).is_ok() {
            return Ok(());
        }
    }
    bail!("no 200 OK to the REGISTER")
}

/// The callee: answers an INVITE with 200 OK and `sdp`, and BYE with 200 OK.
///
/// # Errors
///
/// If no INVITE comes `within`, or sending fails.
pub fn answer(
    sock: &UdpSocket,
    local: SocketAddr,
    sdp: &str,
    within: Duration,
) -> anyhow::Result<Message> {
    let (inv, from) = recv(sock, within, |m| m.start.starts_with("INVITE "))?;
    let mut ok = reply(&inv, "200 OK");
    if let Some(to) = ok
        .headers
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case("To"))
    {
        to.1 = format!("{};tag=bob-tag", to.1);
    }
    ok.headers
        .push(("Contact".into(), format!("<sip:bob@{local}>")));
    ok.headers
        .push(("Content-Type".into(), "application/sdp".into()));
    sdp.clone_into(&mut ok.body);
    sock.send_to(&ok.render(), from)?;
    Ok(inv)
}

/// A reply to `req` that copies Via, From, To, Call-ID, CSeq and Record-Route.
#[must_use]
pub fn reply(req: &Message, status: &str) -> Message {
    let keep = ["Via", "From", "To", "Call-ID", "CSeq", "Record-Route"];
    Message {
        start: format!("SIP/2.0 {status}"),
        headers: req
            .headers
            .iter()
            .filter(|(k, _)| keep.iter().any(|h| h.eq_ignore_ascii_case(k)))
            .cloned()
            .collect(),
        body: String::new(),
    }
}
