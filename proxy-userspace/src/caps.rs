//! What the host must provide, checked up front, and errors that say what is missing.

use std::path::Path;

use anyhow::{anyhow, bail};
use aya::{
    EbpfError,
    programs::{ProgramError, XdpMode},
};

/// Kernel 5.9 brought `bpf_link` for XDP (aa8d3a716b59, "bpf, xdp: Add bpf_link-based XDP
/// attachment API"), which we rely on to detach when the daemon exits; 5.11 charges BPF
/// memory to the cgroup instead of `RLIMIT_MEMLOCK` (97306be45fbe). We require 5.11.
pub const MIN_KERNEL: (u32, u32) = (5, 11);

/// One missing capability.
#[derive(Debug)]
pub struct Missing(pub String);

/// Checks everything the relay needs before it loads anything, so that an operator sees
/// every problem at once.
#[must_use]
pub fn check() -> Vec<Missing> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push(Missing(
            "not running as root: loading XDP programs and AF_XDP sockets need CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW".into(),
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push(Missing(
            "no kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y is required)".into(),
        ));
    }
    match kernel_version() {
        Some(v) if v < MIN_KERNEL => missing.push(Missing(format!(
            "kernel {}.{} is older than the {}.{} minimum",
            v.0, v.1, MIN_KERNEL.0, MIN_KERNEL.1
        ))),
        None => missing.push(Missing("cannot read the kernel version from uname".into())),
        Some(_) => {}
    }
    // The socket is closed right away.
    if let Err(err) = socket2::Socket::new(
        socket2::Domain::from(libc::AF_XDP),
        socket2::Type::RAW,
        None,
    ) {
        missing.push(Missing(format!(
            "cannot create an AF_XDP socket: {err} (CONFIG_XDP_SOCKETS=y is required)"
        )));
    }
    missing
}

/// Fails with every missing capability listed.
///
/// # Errors
///
/// One error listing every missing capability.
pub fn require() -> anyhow::Result<()> {
    let missing = check();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .into_iter()
        .map(|m| format!("  - {}", m.0))
        .collect();
    bail!("this host cannot run the relay:\n{}", list.join("\n"))
}

#[must_use]
pub fn kernel_version() -> Option<(u32, u32)> {
    let u = rustix::system::uname();
    let release = u.release().to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`. Raise it as far as we may; on
/// later kernels a failure here is harmless (root may lack `CAP_SYS_RESOURCE` in a container).
pub fn raise_memlock() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // `None` is RLIM_INFINITY.
    let inf = Rlimit {
        current: None,
        maximum: None,
    };
    if setrlimit(Resource::Memlock, inf).is_ok() {
        return;
    }
    let cur = getrlimit(Resource::Memlock);
    let _ = setrlimit(
        Resource::Memlock,
        Rlimit {
            current: cur.maximum,
            maximum: cur.maximum,
        },
    );
}

/// # Errors
///
/// If the name holds a NUL or no interface has it in this network namespace.
pub fn ifindex(ifname: &str) -> anyhow::Result<u32> {
    if ifname.contains('\0') {
        bail!("bad interface name {ifname:?}");
    }
    let idx = crate::sys::if_nametoindex(ifname);
    if idx == 0 {
        bail!("no interface named {ifname:?} in this network namespace");
    }
    Ok(idx)
}

#[must_use]
pub fn ifname(ifindex: u32) -> Option<String> {
    crate::sys::if_indextoname(ifindex)
}

fn not_root_hint() -> &'static str {
    if rustix::process::geteuid().is_root() {
        ""
    } else {
        " (not running as root)"
    }
}

#[must_use]
pub fn explain_load_error(e: &EbpfError) -> anyhow::Error {
    let btf = if Path::new("/sys/kernel/btf/vmlinux").exists() {
        ""
    } else {
        " (no kernel BTF at /sys/kernel/btf/vmlinux)"
    };
    anyhow!("loading the XDP object failed{}{btf}: {e}", not_root_hint())
}

#[must_use]
pub fn explain_program_error(e: &ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!(
            "the kernel refused the XDP program{}: {io_error}\nverifier log:\n{verifier_log}",
            not_root_hint()
        ),
        other => anyhow!("loading the XDP program failed{}: {other}", not_root_hint()),
    }
}

#[must_use]
pub fn explain_attach_error(e: &ProgramError, ifname: &str, mode: XdpMode) -> anyhow::Error {
    let mode_hint = match mode {
        XdpMode::Driver => "; the driver may lack native XDP: try --xdp-mode skb",
        XdpMode::Hardware => "; hardware offload is rarely supported: try --xdp-mode native",
        _ => "",
    };
    anyhow!(
        "attaching XDP to {ifname} ({mode:?} mode) was refused{}{mode_hint}: {e}",
        not_root_hint()
    )
}
