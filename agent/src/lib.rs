//! smtpguard edge agent.
