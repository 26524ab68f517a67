//! Property tests: every message survives seal → open → verify unchanged, and no single
//! corrupted byte ever panics the decoder or verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use common::*;
use proptest::prelude::*;
use smtpguard_protocol::envelope::{verify, verify_command, verify_policy, KeyStatus};
use smtpguard_protocol::messages::*;
use smtpguard_protocol::policy::{Indicators, Policy, RelayRule};
use smtpguard_protocol::{
    open, seal, Action, Body, Freshness, MacAddr, Mode, Topic, Verdict, FLEET_ID,
};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        Just(Verdict::Clean),
        Just(Verdict::Suspicious),
        Just(Verdict::Infected)
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Monitor),
        Just(Action::RateLimit),
        Just(Action::Block)
    ]
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn counters() -> impl Strategy<Value = DeviceCounters> {
    any::<[u32; 10]>().prop_map(|c| DeviceCounters {
        smtp_connections: c[0],
        distinct_mail_servers: c[1],
        distinct_networks: c[2],
        mx_lookups: c[3],
        mx_followed: c[4],
        submission_connections: c[5],
        messages: c[6],
        unanswered_syns: c[7],
        rcpt_commands: c[8],
        remote_rejections: c[9],
    })
}

fn device() -> impl Strategy<Value = DeviceReport> {
    (
        mac(),
        prop::collection::vec(ip(), 0..4),
        prop::option::of(text()),
        prop::option::of(text()),
        (
            verdict(),
            0.0f32..=1.0,
            action(),
            prop::option::of(any::<u64>()),
        ),
        counters(),
        prop::collection::vec(text(), 0..4),
    )
        .prop_map(
            |(mac, ips, hostname, vendor, (verdict, score, action, until), counters, evidence)| {
                DeviceReport {
                    mac,
                    ips,
                    hostname,
                    vendor,
                    verdict,
                    score,
                    action,
                    action_until_ms: until,
                    counters,
                    evidence,
                }
            },
        )
}

fn observed() -> impl Strategy<Value = Observed> {
    (
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(ip(), 0..3),
    )
        .prop_map(|(ehlo_names, mail_from_domains, mail_servers)| Observed {
            ehlo_names,
            mail_from_domains,
            mail_servers,
        })
}

