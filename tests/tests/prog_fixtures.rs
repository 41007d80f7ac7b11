//! `BPF_PROG_TEST_RUN` fixtures for the XDP and TC programs, in the Katran style: one table row
//! per rule, each with the flow state (next hop included), the input frame, the expected
//! action, the exact expected output bytes and the counter that must record it.
//!
//! The programs run for real in a private network namespace that holds two veth pairs, so
//! that the next hops name real devices: `relay0` (10.0.1.1, `fd00:1::1`) faces side A,
//! `relay1` (10.0.2.1, `fd00:2::1`) side B. Nothing in the namespace forwards: the next hop is
//! the flow entry's, as the daemon resolves it.

use aya::programs::{TestRun as _, TestRunOptions};
use mediaproxy_tests::{Env, need_root};
use proxy_common::{Counter, Endpoint, FlowKey, FlowState};
use proxy_userspace::{
    dataplane::{AttachMode, Dataplane, DataplaneConfig, Egress, FlowSpec, MismatchPolicy},
    frame::{FrameBuilder, Mac, UdpChecksumMode},
    nexthop::NextHop,
    xsk::{XskConfig, XskSocket},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const PROBE_PORT: u16 = 7999;

const RELAY0_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
const PEER0_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x02];
const RELAY1_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
const PEER1_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x02];

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it in `ctx_in`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn v4(a: [u8; 4], p: u16) -> Endpoint {
    Endpoint::v4(a, p)
}

fn v6(last: u16, net: u8, p: u16) -> Endpoint {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[3] = net;
    a[14..16].copy_from_slice(&last.to_be_bytes());
    Endpoint::v6(a, p)
}

/// What a row expects back.
#[derive(Clone)]
enum Out {
    /// The input, unchanged.
    Same,
    /// These exact bytes.
    Bytes(Vec<u8>),
}

/// Which program a table runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prog {
    Xdp(AttachMode),
    Tc,
}

/// A flow to install: its key, what the session logic asked, and its next hop.
type Flow = (Endpoint, FlowSpec, Option<Egress>);

#[derive(Clone)]
struct Case {
    name: String,
    /// Flows to install before the run.
    flows: Vec<Flow>,
    input: Vec<u8>,
    action: u32,
    output: Out,
    counter: Counter,
}

fn forward_spec(peer: Option<Endpoint>, out_src: Endpoint, out_dst: Endpoint) -> FlowSpec {
    FlowSpec {
        state: FlowState::Forward,
        peer,
        mismatch: MismatchPolicy::Punt,
        out_src,
        hint: None,
        hint_ip: None,
        out_dst,
    }
}

/// A next hop out of `ifindex` with these MACs and MTU.
#[expect(
    clippy::unnecessary_wraps,
    reason = "the fixture tables' next hop is an Option"
)]
fn hop(
    ifindex: u32,
    src_mac: Mac,
    dst_mac: Mac,
    mtu: u16,
    native: bool,
    redirect_only: bool,
) -> Option<Egress> {
    Some(Egress {
        hop: NextHop {
            ifindex,
            src_mac,
            dst_mac,
            mtu,
        },
        native,
        redirect_only,
    })
}

/// `struct __sk_buff` up to `ifindex`, as `BPF_PROG_TEST_RUN` takes it for a TC program: the
/// fields it does not allow must be zero.
#[repr(C)]
#[derive(Default)]
struct SkBuffCtx {
    len: u32,
    pkt_type: u32,
    mark: u32,
    queue_mapping: u32,
    protocol: u32,
    vlan_present: u32,
    vlan_tci: u32,
    vlan_proto: u32,
    priority: u32,
    ingress_ifindex: u32,
    ifindex: u32,
}

/// One `BPF_PROG_TEST_RUN` of the native XDP program on `frame`, arriving on `ingress`: its
/// action.
fn run_xdp_once(dp: &Dataplane, ingress: u32, frame: &[u8]) -> u32 {
    run_xdp_out(dp, ingress, frame).0
}

/// As [`run_xdp_once`], with the frame as the program left it.
fn run_xdp_out(dp: &Dataplane, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    let md = XdpMd {
        ingress_ifindex: ingress,
        data_end: u32::try_from(frame.len()).unwrap(),
        ..XdpMd::default()
    };
    let mut out = vec![0u8; frame.len() + 256];
    let r = dp
        .program()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(as_bytes(&md)),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .unwrap();
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn as_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: the context structs are repr(C) plain data.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}

/// The programs loaded with room for `max_flows`, and an `AF_XDP` socket on `relay0`'s queue 0
/// for what they punt.
fn dataplane_with_socket(relay0: u32, max_flows: u32, probe_port: u16) -> (Dataplane, XskSocket) {
    dataplane_with_socket_for(
        relay0,
        &DataplaneConfig {
            max_flows,
            probe_port,
            ..DataplaneConfig::default()
        },
    )
}

