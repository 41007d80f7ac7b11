//! The kernel's netdev generic-netlink family (Linux 6.3+): which XDP actions a device's
//! driver supports, and a notification whenever that changes.
//!
//! The relay needs one bit of it. `NDO_XMIT` says the device delivers frames that native XDP
//! transmits into it (a DEVMAP redirect, and for a veth `XDP_TX` as well). A veth advertises
//! it only while its peer runs an XDP program or has GRO on; in a container the peer sits in
//! the host's bridge, where the relay cannot attach anything, so the bit is off and native
//! frames sent there are dropped without a trace. The daemon reads the bit per egress device
//! and sends through the TC program where it is off.
//!
//! Generic netlink is small enough to encode here: a netlink header, a 4-byte genl header
//! and a few attributes.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// `enum netdev_xdp_act` bits of `NETDEV_A_DEV_XDP_FEATURES`.
pub mod xdp_act {
    /// `XDP_PASS`, `XDP_DROP`, `XDP_TX`, `XDP_ABORTED`.
    pub const BASIC: u64 = 1 << 0;
    pub const REDIRECT: u64 = 1 << 1;
    /// The device takes frames redirected into it (`ndo_xdp_xmit`).
    pub const NDO_XMIT: u64 = 1 << 2;
}

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_CMD_DEV_ADD_NTF: u8 = 2;
const NETDEV_CMD_DEV_CHANGE_NTF: u8 = 4;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(1);

#[expect(
    clippy::cast_possible_truncation,
    reason = "netlink attributes and messages of a few hundred bytes at most"
)]
fn push_attr(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "netlink attributes and messages of a few hundred bytes at most"
)]
fn genl_request(family: u16, cmd: u8, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&family.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[cmd, 1, 0, 0]);
    b.extend_from_slice(attrs);
    b
}

/// One generic-netlink message of a datagram: `(type, seq, cmd, attributes)`, or the error
/// code of an `NLMSG_ERROR` (0 for an ACK).
enum Msg<'a> {
    Genl {
        kind: u16,
        seq: u32,
        cmd: u8,
        attrs: &'a [u8],
    },
    Error {
        seq: u32,
        code: i32,
    },
    Other,
}

fn walk(mut b: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        let body = &b[NLMSG_HDRLEN..len];
        out.push(match kind {
            NLMSG_ERROR if body.len() >= 4 => Msg::Error {
                seq,
                code: i32::from_ne_bytes([body[0], body[1], body[2], body[3]]),
            },
            NLMSG_DONE | NLMSG_ERROR => Msg::Other,
            _ if body.len() >= GENL_HDRLEN => Msg::Genl {
                kind,
                seq,
                cmd: body[0],
                attrs: &body[GENL_HDRLEN..],
            },
            _ => Msg::Other,
        });
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
}

/// `(type, value)` of each attribute; stops at the first malformed one.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits of the type.
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let v = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((kind, v))
    })
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn u64_of(v: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
}

/// `(ifindex, xdp features)` of a netdev message's attributes.
fn dev_features(a: &[u8]) -> Option<(u32, u64)> {
    let mut ifindex = None;
    let mut features = None;
    for (k, v) in attrs(a) {
        match k {
            NETDEV_A_DEV_IFINDEX => ifindex = u32_of(v),
            NETDEV_A_DEV_XDP_FEATURES => features = u64_of(v),
            _ => {}
        }
    }
    Some((ifindex?, features?))
}

fn open_socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_GENERIC)?;
    s.bind_auto()?;
    // Best effort: without it a kernel that never answers blocks the request.
    let _ = socket2::SockRef::from(&s).set_read_timeout(Some(TIMEOUT));
    Ok(s)
}

/// A request socket for the netdev family.
pub struct Netdev {
    sock: Socket,
    family: u16,
    mgmt_group: Option<u32>,
    seq: u32,
    buf: Vec<u8>,
}

