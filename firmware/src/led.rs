//! Status LED driver: shows the agent's state on one LED of the router.
//!
//! The driver owns an [`OutputPin`] and turns a [`Status`] (an intent: "a device is
//! infected") into a blink pattern. It has no clock of its own: the caller passes the time in
//! milliseconds to [`StatusLed::show`] and [`StatusLed::poll`] and gets back the deadline at
//! which it must poll again, so the same code runs under tokio, in a bare-metal loop or in a
//! test with a virtual clock.
//!
//! | status | pattern | meaning |
//! |---|---|---|
//! | [`Status::Clean`] | off | every device is clean |
//! | [`Status::Suspicious`] | slow blink, 1 s on / 1 s off | a device is under watch |
//! | [`Status::Offline`] | double blink every 1.5 s | the controller is unreachable |
//! | [`Status::Infected`] | fast blink, 100 ms on / 100 ms off | an infected device is being throttled or blocked |
//!
//! When several apply, the most urgent wins ([`Status::most_urgent`]): `Infected` over
//! `Offline` over `Suspicious` over `Clean`. An infected device is what the subscriber has to act
//! on; an unreachable controller only degrades reporting, while blocking goes on locally.
//!
//! The Linux backend that drives an LED of the kernel's LED class is in [`sysfs`] (needs the
//! `std` feature).

use embedded_hal::digital::OutputPin;

#[cfg(feature = "std")]
pub mod sysfs;

/// What the LED shows, in increasing order of urgency (the derived `Ord` is the priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Status {
    /// Every device is clean and the controller is reachable: LED off.
    #[default]
    Clean,
    /// At least one device is suspicious (watched, not blocked): slow blink.
    Suspicious,
    /// The controller cannot be reached; detection and blocking go on locally: double blink.
    Offline,
    /// At least one infected device is being throttled or blocked: fast blink.
    Infected,
}

/// One step of a blink pattern: the LED is lit (or dark) for `duration_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Whether the LED is lit during this step.
    pub lit: bool,
    /// How long the step lasts, in milliseconds (never zero).
    pub duration_ms: u32,
}

const fn step(lit: bool, duration_ms: u32) -> Step {
    Step { lit, duration_ms }
}

const SLOW_BLINK: [Step; 2] = [step(true, 1000), step(false, 1000)];
const DOUBLE_BLINK: [Step; 4] = [
    step(true, 150),
    step(false, 150),
    step(true, 150),
    step(false, 1050),
];
const FAST_BLINK: [Step; 2] = [step(true, 100), step(false, 100)];

impl Status {
    /// The blink pattern of this status, repeated for as long as it is shown. An empty pattern
    /// means the LED stays dark.
    pub fn pattern(self) -> &'static [Step] {
        match self {
            Status::Clean => &[],
            Status::Suspicious => &SLOW_BLINK,
            Status::Offline => &DOUBLE_BLINK,
            Status::Infected => &FAST_BLINK,
        }
    }

    /// The status to show when all of `statuses` apply at once: the most urgent one, or
    /// [`Status::Clean`] when there is none.
    pub fn most_urgent<I: IntoIterator<Item = Status>>(statuses: I) -> Status {
        statuses.into_iter().max().unwrap_or(Status::Clean)
    }

    /// Where the pattern is `elapsed_ms` after it started: whether the LED is lit, and how many
    /// milliseconds remain until the next change (`None` when it never changes).
    fn level_at(self, elapsed_ms: u64) -> (bool, Option<u64>) {
        let pattern = self.pattern();
        let period: u64 = pattern.iter().map(|s| u64::from(s.duration_ms)).sum();
        if period == 0 {
            return (false, None);
        }
        let mut position = elapsed_ms % period;
        for s in pattern {
            let duration = u64::from(s.duration_ms);
            if position < duration {
                return (s.lit, Some(duration - position));
            }
            position -= duration;
        }
        // Unreachable: `position < period` and the steps add up to `period`.
        (false, None)
    }
}

/// How the pin's electrical level maps to the LED being lit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Polarity {
    /// Pin high lights the LED (the LED class backend and most boards).
    #[default]
    ActiveHigh,
    /// Pin low lights the LED (an LED wired between the supply and a GPIO).
    ActiveLow,
}

/// A status LED driven by a blink pattern over a virtual clock.
///
/// The driver writes the pin only when the LED has to change, so polling early or often is
/// harmless. If a write fails, the error is returned and the next call writes again.
#[derive(Debug)]
pub struct StatusLed<P> {
    pin: P,
    polarity: Polarity,
    status: Status,
    started_ms: u64,
    /// Last level written successfully; `None` when unknown (at start, after an error).
    lit: Option<bool>,
}

impl<P: OutputPin> StatusLed<P> {
    /// Takes ownership of an active-high `pin`. Nothing is written until the first
    /// [`show`](Self::show) or [`poll`](Self::poll), which turns the LED off for
    /// [`Status::Clean`] (a boot loader may have left it on).
    pub fn new(pin: P) -> Self {
        Self::with_polarity(pin, Polarity::ActiveHigh)
    }

