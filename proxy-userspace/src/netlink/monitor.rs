//! The monitor: a non-blocking rtnetlink socket joined to the groups whose changes move a
//! flow's next hop or an attachment, and the events it reads.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::Socket;

use super::{
    MONITOR_RCVBUF, NetEvent, messages, parse_address, parse_link, parse_neighbour, socket,
};

/// rtnetlink multicast groups (`RTNLGRP_*`).
const GROUPS: [u32; 6] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_NEIGH,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV6_IFADDR,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
];

/// A non-blocking socket that receives the changes as the kernel makes them.
pub struct Monitor {
    sock: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// # Errors
    ///
    /// If the socket cannot be opened, joined to the groups or configured.
    pub fn new() -> io::Result<Self> {
        let sock = socket()?;
        for g in GROUPS {
            sock.add_membership(g)?;
        }
        sock.set_rx_buf_sz(MONITOR_RCVBUF)?;
        sock.set_non_blocking(true)?;
        Ok(Self {
            sock,
            buf: vec![0; 64 << 10],
        })
    }

    /// Every change queued so far (none if nothing happened).
    pub fn read(&mut self) -> Vec<NetEvent> {
        let mut out = Vec::new();
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => {
                    for m in messages(&self.buf[..n]) {
                        if let NetlinkPayload::InnerMessage(inner) = m.payload
                            && let Some(e) = event(inner)
                        {
                            out.push(e);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => out.push(NetEvent::Overflow),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    out.push(NetEvent::Overflow);
                    break;
                }
            }
        }
        out
    }
}

impl AsRawFd for Monitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

fn event(m: RouteNetlinkMessage) -> Option<NetEvent> {
    let new = matches!(
        m,
        RouteNetlinkMessage::NewNeighbour(_) | RouteNetlinkMessage::NewAddress(_)
    );
    Some(match m {
        RouteNetlinkMessage::NewLink(l) => NetEvent::Link(parse_link(&l)?),
        RouteNetlinkMessage::DelLink(l) => {
            let link = parse_link(&l)?;
            NetEvent::LinkGone {
                index: link.index,
                name: link.name,
            }
        }
        // A deleted neighbour has no MAC address any more, whatever its last message said.
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let (ifindex, ip, mac) = parse_neighbour(&n)?;
            NetEvent::Neighbour {
                ifindex,
                ip,
                mac: mac.filter(|_| new),
            }
        }
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            let (ifindex, ip) = parse_address(&a)?;
            NetEvent::Address {
                ifindex,
                ip,
                added: new,
            }
        }
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => NetEvent::Route,
        _ => return None,
    })
}
