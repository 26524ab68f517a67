//! ed25519 keys: generation, key files and public keys as text.
//!
//! A secret key file holds one line, `ed25519-secret:` followed by 64 hex digits, and is
//! created with mode 0600; loading refuses a file that group or others can read (as ssh
//! does), since a leaked router key lets anyone speak for that household. Public keys are
//! written `ed25519:` followed by 64 hex digits.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRngCore, OsRng};

const SECRET_PREFIX: &str = "ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";

/// A key could not be made, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file or text is not a key in the expected format.
    #[error("{what}: {detail}")]
    Format {
        /// The file or the text's role.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The secret key file can be read by group or others.
    #[error("{path}: permissions {mode:o} are too open; the key file must be mode 0600")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Refused to overwrite an existing key file (that would change the device's identity).
    #[error("{0}: a key file already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// A public key of small order, which would let forged signatures verify.
    #[error("weak (small-order) public key refused")]
    WeakKey,
}

/// A new signing key from the operating system's random source.
pub fn generate() -> SigningKey {
    generate_with(&mut OsRng)
}

/// A new signing key from `rng` (seeded in tests for determinism).
pub fn generate_with(rng: &mut impl CryptoRngCore) -> SigningKey {
    SigningKey::generate(rng)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `key` to a new file at `path` with mode 0600, creating parent directories.
///
/// # Errors
/// [`KeyError::Exists`] if the file exists; [`KeyError::Io`] on any I/O failure.
pub fn write_secret(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(path))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_owned())
        } else {
            io_err(path)(e)
        }
    })?;
    let text = format!("{SECRET_PREFIX}{}\n", hex::encode(key.to_bytes()));
    file.write_all(text.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Reads a secret key file written by [`write_secret`].
///
/// # Errors
/// [`KeyError::Io`], [`KeyError::InsecurePermissions`] or [`KeyError::Format`].
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    if meta.len() > 4096 {
        return Err(KeyError::Format {
            what: path.display().to_string(),
            detail: "too large for a key file".into(),
        });
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let bytes = parse_hex32(text.trim(), SECRET_PREFIX).map_err(|detail| KeyError::Format {
        what: path.display().to_string(),
        detail,
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Reads the key at `path`, or makes and saves a new one if there is none (first boot).
/// Returns whether a new key was made.
///
/// # Errors
/// As [`read_secret`] and [`write_secret`].
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyError> {
    match read_secret(path) {
        Ok(key) => Ok((key, false)),
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            write_secret(path, &key)?;
            Ok((key, true))
        }
        Err(e) => Err(e),
    }
}

/// A public key as text: `ed25519:` and 64 hex digits.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", hex::encode(key.to_bytes()))
}

/// Parses a public key written by [`public_key_text`] (the prefix is optional).
///
/// # Errors
/// [`KeyError::Format`] for bad text; [`KeyError::WeakKey`] for a small-order key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = parse_hex32(text.trim(), PUBLIC_PREFIX).map_err(|detail| KeyError::Format {
        what: "public key".into(),
        detail,
    })?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Format {
        what: "public key".into(),
        detail: "not a valid curve point".into(),
    })?;
    if key.is_weak() {
        return Err(KeyError::WeakKey);
    }
    Ok(key)
}

/// Reads a public key file (one line of [`public_key_text`]).
///
/// # Errors
/// [`KeyError::Io`], or as [`parse_public_key`].
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    parse_public_key(&text)
}

/// The CPE id derived from a router's public key: `cpe-` and the key's first 8 bytes in hex.
/// ISPs that prefer their own serial numbers configure the id instead.
pub fn cpe_id_for(key: &VerifyingKey) -> String {
    format!("cpe-{}", hex::encode(&key.to_bytes()[..8]))
}

fn parse_hex32(text: &str, prefix: &str) -> Result<[u8; 32], String> {
    let hex_part = text.strip_prefix(prefix).unwrap_or(text);
    if hex_part.len() != 64 {
        return Err(format!("expected {prefix} followed by 64 hex digits"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|e| format!("bad hex: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/agent.key");
        let key = generate();
        write_secret(&path, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(read_secret(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(matches!(
            write_secret(&path, &key),
            Err(KeyError::Exists(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        write_secret(&path, &generate()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_secret(&path),
            Err(KeyError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn load_or_create_makes_a_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.to_bytes(), again.to_bytes());
    }

    #[test]
    fn public_key_text_round_trips() {
        let key = generate().verifying_key();
        let text = public_key_text(&key);
        assert!(text.starts_with("ed25519:"));
        assert_eq!(parse_public_key(&text).unwrap(), key);
        assert_eq!(parse_public_key(&text["ed25519:".len()..]).unwrap(), key);
        assert!(parse_public_key("ed25519:abcd").is_err());
        assert!(cpe_id_for(&key).starts_with("cpe-"));
        assert_eq!(cpe_id_for(&key).len(), 4 + 16);
    }

    #[test]
    fn weak_public_keys_are_refused() {
        // The identity point (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            parse_public_key(&hex::encode(identity)),
            Err(KeyError::WeakKey)
        ));
    }
}
