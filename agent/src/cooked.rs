//! Linux "cooked" captures (`tcpdump -i any`) as the Ethernet frames the engine reads.
//!
//! A capture on Linux's `any` device has no Ethernet header: each packet carries a
//! `LINKTYPE_LINUX_SLL` (16 bytes) or `LINKTYPE_LINUX_SLL2` (20 bytes) header instead, with
//! the packet type (sent to us, broadcast, multicast, to another host, or sent by us), the
//! ARP hardware type of the interface, *one* link-layer address (the sender's for packets
//! received, this host's own for packets sent) and the protocol (an EtherType on
//! Ethernet-like interfaces). SLL2 adds the interface index. See
//! <https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html> and `..._SLL2.html`.
//!
//! # What `-i any` on a router records, and what the engine is given
//! The engine keys devices by LAN MAC and reads each frame as the LAN saw it. On a router
//! the same conversation is recorded several times:
//! - on the LAN: a device's packets arrive with the device's MAC as the address and type
//!   "host" (to the router) or "otherhost"/"broadcast"/"multicast"; what the router sends to
//!   the device (server replies, its own DNS and DHCP answers) has type "outgoing" and the
//!   router's own MAC as the address; the device's MAC is not in the record;
//! - once more per bridge port (`wlan0` and `br-lan`) or VLAN device, byte for byte the same;
//! - on the WAN after NAT: the device's packets leave as "outgoing" from the router's WAN
//!   address, and the replies arrive as "host" for the WAN address;
//! - plus the router's own traffic (its DNS forwarder asking upstream) and loopback.
//!
//! [`CookedView`] turns this into the frames an Ethernet capture of the LAN would hold,
//! by the direction each packet has on the LAN:
//! - **From a device** (a client segment to a mail port, a DNS query, a DHCP request, and
//!   anything else that is not a server's reply): only packets the router *received* are
//!   used, with the SLL address as the Ethernet source. Copies the router *sent* are its
//!   own traffic, NAT'd copies on the WAN or bridged copies leaving another port: skipped
//!   and counted in [`CookedStats::sent_by_router`], so they neither count twice nor make
//!   a device of the router's WAN MAC. Received ones from a public IPv4 source are from the
//!   internet (a scan of the WAN address, a connection to a forwarded port before DNAT):
//!   no device on a NAT'd LAN sends from a public IPv4 address, so they are skipped too
//!   ([`CookedStats::from_internet`]).
//! - **To a device** (a reply from a mail port, a DNS answer, a DHCP reply): only packets
//!   the router *sent* are used. Their Ethernet destination, which the record lacks, is the
//!   MAC that was last seen sending from the destination IP address (learned from received
//!   packets; [`LEARNED_MAX`] addresses, the longest unseen forgotten first). The engine
//!   follows TCP sessions by address and port, so a 5xx reply reaches its session even
//!   when the address was never learned; DNS answers are credited by MAC, so an MX answer
//!   counts only for a device that has sent something before. Received copies (the WAN
//!   side, before NAT is undone) are skipped ([`CookedStats::received_replies`]).
//! - A packet seen again within [`DUPLICATE_WINDOW_NS`] with the same direction and the
//!   same bytes from the IP header on (VLAN tags aside) is the same packet on another
//!   interface: skipped ([`CookedStats::duplicates`]).
//! - IPv6 is not translated, so the one case left is a connection *from* the internet to a
//!   LAN host's mail port over IPv6: its WAN-side copy is a received packet from a public
//!   address that the rules above cannot tell from a device's (as in an Ethernet capture of
//!   the LAN, where it comes from the router's MAC). Policy's allowlist covers such hosts.
//! - Interfaces that are not Ethernet-like (loopback, PPP, tunnels, CAN, netlink) and
//!   frames that are not Ethernet II (802.2 LLC) carry no LAN device's frames: skipped
//!   ([`CookedStats::not_ethernet`]). A header cut short or inconsistent is
//!   [`CookedStats::malformed`].
//!
//! One working buffer is reused for every frame; the tables are fixed-size.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use serde::Serialize;
use smtpguard_protocol::MacAddr;

