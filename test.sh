#!/usr/bin/env bash
# The one command that runs every check of smtpguard on a fresh machine (and in CI, as root):
# installs what the tests need, then formatting, lints, the whole workspace's tests (unit,
# property, corpus, scenarios, MQTT with real brokers, nftables and capture in network
# namespaces, the web UI over HTTP and in headless Chromium), the end-to-end router test in
# network namespaces; then the router builds (mipsel and armv7 by default, static, within the
# 2 MiB size budget) run under qemu-user against the host's replay output, and the protocol and
# engine tests run on big-endian MIPS (firmware/ci.sh).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

t0=$SECONDS
step() { printf '\n==> [%5d s] %s\n' "$((SECONDS - t0))" "$*"; }

step "setup (Debian packages, Rust components)"
./scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

step "end-to-end: bot, laptop, router and internet in network namespaces"
tests/netns/e2e.sh

step "router builds under qemu-user (firmware/ci.sh)"
SMTPGUARD_HOST_AGENT="$PWD/target/debug/smtpguard-agent" \
    SMTPGUARD_CI_TARGETS="${SMTPGUARD_CI_TARGETS:-mipsel-unknown-linux-musl armv7-unknown-linux-musleabihf}" \
    firmware/ci.sh

step "all checks passed in $((SECONDS - t0)) s"
