//! The port pools, one per interface, and a call's port pairs taken from them and given
//! back with its streams.

use super::{Calls, NgError};
use crate::session::{Engine, StreamId};

/// Even ports for RTP in `[min, max)`, each with the odd port after it for RTCP. A pair is
/// picked at random among the free ones, so that the next call's ports cannot be guessed from
/// this one's (RTP Bleed's spray works best against sequential ports).
pub(super) struct PortPool {
    min: u16,
    pairs: Vec<bool>,
    used: usize,
}

impl PortPool {
    pub(super) fn new(min: u16, max: u16) -> Self {
        let min = min.saturating_add(min % 2);
        let n = usize::from(max.saturating_sub(min)) / 2;
        Self {
            min,
            pairs: vec![false; n],
            used: 0,
        }
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "i counts pairs within the pool's u16 port range"
    )]
    fn alloc(&mut self, rng: &mut impl rand::Rng) -> Option<u16> {
        let n = self.pairs.len();
        if self.used >= n {
            return None;
        }
        // A random start, then the next free pair: uniform enough, and bounded work.
        let start = rng.random_range(0..n);
        for k in 0..n {
            let i = (start + k) % n;
            if !self.pairs[i] {
                self.pairs[i] = true;
                self.used += 1;
                return Some(self.min + 2 * i as u16);
            }
        }
        None
    }

    fn free(&mut self, port: u16) {
        if port < self.min {
            return;
        }
        let i = usize::from((port - self.min) / 2);
        if let Some(p) = self.pairs.get_mut(i)
            && *p
        {
            *p = false;
            self.used -= 1;
        }
    }
}

impl Calls {
    #[must_use]
    pub fn ports_in_use(&self) -> usize {
        self.pools.iter().map(|p| p.used).sum()
    }

    /// A port pair facing each side of a call.
    pub(super) fn alloc_ports(&mut self, ifaces: [usize; 2]) -> Result<[u16; 2], NgError> {
        let mut ports = [0u16; 2];
        for side in [0, 1] {
            let Some(p) = self.pools[ifaces[side]].alloc(&mut self.rng) else {
                // The first side's pair is not in the request's allocations yet: give it
                // back here.
                if side == 1 {
                    self.pools[ifaces[0]].free(ports[0]);
                }
                return Err(NgError::OutOfPorts);
            };
            ports[side] = p;
        }
        Ok(ports)
    }

    /// Undoes the allocation of media `i` (a failed request).
    pub(super) fn release_media(
        &mut self,
        engine: &mut Engine,
        call_id: &str,
        i: usize,
        ports: [u16; 2],
    ) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let ifaces = call.ifaces;
        if let Some(m) = call.medias.get_mut(i) {
            for id in [m.rtp.take(), m.rtcp.take()].into_iter().flatten() {
                let _ = engine.remove_stream(id);
            }
        }
        call.medias.truncate(i);
        for side in 0..2 {
            if ports[side] != 0 {
                self.pools[ifaces[side]].free(ports[side]);
            }
        }
    }

    /// Tears a call's media down: streams, flows and ports. The record stays for `query`.
    /// Removes media streams from the engine and gives their port pairs back to the pools.
    pub(super) fn release(
        &mut self,
        engine: &mut Engine,
        ifaces: [usize; 2],
        streams: Vec<StreamId>,
        ports: Vec<[u16; 2]>,
    ) {
        for id in streams {
            let _ = engine.remove_stream(id);
        }
        for p in ports {
            for side in 0..2 {
                self.pools[ifaces[side]].free(p[side]);
            }
        }
    }
}
