//! The fallback sockets: one UDP socket per address family that receives, through the
//! `sk_lookup` program, every datagram the kernel's stack delivers to one of the relay's flows,
//! whatever its port. Those are datagrams the kernel reassembled from fragments, and what the
//! TC program left to the stack. Each comes with its original destination
//! (`IP_RECVORIGDSTADDR`), which names the flow.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sys;

/// Receive buffer per socket: a burst of reassembled datagrams while userspace is busy.
const RCVBUF: usize = 4 << 20;

pub struct FallbackSocket {
    sock: Socket,
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

impl FallbackSocket {
    /// An unconnected, non-blocking UDP socket of the family, on an ephemeral port of the
    /// wildcard address (`sk_lookup` hands it datagrams for any address and port).
    ///
    /// # Errors
    ///
    /// If the socket cannot be created, configured or bound.
    pub fn bind(v6: bool) -> io::Result<Self> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
        sock.set_recv_buffer_size(RCVBUF)?;
        let any = if v6 {
            sock.set_only_v6(true)?;
            sys::set_int_opt(&sock, libc::IPPROTO_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            sys::set_int_opt(&sock, libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR, 1)?;
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        sock.bind(&SockAddr::from(any))?;
        Ok(Self { sock, v6 })
    }

    /// The next queued datagram, `Ok(None)` when none is queued. A datagram without the
    /// addresses we asked for cannot be attributed to a flow and is skipped.
    ///
    /// # Errors
    ///
    /// The socket's error, other than none being queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
        loop {
            if let Some(d) = self.recv_one(buf)? {
                return Ok(d);
            }
        }
    }

    /// `Ok(None)`: a datagram was consumed but had no addresses; `Ok(Some(None))`: none is
    /// queued.
    #[expect(
        clippy::option_option,
        reason = "three outcomes, each documented above: a datagram, one without addresses, none queued"
    )]
    fn recv_one(&self, buf: &mut [u8]) -> io::Result<Option<Option<Datagram>>> {
        let mut control = [0u8; 128];
        let (n, from, control_len) = match sys::recvmsg(&self.sock, buf, &mut control) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(None)),
            Err(e) => return Err(e),
        };
        let (Some(src), Some(dst)) = (from.as_socket(), orig_dst(&control[..control_len], self.v6))
        else {
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
        self.sock.as_raw_fd()
    }
}

/// The `IP_ORIGDSTADDR`/`IPV6_ORIGDSTADDR` control message of a received datagram.
fn orig_dst(control: &[u8], v6: bool) -> Option<SocketAddr> {
    let (level, kind) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_ORIGDSTADDR)
    } else {
        (libc::IPPROTO_IP, libc::IP_ORIGDSTADDR)
    };
    // The kernel stores a sockaddr of the socket's family there.
    let (_, _, data) = sys::cmsgs(control).find(|&(l, k, _)| l == level && k == kind)?;
    sys::sockaddr_from_bytes(data)
}
