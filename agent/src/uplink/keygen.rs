//! `smtpguard-agent keygen [--key PATH] [--show] [-c CONFIG]`: makes the router's signing key
//! (by default `agent.key` in the configured persistent `state_dir`, where `run` reads it; mode 0600,
//! never overwriting one) and prints what the NOC needs to enroll the router; `--show` prints
//! the same for the key that is already there.

use std::path::Path;

use smtpguard_protocol::keys::{self, KeyError};

/// What enrollment needs: the id and the public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The CPE id derived from the key.
    pub cpe_id: String,
    /// The public key as text.
    pub public_key: String,
}

impl std::fmt::Display for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "cpe_id: {}", self.cpe_id)?;
        writeln!(f, "public_key: {}", self.public_key)?;
        write!(
            f,
            "enroll with: smtpguard-controller cpe add {} {}",
            self.cpe_id, self.public_key
        )
    }
}

/// Creates the key at `path`.
///
/// # Errors
/// [`KeyError::Exists`] when a key is already there (that would change the router's
/// identity), or [`KeyError::Io`].
pub fn keygen(path: &Path) -> Result<Enrollment, KeyError> {
    let key = keys::generate();
    keys::write_secret(path, &key)?;
    Ok(enrollment_of(&key))
}

/// The enrollment details of the key already at `path` (the agent made it on its first
/// start with the uplink enabled, or `keygen` did).
///
/// # Errors
/// [`KeyError`] when there is no key or it cannot be read.
pub fn show(path: &Path) -> Result<Enrollment, KeyError> {
    Ok(enrollment_of(&keys::read_secret(path)?))
}

fn enrollment_of(key: &ed25519_dalek::SigningKey) -> Enrollment {
    let public = key.verifying_key();
    Enrollment {
        cpe_id: keys::cpe_id_for(&public),
        public_key: keys::public_key_text(&public),
    }
}

/// The `keygen` subcommand: creates the key (or with `show`, reads the existing one) and
/// prints the enrollment details.
///
/// # Errors
/// As [`keygen`] or [`show`].
pub fn command(path: &Path, show_existing: bool) -> Result<(), KeyError> {
    if show_existing {
        println!("{}", show(path)?);
    } else {
        println!("{}", keygen(path)?);
        eprintln!("key written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_key_once_and_prints_enrollment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let e = keygen(&path).unwrap();
        assert!(e.cpe_id.starts_with("cpe-"));
        let key = keys::read_secret(&path).unwrap();
        assert_eq!(e.public_key, keys::public_key_text(&key.verifying_key()));
        assert!(e.to_string().contains("cpe add"));
        assert!(matches!(keygen(&path), Err(KeyError::Exists(_))));
        // --show reads the same identity back and leaves the key alone.
        assert_eq!(show(&path).unwrap(), e);
        assert_eq!(keys::read_secret(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(show(&dir.path().join("none.key")).is_err());
    }
}
