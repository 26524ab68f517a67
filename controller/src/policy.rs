//! Policy for the NOC: sign, version, publish (retained) and follow the rollout.
//!
//! One controller-wide counter numbers every policy, fleet-wide or per-CPE, so a version
//! names one document. [`sign`] validates a [`Policy`], takes the next version, seals it with
//! the controller's key (envelope `cpe_id` = the target CPE or the fleet id, `seq` = the
//! version, so an agent can name the version even in the ack for a policy it could not
//! verify) and records it. It refuses a policy that fails the protocol's safety check
//! ([`check_policy_safety`]) against the controller's [`SafetyContext`]
//! ([`crate::config::Config::safety_context`]), the same check every agent runs: a version
//! every router would refuse is never signed. [`publish`] puts it on its retained topic; [`status`] is the
//! rollout view built from the agents' acks; [`watch_retained`] keeps the retained topics
//! holding the latest signed policies. The CLI (`policy set|status`) and the web UI's
//! policy editor call these same functions.
//!
//! # Per-CPE overrides the controller derives
//! An agent puts a per-CPE policy in force *instead of* the fleet policy, and keeps it for
//! as long as it runs: an empty retained topic is ignored (an unsigned "clear" would let a
//! compromised broker strip a router's allowlist). So every per-CPE policy the controller
//! makes itself is *derived*: the policy that router should run (the canary candidate while
//! it is in a rollout's cohort, see [`crate::rollout`], else the live fleet policy) plus
//! the devices the NOC allowed on it ([`allow_device`]). [`derived_override`] computes it and
//! [`rederive`] signs and publishes it whenever one of those inputs changes: a device
//! allowed, a canary started or ended, a fleet version published through the web UI. A
//! per-CPE policy set by hand (`policy set --cpe`) that is newer than the last derived one
//! is left alone by the re-derivation after a fleet publish. What these read and write
//! besides the signed versions (allowed devices, derived overrides, acks) is in
//! [`crate::store::policies`].

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use smtpguard_protocol::envelope::FLEET_ID;
use smtpguard_protocol::{
    check_policy_safety, seal, Body, MacAddr, Policy, PolicyError, PolicyScope, SafetyContext,
    SealError, Topic, UnsafePolicy,
};

use crate::broker::{self, BrokerError};
use crate::config::BrokerConfig;
use crate::store::db::{Db, DbError, Sql};
use crate::store::policies as stored;
use crate::store::{arbiter, RolloutRow, Store, StoreError, StoredPolicy};

pub use crate::store::policies::allowed_devices;

/// A policy could not be signed, stored or published.
#[derive(Debug, thiserror::Error)]
pub enum PolicyServiceError {
    /// The policy file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy file is not a valid policy.
    #[error("{path}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said.
        detail: String,
    },
    /// A field is out of range.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// The policy could convict the ISP relays or cut the routers' uplink.
    #[error(transparent)]
    Unsafe(#[from] UnsafePolicy),
    /// The target CPE is not enrolled.
    #[error("no enrolled CPE {0:?}")]
    UnknownCpe(String),
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// JSON encoding of the stored copy failed.
    #[error("policy JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The broker could not be reached or did not acknowledge in time.
    #[error("publishing: {0}")]
    Publish(String),
    /// The MQTT client could not be configured.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<DbError> for PolicyServiceError {
    fn from(e: DbError) -> Self {
        PolicyServiceError::Store(StoreError::Db(e))
    }
}

/// Who a policy is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every router.
    Fleet,
    /// One router's override.
    Cpe(String),
}

impl Target {
    /// The policy's retained topic.
    pub fn topic(&self) -> Topic {
        match self {
            Target::Fleet => Topic::FleetPolicy,
            Target::Cpe(id) => Topic::CpePolicy(id.clone()),
        }
    }
}

