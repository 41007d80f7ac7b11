//! A real Kamailio 5.6 with its stock `rtpengine` module, as a call server drives the relay:
//! the config differs from a stock rtpengine one only in `rtpengine_sock`.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use mediaproxy_lab::{
    scenario::{self, Relay},
    testbed::{Guarded, Netns},
};

use crate::sip;

/// The config: a record-routing proxy on `listen` that calls `rtpengine_offer` on INVITEs
/// with SDP and `rtpengine_answer` on their replies, with the usual flags, and
/// `rtpengine_delete` on BYE. `offer_extra` goes into the offer's flags (a `direction=`
/// pair for a two-armed relay).
#[must_use]
#[expect(clippy::format_collect, reason = "a config file built line by line")]
pub fn config(listen: &[&str], offer_extra: &str) -> String {
    let listens: String = listen
        .iter()
        .map(|l| format!("listen=udp:{l}:5060\n"))
        .collect();
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
mhomed=1
{listens}mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "rtpengine.so"
modparam("rr", "enable_double_rr", 1)
modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:22222")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{ rtpengine_delete(); }}
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (is_method("INVITE") && has_body("application/sdp")) {{
        rtpengine_offer("replace-origin replace-session-connection ICE=remove {offer_extra}");
        t_on_reply("MEDIA");
    }}
    record_route();
    t_relay();
}}

onreply_route[MEDIA] {{
    if (has_body("application/sdp")) {{
        rtpengine_answer("replace-origin replace-session-connection ICE=remove");
    }}
}}
"#
    )
}

/// Kamailio's own sample configuration as Debian ships it (`/etc/kamailio/kamailio.cfg`),
/// with its NAT traversal and rtpengine support turned on (`WITH_NAT`, `WITH_RTPENGINE`:
/// `rtpengine_manage`, with `SIP-source-address` when the SDP holds a private address) and
/// `rtpengine_sock` set to `sock`. With `pstn_gw`, also its documented PSTN routing
/// (`WITH_PSTN`, `pstn.gw_ip`): how an enterprise proxy hands calls for numbers to its
/// carrier. Nothing else is changed.
///
/// # Errors
///
/// If the sample config cannot be read or does not have the lines this edits.
#[expect(
    clippy::similar_names,
    reason = "each name says what the line holds; only their spelling is alike"
)]
pub fn stock_config(sock: &str, pstn_gw: Option<&str>) -> anyhow::Result<String> {
    let sample = std::fs::read_to_string("/etc/kamailio/kamailio.cfg")
        .context("Kamailio's sample config (the kamailio package)")?;
    let stock = r#"modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:2223")"#;
    anyhow::ensure!(
        sample.contains(stock),
        "the sample config has no stock rtpengine_sock line"
    );
    let (first, rest) = sample.split_once('\n').context("an empty sample config")?;
    let mut rest = rest.replace(
        stock,
        &format!(r#"modparam("rtpengine", "rtpengine_sock", "{sock}")"#),
    );
    let mut defines = "#!define WITH_NAT\n#!define WITH_RTPENGINE\n".to_owned();
    if let Some(gw) = pstn_gw {
        let unset = r#"pstn.gw_ip = "" desc "PSTN GW Address""#;
        anyhow::ensure!(
            rest.contains(unset),
            "the sample config has no pstn.gw_ip line"
        );
        rest = rest.replace(
            unset,
            &format!(r#"pstn.gw_ip = "{gw}" desc "PSTN GW Address""#),
        );
        defines.push_str("#!define WITH_PSTN\n");
    }
    Ok(format!("{first}\n{defines}{rest}"))
}

/// A plain proxy config: answers requests where they came from (`force_rport`), record-routes,
/// follows a preloaded route set, and calls
/// `rtpengine_offer` / `rtpengine_answer` with `replace-origin replace-session-connection`
/// (and `rtpengine_delete` on BYE), as most operators' own configs do.
#[must_use]
pub fn plain_config(sock: &str) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "rtpengine.so"
modparam("rtpengine", "rtpengine_sock", "{sock}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    # Replies go back where the request came from (a NAT may have changed its port).
    force_rport();
    if (is_method("OPTIONS") && uri==myself) {{ sl_send_reply("200", "Keepalive"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{ rtpengine_delete(); }}
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    loose_route();
    if (is_method("INVITE") && has_body("application/sdp")) {{
        rtpengine_offer("replace-origin replace-session-connection");
        t_on_reply("MEDIA");
    }}
    record_route();
    t_relay();
}}

onreply_route[MEDIA] {{
    if (has_body("application/sdp")) {{
        rtpengine_answer("replace-origin replace-session-connection");
    }}
}}
"#
    )
}

/// A Kamailio running in a namespace; killed on drop, its files removed.
pub struct Kamailio {
    pub dir: PathBuf,
    _child: Guarded,
}

impl Kamailio {
    /// # Errors
    ///
    /// If the config cannot be written or Kamailio does not start and answer.
    pub fn start(ns: &Netns, cfg: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mp-kam-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("kamailio.cfg");
        std::fs::write(&path, cfg)?;
        let log = std::fs::File::create(dir.join("kamailio.log"))?;
        let child = ns
            .spawn(&[
                "kamailio",
                "-f",
                &path.to_string_lossy(),
                "-DD",
                "-E",
                "-Y",
                &dir.to_string_lossy(),
            ])?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kamailio")?;
        let k = Self {
            dir,
            _child: Guarded(child),
        };
        // Kamailio pings the relay at start-up; wait until it answers SIP.
        k.wait_ready(ns, listen_of(cfg))?;
        Ok(k)
    }

    /// As [`Kamailio::start`], for a config without a `listen=` line: waits until it answers
    /// SIP at `at`.
    ///
    /// # Errors
    ///
    /// If Kamailio does not start or does not answer at `at`.
    pub fn start_at(ns: &Netns, cfg: &str, at: SocketAddr) -> anyhow::Result<Self> {
        let k = Self::start(ns, cfg)?;
        k.wait_ready(ns, Some(at))?;
        Ok(k)
    }

    fn wait_ready(&self, ns: &Netns, listen: Option<SocketAddr>) -> anyhow::Result<()> {
        let Some(addr) = listen else {
            return Ok(());
        };
        let probe = ns.enter(move || UdpSocket::bind(SocketAddr::new(addr.ip(), 0)))??;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let opts = format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKready\r\nFrom: <sip:t@{l}>;tag=r\r\nTo: <sip:{addr}>\r\nCall-ID: ready\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 1\r\nContent-Length: 0\r\n\r\n",
            l = probe.local_addr()?
        );
        probe.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            let _ = probe.send_to(opts.as_bytes(), addr);
            if probe.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        anyhow::bail!(
            "kamailio did not answer SIP on {addr}; its log:\n{}",
            self.log()
        )
    }

    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kamailio.log")).unwrap_or_default()
    }
}

