//! Subscriber accounts: households, the routers (CPEs) they own, their login tokens (stored
//! only as SHA-256 hashes) and their requests to release a blocked device.
//!
//! Every function that acts for a subscriber takes the household id from the
//! authenticated session and checks ownership itself, so a handler cannot forget to:
//! asking about another household's CPE is [`HouseholdError::NotFound`], exactly like asking
//! about one that does not exist. The rows are read and written by
//! [`crate::store::households`].

use rand::RngCore;
use sha2::{Digest, Sha256};
use smtpguard_protocol::{Action, MacAddr};

use crate::store::db::{DbError, Sql};
use crate::store::households as stored;

/// An account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HouseholdError {
    /// The database reported an error.
    #[error("database: {0}")]
    Database(#[from] DbError),
    /// No such household, CPE or device — or not this household's.
    #[error("not found")]
    NotFound,
    /// A field is out of range.
    #[error("{0}")]
    Invalid(&'static str),
}

/// One household.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Household {
    /// Its id.
    pub id: i64,
    /// Its display name ("The Müller family").
    pub name: String,
    /// Its routers.
    pub cpes: Vec<String>,
}

/// A subscriber's request to lift a block on a device they cleaned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseRequest {
    /// Its id.
    pub id: i64,
    /// The household.
    pub household_id: i64,
    /// The router.
    pub cpe_id: String,
    /// The device.
    pub mac: String,
    /// When asked (Unix ms).
    pub requested_ms: u64,
    /// The subscriber's note (hostile text).
    pub note: String,
    /// `pending`, `approved` or `denied`.
    pub status: String,
    /// When the NOC decided (Unix ms).
    pub decided_ms: Option<u64>,
    /// What became of the release command sent for it, if one was.
    pub command: Option<CommandDelivery>,
}

/// What became of the release command sent to the router for an approved request (the
/// newest command linked to the request in the `commands` table), as [`release_progress`]
/// words it. A command the router refused, or that expired unanswered, or that the broker
/// did not take, is no delivery: the request reads as approved but not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum CommandDelivery {
    /// Published to the router at this time (Unix ms), not confirmed yet.
    Sent {
        /// When.
        at_ms: u64,
    },
    /// The router confirmed it lifted the restriction at this time (Unix ms).
    Acknowledged {
        /// When.
        at_ms: u64,
    },
}

/// Where a release request stands, judged from the request, the release command (if any)
/// and what the router says it does to the device now — so the portal never tells a
/// subscriber a restriction is lifted while the router still enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseProgress {
    /// The NOC has not decided.
    Pending,
    /// The NOC declined.
    Denied,
    /// Approved, but nothing has told the router: the restriction stays until it ends by
    /// itself (`until_ms`, when it has an end).
    ApprovedNotSent {
        /// When the restriction ends on its own.
        until_ms: Option<u64>,
    },
    /// Approved; the release command is on its way and not confirmed.
    Sent {
        /// When it was sent.
        at_ms: u64,
        /// When the restriction ends on its own anyway.
        until_ms: Option<u64>,
    },
    /// The router confirmed the release; its reports do not show it yet.
    Acknowledged {
        /// When the router confirmed.
        at_ms: u64,
    },
    /// Approved, and the router no longer restricts the device.
    Lifted,
}

/// Judges a request: `in_force` and `until_ms` are the action the router reports in force
/// for the device now (an expired one already counted as over), `delivery` what became of
/// a release command for it.
pub fn release_progress(
    request: &ReleaseRequest,
    in_force: Action,
    until_ms: Option<u64>,
    delivery: Option<CommandDelivery>,
) -> ReleaseProgress {
    match request.status.as_str() {
        "pending" => ReleaseProgress::Pending,
        "approved" if in_force == Action::Monitor => ReleaseProgress::Lifted,
        "approved" => match delivery {
            None => ReleaseProgress::ApprovedNotSent { until_ms },
            Some(CommandDelivery::Sent { at_ms }) => ReleaseProgress::Sent { at_ms, until_ms },
            Some(CommandDelivery::Acknowledged { at_ms }) => {
                ReleaseProgress::Acknowledged { at_ms }
            }
        },
        _ => ReleaseProgress::Denied,
    }
}

