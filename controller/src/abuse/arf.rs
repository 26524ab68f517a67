//! A small, bounded reader for ARF abuse reports (RFC 5965, with RFC 6692 `Source-Port`):
//! a `multipart/report; report-type=feedback-report` message whose `message/feedback-report`
//! part names the source address and arrival time, and whose `message/rfc822` or
//! `text/rfc822-headers` part holds the reported message's headers.
//!
//! Only what the mapping needs is read, and every count is bounded ([`MAX_HEADERS`],
//! [`MAX_PARTS`], [`MAX_DEPTH`]); anything unexpected is an [`ArfError`], never a panic.

use std::net::IpAddr;

use super::date::{parse_rfc5322, DateError};
use super::AbuseQuery;

/// Largest report accepted, in bytes.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// Most header fields read in one header block.
pub const MAX_HEADERS: usize = 400;
/// Most parts read in one multipart body.
pub const MAX_PARTS: usize = 16;
/// Deepest nesting of multiparts followed.
pub const MAX_DEPTH: usize = 3;

/// Why a report could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArfError {
    /// Larger than [`MAX_REPORT_BYTES`].
    #[error("report is {0} bytes; the limit is {MAX_REPORT_BYTES}")]
    TooLarge(usize),
    /// Not UTF-8 text where text was expected.
    #[error("report is not text")]
    NotText,
    /// The top-level message is not `multipart/report`.
    #[error("not an ARF report: Content-Type is {0:?}, expected multipart/report")]
    NotReport(String),
    /// A multipart without a usable boundary, or without its closing delimiter.
    #[error("broken MIME structure: {0}")]
    BrokenMime(&'static str),
    /// A header block or multipart over its bound.
    #[error("too many {0} (limits: {MAX_HEADERS} headers, {MAX_PARTS} parts, depth {MAX_DEPTH})")]
    TooMany(&'static str),
    /// No `message/feedback-report` part.
    #[error("no message/feedback-report part")]
    NoFeedbackPart,
    /// A required field is missing.
    #[error("feedback report has no {0} field")]
    Missing(&'static str),
    /// `Source-IP` is not an address.
    #[error("Source-IP {0:?} is not an IP address")]
    BadSourceIp(String),
    /// A port field is not a port.
    #[error("{0} is not a port number")]
    BadPort(&'static str),
    /// A date could not be read.
    #[error(transparent)]
    BadDate(#[from] DateError),
}

impl ArfError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ArfError::TooLarge(_) => "too_large",
            ArfError::NotText => "not_text",
            ArfError::NotReport(_) => "not_report",
            ArfError::BrokenMime(_) => "broken_mime",
            ArfError::TooMany(_) => "too_many",
            ArfError::NoFeedbackPart => "no_feedback_part",
            ArfError::Missing(_) => "missing_field",
            ArfError::BadSourceIp(_) => "bad_source_ip",
            ArfError::BadPort(_) => "bad_port",
            ArfError::BadDate(_) => "bad_date",
        }
    }
}

/// Header fields in order, names as written.
type Headers = Vec<(String, String)>;

fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Splits a block into unfolded header fields and the rest.
fn split_headers(text: &str) -> Result<(Headers, &str), ArfError> {
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text, ""),
    };
    let mut out: Headers = Vec::new();
    for line in head.split('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if out.len() >= MAX_HEADERS {
            return Err(ArfError::TooMany("header fields"));
        }
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((out, body))
}

/// `type/subtype` in lower case and the `boundary` parameter, if any.
fn content_type(h: &Headers) -> (String, Option<String>) {
    let Some(ct) = header(h, "Content-Type") else {
        return ("text/plain".into(), None);
    };
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut boundary = None;
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("boundary") {
                let v = v.trim().trim_matches('"');
                if !v.is_empty() && v.len() <= 70 {
                    boundary = Some(v.to_string());
                }
            }
        }
    }
    (mime, boundary)
}

/// The parts of a multipart body.
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Result<Vec<&'a str>, ArfError> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    // Skip the preamble.
    let Some(start) = find_delim(rest, &delim) else {
        return Err(ArfError::BrokenMime("boundary never appears"));
    };
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with("--") {
            return Ok(parts);
        }
        let rest_line = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        let Some(end) = find_delim(rest_line, &delim) else {
            return Err(ArfError::BrokenMime("no closing boundary"));
        };
        if parts.len() >= MAX_PARTS {
            return Err(ArfError::TooMany("MIME parts"));
        }
        let part = &rest_line[..end];
        parts.push(part.strip_suffix('\n').unwrap_or(part));
        rest = &rest_line[end + delim.len()..];
    }
}

/// The offset of a delimiter that starts a line.
fn find_delim(text: &str, delim: &str) -> Option<usize> {
    if text.starts_with(delim) {
        return Some(0);
    }
    let needle = format!("\n{delim}");
    text.find(&needle).map(|i| i + 1)
}

struct Found {
    feedback: Option<Headers>,
    reported: Option<Headers>,
}

