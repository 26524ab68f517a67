#!/usr/bin/env bash
# The one command that runs every check of smtpguard on a fresh machine (and in CI):
# installs what the tests need, then formatting, lints and the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

./scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked
