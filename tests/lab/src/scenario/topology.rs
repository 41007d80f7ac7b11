//! The topologies: a relay in a container's bridges, one relay between two phones, and two
//! relays in series behind a NAT, with the calls through them.

use std::net::SocketAddr;

use aya::programs::XdpMode;

use proxy_userspace::ng::bencode::Value;

use super::{Relay, ng, sdp, sdp_media, sdp_of};
use crate::{
    programs::PassProgram,
    testbed::{Netns, link},
};

/// The container shape: the relay's interfaces are veths whose peers sit in Linux bridges in
/// another namespace (the host's side, where Docker, Kubernetes and LXC put them), and the
/// phones hang off the same bridges. Nothing runs XDP but the relay.
///
/// Two-armed: `br0` carries 10.0.1.0/24 and `fd00:1::/64` (relay `r0` .1, phone A `a0` .2),
/// `br1` carries 10.0.2.0/24 and `fd00:2::/64` (relay `r1` .1, phone B `b0` .2). One-armed: only
/// `br0`, with the relay `r0` .1, A .2 and B .3 on it; the relay sends everything back out of
/// the interface it came in on.
pub struct Bridged {
    pub relay: Netns,
    pub host: Netns,
    pub a: Netns,
    pub b: Netns,
    pub one_armed: bool,
}

impl Bridged {
    /// # Errors
    ///
    /// If a namespace, link or bridge cannot be set up.
    pub fn build(tag: &str, one_armed: bool) -> anyhow::Result<Self> {
        let relay = Netns::new(&format!("{tag}r"))?;
        let host = Netns::new(&format!("{tag}h"))?;
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        let t = Self {
            relay,
            host,
            a,
            b,
            one_armed,
        };
        t.host.ip(&["link", "add", "br0", "type", "bridge"])?;
        t.host.ip(&["link", "set", "br0", "up"])?;
        if !one_armed {
            t.host.ip(&["link", "add", "br1", "type", "bridge"])?;
            t.host.ip(&["link", "set", "br1", "up"])?;
        }
        t.plug(
            &t.relay,
            "r0",
            "hr0",
            "br0",
            &["10.0.1.1/24", "fd00:1::1/64"],
        )?;
        t.plug(&t.a, "a0", "ha0", "br0", &["10.0.1.2/24", "fd00:1::2/64"])?;
        if one_armed {
            t.plug(&t.b, "b0", "hb0", "br0", &["10.0.1.3/24", "fd00:1::3/64"])?;
        } else {
            t.plug(
                &t.relay,
                "r1",
                "hr1",
                "br1",
                &["10.0.2.1/24", "fd00:2::1/64"],
            )?;
            t.plug(&t.b, "b0", "hb0", "br1", &["10.0.2.2/24", "fd00:2::2/64"])?;
        }
        Ok(t)
    }

    /// A veth from `ns` (`ifname`, with these addresses) into `bridge` on the host side
    /// (`host_if`): what a container runtime does. Also used to re-create a deleted link.
    ///
    /// # Errors
    ///
    /// If a command that sets the link up fails.
    pub fn plug(
        &self,
        ns: &Netns,
        ifname: &str,
        host_if: &str,
        bridge: &str,
        addrs: &[&str],
    ) -> anyhow::Result<()> {
        crate::testbed::veth(ns, ifname, &self.host, host_if)?;
        self.host.ip(&["link", "set", host_if, "master", bridge])?;
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["-6", "addr", "add", addr, "dev", ifname, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifname])?;
            }
        }
        Ok(())
    }

    /// The relay's media addresses, rtpengine style, for `family` 4 or 6.
    #[must_use]
    pub fn interfaces(&self, v6: bool) -> Vec<&'static str> {
        match (self.one_armed, v6) {
            (true, false) => vec!["10.0.1.1"],
            (true, true) => vec!["fd00:1::1"],
            (false, false) => vec!["internal/10.0.1.1", "external/10.0.2.1"],
            (false, true) => vec!["internal/fd00:1::1", "external/fd00:2::1"],
        }
    }

    /// The phones' media addresses.
    #[must_use]
    #[expect(
        clippy::missing_panics_doc,
        reason = "parses only literals that are addresses"
    )]
    pub fn phones(&self, v6: bool) -> (SocketAddr, SocketAddr) {
        let s = |x: &str| x.parse().expect("a literal address");
        match (self.one_armed, v6) {
            (true, false) => (s("10.0.1.2:4000"), s("10.0.1.3:5000")),
            (true, true) => (s("[fd00:1::2]:4000"), s("[fd00:1::3]:5000")),
            (false, false) => (s("10.0.1.2:4000"), s("10.0.2.2:5000")),
            (false, true) => (s("[fd00:1::2]:4000"), s("[fd00:2::2]:5000")),
        }
    }

    /// `direction` for an offer: the interfaces toward A and B.
    #[must_use]
    pub fn direction(&self) -> Option<(&'static str, &'static str)> {
        (!self.one_armed).then_some(("internal", "external"))
    }
}

