//! Bounded time-windowed counters and sets, all in integers.
//!
//! - [`Buckets`]: event counts over a sliding window kept in `N` fixed buckets; the window
//!   slides one bucket at a time.
//! - [`KeySet`]: distinct keys (mail servers, MX-answered addresses, MX names) with the time
//!   each was last seen, sorted by key, at most a fixed number of entries (the least
//!   recently seen is dropped when full). Counting distinct keys and distinct networks in a
//!   window is a linear pass, done only when the cached count for that window edge no
//!   longer applies (see [`KeySet::count_since`]).

use std::cell::Cell;
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

    /// Takes back up to `n` events counted at `at_ms` (an event that turned out not to have
    /// happened), if that bucket is still in the window; never below zero.
    pub fn remove(&mut self, at_ms: u64, n: u32) {
        let idx = at_ms / self.bucket_ms;
        if idx > self.newest || idx + (N as u64) <= self.newest {
            return;
        }
        let slot = (idx % N as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_sub(n);
    }

    /// Each bucket's count in the window ending at `now_ms`, newest first (the bucket that
    /// holds `now_ms` is the first, still filling).
    pub fn per_bucket(&self, now_ms: u64) -> [u32; N] {
        let idx = now_ms / self.bucket_ms;
        let mut out = [0u32; N];
        for (age, o) in out.iter_mut().enumerate() {
            let Some(b) = idx.checked_sub(age as u64) else {
                break;
            };
            if b <= self.newest && b + (N as u64) > self.newest {
                *o = self.counts[(b % N as u64) as usize];
            }
        }
        out
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

/// The answer of [`KeySet::count_since`] for every window edge `since` (seconds) in
/// `lo..=hi`.
///
/// Invariant while `valid`: every unflagged entry has `last_s >= hi` (it is counted) or
/// `last_s < lo` (it is not). Each change to the set either keeps that true by adjusting
/// the counts in place or clears `valid`.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    valid: bool,
    lo: u32,
    hi: u32,
    keys: u32,
    nets: u32,
}

impl Counted {
    fn covers(&self, since: u32) -> bool {
        self.valid && self.lo <= since && since <= self.hi
    }

    fn counts(&self, e: &Entry) -> bool {
        !e.flag && e.last_s >= self.hi
    }
}

/// Window edges whose counts are cached: the detection window, the hour and the day.
const EDGES: usize = 3;

/// Distinct keys with their last-seen time (seconds), bounded.
///
/// Counting is cached: the engine asks for the same few window edges (the detection window,
/// the hour and 24 h) every time it scores a device, and the answer stays the same until
/// the edge passes the oldest counted entry or the set changes. Each cached answer is kept
/// exact through inserts, updates, evictions and flags (a change costs at most a look at
/// the entries of the same network), so a rescan happens only when the window edge moves
/// past an entry or `expire` removes a counted one. The cache is invisible in results.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    entries: Vec<Entry>,
    /// Cached answers, one per edge asked, and when each answered last (a counter).
    cache: Cell<[Counted; EDGES]>,
    used: Cell<[u32; EDGES]>,
    asks: Cell<u32>,
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
                let old = e.last_s;
                e.last_s = old.max(now);
                if !e.flag {
                    self.cache_raised(i, old);
                }
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
                    self.cache_uncount(oldest);
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
                self.cache_inserted(i);
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
            if !self.entries[i].flag {
                self.cache_uncount(i);
                self.entries[i].flag = true;
            }
        }
    }

    /// Distinct unflagged keys and distinct networks among them seen at or after `since_ms`.
    pub fn count_since(&self, since_ms: u64) -> (u32, u32) {
        let since = secs(since_ms);
        let mut cache = self.cache.get();
        let mut used = self.used.get();
        let tick = self.asks.get().wrapping_add(1);
        self.asks.set(tick);
        if let Some(j) = (0..cache.len()).find(|&j| cache[j].covers(since)) {
            let c = cache[j];
            debug_assert_eq!((c.keys, c.nets), {
                let f = self.scan(since);
                (f.keys, f.nets)
            });
            used[j] = tick;
            self.used.set(used);
            return (c.keys, c.nets);
        }
        let fresh = self.scan(since);
        // Replace the answer used least recently: the engine asks the same edges in turn.
        let j = (0..EDGES).min_by_key(|&j| used[j]).unwrap_or(0);
        cache[j] = fresh;
        used[j] = tick;
        self.cache.set(cache);
        self.used.set(used);
        (fresh.keys, fresh.nets)
    }

    /// Counts by a linear pass, with the range of edges the answer holds for.
    fn scan(&self, since: u32) -> Counted {
        let mut c = Counted {
            valid: true,
            lo: 0,
            hi: u32::MAX,
            keys: 0,
            nets: 0,
        };
        let mut last_net = None;
        for e in &self.entries {
            if e.flag {
                continue;
            }
            if e.last_s < since {
                // Counted again only for edges at or before it (no overflow: < since).
                c.lo = c.lo.max(e.last_s + 1);
                continue;
            }
            c.hi = c.hi.min(e.last_s);
            c.keys += 1;
            let n = net_of(e.key);
            if last_net != Some(n) {
                c.nets += 1;
                last_net = Some(n);
            }
        }
        c
    }

    /// Whether an entry other than `i` in the same network counts for `c`. Entries are
    /// sorted by key and a network is a run of keys, so this looks at that run only.
    fn net_counted_elsewhere(&self, c: &Counted, i: usize) -> bool {
        let net = net_of(self.entries[i].key);
        let before = self.entries[..i].iter().rev();
        let after = self.entries[i + 1..].iter();
        before
            .take_while(|e| net_of(e.key) == net)
            .chain(after.take_while(|e| net_of(e.key) == net))
            .any(|e| c.counts(e))
    }

    /// Entry `i` (unflagged, counted or not) is about to stop counting: flagged or removed.
    fn cache_uncount(&mut self, i: usize) {
        let mut cache = self.cache.get();
        for c in cache.iter_mut().filter(|c| c.valid) {
            if c.counts(&self.entries[i]) {
                c.keys = c.keys.saturating_sub(1);
                if !self.net_counted_elsewhere(c, i) {
                    c.nets = c.nets.saturating_sub(1);
                }
            }
        }
        self.cache.set(cache);
    }

    /// Unflagged entry `i` was seen again: its time went from `old` to its current value.
    fn cache_raised(&mut self, i: usize, old: u32) {
        let now = self.entries[i].last_s;
        let mut cache = self.cache.get();
        for c in cache.iter_mut().filter(|c| c.valid) {
            // Already counted (old >= hi), or still too old for every covered edge.
            if old >= c.hi || now < c.lo {
                continue;
            }
            self.count_in(c, i);
        }
        self.cache.set(cache);
    }

    /// Entry `i` was just inserted (unflagged).
    fn cache_inserted(&mut self, i: usize) {
        let now = self.entries[i].last_s;
        let mut cache = self.cache.get();
        for c in cache.iter_mut().filter(|c| c.valid && now >= c.lo) {
            self.count_in(c, i);
        }
        self.cache.set(cache);
    }

    /// Unflagged entry `i`, seen at or after `c.lo`, starts counting in `c`; the edges `c`
    /// covers shrink so that it counts for all of them.
    fn count_in(&self, c: &mut Counted, i: usize) {
        let at = self.entries[i].last_s;
        // Others are all >= hi or < lo <= at, so lowering hi to `at` changes none of them.
        c.hi = c.hi.min(at);
        c.keys += 1;
        if !self.net_counted_elsewhere(c, i) {
            c.nets += 1;
        }
    }

    /// Drops entries last seen before `before_ms`; frees the memory when empty.
    pub fn expire(&mut self, before_ms: u64) {
        let before = secs(before_ms);
        let mut cache = self.cache.get();
        for c in &mut cache {
            // Counted entries are >= hi: untouched unless the cut passes hi.
            if before > c.hi {
                c.valid = false;
            }
        }
        self.cache.set(cache);
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
    fn buckets_take_back_events_while_their_bucket_is_in_the_window() {
        let mut b = Buckets::<4>::new(4_000);
        b.add(500, 2);
        b.add(2_500, 1);
        b.remove(600, 1); // same bucket as the first two
        assert_eq!(b.total(2_500), 2);
        b.remove(600, 5); // never below zero
        assert_eq!(b.total(2_500), 1);
        b.add(9_000, 1);
        b.remove(2_500, 1); // slid out of the window: nothing to take back
        b.remove(20_000, 1); // not yet counted
        assert_eq!(b.total(9_000), 1);
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

    #[test]
    fn cached_counts_match_a_fresh_count() {
        // A fixed pseudo-random mix of inserts, repeats, evictions, flags and expiries,
        // with both edges asked after every change, as the engine does.
        let mut s = KeySet::default();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 1_000_000u64;
        for step in 0..20_000u32 {
            now += next() % 20_000;
            let r = next();
            // Few networks, so networks are shared and counted more than once.
            let key = (((r >> 8) % 6) << 8) | ((r >> 16) % 12);
            match r % 16 {
                0 => s.flag(key),
                1 if step % 7 == 0 => s.expire(now.saturating_sub(300_000)),
                _ => {
                    s.touch(key, now, 40);
                }
            }
            for since in [now.saturating_sub(120_000), now.saturating_sub(900_000)] {
                let fresh = s.scan(secs(since));
                assert_eq!(
                    s.count_since(since),
                    (fresh.keys, fresh.nets),
                    "step {step}"
                );
            }
        }
    }
}
