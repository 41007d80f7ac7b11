//! The lab's XDP programs (`tests/lab/ebpf`): the benchmark's generator and sink, and the
//! `XDP_PASS` program test rigs attach to a veth's far end.

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode},
};

/// The lab's XDP programs, built by build.rs.
#[cfg(feature = "ebpf")]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mediaproxy-bench"));
#[cfg(not(feature = "ebpf"))]
static OBJECT: &[u8] = &[];

/// Loads the lab's program `prog`, and attaches it to `ifname` (in this thread's namespace)
/// if asked.
///
/// # Errors
///
/// When the build carries no programs, or the kernel refuses to load or attach it.
pub fn load(prog: &str, attach: Option<(&str, XdpMode)>) -> anyhow::Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this build carries no lab programs (built without the `ebpf` feature)");
    }
    proxy_userspace::caps::raise_memlock();
    let mut ebpf = EbpfLoader::new().load(OBJECT)?;
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .with_context(|| format!("lab program {prog} missing"))?
        .try_into()?;
    p.load()?;
    if let Some((ifname, mode)) = attach {
        p.attach(ifname, mode)
            .with_context(|| format!("attaching {prog} to {ifname}"))?;
    }
    Ok(ebpf)
}

/// An `XDP_PASS` program on the far end of a veth that the relay redirects into: a native
/// redirect into a veth is delivered only when its peer runs an XDP program (or has GRO on).
/// A test rig's helper: a container's peer has none, which the relay handles itself.
/// Detaches when dropped.
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    /// # Errors
    ///
    /// When the program does not load or the interface refuses it.
    pub fn attach(ifname: &str, mode: XdpMode) -> anyhow::Result<Self> {
        Ok(Self {
            _ebpf: load("pass", Some((ifname, mode)))?,
        })
    }
}
