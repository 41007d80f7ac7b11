//! Ready-made topologies and media for the demo and the integration tests: real daemons in
//! network namespaces, phones that send and count RTP, and the ng calls that set them up.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;

use proxy_userspace::ng::{
    bencode::{Dict, Value},
    client::NgClient,
};

mod phone;
mod topology;

pub use phone::{Phone, StreamReport, stream};
pub use topology::{
    Bridged, MP2_PUBLIC, NAT_PUBLIC, OneRelay, TwoRelayCall, TwoRelays, two_relay_call,
};

use crate::testbed::{Guarded, Netns};

/// The relay's `mediaproxy` binary: `MEDIAPROXY_BIN`, else the one beside this executable.
///
/// # Errors
///
/// If no such binary is found.
pub fn binary() -> anyhow::Result<PathBuf> {
    sibling("MEDIAPROXY_BIN", "mediaproxy", "proxy-userspace")
}

/// The lab's own `mediaproxy-lab` binary (the benchmark's socket relay runs as one):
/// `MEDIAPROXY_LAB_BIN`, else the one beside this executable.
///
/// # Errors
///
/// If no such binary is found.
pub fn lab_binary() -> anyhow::Result<PathBuf> {
    sibling("MEDIAPROXY_LAB_BIN", "mediaproxy-lab", "mediaproxy-lab")
}