impl ReleaseProgress {
    /// A stable name for pages and tests (`data-progress`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseProgress::Pending => "pending",
            ReleaseProgress::Denied => "denied",
            ReleaseProgress::ApprovedNotSent { .. } => "approved-not-sent",
            ReleaseProgress::Sent { .. } => "release-sent",
            ReleaseProgress::Acknowledged { .. } => "release-acknowledged",
            ReleaseProgress::Lifted => "lifted",
        }
    }

    /// What it means for the subscriber, with times formatted by `time`.
    pub fn subscriber_text(self, time: impl Fn(u64) -> String) -> String {
        let stays = |until: Option<u64>| match until {
            Some(u) => format!(" It ends by itself at {} at the latest.", time(u)),
            None => String::new(),
        };
        match self {
            ReleaseProgress::Pending => "We have your request and are checking the device's traffic. You do not need to do anything else.".into(),
            ReleaseProgress::Denied => "Your request was declined because the device is still sending spam. Please repeat the clean-up steps.".into(),
            ReleaseProgress::ApprovedNotSent { until_ms } => format!(
                "Your request was approved, but your router has not lifted the restriction yet: it still applies as shown above.{}",
                stays(until_ms)
            ),
            ReleaseProgress::Sent { at_ms, until_ms } => format!(
                "Your request was approved and the release was sent to your router at {}; it still applies until the router confirms.{}",
                time(at_ms),
                stays(until_ms)
            ),
            ReleaseProgress::Acknowledged { at_ms } => format!(
                "Your request was approved and your router lifted the restriction at {}.",
                time(at_ms)
            ),
            ReleaseProgress::Lifted => "Your request was approved and the restriction has been lifted.".into(),
        }
    }

    /// The operator's short form.
    pub fn noc_text(self, time: impl Fn(u64) -> String) -> String {
        match self {
            ReleaseProgress::Pending => "pending".into(),
            ReleaseProgress::Denied => "denied".into(),
            ReleaseProgress::ApprovedNotSent { .. } => {
                "approved — not sent to the router; still enforced".into()
            }
            ReleaseProgress::Sent { at_ms, .. } => {
                format!("approved — release sent {}, not confirmed", time(at_ms))
            }
            ReleaseProgress::Acknowledged { at_ms } => {
                format!("approved — lifted by the router {}", time(at_ms))
            }
            ReleaseProgress::Lifted => "approved — lifted".into(),
        }
    }
}

/// Longest note a subscriber can attach to a release request.
pub const MAX_NOTE_CHARS: usize = 500;

/// The SHA-256 of a secret, hex: what is stored instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random secret: 32 bytes from the OS generator, hex, with a readable prefix.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Creates a household owning `cpes` and returns its id and a login token (shown once).
/// Pass a transaction ([`crate::store::db::Tx`]) for all of it or nothing.
///
/// # Errors
/// [`HouseholdError::Database`], e.g. when a CPE already belongs to a household.
pub fn create(
    db: &impl Sql,
    name: &str,
    cpes: &[&str],
    now_ms: u64,
) -> Result<(i64, String), HouseholdError> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(HouseholdError::Invalid(
            "household name must be 1 to 100 characters",
        ));
    }
    let id = stored::insert(db, name, now_ms)?;
    for cpe in cpes {
        stored::add_cpe(db, id, cpe)?;
    }
    let token = add_token(db, id, now_ms)?;
    Ok((id, token))
}

/// Issues another login token for a household.
///
/// # Errors
/// [`HouseholdError::Database`].
pub fn add_token(db: &impl Sql, household_id: i64, now_ms: u64) -> Result<String, HouseholdError> {
    let token = new_secret("hh_");
    stored::add_token_hash(db, &hash_secret(&token), household_id, now_ms)?;
    Ok(token)
}

