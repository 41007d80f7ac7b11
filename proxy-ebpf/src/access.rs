//! The one bounds-checked accessor for packet memory. Nothing else in the programs does
//! pointer arithmetic on packet data.

use aya_ebpf::programs::{TcContext, XdpContext};

use crate::error::Error;

/// A context with direct packet access: XDP frames and TC socket buffers alike, so that the
/// parser is written once for both programs.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` bytes into the packet, or `Error::Truncated` if the packet
/// ends before `offset + size_of::<T>()`.
///
/// `T` must be one of the alignment-1 wire types of `proxy_common::wire` (or a byte array).
/// Callers dereference the pointer; each such site says why that is sound.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Result<*mut T, Error> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Offsets come from header fields, so bound them before the addition: the verifier needs
    // a known maximum, and no valid offset reaches 64 KiB.
    if offset > 0xffff {
        return Err(Error::Truncated);
    }
    // The verifier only learns a packet pointer's readable range from a comparison of that
    // same pointer plus a constant against data_end. LLVM likes to fold `offset + size` into
    // one scalar first (notably for loop induction variables), which leaves the pointer with
    // no known range. Reading the pointer back through a volatile stack slot stops the fold.
    let slot = start + offset;
    // SAFETY: reads a local.
    let ptr = unsafe { core::ptr::read_volatile(&slot) };
    if ptr + core::mem::size_of::<T>() > end {
        return Err(Error::Truncated);
    }
    Ok(ptr as *mut T)
}
