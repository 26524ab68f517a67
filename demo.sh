#!/usr/bin/env bash
# The main job: builds smtpguard and starts the controller demo on loopback (embedded MQTT
# broker, SQLite, web UI, simulated households). Prints the URLs and login tokens; Ctrl-C stops.
# Extra arguments go to `smtpguard-controller demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh --demo
cargo build --release --locked -p smtpguard-controller -p smtpguard-agent
exec ./target/release/smtpguard-controller demo "$@"
