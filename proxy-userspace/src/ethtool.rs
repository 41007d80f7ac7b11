//! A device's driver statistics (`ethtool -S`), for the counters that show native XDP frames
//! the device could not deliver: a veth counts `xdp_tx_errors` per rx queue (`XDP_TX` with no
//! NAPI on the peer) and `xdp_xmit_errors` per tx queue.

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// More statistics than any driver has; bounds the buffers.
const MAX_STATS: usize = 16_384;

fn ioctl(ifname: &str, data: &mut [u8]) -> bool {
    crate::sys::ethtool(ifname, data)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// Every statistic of the device, by name; `None` if the driver has none or the device is
/// gone.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the kernel reports the string count as a u32, so it fits back"
)]
pub fn stats(ifname: &str) -> Option<Vec<(String, u64)>> {
    // struct ethtool_sset_info { u32 cmd; u32 reserved; u64 sset_mask; u32 data[]; }
    let mut info = vec![0u8; 20];
    info[..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
    if !ioctl(ifname, &mut info) {
        return None;
    }
    let n = (u32_at(&info, 16) as usize).min(MAX_STATS);
    if n == 0 {
        return None;
    }
    // struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[]; }
    let mut names = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    names[..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    names[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    names[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
    if !ioctl(ifname, &mut names) {
        return None;
    }
    // struct ethtool_stats { u32 cmd; u32 n_stats; u64 data[]; }
    let mut values = vec![0u8; 8 + n * 8];
    values[..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    values[4..8].copy_from_slice(&(n as u32).to_ne_bytes());
    if !ioctl(ifname, &mut values) {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let raw = &names[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
                let name = raw.split(|&c| c == 0).next().unwrap_or_default();
                let v = values
                    .get(8 + i * 8..16 + i * 8)
                    .and_then(|s| s.try_into().ok())
                    .map_or(0, u64::from_ne_bytes);
                (String::from_utf8_lossy(name).into_owned(), v)
            })
            .collect(),
    )
}

/// Native XDP frames the device failed to deliver (`xdp_tx_errors` + `xdp_xmit_errors` over
/// its queues), `None` if its driver does not count them.
#[must_use]
pub fn xdp_errors(ifname: &str) -> Option<u64> {
    let s = stats(ifname)?;
    let mut found = false;
    let mut sum = 0u64;
    for (name, v) in s {
        if name.ends_with("xdp_tx_errors") || name.ends_with("xdp_xmit_errors") {
            found = true;
            sum = sum.saturating_add(v);
        }
    }
    found.then_some(sum)
}
