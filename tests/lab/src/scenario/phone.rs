//! Phones: they send RTP toward the relay and count what comes back, and what a stream
//! delivered.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{rtp::RtpHeader, testbed::Netns};

/// One direction of RTP between two phones: what was sent and what arrived.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    pub first_sent: Option<Instant>,
    pub first_received: Option<Instant>,
    /// Distinct sequence numbers received (duplicates do not count twice).
    pub distinct: u64,
    /// Packets that arrived from somewhere other than the expected relay address.
    pub wrong_source: u64,
    /// When each packet arrived, in order.
    pub arrivals: Vec<Instant>,
    /// Payload bytes of the largest packet that arrived.
    pub largest: usize,
}

impl StreamReport {
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.distinct)
    }

    /// Time from the first packet sent to the first delivered.
    #[must_use]
    pub fn setup_delay(&self) -> Option<Duration> {
        Some(
            self.first_received?
                .saturating_duration_since(self.first_sent?),
        )
    }
}

/// A phone: a UDP socket in its namespace that sends RTP every 20 ms to the relay and counts
/// what comes back.
pub struct Phone {
    sock: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    report_rx: Arc<Mutex<StreamReport>>,
    sent: Arc<Mutex<(u64, Option<Instant>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Phone {
    /// # Errors
    ///
    /// If the socket cannot be bound in `ns` or configured.
    pub fn bind(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let sock = ns.enter(move || UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Self {
            sock: Arc::new(sock),
            stop: Arc::new(AtomicBool::new(false)),
            report_rx: Arc::new(Mutex::new(StreamReport::default())),
            sent: Arc::new(Mutex::new((0, None))),
            threads: Vec::new(),
        })
    }

    /// Starts sending `count` G.711 packets, 20 ms apart, to `to`, and receiving; packets from
    /// any source but `expect_from` count as wrong.
    pub fn start(&mut self, to: SocketAddr, expect_from: SocketAddr, ssrc: u32, count: u16) {
        self.start_sized(to, expect_from, ssrc, count, 160);
    }

    /// As [`Phone::start`], with `payload` bytes after each RTP header.
    ///
    /// # Panics
    ///
    /// If one of the phone's threads panicked holding its counters (a poisoned lock).
    pub fn start_sized(
        &mut self,
        to: SocketAddr,
        expect_from: SocketAddr,
        ssrc: u32,
        count: u16,
        payload: usize,
    ) {
        let (sock, stop, sent) = (self.sock.clone(), self.stop.clone(), self.sent.clone());
        self.threads.push(std::thread::spawn(move || {
            let t0 = Instant::now();
            for n in 0..count {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = t0 + Duration::from_millis(20) * u32::from(n);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if sock
                    .send_to(&RtpHeader::packet(ssrc, n, payload), to)
                    .is_ok()
                {
                    let mut s = sent.lock().expect("not poisoned");
                    s.0 += 1;
                    s.1.get_or_insert_with(Instant::now);
                }
            }
        }));
        let (sock, stop, report) = (self.sock.clone(), self.stop.clone(), self.report_rx.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let now = Instant::now();
                let mut r = report.lock().expect("not poisoned");
                r.received += 1;
                r.first_received.get_or_insert(now);
                r.arrivals.push(now);
                r.largest = r.largest.max(n.saturating_sub(RtpHeader::LEN));
                if from != expect_from {
                    r.wrong_source += 1;
                }
                if let Some(h) = RtpHeader::parse(&buf[..n])
                    && seen.insert(h.seq)
                {
                    r.distinct += 1;
                }
            }
        }));
    }

    /// What the far phone received from this one is in *its* report; this is what arrived
    /// here, combined with what was sent from here.
    ///
    /// # Panics
    ///
    /// If one of the phone's threads panicked holding its counters (a poisoned lock).
    #[must_use]
    pub fn received(&self) -> StreamReport {
        self.report_rx.lock().expect("not poisoned").clone()
    }

    /// How many packets were sent from here, and when the first was.
    ///
    /// # Panics
    ///
    /// If one of the phone's threads panicked holding its counters (a poisoned lock).
    #[must_use]
    pub fn sent(&self) -> (u64, Option<Instant>) {
        *self.sent.lock().expect("not poisoned")
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The report of the stream `from` → `to`.
#[must_use]
pub fn stream(from: &Phone, to: &Phone) -> StreamReport {
    let (sent, first_sent) = from.sent();
    StreamReport {
        sent,
        first_sent,
        ..to.received()
    }
}
