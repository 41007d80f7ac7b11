//! The fallback sockets: one UDP socket per address family that receives, through the
//! sk_lookup program, every datagram the kernel's stack delivers to one of the relay's flows,
//! whatever its port. Those are datagrams the kernel reassembled from fragments, and what the
//! TC program left to the stack. Each comes with its original destination
//! (`IP_RECVORIGDSTADDR`), which names the flow.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Receive buffer per socket: a burst of reassembled datagrams while userspace is busy.
const RCVBUF: i32 = 4 << 20;

pub struct FallbackSocket {
    fd: OwnedFd,
    v6: bool,
}

/// One received datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddr,
    /// The relay endpoint it was sent to.
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

fn setsockopt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: an int option on our own socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl FallbackSocket {
    /// An unconnected, non-blocking UDP socket of the family, on an ephemeral port of the
    /// wildcard address (sk_lookup hands it datagrams for any address and port).
    pub fn bind(v6: bool) -> io::Result<Self> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_UDP,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF)?;
        let bound = if v6 {
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            };
            // SAFETY: a valid sockaddr_in6.
            unsafe {
                libc::bind(
                    fd,
                    std::ptr::from_ref(&sa).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        } else {
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR, 1)?;
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: 0 },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid sockaddr_in.
            unsafe {
                libc::bind(
                    fd,
                    std::ptr::from_ref(&sa).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            }
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd: owned, v6 })
    }

    /// The next queued datagram, `Ok(None)` when none is queued. A datagram without the
    /// addresses we asked for cannot be attributed to a flow and is skipped.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
        loop {
            if let Some(d) = self.recv_one(buf)? {
                return Ok(d);
            }
        }
    }

    /// `Ok(None)`: a datagram was consumed but had no addresses; `Ok(Some(None))`: none is
    /// queued.
    fn recv_one(&self, buf: &mut [u8]) -> io::Result<Option<Option<Datagram>>> {
        // SAFETY: sockaddr_storage is plain data.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; its pointers outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = std::ptr::from_mut(&mut name).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: a valid msghdr on our own socket.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(Some(None));
            }
            return Err(e);
        }
        let n = n as usize;
        let (Some(src), Some(dst)) = (sockaddr(&name), orig_dst(&msg, self.v6)) else {
            return Ok(None);
        };
        // A datagram larger than the buffer was cut (MSG_TRUNC): the caller sees the cut.
        Ok(Some(Some(Datagram {
            src,
            dst,
            payload: buf[..n.min(buf.len())].to_vec(),
        })))
    }
}

impl AsRawFd for FallbackSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The `IP_ORIGDSTADDR`/`IPV6_ORIGDSTADDR` control message of a received datagram.
fn orig_dst(msg: &libc::msghdr, v6: bool) -> Option<SocketAddr> {
    let (level, kind) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_ORIGDSTADDR)
    } else {
        (libc::IPPROTO_IP, libc::IP_ORIGDSTADDR)
    };
    // SAFETY: walks the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut h = libc::CMSG_FIRSTHDR(msg);
        while !h.is_null() {
            if (*h).cmsg_level == level && (*h).cmsg_type == kind {
                // SAFETY: the kernel stores a sockaddr of the socket's family there.
                let mut s: libc::sockaddr_storage = std::mem::zeroed();
                let len = ((*h).cmsg_len as usize)
                    .saturating_sub(libc::CMSG_LEN(0) as usize)
                    .min(size_of::<libc::sockaddr_storage>());
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(h),
                    std::ptr::from_mut(&mut s).cast::<u8>(),
                    len,
                );
                return sockaddr(&s);
            }
            h = libc::CMSG_NXTHDR(msg, h);
        }
    }
    None
}