use crate::packet::{self, Transport};
use crate::ports::MailPorts;

/// Length of a `LINKTYPE_LINUX_SLL` header.
pub const SLL_HEADER_LEN: usize = 16;
/// Length of a `LINKTYPE_LINUX_SLL2` header.
pub const SLL2_HEADER_LEN: usize = 20;
/// `ARPHRD_ETHER`: Ethernet and everything Linux presents as Ethernet (Wi-Fi in managed or
/// AP mode, bridges, VLAN devices, veth).
pub const ARPHRD_ETHER: u16 = 1;
/// IP addresses whose sending MAC is remembered; when full, the one unseen longest goes.
pub const LEARNED_MAX: usize = 1024;
/// Recent packets remembered to recognise the same packet captured on another interface.
pub const DUPLICATES_MAX: usize = 32;
/// How close in time two captures of one packet are (a bridge port and the bridge see it
/// within microseconds; a TCP retransmission comes 200 ms or more later).
pub const DUPLICATE_WINDOW_NS: u64 = 10_000_000;
/// Bytes from the IP header on that identify a packet for duplicate detection.
const DUPLICATE_KEY_BYTES: usize = 256;
/// Ethernet destination when the record does not say and nothing was learned: the
/// interface's own (unknown) address. All zeros is never a device's source.
const UNKNOWN_MAC: MacAddr = MacAddr([0; 6]);

/// The Linux cooked header formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookedFormat {
    /// `LINKTYPE_LINUX_SLL` (113).
    Sll,
    /// `LINKTYPE_LINUX_SLL2` (276).
    Sll2,
}

/// `sll_pkttype`: how the packet met the capturing host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Sent to this host (`PACKET_HOST`).
    Host,
    /// Link-layer broadcast (`PACKET_BROADCAST`).
    Broadcast,
    /// Link-layer multicast (`PACKET_MULTICAST`).
    Multicast,
    /// Sent to another host, seen in promiscuous mode or by a bridge (`PACKET_OTHERHOST`).
    OtherHost,
    /// Sent by this host (`PACKET_OUTGOING`).
    Outgoing,
}

impl PacketType {
    fn from_code(code: u16) -> Option<PacketType> {
        Some(match code {
            0 => PacketType::Host,
            1 => PacketType::Broadcast,
            2 => PacketType::Multicast,
            3 => PacketType::OtherHost,
            4 => PacketType::Outgoing,
            _ => return None,
        })
    }
}

/// A cooked header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookedError {
    /// Fewer bytes than the header needs.
    #[error("cooked header cut short: {len} of {need} bytes")]
    Short {
        /// Bytes present.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// A packet type Linux does not define (`PACKET_LOOPBACK`, `PACKET_USER`, ... or
    /// garbage).
    #[error("cooked header with unknown packet type {0}")]
    PacketType(u16),
    /// The link-layer address length exceeds the 8 bytes of the field.
    #[error("cooked header with link-layer address length {0} (at most 8)")]
    AddressLength(u16),
}

/// A Linux cooked header, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookedHeader {
    /// Direction of the packet.
    pub packet_type: PacketType,
    /// ARP hardware type of the interface (`ARPHRD_*`).
    pub hatype: u16,
    /// Link-layer address: the sender's when received, this host's when sent.
    pub addr: [u8; 8],
    /// Valid bytes of `addr`.
    pub addr_len: u8,
    /// Protocol: an EtherType on Ethernet-like interfaces.
    pub protocol: u16,
    /// Interface index (SLL2 only).
    pub ifindex: Option<u32>,
}