fn walk(headers: &Headers, body: &str, depth: usize, found: &mut Found) -> Result<(), ArfError> {
    if depth > MAX_DEPTH {
        return Err(ArfError::TooMany("nested multiparts"));
    }
    let (mime, boundary) = content_type(headers);
    if mime.starts_with("multipart/") {
        let boundary = boundary.ok_or(ArfError::BrokenMime("multipart without boundary"))?;
        for part in split_multipart(body, &boundary)? {
            let (h, b) = split_headers(part)?;
            walk(&h, b, depth + 1, found)?;
        }
    } else if mime == "message/feedback-report" && found.feedback.is_none() {
        let (h, _) = split_headers(body)?;
        found.feedback = Some(h);
    } else if (mime == "message/rfc822" || mime == "text/rfc822-headers")
        && found.reported.is_none()
    {
        let (h, _) = split_headers(body)?;
        found.reported = Some(h);
    }
    Ok(())
}

/// What the report says about the reported message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    /// `Feedback-Type` (`abuse`, `fraud`, ...).
    pub feedback_type: String,
    /// `Message-ID` of the reported message.
    pub message_id: Option<String>,
    /// `Reported-Domain` or the domain of `Original-Mail-From`.
    pub reported_domain: Option<String>,
    /// Its `Received` lines, top first (at most 20).
    pub received: Vec<String>,
}

