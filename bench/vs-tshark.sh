#!/usr/bin/env bash
# smtpguard-agent replay vs tshark, side by side, over the same generated captures.
#
# tshark (Wireshark's engine, the tool people reach for to analyse a capture) runs its SMTP
# and DNS dissectors and prints per-host SMTP statistics (SMTP packets and bytes per MAC and
# per IP address) and DNS statistics; smtpguard-agent replay runs the detection engine over
# the same file and prints its per-device JSON report. Both are measured with GNU time:
# CPU seconds (user + system) and peak RSS. Goals (issue 3): tshark needs >= 20x the CPU and
# >= 10x the memory of the agent; replay of a 30k-spoofed-MAC flood stays <= 16 MiB RSS.
# The script exits 1 when a goal is missed.
#
# Usage: bench/vs-tshark.sh            (about 2-4 minutes on 2 cores, after the build)
# Environment: BENCH_DIR (default target/bench), HOUSEHOLDS (120), HOURS (9), FLOOD_MACS
# (30000), REGENERATE=1 to rebuild the captures.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-target/bench}
HOUSEHOLDS=${HOUSEHOLDS:-120}
HOURS=${HOURS:-9}
FLOOD_MACS=${FLOOD_MACS:-30000}
MIN_PACKETS=1000000
CPU_GOAL=20
RSS_GOAL=10
FLOOD_RSS_LIMIT_KIB=$((16 * 1024))

step() { printf '\n==> %s\n' "$*" >&2; }

need_apt() {
    local missing=()
    command -v tshark >/dev/null || missing+=(tshark)
    [ -x /usr/bin/time ] || missing+=(time)
    command -v bc >/dev/null || missing+=(bc)
    if [ "${#missing[@]}" -gt 0 ]; then
        step "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
}

# measure NAME OUTFILE CMD... : runs CMD under GNU time; sets CPU_<NAME> (s), RSS_<NAME> (KiB),
# WALL_<NAME> (s).
measure() {
    local name=$1 out=$2
    shift 2
    local tf="$BENCH_DIR/$name.time"
    /usr/bin/time -v -o "$tf" "$@" >"$out"
    local user sys rss wall
    user=$(awk -F': ' '/User time \(seconds\)/ {print $2}' "$tf")
    sys=$(awk -F': ' '/System time \(seconds\)/ {print $2}' "$tf")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tf")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$tf" |
        awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    printf -v "CPU_$name" '%s' "$(echo "$user + $sys" | bc -l)"
    printf -v "RSS_$name" '%s' "$rss"
    printf -v "WALL_$name" '%s' "$wall"
}

json_field() { # FILE FIELD: a top-level number of the replay report
    sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$1" | head -n1
}

need_apt
mkdir -p "$BENCH_DIR"

step "building smtpguard-agent and the capture generator (release)"
cargo build --release --locked -p smtpguard-agent --bin smtpguard-agent
cargo build --release --locked -p smtpguard-tools --example gen-captures
AGENT=target/release/smtpguard-agent
GEN=target/release/examples/gen-captures

HH="$BENCH_DIR/households-${HOUSEHOLDS}x${HOURS}h.pcap"
FLOOD="$BENCH_DIR/flood-${FLOOD_MACS}.pcap"
if [ ! -s "$HH" ] || [ "${REGENERATE:-0}" = 1 ]; then
    step "generating $HH"
    "$GEN" households --out "$HH" --households "$HOUSEHOLDS" --hours "$HOURS"
fi
if [ ! -s "$FLOOD" ] || [ "${REGENERATE:-0}" = 1 ]; then
    step "generating $FLOOD"
    "$GEN" flood --out "$FLOOD" --macs "$FLOOD_MACS"
fi

