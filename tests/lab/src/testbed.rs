//! Network namespaces and veth pairs for the demo, the benchmark and the integration tests.
//!
//! Every namespace is named `mp-<pid>-<tag>-<n>`, so parallel tests never collide, and is
//! deleted when its [`Netns`] drops, which also removes the veths inside it, even when a test
//! panics. A namespace left behind by a killed process is swept by the next [`Netns::new`],
//! which deletes `mp-<pid>-…` namespaces whose process is gone.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr if it fails.
///
/// # Errors
///
/// If the command cannot be run or exits unsuccessfully (with its stderr).
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with its loopback up.
    ///
    /// # Errors
    ///
    /// If `ip netns add` or bringing the loopback up fails.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("mp-{}-{tag}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    ///
    /// # Errors
    ///
    /// If `ip` fails.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and waits for it.
    ///
    /// # Errors
    ///
    /// If the command cannot be run or fails.
    pub fn exec(&self, cmd: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run("ip", &full)
    }

    /// Starts a command inside the namespace.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for checks.
    pub fn spawn(&self, cmd: &[&str]) -> anyhow::Result<Command> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        Ok(c)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.conf.x.forwarding=1` style).
    ///
    /// # Errors
    ///
    /// If `kv` has no `=`, or the value cannot be written inside the namespace.
    pub fn sysctl(&self, kv: &str) -> anyhow::Result<()> {
        let (key, value) = kv
            .split_once('=')
            .with_context(|| format!("bad sysctl {kv:?}"))?;
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        // /proc/sys/net belongs to the network namespace of the thread that opens it.
        self.enter(move || std::fs::write(&path, value).with_context(|| format!("writing {path}")))?
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets and BPF objects created
    /// there stay in the namespace and may be used from any thread afterwards; threads that
    /// `f` spawns inherit the namespace.
    ///
    /// # Errors
    ///
    /// If the namespace cannot be opened or entered, or the thread cannot be started or panics.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(scope, move || {
                    // SAFETY: setns on this thread only (CLONE_NEWNET is per thread).
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(f())
                })?;
            match handle.join() {
                Ok(r) => Ok(r.context("setns")?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive but nameless; their owners kill them.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes namespaces named by a process that no longer exists.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("mp-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Creates a veth pair with one end in each namespace, both up.
///
/// # Errors
///
/// If `ip` fails.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A child process killed (and reaped) on drop.
pub struct Guarded(pub Child);

impl Drop for Guarded {
    #[expect(clippy::cast_possible_wrap, reason = "a pid fits in pid_t")]
    fn drop(&mut self) {
        // SIGTERM first, so a daemon detaches cleanly; then make sure.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Joins two namespaces with a veth pair and gives each end an address (`10.0.1.1/24`
/// style); IPv6 addresses (`fd00::1/64`) go on without duplicate address detection.
///
/// # Errors
///
/// If `ip` fails.
pub fn link(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
) -> anyhow::Result<()> {
    veth(a, a_if, b, b_if)?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["-6", "addr", "add", addr, "dev", ifname, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifname])?;
            }
        }
    }
    Ok(())
}

/// Reads one counter of the namespace's UDP MIB (`/proc/net/snmp`), e.g. `InCsumErrors`.
///
/// # Errors
///
/// If the MIB cannot be read or has no such field.
pub fn udp_mib(ns: &Netns, field: &str) -> anyhow::Result<u64> {
    let out = ns.exec(&["cat", "/proc/net/snmp"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Udp {field} in /proc/net/snmp"))
}

/// A point-to-point "VPN" between two namespaces: a TAP device in each, and a thread that
/// copies frames between them. There is no tunnel driver in the test kernels, and this is
/// what a userspace VPN does anyway. Torn down on drop.
pub struct TapTunnel {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[expect(clippy::cast_possible_wrap, reason = "interface names are ASCII")]
fn open_tap(name: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    // SAFETY: plain open(2) of the TUN/TAP clone device.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF with a valid ifreq.
    if unsafe { libc::ioctl(fd, TUNSETIFF, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(owned)
}

impl TapTunnel {
    /// Creates `ifname` in both namespaces, with these addresses, up, and joins them.
    ///
    /// # Errors
    ///
    /// If a tap device cannot be created or set up.
    #[expect(clippy::cast_sign_loss, reason = "n is positive here")]
    pub fn new(
        a: &Netns,
        a_addr: &str,
        b: &Netns,
        b_addr: &str,
        ifname: &str,
    ) -> anyhow::Result<Self> {
        let name = ifname.to_owned();
        let fa = a.enter({
            let n = name.clone();
            move || open_tap(&n)
        })??;
        let fb = b.enter(move || open_tap(&name))??;
        for (ns, addr) in [(a, a_addr), (b, b_addr)] {
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let fds = [fa, fb];
            let mut pfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|f| libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: valid pollfd array.
                unsafe { libc::poll(pfds.as_mut_ptr(), 2, 50) };
                for i in 0..2 {
                    loop {
                        // SAFETY: reads into our buffer.
                        let n = unsafe {
                            libc::read(fds[i].as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                        };
                        if n <= 0 {
                            break;
                        }
                        // SAFETY: writes what was read to the other side.
                        unsafe {
                            libc::write(fds[1 - i].as_raw_fd(), buf.as_ptr().cast(), n as usize)
                        };
                    }
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TapTunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
