//! The router's WAN side: its WAN address and the NAT translation of each mail connection,
//! so the controller can map an abuse report (public IP, source port, time) to the device.
//!
//! - this module: [`NatLog`], the pure part the core owns. It holds each logged mail
//!   connection until its translation is known (or given up on), says which ones need a
//!   lookup now ([`NatLog::due`]) and takes the answers ([`NatLog::answer`]). No I/O, time
//!   passed in; replay and the demo run it disabled, so records pass straight through.
//! - [`conntrack`]: the lookup itself, one ctnetlink `IPCTNL_MSG_CT_GET` per connection with
//!   its original tuple, and the decoder of the kernel's replies (outside bytes, fuzzed).
//! - [`wan`]: the router's WAN address (the source address the kernel picks towards the
//!   internet, or the first address of a named interface).
//!
//! # Timing
//! The agent sees the SYN on the LAN bridge before the router forwards it; the conntrack
//! entry is confirmed once the SYN has passed postrouting. So the first lookup waits
//! [`RETRY_AFTER_MS`]`[0]` after the SYN and a missing entry is tried again after each
//! following delay; after the last one the record goes out without a translation.

pub mod conntrack;
pub mod wan;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use smtpguard_protocol::ConnRecord;

/// Delays before each lookup of a connection, from its SYN (then from the previous try):
/// 0.1 s, 0.4 s, 1 s, 2.5 s; about 4 s in all before the record goes without a translation.
pub const RETRY_AFTER_MS: [u64; 4] = [100, 400, 1_000, 2_500];
/// Most connections held for their translation; beyond it the oldest goes out without one.
/// The size of the engine's own connection log, so the log never holds more than before.
pub const PENDING_MAX: usize = 1024;

/// One lookup the driver should make: the connection's original tuple as the LAN device
/// sent it (TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatQuery {
    /// Names the record in [`NatLog::answer`].
    pub id: u64,
    /// The device's LAN address and source port.
    pub client: SocketAddr,
    /// The mail server's address and port.
    pub server: SocketAddr,
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    record: ConnRecord,
    client: IpAddr,
    /// Lookups made so far.
    tries: usize,
    /// When the next lookup is due; `None` once the record is final.
    next_ms: Option<u64>,
}

/// Counters of the NAT lookups, for the status file and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Connections whose translation was found.
    pub translated: u64,
    /// Connections given up on after every retry (no conntrack entry).
    pub missed: u64,
    /// Connections dropped because [`PENDING_MAX`] were held (the oldest goes).
    pub overflowed: u64,
}

/// The connection log between the engine and telemetry. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct NatLog {
    lookups: bool,
    entries: VecDeque<Entry>,
    next_id: u64,
    stats: NatStats,
}

impl NatLog {
    /// A log that asks for lookups when `lookups` is on (a live router with conntrack);
    /// otherwise every record is final as it comes in.
    pub fn new(lookups: bool) -> NatLog {
        NatLog {
            lookups,
            ..NatLog::default()
        }
    }

    /// Whether records wait for a lookup.
    pub fn lookups(&self) -> bool {
        self.lookups
    }

