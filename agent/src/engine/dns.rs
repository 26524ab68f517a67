//! DNS and DHCP messages, parsed just far enough for the engine, without allocating.
//!
//! DNS: the question's type and name, and from answers (and the additional section) the MX
//! exchanges, CNAMEs and A/AAAA addresses. Names are never materialised: each is reduced to
//! a 64-bit FNV-1a hash of its lower-cased labels joined by dots, which is all that is
//! needed to connect "MX for example.com is mx1.example.com" with "mx1.example.com is
//! 192.0.2.25". Compression pointers are followed with a hop limit; at most
//! [`MAX_RECORDS`] records of each kind are kept.
//!
//! DHCP: the client's hardware address, message type, host name (option 12), requested
//! address (option 50) and, in server replies, the assigned address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Records of each kind kept from one DNS message.
pub const MAX_RECORDS: usize = 16;
const MAX_HOPS: usize = 16;
const MAX_NAME: usize = 255;

/// DNS record type MX.
pub const TYPE_MX: u16 = 15;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_CNAME: u16 = 5;

/// A DNS or DHCP message was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message ends inside a header, name or record.
    #[error("message cut short")]
    Short,
    /// A name is too long, has a bad label or loops through compression pointers.
    #[error("bad name")]
    BadName,
    /// Not a BOOTP/DHCP message.
    #[error("not DHCP")]
    NotDhcp,
}

/// The interesting parts of one DNS message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsSummary {
    /// A response (QR bit set).
    pub response: bool,
    /// Type of the first question.
    pub qtype: u16,
    /// Hash of the first question's name.
    pub qname: u64,
    /// MX exchanges (hashes).
    pub mx: [u64; MAX_RECORDS],
    /// How many of `mx` are valid.
    pub mx_len: usize,
    /// CNAMEs: (alias hash, target hash).
    pub cnames: [(u64, u64); MAX_RECORDS],
    /// How many of `cnames` are valid.
    pub cnames_len: usize,
    /// Addresses: (owner name hash, address).
    pub addrs: [(u64, Option<IpAddr>); MAX_RECORDS],
    /// How many of `addrs` are valid.
    pub addrs_len: usize,
}

impl DnsSummary {
    /// The MX exchange hashes.
    pub fn mx(&self) -> &[u64] {
        &self.mx[..self.mx_len]
    }
    /// The CNAME pairs.
    pub fn cnames(&self) -> &[(u64, u64)] {
        &self.cnames[..self.cnames_len]
    }
    /// The address records.
    pub fn addrs(&self) -> impl Iterator<Item = (u64, IpAddr)> + '_ {
        self.addrs[..self.addrs_len]
            .iter()
            .filter_map(|(h, a)| a.map(|a| (*h, a)))
    }
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ParseError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(ParseError::Short),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hash of a dotted name as [`read_name`] computes it (lower case, no trailing dot).
pub fn name_hash(name: &str) -> u64 {
    let mut h = FNV_OFFSET;
    for b in name.trim_end_matches('.').bytes() {
        h = (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME);
    }
    h
}

/// Reads a (possibly compressed) name at `at`; returns its hash and the offset after it.
fn read_name(msg: &[u8], mut at: usize) -> Result<(u64, usize), ParseError> {
    let mut h = FNV_OFFSET;
    let mut end = None;
    let mut hops = 0;
    let mut total = 0usize;
    let mut first = true;
    loop {
        let len = *msg.get(at).ok_or(ParseError::Short)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((h, end.unwrap_or(at + 1)));
                }
                let label = msg
                    .get(at + 1..at + 1 + usize::from(len))
                    .ok_or(ParseError::Short)?;
                total += usize::from(len) + 1;
                if total > MAX_NAME {
                    return Err(ParseError::BadName);
                }
                if !first {
                    h = (h ^ u64::from(b'.')).wrapping_mul(FNV_PRIME);
                }
                first = false;
                for b in label {
                    h = (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME);
                }
                at += 1 + usize::from(len);
            }
            0xc0 => {
                let lo = *msg.get(at + 1).ok_or(ParseError::Short)?;
                if end.is_none() {
                    end = Some(at + 2);
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(ParseError::BadName);
                }
                at = (usize::from(len & 0x3f) << 8) | usize::from(lo);
            }
            _ => return Err(ParseError::BadName),
        }
    }
}

