//! How calls end: `delete` (at once or after its delay), teardown of a call's media, and
//! housekeeping's delayed deletes and media timeouts.

use std::time::{Duration, Instant, SystemTime};

use super::{Call, Calls, Ended, KernelView, MAX_DELETE_DELAY, NgError, last_seen_of};
use crate::{
    ng::{command::Delete, flags::Options, reply::Reply},
    session::Engine,
};

impl Calls {
    fn teardown(&mut self, engine: &mut Engine, call_id: &str, why: Ended, now: Instant) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if call.ended.is_some() {
            return;
        }
        call.ended = Some((why, now));
        let ifaces = call.ifaces;
        let mut to_free = Vec::new();
        let mut streams = Vec::new();
        for m in &mut call.medias {
            streams.extend([m.rtp.take(), m.rtcp.take()].into_iter().flatten());
            if m.ports != [0, 0] {
                to_free.push(m.ports);
            }
        }
        self.release(engine, ifaces, streams, to_free);
        match why {
            Ended::Deleted => self.counters.deleted_sessions += 1,
            Ended::Timeout => self.counters.timeout_sessions += 1,
        }
    }

    pub(super) fn delete(
        &mut self,
        engine: &mut Engine,
        r: &Delete,
        o: &Options,
        now: Instant,
        kernel: KernelView<'_>,
    ) -> Result<Reply, NgError> {
        let tags_match = |call: &Call| {
            [&r.from_tag, &r.to_tag]
                .into_iter()
                .flatten()
                .all(|t| call.tags.iter().flatten().any(|c| c == t))
        };
        let found = self
            .calls
            .get(&r.call_id)
            .is_some_and(|c| c.ended.is_none() && tags_match(c));
        if !found {
            return if o.fatal {
                Err(NgError::CallNotFound)
            } else {
                Ok(Reply::NothingToDelete)
            };
        }
        let report = if r.from_tag.is_some() {
            self.report(engine, &r.call_id, kernel)
        } else {
            None
        };
        // Any integer a client sends is taken, within bounds: negative means the default,
        // beyond an hour means an hour.
        let delay = match o.delete_delay {
            Some(d) if d >= 0 => Duration::from_secs(d.unsigned_abs()).min(MAX_DELETE_DELAY),
            _ => self.cfg.delete_delay,
        };
        if delay.is_zero() {
            self.teardown(engine, &r.call_id, Ended::Deleted, now);
            self.calls.remove(&r.call_id);
        } else if let Some(call) = self.calls.get_mut(&r.call_id) {
            call.delete_at = Some(now.checked_add(delay).unwrap_or(now));
        }
        Ok(Reply::Deleted(report))
    }

    /// Ends delayed deletes and idle media; call about once a second.
    pub fn housekeeping(&mut self, engine: &mut Engine, now: Instant, kernel: KernelView<'_>) {
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.ended.is_none() && c.delete_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.teardown(engine, &id, Ended::Deleted, now);
            self.calls.remove(&id);
        }
        let expired: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.ended
                    .is_some_and(|(_, at)| now.saturating_duration_since(at) >= self.cfg.keep_ended)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.calls.remove(&id);
        }
        let timeout = self.cfg.media_timeout;
        let ids: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.ended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let signal_age = {
                let c = &self.calls[&id];
                SystemTime::now()
                    .duration_since(c.last_signal)
                    .unwrap_or_default()
            };
            let mut idle_medias = Vec::new();
            for (i, m) in self.calls[&id].medias.iter().enumerate() {
                if m.timed_out || m.rtp.is_none() {
                    continue;
                }
                let last = [m.rtp, m.rtcp]
                    .into_iter()
                    .flatten()
                    .filter_map(|sid| engine.status(sid))
                    .flat_map(|st| st.into_iter().map(|s| last_seen_of(kernel, &s.local)))
                    .flatten()
                    .max();
                let idle = match last {
                    Some(t) => now.saturating_duration_since(t),
                    None => signal_age,
                };
                if idle >= timeout {
                    idle_medias.push(i);
                }
            }
            // A call with no live media at all (every m= line disabled, or none) would
            // otherwise never end: it times out on its signalling's age.
            let live = self.calls[&id]
                .medias
                .iter()
                .any(|m| !m.timed_out && m.rtp.is_some());
            if !live && signal_age >= timeout {
                self.teardown(engine, &id, Ended::Timeout, now);
                continue;
            }
            self.time_out_medias(engine, &id, &idle_medias, now);
        }
    }

    fn time_out_medias(
        &mut self,
        engine: &mut Engine,
        call_id: &str,
        idle: &[usize],
        now: Instant,
    ) {
        if idle.is_empty() {
            return;
        }
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let ifaces = call.ifaces;
        let mut streams = Vec::new();
        let mut ports = Vec::new();
        for &i in idle {
            let m = &mut call.medias[i];
            m.timed_out = true;
            streams.extend([m.rtp.take(), m.rtcp.take()].into_iter().flatten());
            ports.push(std::mem::take(&mut m.ports));
        }
        let all = call.medias.iter().all(|m| m.timed_out || m.ports == [0, 0]);
        self.release(engine, ifaces, streams, ports);
        if all {
            self.teardown(engine, call_id, Ended::Timeout, now);
        }
    }
}
