//! Shared helpers for smtpguard's end-to-end tests (`tests/tests/*.rs`): locating the built
//! binaries, the shared packet corpus, and temporary working directories.