/// Reads a policy file (TOML, the protocol's schema) and validates it.
///
/// # Errors
/// [`PolicyServiceError::Io`], [`PolicyServiceError::Parse`] or
/// [`PolicyServiceError::Invalid`].
pub fn load_file(path: &Path) -> Result<Policy, PolicyServiceError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyServiceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let policy: Policy = toml::from_str(&text).map_err(|e| PolicyServiceError::Parse {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    policy.validate()?;
    Ok(policy)
}

/// Validates `policy`, checks it is safe under `safety`, gives it the next version, signs it
/// with `key` and stores it. The returned record holds the bytes to [`publish`].
///
/// The version comes from the database's row-locked counter
/// ([`arbiter::publish_policy`]), so controller replicas sharing one PostgreSQL never sign
/// two documents with one version. (`store` is `&mut` for its callers' sake only; the web
/// server signs through [`sign_in`] on its own handle.)
///
/// # Errors
/// [`PolicyServiceError`]: invalid or unsafe policy, unknown target CPE, sealing or storage
/// failure. Nothing is stored then.
pub fn sign(
    store: &mut Store,
    key: &SigningKey,
    policy: Policy,
    target: &Target,
    safety: &SafetyContext,
    now_ms: u64,
) -> Result<StoredPolicy, PolicyServiceError> {
    sign_in(store.db(), key, policy, target, safety, now_ms)
}

/// [`sign`] on a database handle.
///
/// # Errors
/// As [`sign`].
pub fn sign_in(
    db: &Db,
    key: &SigningKey,
    policy: Policy,
    target: &Target,
    safety: &SafetyContext,
    now_ms: u64,
) -> Result<StoredPolicy, PolicyServiceError> {
    policy.validate()?;
    check_policy_safety(&policy, safety)?;
    if let Target::Cpe(id) = target {
        if !stored::cpe_known(db, id).map_err(StoreError::from)? {
            return Err(PolicyServiceError::UnknownCpe(id.clone()));
        }
    }
    let (scope, envelope_id, cpe_id) = match target {
        Target::Fleet => (PolicyScope::Fleet, FLEET_ID, None),
        Target::Cpe(id) => (PolicyScope::Cpe, id.as_str(), Some(id.as_str())),
    };
    arbiter::publish_policy(db, scope, cpe_id, now_ms, |version| {
        let mut policy = policy.clone();
        policy.policy_version = version;
        let policy_json = serde_json::to_string(&policy)?;
        let wire = seal(&Body::Policy(policy), envelope_id, version, now_ms, key)?;
        Ok::<_, PolicyServiceError>((policy_json, wire))
    })
}

/// The retained topic of a stored policy.
pub fn topic_of(stored: &StoredPolicy) -> Topic {
    match &stored.cpe_id {
        None => Topic::FleetPolicy,
        Some(id) => Topic::CpePolicy(id.clone()),
    }
}

/// The newest fleet policy and the newest override of every CPE: what `serve` republishes
/// on start (the embedded broker keeps no retained messages across restarts).
///
/// # Errors
/// A store error.
pub fn latest_all(store: &Store) -> Result<Vec<StoredPolicy>, StoreError> {
    let mut out = Vec::new();
    if let Some(p) = store.latest_policy(PolicyScope::Fleet, None)? {
        out.push(p);
    }
    for cpe in store.cpes()? {
        if let Some(p) = store.latest_policy(PolicyScope::Cpe, Some(&cpe.cpe_id))? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Publishes each policy retained at QoS 1 through a short-lived connection as
/// `client_id`, and waits until the broker acknowledged every one.
///
/// # Errors
/// [`PolicyServiceError::Publish`] when the broker is unreachable or too slow.
pub async fn publish(
    broker_config: &BrokerConfig,
    client_id: &str,
    policies: &[StoredPolicy],
    timeout: Duration,
) -> Result<(), PolicyServiceError> {
    publish_raw(
        broker_config,
        client_id,
        policies
            .iter()
            .map(|p| (topic_of(p).to_string(), p.wire.clone()))
            .collect(),
        timeout,
    )
    .await
}

/// Publishes `(topic, bytes)` pairs retained at QoS 1 and waits for every PubAck. Also used
/// by tests to put a forged or rolled-back policy in front of agents.
///
/// # Errors
/// [`PolicyServiceError::Publish`].
pub async fn publish_raw(
    broker_config: &BrokerConfig,
    client_id: &str,
    messages: Vec<(String, Vec<u8>)>,
    timeout: Duration,
) -> Result<(), PolicyServiceError> {
    publish_with(broker_config, client_id, messages, true, timeout).await
}

/// Publishes `(topic, bytes)` pairs at QoS 1, retained or not, and waits for every PubAck:
/// policy (retained) and commands (not retained) both go out this way.
///
/// # Errors
/// [`PolicyServiceError::Publish`].
pub async fn publish_with(
    broker_config: &BrokerConfig,
    client_id: &str,
    messages: Vec<(String, Vec<u8>)>,
    retain: bool,
    timeout: Duration,
) -> Result<(), PolicyServiceError> {
    if messages.is_empty() {
        return Ok(());
    }
    let options = broker::client_options(broker_config, client_id)?;
    let (client, mut eventloop) = AsyncClient::new(options, messages.len() + 10);
    let total = messages.len();
    let run = async {
        let mut sent = false;
        let mut acked = 0usize;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) if !sent => {
                    sent = true;
                    for (topic, bytes) in &messages {
                        client
                            .try_publish(topic.clone(), QoS::AtLeastOnce, retain, bytes.clone())
                            .map_err(|e| PolicyServiceError::Publish(e.to_string()))?;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == total {
                        let _ = client.try_disconnect();
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    if acked == total {
                        return Ok(());
                    }
                    return Err(PolicyServiceError::Publish(e.to_string()));
                }
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| PolicyServiceError::Publish("timed out waiting for the broker".into()))?
}

/// What the policy watch does about a message seen on a retained policy topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// It is the latest signed policy for the topic (or an empty topic that has none).
    Nothing,
    /// Something else holds the topic: put the latest back (retained).
    Republish(Vec<u8>),
    /// Something holds a topic the controller has no policy for: clear it (an empty
    /// retained message).
    Clear,
}

/// The decision of the policy watch for `payload` seen on a topic whose latest signed
/// policy is `latest`. Pure; the bytes are compared exactly, so garbage, another
/// signature and an older validly signed version are all put right.
pub fn restore_decision(latest: Option<&StoredPolicy>, payload: &[u8]) -> Restore {
    match latest {
        Some(p) if p.wire == payload => Restore::Nothing,
        Some(p) => Restore::Republish(p.wire.clone()),
        None if payload.is_empty() => Restore::Nothing,
        None => Restore::Clear,
    }
}

/// The policy watch: subscribes to the fleet policy topic and every per-CPE policy topic
/// and, whenever what the broker holds (retained, or published since) is not the latest
/// signed policy in the database, republishes the latest retained, or clears a per-CPE
/// topic the controller has no policy for. Counted in `/metrics`
/// (`smtpguard_policy_restored_total`). Runs until the process ends; reconnects with a
/// back-off. `database_url` is [`crate::config::Config::database_url`].
pub async fn watch_retained(broker_config: BrokerConfig, client_id: String, database_url: String) {
    use crate::broker::stats::STATS;
    let store = match Store::open_url(&database_url) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "policy watch: cannot open the database");
            return;
        }
    };
    let options = match broker::client_options(&broker_config, &client_id) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "policy watch: broker options");
            return;
        }
    };
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let cpe_filter = format!("{}/cpe/+/policy", smtpguard_protocol::topic::PREFIX);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let filters = [Topic::FleetPolicy.to_string(), cpe_filter.clone()]
                    .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::warn!(error = %e, "policy watch: could not subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let (latest, label) = match Topic::parse(&p.topic) {
                    Ok(Topic::FleetPolicy) => (
                        store.latest_policy(PolicyScope::Fleet, None),
                        "fleet_republished",
                    ),
                    Ok(Topic::CpePolicy(id)) => (
                        store.latest_policy(PolicyScope::Cpe, Some(&id)),
                        "cpe_republished",
                    ),
                    _ => continue,
                };
                let latest = match latest {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "policy watch: reading the latest policy");
                        continue;
                    }
                };
                let (bytes, label) = match restore_decision(latest.as_ref(), &p.payload) {
                    Restore::Nothing => continue,
                    Restore::Republish(bytes) => (bytes, label),
                    Restore::Clear => (Vec::new(), "cpe_cleared"),
                };
                tracing::warn!(topic = %p.topic, action = label, "a retained policy topic held something else than the latest signed policy");
                STATS.policy_restored.add(label);
                if let Err(e) = client.try_publish(p.topic.clone(), QoS::AtLeastOnce, true, bytes) {
                    tracing::warn!(error = %e, "policy watch: could not queue the restore");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "policy watch: connection lost");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Longest note kept with an allowed device (characters).
