//! The ng listener, on the tokio side: datagrams parsed into requests, retransmissions
//! answered from the cookie cache, requests queued to the control thread with a deadline.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use crossbeam_channel::Sender;
use log::{debug, warn};

use super::{NG_DEADLINE, NG_WAIT};
use crate::ng::{
    bencode::{self, Dict},
    error::NgError,
    reply,
};

/// A request from the ng listener; the reply goes back on the oneshot.
pub struct NgRequest {
    pub dict: Dict,
    pub reply: tokio::sync::oneshot::Sender<Dict>,
    /// A request still queued at this instant is not run: the listener has answered it
    /// "Internal timeout", and a retransmission must not find it executed behind its back.
    pub deadline: Instant,
}

pub enum Command {
    Ng(NgRequest),
    Stop,
}

/// Replies by peer and cookie for 30 to 60 s, as rtpengine keeps them, so that a call
/// server's retransmission gets the same answer and never a second allocation. Keyed by the
/// peer too: another client that happens to reuse a cookie gets its own answer, not this
/// one's. Bounded in bytes: past the bound the older generation goes early, and a reply that
/// still does not fit is not cached (its retransmission runs again, which for an offer finds
/// the call and its ports already there).
struct CookieCache {
    current: HashMap<(SocketAddr, Vec<u8>), Arc<Vec<u8>>>,
    old: HashMap<(SocketAddr, Vec<u8>), Arc<Vec<u8>>>,
    current_bytes: usize,
    old_bytes: usize,
    swapped: Instant,
    max_bytes: usize,
}

impl CookieCache {
    const GENERATION: Duration = Duration::from_secs(30);
    /// Replies of a few kB each: room for tens of thousands of requests a minute.
    const MAX_BYTES: usize = 64 << 20;
    /// Bytes counted per entry beyond its cookie and reply: the key's address and two
    /// `Arc`/`Vec` headers, so that many tiny replies cannot outgrow the bound.
    const ENTRY_OVERHEAD: usize = 64;

    fn new() -> Self {
        Self::with_bound(Self::MAX_BYTES)
    }

    fn with_bound(max_bytes: usize) -> Self {
        Self {
            current: HashMap::new(),
            old: HashMap::new(),
            current_bytes: 0,
            old_bytes: 0,
            swapped: Instant::now(),
            max_bytes,
        }
    }

    fn swap(&mut self) {
        self.old = std::mem::take(&mut self.current);
        self.old_bytes = std::mem::take(&mut self.current_bytes);
        self.swapped = Instant::now();
    }

    fn age(&mut self) {
        if self.swapped.elapsed() >= Self::GENERATION {
            self.swap();
        }
    }

    fn get(&mut self, peer: SocketAddr, cookie: &[u8]) -> Option<Arc<Vec<u8>>> {
        self.age();
        let k = (peer, cookie.to_vec());
        self.current.get(&k).or_else(|| self.old.get(&k)).cloned()
    }

    fn insert(&mut self, peer: SocketAddr, cookie: Vec<u8>, reply: Arc<Vec<u8>>) {
        self.age();
        let size = cookie.len() + reply.len() + Self::ENTRY_OVERHEAD;
        if size > self.max_bytes {
            return;
        }
        if self.bytes() + size > self.max_bytes {
            self.swap();
            if self.old_bytes + size > self.max_bytes {
                self.old.clear();
                self.old_bytes = 0;
            }
        }
        self.current_bytes += size;
        if let Some(prev) = self.current.insert((peer, cookie), reply) {
            self.current_bytes -= prev.len().min(self.current_bytes);
        }
    }

    fn bytes(&self) -> usize {
        self.current_bytes + self.old_bytes
    }
}

/// The largest ng request we take: one UDP datagram.
const MAX_REQUEST: usize = 65_507;

/// What to do with one datagram before it reaches the control thread.
enum Parsed {
    /// No cookie: rtpengine sends nothing back either.
    Ignore,
    Reply(Vec<u8>, Dict),
    Request(Vec<u8>, Dict),
}

fn parse_datagram(d: &[u8], truncated: bool) -> Parsed {
    let Some(space) = d.iter().position(|&b| b == b' ') else {
        return Parsed::Ignore;
    };
    if space == 0 {
        return Parsed::Ignore;
    }
    let cookie = d[..space].to_vec();
    let body = &d[space + 1..];
    if truncated {
        return Parsed::Reply(cookie, reply::error(&NgError::MessageTooLarge));
    }
    if body.is_empty() {
        return Parsed::Reply(cookie, reply::error(&NgError::NoPayload));
    }
    if body[0] != b'd' {
        return Parsed::Reply(cookie, reply::error(&NgError::NotADictionary));
    }
    match bencode::decode_dict_prefix(body) {
        Ok(dict) => Parsed::Request(cookie, dict),
        Err(e) => {
            debug!("undecodable ng request: {e}");
            Parsed::Reply(cookie, reply::error(&NgError::BadBencode))
        }
    }
}

