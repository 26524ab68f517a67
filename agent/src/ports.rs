//! The one set of mail ports: what the capture filter lets through, what the engine reads
//! as mail, and what the nftables table throttles and blocks. It comes from the agent's
//! configuration (`enforce.mail_ports`) and is handed to all three, so they can never
//! disagree about which connections are mail.
//!
//! Port 25 is always direct-to-MX mail to the engine; every other port in the set is
//! submission (465 and 587 by standard, 2525 as the alternate port mail services offer).

use std::fmt;

/// Mail ports by default: SMTP, SMTPS, submission and the common alternate port.
pub const DEFAULT_MAIL_PORTS: [u16; 4] = [25, 465, 587, 2525];

/// Most ports in the set: each costs two instructions in the capture filter, and the
/// engine looks ports up on every TCP segment.
pub const MAIL_PORTS_MAX: usize = 16;

/// A validated, sorted set of 1 to [`MAIL_PORTS_MAX`] TCP ports, none of them 0. Fixed
/// size and `Copy`: the engine's hot path reads it without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MailPorts {
    ports: [u16; MAIL_PORTS_MAX],
    len: u8,
}

/// The list given was not a usable port set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailPortsError {
    /// No port at all.
    #[error("must list one or more ports")]
    Empty,
    /// Port 0 is no port.
    #[error("port 0 is not a port (1 to 65535)")]
    Zero,
    /// More ports than the filter takes.
    #[error("at most {MAIL_PORTS_MAX} ports")]
    TooMany,
}

impl MailPorts {
    /// The set of `ports` (duplicates are folded).
    ///
    /// # Errors
    /// [`MailPortsError`] for an empty list, port 0 or more than [`MAIL_PORTS_MAX`] ports.
    pub fn new(ports: &[u16]) -> Result<MailPorts, MailPortsError> {
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() {
            return Err(MailPortsError::Empty);
        }
        if sorted[0] == 0 {
            return Err(MailPortsError::Zero);
        }
        if sorted.len() > MAIL_PORTS_MAX {
            return Err(MailPortsError::TooMany);
        }
        let mut set = MailPorts {
            ports: [0; MAIL_PORTS_MAX],
            len: 0,
        };
        set.ports[..sorted.len()].copy_from_slice(&sorted);
        set.len = sorted.len() as u8;
        Ok(set)
    }

    /// Whether `port` is a mail port.
    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.as_slice().contains(&port)
    }

    /// The ports, ascending.
    pub fn as_slice(&self) -> &[u16] {
        &self.ports[..usize::from(self.len)]
    }
}

impl Default for MailPorts {
    fn default() -> Self {
        let mut set = MailPorts {
            ports: [0; MAIL_PORTS_MAX],
            len: DEFAULT_MAIL_PORTS.len() as u8,
        };
        set.ports[..DEFAULT_MAIL_PORTS.len()].copy_from_slice(&DEFAULT_MAIL_PORTS);
        set
    }
}

impl fmt::Debug for MailPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_documented_set() {
        assert_eq!(MailPorts::default().as_slice(), DEFAULT_MAIL_PORTS);
        assert_eq!(
            MailPorts::new(&DEFAULT_MAIL_PORTS).unwrap(),
            MailPorts::default()
        );
        assert!(MailPorts::default().contains(2525));
        assert!(!MailPorts::default().contains(80));
    }

    #[test]
    fn sorted_deduplicated_and_validated() {
        let p = MailPorts::new(&[587, 25, 587, 10025]).unwrap();
        assert_eq!(p.as_slice(), [25, 587, 10025]);
        assert_eq!(MailPorts::new(&[]), Err(MailPortsError::Empty));
        assert_eq!(MailPorts::new(&[25, 0]), Err(MailPortsError::Zero));
        let many: Vec<u16> = (1..=17).collect();
        assert_eq!(MailPorts::new(&many), Err(MailPortsError::TooMany));
        assert!(MailPorts::new(&many[..16]).is_ok());
    }
}
