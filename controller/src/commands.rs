//! Commands to one router: sign, store, publish (QoS 1, not retained) and follow the answers.
//!
//! [`issue`] checks the router is enrolled, takes the router's next command id, seals the
//! [`Command`] with the controller key (the policy-signing key: routers verify commands
//! against the same key as policy; envelope `cpe_id` = the router, `seq` = the command id)
//! and stores it as `sent`. [`send`] publishes it on `smtpguard/v1/cpe/{id}/command`; if the
//! broker does not take it, the command is marked `unsent`. The router answers on its
//! `command-ack` topic; the ingest stores the answer ([`crate::store::commands::note_ack`])
//! and [`crate::store::commands::list`] shows where each command stands. Routers keep no
//! broker session, so a command published while its router was offline reached nobody:
//! when the router says it is online again, the ingest publishes its unanswered, unexpired
//! commands once more (`smtpguard_command_publishes_total` counts every publish). The NOC (approving a
//! release request) and the JSON API (`POST /api/cpes/{cpe}/devices/{mac}/release|block`)
//! both go through [`issue`] and [`send`].

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use smtpguard_protocol::{seal, Body, Command, CommandAction, MacAddr, SealError, Topic};

use crate::config::{BrokerConfig, CommandsConfig};
use crate::policy::{self, PolicyServiceError};
use crate::store::commands::{self as table, NewCommand};
use crate::store::{Store, StoreError};

/// A command could not be issued or sent.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The router is not enrolled (or was revoked).
    #[error("no enrolled CPE {0:?}")]
    UnknownCpe(String),
    /// A grace period or time to live out of range.
    #[error("{field} must be 1-{max} seconds", max = smtpguard_protocol::messages::MAX_COMMAND_SECS)]
    Range {
        /// The field.
        field: &'static str,
    },
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The controller key could not be read.
    #[error("controller key: {0}")]
    Key(String),
    /// The broker did not take it.
    #[error("command {command_id} stored but not sent: {source}")]
    Publish {
        /// The command.
        command_id: u64,
        /// Why.
        source: PolicyServiceError,
    },
}

impl CommandError {
    /// Whether the caller asked for something impossible (a 4xx, not a 5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            CommandError::UnknownCpe(_) | CommandError::Range { .. }
        )
    }
}

/// What an operator asks, before defaults are filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Release `mac`, leaving it alone for `grace_secs` (the configured default if `None`).
    Release {
        /// The device.
        mac: MacAddr,
        /// The grace period.
        grace_secs: Option<u32>,
    },
    /// Block `mac` for `ttl_secs` (the configured default if `None`).
    Block {
        /// The device.
        mac: MacAddr,
        /// The time to live.
        ttl_secs: Option<u32>,
    },
}

impl Order {
    /// The action with the defaults of `config` filled in.
    ///
    /// # Errors
    /// [`CommandError::Range`] for a time of 0 or beyond 30 days.
    pub fn action(self, config: &CommandsConfig) -> Result<CommandAction, CommandError> {
        let max = smtpguard_protocol::messages::MAX_COMMAND_SECS;
        let check = |v: u32, field| {
            if v == 0 || v > max {
                Err(CommandError::Range { field })
            } else {
                Ok(v)
            }
        };
        Ok(match self {
            Order::Release { mac, grace_secs } => CommandAction::Release {
                mac,
                grace_secs: check(
                    grace_secs.unwrap_or(config.release_grace_secs),
                    "grace_secs",
                )?,
            },
            Order::Block { mac, ttl_secs } => CommandAction::Block {
                mac,
                ttl_secs: check(ttl_secs.unwrap_or(config.block_ttl_secs), "ttl_secs")?,
            },
        })
    }
}

/// Signs `action` for `cpe_id` with `key` under the router's next command id, valid for
/// `expiry_secs` from `now_ms`, and stores it as sent (linked to `release_request_id`).
///
/// # Errors
/// [`CommandError::UnknownCpe`] for a router not enrolled or revoked, sealing or storage
/// errors; nothing is stored then.
pub fn issue(
    store: &mut Store,
    key: &SigningKey,
    cpe_id: &str,
    action: CommandAction,
    now_ms: u64,
    expiry_secs: u32,
    release_request_id: Option<i64>,
) -> Result<NewCommand, CommandError> {
    match store.cpe(cpe_id)? {
        Some(c) if c.revoked_at_ms.is_none() => {}
        _ => return Err(CommandError::UnknownCpe(cpe_id.chars().take(80).collect())),
    }
    store.issue_command(cpe_id, |command_id| {
        let expires_ms = now_ms.saturating_add(u64::from(expiry_secs) * 1000);
        let command = Command {
            target: cpe_id.to_string(),
            command_id,
            issued_ms: now_ms,
            expires_ms,
            action: action.clone(),
        };
        let wire = seal(&Body::Command(command), cpe_id, command_id, now_ms, key)?;
        Ok(NewCommand {
            cpe_id: cpe_id.to_string(),
            command_id,
            action: action.clone(),
            issued_ms: now_ms,
            expires_ms,
            wire,
            release_request_id,
        })
    })
}

