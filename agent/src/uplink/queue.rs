//! The offline queue: sealed messages waiting for the broker, with a fixed memory bound.
//!
//! - Alerts go to disk first ([`AlertQueue`]): one file per alert, named by its sequence
//!   number, written durably before `send_alert` returns and deleted only when the broker
//!   acknowledged that very packet. Memory holds only the set of queued sequence numbers;
//!   the bytes are read back when the alert is sent.
//! - Telemetry and control messages (state, policy acks) live in memory ([`MemQueue`]):
//!   telemetry in a ring of fixed length that drops the oldest when full (counted);
//!   control messages are few and never dropped.
//!
//! Everything is sent in ascending sequence order, so the controller's replay window sees
//! the numbers in the order they were issued even after a long outage.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use super::seq::{write_durably, SeqError};

/// A queued message ready to hand to the MQTT client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its sequence number.
    pub seq: u64,
    /// Topic to publish on.
    pub topic: String,
    /// The sealed bytes.
    pub bytes: Vec<u8>,
    /// Retained publish.
    pub retain: bool,
    /// What it is, for the bookkeeping after the broker's ack.
    pub class: Class,
}

/// How a queued message is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// On disk until acknowledged.
    Alert,
    /// In the ring; may be dropped oldest first.
    Telemetry,
    /// In memory, never dropped.
    Control,
}

/// Alerts on disk.
#[derive(Debug)]
pub struct AlertQueue {
    dir: PathBuf,
    /// Queued and not handed to the client yet.
    waiting: BTreeSet<u64>,
    /// Everything on disk (waiting or in flight).
    on_disk: BTreeSet<u64>,
    topic: String,
    capacity: usize,
}

/// The disk queue is full (the broker has been unreachable for a very long time).
#[derive(Debug, thiserror::Error)]
#[error("alert queue holds {0} alerts, its limit; the alert was not queued")]
pub struct QueueFull(pub usize);

impl AlertQueue {
    /// Opens the queue in `dir` (created if needed), picking up alerts left by an earlier
    /// run. `topic` is this CPE's alert topic.
    ///
    /// # Errors
    /// [`SeqError::Io`] when the directory cannot be read or created.
    pub fn open(dir: &Path, topic: String, capacity: usize) -> Result<AlertQueue, SeqError> {
        let io = |source| SeqError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let mut on_disk = BTreeSet::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_suffix(".alert")
                .and_then(|s| s.parse::<u64>().ok())
            {
                on_disk.insert(seq);
            } else if name.ends_with(".tmp") {
                // A write interrupted by a crash: send_alert never returned for it.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(AlertQueue {
            dir: dir.to_owned(),
            waiting: on_disk.clone(),
            on_disk,
            topic,
            capacity,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.alert"))
    }

    /// Writes a sealed alert durably.
    ///
    /// # Errors
    /// [`QueueFull`] (as `Ok(Err)`) when at capacity; [`SeqError::Io`] on disk failure.
    pub fn push(&mut self, seq: u64, bytes: &[u8]) -> Result<Result<(), QueueFull>, SeqError> {
        if self.on_disk.len() >= self.capacity {
            return Ok(Err(QueueFull(self.on_disk.len())));
        }
        write_durably(&self.path(seq), bytes)?;
        self.on_disk.insert(seq);
        self.waiting.insert(seq);
        Ok(Ok(()))
    }

    /// The lowest waiting sequence number.
    pub fn peek(&self) -> Option<u64> {
        self.waiting.first().copied()
    }

    /// Takes the lowest waiting alert, reading it from disk. An unreadable file is logged
    /// and removed (it can never be sent).
    pub fn pop(&mut self) -> Option<Outgoing> {
        while let Some(seq) = self.waiting.pop_first() {
            match fs::read(self.path(seq)) {
                Ok(bytes) => {
                    return Some(Outgoing {
                        seq,
                        topic: self.topic.clone(),
                        bytes,
                        retain: false,
                        class: Class::Alert,
                    })
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "queued alert unreadable; dropping it");
                    self.on_disk.remove(&seq);
                }
            }
        }
        None
    }

