//! Files in the agent's state directory that carry enforcement across restarts and between
//! processes.
//!
//! - `enforce-state.json`: the planner's [`Snapshot`] (blocks and rate limits in force with
//!   their end times, manual releases in their grace period). Written by the running agent
//!   only, atomically: a temporary file in the same directory, fsync, rename.
//! - `release-requests/<mac>`: one empty-ish file per manual release, dropped by
//!   `smtpguard-agent release` and consumed (read, then removed) by the running agent, or by
//!   the next agent to start when none is running.

use std::fs;
use std::path::{Path, PathBuf};

use smtpguard_protocol::MacAddr;

use super::plan::Snapshot;
use super::EnforceError;

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "enforce-state.json";
/// The directory of release requests in the state directory.
pub const RELEASE_DIR: &str = "release-requests";
/// Largest state or request file read, checked before reading it whole.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnforceError + '_ {
    move |source| EnforceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Replaces `path` whole with `bytes` ([`crate::durable::replace`]).
///
/// # Errors
/// [`EnforceError::Io`] naming the file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EnforceError> {
    crate::durable::replace(path, bytes).map_err(io_err(path))
}

/// Reads a file of at most [`MAX_FILE_BYTES`]; `None` when it does not exist.
///
/// # Errors
/// [`EnforceError::Io`], or [`EnforceError::Corrupt`] when it is too large.
pub fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, EnforceError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return Err(EnforceError::Corrupt {
                path: path.display().to_string(),
                problem: format!("{} bytes, more than {MAX_FILE_BYTES}", m.len()),
            })
        }
        Ok(_) => {}
    }
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The state file's path in `state_dir`.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Loads the planner's snapshot; `None` when there is no state file yet.
///
/// # Errors
/// [`EnforceError::Io`], or [`EnforceError::Corrupt`] when it is not a snapshot.
pub fn load(state_dir: &Path) -> Result<Option<Snapshot>, EnforceError> {
    let path = state_path(state_dir);
    let Some(bytes) = read_bounded(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| EnforceError::Corrupt {
            path: path.display().to_string(),
            problem: e.to_string(),
        })
}

/// Saves the planner's snapshot atomically.
///
/// # Errors
/// [`EnforceError::Io`] naming the file.
pub fn save(state_dir: &Path, snapshot: &Snapshot) -> Result<(), EnforceError> {
    let bytes = serde_json::to_vec_pretty(snapshot).map_err(|e| EnforceError::Corrupt {
        path: state_path(state_dir).display().to_string(),
        problem: e.to_string(),
    })?;
    write_atomically(&state_path(state_dir), &bytes)
}

/// Asks the running agent (or the next one to start) to release `mac` by hand.
///
/// # Errors
/// [`EnforceError::Io`] naming the file.
pub fn request_release(state_dir: &Path, mac: MacAddr, now_ms: u64) -> Result<(), EnforceError> {
    write_atomically(
        &release_path(state_dir, mac),
        format!("{now_ms}\n").as_bytes(),
    )
}

/// Whether a release request for `mac` is still waiting for the running agent.
pub fn release_pending(state_dir: &Path, mac: MacAddr) -> bool {
    release_path(state_dir, mac).exists()
}

fn release_path(state_dir: &Path, mac: MacAddr) -> std::path::PathBuf {
    state_dir
        .join(RELEASE_DIR)
        .join(mac.to_string().replace(':', "-"))
}

/// Takes every pending release request: returns their MACs and removes the files. Files
/// that do not name a MAC are removed and reported as errors (one bad file never blocks the
/// others).
pub fn take_release_requests(state_dir: &Path) -> (Vec<MacAddr>, Vec<EnforceError>) {
    let dir = state_dir.join(RELEASE_DIR);
    let mut macs = Vec::new();
    let mut errors = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (macs, errors),
        Err(e) => {
            errors.push(io_err(&dir)(e));
            return (macs, errors);
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a request still being written
        }
        let path = entry.path();
        match name.parse::<MacAddr>() {
            Ok(mac) => macs.push(mac),
            Err(e) => errors.push(EnforceError::Corrupt {
                path: path.display().to_string(),
                problem: e.to_string(),
            }),
        }
        if let Err(e) = fs::remove_file(&path) {
            errors.push(io_err(&path)(e));
        }
    }
    macs.sort();
    macs.dedup();
    (macs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::plan::{Entry, ManualRelease};
    use smtpguard_protocol::Action;

    #[test]
    fn snapshot_round_trips_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mac: MacAddr = "02:5b:00:00:00:0b".parse().unwrap();
        let snap = Snapshot {
            entries: vec![Entry {
                mac,
                action: Action::Block,
                since_ms: 1,
                until_ms: 2,
                open_ended: false,
                reason: "fan-out".into(),
            }],
            manual_releases: vec![ManualRelease { mac, until_ms: 3 }],
        };
        save(dir.path(), &snap).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(snap));
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(state_path(dir.path()), b"{\"entries\": 7}").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, EnforceError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }

    #[test]
    fn release_requests_are_taken_once_and_bad_names_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a: MacAddr = "02:5b:00:00:00:0b".parse().unwrap();
        request_release(dir.path(), a, 5).unwrap();
        request_release(dir.path(), a, 6).unwrap();
        fs::write(dir.path().join(RELEASE_DIR).join("nonsense"), b"").unwrap();
        let (macs, errors) = take_release_requests(dir.path());
        assert_eq!(macs, vec![a]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (macs, errors) = take_release_requests(dir.path());
        assert!(macs.is_empty() && errors.is_empty());
    }
}