/// Publishes an issued command on its router's command topic (QoS 1, not retained) as
/// `client_id`; when the broker does not take it, marks it `unsent` in the database at
/// `db_path`.
///
/// # Errors
/// [`CommandError::Publish`].
pub async fn send(
    broker: &BrokerConfig,
    client_id: &str,
    db_path: &Path,
    command: &NewCommand,
) -> Result<(), CommandError> {
    let topic = Topic::Command(command.cpe_id.clone()).to_string();
    let result = policy::publish_with(
        broker,
        client_id,
        vec![(topic, command.wire.clone())],
        false,
        Duration::from_secs(10),
    )
    .await;
    if let Err(source) = result {
        let reason = source.to_string();
        let (db, cpe_id, id) = (
            db_path.to_path_buf(),
            command.cpe_id.clone(),
            command.command_id,
        );
        let marked = tokio::task::spawn_blocking(move || {
            let store = Store::open(&db)?;
            table::mark_unsent(store.db(), &cpe_id, id, &reason)
        })
        .await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::warn!(?marked, "could not mark a command unsent");
        }
        return Err(CommandError::Publish {
            command_id: command.command_id,
            source,
        });
    }
    tracing::info!(
        cpe_id = %command.cpe_id,
        id = command.command_id,
        action = command.action.name(),
        mac = %command.action.mac(),
        "command sent"
    );
    Ok(())
}

/// [`issue`] with the key read from `key_path` and the database at `db_path`, then [`send`]:
/// what the web server's command sender runs. Returns the command id.
///
/// # Errors
/// As [`issue`] and [`send`]; [`CommandError::Key`] when the key cannot be read.
#[allow(clippy::too_many_arguments)]
pub async fn issue_and_send(
    db_path: &Path,
    key_path: &Path,
    broker: &BrokerConfig,
    client_id: &str,
    config: CommandsConfig,
    cpe_id: String,
    order: Order,
    release_request_id: Option<i64>,
    now_ms: u64,
) -> Result<u64, CommandError> {
    let action = order.action(&config)?;
    let db = db_path.to_path_buf();
    let key_path = key_path.to_path_buf();
    let issued = tokio::task::spawn_blocking(move || {
        let key = smtpguard_protocol::keys::read_secret(&key_path)
            .map_err(|e| CommandError::Key(e.to_string()))?;
        let mut store = Store::open(&db)?;
        issue(
            &mut store,
            &key,
            &cpe_id,
            action,
            now_ms,
            config.expiry_secs,
            release_request_id,
        )
    })
    .await
    .map_err(|e| CommandError::Key(format!("signing task: {e}")))??;
    send(broker, client_id, db_path, &issued).await?;
    Ok(issued.command_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::envelope::{verify_command, KeyStatus};
    use smtpguard_protocol::{keys, Freshness};

    #[test]
    fn issued_commands_verify_for_their_router_only_and_ids_increase() {
        let mut store = Store::open_in_memory().unwrap();
        let key = keys::generate();
        let router = keys::generate();
        store
            .upsert_cpe(
                "cpe-a",
                &keys::public_key_text(&router.verifying_key()),
                None,
                1,
            )
            .unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let config = CommandsConfig::default();
        let action = Order::Release {
            mac,
            grace_secs: None,
        }
        .action(&config)
        .unwrap();
        assert_eq!(
            action,
            CommandAction::Release {
                mac,
                grace_secs: config.release_grace_secs
            }
        );
        let a = issue(&mut store, &key, "cpe-a", action.clone(), 1_000, 60, None).unwrap();
        let b = issue(&mut store, &key, "cpe-a", action, 2_000, 60, Some(3)).unwrap();
        assert_eq!((a.command_id, b.command_id), (1, 2));
        let public = key.verifying_key();
        let env = verify_command(
            "smtpguard/v1/cpe/cpe-a/command",
            &b.wire,
            |_| KeyStatus::Active(public),
            2_000,
            &Freshness::default(),
        )
        .unwrap();
        let Body::Command(c) = env.body else { panic!() };
        assert_eq!(
            (c.target.as_str(), c.command_id, c.expires_ms),
            ("cpe-a", 2, 62_000)
        );
        assert!(verify_command(
            "smtpguard/v1/cpe/cpe-b/command",
            &b.wire,
            |_| KeyStatus::Active(public),
            2_000,
            &Freshness::default(),
        )
        .is_err());
        let err = issue(
            &mut store,
            &key,
            "cpe-zz",
            CommandAction::Block { mac, ttl_secs: 5 },
            1,
            60,
            None,
        )
        .unwrap_err();
        assert!(err.is_client_error());
        let err = Order::Block {
            mac,
            ttl_secs: Some(0),
        }
        .action(&config)
        .unwrap_err();
        assert!(err.to_string().contains("ttl_secs"), "{err}");
    }
}
