//! `smtpguard-controller`: the controller binary.
fn main() {}
