//! The I/O thread: owns every `AF_XDP` socket and the fallback sockets, moves what they receive
//! to the control logic and transmits the frames the control logic hands back, over crossbeam
//! channels.
//!
//! It sleeps in `poll(2)` on the sockets and an eventfd that [`IoHandle::send`] (and every
//! other request) signals, so it costs nothing while there is nothing to do and a queued
//! frame leaves at once. Sockets come and go while it runs: an interface that is deleted and
//! created again gets new ones.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use proxy_common::Endpoint;

use crate::{
    fallback::FallbackSocket,
    xsk::{XskSocket, XskStats},
};

/// What reached userspace: a frame the XDP program punted, or a datagram the kernel's stack
/// delivered to the fallback socket.
#[derive(Clone, Debug)]
pub enum Packet {
    Frame(Vec<u8>),
    Datagram {
        src: Endpoint,
        dst: Endpoint,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Punted {
    /// The interface and queue of a punted frame; 0 for a datagram.
    pub ifindex: u32,
    pub queue: u32,
    pub packet: Packet,
    pub at: Instant,
}

/// A complete Ethernet frame to send out of `ifindex`.
#[derive(Clone, Debug)]
pub struct TxFrame {
    pub ifindex: u32,
    pub frame: Vec<u8>,
}

#[derive(Default, Debug)]
pub struct IoCounters {
    pub rx_frames: AtomicU64,
    pub rx_datagrams: AtomicU64,
    /// Frames dropped because the control logic's queue was full: counted, never silent.
    pub rx_backlog_drops: AtomicU64,
    /// Of those, probe-port frames (the priority queue): control work that was lost.
    pub rx_priority_drops: AtomicU64,
    pub tx_frames: AtomicU64,
    /// TX requests for an interface without a socket.
    pub tx_no_socket: AtomicU64,
    /// TX frames dropped because the socket's TX ring stayed full.
    pub tx_ring_full: AtomicU64,
    pub tx_errors: AtomicU64,
}

/// Snapshot of [`IoCounters`] plus each socket's own statistics.
#[derive(Clone, Debug, Default)]
pub struct IoStats {
    pub rx_frames: u64,
    pub rx_datagrams: u64,
    pub rx_backlog_drops: u64,
    pub rx_priority_drops: u64,
    pub tx_frames: u64,
    pub tx_no_socket: u64,
    pub tx_ring_full: u64,
    pub tx_errors: u64,
    pub sockets: Vec<(u32, u32, XskStats)>,
}

/// Changes to the set of sockets the thread serves.
enum Request {
    Add(Vec<XskSocket>),
    /// The interface is gone (or about to get new sockets): close its sockets.
    Remove(u32),
}

pub struct IoHandle {
    pub rx: Receiver<Punted>,
    /// Probe-port frames: control work, kept apart so that media punts cannot crowd them
    /// out of the queue.
    pub priority: Receiver<Punted>,
    sender: IoSender,
    requests: Sender<Request>,
    stop: Arc<AtomicBool>,
    counters: Arc<IoCounters>,
    socket_stats: Arc<std::sync::Mutex<Vec<(u32, u32, XskStats)>>>,
    thread: Option<JoinHandle<()>>,
}

impl IoHandle {
    /// Queues a frame for transmission. Never blocks: a full queue drops and counts.
    pub fn send(&self, frame: TxFrame) {
        self.sender.send(frame);
    }

    /// A sender that other threads can use to transmit.
    #[must_use]
    pub fn sender(&self) -> IoSender {
        self.sender.clone()
    }

    /// Serves these sockets from now on.
    pub fn add_sockets(&self, sockets: Vec<XskSocket>) {
        if self.requests.send(Request::Add(sockets)).is_ok() {
            wake(&self.sender.wake);
        }
    }

    /// Closes the sockets of an interface.
    pub fn remove_interface(&self, ifindex: u32) {
        if self.requests.send(Request::Remove(ifindex)).is_ok() {
            wake(&self.sender.wake);
        }
    }

    #[must_use]
    pub fn stats(&self) -> IoStats {
        let c = &self.counters;
        IoStats {
            rx_frames: c.rx_frames.load(Ordering::Relaxed),
            rx_datagrams: c.rx_datagrams.load(Ordering::Relaxed),
            rx_backlog_drops: c.rx_backlog_drops.load(Ordering::Relaxed),
            rx_priority_drops: c.rx_priority_drops.load(Ordering::Relaxed),
            tx_frames: c.tx_frames.load(Ordering::Relaxed),
            tx_no_socket: c.tx_no_socket.load(Ordering::Relaxed),
            tx_ring_full: c.tx_ring_full.load(Ordering::Relaxed),
            tx_errors: c.tx_errors.load(Ordering::Relaxed),
            sockets: self
                .socket_stats
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
        }
    }
}

impl Drop for IoHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        wake(&self.sender.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cloneable transmit side of the I/O thread.
#[derive(Clone)]
pub struct IoSender {
    tx: Sender<TxFrame>,
    wake: Arc<OwnedFd>,
    counters: Arc<IoCounters>,
}

impl IoSender {
    /// Queues a frame for transmission. Never blocks: a full queue drops and counts.
    pub fn send(&self, frame: TxFrame) {
        match self.tx.try_send(frame) {
            Ok(()) => wake(&self.wake),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.tx_ring_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn wake(fd: &OwnedFd) {
    // Adds 1 to the eventfd counter; a full counter already wakes the thread.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Capacity of the queues between the I/O thread and the control logic.
pub const QUEUE_DEPTH: usize = 65_536;
/// Frames taken from one socket per wake-up, so that one busy queue cannot starve the others.
const RX_BATCH: u32 = 256;
/// The poll timeout: keeps statistics fresh and lets in-flight TX frames complete.
const POLL_MS: i32 = 100;
/// How often the per-socket statistics are copied out for `statistics`.
const STATS_EVERY: Duration = Duration::from_millis(200);
/// Largest datagram the fallback sockets take (the largest UDP payload).
const MAX_DATAGRAM: usize = 65_535;

/// Depth of the probe-port queue.
const PRIORITY_DEPTH: usize = 4096;

/// The UDP destination port of an Ethernet frame, by the kernel program's rules, for sorting
/// punts into the probe queue.
fn udp_dst_port(f: &[u8]) -> Option<u16> {
    proxy_common::packet::parse(f).ok().map(|p| p.dst.port())
}

/// Starts the I/O thread over `sockets` and the fallback sockets; frames to `probe_port`
/// (0: none) go to the priority queue.
///
/// # Errors
///
/// If the eventfd or the thread cannot be created.
pub fn spawn(
    sockets: Vec<XskSocket>,
    fallback: Vec<FallbackSocket>,
    probe_port: u16,
) -> std::io::Result<IoHandle> {
    use rustix::event::{EventfdFlags, eventfd};
    let wake_fd = Arc::new(eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?);
    let (rx_tx, rx_rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
    let (prio_tx, prio_rx) = crossbeam_channel::bounded(PRIORITY_DEPTH);
    let (tx_tx, tx_rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
    let (req_tx, req_rx) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(IoCounters::default());
    let socket_stats = Arc::new(std::sync::Mutex::new(Vec::new()));
    let thread = {
        let io = IoLoop {
            sockets,
            fallback,
            to_control: rx_tx,
            priority: prio_tx,
            probe_port,
            from_control: tx_rx,
            requests: req_rx,
            wake_fd: wake_fd.clone(),
            stop: stop.clone(),
            counters: counters.clone(),
            socket_stats: socket_stats.clone(),
        };
        std::thread::Builder::new()
            .name("mediaproxy-io".into())
            .spawn(move || io.run())?
    };
    Ok(IoHandle {
        rx: rx_rx,
        priority: prio_rx,
        sender: IoSender {
            tx: tx_tx,
            wake: wake_fd,
            counters: counters.clone(),
        },
        requests: req_tx,
        stop,
        counters,
        socket_stats,
        thread: Some(thread),
    })
}

struct IoLoop {
    sockets: Vec<XskSocket>,
    fallback: Vec<FallbackSocket>,
    to_control: Sender<Punted>,
    priority: Sender<Punted>,
    probe_port: u16,
    from_control: Receiver<TxFrame>,
    requests: Receiver<Request>,
    wake_fd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    counters: Arc<IoCounters>,
    socket_stats: Arc<std::sync::Mutex<Vec<(u32, u32, XskStats)>>>,
}

impl IoLoop {
    fn pollfds(&self) -> Vec<libc::pollfd> {
        let fd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.sockets
            .iter()
            .map(|s| fd(s.as_raw_fd()))
            .chain(self.fallback.iter().map(|s| fd(s.as_raw_fd())))
            .chain(std::iter::once(fd(self.wake_fd.as_raw_fd())))
            .collect()
    }

    fn run(mut self) {
        let mut pfds = self.pollfds();
        let mut last_stats = Instant::now();
        let mut dgram = vec![0u8; MAX_DATAGRAM];
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = crate::sys::poll(&mut pfds, POLL_MS)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
            }
            let mut buf = [0u8; 8];
            // Drains the eventfd counter (nothing to drain: EAGAIN).
            let _ = rustix::io::read(&*self.wake_fd, &mut buf);

            let mut changed = false;
            while let Ok(r) = self.requests.try_recv() {
                changed = true;
                match r {
                    Request::Add(s) => self.sockets.extend(s),
                    Request::Remove(ifindex) => self.sockets.retain(|s| s.ifindex() != ifindex),
                }
            }
            if changed {
                pfds = self.pollfds();
            }

            let now = Instant::now();
            self.receive_frames(now);
            self.receive_datagrams(now, &mut dgram);
            self.transmit();
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                if let Ok(mut st) = self.socket_stats.lock() {
                    *st = self
                        .sockets
                        .iter()
                        .map(|s| (s.ifindex(), s.queue(), s.stats()))
                        .collect();
                }
            }
        }
    }

    fn deliver(&self, p: Punted) {
        let probe = self.probe_port != 0
            && match &p.packet {
                Packet::Frame(f) => udp_dst_port(f) == Some(self.probe_port),
                Packet::Datagram { dst, .. } => dst.port() == self.probe_port,
            };
        let queue = if probe {
            &self.priority
        } else {
            &self.to_control
        };
        if queue.try_send(p).is_err() {
            self.counters
                .rx_backlog_drops
                .fetch_add(1, Ordering::Relaxed);
            if probe {
                self.counters
                    .rx_priority_drops
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn receive_frames(&mut self, now: Instant) {
        let mut got_total = 0;
        let mut punted = Vec::new();
        for s in &mut self.sockets {
            let (ifindex, queue) = (s.ifindex(), s.queue());
            got_total += s.recv(RX_BATCH, |frame| {
                punted.push(Punted {
                    ifindex,
                    queue,
                    packet: Packet::Frame(frame.to_vec()),
                    at: now,
                });
            });
            s.reclaim();
        }
        for p in punted {
            self.deliver(p);
        }
        self.counters
            .rx_frames
            .fetch_add(u64::from(got_total), Ordering::Relaxed);
    }

    fn receive_datagrams(&self, now: Instant, buf: &mut [u8]) {
        for s in &self.fallback {
            for _ in 0..RX_BATCH {
                let Ok(Some(d)) = s.recv(buf) else { break };
                self.counters.rx_datagrams.fetch_add(1, Ordering::Relaxed);
                self.deliver(Punted {
                    ifindex: 0,
                    queue: 0,
                    packet: Packet::Datagram {
                        src: Endpoint::from(d.src),
                        dst: Endpoint::from(d.dst),
                        payload: d.payload,
                    },
                    at: now,
                });
            }
        }
    }

    fn transmit(&mut self) {
        while let Ok(tx) = self.from_control.try_recv() {
            let Some(s) = self.sockets.iter_mut().find(|s| s.ifindex() == tx.ifindex) else {
                self.counters.tx_no_socket.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match send_retrying(s, &tx.frame) {
                Ok(true) => self.counters.tx_frames.fetch_add(1, Ordering::Relaxed),
                Ok(false) => self.counters.tx_ring_full.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.counters.tx_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Copy-mode TX completes inside the kick, so a full ring frees up after a reclaim; try a
/// few times before giving up on the frame.
fn send_retrying(s: &mut XskSocket, frame: &[u8]) -> std::io::Result<bool> {
    for _ in 0..8 {
        if s.send(frame)? {
            return Ok(true);
        }
        s.reclaim();
        std::thread::yield_now();
    }
    Ok(false)
}
