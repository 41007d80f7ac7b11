//! Where a packet toward a destination leaves: the route and the neighbour's MAC address,
//! from the kernel over rtnetlink, so that XDP and `AF_XDP` can send complete Ethernet frames
//! without a per-packet FIB lookup; and [`KernelPath`], the kernel's own stack, for what they
//! cannot send: a neighbour not resolved yet (the stack resolves it and queues the packet),
//! or a packet larger than the egress MTU (the stack fragments it, as a socket relay's would
//! be).

use std::{
    collections::HashMap,
    io::{self, IoSlice},
    net::{IpAddr, SocketAddr, SocketAddrV6},
};

use proxy_common::{Endpoint, csum};
use rustix::net::sockopt::{self, Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery};
use socket2::{Domain, MsgHdr, Protocol, SockAddr, SockFilter, Socket, Type};

use crate::{
    netlink::{Link, Mac, Route, Rtnl},
    sys,
};

/// A resolved next hop: enough to build the Ethernet frame and to know its size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// The largest IP packet the egress takes: the route's MTU if it has one, else the
    /// link's.
    pub mtu: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Ready {
        hop: NextHop,
        neighbour: IpAddr,
    },
    /// Routed out of `ifindex` via `neighbour`, whose MAC is not known yet.
    Unresolved {
        ifindex: u32,
        neighbour: IpAddr,
    },
    /// No unicast route: unreachable, or an address that is local, broadcast, multicast or
    /// anycast. Nothing is sent there.
    Unreachable,
}

impl Resolution {
    /// The neighbour entry this resolution depends on.
    #[must_use]
    pub fn neighbour(&self) -> Option<(u32, IpAddr)> {
        match *self {
            Resolution::Ready { hop, neighbour } => Some((hop.ifindex, neighbour)),
            Resolution::Unresolved { ifindex, neighbour } => Some((ifindex, neighbour)),
            Resolution::Unreachable => None,
        }
    }

    #[must_use]
    pub fn ready(&self) -> Option<NextHop> {
        match *self {
            Resolution::Ready { hop, .. } => Some(hop),
            _ => None,
        }
    }
}

/// Looks routes, neighbours and links up; links are cached until [`Resolver::forget_link`].
pub struct Resolver {
    rtnl: Rtnl,
    links: HashMap<u32, Link>,
}

impl Resolver {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    ///
    /// # Errors
    ///
    /// If the socket cannot be opened.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            rtnl: Rtnl::new()?,
            links: HashMap::new(),
        })
    }

    pub fn rtnl(&mut self) -> &mut Rtnl {
        &mut self.rtnl
    }

    /// The route from `src` to `dst` and what it leads to.
    ///
    /// # Errors
    ///
    /// If an rtnetlink request fails.
    pub fn resolve(
        &mut self,
        src: Option<IpAddr>,
        dst: IpAddr,
    ) -> io::Result<(Option<Route>, Resolution)> {
        let Some(route) = self.rtnl.route(src, dst)? else {
            return Ok((None, Resolution::Unreachable));
        };
        let r = self.complete(&route, dst)?;
        Ok((Some(route), r))
    }

    /// The resolution of an already known route, with the neighbour looked up again.
    ///
    /// # Errors
    ///
    /// If an rtnetlink request fails.
    pub fn complete(&mut self, route: &Route, dst: IpAddr) -> io::Result<Resolution> {
        if !route.unicast {
            return Ok(Resolution::Unreachable);
        }
        let neighbour = route.hop(dst);
        let Some(link) = self.link(route.oif)? else {
            return Ok(Resolution::Unreachable);
        };
        let mac = self.rtnl.neighbour(route.oif, neighbour)?;
        Ok(Self::with_mac(route, &link, neighbour, mac))
    }

    /// The resolution of a known route and link once the neighbour's MAC is (or is not) known.
    #[must_use]
    pub fn with_mac(route: &Route, link: &Link, neighbour: IpAddr, mac: Option<Mac>) -> Resolution {
        match (mac, link.mac) {
            (Some(dst_mac), Some(src_mac)) => {
                let mtu = route.mtu.map_or(link.mtu, |m| m.min(link.mtu));
                Resolution::Ready {
                    hop: NextHop {
                        ifindex: route.oif,
                        src_mac,
                        dst_mac,
                        mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
                    },
                    neighbour,
                }
            }
            _ => Resolution::Unresolved {
                ifindex: route.oif,
                neighbour,
            },
        }
    }

    /// # Errors
    ///
    /// If the rtnetlink request fails.
    pub fn link(&mut self, ifindex: u32) -> io::Result<Option<Link>> {
        if let Some(l) = self.links.get(&ifindex) {
            return Ok(Some(l.clone()));
        }
        let l = self.rtnl.link(ifindex)?;
        if let Some(l) = &l {
            self.links.insert(ifindex, l.clone());
        }
        Ok(l)
    }

    /// Drops what is cached of a link that changed or went away.
    pub fn forget_link(&mut self, ifindex: u32) {
        self.links.remove(&ifindex);
    }
}

/// A classic BPF program that accepts nothing: the raw sockets below only send, and without
/// it the kernel would queue them a copy of every UDP datagram the host receives.
const DROP_ALL: [SockFilter; 1] = [SockFilter::new(0x06 /* BPF_RET | BPF_K */, 0, 0, 0)];

/// Sends UDP datagrams from any of the relay's endpoints through the kernel's stack: raw
/// `IPPROTO_UDP` sockets, whose IP header the kernel builds, routes, resolves (ARP/ND) and
/// fragments when the datagram exceeds the path MTU, exactly as for a socket relay. The
/// source address is chosen per datagram (`IP_PKTINFO`); the UDP header is ours, so the
/// source port can be any relay port.
pub struct KernelPath {
    v4: Socket,
    v6: Socket,
}