fn body() -> impl Strategy<Value = Body> {
    let telemetry = (
        any::<u64>(),
        any::<u32>(),
        prop::option::of(ip()),
        any::<[u64; 5]>(),
        prop::collection::vec(device(), 0..3),
        prop::collection::vec(
            (
                mac(),
                any::<u64>(),
                any::<u16>(),
                ip(),
                any::<u16>(),
                prop::option::of(any::<u16>()),
            ),
            0..4,
        ),
    )
        .prop_map(|(start, secs, public_ip, s, devices, conns)| {
            Body::Telemetry(Telemetry {
                window_start_ms: start,
                window_secs: secs,
                public_ip,
                stats: AgentStats {
                    packets: s[0],
                    kernel_drops: s[1],
                    malformed_packets: s[2],
                    devices_evicted: s[3],
                    telemetry_dropped: s[4],
                },
                devices,
                connections: conns
                    .into_iter()
                    .map(
                        |(mac, at_ms, src_port, dst, dst_port, nat_port)| ConnRecord {
                            mac,
                            at_ms,
                            src_port,
                            dst,
                            dst_port,
                            nat_port,
                            nat_ip: nat_port.map(|p| IpAddr::from([100, 64, 0, (p % 250) as u8])),
                        },
                    )
                    .collect(),
            })
        });
    let alert = (device(), verdict(), any::<u64>(), observed()).prop_map(
        |(device, previous, at_ms, observed)| {
            Body::Alert(Alert {
                device,
                previous,
                at_ms,
                observed,
            })
        },
    );
    let state = (
        any::<bool>(),
        text(),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
        prop::option::of(ip()),
    )
        .prop_map(|(online, agent_version, fleet, cpe, public_ip)| {
            Body::State(State {
                status: if online {
                    Status::Online
                } else {
                    Status::Offline
                },
                agent_version,
                fleet_policy_version: fleet,
                cpe_policy_version: cpe,
                public_ip,
            })
        });
    let ack = (any::<bool>(), any::<u64>(), prop::option::of(text())).prop_map(
        |(fleet, policy_version, refused)| {
            Body::PolicyAck(PolicyAck {
                scope: if fleet {
                    PolicyScope::Fleet
                } else {
                    PolicyScope::Cpe
                },
                policy_version,
                outcome: match refused {
                    Some(reason) => AckOutcome::Refused { reason },
                    None => AckOutcome::Applied,
                },
            })
        },
    );
    let policy = (
        any::<u64>(),
        prop_oneof![
            Just(Mode::Monitor),
            Just(Mode::RateLimit),
            Just(Mode::Enforce)
        ],
        1u32..10_000,
        prop::collection::vec((ip(), any::<u8>(), prop::option::of(any::<u16>())), 0..3),
        prop::collection::vec(mac(), 0..3),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(|(version, mode, ttl, relays, macs, ehlo)| {
            Body::Policy(Policy {
                policy_version: version,
                mode,
                block_ttl_secs: ttl,
                allow_relays: relays
                    .into_iter()
                    .map(|(ip, prefix, port)| {
                        let max = if ip.is_ipv4() { 33 } else { 129 };
                        RelayRule {
                            net: smtpguard_protocol::policy::Cidr::new(ip, prefix % max).unwrap(),
                            port,
                        }
                    })
                    .collect(),
                allow_macs: macs,
                indicators: Indicators {
                    ehlo_names: ehlo,
                    ..Indicators::default()
                },
                ..Policy::default()
            })
        });
    prop_oneof![
        telemetry,
        alert,
        state,
        ack,
        policy,
        command(),
        command_ack()
    ]
}

fn command() -> impl Strategy<Value = Body> {
    (
        text(),
        any::<(u64, u64, u64)>(),
        any::<bool>(),
        mac(),
        any::<u32>(),
    )
        .prop_map(
            |(target, (command_id, issued_ms, expires_ms), release, mac, secs)| {
                Body::Command(Command {
                    target,
                    command_id,
                    issued_ms,
                    expires_ms,
                    action: if release {
                        CommandAction::Release {
                            mac,
                            grace_secs: secs,
                        }
                    } else {
                        CommandAction::Block {
                            mac,
                            ttl_secs: secs,
                        }
                    },
                })
            },
        )
}

fn command_ack() -> impl Strategy<Value = Body> {
    (any::<u64>(), prop::option::of(text()), any::<u64>()).prop_map(
        |(command_id, refused, at_ms)| {
            Body::CommandAck(CommandAck {
                command_id,
                outcome: match refused {
                    Some(reason) => AckOutcome::Refused { reason },
                    None => AckOutcome::Applied,
                },
                at_ms,
            })
        },
    )
}

fn verify_as_agent(topic: &str, bytes: &[u8]) -> Result<Body, smtpguard_protocol::Rejection> {
    let public = rfc8032_key().verifying_key();
    verify_command(
        topic,
        bytes,
        |_| KeyStatus::Active(public),
        T0_MS,
        &Freshness::default(),
    )
    .map(|e| e.body)
}

fn topic_for(body: &Body) -> String {
    match body {
        Body::Policy(_) => Topic::FleetPolicy.to_string(),
        other => Topic::for_cpe(other.kind(), CPE).to_string(),
    }
}

fn seal_any(body: &Body, seq: u64) -> Vec<u8> {
    let id = if matches!(body, Body::Policy(_)) {
        FLEET_ID
    } else {
        CPE
    };
    seal(body, id, seq, T0_MS, &rfc8032_key()).unwrap()
}

fn check(body: &Body, bytes: &[u8]) -> Result<Body, smtpguard_protocol::Rejection> {
    let public = rfc8032_key().verifying_key();
    verify(
        &topic_for(body),
        bytes,
        |_| KeyStatus::Active(public),
        None,
        None,
        T0_MS,
        &Freshness::default(),
    )
    .map(|e| e.body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn seal_open_verify_round_trips(body in body(), seq in any::<u64>()) {
        let bytes = seal_any(&body, seq);
        let opened = open(&bytes).unwrap();
        prop_assert_eq!(opened.header().seq, seq);
        prop_assert_eq!(opened.header().kind, body.kind());
        prop_assert_eq!(check(&body, &bytes).unwrap(), body);
    }

    /// The agent's policy-only check (policy decoded through a generic tree) accepts every
    /// policy the full check accepts, with the same result.
    #[test]
    fn policy_only_check_decodes_every_policy_alike(body in body(), seq in any::<u64>()) {
        if let Body::Policy(_) = &body {
            let bytes = seal_any(&body, seq);
            let public = rfc8032_key().verifying_key();
            let lean = verify_policy(
                &topic_for(&body),
                &bytes,
                |_| KeyStatus::Active(public),
                None,
                T0_MS,
                &Freshness::default(),
            )
            .map(|e| e.body);
            prop_assert_eq!(lean.unwrap(), check(&body, &bytes).unwrap());
        }
    }

    /// The agent's command check (decoded through the generic tree) accepts every command
    /// the full check accepts, with the same result; a command sealed for one router never
    /// verifies on another's topic, and nothing but a command verifies on a command topic.
    #[test]
    fn command_check_decodes_every_command_alike_and_only_for_its_router(
        body in body(),
        seq in any::<u64>(),
    ) {
        let bytes = seal_any(&body, seq);
        let own = Topic::Command(CPE.into()).to_string();
        match &body {
            Body::Command(_) => {
                prop_assert_eq!(verify_as_agent(&own, &bytes).unwrap(), check(&body, &bytes).unwrap());
                let other = Topic::Command("cpe-other".into()).to_string();
                prop_assert!(verify_as_agent(&other, &bytes).is_err());
            }
            _ => prop_assert!(verify_as_agent(&own, &bytes).is_err()),
        }
    }

    /// A command signed by any key but the controller's is refused.
    #[test]
    fn forged_commands_are_rejected(body in command(), seed in any::<[u8; 32]>()) {
        let forger = ed25519_dalek::SigningKey::from_bytes(&seed);
        prop_assume!(forger.verifying_key() != rfc8032_key().verifying_key());
        let bytes = seal(&body, CPE, 1, T0_MS, &forger).unwrap();
        let r = verify_as_agent(&Topic::Command(CPE.into()).to_string(), &bytes);
        prop_assert_eq!(r, Err(smtpguard_protocol::Rejection::BadSignature));
    }

    #[test]
    fn any_corrupted_byte_is_rejected_never_accepted(
        body in body(),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = seal_any(&body, 9);
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        prop_assert!(check(&body, &bytes).is_err());
    }

    #[test]
    fn truncated_messages_are_rejected(body in body(), cut in any::<prop::sample::Index>()) {
        let bytes = seal_any(&body, 9);
        let n = cut.index(bytes.len());
        prop_assert!(check(&body, &bytes[..n]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = open(&bytes);
        let _ = check(&Body::Alert(alert()), &bytes);
    }

    #[test]
    fn mac_text_round_trips(m in mac()) {
        prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
    }
}