impl CookedHeader {
    /// The address as an Ethernet MAC, when the interface is Ethernet-like.
    pub fn mac(&self) -> Option<MacAddr> {
        if self.hatype != ARPHRD_ETHER || self.addr_len != 6 {
            return None;
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.addr[..6]);
        Some(MacAddr(m))
    }
}

/// Reads a cooked header; returns it and the packet after it.
///
/// # Errors
/// [`CookedError`] for a header cut short, an unknown packet type or an address length
/// over 8.
pub fn parse(format: CookedFormat, data: &[u8]) -> Result<(CookedHeader, &[u8]), CookedError> {
    let be16 = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let need = match format {
        CookedFormat::Sll => SLL_HEADER_LEN,
        CookedFormat::Sll2 => SLL2_HEADER_LEN,
    };
    if data.len() < need {
        return Err(CookedError::Short {
            len: data.len(),
            need,
        });
    }
    let (ptype, hatype, addr_len, addr_at, protocol, ifindex) = match format {
        CookedFormat::Sll => (be16(0), be16(2), be16(4), 6, be16(14), None),
        CookedFormat::Sll2 => (
            u16::from(data[10]),
            be16(8),
            u16::from(data[11]),
            12,
            be16(0),
            Some(u32::from_be_bytes([data[4], data[5], data[6], data[7]])),
        ),
    };
    let packet_type = PacketType::from_code(ptype).ok_or(CookedError::PacketType(ptype))?;
    if addr_len > 8 {
        return Err(CookedError::AddressLength(addr_len));
    }
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&data[addr_at..addr_at + 8]);
    Ok((
        CookedHeader {
            packet_type,
            hatype,
            addr,
            addr_len: addr_len as u8,
            protocol,
            ifindex,
        },
        &data[need..],
    ))
}

/// What happened to the cooked records of a replay (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CookedStats {
    /// Cooked records read.
    pub records: u64,
    /// Given to the engine as Ethernet frames.
    pub to_engine: u64,
    /// Sent by the router and not a reply towards a device: its own traffic, NAT'd copies
    /// on the WAN, bridged copies leaving another port.
    pub sent_by_router: u64,
    /// Replies received by the router: the WAN-side copy of what it then sends to the
    /// device.
    pub received_replies: u64,
    /// Received from a public IPv4 address and not a reply: the internet, not a LAN device.
    pub from_internet: u64,
    /// The same packet again on another interface.
    pub duplicates: u64,
    /// From an interface or protocol that is not Ethernet II (loopback, PPP, tunnels, LLC).
    pub not_ethernet: u64,
    /// Cooked header cut short or inconsistent.
    pub malformed: u64,
    /// Replies towards a device whose MAC was not known (given to the engine all the same).
    pub unresolved: u64,
}

/// Direction of a packet in the conversation, by its ports (as the engine reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A server's reply or a DHCP server's answer: towards a device.
    ToDevice,
    /// Anything else: from a device (or not something the engine reads).
    FromDevice,
}

/// Turns cooked records into the Ethernet frames of the LAN (see the module documentation).
pub struct CookedView {
    mail_ports: MailPorts,
    frame: Vec<u8>,
    /// IP address → (MAC last seen sending from it, when in capture ns).
    learned: HashMap<IpAddr, (MacAddr, u64)>,
    /// Recent packets: (key, capture ns), a ring.
    recent: [(u64, u64); DUPLICATES_MAX],
    recent_next: usize,
    stats: CookedStats,
}

impl CookedView {
    /// A view for an engine that reads `mail_ports` as mail.
    pub fn new(mail_ports: MailPorts) -> CookedView {
        CookedView {
            mail_ports,
            frame: Vec::with_capacity(2048),
            learned: HashMap::with_capacity(64),
            recent: [(0, 0); DUPLICATES_MAX],
            recent_next: 0,
            stats: CookedStats::default(),
        }
    }

    /// What happened to the records so far.
    pub fn stats(&self) -> CookedStats {
        self.stats
    }