impl KernelPath {
    /// # Errors
    ///
    /// If a raw socket cannot be opened or configured (it needs `CAP_NET_RAW`).
    pub fn new() -> io::Result<Self> {
        let open = |domain: Domain| -> io::Result<Socket> {
            let sock = Socket::new(domain, Type::RAW, Some(Protocol::UDP))?;
            sock.attach_filter(&DROP_ALL)?;
            if domain == Domain::IPV4 {
                // Fragment locally when larger than the path MTU, DF otherwise: a UDP
                // socket's default (IP_PMTUDISC_WANT), set so that no sysctl changes it.
                sockopt::set_ip_mtu_discover(&sock, Ipv4PathMtuDiscovery::WANT)?;
            } else {
                sockopt::set_ipv6_mtu_discover(&sock, Ipv6PathMtuDiscovery::WANT)?;
                // The kernel computes the UDP checksum (offset 6 in our header): it knows the
                // final source address.
                sys::set_int_opt(&sock, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 6)?;
            }
            Ok(sock)
        };
        Ok(Self {
            v4: open(Domain::IPV4)?,
            v6: open(Domain::IPV6)?,
        })
    }

    /// Sends `payload` from the relay endpoint `from` to `to` (same family).
    ///
    /// # Errors
    ///
    /// If an endpoint is unset, the datagram is too large for UDP, or the kernel refuses to send
    /// it.
    pub fn send(&self, from: Endpoint, to: Endpoint, payload: &[u8]) -> io::Result<()> {
        let (Some(src), Some(dst)) = (from.socket_addr(), to.socket_addr()) else {
            return Err(io::Error::other("unset endpoint"));
        };
        let udp_len = 8 + payload.len();
        let Ok(len16) = u16::try_from(udp_len) else {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        };
        let mut seg = Vec::with_capacity(udp_len);
        seg.extend_from_slice(&src.port().to_be_bytes());
        seg.extend_from_slice(&dst.port().to_be_bytes());
        seg.extend_from_slice(&len16.to_be_bytes());
        seg.extend_from_slice(&[0, 0]);
        seg.extend_from_slice(payload);
        // The raw socket's destination has no port (ours is in the UDP header); the source
        // address is the control message's (`struct in_pktinfo` / `in6_pktinfo`).
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                let sum = csum::add_bytes(
                    csum::pseudo_header_v4(&s.ip().octets(), &d.ip().octets(), len16),
                    &seg,
                );
                seg[6..8].copy_from_slice(&csum::udp_field(sum).to_be_bytes());
                // ipi_ifindex 0, ipi_spec_dst the source, ipi_addr unused.
                let mut info = [0u8; 12];
                info[4..8].copy_from_slice(&s.ip().octets());
                let to = SockAddr::from(SocketAddr::new(IpAddr::V4(*d.ip()), 0));
                sendmsg(
                    &self.v4,
                    &seg,
                    &to,
                    &sys::cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &info),
                )
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                // ipi6_addr the source, ipi6_ifindex 0.
                let mut info = [0u8; 20];
                info[..16].copy_from_slice(&s.ip().octets());
                let to = SockAddr::from(SocketAddrV6::new(*d.ip(), 0, 0, 0));
                sendmsg(
                    &self.v6,
                    &seg,
                    &to,
                    &sys::cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info),
                )
            }
            _ => Err(io::Error::other(
                "source and destination of different families",
            )),
        }
    }
}

/// `sendmsg(2)` of one buffer to `to` with `control`.
fn sendmsg(sock: &Socket, data: &[u8], to: &SockAddr, control: &[u8]) -> io::Result<()> {
    let bufs = [IoSlice::new(data)];
    let msg = MsgHdr::new()
        .with_addr(to)
        .with_buffers(&bufs)
        .with_control(control);
    sock.sendmsg(&msg, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(mtu: Option<u32>) -> Route {
        Route {
            oif: 3,
            gateway: None,
            unicast: true,
            mtu,
        }
    }

    fn link(mtu: u32) -> Link {
        Link {
            index: 3,
            name: "r0".into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            mtu,
            up: true,
            lower_up: true,
            kind: Some("veth".into()),
        }
    }

    #[test]
    fn the_smaller_of_route_and_link_mtu_bounds_the_next_hop() {
        let n: IpAddr = "10.0.0.2".parse().unwrap();
        let mac = Some([2, 0, 0, 0, 0, 2]);
        let hop = |r: Route, l: Link| Resolver::with_mac(&r, &l, n, mac).ready().unwrap().mtu;
        assert_eq!(hop(route(None), link(1500)), 1500);
        assert_eq!(hop(route(Some(1280)), link(1500)), 1280);
        assert_eq!(hop(route(Some(9000)), link(1500)), 1500);
        assert_eq!(hop(route(None), link(70_000)), u16::MAX);
    }

    #[test]
    fn without_a_mac_the_hop_is_unresolved_but_known() {
        let n: IpAddr = "10.0.0.2".parse().unwrap();
        let r = Resolver::with_mac(&route(None), &link(1500), n, None);
        assert_eq!(
            r,
            Resolution::Unresolved {
                ifindex: 3,
                neighbour: n
            }
        );
        assert_eq!(r.neighbour(), Some((3, n)));
        let mut l = link(1500);
        l.mac = None;
        assert!(
            Resolver::with_mac(&route(None), &l, n, Some([1; 6]))
                .ready()
                .is_none()
        );
    }
}
