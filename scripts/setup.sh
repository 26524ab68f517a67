#!/usr/bin/env bash
# Installs what smtpguard's tests and demo need on a fresh Debian machine, only where missing.
# Idempotent; safe to run on every test run.
set -euo pipefail

need_rust_components() {
    local c
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
}

need_rust_components
