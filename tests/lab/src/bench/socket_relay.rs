//! The kernel-socket baseline relay: two UDP sockets and `recvmmsg`/`sendmmsg`, the best a
//! userspace relay on plain sockets does.

use std::net::SocketAddr;

/// The classic userspace relay, as a baseline: one socket in, one out, recvmmsg/sendmmsg in
/// batches of 64. Runs as `mediaproxy bench-socket-relay` in the relay's namespace.
///
/// # Errors
///
/// If a socket cannot be bound or configured, or receiving or sending fails.
pub fn socket_relay(
    listen: SocketAddr,
    from: SocketAddr,
    to: SocketAddr,
    back_to: SocketAddr,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let a = std::net::UdpSocket::bind(listen)?;
    let b = std::net::UdpSocket::bind(from)?;
    for s in [&a, &b] {
        // A tuned relay takes a large receive buffer (SO_RCVBUFFORCE: root may exceed
        // rmem_max).
        let size: libc::c_int = 4 << 20;
        // SAFETY: valid int option.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                4,
            )
        };
    }
    // The reverse direction, on its own thread (both on the relay's core).
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    std::thread::spawn(move || relay_loop(&b2, &a2, back_to));
    relay_loop(&a, &b, to);
    Ok(())
}

/// Moves datagrams from `rx` to `to` through `tx` in batches of 64 (recvmmsg/sendmmsg).
#[expect(
    clippy::cast_possible_truncation,
    reason = "socket address sizes and datagram counts fit their C fields"
)]
#[expect(clippy::cast_sign_loss, reason = "n is positive here")]
pub(super) fn relay_loop(rx: &std::net::UdpSocket, tx: &std::net::UdpSocket, to: SocketAddr) {
    use std::os::fd::AsRawFd as _;
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    loop {
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; each points at its own iovec.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = std::ptr::from_mut(v);
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs describes BATCH valid buffers.
        let n = unsafe {
            libc::recvmmsg(
                rx.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        let (addr, len) = sockaddr(to);
        let mut out_iov: Vec<libc::iovec> = (0..n)
            .map(|i| libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: msgs[i].msg_len as usize,
            })
            .collect();
        let mut out: Vec<libc::mmsghdr> = out_iov
            .iter_mut()
            .map(|v| {
                // SAFETY: as above.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = std::ptr::from_mut(v);
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_name = std::ptr::from_ref(&addr).cast_mut().cast();
                m.msg_hdr.msg_namelen = len;
                m
            })
            .collect();
        // SAFETY: out describes n valid buffers and a valid destination.
        unsafe { libc::sendmmsg(tx.as_raw_fd(), out.as_mut_ptr(), n as u32, 0) };
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "socket address sizes and datagram counts fit their C fields"
)]
pub(super) fn sockaddr(sa: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data and large enough for either family.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut st).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut st).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}
