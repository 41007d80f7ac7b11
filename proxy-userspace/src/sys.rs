//! The host calls no crate wraps, in one place, each behind a safe function.
//!
//! Everything else goes through crates: sockets and socket addresses through `socket2`, the
//! common socket options, eventfd, uname, rlimits and effective uid through `rustix`,
//! rtnetlink through `netlink-packet-route` and `netlink-sys`. What is left here:
//!
//! * integer socket options neither has (`IPV6_CHECKSUM`, `IP_RECVORIGDSTADDR`,
//!   `IPV6_RECVORIGDSTADDR`);
//! * `recvmsg(2)` with a control buffer: `socket2`'s takes uninitialised buffers only, and
//!   neither crate decodes `IP_ORIGDSTADDR`; the control messages themselves are encoded and
//!   decoded here in safe code, on the kernel's `struct cmsghdr` layout;
//! * the `SIOCETHTOOL` ioctl, for which no maintained crate exists;
//! * `if_nametoindex(3)`/`if_indextoname(3)` and `poll(2)` over raw descriptors (rustix's
//!   `poll` borrows each descriptor, which the I/O thread cannot do across its loop).
//!
//! The `AF_XDP` rings (`xsk.rs`) are our own code by design and keep their mappings there.

use std::{
    ffi::{CStr, CString},
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd, AsRawFd},
};

use socket2::{Domain, SockAddr, Socket, Type};

/// `setsockopt(2)` of an `int` option.
///
/// # Errors
///
/// The error of `setsockopt(2)`.
#[expect(clippy::cast_possible_truncation, reason = "the size of an i32")]
pub fn set_int_opt(fd: impl AsFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live int and its size is what we pass; the descriptor is borrowed
    // for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `recvmsg(2)` of one datagram into `buf`, with its control messages into `control`:
/// `(bytes received, the sender, bytes of control messages)`. A datagram larger than `buf` is
/// cut, as by `recv(2)`.
///
/// # Errors
///
/// The error of `recvmsg(2)`, `WouldBlock` included on a non-blocking socket.
pub fn recvmsg(
    fd: impl AsFd,
    buf: &mut [u8],
    control: &mut [u8],
) -> io::Result<(usize, SockAddr, usize)> {
    let fd = fd.as_fd().as_raw_fd();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `try_init` hands us zeroed storage of its full size and its length; recvmsg(2)
    // writes a socket address of the socket's family there and sets the length. msghdr is
    // plain data (all-zero is valid), and every pointer in it (the storage, `iov` and the
    // buffers it names, `control`) outlives the call.
    let ((n, control_len), from) = unsafe {
        SockAddr::try_init(|storage, len| {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = storage.cast();
            msg.msg_namelen = *len;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len();
            let n = libc::recvmsg(fd, &raw mut msg, 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            *len = msg.msg_namelen;
            Ok((n.unsigned_abs(), msg.msg_controllen.min(control.len())))
        })
    }?;
    Ok((n, from, control_len))
}

/// The kernel's control message header (`struct cmsghdr`): `cmsg_len` is a
/// `__kernel_size_t`, then `int cmsg_level` and `int cmsg_type`, aligned to `long`.
const CMSG_ALIGN: usize = size_of::<usize>();
const CMSG_HDR: usize = (size_of::<usize>() + 8).next_multiple_of(CMSG_ALIGN);

/// `CMSG_SPACE(len)`: the room one control message of `len` data bytes takes.
#[must_use]
pub const fn cmsg_space(len: usize) -> usize {
    CMSG_HDR + len.next_multiple_of(CMSG_ALIGN)
}

/// One control message (`CMSG_SPACE(data.len())` bytes) of `level` and `kind`.
#[must_use]
pub fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; cmsg_space(data.len())];
    b[..size_of::<usize>()].copy_from_slice(&(CMSG_HDR + data.len()).to_ne_bytes());
    let at = size_of::<usize>();
    b[at..at + 4].copy_from_slice(&level.to_ne_bytes());
    b[at + 4..at + 8].copy_from_slice(&kind.to_ne_bytes());
    b[CMSG_HDR..CMSG_HDR + data.len()].copy_from_slice(data);
    b
}