fn dataplane_with_socket_for(relay0: u32, cfg: &DataplaneConfig) -> (Dataplane, XskSocket) {
    let mut dp = Dataplane::load(cfg).expect("load the programs");
    let xsk = XskSocket::bind(
        relay0,
        0,
        XskConfig {
            frames: 64,
            frame_size: 2048,
            ring_size: 32,
        },
    )
    .expect("AF_XDP socket on relay0");
    dp.register_socket(relay0, 0, &xsk).unwrap();
    (dp, xsk)
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "test frames far below the fields' limits"
)]
fn run_table(env: &Env, prog: Prog, cases: Vec<Case>) {
    let relay0 = env.ifindex("relay0");
    let (mut dp, _xsk) = dataplane_with_socket(relay0, 64, PROBE_PORT);
    let own: std::collections::HashSet<std::net::IpAddr> =
        ["10.0.1.1", "10.0.2.1", "fd00:1::1", "fd00:2::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
    dp.set_local_addresses(&own).unwrap();

    let mut failures = Vec::new();
    for case in cases {
        for (local, spec, egress) in &case.flows {
            dp.add_flow(FlowKey::new(*local), spec, *egress).unwrap();
        }
        let before = dp.global_counters().unwrap();
        let md = XdpMd {
            data_end: case.input.len() as u32,
            ingress_ifindex: relay0,
            ..XdpMd::default()
        };
        let skb = SkBuffCtx {
            ifindex: relay0,
            ..SkBuffCtx::default()
        };
        let mut out = vec![0u8; case.input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(&case.input),
            data_out: Some(&mut out),
            ctx_in: Some(match prog {
                Prog::Xdp(_) => as_bytes(&md),
                Prog::Tc => as_bytes(&skb),
            }),
            ..TestRunOptions::default()
        };
        let r = match prog {
            Prog::Xdp(mode) => dp.program_of(mode).unwrap().test_run(opts),
            Prog::Tc => dp.tc_program().unwrap().test_run(opts),
        }
        .unwrap_or_else(|e| panic!("{}: test_run failed: {e}", case.name));
        out.truncate(r.data_size_out as usize);
        let after = dp.global_counters().unwrap();
        let delta = after.delta(&before);

        let expected = match &case.output {
            Out::Same => case.input.clone(),
            Out::Bytes(b) => b.clone(),
        };
        if r.return_value != case.action {
            failures.push(format!(
                "{}: action {} != expected {}",
                case.name, r.return_value, case.action
            ));
        }
        if out != expected {
            failures.push(format!(
                "{}: output differs\n  got      {}\n  expected {}",
                case.name,
                hex(&out),
                hex(&expected)
            ));
        }
        // XDP counts every frame once, and its verdict; TC counts only what it does with a
        // flow's packet (`Frames` stands for "nothing" in a TC row).
        let want = match prog {
            Prog::Xdp(_) => vec![("frames", 1), (case.counter.name(), 1)],
            Prog::Tc if case.counter == Counter::Frames => vec![],
            Prog::Tc => vec![(case.counter.name(), 1)],
        };
        if delta != want {
            failures.push(format!("{}: counters {delta:?} != {want:?}", case.name));
        }
        for (local, _, _) in &case.flows {
            dp.remove_flow(FlowKey::new(*local)).unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[expect(clippy::format_collect, reason = "hex for a failure message")]
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "test frames far below the fields' limits"
)]
fn rtp_payload(len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00, 0x12, 0x34, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef];
    p.extend((0..len.saturating_sub(12)).map(|i| (i * 7 + 3) as u8));
    p
}

/// One address family's fixture: phone A behind relay0, phone B behind relay1, and the
/// relay's two ports between them.
struct Family {
    tag: &'static str,
    a: Endpoint,
    relay_a: Endpoint,
    relay_b: Endpoint,
    b: Endpoint,
    /// Another host on A's side.
    spoofer: Endpoint,
    /// A destination of the other family.
    elsewhere: Endpoint,
    /// A second port of the relay facing A, and a second port of A: a call back out of
    /// the interface media came in on.
    relay_a2: Endpoint,
    a2: Endpoint,
    /// A host on A's side that is not the relay (its probe port is not ours).
    neighbour: Endpoint,
    ip_len: usize,
}

impl Family {
    fn v4() -> Self {
        Family {
            tag: "v4",
            a: v4([10, 0, 1, 2], 4000),
            relay_a: v4([10, 0, 1, 1], 30000),
            relay_b: v4([10, 0, 2, 1], 30002),
            b: v4([10, 0, 2, 2], 5000),
            spoofer: v4([10, 0, 1, 66], 4000),
            elsewhere: v6(2, 2, 5000),
            relay_a2: v4([10, 0, 1, 1], 30004),
            a2: v4([10, 0, 1, 2], 4002),
            neighbour: v4([10, 0, 1, 77], PROBE_PORT),
            ip_len: 20,
        }
    }

    fn v6() -> Self {
        Family {
            tag: "v6",
            a: v6(2, 1, 4000),
            relay_a: v6(1, 1, 30000),
            relay_b: v6(1, 2, 30002),
            b: v6(2, 2, 5000),
            spoofer: v6(66, 1, 4000),
            elsewhere: v4([10, 0, 2, 2], 5000),
            relay_a2: v6(1, 1, 30004),
            a2: v6(2, 1, 4002),
            neighbour: v6(77, 1, PROBE_PORT),
            ip_len: 40,
        }
    }

    /// A frame from A to the relay.
    fn input(&self, p: &[u8]) -> FrameBuilder {
        FrameBuilder::udp(self.a, self.relay_a)
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(p)
    }

    /// What leaves toward B: one hop, TTL (hop limit) 64 in, 63 out.
    fn forwarded(&self, p: &[u8]) -> FrameBuilder {
        FrameBuilder::udp(self.relay_b, self.b)
            .macs(RELAY1_MAC, PEER1_MAC)
            .ttl(63)
            .payload(p)
    }

    /// A frame from `src` to the relay.
    fn from(&self, src: Endpoint, p: &[u8]) -> Vec<u8> {
        FrameBuilder::udp(src, self.relay_a)
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(p)
            .build()
    }
}

impl Case {
    /// A row whose output is its input, unchanged.
    fn same(name: String, flows: Vec<Flow>, input: Vec<u8>, action: u32, counter: Counter) -> Self {
        Case {
            name,
            flows,
            input,
            action,
            output: Out::Same,
            counter,
        }
    }

    /// A row that must produce exactly `output`.
    fn bytes(
        name: String,
        flows: Vec<Flow>,
        input: Vec<u8>,
        action: u32,
        output: Vec<u8>,
        counter: Counter,
    ) -> Self {
        Case {
            output: Out::Bytes(output),
            ..Case::same(name, flows, input, action, counter)
        }
    }
}

/// The rows both families share, one table per program (native XDP, generic XDP, TC): the
/// same situation gets the same verdict whatever the family.
#[expect(
    clippy::too_many_lines,
    reason = "a table: one row per situation, read top to bottom"
)]
fn shared_tables(f: &Family, relay0: u32, relay1: u32) -> [(Prog, Vec<Case>); 3] {
    let n = |what: &str| format!("{} {what}", f.tag);
    // Toward B through relay1: native frames delivered; the same with jumbo MTU; an egress
    // that drops native frames (a container's veth); an MTU of 1280.
    let to_b = hop(relay1, RELAY1_MAC, PEER1_MAC, 1500, true, true);
    let to_b_jumbo = hop(relay1, RELAY1_MAC, PEER1_MAC, 9000, true, true);
    let to_b_skb = hop(relay1, RELAY1_MAC, PEER1_MAC, 1500, false, true);
    let to_b_1280 = hop(relay1, RELAY1_MAC, PEER1_MAC, 1280, true, true);
    let fwd = forward_spec(Some(f.a), f.relay_b, f.b);
    let hold = FlowSpec::hold();
    let hold_strict = FlowSpec {
        peer: Some(f.a),
        mismatch: MismatchPolicy::Drop,
        ..FlowSpec::hold()
    };
    let mismatch_drop = FlowSpec {
        mismatch: MismatchPolicy::Drop,
        ..fwd
    };
    let other_family = FlowSpec {
        out_dst: f.elsewhere,
        ..fwd
    };
    // Back out of the interface it came in on: a NIC (XDP_TX) or a veth (a redirect).
    let hairpin = forward_spec(Some(f.a), f.relay_a2, f.a2);
    let hairpin_nic = hop(relay0, RELAY0_MAC, PEER0_MAC, 1500, true, false);
    let hairpin_veth = hop(relay0, RELAY0_MAC, PEER0_MAC, 1500, true, true);
    let payload = rtp_payload(172);
    let hairpinned = FrameBuilder::udp(f.relay_a2, f.a2)
        .macs(RELAY0_MAC, PEER0_MAC)
        .ttl(63)
        .payload(&payload)
        .build();
    let base = f.input(&payload).build();
    let out = f.forwarded(&payload).build();
    let udp = 14 + f.ip_len;
    let mut bad_udp_len = base.clone();
    bad_udp_len[udp + 4..udp + 6].copy_from_slice(&500u16.to_be_bytes());
    let big = rtp_payload(1400);
    let mtu_payload = rtp_payload(1280 - f.ip_len - 8);
    let probe = |to: Endpoint| {
        FrameBuilder::udp(f.a.with_port(PROBE_PORT), to)
            .payload(b"MPRB")
            .build()
    };
    let partial = |p: &[u8]| f.input(p).checksum(UdpChecksumMode::Partial).build();
    let xdp = vec![
        Case::same(
            n("no entry: passed untouched"),
            vec![],
            base.clone(),
            XDP_PASS,
            Counter::PassNoFlow,
        ),
        Case::same(
            n("HOLD: punted to AF_XDP"),
            vec![(f.relay_a, hold, None)],
            base.clone(),
            XDP_REDIRECT,
            Counter::PuntHold,
        ),
        Case::same(
            n("HOLD, latched, strict: a spoofer is dropped before userspace"),
            vec![(f.relay_a, hold_strict, None)],
            f.from(f.spoofer, &payload),
            XDP_DROP,
            Counter::DropMismatch,
        ),
        Case::same(
            n("HOLD, latched, strict: the peer is punted"),
            vec![(f.relay_a, hold_strict, None)],
            base.clone(),
            XDP_REDIRECT,
            Counter::PuntHold,
        ),
        Case::bytes(
            n("FORWARD: rewritten and redirected out of relay1"),
            vec![(f.relay_a, fwd, to_b)],
            base.clone(),
            XDP_REDIRECT,
            out.clone(),
            Counter::FwdRedirect,
        ),
        Case::bytes(
            n("FORWARD: partial checksum completed"),
            vec![(f.relay_a, fwd, to_b)],
            partial(&payload),
            XDP_REDIRECT,
            out.clone(),
            Counter::FwdRedirect,
        ),
        Case::bytes(
            n("FORWARD: partial checksum, odd 1401-byte payload (22 chunks and a tail)"),
            vec![(f.relay_a, fwd, to_b)],
            partial(&rtp_payload(1401)),
            XDP_REDIRECT,
            f.forwarded(&rtp_payload(1401)).build(),
            Counter::FwdRedirect,
        ),
        Case::bytes(
            n("FORWARD: partial checksum, empty payload"),
            vec![(f.relay_a, fwd, to_b)],
            partial(&[]),
            XDP_REDIRECT,
            f.forwarded(&[]).build(),
            Counter::FwdRedirect,
        ),
        Case::same(
            n("FORWARD: partial checksum over a payload too long for XDP: punted"),
            vec![(f.relay_a, fwd, to_b_jumbo)],
            partial(&rtp_payload(1600)),
            XDP_REDIRECT,
            Counter::PuntOversize,
        ),
        Case::same(
            n("FORWARD: TTL 1 (a forwarding loop): dropped"),
            vec![(f.relay_a, fwd, to_b)],
            f.input(&payload).ttl(1).build(),
            XDP_DROP,
            Counter::DropTtl,
        ),
        Case::same(
            n("probe port to another host's address: not ours, passed"),
            vec![],
            probe(f.neighbour),
            XDP_PASS,
            Counter::PassNoFlow,
        ),
        Case::same(
            n("probe port: punted"),
            vec![],
            probe(f.relay_a.with_port(PROBE_PORT)),
            XDP_REDIRECT,
            Counter::PuntProbe,
        ),
        Case::bytes(
            n("FORWARD: back out of the ingress NIC with XDP_TX"),
            vec![(f.relay_a, hairpin, hairpin_nic)],
            base.clone(),
            XDP_TX,
            hairpinned.clone(),
            Counter::FwdTx,
        ),
        Case::bytes(
            n(
                "FORWARD: back out of an ingress veth with a redirect (XDP_TX frames stall behind a GRO peer)",
            ),
            vec![(f.relay_a, hairpin, hairpin_veth)],
            base.clone(),
            XDP_REDIRECT,
            hairpinned,
            Counter::FwdRedirect,
        ),
        Case::same(
            n("FORWARD, egress drops native frames: passed untouched to the TC program"),
            vec![(f.relay_a, fwd, to_b_skb)],
            base.clone(),
            XDP_PASS,
            Counter::PassSkbPath,
        ),
        Case::same(
            n("FORWARD, wrong source, punt policy: punted untouched"),
            vec![(f.relay_a, fwd, to_b)],
            f.from(f.spoofer, &payload),
            XDP_REDIRECT,
            Counter::PuntMismatch,
        ),
        Case::same(
            n("FORWARD, wrong source port, drop policy: dropped"),
            vec![(f.relay_a, mismatch_drop, to_b)],
            f.from(f.a.with_port(4001), &payload),
            XDP_DROP,
            Counter::DropMismatch,
        ),
        Case::same(
            n("FORWARD, next hop not resolved: punted untouched for the kernel's stack"),
            vec![(f.relay_a, fwd, None)],
            base.clone(),
            XDP_REDIRECT,
            Counter::PuntNoNextHop,
        ),
        Case::same(
            n(&format!(
                "FORWARD, larger than the egress MTU ({} > 1280): punted for the kernel to fragment",
                f.ip_len + 8 + 1400
            )),
            vec![(f.relay_a, fwd, to_b_1280)],
            f.input(&big).build(),
            XDP_REDIRECT,
            Counter::PuntTooBig,
        ),
        Case::bytes(
            n("FORWARD, exactly the egress MTU: forwarded"),
            vec![(f.relay_a, fwd, to_b_1280)],
            f.input(&mtu_payload).build(),
            XDP_REDIRECT,
            f.forwarded(&mtu_payload).build(),
            Counter::FwdRedirect,
        ),
        Case::same(
            n("FORWARD to another family: punted"),
            vec![(f.relay_a, other_family, to_b)],
            base.clone(),
            XDP_REDIRECT,
            Counter::PuntFamily,
        ),
        Case::same(
            n("flow's packet with UDP length beyond the IP payload: dropped"),
            vec![(f.relay_a, fwd, to_b)],
            bad_udp_len.clone(),
            XDP_DROP,
            Counter::DropMalformed,
        ),
        Case::same(
            n("same malformed packet without a flow: left to the kernel"),
            vec![],
            bad_udp_len,
            XDP_PASS,
            Counter::PassNoFlow,
        ),
        Case::same(
            n("VLAN-tagged: passed to the kernel's VLAN devices"),
            vec![(f.relay_a, fwd, to_b)],
            f.input(&payload).vlan(100).build(),
            XDP_PASS,
            Counter::PassVlan,
        ),
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, as do drivers.
        Case::same(
            n("Ethernet header only"),
            vec![],
            base[..14].to_vec(),
            XDP_PASS,
            Counter::PassTruncated,
        ),
        Case::same(
            n("truncated in the IP header"),
            vec![(f.relay_a, fwd, to_b)],
            base[..udp - 1].to_vec(),
            XDP_PASS,
            Counter::PassTruncated,
        ),
        Case::same(
            n("truncated in the UDP header"),
            vec![(f.relay_a, fwd, to_b)],
            base[..udp + 7].to_vec(),
            XDP_PASS,
            Counter::PassTruncated,
        ),
        Case::same(
            n("truncated in the payload (IP length beyond the frame): dropped"),
            vec![(f.relay_a, fwd, to_b)],
            base[..base.len() - 1].to_vec(),
            XDP_DROP,
            Counter::DropMalformed,
        ),
    ];
    // Generic (SKB) XDP: forwards whatever the egress, but leaves a partial checksum (an skb
    // in CHECKSUM_PARTIAL) to TC, whose helpers know the skb's state.
    let skb = vec![
        Case::bytes(
            n("SKB mode, FORWARD to an egress that drops native frames: forwarded"),
            vec![(f.relay_a, fwd, to_b_skb)],
            base.clone(),
            XDP_REDIRECT,
            out.clone(),
            Counter::FwdRedirect,
        ),
        Case::same(
            n("SKB mode, partial checksum: passed untouched to TC"),
            vec![(f.relay_a, fwd, to_b)],
            partial(&payload),
            XDP_PASS,
            Counter::PassSkbPath,
        ),
        Case::same(
            n("SKB mode, HOLD: punted"),
            vec![(f.relay_a, hold, None)],
            base.clone(),
            XDP_REDIRECT,
            Counter::PuntHold,
        ),
    ];
    // TC: the skb path. The kernel's helpers update the checksums; BPF_PROG_TEST_RUN's skb
    // has no checksum state (CHECKSUM_NONE), so a complete checksum is updated in place,
    // exactly as XDP does it.
    let tc = vec![
        Case::bytes(
            n("TC, FORWARD: rewritten and redirected"),
            vec![(f.relay_a, fwd, to_b_skb)],
            base.clone(),
            TC_ACT_REDIRECT,
            out,
            Counter::TcFwd,
        ),
        Case::same(
            n("TC, TTL 1: dropped"),
            vec![(f.relay_a, fwd, to_b_skb)],
            f.input(&payload).ttl(1).build(),
            TC_ACT_SHOT,
            Counter::DropTtl,
        ),
        Case::same(
            n("TC, larger than the egress MTU: left to the stack (the fallback socket)"),
            vec![(f.relay_a, fwd, to_b_1280)],
            f.input(&big).build(),
            TC_ACT_OK,
            Counter::TcToUserspace,
        ),
        Case::same(
            n("TC, no next hop: left to the stack"),
            vec![(f.relay_a, fwd, None)],
            base.clone(),
            TC_ACT_OK,
            Counter::TcToUserspace,
        ),
        Case::same(
            n("TC, HOLD: left to the stack"),
            vec![(f.relay_a, hold, None)],
            base.clone(),
            TC_ACT_OK,
            Counter::TcToUserspace,
        ),
        Case::same(
            n("TC, wrong source, drop policy: dropped"),
            vec![(f.relay_a, mismatch_drop, to_b_skb)],
            f.from(f.a.with_port(4001), &payload),
            TC_ACT_SHOT,
            Counter::TcDropMismatch,
        ),
        Case::same(
            n("TC, no flow: left alone, uncounted"),
            vec![],
            base,
            TC_ACT_OK,
            Counter::Frames,
        ),
    ];
    [
        (Prog::Xdp(AttachMode::Native), xdp),
        (Prog::Xdp(AttachMode::Skb), skb),
        (Prog::Tc, tc),
    ]
}

