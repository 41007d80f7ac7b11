//! The flow table's keys and values, and the counters, as both the XDP program and userspace
//! see them. All types are `#[repr(C)]` without padding (see the layout tests), and every
//! address and port is stored in network order behind typed constructors.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Interfaces the program can be attached to at once.
pub const MAX_INTERFACES: u32 = 64;
/// Rx queues per interface with an `AF_XDP` socket.
pub const MAX_QUEUES_PER_INTERFACE: u32 = 64;
/// The flow table's default capacity (`--max-flows`): 16,384 calls of one audio stream with
/// RTCP (four flows each), about 31 MiB of kernel memory (the flow array's 131,072 places of
/// 168 bytes, and 48 bytes of counters for each place and each flow). The loader resizes the
/// maps to the operator's figure; this is also the size the object file declares.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;

/// Where a flow sits in the flow array, so that the FORWARD path finds its entry with an
/// array access: no helper call, no hash, no key comparison call, and no bucket to pull into
/// the cache before the entry (168 bytes, three or four cache lines).
///
/// The array has a power of two of blocks of 65,536 places. A key's block is its address
/// folded to 32 bits, masked; its place in the block is its port. So every port of one
/// address has its own place, and consecutive addresses (a relay's address pool) get
/// consecutive blocks, up to the number of blocks. Two keys meet at one place when their
/// addresses fold to the same block and they use the same port. Userspace then puts the second
/// one in the `FLOWS` hash map, which the program consults when the place holds another key:
/// correct, at the hash map's cost.
///
/// The keys are the relay's own media addresses, which userspace knows before it loads the
/// program, so it lays the array out for them ([`place::layout`]): the fold is rotated so that
/// each address gets a block of its own (a relay with a public and a private address, or an
/// IPv4 and an IPv6 one, would otherwise share its blocks half the time at the default two),
/// with more blocks if there are more addresses than blocks.
pub mod place {
    use super::{Endpoint, FlowKey};

    /// Places per block: one per port.
    pub const BLOCK: u32 = 1 << 16;
    /// At most 2^15 blocks, so the places fit a u32 (the map's `max_entries`).
    const MAX_BLOCKS: u32 = 1 << 15;

    /// The blocks for `max_flows`: twice the places the flows need, a power of two, so that
    /// an address pool that fills the table still has a block per address.
    #[must_use]
    pub const fn blocks(max_flows: u32) -> u32 {
        let need = (max_flows as u64 * 2).div_ceil(BLOCK as u64);
        let mut b = 1u32;
        while (b as u64) < need && b < MAX_BLOCKS {
            b <<= 1;
        }
        b
    }

    /// The place of `key` in an array of `mask + 1` blocks whose layout rotates the address's
    /// fold right by `shift` bits.
    #[inline(always)]
    #[must_use]
    pub fn of(key: &FlowKey, mask: u32, shift: u32) -> u32 {
        (block(&key.local, mask, shift) << 16) | u32::from(key.local.port())
    }

    /// The block of an address: its four 32-bit words combined by XOR (an IPv4 address is its
    /// first word, the rest zero), rotated, masked.
    #[inline(always)]
    fn block(addr: &Endpoint, mask: u32, shift: u32) -> u32 {
        let a = addr.addr_v6();
        let word = |i: usize| u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        (word(0) ^ word(4) ^ word(8) ^ word(12)).rotate_right(shift) & mask
    }

