//! rtnetlink, as the relay needs it: one-shot requests (the route to a destination, a
//! neighbour's MAC, a link's MTU and MAC, the addresses) and a monitor of the changes that
//! move a flow's next hop or an attachment (links, addresses, neighbours, routes).
//!
//! Messages are encoded and decoded by `netlink-packet-route`; the sockets are `netlink-sys`'s.

use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

mod monitor;

pub use monitor::Monitor;

pub type Mac = [u8; 6];

/// How long a request waits for the kernel's answer before it fails: the kernel answers
/// rtnetlink requests synchronously, so this only bounds a kernel that does not.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Receive buffer of the monitor: large enough that a burst of changes (a link going down
/// flushes its neighbours and routes at once) does not overflow it; an overflow is reported
/// as [`NetEvent::Overflow`] and costs a full resynchronisation, not a missed change.
const MONITOR_RCVBUF: usize = 4 << 20;

/// What `ip route get` says about a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub oif: u32,
    pub gateway: Option<IpAddr>,
    /// `RTN_UNICAST`: a destination we may send to. Anything else (local, broadcast,
    /// multicast, anycast, blackhole, unreachable, prohibit) is not one.
    pub unicast: bool,
    /// The route's own MTU (a locked `mtu` metric, or a learnt path MTU), if it has one.
    pub mtu: Option<u32>,
}

impl Route {
    /// The address whose MAC the next hop needs: the gateway, or the destination itself.
    #[must_use]
    pub fn hop(&self, dst: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(dst)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The carrier is there (`IFF_LOWER_UP`): a veth whose peer is down is up but not this.
    pub lower_up: bool,
    /// `IFLA_INFO_KIND`: "veth", "bridge", ...; `None` for physical devices.
    pub kind: Option<String>,
}

impl Link {
    #[must_use]
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

/// A change that may move a next hop or an attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A link appeared or changed (state, MTU, MAC, name).
    Link(Link),
    /// A link was deleted.
    LinkGone { index: u32, name: String },
    /// A neighbour entry changed; `mac` is its address if the kernel would use it.
    Neighbour {
        ifindex: u32,
        ip: IpAddr,
        mac: Option<Mac>,
    },
    /// An address was added to or removed from a link.
    Address {
        ifindex: u32,
        ip: IpAddr,
        added: bool,
    },
    /// A route was added or removed.
    Route,
    /// The kernel dropped notifications (the monitor fell behind): resynchronise everything.
    Overflow,
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    Ok(s)
}

fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    m.finalize();
    let mut buf = vec![0; m.header.length as usize];
    m.serialize(&mut buf);
    buf
}

/// Every netlink message in one datagram; stops at the first that does not parse.
fn messages(mut b: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(b) else {
            break;
        };
        let len = (m.header.length as usize).next_multiple_of(4);
        if len == 0 || len > b.len() {
            out.push(m);
            break;
        }
        out.push(m);
        b = &b[len..];
    }
    out
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(-code)
}

/// What a request expects back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Req {
    One,
    Dump,
    Ack,
}