impl Netdev {
    /// `Ok(None)` on a kernel without the family (before 6.3): the features are unknown.
    ///
    /// # Errors
    ///
    /// If the generic-netlink socket cannot be opened or the kernel answers with an error other
    /// than no such family.
    pub fn open() -> io::Result<Option<Self>> {
        let sock = open_socket()?;
        let mut name = b"netdev".to_vec();
        name.push(0);
        let mut a = Vec::new();
        push_attr(&mut a, CTRL_ATTR_FAMILY_NAME, &name);
        sock.send_to(
            &genl_request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, &a),
            &SocketAddr::new(0, 0),
            0,
        )?;
        let mut buf = vec![0u8; 16 << 10];
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut family = None;
        let mut mgmt_group = None;
        for m in walk(&buf[..n]) {
            match m {
                Msg::Error { code, .. } if code == -libc::ENOENT => return Ok(None),
                Msg::Error { code, .. } if code != 0 => {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                Msg::Genl { attrs: at, .. } => {
                    for (k, v) in attrs(at) {
                        match k {
                            CTRL_ATTR_FAMILY_ID if v.len() >= 2 => {
                                family = Some(u16::from_ne_bytes([v[0], v[1]]));
                            }
                            CTRL_ATTR_MCAST_GROUPS => {
                                for (_, group) in attrs(v) {
                                    let mut gname = None;
                                    let mut gid = None;
                                    for (gk, gv) in attrs(group) {
                                        match gk {
                                            CTRL_ATTR_MCAST_GRP_NAME => {
                                                gname = Some(
                                                    gv.split(|&c| c == 0)
                                                        .next()
                                                        .unwrap_or_default(),
                                                );
                                            }
                                            CTRL_ATTR_MCAST_GRP_ID => gid = u32_of(gv),
                                            _ => {}
                                        }
                                    }
                                    if gname == Some(&b"mgmt"[..]) {
                                        mgmt_group = gid;
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(family) = family else {
            return Ok(None);
        };
        Ok(Some(Self {
            sock,
            family,
            mgmt_group,
            seq: 1,
            buf,
        }))
    }

    /// The device's `NETDEV_A_DEV_XDP_FEATURES`, `None` if there is no such device.
    ///
    /// # Errors
    ///
    /// If the request cannot be sent or the reply read, or the kernel answers with an error other
    /// than no such device.
    pub fn xdp_features(&mut self, ifindex: u32) -> io::Result<Option<u64>> {
        self.seq = self.seq.wrapping_add(1);
        let mut a = Vec::new();
        push_attr(&mut a, NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
        self.sock.send_to(
            &genl_request(self.family, NETDEV_CMD_DEV_GET, self.seq, &a),
            &SocketAddr::new(0, 0),
            0,
        )?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for m in walk(&self.buf[..n]) {
                match m {
                    Msg::Error { seq, code } if seq == self.seq => {
                        if code == -libc::ENODEV || code == -libc::ENOENT {
                            return Ok(None);
                        }
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    Msg::Genl { seq, attrs: at, .. } if seq == self.seq => {
                        return Ok(dev_features(at).map(|(_, f)| f));
                    }
                    _ => {}
                }
            }
        }
    }

    /// A non-blocking socket that receives every change of a device's features in this
    /// namespace, or `None` if the kernel has no notification group.
    ///
    /// # Errors
    ///
    /// If the notification socket cannot be opened or joined to the group.
    pub fn monitor(&self) -> io::Result<Option<FeatureMonitor>> {
        let Some(group) = self.mgmt_group else {
            return Ok(None);
        };
        let sock = open_socket()?;
        sock.add_membership(group)?;
        sock.set_non_blocking(true)?;
        Ok(Some(FeatureMonitor {
            sock,
            family: self.family,
            buf: vec![0; 16 << 10],
        }))
    }
}

pub struct FeatureMonitor {
    sock: Socket,
    family: u16,
    buf: Vec<u8>,
}

impl FeatureMonitor {
    /// `(ifindex, xdp features)` of every device that appeared or changed since the last
    /// call. `Err` means notifications were lost: query every device again.
    ///
    /// # Errors
    ///
    /// The socket's error, other than nothing being queued.
    pub fn read(&mut self) -> Result<Vec<(u32, u64)>, io::Error> {
        let mut out = Vec::new();
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => {
                    for m in walk(&self.buf[..n]) {
                        if let Msg::Genl {
                            kind,
                            cmd,
                            attrs: at,
                            ..
                        } = m
                            && kind == self.family
                            && matches!(cmd, NETDEV_CMD_DEV_ADD_NTF | NETDEV_CMD_DEV_CHANGE_NTF)
                            && let Some(f) = dev_features(at)
                        {
                            out.push(f);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for FeatureMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_attributes_walk_back() {
        let mut a = Vec::new();
        push_attr(&mut a, NETDEV_A_DEV_IFINDEX, &7u32.to_ne_bytes());
        push_attr(
            &mut a,
            NETDEV_A_DEV_XDP_FEATURES,
            &(xdp_act::BASIC | xdp_act::NDO_XMIT).to_ne_bytes(),
        );
        let req = genl_request(30, NETDEV_CMD_DEV_CHANGE_NTF, 9, &a);
        let msgs = walk(&req);
        assert_eq!(msgs.len(), 1);
        let Msg::Genl {
            kind,
            seq,
            cmd,
            attrs,
        } = msgs[0]
        else {
            panic!("not genl")
        };
        assert_eq!((kind, seq, cmd), (30, 9, NETDEV_CMD_DEV_CHANGE_NTF));
        assert_eq!(dev_features(attrs), Some((7, 5)));
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..40 {
            let b = vec![0xa5u8; n];
            let _ = walk(&b).len();
            let _ = dev_features(&b);
        }
    }
}