    /// How the flow array is laid out: its blocks and the fold's rotation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Layout {
        pub blocks: u32,
        pub shift: u32,
        /// Pairs of the media addresses that still share a block.
        pub shared: usize,
    }

    impl Layout {
        /// The place of `key` in this layout.
        #[must_use]
        pub fn place(&self, key: &FlowKey) -> u32 {
            of(key, self.blocks - 1, self.shift)
        }
    }

    /// The layout for `max_flows` flows keyed on the media addresses `addrs` (any ports): the
    /// fewest blocks, from [`blocks`]`(max_flows)` and at most eight times that, and then the
    /// smallest rotation, that give every address a block of its own. Rotation 0 comes first,
    /// so that consecutive addresses of a pool keep consecutive blocks. If no layout in that
    /// range separates them all (more addresses than eight times the blocks, or two whose folds
    /// are equal), the fewest blocks with the rotation that leaves the fewest pairs sharing.
    #[must_use]
    pub fn layout(max_flows: u32, addrs: &[Endpoint]) -> Layout {
        let base = blocks(max_flows);
        let most = base.saturating_mul(8).min(MAX_BLOCKS);
        let mut best: Option<Layout> = None;
        let mut b = base;
        while b <= most {
            for shift in 0..32 {
                let shared = sharing(addrs, b - 1, shift);
                if shared == 0 {
                    return Layout {
                        blocks: b,
                        shift,
                        shared,
                    };
                }
                if b == base && best.is_none_or(|l| shared < l.shared) {
                    best = Some(Layout {
                        blocks: b,
                        shift,
                        shared,
                    });
                }
            }
            b <<= 1;
        }
        best.unwrap_or(Layout {
            blocks: base,
            shift: 0,
            shared: 0,
        })
    }

    /// Pairs of distinct addresses in `addrs` that share a block.
    fn sharing(addrs: &[Endpoint], mask: u32, shift: u32) -> usize {
        let mut n = 0;
        for (i, a) in addrs.iter().enumerate() {
            for b in &addrs[..i] {
                if a != b && block(a, mask, shift) == block(b, mask, shift) {
                    n += 1;
                }
            }
        }
        n
    }
}

/// Address family tag stored in an [`Endpoint`].
pub mod family {
    pub const UNSET: u8 = 0;
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// An IP address and UDP port in network order. IPv4 uses the first four address bytes and
/// leaves the rest zero, so that equal endpoints are equal byte for byte.
///
/// 4-byte aligned: the BPF target never loads a wider word than the data's known alignment,
/// so an align-1 endpoint is compared, copied and folded byte by byte; aligned, in 32-bit
/// words. Every place that holds one (the flow entry, the key, the parsed packet) keeps it at
/// a multiple of 4.
#[repr(C, align(4))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Endpoint {
    addr: [u8; 16],
    port: [u8; 2],
    family: u8,
    _pad: u8,
}

impl Endpoint {
    pub const UNSET: Self = Self {
        addr: [0; 16],
        port: [0; 2],
        family: family::UNSET,
        _pad: 0,
    };

    #[must_use]
    pub const fn v4(addr: [u8; 4], port: u16) -> Self {
        // Built from 32-bit words: a zeroed byte array here became a call to a `memset`
        // subprogram in the BPF program, for every packet it parses (see `wire::copy_bytes`).
        let words = [u32::from_ne_bytes(addr), 0, 0, 0];
        Self {
            // SAFETY: [u32; 4] and [u8; 16] have the same size, and any bytes are valid.
            addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) },
            port: port.to_be_bytes(),
            family: family::V4,
            _pad: 0,
        }
    }

    #[must_use]
    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            family: family::V6,
            _pad: 0,
        }
    }

    #[must_use]
    pub const fn family(&self) -> u8 {
        self.family
    }

    #[must_use]
    pub const fn is_set(&self) -> bool {
        self.family != family::UNSET
    }

    #[must_use]
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// The port as it appears on the wire.
    #[inline(always)]
    #[must_use]
    pub const fn port_be(&self) -> &[u8; 2] {
        &self.port
    }

    /// The first four address bytes: the address of an IPv4 endpoint.
    #[inline(always)]
    #[must_use]
    pub const fn addr_v4(&self) -> &[u8; 4] {
        // SAFETY: 4 <= 16, and [u8; 4] has alignment 1.
        unsafe { &*self.addr.as_ptr().cast::<[u8; 4]>() }
    }

    #[inline(always)]
    #[must_use]
    pub const fn addr_v6(&self) -> &[u8; 16] {
        &self.addr
    }

    /// Same family and address, whatever the ports.
    #[inline(always)]
    #[must_use]
    pub fn same_address(&self, other: &Self) -> bool {
        self.family == other.family && self.addr == other.addr
    }

    #[must_use]
    pub const fn with_port(mut self, port: u16) -> Self {
        self.port = port.to_be_bytes();
        self
    }

    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        match self.family {
            family::V4 => Some(IpAddr::V4(Ipv4Addr::from(*self.addr_v4()))),
            family::V6 => Some(IpAddr::V6(Ipv6Addr::from(self.addr))),
            _ => None,
        }
    }

    #[must_use]
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port()))
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(sa: SocketAddr) -> Self {
        match sa.ip() {
            // A v4-mapped IPv6 address is IPv4 on the wire.
            IpAddr::V4(ip) => Self::v4(ip.octets(), sa.port()),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => Self::v4(v4.octets(), sa.port()),
                None => Self::v6(ip.octets(), sa.port()),
            },
        }
    }
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.socket_addr() {
            Some(sa) => write!(f, "{sa}"),
            None => f.write_str("unset"),
        }
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// Flow table key: the relay's own address and port that a packet arrives on.
///
/// Each direction of a media stream has its own key, because the relay owns one port facing
/// each side.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct FlowKey {
    pub local: Endpoint,
}