/// Where a household wants to hear from us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The household.
    pub household_id: i64,
    /// Its name (the greeting).
    pub name: String,
    /// Its e-mail address, if it gave one.
    pub email: Option<String>,
    /// Whether it wants e-mail about its devices.
    pub notify_email: bool,
}

/// Sets a household's e-mail address (`None` removes it) and whether it wants e-mail.
///
/// # Errors
/// [`HouseholdError::Invalid`] for an address that is not one, [`HouseholdError::NotFound`]
/// for an unknown household.
pub fn set_contact(
    db: &impl Sql,
    household_id: i64,
    email: Option<&str>,
    notify_email: bool,
) -> Result<(), HouseholdError> {
    let email = email.map(str::trim).filter(|e| !e.is_empty());
    if let Some(e) = email {
        if e.len() > 254 || e.parse::<lettre::Address>().is_err() {
            return Err(HouseholdError::Invalid("that is not an e-mail address"));
        }
    }
    if !stored::set_contact(db, household_id, email, notify_email)? {
        return Err(HouseholdError::NotFound);
    }
    Ok(())
}

/// A household's contact.
///
/// # Errors
/// [`HouseholdError::NotFound`] for an unknown household.
pub fn contact(db: &impl Sql, household_id: i64) -> Result<Contact, HouseholdError> {
    stored::contact(db, household_id)?.ok_or(HouseholdError::NotFound)
}

/// The contact of the household that owns `cpe_id`, if any does.
///
/// # Errors
/// [`HouseholdError::Database`].
pub fn contact_for_cpe(db: &impl Sql, cpe_id: &str) -> Result<Option<Contact>, HouseholdError> {
    Ok(stored::contact_for_cpe(db, cpe_id)?)
}

/// The letters of a letter code: no 0/O, 1/I/L, so it can be read off paper.
const LETTER_CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789X";
/// Characters in a letter code (60 bits).
pub const LETTER_CODE_LEN: usize = 12;