/// Runs the shared tables for `f`, with the family's own rows added to the native XDP and
/// the TC tables.
fn run_family(env: &Env, f: &Family, native_only: &[Case], tc_only: &[Case]) {
    let (relay0, relay1) = (env.ifindex("relay0"), env.ifindex("relay1"));
    for (prog, mut cases) in shared_tables(f, relay0, relay1) {
        match prog {
            Prog::Xdp(AttachMode::Native) => cases.extend_from_slice(native_only),
            Prog::Tc => cases.extend_from_slice(tc_only),
            Prog::Xdp(_) => {}
        }
        run_table(env, prog, cases);
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "the rows only IPv4 has (options, fragments, zero checksums), one after the other"
)]
fn ipv4_fixtures() {
    need_root();
    let env = Env::fixture("fx4").unwrap();
    env.enter(|env| {
        let f = Family::v4();
        let relay1 = env.ifindex("relay1");
        let to_b = hop(relay1, RELAY1_MAC, PEER1_MAC, 1500, true, true);
        let to_b_skb = hop(relay1, RELAY1_MAC, PEER1_MAC, 1500, false, true);
        let fwd = forward_spec(Some(f.a), f.relay_b, f.b);
        let payload = rtp_payload(172);
        let base = f.input(&payload).build();
        let zero = |b: FrameBuilder| b.checksum(UdpChecksumMode::Zero).build();
        let edit = |at: usize, byte: u8| {
            let mut frame = base.clone();
            frame[at] = byte;
            frame
        };
        let mut arp = base[..42].to_vec();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut options_past_the_frame = base[..14 + 20 + 8].to_vec();
        options_past_the_frame[14] = 0x4f;
        let native = [
            Case::bytes(
                "v4 FORWARD: zero UDP checksum stays zero".into(),
                vec![(f.relay_a, fwd, to_b)],
                zero(f.input(&payload)),
                XDP_REDIRECT,
                zero(f.forwarded(&payload)),
                Counter::FwdRedirect,
            ),
            Case::same(
                "v4 FORWARD: IPv4 options (loose source route here): punted, userspace sends clean"
                    .into(),
                vec![(f.relay_a, fwd, to_b)],
                f.input(&payload)
                    .ip_options(&[0x83, 0x07, 0x04, 10, 0, 9, 9, 0x00])
                    .build(),
                XDP_REDIRECT,
                Counter::PuntIpOptions,
            ),
            Case::same(
                "v4 IPv4 fragment: passed (the kernel reassembles; the fallback socket gets it)"
                    .into(),
                vec![(f.relay_a, fwd, to_b)],
                edit(14 + 6, 0x20), // MF
                XDP_PASS,
                Counter::PassFragment,
            ),
            Case::same(
                "v4 TCP: passed".into(),
                vec![],
                edit(14 + 9, 6),
                XDP_PASS,
                Counter::PassNotUdp,
            ),
            Case::same(
                "v4 ARP: passed".into(),
                vec![],
                arp,
                XDP_PASS,
                Counter::PassNotIp,
            ),
            Case::same(
                "v4 IHL below 5: passed".into(),
                vec![(f.relay_a, fwd, to_b)],
                edit(14, 0x44),
                XDP_PASS,
                Counter::PassTruncated,
            ),
            Case::same(
                "v4 IPv4 options pushing the UDP header past the frame".into(),
                vec![(f.relay_a, fwd, to_b)],
                options_past_the_frame,
                XDP_PASS,
                Counter::PassTruncated,
            ),
        ];
        let tc = [
            Case::bytes(
                "v4 TC, FORWARD, zero UDP checksum stays zero".into(),
                vec![(f.relay_a, fwd, to_b_skb)],
                zero(f.input(&payload)),
                TC_ACT_REDIRECT,
                zero(f.forwarded(&payload)),
                Counter::TcFwd,
            ),
            Case::same(
                "v4 TC, FORWARD with IPv4 options: left to userspace, which sends clean".into(),
                vec![(f.relay_a, fwd, to_b_skb)],
                f.input(&payload)
                    .ip_options(&[0x01, 0x01, 0x01, 0x00])
                    .build(),
                TC_ACT_OK,
                Counter::TcToUserspace,
            ),
            Case::same(
                "v4 TC, fragment: left alone, uncounted".into(),
                vec![(f.relay_a, fwd, to_b_skb)],
                edit(14 + 6, 0x20),
                TC_ACT_OK,
                Counter::Frames,
            ),
        ];
        run_family(env, &f, &native, &tc);
    })
    .unwrap();
}

