//! The bodies of the agent's fuzz targets, one function per target. The `cargo fuzz` targets
//! in `agent/fuzz` call them on each input, and `tests/fuzz_corpus.rs` replays the committed
//! seeds and minimized corpora through the very same functions on stable.
//!
//! Built only with the `fuzzing` feature (off by default), so the router binary does not
//! carry it. Each function panics exactly when the code under test misbehaves.
//!
//! Outside bytes the agent reads, and their target: frames from the LAN (`engine_frames`),
//! capture files (`capture_replay`), policy from the broker (`policy_guard`), the local
//! policy file (`policy_toml`), its configuration in TOML or UCI (`agent_config`), the dnsmasq
//! lease file (`leases`), the OUI registry (`oui`) and the kernel's ctnetlink replies to the
//! NAT lookups (`conntrack_reply`).

use std::sync::{Arc, OnceLock};

use smtpguard_protocol::fuzzing::{policy_checks, sign_body, CPE, FLEET, NOW_MS};
use smtpguard_protocol::{AckOutcome, Kind, MacAddr, Mode, Policy, PolicyScope, SafetyContext};

use crate::config::AgentConfig;
use crate::engine::{Engine, EngineConfig};
use crate::oui::OuiTable;
use crate::uplink::guard::{Decision, PolicyGuard};
use crate::{leases, replay};

/// Devices and sessions of the engines the targets build: small, so the tables fill up and
/// evict within one input.
const CAPACITY: usize = 8;

/// Target `engine_frames`: arbitrary frames into the engine. The input is a sequence of
/// `[len: u16 LE][step: u8][frame: len % 1600 bytes]`, each frame fed `step * 997` ms after
/// the previous one, with timeouts handled in between.
pub fn engine_frames(data: &[u8]) {
    let policy = Policy {
        mode: Mode::Enforce,
        ..Policy::default()
    };
    let mut e = Engine::new(
        EngineConfig {
            device_capacity: CAPACITY,
            session_capacity: CAPACITY,
            ..EngineConfig::default()
        },
        policy,
    );
    let mut now = 1_700_000_000_000u64;
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 1600;
        let step = u64::from(rest[2]) * 997;
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (frame, tail) = rest.split_at(take);
        rest = tail;
        now += step;
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
        }
        e.handle_frame(now, frame);
        while e.poll_action().is_some() {}
    }
    let report = e.report(now);
    assert!(report.devices.len() <= CAPACITY);
    for d in &report.devices {
        assert!((0.0..=1.0).contains(&d.score), "score {}", d.score);
    }
    let _ = e.drain_connections();
}

/// Target `capture_replay`: arbitrary bytes as a pcap or pcapng file through the streaming
/// reader and the engine, as `smtpguard-agent replay` reads one; the report renders.
pub fn capture_replay(data: &[u8]) {
    let config = EngineConfig {
        device_capacity: CAPACITY,
        session_capacity: CAPACITY,
        ..EngineConfig::default()
    };
    if let Ok(out) = replay::replay_reader(data, "fuzz", Policy::default(), config) {
        let json = replay::render_json(&out.report);
        assert!(json.starts_with('{'));
    }
}

/// Target `policy_guard`: arbitrary bytes as the body of a policy message, signed with the
/// controller key so they get past the signature, then through the agent's
/// [`PolicyGuard::decide`] on the fleet topic (inputs of even length) or on this router's
/// topic (odd length): one signature per input, which is most of the cost. An applied policy
/// must be valid and safe and keep the local relays; the decoded policy then goes through
/// [`policy_checks`].
pub fn policy_guard(data: &[u8]) {
    let safety = SafetyContext {
        local_relays: vec![smtpguard_protocol::policy::RelayRule {
            net: smtpguard_protocol::policy::Cidr::host([198, 51, 100, 25].into()),
            port: Some(587),
        }],
        brokers: vec![[192, 0, 2, 10].into()],
    };
    // No state directory: nothing applied yet, and nothing is written by `decide`.
    let mut guard = PolicyGuard::open(
        std::path::Path::new("/nonexistent/smtpguard-fuzz"),
        controller_key(),
        CPE.into(),
        safety.clone(),
    );
    let (topic, target, scope) = if data.len() % 2 == 0 {
        (FLEET_TOPIC.to_owned(), FLEET, PolicyScope::Fleet)
    } else {
        (
            format!("smtpguard/v1/cpe/{CPE}/policy"),
            CPE,
            PolicyScope::Cpe,
        )
    };
    let Some(payload) = sign_body(Kind::Policy, data, target, 1) else {
        return;
    };
    match guard.decide(&topic, &payload, NOW_MS) {
        Decision::Apply(update) => {
            assert_eq!(update.scope, scope);
            assert_eq!(update.version, update.policy.policy_version);
            assert!(
                update.policy.validate().is_ok(),
                "applied an invalid policy"
            );
            assert!(
                smtpguard_protocol::check_policy_safety(&update.policy, &safety).is_ok(),
                "applied an unsafe policy"
            );
            for relay in &safety.local_relays {
                assert!(update.policy.allow_relays.contains(relay));
            }
            policy_checks(update.policy);
        }
        Decision::Refuse(ack) => {
            assert_eq!(ack.scope, scope);
            assert!(matches!(ack.outcome, AckOutcome::Refused { .. }));
        }
        // The message was signed for this topic: it cannot be someone else's.
        Decision::Ignore => panic!("a signed policy on {topic} was ignored"),
    }
}

