//! The flow table's keys and values, and the counters, as both the XDP program and userspace
//! see them. All types are `#[repr(C)]` without padding (see the layout tests), and every
//! address and port is stored in network order behind typed constructors.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Interfaces the program can be attached to at once.
pub const MAX_INTERFACES: u32 = 64;
/// Rx queues per interface with an AF_XDP socket.
pub const MAX_QUEUES_PER_INTERFACE: u32 = 64;

/// Address family tag stored in an [`Endpoint`].
pub mod family {
    pub const UNSET: u8 = 0;
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// An IP address and UDP port in network order. IPv4 uses the first four address bytes and
/// leaves the rest zero, so that equal endpoints are equal byte for byte.
#[repr(C)]
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
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
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
    /// Every packet goes to userspace over AF_XDP.
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
}

/// Flow table value: what to do with packets arriving on a [`FlowKey`]. Written only by
/// userspace; the kernel only reads it.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlowEntry {
    state: u8,
    pub flags: u8,
    _pad: [u8; 2],
    /// Index of this flow's [`FlowCounters`] in the counters array.
    pub counter_slot: u32,
    /// The latched source of the far peer; checked when `REQUIRE_PEER` is set.
    pub peer: Endpoint,
    /// New source: the relay's address and port facing the destination.
    pub out_src: Endpoint,
    /// New destination.
    pub out_dst: Endpoint,
    /// Egress interface, or 0 to let the FIB decide.
    pub egress_ifindex: u32,
}

impl FlowEntry {
    /// A flow in HOLD, with its rewrite target already known (it may still be unset).
    #[must_use]
    pub const fn hold(counter_slot: u32) -> Self {
        Self {
            state: FlowState::Hold as u8,
            flags: 0,
            _pad: [0; 2],
            counter_slot,
            peer: Endpoint::UNSET,
            out_src: Endpoint::UNSET,
            out_dst: Endpoint::UNSET,
            egress_ifindex: 0,
        }
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

/// Per-flow counters, one slot per flow in an array map. The kernel adds to them atomically;
/// userspace zeroes a slot when it hands it to a new flow and otherwise only reads. Kept apart
/// from [`FlowEntry`] so that userspace rewriting an entry (the flip to FORWARD) never loses
/// a count the kernel made at the same moment.
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
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at jiffy resolution, which is all a media
    /// timeout needs and costs a fraction of the precise clock) of the last accepted packet,
    /// 0 if none.
    pub last_seen_ns: u64,
}

/// Global counters, one `u64` per CPU per counter in a per-CPU array. The index is the
/// discriminant.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Counter {
    /// Every frame the program saw.
    Frames = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    PassNotIp,
    /// VLAN-tagged: passed to the kernel's VLAN devices, never relayed.
    PassVlan,
    /// Not UDP, or IPv6 with extension headers: passed.
    PassNotUdp,
    /// IPv4 fragments: passed, the kernel reassembles.
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
    /// Punted: FORWARD but the FIB gave no usable answer: no route, the neighbour not
    /// resolved yet, or larger than the egress MTU (userspace hands it to the kernel's
    /// stack, which resolves or fragments).
    PuntNoRoute,
    /// Punted: FORWARD across address families, which XDP does not translate.
    PuntFamily,
    /// No AF_XDP socket on this rx queue: dropped.
    DropNoSocket,
    /// Forwarded with XDP_TX (same interface).
    FwdTx,
    /// Forwarded with a DEVMAP redirect.
    FwdRedirect,
    /// The egress interface is not in the DEVMAP (not attached): punted.
    PuntNoDevmap,
    /// The DEVMAP redirect failed after the rewrite: dropped.
    DropRedirect,
    /// A partial checksum over a payload longer than XDP finishes (1536 bytes): punted.
    PuntOversize,
}

