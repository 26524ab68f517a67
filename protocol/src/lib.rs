//! smtpguard wire protocol.
