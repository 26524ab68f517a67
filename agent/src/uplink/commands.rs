//! Which controller commands an agent applies (pure: no I/O besides the last-id file).
//!
//! A command on this router's command topic is handed to the run loop only if it verifies
//! against the controller's key ([`verify_command`]: topic, framing, signature, body), names
//! this router as its target, has not expired, and its id is above the last command this
//! router handled ([`Command::refusal`]). The last id is kept in `state_dir/command-id`,
//! written durably before the answer leaves, so a command replayed after a restart is
//! refused too. Everything refused is answered with a [`CommandAck`] giving the reason, and
//! counted. The same id seen again before the run loop answered it (a QoS 1 redelivery) is
//! ignored silently.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use smtpguard_protocol::{
    open, verify_command, AckOutcome, Body, Command, CommandAck, Freshness, KeyStatus, Topic,
};

use super::seq::{write_durably, SeqError};

/// What to do with one message on the command topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandDecision {
    /// Hand it to the run loop, which answers with the core's ack.
    Apply(Command),
    /// Answer with this refusal.
    Refuse(CommandAck),
    /// Nothing to do (not a command topic of this router, or a redelivery).
    Ignore,
}

/// The command gate.
#[derive(Debug)]
pub struct CommandGuard {
    controller_key: VerifyingKey,
    cpe_id: String,
    path: PathBuf,
    /// The highest id handled and recorded on disk.
    handled: Option<u64>,
    /// The highest id handed to the run loop (not answered yet, perhaps).
    offered: Option<u64>,
    refused: u64,
}

impl CommandGuard {
    /// A gate for `cpe_id`, with the last handled id read from `state_dir/command-id`.
    pub fn open(state_dir: &Path, controller_key: VerifyingKey, cpe_id: String) -> CommandGuard {
        let path = state_dir.join("command-id");
        let handled = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        CommandGuard {
            controller_key,
            cpe_id,
            path,
            handled,
            offered: handled,
            refused: 0,
        }
    }

    /// The highest command id handled (applied, or refused by the core).
    pub fn handled(&self) -> Option<u64> {
        self.handled
    }

    /// Commands refused so far by this gate (forged, foreign, expired, replayed).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Records that the run loop answered command `id`, durably, so it is never applied
    /// again.
    ///
    /// # Errors
    /// [`SeqError::Io`] when the file cannot be written.
    pub fn mark_handled(&mut self, id: u64) -> Result<(), SeqError> {
        let id = self.handled.map_or(id, |h| h.max(id));
        self.handled = Some(id);
        self.offered = Some(self.offered.map_or(id, |o| o.max(id)));
        write_durably(&self.path, format!("{id}\n").as_bytes())
    }

    /// Decides about one message received on `topic` at `now_ms`.
    pub fn decide(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> CommandDecision {
        match Topic::parse(topic) {
            Ok(Topic::Command(id)) if id == self.cpe_id => {}
            _ => return CommandDecision::Ignore,
        }
        let claimed = open(payload).map(|o| o.header().seq).unwrap_or(0);
        // Expiry is the command's own; the envelope only must not come from the future.
        let any_age = Freshness {
            max_age_ms: u64::MAX,
            ..Freshness::default()
        };
        let key = self.controller_key;
        let verified = verify_command(topic, payload, |_| KeyStatus::Active(key), now_ms, &any_age);
        let command = match verified {
            Ok(envelope) => match envelope.body {
                Body::Command(c) => c,
                _ => return self.refuse(claimed, now_ms, "not a command message".into()),
            },
            Err(r) => {
                return self.refuse(claimed, now_ms, format!("{} ({})", r, r.reason().as_str()))
            }
        };
        if self.offered == Some(command.command_id) && self.handled != self.offered {
            return CommandDecision::Ignore;
        }
        if let Some(why) = command.refusal(&self.cpe_id, now_ms, self.offered) {
            return self.refuse(command.command_id, now_ms, why);
        }
        self.offered = Some(command.command_id);
        CommandDecision::Apply(command)
    }

    fn refuse(&mut self, command_id: u64, at_ms: u64, reason: String) -> CommandDecision {
        self.refused += 1;
        CommandDecision::Refuse(CommandAck {
            command_id,
            outcome: AckOutcome::Refused { reason },
            at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{keys, seal, CommandAction, MacAddr};

    const NOW: u64 = 1_795_435_200_000;

    fn command(target: &str, id: u64, expires_ms: u64) -> Command {
        Command {
            target: target.into(),
            command_id: id,
            issued_ms: NOW,
            expires_ms,
            action: CommandAction::Release {
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                grace_secs: 600,
            },
        }
    }

    fn signed(key: &ed25519_dalek::SigningKey, c: Command, envelope_id: &str) -> Vec<u8> {
        let id = c.command_id;
        seal(&Body::Command(c), envelope_id, id, NOW, key).unwrap()
    }

    fn reason(d: CommandDecision) -> String {
        match d {
            CommandDecision::Refuse(CommandAck {
                outcome: AckOutcome::Refused { reason },
                ..
            }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn forged_foreign_expired_and_replayed_commands_are_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate();
        let mut g = CommandGuard::open(dir.path(), key.verifying_key(), "cpe-a".into());
        let own = "smtpguard/v1/cpe/cpe-a/command";
        let first = signed(&key, command("cpe-a", 5, NOW + 60_000), "cpe-a");
        let CommandDecision::Apply(c) = g.decide(own, &first, NOW) else {
            panic!()
        };
        assert_eq!(c.command_id, 5);
        // A QoS 1 redelivery before the answer: silent.
        assert_eq!(g.decide(own, &first, NOW), CommandDecision::Ignore);
        g.mark_handled(5).unwrap();
        // The same bytes again after the answer: a replay.
        assert!(reason(g.decide(own, &first, NOW)).contains("replayed"));
        // Another key.
        let forged = signed(
            &keys::generate(),
            command("cpe-a", 6, NOW + 60_000),
            "cpe-a",
        );
        assert!(reason(g.decide(own, &forged, NOW)).contains("bad_signature"));
        // For router B, even signed and delivered on A's topic with A's envelope id.
        let foreign = signed(&key, command("cpe-b", 7, NOW + 60_000), "cpe-a");
        assert!(reason(g.decide(own, &foreign, NOW)).contains("\"cpe-b\""));
        // For router B on its own topic: not this router's topic, nothing to do.
        let b = signed(&key, command("cpe-b", 7, NOW + 60_000), "cpe-b");
        assert_eq!(
            g.decide("smtpguard/v1/cpe/cpe-b/command", &b, NOW),
            CommandDecision::Ignore
        );
        // Envelope for B on A's topic: the topic check refuses it.
        assert!(reason(g.decide(own, &b, NOW)).contains("topic_mismatch"));
        let expired = signed(&key, command("cpe-a", 8, NOW - 1), "cpe-a");
        assert!(reason(g.decide(own, &expired, NOW)).contains("expired"));
        assert!(reason(g.decide(own, b"garbage", NOW)).contains("malformed"));
        assert_eq!(g.refused(), 6);

        // After a restart the replay is still refused; a newer id is applied.
        let mut g = CommandGuard::open(dir.path(), key.verifying_key(), "cpe-a".into());
        assert_eq!(g.handled(), Some(5));
        assert!(reason(g.decide(own, &first, NOW)).contains("replayed"));
        let next = signed(&key, command("cpe-a", 9, NOW + 60_000), "cpe-a");
        assert!(matches!(
            g.decide(own, &next, NOW),
            CommandDecision::Apply(_)
        ));
    }
}
