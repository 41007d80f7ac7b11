//! Where a frame that userspace sends must go: the route and the neighbour's MAC address, from
//! the kernel over rtnetlink, so that AF_XDP can transmit a complete Ethernet frame. When the
//! neighbour is not resolved yet, [`KernelPath`] hands the IP packet to the kernel's stack,
//! which resolves it (ARP/ND) and queues the packet meanwhile: nothing is dropped for want
//! of a MAC address, and the next lookup finds it resolved.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::frame::Mac;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub src_mac: Mac,
    pub dst_mac: Mac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Ready(NextHop),
    /// Routed out of `ifindex`, but the neighbour's MAC is not known yet.
    Unresolved {
        ifindex: u32,
    },
    /// No route.
    Unreachable,
}

const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT: the kernel's
/// own NUD_VALID, the states in which it would send to the address without asking first.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

/// Looks up routes and neighbours, with a short cache: one lookup per second per
/// destination at most, so userspace forwarding does not hammer rtnetlink.
pub struct Resolver {
    nl: OwnedFd,
    seq: u32,
    cache: HashMap<IpAddr, (Resolution, Instant)>,
    macs: HashMap<u32, Mac>,
}

const READY_TTL: Duration = Duration::from_secs(1);
/// Short: the kernel path resolves the neighbour meanwhile, and AF_XDP should take over soon.
const UNRESOLVED_TTL: Duration = Duration::from_millis(50);

impl Resolver {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd we own.
        let nl = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Self {
            nl,
            seq: 0,
            cache: HashMap::new(),
            macs: HashMap::new(),
        })
    }

    pub fn resolve(&mut self, dst: IpAddr) -> io::Result<Resolution> {
        let now = Instant::now();
        if let Some((r, at)) = self.cache.get(&dst) {
            let ttl = if matches!(r, Resolution::Ready(_)) {
                READY_TTL
            } else {
                UNRESOLVED_TTL
            };
            if now.duration_since(*at) < ttl {
                return Ok(*r);
            }
        }
        let r = self.lookup(dst)?;
        if self.cache.len() > 65_536 {
            self.cache.clear();
        }
        self.cache.insert(dst, (r, now));
        Ok(r)
    }

    fn lookup(&mut self, dst: IpAddr) -> io::Result<Resolution> {
        let Some((oif, gateway)) = self.route(dst)? else {
            return Ok(Resolution::Unreachable);
        };
        let hop = gateway.unwrap_or(dst);
        let src_mac = self.link_mac(oif)?;
        Ok(match self.neighbour(oif, hop)? {
            Some(dst_mac) => Resolution::Ready(NextHop {
                ifindex: oif,
                src_mac,
                dst_mac,
            }),
            None => Resolution::Unresolved { ifindex: oif },
        })
    }

    fn request(&mut self, msg_type: u16, body: &[u8]) -> io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: a zeroed sockaddr_nl addresses the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and sa are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                self.nl.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::from_ref(&sa).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n < 16 {
                return Err(io::Error::other("short netlink reply"));
            }
            let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap_or_default());
            if seq != self.seq {
                continue; // a stale reply to an earlier, timed-out request
            }
            buf.truncate(n);
            return Ok(buf);
        }
    }

    /// `(oif, gateway)` for `dst`, like `ip route get`.
    fn route(&mut self, dst: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        let (family, bits, addr) = family_of(dst);
        let mut body = vec![family, bits, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        push_attr(&mut body, RTA_DST, &addr);
        let reply = self.request(RTM_GETROUTE, &body)?;
        let msg_type = u16::from_ne_bytes([reply[4], reply[5]]);
        if msg_type == NLMSG_ERROR {
            return Ok(None); // ENETUNREACH and friends
        }
        if msg_type != RTM_NEWROUTE || reply.len() < 16 + 12 {
            return Err(io::Error::other(
                "unexpected rtnetlink reply to RTM_GETROUTE",
            ));
        }
        let mut oif = None;
        let mut gw = None;
        for (t, v) in attrs(&reply[16 + 12..msg_len(&reply)]) {
            match t {
                RTA_OIF if v.len() == 4 => {
                    oif = Some(u32::from_ne_bytes(v.try_into().unwrap_or_default()))
                }
                RTA_GATEWAY => gw = ip_from(v),
                _ => {}
            }
        }
        Ok(oif.map(|o| (o, gw)))
    }

    fn neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<Mac>> {
        let (family, _, addr) = family_of(ip);
        let mut body = vec![family, 0, 0, 0];
        body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]); // state, flags, type
        push_attr(&mut body, NDA_DST, &addr);
        let reply = self.request(RTM_GETNEIGH, &body)?;
        let msg_type = u16::from_ne_bytes([reply[4], reply[5]]);
        if msg_type != RTM_NEWNEIGH || reply.len() < 16 + 12 {
            return Ok(None); // ENOENT: never seen
        }
        let state = u16::from_ne_bytes([reply[16 + 8], reply[16 + 9]]);
        if state & NUD_VALID == 0 {
            return Ok(None);
        }
        Ok(attrs(&reply[16 + 12..msg_len(&reply)])
            .find(|(t, v)| *t == NDA_LLADDR && v.len() == 6)
            .map(|(_, v)| v.try_into().unwrap_or_default()))
    }

    fn link_mac(&mut self, ifindex: u32) -> io::Result<Mac> {
        if let Some(m) = self.macs.get(&ifindex) {
            return Ok(*m);
        }
        let name = crate::caps::ifname(ifindex)
            .ok_or_else(|| io::Error::other(format!("no interface {ifindex}")))?;
        let mac = interface_mac(&name)?;
        self.macs.insert(ifindex, mac);
        Ok(mac)
    }
}