    /// The Ethernet frame to give the engine for one cooked record captured at `ts_ns`, or
    /// `None` when the record is skipped (and counted in [`CookedView::stats`]).
    pub fn frame(&mut self, ts_ns: u64, format: CookedFormat, data: &[u8]) -> Option<&[u8]> {
        self.stats.records += 1;
        let (hdr, payload) = match parse(format, data) {
            Ok(x) => x,
            Err(_) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        let Some(addr) = hdr.mac() else {
            self.stats.not_ethernet += 1;
            return None;
        };
        if hdr.protocol < 0x0600 {
            // A length or one of Linux's pseudo-protocols (802.2 LLC, 802.3 raw, CAN).
            self.stats.not_ethernet += 1;
            return None;
        }
        let sent = hdr.packet_type == PacketType::Outgoing;
        if self.duplicate(ts_ns, sent, hdr.protocol, payload) {
            self.stats.duplicates += 1;
            return None;
        }
        // Build with the destination unknown, decode, then decide.
        self.frame.clear();
        self.frame.extend_from_slice(&UNKNOWN_MAC.0);
        self.frame.extend_from_slice(&addr.0);
        self.frame.extend_from_slice(&hdr.protocol.to_be_bytes());
        self.frame.extend_from_slice(payload);
        let ips = match packet::decode(&self.frame) {
            Ok(Some(p)) => Some((p.src_ip, p.dst_ip, self.role(&p.transport))),
            // Not IP, or IP the engine will count as malformed: it decides.
            Ok(None) | Err(_) => None,
        };
        let dst = match (ips, hdr.packet_type) {
            (None, PacketType::Outgoing) => {
                self.stats.sent_by_router += 1;
                return None;
            }
            (None, t) => link_destination(t, None),
            (Some((_, _, Role::FromDevice)), PacketType::Outgoing) => {
                self.stats.sent_by_router += 1;
                return None;
            }
            (Some((_, dst_ip, Role::ToDevice)), PacketType::Outgoing) => {
                match self.learned.get(&dst_ip) {
                    Some((mac, _)) => *mac,
                    None => {
                        self.stats.unresolved += 1;
                        UNKNOWN_MAC
                    }
                }
            }
            (Some((_, _, Role::ToDevice)), _) => {
                self.stats.received_replies += 1;
                return None;
            }
            (Some((src_ip, dst_ip, Role::FromDevice)), t) => {
                if is_public_v4(src_ip) {
                    self.stats.from_internet += 1;
                    return None;
                }
                if !addr.is_multicast() && addr != UNKNOWN_MAC {
                    self.learn(src_ip, addr, ts_ns);
                }
                match self.learned.get(&dst_ip) {
                    Some((mac, _)) if t == PacketType::OtherHost => *mac,
                    _ => link_destination(t, Some(dst_ip)),
                }
            }
        };
        self.frame[..6].copy_from_slice(&dst.0);
        self.stats.to_engine += 1;
        Some(&self.frame)
    }

    fn role(&self, t: &Transport<'_>) -> Role {
        match t {
            Transport::Tcp(t)
                if !self.mail_ports.contains(t.dst_port)
                    && self.mail_ports.contains(t.src_port) =>
            {
                Role::ToDevice
            }
            Transport::Udp(u) if u.dst_port != 53 && u.src_port == 53 => Role::ToDevice,
            Transport::Udp(u) if (u.src_port, u.dst_port) == (67, 68) => Role::ToDevice,
            _ => Role::FromDevice,
        }
    }

    fn learn(&mut self, ip: IpAddr, mac: MacAddr, ts_ns: u64) {
        if ip.is_unspecified() {
            return;
        }
        if self.learned.len() >= LEARNED_MAX && !self.learned.contains_key(&ip) {
            let oldest = self
                .learned
                .iter()
                .min_by_key(|(ip, (_, at))| (*at, **ip))
                .map(|(ip, _)| *ip);
            if let Some(o) = oldest {
                self.learned.remove(&o);
            }
        }
        self.learned.insert(ip, (mac, ts_ns));
    }

    /// Whether the same packet, in the same direction, was captured moments ago (and
    /// remembers this one).
    fn duplicate(&mut self, ts_ns: u64, sent: bool, protocol: u16, payload: &[u8]) -> bool {
        // VLAN tags differ between `eth0` and `eth0.1`; the packet inside does not.
        let (mut protocol, mut inner) = (protocol, payload);
        for _ in 0..2 {
            if !matches!(protocol, 0x8100 | 0x88a8) || inner.len() < 4 {
                break;
            }
            protocol = u16::from_be_bytes([inner[2], inner[3]]);
            inner = &inner[4..];
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sent.hash(&mut h);
        protocol.hash(&mut h);
        inner.len().hash(&mut h);
        inner[..inner.len().min(DUPLICATE_KEY_BYTES)].hash(&mut h);
        let key = h.finish();
        let seen = self
            .recent
            .iter()
            .any(|&(k, at)| k == key && at != 0 && ts_ns.abs_diff(at) <= DUPLICATE_WINDOW_NS);
        if !seen {
            self.recent[self.recent_next] = (key, ts_ns.max(1));
            self.recent_next = (self.recent_next + 1) % DUPLICATES_MAX;
        }
        seen
    }
}

/// The Ethernet destination a received frame of type `t` had, as far as the type tells.
fn link_destination(t: PacketType, dst_ip: Option<IpAddr>) -> MacAddr {
    match (t, dst_ip) {
        (PacketType::Broadcast, _) => MacAddr([0xff; 6]),
        (PacketType::Multicast, Some(IpAddr::V4(v4))) => {
            let o = v4.octets();
            MacAddr([0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]])
        }
        (PacketType::Multicast, Some(IpAddr::V6(v6))) => {
            let o = v6.octets();
            MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
        }
        // Some multicast group: the engine only needs to know it is not a device.
        (PacketType::Multicast, None) => MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
        _ => UNKNOWN_MAC,
    }
}

/// A public IPv4 address: not private (RFC 1918), shared (RFC 6598), link-local, loopback,
/// multicast, broadcast or unspecified.
fn is_public_v4(ip: IpAddr) -> bool {
    let IpAddr::V4(v4) = ip else {
        return false;
    };
    let o = v4.octets();
    !(v4.is_private()
        || v4.is_link_local()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || v4.is_loopback()
        || v4.is_unspecified()
        || v4.is_multicast()
        || v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x05];
    const ROUTER_LAN: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
    const ROUTER_WAN: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
    const UPSTREAM: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 9];
    const DEV_IP: [u8; 4] = [192, 168, 1, 14];
    const WAN_IP: [u8; 4] = [203, 0, 113, 2];
    const MX_IP: [u8; 4] = [198, 51, 100, 25];
    const ROUTER_IP: [u8; 4] = [192, 168, 1, 1];

