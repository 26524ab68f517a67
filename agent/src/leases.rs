//! Host names of LAN devices from the router's DHCP lease file (dnsmasq format, on OpenWrt
//! `/tmp/dhcp.leases`), for [`crate::engine::Engine::set_hostname`].
//!
//! Each IPv4 lease is one line: `EXPIRY MAC IP HOSTNAME CLIENT-ID`, with `*` for an unknown
//! host name or client id. dnsmasq also writes a `duid ...` line and IPv6 leases whose second
//! field is an IAID instead of a MAC; those, and any other line that does not parse, are
//! skipped and counted, never an error: the file is written by another program and may be
//! caught half-written.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use smtpguard_protocol::MacAddr;

/// Largest lease file read; a bigger one is cut off here (a home has far fewer leases).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Longest host name kept (the DNS limit for one name).
pub const MAX_HOSTNAME_BYTES: usize = 253;

/// One IPv4 lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// When the lease ends, Unix seconds (`0` for an infinite lease).
    pub expires_unix_secs: u64,
    /// The device.
    pub mac: MacAddr,
    /// The address leased to it.
    pub ip: IpAddr,
    /// The host name the device asked for, if any.
    pub hostname: Option<String>,
}

/// The readable leases of a file, and how many lines were skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    /// Leases in file order.
    pub leases: Vec<Lease>,
    /// Lines that were not IPv4 leases (the DUID line, IPv6 leases, junk).
    pub skipped_lines: usize,
}

impl Leases {
    /// `(mac, hostname)` for every lease with a host name, to feed the engine.
    pub fn hostnames(&self) -> impl Iterator<Item = (MacAddr, &str)> + '_ {
        self.leases
            .iter()
            .filter_map(|l| l.hostname.as_deref().map(|h| (l.mac, h)))
    }
}

/// The lease file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LeasesError {
    /// Opening or reading the file failed.
    #[error("cannot read lease file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Reads and parses a lease file, at most [`MAX_FILE_BYTES`] of it.
///
/// # Errors
/// [`LeasesError::Read`] when the file cannot be opened or read. A missing file is an error
/// too; the caller decides whether that matters (no DHCP server on this router).
pub fn read(path: &Path) -> Result<Leases, LeasesError> {
    let err = |source| LeasesError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// Parses the text of a lease file; lines that are not IPv4 leases are skipped.
pub fn parse(text: &str) -> Leases {
    let mut out = Leases::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Some(lease) => out.leases.push(lease),
            None => out.skipped_lines += 1,
        }
    }
    out
}

fn parse_line(line: &str) -> Option<Lease> {
    let mut fields = line.split_ascii_whitespace();
    let expires_unix_secs = fields.next()?.parse().ok()?;
    let mac: MacAddr = fields.next()?.parse().ok()?;
    let ip = fields.next()?.parse().ok()?;
    let name = fields.next()?;
    let hostname = (name != "*"
        && name.len() <= MAX_HOSTNAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    .then(|| name.to_owned());
    Some(Lease {
        expires_unix_secs,
        mac,
        ip,
        hostname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1732360000 02:11:22:33:44:55 192.168.1.14 alice-laptop 01:02:11:22:33:44:55
1732360100 aa:bb:cc:dd:ee:01 192.168.1.20 * *
0 AA-BB-CC-DD-EE-02 192.168.1.21 printer *
duid 00:01:00:01:2c:5f:aa:bb:02:11:22:33:44:55
1732360200 1234567 fd00::14 alice-laptop 00:01:00:01:2c:5f
garbage line
1732360300 02:11:22:33:44 192.168.1.30 short-mac *
1732360400 02:11:22:33:44:66 999.1.1.1 bad-ip *
1732360500 02:11:22:33:44:77 192.168.1.31 bad$name *
";

    #[test]
    fn reads_ipv4_leases_and_skips_the_rest() {
        let leases = parse(SAMPLE);
        assert_eq!(leases.leases.len(), 4);
        assert_eq!(leases.skipped_lines, 5);
        let first = &leases.leases[0];
        assert_eq!(first.mac, "02:11:22:33:44:55".parse().unwrap());
        assert_eq!(first.ip, "192.168.1.14".parse::<IpAddr>().unwrap());
        assert_eq!(first.hostname.as_deref(), Some("alice-laptop"));
        assert_eq!(first.expires_unix_secs, 1_732_360_000);
        assert_eq!(leases.leases[1].hostname, None);
        assert_eq!(leases.leases[3].hostname, None, "unsafe characters dropped");
    }

    #[test]
    fn hostnames_pair_macs_with_names() {
        let leases = parse(SAMPLE);
        let names: Vec<(String, &str)> = leases
            .hostnames()
            .map(|(mac, name)| (mac.to_string(), name))
            .collect();
        assert_eq!(
            names,
            vec![
                ("02:11:22:33:44:55".to_owned(), "alice-laptop"),
                ("aa:bb:cc:dd:ee:02".to_owned(), "printer"),
            ]
        );
    }

    #[test]
    fn a_half_written_file_keeps_the_complete_lines() {
        let cut = &SAMPLE[..SAMPLE.find("printer").unwrap() + 3];
        let leases = parse(cut);
        assert_eq!(leases.leases.len(), 3);
        assert_eq!(leases.leases[2].hostname.as_deref(), Some("pri"));
        let nothing = parse("\u{0}\u{ff}\n\n   \n");
        assert_eq!(nothing.leases.len(), 0);
        assert_eq!(nothing.skipped_lines, 1);
    }

    #[test]
    fn read_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcp.leases");
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("dhcp.leases"), "{err}");
        std::fs::write(&path, SAMPLE).unwrap();
        assert_eq!(read(&path).unwrap(), parse(SAMPLE));
    }
}