impl FlowKey {
    #[must_use]
    pub const fn new(local: Endpoint) -> Self {
        Self { local }
    }
}

/// Where a flow is in its life. Stored as a `u8` in [`FlowEntry`]; any value other than
/// `FORWARD` is treated as HOLD by the kernel, so a corrupt entry can only slow a flow down.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlowState {
    /// Every packet goes to userspace over `AF_XDP`.
    Hold = 0,
    /// The XDP program rewrites and sends packets itself.
    Forward = 1,
}

/// Bits of [`FlowEntry::flags`].
pub mod flow_flags {
    /// Only packets whose source equals [`super::FlowEntry::peer`] are forwarded.
    pub const REQUIRE_PEER: u8 = 1 << 0;
    /// A packet from another source is dropped (and counted); without this bit it is punted to
    /// userspace, which may re-latch.
    pub const MISMATCH_DROP: u8 = 1 << 1;
    /// The next hop (egress interface, MAC addresses, MTU) is resolved and filled in. Without
    /// it a FORWARD packet goes to userspace, which hands it to the kernel's stack: the stack
    /// resolves the neighbour, and userspace fills the next hop in when it is known.
    pub const NEXT_HOP: u8 = 1 << 2;
    /// The egress interface delivers frames that native (driver) XDP transmits: `XDP_TX` on a
    /// veth, or a DEVMAP redirect into it, is dropped silently unless its peer runs XDP or
    /// GRO. Without this bit native XDP passes the packet to the TC program, whose redirect
    /// goes through the egress device's normal transmit path.
    pub const NATIVE_TX: u8 = 1 << 3;
    /// Send with a DEVMAP redirect even out of the interface the packet came in on, never
    /// with `XDP_TX`. For a veth: it schedules its peer's receive only for `XDP_TX` frames
    /// when the peer runs XDP, so with GRO alone on the peer they would sit in its ring;
    /// a redirect's flush always schedules it.
    pub const TX_REDIRECT: u8 = 1 << 4;
}

/// Flow table value: what to do with packets arriving on a [`FlowKey`]. Written only by
/// userspace; the kernel only reads it.
///
/// The next hop lives in the entry, resolved by userspace from the kernel's routes and
/// neighbours and refreshed when they change, so the fast path needs no FIB lookup (which
/// would also require `forwarding=1`, turning the relay into a router).
/// 8-byte aligned (the kernel aligns map values so): the program copies an entry out of the
/// flow array in 8-byte words.
#[repr(C, align(8))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlowEntry {
    /// Written by userspace only in the flow array (see [`place`]): odd while it rewrites the
    /// entry, advanced by two per rewrite, so the program can tell a copy it took from a torn
    /// one. Always 0 in the hash map, whose updates replace an element whole.
    pub seq: u32,
    state: u8,
    pub flags: u8,
    /// The largest IP packet (IP header included) the egress takes; a larger one goes to
    /// userspace, which has the kernel fragment it, as a socket relay would.
    pub mtu: u16,
    /// Index of this flow's [`FlowCounters`] in the counters array.
    pub counter_slot: u32,
    /// The flow's own key: in the flow array several keys share a place, and the program
    /// takes the entry only for the key it holds.
    pub key: FlowKey,
    /// The latched source of the far peer; checked when `REQUIRE_PEER` is set.
    pub peer: Endpoint,
    /// New source: the relay's address and port facing the destination.
    pub out_src: Endpoint,
    /// New destination.
    pub out_dst: Endpoint,
    /// Next hop (valid with `NEXT_HOP`): the egress interface and the MAC addresses.
    pub egress_ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// What signalling said of the side that sends on this flow: its endpoint, and (port 0)
    /// its SIP source or confirmed relay address. Punts of a packet from either take the
    /// priority budget, so a flood from elsewhere cannot crowd the real peer's first packets
    /// out of learning. Unset when unknown.
    pub hint: Endpoint,
    pub hint_ip: Endpoint,
    /// The slot of the egress interface in the `EGRESS` DEVMAP (valid with `NEXT_HOP`): an
    /// array index, so the FORWARD path takes no hash lookup for it.
    pub egress_slot: u32,
    /// The checksum words of the rewrite that the entry already fixes (see [`CsumDelta`]).
    pub csum: CsumDelta,
}

