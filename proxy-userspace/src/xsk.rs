//! `AF_XDP` sockets, written directly on the kernel ABI (`linux/if_xdp.h`): the socket, its
//! options and its address through `rustix`, the UMEM and the rings mapped and driven here.
//!
//! Why not an `AF_XDP` crate: the candidates either pull in libbpf/libxdp (C, and libxdp wants
//! a mounted bpffs) or are passively maintained under a copyleft licence. What the relay needs
//! is small: one socket per rx queue, each with its own UMEM, fill, completion, RX and TX
//! rings, receive by copy-out and send by copy-in. That is this module, about 400 lines.
//!
//! Each socket's UMEM is split in two: the first half of the frames cycles through the fill
//! and RX rings, the second half through the TX and completion rings. Frames never move
//! between the halves, so the two sides need no shared bookkeeping.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use rustix::{
    io::Errno,
    net::{
        AddressFamily, SendFlags, SocketFlags, SocketType, sockopt,
        xdp::{SocketAddrXdp, SocketAddrXdpFlags, XdpRingOffset, XdpUmemReg, XdpUmemRegFlags},
    },
};

#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// Frames in the UMEM (a power of two); half for receive, half for transmit.
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Entries per ring (a power of two).
    pub ring_size: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frames: 4096,
            frame_size: 2048,
            ring_size: 2048,
        }
    }
}

/// An anonymous shared mapping, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: anonymous mapping; no file descriptor or existing memory involved.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::checked(p, len)
    }

    #[expect(
        clippy::cast_possible_wrap,
        reason = "the kernel's page offsets for the rings are small constants"
    )]
    fn ring(fd: impl AsFd, len: usize, pgoff: u64) -> io::Result<Self> {
        // SAFETY: maps a ring the kernel created for this socket at its documented offset.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_fd().as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        Self::checked(p, len)
    }

    fn checked(p: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory; access is synchronised by the owner (&mut self).
unsafe impl Send for Mmap {}

/// One single-producer/single-consumer ring shared with the kernel.
struct Ring<T> {
    _map: Mmap,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    size: u32,
    /// Our copy of the index we advance, and the last seen value of the one the kernel does.
    local: u32,
    cached_remote: u32,
}

// SAFETY: see Mmap; the ring is used from one thread at a time through &mut.
unsafe impl<T> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ring offsets and sizes the kernel gives for a mapping of this process's address space"
    )]
    fn map(fd: impl AsFd, off: &XdpRingOffset, size: u32, pgoff: u64) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * size_of::<T>();
        let map = Mmap::ring(fd, len, pgoff)?;
        let base = map.ptr.as_ptr();
        // SAFETY: the kernel guarantees these offsets lie inside the mapping it sized.
        let (producer, consumer, descs) = unsafe {
            (
                NonNull::new_unchecked(base.add(off.producer as usize).cast()),
                NonNull::new_unchecked(base.add(off.consumer as usize).cast()),
                NonNull::new_unchecked(base.add(off.desc as usize).cast()),
            )
        };
        Ok(Self {
            _map: map,
            producer,
            consumer,
            descs,
            mask: size - 1,
            size,
            local: 0,
            cached_remote: 0,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping; the kernel accesses it atomically too.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { self.consumer.as_ref() }
    }

    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: masked index is within the ring.
        unsafe { self.descs.as_ptr().add((idx & self.mask) as usize) }
    }

    // --- as producer (fill, TX): `local` is our producer index, `cached_remote` the consumer.

    fn free(&mut self) -> u32 {
        let free = self.size - self.local.wrapping_sub(self.cached_remote);
        if free > 0 {
            return free;
        }
        self.cached_remote = self.consumer().load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.cached_remote)
    }

    fn push(&mut self, item: T) {
        // SAFETY: the caller checked free() > 0, so the slot is ours.
        unsafe { self.slot(self.local).write(item) };
        self.local = self.local.wrapping_add(1);
    }

    fn publish(&self) {
        self.producer().store(self.local, Ordering::Release);
    }

    // --- as consumer (RX, completion): `local` is our consumer index, `cached_remote` the
    // producer.

    fn available(&mut self) -> u32 {
        self.cached_remote = self.producer().load(Ordering::Acquire);
        self.cached_remote.wrapping_sub(self.local)
    }

    fn pop(&mut self) -> T {
        // SAFETY: the caller checked available() > 0.
        let item = unsafe { self.slot(self.local).read() };
        self.local = self.local.wrapping_add(1);
        item
    }

    fn release(&self) {
        self.consumer().store(self.local, Ordering::Release);
    }
}

