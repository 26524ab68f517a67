//! NAT translations from the kernel's conntrack table over ctnetlink.
//!
//! One `NETLINK_NETFILTER` socket; per connection one `IPCTNL_MSG_CT_GET` request with the
//! original tuple (LAN address and port → mail server, TCP). The kernel answers each with
//! the whole entry (`IPCTNL_MSG_CT_NEW`) or an error (`ENOENT` when there is none yet). The
//! entry's reply tuple is what the server sends back to: its destination is the source the
//! server saw, the router's WAN address and the translated port. This works on kernels
//! without `/proc/net/nf_conntrack` (OpenWrt builds usually lack it).
//!
//! Requests go out as one batch ([`BATCH_MAX`] at most), each with its own sequence number,
//! and the replies are read until every request is answered or the socket's receive timeout
//! ([`RECV_TIMEOUT_MS`]) passes. [`decode`] reads the reply bytes (outside input: bounded,
//! never panics; fuzz target `conntrack_reply`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::NatQuery;

/// Most requests sent before their replies are read.
pub const BATCH_MAX: usize = 32;
/// How long one batch waits for the kernel's replies (it answers while the request is sent,
/// so this bounds only a kernel that does not answer).
pub const RECV_TIMEOUT_MS: i64 = 200;
/// Receive buffer: one datagram holds many replies of a few hundred bytes each.
const RECV_BUF: usize = 64 * 1024;

// Netlink and ctnetlink numbers (linux/netlink.h, linux/netfilter/nfnetlink*.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Nesting the decoder follows at most (a tuple is two levels deep).
const DEPTH_MAX: usize = 4;