    /// An IPv4 packet (checksums left zero: the engine does not check them).
    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, transport: &[u8]) -> Vec<u8> {
        let total = (20 + transport.len()) as u16;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(transport);
        p
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut t = sport.to_be_bytes().to_vec();
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&1000u32.to_be_bytes());
        t.extend_from_slice(&0u32.to_be_bytes());
        t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(data);
        ipv4(src, dst, 6, &t)
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = sport.to_be_bytes().to_vec();
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        ipv4(src, dst, 17, &u)
    }

    /// An SLL (v1) record.
    fn sll(ptype: u16, hatype: u16, addr: &[u8], proto: u16, packet: &[u8]) -> Vec<u8> {
        let mut h = ptype.to_be_bytes().to_vec();
        h.extend_from_slice(&hatype.to_be_bytes());
        h.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        let mut a = [0u8; 8];
        a[..addr.len()].copy_from_slice(addr);
        h.extend_from_slice(&a);
        h.extend_from_slice(&proto.to_be_bytes());
        h.extend_from_slice(packet);
        h
    }

    /// An SLL2 record.
    fn sll2(ptype: u8, ifindex: u32, addr: &[u8], proto: u16, packet: &[u8]) -> Vec<u8> {
        let mut h = proto.to_be_bytes().to_vec();
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&ifindex.to_be_bytes());
        h.extend_from_slice(&ARPHRD_ETHER.to_be_bytes());
        h.push(ptype);
        h.push(addr.len() as u8);
        let mut a = [0u8; 8];
        a[..addr.len()].copy_from_slice(addr);
        h.extend_from_slice(&a);
        h.extend_from_slice(packet);
        h
    }

    const HOST: u16 = 0;
    const OUTGOING: u16 = 4;
    const IPV4: u16 = 0x0800;

    fn view() -> CookedView {
        CookedView::new(MailPorts::default())
    }

    #[test]
    fn sll_and_sll2_headers_read_field_by_field() {
        // tcpdump -i any, SLL: a frame received on an Ethernet interface from 02:11:22:33:44:05.
        let rec = sll(HOST, ARPHRD_ETHER, &DEVICE, IPV4, &[0x45]);
        assert_eq!(
            &rec[..16],
            &[0, 0, 0, 1, 0, 6, 2, 0x11, 0x22, 0x33, 0x44, 5, 0, 0, 8, 0]
        );
        let (h, rest) = parse(CookedFormat::Sll, &rec).unwrap();
        assert_eq!(h.packet_type, PacketType::Host);
        assert_eq!(h.mac(), Some(MacAddr(DEVICE)));
        assert_eq!((h.protocol, h.ifindex), (IPV4, None));
        assert_eq!(rest, &[0x45]);

        let rec = sll2(4, 7, &ROUTER_WAN, IPV4, &[0x45, 0]);
        assert_eq!(
            &rec[..20],
            &[8, 0, 0, 0, 0, 0, 0, 7, 0, 1, 4, 6, 2, 0xaa, 0, 0, 0, 2, 0, 0]
        );
        let (h, rest) = parse(CookedFormat::Sll2, &rec).unwrap();
        assert_eq!(h.packet_type, PacketType::Outgoing);
        assert_eq!(h.mac(), Some(MacAddr(ROUTER_WAN)));
        assert_eq!((h.protocol, h.ifindex), (IPV4, Some(7)));
        assert_eq!(rest, &[0x45, 0]);

        // Loopback: ARPHRD_LOOPBACK, six zero bytes of address, no Ethernet MAC.
        let rec = sll(HOST, 772, &[0; 6], IPV4, &[]);
        assert_eq!(parse(CookedFormat::Sll, &rec).unwrap().0.mac(), None);
    }

    #[test]
    fn short_and_garbage_headers_are_errors_and_counted() {
        let rec = sll(HOST, ARPHRD_ETHER, &DEVICE, IPV4, &[]);
        for len in 0..SLL_HEADER_LEN {
            assert_eq!(
                parse(CookedFormat::Sll, &rec[..len]),
                Err(CookedError::Short { len, need: 16 })
            );
        }
        let rec2 = sll2(0, 1, &DEVICE, IPV4, &[]);
        assert!(parse(CookedFormat::Sll2, &rec2[..19]).is_err());
        assert_eq!(
            parse(CookedFormat::Sll, &sll(9, ARPHRD_ETHER, &DEVICE, IPV4, &[])),
            Err(CookedError::PacketType(9))
        );
        let mut long_addr = rec.clone();
        long_addr[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            parse(CookedFormat::Sll, &long_addr),
            Err(CookedError::AddressLength(9))
        );
        let mut v = view();
        assert!(v.frame(1, CookedFormat::Sll, &rec[..10]).is_none());
        assert!(v.frame(2, CookedFormat::Sll2, &long_addr).is_none());
        assert!(v.frame(3, CookedFormat::Sll, &long_addr).is_none());
        assert_eq!(v.stats().malformed, 3);
        assert_eq!(v.stats().records, 3);
        assert_eq!(v.stats().to_engine, 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut v = view();
        let syn = sll(
            HOST,
            ARPHRD_ETHER,
            &DEVICE,
            IPV4,
            &tcp(DEV_IP, MX_IP, 40000, 25, 2, &[]),
        );
        let mut seed = 0x2545_f491_u32;
        for len in 0..syn.len() {
            for format in [CookedFormat::Sll, CookedFormat::Sll2] {
                let _ = v.frame(len as u64, format, &syn[..len]);
                let mut junk = syn[..len].to_vec();
                for b in &mut junk {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    *b ^= seed as u8;
                }
                let _ = v.frame(len as u64, format, &junk);
            }
        }
        let s = v.stats();
        assert_eq!(
            s.records,
            s.to_engine
                + s.sent_by_router
                + s.received_replies
                + s.from_internet
                + s.duplicates
                + s.not_ethernet
                + s.malformed
        );
    }

    /// One SMTP connection as `tcpdump -i any` on a NAT router records it.
    #[test]
    fn a_routed_connection_is_seen_once_from_the_device_with_replies_to_it() {
        let mut v = view();
        let mut t = 1_000_000_000u64;
        let mut next = |v: &mut CookedView, rec: Vec<u8>| {
            t += 1_000_000_000;
            v.frame(t, CookedFormat::Sll, &rec).map(<[u8]>::to_vec)
        };
        // LAN: the device's SYN arrives for the router.
        let syn = tcp(DEV_IP, MX_IP, 40000, 25, 0x02, &[]);
        let f = next(&mut v, sll(HOST, ARPHRD_ETHER, &DEVICE, IPV4, &syn)).unwrap();
        assert_eq!(&f[6..12], &DEVICE, "source is the device");
        assert_eq!(
            &f[0..6],
            &[0; 6],
            "destination: the router's LAN MAC, unknown"
        );
        assert_eq!(&f[12..14], &[8, 0]);
        assert_eq!(&f[14..], &syn[..]);
        // WAN: the same SYN after NAT, sent by the router from its WAN address.
        let natted = tcp(WAN_IP, MX_IP, 61000, 25, 0x02, &[]);
        assert_eq!(
            next(
                &mut v,
                sll(OUTGOING, ARPHRD_ETHER, &ROUTER_WAN, IPV4, &natted)
            ),
            None
        );
        // WAN: the server's 554 arrives for the WAN address...
        let reply_wan = tcp(MX_IP, WAN_IP, 25, 61000, 0x18, b"554 5.7.1 blocked\r\n");
        assert_eq!(
            next(&mut v, sll(HOST, ARPHRD_ETHER, &UPSTREAM, IPV4, &reply_wan)),
            None
        );
        // ... and leaves on the LAN for the device, whose MAC the record does not hold.
        let reply_lan = tcp(MX_IP, DEV_IP, 25, 40000, 0x18, b"554 5.7.1 blocked\r\n");
        let f = next(
            &mut v,
            sll(OUTGOING, ARPHRD_ETHER, &ROUTER_LAN, IPV4, &reply_lan),
        )
        .unwrap();
        assert_eq!(
            &f[0..6],
            &DEVICE,
            "destination learned from the device's SYN"
        );
        assert_eq!(&f[6..12], &ROUTER_LAN);
        // The router's own DNS forwarder asking upstream: not a device.
        let query = udp(WAN_IP, [9, 9, 9, 9], 5353, 53, &[0; 12]);
        assert_eq!(
            next(
                &mut v,
                sll(OUTGOING, ARPHRD_ETHER, &ROUTER_WAN, IPV4, &query)
            ),
            None
        );
        // Someone on the internet knocking on the WAN address's port 25: not a device.
        let scan = tcp([45, 1, 2, 3], WAN_IP, 50000, 25, 0x02, &[]);
        assert_eq!(
            next(&mut v, sll(HOST, ARPHRD_ETHER, &UPSTREAM, IPV4, &scan)),
            None
        );
        // The router's DNS answer to the device goes to the device's MAC.
        let answer = udp(ROUTER_IP, DEV_IP, 53, 5000, &[0; 12]);
        let f = next(
            &mut v,
            sll(OUTGOING, ARPHRD_ETHER, &ROUTER_LAN, IPV4, &answer),
        )
        .unwrap();
        assert_eq!(&f[0..6], &DEVICE);
        // A reply to an address never seen sending: given on, destination unknown.
        let stray = tcp(MX_IP, [192, 168, 1, 99], 25, 40001, 0x12, &[]);
        let f = next(
            &mut v,
            sll(OUTGOING, ARPHRD_ETHER, &ROUTER_LAN, IPV4, &stray),
        )
        .unwrap();
        assert_eq!(&f[0..6], &[0; 6]);
        // Loopback and PPP carry no LAN device's frames.
        assert_eq!(next(&mut v, sll(HOST, 772, &[0; 6], IPV4, &query)), None);
        assert_eq!(next(&mut v, sll(HOST, 512, &[], IPV4, &syn)), None);
        // 802.2 LLC (a length, not an EtherType).
        assert_eq!(
            next(&mut v, sll(HOST, ARPHRD_ETHER, &DEVICE, 0x0004, &[0x42; 8])),
            None
        );
        assert_eq!(
            v.stats(),
            CookedStats {
                records: 11,
                to_engine: 4,
                sent_by_router: 2,
                received_replies: 1,
                from_internet: 1,
                duplicates: 0,
                not_ethernet: 3,
                malformed: 0,
                unresolved: 1,
            }
        );
    }

    #[test]
    fn the_same_packet_on_a_bridge_port_and_the_bridge_counts_once() {
        let mut v = view();
        let query = udp(DEV_IP, ROUTER_IP, 5000, 53, &[0; 12]);
        // wlan0 (index 5) then br-lan (index 9), 20 µs apart; the bridge port's copy carries
        // an 802.1Q tag.
        let mut tagged = vec![0x00, 0x01, 0x08, 0x00];
        tagged.extend_from_slice(&query);
        assert!(v
            .frame(
                1_000_000,
                CookedFormat::Sll2,
                &sll2(0, 5, &DEVICE, 0x8100, &tagged)
            )
            .is_some());
        assert!(v
            .frame(
                1_020_000,
                CookedFormat::Sll2,
                &sll2(0, 9, &DEVICE, IPV4, &query)
            )
            .is_none());
        assert_eq!(v.stats().duplicates, 1);
        // The same bytes a second later are a retry, not a copy.
        assert!(v
            .frame(
                1_001_000_000,
                CookedFormat::Sll2,
                &sll2(0, 9, &DEVICE, IPV4, &query)
            )
            .is_some());
        // A broadcast DHCP request keeps a broadcast destination.
        let discover = udp([0; 4], [255; 4], 68, 67, &[1; 240]);
        let f = v
            .frame(
                2_000_000_000,
                CookedFormat::Sll2,
                &sll2(1, 9, &DEVICE, IPV4, &discover),
            )
            .unwrap();
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(v.stats().to_engine, 3);
    }

    #[test]
    fn the_learned_table_is_bounded() {
        let mut v = view();
        for i in 0..(LEARNED_MAX as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            v.learn(ip, MacAddr(DEVICE), u64::from(i));
        }
        assert_eq!(v.learned.len(), LEARNED_MAX);
        assert!(!v
            .learned
            .contains_key(&"10.0.0.0".parse::<IpAddr>().unwrap()));
        assert!(v
            .learned
            .contains_key(&IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 1033))));
    }
}