#[test]
fn ipv6_fixtures() {
    need_root();
    let env = Env::fixture("fx6").unwrap();
    env.enter(|env| {
        let f = Family::v6();
        let to_b = hop(
            env.ifindex("relay1"),
            RELAY1_MAC,
            PEER1_MAC,
            1500,
            true,
            true,
        );
        let fwd = forward_spec(Some(f.a), f.relay_b, f.b);
        let payload = rtp_payload(172);
        let base = f.input(&payload).build();
        let next_header = |h: u8| {
            let mut frame = base.clone();
            frame[14 + 6] = h;
            frame
        };
        let native = [
            Case::same(
                "v6 zero UDP checksum (forbidden): dropped".into(),
                vec![(f.relay_a, fwd, to_b)],
                f.input(&payload).checksum(UdpChecksumMode::Zero).build(),
                XDP_DROP,
                Counter::DropMalformed,
            ),
            Case::same(
                "v6 extension header (hop-by-hop options): passed".into(),
                vec![(f.relay_a, fwd, to_b)],
                next_header(0),
                XDP_PASS,
                Counter::PassNotUdp,
            ),
            Case::same(
                "v6 fragment header: passed (the kernel reassembles)".into(),
                vec![(f.relay_a, fwd, to_b)],
                next_header(44),
                XDP_PASS,
                Counter::PassNotUdp,
            ),
            Case::same(
                "v6 TCP: passed".into(),
                vec![],
                next_header(6),
                XDP_PASS,
                Counter::PassNotUdp,
            ),
        ];
        run_family(env, &f, &native, &[]);
    })
    .unwrap();
}