pub(super) async fn serve_ng(
    sock: tokio::net::UdpSocket,
    to_control: Sender<Command>,
) -> anyhow::Result<()> {
    let mut cache = CookieCache::new();
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let cookie_and_reply = match parse_datagram(&buf[..n], n > MAX_REQUEST) {
            Parsed::Ignore => {
                warn!("ng datagram without a cookie from {peer}: ignored");
                continue;
            }
            Parsed::Reply(cookie, dict) => (cookie, dict),
            Parsed::Request(cookie, dict) => {
                if let Some(cached) = cache.get(peer, &cookie) {
                    debug!("ng request from {peer} is a retransmission: cached reply");
                    let _ = sock.send_to(&cached, peer).await;
                    continue;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let req = NgRequest {
                    dict,
                    reply: tx,
                    deadline: Instant::now() + NG_DEADLINE,
                };
                match to_control.try_send(Command::Ng(req)) {
                    Ok(()) => {}
                    Err(crossbeam_channel::TrySendError::Full(_)) => {
                        // Shed load rather than block the listener; not cached, so a
                        // retransmission may find room.
                        let mut out = cookie.clone();
                        out.push(b' ');
                        reply::error(&NgError::InternalTimeout).encode_into(&mut out);
                        let _ = sock.send_to(&out, peer).await;
                        continue;
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        bail!("the control thread is gone")
                    }
                }
                let reply = match tokio::time::timeout(NG_WAIT, rx).await {
                    Ok(Ok(r)) => r,
                    _ => reply::error(&NgError::InternalTimeout),
                };
                (cookie, reply)
            }
        };
        let (cookie, reply) = cookie_and_reply;
        let mut out = cookie.clone();
        out.push(b' ');
        reply.encode_into(&mut out);
        let out = Arc::new(out);
        if let Err(e) = sock.send_to(&out, peer).await {
            warn!("ng reply to {peer}: {e}");
        }
        cache.insert(peer, cookie, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_without_a_cookie_get_no_reply() {
        assert!(matches!(parse_datagram(b"nocookie", false), Parsed::Ignore));
        assert!(matches!(
            parse_datagram(b" d7:command4:pinge", false),
            Parsed::Ignore
        ));
    }

    #[test]
    fn bad_payloads_get_rtpengines_error_strings() {
        let reason = |d: &[u8], t: bool| match parse_datagram(d, t) {
            Parsed::Reply(c, r) => (c, r.get_str("error-reason").unwrap().to_owned()),
            _ => panic!("expected a reply"),
        };
        assert_eq!(
            reason(b"c1 ", false),
            (b"c1".to_vec(), "Invalid data (no payload)".to_owned())
        );
        assert_eq!(reason(b"c2 hello", false).1, "Invalid NG data format");
        assert_eq!(
            reason(b"c3 d7:command", false).1,
            "Could not decode bencode dictionary"
        );
        assert_eq!(reason(b"c4 d7:command4:pinge", true).1, "Message too large");
        assert!(matches!(
            parse_datagram(b"c5 d7:command4:pinge", false),
            Parsed::Request(..)
        ));
    }

    fn peer(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn cookie_cache_returns_the_same_reply() {
        let mut c = CookieCache::new();
        c.insert(
            peer(1),
            b"k".to_vec(),
            Arc::new(b"k d6:result2:oke".to_vec()),
        );
        assert_eq!(
            c.get(peer(1), b"k").unwrap().as_slice(),
            b"k d6:result2:oke"
        );
        assert!(c.get(peer(1), b"other").is_none());
        c.swapped -= CookieCache::GENERATION;
        assert!(
            c.get(peer(1), b"k").is_some(),
            "still there one generation later"
        );
        c.swapped -= CookieCache::GENERATION;
        assert!(c.get(peer(1), b"k").is_none(), "gone after two");
    }

    #[test]
    fn another_peer_reusing_a_cookie_does_not_get_this_reply() {
        let mut c = CookieCache::new();
        c.insert(peer(1), b"0_1_1".to_vec(), Arc::new(b"secret".to_vec()));
        assert!(c.get(peer(2), b"0_1_1").is_none());
        assert!(c.get(peer(1), b"0_1_1").is_some());
    }

    #[test]
    fn cookie_cache_stays_within_its_bytes() {
        let mut c = CookieCache::with_bound(10_000);
        for i in 0..1000u32 {
            c.insert(peer(1), i.to_be_bytes().to_vec(), Arc::new(vec![0; 500]));
            assert!(c.bytes() <= 10_000, "after {i}: {}", c.bytes());
        }
        // The newest is there; the oldest went early.
        assert!(c.get(peer(1), &999u32.to_be_bytes()).is_some());
        assert!(c.get(peer(1), &0u32.to_be_bytes()).is_none());
        // A reply larger than the bound is not cached at all.
        c.insert(peer(1), b"big".to_vec(), Arc::new(vec![0; 20_000]));
        assert!(c.get(peer(1), b"big").is_none());
    }
}
