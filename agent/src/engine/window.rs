//! Bounded time-windowed counters and sets, all in integers.
//!
//! - [`Buckets`]: event counts over a sliding window kept in `N` fixed buckets; the window
//!   slides one bucket at a time.
//! - [`KeySet`]: distinct keys (mail servers, MX-answered addresses, MX names) with the time
//!   each was last seen, sorted by key, at most a fixed number of entries (the least
//!   recently seen is dropped when full). Counting distinct keys and distinct networks in a
//!   window is a linear pass.

use std::net::IpAddr;

/// Event counts over a sliding window of `N` buckets.
#[derive(Debug, Clone)]
pub struct Buckets<const N: usize> {
    counts: [u32; N],
    bucket_ms: u64,
    newest: u64,
}

impl<const N: usize> Buckets<N> {
    /// A window of `window_ms`, cut into `N` buckets.
    pub fn new(window_ms: u64) -> Self {
        Buckets {
            counts: [0; N],
            bucket_ms: (window_ms / N as u64).max(1),
            newest: 0,
        }
    }

    fn advance(&mut self, now_ms: u64) {
        let idx = now_ms / self.bucket_ms;
        if idx <= self.newest {
            return;
        }
        let gap = idx - self.newest;
        if gap >= N as u64 {
            self.counts = [0; N];
        } else {
            for i in 1..=gap {
                self.counts[((self.newest + i) % N as u64) as usize] = 0;
            }
        }
        self.newest = idx;
    }

    /// Counts `n` events at `now_ms`.
    pub fn add(&mut self, now_ms: u64, n: u32) {
        self.advance(now_ms);
        let slot = (self.newest % N as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(n);
    }

    /// Events within the window ending at `now_ms`.
    pub fn total(&self, now_ms: u64) -> u32 {
        let idx = now_ms / self.bucket_ms;
        let mut sum = 0u32;
        for age in 0..N as u64 {
            let Some(b) = self.newest.checked_sub(age) else {
                break;
            };
            if b + (N as u64) <= idx {
                break;
            }
            sum = sum.saturating_add(self.counts[(b % N as u64) as usize]);
        }
        sum
    }
}

/// Reduces an address to a set key: IPv4 addresses as themselves, IPv6 addresses by their
/// /64 with the top bit set.
pub fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let hi = u64::from_be_bytes([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]);
            (1 << 63) | (hi >> 1)
        }
    }
}

/// The network of a key: the /24 of an IPv4 address, roughly the /48 of an IPv6 one.
fn net_of(key: u64) -> u64 {
    if key >> 63 == 1 {
        key >> 15
    } else {
        key >> 8
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    last_s: u32,
    flag: bool,
}

/// Distinct keys with their last-seen time (seconds), bounded.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    entries: Vec<Entry>,
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

impl KeySet {
    /// Records `key` as seen at `now_ms`; returns whether it was new. At `cap` entries the
    /// least recently seen one makes room.
    pub fn touch(&mut self, key: u64, now_ms: u64, cap: usize) -> bool {
        let now = secs(now_ms);
        match self.entries.binary_search_by_key(&key, |e| e.key) {
            Ok(i) => {
                let e = &mut self.entries[i];
                e.last_s = e.last_s.max(now);
                false
            }
            Err(mut i) => {
                if self.entries.len() >= cap.max(1) {
                    let oldest = self
                        .entries
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| e.last_s)
                        .map_or(0, |(j, _)| j);
                    self.entries.remove(oldest);
                    if oldest < i {
                        i -= 1;
                    }
                }
                self.entries.insert(
                    i,
                    Entry {
                        key,
                        last_s: now,
                        flag: false,
                    },
                );
                true
            }
        }
    }

    /// Whether `key` was seen at or after `since_ms`.
    pub fn contains_since(&self, key: u64, since_ms: u64) -> bool {
        let since = secs(since_ms);
        self.entries
            .binary_search_by_key(&key, |e| e.key)
            .is_ok_and(|i| self.entries[i].last_s >= since)
    }

    /// Marks `key` (e.g. a server the device authenticated to, which is a relay rather than
    /// someone's MX).
    pub fn flag(&mut self, key: u64) {
        if let Ok(i) = self.entries.binary_search_by_key(&key, |e| e.key) {
            self.entries[i].flag = true;
        }
    }

    /// Distinct unflagged keys and distinct networks among them seen at or after `since_ms`.
    pub fn count_since(&self, since_ms: u64) -> (u32, u32) {
        let since = secs(since_ms);
        let mut keys = 0u32;
        let mut nets = 0u32;
        let mut last_net = None;
        for e in &self.entries {
            if e.flag || e.last_s < since {
                continue;
            }
            keys += 1;
            let n = net_of(e.key);
            if last_net != Some(n) {
                nets += 1;
                last_net = Some(n);
            }
        }
        (keys, nets)
    }

    /// Drops entries last seen before `before_ms`; frees the memory when empty.
    pub fn expire(&mut self, before_ms: u64) {
        let before = secs(before_ms);
        self.entries.retain(|e| e.last_s >= before);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_slide() {
        let mut b = Buckets::<10>::new(600_000); // 60 s buckets
        b.add(0, 1);
        b.add(59_000, 2);
        b.add(61_000, 4);
        assert_eq!(b.total(61_000), 7);
        assert_eq!(b.total(599_000), 7);
        assert_eq!(b.total(600_000), 4); // first bucket left the window
        assert_eq!(b.total(660_000), 0);
        b.add(5_000_000, 1);
        assert_eq!(b.total(5_000_000), 1);
    }

    #[test]
    fn keyset_counts_distinct_keys_and_networks() {
        let mut s = KeySet::default();
        let k = |ip: &str| ip_key(ip.parse().unwrap());
        assert!(s.touch(k("192.0.2.1"), 1_000, 8));
        assert!(!s.touch(k("192.0.2.1"), 2_000, 8));
        assert!(s.touch(k("192.0.2.7"), 3_000, 8));
        assert!(s.touch(k("198.51.100.1"), 4_000, 8));
        assert!(s.touch(k("2001:db8::1"), 5_000, 8));
        assert_eq!(s.count_since(0), (4, 3));
        assert_eq!(s.count_since(4_000), (2, 2));
        s.flag(k("192.0.2.7"));
        assert_eq!(s.count_since(0), (3, 3));
        assert!(s.contains_since(k("192.0.2.1"), 2_000));
        assert!(!s.contains_since(k("192.0.2.1"), 3_000));
        s.expire(4_000);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn keyset_is_bounded() {
        let mut s = KeySet::default();
        for i in 0..100u64 {
            s.touch(i * 7919, i * 1000, 10);
        }
        assert_eq!(s.len(), 10);
        // The newest survive.
        assert!(s.contains_since(99 * 7919, 0));
        assert!(!s.contains_since(0, 0));
    }
}