/// The rtnetlink request socket of the calling thread's network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// # Errors
    ///
    /// If the rtnetlink socket cannot be opened or configured.
    pub fn new() -> io::Result<Self> {
        let sock = socket()?;
        socket2::SockRef::from(&sock).set_read_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0; 64 << 10],
        })
    }

    /// Sends one request and collects its answers: every message of a dump, or the one
    /// reply, or nothing but the acknowledgement. A negative acknowledgement comes back as
    /// the error it carries.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        kind: Req,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let dump = kind == Req::Dump;
        let flags = NLM_F_REQUEST
            | match kind {
                Req::One => 0,
                Req::Dump => NLM_F_DUMP,
                Req::Ack => NLM_F_ACK,
            };
        self.sock
            .send_to(&encode(msg, flags, self.seq), &SocketAddr::new(0, 0), 0)?;
        let mut out = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for m in messages(&self.buf[..n]) {
                if m.header.sequence_number != self.seq {
                    continue; // the late answer to an earlier, timed-out request
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(errno(code.get())),
                            None => Ok(out),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// The route from `src` (a local address, for policy routing; `None`: any) to `dst`, or
    /// `None` if there is none.
    ///
    /// # Errors
    ///
    /// If the rtnetlink request fails.
    pub fn route(&mut self, src: Option<IpAddr>, dst: IpAddr) -> io::Result<Option<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(dst);
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        if let Some(s) = src.filter(|s| s.is_ipv4() == dst.is_ipv4()) {
            m.header.source_prefix_length = if s.is_ipv4() { 32 } else { 128 };
            m.attributes
                .push(RouteAttribute::Source(RouteAddress::from(s)));
        }
        let reply = match self.request(RouteNetlinkMessage::GetRoute(m), Req::One) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL | libc::ESRCH)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(RouteNetlinkMessage::NewRoute(r)) = reply.into_iter().next() else {
            return Ok(None);
        };
        Ok(parse_route(&r))
    }

    /// The MAC address of `ip`'s neighbour entry on `ifindex`, if the kernel would send to it
    /// without asking first (`NUD_VALID`).
    ///
    /// # Errors
    ///
    /// If the rtnetlink request fails.
    pub fn neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<Mac>> {
        Ok(self
            .get_neighbour(ifindex, ip)?
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => {
                    parse_neighbour(&n).and_then(|(_, _, mac)| mac)
                }
                _ => None,
            }))
    }

    /// Whether `ip`'s neighbour entry on `ifindex` is STALE: the kernel still sends to its MAC
    /// but would confirm it on the next packet through the stack.
    ///
    /// # Errors
    ///
    /// If the rtnetlink request fails.
    pub fn neighbour_is_stale(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<bool> {
        Ok(self.get_neighbour(ifindex, ip)?.iter().any(|m| {
            matches!(m, RouteNetlinkMessage::NewNeighbour(n) if n.header.state == NeighbourState::Stale)
        }))
    }

    /// `ip`'s neighbour entry on `ifindex` (`RTM_GETNEIGH`): none if there is no such entry.
    fn get_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(ip);
        m.header.ifindex = ifindex;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        match self.request(RouteNetlinkMessage::GetNeighbour(m), Req::One) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            r => r,
        }
    }

    /// Asks the kernel to treat the neighbour entry as used (`NTF_USE`): a STALE entry is
    /// re-validated as if a packet had gone through the stack. An entry that does not exist
    /// is not created.
    ///
    /// Only for a STALE entry ([`Rtnl::neighbour_is_stale`]): the kernel applies `NTF_USE` as
    /// an update that clears `NUD_PERMANENT`, so on a static entry it would destroy it.
    ///
    /// # Errors
    ///
    /// If the request fails or the kernel refuses it.
    pub fn use_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(ip);
        m.header.ifindex = ifindex;
        m.header.flags = NeighbourFlags::Use;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        match self.request(RouteNetlinkMessage::NewNeighbour(m), Req::Ack) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// # Errors
    ///
    /// If the rtnetlink request fails.
    pub fn link(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::GetLink(m), Req::One) {
            Ok(r) => Ok(r.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => parse_link(&l),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// # Errors
    ///
    /// If the dump request fails.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        Ok(self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                Req::Dump,
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => parse_link(&l),
                _ => None,
            })
            .collect())
    }

    /// Every address of the namespace, with the link that carries it.
    ///
    /// # Errors
    ///
    /// If the dump request fails.
    pub fn addresses(&mut self) -> io::Result<Vec<(u32, IpAddr)>> {
        Ok(self
            .address_prefixes()?
            .into_iter()
            .map(|(i, ip, _)| (i, ip))
            .collect())
    }

    /// Every address of the namespace with its link and prefix length.
    ///
    /// # Errors
    ///
    /// If the dump request fails.
    pub fn address_prefixes(&mut self) -> io::Result<Vec<(u32, IpAddr, u8)>> {
        Ok(self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                Req::Dump,
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let (i, ip) = parse_address(&a)?;
                    Some((i, ip, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }
}

fn parse_route(r: &RouteMessage) -> Option<Route> {
    let mut oif = None;
    let mut gateway = None;
    let mut mtu = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Via(v) => gateway = via_ip(v),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(v) = m
                        && *v > 0
                    {
                        mtu = Some(*v);
                    }
                }
            }
            _ => {}
        }
    }
    Some(Route {
        oif: oif?,
        gateway,
        unicast: r.header.kind == RouteType::Unicast,
        mtu,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn via_ip(v: &netlink_packet_route::route::RouteVia) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteVia;
    match v {
        RouteVia::Inet(a) => Some(IpAddr::V4(*a)),
        RouteVia::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// `(ifindex, ip, mac if NUD_VALID)`.
fn parse_neighbour(n: &NeighbourMessage) -> Option<(u32, IpAddr, Option<Mac>)> {
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
        _ => None,
    })?;
    // The kernel's NUD_VALID: the states in which it sends to the address without asking.
    let valid = matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Noarp
            | NeighbourState::Permanent
    );
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(v) if v.len() == 6 => {
            <Mac>::try_from(v.as_slice()).ok()
        }
        _ => None,
    });
    Some((n.header.ifindex, ip, if valid { mac } else { None }))
}

fn parse_link(l: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    let mut kind = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(v) if v.len() == 6 => mac = <Mac>::try_from(v.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(match k {
                            InfoKind::Veth => "veth".to_owned(),
                            InfoKind::Bridge => "bridge".to_owned(),
                            InfoKind::Tun => "tun".to_owned(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link {
        index: l.header.index,
        name: name?,
        mac,
        mtu,
        up: l.header.flags.contains(LinkFlags::Up),
        lower_up: l.header.flags.contains(LinkFlags::LowerUp),
        kind,
    })
}

fn parse_address(a: &AddressMessage) -> Option<(u32, IpAddr)> {
    // IFA_LOCAL is the interface's own address on point-to-point links, where IFA_ADDRESS
    // is the peer's; elsewhere they are equal.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    Some((a.header.index, local.or(addr)?))
}

/// The MAC address of the interface named `ifname` in this thread's network namespace.
///
/// # Errors
///
/// If rtnetlink fails, or no interface `ifname` with a MAC address exists.
pub fn interface_mac(ifname: &str) -> io::Result<Mac> {
    Rtnl::new()?
        .links()?
        .into_iter()
        .find(|l| l.name == ifname)
        .and_then(|l| l.mac)
        .ok_or_else(|| io::Error::other(format!("no interface {ifname} with a MAC address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_datagrams_decode_to_nothing() {
        assert!(messages(&[]).is_empty());
        assert!(messages(&[0xff; 7]).is_empty());
        // A header claiming more bytes than there are.
        let mut b = vec![0xff, 0xff, 0, 0];
        b.extend_from_slice(&[0; 12]);
        assert!(messages(&b).len() <= 1);
    }

    #[test]
    fn requests_round_trip_through_the_codec() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                "10.0.0.1".parse::<IpAddr>().unwrap(),
            )));
        let bytes = encode(RouteNetlinkMessage::GetRoute(m.clone()), NLM_F_REQUEST, 7);
        let back = messages(&bytes);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].header.sequence_number, 7);
        match &back[0].payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(r)) => {
                assert_eq!(r.attributes, m.attributes);
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