/// Parses a DNS message (UDP payload).
///
/// # Errors
/// [`ParseError`] when the header, a name or a record is malformed.
pub fn parse_dns(msg: &[u8]) -> Result<DnsSummary, ParseError> {
    if msg.len() < 12 {
        return Err(ParseError::Short);
    }
    let mut s = DnsSummary {
        response: msg[2] & 0x80 != 0,
        ..DnsSummary::default()
    };
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let ns = u16_at(msg, 8)?;
    let ar = u16_at(msg, 10)?;
    let mut at = 12;
    for i in 0..qd {
        let (h, next) = read_name(msg, at)?;
        let qtype = u16_at(msg, next)?;
        if i == 0 {
            s.qname = h;
            s.qtype = qtype;
        }
        at = next + 4;
        if at > msg.len() {
            return Err(ParseError::Short);
        }
    }
    if !s.response {
        return Ok(s);
    }
    let records = u32::from(an) + u32::from(ns) + u32::from(ar);
    for i in 0..records {
        let (owner, next) = read_name(msg, at)?;
        let rtype = u16_at(msg, next)?;
        let rdlen = usize::from(u16_at(msg, next + 8)?);
        let rdata_at = next + 10;
        let rdata = msg
            .get(rdata_at..rdata_at + rdlen)
            .ok_or(ParseError::Short)?;
        at = rdata_at + rdlen;
        let authority = i >= u32::from(an) && i < u32::from(an) + u32::from(ns);
        if authority {
            continue;
        }
        match rtype {
            TYPE_MX if s.mx_len < MAX_RECORDS && rdlen >= 3 => {
                let (h, _) = read_name(msg, rdata_at + 2)?;
                s.mx[s.mx_len] = h;
                s.mx_len += 1;
            }
            TYPE_CNAME if s.cnames_len < MAX_RECORDS => {
                let (h, _) = read_name(msg, rdata_at)?;
                s.cnames[s.cnames_len] = (owner, h);
                s.cnames_len += 1;
            }
            TYPE_A if s.addrs_len < MAX_RECORDS && rdlen == 4 => {
                let ip = Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]);
                s.addrs[s.addrs_len] = (owner, Some(IpAddr::V4(ip)));
                s.addrs_len += 1;
            }
            TYPE_AAAA if s.addrs_len < MAX_RECORDS && rdlen == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(rdata);
                s.addrs[s.addrs_len] = (owner, Some(IpAddr::V6(Ipv6Addr::from(b))));
                s.addrs_len += 1;
            }
            _ => {}
        }
    }
    Ok(s)
}

/// The interesting parts of one DHCP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dhcp<'a> {
    /// 1 = request (client), 2 = reply (server).
    pub op: u8,
    /// The client's hardware address.
    pub chaddr: [u8; 6],
    /// Option 53, if present.
    pub msg_type: Option<u8>,
    /// Option 12.
    pub hostname: Option<&'a [u8]>,
    /// Option 50.
    pub requested: Option<Ipv4Addr>,
    /// Option 60, the vendor class identifier (`MSFT 5.0`, `android-dhcp-13`, a camera
    /// maker's string).
    pub vendor_class: Option<&'a [u8]>,
    /// Option 55, the parameter request list: its order is a fingerprint of the client's
    /// DHCP implementation.
    pub params: Option<&'a [u8]>,
    /// `yiaddr`: the address a server assigns.
    pub yiaddr: Ipv4Addr,
}

/// DHCPACK.
pub const DHCP_ACK: u8 = 5;

