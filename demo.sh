#!/usr/bin/env bash
# The main job: builds smtpguard and starts the demo on loopback: the controller (embedded MQTT
# broker, SQLite, web UI) and simulated households whose routers run the real agent core.
# Prints the URLs and login tokens; Ctrl-C stops. Extra arguments go to `smtpguard-demo`
# (see `--help`).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh --demo
cargo build --release --locked -p smtpguard-tools --bin smtpguard-demo
exec ./target/release/smtpguard-demo "$@"
