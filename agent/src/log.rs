//! The agent's log output: one line per event, `2026-11-30T14:00:00.123456Z  INFO
//! smtpguard_agent::run: message key=value ...`, warnings and errors on stderr and the rest on
//! stdout (procd's logread shows them as `daemon.err` and `daemon.info`).
//!
//! A small [`tracing::Subscriber`] of its own instead of `tracing-subscriber`'s formatter and
//! registry: the agent has no spans worth showing, and the router binary has a 2 MiB budget.
//! Spans are accepted and ignored.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Which events are logged: a default level and more specific levels per module path prefix,
/// as `RUST_LOG` says (`info`, `debug`, `info,smtpguard_agent::uplink=debug`; `off` too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    default: Option<Level>,
    /// (target prefix, level), longest prefix first.
    targets: Vec<(String, Option<Level>)>,
}

/// A `RUST_LOG` directive that is not `LEVEL` or `target=LEVEL`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a level (error, warn, info, debug, trace, off) or target=level")]
pub struct FilterError(String);

fn level(word: &str) -> Result<Option<Level>, ()> {
    match word.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(None),
        "error" => Ok(Some(Level::ERROR)),
        "warn" => Ok(Some(Level::WARN)),
        "info" => Ok(Some(Level::INFO)),
        "debug" => Ok(Some(Level::DEBUG)),
        "trace" => Ok(Some(Level::TRACE)),
        _ => Err(()),
    }
}

impl Filter {
    /// Everything at `info` and above.
    pub fn info() -> Filter {
        Filter {
            default: Some(Level::INFO),
            targets: Vec::new(),
        }
    }

    /// Parses a `RUST_LOG` value.
    ///
    /// # Errors
    /// [`FilterError`] naming the first directive it cannot read.
    pub fn parse(spec: &str) -> Result<Filter, FilterError> {
        let mut filter = Filter::info();
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let bad = || FilterError(directive.to_owned());
            match directive.split_once('=') {
                None => filter.default = level(directive).map_err(|()| bad())?,
                Some((target, lvl)) => {
                    let target = target.trim();
                    if target.is_empty() {
                        return Err(bad());
                    }
                    let lvl = level(lvl).map_err(|()| bad())?;
                    filter.targets.push((target.to_owned(), lvl));
                }
            }
        }
        filter.targets.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        Ok(filter)
    }

    /// Whether an event of `level` from `target` is logged.
    pub fn enabled(&self, target: &str, level: &Level) -> bool {
        let limit = self
            .targets
            .iter()
            .find(|(prefix, _)| {
                target == prefix
                    || target
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l);
        // tracing orders levels by verbosity: TRACE > DEBUG > ... > ERROR.
        limit.is_some_and(|limit| *level <= limit)
    }

    fn most_verbose(&self) -> Option<Level> {
        self.targets
            .iter()
            .filter_map(|(_, l)| *l)
            .chain(self.default)
            .max()
    }
}

/// Writes each enabled event as one line (see the module docs).
#[derive(Debug)]
pub struct LineLogger {
    filter: Filter,
}

impl LineLogger {
    /// A logger with `filter`.
    pub fn new(filter: Filter) -> LineLogger {
        LineLogger { filter }
    }
}

/// Collects an event's message and fields the way `tracing-subscriber` prints them:
/// the message as written, then ` key=value` with strings quoted.
struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata.target(), metadata.level())
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(
            self.filter
                .most_verbose()
                .map_or(tracing::level_filters::LevelFilter::OFF, Into::into),
        )
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        // Spans are not shown; one id serves them all (no 64-bit atomics on 32-bit MIPS).
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = Line(String::with_capacity(160));
        let _ = write!(
            line.0,
            "{} {:>5} {}: ",
            Timestamp(std::time::SystemTime::now()),
            meta.level(),
            meta.target()
        );
        event.record(&mut line);
        line.0.push('\n');
        // A closed stdout or stderr must not stop the agent.
        let _ = if *meta.level() <= Level::WARN {
            std::io::stderr().lock().write_all(line.0.as_bytes())
        } else {
            std::io::stdout().lock().write_all(line.0.as_bytes())
        };
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// UTC time as RFC 3339 with microseconds.
struct Timestamp(std::time::SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self
            .0
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, day) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_micros()
        )
    }
}

/// Year, month, day of the `days`-th day after 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Logs at `info`, or as `RUST_LOG` says (an unreadable value is reported and ignored).
pub fn init() {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => Filter::parse(&spec).unwrap_or_else(|e| {
            eprintln!("RUST_LOG ignored: {e}; logging at info");
            Filter::info()
        }),
        Err(_) => Filter::info(),
    };
    let _ = tracing::subscriber::set_global_default(LineLogger::new(filter));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_level_and_module_prefix() {
        let f = Filter::parse("warn,smtpguard_agent::uplink=debug,rumqttc=off").unwrap();
        assert!(f.enabled("smtpguard_agent::run", &Level::WARN));
        assert!(!f.enabled("smtpguard_agent::run", &Level::INFO));
        assert!(f.enabled("smtpguard_agent::uplink::session", &Level::DEBUG));
        assert!(f.enabled("smtpguard_agent::uplink", &Level::DEBUG));
        assert!(!f.enabled("smtpguard_agent::uplinkx", &Level::DEBUG));
        assert!(!f.enabled("rumqttc::state", &Level::ERROR));
        assert_eq!(f.most_verbose(), Some(Level::DEBUG));
        assert!(Filter::info().enabled("anything", &Level::INFO));
        assert!(!Filter::info().enabled("anything", &Level::DEBUG));
        assert!(Filter::parse("verbose").is_err());
        assert!(Filter::parse("=info").is_err());
        assert!(!Filter::parse("off").unwrap().enabled("x", &Level::ERROR));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u32| {
            Timestamp(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(secs)
                    + std::time::Duration::from_micros(u64::from(micros)),
            )
            .to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century year divisible by 400).
        assert_eq!(at(951_782_400 + 3661, 7), "2000-02-29T01:01:01.000007Z");
        assert_eq!(at(1_795_996_800, 123_456), "2026-11-30T00:00:00.123456Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }

    #[test]
    fn events_read_like_tracing_subscriber_lines() {
        // Format through the visitor directly, as `event` does.
        struct Collect(std::sync::Mutex<String>);
        impl Subscriber for Collect {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut l = Line(String::new());
                event.record(&mut l);
                if let Ok(mut s) = self.0.lock() {
                    *s = l.0;
                }
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        let collect = std::sync::Arc::new(Collect(std::sync::Mutex::new(String::new())));
        let mac = "02:5b:00:00:00:0b";
        tracing::subscriber::with_default(collect.clone(), || {
            tracing::info!(op = %"block", %mac, ttl_secs = 45u64, reason = "infected", "enforcing");
        });
        assert_eq!(
            collect.0.lock().unwrap().as_str(),
            "enforcing op=block mac=02:5b:00:00:00:0b ttl_secs=45 reason=\"infected\""
        );
    }
}