/// phone A — relay — phone B.
pub struct OneRelay {
    pub a: Netns,
    pub relay: Netns,
    pub b: Netns,
    _pass: Vec<PassProgram>,
}

impl OneRelay {
    /// The two-armed relay of this topology, `internal/10.0.1.1` toward A and
    /// `external/10.0.2.1` toward B, probing off, attached in `mode`.
    ///
    /// # Errors
    ///
    /// As [`Relay::start`].
    pub fn start_relay(&self, mode: XdpMode) -> anyhow::Result<Relay> {
        Relay::start(
            &self.relay,
            &["internal/10.0.1.1", "external/10.0.2.1"],
            &[],
            false,
            mode,
        )
    }

    /// With an `XDP_PASS` program on each phone's end, so that native XDP frames are
    /// delivered there (a test rig's helper; see [`Bridged`] for what a container is).
    ///
    /// # Errors
    ///
    /// If a namespace or link cannot be set up, or a pass program cannot be attached.
    #[expect(
        clippy::used_underscore_binding,
        reason = "the programs are held for their Drop"
    )]
    pub fn build(tag: &str, mode: XdpMode) -> anyhow::Result<Self> {
        let mut t = Self::build_plain(tag)?;
        t._pass = vec![
            t.a.enter(move || PassProgram::attach("a0", mode))??,
            t.b.enter(move || PassProgram::attach("b0", mode))??,
        ];
        Ok(t)
    }

    /// Without anything on the phones' ends.
    ///
    /// # Errors
    ///
    /// If a namespace or link cannot be set up.
    pub fn build_plain(tag: &str) -> anyhow::Result<Self> {
        let a = Netns::new(&format!("{tag}a"))?;
        let relay = Netns::new(&format!("{tag}r"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        link(&a, "a0", &["10.0.1.2/24"], &relay, "r0", &["10.0.1.1/24"])?;
        link(&relay, "r1", &["10.0.2.1/24"], &b, "b0", &["10.0.2.2/24"])?;
        a.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        b.ip(&["route", "add", "default", "via", "10.0.2.1"])?;
        Ok(Self {
            a,
            relay,
            b,
            _pass: Vec::new(),
        })
    }
}

/// phone A — MP1 — NAT (port-changing masquerade) — MP2 — phone B: the field topology of
/// two relays in series, where MP2 cannot reach MP1 until MP1 sends.
pub struct TwoRelays {
    pub a: Netns,
    pub mp1: Netns,
    pub nat: Netns,
    pub mp2: Netns,
    pub b: Netns,
    _pass: Vec<PassProgram>,
}

pub const NAT_PUBLIC: &str = "192.0.2.1";
pub const MP2_PUBLIC: &str = "192.0.2.10";

impl TwoRelays {
    /// # Errors
    ///
    /// If a namespace, link or route cannot be set up.
    pub fn build(tag: &str, mode: XdpMode) -> anyhow::Result<Self> {
        let a = Netns::new(&format!("{tag}a"))?;
        let mp1 = Netns::new(&format!("{tag}m1"))?;
        let nat = Netns::new(&format!("{tag}n"))?;
        let mp2 = Netns::new(&format!("{tag}m2"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        link(&a, "a0", &["10.0.1.2/24"], &mp1, "m1a", &["10.0.1.1/24"])?;
        link(&mp1, "m1n", &["10.1.0.2/24"], &nat, "nin", &["10.1.0.1/24"])?;
        link(
            &nat,
            "nout",
            &["192.0.2.1/24"],
            &mp2,
            "m2n",
            &["192.0.2.10/24"],
        )?;
        link(&mp2, "m2b", &["10.0.2.1/24"], &b, "b0", &["10.0.2.2/24"])?;
        a.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        mp1.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
        b.ip(&["route", "add", "default", "via", "10.0.2.1"])?;
        nat.sysctl("net.ipv4.ip_forward=1")?;
        // A port-changing NAT: the case latching exists for.
        let rules = "table ip nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"nout\" masquerade random\n }\n}\n";
        let path = std::env::temp_dir().join(format!("{}.nft", nat.name()));
        std::fs::write(&path, rules)?;
        nat.exec(&["nft", "-f", &path.to_string_lossy()])?;
        let _ = std::fs::remove_file(&path);
        let pass = vec![
            a.enter(move || PassProgram::attach("a0", mode))??,
            nat.enter(move || PassProgram::attach("nin", mode))??,
            nat.enter(move || PassProgram::attach("nout", mode))??,
            b.enter(move || PassProgram::attach("b0", mode))??,
        ];
        Ok(Self {
            a,
            mp1,
            nat,
            mp2,
            b,
            _pass: pass,
        })
    }

    /// Starts both relays.
    ///
    /// # Errors
    ///
    /// If a relay does not start.
    pub fn relays(
        &self,
        probing: bool,
        mode: XdpMode,
        extra: &[&str],
    ) -> anyhow::Result<(Relay, Relay)> {
        let r1 = Relay::start(
            &self.mp1,
            &["internal/10.0.1.1", "external/10.1.0.2"],
            extra,
            probing,
            mode,
        )?;
        let r2 = Relay::start(
            &self.mp2,
            &["internal/10.0.2.1", "external/192.0.2.10"],
            extra,
            probing,
            mode,
        )?;
        Ok((r1, r2))
    }
}

/// The addresses the phones must send to, after the call was set up through both relays.
pub struct TwoRelayCall {
    pub a_sends_to: SocketAddr,
    pub b_sends_to: SocketAddr,
}

/// Sets up one call through MP1 and MP2 the way two call servers would: offer through MP1
/// then MP2, answer through MP2 then MP1. MP2's call server tells it the next relay (MP1) is
/// behind the NAT's public address; MP1's learns MP2 from the answer.
///
/// # Errors
///
/// If an ng command fails or a reply has no usable SDP.
pub fn two_relay_call(
    t: &TwoRelays,
    r1: &Relay,
    r2: &Relay,
    call_id: &str,
    next_relay: bool,
) -> anyhow::Result<TwoRelayCall> {
    let c1 = r1.ng(&t.mp1)?;
    let c2 = r2.ng(&t.mp2)?;
    let dir = |a: &str, b: &str| Value::List(vec![Value::str(a), Value::str(b)]);
    let o1 = ng(
        &c1,
        "offer",
        &[
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("tag-a")),
            ("sdp", Value::str(&sdp("10.0.1.2", 4000))),
            ("direction", dir("internal", "external")),
        ],
    )?;
    let mut o2_keys = vec![
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("tag-a")),
        ("sdp", Value::Bytes(sdp_of(&o1)?)),
        ("direction", dir("external", "internal")),
    ];
    if next_relay {
        o2_keys.push(("next-relay", Value::str(NAT_PUBLIC)));
    }
    let o2 = ng(&c2, "offer", &o2_keys)?;
    let b_sends_to = sdp_media(&sdp_of(&o2)?)?;
    let a2 = ng(
        &c2,
        "answer",
        &[
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(&sdp("10.0.2.2", 5000))),
        ],
    )?;
    let mut a1_keys = vec![
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("tag-a")),
        ("to-tag", Value::str("tag-b")),
        ("sdp", Value::Bytes(sdp_of(&a2)?)),
    ];
    if next_relay {
        a1_keys.push(("next-relay", Value::str(MP2_PUBLIC)));
    }
    let a1 = ng(&c1, "answer", &a1_keys)?;
    let a_sends_to = sdp_media(&sdp_of(&a1)?)?;
    Ok(TwoRelayCall {
        a_sends_to,
        b_sends_to,
    })
}
