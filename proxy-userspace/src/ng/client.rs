//! A small ng client: `mediaproxy ctl`, the tests, the demo and the benchmark talk to the
//! daemon with it, the way Kamailio's rtpengine module does (cookie, bencode, retransmission
//! with the same cookie).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::bencode::{self, Dict};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Wait per send before retransmitting: Kamailio's `rtpengine_tout_ms` default.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The largest UDP datagram: ng replies (a `list` or `statistics`) can be tens of kilobytes.
const MAX_DATAGRAM: usize = 65_536;

pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
    /// Sends of one request before giving up (Kamailio's default is 5, 1 s apart).
    pub tries: u32,
}

impl NgClient {
    /// # Errors
    ///
    /// If the socket cannot be bound or configured.
    pub fn new(server: SocketAddr) -> anyhow::Result<Self> {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(RETRY_AFTER))?;
        Ok(Self {
            sock,
            server,
            tries: 5,
        })
    }

    /// A fresh cookie in Kamailio's style (`<id>_<pid>_<seq>`).
    #[must_use]
    pub fn cookie() -> String {
        format!(
            "mp_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends `req` and waits for the reply, retransmitting the same cookie.
    ///
    /// # Errors
    ///
    /// If sending fails, no valid reply comes after every try, or the reply does not decode.
    pub fn request(&self, req: &Dict) -> anyhow::Result<Dict> {
        self.request_with_cookie(&Self::cookie(), req)
    }

    /// # Errors
    ///
    /// If sending fails, no valid reply comes after every try, or the reply does not decode.
    pub fn request_with_cookie(&self, cookie: &str, req: &Dict) -> anyhow::Result<Dict> {
        let mut msg = cookie.as_bytes().to_vec();
        msg.push(b' ');
        req.encode_into(&mut msg);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for _ in 0..self.tries.max(1) {
            self.sock
                .send_to(&msg, self.server)
                .context("sending the ng request")?;
            loop {
                match self.sock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let reply = &buf[..n];
                        let Some(body) = reply
                            .strip_prefix(cookie.as_bytes())
                            .and_then(|r| r.strip_prefix(b" "))
                        else {
                            continue; // a late reply to an earlier request
                        };
                        return bencode::decode_dict_prefix(body).context("decoding the ng reply");
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e).context("receiving the ng reply"),
                }
            }
        }
        bail!("no reply from {} after {} tries", self.server, self.tries)
    }

    /// Sends raw bytes and returns the raw reply, if any comes within a second.
    ///
    /// # Errors
    ///
    /// If sending or receiving fails other than by timing out.
    pub fn raw(&self, msg: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        self.sock.send_to(msg, self.server)?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Ok(Some(buf[..n].to_vec())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}