pub const ALLOW_NOTE_MAX: usize = 500;

/// `base` with `macs` added to its allowlist (each once).
pub fn with_allowed(mut base: Policy, macs: &[MacAddr]) -> Policy {
    for mac in macs {
        if !base.allow_macs.contains(mac) {
            base.allow_macs.push(*mac);
        }
    }
    base
}

/// What `cpe_id`'s per-CPE policy must hold (see the module docs), or `None` when the
/// router needs none (no allowed device, not in a canary cohort, no derived override yet)
/// or runs a newer override set by hand and `keep_hand_set`.
///
/// # Errors
/// [`crate::web::WebError`] for database errors or a stored policy that does not parse.
pub fn derived_override(
    db: &impl Sql,
    cpe_id: &str,
    keep_hand_set: bool,
) -> Result<Option<Policy>, crate::web::WebError> {
    let canary = crate::rollout::canary_policy_for(db, cpe_id)?;
    let macs = allowed_devices(db, cpe_id)?;
    let (latest, derived) = stored::override_versions(db, cpe_id)?;
    if keep_hand_set && latest.is_some() && latest > derived {
        return Ok(None);
    }
    if canary.is_none() && macs.is_empty() && derived.is_none() {
        return Ok(None);
    }
    let base = match canary {
        Some(p) => p,
        None => crate::web::policy_editor::current_fleet_policy(db)?,
    };
    Ok(Some(with_allowed(base, &macs)))
}