/// Counters of one socket, ours and the kernel's (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default)]
pub struct XskStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames we could not send because every TX frame was in flight.
    pub tx_busy: u64,
    pub kernel_rx_dropped: u64,
    pub kernel_rx_ring_full: u64,
    pub kernel_fill_ring_empty: u64,
    pub kernel_tx_invalid: u64,
}

pub struct XskSocket {
    fd: OwnedFd,
    umem: Mmap,
    cfg: XskConfig,
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    tx_free: Vec<u64>,
    ifindex: u32,
    queue: u32,
    stats: XskStats,
}

impl XskSocket {
    /// Creates a socket bound to queue `queue` of interface `ifindex` in this thread's network
    /// namespace, with its fill ring full.
    ///
    /// # Errors
    ///
    /// If the configuration is invalid, or creating, mapping or binding the socket fails.
    pub fn bind(ifindex: u32, queue: u32, cfg: XskConfig) -> io::Result<Self> {
        if !cfg.frames.is_power_of_two() || !cfg.ring_size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frames and ring_size must be powers of two",
            ));
        }
        let fd = rustix::net::socket_with(
            AddressFamily::XDP,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("socket(AF_XDP): {e}"))
        })?;
        let umem = Mmap::anonymous(cfg.frames as usize * cfg.frame_size as usize)?;
        let reg = XdpUmemReg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: cfg.frame_size,
            headroom: 0,
            flags: XdpUmemRegFlags::empty(),
            tx_metadata_len: 0,
        };
        sockopt::set_xdp_umem_reg(&fd, reg).map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("XDP_UMEM_REG: {e}"))
        })?;
        sockopt::set_xdp_umem_fill_ring_size(&fd, cfg.ring_size)?;
        sockopt::set_xdp_umem_completion_ring_size(&fd, cfg.ring_size)?;
        sockopt::set_xdp_rx_ring_size(&fd, cfg.ring_size)?;
        sockopt::set_xdp_tx_ring_size(&fd, cfg.ring_size)?;
        let off = sockopt::xdp_mmap_offsets(&fd)?;
        let fill = Ring::map(&fd, &off.fr, cfg.ring_size, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let comp = Ring::map(
            &fd,
            &off.cr,
            cfg.ring_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = Ring::map(&fd, &off.rx, cfg.ring_size, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx = Ring::map(&fd, &off.tx, cfg.ring_size, libc::XDP_PGOFF_TX_RING as u64)?;

        let sa = SocketAddrXdp::new(SocketAddrXdpFlags::empty(), ifindex, queue);
        rustix::net::bind(&fd, &sa).map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(
                e.kind(),
                format!("binding AF_XDP to ifindex {ifindex} queue {queue}: {e}"),
            )
        })?;

        let half = cfg.frames / 2;
        let mut sock = Self {
            fd,
            umem,
            cfg,
            fill,
            comp,
            rx,
            tx,
            tx_free: (half..cfg.frames)
                .map(|i| u64::from(i) * u64::from(cfg.frame_size))
                .collect(),
            ifindex,
            queue,
            stats: XskStats::default(),
        };
        let n = half.min(cfg.ring_size);
        for i in 0..n {
            sock.fill.push(u64::from(i) * u64::from(cfg.frame_size));
        }
        sock.fill.publish();
        Ok(sock)
    }

    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    #[must_use]
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Hands each received frame to `f` (the slice is only valid during the call) and gives
    /// the frames back to the kernel. Returns how many were received.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "UMEM addresses are offsets into this process's mapping, and frames are at most a UMEM frame long"
    )]
    pub fn recv(&mut self, max: u32, mut f: impl FnMut(&[u8])) -> u32 {
        let n = self.rx.available().min(max);
        for _ in 0..n {
            let desc = self.rx.pop();
            let start = desc.addr as usize;
            let end = start + desc.len as usize;
            if end <= self.umem.len {
                // SAFETY: in bounds of the UMEM, which the kernel wrote before publishing.
                let frame = unsafe {
                    std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), end - start)
                };
                f(frame);
            }
            // Aligned mode: the kernel takes the chunk's base address back.
            let chunk = desc.addr & !(u64::from(self.cfg.frame_size) - 1);
            // Each received frame came off the fill ring, so there is room to return it.
            if self.fill.free() > 0 {
                self.fill.push(chunk);
            }
        }
        if n > 0 {
            self.rx.release();
            self.fill.publish();
            self.stats.rx_frames += u64::from(n);
        }
        n
    }

    /// Queues one frame for transmission and kicks the kernel. `Ok(false)` means every TX
    /// frame is in flight; the caller may retry after [`XskSocket::reclaim`].
    ///
    /// # Errors
    ///
    /// If the frame is larger than a UMEM frame, or the kernel's kick fails.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "UMEM addresses are offsets into this process's mapping, and frames are at most a UMEM frame long"
    )]
    pub fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        if frame.len() > self.cfg.frame_size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame larger than a UMEM frame",
            ));
        }
        self.reclaim();
        let Some(addr) = self.tx_free.pop() else {
            self.stats.tx_busy += 1;
            return Ok(false);
        };
        if self.tx.free() == 0 {
            self.tx_free.push(addr);
            self.stats.tx_busy += 1;
            return Ok(false);
        }
        // SAFETY: addr is a TX frame we own (not in any ring); frame fits (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                self.umem.ptr.as_ptr().add(addr as usize),
                frame.len(),
            );
        }
        self.tx.push(libc::xdp_desc {
            addr,
            len: frame.len() as u32,
            options: 0,
        });
        self.tx.publish();
        self.stats.tx_frames += 1;
        self.kick()?;
        Ok(true)
    }

    /// Asks the kernel to process the TX ring (copy mode sends synchronously here).
    fn kick(&self) -> io::Result<()> {
        // A zero-length send is the documented TX wake-up for AF_XDP.
        match rustix::net::send(&self.fd, &[], SendFlags::DONTWAIT) {
            // The kernel is busy or the ring is being drained: the frames stay queued.
            Ok(_) | Err(Errno::AGAIN | Errno::BUSY | Errno::NOBUFS | Errno::NETDOWN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes back transmitted frames from the completion ring.
    pub fn reclaim(&mut self) {
        let n = self.comp.available();
        for _ in 0..n {
            let addr = self.comp.pop();
            self.tx_free
                .push(addr & !(u64::from(self.cfg.frame_size) - 1));
        }
        if n > 0 {
            self.comp.release();
        }
    }

    /// Frames handed to the kernel for sending and not yet completed.
    #[must_use]
    pub fn tx_in_flight(&self) -> usize {
        (self.cfg.frames / 2) as usize - self.tx_free.len()
    }

    #[must_use]
    pub fn stats(&self) -> XskStats {
        let mut s = self.stats;
        if let Ok(k) = sockopt::xdp_statistics(&self.fd) {
            s.kernel_rx_dropped = k.rx_dropped;
            s.kernel_rx_ring_full = k.rx_ring_full.unwrap_or(0);
            s.kernel_fill_ring_empty = k.rx_fill_ring_empty_descs.unwrap_or(0);
            s.kernel_tx_invalid = k.tx_invalid_descs;
        }
        s
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Number of rx queues of an interface, which each need a socket: the larger of its RX and
/// combined channel counts (`ETHTOOL_GCHANNELS`), or 1 if the driver does not say. Asked of the
/// kernel rather than read from /sys, which may show another network namespace.
#[must_use]
pub fn rx_queues(ifname: &str) -> u32 {
    // struct ethtool_channels { u32 cmd, max_rx, max_tx, max_other, max_combined, rx_count,
    // tx_count, other_count, combined_count; }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut ch = [0u8; 36];
    ch[..4].copy_from_slice(&ETHTOOL_GCHANNELS.to_ne_bytes());
    if !crate::sys::ethtool(ifname, &mut ch) {
        return 1;
    }
    let field =
        |i: usize| u32::from_ne_bytes([ch[i * 4], ch[i * 4 + 1], ch[i * 4 + 2], ch[i * 4 + 3]]);
    let (rx_count, combined_count) = (field(5), field(8));
    rx_count.max(combined_count).max(1)
}
