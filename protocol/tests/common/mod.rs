//! Fixed messages and keys shared by the protocol's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use smtpguard_protocol::messages::*;
use smtpguard_protocol::policy::{Indicators, Policy};
use smtpguard_protocol::{Action, MacAddr, Mode, Verdict};

/// RFC 8032 section 7.1, TEST 1 secret key.
pub const RFC8032_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// Its public key.
pub const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

pub fn rfc8032_key() -> SigningKey {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(RFC8032_SECRET, &mut bytes).unwrap();
    SigningKey::from_bytes(&bytes)
}

pub const CPE: &str = "cpe-d75a980182b10ab7";
/// 2026-11-23T12:00:00Z
pub const T0_MS: u64 = 1_795_435_200_000;

pub fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

pub fn device() -> DeviceReport {
    DeviceReport {
        mac: mac("02:11:22:33:44:05"),
        ips: vec!["192.168.1.14".parse().unwrap()],
        hostname: Some("kids-pc".into()),
        vendor: Some("Example Devices Inc".into()),
        verdict: Verdict::Infected,
        score: 0.97,
        action: Action::Block,
        action_until_ms: Some(T0_MS + 3_600_000),
        counters: DeviceCounters {
            smtp_connections: 312,
            distinct_mail_servers: 287,
            distinct_networks: 201,
            mx_lookups: 290,
            mx_followed: 280,
            submission_connections: 0,
            messages: 305,
            unanswered_syns: 12,
            rcpt_commands: 1490,
            remote_rejections: 17,
        },
        evidence: vec![
            "287 distinct mail servers on port 25 in 10 min".into(),
            "EHLO OAZQJFLN.club".into(),
        ],
    }
}

pub fn telemetry() -> Telemetry {
    Telemetry {
        window_start_ms: T0_MS - 60_000,
        window_secs: 60,
        public_ip: Some("203.0.113.77".parse().unwrap()),
        stats: AgentStats {
            packets: 14557,
            kernel_drops: 0,
            malformed_packets: 2,
            devices_evicted: 0,
            telemetry_dropped: 0,
        },
        devices: vec![device()],
        connections: vec![ConnRecord {
            mac: mac("02:11:22:33:44:05"),
            at_ms: T0_MS - 1_500,
            src_port: 49898,
            dst: "178.63.41.150".parse().unwrap(),
            dst_port: 25,
            nat_port: Some(61002),
            nat_ip: None,
        }],
    }
}

pub fn alert() -> Alert {
    Alert {
        device: device(),
        previous: Verdict::Suspicious,
        at_ms: T0_MS - 2_000,
        observed: Observed {
            ehlo_names: vec!["OAZQJFLN.club".into()],
            mail_from_domains: vec!["bank-secure-mail.example".into()],
            mail_servers: vec!["178.63.41.150".parse().unwrap()],
        },
    }
}

pub fn state() -> State {
    State {
        status: Status::Online,
        agent_version: "0.1.0".into(),
        fleet_policy_version: Some(7),
        cpe_policy_version: None,
        public_ip: Some("203.0.113.77".parse().unwrap()),
    }
}

pub fn policy() -> Policy {
    Policy {
        policy_version: 8,
        mode: Mode::Enforce,
        allow_relays: vec!["198.51.100.0/24:587".parse().unwrap()],
        allow_macs: vec![mac("02:11:22:33:44:50")],
        indicators: Indicators {
            ehlo_names: vec!["oazqjfln.club".into()],
            mail_from_domains: vec![],
            mail_servers: vec!["178.63.41.0/24".parse().unwrap()],
        },
        ..Policy::default()
    }
}

pub fn policy_ack() -> PolicyAck {
    PolicyAck {
        scope: PolicyScope::Fleet,
        policy_version: 8,
        outcome: AckOutcome::Refused {
            reason: "indicator 198.51.100.0/24 covers allowlisted relay 198.51.100.0/24:587".into(),
        },
    }
}

pub fn command() -> Command {
    Command {
        target: CPE.into(),
        command_id: 12,
        issued_ms: T0_MS - 1_000,
        expires_ms: T0_MS + 3_600_000,
        action: CommandAction::Release {
            mac: mac("02:11:22:33:44:05"),
            grace_secs: 3600,
        },
    }
}

pub fn command_ack() -> CommandAck {
    CommandAck {
        command_id: 12,
        outcome: AckOutcome::Refused {
            reason: "command 12 replayed: not above the last applied command 12".into(),
        },
        at_ms: T0_MS + 2_000,
    }
}

/// One fixed body of each kind, with the file stem of its golden vector.
pub fn all_bodies() -> Vec<(&'static str, Body)> {
    vec![
        ("telemetry", Body::Telemetry(telemetry())),
        ("alert", Body::Alert(alert())),
        ("state", Body::State(state())),
        ("policy", Body::Policy(policy())),
        ("policy-ack", Body::PolicyAck(policy_ack())),
        ("command", Body::Command(command())),
        ("command-ack", Body::CommandAck(command_ack())),
    ]
}
