//! [`Flood`]: the benchmark's generator as a hostile sender, for the flood tests.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mediaproxy_lab_ebpf::GenConfig;
use proxy_common::Endpoint;

use proxy_userspace::netlink::interface_mac;

use crate::testbed::Netns;

use super::harness::{Generator, install_signal_handler, run_generators};

/// The benchmark's generator aimed at a relay, for the flood test: frames from `src` out of
/// one interface of a namespace, at a paced rate or flat out.
pub struct Flood {
    pub(super) ns: Netns,
    pub(super) generator: Generator,
}

impl Flood {
    /// Loads the generator in `ns` (which the flood owns from then on), sending out of
    /// `ifname` toward `dst_mac`.
    ///
    /// # Errors
    ///
    /// If the generator cannot be loaded or the interface looked up in `ns`.
    pub fn new(
        ns: Netns,
        ifname: &'static str,
        src: Endpoint,
        dst_mac: [u8; 6],
    ) -> anyhow::Result<Self> {
        install_signal_handler();
        let ebpf = ns.enter(|| crate::programs::load("bench_gen", None))??;
        let ifindex = ns.enter(move || proxy_userspace::caps::ifindex(ifname))??;
        let src_mac = ns.enter(move || interface_mac(ifname))??;
        Ok(Self {
            ns,
            generator: Generator {
                ebpf: Arc::new(Mutex::new(ebpf)),
                ifindex,
                src_mac,
                dst_mac,
                src,
            },
        })
    }

    /// Sends to `ports` consecutive ports from `dst` for `window`, at `rate_pps` (0: as fast
    /// as the generator goes); returns the frames sent.
    ///
    /// # Errors
    ///
    /// If the generator's configuration cannot be written or its run fails.
    pub fn run(
        &self,
        dst: Endpoint,
        ports: u32,
        rate_pps: u64,
        window: Duration,
    ) -> anyhow::Result<u64> {
        let g = &self.generator;
        let cfg = GenConfig {
            rate_pps,
            flows: ports.max(1),
            ports_per_ip: ports.max(1),
            ifindex: g.ifindex,
            dst_port: dst.port(),
            src_port: g.src.port(),
            src_mac: g.src_mac,
            dst_mac: g.dst_mac,
            src_ip: *g.src.addr_v4(),
            dst_ip: *dst.addr_v4(),
            _pad: [0; 4],
        };
        run_generators(&[(&self.ns, g, cfg)], window)
    }
}
