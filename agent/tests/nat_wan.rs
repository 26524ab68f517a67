//! The WAN address look-ups against this machine's kernel (routes and interfaces), kept out of
//! the library tests that also run under qemu-user for big-endian MIPS.

use smtpguard_agent::nat::wan::{interface_address, source_towards, wan_address};

#[test]
fn loopback_routes_and_unknown_interfaces_give_no_wan_address() {
    // A route to loopback picks loopback: not a WAN address.
    assert_eq!(source_towards("127.0.0.1".parse().unwrap()), None);
    assert_eq!(interface_address("sg-no-such-if0"), None);
    assert_eq!(wan_address(Some("sg-no-such-if0"), None), None);
    // `lo` has only loopback addresses, which a peer never sees.
    assert_eq!(interface_address("lo"), None);
}
