//! Device vendors from the IEEE MAC registry.
//!
//! Router flash is tiny, so the registry is not compiled in: [`OuiTable::load`] parses the
//! IEEE `oui.csv` (Debian's `ieee-data` ships it as `/usr/share/ieee-data/oui.csv`; an
//! OpenWrt package can ship a trimmed copy) at start into a compact table: one sorted
//! `Vec` of 24-bit prefixes with an index into a de-duplicated list of names, looked up by
//! binary search. Debian's full registry (32,500 MA-L prefixes, 18,700 distinct names) takes
//! about 0.95 MiB of heap; a trimmed file proportionally less.
//!
//! Two line formats are accepted, so a trimmed file can be written by hand:
//! - the IEEE CSV: `MA-L,002272,American Micro-Fuel Device Corp.,<address>` (fields may be
//!   quoted; rows of other registries — MA-M, MA-S, CID — are skipped);
//! - a short form: `002272,American Micro-Fuel Device Corp.`.
//!
//! Locally administered addresses (randomised "private" Wi-Fi MACs) never have a vendor.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use smtpguard_protocol::MacAddr;

/// Longest vendor name kept; longer names are cut at a character boundary.
pub const MAX_VENDOR_CHARS: usize = 64;

/// Loading the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum OuiError {
    /// The file could not be opened or read.
    #[error("reading OUI file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable assignment at all (wrong file?).
    #[error("OUI file {path} holds no MA-L assignments")]
    Empty {
        /// The file.
        path: String,
    },
}

/// Vendor lookup by the first three bytes of a MAC address.
#[derive(Debug, Clone, Default)]
pub struct OuiTable {
    /// Sorted by prefix, unique.
    entries: Vec<(u32, u32)>,
    names: Vec<Box<str>>,
    skipped_lines: usize,
}

fn parse_hex6(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Splits one CSV line into fields (double-quoted fields may hold commas and `""`).
fn csv_fields(line: &str, out: &mut Vec<String>) {
    out.clear();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
        if out.len() >= 3 {
            // Name found; the address is not needed.
            return;
        }
    }
    out.push(field);
}

impl OuiTable {
    /// Reads a registry file.
    ///
    /// # Errors
    /// [`OuiError::Io`] if it cannot be read, [`OuiError::Empty`] if it holds no entries.
    pub fn load(path: &Path) -> Result<Self, OuiError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| OuiError::Io {
            path: shown.clone(),
            source,
        })?;
        let table =
            Self::from_reader(std::io::BufReader::new(file)).map_err(|source| OuiError::Io {
                path: shown.clone(),
                source,
            })?;
        if table.is_empty() {
            return Err(OuiError::Empty { path: shown });
        }
        Ok(table)
    }

    /// Parses registry lines from any reader; malformed lines are skipped and counted.
    ///
    /// # Errors
    /// An I/O error of the reader (including invalid UTF-8).
    pub fn from_reader<R: BufRead>(reader: R) -> std::io::Result<Self> {
        let mut index: HashMap<Box<str>, u32> = HashMap::new();
        let mut table = OuiTable::default();
        let mut fields = Vec::with_capacity(4);
        for line in reader.lines() {
            let line = line?;
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() || line.starts_with('#') || line.starts_with("Registry,") {
                continue;
            }
            csv_fields(line, &mut fields);
            let parsed = match fields.first().map(String::as_str) {
                Some("MA-L") if fields.len() >= 3 => parse_hex6(&fields[1]).map(|p| (p, 2)),
                Some(first) if fields.len() >= 2 => parse_hex6(first).map(|p| (p, 1)),
                _ => None,
            };
            let Some((prefix, name_at)) = parsed else {
                if !matches!(
                    fields.first().map(String::as_str),
                    Some("MA-M" | "MA-S" | "CID")
                ) {
                    table.skipped_lines += 1;
                }
                continue;
            };
            let name = clean_name(&fields[name_at]);
            if name.is_empty() {
                table.skipped_lines += 1;
                continue;
            }
            let next = table.names.len() as u32;
            let id = *index.entry(name.clone().into()).or_insert_with(|| {
                table.names.push(name.into());
                next
            });
            table.entries.push((prefix, id));
        }
        table.entries.sort_unstable();
        table.entries.dedup_by_key(|e| e.0);
        table.entries.shrink_to_fit();
        table.names.shrink_to_fit();
        Ok(table)
    }

    /// The vendor of `mac`, if its prefix is registered (never for locally administered or
    /// multicast addresses).
    pub fn lookup(&self, mac: &MacAddr) -> Option<&str> {
        if mac.0[0] & 0x03 != 0 {
            return None;
        }
        let prefix = u32::from_be_bytes([0, mac.0[0], mac.0[1], mac.0[2]]);
        let i = self.entries.binary_search_by_key(&prefix, |e| e.0).ok()?;
        self.names.get(self.entries[i].1 as usize).map(|n| &**n)
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no prefixes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lines that were neither an assignment nor a known other registry.
    pub fn skipped_lines(&self) -> usize {
        self.skipped_lines
    }

    /// Approximate heap bytes held by the table.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.names.iter().map(|n| n.len() + 16).sum::<usize>()
    }
}

