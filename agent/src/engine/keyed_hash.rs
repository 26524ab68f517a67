//! A cheap keyed hash for the engine's lookup tables (devices by MAC, sessions by flow).
//!
//! Both tables are looked up on every relevant frame, and their keys are chosen by whoever
//! sends the frames, so the hash must be fast and an attacker must not be able to aim many
//! keys at one bucket. SipHash (the standard library's default) is robust but costs a
//! noticeable share of a replay; this is a multiply-fold hash in the style of foldhash and
//! ahash's fallback: each 64-bit word is mixed as the 128-bit product of (state ^ word)
//! and a key, folded by XOR of its halves, so every input bit reaches every output bit.
//!
//! # Why keyed, and how
//! An unkeyed multiplicative hash (FxHash) keeps the low bits of the product a function of
//! the low bits of the input alone, so MACs that differ only in their high bytes would all
//! land in the same bucket: a MAC flood could turn each lookup into a long probe. Here the
//! initial state and the multiplier are drawn per engine from the standard library's
//! per-process random keys ([`std::collections::hash_map::RandomState`]), so which MACs
//! collide is unknown outside the process. The tables are bounded anyway (`device_capacity`,
//! `session_capacity`), which caps the worst case.
//!
//! The hash never reaches an output: the tables are only looked up, never iterated (reports
//! walk the device slots in slot order), so replays stay byte-identical across runs and
//! platforms even though the keys differ.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// The 128-bit product of `a` and `b`, folded to 64 bits.
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Per-table random keys; builds [`KeyedHasher`]s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedState {
    seed: u64,
    mul: u64,
}

impl KeyedState {
    /// Fresh keys from the standard library's random source.
    pub fn new() -> Self {
        let rs = RandomState::new();
        let seed = rs.hash_one(0x736d_7470_6775_6172u64);
        // Odd and with high bits set, so the product always mixes.
        let mul = rs.hash_one(0x6b65_7965_645f_6d75u64) | (1 << 63) | 1;
        KeyedState { seed, mul }
    }
}

impl Default for KeyedState {
    fn default() -> Self {
        KeyedState::new()
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;

    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            state: self.seed,
            mul: self.mul,
        }
    }
}

/// The hasher of [`KeyedState`].
#[derive(Debug, Clone)]
pub(crate) struct KeyedHasher {
    state: u64,
    mul: u64,
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            // The length tells a short last chunk from zero bytes.
            let w = u64::from_le_bytes(word) ^ ((chunk.len() as u64) << 59);
            self.write_u64(w);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.state = fold_mul(self.state ^ i, self.mul);
    }

    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        fold_mul(self.state, self.mul.rotate_left(29) | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::MacAddr;
    use std::collections::HashSet;

    #[test]
    fn macs_differing_in_high_bytes_spread_over_buckets() {
        // 4096 MACs that differ only in their first two bytes: an unkeyed multiplicative
        // hash would put them all in one bucket of a small table.
        let s = KeyedState::new();
        let buckets: HashSet<u64> = (0..4096u32)
            .map(|i| {
                let mac = MacAddr([(i >> 8) as u8, i as u8, 0, 0, 0, 1]);
                s.hash_one(mac) & 1023
            })
            .collect();
        assert!(buckets.len() > 900, "{} of 1024 buckets", buckets.len());
    }

    #[test]
    fn equal_keys_hash_equal_and_engines_differ() {
        let a = KeyedState::new();
        let b = KeyedState::new();
        let mac = MacAddr([2, 0, 0, 0, 0, 7]);
        assert_eq!(a.hash_one(mac), a.hash_one(mac));
        assert_ne!(a.hash_one(mac), b.hash_one(mac));
    }
}
