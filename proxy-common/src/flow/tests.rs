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
    assert_packed!(Endpoint, 20, 4, [[u8; 16], [u8; 2], u8, u8]);
    assert_packed!(FlowKey, 20, 4, [Endpoint]);
    assert_packed!(
        FlowEntry,
        168,
        8,
        [
            u32, u8, u8, u16, u32, FlowKey, Endpoint, Endpoint, Endpoint, u32, [u8; 6], [u8; 6],
            Endpoint, Endpoint, u32, CsumDelta
        ]
    );
    assert_packed!(CsumDelta, 16, 4, [u32, u32, u32, u32]);
    assert_packed!(FlowCounters, 48, 8, [u64, u64, u64, u64, u64, u64]);
    assert_packed!(Budget, 16, 8, [u64, u64]);
    assert_packed!(
        RelayConfig,
        72,
        8,
        [[u8; 2], u8, u8, u32, Budget, [Budget; 3]]
    );
}

#[test]
fn field_offsets_are_stable() {
    assert_eq!(core::mem::offset_of!(FlowEntry, seq), 0);
    assert_eq!(core::mem::offset_of!(FlowEntry, counter_slot), 8);
    assert_eq!(core::mem::offset_of!(FlowEntry, key), 12);
    assert_eq!(core::mem::offset_of!(FlowEntry, peer), 32);
    assert_eq!(core::mem::offset_of!(FlowEntry, out_src), 52);
    assert_eq!(core::mem::offset_of!(FlowEntry, out_dst), 72);
    assert_eq!(core::mem::offset_of!(FlowEntry, egress_ifindex), 92);
    assert_eq!(core::mem::offset_of!(FlowEntry, src_mac), 96);
    assert_eq!(core::mem::offset_of!(FlowEntry, dst_mac), 102);
    assert_eq!(core::mem::offset_of!(FlowEntry, egress_slot), 148);
    assert_eq!(core::mem::offset_of!(FlowEntry, csum), 152);
    // The program copies an entry out of the flow array in 8-byte words.
    assert_eq!(size_of::<FlowEntry>() % 8, 0);
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
    let mut e = FlowEntry::hold(FlowKey::new(Endpoint::UNSET), 3);
    assert_eq!(e.state(), FlowState::Hold);
    e.set_state(FlowState::Forward);
    assert_eq!(e.state(), FlowState::Forward);
    e.state = 7;
    assert_eq!(e.state(), FlowState::Hold);
}

#[test]
fn budgets_pass_their_rate_and_bursts_and_no_more() {
    let b = Budget::per_second(1000, 10);
    let mut tat = 0;
    let t0 = 5_000_000_000;
    // A burst of 10 passes at once, the 11th does not.
    let passed = (0..20).filter(|_| b.take(&mut tat, t0)).count();
    assert_eq!(passed, 10);
    // Over a second at a steady 10,000 offered, about 1000 pass.
    let mut n = 0;
    for i in 0..10_000u64 {
        if b.take(&mut tat, t0 + 1_000_000 + i * 100_000) {
            n += 1;
        }
    }
    assert!((990..=1011).contains(&n), "{n}");
    // A zero rate still works (one a second), never a division by zero.
    let z = Budget::per_second(0, 0);
    let mut tat = 0;
    assert!(z.take(&mut tat, 1));
    assert!(!z.take(&mut tat, 2));
}

#[test]
fn hints_match_the_endpoint_or_the_address() {
    let mut e = FlowEntry::hold(FlowKey::new(Endpoint::UNSET), 0);
    let phone = Endpoint::v4([192, 0, 2, 1], 4000);
    assert!(!e.hinted(&phone));
    e.hint = phone;
    assert!(e.hinted(&phone));
    assert!(!e.hinted(&phone.with_port(4001)));
    e.hint_ip = Endpoint::v4([198, 51, 100, 7], 0);
    assert!(e.hinted(&Endpoint::v4([198, 51, 100, 7], 61_000)));
}

#[test]
fn counter_table_is_complete() {
    for (i, c) in Counter::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i, "{} out of order", c.name());
    }
}

