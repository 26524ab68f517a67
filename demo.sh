#!/usr/bin/env bash
# The main job. Installs what it needs, builds, and runs smtpguard on this machine.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh --demo
cargo build --release --locked -p smtpguard-agent
corpus=${SMTPGUARD_CORPUS:-../shared/corpus/pcap}
for pcap in "$corpus"/*.pcap; do
    printf '\n== %s\n' "$(basename "$pcap")"
    ./target/release/smtpguard-agent replay --pcap "$pcap" --format text
done