/// A letter code as typed (any case, spaces or dashes) in its stored form, or `None` when
/// it cannot be one.
pub fn normalise_letter_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == LETTER_CODE_LEN && code.bytes().all(|b| LETTER_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

/// Issues a short sign-in code for a letter (`ABCD-EFGH-JKMN`), shown once; it signs in like
/// the household's long tokens, which keep working.
///
/// # Errors
/// [`HouseholdError::Database`].
pub fn add_letter_code(
    db: &impl Sql,
    household_id: i64,
    now_ms: u64,
) -> Result<String, HouseholdError> {
    let mut bytes = [0u8; LETTER_CODE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // 31 distinct letters, the 32nd repeats one: uniform over 5 bits per character.
    let code: String = bytes
        .iter()
        .map(|b| char::from(LETTER_CODE_ALPHABET[usize::from(b & 31)]))
        .collect();
    stored::add_token_hash(db, &hash_secret(&code), household_id, now_ms)?;
    Ok(format!("{}-{}-{}", &code[..4], &code[4..8], &code[8..]))
}

/// A household's time zone (an IANA name), if it chose one.
///
/// # Errors
/// [`HouseholdError::NotFound`] for an unknown household.
pub fn time_zone(db: &impl Sql, household_id: i64) -> Result<Option<String>, HouseholdError> {
    stored::time_zone(db, household_id)?.ok_or(HouseholdError::NotFound)
}

/// Sets a household's time zone (`None`: the controller's default).
///
/// # Errors
/// [`HouseholdError::Invalid`] for a name the system's time zone database does not know,
/// [`HouseholdError::NotFound`] for an unknown household.
pub fn set_time_zone(
    db: &impl Sql,
    household_id: i64,
    zone: Option<&str>,
) -> Result<(), HouseholdError> {
    let zone = zone.map(str::trim).filter(|z| !z.is_empty());
    if let Some(z) = zone {
        if z.len() > 64 || jiff::tz::TimeZone::get(z).is_err() {
            return Err(HouseholdError::Invalid("that is not a known time zone"));
        }
    }
    if !stored::set_time_zone(db, household_id, zone)? {
        return Err(HouseholdError::NotFound);
    }
    Ok(())
}

/// The household a token belongs to.
///
/// # Errors
/// [`HouseholdError::Database`].
pub fn authenticate(db: &impl Sql, token: &str) -> Result<Option<i64>, HouseholdError> {
    if token.is_empty() || token.len() > 200 {
        return Ok(None);
    }
    let find = |t: &str| stored::household_of_token(db, &hash_secret(t));
    if let Some(id) = find(token)? {
        return Ok(Some(id));
    }
    match normalise_letter_code(token) {
        Some(code) => Ok(find(&code)?),
        None => Ok(None),
    }
}

/// One household with its CPEs.
///
/// # Errors
/// [`HouseholdError::NotFound`] for an unknown id.
pub fn household(db: &impl Sql, id: i64) -> Result<Household, HouseholdError> {
    stored::household(db, id)?.ok_or(HouseholdError::NotFound)
}

/// Every household, by id.
///
/// # Errors
/// [`HouseholdError::Database`].
pub fn all(db: &impl Sql) -> Result<Vec<Household>, HouseholdError> {
    stored::ids(db)?
        .into_iter()
        .map(|id| household(db, id))
        .collect()
}

/// The household owning a CPE, by name.
///
/// # Errors
/// [`HouseholdError::Database`].
pub fn owner_of(db: &impl Sql, cpe_id: &str) -> Result<Option<(i64, String)>, HouseholdError> {
    Ok(stored::owner_of(db, cpe_id)?)
}

/// Records a release request for a device of this household's router. The device must be
/// known on that router.
///
/// # Errors
/// [`HouseholdError::NotFound`] when the CPE is not this household's or the device is
/// unknown on it; [`HouseholdError::Invalid`] for an over-long note.
pub fn request_release(
    db: &impl Sql,
    household_id: i64,
    cpe_id: &str,
    mac: &MacAddr,
    note: &str,
    now_ms: u64,
) -> Result<i64, HouseholdError> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(HouseholdError::Invalid(
            "note is longer than 500 characters",
        ));
    }
    let owned = owner_of(db, cpe_id)?.is_some_and(|(id, _)| id == household_id);
    if !owned {
        return Err(HouseholdError::NotFound);
    }
    let mac_text = mac.to_string();
    if !crate::store::devices::known(db, cpe_id, &mac_text)? {
        return Err(HouseholdError::NotFound);
    }
    // One open request per device is enough.
    if let Some(id) = stored::pending_release(db, cpe_id, &mac_text)? {
        return Ok(id);
    }
    Ok(stored::insert_release(
        db,
        household_id,
        cpe_id,
        &mac_text,
        note,
        now_ms,
    )?)
}

/// Release requests, newest first: one household's, or all (for the NOC).
///
/// # Errors
/// [`HouseholdError::Database`].
pub fn release_requests(
    db: &impl Sql,
    household_id: Option<i64>,
) -> Result<Vec<ReleaseRequest>, HouseholdError> {
    Ok(stored::release_requests(db, household_id)?)
}

