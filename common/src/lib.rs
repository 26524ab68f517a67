//! What the agent and the controller both need and the wire definition (`protocol`, which
//! does no I/O) must not hold: one copy each of
//! - [`now_ms`], the wall clock in Unix milliseconds;
//! - [`BrokerAddr`], an `mqtt://` or `mqtts://` broker URL;
//! - [`Backoff`], reconnect delays with full jitter;
//! - [`tls_client_config`], the rustls client setup (ring provider, CA file);
//! - [`base64_decode_into`], a base64 decoder into a caller's buffer (the agent reads SMTP
//!   AUTH user names with it, without allocating; the agent binary carries no base64 crate).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Decodes standard base64 (padding optional; CR and LF skipped) into `out`; the number of
/// bytes written, or `None` when the input holds another character or decodes to more
/// than `out` holds.
pub fn base64_decode_into(b64: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut n = 0;
    for &c in b64 {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = ((acc << 6) | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    Some(n)
}

/// The wall clock in Unix milliseconds (0 before 1970, saturating far in the future).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Host, port and TLS of a broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
}

/// Why a broker URL was refused, in words for the configuration error that names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {problem}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl BrokerAddr {
    /// Parses `mqtt://host:port` or `mqtts://host:port` (`[v6]:port` too; a trailing `/` is
    /// ignored).
    ///
    /// # Errors
    /// [`UrlError`] saying what is missing or wrong.
    pub fn parse(url: &str) -> Result<BrokerAddr, UrlError> {
        let bad = |problem| UrlError {
            url: url.to_owned(),
            problem,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("expected mqtt://host:port or mqtts://host:port"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
        let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// Exponential reconnect delays with full jitter: the n-th delay is uniform in
/// `[0, min(max, min * 2^n)]`, so a fleet that lost its broker does not come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    /// From `min_ms`, doubling up to `max_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            min_ms: min_ms.max(1),
            max_ms: max_ms.max(min_ms.max(1)),
            attempt: 0,
        }
    }

    /// Back to the first delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, drawn with `random` (any uniformly random number).
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let cap = self
            .min_ms
            .saturating_mul(1u64 << self.attempt.min(30))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(random % (cap + 1))
    }
}

/// A TLS client setup could not be made from the CA file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not PEM certificates, or holds none, or rustls refused one.
    #[error("{path}: {problem}")]
    Certificates {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// A rustls client configuration (ring provider, safe default protocol versions) trusting
/// the PEM certificates in `ca_file`.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn tls_client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let path = ca_file.display().to_string();
    let bad = |problem: String| TlsError::Certificates {
        path: path.clone(),
        problem,
    };
    let pem = std::fs::read(ca_file).map_err(|source| TlsError::Read {
        path: path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_into_a_buffer() {
        let mut buf = [0u8; 8];
        assert_eq!(base64_decode_into(b"Zm9vYmFy", &mut buf), Some(6));
        assert_eq!(&buf[..6], b"foobar");
        assert_eq!(base64_decode_into(b"Zm8=\r\n", &mut buf), Some(2));
        assert_eq!(&buf[..2], b"fo");
        assert_eq!(base64_decode_into(b"Zm9v!", &mut buf), None);
        // Too long for the buffer.
        assert_eq!(base64_decode_into(b"Zm9vYmFyYmF6", &mut buf), None);
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerAddr::parse("mqtts://broker.isp.example:8883/"),
            Ok(BrokerAddr {
                host: "broker.isp.example".into(),
                port: 8883,
                tls: true
            })
        );
        assert_eq!(
            BrokerAddr::parse("mqtt://[2001:db8::1]:1883"),
            Ok(BrokerAddr {
                host: "2001:db8::1".into(),
                port: 1883,
                tls: false
            })
        );
        for (url, problem) in [
            (
                "http://x:1",
                "expected mqtt://host:port or mqtts://host:port",
            ),
            ("mqtt://x", "missing :port"),
            ("mqtt://x:99999", "bad port"),
            ("mqtt://:1883", "missing host"),
        ] {
            assert_eq!(
                BrokerAddr::parse(url).unwrap_err().problem,
                problem,
                "{url}"
            );
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(100, 1000);
        // The cap doubles from 100 ms to 1000 ms; a random number equal to the cap draws it.
        for cap in [100u64, 200, 400, 800, 1000, 1000] {
            assert_eq!(b.next_delay(cap), Duration::from_millis(cap));
        }
        assert!((0..1000).all(|r| b.next_delay(r * 7919) <= Duration::from_millis(1000)));
        b.reset();
        assert_eq!(b.next_delay(100), Duration::from_millis(100));
        assert_eq!(b.next_delay(100), Duration::from_millis(100));
    }

    #[test]
    fn tls_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"not a certificate").unwrap();
        assert!(matches!(
            tls_client_config(&empty),
            Err(TlsError::Certificates { .. })
        ));
        assert!(matches!(
            tls_client_config(&dir.path().join("missing.pem")),
            Err(TlsError::Read { .. })
        ));
    }
}