/// The kernel's punt budgets under `BPF_PROG_TEST_RUN`'s repeat (thousands of runs within
/// milliseconds, a flood's rate): an unsignalled source gets its flow's burst through and no
/// more, the source that signalling named keeps getting through, and probes to the relay's
/// address have their own budget.
/// The kernel keeps no clock per packet: userspace tells when a flow last forwarded from its
/// forward counter moving between two reads. Never early (no forward, no time), and the time
/// of the read that saw the counter move, which the next reads keep while the flow is silent.
#[test]
fn last_forwarded_is_the_read_that_saw_the_forward_counter_move() {
    need_root();
    let env = Env::fixture("fxl").unwrap();
    env.enter(|env| {
        let (relay0, relay1) = (env.ifindex("relay0"), env.ifindex("relay1"));
        let mut dp = Dataplane::load(&DataplaneConfig {
            max_flows: 8,
            probe_port: 0,
            ..DataplaneConfig::default()
        })
        .unwrap();
        let relay_a = v4([10, 0, 1, 1], 30000);
        let phone = v4([10, 0, 1, 2], 4000);
        let key = FlowKey::new(relay_a);
        let spec = forward_spec(
            Some(phone),
            v4([10, 0, 2, 1], 30002),
            v4([10, 0, 2, 2], 5000),
        );
        dp.add_flow(
            key,
            &spec,
            hop(relay1, RELAY1_MAC, PEER1_MAC, 1500, true, false),
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(
            dp.last_forwarded(key, t0).unwrap().1,
            None,
            "nothing forwarded yet"
        );
        let frame = FrameBuilder::udp(phone, relay_a)
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(&rtp_payload(172))
            .build();
        assert_eq!(run_xdp_once(&dp, relay0, &frame), XDP_REDIRECT);
        let t1 = t0 + std::time::Duration::from_secs(1);
        let (c, seen) = dp.last_forwarded(key, t1).unwrap();
        assert_eq!(
            (c.fwd_packets, seen),
            (1, Some(t1)),
            "the read that saw it move"
        );
        let t2 = t1 + std::time::Duration::from_secs(1);
        assert_eq!(
            dp.last_forwarded(key, t2).unwrap().1,
            Some(t1),
            "silent since: the earlier read's time is kept"
        );
        // An update (a new next hop, a re-latch) keeps the counters and what was seen of them.
        dp.update_flow(
            key,
            &spec,
            hop(relay1, RELAY1_MAC, PEER1_MAC, 1400, true, false),
        )
        .unwrap();
        assert_eq!(dp.last_forwarded(key, t2).unwrap().1, Some(t1));
    })
    .unwrap();
}

/// The flow array of this dataplane's program (another test's, in this process, has the same
/// name): to write an element as a userspace rewrite in progress leaves it.
fn flow_array(dp: &Dataplane) -> aya::maps::Array<aya::maps::MapData, proxy_common::FlowEntry> {
    let ids = dp
        .program()
        .unwrap()
        .info()
        .unwrap()
        .map_ids()
        .unwrap()
        .unwrap();
    let id = ids
        .into_iter()
        .find(|id| {
            aya::maps::MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some("FLOW_ARRAY"))
        })
        .expect("the program uses FLOW_ARRAY");
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id).unwrap()).unwrap();
    aya::maps::Array::try_from(map).unwrap()
}

/// A dataplane of one block (8 flows: a key's place is its port alone) with a socket for
/// punts, and FORWARD flows from the phone toward side B, flow `n` from relay port 30000 + n
/// to side B's port 5000 + n.
struct PlaceRig {
    dp: Dataplane,
    _xsk: XskSocket,
    relay0: u32,
    to_b: Option<Egress>,
}

const PHONE: Endpoint = Endpoint::v4([10, 0, 1, 2], 4000);
const FIRST: Endpoint = Endpoint::v4([10, 0, 1, 1], 30000);
/// Another relay address with the same port: the same place as [`FIRST`].
const SECOND: Endpoint = Endpoint::v4([10, 0, 1, 9], 30000);
const THIRD: Endpoint = Endpoint::v4([10, 0, 1, 5], 30000);

impl PlaceRig {
    fn new(env: &Env) -> Self {
        Self::with_media(env, &[])
    }

    /// With `media` given to the dataplane as the relay's media addresses.
    fn with_media(env: &Env, media: &[Endpoint]) -> Self {
        let (relay0, relay1) = (env.ifindex("relay0"), env.ifindex("relay1"));
        let (dp, xsk) = dataplane_with_socket_for(
            relay0,
            &DataplaneConfig {
                max_flows: 8,
                probe_port: 0,
                media_addrs: media.iter().filter_map(Endpoint::ip).collect(),
                ..DataplaneConfig::default()
            },
        );
        Self {
            dp,
            _xsk: xsk,
            relay0,
            to_b: hop(relay1, RELAY1_MAC, PEER1_MAC, 1500, true, true),
        }
    }

    fn out(n: u16) -> (Endpoint, Endpoint) {
        (v4([10, 0, 2, 1], 30000 + n), v4([10, 0, 2, 2], 5000 + n))
    }

    fn add(&mut self, key: Endpoint, n: u16) {
        self.try_add(key, n).unwrap();
    }

    /// Flow `n` from the phone to `key`, as the dataplane answers it.
    fn try_add(&mut self, key: Endpoint, n: u16) -> anyhow::Result<()> {
        let (src, dst) = Self::out(n);
        self.dp.add_flow(
            FlowKey::new(key),
            &forward_spec(Some(PHONE), src, dst),
            self.to_b,
        )
    }

    fn input(to: Endpoint) -> Vec<u8> {
        FrameBuilder::udp(PHONE, to)
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(&rtp_payload(172))
            .build()
    }

