//! The I/O thread: owns every AF_XDP socket, moves received frames to the control logic and
//! transmits the frames the control logic hands back, over crossbeam channels.
//!
//! It sleeps in `poll(2)` on the sockets and an eventfd that [`IoHandle::send`] signals, so
//! it costs nothing while there is nothing to do and a queued frame leaves at once.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::xsk::{XskSocket, XskStats};

/// A frame the XDP program punted.
#[derive(Clone, Debug)]
pub struct Punted {
    pub ifindex: u32,
    pub queue: u32,
    pub frame: Vec<u8>,
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
    /// Frames dropped because the control logic's queue was full: counted, never silent.
    pub rx_backlog_drops: AtomicU64,
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
    pub rx_backlog_drops: u64,
    pub tx_frames: u64,
    pub tx_no_socket: u64,
    pub tx_ring_full: u64,
    pub tx_errors: u64,
    pub sockets: Vec<(u32, u32, XskStats)>,
}

pub struct IoHandle {
    pub rx: Receiver<Punted>,
    sender: IoSender,
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

    #[must_use]
    pub fn stats(&self) -> IoStats {
        let c = &self.counters;
        IoStats {
            rx_frames: c.rx_frames.load(Ordering::Relaxed),
            rx_backlog_drops: c.rx_backlog_drops.load(Ordering::Relaxed),
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
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to our eventfd.
    unsafe { libc::write(fd.as_raw_fd(), std::ptr::from_ref(&one).cast(), 8) };
}

/// Capacity of the queues between the I/O thread and the control logic.
pub const QUEUE_DEPTH: usize = 65_536;

/// Starts the I/O thread over `sockets`.
pub fn spawn(sockets: Vec<XskSocket>) -> std::io::Result<IoHandle> {
    // SAFETY: plain eventfd(2).
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    let wake_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
    let (rx_tx, rx_rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
    let (tx_tx, tx_rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(IoCounters::default());
    let socket_stats = Arc::new(std::sync::Mutex::new(Vec::new()));
    let thread = {
        let (wake_fd, stop, counters, socket_stats) = (
            wake_fd.clone(),
            stop.clone(),
            counters.clone(),
            socket_stats.clone(),
        );
        std::thread::Builder::new()
            .name("mediaproxy-io".into())
            .spawn(move || {
                io_loop(
                    sockets,
                    &rx_tx,
                    &tx_rx,
                    &wake_fd,
                    &stop,
                    &counters,
                    &socket_stats,
                )
            })?
    };
    Ok(IoHandle {
        rx: rx_rx,
        sender: IoSender {
            tx: tx_tx,
            wake: wake_fd,
            counters: counters.clone(),
        },
        stop,
        counters,
        socket_stats,
        thread: Some(thread),
    })
}

fn io_loop(
    mut sockets: Vec<XskSocket>,
    to_control: &Sender<Punted>,
    from_control: &Receiver<TxFrame>,
    wake_fd: &OwnedFd,
    stop: &AtomicBool,
    counters: &IoCounters,
    socket_stats: &std::sync::Mutex<Vec<(u32, u32, XskStats)>>,
) {
    let mut pfds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    pfds.push(libc::pollfd {
        fd: wake_fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // A timeout keeps statistics fresh and lets in-flight TX frames complete.
        // SAFETY: pfds is a valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            counters.tx_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut buf = [0u8; 8];
        // SAFETY: drains the eventfd counter into a local buffer.
        unsafe { libc::read(wake_fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };

        let now = Instant::now();
        for s in &mut sockets {
            let (ifindex, queue) = (s.ifindex(), s.queue());
            let got = s.recv(256, |frame| {
                let p = Punted {
                    ifindex,
                    queue,
                    frame: frame.to_vec(),
                    at: now,
                };
                if to_control.try_send(p).is_err() {
                    counters.rx_backlog_drops.fetch_add(1, Ordering::Relaxed);
                }
            });
            counters
                .rx_frames
                .fetch_add(u64::from(got), Ordering::Relaxed);
            s.reclaim();
        }
        while let Ok(tx) = from_control.try_recv() {
            let Some(s) = sockets.iter_mut().find(|s| s.ifindex() == tx.ifindex) else {
                counters.tx_no_socket.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match send_retrying(s, &tx.frame) {
                Ok(true) => counters.tx_frames.fetch_add(1, Ordering::Relaxed),
                Ok(false) => counters.tx_ring_full.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.tx_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        if last_stats.elapsed().as_millis() >= 200 {
            last_stats = Instant::now();
            if let Ok(mut st) = socket_stats.lock() {
                *st = sockets
                    .iter()
                    .map(|s| (s.ifindex(), s.queue(), s.stats()))
                    .collect();
            }
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
