//! Shared harness for the integration tests: topologies of namespaces and veths built on
//! `mediaproxy_lab::testbed`, which the demo and the benchmark use too.

use mediaproxy_lab::testbed::Netns;

/// These tests load XDP programs and create namespaces: they need root. They fail, loudly,
/// rather than skip.
///
/// # Panics
///
/// If the process is not root.
pub fn need_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (CAP_BPF, CAP_NET_ADMIN); run the suite with `cargo xtask test` as root"
    );
}

/// One namespace holding the relay's two interfaces and their veth peers, for the
/// `BPF_PROG_TEST_RUN` fixtures: `relay0` 10.0.1.1/24 `fd00:1::1/64` (peer `peer0`) and
/// `relay1` 10.0.2.1/24 `fd00:2::1/64` (peer `peer1`). The fixtures give each flow its next
/// hop; nothing here forwards.
pub struct Env {
    pub ns: Netns,
}

impl Env {
    /// # Errors
    ///
    /// If the namespace or an interface cannot be set up.
    pub fn fixture(tag: &str) -> anyhow::Result<Self> {
        let ns = Netns::new(tag)?;
        for (i, side) in [(0, "1"), (1, "2")] {
            let relay = format!("relay{i}");
            let peer = format!("peer{i}");
            ns.ip(&[
                "link",
                "add",
                &relay,
                "address",
                &format!("02:00:00:00:0{side}:01"),
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "address",
                &format!("02:00:00:00:0{side}:02"),
            ])?;
            ns.ip(&["addr", "add", &format!("10.0.{side}.1/24"), "dev", &relay])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("fd00:{side}::1/64"),
                "dev",
                &relay,
                "nodad",
            ])?;
            ns.ip(&["link", "set", &relay, "up"])?;
            ns.ip(&["link", "set", &peer, "up"])?;
        }
        Ok(Self { ns })
    }

    /// Runs `f` inside the namespace.
    ///
    /// # Errors
    ///
    /// If the namespace cannot be entered.
    pub fn enter<T: Send>(&self, f: impl FnOnce(&Self) -> T + Send) -> anyhow::Result<T>
    where
        Self: Sync,
    {
        self.ns.enter(|| f(self))
    }

    /// Only meaningful inside [`Env::enter`].
    ///
    /// # Panics
    ///
    /// If the namespace has no interface `name`.
    #[must_use]
    pub fn ifindex(&self, name: &str) -> u32 {
        proxy_userspace::caps::ifindex(name).unwrap()
    }
}
pub mod kamailio;
pub mod sip;