#[test]
fn places_give_every_port_of_an_address_its_own_and_consecutive_addresses_their_own_block() {
    assert_eq!(place::blocks(1), 1);
    assert_eq!(place::blocks(DEFAULT_MAX_FLOWS), 2);
    assert_eq!(place::blocks(1_000_002), 32);
    assert_eq!(place::blocks(u32::MAX), 1 << 15);
    let mask = place::blocks(1_000_002) - 1;
    let mut seen = std::collections::HashSet::new();
    for ip in 0..20u8 {
        for port in [0, 1, 5004, 40_000, u16::MAX] {
            let key = FlowKey::new(Endpoint::v4([10, 0, 1, 10 + ip], port));
            let p = place::of(&key, mask, 0);
            assert!(p < (mask + 1) * place::BLOCK);
            assert_eq!(p & 0xffff, u32::from(port));
            assert!(seen.insert(p), "{key:?} shares place {p}");
        }
    }
    // IPv6: the fold takes every word, so addresses that differ anywhere spread.
    let a = place::of(
        &FlowKey::new(Endpoint::v6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            7,
        )),
        1,
        0,
    );
    let b = place::of(
        &FlowKey::new(Endpoint::v6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            7,
        )),
        1,
        0,
    );
    assert_ne!(a, b);
}

/// The layout gives each media address a block of its own: by rotating the fold where the
/// addresses differ, and with more blocks where there are more addresses than blocks.
#[test]
fn the_layout_gives_each_media_address_its_own_block() {
    let ip = |a: [u8; 4]| Endpoint::v4(a, 0);
    let blocks_of = |l: place::Layout, addrs: &[Endpoint]| {
        let set: std::collections::HashSet<u32> = addrs
            .iter()
            .map(|a| l.place(&FlowKey::new(a.with_port(30_000))) >> 16)
            .collect();
        set.len()
    };
    // A public and a private address ending alike: the same block at rotation 0 for any
    // number of blocks up to 256, separated at the default two by a rotation.
    let two = [ip([203, 0, 113, 5]), ip([10, 1, 2, 5])];
    let l = place::layout(DEFAULT_MAX_FLOWS, &two);
    assert_eq!((l.blocks, l.shared), (2, 0));
    assert_ne!(l.shift, 0);
    assert_eq!(blocks_of(l, &two), 2);
    // An IPv4 and an IPv6 address.
    let mixed = [
        ip([192, 0, 2, 1]),
        Endpoint::v6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0, 0, 2, 1],
            0,
        ),
    ];
    assert_eq!(
        blocks_of(place::layout(DEFAULT_MAX_FLOWS, &mixed), &mixed),
        2
    );
    // A pool of consecutive addresses keeps rotation 0 and the blocks it needs anyway.
    let pool: Vec<Endpoint> = (0..20).map(|i| ip([10, 0, 1, 10 + i])).collect();
    assert_eq!(
        place::layout(1_000_002, &pool),
        place::Layout {
            blocks: 32,
            shift: 0,
            shared: 0
        }
    );
    // Three addresses: four blocks.
    let three = [ip([10, 0, 0, 1]), ip([10, 0, 0, 3]), ip([10, 0, 0, 5])];
    let l = place::layout(DEFAULT_MAX_FLOWS, &three);
    assert_eq!((l.blocks, l.shared), (4, 0));
    assert_eq!(blocks_of(l, &three), 3);
    // None, one, or the same address twice: the blocks the flows need, no rotation.
    let plain = place::Layout {
        blocks: 2,
        shift: 0,
        shared: 0,
    };
    assert_eq!(place::layout(DEFAULT_MAX_FLOWS, &[]), plain);
    assert_eq!(place::layout(DEFAULT_MAX_FLOWS, &two[..1]), plain);
    assert_eq!(place::layout(DEFAULT_MAX_FLOWS, &[two[0], two[0]]), plain);
    // An IPv6 address whose words fold to an IPv4 address's: no layout separates them; the
    // fewest blocks, and the pair reported.
    let same_fold = [
        ip([10, 0, 0, 1]),
        Endpoint::v6([10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 0),
    ];
    let l = place::layout(DEFAULT_MAX_FLOWS, &same_fold);
    assert_eq!((l.blocks, l.shared), (2, 1));
    // More addresses than eight times the blocks: the fewest blocks, the fewest pairs.
    let many: Vec<Endpoint> = (0..40).map(|i| ip([10, 0, 1, i])).collect();
    let l = place::layout(1, &many);
    assert_eq!(l.blocks, 1);
    assert!(l.shared > 0);
}
