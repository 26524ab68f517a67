//! The bodies of this crate's fuzz targets, one function per target. The `cargo fuzz`
//! targets in `protocol/fuzz` call them on each input, and `tests/fuzz_corpus.rs` replays the
//! committed seeds and minimized corpora through the very same functions on stable, so a
//! crash the fuzzer found stays fixed in plain `cargo test`.
//!
//! Built only with the `fuzzing` feature (off by default): no production binary carries it.
//! Each function panics exactly when the code under test misbehaves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ed25519_dalek::SigningKey;

use crate::envelope::{self, verify, verify_command, verify_policy, KeyStatus, FLEET_ID};
use crate::messages::{Body, Kind};
use crate::policy::safety::SafetyContext;
use crate::policy::{Cidr, RelayRule};
use crate::{check_policy_safety, open, Freshness, MacAddr, Policy, ReplayWindow, Topic};

/// The RFC 8032 test 1 secret key: the controller key of every target. Seeds are signed with
/// it, so mutations of a seed reach the checks behind the signature.
pub const RFC8032_SECRET: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];
/// The CPE id the targets use.
pub const CPE: &str = "cpe-d75a980182b10ab7";
/// The clock of every target (2026-11-24).
pub const NOW_MS: u64 = 1_795_435_200_000;

/// Target `decode_verify`: arbitrary bytes as an inbound message on every kind of topic,
/// through the controller's [`verify`] (size, CBOR, version, topic, signature, body,
/// freshness, replay window, policy version) and, on the policy topics, the agent's
/// [`verify_policy`]. Nothing may panic; only bytes signed with [`RFC8032_SECRET`] may
/// verify, and then as the kind the topic carries.
pub fn decode_verify(data: &[u8]) {
    let public = SigningKey::from_bytes(&RFC8032_SECRET).verifying_key();
    let mut window = ReplayWindow::new();
    let _ = window.accept(50);
    // Every check below starts with `open` (the topics themselves always parse), so bytes it
    // refuses are refused the same way on every topic: once is enough, and it keeps the
    // target fast.
    let Ok(opened) = open(data) else {
        return;
    };
    let _ = opened.header().kind;
    let topics = [
        Topic::Telemetry(CPE.into()),
        Topic::Alert(CPE.into()),
        Topic::State(CPE.into()),
        Topic::PolicyAck(CPE.into()),
        Topic::CpePolicy(CPE.into()),
        Topic::Command(CPE.into()),
        Topic::CommandAck(CPE.into()),
        Topic::FleetPolicy,
    ];
    for topic in topics {
        let name = topic.to_string();
        let result = verify(
            &name,
            data,
            |_| KeyStatus::Active(public),
            Some(&window),
            Some(3),
            NOW_MS,
            &Freshness::default(),
        );
        if let Ok(envelope) = result {
            assert_eq!(envelope.kind(), topic.kind());
        }
        if topic.kind() == Kind::Command {
            let result = verify_command(
                &name,
                data,
                |_| KeyStatus::Active(public),
                NOW_MS,
                &Freshness::default(),
            );
            if let Ok(envelope) = result {
                assert!(matches!(envelope.body, Body::Command(_)));
            }
        }
        if topic.kind() == Kind::Policy {
            let result = verify_policy(
                &name,
                data,
                |_| KeyStatus::Active(public),
                Some(3),
                NOW_MS,
                &Freshness::default(),
            );
            if let Ok(envelope) = result {
                assert!(matches!(envelope.body, Body::Policy(_)));
            }
        }
    }
}

/// Target `policy_body`: arbitrary bytes as the CBOR body of a policy message, the part a
/// fuzzer cannot reach through a signature. The agent's decoder (through the generic tree)
/// and the controller's direct one must agree whenever both accept; the agent's result then
/// goes through what the agent does next (validation, the safety check, the local relays),
/// and a valid policy must survive encoding and decoding unchanged.
pub fn policy_body(data: &[u8]) {
    let agent = envelope::decode_policy_body(Kind::Policy, data);
    let controller = envelope::decode_body(Kind::Policy, data);
    let policy = match (agent, controller) {
        (Ok(Body::Policy(a)), Ok(Body::Policy(c))) => {
            assert_eq!(a, c, "the two policy decoders disagree");
            a
        }
        (Ok(Body::Policy(a)), Err(_)) => a,
        (Ok(other), _) | (_, Ok(other)) if !matches!(other, Body::Policy(_)) => {
            panic!("a policy body decoded as {:?}", other.kind())
        }
        _ => return,
    };
    policy_checks(policy);
}