    /// Like [`new`](Self::new), for an LED whose pin has the given `polarity`.
    pub fn with_polarity(pin: P, polarity: Polarity) -> Self {
        StatusLed {
            pin,
            polarity,
            status: Status::Clean,
            started_ms: 0,
            lit: None,
        }
    }

    /// The status being shown.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Shows `status` from `now_ms` on and returns the next deadline (see [`poll`](Self::poll)).
    ///
    /// A new status starts its pattern from the beginning, lit first; showing the status that is
    /// already shown keeps the pattern's rhythm.
    ///
    /// # Errors
    /// The pin's error if it cannot be written.
    pub fn show(&mut self, status: Status, now_ms: u64) -> Result<Option<u64>, P::Error> {
        if status != self.status {
            self.status = status;
            self.started_ms = now_ms;
        }
        self.poll(now_ms)
    }

    /// Brings the LED to where its pattern is at `now_ms` and returns the time (in the same
    /// clock) at which it next changes, or `None` when it stays as it is until the status
    /// changes. A caller that polls late skips the steps it missed; a clock that goes back
    /// restarts the pattern.
    ///
    /// # Errors
    /// The pin's error if it cannot be written.
    pub fn poll(&mut self, now_ms: u64) -> Result<Option<u64>, P::Error> {
        let elapsed = now_ms.saturating_sub(self.started_ms);
        let (lit, remaining) = self.status.level_at(elapsed);
        if self.lit != Some(lit) {
            self.drive(lit)?;
        }
        Ok(remaining.map(|r| now_ms.saturating_add(r)))
    }

    /// Gives the pin back (for example to reuse it or to check a mock's expectations).
    pub fn release(self) -> P {
        self.pin
    }

    fn drive(&mut self, lit: bool) -> Result<(), P::Error> {
        let high = match self.polarity {
            Polarity::ActiveHigh => lit,
            Polarity::ActiveLow => !lit,
        };
        // Forget the level first: if the write fails, the pin may be in either state.
        self.lit = None;
        if high {
            self.pin.set_high()?;
        } else {
            self.pin.set_low()?;
        }
        self.lit = Some(lit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use embedded_hal_mock::eh1::MockError;
    use std::io::ErrorKind;

    // Short names keep the expectation lists readable.
    fn on() -> Transaction {
        Transaction::set(State::High)
    }
    fn off() -> Transaction {
        Transaction::set(State::Low)
    }

    /// Polls `led` at each time and returns the deadlines it answered.
    fn poll_all(led: &mut StatusLed<Mock>, times: &[u64]) -> Vec<Option<u64>> {
        times.iter().map(|&t| led.poll(t).unwrap()).collect()
    }

    #[test]
    fn clean_turns_the_led_off_once_and_asks_for_no_deadline() {
        let mut led = StatusLed::new(Mock::new(&[off()]));
        assert_eq!(led.poll(0).unwrap(), None);
        assert_eq!(led.poll(5_000).unwrap(), None);
        assert_eq!(led.show(Status::Clean, 9_000).unwrap(), None);
        led.release().done();
    }

    #[test]
    fn suspicious_blinks_slowly() {
        let mut led = StatusLed::new(Mock::new(&[on(), off(), on(), off()]));
        assert_eq!(led.show(Status::Suspicious, 10_000).unwrap(), Some(11_000));
        // Early polls change nothing and keep the same deadline.
        assert_eq!(led.poll(10_500).unwrap(), Some(11_000));
        assert_eq!(
            poll_all(&mut led, &[11_000, 12_000, 13_000]),
            [Some(12_000), Some(13_000), Some(14_000)]
        );
        led.release().done();
    }

    #[test]
    fn infected_blinks_fast() {
        let mut led = StatusLed::new(Mock::new(&[on(), off(), on(), off(), on()]));
        assert_eq!(led.show(Status::Infected, 0).unwrap(), Some(100));
        assert_eq!(
            poll_all(&mut led, &[100, 200, 300, 400]),
            [Some(200), Some(300), Some(400), Some(500)]
        );
        led.release().done();
    }

    #[test]
    fn offline_double_blinks_then_pauses() {
        let mut led = StatusLed::new(Mock::new(&[on(), off(), on(), off(), on()]));
        assert_eq!(led.show(Status::Offline, 0).unwrap(), Some(150));
        // on 150, off 150, on 150, off 1050, then the next cycle at 1500.
        assert_eq!(
            poll_all(&mut led, &[150, 300, 450, 1_499, 1_500]),
            [Some(300), Some(450), Some(1_500), Some(1_500), Some(1_650)]
        );
        led.release().done();
    }

    #[test]
    fn patterns_are_distinct_so_a_person_can_tell_them_apart() {
        let all = [
            Status::Clean,
            Status::Suspicious,
            Status::Offline,
            Status::Infected,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.pattern(), b.pattern(), "{a:?} and {b:?} look the same");
            }
            assert!(a.pattern().iter().all(|s| s.duration_ms > 0));
        }
    }