    /// Puts an alert that was in flight on a lost connection back in line.
    pub fn requeue(&mut self, seq: u64) {
        if self.on_disk.contains(&seq) {
            self.waiting.insert(seq);
        }
    }

    /// The broker acknowledged the alert: delete it.
    pub fn acked(&mut self, seq: u64) {
        if self.on_disk.remove(&seq) {
            self.waiting.remove(&seq);
            if let Err(e) = fs::remove_file(self.path(seq)) {
                tracing::warn!(seq, error = %e, "could not delete an acknowledged alert");
            }
        }
    }

    /// Alerts on disk (waiting or in flight).
    pub fn len(&self) -> usize {
        self.on_disk.len()
    }

    /// Whether no alert is queued.
    pub fn is_empty(&self) -> bool {
        self.on_disk.is_empty()
    }
}

/// Telemetry ring plus control messages, in memory.
#[derive(Debug)]
pub struct MemQueue {
    telemetry: VecDeque<Outgoing>,
    telemetry_capacity: usize,
    control: BTreeMap<u64, Outgoing>,
    dropped: u64,
}

impl MemQueue {
    /// A queue that holds at most `telemetry_capacity` telemetry messages.
    pub fn new(telemetry_capacity: usize) -> MemQueue {
        MemQueue {
            telemetry: VecDeque::with_capacity(telemetry_capacity.min(1024)),
            telemetry_capacity: telemetry_capacity.max(1),
            control: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Queues a message; telemetry beyond the capacity pushes out the oldest one.
    pub fn push(&mut self, msg: Outgoing) {
        match msg.class {
            Class::Telemetry => {
                while self.telemetry.len() >= self.telemetry_capacity {
                    self.telemetry.pop_front();
                    self.dropped += 1;
                }
                // Keep ascending order even for requeued (older) messages.
                let at = self.telemetry.partition_point(|m| m.seq < msg.seq);
                self.telemetry.insert(at, msg);
            }
            Class::Control | Class::Alert => {
                self.control.insert(msg.seq, msg);
            }
        }
    }

    /// The lowest queued sequence number.
    pub fn peek(&self) -> Option<u64> {
        let t = self.telemetry.front().map(|m| m.seq);
        let c = self.control.keys().next().copied();
        match (t, c) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the lowest queued message.
    pub fn pop(&mut self) -> Option<Outgoing> {
        let t = self.telemetry.front().map(|m| m.seq);
        let c = self.control.keys().next().copied();
        match (t, c) {
            (Some(a), Some(b)) if a < b => self.telemetry.pop_front(),
            (Some(_), None) => self.telemetry.pop_front(),
            (_, Some(_)) => self.control.pop_first().map(|(_, m)| m),
            (None, None) => None,
        }
    }

    /// Telemetry messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.telemetry.len() + self.control.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, class: Class) -> Outgoing {
        Outgoing {
            seq,
            topic: "t".into(),
            bytes: vec![seq as u8],
            retain: false,
            class,
        }
    }

    #[test]
    fn telemetry_ring_drops_oldest_and_counts_and_order_is_by_seq() {
        let mut q = MemQueue::new(3);
        for seq in 1..=5 {
            q.push(msg(seq, Class::Telemetry));
        }
        q.push(msg(2, Class::Control));
        assert_eq!(q.dropped(), 2);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|m| m.seq).collect();
        assert_eq!(order, vec![2, 3, 4, 5]);
    }

    #[test]
    fn alerts_survive_a_restart_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = AlertQueue::open(dir.path(), "a".into(), 10).unwrap();
        q.push(5, b"five").unwrap().unwrap();
        q.push(7, b"seven").unwrap().unwrap();
        let m = q.pop().unwrap();
        assert_eq!((m.seq, m.bytes.as_slice()), (5, &b"five"[..]));
        q.acked(5);
        drop(q);
        let mut q = AlertQueue::open(dir.path(), "a".into(), 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop().unwrap().seq, 7);
        q.requeue(7);
        assert_eq!(q.peek(), Some(7));
        for seq in 10..19 {
            q.push(seq, b"x").unwrap().unwrap();
        }
        assert!(q.push(99, b"x").unwrap().is_err());
    }
}