/// `var` if set; else `name` in this executable's directory (an install, or `target/<profile>`
/// for `mediaproxy-lab`), or in its parent (`target/<profile>/deps/<test>` for a test).
fn sibling(var: &str, name: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent();
    [dir, dir.and_then(std::path::Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|c| c.is_file())
        .with_context(|| {
            format!(
                "cannot find the {name} binary: build it (cargo build -p {package}) or set {var}"
            )
        })
}

/// A relay daemon running in a namespace; stopped (SIGTERM, then detach) on drop.
pub struct Relay {
    pub ns_name: String,
    pub ng: SocketAddr,
    pub log: PathBuf,
    _child: Guarded,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The daemon read its secret at start; its log is only for a failing test's message.
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub const SECRET: &str = "demo-deployment-secret-0123456789";

impl Relay {
    /// Starts `mediaproxy run` in `ns` with these media addresses and extra arguments, and
    /// waits until it answers an ng ping.
    ///
    /// # Errors
    ///
    /// If the binary is missing, its files cannot be written, or it does not start and answer.
    pub fn start(
        ns: &Netns,
        interfaces: &[&str],
        extra: &[&str],
        probing: bool,
        mode: XdpMode,
    ) -> anyhow::Result<Self> {
        let bin = binary()?;
        let dir = std::env::temp_dir().join(format!("mediaproxy-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let secret = dir.join("probe.secret");
        std::fs::write(&secret, SECRET)?;
        let log = dir.join("relay.log");
        let mut args: Vec<String> = vec![bin.to_string_lossy().into_owned(), "run".into()];
        // `Default`: the daemon's own default, as a user who gives no option gets it.
        match mode {
            XdpMode::Default => {}
            XdpMode::Skb => args.extend(["--xdp-mode".into(), "skb".into()]),
            _ => args.extend(["--xdp-mode".into(), "native".into()]),
        }
        for i in interfaces {
            args.push("--interface".into());
            args.push((*i).into());
        }
        if probing {
            args.push("--probe-secret-file".into());
            args.push(secret.to_string_lossy().into_owned());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        let logfile = std::fs::File::create(&log)?;
        let child = ns
            .spawn(&args_ref)?
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            .spawn()
            .context("starting mediaproxy")?;
        let relay = Self {
            ns_name: ns.name().to_owned(),
            ng: "127.0.0.1:22222".parse()?,
            log,
            _child: Guarded(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ping = relay.ng(ns).and_then(|c| {
                let mut d = Dict::new();
                d.push("command", Value::str("ping"));
                let mut c = c;
                c.tries = 1;
                c.request(&d)
            });
            if ping.is_ok_and(|r| r.get_str("result") == Some("pong")) {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                bail!(
                    "mediaproxy in {} did not come up; its log:\n{}",
                    ns.name(),
                    relay.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's process id.
    #[must_use]
    #[expect(
        clippy::used_underscore_binding,
        reason = "the child is held for its Drop and only asked its pid here"
    )]
    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// The daemon's resident memory, in bytes (`VmRSS`).
    ///
    /// # Errors
    ///
    /// If `/proc/<pid>/status` cannot be read or has no `VmRSS`.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .context("no VmRSS")?
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }

    /// An ng client inside the relay's namespace.
    ///
    /// # Errors
    ///
    /// If the client cannot be created in `ns`.
    pub fn ng(&self, ns: &Netns) -> anyhow::Result<NgClient> {
        let addr = self.ng;
        ns.enter(move || NgClient::new(addr))?
    }

    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[must_use]
pub fn sdp(ip: &str, port: u16) -> String {
    let family = if ip.contains(':') { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=- 1 1 IN {family} {ip}\r\ns=mediaproxy\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// Runs one ng command; fails on an error reply.
///
/// # Errors
///
/// If the request fails or the reply is an error.
pub fn ng(client: &NgClient, command: &str, pairs: &[(&str, Value)]) -> anyhow::Result<Dict> {
    let mut d = Dict::new();
    d.push("command", Value::str(command));
    for (k, v) in pairs {
        d.push(k, v.clone());
    }
    let r = client.request(&d)?;
    if r.get_str("result") == Some("error") {
        bail!(
            "{command}: {}",
            r.get_str("error-reason").unwrap_or("error")
        );
    }
    Ok(r)
}

/// The `c=` address and the `m=audio` port of an SDP body.
///
/// # Errors
///
/// If the body has no `c=` line or `m=audio` port, or they do not parse.
pub fn sdp_media(sdp: &[u8]) -> anyhow::Result<SocketAddr> {
    let s = String::from_utf8_lossy(sdp);
    let ip = s
        .lines()
        .find_map(|l| {
            l.strip_prefix("c=IN IP4 ")
                .or_else(|| l.strip_prefix("c=IN IP6 "))
        })
        .context("no c= line")?;
    let port = s
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .context("no m=audio line")?;
    Ok(SocketAddr::new(ip.trim().parse()?, port.parse()?))
}

/// # Errors
///
/// If the reply has no `sdp`.
pub fn sdp_of(reply: &Dict) -> anyhow::Result<Vec<u8>> {
    Ok(reply
        .get("sdp")
        .and_then(Value::as_bytes)
        .context("reply without sdp")?
        .to_vec())
}

/// Sums a per-stream figure of the `mediaproxy` dictionaries in a query reply, over the
/// streams of the tag `tag` (RTP only).
#[must_use]
pub fn query_figure(q: &Dict, tag: &str, key: &str) -> u64 {
    let Some(t) = q
        .get("tags")
        .and_then(Value::as_dict)
        .and_then(|t| t.get(tag))
        .and_then(Value::as_dict)
    else {
        return 0;
    };
    let Some(medias) = t.get("medias").and_then(Value::as_list) else {
        return 0;
    };
    medias
        .iter()
        .filter_map(Value::as_dict)
        .filter_map(|m| m.get("streams").and_then(Value::as_list))
        .filter_map(|s| s.first())
        .filter_map(Value::as_dict)
        .filter_map(|s| s.get("mediaproxy").and_then(Value::as_dict))
        .filter_map(|mp| mp.get(key).and_then(Value::as_int))
        .map(|v| v.max(0).unsigned_abs())
        .sum()
}

/// The text of a per-stream field (RTP stream of `tag`), e.g. `state`.
#[must_use]
pub fn query_text(q: &Dict, tag: &str, key: &str) -> Option<String> {
    let t = q.get("tags")?.as_dict()?.get(tag)?.as_dict()?;
    let s = t
        .get("medias")?
        .as_list()?
        .first()?
        .as_dict()?
        .get("streams")?
        .as_list()?
        .first()?
        .as_dict()?;
    let mp = s.get("mediaproxy")?.as_dict()?;
    match mp.get(key)? {
        Value::Dict(d) => d.get_str("state").map(str::to_owned),
        v => v.as_str().map(str::to_owned),
    }
}

/// Sets one call up over ng the way a call server does (offer from A, answer from B) and
/// returns where each phone must send: `(a_sends_to, b_sends_to)`. `direction` names the
/// relay's interfaces toward A and toward B.
///
/// # Errors
///
/// If an ng command fails or a reply has no usable SDP.
pub fn call(
    client: &NgClient,
    call_id: &str,
    a: SocketAddr,
    b: SocketAddr,
    direction: Option<(&str, &str)>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let mut keys = vec![
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("tag-a")),
        ("sdp", Value::str(&sdp(&a.ip().to_string(), a.port()))),
    ];
    if let Some((x, y)) = direction {
        keys.push(("direction", Value::List(vec![Value::str(x), Value::str(y)])));
    }
    let offer = ng(client, "offer", &keys)?;
    let b_sends_to = sdp_media(&sdp_of(&offer)?)?;
    let answer = ng(
        client,
        "answer",
        &[
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(&sdp(&b.ip().to_string(), b.port()))),
        ],
    )?;
    let a_sends_to = sdp_media(&sdp_of(&answer)?)?;
    Ok((a_sends_to, b_sends_to))
}
