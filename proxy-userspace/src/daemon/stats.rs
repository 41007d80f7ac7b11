//! What the daemon reports about itself: its figures under `statistics.mediaproxy`, per
//! interface, and the periodic debug log line.

use log::debug;

use super::control::Control;
use crate::{
    dataplane::AttachMode,
    ng::bencode::{Dict, Value},
};

impl Control {
    /// The daemon's own figures, under `statistics.mediaproxy`.
    pub(super) fn add_statistics(&mut self, reply: &mut Dict) {
        let mut xdp = Dict::new();
        if let Ok(g) = self.dp.global_counters() {
            for c in proxy_common::Counter::ALL {
                xdp.push(c.name(), Value::from(g.get(c)));
            }
        }
        let io = self.io.stats();
        let e = self.engine.counters();
        let c = &self.counters;
        let mut rejected = Dict::new();
        for k in [
            "malformed",
            "bad MAC",
            "stale",
            "replayed",
            "replay cache full",
            "wrong receiver",
        ] {
            rejected.push(
                k,
                Value::from(c.probes_rejected.get(k).copied().unwrap_or(0)),
            );
        }
        let (dsts, ready) = self.egresses.summary();
        let mut mp = crate::ng_dict! {
            "xdp" => xdp,
            "af_xdp" => crate::ng_dict! {
                "rx frames" => io.rx_frames,
                "rx backlog drops" => io.rx_backlog_drops,
                "rx priority drops" => io.rx_priority_drops,
                "tx frames" => io.tx_frames,
                "tx ring full" => io.tx_ring_full,
                "tx errors" => io.tx_errors,
            },
            "probes" => crate::ng_dict! {
                "received" => e.probes_received,
                "unknown session" => e.probes_unknown_session,
                "rejected" => rejected,
                "acks received" => e.acks_received,
                "acks unmatched" => e.acks_unmatched,
                "acked" => c.probes_acked,
                "failed" => c.probes_failed,
            },
            "blocking suspected" => c.blocking_suspected,
            "sent over af_xdp" => c.sent_af_xdp,
            "sent via kernel" => c.sent_kernel,
            "send errors" => c.send_errors,
            "sends refused" => c.send_refused,
            "fallback datagrams" => c.datagrams,
            "flow errors" => c.flow_errors,
            "unparsable frames" => c.frames_unparsable,
            "flows" => self.dp.flow_count(),
            "next hops" => crate::ng_dict! {
                "destinations" => dsts,
                "resolved" => ready,
                "lookup errors" => self.egresses.errors,
            },
            "interfaces reattached" => c.reattached,
            "martian sources" => c.martian_sources + e.martian_sources,
            "joined inside the relay" => c.joined,
            "ng requests too late to run" => c.ng_stale,
            "unverified probes and acks" => e.unverified,
            "sprayer packets refused" => e.sprayer_refused,
        };
        // How long each side's media took to go on from its first packet.
        let mut unblocked = Dict::new();
        for (i, n) in e.unblocked_after.iter().enumerate() {
            let label = crate::session::UNBLOCK_BUCKETS_MS
                .get(i)
                .map_or_else(|| "longer".to_owned(), |b| format!("<= {b} ms"));
            unblocked.push(&label, Value::from(*n));
        }
        mp.push("unblocked after", Value::Dict(unblocked));
        mp.push("interfaces", Value::List(self.interface_report()));
        if let Some((_, Value::Dict(st))) = reply.0.iter_mut().find(|(k, _)| k == b"statistics") {
            st.push("mediaproxy", Value::Dict(mp));
        }
    }

    /// Per interface: the XDP mode, whether native frames are delivered there, and which
    /// path flows leaving through it take.
    fn interface_report(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..self.ifaces.len() {
            let (name, ifindex, mode, queues, errors) = {
                let f = &self.ifaces[i];
                (f.name.clone(), f.ifindex, f.mode, f.queues, f.xdp_errors)
            };
            let mut d = crate::ng_dict! { "name" => name.as_str() };
            match ifindex {
                Some(ix) => {
                    d.push("ifindex", Value::from(u64::from(ix)));
                    d.push(
                        "xdp mode",
                        Value::str(mode.map_or("none", AttachMode::name)),
                    );
                    d.push("rx queues", Value::from(u64::from(queues)));
                    if let Some(dev) = self.egresses.device(ix) {
                        d.push(
                            "native frames delivered",
                            Value::str(if dev.native() { "yes" } else { "no" }),
                        );
                        d.push("egress path", Value::str(dev.path()));
                        d.push(
                            "xdp features",
                            Value::str(
                                &dev.features
                                    .map_or_else(|| "unknown".to_owned(), |f| format!("{f:#x}")),
                            ),
                        );
                    }
                    if let Some(e) = errors {
                        d.push("undelivered native frames", Value::from(e));
                    }
                }
                None => {
                    d.push("state", Value::str("deleted: waiting for it to come back"));
                }
            }
            out.push(Value::Dict(d));
        }
        out
    }

    pub(super) fn report(&self) {
        let g = self.dp.global_counters().unwrap_or_default();
        let io = self.io.stats();
        debug!(
            "calls {} ports {} flows {} | xdp: fwd {} tc {} punt {} | af_xdp rx {} tx {} | {:?}",
            self.calls.call_count(),
            self.calls.ports_in_use(),
            self.dp.flow_count(),
            g.get(proxy_common::Counter::FwdTx) + g.get(proxy_common::Counter::FwdRedirect),
            g.get(proxy_common::Counter::TcFwd),
            g.get(proxy_common::Counter::PuntHold),
            io.rx_frames,
            io.tx_frames,
            self.counters
        );
    }
}
