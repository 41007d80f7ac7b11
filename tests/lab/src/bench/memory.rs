//! The machine's memory latency, beside the flow scaling: a chain of dependent reads in a
//! random order over a region the size of the largest flow table's array, mapped with 4 KiB
//! pages (as the kernel maps a BPF array: vmalloc, no huge pages) and with 2 MiB pages
//! (transparent huge pages, where the kernel gives them), and over a region that stays in the
//! caches. A FORWARD to one of a million flows in scattered order pays at least one such read
//! for its entry (the counters' read goes beside it): the floor under the 1M-flow figure, and
//! on a VM with nested paging a dear one.

use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::harness::{RELAY_CPU, pin_to};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryLatency {
    /// The region: the largest table's flow array.
    pub table_bytes: u64,
    /// A dependent read over it, 4 KiB pages (median of the rounds).
    pub small_pages_ns: f64,
    /// The same with 2 MiB pages; `None` when the kernel gave the region none.
    pub huge_pages_ns: Option<f64>,
    /// A region that fits the caches, and a read within it.
    pub cached_bytes: u64,
    pub cached_ns: f64,
}

/// One cache line per step, so that every read is a line of its own.
const LINE: usize = 64;
const CACHED_BYTES: usize = 256 << 10;
const ROUNDS: usize = 5;
const STEPS: usize = 200_000;

/// Measures on the relay's CPU, with no traffic running.
///
/// # Errors
///
/// When a region cannot be mapped or the thread cannot be pinned.
pub(super) fn measure(table_bytes: usize) -> anyhow::Result<MemoryLatency> {
    let measured = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<MemoryLatency> {
            pin_to(RELAY_CPU).context("pinning the memory measurement")?;
            let small = Region::new(table_bytes, false)?.chase_ns();
            let huge = Region::new(table_bytes, true)?;
            let huge_ns = huge.has_huge_pages().then(|| huge.chase_ns());
            drop(huge);
            let cached = Region::new(CACHED_BYTES, false)?.chase_ns();
            Ok(MemoryLatency {
                table_bytes: table_bytes as u64,
                small_pages_ns: small,
                huge_pages_ns: huge_ns,
                cached_bytes: CACHED_BYTES as u64,
                cached_ns: cached,
            })
        })
        .join()
    });
    measured.map_err(|_| anyhow::anyhow!("the memory measurement panicked"))?
}

/// An anonymous mapping whose lines form one random cycle: each line's first word is the
/// index of the next.
struct Region {
    base: *mut u64,
    bytes: usize,
}

impl Region {
    fn new(bytes: usize, huge: bool) -> anyhow::Result<Self> {
        let lines = bytes / LINE;
        if lines < 2 {
            bail!("a region of {bytes} bytes has no cycle");
        }
        // SAFETY: a fresh private anonymous mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        let region = Self {
            base: base.cast(),
            bytes,
        };
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: the mapping above. Advice only: without it the pages are what the system's
        // default gives, which `has_huge_pages` reports.
        unsafe { libc::madvise(base, bytes, advice) };
        // A random order of the lines (Sattolo's shuffle), each line linked to the next in it:
        // one cycle through every line.
        let mut order: Vec<u32> = (0..u32::try_from(lines)?).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for i in (1..lines).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            #[expect(clippy::cast_possible_truncation, reason = "below `i`, a usize")]
            let j = (x % i as u64) as usize;
            order.swap(i, j);
        }
        for k in 0..lines {
            let next = order[(k + 1) % lines];
            // SAFETY: line `order[k]` is inside the mapping.
            unsafe { region.line(order[k] as usize).write(u64::from(next)) };
        }
        Ok(region)
    }

    /// The first word of line `i`.
    ///
    /// SAFETY: `i` below the region's lines.
    unsafe fn line(&self, i: usize) -> *mut u64 {
        // SAFETY: as the caller promises.
        unsafe { self.base.byte_add(i * LINE) }
    }

    /// Nanoseconds per read along the cycle, the median of the rounds.
    #[expect(
        clippy::cast_precision_loss,
        reason = "benchmark statistics: step counts far below 2^52"
    )]
    fn chase_ns(&self) -> f64 {
        let mut at = 0usize;
        let mut rounds: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..STEPS {
                    // SAFETY: every word written in `new` is the index of a line.
                    #[expect(clippy::cast_possible_truncation, reason = "a line index")]
                    let next = unsafe { self.line(at).read_volatile() } as usize;
                    at = next;
                }
                t.elapsed().as_nanos() as f64 / STEPS as f64
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        rounds[ROUNDS / 2]
    }

    /// Whether the kernel backs (nearly) all of the region with huge pages (its
    /// `AnonHugePages` in smaps): the ends of an unaligned mapping, or a fragmented memory,
    /// leave some of it in small pages, and a region mostly so is not reported as huge.
    fn has_huge_pages(&self) -> bool {
        let start = format!("{:x}-", self.base as usize);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        // A mapping's lines follow its header ("start-end perms ..."), up to the next header.
        let header = |l: &str| {
            l.split_whitespace()
                .next()
                .and_then(|t| t.split_once('-'))
                .is_some_and(|(a, b)| {
                    usize::from_str_radix(a, 16).is_ok() && usize::from_str_radix(b, 16).is_ok()
                })
        };
        smaps
            .lines()
            .skip_while(|l| !l.starts_with(&start))
            .skip(1)
            .take_while(|l| !header(l))
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .is_some_and(|kb| kb.saturating_mul(1024) >= self.bytes as u64 / 10 * 9)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain is one cycle through every line: the chase reads each line once per lap, so it
    /// measures the whole region, not a short loop that stays in the cache.
    #[test]
    fn the_chain_visits_every_line_once_per_lap() {
        let lines = 4096;
        let r = Region::new(lines * LINE, false).unwrap();
        let mut seen = vec![false; lines];
        let mut at = 0usize;
        for _ in 0..lines {
            assert!(!seen[at], "line {at} twice in a lap");
            seen[at] = true;
            // SAFETY: every word written in `new` is the index of a line.
            at = usize::try_from(unsafe { r.line(at).read() }).unwrap();
        }
        assert_eq!(at, 0, "back at the start after a lap");
        assert!(seen.iter().all(|s| *s));
        assert!(r.chase_ns() > 0.0);
    }
}