fn msg_len(reply: &[u8]) -> usize {
    (u32::from_ne_bytes(reply[0..4].try_into().unwrap_or_default()) as usize).min(reply.len())
}

fn family_of(ip: IpAddr) -> (u8, u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec()),
    }
}

fn ip_from(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

fn push_attr(buf: &mut Vec<u8>, t: u16, v: &[u8]) {
    buf.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&t.to_ne_bytes());
    buf.extend_from_slice(v);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// Iterates `(type, value)` over rtattrs; stops at the first malformed one.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let t = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let v = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((t, v))
    })
}

/// The MAC address of an interface (SIOCGIFHWADDR).
pub fn interface_mac(ifname: &str) -> io::Result<Mac> {
    // SAFETY: ifreq is plain data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: a datagram socket for the ioctl.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR with a valid ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_hwaddr.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// Sends complete IP packets through the kernel's stack (raw IPPROTO_RAW sockets): the path
/// for packets whose next hop's MAC is not known yet, or that need fragmenting.
pub struct KernelPath {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl KernelPath {
    pub fn new() -> io::Result<Self> {
        let open = |family| {
            // SAFETY: plain socket(2); IPPROTO_RAW implies IP_HDRINCL / IPV6_HDRINCL.
            let fd = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fresh fd we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        Ok(Self {
            v4: open(libc::AF_INET)?,
            v6: open(libc::AF_INET6)?,
        })
    }

    /// Sends `packet` (an IP header and what follows) to `dst`.
    pub fn send(&self, packet: &[u8], dst: SocketAddr) -> io::Result<()> {
        let r = match dst {
            SocketAddr::V4(a) => {
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: valid buffer and sockaddr.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        std::ptr::from_ref(&sa).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                }
            }
            SocketAddr::V6(a) => {
                let sa = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as u16,
                    sin6_port: 0,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: valid buffer and sockaddr.
                unsafe {
                    libc::sendto(
                        self.v6.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        std::ptr::from_ref(&sa).cast(),
                        size_of::<libc::sockaddr_in6>() as u32,
                    )
                }
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_walk_stops_at_garbage() {
        let mut b = Vec::new();
        push_attr(&mut b, 4, &7u32.to_ne_bytes());
        push_attr(&mut b, 1, &[10, 0, 0, 1]);
        b.extend_from_slice(&[0xff, 0xff, 1, 0]); // length beyond the buffer
        let got: Vec<_> = attrs(&b).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (4, &7u32.to_ne_bytes()[..]));
        assert_eq!(
            ip_from(got[1].1),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(attrs(&[1, 0]).count(), 0);
    }
}
