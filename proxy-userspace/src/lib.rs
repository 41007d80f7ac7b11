//! mediaproxy's userspace: the loader and typed map API ([`dataplane`]), `AF_XDP` sockets
//! ([`xsk`]) and the I/O thread ([`io`]), the sans-IO media logic ([`session`]) and call
//! model ([`ng`]), and the daemon that wires them ([`daemon`]).

pub mod caps;
pub mod daemon;
pub mod dataplane;
pub mod egress;
pub mod ethtool;
pub mod fallback;
pub mod flow;
pub mod frame;
pub mod io;
pub mod netdev;
pub mod netlink;
pub mod nexthop;
pub mod ng;
pub mod probe_auth;
pub mod session;
pub mod sys;
pub mod xsk;