/// The sums behind a flow's checksum updates that do not depend on the packet, computed once
/// by userspace (`rewrite::CsumDelta::of`) when it writes the entry, so that a FORWARD adds
/// one precomputed word per checksum instead of summing every address it replaces. The
/// arriving destination is the flow's key and the new addresses and ports are the entry's;
/// only the arriving source varies (a flow that accepts any source), so the kernel adds its
/// words itself.
///
/// Each is a one's-complement accumulator of big-endian 16-bit words, not yet folded.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CsumDelta {
    /// IPv4 header checksum (RFC 1624): the complemented old destination, the new source and
    /// destination, and the TTL word's change.
    pub ip: u32,
    /// A complete UDP checksum's update: the same addresses, the complemented old destination
    /// port and the new ports.
    pub udp: u32,
    /// The arriving packet's pseudo-header sum without its source and length: what tells a
    /// partial checksum from a complete one.
    pub pseudo_in: u32,
    /// A recomputed UDP checksum's sum without the length and the payload: the new
    /// pseudo-header's addresses and protocol, and the new ports.
    pub pseudo_out: u32,
}

impl FlowEntry {
    /// A flow in HOLD, with its rewrite target already known (it may still be unset).
    #[must_use]
    pub const fn hold(key: FlowKey, counter_slot: u32) -> Self {
        Self {
            seq: 0,
            key,
            state: FlowState::Hold as u8,
            flags: 0,
            mtu: 0,
            counter_slot,
            peer: Endpoint::UNSET,
            out_src: Endpoint::UNSET,
            out_dst: Endpoint::UNSET,
            egress_ifindex: 0,
            src_mac: [0; 6],
            dst_mac: [0; 6],
            hint: Endpoint::UNSET,
            hint_ip: Endpoint::UNSET,
            egress_slot: 0,
            csum: CsumDelta {
                ip: 0,
                udp: 0,
                pseudo_in: 0,
                pseudo_out: 0,
            },
        }
    }

    /// Whether `src` is what signalling said of the sending side (see [`FlowEntry::hint`]).
    #[inline(always)]
    #[must_use]
    pub fn hinted(&self, src: &Endpoint) -> bool {
        (self.hint.is_set() && self.hint == *src)
            || (self.hint_ip.is_set() && src.same_address(&self.hint_ip))
    }

    #[inline(always)]
    #[must_use]
    pub const fn state(&self) -> FlowState {
        if self.state == FlowState::Forward as u8 {
            FlowState::Forward
        } else {
            FlowState::Hold
        }
    }

    pub const fn set_state(&mut self, state: FlowState) {
        self.state = state as u8;
    }

    #[inline(always)]
    #[must_use]
    pub const fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Per-flow counters, in an array map: a flow at a place of the flow array counts in the slot
/// of the place's index, one in the hash map in a slot after the places. The kernel adds to
/// them (see `relay::add` in the XDP program for why without a lock); userspace zeroes a slot
/// when it hands it to a new flow and otherwise only reads. Kept apart from [`FlowEntry`] so
/// that userspace rewriting an entry (the flip to FORWARD) never loses a count the kernel made
/// at the same moment.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FlowCounters {
    /// Packets and bytes rewritten and sent by XDP.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Packets and bytes handed to userspace (HOLD, wrong source with the punt policy, no
    /// neighbour or route yet).
    pub punt_packets: u64,
    pub punt_bytes: u64,
    /// Packets whose source was not the latched peer (dropped or punted by policy).
    pub mismatch_packets: u64,
    /// The flow's punt budget: the theoretical arrival time of its next punt (GCRA, in
    /// `bpf_ktime_get_ns` time), written by the kernel only.
    pub punt_tat_ns: u64,
}