/// The conntrack socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket could not be opened or bound (no `nf_conntrack_netlink`, or no
    /// `CAP_NET_ADMIN`).
    #[error("cannot open the conntrack netlink socket: {0}")]
    Open(#[source] io::Error),
    /// A request could not be sent.
    #[error("cannot send a conntrack request: {0}")]
    Send(#[source] io::Error),
    /// Reading the replies failed.
    #[error("cannot read conntrack replies: {0}")]
    Recv(#[source] io::Error),
}

/// The reply bytes are not netlink the decoder understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length field points outside the buffer or below its header.
    #[error("bad length at byte {0}")]
    Length(usize),
    /// An attribute the decoder needs has the wrong size.
    #[error("attribute {0} has the wrong size")]
    AttrSize(u16),
    /// Attributes nested deeper than any tuple.
    #[error("attributes nested too deep")]
    TooDeep,
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Layer-4 protocol number.
    pub proto: u8,
    /// Source address and port (port 0 for protocols without ports).
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

/// One reply message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A conntrack entry: its original and reply tuples.
    Entry {
        /// The request's sequence number.
        seq: u32,
        /// As the LAN device sent it.
        orig: Tuple,
        /// As the server answers: its destination is the translated source.
        reply: Tuple,
    },
    /// An error for the request (`errno`, positive; `ENOENT` when there is no entry).
    Error {
        /// The request's sequence number.
        seq: u32,
        /// The error number.
        errno: i32,
    },
}

impl Reply {
    /// The request's sequence number.
    pub fn seq(&self) -> u32 {
        match self {
            Reply::Entry { seq, .. } | Reply::Error { seq, .. } => *seq,
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Walks the attributes in `b`: `(type without flags, payload)` each.
fn attrs(b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at + NLA_HDRLEN > b.len() {
            return None;
        }
        let (Some(len), Some(kind)) = (u16_at(b, at), u16_at(b, at + 2)) else {
            return None;
        };
        let len = usize::from(len);
        if len < NLA_HDRLEN || at + len > b.len() {
            let bad = at;
            at = b.len();
            return Some(Err(DecodeError::Length(bad)));
        }
        let payload = &b[at + NLA_HDRLEN..at + len];
        at += align4(len);
        Some(Ok((kind & NLA_TYPE_MASK, payload)))
    })
}

fn ip_of(kind: u16, p: &[u8]) -> Result<IpAddr, DecodeError> {
    match p.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(p);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => Err(DecodeError::AttrSize(kind)),
    }
}

fn port_of(kind: u16, p: &[u8]) -> Result<u16, DecodeError> {
    match p {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(DecodeError::AttrSize(kind)),
    }
}

/// A tuple from the payload of `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY`; `None` when it lacks
/// addresses.
fn tuple(b: &[u8], depth: usize) -> Result<Option<Tuple>, DecodeError> {
    if depth > DEPTH_MAX {
        return Err(DecodeError::TooDeep);
    }
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, 0u8, 0u16, 0u16);
    for a in attrs(b) {
        let (kind, p) = a?;
        match kind {
            CTA_TUPLE_IP => {
                for a in attrs(p) {
                    let (kind, p) = a?;
                    match kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip_of(kind, p)?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip_of(kind, p)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attrs(p) {
                    let (kind, p) = a?;
                    match kind {
                        CTA_PROTO_NUM => proto = *p.first().ok_or(DecodeError::AttrSize(kind))?,
                        CTA_PROTO_SRC_PORT => sport = port_of(kind, p)?,
                        CTA_PROTO_DST_PORT => dport = port_of(kind, p)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(match (src, dst) {
        (Some(s), Some(d)) => Some(Tuple {
            proto,
            src: SocketAddr::new(s, sport),
            dst: SocketAddr::new(d, dport),
        }),
        _ => None,
    })
}

/// Reads every netlink message in one datagram from the conntrack socket, calling `each`
/// with each reply it understands (entries with both tuples, errors). Other messages
/// (`NLMSG_DONE`, other types) are skipped.
///
/// # Errors
/// [`DecodeError`] at the first malformed message; replies before it were already given.
pub fn decode(buf: &[u8], mut each: impl FnMut(Reply)) -> Result<(), DecodeError> {
    let mut at = 0usize;
    while at + NLMSG_HDRLEN <= buf.len() {
        let (Some(len), Some(kind), Some(seq)) =
            (u32_at(buf, at), u16_at(buf, at + 4), u32_at(buf, at + 8))
        else {
            return Err(DecodeError::Length(at));
        };
        let len = usize::try_from(len).map_err(|_| DecodeError::Length(at))?;
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            return Err(DecodeError::Length(at));
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|s| i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
                    .ok_or(DecodeError::Length(at))?;
                // 0 is an acknowledgement, not an answer to a GET.
                if code != 0 {
                    each(Reply::Error {
                        seq,
                        errno: code.saturating_neg(),
                    });
                }
            }
            NLMSG_DONE => {}
            k if k == (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW) => {
                let attrs_bytes = body.get(NFGENMSG_LEN..).ok_or(DecodeError::Length(at))?;
                let (mut orig, mut reply) = (None, None);
                for a in attrs(attrs_bytes) {
                    let (kind, p) = a?;
                    match kind {
                        CTA_TUPLE_ORIG => orig = tuple(p, 1)?,
                        CTA_TUPLE_REPLY => reply = tuple(p, 1)?,
                        _ => {}
                    }
                }
                if let (Some(orig), Some(reply)) = (orig, reply) {
                    each(Reply::Entry { seq, orig, reply });
                }
            }
            _ => {}
        }
        at += align4(len);
    }
    Ok(())
}

fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    // Attributes here are a few bytes; the length always fits.
    let len = (NLA_HDRLEN + payload.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
}

/// Opens a nested attribute; returns where its length goes, for [`end_nest`].
fn begin_nest(out: &mut Vec<u8>, kind: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nest(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u16;
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn ip_bytes(ip: IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// Appends the `IPCTNL_MSG_CT_GET` request for the TCP connection `client → server` with
/// sequence number `seq`. Mixed address families have no entry; the request is still
/// well-formed (the kernel answers an error).
pub fn encode_get(out: &mut Vec<u8>, seq: u32, client: SocketAddr, server: SocketAddr) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]); // length, filled below
    out.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET).to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    let v6 = client.is_ipv6();
    out.extend_from_slice(&[if v6 { AF_INET6 } else { AF_INET }, 0, 0, 0]);
    let orig = begin_nest(out, CTA_TUPLE_ORIG);
    let ip = begin_nest(out, CTA_TUPLE_IP);
    let (src, n) = ip_bytes(client.ip());
    put_attr(
        out,
        if v6 { CTA_IP_V6_SRC } else { CTA_IP_V4_SRC },
        &src[..n],
    );
    let (dst, n) = ip_bytes(server.ip());
    put_attr(
        out,
        if v6 { CTA_IP_V6_DST } else { CTA_IP_V4_DST },
        &dst[..n],
    );
    end_nest(out, ip);
    let proto = begin_nest(out, CTA_TUPLE_PROTO);
    put_attr(out, CTA_PROTO_NUM, &[IPPROTO_TCP]);
    put_attr(out, CTA_PROTO_SRC_PORT, &client.port().to_be_bytes());
    put_attr(out, CTA_PROTO_DST_PORT, &server.port().to_be_bytes());
    end_nest(out, proto);
    end_nest(out, orig);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// An open ctnetlink socket. See the module documentation.
#[derive(Debug)]
pub struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    send: Vec<u8>,
    recv: Vec<u8>,
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: `sockaddr_nl` is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa
}

impl Conntrack {
    /// Opens the socket in the calling thread's network namespace.
    ///
    /// # Errors
    /// [`ConntrackError::Open`].
    pub fn open() -> Result<Conntrack, ConntrackError> {
        // SAFETY: plain system call with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sa = kernel_addr();
        // SAFETY: `sa` is a valid `sockaddr_nl` for the duration of the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            // `as _`: the field type differs between libc targets (musl changes it).
            tv_usec: (RECV_TIMEOUT_MS * 1000) as _,
        };
        // SAFETY: `tv` is a valid `timeval` for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        Ok(Conntrack {
            fd,
            seq: 1,
            send: Vec::with_capacity(128),
            recv: vec![0u8; RECV_BUF],
        })
    }

    /// Looks up the first [`BATCH_MAX`] of `queries`, pushing `(id, translated source)` for
    /// each onto `out`: the address and port the server sees, or `None` when the kernel has
    /// no entry for it (yet) or did not answer in time.
    ///
    /// # Errors
    /// [`ConntrackError`] when the socket fails; the queries not answered then are left out
    /// of `out` (the caller asks again at their next retry).
    pub fn lookup(
        &mut self,
        queries: &[NatQuery],
        out: &mut Vec<(u64, Option<SocketAddr>)>,
    ) -> Result<(), ConntrackError> {
        let queries = &queries[..queries.len().min(BATCH_MAX)];
        if queries.is_empty() {
            return Ok(());
        }
        let base = self.seq;
        self.seq = self.seq.wrapping_add(BATCH_MAX as u32);
        let mut open = [false; BATCH_MAX];
        let sa = kernel_addr();
        for (i, q) in queries.iter().enumerate() {
            self.send.clear();
            encode_get(
                &mut self.send,
                base.wrapping_add(i as u32),
                q.client,
                q.server,
            );
            // SAFETY: `send` and `sa` are valid for the duration of the call.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    self.send.as_ptr().cast(),
                    self.send.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(ConntrackError::Send(io::Error::last_os_error()));
            }
            open[i] = true;
        }
        let mut waiting = queries.len();
        while waiting > 0 {
            // SAFETY: `recv` is a valid, writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.recv.as_mut_ptr().cast(),
                    self.recv.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(ConntrackError::Recv(err)),
                }
            }
            let n = usize::try_from(n).unwrap_or(0).min(self.recv.len());
            let mut answered = |seq: u32, wan: Option<SocketAddr>| {
                let i = seq.wrapping_sub(base) as usize;
                if let (Some(q), Some(slot)) = (queries.get(i), open.get_mut(i)) {
                    if *slot {
                        *slot = false;
                        waiting -= 1;
                        out.push((q.id, wan));
                    }
                }
            };
            let result = decode(&self.recv[..n], |r| match r {
                Reply::Entry { seq, orig, reply } => {
                    let i = seq.wrapping_sub(base) as usize;
                    // The entry must be the one asked about.
                    let matches = queries
                        .get(i)
                        .is_some_and(|q| orig.src == q.client && orig.dst == q.server);
                    answered(seq, matches.then_some(reply.dst));
                }
                Reply::Error { seq, .. } => answered(seq, None),
            });
            if let Err(err) = result {
                tracing::debug!(%err, "unreadable conntrack reply skipped");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A reply as the kernel writes it: header, nfgenmsg, both tuples and a status.
    fn entry(seq: u32, orig: (SocketAddr, SocketAddr), reply: (SocketAddr, SocketAddr)) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW).to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&[AF_INET, 0, 0, 0]);
        for (kind, (s, d)) in [(CTA_TUPLE_ORIG, orig), (CTA_TUPLE_REPLY, reply)] {
            let t = begin_nest(&mut out, kind);
            let ip = begin_nest(&mut out, CTA_TUPLE_IP);
            let (b, n) = ip_bytes(s.ip());
            put_attr(
                &mut out,
                if n == 4 { CTA_IP_V4_SRC } else { CTA_IP_V6_SRC },
                &b[..n],
            );
            let (b, n) = ip_bytes(d.ip());
            put_attr(
                &mut out,
                if n == 4 { CTA_IP_V4_DST } else { CTA_IP_V6_DST },
                &b[..n],
            );
            end_nest(&mut out, ip);
            let p = begin_nest(&mut out, CTA_TUPLE_PROTO);
            put_attr(&mut out, CTA_PROTO_NUM, &[IPPROTO_TCP]);
            put_attr(&mut out, CTA_PROTO_SRC_PORT, &s.port().to_be_bytes());
            put_attr(&mut out, CTA_PROTO_DST_PORT, &d.port().to_be_bytes());
            end_nest(&mut out, p);
            end_nest(&mut out, t);
        }
        put_attr(&mut out, 3, &0x1beu32.to_be_bytes()); // CTA_STATUS
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_ne_bytes());
        out
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&36u32.to_ne_bytes());
        out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(-errno).to_ne_bytes());
        out.extend_from_slice(&[0u8; 16]);
        out
    }

    fn all(buf: &[u8]) -> Result<Vec<Reply>, DecodeError> {
        let mut v = Vec::new();
        decode(buf, |r| v.push(r))?;
        Ok(v)
    }

    #[test]
    fn the_request_carries_the_original_tuple() {
        let mut out = Vec::new();
        encode_get(
            &mut out,
            7,
            sa("192.168.1.14:40123"),
            sa("198.51.100.25:25"),
        );
        // nlmsghdr: length, CT_GET of ctnetlink, a request, seq 7.
        assert_eq!(u32_at(&out, 0), Some(out.len() as u32));
        assert_eq!(u16_at(&out, 4), Some(0x0101));
        assert_eq!(u16_at(&out, 6), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&out, 8), Some(7));
        assert_eq!(out[16], AF_INET);
        // The tuple reads back with the reply decoder's own tuple reader.
        let (kind, p) = attrs(&out[20..]).next().unwrap().unwrap();
        assert_eq!(kind, CTA_TUPLE_ORIG);
        let t = tuple(p, 1).unwrap().unwrap();
        assert_eq!(t.src, sa("192.168.1.14:40123"));
        assert_eq!(t.dst, sa("198.51.100.25:25"));
        assert_eq!(t.proto, IPPROTO_TCP);
        // Fixed bytes of the IPv4 source attribute: len 8, type 1, 192.168.1.14.
        let hex: String = out[28..36].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&hex[8..], "c0a8010e");
    }

    #[test]
    fn an_entry_gives_the_translated_source_from_the_reply_tuple() {
        let mut buf = entry(
            9,
            (sa("192.168.1.14:40123"), sa("198.51.100.25:25")),
            (sa("198.51.100.25:25"), sa("100.64.7.2:61002")),
        );
        buf.extend(error(10, libc::ENOENT));
        let r = all(&buf).unwrap();
        assert_eq!(r.len(), 2);
        match r[0] {
            Reply::Entry { seq, orig, reply } => {
                assert_eq!(seq, 9);
                assert_eq!(orig.src, sa("192.168.1.14:40123"));
                assert_eq!(reply.dst, sa("100.64.7.2:61002"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r[1],
            Reply::Error {
                seq: 10,
                errno: libc::ENOENT
            }
        );
    }

    /// The seeds are replies of a little-endian kernel (netlink headers are in host byte
    /// order), so they are real replies only on a little-endian host; the tests above build
    /// their replies in this host's order and run everywhere.
    #[test]
    #[cfg(target_endian = "little")]
    fn the_fuzz_seeds_are_real_replies() {
        let batch = include_bytes!("../../fuzz/seeds/conntrack_reply/batch");
        let r = all(batch).unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(
            matches!(r[2], Reply::Entry { seq: 2, reply, .. } if reply.dst == sa("100.64.7.2:40777"))
        );
        let v6 = include_bytes!("../../fuzz/seeds/conntrack_reply/entry-v6");
        assert_eq!(all(v6).unwrap().len(), 1);
    }

    #[test]
    fn ipv6_entries_decode() {
        let buf = entry(
            1,
            (sa("[2001:db8::14]:40000"), sa("[2001:db8:1::25]:25")),
            (sa("[2001:db8:1::25]:25"), sa("[2001:db8::14]:40000")),
        );
        let r = all(&buf).unwrap();
        assert!(
            matches!(r[0], Reply::Entry { reply, .. } if reply.dst == sa("[2001:db8::14]:40000"))
        );
    }

    #[test]
    fn malformed_replies_are_errors_never_panics() {
        let good = entry(
            1,
            (sa("192.168.1.14:1"), sa("198.51.100.25:25")),
            (sa("198.51.100.25:25"), sa("100.64.7.2:2")),
        );
        // Every truncation and every single-byte corruption.
        for cut in 0..good.len() {
            let _ = all(&good[..cut]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = all(&b);
            }
        }
        // A message longer than the datagram.
        let mut b = good.clone();
        b[..4].copy_from_slice(&(good.len() as u32 + 4).to_ne_bytes());
        assert_eq!(all(&b), Err(DecodeError::Length(0)));
        // An address of the wrong size.
        let mut b = good.clone();
        // The IPv4 source attribute's length 8 → 7: payload of 3 bytes.
        let at = 28;
        assert_eq!(u16_at(&b, at), Some(8));
        b[at..at + 2].copy_from_slice(&7u16.to_ne_bytes());
        assert!(all(&b).is_err());
        // Short trailing bytes are ignored (no whole header).
        let mut b = good;
        b.extend_from_slice(&[1, 2, 3]);
        assert_eq!(all(&b).unwrap().len(), 1);
    }
}