impl Counter {
    pub const COUNT: usize = Counter::PuntOversize as usize + 1;

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
        Counter::PuntNoRoute,
        Counter::PuntFamily,
        Counter::DropNoSocket,
        Counter::FwdTx,
        Counter::FwdRedirect,
        Counter::PuntNoDevmap,
        Counter::DropRedirect,
        Counter::PuntOversize,
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
            Counter::PuntNoRoute => "punt_no_route",
            Counter::PuntFamily => "punt_family",
            Counter::DropNoSocket => "drop_no_socket",
            Counter::FwdTx => "fwd_tx",
            Counter::FwdRedirect => "fwd_redirect",
            Counter::PuntNoDevmap => "punt_no_devmap",
            Counter::DropRedirect => "drop_redirect",
            Counter::PuntOversize => "punt_oversize",
        }
    }
}

/// Program-wide settings, in a one-element array map written by userspace at start-up.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RelayConfig {
    /// UDP port on which probes and probe ACKs arrive, network order; 0 disables.
    pub probe_port: [u8; 2],
    _pad: [u8; 2],
}

impl RelayConfig {
    #[must_use]
    pub const fn new(probe_port: u16) -> Self {
        Self {
            probe_port: probe_port.to_be_bytes(),
            _pad: [0; 2],
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// Size equals the sum of the field sizes, so there is no padding the kernel and userspace
    /// could disagree on (or leak through).
    macro_rules! assert_packed {
        ($ty:ty, $size:expr, $align:expr, [$($field:ty),+ $(,)?]) => {{
            assert_eq!(size_of::<$ty>(), $size, "size of {}", stringify!($ty));
            assert_eq!(align_of::<$ty>(), $align, "align of {}", stringify!($ty));
            assert_eq!(0 $(+ size_of::<$field>())+, size_of::<$ty>(), "padding in {}", stringify!($ty));
        }};
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_packed!(Endpoint, 20, 1, [[u8; 16], [u8; 2], u8, u8]);
        assert_packed!(FlowKey, 20, 1, [Endpoint]);
        assert_packed!(
            FlowEntry,
            72,
            4,
            [u8, u8, [u8; 2], u32, Endpoint, Endpoint, Endpoint, u32]
        );
        assert_packed!(FlowCounters, 48, 8, [u64, u64, u64, u64, u64, u64]);
        assert_packed!(RelayConfig, 4, 1, [[u8; 2], [u8; 2]]);
    }

    #[test]
    fn field_offsets_are_stable() {
        assert_eq!(core::mem::offset_of!(FlowEntry, counter_slot), 4);
        assert_eq!(core::mem::offset_of!(FlowEntry, peer), 8);
        assert_eq!(core::mem::offset_of!(FlowEntry, out_src), 28);
        assert_eq!(core::mem::offset_of!(FlowEntry, out_dst), 48);
        assert_eq!(core::mem::offset_of!(FlowEntry, egress_ifindex), 68);
        assert_eq!(core::mem::offset_of!(Endpoint, port), 16);
    }

    #[test]
    fn endpoint_roundtrips_and_stores_network_order() {
        let sa: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let ep = Endpoint::from(sa);
        assert_eq!(ep.family(), family::V4);
        assert_eq!(ep.addr_v4(), &[10, 1, 2, 3]);
        assert_eq!(ep.port_be(), &[0x9c, 0x40]);
        assert_eq!(ep.socket_addr(), Some(sa));
        let v6: SocketAddr = "[2001:db8::1]:5004".parse().unwrap();
        assert_eq!(Endpoint::from(v6).socket_addr(), Some(v6));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:7".parse().unwrap();
        assert_eq!(Endpoint::from(mapped), Endpoint::v4([10, 0, 0, 1], 7));
        assert!(!Endpoint::UNSET.is_set());
    }

    #[test]
    fn unknown_state_bytes_read_as_hold() {
        let mut e = FlowEntry::hold(3);
        assert_eq!(e.state(), FlowState::Hold);
        e.set_state(FlowState::Forward);
        assert_eq!(e.state(), FlowState::Forward);
        e.state = 7;
        assert_eq!(e.state(), FlowState::Hold);
    }

    #[test]
    fn counter_table_is_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{} out of order", c.name());
        }
    }
}
