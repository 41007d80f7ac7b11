//! mediaproxy's userspace: the loader and typed map API ([`dataplane`]), AF_XDP sockets
//! ([`xsk`]) and the I/O thread ([`io`]), and the control logic.

pub mod caps;
pub mod dataplane;
pub mod frame;
pub mod xsk;
pub mod testbed;
pub mod io;
pub mod nexthop;
pub mod rtp;
pub mod probe_auth;
pub mod session;
pub mod ng;