/// Signs and publishes the derived per-CPE policy of each of `cpes` that needs one
/// ([`derived_override`]) and records it as derived. Returns the version signed for each
/// router that got one, or why it failed.
pub async fn rederive(
    state: &crate::web::AppState,
    cpes: Vec<String>,
    keep_hand_set: bool,
) -> Vec<(String, Result<u64, String>)> {
    let mut out = Vec::new();
    for cpe in cpes {
        let id = cpe.clone();
        let policy = match state
            .sql(move |db| derived_override(db, &id, keep_hand_set))
            .await
        {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                out.push((cpe, Err(e.to_string())));
                continue;
            }
        };
        let result = state.policy.publish(policy, Some(cpe.clone())).await;
        if let Ok(version) = result {
            let id = cpe.clone();
            let recorded = state
                .sql(move |db| Ok(stored::record_derived(db, &id, version)?))
                .await;
            if let Err(e) = recorded {
                tracing::error!(cpe_id = %cpe, version, error = %e, "could not record a derived override");
            }
        }
        out.push((cpe, result));
    }
    out
}

/// Every router with a derived override, re-derived from the live fleet policy (after a
/// fleet publish): overrides set by hand since are left alone.
pub async fn rederive_all(state: &crate::web::AppState) -> Vec<(String, Result<u64, String>)> {
    let cpes = state.sql(|db| Ok(stored::derived_cpes(db)?)).await;
    match cpes {
        Ok(cpes) => rederive(state, cpes, true).await,
        Err(e) => {
            tracing::error!(error = %e, "could not list the derived overrides");
            Vec::new()
        }
    }
}