/// The NOC decides a pending request.
///
/// # Errors
/// [`HouseholdError::NotFound`] when there is no pending request with that id.
pub fn decide_release(
    db: &impl Sql,
    id: i64,
    approve: bool,
    now_ms: u64,
) -> Result<ReleaseRequest, HouseholdError> {
    if !stored::decide_release(db, id, approve, now_ms)? {
        return Err(HouseholdError::NotFound);
    }
    release_requests(db, None)?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(HouseholdError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::db::tests::backends;
    use crate::store::db::Db;
    use crate::store::Store;

    /// A migrated database on each backend (the guard keeps the SQLite file).
    fn dbs() -> Vec<(std::sync::Arc<Db>, Option<tempfile::TempDir>)> {
        backends()
            .into_iter()
            .map(|(url, guard)| (Store::open_url(&url).unwrap().into_db(), guard))
            .collect()
    }

    #[test]
    fn a_letter_code_signs_in_however_it_is_typed_and_the_long_token_still_does() {
        for (db, _g) in dbs() {
            let db = &*db;
            let (id, token) = create(db, "Letter household", &[], 0).unwrap();
            let code = add_letter_code(db, id, 0).unwrap();
            assert_eq!(code.len(), 14);
            assert_eq!(code.matches('-').count(), 2);
            assert!(!code.contains(['0', 'O', '1', 'I', 'L']), "{code}");
            for typed in [
                code.clone(),
                code.to_lowercase(),
                code.replace('-', " "),
                format!(" {} ", code.replace('-', "")),
            ] {
                assert_eq!(authenticate(db, &typed).unwrap(), Some(id), "{typed:?}");
            }
            assert_eq!(authenticate(db, &token).unwrap(), Some(id));
            let mut wrong = code.replace('-', "");
            wrong.replace_range(..1, if wrong.starts_with('A') { "B" } else { "A" });
            assert_eq!(
                authenticate(db, &wrong).unwrap(),
                None,
                "{:?}",
                db.backend()
            );
        }
        assert_eq!(normalise_letter_code("ABCD-EFGH-JKM"), None);
        assert_eq!(normalise_letter_code("ABCD-EFGH-JKM0"), None);
    }

    #[test]
    fn a_time_zone_must_be_one_the_system_knows() {
        for (db, _g) in dbs() {
            let db = &*db;
            let (id, _) = create(db, "Zone household", &[], 0).unwrap();
            assert_eq!(time_zone(db, id).unwrap(), None);
            set_time_zone(db, id, Some("Europe/Berlin")).unwrap();
            assert_eq!(time_zone(db, id).unwrap().as_deref(), Some("Europe/Berlin"));
            assert!(matches!(
                set_time_zone(db, id, Some("Europe/Atlantis")),
                Err(HouseholdError::Invalid(_))
            ));
            set_time_zone(db, id, Some("")).unwrap();
            assert_eq!(time_zone(db, id).unwrap(), None);
            assert!(matches!(
                time_zone(db, id + 1),
                Err(HouseholdError::NotFound)
            ));
            assert!(matches!(
                set_time_zone(db, id + 1, Some("Europe/Berlin")),
                Err(HouseholdError::NotFound)
            ));
        }
    }

    #[test]
    fn contacts_are_set_checked_and_found_by_router() {
        for (db, _g) in dbs() {
            let db = &*db;
            let (id, _) = create(db, "Mail household", &["cpe-m"], 0).unwrap();
            let c = contact(db, id).unwrap();
            assert_eq!((c.email, c.notify_email), (None, true));
            set_contact(db, id, Some(" ana@example.net "), false).unwrap();
            let c = contact_for_cpe(db, "cpe-m").unwrap().unwrap();
            assert_eq!(c.household_id, id);
            assert_eq!(c.name, "Mail household");
            assert_eq!(c.email.as_deref(), Some("ana@example.net"));
            assert!(!c.notify_email);
            assert!(matches!(
                set_contact(db, id, Some("not an address"), true),
                Err(HouseholdError::Invalid(_))
            ));
            assert!(matches!(
                set_contact(db, id + 1, None, true),
                Err(HouseholdError::NotFound)
            ));
            assert!(matches!(contact(db, id + 1), Err(HouseholdError::NotFound)));
            assert_eq!(contact_for_cpe(db, "cpe-nobody").unwrap(), None);
            assert_eq!(
                owner_of(db, "cpe-m").unwrap(),
                Some((id, "Mail household".to_string()))
            );
        }
    }

    /// Issue 11: "the restriction is being lifted" while the card above says "blocked until
    /// 10:07". The words follow the request, the release command and what the router says.
    #[test]
    fn release_progress_follows_what_the_router_does() {
        let mut r = ReleaseRequest {
            id: 1,
            household_id: 1,
            cpe_id: "cpe-1".into(),
            mac: "02:00:00:00:00:01".into(),
            requested_ms: 1_000,
            note: String::new(),
            status: "pending".into(),
            decided_ms: None,
            command: None,
        };
        let t = |ms: u64| format!("t{ms}");
        let until = Some(9_000);
        assert_eq!(
            release_progress(&r, Action::Block, until, None),
            ReleaseProgress::Pending
        );
        r.status = "approved".into();
        r.decided_ms = Some(2_000);
        let p = release_progress(&r, Action::Block, until, None);
        assert_eq!(p, ReleaseProgress::ApprovedNotSent { until_ms: until });
        let text = p.subscriber_text(t);
        assert!(
            text.contains("has not lifted the restriction yet"),
            "{text}"
        );
        assert!(text.contains("t9000"), "{text}");
        assert!(!text.contains("being lifted"), "{text}");
        let sent = Some(CommandDelivery::Sent { at_ms: 3_000 });
        let p = release_progress(&r, Action::Block, until, sent);
        assert_eq!(p.as_str(), "release-sent");
        assert!(p
            .subscriber_text(t)
            .contains("still applies until the router confirms"));
        let acked = Some(CommandDelivery::Acknowledged { at_ms: 4_000 });
        let p = release_progress(&r, Action::RateLimit, until, acked);
        assert_eq!(p, ReleaseProgress::Acknowledged { at_ms: 4_000 });
        assert!(
            p.subscriber_text(t)
                .contains("lifted the restriction at t4000"),
            "{}",
            p.subscriber_text(t)
        );
        // The router reports the device unrestricted: lifted, whatever the command did.
        for delivery in [None, sent, acked] {
            let p = release_progress(&r, Action::Monitor, None, delivery);
            assert_eq!(p, ReleaseProgress::Lifted);
            assert!(p.subscriber_text(t).contains("has been lifted"));
        }
        r.status = "denied".into();
        assert_eq!(
            release_progress(&r, Action::Block, until, None),
            ReleaseProgress::Denied
        );
    }

    #[test]
    fn secrets_are_hashed_and_random() {
        let a = new_secret("hh_");
        let b = new_secret("hh_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert_eq!(hash_secret("x").len(), 64);
    }

    #[test]
    fn tokens_log_into_their_own_household_only() {
        for (db, _g) in dbs() {
            let db = &*db;
            let (a, ta) = create(db, "A", &["cpe-a"], 1).unwrap();
            let (b, tb) = create(db, "B", &["cpe-b"], 1).unwrap();
            assert_eq!(authenticate(db, &ta).unwrap(), Some(a));
            assert_eq!(authenticate(db, &tb).unwrap(), Some(b));
            assert_eq!(authenticate(db, "hh_guess").unwrap(), None);
            assert_eq!(authenticate(db, "").unwrap(), None);
            assert_eq!(authenticate(db, &"x".repeat(201)).unwrap(), None);
            // Only the hash is stored.
            assert_eq!(stored::household_of_token(db, &ta).unwrap(), None);
            assert_eq!(
                stored::household_of_token(db, &hash_secret(&ta)).unwrap(),
                Some(a)
            );
            assert_eq!(household(db, a).unwrap().cpes, vec!["cpe-a".to_string()]);
            assert!(matches!(household(db, 999), Err(HouseholdError::NotFound)));
            // A CPE belongs to one household; in a transaction the refused household
            // leaves nothing behind.
            let refused = db.transaction(|tx| create(tx, "C", &["cpe-a"], 1));
            assert!(
                matches!(refused, Err(HouseholdError::Database(_))),
                "{refused:?}"
            );
            let names: Vec<String> = all(db).unwrap().into_iter().map(|h| h.name).collect();
            assert_eq!(names, ["A", "B"], "{:?}", db.backend());
        }
    }

    #[test]
    fn release_requests_need_ownership_and_a_known_device() {
        for (url, _g) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            let (a, _) = create(db, "A", &["cpe-a"], 1).unwrap();
            let (b, _) = create(db, "B", &["cpe-b"], 1).unwrap();
            // The device as the ingest keeps it after its alert (`store::devices`).
            let mac: MacAddr = "02:00:00:00:00:66".parse().unwrap();
            let alert = smtpguard_protocol::Alert {
                device: smtpguard_protocol::DeviceReport {
                    mac,
                    ips: vec![],
                    hostname: None,
                    vendor: None,
                    verdict: smtpguard_protocol::Verdict::Infected,
                    score: 0.9,
                    action: Action::Block,
                    action_until_ms: None,
                    counters: smtpguard_protocol::DeviceCounters::default(),
                    evidence: vec![],
                },
                previous: smtpguard_protocol::Verdict::Clean,
                at_ms: 5,
                observed: smtpguard_protocol::Observed::default(),
            };
            let message =
                crate::store::received("cpe-a", 1, 5, smtpguard_protocol::Body::Alert(alert));
            assert_eq!(store.write_batch(&[message], &[]).unwrap(), [true]);
            let other: MacAddr = "02:00:00:00:00:67".parse().unwrap();
            assert!(matches!(
                request_release(db, b, "cpe-a", &mac, "", 10),
                Err(HouseholdError::NotFound)
            ));
            assert!(matches!(
                request_release(db, a, "cpe-a", &other, "", 10),
                Err(HouseholdError::NotFound)
            ));
            assert!(matches!(
                request_release(db, a, "cpe-a", &mac, &"n".repeat(MAX_NOTE_CHARS + 1), 10),
                Err(HouseholdError::Invalid(_))
            ));
            let id = request_release(db, a, "cpe-a", &mac, "ran the virus scanner", 10).unwrap();
            assert_eq!(
                request_release(db, a, "cpe-a", &mac, "again", 11).unwrap(),
                id
            );
            let mine = release_requests(db, Some(a)).unwrap();
            assert_eq!(mine.len(), 1);
            assert_eq!(
                (mine[0].requested_ms, mine[0].note.as_str(), mine[0].command),
                (10, "ran the virus scanner", None)
            );
            assert!(release_requests(db, Some(b)).unwrap().is_empty());
            let r = decide_release(db, id, true, 20).unwrap();
            assert_eq!((r.status.as_str(), r.decided_ms), ("approved", Some(20)));
            assert!(matches!(
                decide_release(db, id, false, 21),
                Err(HouseholdError::NotFound)
            ));
            // The newest release command linked to the request tells what became of it:
            // the first is still unanswered, the second applied.
            for (command_id, issued) in [(1u64, 30u64), (2, 40)] {
                let command = crate::store::commands::NewCommand {
                    cpe_id: "cpe-a".into(),
                    command_id,
                    action: smtpguard_protocol::CommandAction::Release { mac, grace_secs: 0 },
                    issued_ms: issued,
                    expires_ms: issued + 60_000,
                    wire: vec![1],
                    release_request_id: Some(id),
                };
                crate::store::commands::insert(db, &command).unwrap();
            }
            let applied = smtpguard_protocol::CommandAck {
                command_id: 2,
                outcome: smtpguard_protocol::AckOutcome::Applied,
                at_ms: 44,
            };
            crate::store::commands::note_ack(db, "cpe-a", &applied, 45).unwrap();
            let all = release_requests(db, None).unwrap();
            assert_eq!(
                all[0].command,
                Some(CommandDelivery::Acknowledged { at_ms: 45 }),
                "{:?}",
                db.backend()
            );
        }
    }
}
