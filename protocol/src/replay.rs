//! A sliding replay window over a sender's sequence numbers.
//!
//! Senders number messages monotonically and persist the counter. A receiver accepts any
//! sequence number above the highest it accepted, and within the [`WINDOW`] numbers below
//! it, any it has not seen yet (so QoS 1 redelivery and a queue flushed after an outage are
//! tolerated, but never processed twice). Anything below the window is refused. Memory is
//! fixed: one bitmap of [`WINDOW`] bits per sender.

use crate::envelope::Rejection;

/// How many sequence numbers below the highest accepted one are still tracked.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// Per-sender replay state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: Option<u64>,
    /// Bit `seq % WINDOW` is set when `seq` (within the window) was accepted.
    seen: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every sequence number is new.
    pub fn new() -> Self {
        ReplayWindow {
            highest: None,
            seen: [0; WORDS],
        }
    }

    /// A window that treats everything up to and including `highest` as seen: the
    /// conservative restore when only the highest accepted number was persisted.
    pub fn after(highest: u64) -> Self {
        ReplayWindow {
            highest: Some(highest),
            seen: [u64::MAX; WORDS],
        }
    }

    /// The highest sequence number accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `seq` would be accepted, without recording it.
    ///
    /// # Errors
    /// [`Rejection::Replay`] when `seq` was already accepted or is below the window.
    pub fn check(&self, seq: u64) -> Result<(), Rejection> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if seq > highest {
            return Ok(());
        }
        if highest - seq >= WINDOW {
            return Err(Rejection::Replay {
                seq,
                why: format!("is below the window starting at {}", highest - WINDOW + 1),
            });
        }
        let (word, mask) = Self::bit(seq);
        if self.seen[word] & mask != 0 {
            return Err(Rejection::Replay {
                seq,
                why: "was already accepted".into(),
            });
        }
        Ok(())
    }

    /// Checks `seq` and records it as accepted.
    ///
    /// # Errors
    /// As [`ReplayWindow::check`]; nothing is recorded then.
    pub fn accept(&mut self, seq: u64) -> Result<(), Rejection> {
        self.check(seq)?;
        match self.highest {
            Some(highest) if seq <= highest => {}
            Some(highest) => {
                // Forget the numbers that slide out: clear the bits of highest+1 ..= seq.
                let advance = seq - highest;
                if advance >= WINDOW {
                    self.seen = [0; WORDS];
                } else {
                    for s in highest + 1..=seq {
                        let (word, mask) = Self::bit(s);
                        self.seen[word] &= !mask;
                    }
                }
                self.highest = Some(seq);
            }
            None => {
                self.seen = [0; WORDS];
                self.highest = Some(seq);
            }
        }
        let (word, mask) = Self::bit(seq);
        self.seen[word] |= mask;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_sequence_is_accepted_once() {
        let mut w = ReplayWindow::new();
        for seq in 1..=3000 {
            w.accept(seq).unwrap();
        }
        assert_eq!(w.highest(), Some(3000));
        assert!(w.accept(3000).is_err());
        assert!(w.accept(2999).is_err());
    }

    #[test]
    fn reordering_within_the_window_is_tolerated() {
        let mut w = ReplayWindow::new();
        w.accept(10).unwrap();
        w.accept(8).unwrap();
        w.accept(9).unwrap();
        assert!(w.accept(8).is_err());
        w.accept(10 + WINDOW - 1).unwrap();
        // 10 is now at the bottom edge: seen. 11 is in the window and unseen.
        assert!(w.check(10).is_err());
        w.accept(11).unwrap();
        // 9 has slid out of the window.
        let err = w.check(9).unwrap_err();
        assert!(err.to_string().contains("below the window"), "{err}");
    }

    #[test]
    fn big_jumps_forget_everything_below() {
        let mut w = ReplayWindow::new();
        w.accept(5).unwrap();
        w.accept(5 + 10 * WINDOW).unwrap();
        assert!(w.check(5 + 10 * WINDOW - 1).is_ok());
        assert!(w.check(5).is_err());
    }

    #[test]
    fn restored_window_refuses_everything_up_to_highest() {
        let w = ReplayWindow::after(100);
        assert!(w.check(100).is_err());
        assert!(w.check(50).is_err());
        assert!(w.check(101).is_ok());
    }

    #[test]
    fn seq_zero_is_a_valid_first_number() {
        let mut w = ReplayWindow::new();
        w.accept(0).unwrap();
        assert!(w.accept(0).is_err());
        w.accept(1).unwrap();
    }
}
