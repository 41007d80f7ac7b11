//! Why a packet did not get relayed, and which XDP action and counter that means.

use aya_ebpf::bindings::xdp_action;
use proxy_common::Counter;

/// A packet the program does not relay. `Copy` and formatting-free, so the kernel can handle
/// it without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    NotIp,
    Vlan,
    NotUdp,
    Fragment,
    /// The frame ended inside a header we needed.
    Truncated,
    NoFlow,
    /// A flow's packet whose lengths contradict each other, or IPv6 UDP without a checksum.
    Malformed,
    /// Wrong source on a flow whose policy is to drop.
    Mismatch,
    /// No `AF_XDP` socket for this rx queue.
    NoSocket,
    /// The DEVMAP redirect failed after the rewrite (the interface left the map meanwhile).
    RedirectFailed,
    /// A punt refused by its budget (a flood).
    PuntBudget,
    /// A probe-port packet refused by the probe budget.
    ProbeBudget,
    /// TTL or hop limit exhausted.
    Ttl,
}

impl Error {
    /// The stated rule: traffic that may not be ours goes to the kernel untouched; traffic
    /// addressed to a flow that we cannot relay is dropped and counted.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            Error::NotIp
            | Error::Vlan
            | Error::NotUdp
            | Error::Fragment
            | Error::Truncated
            | Error::NoFlow => xdp_action::XDP_PASS,
            Error::Malformed
            | Error::Mismatch
            | Error::NoSocket
            | Error::RedirectFailed
            | Error::PuntBudget
            | Error::ProbeBudget
            | Error::Ttl => xdp_action::XDP_DROP,
        }
    }

    /// What the kernel event for this outcome says (`--kernel-log`).
    #[inline(always)]
    pub const fn reason(self) -> &'static str {
        match self {
            Error::NotIp => "not IP",
            Error::Vlan => "VLAN-tagged",
            Error::NotUdp => "not UDP",
            Error::Fragment => "IP fragment",
            Error::Truncated => "truncated",
            Error::NoFlow => "no flow",
            Error::Malformed => "a flow's packet with inconsistent lengths",
            Error::Mismatch => "a flow's packet from the wrong source",
            Error::NoSocket => "no AF_XDP socket for the rx queue",
            Error::RedirectFailed => "redirect failed",
            Error::PuntBudget => "punt over budget",
            Error::ProbeBudget => "probe over budget",
            Error::Ttl => "TTL exhausted",
        }
    }

    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            Error::NotIp => Counter::PassNotIp,
            Error::Vlan => Counter::PassVlan,
            Error::NotUdp => Counter::PassNotUdp,
            Error::Fragment => Counter::PassFragment,
            Error::Truncated => Counter::PassTruncated,
            Error::NoFlow => Counter::PassNoFlow,
            Error::Malformed => Counter::DropMalformed,
            Error::Mismatch => Counter::DropMismatch,
            Error::NoSocket => Counter::DropNoSocket,
            Error::RedirectFailed => Counter::DropRedirect,
            Error::PuntBudget => Counter::DropPuntBudget,
            Error::ProbeBudget => Counter::DropProbeBudget,
            Error::Ttl => Counter::DropTtl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Error; 13] = [
        Error::NotIp,
        Error::Vlan,
        Error::NotUdp,
        Error::Fragment,
        Error::Truncated,
        Error::NoFlow,
        Error::Malformed,
        Error::Mismatch,
        Error::NoSocket,
        Error::RedirectFailed,
        Error::PuntBudget,
        Error::ProbeBudget,
        Error::Ttl,
    ];

    /// Traffic that may not be ours reaches the kernel untouched; nothing addressed to a flow
    /// is ever passed (the stack would answer it, or deliver it to a socket of the host).
    #[test]
    fn only_traffic_that_may_not_be_ours_is_passed() {
        for e in ALL {
            let not_ours = matches!(
                e,
                Error::NotIp
                    | Error::Vlan
                    | Error::NotUdp
                    | Error::Fragment
                    | Error::Truncated
                    | Error::NoFlow
            );
            let want = if not_ours {
                xdp_action::XDP_PASS
            } else {
                xdp_action::XDP_DROP
            };
            assert_eq!(e.action(), want, "{e:?}");
        }
    }

    #[test]
    fn each_outcome_has_its_own_counter() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.counter() as u32, b.counter() as u32, "{a:?} and {b:?}");
            }
        }
    }
}
