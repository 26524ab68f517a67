//! The router's WAN address: what an abuse report's sender (or the ISP's carrier-grade NAT
//! log) sees as the household.
//!
//! Two ways, cheapest first: the first IPv4 (else IPv6) address of a named interface
//! (`[nat] wan_interface`, the Linux device behind OpenWrt's `wan`, e.g. `pppoe-wan`), or
//! the source address the kernel picks for a route towards the internet. The second uses a
//! UDP socket's `connect`, which only selects the route and sends nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Where the route lookup aims when no interface is named: TEST-NET-1 (RFC 5737), never
/// sent to, routed like the internet by the default route.
pub const PROBE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// The IPv6 equivalent (documentation prefix, RFC 3849), tried when IPv4 has no route.
pub const PROBE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// The source address the kernel would use towards `target`; `None` when it has no route
/// (or picks an unusable address).
pub fn source_towards(target: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect((target, 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    usable(ip).then_some(ip)
}

/// The first usable address of `interface`, IPv4 before IPv6.
pub fn interface_address(interface: &str) -> Option<IpAddr> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)?;
    let ips: Vec<IpAddr> = iface
        .ips
        .iter()
        .map(|n| n.ip())
        .filter(|ip| usable(*ip))
        .collect();
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
}

/// The WAN address: of `interface` when one is named, else the route's source address
/// towards `target` (or towards [`PROBE_V4`], then [`PROBE_V6`]).
pub fn wan_address(interface: Option<&str>, target: Option<IpAddr>) -> Option<IpAddr> {
    if let Some(name) = interface.filter(|n| !n.is_empty()) {
        return interface_address(name);
    }
    match target {
        Some(t) => source_towards(t),
        None => source_towards(PROBE_V4).or_else(|| source_towards(PROBE_V6)),
    }
}

/// Not loopback, unspecified, multicast or IPv6 link-local: an address a peer could see.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_multicast()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_are_not_wan_addresses() {
        assert!(!usable("127.0.0.1".parse().unwrap()));
        assert!(!usable("::1".parse().unwrap()));
        assert!(!usable("fe80::1".parse().unwrap()));
        assert!(!usable("0.0.0.0".parse().unwrap()));
        assert!(usable("100.64.3.9".parse().unwrap()));
        assert!(usable("2001:db8::1".parse().unwrap()));
        // What asks the kernel (routes, interfaces) is in agent/tests/nat_wan.rs: qemu-user,
        // which runs these library tests for big-endian MIPS, does not carry those netlink
        // dumps.
    }
}