    /// Counters so far.
    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// A connection the engine logged at `record.at_ms`, opened from `client`.
    pub fn push(&mut self, record: ConnRecord, client: IpAddr) {
        if self.entries.len() >= PENDING_MAX {
            // Full: the oldest record is dropped, as the engine's own log drops when full.
            if self.entries.pop_front().is_some() {
                self.stats.overflowed += 1;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let next_ms = self
            .lookups
            .then(|| record.at_ms.saturating_add(RETRY_AFTER_MS[0]));
        self.entries.push_back(Entry {
            id,
            record,
            client,
            tries: 0,
            next_ms,
        });
    }

    /// Up to `max` lookups due at `now_ms`, oldest first. Each is due again after its next
    /// retry delay unless [`NatLog::answer`] settles it first.
    pub fn due(&mut self, now_ms: u64, max: usize, out: &mut Vec<NatQuery>) {
        for e in self.entries.iter_mut() {
            if out.len() >= max {
                return;
            }
            let Some(t) = e.next_ms else { continue };
            if t > now_ms {
                continue;
            }
            e.tries += 1;
            e.next_ms = RETRY_AFTER_MS
                .get(e.tries)
                .map(|d| now_ms.saturating_add(*d));
            if e.next_ms.is_none() {
                // This is the last try: the answer decides, or the record goes without.
                e.next_ms = Some(u64::MAX);
            }
            out.push(NatQuery {
                id: e.id,
                client: SocketAddr::new(e.client, e.record.src_port),
                server: SocketAddr::new(e.record.dst, e.record.dst_port),
            });
        }
    }

    /// The answer to lookup `id`: the translated source (WAN address and port) as the
    /// mail server sees it, or `None` when conntrack has no entry (yet).
    pub fn answer(&mut self, id: u64, translated: Option<SocketAddr>) {
        let Some(e) = self.entries.iter_mut().find(|e| e.id == id) else {
            return;
        };
        if e.next_ms.is_none() {
            return;
        }
        match translated {
            Some(wan) => {
                e.record.nat_ip = Some(wan.ip());
                e.record.nat_port = Some(wan.port());
                e.next_ms = None;
                self.stats.translated += 1;
            }
            None if e.tries >= RETRY_AFTER_MS.len() => {
                e.next_ms = None;
                self.stats.missed += 1;
            }
            None => {}
        }
    }

    /// The records ready for telemetry at `now_ms`, oldest first: those with their answer,
    /// and those whose lookups never came back within the retry schedule. Records still
    /// waiting stay for the next window.
    pub fn take_ready(&mut self, now_ms: u64) -> Vec<ConnRecord> {
        let give_up: u64 = RETRY_AFTER_MS.iter().sum::<u64>() * 2;
        let mut ready = Vec::new();
        self.entries.retain_mut(|e| {
            let stale = now_ms.saturating_sub(e.record.at_ms) > give_up;
            if e.next_ms.is_some() && !stale {
                return true;
            }
            if e.next_ms.is_some() {
                self.stats.missed += 1;
            }
            ready.push(e.record.clone());
            false
        });
        ready
    }

    /// Records held now (final or waiting).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::MacAddr;

    const T: u64 = 1_764_500_000_000;

    fn record(at_ms: u64, port: u16) -> ConnRecord {
        ConnRecord {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            at_ms,
            src_port: port,
            dst: IpAddr::from([198, 51, 100, 25]),
            dst_port: 25,
            nat_port: None,
            nat_ip: None,
        }
    }

    fn lan() -> IpAddr {
        IpAddr::from([192, 168, 1, 14])
    }

    #[test]
    fn without_lookups_records_pass_straight_through() {
        let mut log = NatLog::new(false);
        log.push(record(T, 40_000), lan());
        let mut q = Vec::new();
        log.due(T + 10_000, 10, &mut q);
        assert!(q.is_empty());
        let out = log.take_ready(T);
        assert_eq!(out, vec![record(T, 40_000)]);
        assert!(log.is_empty());
    }

    #[test]
    fn a_lookup_waits_for_the_syn_to_pass_then_retries_then_gives_up() {
        let mut log = NatLog::new(true);
        log.push(record(T, 40_000), lan());
        let mut q = Vec::new();
        log.due(T + 99, 10, &mut q);
        assert!(q.is_empty(), "not before the first delay");
        log.due(T + 100, 10, &mut q);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].client, SocketAddr::new(lan(), 40_000));
        assert_eq!(q[0].server, "198.51.100.25:25".parse().unwrap());
        log.answer(q[0].id, None);
        // Held while it may still come.
        assert!(log.take_ready(T + 200).is_empty());
        let mut now = T + 100;
        for delay in &RETRY_AFTER_MS[1..] {
            q.clear();
            log.due(now + delay - 1, 10, &mut q);
            assert!(q.is_empty());
            now += delay;
            log.due(now, 10, &mut q);
            assert_eq!(q.len(), 1);
            log.answer(q[0].id, None);
        }
        assert_eq!(log.stats().missed, 1);
        q.clear();
        log.due(now + 60_000, 10, &mut q);
        assert!(q.is_empty(), "no lookups after the last retry");
        let out = log.take_ready(now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].nat_port, None);
    }

    #[test]
    fn an_answer_fills_the_wan_address_and_port() {
        let mut log = NatLog::new(true);
        log.push(record(T, 40_000), lan());
        log.push(record(T + 5, 40_001), lan());
        let mut q = Vec::new();
        log.due(T + 200, 1, &mut q);
        assert_eq!(q.len(), 1, "bounded by max");
        log.answer(q[0].id, Some("100.64.3.9:61002".parse().unwrap()));
        // Unknown ids and repeated answers change nothing.
        log.answer(99, Some("100.64.3.9:1".parse().unwrap()));
        log.answer(q[0].id, Some("100.64.3.9:2".parse().unwrap()));
        let out = log.take_ready(T + 300);
        assert_eq!(out.len(), 1, "the second still waits");
        assert_eq!(out[0].nat_ip, Some(IpAddr::from([100, 64, 3, 9])));
        assert_eq!(out[0].nat_port, Some(61_002));
        assert_eq!(log.len(), 1);
        // A record nobody looked up goes out once it is stale.
        let out = log.take_ready(T + 60_000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].src_port, 40_001);
        assert_eq!(log.stats().translated, 1);
    }

    #[test]
    fn the_pending_set_is_bounded() {
        let mut log = NatLog::new(true);
        for i in 0..(PENDING_MAX + 10) {
            log.push(record(T, i as u16), lan());
        }
        assert_eq!(log.len(), PENDING_MAX);
        assert_eq!(log.stats().overflowed, 10);
    }
}