/// Global counters, one `u64` per CPU per counter in a per-CPU array. The index is the
/// discriminant. The XDP program counts every frame once; the TC program counts only what it
/// does with a flow's packets (everything else it leaves alone, uncounted).
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Counter {
    /// Every frame the XDP program saw.
    Frames = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    PassNotIp,
    /// VLAN-tagged: passed to the kernel's VLAN devices, never relayed.
    PassVlan,
    /// Not UDP, or IPv6 with extension headers (fragments among them): passed. The kernel
    /// reassembles fragments, and the fallback socket hands a flow's datagrams to userspace.
    PassNotUdp,
    /// IPv4 fragments: passed, the kernel reassembles (as above).
    PassFragment,
    /// Headers cut short before the UDP header was complete: passed, the kernel drops them.
    PassTruncated,
    /// UDP with no flow entry: passed, the host's other traffic.
    PassNoFlow,
    /// A flow's packet with inconsistent lengths or an IPv6 zero checksum: dropped.
    DropMalformed,
    /// Wrong source on a flow with the drop policy: dropped.
    DropMismatch,
    /// Punted to userspace: HOLD.
    PuntHold,
    /// Punted: to the probe port.
    PuntProbe,
    /// Punted: wrong source on a flow with the punt policy.
    PuntMismatch,
    /// Punted: FORWARD, but the next hop is not resolved yet (userspace hands the packet to
    /// the kernel's stack, which resolves the neighbour).
    PuntNoNextHop,
    /// Punted: FORWARD across address families, which XDP does not translate.
    PuntFamily,
    /// No `AF_XDP` socket on this rx queue: dropped.
    DropNoSocket,
    /// Forwarded with `XDP_TX` (same interface).
    FwdTx,
    /// Forwarded with a DEVMAP redirect.
    FwdRedirect,
    /// Passed to the TC program: FORWARD, but the egress takes no native XDP frames (a veth
    /// whose peer runs neither XDP nor GRO, as in a container), or generic XDP met a partial
    /// checksum that only the kernel's checksum state can finish right.
    PassSkbPath,
    /// The DEVMAP redirect failed after the rewrite (the egress left the map): dropped.
    DropRedirect,
    /// A partial checksum over a payload longer than XDP finishes (1536 bytes): punted.
    PuntOversize,
    /// Punted: larger than the egress MTU (userspace has the kernel fragment it).
    PuntTooBig,
    /// TC: forwarded (rewritten and redirected out of the egress device).
    TcFwd,
    /// TC: a flow's packet handed to the stack, where the fallback socket gives it to
    /// userspace: HOLD without XDP, no next hop, too big, or a wrong source to re-check.
    TcToUserspace,
    /// TC: wrong source on a flow with the drop policy: dropped.
    TcDropMismatch,
    /// Punt refused: the flow's or the CPU's punt budget is spent (a flood): dropped.
    DropPuntBudget,
    /// A probe-port packet refused: the CPU's probe budget is spent: dropped.
    DropProbeBudget,
    /// Punted: IPv4 options (source routing among them) are not forwarded; userspace sends
    /// the payload on in a clean datagram.
    PuntIpOptions,
    /// FORWARD, TTL or hop limit exhausted (a forwarding loop between relays): dropped.
    DropTtl,
    /// Punted: the flow's entry was being rewritten by userspace as the packet read it (a
    /// window of microseconds at a flip or a next-hop change); userspace relays it under the
    /// new settings.
    PuntChanging,
}

impl Counter {
    pub const COUNT: usize = Counter::PuntChanging as usize + 1;

    pub const ALL: [Counter; Self::COUNT] = [
        Counter::Frames,
        Counter::PassNotIp,
        Counter::PassVlan,
        Counter::PassNotUdp,
        Counter::PassFragment,
        Counter::PassTruncated,
        Counter::PassNoFlow,
        Counter::DropMalformed,
        Counter::DropMismatch,
        Counter::PuntHold,
        Counter::PuntProbe,
        Counter::PuntMismatch,
        Counter::PuntNoNextHop,
        Counter::PuntFamily,
        Counter::DropNoSocket,
        Counter::FwdTx,
        Counter::FwdRedirect,
        Counter::PassSkbPath,
        Counter::DropRedirect,
        Counter::PuntOversize,
        Counter::PuntTooBig,
        Counter::TcFwd,
        Counter::TcToUserspace,
        Counter::TcDropMismatch,
        Counter::DropPuntBudget,
        Counter::DropProbeBudget,
        Counter::PuntIpOptions,
        Counter::DropTtl,
        Counter::PuntChanging,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Frames => "frames",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassVlan => "pass_vlan",
            Counter::PassNotUdp => "pass_not_udp",
            Counter::PassFragment => "pass_fragment",
            Counter::PassTruncated => "pass_truncated",
            Counter::PassNoFlow => "pass_no_flow",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropMismatch => "drop_mismatch",
            Counter::PuntHold => "punt_hold",
            Counter::PuntProbe => "punt_probe",
            Counter::PuntMismatch => "punt_mismatch",
            Counter::PuntNoNextHop => "punt_no_next_hop",
            Counter::PuntFamily => "punt_family",
            Counter::DropNoSocket => "drop_no_socket",
            Counter::FwdTx => "fwd_tx",
            Counter::FwdRedirect => "fwd_redirect",
            Counter::PassSkbPath => "pass_skb_path",
            Counter::DropRedirect => "drop_redirect",
            Counter::PuntOversize => "punt_oversize",
            Counter::PuntTooBig => "punt_too_big",
            Counter::TcFwd => "tc_fwd",
            Counter::TcToUserspace => "tc_to_userspace",
            Counter::TcDropMismatch => "tc_drop_mismatch",
            Counter::DropPuntBudget => "drop_punt_budget",
            Counter::DropProbeBudget => "drop_probe_budget",
            Counter::PuntIpOptions => "punt_ip_options",
            Counter::DropTtl => "drop_ttl",
            Counter::PuntChanging => "punt_changing",
        }
    }
}