    /// What flow `n` sends: the action, the frame and the counter of a forward.
    fn forwarded(n: u16) -> (u32, Vec<u8>, Option<&'static str>) {
        let (src, dst) = Self::out(n);
        let frame = FrameBuilder::udp(src, dst)
            .macs(RELAY1_MAC, PEER1_MAC)
            .ttl(63)
            .payload(&rtp_payload(172))
            .build();
        (XDP_REDIRECT, frame, Some(Counter::FwdRedirect.name()))
    }

    /// A packet from the phone to `to`: the action, the frame and the one counter besides
    /// `frames`.
    fn run(&self, to: Endpoint) -> (u32, Vec<u8>, Option<&'static str>) {
        let before = self.dp.global_counters().unwrap();
        let (action, bytes) = run_xdp_out(&self.dp, self.relay0, &Self::input(to));
        let delta = self.dp.global_counters().unwrap().delta(&before);
        let counter = delta.iter().find(|(c, _)| *c != "frames").map(|(c, _)| *c);
        (action, bytes, counter)
    }

    fn verdict(&self, to: Endpoint) -> (u32, Option<&'static str>) {
        let (action, _, counter) = self.run(to);
        (action, counter)
    }
}

/// Two relay addresses whose keys share a place of the flow array: the first flow takes the
/// place, the second goes to the hash map, and each packet is rewritten for its own flow.
/// Once the first leaves, its place is free for the next.
#[test]
fn keys_that_share_a_place_each_forward_from_their_own_entry() {
    use proxy_common::flow::place;
    need_root();
    let env = Env::fixture("fxp").unwrap();
    env.enter(|env| {
        let mut rig = PlaceRig::new(env);
        let at = place::of(&FlowKey::new(FIRST), 0, 0);
        assert_eq!(at, place::of(&FlowKey::new(SECOND), 0, 0));
        rig.add(FIRST, 2);
        rig.add(SECOND, 4);
        assert_eq!(rig.run(FIRST), PlaceRig::forwarded(2), "array");
        assert_eq!(rig.run(SECOND), PlaceRig::forwarded(4), "hash map");
        let no_flow = (XDP_PASS, Some(Counter::PassNoFlow.name()));
        assert_eq!(rig.verdict(THIRD), no_flow, "its place holds another key");
        // The flow at the place counts in the slot of the place's index (the program starts
        // loading it beside the entry), the hash map's flow in a slot after the places; each
        // counts its own packets.
        assert_eq!(flow_array(&rig.dp).get(&at, 0).unwrap().counter_slot, at);
        let forwarded =
            |rig: &PlaceRig, key| rig.dp.flow_stats(FlowKey::new(key)).unwrap().fwd_packets;
        assert_eq!((forwarded(&rig, FIRST), forwarded(&rig, SECOND)), (1, 1));
        assert_eq!(rig.run(SECOND), PlaceRig::forwarded(4));
        assert_eq!((forwarded(&rig, FIRST), forwarded(&rig, SECOND)), (1, 2));

        rig.dp.remove_flow(FlowKey::new(FIRST)).unwrap();
        assert_eq!(rig.verdict(FIRST), no_flow);
        assert_eq!(rig.run(SECOND), PlaceRig::forwarded(4));
        rig.add(THIRD, 6);
        assert_eq!(rig.run(THIRD), PlaceRig::forwarded(6), "the freed place");
        assert_eq!(
            flow_array(&rig.dp).get(&at, 0).unwrap().key,
            FlowKey::new(THIRD)
        );
        // The place's slot was zeroed for its new flow.
        assert_eq!((forwarded(&rig, THIRD), forwarded(&rig, SECOND)), (1, 3));
        // Back to HOLD at its place. Each write advances `seq` by two (odd while it writes):
        // FIRST's add and removal, THIRD's add and this update.
        rig.dp
            .update_flow(FlowKey::new(THIRD), &FlowSpec::hold(), None)
            .unwrap();
        assert_eq!(
            rig.verdict(THIRD),
            (XDP_REDIRECT, Some(Counter::PuntHold.name()))
        );
        assert_eq!(flow_array(&rig.dp).get(&at, 0).unwrap().seq, 8);
    })
    .unwrap();
}

/// The relay's media addresses get blocks of their own: [`FIRST`] and [`SECOND`], which share a
/// place in the plain layout, both sit in the flow array, at the places the layout gives them,
/// and each forwards from its own entry.
#[test]
fn media_addresses_get_blocks_of_their_own() {
    use proxy_common::flow::place;
    need_root();
    let env = Env::fixture("fxm").unwrap();
    env.enter(|env| {
        let media = [FIRST.with_port(0), SECOND.with_port(0)];
        let mut rig = PlaceRig::with_media(env, &media);
        let layout = place::layout(8, &media);
        assert_eq!((layout.blocks, layout.shared), (2, 0));
        let at = |key: Endpoint| layout.place(&FlowKey::new(key));
        assert_ne!(at(FIRST), at(SECOND));
        rig.add(FIRST, 2);
        rig.add(SECOND, 4);
        assert_eq!(rig.run(FIRST), PlaceRig::forwarded(2));
        assert_eq!(rig.run(SECOND), PlaceRig::forwarded(4));
        let array = flow_array(&rig.dp);
        for key in [FIRST, SECOND] {
            assert_eq!(array.get(&at(key), 0).unwrap().key, FlowKey::new(key));
        }
    })
    .unwrap();
}

/// The table holds `--max-flows` flows, whether at places or in the hash map, and refuses the
/// next with an error that changes nothing; a removed flow makes room. Flows at places count
/// in their places' slots, so only the hash map's flows draw on the slots after them.
#[test]
fn the_table_holds_max_flows_and_refuses_the_next() {
    need_root();
    let env = Env::fixture("fxf").unwrap();
    env.enter(|env| {
        let mut rig = PlaceRig::new(env);
        // Eight flows: four ports of one address (each at its place), and four on the same
        // port of other addresses (its place is taken: the hash map).
        let keys: Vec<Endpoint> = (0..4u8)
            .map(|i| FIRST.with_port(30000 + u16::from(i)))
            .chain((0..4u8).map(|i| Endpoint::v4([10, 0, 1, 20 + i], 30000)))
            .collect();
        for (n, key) in (1..).zip(&keys) {
            rig.add(*key, n);
        }
        let ninth = FlowKey::new(Endpoint::v4([10, 0, 1, 30], 30001));
        let err = rig.try_add(ninth.local, 9).unwrap_err();
        assert!(format!("{err:#}").contains("flow table full"), "{err:#}");
        assert!(!rig.dp.has_flow(ninth));
        assert_eq!(rig.dp.flow_count(), 8);
        for (n, key) in (1..).zip(&keys) {
            assert_eq!(rig.run(*key), PlaceRig::forwarded(n), "{key:?}");
        }
        rig.dp.remove_flow(FlowKey::new(keys[7])).unwrap();
        rig.add(ninth.local, 9);
        assert_eq!(rig.run(ninth.local), PlaceRig::forwarded(9));
        assert_eq!(rig.dp.flow_stats(ninth).unwrap().fwd_packets, 1);
    })
    .unwrap();
}

