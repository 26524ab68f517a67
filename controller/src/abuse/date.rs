//! RFC 5322 dates (`Tue, 4 Mar 2025 14:05:09 +0100`) and RFC 3339 timestamps
//! (`2025-03-04T13:05:09Z`) to Unix milliseconds, and back to text for display.
//!
//! Hand-written because the inputs are hostile (abuse reports from anyone) and the accepted
//! forms are few: every field is range-checked, and anything else is a [`DateError`].

/// A date could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable date {0:?}: expected e.g. \"Tue, 4 Mar 2025 14:05:09 +0100\" or \"2025-03-04T13:05:09Z\"")]
pub struct DateError(pub String);

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The calendar date of a day number (inverse of `days_from_civil`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn to_ms(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, offset_secs: i64) -> Option<u64> {
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(s.min(59))
        - offset_secs;
    u64::try_from(secs).ok()?.checked_mul(1000)
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn zone_secs(z: &str) -> Option<i64> {
    let z = z.trim();
    match z.to_ascii_uppercase().as_str() {
        "UT" | "UTC" | "GMT" | "Z" => return Some(0),
        "EST" => return Some(-5 * 3600),
        "EDT" => return Some(-4 * 3600),
        "CST" => return Some(-6 * 3600),
        "CDT" => return Some(-5 * 3600),
        "MST" => return Some(-7 * 3600),
        "MDT" => return Some(-6 * 3600),
        "PST" => return Some(-8 * 3600),
        "PDT" => return Some(-7 * 3600),
        _ => {}
    }
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let rest = rest.replace(':', "");
    // Digits only before slicing: four bytes of anything else need not split at `2`.
    if rest.len() != 4 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i64 = num(&rest[..2])?;
    let m: i64 = num(&rest[2..])?;
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

fn parse_hms(t: &str) -> Option<(u32, u32, u32)> {
    let mut it = t.split(':');
    let h = num(it.next()?)?;
    let m = num(it.next()?)?;
    let s = match it.next() {
        Some(s) => num(s.split('.').next()?)?,
        None => 0,
    };
    if it.next().is_some() {
        return None;
    }
    Some((h, m, s))
}

/// Reads an RFC 5322 date (with or without the weekday; comments after the zone ignored).
///
/// # Errors
/// [`DateError`] when it is not one.
pub fn parse_rfc5322(text: &str) -> Result<u64, DateError> {
    let err = || DateError(text.chars().take(60).collect());
    // Drop a trailing comment such as "(CET)".
    let core = text.split('(').next().unwrap_or("").trim();
    let core = match core.split_once(',') {
        Some((_, rest)) => rest,
        None => core,
    };
    let f: Vec<&str> = core.split_whitespace().collect();
    if f.len() < 4 || f.len() > 5 {
        return Err(err());
    }
    let d: u32 = num(f[0]).ok_or_else(err)?;
    let mon = f[1].to_ascii_lowercase();
    let mo = MONTHS
        .iter()
        .position(|m| *m == mon.as_str())
        .ok_or_else(err)? as u32
        + 1;
    let mut y: i64 = num(f[2]).ok_or_else(err)?;
    // RFC 5322 obsolete two-digit years.
    if f[2].len() == 2 {
        y += if y < 50 { 2000 } else { 1900 };
    }
    let (h, mi, s) = parse_hms(f[3]).ok_or_else(err)?;
    let off = match f.get(4) {
        Some(z) => zone_secs(z).ok_or_else(err)?,
        None => 0,
    };
    to_ms(y, mo, d, h, mi, s, off).ok_or_else(err)
}

/// Reads an RFC 3339 timestamp (`2025-03-04T13:05:09Z`, `...+01:00`, space instead of `T`).
///
/// # Errors
/// [`DateError`] when it is not one.
pub fn parse_rfc3339(text: &str) -> Result<u64, DateError> {
    let err = || DateError(text.chars().take(60).collect());
    let t = text.trim();
    if t.len() < 19 || !t.is_char_boundary(10) || !t.is_char_boundary(11) {
        return Err(err());
    }
    let (date, rest) = (&t[..10], &t[11..]);
    let sep = t.as_bytes()[10];
    if sep != b'T' && sep != b't' && sep != b' ' {
        return Err(err());
    }
    let mut dp = date.split('-');
    let y: i64 = dp.next().and_then(num).ok_or_else(err)?;
    let mo: u32 = dp.next().and_then(num).ok_or_else(err)?;
    let d: u32 = dp.next().and_then(num).ok_or_else(err)?;
    let zpos = rest.find(['Z', 'z', '+', '-']).ok_or_else(err)?;
    let (time, zone) = rest.split_at(zpos);
    let (h, mi, s) = parse_hms(time).ok_or_else(err)?;
    let off = zone_secs(zone).ok_or_else(err)?;
    to_ms(y, mo, d, h, mi, s, off).ok_or_else(err)
}

/// Either form.
///
/// # Errors
/// [`DateError`] when it is neither.
pub fn parse_any(text: &str) -> Result<u64, DateError> {
    parse_rfc3339(text).or_else(|_| parse_rfc5322(text))
}

/// `2025-03-04 13:05 UTC`: how the UI writes times (UTC, minutes).
pub fn format_utc(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Like [`format_utc`] with seconds.
pub fn format_utc_secs(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2025-03-04T13:05:09Z = 1741093509.
    const T: u64 = 1_741_093_509_000;

    #[test]
    fn rfc5322_forms() {
        assert_eq!(parse_rfc5322("Tue, 4 Mar 2025 14:05:09 +0100").unwrap(), T);
        assert_eq!(parse_rfc5322("4 Mar 2025 13:05:09 GMT").unwrap(), T);
        assert_eq!(
            parse_rfc5322("Tue, 04 Mar 2025 08:05:09 -0500 (EST)").unwrap(),
            T
        );
        assert_eq!(parse_rfc5322("Tue, 4 Mar 25 13:05:09 +0000").unwrap(), T);
    }

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_rfc3339("2025-03-04T13:05:09Z").unwrap(), T);
        assert_eq!(parse_rfc3339("2025-03-04T14:05:09+01:00").unwrap(), T);
        assert_eq!(parse_rfc3339("2025-03-04 13:05:09.250Z").unwrap(), T);
        assert_eq!(parse_any("Tue, 4 Mar 2025 14:05:09 +0100").unwrap(), T);
    }

    #[test]
    fn bad_dates_are_errors() {
        for bad in [
            "",
            "yesterday",
            "Tue, 31 Feb 2025 10:00:00 +0000",
            "Tue, 4 Foo 2025 10:00:00 +0000",
            "4 Mar 2025 25:00:00 +0000",
            "4 Mar 2025 10:00:00 +9999",
            "2025-13-01T00:00:00Z",
            "2025-03-04T13:05:09",
            "1969-12-31T23:59:59Z",
            "ää-03-04T13:05:09Z",
        ] {
            assert!(parse_any(bad).is_err(), "{bad}");
        }
    }

    /// Found by the `abuse_date` fuzz target: a zone of four bytes that are not four
    /// characters (`-0ЪU`) was sliced inside the `Ъ` and panicked, in the ARF `Arrival-Date`
    /// and the JSON `time` alike.
    #[test]
    fn a_zone_with_multibyte_characters_is_an_error_not_a_panic() {
        for bad in [
            "4 Mar 25 14:09 -0\u{42a}U(0 4",
            "Tue, 4 Mar 2025 14:05:09 +\u{e9}00",
            "2025-03-04T13:05:09+0\u{42a}U",
        ] {
            assert!(parse_any(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips_the_calendar() {
        assert_eq!(format_utc(T), "2025-03-04 13:05 UTC");
        assert_eq!(format_utc_secs(T), "2025-03-04 13:05:09 UTC");
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00 UTC");
    }
}
