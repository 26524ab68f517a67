//! The agent core's side of the NAT lookups, as the live loop drives it: a SYN logged by the
//! engine becomes a lookup of its original tuple shortly after, the record waits for the
//! answer (it is not in a telemetry window closed before), and goes out with the WAN address
//! and port; without lookups (replay, demo) records go out at the first window as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use etherparse::PacketBuilder;
use smtpguard_agent::core::{Agent, Output, Settings};
use smtpguard_agent::engine::EngineConfig;
use smtpguard_agent::nat::RETRY_AFTER_MS;
use smtpguard_protocol::{MacAddr, Policy, Telemetry};

const T: u64 = 1_764_500_000_000;
const DEVICE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
const ROUTER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn syn(sport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(DEVICE, ROUTER)
        .ipv4([192, 168, 1, 14], [198, 51, 100, 25], 64)
        .tcp(sport, 25, 1000, 64240)
        .syn();
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).unwrap();
    out
}

fn agent(nat_lookups: bool) -> Agent {
    let mut a = Agent::new(
        Settings {
            engine: EngineConfig {
                router_macs: vec![MacAddr(ROUTER)],
                router_ips: vec![IpAddr::from([192, 168, 1, 1])],
                ..EngineConfig::default()
            },
            telemetry: true,
            nat_lookups,
            ..Settings::default()
        },
        Policy::default(),
        T,
    );
    a.set_public_ip(Some(IpAddr::from([100, 64, 7, 2])));
    a
}

fn window(a: &mut Agent, now: u64) -> Telemetry {
    a.close_telemetry_window(now);
    std::iter::from_fn(|| a.poll_output())
        .find_map(|o| match o {
            Output::Telemetry(t) => Some(t),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_logged_connection_waits_for_its_translation_then_carries_it() {
    let mut a = agent(true);
    a.handle_frame(T + 10, &syn(40_123));
    let mut q = Vec::new();
    a.nat_queries(T + 10, 32, &mut q);
    assert!(
        q.is_empty(),
        "not before the SYN can have passed the router"
    );
    a.nat_queries(T + 10 + RETRY_AFTER_MS[0], 32, &mut q);
    assert_eq!(q.len(), 1);
    assert_eq!(
        q[0].client,
        "192.168.1.14:40123".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        q[0].server,
        "198.51.100.25:25".parse::<SocketAddr>().unwrap()
    );

    let t = window(&mut a, T + 200);
    assert!(t.connections.is_empty(), "held while its lookup is pending");

    a.nat_answer(q[0].id, Some("100.64.7.2:61002".parse().unwrap()));
    let t = window(&mut a, T + 300);
    assert_eq!(t.public_ip, Some(IpAddr::from([100, 64, 7, 2])));
    assert_eq!(t.connections.len(), 1);
    let c = &t.connections[0];
    assert_eq!(c.mac, MacAddr(DEVICE));
    assert_eq!(c.src_port, 40_123);
    assert_eq!(c.nat_ip, Some(IpAddr::from([100, 64, 7, 2])));
    assert_eq!(c.nat_port, Some(61_002));
    assert_eq!(a.nat_stats().translated, 1);
}

#[test]
fn without_lookups_records_go_out_at_once_without_translation() {
    let mut a = agent(false);
    a.handle_frame(T + 10, &syn(40_123));
    let mut q = Vec::new();
    a.nat_queries(T + 60_000, 32, &mut q);
    assert!(q.is_empty());
    let t = window(&mut a, T + 200);
    assert_eq!(t.connections.len(), 1);
    assert_eq!(t.connections[0].nat_port, None);
    assert_eq!(t.connections[0].nat_ip, None);
}