/// An address in square brackets following `word` in a `Received` line, e.g. the
/// receiving MX in `by mx.example.net ([198.51.100.25])`.
fn bracketed_ip_after(line: &str, word: &str) -> Option<(IpAddr, Option<u16>)> {
    let lower = line.to_ascii_lowercase();
    let start = lower.find(word)?;
    let tail = &line[start + word.len()..];
    // Only look until the next clause.
    let tail = tail
        .find(" with ")
        .or_else(|| tail.find(" id "))
        .or_else(|| tail.find(';'))
        .map_or(tail, |i| &tail[..i]);
    let open = tail.find('[')?;
    let close = open + tail[open..].find(']')?;
    let inner = tail[open + 1..close].trim_start_matches("IPv6:");
    let ip: IpAddr = inner.parse().ok()?;
    let port = tail[close + 1..].strip_prefix(':').and_then(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    Some((ip, port))
}

/// Reads an ARF report into the question the mapping answers.
///
/// # Errors
/// [`ArfError`] naming what is wrong.
pub fn parse(raw: &[u8]) -> Result<(AbuseQuery, Reported), ArfError> {
    if raw.len() > MAX_REPORT_BYTES {
        return Err(ArfError::TooLarge(raw.len()));
    }
    let text = std::str::from_utf8(raw).map_err(|_| ArfError::NotText)?;
    let text = text.replace("\r\n", "\n");
    let (headers, body) = split_headers(&text)?;
    let (mime, _) = content_type(&headers);
    if mime != "multipart/report" {
        return Err(ArfError::NotReport(mime.chars().take(60).collect()));
    }
    let mut found = Found {
        feedback: None,
        reported: None,
    };
    walk(&headers, body, 0, &mut found)?;
    let fb = found.feedback.ok_or(ArfError::NoFeedbackPart)?;
    let reported_headers = found.reported.unwrap_or_default();
    let feedback_type = header(&fb, "Feedback-Type")
        .ok_or(ArfError::Missing("Feedback-Type"))?
        .to_ascii_lowercase();
    let source = header(&fb, "Source-IP").ok_or(ArfError::Missing("Source-IP"))?;
    let public_ip: IpAddr = source
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| ArfError::BadSourceIp(source.chars().take(60).collect()))?;
    let received: Vec<String> = reported_headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Received"))
        .take(20)
        .map(|(_, v)| v.clone())
        .collect();
    // The hop that received the message from the household: the Received line naming the
    // source address after "from".
    let ip_text = public_ip.to_string();
    let hop = received.iter().find(|r| {
        bracketed_ip_after(r, "from ").is_some_and(|(ip, _)| ip == public_ip)
            || r.contains(&ip_text)
    });
    let hop_source_port = hop
        .and_then(|r| bracketed_ip_after(r, "from "))
        .and_then(|(_, p)| p);
    let dest_ip = hop
        .and_then(|r| bracketed_ip_after(r, " by "))
        .map(|(ip, _)| ip);
    let source_port = match header(&fb, "Source-Port") {
        Some(p) => Some(
            p.trim()
                .parse::<u16>()
                .map_err(|_| ArfError::BadPort("Source-Port"))?,
        ),
        None => hop_source_port,
    };
    let at_ms = if let Some(d) = header(&fb, "Arrival-Date").or(header(&fb, "Received-Date")) {
        parse_rfc5322(d)?
    } else if let Some(date) = hop.and_then(|r| r.rsplit_once(';')).map(|(_, d)| d.trim()) {
        parse_rfc5322(date)?
    } else if let Some(d) = header(&reported_headers, "Date") {
        parse_rfc5322(d)?
    } else {
        return Err(ArfError::Missing("Arrival-Date"));
    };
    let reported_domain = header(&fb, "Reported-Domain")
        .map(str::to_string)
        .or_else(|| {
            header(&fb, "Original-Mail-From")
                .and_then(|m| m.rsplit_once('@'))
                .map(|(_, d)| d.trim_end_matches('>').to_string())
        });
    Ok((
        AbuseQuery {
            public_ip,
            at_ms,
            dest_ip,
            dest_port: None,
            source_port,
        },
        Reported {
            feedback_type,
            message_id: header(&reported_headers, "Message-ID").map(str::to_string),
            reported_domain,
            received,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = "From: abuse@mailbox.example\r\n\
To: abuse@isp.example\r\n\
Subject: FW: spam report\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\
\tboundary=\"part1_13d.2e68ed54_boundary\"\r\n\
\r\n\
This is a multi-part message in MIME format.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
\r\n\
This is an email abuse report for an email message received from IP\r\n\
203.0.113.7 on Tue, 4 Mar 2025 14:05:09 +0100.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <bounce@spam-sender.example>\r\n\
Arrival-Date: Tue, 4 Mar 2025 14:05:09 +0100\r\n\
Source-IP: 203.0.113.7\r\n\
Reported-Domain: spam-sender.example\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
Received: from COZOXORY.club ([203.0.113.7]:40123)\r\n\
\tby mx1.mailbox.example ([198.51.100.25]) with ESMTP id 7Q1;\r\n\
\tTue, 4 Mar 2025 14:05:08 +0100\r\n\
From: <bounce@spam-sender.example>\r\n\
Date: Tue, 4 Mar 2025 14:05:00 +0100\r\n\
Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@spam-sender.example>\r\n\
Subject: Cheap watches\r\n\
\r\n\
--part1_13d.2e68ed54_boundary--\r\n";

    #[test]
    fn reads_an_rfc5965_report() {
        let (q, r) = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(q.public_ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(q.at_ms, 1_741_093_509_000);
        assert_eq!(q.dest_ip, Some("198.51.100.25".parse().unwrap()));
        assert_eq!(q.source_port, Some(40123));
        assert_eq!(r.feedback_type, "abuse");
        assert_eq!(r.reported_domain.as_deref(), Some("spam-sender.example"));
        assert_eq!(
            r.message_id.as_deref(),
            Some("<8787KJKJ3K4J3K4J3K4J3.mail@spam-sender.example>")
        );
        assert_eq!(r.received.len(), 1);
    }

    #[test]
    fn source_port_field_wins_over_received() {
        let text = SAMPLE.replace(
            "Source-IP: 203.0.113.7\r\n",
            "Source-IP: 203.0.113.7\r\nSource-Port: 5555\r\n",
        );
        assert_eq!(parse(text.as_bytes()).unwrap().0.source_port, Some(5555));
    }

    #[test]
    fn broken_reports_are_named_errors() {
        let cases: Vec<(String, &str)> = vec![
            ("Content-Type: text/plain\r\n\r\nhello".into(), "not_report"),
            (
                SAMPLE.replace("--part1_13d.2e68ed54_boundary--\r\n", ""),
                "broken_mime",
            ),
            (
                SAMPLE.replace("boundary=\"part1_13d.2e68ed54_boundary\"", "x=1"),
                "broken_mime",
            ),
            (
                SAMPLE.replace("Source-IP: 203.0.113.7", "Source-IP: nope"),
                "bad_source_ip",
            ),
            (
                SAMPLE.replace("Source-IP: 203.0.113.7\r\n", ""),
                "missing_field",
            ),
            (
                SAMPLE.replace(
                    "Arrival-Date: Tue, 4 Mar 2025 14:05:09 +0100",
                    "Arrival-Date: someday",
                ),
                "bad_date",
            ),
            (
                SAMPLE.replace("message/feedback-report", "text/plain"),
                "no_feedback_part",
            ),
        ];
        for (text, label) in cases {
            let err = parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.label(), label, "{err}");
        }
        assert_eq!(parse(&[0xff, 0xfe]).unwrap_err().label(), "not_text");
        let huge = vec![b'a'; MAX_REPORT_BYTES + 1];
        assert_eq!(parse(&huge).unwrap_err().label(), "too_large");
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\n"))
            .collect();
        assert_eq!(parse(many.as_bytes()).unwrap_err().label(), "too_many");
    }

    #[test]
    fn nesting_is_bounded() {
        let mut text = String::from("Content-Type: multipart/report; boundary=b0\n\n--b0\n");
        for i in 1..=MAX_DEPTH + 1 {
            text.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
            ));
        }
        text.push_str("Content-Type: text/plain\n\nx\n");
        for i in (0..=MAX_DEPTH + 1).rev() {
            text.push_str(&format!("--b{i}--\n"));
        }
        assert_eq!(parse(text.as_bytes()).unwrap_err().label(), "too_many");
    }
}