    #[test]
    fn most_urgent_status_wins() {
        use Status::*;
        assert_eq!(Status::most_urgent([]), Clean);
        assert_eq!(Status::most_urgent([Clean, Suspicious]), Suspicious);
        assert_eq!(Status::most_urgent([Suspicious, Offline]), Offline);
        assert_eq!(
            Status::most_urgent([Offline, Infected, Suspicious]),
            Infected
        );
        assert_eq!(Status::most_urgent([Infected, Clean]), Infected);
    }

    #[test]
    fn a_new_status_restarts_its_pattern_lit_first() {
        // Suspicious: lit at 0; at 1500 it is dark. Switching to Infected at 1500 lights the
        // LED at once and counts the fast pattern from 1500.
        let mut led = StatusLed::new(Mock::new(&[on(), off(), on(), off()]));
        led.show(Status::Suspicious, 0).unwrap();
        assert_eq!(led.poll(1_500).unwrap(), Some(2_000));
        assert_eq!(led.show(Status::Infected, 1_500).unwrap(), Some(1_600));
        assert_eq!(led.status(), Status::Infected);
        assert_eq!(led.poll(1_600).unwrap(), Some(1_700));
        // Back to clean: dark, no deadline; the LED is already dark so only one write.
        assert_eq!(led.show(Status::Clean, 1_650).unwrap(), None);
        assert_eq!(led.poll(99_000).unwrap(), None);
        led.release().done();
    }

    #[test]
    fn clean_after_a_lit_step_turns_the_led_off() {
        let mut led = StatusLed::new(Mock::new(&[on(), off()]));
        led.show(Status::Offline, 0).unwrap();
        assert_eq!(led.show(Status::Clean, 50).unwrap(), None);
        led.release().done();
    }

    #[test]
    fn showing_the_same_status_keeps_the_rhythm() {
        let mut led = StatusLed::new(Mock::new(&[on(), off()]));
        led.show(Status::Suspicious, 0).unwrap();
        // Re-asserting the status mid-step must not restart the step.
        assert_eq!(led.show(Status::Suspicious, 700).unwrap(), Some(1_000));
        assert_eq!(led.show(Status::Suspicious, 1_200).unwrap(), Some(2_000));
        led.release().done();
    }

    #[test]
    fn a_late_poll_skips_missed_steps() {
        // 3 s late into the fast blink: 3050 ms after the start is 50 ms into a lit step
        // (period 200 ms), which is the level already written, so nothing is written.
        let mut led = StatusLed::new(Mock::new(&[on(), off()]));
        led.show(Status::Infected, 0).unwrap();
        assert_eq!(led.poll(3_050).unwrap(), Some(3_100));
        assert_eq!(led.poll(3_170).unwrap(), Some(3_200));
        led.release().done();
    }

    #[test]
    fn a_clock_going_back_restarts_the_pattern() {
        let mut led = StatusLed::new(Mock::new(&[on(), off(), on()]));
        led.show(Status::Suspicious, 5_000).unwrap();
        led.poll(6_000).unwrap();
        assert_eq!(led.poll(4_000).unwrap(), Some(5_000));
        led.release().done();
    }

    #[test]
    fn active_low_inverts_the_pin() {
        let mut led = StatusLed::with_polarity(Mock::new(&[off(), on()]), Polarity::ActiveLow);
        led.show(Status::Infected, 0).unwrap(); // lit = pin low
        led.poll(100).unwrap(); // dark = pin high
        led.show(Status::Clean, 150).unwrap(); // already dark: no write
        led.release().done();
        let mut led = StatusLed::with_polarity(Mock::new(&[on()]), Polarity::ActiveLow);
        led.poll(0).unwrap(); // clean at start: drive the pin high (dark)
        led.release().done();
    }

    #[test]
    fn pin_errors_are_returned_and_the_write_is_retried() {
        let err = MockError::Io(ErrorKind::PermissionDenied);
        let mut led = StatusLed::new(Mock::new(&[on().with_error(err.clone()), on(), off()]));
        assert_eq!(led.show(Status::Infected, 0), Err(err));
        // The level is unknown after the failure, so the next poll writes it again.
        assert_eq!(led.poll(10).unwrap(), Some(100));
        assert_eq!(led.poll(100).unwrap(), Some(200));
        led.release().done();
    }

    #[test]
    fn deadlines_saturate_at_the_end_of_time() {
        let mut led = StatusLed::new(Mock::new(&[on()]));
        assert_eq!(
            led.show(Status::Suspicious, u64::MAX - 10).unwrap(),
            Some(u64::MAX)
        );
        led.release().done();
    }
}