fn listen_of(cfg: &str) -> Option<SocketAddr> {
    cfg.lines()
        .find_map(|l| l.strip_prefix("listen=udp:"))
        .and_then(|a| a.parse().ok())
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One SIP call through Kamailio: A (in `a_ns`, at `ua_a`) calls B (`ua_b`) via the proxy
/// at `proxy`, with SDP for media at `media_a` and `media_b`. Returns, once B answered and
/// A acknowledged, where each phone must send its media (from the SDP it received), and the
/// caller for the BYE.
pub struct SipCall {
    pub a_sends_to: SocketAddr,
    pub b_sends_to: SocketAddr,
    pub caller: sip::Caller,
    pub callee_sock: UdpSocket,
    pub remote_target: String,
}

/// # Errors
///
/// If a socket cannot be bound, or a step of the call gets no expected answer.
#[expect(
    clippy::too_many_arguments,
    reason = "the call's parts, at its one call site shape"
)]
#[expect(clippy::similar_names, reason = "caller and callee, as SIP names them")]
pub fn sip_call(
    a_ns: &Netns,
    b_ns: &Netns,
    ua_a: SocketAddr,
    ua_b: SocketAddr,
    proxy: SocketAddr,
    media_a: SocketAddr,
    media_b: SocketAddr,
    call_id: &str,
    relay: &Relay,
    kamailio: &Kamailio,
) -> anyhow::Result<SipCall> {
    let sock_a = a_ns.enter(move || UdpSocket::bind(ua_a))??;
    let sock_b = b_ns.enter(move || UdpSocket::bind(ua_b))??;
    let b_sdp = scenario::sdp(&media_b.ip().to_string(), media_b.port());
    let callee = std::thread::spawn(move || {
        let inv = sip::answer(&sock_b, ua_b, &b_sdp, Duration::from_secs(10));
        (inv, sock_b)
    });
    let mut caller = sip::Caller {
        sock: sock_a,
        local: ua_a,
        proxy,
        call_id: call_id.into(),
        callee_uri: format!("sip:bob@{ua_b}"),
        route: Vec::new(),
        to_header: format!("<sip:bob@{ua_b}>"),
        preloaded: Vec::new(),
    };
    let ok = caller
        .invite(&scenario::sdp(&media_a.ip().to_string(), media_a.port()))
        .with_context(|| {
            format!(
                "kamailio log:\n{}\nmediaproxy log:\n{}",
                kamailio.log(),
                relay.log_text()
            )
        })?;
    let (invite, callee_sock) = callee
        .join()
        .map_err(|_| anyhow::anyhow!("the callee thread panicked"))?;
    let invite = invite?;
    let remote_target = format!("sip:bob@{ua_b}");
    caller.ack(&remote_target)?;
    Ok(SipCall {
        a_sends_to: scenario::sdp_media(ok.body.as_bytes())?,
        b_sends_to: scenario::sdp_media(invite.body.as_bytes())?,
        caller,
        callee_sock,
        remote_target,
    })
}