/// `(level, type, data)` of each control message the kernel wrote; stops at the first whose
/// length does not fit (what `CMSG_NXTHDR` does).
pub fn cmsgs(mut b: &[u8]) -> impl Iterator<Item = (i32, i32, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < CMSG_HDR {
            return None;
        }
        let at = size_of::<usize>();
        let len = usize::from_ne_bytes(b[..at].try_into().ok()?);
        let level = i32::from_ne_bytes(b[at..at + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(b[at + 4..at + 8].try_into().ok()?);
        if len < CMSG_HDR || len > b.len() {
            return None;
        }
        let data = &b[CMSG_HDR..len];
        b = &b[len.next_multiple_of(CMSG_ALIGN).min(b.len())..];
        Some((level, kind, data))
    })
}

/// A `struct sockaddr_in` or `sockaddr_in6` in the kernel's bytes (a control message's
/// data), shorter ones read as if zero-filled.
#[must_use]
pub fn sockaddr_from_bytes(data: &[u8]) -> Option<SocketAddr> {
    let mut s = [0u8; 28];
    let n = data.len().min(s.len());
    s[..n].copy_from_slice(&data[..n]);
    let u32_at = |i: usize| u32::from_ne_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let port = u16::from_be_bytes([s[2], s[3]]);
    match i32::from(u16::from_ne_bytes([s[0], s[1]])) {
        libc::AF_INET => Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(s[4], s[5], s[6], s[7]),
            port,
        ))),
        libc::AF_INET6 => {
            let ip: [u8; 16] = s[8..24].try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                u32_at(4),
                u32_at(24),
            )))
        }
        _ => None,
    }
}

/// `ioctl(SIOCETHTOOL)` on `ifname` with `data` laid out for the ethtool command in its first
/// four bytes; `false` if the device or the driver refused it.
pub fn ethtool(ifname: &str, data: &mut [u8]) -> bool {
    // A datagram socket just for the ioctl, closed on return.
    let Ok(sock) = Socket::new(Domain::IPV4, Type::DGRAM, None) else {
        return false;
    };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    ifr.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    // SAFETY: SIOCETHTOOL reads the command from, and writes its answer into, the buffer
    // `ifr` points at; `data` is sized by the caller for that command and outlives the call.
    unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) >= 0 }
}

/// `if_nametoindex(3)`: 0 if there is no such interface (or the name has a NUL).
#[must_use]
pub fn if_nametoindex(ifname: &str) -> u32 {
    let Ok(c) = CString::new(ifname) else {
        return 0;
    };
    // SAFETY: `c` is NUL-terminated.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// `if_indextoname(3)`.
#[must_use]
pub fn if_indextoname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the name in `buf` is NUL-terminated.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `poll(2)`: how many descriptors have events, waiting at most `timeout_ms`.
///
/// # Errors
///
/// The error of `poll(2)`.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of pollfd of the length we pass; the kernel checks the
    // descriptors themselves.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.unsigned_abs() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_have_the_kernel_layout() {
        assert_eq!(CMSG_HDR, size_of::<libc::cmsghdr>());
        // SAFETY: CMSG_SPACE and CMSG_LEN are pure computations.
        let (space, len) = unsafe { (libc::CMSG_SPACE(12), libc::CMSG_LEN(12)) };
        assert_eq!(cmsg_space(12), space as usize);
        let m = cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &[7; 12]);
        assert_eq!(m.len(), space as usize);
        assert_eq!(
            usize::from_ne_bytes(m[..size_of::<usize>()].try_into().unwrap()),
            len as usize
        );
        let mut two = m.clone();
        two.extend(cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &[9; 20]));
        let got: Vec<_> = cmsgs(&two).collect();
        assert_eq!(
            got,
            vec![
                (libc::IPPROTO_IP, libc::IP_PKTINFO, &[7u8; 12][..]),
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &[9u8; 20][..]),
            ]
        );
        // Truncated: a length past the end stops the walk.
        assert_eq!(cmsgs(&two[..two.len() - 8]).count(), 1);
        assert_eq!(cmsgs(&[0xff; 7]).count(), 0);
    }

    #[test]
    fn socket_addresses_decode_from_kernel_bytes() {
        let v4: SocketAddr = "192.0.2.1:5004".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5006".parse().unwrap();
        for a in [v4, v6] {
            let s = SockAddr::from(a);
            // SAFETY: the storage is valid for `len` bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() as usize) };
            assert_eq!(sockaddr_from_bytes(bytes), Some(a));
        }
        assert_eq!(sockaddr_from_bytes(&[]), None);
    }
}