/// A place that userspace is rewriting (odd `seq`: the state its first update leaves) is
/// never forwarded from: its packets go to userspace untouched. Other keys are not held up.
#[test]
fn a_place_being_rewritten_is_punted_never_forwarded() {
    use proxy_common::flow::place;
    need_root();
    let env = Env::fixture("fxw").unwrap();
    env.enter(|env| {
        let mut rig = PlaceRig::new(env);
        rig.add(FIRST, 2);
        rig.add(SECOND, 4);
        let mut array = flow_array(&rig.dp);
        let at = place::of(&FlowKey::new(FIRST), 0, 0);
        let entry = array.get(&at, 0).unwrap();
        assert_eq!(entry.key, FlowKey::new(FIRST));
        let mut odd = entry;
        odd.seq = entry.seq.wrapping_add(1);
        array.set(at, odd, 0).unwrap();
        let punted = (
            XDP_REDIRECT,
            PlaceRig::input(FIRST),
            Some(Counter::PuntChanging.name()),
        );
        assert_eq!(rig.run(FIRST), punted, "seq odd");
        assert_eq!(rig.run(SECOND), PlaceRig::forwarded(4), "not its place's");
        array.set(at, entry, 0).unwrap();
        assert_eq!(rig.run(FIRST), PlaceRig::forwarded(2), "written back");
    })
    .unwrap();
}

#[test]
#[expect(
    clippy::cast_possible_truncation,
    reason = "test frames far below the fields' limits"
)]
fn punt_budgets_hold_a_flood_back_but_not_the_signalled_peer() {
    need_root();
    let env = Env::fixture("fxb").unwrap();
    env.enter(|env| {
        let relay0 = env.ifindex("relay0");
        let mut dp = Dataplane::load(&DataplaneConfig {
            max_flows: 8,
            probe_port: PROBE_PORT,
            ..DataplaneConfig::default()
        })
        .unwrap();
        let own = std::iter::once("10.0.1.1".parse().unwrap()).collect();
        dp.set_local_addresses(&own).unwrap();
        let xsk = XskSocket::bind(relay0, 0, XskConfig::default()).unwrap();
        dp.register_socket(relay0, 0, &xsk).unwrap();
        let relay_a = v4([10, 0, 1, 1], 30000);
        let phone = v4([10, 0, 1, 2], 4000);
        let spec = FlowSpec {
            hint: Some(phone),
            ..FlowSpec::hold()
        };
        dp.add_flow(FlowKey::new(relay_a), &spec, None).unwrap();
        let md = XdpMd {
            ingress_ifindex: relay0,
            ..XdpMd::default()
        };
        let run = |dp: &Dataplane, frame: &[u8], repeat: u32| {
            let mut md = md;
            md.data_end = frame.len() as u32;
            let before = dp.global_counters().unwrap();
            let mut out = vec![0u8; frame.len() + 256];
            dp.program()
                .unwrap()
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(as_bytes(&md)),
                    repeat,
                    ..TestRunOptions::default()
                })
                .unwrap();
            let after = dp.global_counters().unwrap();
            let d = |c: Counter| after.get(c) - before.get(c);
            (
                d(Counter::PuntHold) + d(Counter::PuntProbe),
                d(Counter::DropPuntBudget) + d(Counter::DropProbeBudget),
            )
        };
        let sprayer = FrameBuilder::udp(v4([203, 0, 113, 9], 1234), relay_a)
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(&rtp_payload(172))
            .build();
        let (punted, refused) = run(&dp, &sprayer, 5000);
        println!("unsignalled source, 5000 packets: {punted} punted, {refused} refused");
        assert!(
            (100..=200).contains(&punted) && punted + refused == 5000,
            "the flow's budget: a burst of 100 and 1000/s: {punted} punted"
        );
        let peer = FrameBuilder::udp(phone, relay_a)
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(&rtp_payload(172))
            .build();
        let (punted, refused) = run(&dp, &peer, 1000);
        println!(
            "signalled source after the flood, 1000 packets: {punted} punted, {refused} refused"
        );
        assert_eq!(
            (punted, refused),
            (1000, 0),
            "the signalled peer is not crowded out"
        );
        let probe = FrameBuilder::udp(v4([203, 0, 113, 9], 7999), v4([10, 0, 1, 1], PROBE_PORT))
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(&[0; 108])
            .build();
        let (punted, refused) = run(&dp, &probe, 5000);
        println!("probe flood, 5000 packets: {punted} punted, {refused} refused");
        assert!(
            (500..=1000).contains(&punted) && punted + refused == 5000,
            "{punted} probes punted"
        );
    })
    .unwrap();
}

/// A small deterministic generator (xorshift64*): the differential run is the same on every
/// machine, and a failure names the frame that caused it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "random mutations: truncating a random number to a field's width is the point"
    )]
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// One random frame: a valid RTP frame to a flow (IPv4, IPv4 with options, IPv6), then one to
/// three mutations aimed at the fields both parsers read.
#[expect(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation,
    reason = "random mutations: truncating a random number to a field's width is the point"
)]
fn mutant(rng: &mut Rng, bases: &[Vec<u8>]) -> Vec<u8> {
    let mut f = bases[rng.below(bases.len())].clone();
    let v6 = f.len() > 13 && f[12..14] == [0x86, 0xdd];
    for _ in 0..=rng.below(3) {
        let be = |f: &mut Vec<u8>, at: usize, v: u16| {
            if at + 2 <= f.len() {
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        };
        let udp = if v6 {
            14 + 40
        } else {
            14 + usize::from(f.get(14).map_or(5, |b| b & 0x0f)) * 4
        };
        let near = |rng: &mut Rng, v: usize| {
            (v as i64 + rng.below(41) as i64 - 20).clamp(0, 0xffff) as u16
        };
        let r = rng.next();
        match rng.below(12) {
            0 => {
                let at = rng.below(f.len().min(80));
                if at < f.len() {
                    f[at] = rng.next() as u8;
                }
            }
            1 => be(
                &mut f,
                12,
                rng.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, r as u16]),
            ),
            2 if f.len() > 14 => f[14] = (f[14] & 0x0f) | (rng.pick(&[4u8, 6, 0, 5, 15]) << 4),
            3 if f.len() > 14 && !v6 => f[14] = (f[14] & 0xf0) | rng.below(16) as u8,
            4 if !v6 => {
                let total = f.len().saturating_sub(14);
                be(&mut f, 16, near(rng, total));
            }
            4 => {
                let payload = f.len().saturating_sub(54);
                be(&mut f, 18, near(rng, payload));
            }
            5 if !v6 => be(
                &mut f,
                20,
                rng.pick(&[0x2000, 0x0001, 0x4000, 0x0000, r as u16]),
            ),
            6 => {
                let at = if v6 { 20 } else { 23 };
                if at < f.len() {
                    f[at] = rng.pick(&[17u8, 6, 1, 0, 44, 43, 60, r as u8]);
                }
            }
            7 => {
                let len = f.len().saturating_sub(udp);
                be(&mut f, udp + 4, near(rng, len));
            }
            8 => be(&mut f, udp + 6, 0),
            9 => f.truncate(rng.below(f.len() + 1)),
            10 => f.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ => be(
                &mut f,
                udp + 2,
                rng.pick(&[30000, 30001, PROBE_PORT, r as u16]),
            ),
        }
    }
    f
}

