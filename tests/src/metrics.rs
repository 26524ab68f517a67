//! The controller's `/metrics`, as the tests read it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// The whole answer (headers and body) of `GET /metrics` at `addr`; empty when the
/// controller does not answer.
pub fn scrape(addr: SocketAddr) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of one series (`name{label="value"}`, as written) in a scrape.
pub fn value(scrape: &str, series: &str) -> Option<u64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// [`value`] at `addr`, failing the test with the whole scrape when the series is missing.
pub fn get(addr: SocketAddr, series: &str) -> u64 {
    let m = scrape(addr);
    value(&m, series).unwrap_or_else(|| panic!("{series} not in /metrics:\n{m}"))
}