/// Allows `mac` on `cpe_id` for good: the router gets a per-CPE policy (signed, through
/// [`rederive`]) whose allowlist holds it, so it is never throttled or blocked there.
/// Audited as `device_allow` with `actor`, whatever the outcome. Any NOC page that lets an
/// operator allow a device calls this (the senders page, `POST /noc/cpe/{id}/allow`).
/// Returns the per-CPE version signed.
///
/// # Errors
/// Why nothing was published: an unknown or revoked router, a note of the wrong length,
/// a database or publishing failure.
pub async fn allow_device(
    state: &crate::web::AppState,
    actor: &str,
    cpe_id: &str,
    mac: MacAddr,
    note: &str,
) -> Result<u64, String> {
    let target = format!("{cpe_id} {mac}");
    let result = allow_device_inner(state, actor, cpe_id, mac, note).await;
    let (outcome, detail) = match &result {
        Ok(v) => ("ok", format!("per-CPE version {v}; note: {note}")),
        Err(e) => ("refused", format!("{e}; note: {note}")),
    };
    state
        .audit(actor, "device_allow", target, outcome, detail)
        .await;
    result
}

async fn allow_device_inner(
    state: &crate::web::AppState,
    actor: &str,
    cpe_id: &str,
    mac: MacAddr,
    note: &str,
) -> Result<u64, String> {
    let note = note.trim().to_string();
    if note.is_empty() || note.chars().count() > ALLOW_NOTE_MAX {
        return Err(format!(
            "a note of 1 to {ALLOW_NOTE_MAX} characters is required"
        ));
    }
    let now = state.now_ms();
    let (id, who) = (cpe_id.to_string(), actor.to_string());
    state
        .sql(move |db| {
            if !stored::cpe_enrolled(db, &id)? {
                return Err(crate::web::WebError::NotFound);
            }
            stored::allow_device(db, &id, mac, &note, &who, now)?;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            crate::web::WebError::NotFound => format!("no enrolled router {cpe_id:?}"),
            other => other.to_string(),
        })?;
    match rederive(state, vec![cpe_id.to_string()], false).await.pop() {
        Some((_, result)) => result,
        None => Err("no per-CPE policy was derived".into()),
    }
}

/// The rollout view: every CPE with its applied versions and refusals.
///
/// # Errors
/// A store error.
pub fn status(store: &Store) -> Result<Vec<RolloutRow>, StoreError> {
    store.rollout()
}