/// The userspace parser (`UdpFrame::parse`, which reads every punted frame) and the XDP
/// program agree on random frames: what the kernel punts, userspace can read, with the
/// endpoints the flow was keyed by; what userspace would accept for a flow, the kernel
/// punts; and both put a non-relayable frame in the same class.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, read top to bottom as its steps happen"
)]
#[expect(
    clippy::items_after_statements,
    reason = "the constant belongs to the loop below it"
)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "test counts far below the fields' limits"
)]
fn userspace_parser_agrees_with_the_xdp_program() {
    use proxy_userspace::frame::{FrameError, UdpFrame};
    need_root();
    let env = Env::fixture("fxdiff").unwrap();
    env.enter(|env| {
        let relay0 = env.ifindex("relay0");
        let (mut dp, _xsk) = dataplane_with_socket(relay0, 64, PROBE_PORT);
        let flow4 = v4([10, 0, 1, 1], 30000);
        let flow6 = v6(1, 1, 30000);
        for f in [flow4, flow6] {
            dp.add_flow(FlowKey::new(f), &FlowSpec::hold(), None)
                .unwrap();
        }
        let payload = rtp_payload(172);
        let bases = vec![
            FrameBuilder::udp(v4([10, 0, 1, 2], 4000), flow4)
                .macs(PEER0_MAC, RELAY0_MAC)
                .payload(&payload)
                .build(),
            FrameBuilder::udp(v4([10, 0, 1, 2], 4000), flow4)
                .macs(PEER0_MAC, RELAY0_MAC)
                .ip_options(&[1, 1, 1, 0])
                .payload(&payload)
                .build(),
            FrameBuilder::udp(v6(2, 1, 4000), flow6)
                .macs(PEER0_MAC, RELAY0_MAC)
                .payload(&payload)
                .build(),
        ];
        let mut rng = Rng(0x6d65_6469_6170_7278);
        let mut failures = Vec::new();
        let mut classes = std::collections::BTreeMap::<String, u32>::new();
        const FRAMES: usize = 20_000;
        for i in 0..FRAMES {
            let frame = mutant(&mut rng, &bases);
            let user = UdpFrame::parse(&frame);
            if frame.len() < 14 {
                // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
                if user != Err(FrameError::Truncated) {
                    failures.push(format!("#{i}: {} bytes parsed as {user:?}", frame.len()));
                }
                continue;
            }
            let before = dp.global_counters().unwrap();
            let md = XdpMd {
                data_end: frame.len() as u32,
                ingress_ifindex: relay0,
                ..XdpMd::default()
            };
            let r = dp
                .program_of(AttachMode::Native)
                .unwrap()
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(as_bytes(&md)),
                    ..TestRunOptions::default()
                })
                .unwrap();
            let delta = dp.global_counters().unwrap().delta(&before);
            let counter = delta
                .iter()
                .map(|(n, _)| *n)
                .find(|n| *n != "frames")
                .unwrap_or("none");
            let punted = matches!(counter, "punt_hold" | "drop_punt_budget");
            let ours = |d: Endpoint| d == flow4 || d == flow6;
            let agree = match &user {
                Ok(u) if ours(u.dst) => punted,
                // The probe port of an address that is not one of the relay's (none is set
                // here): passed, as any other packet to no flow.
                Ok(_) => counter == "pass_no_flow",
                Err(FrameError::NotIp) => counter == "pass_not_ip",
                Err(FrameError::Vlan) => counter == "pass_vlan",
                Err(FrameError::NotUdp) => counter == "pass_not_udp",
                Err(FrameError::Fragment) => counter == "pass_fragment",
                // Malformed: never punted. The kernel passes it when it is not addressed to a
                // flow (the host's traffic is not ours to judge) and drops it when it is.
                Err(FrameError::Truncated | FrameError::BadLength | FrameError::NoChecksum) => {
                    matches!(
                        counter,
                        "pass_truncated" | "drop_malformed" | "pass_no_flow"
                    )
                }
            };
            // The action follows the counter: the stated rule of the program's error type.
            let want_action = match counter {
                "punt_hold" => XDP_REDIRECT,
                c if c.starts_with("pass_") => XDP_PASS,
                _ => XDP_DROP,
            };
            if !agree || r.return_value != want_action {
                failures.push(format!(
                    "#{i}: userspace {user:?}, XDP {counter} (action {}): {}",
                    r.return_value,
                    hex(&frame)
                ));
            }
            *classes.entry(counter.to_owned()).or_default() += 1;
        }
        println!("differential | {FRAMES} random frames, XDP verdicts: {classes:?}");
        assert!(
            failures.is_empty(),
            "{} of {FRAMES} frames judged differently:\n{}",
            failures.len(),
            failures
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The run covered every class, or it proves little.
        for c in [
            "punt_hold",
            "pass_no_flow",
            "pass_not_ip",
            "pass_vlan",
            "pass_not_udp",
            "pass_fragment",
            "pass_truncated",
            "drop_malformed",
        ] {
            assert!(
                classes.get(c).copied().unwrap_or(0) > 10,
                "too few {c}: {classes:?}"
            );
        }
    })
    .unwrap();
}

/// Collects what is logged, for the kernel-events fixture.
struct Capture(std::sync::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let line = format!("{} {}", r.target(), r.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

/// `--kernel-log`: off (the default), the events are not in the loaded program at all (the
/// verifier removed them: fewer translated instructions); at `debug`, a dropped packet of a
/// flow reaches the log under `mediaproxy::kernel`, with its reason.
#[test]
fn kernel_events_cost_nothing_when_off_and_reach_the_log_when_asked() {
    need_root();
    let env = Env::fixture("fxl").unwrap();
    env.enter(|env| {
        log::set_logger(&CAPTURE).expect("the only logger of this test binary");
        log::set_max_level(log::LevelFilter::Trace);
        let relay0 = env.ifindex("relay0");
        let load = |level| {
            Dataplane::load(&DataplaneConfig {
                max_flows: 8,
                probe_port: PROBE_PORT,
                kernel_log: level,
                ..DataplaneConfig::default()
            })
            .unwrap()
        };
        let size = |dp: &Dataplane| dp.program().unwrap().info().unwrap().size_translated();
        let off = load(None);
        let mut on = load(Some(aya_log::Level::Debug));
        let (off_size, on_size) = (size(&off), size(&on));
        println!("translated program: {off_size:?} bytes off, {on_size:?} at debug");
        assert!(off_size < on_size, "the events' code is gone when off");
        drop(off);

        let relay_a = v4([10, 0, 1, 1], 30000);
        on.add_flow(FlowKey::new(relay_a), &FlowSpec::hold(), None)
            .unwrap();
        let mut frame = FrameBuilder::udp(v4([10, 0, 1, 2], 4000), relay_a)
            .macs(PEER0_MAC, RELAY0_MAC)
            .payload(&rtp_payload(172))
            .build();
        frame[38..40].copy_from_slice(&400u16.to_be_bytes()); // UDP length beyond the IP payload
        assert_eq!(run_xdp_once(&on, relay0, &frame), XDP_DROP);
        let want = "mediaproxy::kernel dropped: a flow's packet with inconsistent lengths";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !CAPTURE.0.lock().unwrap().iter().any(|l| l == want) {
            assert!(
                std::time::Instant::now() < deadline,
                "no kernel event; logged: {:?}",
                CAPTURE.0.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .unwrap();
}
