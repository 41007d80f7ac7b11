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
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn exec(&self, cmd: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run("ip", &full)
    }

    /// Starts a command inside the namespace.
    pub fn spawn(&self, cmd: &[&str]) -> anyhow::Result<Command> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        Ok(c)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.conf.x.forwarding=1` style).
    pub fn sysctl(&self, kv: &str) -> anyhow::Result<()> {
        let (key, value) = kv.split_once('=').with_context(|| format!("bad sysctl {kv:?}"))?;
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        // /proc/sys/net belongs to the network namespace of the thread that opens it.
        self.enter(move || std::fs::write(&path, value).with_context(|| format!("writing {path}")))?
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets and BPF objects created
    /// there stay in the namespace and may be used from any thread afterwards; threads that
    /// `f` spawns inherit the namespace.
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
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        }
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &["link", "add", a_if, "netns", a.name(), "type", "veth", "peer", "name", b_if, "netns", b.name()],
    )?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A child process killed (and reaped) on drop.
pub struct Guarded(pub Child);

impl Drop for Guarded {
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
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) -> anyhow::Result<()> {
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
