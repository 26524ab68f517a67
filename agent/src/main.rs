//! `smtpguard-agent`: the edge agent binary.
fn main() {}