/// Parses a BOOTP/DHCP message (UDP payload) of an Ethernet client.
///
/// # Errors
/// [`ParseError::NotDhcp`] without the DHCP magic cookie or with a non-Ethernet hardware
/// type, [`ParseError::Short`] when options run past the end.
pub fn parse_dhcp(msg: &[u8]) -> Result<Dhcp<'_>, ParseError> {
    if msg.len() < 240 || msg[236..240] != [99, 130, 83, 99] || msg[1] != 1 || msg[2] != 6 {
        return Err(ParseError::NotDhcp);
    }
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&msg[28..34]);
    let mut d = Dhcp {
        op: msg[0],
        chaddr,
        msg_type: None,
        hostname: None,
        requested: None,
        vendor_class: None,
        params: None,
        yiaddr: Ipv4Addr::new(msg[16], msg[17], msg[18], msg[19]),
    };
    let mut at = 240;
    while at < msg.len() {
        let code = msg[at];
        if code == 0 {
            at += 1;
            continue;
        }
        if code == 255 {
            break;
        }
        let len = usize::from(*msg.get(at + 1).ok_or(ParseError::Short)?);
        let val = msg.get(at + 2..at + 2 + len).ok_or(ParseError::Short)?;
        match (code, len) {
            (53, 1) => d.msg_type = Some(val[0]),
            (12, 1..) => d.hostname = Some(val),
            (50, 4) => d.requested = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
            (60, 1..) => d.vendor_class = Some(val),
            (55, 1..) => d.params = Some(val),
            _ => {}
        }
        at += 2 + len;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// MX query for example.com and a response with one MX (mx1.example.com, compressed)
    /// plus its A record in the additional section.
    const MX_RESPONSE: &str = "
        1234 8180 0001 0001 0000 0001
        07 6578616d706c65 03 636f6d 00 000f 0001
        c00c 000f 0001 00000e10 0008 000a 03 6d7831 c00c
        c02b 0001 0001 00000e10 0004 c0000219";

    #[test]
    fn mx_answer_and_glue() {
        let msg = hex(MX_RESPONSE);
        let s = parse_dns(&msg).unwrap();
        assert!(s.response);
        assert_eq!(s.qtype, TYPE_MX);
        assert_eq!(s.qname, name_hash("example.com"));
        assert_eq!(s.mx(), &[name_hash("MX1.example.com.")]);
        let addrs: Vec<_> = s.addrs().collect();
        assert_eq!(
            addrs,
            vec![(name_hash("mx1.example.com"), "192.0.2.25".parse().unwrap())]
        );
    }

    #[test]
    fn query_only() {
        let msg = hex("abcd 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 000f 0001");
        let s = parse_dns(&msg).unwrap();
        assert!(!s.response);
        assert_eq!(s.qtype, TYPE_MX);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let msg = hex(MX_RESPONSE);
        for len in 0..msg.len() {
            assert!(parse_dns(&msg[..len]).is_err() || len >= 12, "{len}");
        }
        // A compression pointer pointing at itself.
        let looped = hex("0000 8180 0001 0000 0000 0000 c00c 000f 0001");
        assert_eq!(parse_dns(&looped), Err(ParseError::BadName));
        // A reserved label type.
        let bad = hex("0000 0100 0001 0000 0000 0000 40 00 000f 0001");
        assert_eq!(parse_dns(&bad), Err(ParseError::BadName));
    }

    fn dhcp_request() -> Vec<u8> {
        let mut m = vec![0u8; 240];
        m[0] = 1;
        m[1] = 1;
        m[2] = 6;
        m[28..34].copy_from_slice(&[0x02, 0x11, 0x22, 0x33, 0x44, 0x05]);
        m[236..240].copy_from_slice(&[99, 130, 83, 99]);
        m.extend_from_slice(&[53, 1, 3, 50, 4, 192, 168, 1, 14, 12, 6]);
        m.extend_from_slice(b"laptop");
        m.push(255);
        m
    }

    #[test]
    fn dhcp_request_with_hostname() {
        let m = dhcp_request();
        let d = parse_dhcp(&m).unwrap();
        assert_eq!(d.op, 1);
        assert_eq!(d.chaddr, [0x02, 0x11, 0x22, 0x33, 0x44, 0x05]);
        assert_eq!(d.msg_type, Some(3));
        assert_eq!(d.hostname, Some(&b"laptop"[..]));
        assert_eq!(d.requested, Some(Ipv4Addr::new(192, 168, 1, 14)));
        assert_eq!(parse_dhcp(&m[..m.len() - 3]), Err(ParseError::Short));
        assert_eq!(parse_dhcp(&m[..200]), Err(ParseError::NotDhcp));
    }

    #[test]
    fn dhcp_vendor_class_and_parameter_list() {
        let mut m = dhcp_request();
        m.pop();
        m.extend_from_slice(&[60, 8]);
        m.extend_from_slice(b"MSFT 5.0");
        m.extend_from_slice(&[55, 4, 1, 3, 6, 15, 255]);
        let d = parse_dhcp(&m).unwrap();
        assert_eq!(d.vendor_class, Some(&b"MSFT 5.0"[..]));
        assert_eq!(d.params, Some(&[1u8, 3, 6, 15][..]));
        assert_eq!(d.hostname, Some(&b"laptop"[..]));
        // A list running past the end is malformed, not read beyond the message.
        let cut = m.len() - 3;
        assert_eq!(parse_dhcp(&m[..cut]), Err(ParseError::Short));
    }
}
