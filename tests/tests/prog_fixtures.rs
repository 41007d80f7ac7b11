//! BPF_PROG_TEST_RUN fixtures for the XDP program, in the Katran style: one table row per
//! rule, each with the flow state, the input frame, the expected XDP action, the exact
//! expected output bytes and the counter that must record it.
//!
//! The program runs for real in a private network namespace that holds two veth pairs with
//! addresses, static neighbours and forwarding on, so `bpf_fib_lookup` answers as it would on
//! a relay: `relay0` (10.0.1.1, fd00:1::1) faces side A, `relay1` (10.0.2.1, fd00:2::1) side B.

use aya::programs::{TestRun as _, TestRunOptions};
use mediaproxy_tests::{Env, need_root};
use proxy_common::{Counter, Endpoint, FlowKey, FlowState};
use proxy_userspace::{
    dataplane::{Dataplane, DataplaneConfig, FlowSpec, MismatchPolicy},
    frame::{FrameBuilder, Mac, UdpChecksumMode},
    xsk::{XskConfig, XskSocket},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const PROBE_PORT: u16 = 7999;

const RELAY0_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
const PEER0_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x02];
const RELAY1_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
const PEER1_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x02];

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in`.
#[repr(C)]
#[derive(Default)]
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
enum Out {
    /// The input, unchanged.
    Same,
    /// These exact bytes.
    Bytes(Vec<u8>),
}

struct Case {
    name: &'static str,
    /// Flows to install before the run (key, spec).
    flows: Vec<(Endpoint, FlowSpec)>,
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
        out_dst,
        egress_ifindex: 0,
    }
}

fn run_table(env: &Env, cases: Vec<Case>) {
    let relay0 = env.ifindex("relay0");
    let relay1 = env.ifindex("relay1");
    let mut dp = Dataplane::load(&DataplaneConfig {
        max_flows: 64,
        probe_port: PROBE_PORT,
    })
    .expect("load the XDP program");
    dp.allow_egress(relay1).unwrap();
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

    let mut failures = Vec::new();
    for case in cases {
        for (local, spec) in &case.flows {
            dp.add_flow(FlowKey::new(*local), spec).unwrap();
        }
        let before = dp.global_counters().unwrap();
        let md = XdpMd {
            data_end: case.input.len() as u32,
            ingress_ifindex: relay0,
            ..XdpMd::default()
        };
        // SAFETY: XdpMd is repr(C) plain data.
        let md_bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&md).cast::<u8>(), size_of::<XdpMd>())
        };
        let mut out = vec![0u8; case.input.len() + 256];
        let r = dp
            .program()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&case.input),
                data_out: Some(&mut out),
                ctx_in: Some(md_bytes),
                ..TestRunOptions::default()
            })
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
        let want = [("frames", 1), (case.counter.name(), 1)];
        if delta != want {
            failures.push(format!("{}: counters {delta:?} != {want:?}", case.name));
        }
        for (local, _) in &case.flows {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rtp_payload(len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00, 0x12, 0x34, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef];
    p.extend((0..len.saturating_sub(12)).map(|i| (i * 7 + 3) as u8));
    p
}

#[test]
fn ipv4_fixtures() {
    need_root();
    let env = Env::fixture("fx4").unwrap();
    env.enter(|env| {
        let a = v4([10, 0, 1, 2], 4000); // phone A
        let relay_a = v4([10, 0, 1, 1], 30000); // the relay's port facing A
        let relay_b = v4([10, 0, 2, 1], 30002); // ... facing B
        let b = v4([10, 0, 2, 2], 5000); // phone B
        let payload = rtp_payload(172);
        let input = |p: &[u8]| {
            FrameBuilder::udp(a, relay_a)
                .macs(PEER0_MAC, RELAY0_MAC)
                .payload(p)
        };
        let forwarded = |p: &[u8]| {
            FrameBuilder::udp(relay_b, b)
                .macs(RELAY1_MAC, PEER1_MAC)
                .payload(p)
        };
        let fwd = forward_spec(Some(a), relay_b, b);
        let hold = FlowSpec::hold();
        let hold_strict = FlowSpec {
            peer: Some(a),
            mismatch: MismatchPolicy::Drop,
            ..FlowSpec::hold()
        };
        let mut mismatch_drop = fwd;
        mismatch_drop.mismatch = MismatchPolicy::Drop;
        let mut other_family = fwd;
        other_family.out_dst = v6(2, 2, 5000);
        let no_neigh = forward_spec(Some(a), relay_b, v4([10, 0, 2, 99], 5000));
        // Back out of the interface it came in on: XDP_TX toward A's neighbour.
        let hairpin = forward_spec(Some(a), v4([10, 0, 1, 1], 30004), v4([10, 0, 1, 2], 4002));

        let base = input(&payload).build();
        let mut bad_udp_len = base.clone();
        bad_udp_len[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&500u16.to_be_bytes());
        let mut fragment = base.clone();
        fragment[14 + 6] = 0x20; // MF
        let mut tcp = base.clone();
        tcp[14 + 9] = 6;
        let mut arp = base[..42].to_vec();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);

        let cases = vec![
            Case {
                name: "no entry: passed untouched",
                flows: vec![],
                input: base.clone(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassNoFlow,
            },
            Case {
                name: "HOLD: punted to AF_XDP",
                flows: vec![(relay_a, hold)],
                input: base.clone(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntHold,
            },
            Case {
                name: "HOLD, latched, strict: a spoofer is dropped before userspace",
                flows: vec![(relay_a, hold_strict)],
                input: FrameBuilder::udp(v4([10, 0, 1, 66], 4000), relay_a)
                    .macs(PEER0_MAC, RELAY0_MAC)
                    .payload(&payload)
                    .build(),
                action: XDP_DROP,
                output: Out::Same,
                counter: Counter::DropMismatch,
            },
            Case {
                name: "HOLD, latched, strict: the peer is punted",
                flows: vec![(relay_a, hold_strict)],
                input: base.clone(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntHold,
            },
            Case {
                name: "FORWARD: rewritten and redirected out of relay1",
                flows: vec![(relay_a, fwd)],
                input: base.clone(),
                action: XDP_REDIRECT,
                output: Out::Bytes(forwarded(&payload).build()),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "FORWARD: partial checksum completed",
                flows: vec![(relay_a, fwd)],
                input: input(&payload).checksum(UdpChecksumMode::Partial).build(),
                action: XDP_REDIRECT,
                output: Out::Bytes(forwarded(&payload).build()),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "FORWARD: partial checksum, odd 1401-byte payload (22 chunks and a tail)",
                flows: vec![(relay_a, fwd)],
                input: input(&rtp_payload(1401))
                    .checksum(UdpChecksumMode::Partial)
                    .build(),
                action: XDP_REDIRECT,
                output: Out::Bytes(forwarded(&rtp_payload(1401)).build()),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "FORWARD: partial checksum, empty payload",
                flows: vec![(relay_a, fwd)],
                input: input(&[]).checksum(UdpChecksumMode::Partial).build(),
                action: XDP_REDIRECT,
                output: Out::Bytes(forwarded(&[]).build()),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "FORWARD: partial checksum over a payload too long for XDP: punted",
                flows: vec![(relay_a, fwd)],
                input: input(&rtp_payload(1600))
                    .checksum(UdpChecksumMode::Partial)
                    .build(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntOversize,
            },
            Case {
                name: "FORWARD: zero UDP checksum stays zero",
                flows: vec![(relay_a, fwd)],
                input: input(&payload).checksum(UdpChecksumMode::Zero).build(),
                action: XDP_REDIRECT,
                output: Out::Bytes(forwarded(&payload).checksum(UdpChecksumMode::Zero).build()),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "FORWARD: IPv4 options kept, header checksum updated",
                flows: vec![(relay_a, fwd)],
                input: input(&payload)
                    .ip_options(&[0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00])
                    .build(),
                action: XDP_REDIRECT,
                output: Out::Bytes(
                    forwarded(&payload)
                        .ip_options(&[0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00])
                        .build(),
                ),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "FORWARD: back out of the ingress interface with XDP_TX",
                flows: vec![(relay_a, hairpin)],
                input: base.clone(),
                action: XDP_TX,
                output: Out::Bytes(
                    FrameBuilder::udp(v4([10, 0, 1, 1], 30004), v4([10, 0, 1, 2], 4002))
                        .macs(RELAY0_MAC, PEER0_MAC)
                        .payload(&payload)
                        .build(),
                ),
                counter: Counter::FwdTx,
            },
            Case {
                name: "FORWARD, wrong source, punt policy: punted untouched",
                flows: vec![(relay_a, fwd)],
                input: FrameBuilder::udp(v4([10, 0, 1, 3], 4000), relay_a)
                    .macs(PEER0_MAC, RELAY0_MAC)
                    .payload(&payload)
                    .build(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntMismatch,
            },
            Case {
                name: "FORWARD, wrong source port, drop policy: dropped",
                flows: vec![(relay_a, mismatch_drop)],
                input: FrameBuilder::udp(v4([10, 0, 1, 2], 4001), relay_a)
                    .macs(PEER0_MAC, RELAY0_MAC)
                    .payload(&payload)
                    .build(),
                action: XDP_DROP,
                output: Out::Same,
                counter: Counter::DropMismatch,
            },
            Case {
                name: "FORWARD, neighbour unresolved: punted untouched for the kernel's stack",
                flows: vec![(relay_a, no_neigh)],
                input: base.clone(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntNoRoute,
            },
            Case {
                name: "FORWARD, larger than the egress MTU: punted for the kernel to fragment",
                flows: vec![(relay_a, hairpin)],
                input: input(&rtp_payload(1600)).build(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntNoRoute,
            },
            Case {
                name: "FORWARD to another family: punted",
                flows: vec![(relay_a, other_family)],
                input: base.clone(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntFamily,
            },
            Case {
                name: "probe port: punted",
                flows: vec![],
                input: FrameBuilder::udp(v4([10, 0, 1, 2], 7999), v4([10, 0, 1, 1], PROBE_PORT))
                    .payload(b"MPRB")
                    .build(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntProbe,
            },
            Case {
                name: "flow's packet with UDP length beyond the IP payload: dropped",
                flows: vec![(relay_a, fwd)],
                input: bad_udp_len.clone(),
                action: XDP_DROP,
                output: Out::Same,
                counter: Counter::DropMalformed,
            },
            Case {
                name: "same malformed packet without a flow: left to the kernel",
                flows: vec![],
                input: bad_udp_len,
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassNoFlow,
            },
            Case {
                name: "IPv4 fragment: passed",
                flows: vec![(relay_a, fwd)],
                input: fragment,
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassFragment,
            },
            Case {
                name: "TCP: passed",
                flows: vec![],
                input: tcp,
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassNotUdp,
            },
            Case {
                name: "ARP: passed",
                flows: vec![],
                input: arp,
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassNotIp,
            },
            Case {
                name: "VLAN-tagged: passed to the kernel's VLAN devices",
                flows: vec![(relay_a, fwd)],
                input: input(&payload).vlan(100).build(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassVlan,
            },
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, as do drivers.
            Case {
                name: "Ethernet header only",
                flows: vec![],
                input: base[..14].to_vec(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassTruncated,
            },
            Case {
                name: "truncated in the IPv4 header",
                flows: vec![(relay_a, fwd)],
                input: base[..14 + 19].to_vec(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassTruncated,
            },
            Case {
                name: "truncated in the UDP header",
                flows: vec![(relay_a, fwd)],
                input: base[..14 + 20 + 7].to_vec(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassTruncated,
            },
            Case {
                name: "truncated in the payload (IP length beyond the frame): dropped",
                flows: vec![(relay_a, fwd)],
                input: base[..base.len() - 1].to_vec(),
                action: XDP_DROP,
                output: Out::Same,
                counter: Counter::DropMalformed,
            },
            Case {
                name: "IHL below 5: passed",
                flows: vec![(relay_a, fwd)],
                input: {
                    let mut f = base.clone();
                    f[14] = 0x44;
                    f
                },
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassTruncated,
            },
            Case {
                name: "IPv4 options pushing the UDP header past the frame",
                flows: vec![(relay_a, fwd)],
                input: {
                    let mut f = base[..14 + 20 + 8].to_vec();
                    f[14] = 0x4f;
                    f
                },
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassTruncated,
            },
        ];
        run_table(env, cases);
    })
    .unwrap();
}

#[test]
fn ipv6_fixtures() {
    need_root();
    let env = Env::fixture("fx6").unwrap();
    env.enter(|env| {
        let a = v6(2, 1, 4000);
        let relay_a = v6(1, 1, 30000);
        let relay_b = v6(1, 2, 30002);
        let b = v6(2, 2, 5000);
        let payload = rtp_payload(172);
        let input = |p: &[u8]| {
            FrameBuilder::udp(a, relay_a)
                .macs(PEER0_MAC, RELAY0_MAC)
                .payload(p)
        };
        let forwarded = |p: &[u8]| {
            FrameBuilder::udp(relay_b, b)
                .macs(RELAY1_MAC, PEER1_MAC)
                .payload(p)
        };
        let fwd = forward_spec(Some(a), relay_b, b);
        let base = input(&payload).build();
        let mut ext_hdr = base.clone();
        ext_hdr[14 + 6] = 0; // hop-by-hop options header
        let cases = vec![
            Case {
                name: "v6 no entry",
                flows: vec![],
                input: base.clone(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassNoFlow,
            },
            Case {
                name: "v6 HOLD",
                flows: vec![(relay_a, FlowSpec::hold())],
                input: base.clone(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntHold,
            },
            Case {
                name: "v6 FORWARD",
                flows: vec![(relay_a, fwd)],
                input: base.clone(),
                action: XDP_REDIRECT,
                output: Out::Bytes(forwarded(&payload).build()),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "v6 FORWARD, partial checksum",
                flows: vec![(relay_a, fwd)],
                input: input(&rtp_payload(333))
                    .checksum(UdpChecksumMode::Partial)
                    .build(),
                action: XDP_REDIRECT,
                output: Out::Bytes(forwarded(&rtp_payload(333)).build()),
                counter: Counter::FwdRedirect,
            },
            Case {
                name: "v6 FORWARD, wrong source",
                flows: vec![(relay_a, fwd)],
                input: FrameBuilder::udp(v6(3, 1, 4000), relay_a)
                    .macs(PEER0_MAC, RELAY0_MAC)
                    .payload(&payload)
                    .build(),
                action: XDP_REDIRECT,
                output: Out::Same,
                counter: Counter::PuntMismatch,
            },
            Case {
                name: "v6 zero UDP checksum (forbidden): dropped",
                flows: vec![(relay_a, fwd)],
                input: input(&payload).checksum(UdpChecksumMode::Zero).build(),
                action: XDP_DROP,
                output: Out::Same,
                counter: Counter::DropMalformed,
            },
            Case {
                name: "v6 extension header: passed",
                flows: vec![(relay_a, fwd)],
                input: ext_hdr,
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassNotUdp,
            },
            Case {
                name: "v6 truncated in the IPv6 header",
                flows: vec![],
                input: base[..14 + 39].to_vec(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassTruncated,
            },
            Case {
                name: "v6 truncated in the UDP header",
                flows: vec![(relay_a, fwd)],
                input: base[..14 + 40 + 5].to_vec(),
                action: XDP_PASS,
                output: Out::Same,
                counter: Counter::PassTruncated,
            },
            Case {
                name: "v6 payload length beyond the frame: dropped",
                flows: vec![(relay_a, fwd)],
                input: base[..base.len() - 3].to_vec(),
                action: XDP_DROP,
                output: Out::Same,
                counter: Counter::DropMalformed,
            },
        ];
        run_table(env, cases);
    })
    .unwrap();
}