step "smtpguard-agent replay $HH"
measure agent "$BENCH_DIR/agent.json" "$AGENT" replay --pcap "$HH" --format json
PACKETS=$(json_field "$BENCH_DIR/agent.json" packets)
SESSIONS=$(json_field "$BENCH_DIR/agent.json" smtp_sessions)
DEVICES=$(grep -o '"mac":' "$BENCH_DIR/agent.json" | wc -l)
INFECTED=$(grep -o '"verdict":"infected"' "$BENCH_DIR/agent.json" | wc -l)

step "tshark over $HH (SMTP per host by MAC and IP, DNS statistics)"
measure tshark "$BENCH_DIR/tshark.txt" \
    tshark -n -r "$HH" -q -z endpoints,eth,smtp -z endpoints,ip,smtp -z dns,tree
TSHARK_HOSTS=$(awk '/^Ethernet Endpoints/ {on=1} on && /^[0-9a-f][0-9a-f]:/ {n++} /^IPv4 Endpoints/ {on=0} END {print n+0}' "$BENCH_DIR/tshark.txt")

step "smtpguard-agent replay $FLOOD"
measure flood "$BENCH_DIR/flood.json" "$AGENT" replay --pcap "$FLOOD" --format json
FLOOD_PACKETS=$(json_field "$BENCH_DIR/flood.json" packets)

ratio() { echo "scale=1; $1 / $2" | bc -l; }
CPU_RATIO=$(ratio "$CPU_tshark" "$CPU_agent")
RSS_RATIO=$(ratio "$RSS_tshark" "$RSS_agent")
PPS=$(echo "$PACKETS / $CPU_agent" | bc)
FLOOD_PPS=$(echo "$FLOOD_PACKETS / $CPU_flood" | bc)

echo
echo "Capture: $HH: $PACKETS packets, $HOUSEHOLDS households, $DEVICES devices," \
    "$SESSIONS SMTP sessions (agent: $INFECTED infected; tshark: $TSHARK_HOSTS MACs in its SMTP endpoint table)"
printf '%-34s %12s %14s %12s\n' "" "CPU s" "peak RSS MiB" "wall s"
printf '%-34s %12.2f %14.1f %12.2f\n' "tshark (SMTP+DNS dissectors)" "$CPU_tshark" "$(echo "$RSS_tshark/1024" | bc -l)" "$WALL_tshark"
printf '%-34s %12.2f %14.1f %12.2f\n' "smtpguard-agent replay" "$CPU_agent" "$(echo "$RSS_agent/1024" | bc -l)" "$WALL_agent"
printf '%-34s %11sx %13sx\n' "ratio tshark / agent" "$CPU_RATIO" "$RSS_RATIO"
echo "Replay throughput: $PPS packets per CPU second"
echo "Flood: $FLOOD: $FLOOD_PACKETS packets, $FLOOD_MACS spoofed MACs: peak RSS" \
    "$((RSS_flood / 1024)) MiB ($RSS_flood KiB, limit $FLOOD_RSS_LIMIT_KIB KiB)," \
    "$FLOOD_PPS packets per CPU second"

status=0
check() { # DESCRIPTION CONDITION(bc)
    if [ "$(echo "$2" | bc -l)" = 1 ]; then
        echo "ok:     $1"
    else
        echo "FAILED: $1"
        status=1
    fi
}
echo
check "capture has >= $MIN_PACKETS packets ($PACKETS)" "$PACKETS >= $MIN_PACKETS"
check "tshark saw SMTP hosts ($TSHARK_HOSTS)" "$TSHARK_HOSTS > 0"
check "CPU: tshark / agent >= $CPU_GOAL ($CPU_RATIO)" "$CPU_RATIO >= $CPU_GOAL"
check "memory: tshark / agent >= $RSS_GOAL ($RSS_RATIO)" "$RSS_RATIO >= $RSS_GOAL"
check "flood replay peak RSS <= 16 MiB ($RSS_flood KiB)" "$RSS_flood <= $FLOOD_RSS_LIMIT_KIB"
exit $status
