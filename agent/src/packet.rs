//! Frame decoding: one raw Ethernet frame (optionally 802.1Q/QinQ tagged) into the few
//! fields the engine needs, borrowing the payload from the frame.
//!
//! Parsing is done by `etherparse`'s slicing API, which checks every length before reading
//! and never allocates. Frames that are not IP (ARP, LLDP, ...) decode to `Ok(None)`;
//! frames that claim to be IP but are cut short or inconsistent are a [`DecodeError`], which
//! the engine counts as malformed and otherwise ignores.

use std::net::IpAddr;

use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use smtpguard_protocol::MacAddr;

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The Ethernet, VLAN, IP, TCP or UDP header is cut short or inconsistent.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame has no Ethernet II header (e.g. an 802.3 frame with a length field).
    #[error("not an Ethernet II frame")]
    NotEthernet,
}

/// The transport layer of a decoded IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// A TCP segment.
    Tcp(TcpSegment<'a>),
    /// A UDP datagram.
    Udp(UdpDatagram<'a>),
    /// Anything else (ICMP, IP fragments after the first, other protocols).
    Other,
}

/// The fields of a TCP segment the engine looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number of the first payload byte (or of the SYN).
    pub seq: u32,
    /// Acknowledgement number (valid when `ack` is set).
    pub ack_no: u32,
    /// SYN flag.
    pub syn: bool,
    /// ACK flag.
    pub ack: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// Segment payload.
    pub payload: &'a [u8],
}

/// The fields of a UDP datagram the engine looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Datagram payload.
    pub payload: &'a [u8],
}

/// A decoded IP-over-Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// IP source.
    pub src_ip: IpAddr,
    /// IP destination.
    pub dst_ip: IpAddr,
    /// TCP, UDP or other.
    pub transport: Transport<'a>,
}

/// Decodes one Ethernet frame.
///
/// Returns `Ok(None)` for well-formed frames that carry no IP packet (ARP and the like).
///
/// # Errors
/// [`DecodeError`] when a header is cut short or inconsistent.
pub fn decode(frame: &[u8]) -> Result<Option<Packet<'_>>, DecodeError> {
    let sliced =
        SlicedPacket::from_ethernet(frame).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let (src_mac, dst_mac) = match &sliced.link {
        Some(LinkSlice::Ethernet2(eth)) => (MacAddr(eth.source()), MacAddr(eth.destination())),
        _ => return Err(DecodeError::NotEthernet),
    };
    let (src_ip, dst_ip, fragmented) = match &sliced.net {
        Some(NetSlice::Ipv4(v4)) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
            v4.is_payload_fragmented(),
        ),
        Some(NetSlice::Ipv6(v6)) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
            v6.is_payload_fragmented(),
        ),
        None => return Ok(None),
    };
    let transport = match (&sliced.transport, fragmented) {
        (_, true) => Transport::Other,
        (Some(TransportSlice::Tcp(tcp)), false) => Transport::Tcp(TcpSegment {
            src_port: tcp.source_port(),
            dst_port: tcp.destination_port(),
            seq: tcp.sequence_number(),
            ack_no: tcp.acknowledgment_number(),
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            payload: tcp.payload(),
        }),
        (Some(TransportSlice::Udp(udp)), false) => Transport::Udp(UdpDatagram {
            src_port: udp.source_port(),
            dst_port: udp.destination_port(),
            payload: udp.payload(),
        }),
        _ => Transport::Other,
    };
    Ok(Some(Packet {
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        transport,
    }))
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

    // A SYN from 10.7.29.101:49898 to 178.63.41.150:25 (first frame of the malspam capture).
    const SYN: &str = "20e52ab693f1 0008021c47ae 0800
        45000034 2f6b4000 8006 0000 0a071d65 b23f2996
        c2ea0019 11223344 00000000 8002 faf0 0000 0000
        020405b4 01030308 01010402";

    #[test]
    fn decodes_a_tcp_syn() {
        let frame = hex(SYN);
        let p = decode(&frame).unwrap().unwrap();
        assert_eq!(p.src_mac.to_string(), "00:08:02:1c:47:ae");
        assert_eq!(p.dst_mac.to_string(), "20:e5:2a:b6:93:f1");
        assert_eq!(p.src_ip.to_string(), "10.7.29.101");
        assert_eq!(p.dst_ip.to_string(), "178.63.41.150");
        match p.transport {
            Transport::Tcp(t) => {
                assert_eq!((t.src_port, t.dst_port), (49898, 25));
                assert_eq!(t.seq, 0x1122_3344);
                assert!(t.syn && !t.ack && !t.fin && !t.rst);
                assert!(t.payload.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_vlan_tagged_udp() {
        let frame = hex("ffffffffffff 021111111111 8100 0064 0800
             4500001d 00000000 4011 0000 c0a80102 c0a80101
             d4310035 0009 0000 aa");
        let p = decode(&frame).unwrap().unwrap();
        match p.transport {
            Transport::Udp(u) => {
                assert_eq!((u.src_port, u.dst_port), (54321, 53));
                assert_eq!(u.payload, &[0xaa]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arp_is_not_ip() {
        let frame = hex("ffffffffffff 021111111111 0806 0001 0800 0604 0001
             021111111111 c0a80102 000000000000 c0a80101");
        assert_eq!(decode(&frame).unwrap(), None);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let frame = hex(SYN);
        for len in 0..frame.len() {
            // Every prefix either decodes or is an error; none panics.
            let _ = decode(&frame[..len]);
        }
        assert!(decode(&frame[..20]).is_err());
        assert!(decode(&frame[..40]).is_err());
    }
}
