//! The bodies of the controller's fuzz targets, one function per target. The `cargo fuzz`
//! targets in `controller/fuzz` call them on each input, and `tests/fuzz_corpus.rs` replays
//! the committed seeds and minimized corpora through the very same functions on stable.
//!
//! Built only with the `fuzzing` feature (off by default). Each function panics exactly when
//! the code under test misbehaves. Inbound envelopes are fuzzed in `protocol/fuzz`
//! (`decode_verify`); here are the abuse reports the web API takes from outsiders.

use crate::abuse::{self, arf, date};

/// Target `abuse_arf`: arbitrary bytes as an ARF (RFC 5965) report; what parses renders in
/// the UI's time format and as JSON.
pub fn abuse_arf(data: &[u8]) {
    if let Ok((query, reported)) = arf::parse(data) {
        let _ = date::format_utc_secs(query.at_ms);
        assert!(
            reported.received.len() <= 20,
            "more Received lines than kept"
        );
        assert!(serde_json::to_string(&query).is_ok());
    }
}

/// Target `abuse_json`: arbitrary bytes as a JSON abuse report. What parses is written back
/// as JSON (time in ms) and must read back the same.
pub fn abuse_json(data: &[u8]) {
    let Ok(query) = abuse::parse_json(data) else {
        return;
    };
    let mut again = serde_json::json!({
        "public_ip": query.public_ip.to_string(),
        "time": query.at_ms,
    });
    if let Some(ip) = query.dest_ip {
        again["dest_ip"] = ip.to_string().into();
    }
    if let Some(port) = query.dest_port {
        again["dest_port"] = port.into();
    }
    if let Some(port) = query.source_port {
        again["source_port"] = port.into();
    }
    match abuse::parse_json(again.to_string().as_bytes()) {
        Ok(back) => assert_eq!(back, query),
        Err(e) => panic!("{again} does not read back: {e}"),
    }
}

/// Target `abuse_date`: arbitrary text as a report's date, in both forms. A time that parses
/// is written in RFC 3339 and reads back to the same second.
pub fn abuse_date(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = date::parse_rfc5322(text);
    let _ = date::parse_rfc3339(text);
    let Ok(ms) = date::parse_any(text) else {
        return;
    };
    let _ = date::format_utc(ms);
    // "2025-03-04 13:05:09 UTC" -> "2025-03-04T13:05:09Z", for four-digit years.
    let shown = date::format_utc_secs(ms);
    if let Some(core) = shown.strip_suffix(" UTC") {
        if core.len() == 19 {
            let rfc3339 = format!("{}T{}Z", &core[..10], &core[11..]);
            match date::parse_rfc3339(&rfc3339) {
                Ok(back) => assert_eq!(back, ms / 1000 * 1000, "{text:?} -> {rfc3339}"),
                Err(e) => panic!("{text:?} -> {rfc3339} does not read back: {e}"),
            }
        }
    }
}