/// A punt budget: GCRA with an emission interval and a burst tolerance, in nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Budget {
    pub interval_ns: u64,
    pub burst_ns: u64,
}

impl Budget {
    /// `rate` packets a second, with bursts of `burst` packets.
    #[must_use]
    pub const fn per_second(rate: u64, burst: u64) -> Self {
        let interval_ns = 1_000_000_000 / if rate == 0 { 1 } else { rate };
        Self {
            interval_ns,
            burst_ns: interval_ns * if burst == 0 { 0 } else { burst - 1 },
        }
    }

    /// Takes one packet's worth from the bucket whose state is `tat` (the theoretical
    /// arrival time of the next packet), at `now`. Racy across CPUs by design: a lost update
    /// lets one packet more or less through, never more than a burst.
    #[inline(always)]
    pub fn take(&self, tat: &mut u64, now: u64) -> bool {
        let t = if *tat > now { *tat } else { now };
        if t - now > self.burst_ns {
            return false;
        }
        *tat = t + self.interval_ns;
        true
    }
}

/// Indices of the per-CPU global punt budgets (`PUNT_TAT`).
pub mod budget {
    /// Punts of packets from sources that signalling did not name.
    pub const MEDIA: u32 = 0;
    /// Punts of packets from the signalled endpoint, SIP source or confirmed relay.
    pub const PRIORITY: u32 = 1;
    /// Probe-port packets.
    pub const PROBES: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Program-wide settings, in a one-element array map written by userspace at start-up.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RelayConfig {
    /// UDP port on which probes and probe ACKs arrive, network order; 0 disables.
    pub probe_port: [u8; 2],
    /// The rotation of an address's fold in the flow array's layout (see [`place::layout`]).
    pub place_shift: u8,
    _pad: u8,
    /// The flow array's blocks less one (see [`place`]).
    pub place_mask: u32,
    /// Per flow: punts of unsignalled sources.
    pub flow_budget: Budget,
    /// Per CPU, indexed by [`budget`].
    pub cpu_budget: [Budget; budget::COUNT as usize],
}

impl RelayConfig {
    /// A flow may punt 1000 packets a second (a HOLD flow's 50 pps of RTP, a video flow too
    /// large for its egress), in bursts of 100; each CPU 50,000 of unsignalled sources,
    /// 20,000 of signalled ones, and 5,000 probes: what the control thread takes with room
    /// to spare, whatever a flood sends.
    pub const FLOW_BUDGET: Budget = Budget::per_second(1000, 100);
    pub const CPU_BUDGET: [Budget; budget::COUNT as usize] = [
        Budget::per_second(50_000, 5_000),
        Budget::per_second(20_000, 2_000),
        Budget::per_second(5_000, 500),
    ];

    #[must_use]
    /// `layout`: the flow array's, from [`place::layout`].
    pub const fn new(probe_port: u16, layout: place::Layout) -> Self {
        Self {
            probe_port: probe_port.to_be_bytes(),
            #[expect(clippy::cast_possible_truncation, reason = "a rotation, below 32")]
            place_shift: layout.shift as u8,
            _pad: 0,
            place_mask: layout.blocks.saturating_sub(1),
            flow_budget: Self::FLOW_BUDGET,
            cpu_budget: Self::CPU_BUDGET,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) plain data without padding (see the layout tests).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RelayConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Endpoint {}
}

#[cfg(test)]
mod tests;