fn clean_name(raw: &str) -> String {
    let mut out = String::new();
    for (i, c) in raw.trim().chars().enumerate() {
        if i >= MAX_VENDOR_CHARS {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Registry,Assignment,Organization Name,Organization Address\n\
MA-L,002272,American Micro-Fuel Device Corp.,2181 Buchanan Loop Ferndale WA US 98248 \n\
MA-L,000802,\"Hewlett Packard\",\"11445 Compaq Center Drive, Houston\"\n\
MA-L,3C22FB,\"Apple, Inc.\",1 Infinite Loop Cupertino CA US 95014 \n\
MA-L,F0D1A9,\"Apple, Inc.\",1 Infinite Loop Cupertino CA US 95014 \n\
MA-M,70B3D5123,Some Small Co,Nowhere\n\
garbage line\n\
E4B318,Intel Corporate\n";

    #[test]
    fn parses_ieee_csv_and_short_form() {
        let t = OuiTable::from_reader(SAMPLE.as_bytes()).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t.skipped_lines(), 1);
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        assert_eq!(t.lookup(&mac("00:08:02:1c:47:ae")), Some("Hewlett Packard"));
        assert_eq!(t.lookup(&mac("3c:22:fb:00:00:01")), Some("Apple, Inc."));
        assert_eq!(t.lookup(&mac("e4:b3:18:4b:f0:c3")), Some("Intel Corporate"));
        assert_eq!(
            t.lookup(&mac("00:22:72:00:00:00")),
            Some("American Micro-Fuel Device Corp.")
        );
        assert_eq!(t.lookup(&mac("00:00:01:00:00:00")), None);
        // Locally administered: never a vendor.
        assert_eq!(t.lookup(&mac("02:11:22:33:44:05")), None);
        // Both Apple prefixes share one stored name.
        assert_eq!(t.names.len(), 4);
    }

    /// The real registry from Debian's `ieee-data` (installed by scripts/setup.sh).
    #[test]
    fn loads_the_ieee_registry_compactly() {
        let t = OuiTable::load(Path::new("/usr/share/ieee-data/oui.csv")).unwrap();
        assert!(t.len() > 30_000, "{}", t.len());
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        assert_eq!(t.lookup(&mac("00:08:02:1c:47:ae")), Some("Hewlett Packard"));
        assert_eq!(t.lookup(&mac("e4:b3:18:4b:f0:c3")), Some("Intel Corporate"));
        println!(
            "{} prefixes, {} names, {} heap bytes",
            t.len(),
            t.names.len(),
            t.heap_bytes()
        );
        assert!(t.heap_bytes() < 2 * 1024 * 1024, "{}", t.heap_bytes());
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = OuiTable::load(Path::new("/nonexistent/oui.csv")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/oui.csv"), "{err}");
    }
}
