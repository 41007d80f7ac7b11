//! The shared packet rules (`proxy_common::packet`) over this program's contexts; the XDP and
//! the TC program both parse through here.

use proxy_common::packet::{self, NotUdp};
pub use proxy_common::packet::{L3_OFF, Parsed};

use crate::{
    access::{Context, Frame},
    error::Error,
};

#[inline(always)]
pub fn parse<C: Context>(ctx: &C) -> Result<Parsed, Error> {
    packet::parse(&Frame(ctx)).map_err(|e| match e {
        NotUdp::NotIp => Error::NotIp,
        NotUdp::Vlan => Error::Vlan,
        NotUdp::NotUdp => Error::NotUdp,
        NotUdp::Fragment => Error::Fragment,
        NotUdp::Truncated => Error::Truncated,
    })
}
