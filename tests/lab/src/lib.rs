//! The lab beside the relay: what the demo, the benchmark and the integration tests build around
//! a real `mediaproxy` daemon, and nothing the relay itself needs.
//!
//! * [`testbed`]: network namespaces, veth pairs, child processes killed on drop.
//! * [`scenario`]: phones, relays and topologies (one relay, a bridge, two relays behind a NAT),
//!   the ng requests a call server would send, and what each stream delivered.
//! * [`rtp`]: the RTP packets the phones send.
//! * [`programs`]: the lab's XDP programs (generator, sink, and the test rigs' `XDP_PASS`).
//! * [`demo`]: `mediaproxy demo`.
//! * [`bench`]: `mediaproxy bench`, the packet-rate benchmark, and [`bench::Flood`], its
//!   generator as a hostile sender for the flood tests.
//!
//! It depends on the relay's library (`proxy-userspace`), never the other way round.

pub mod bench;
pub mod demo;
pub mod programs;
pub mod rtp;
pub mod scenario;
pub mod testbed;
