//! smtpguard controller.