const FLEET_TOPIC: &str = "smtpguard/v1/policy/fleet";

/// The controller's public key, derived once (a constant, so the targets stay deterministic).
fn controller_key() -> ed25519_dalek::VerifyingKey {
    static KEY: OnceLock<ed25519_dalek::VerifyingKey> = OnceLock::new();
    *KEY.get_or_init(|| {
        ed25519_dalek::SigningKey::from_bytes(&smtpguard_protocol::fuzzing::RFC8032_SECRET)
            .verifying_key()
    })
}

/// Target `policy_toml`: arbitrary bytes as the local policy file (`policy_file`), read as
/// `run::load_policy` reads it (UTF-8 TOML, then validation), then [`policy_checks`].
pub fn policy_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = toml::from_str::<Policy>(text) {
        policy_checks(policy);
    }
}

/// Target `agent_config`: arbitrary bytes as the agent's configuration file, both as TOML
/// and as OpenWrt UCI (through `smtpguard_firmware::uci`). What loads is valid, and a TOML
/// configuration reads back the same after writing it out.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for config in [
        AgentConfig::from_toml_str(text),
        AgentConfig::from_uci_str(text),
    ]
    .into_iter()
    .flatten()
    {
        assert!(config.validate().is_ok(), "loaded an invalid configuration");
        let written = match toml::to_string(&config) {
            Ok(t) => t,
            Err(e) => panic!("a loaded configuration does not write out: {e}"),
        };
        match AgentConfig::from_toml_str(&written) {
            Ok(back) => assert_eq!(back, config, "written as\n{written}"),
            Err(e) => panic!("a written configuration does not load: {e}\n{written}"),
        }
    }
}

/// Target `leases`: arbitrary bytes as the dnsmasq lease file, read as [`leases::read`] reads
/// it (at most [`leases::MAX_FILE_BYTES`], UTF-8 lossy); the host names go into an engine.
pub fn leases(data: &[u8]) {
    let cap = usize::try_from(leases::MAX_FILE_BYTES).unwrap_or(usize::MAX);
    let text = String::from_utf8_lossy(&data[..data.len().min(cap)]);
    let parsed = leases::parse(&text);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(parsed.leases.len() + parsed.skipped_lines, lines);
    let mut engine = Engine::new(
        EngineConfig {
            device_capacity: CAPACITY,
            ..EngineConfig::default()
        },
        Policy::default(),
    );
    for (mac, name) in parsed.hostnames() {
        engine.set_hostname(mac, name);
    }
    assert!(engine.report(NOW_MS).devices.len() <= CAPACITY);
}

/// Target `oui`: arbitrary bytes as the IEEE OUI registry (`oui.csv`); lookups of the
/// addresses the input's own bytes spell, and of locally administered ones, which never
/// have a vendor.
pub fn oui(data: &[u8]) {
    let Ok(table) = OuiTable::from_reader(data) else {
        return;
    };
    let _ = table.heap_bytes();
    let _ = table.skipped_lines();
    for chunk in data.chunks_exact(6).take(64) {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(chunk);
        let _ = table.lookup(&MacAddr(mac));
        mac[0] |= 0x02;
        assert_eq!(table.lookup(&MacAddr(mac)), None);
    }
    // The engine names vendors from it.
    let mut engine = Engine::new(
        EngineConfig {
            device_capacity: CAPACITY,
            oui: Some(Arc::new(table)),
            ..EngineConfig::default()
        },
        Policy::default(),
    );
    engine.set_hostname(MacAddr([0, 0x1b, 0x63, 1, 2, 3]), "host");
    let _ = engine.report(NOW_MS);
}

/// Target `conntrack_reply`: arbitrary bytes as one datagram from the ctnetlink socket,
/// through [`crate::nat::conntrack::decode`]. Every reply is a whole netlink message (at
/// least a header), and its answers go into a [`crate::nat::NatLog`] as the run loop hands
/// them over.
pub fn conntrack_reply(data: &[u8]) {
    use crate::nat::conntrack::{decode, Reply};
    let mut log = crate::nat::NatLog::new(true);
    let record = smtpguard_protocol::ConnRecord {
        mac: MacAddr([2, 0, 0, 0, 0, 1]),
        at_ms: NOW_MS,
        src_port: 40_000,
        dst: std::net::IpAddr::from([198, 51, 100, 25]),
        dst_port: 25,
        nat_port: None,
        nat_ip: None,
    };
    log.push(record, std::net::IpAddr::from([192, 168, 1, 14]));
    let mut queries = Vec::new();
    log.due(NOW_MS + 1_000, 8, &mut queries);
    let mut replies = 0usize;
    let _ = decode(data, |r| {
        replies += 1;
        let translated = match r {
            Reply::Entry { reply, .. } => Some(reply.dst),
            Reply::Error { .. } => None,
        };
        log.answer(u64::from(r.seq()), translated);
    });
    assert!(
        replies <= data.len() / 16,
        "{replies} replies from {} bytes",
        data.len()
    );
    let out = log.take_ready(NOW_MS + 60_000);
    assert_eq!(out.len(), 1);
}
