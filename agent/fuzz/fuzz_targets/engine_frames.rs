//! Arbitrary frames into the engine: the input is split into frames at 0xFFFF markers
//! (`len` prefix: two bytes), each fed at an advancing time with timeouts in between.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpguard_agent::engine::{Engine, EngineConfig};
use smtpguard_protocol::{Mode, Policy};

fuzz_target!(|data: &[u8]| {
    let policy = Policy {
        mode: Mode::Enforce,
        ..Policy::default()
    };
    let mut e = Engine::new(
        EngineConfig {
            device_capacity: 8,
            session_capacity: 8,
            ..EngineConfig::default()
        },
        policy,
    );
    let mut now = 1_700_000_000_000u64;
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 1600;
        let step = u64::from(rest[2]) * 997;
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (frame, tail) = rest.split_at(take);
        rest = tail;
        now += step;
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
        }
        e.handle_frame(now, frame);
        while e.poll_action().is_some() {}
    }
    let report = e.report(now);
    assert!(report.devices.len() <= 8);
    for d in &report.devices {
        assert!((0.0..=1.0).contains(&d.score));
    }
    let _ = e.drain_connections();
});
