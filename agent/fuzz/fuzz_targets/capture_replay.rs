//! Arbitrary bytes as a capture file through the streaming reader and the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpguard_agent::engine::EngineConfig;
use smtpguard_agent::replay;
use smtpguard_protocol::Policy;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = replay::replay_reader(data, "fuzz", Policy::default(), EngineConfig::default()) {
        let json = replay::render_json(&out.report);
        assert!(json.starts_with('{'));
    }
});