/// Target `command_body`: arbitrary bytes as the CBOR body of a command message. The
/// agent's decoder (through the generic tree) and the controller's direct one must agree
/// whenever both accept; the router's checks ([`crate::Command::refusal`]) must not panic
/// on any decoded command, and one that passes them must survive encoding and decoding
/// unchanged. Signed into a full message, it must verify as that command on its topic.
pub fn command_body(data: &[u8]) {
    let agent = envelope::decode_command_body(Kind::Command, data);
    let controller = envelope::decode_body(Kind::Command, data);
    let command = match (agent, controller) {
        (Ok(Body::Command(a)), Ok(Body::Command(c))) => {
            assert_eq!(a, c, "the two command decoders disagree");
            a
        }
        (Ok(Body::Command(a)), Err(_)) => a,
        (Ok(other), _) | (_, Ok(other)) if !matches!(other, Body::Command(_)) => {
            panic!("a command body decoded as {:?}", other.kind())
        }
        _ => return,
    };
    let _ = command.action.mac();
    for last in [None, Some(0), Some(command.command_id), Some(u64::MAX)] {
        let _ = command.refusal(CPE, NOW_MS, last);
    }
    let bytes = match crate::wire::to_vec(&command) {
        Ok(b) => b,
        Err(e) => panic!("a decoded command does not encode: {e}"),
    };
    match envelope::decode_command_body(Kind::Command, &bytes) {
        Ok(Body::Command(back)) => assert_eq!(back, command, "round trip changed the command"),
        other => panic!("a decoded command does not decode again: {other:?}"),
    }
    if let Some(signed) = sign_body(Kind::Command, data, CPE, 1) {
        let public = SigningKey::from_bytes(&RFC8032_SECRET).verifying_key();
        let any_time = Freshness {
            max_age_ms: u64::MAX,
            max_future_ms: u64::MAX,
        };
        match verify_command(
            &Topic::Command(CPE.into()).to_string(),
            &signed,
            |_| KeyStatus::Active(public),
            NOW_MS,
            &any_time,
        ) {
            Ok(e) => assert_eq!(e.body, Body::Command(command)),
            Err(r) => panic!("a signed, decodable command was rejected: {r}"),
        }
    }
}

/// What an agent does with a decoded policy, with assertions on the invariants: the tail
/// of [`policy_body`], shared with the agent's targets for the policy file and the guard.
pub fn policy_checks(mut policy: Policy) {
    let _ = policy.check_newer_than(Some(3));
    let valid = policy.validate().is_ok();
    let local = [
        RelayRule {
            net: Cidr::host(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 25))),
            port: Some(587),
        },
        RelayRule {
            net: Cidr::host(IpAddr::V6(Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x25,
            ))),
            port: None,
        },
    ];
    let ctx = SafetyContext {
        local_relays: local.to_vec(),
        brokers: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))],
    };
    let safe = check_policy_safety(&policy, &ctx).is_ok();
    let _ = policy.is_allowed_device(&MacAddr([2, 0x11, 0x22, 0x33, 0x44, 0x55]));
    if valid {
        let bytes = match crate::wire::to_vec(&policy) {
            Ok(b) => b,
            Err(e) => panic!("a valid policy does not encode: {e}"),
        };
        match envelope::decode_policy_body(Kind::Policy, &bytes) {
            Ok(Body::Policy(back)) => assert_eq!(back, policy, "round trip changed the policy"),
            other => panic!("a valid policy does not decode again: {other:?}"),
        }
    }
    policy.allow_relays_too(&ctx.local_relays);
    for relay in &ctx.local_relays {
        let port = relay.port.unwrap_or(25);
        assert!(
            policy.is_relay(relay.net.addr(), port),
            "a local relay is missing"
        );
    }
    if valid && safe {
        // Adding the local relays keeps a safe policy safe.
        assert!(check_policy_safety(&policy, &ctx).is_ok());
    }
}

/// Signs `body` as a message of `kind` for (or from) `cpe_id` ([`FLEET_ID`] for fleet
/// policy) with [`RFC8032_SECRET`], without encoding it first: how targets put arbitrary body
/// bytes behind a valid signature, so the body decoders get fuzzed and not just the
/// signature check. `None` when the message would exceed the size limit.
pub fn sign_body(kind: Kind, body: &[u8], cpe_id: &str, seq: u64) -> Option<Vec<u8>> {
    // The key is a constant: derive it once (it costs a scalar multiplication).
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| SigningKey::from_bytes(&RFC8032_SECRET));
    envelope::seal_raw_body(kind, cpe_id, seq, NOW_MS, body, key).ok()
}

/// The fleet id, re-exported for the agent's targets.
pub const FLEET: &str = FLEET_ID;

/// Where a fuzz crate keeps its inputs: `seeds/<target>/` (hand-made, committed) and
/// `corpus-min/<target>/` (what the fuzzer found, minimized with `cargo fuzz cmin`,
/// committed). Both are replayed.
pub const CORPUS_DIRS: [&str; 2] = ["seeds", "corpus-min"];

/// Replays every file of each of [`CORPUS_DIRS`] for `target` under `fuzz_dir` through `run`
/// and returns how many files it replayed.
///
/// # Panics
/// When a directory is missing or empty (a replay that finds nothing must not pass), or
/// when `run` panics on any file; all failing files are named.
pub fn replay_corpus(fuzz_dir: &str, target: &str, run: fn(&[u8])) -> usize {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for sub in CORPUS_DIRS {
        let dir = std::path::Path::new(fuzz_dir).join(sub).join(target);
        let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect(),
            Err(e) => panic!("corpus directory {}: {e}", dir.display()),
        };
        assert!(
            !files.is_empty(),
            "corpus directory {} is empty",
            dir.display()
        );
        files.sort();
        for file in files {
            let data = match std::fs::read(&file) {
                Ok(d) => d,
                Err(e) => panic!("{}: {e}", file.display()),
            };
            replayed += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "target {target} panicked on {} file(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
    replayed
}

/// The fuzz targets of the fuzz crate at `fuzz_dir`: the file stems in `fuzz_targets/`,
/// sorted. A replay test compares them with the targets it replays, so a new target cannot
/// go without one.
///
/// # Panics
/// When the directory cannot be read.
pub fn targets_in(fuzz_dir: &str) -> Vec<String> {
    let dir = std::path::Path::new(fuzz_dir).join("fuzz_targets");
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    names.sort();
    names
}
