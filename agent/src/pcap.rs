//! Capture files: a streaming reader for pcap and pcapng.
//!
//! The reader ([`CaptureReader`]) holds one reusable record buffer (records larger than
//! [`MAX_RECORD_BYTES`] are refused as corrupt), so a capture of any length streams through
//! in bounded memory. It understands:
//! - pcap in both byte orders, with microsecond or nanosecond timestamps;
//! - pcapng in both byte orders: Section Header, Interface Description (with `if_tsresol`
//!   and `if_tsoffset`), Enhanced Packet, Simple Packet and the obsolete Packet block; other
//!   blocks are skipped. Several sections in one file are fine.
//!
//! Three link types are analysed ([`Link`]): Ethernet, and Linux "cooked" SLL and SLL2 (what
//! `tcpdump -i any` writes; [`crate::cooked`] turns those into Ethernet frames). A pcap file
//! of any other link type is refused. In a pcapng file each packet's interface decides: the
//! packets of interfaces of other link types are skipped and counted
//! ([`CaptureReader::skipped`]), and a file none of whose interfaces is usable ends with
//! [`CaptureError::NoUsableInterface`]. A file cut off in the middle of a record ends with
//! [`CaptureError::Truncated`], after every complete record has been returned.
//!
//! The writer the traffic simulator uses lives with it in the tools crate: the router only
//! reads captures.

use std::io::{self, ErrorKind, Read};

use crate::cooked::CookedFormat;

/// Largest record (pcap packet or pcapng block) accepted; anything larger means the file is
/// corrupt. Ethernet frames with jumbo payloads stay far below this.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// `LINKTYPE_LINUX_SLL`: Linux cooked capture, v1 (`tcpdump -i any`, libpcap before 1.10).
pub const LINKTYPE_LINUX_SLL: u32 = 113;
/// `LINKTYPE_LINUX_SLL2`: Linux cooked capture, v2 (`tcpdump -i any` since libpcap 1.10).
pub const LINKTYPE_LINUX_SLL2: u32 = 276;
/// Distinct unusable link types remembered for [`CaptureError::NoUsableInterface`].
const UNUSABLE_MAX: usize = 8;

/// The link layer of a record: how to read its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// An Ethernet frame.
    Ethernet,
    /// A Linux cooked header and the packet after it.
    Cooked(CookedFormat),
}

impl Link {
    /// The link layer of a `LINKTYPE_*` value, `None` for one replay cannot read.
    pub fn from_linktype(linktype: u32) -> Option<Link> {
        match linktype {
            LINKTYPE_ETHERNET => Some(Link::Ethernet),
            LINKTYPE_LINUX_SLL => Some(Link::Cooked(CookedFormat::Sll)),
            LINKTYPE_LINUX_SLL2 => Some(Link::Cooked(CookedFormat::Sll2)),
            _ => None,
        }
    }
}

const PCAPNG_SHB: u32 = 0x0A0D_0D0A;
const PCAPNG_BOM: u32 = 0x1A2B_3C4D;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_OPB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;
/// Most interfaces remembered per pcapng section.
const MAX_INTERFACES: usize = 64;

/// Reading a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file does not start with a pcap or pcapng magic number.
    #[error("not a pcap or pcapng capture (magic {0:02x?})")]
    NotACapture([u8; 4]),
    /// A pcap file of a link type replay cannot read.
    #[error(
        "unsupported link type {0}: only Ethernet (1), Linux cooked (113) and Linux cooked v2 (276) captures can be analysed"
    )]
    UnsupportedLinkType(u32),
    /// A pcapng file none of whose interfaces has a link type replay can read.
    #[error(
        "no interface of the capture can be analysed (link types {link_types:?}): only Ethernet (1), Linux cooked (113) and Linux cooked v2 (276)"
    )]
    NoUsableInterface {
        /// The link types of its interfaces (the first few distinct ones).
        link_types: Vec<u32>,
    },
    /// A header or block is inconsistent (bad length, bad byte-order mark, oversize record).
    #[error("corrupt capture at byte {offset}: {problem}")]
    Corrupt {
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// The file ends in the middle of a record.
    #[error("capture cut off at byte {offset} in the middle of a record")]
    Truncated {
        /// Byte offset where the incomplete record starts.
        offset: u64,
    },
    /// The underlying reader failed.
    #[error("reading the capture: {0}")]
    Io(#[from] io::Error),
}

/// One packet from a capture, borrowing the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Capture timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length of the packet on the wire (may exceed `data.len()` when the capture was
    /// limited by a snap length).
    pub orig_len: u32,
    /// How to read `data`.
    pub link: Link,
    /// The captured bytes (an Ethernet frame or a cooked header and packet).
    pub data: &'a [u8],
}