/// The rollout view as the text table `policy status` prints.
pub fn format_status(latest_fleet: Option<u64>, rows: &[RolloutRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "latest fleet policy: {}",
        latest_fleet.map_or("none".to_string(), |v| v.to_string())
    );
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:>6} {:>6}  refusals",
        "cpe", "status", "fleet", "cpe"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for r in rows {
        let refusals: Vec<String> = r
            .refusals
            .iter()
            .map(|(scope, v, why)| format!("{scope} v{v}: {why}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:>6} {:>6}  {}",
            r.cpe_id,
            r.status.as_deref().unwrap_or("-"),
            opt(r.fleet_policy_version),
            opt(r.cpe_policy_version),
            refusals.join("; ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{keys, open};

    #[test]
    fn versions_increase_across_scopes_and_the_envelope_names_the_target() {
        let mut store = Store::open_in_memory().unwrap();
        let key = keys::generate();
        let cpe_key = keys::generate().verifying_key();
        crate::registry::add(
            &mut store,
            "cpe-1",
            &keys::public_key_text(&cpe_key),
            None,
            0,
        )
        .unwrap();
        let safe = SafetyContext::default();
        let a = sign(
            &mut store,
            &key,
            Policy::default(),
            &Target::Fleet,
            &safe,
            1,
        )
        .unwrap();
        let b = sign(
            &mut store,
            &key,
            Policy::default(),
            &Target::Cpe("cpe-1".into()),
            &safe,
            2,
        )
        .unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        let opened = open(&b.wire).unwrap();
        assert_eq!(opened.header().cpe_id, "cpe-1");
        assert_eq!(opened.header().seq, 2);
        let env = opened.verify(&key.verifying_key()).unwrap();
        let Body::Policy(p) = env.body else { panic!() };
        assert_eq!(p.policy_version, 2);
        assert!(matches!(
            sign(
                &mut store,
                &key,
                Policy::default(),
                &Target::Cpe("nope".into()),
                &safe,
                3
            ),
            Err(PolicyServiceError::UnknownCpe(_))
        ));
        assert_eq!(latest_all(&store).unwrap().len(), 2);
    }

    fn enrol(store: &Store, cpe_id: &str) {
        store.upsert_cpe(cpe_id, "k", None, 0).unwrap();
    }

    #[test]
    fn signing_numbers_and_stores_versions_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            let db = store.db();
            enrol(&store, "cpe-1");
            let key = keys::generate();
            let safe = SafetyContext::default();
            let fleet = sign_in(db, &key, Policy::default(), &Target::Fleet, &safe, 1).unwrap();
            let cpe = sign_in(
                db,
                &key,
                Policy::default(),
                &Target::Cpe("cpe-1".into()),
                &safe,
                2,
            )
            .unwrap();
            assert_eq!((fleet.version, cpe.version), (1, 2), "{url}");
            let unknown = sign_in(
                db,
                &key,
                Policy::default(),
                &Target::Cpe("nope".into()),
                &safe,
                3,
            );
            assert!(
                matches!(unknown, Err(PolicyServiceError::UnknownCpe(_))),
                "{url}"
            );
            assert_eq!(stored::versions(&**db), [1, 2], "{url}");
            let kept = store
                .latest_policy(PolicyScope::Cpe, Some("cpe-1"))
                .unwrap()
                .unwrap();
            assert_eq!(
                (kept.version, kept.cpe_id.as_deref()),
                (2, Some("cpe-1")),
                "{url}"
            );
        }
    }

    /// What a router's derived override must hold, on both backends: nothing until a
    /// device is allowed, then the live fleet policy plus the device; a newer override set
    /// by hand is kept when asked to.
    #[test]
    fn derived_overrides_follow_allowed_devices_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            enrol(&store, "cpe-1");
            let key = keys::generate();
            let safe = SafetyContext::default();
            let fleet = Policy {
                rate_limit_per_minute: 12,
                ..Policy::default()
            };
            sign_in(db, &key, fleet, &Target::Fleet, &safe, 1).unwrap();
            assert!(
                derived_override(db, "cpe-1", false).unwrap().is_none(),
                "{url}"
            );
            let mac: MacAddr = "02:00:00:00:00:aa".parse().unwrap();
            stored::allow_device(db, "cpe-1", mac, "printer", "alice", 1).unwrap();
            assert_eq!(allowed_devices(db, "cpe-1").unwrap(), [mac], "{url}");
            let derived = derived_override(db, "cpe-1", false).unwrap().unwrap();
            assert_eq!(derived.rate_limit_per_minute, 12, "{url}");
            assert!(derived.allow_macs.contains(&mac), "{url}");
            let signed =
                sign_in(db, &key, derived, &Target::Cpe("cpe-1".into()), &safe, 2).unwrap();
            stored::record_derived(db, "cpe-1", signed.version).unwrap();
            assert!(
                derived_override(db, "cpe-1", true).unwrap().is_some(),
                "{url}"
            );
            // An override set by hand since: kept after a fleet publish, replaced on request.
            sign_in(
                db,
                &key,
                Policy::default(),
                &Target::Cpe("cpe-1".into()),
                &safe,
                3,
            )
            .unwrap();
            assert!(
                derived_override(db, "cpe-1", true).unwrap().is_none(),
                "{url}"
            );
            assert!(
                derived_override(db, "cpe-1", false).unwrap().is_some(),
                "{url}"
            );
        }
    }

    /// Two replicas (two handles on one database) publishing at the same time never sign
    /// two documents with one version, and every version's envelope carries its number.
    #[test]
    fn replicas_publishing_at_once_never_repeat_a_version() {
        const EACH: usize = 15;
        for (url, _dir) in crate::store::db::tests::backends() {
            let first = Store::open_url(&url).unwrap();
            let second = Store::open_url(&url).unwrap();
            let key = keys::generate();
            let barrier = std::sync::Barrier::new(2);
            let signed: Vec<Vec<StoredPolicy>> = std::thread::scope(|s| {
                let handles: Vec<_> = [&first, &second]
                    .into_iter()
                    .map(|store| {
                        let (key, barrier) = (&key, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            (0..EACH)
                                .map(|i| {
                                    sign_in(
                                        store.db(),
                                        key,
                                        Policy::default(),
                                        &Target::Fleet,
                                        &SafetyContext::default(),
                                        i as u64,
                                    )
                                    .unwrap()
                                })
                                .collect()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut versions: Vec<u64> = signed.iter().flatten().map(|p| p.version).collect();
            versions.sort_unstable();
            let expected: Vec<u64> = (1..=2 * EACH as u64).collect();
            assert_eq!(versions, expected, "{url}");
            assert_eq!(stored::versions(&**first.db()), expected, "{url}");
            for p in signed.iter().flatten() {
                let opened = open(&p.wire).unwrap();
                assert_eq!(opened.header().seq, p.version, "{url}");
            }
        }
    }

    /// Finding row 3 of issue 17: garbage, an older validly signed version and a planted
    /// per-CPE policy are put right; the latest itself and an empty topic are left alone.
    #[test]
    fn the_watch_restores_anything_but_the_latest() {
        let mut store = Store::open_in_memory().unwrap();
        let key = keys::generate();
        let safe = SafetyContext::default();
        let old = sign(
            &mut store,
            &key,
            Policy::default(),
            &Target::Fleet,
            &safe,
            1,
        )
        .unwrap();
        let new = sign(
            &mut store,
            &key,
            Policy::default(),
            &Target::Fleet,
            &safe,
            2,
        )
        .unwrap();
        assert_eq!(restore_decision(Some(&new), &new.wire), Restore::Nothing);
        assert_eq!(
            restore_decision(Some(&new), &old.wire),
            Restore::Republish(new.wire.clone())
        );
        assert_eq!(
            restore_decision(Some(&new), b"garbage"),
            Restore::Republish(new.wire.clone())
        );
        assert_eq!(
            restore_decision(Some(&new), b""),
            Restore::Republish(new.wire.clone())
        );
        assert_eq!(restore_decision(None, &old.wire), Restore::Clear);
        assert_eq!(restore_decision(None, b""), Restore::Nothing);
    }

    /// Finding rows 5 and 6 of issue 17 at the signer: neither a catch-all indicator nor
    /// one covering the configured ISP relay (with `allow_relays` emptied) is signed, and no
    /// version is used up.
    #[test]
    fn unsafe_policies_are_not_signed() {
        let mut store = Store::open_in_memory().unwrap();
        let key = keys::generate();
        let ctx = SafetyContext {
            local_relays: vec!["198.51.100.25:587".parse().unwrap()],
            brokers: vec!["192.0.2.10".parse().unwrap()],
        };
        for server in ["0.0.0.0/0", "198.51.100.25/32", "192.0.2.0/24"] {
            let mut p = Policy::default();
            p.allow_relays.clear();
            p.indicators.mail_servers = vec![server.parse().unwrap()];
            let err = sign(&mut store, &key, p, &Target::Fleet, &ctx, 1).unwrap_err();
            assert!(matches!(err, PolicyServiceError::Unsafe(_)), "{err:?}");
            assert!(
                err.to_string().contains("indicators.mail_servers")
                    && err.to_string().contains(server),
                "{err}"
            );
        }
        assert_eq!(store.highest_policy_version().unwrap(), 0);
        assert!(store
            .latest_policy(PolicyScope::Fleet, None)
            .unwrap()
            .is_none());
    }
}