impl Record<'_> {
    /// Capture timestamp in Unix milliseconds, the engine's clock.
    pub fn ts_ms(&self) -> u64 {
        self.ts_ns / 1_000_000
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(a),
            Endian::Big => u16::from_be_bytes(a),
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    link: Option<Link>,
    /// Timestamp units per second.
    units_per_sec: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset_secs: i64,
}

#[derive(Debug)]
enum Format {
    Pcap {
        endian: Endian,
        nanos: bool,
        link: Link,
    },
    Pcapng {
        endian: Endian,
        interfaces: Vec<Interface>,
    },
}

/// Streaming reader of pcap and pcapng files.
pub struct CaptureReader<R: Read> {
    input: R,
    format: Format,
    buf: Vec<u8>,
    offset: u64,
    done: bool,
    last_ts_ns: u64,
    skipped: u64,
    /// pcapng interfaces declared in all sections, and how many of them are usable.
    declared: u64,
    usable: u64,
    /// Link types of the unusable interfaces (distinct, at most [`UNUSABLE_MAX`]).
    unusable: Vec<u32>,
}

/// Reads as many bytes as are available up to `buf.len()`; returns how many were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header and prepares to stream records.
    ///
    /// # Errors
    /// [`CaptureError::NotACapture`] for an unknown magic (including an empty file),
    /// [`CaptureError::UnsupportedLinkType`] for a pcap of a link type [`Link`] does not
    /// cover, and
    /// [`CaptureError::Truncated`]/[`CaptureError::Corrupt`] for a broken header.
    pub fn new(mut input: R) -> Result<Self, CaptureError> {
        let mut magic = [0u8; 4];
        let n = read_full(&mut input, &mut magic)?;
        if n < 4 {
            return Err(CaptureError::NotACapture(magic));
        }
        let mut reader = CaptureReader {
            input,
            format: Format::Pcap {
                endian: Endian::Little,
                nanos: false,
                link: Link::Ethernet,
            },
            buf: Vec::with_capacity(2048),
            offset: 4,
            done: false,
            last_ts_ns: 0,
            skipped: 0,
            declared: 0,
            usable: 0,
            unusable: Vec::new(),
        };
        let pcap = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => Some((Endian::Little, false)),
            [0x4d, 0x3c, 0xb2, 0xa1] => Some((Endian::Little, true)),
            [0xa1, 0xb2, 0xc3, 0xd4] => Some((Endian::Big, false)),
            [0xa1, 0xb2, 0x3c, 0x4d] => Some((Endian::Big, true)),
            _ => None,
        };
        if let Some((endian, nanos)) = pcap {
            let mut rest = [0u8; 20];
            if read_full(&mut reader.input, &mut rest)? < 20 {
                return Err(CaptureError::Truncated { offset: 0 });
            }
            reader.offset = 24;
            let linktype = endian.u32(&rest[16..20]) & 0x0FFF_FFFF;
            let Some(link) = Link::from_linktype(linktype) else {
                return Err(CaptureError::UnsupportedLinkType(linktype));
            };
            reader.format = Format::Pcap {
                endian,
                nanos,
                link,
            };
            return Ok(reader);
        }
        if u32::from_le_bytes(magic) == PCAPNG_SHB {
            reader.format = Format::Pcapng {
                endian: Endian::Little,
                interfaces: Vec::new(),
            };
            let mut raw_len = [0u8; 4];
            let n = read_full(&mut reader.input, &mut raw_len)?;
            reader.offset += n as u64;
            if n < 4 {
                return Err(CaptureError::Truncated { offset: 0 });
            }
            reader.read_section_header(0, raw_len)?;
            return Ok(reader);
        }
        Err(CaptureError::NotACapture(magic))
    }

    /// Packets skipped because their interface's link type cannot be analysed.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Fills `self.buf` with exactly `len` bytes, or reports truncation at `start`.
    fn fill(&mut self, len: usize, start: u64) -> Result<(), CaptureError> {
        if len > MAX_RECORD_BYTES {
            return Err(CaptureError::Corrupt {
                offset: start,
                problem: format!("record of {len} bytes exceeds {MAX_RECORD_BYTES}"),
            });
        }
        self.buf.resize(len, 0);
        let n = read_full(&mut self.input, &mut self.buf)?;
        self.offset += n as u64;
        if n < len {
            self.done = true;
            return Err(CaptureError::Truncated { offset: start });
        }
        Ok(())
    }

    /// Reads the rest of a section header block whose type and raw length were already
    /// consumed: the byte-order mark decides how to read the length and every later block.
    fn read_section_header(&mut self, start: u64, raw_len: [u8; 4]) -> Result<(), CaptureError> {
        let mut bom = [0u8; 4];
        let n = read_full(&mut self.input, &mut bom)?;
        self.offset += n as u64;
        if n < 4 {
            self.done = true;
            return Err(CaptureError::Truncated { offset: start });
        }
        let endian = match u32::from_le_bytes(bom) {
            PCAPNG_BOM => Endian::Little,
            x if x.swap_bytes() == PCAPNG_BOM => Endian::Big,
            _ => {
                return Err(CaptureError::Corrupt {
                    offset: start,
                    problem: "bad pcapng byte-order mark".into(),
                })
            }
        };
        let total = endian.u32(&raw_len) as usize;
        if total < 28 || total % 4 != 0 {
            return Err(CaptureError::Corrupt {
                offset: start,
                problem: format!("section header length {total}"),
            });
        }
        // Rest of the block after type, length and byte-order mark.
        self.fill(total - 12, start)?;
        self.format = Format::Pcapng {
            endian,
            interfaces: Vec::new(),
        };
        Ok(())
    }

    /// The next packet, `Ok(None)` at the end of the file.
    ///
    /// # Errors
    /// [`CaptureError::Truncated`] once, when the file ends inside a record (every complete
    /// record before it has been returned; later calls return `Ok(None)`),
    /// [`CaptureError::NoUsableInterface`] once, at the end of a pcapng file that declared
    /// interfaces but none replay can read,
    /// [`CaptureError::Corrupt`] for inconsistent records, [`CaptureError::Io`].
    pub fn next_packet(&mut self) -> Result<Option<Record<'_>>, CaptureError> {
        if self.done {
            return Ok(None);
        }
        match self.format {
            Format::Pcap {
                endian,
                nanos,
                link,
            } => self.next_pcap(endian, nanos, link),
            Format::Pcapng { .. } => self.next_pcapng(),
        }
    }

    fn next_pcap(
        &mut self,
        endian: Endian,
        nanos: bool,
        link: Link,
    ) -> Result<Option<Record<'_>>, CaptureError> {
        let start = self.offset;
        let mut head = [0u8; 16];
        let n = read_full(&mut self.input, &mut head)?;
        self.offset += n as u64;
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        if n < 16 {
            self.done = true;
            return Err(CaptureError::Truncated { offset: start });
        }
        let secs = u64::from(endian.u32(&head[0..4]));
        let frac = u64::from(endian.u32(&head[4..8]));
        let incl = endian.u32(&head[8..12]) as usize;
        let orig_len = endian.u32(&head[12..16]);
        self.fill(incl, start)?;
        let ts_ns = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        self.last_ts_ns = ts_ns;
        Ok(Some(Record {
            ts_ns,
            orig_len,
            link,
            data: &self.buf,
        }))
    }

    fn next_pcapng(&mut self) -> Result<Option<Record<'_>>, CaptureError> {
        loop {
            let start = self.offset;
            let mut head = [0u8; 8];
            let n = read_full(&mut self.input, &mut head)?;
            self.offset += n as u64;
            if n == 0 {
                self.done = true;
                if self.declared > 0 && self.usable == 0 {
                    return Err(CaptureError::NoUsableInterface {
                        link_types: self.unusable.clone(),
                    });
                }
                return Ok(None);
            }
            if n < 8 {
                self.done = true;
                return Err(CaptureError::Truncated { offset: start });
            }
            let endian = match &self.format {
                Format::Pcapng { endian, .. } => *endian,
                Format::Pcap { .. } => return Ok(None),
            };
            let block_type = endian.u32(&head[0..4]);
            if block_type == PCAPNG_SHB {
                // A new section, possibly in the other byte order.
                self.read_section_header(start, [head[4], head[5], head[6], head[7]])?;
                continue;
            }
            let total = endian.u32(&head[4..8]) as usize;
            if total < 12 || total % 4 != 0 {
                return Err(CaptureError::Corrupt {
                    offset: start,
                    problem: format!("block length {total}"),
                });
            }
            // Body plus the trailing copy of the length.
            self.fill(total - 8, start)?;
            let body_len = total - 12;
            match block_type {
                PCAPNG_IDB => self.add_interface(endian, body_len, start)?,
                PCAPNG_EPB | PCAPNG_OPB => {
                    if body_len < 20 {
                        return Err(CaptureError::Corrupt {
                            offset: start,
                            problem: "packet block too short".into(),
                        });
                    }
                    let b = &self.buf;
                    let iface = if block_type == PCAPNG_EPB {
                        endian.u32(&b[0..4]) as usize
                    } else {
                        usize::from(endian.u16(&b[0..2]))
                    };
                    let ts =
                        (u64::from(endian.u32(&b[4..8])) << 32) | u64::from(endian.u32(&b[8..12]));
                    let cap = endian.u32(&b[12..16]) as usize;
                    let orig_len = endian.u32(&b[16..20]);
                    if cap > body_len - 20 {
                        return Err(CaptureError::Corrupt {
                            offset: start,
                            problem: format!("captured length {cap} exceeds its block"),
                        });
                    }
                    let Some(ifc) = self.interface(iface) else {
                        return Err(CaptureError::Corrupt {
                            offset: start,
                            problem: format!("packet on undeclared interface {iface}"),
                        });
                    };
                    let Some(link) = ifc.link else {
                        self.skipped += 1;
                        continue;
                    };
                    let ts_ns = scale_ts(ts, ifc);
                    self.last_ts_ns = ts_ns;
                    return Ok(Some(Record {
                        ts_ns,
                        orig_len,
                        link,
                        data: &self.buf[20..20 + cap],
                    }));
                }
                PCAPNG_SPB => {
                    if body_len < 4 {
                        return Err(CaptureError::Corrupt {
                            offset: start,
                            problem: "simple packet block too short".into(),
                        });
                    }
                    let orig_len = endian.u32(&self.buf[0..4]);
                    let cap = (orig_len as usize).min(body_len - 4);
                    let Some(ifc) = self.interface(0) else {
                        return Err(CaptureError::Corrupt {
                            offset: start,
                            problem: "simple packet block before any interface".into(),
                        });
                    };
                    let Some(link) = ifc.link else {
                        self.skipped += 1;
                        continue;
                    };
                    // No timestamp of its own: it happened no earlier than the last one.
                    return Ok(Some(Record {
                        ts_ns: self.last_ts_ns,
                        orig_len,
                        link,
                        data: &self.buf[4..4 + cap],
                    }));
                }
                _ => continue,
            }
        }
    }

    fn interface(&self, index: usize) -> Option<Interface> {
        match &self.format {
            Format::Pcapng { interfaces, .. } => interfaces.get(index).copied(),
            Format::Pcap { .. } => None,
        }
    }

    fn add_interface(
        &mut self,
        endian: Endian,
        body_len: usize,
        start: u64,
    ) -> Result<(), CaptureError> {
        if body_len < 8 {
            return Err(CaptureError::Corrupt {
                offset: start,
                problem: "interface description too short".into(),
            });
        }
        let b = &self.buf[..body_len];
        let linktype = u32::from(endian.u16(&b[0..2]));
        let mut ifc = Interface {
            link: Link::from_linktype(linktype),
            units_per_sec: 1_000_000,
            offset_secs: 0,
        };
        let mut opts = &b[8..];
        while opts.len() >= 4 {
            let code = endian.u16(&opts[0..2]);
            let len = usize::from(endian.u16(&opts[2..4]));
            let padded = (len + 3) & !3;
            if opts.len() < 4 + len {
                break;
            }
            let value = &opts[4..4 + len];
            match (code, len) {
                (0, _) => break,
                (9, 1) => {
                    let v = value[0];
                    let exp = u32::from(v & 0x7f);
                    let units = if v & 0x80 == 0 {
                        10u64.checked_pow(exp)
                    } else {
                        2u64.checked_pow(exp)
                    };
                    ifc.units_per_sec =
                        units
                            .filter(|u| *u > 0)
                            .ok_or_else(|| CaptureError::Corrupt {
                                offset: start,
                                problem: format!("if_tsresol {v:#04x} out of range"),
                            })?;
                }
                (14, 8) => {
                    let hi = endian.u32(&value[0..4]);
                    let lo = endian.u32(&value[4..8]);
                    let raw = match endian {
                        Endian::Little => (u64::from(lo) << 32) | u64::from(hi),
                        Endian::Big => (u64::from(hi) << 32) | u64::from(lo),
                    };
                    ifc.offset_secs = raw as i64;
                }
                _ => {}
            }
            opts = opts.get(4 + padded..).unwrap_or(&[]);
        }
        if let Format::Pcapng { interfaces, .. } = &mut self.format {
            if interfaces.len() >= MAX_INTERFACES {
                return Err(CaptureError::Corrupt {
                    offset: start,
                    problem: format!("more than {MAX_INTERFACES} interfaces"),
                });
            }
            interfaces.push(ifc);
            self.declared += 1;
            if ifc.link.is_some() {
                self.usable += 1;
            } else if !self.unusable.contains(&linktype) && self.unusable.len() < UNUSABLE_MAX {
                self.unusable.push(linktype);
            }
        }
        Ok(())
    }
}

/// Converts a pcapng timestamp in interface units to Unix nanoseconds.
fn scale_ts(ts: u64, ifc: Interface) -> u64 {
    let ns = u128::from(ts) * 1_000_000_000 / u128::from(ifc.units_per_sec);
    let ns = i128::try_from(ns).unwrap_or(i128::MAX) + i128::from(ifc.offset_secs) * 1_000_000_000;
    u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> (Vec<(u64, Vec<u8>)>, Option<CaptureError>) {
        let mut r = match CaptureReader::new(bytes) {
            Ok(r) => r,
            Err(e) => return (vec![], Some(e)),
        };
        let mut out = vec![];
        loop {
            match r.next_packet() {
                Ok(Some(rec)) => out.push((rec.ts_ns, rec.data.to_vec())),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    /// Little-endian microsecond pcap with two Ethernet records: 3 bytes at
    /// 1564419705.390017 and 60 bytes at 1564419705.598430.
    fn pcap_le_micro() -> Vec<u8> {
        let mut b = Vec::new();
        for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 0x0004_0000, 1] {
            b.extend_from_slice(&word.to_le_bytes());
        }
        for (secs, micros, data) in [
            (1_564_419_705u32, 390_017u32, vec![1u8, 2, 3]),
            (1_564_419_705, 598_430, vec![4; 60]),
        ] {
            let len = data.len() as u32;
            for word in [secs, micros, len, len] {
                b.extend_from_slice(&word.to_le_bytes());
            }
            b.extend_from_slice(&data);
        }
        b
    }

    #[test]
    fn little_endian_microsecond_pcap() {
        let bytes = pcap_le_micro();
        assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let (recs, err) = read_all(&bytes);
        assert!(err.is_none());
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0], (1_564_419_705_390_017_000, vec![1, 2, 3]));
        assert_eq!(recs[1].1.len(), 60);
    }

    #[test]
    fn big_endian_nanosecond_pcap() {
        let mut b = vec![0xa1, 0xb2, 0x3c, 0x4d, 0, 2, 0, 4];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&10u32.to_be_bytes());
        b.extend_from_slice(&123_456_789u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&[0xaa, 0xbb]);
        let (recs, err) = read_all(&b);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(recs, vec![(10_123_456_789, vec![0xaa, 0xbb])]);
    }

    #[test]
    fn truncated_pcap_returns_complete_records_then_truncated() {
        let bytes = pcap_le_micro();
        let cut = &bytes[..bytes.len() - 10];
        let (recs, err) = read_all(cut);
        assert_eq!(recs.len(), 1);
        assert!(
            matches!(err, Some(CaptureError::Truncated { offset: 43 })),
            "{err:?}"
        );
        // Cut inside the second record's header.
        let (recs, err) = read_all(&bytes[..24 + 16 + 3 + 5]);
        assert_eq!(recs.len(), 1);
        assert!(matches!(err, Some(CaptureError::Truncated { .. })));
    }

    #[test]
    fn non_captures_are_refused() {
        assert!(matches!(
            read_all(b"").1,
            Some(CaptureError::NotACapture(_))
        ));
        assert!(matches!(
            read_all(b"hello, this is text").1,
            Some(CaptureError::NotACapture(_))
        ));
        let mut raw_ip = pcap_le_micro();
        raw_ip[20] = 101;
        let err = read_all(&raw_ip).1;
        assert!(
            matches!(err, Some(CaptureError::UnsupportedLinkType(101))),
            "{err:?}"
        );
        let shown = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(shown.contains("Linux cooked (113)"), "{shown}");
    }

    #[test]
    fn oversize_records_are_corrupt() {
        let mut b = pcap_le_micro();
        b[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_all(&b).1, Some(CaptureError::Corrupt { .. })));
    }

    /// Builds a pcapng block in the given byte order.
    fn block(big: bool, ty: u32, body: &[u8]) -> Vec<u8> {
        let u32b = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut body = body.to_vec();
        while body.len() % 4 != 0 {
            body.push(0);
        }
        let total = (body.len() + 12) as u32;
        let mut b = u32b(ty).to_vec();
        b.extend_from_slice(&u32b(total));
        b.extend_from_slice(&body);
        b.extend_from_slice(&u32b(total));
        b
    }

    fn pcapng(big: bool, tsresol: Option<u8>, ts: u64) -> Vec<u8> {
        let u16b = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32b = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut shb = u32b(PCAPNG_BOM).to_vec();
        shb.extend_from_slice(&u16b(1));
        shb.extend_from_slice(&u16b(0));
        shb.extend_from_slice(&[0xff; 8]);
        let mut out = block(big, PCAPNG_SHB, &shb);
        let mut idb = u16b(1).to_vec();
        idb.extend_from_slice(&u16b(0));
        idb.extend_from_slice(&u32b(65535));
        if let Some(r) = tsresol {
            idb.extend_from_slice(&u16b(9));
            idb.extend_from_slice(&u16b(1));
            idb.extend_from_slice(&[r, 0, 0, 0]);
        }
        idb.extend_from_slice(&[0; 4]); // opt_endofopt
        out.extend(block(big, PCAPNG_IDB, &idb));
        // A non-Ethernet interface (raw IP) whose packets are skipped.
        let mut idb2 = u16b(101).to_vec();
        idb2.extend_from_slice(&[0, 0]);
        idb2.extend_from_slice(&u32b(65535));
        out.extend(block(big, PCAPNG_IDB, &idb2));
        // A name resolution block, skipped.
        out.extend(block(big, 4, &[0; 4]));
        let epb = |iface: u32, ts: u64, data: &[u8]| {
            let mut e = u32b(iface).to_vec();
            e.extend_from_slice(&u32b((ts >> 32) as u32));
            e.extend_from_slice(&u32b(ts as u32));
            e.extend_from_slice(&u32b(data.len() as u32));
            e.extend_from_slice(&u32b(data.len() as u32));
            e.extend_from_slice(data);
            e
        };
        out.extend(block(big, PCAPNG_EPB, &epb(0, ts, &[7, 7, 7])));
        out.extend(block(big, PCAPNG_EPB, &epb(1, 1, &[9])));
        let mut spb = u32b(5).to_vec();
        spb.extend_from_slice(&[1, 2, 3, 4, 5]);
        out.extend(block(big, PCAPNG_SPB, &spb));
        out
    }

    #[test]
    fn pcapng_both_byte_orders() {
        for big in [false, true] {
            let bytes = pcapng(big, None, 1_500_000_000_123_456);
            let mut r = CaptureReader::new(&bytes[..]).unwrap();
            let a = r.next_packet().unwrap().unwrap();
            assert_eq!(a.ts_ns, 1_500_000_000_123_456_000);
            assert_eq!(a.ts_ms(), 1_500_000_000_123);
            assert_eq!(a.data, &[7, 7, 7]);
            let b = r.next_packet().unwrap().unwrap();
            assert_eq!(b.data, &[1, 2, 3, 4, 5]);
            assert_eq!(b.ts_ns, 1_500_000_000_123_456_000);
            assert!(r.next_packet().unwrap().is_none());
            assert_eq!(r.skipped(), 1);
        }
    }

    #[test]
    fn pcapng_tsresol_decimal_and_binary() {
        // 10^-9: the timestamp is already in nanoseconds.
        let bytes = pcapng(false, Some(9), 1_500_000_000_123_456);
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        assert_eq!(
            r.next_packet().unwrap().unwrap().ts_ns,
            1_500_000_000_123_456
        );
        // 2^-10: 1024 units per second.
        let bytes = pcapng(true, Some(0x80 | 10), 1_500_000_000 * 1024 + 512);
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        let ts = r.next_packet().unwrap().unwrap().ts_ns;
        assert_eq!(ts, 1_500_000_000_500_000_000);
    }

    #[test]
    fn truncated_pcapng() {
        let bytes = pcapng(false, None, 1_500_000_000_123_456);
        let (recs, err) = read_all(&bytes[..bytes.len() - 6]);
        assert_eq!(recs.len(), 1);
        assert!(
            matches!(err, Some(CaptureError::Truncated { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn linux_cooked_pcaps_are_read_with_their_link_type() {
        for (linktype, link) in [
            (113u8, Link::Cooked(CookedFormat::Sll)),
            (0x14, Link::Cooked(CookedFormat::Sll2)),
        ] {
            let mut b = pcap_le_micro();
            b[20] = linktype;
            if linktype == 0x14 {
                b[21] = 1; // 276 = 0x0114
            }
            let mut r = CaptureReader::new(&b[..]).unwrap();
            let rec = r.next_packet().unwrap().unwrap();
            assert_eq!((rec.link, rec.data), (link, &[1u8, 2, 3][..]));
        }
    }

    /// A pcapng with interfaces of the given link types, one 3-byte packet on each.
    fn pcapng_interfaces(linktypes: &[u16]) -> Vec<u8> {
        let mut shb = PCAPNG_BOM.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&[0xff; 8]);
        let mut out = block(false, PCAPNG_SHB, &shb);
        for lt in linktypes {
            let mut idb = lt.to_le_bytes().to_vec();
            idb.extend_from_slice(&[0, 0]);
            idb.extend_from_slice(&65535u32.to_le_bytes());
            out.extend(block(false, PCAPNG_IDB, &idb));
        }
        for i in 0..linktypes.len() as u32 {
            let mut e = i.to_le_bytes().to_vec();
            e.extend_from_slice(&[0; 8]);
            e.extend_from_slice(&3u32.to_le_bytes());
            e.extend_from_slice(&3u32.to_le_bytes());
            e.extend_from_slice(&[i as u8; 3]);
            out.extend(block(false, PCAPNG_EPB, &e));
        }
        out
    }

    #[test]
    fn pcapng_interfaces_each_have_their_own_link_type() {
        // Ethernet (LAN), PPP (a pppoe-wan), SLL2 and SLL: the PPP packet is skipped.
        let bytes = pcapng_interfaces(&[1, 9, 276, 113]);
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        let mut seen = vec![];
        while let Some(rec) = r.next_packet().unwrap() {
            seen.push((rec.link, rec.data[0]));
        }
        assert_eq!(
            seen,
            vec![
                (Link::Ethernet, 0),
                (Link::Cooked(CookedFormat::Sll2), 2),
                (Link::Cooked(CookedFormat::Sll), 3)
            ]
        );
        assert_eq!(r.skipped(), 1);
    }

    #[test]
    fn pcapng_with_no_usable_interface_is_an_error_at_its_end() {
        let bytes = pcapng_interfaces(&[9, 101, 9]);
        let (recs, err) = read_all(&bytes);
        assert!(recs.is_empty());
        match err {
            Some(CaptureError::NoUsableInterface { link_types }) => {
                assert_eq!(link_types, vec![9, 101])
            }
            other => panic!("{other:?}"),
        }
        // An empty section declares nothing: an empty capture, not an error.
        let (recs, err) = read_all(&pcapng_interfaces(&[]));
        assert!(recs.is_empty() && err.is_none(), "{err:?}");
    }

    #[test]
    fn arbitrary_prefixes_never_panic() {
        let mut all = pcap_le_micro();
        all.extend(pcapng(true, Some(6), 1));
        let ng = pcapng(false, Some(3), 1_500_000_000_123);
        for data in [&all[..], &ng[..]] {
            for len in 0..data.len() {
                let _ = read_all(&data[..len]);
            }
        }
    }
}
