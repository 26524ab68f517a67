#!/usr/bin/env bash
# End-to-end test of smtpguard's edge path with real components, in network namespaces:
#
#   lan-bot (02:5b:00:00:00:0b) ─┐
#                                ├─ br-lan ─ rtr ─ wan0 ═══ eth0 ─ wan
#   lan-laptop (02:5b:..:1a) ────┘   smtpguard-agent run        dnsmasq (MX records for 40 domains)
#                                    capture on br-lan          MX servers on 40 addresses (40 /24s)
#                                    nft table inet smtpguard   ISP relay 587 (STARTTLS + AUTH)
#                                    NAT masquerade, fw4-like   HTTP server
#
# Steps (each prints PASS or FAIL; the script exits non-zero on any FAIL and never skips):
#   1. the laptop submits mail through the allowlisted ISP relay (587, STARTTLS, AUTH): delivered,
#      not limited;
#   1b. the agent runs as its own user with only CAP_NET_RAW and CAP_NET_ADMIN and no_new_privs,
#      and over 20 s of household traffic and telemetry writes nothing to its persistent state
#      directory (flash on a router) while its status file in the runtime directory stays current;
#   2. the bot looks up MX records and sends a bounded burst of direct-to-MX mail: it is
#      rate-limited, then blocked; prints `detection-to-block: N s` (must be <= 60 s);
#   2b. the ISP's controller (embedded broker, on the WAN side) has the router online, the bot
#      infected from the router's alert, and the bot's verdict history; the router's WAN address;
#      an abuse report with (public IP, NAT source port, time) names the bot with confidence
#      `exact` and no other device;
#   3. while blocked, the bot's web traffic and the laptop's mail still work;
#   4. kill -9 the agent: the block stays in force; restart it: state restored, no duplicate rules;
#      then a firewall restart (every table flushed): the agent puts its table back with the block;
#   5. the block expires after its time to live and the bot's mail flows again;
#   6. `smtpguard-agent release MAC` lifts enforcement by hand and the agent leaves the device
#      alone for its grace period; after it, a bot that keeps spamming is blocked again;
#   6b. a release approved at the controller (NOC operator, API) reaches the router as a signed
#      command: the block is lifted within 10 s and the router's acknowledgement is visible;
#   7. a change of the local policy file (a new allowlisted relay) reaches the table.
# Everything lives in namespaces this script creates and removes on exit (also on failure);
# nothing is sent outside them.
#
# Usage (as root): tests/netns/e2e.sh
#   SMTPGUARD_AGENT=path, SMTPGUARD_CONTROLLER=path
#                          use these binaries instead of building target/debug's
#   E2E_KEEP=1             keep the work directory (logs) after the run
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
T_START=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Results

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf '  PASS  %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf '  FAIL  %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...: PASS when the command succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
step() { printf '\n== %s\n' "$*"; }
die() { printf '  FAIL  %s\n' "$*"; FAILED=$((FAILED + 1)); exit 1; }
now() { date +%s.%N; }

if [ "$(id -u)" -ne 0 ]; then
    echo "e2e: FAIL: must run as root (network namespaces, nftables)" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# Debian packages, installed when missing (without starting their daemons).

need=()
for entry in nft:nftables dnsmasq:dnsmasq-base swaks:swaks openssl:openssl ip:iproute2 \
    curl:curl dig:bind9-dnsutils nc:netcat-openbsd inotifywait:inotify-tools setpriv:util-linux \
    /usr/lib/python3/dist-packages/aiosmtpd:python3-aiosmtpd; do
    probe=${entry%%:*}
    case "$probe" in
        /*) [ -e "$probe" ] ;;
        *) command -v "$probe" >/dev/null 2>&1 ;;
    esac || need+=("${entry#*:}")
done
# swaks speaks STARTTLS through Net::SSLeay (only a recommendation of the swaks package).
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
if [ ${#need[@]} -gt 0 ]; then
    echo "e2e: installing ${need[*]}"
    guard=/usr/sbin/policy-rc.d
    made_guard=0
    if [ ! -e "$guard" ]; then printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod +x "$guard" && made_guard=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    rc=$?
    [ "$made_guard" -eq 1 ] && rm -f "$guard"
    [ $rc -eq 0 ] || { echo "e2e: FAIL: cannot install ${need[*]}" >&2; exit 1; }
fi
PY=/usr/bin/python3 # Debian's, which has python3-aiosmtpd (not a pyenv shim)

if [ -n "${SMTPGUARD_AGENT:-}" ] && [ -n "${SMTPGUARD_CONTROLLER:-}" ]; then
    AGENT=$SMTPGUARD_AGENT CONTROLLER=$SMTPGUARD_CONTROLLER
else
    echo "e2e: building smtpguard-agent and smtpguard-controller"
    (cd "$ROOT" && cargo build -q -p smtpguard-agent -p smtpguard-controller) ||
        { echo "e2e: FAIL: build" >&2; exit 1; }
    AGENT=${SMTPGUARD_AGENT:-$ROOT/target/debug/smtpguard-agent}
    CONTROLLER=${SMTPGUARD_CONTROLLER:-$ROOT/target/debug/smtpguard-controller}
fi
[ -x "$AGENT" ] || { echo "e2e: FAIL: no agent binary at $AGENT" >&2; exit 1; }
[ -x "$CONTROLLER" ] || { echo "e2e: FAIL: no controller binary at $CONTROLLER" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Names, addresses, cleanup

P="sge$$"
NS_BOT=$P-bot NS_LAP=$P-laptop NS_RTR=$P-rtr NS_WAN=$P-wan
NAMESPACES=("$NS_BOT" "$NS_LAP" "$NS_RTR" "$NS_WAN")
BOT_MAC=02:5b:00:00:00:0b LAP_MAC=02:5b:00:00:00:1a RTR_MAC=02:5b:00:00:00:01
BOT_IP=192.168.50.11 LAP_IP=192.168.50.12 RTR_LAN=192.168.50.1
RTR_WAN=198.18.0.2 WAN_GW=198.18.0.1
RELAY=203.0.113.25 DNS=203.0.113.53 WEB=203.0.113.80 CTL=203.0.113.10
DOMAINS=40 # d1.test .. d40.test, MX mx.dN.test at 198.19.N.25 (one /24 each)
BLOCK_TTL=45 # long enough that the block is still in force through steps 3 and 4
GRACE_SECS=40 # the agent's release grace period
WORK=$(mktemp -d /tmp/smtpguard-e2e.XXXXXX)
# The agent runs as its own user with only CAP_NET_RAW and CAP_NET_ADMIN, as on a router;
# everything it reads or writes is in $RDIR: flash-like persistent state and RAM-like runtime
# state in two directories.
AGENT_UID=4242
RDIR=$WORK/router STATE=$WORK/router/state RUNDIR=$WORK/router/run
PIDS=()
AGENT_PID=

cleanup() {
    local rc=$?
    for pid in $AGENT_PID "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    sleep 0.3
    for pid in $AGENT_PID "${PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null
    done
    for ns in "${NAMESPACES[@]}"; do
        ip netns pids "$ns" 2>/dev/null | while read -r pid; do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    if [ "$FAILED" -gt 0 ] || [ $rc -ne 0 ]; then
        echo
        echo "---- agent log (last 60 lines) ----"
        tail -n 60 "$WORK/agent.log" 2>/dev/null
        echo "---- controller log (last 30 lines) ----"
        tail -n 30 "$WORK/controller.log" 2>/dev/null
        echo "---- end of logs; work directory: $WORK ----"
    elif [ -z "${E2E_KEEP:-}" ]; then
        rm -rf "$WORK"
    fi
    echo
    echo "e2e: $PASSED passed, $FAILED failed, $(($(date +%s) - T_START)) s"
    if [ "$FAILED" -gt 0 ] || [ $rc -ne 0 ]; then
        echo "e2e: FAIL"
        exit 1
    fi
    echo "e2e: PASS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
bg_in_ns() { # bg_in_ns NS LOG CMD...: start in the background, remember the pid
    local ns=$1 log=$2; shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 &
    PIDS+=($!)
}
wait_for() { # wait_for SECONDS COMMAND...: poll until the command succeeds
    local deadline=$(($(date +%s) + $1)); shift
    until "$@" 2>/dev/null; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}
# (Under pipefail, `producer | grep -q` fails when grep exits early and the producer gets
# SIGPIPE; these helpers let grep read everything.)
listening() { in_ns "$1" ss -Hltn "sport = :$2" | grep . >/dev/null; }

# ---------------------------------------------------------------------------------------------
step "setup: namespaces, bridge, NAT, DNS, mail and web servers"

for ns in "${NAMESPACES[@]}"; do
    ip netns add "$ns" || die "create namespace $ns"
    in_ns "$ns" ip link set lo up
done

# LAN hosts, each on a veth port of the router's bridge.
ip link add name eth0 netns "$NS_BOT" address $BOT_MAC type veth peer name lan-bot netns "$NS_RTR" || die "veth bot"
ip link add name eth0 netns "$NS_LAP" address $LAP_MAC type veth peer name lan-laptop netns "$NS_RTR" || die "veth laptop"
for pair in "$NS_BOT:$BOT_IP" "$NS_LAP:$LAP_IP"; do
    ns=${pair%%:*} ip=${pair#*:}
    in_ns "$ns" ip addr add "$ip/24" dev eth0
    in_ns "$ns" ip link set eth0 up
    in_ns "$ns" ip route add default via $RTR_LAN
done

# Router: br-lan with both ports, wan0 upstream, forwarding, NAT.
in_ns "$NS_RTR" ip link add br-lan address $RTR_MAC type bridge
for port in lan-bot lan-laptop; do
    in_ns "$NS_RTR" ip link set "$port" master br-lan
    in_ns "$NS_RTR" ip link set "$port" up
done
in_ns "$NS_RTR" ip addr add $RTR_LAN/24 dev br-lan
in_ns "$NS_RTR" ip link set br-lan up
ip link add name wan0 netns "$NS_RTR" type veth peer name eth0 netns "$NS_WAN" || die "veth wan"
in_ns "$NS_RTR" ip addr add $RTR_WAN/30 dev wan0
in_ns "$NS_RTR" ip link set wan0 up
in_ns "$NS_RTR" ip route add default via $WAN_GW
in_ns "$NS_RTR" sh -c "echo 1 >/proc/sys/net/ipv4/ip_forward" || die "ip_forward"
# A stand-in for OpenWrt's fw4 (its own table, forward chain at priority filter, NAT), so the
# test also shows the agent's table coexists with it and never touches it.
cat >"$WORK/fw4.nft" <<'EOF'
table inet fw4 {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "br-lan" oifname "wan0" counter accept
    }
    chain srcnat {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
EOF
in_ns "$NS_RTR" nft -f "$WORK/fw4.nft" || die "router firewall"
FW4_BEFORE=$(in_ns "$NS_RTR" nft list chain inet fw4 forward | grep -v counter)

# Internet side: many mail servers on distinct networks, a relay, DNS, web (addresses on lo;
# the kernel of this machine may lack the dummy interface type).
in_ns "$NS_WAN" ip addr add $WAN_GW/30 dev eth0
in_ns "$NS_WAN" ip link set eth0 up
for i in $(seq 1 $DOMAINS); do
    in_ns "$NS_WAN" ip addr add "198.19.$i.25/32" dev lo || die "address 198.19.$i.25"
done
for a in $RELAY $DNS $WEB; do in_ns "$NS_WAN" ip addr add "$a/32" dev lo || die "address $a"; done
in_ns "$NS_WAN" ip route add default via $RTR_WAN # replies to the router's public address

dns_args=(--keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces
    --listen-address=$DNS --port=53 --user=root --pid-file="$WORK/dnsmasq.pid"
    --log-facility="$WORK/dnsmasq-queries.log" --log-queries
    --host-record=smtp.isp.test,$RELAY --host-record=www.test,$WEB)
for i in $(seq 1 $DOMAINS); do
    dns_args+=(--mx-host="d$i.test,mx.d$i.test,10" --host-record="mx.d$i.test,198.19.$i.25")
done
bg_in_ns "$NS_WAN" "$WORK/dnsmasq.log" dnsmasq "${dns_args[@]}"

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=smtp.isp.test \
    -keyout "$WORK/relay.key" -out "$WORK/relay.crt" >/dev/null 2>&1 || die "make certificate"
: >"$WORK/mail.log"
bg_in_ns "$NS_WAN" "$WORK/mx.log" $PY "$HERE/smtp_server.py" mx "$WORK/mail.log" 25
bg_in_ns "$NS_WAN" "$WORK/submission.log" $PY "$HERE/smtp_server.py" submission "$WORK/mail.log" \
    "$WORK/relay.crt" "$WORK/relay.key" laptop-user correct-horse 587
mkdir -p "$WORK/www" && echo "hello from the web" >"$WORK/www/index.html"
bg_in_ns "$NS_WAN" "$WORK/http.log" $PY -m http.server 80 --bind $WEB --directory "$WORK/www"

wait_for 30 listening "$NS_WAN" 25 || die "MX server did not start: $(cat "$WORK/mx.log")"
wait_for 30 listening "$NS_WAN" 587 || die "submission server did not start: $(cat "$WORK/submission.log")"
wait_for 30 listening "$NS_WAN" 80 || die "web server did not start: $(cat "$WORK/http.log")"
wait_for 30 listening "$NS_WAN" 53 || die "dnsmasq did not start: $(cat "$WORK/dnsmasq.log")"
check "laptop resolves MX records through the router" \
    bash -c "ip netns exec $NS_LAP dig +short +time=2 +tries=2 @$DNS MX d3.test | grep -q mx.d3.test"

# ---------------------------------------------------------------------------------------------
# The ISP's controller on the ISP side of the router's WAN: embedded broker and web/API on
# $CTL. The router's agent is enrolled as an operator would (`keygen`, `cpe add`) and
# reaches it through its own WAN address, like a real router.

in_ns "$NS_WAN" ip addr add "$CTL/32" dev lo || die "address $CTL"
mkdir -p "$STATE" "$RUNDIR"
chmod 711 "$WORK"
openssl rand -hex 24 >"$WORK/operator.token"
OPERATOR_TOKEN=$(cat "$WORK/operator.token")
cat >"$WORK/controller.toml" <<EOF
db_path = "$WORK/controller.db"
policy_key_path = "$WORK/controller-policy.key"
http_listen = "$CTL:8080"

[broker]
embedded_listen = "$CTL:1883"
password = "$(openssl rand -hex 24)"
client_id = "controller-e2e"

[web]
operator_token_file = "$WORK/operator.token"
EOF
ctl() { "$CONTROLLER" --config "$WORK/controller.toml" "$@"; }
CONTROLLER_KEY=$(ctl keygen 2>/dev/null | grep '^ed25519:') || die "controller keygen"
KEYGEN_OUT=$("$AGENT" keygen --key "$STATE/agent.key" 2>/dev/null) || die "agent keygen"
CPE_ID=$(awk '/^cpe_id:/ {print $2}' <<<"$KEYGEN_OUT")
CPE_KEY=$(awk '/^public_key:/ {print $2}' <<<"$KEYGEN_OUT")
ENROLLED=$(ctl cpe add "$CPE_ID" "$CPE_KEY" 2>/dev/null) || die "cpe add"
CPE_PASSWORD=$(sed -n 's/^ *password = "\(.*\)"$/\1/p' <<<"$ENROLLED")
[ -n "$CPE_ID" ] && [ -n "$CPE_PASSWORD" ] || die "enrollment printed no identity: $ENROLLED"
bg_in_ns "$NS_WAN" "$WORK/controller.log" env RUST_LOG=info NO_COLOR=1 "$CONTROLLER" \
    --config "$WORK/controller.toml" serve
api() { # api METHOD PATH [JSON]: the controller's API as the NOC operator
    local method=$1 path=$2
    shift 2
    in_ns "$NS_WAN" curl -sS --max-time 5 -X "$method" -H "Authorization: Bearer $OPERATOR_TOKEN" \
        -H 'Content-Type: application/json' ${1:+--data "$1"} "http://$CTL:8080$path"
}
json() { # json EXPRESSION: a Python expression over the JSON on stdin (`j`), printed
    $PY -c 'import json, sys; j = json.load(sys.stdin); v = eval(sys.argv[1]); print("" if v is None else v)' "$1"
}
wait_for 30 listening "$NS_WAN" 8080 || die "controller did not start: $(tail -n 20 "$WORK/controller.log")"
wait_for 30 listening "$NS_WAN" 1883 || die "embedded broker did not start: $(tail -n 20 "$WORK/controller.log")"
pass "controller runs on the ISP side ($CTL), the router enrolled as $CPE_ID"

# ---------------------------------------------------------------------------------------------
# The agent on the router.

cat >"$RDIR/policy.toml" <<EOF
# Test policy: enforce, short block. The ISP relay is in the router's own config below,
# where no policy can take it out.
mode = "enforce"
block_ttl_secs = $BLOCK_TTL
rate_limit_per_minute = 6
allow_relays = []
telemetry_interval_secs = 5
EOF
cat >"$RDIR/agent.toml" <<EOF
state_dir = "$STATE"
runtime_dir = "$RUNDIR"
policy_file = "$RDIR/policy.toml"
isp_relays = ["$RELAY:587"]

[capture]
interface = "br-lan"
leases_file = "$RDIR/dhcp.leases"

[enforce]
backend = "nftables"
nft = "nft"
release_grace_secs = $GRACE_SECS

[uplink]
enabled = true
broker_url = "mqtt://$CTL:1883"
username = "$CPE_ID"
password = "$CPE_PASSWORD"
controller_public_key = "$CONTROLLER_KEY"
EOF

# The router's DHCP server names the devices (dnsmasq lease format); the agent reads it.
printf '%s\n' "0 $BOT_MAC $BOT_IP old-pc *" "0 $LAP_MAC $LAP_IP laptop *" >"$RDIR/dhcp.leases"
chown -R "$AGENT_UID:$AGENT_UID" "$RDIR" && chmod 700 "$RDIR" || die "chown the agent's files"

start_agent() {
    ip netns exec "$NS_RTR" setpriv --reuid=$AGENT_UID --regid=$AGENT_UID --clear-groups \
        --inh-caps=-all,+net_raw,+net_admin --ambient-caps=-all,+net_raw,+net_admin \
        --bounding-set=-all,+net_raw,+net_admin --no-new-privs \
        env RUST_LOG=info NO_COLOR=1 "$AGENT" run --config "$RDIR/agent.toml" \
        >>"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
}
agent_ready() { # the table is installed and the running agent wrote its status
    kill -0 "$AGENT_PID" &&
        in_ns "$NS_RTR" nft list chain inet smtpguard mail_check >/dev/null &&
        grep -q "\"pid\": $AGENT_PID" "$RUNDIR/status.json"
}
nft_set_has() { # nft_set_has SET MAC
    in_ns "$NS_RTR" nft list set inet smtpguard "$1" 2>/dev/null | grep -F "$2" >/dev/null
}
not_enforced() { # not_enforced MAC: in neither the blocked nor the limited set
    ! nft_set_has blocked "$1" && ! nft_set_has limited "$1"
}
rule_count() { # rules in the agent's table (lines with a handle that are not table/set/chain)
    in_ns "$NS_RTR" nft -a list table inet smtpguard |
        grep '# handle' | grep -cvE '^\s*(table|set|chain) '
}
rule_counter() { # rule_counter SET: packets dropped by the rule matching @SET
    in_ns "$NS_RTR" nft list chain inet smtpguard mail_check |
        grep "@$1" | grep -o 'packets [0-9]*' | head -n1 | awk '{print $2}'
}
mail_count() { grep -c "$1" "$WORK/mail.log"; }
laptop_submit() { # laptop_submit SUBJECT
    in_ns "$NS_LAP" swaks --server $RELAY --port 587 --tls --auth PLAIN \
        --auth-user laptop-user --auth-password correct-horse --timeout 10 \
        --from alice@home.test --to bob@example.test --header "Subject: $1" \
        --body "from the laptop" >>"$WORK/laptop-swaks.log" 2>&1
}
bot_can_connect() { # bot_can_connect IP: a TCP connection to IP:25 opens within 3 s
    in_ns "$NS_BOT" nc -z -w 3 "$1" 25
}
bot_cannot_connect() { ! bot_can_connect "$1"; }
bot_send() { # bot_send N SUBJECT: one direct-to-MX message to dN.test, looked up as a bot does
    local d="d$1.test" mx ip
    mx=$(in_ns "$NS_BOT" dig +short +time=2 +tries=1 @$DNS MX "$d" | awk '{print $2}' | head -n1)
    ip=$(in_ns "$NS_BOT" dig +short +time=2 +tries=1 @$DNS A "$mx" | head -n1)
    [ -n "$ip" ] || return 2
    in_ns "$NS_BOT" swaks --server "$ip" --port 25 --timeout 3 --ehlo "QZXWPLKR.club" \
        --from "invoice@$RANDOM.example" --to "user$RANDOM@$d" --header "Subject: $2" \
        --body "cheap pills" >>"$WORK/bot-swaks.log" 2>&1
}

start_agent
wait_for 20 agent_ready || die "agent did not start (table and status file)"
pass "agent runs on the router, table inet smtpguard installed"
check "fw4's own table untouched by the agent" \
    test "$(in_ns "$NS_RTR" nft list chain inet fw4 forward | grep -v counter)" = "$FW4_BEFORE"

# ---------------------------------------------------------------------------------------------
step "1. laptop submits mail through the allowlisted ISP relay"

check "laptop's message accepted by the relay (587, STARTTLS, AUTH)" laptop_submit e2e-laptop-1
check "relay received the laptop's message" grep -q "subject=e2e-laptop-1" "$WORK/mail.log"
check "laptop is neither limited nor blocked" not_enforced $LAP_MAC

# ---------------------------------------------------------------------------------------------
step "1b. the agent runs unprivileged and leaves flash alone in steady state"

proc_field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$AGENT_PID/status"; }
check "the agent runs as its own user (uid $AGENT_UID), not root" \
    test "$(proc_field Uid)" = "$AGENT_UID"
# CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13: 0x3000 and nothing else.
check "the agent holds only CAP_NET_RAW and CAP_NET_ADMIN (CapEff $(proc_field CapEff))" \
    test "$(proc_field CapEff)" = 0000000000003000
check "the agent runs with no_new_privs" test "$(proc_field NoNewPrivs)" = 1
router_online() { [ "$(api GET "/api/cpes/$CPE_ID" | json "j['cpe'].get('status')")" = online ]; }
wait_for 30 router_online || fail "the router is online at the controller before the steady-state window"
# Every write to the persistent state directory (flash on a router) and to the status file
# in the runtime directory (RAM) over a window of normal household traffic and telemetry.
WINDOW=20
watch_writes() { # watch_writes DIR LOG
    in_ns "$NS_RTR" inotifywait -m -r -q -e close_write,moved_to,create,delete \
        --format '%e %w%f' "$1" >"$2" 2>"$2.err" &
    PIDS+=($!)
    echo $!
}
FLASH_WATCH=$(watch_writes "$STATE" "$WORK/flash-writes.log")
RAM_WATCH=$(watch_writes "$RUNDIR" "$WORK/ram-writes.log")
WINDOW_END=$(($(date +%s) + WINDOW))
n=0
while [ "$(date +%s)" -lt "$WINDOW_END" ] && [ $n -lt 10 ]; do
    n=$((n + 1))
    laptop_submit "e2e-laptop-steady-$n" || true
    in_ns "$NS_LAP" curl -s --max-time 3 "http://$WEB/" >/dev/null || true
    sleep 2 # the household's pace, not a wait for a condition
done
while [ "$(date +%s)" -lt "$WINDOW_END" ]; do sleep 0.5; done
kill "$FLASH_WATCH" "$RAM_WATCH" 2>/dev/null
FLASH_WRITES=$(grep -c . "$WORK/flash-writes.log")
STATUS_WRITES=$(grep -c 'MOVED_TO.*status.json' "$WORK/ram-writes.log")
echo "  steady state, $WINDOW s, $n laptop messages: $FLASH_WRITES writes in the state directory (flash), status file rewritten $STATUS_WRITES times in the runtime directory (RAM)"
check "no flash writes in $WINDOW s of steady state" test "$FLASH_WRITES" -eq 0
check "the status file in RAM stayed current (rewritten $STATUS_WRITES times)" test "$STATUS_WRITES" -ge 1

# ---------------------------------------------------------------------------------------------
step "2. bot sends a burst of direct-to-MX mail"

BURST=150
(
    # The watcher: when the bot first shows up in each set (polled every 0.1 s, bounded).
    end=$(($(date +%s) + 120))
    while [ "$(date +%s)" -lt "$end" ]; do
        if [ ! -e "$WORK/t-limited" ] && nft_set_has limited $BOT_MAC; then now >"$WORK/t-limited"; fi
        if nft_set_has blocked $BOT_MAC; then now >"$WORK/t-blocked"; break; fi
        sleep 0.1
    done
) &
WATCHER=$!
PIDS+=("$WATCHER")
(
    # The bot: at most $BURST messages and 90 s, round-robin over the domains.
    end=$(($(date +%s) + 90))
    now >"$WORK/t-first-syn"
    for n in $(seq 1 $BURST); do
        [ "$(date +%s)" -ge "$end" ] && break
        bot_send $(((n - 1) % DOMAINS + 1)) "e2e-bot-$n"
        echo "$n" >"$WORK/bot-sent"
    done
) &
BOT=$!
PIDS+=("$BOT")
wait_for 100 test -e "$WORK/t-blocked"
kill "$BOT" 2>/dev/null
wait "$BOT" 2>/dev/null
wait "$WATCHER" 2>/dev/null

BOT_DELIVERED=$(mail_count "subject=e2e-bot-")
echo "  bot attempted $(cat "$WORK/bot-sent" 2>/dev/null || echo 0) messages, $BOT_DELIVERED delivered before the block"
check "bot delivered direct-to-MX mail before it was stopped (the path works)" test "$BOT_DELIVERED" -gt 0
# The order of the agent's own enforcement ops is the truth (the watcher polls, and a block
# that follows the limit within one poll replaces it before the watcher can see it).
first_op_line() { grep -n "op=$1 $BOT_MAC" "$WORK/agent.log" | head -n1 | cut -d: -f1; }
LIMIT_LINE=$(first_op_line rate-limit)
BLOCK_LINE=$(first_op_line block)
if [ -e "$WORK/t-limited" ]; then
    echo "  bot rate-limited $(awk -v a="$(cat "$WORK/t-first-syn")" -v b="$(cat "$WORK/t-limited")" 'BEGIN{printf "%.1f", b-a}') s after its first SYN"
fi
check "bot was rate-limited (agent log)" test -n "$LIMIT_LINE"
if [ -e "$WORK/t-blocked" ]; then
    SECS=$(awk -v a="$(cat "$WORK/t-first-syn")" -v b="$(cat "$WORK/t-blocked")" 'BEGIN{printf "%.1f", b-a}')
    echo "detection-to-block: $SECS s"
    check "bot blocked within 60 s of its first SYN" awk -v s="$SECS" 'BEGIN{exit !(s <= 60)}'
else
    fail "bot blocked (never appeared in the blocked set within 100 s)"
fi
check "rate limit came before the block (agent log)" \
    test -n "$LIMIT_LINE" -a -n "$BLOCK_LINE" -a "${LIMIT_LINE:-0}" -lt "${BLOCK_LINE:-0}"
DROPS_BEFORE=$(rule_counter blocked)
check "bot cannot connect to a mail server while blocked" bot_cannot_connect 198.19.7.25
check "the block's drop rule counted the bot's SYNs" test "$(rule_counter blocked)" -gt "${DROPS_BEFORE:-0}"
STATUS=$(in_ns "$NS_RTR" "$AGENT" status --config "$RDIR/agent.toml" 2>&1)
echo "$STATUS" | sed 's/^/  | /'
check "\`smtpguard-agent status\` shows the bot blocked in the kernel" \
    bash -c "grep -qE '$BOT_MAC +blocked' <<<\"\$0\"" "$STATUS"
check "\`smtpguard-agent status\` names the bot by its DHCP host name (capture.leases_file)" \
    bash -c "grep -q 'old-pc' <<<\"\$0\"" "$STATUS"

# ---------------------------------------------------------------------------------------------
step "2b. what the router knows reaches the controller"

cpe_json() { api GET "/api/cpes/$CPE_ID"; }
cpe_field() { cpe_json | json "j['cpe'].get('$1')"; }
bot_json() { # the bot's device record at the controller
    cpe_json | json "next((d for d in j['devices'] if d['mac'] == '$BOT_MAC'), None)"
}
bot_infected_at_controller() {
    [ "$(cpe_json | json "next((d['verdict'] for d in j['devices'] if d['mac'] == '$BOT_MAC'), '')")" = infected ]
}
bot_history_changes() { # the bot's stored verdict changes, as "from>to" words
    cpe_json | json "' '.join(h['from'] + '>' + h['to'] for d in j['devices'] if d['mac'] == '$BOT_MAC' for h in d['history'])"
}
bot_history_reaches_infected() { bot_history_changes | grep -q '>infected'; }
check "the router is online at the controller" wait_for 30 router_online
check "the controller shows the bot infected (from the router's alert)" wait_for 30 bot_infected_at_controller
if wait_for 30 bot_history_reaches_infected; then
    pass "the bot's history at the controller shows its verdict changes: $(bot_history_changes)"
else
    fail "the bot's history at the controller shows its verdict changes (got: '$(bot_history_changes)')"
fi
wan_ip_reported() { [ "$(cpe_field public_ip)" = "$RTR_WAN" ]; }
if wait_for 30 wan_ip_reported; then
    pass "the agent reports the router's public (WAN) address $RTR_WAN"
else
    fail "the agent reports the router's public (WAN) address $RTR_WAN (controller has '$(cpe_field public_ip)')"
fi
# An abuse report as the receiving mail server's ISP would send it: the sender's address and
# source port as the MX saw them (after the router's NAT) and the time.
BOT_MAIL=$(grep -m1 'subject=e2e-bot-' "$WORK/mail.log")
SEEN_IP=$(sed -n 's/.* peer=\([^ ]*\) .*/\1/p' <<<"$BOT_MAIL")
SEEN_PORT=$(sed -n 's/.* port=\([0-9]*\) .*/\1/p' <<<"$BOT_MAIL")
SEEN_MS=$(sed -n 's/.* at=\([0-9]*\)\.\([0-9]\{3\}\).*/\1\2/p' <<<"$BOT_MAIL")
echo "  the MX saw the bot's message from $SEEN_IP port $SEEN_PORT at $SEEN_MS ms"
abuse_answer() { # abuse_answer PORT: the answer to a report about $SEEN_IP:PORT at $SEEN_MS
    api POST /api/abuse "{\"public_ip\":\"$SEEN_IP\",\"source_port\":$1,\"time\":$SEEN_MS}"
}
abuse_exact() {
    ABUSE_JSON=$(abuse_answer "$SEEN_PORT")
    [ "$(json "j['answer']['confidence']" <<<"$ABUSE_JSON")" = exact ]
}
if [ -n "$SEEN_PORT" ] && wait_for 30 abuse_exact; then
    pass "an abuse report (public IP, NAT source port, time) gets confidence exact"
    check "it names the bot ($BOT_MAC) and no other device" test \
        "$(json "' '.join(sorted({j['answer']['mac']} | {e['mac'] for e in j['answer']['evidence']}))" <<<"$ABUSE_JSON")" = "$BOT_MAC"
else
    fail "an abuse report (public IP, NAT source port, time) gets confidence exact (last answer: ${ABUSE_JSON:-none})"
fi
OTHER_PORT=$(((SEEN_PORT + 7919) % 64511 + 1024))
check "a report with a source port the router never translated is not answered exact" \
    test "$(abuse_answer "$OTHER_PORT" | json "j['answer']['confidence']")" != exact
laptop_not_flagged() {
    [ "$(cpe_json | json "next((d['verdict'] for d in j['devices'] if d['mac'] == '$LAP_MAC'), 'clean')")" = clean ]
}
check "the laptop is not flagged at the controller" laptop_not_flagged
# ---------------------------------------------------------------------------------------------
step "3. while the bot is blocked, the rest still works"

check "bot's web traffic (HTTP to the wan side) still works" \
    bash -c "ip netns exec $NS_BOT curl -sf --max-time 5 http://$WEB/ | grep -q 'hello from the web'"
check "bot's DNS still works" \
    bash -c "ip netns exec $NS_BOT dig +short +time=2 +tries=1 @$DNS A www.test | grep -q $WEB"
check "laptop still delivers through the relay" laptop_submit e2e-laptop-2
check "relay received the laptop's second message" grep -q "subject=e2e-laptop-2" "$WORK/mail.log"
check "laptop is still neither limited nor blocked" not_enforced $LAP_MAC

# ---------------------------------------------------------------------------------------------
step "4. the agent dies (kill -9): the block stays; restart restores it without duplicate rules"

RULES_BEFORE=$(rule_count)
in_ns "$NS_RTR" nft -a list table inet smtpguard >"$WORK/table-before.txt"
echo "  the agent's table while the bot is blocked:"
in_ns "$NS_RTR" nft list table inet smtpguard | sed 's/^/  | /'

kill -9 "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null
OLD_PID=$AGENT_PID
AGENT_PID=
check "agent process is gone" bash -c "! kill -0 $OLD_PID 2>/dev/null"
check "block still in the kernel's set with the agent dead" nft_set_has blocked $BOT_MAC
check "bot still cannot connect to a mail server" bot_cannot_connect 198.19.9.25
check "block recorded in the state file" grep -q "$BOT_MAC" "$STATE/enforce-state.json"
start_agent
if wait_for 20 agent_ready; then pass "agent restarted"; else fail "agent restarted"; fi
in_ns "$NS_RTR" nft -a list table inet smtpguard >"$WORK/table-after.txt"
RULES_AFTER=$(rule_count)
check "no duplicate rules after restart ($RULES_BEFORE rules before, $RULES_AFTER after)" \
    test "$RULES_BEFORE" -eq "$RULES_AFTER"
check "block restored and still in force after restart" nft_set_has blocked $BOT_MAC
check "agent reports the restored block" \
    bash -c "grep -q '\"mac\": \"$BOT_MAC\"' $RUNDIR/status.json"

# ---------------------------------------------------------------------------------------------
step "4b. a firewall restart flushes every table: the agent puts its own back with the block"

RULES_BEFORE=$(rule_count)
# What `/etc/init.d/firewall restart` does on OpenWrt: `fw4 flush` deletes every table, then
# fw4 loads its own again.
in_ns "$NS_RTR" nft flush ruleset
in_ns "$NS_RTR" nft -f "$WORK/fw4.nft"
if wait_for 20 nft_set_has blocked $BOT_MAC; then
    pass "the agent put its table back with the block in force (within seconds)"
else
    fail "the agent put its table back with the block in force within 20 s"
fi
check "no duplicate rules after the reinstall ($RULES_BEFORE rules before, $(rule_count) after)" \
    test "$(rule_count)" -eq "$RULES_BEFORE"
check "bot still cannot connect to a mail server" bot_cannot_connect 198.19.10.25
check "the agent found its table gone and said so (agent log)" \
    grep -q "enforcement table is gone" "$WORK/agent.log"

# ---------------------------------------------------------------------------------------------
step "5. the block expires after its time to live and mail flows again"

if wait_for $((BLOCK_TTL + 20)) bash -c "! ip netns exec $NS_RTR nft list set inet smtpguard blocked | grep -q $BOT_MAC"; then
    pass "block expired (time to live $BLOCK_TTL s)"
else
    fail "block expired within $((BLOCK_TTL + 20)) s"
fi
check "bot connects to a mail server again" bot_can_connect 198.19.11.25
check "bot's mail is delivered again" bot_send 12 e2e-bot-after-expiry
check "MX received the bot's message after the block expired" \
    grep -q "subject=e2e-bot-after-expiry" "$WORK/mail.log"
check "agent still running" kill -0 "$AGENT_PID"

# ---------------------------------------------------------------------------------------------
step "6. a person releases the bot by hand: lifted at once, held off for the grace period, enforced again after it"

# The bot's message above may already have put it under a rate limit or block again (it
# resumed); the release lifts whatever is in force.
RELEASE_OUT=$(in_ns "$NS_RTR" "$AGENT" release $BOT_MAC --config "$RDIR/agent.toml" 2>&1)
echo "$RELEASE_OUT" | sed 's/^/  | /'
check "\`smtpguard-agent release\` succeeds" grep -q "$BOT_MAC" <<<"$RELEASE_OUT"
check "the running agent took the release before the command returned" \
    grep -q "the running agent took the release" <<<"$RELEASE_OUT"
check "bot is in neither set after the release" not_enforced $BOT_MAC
grace_over() { grep -q "grace period of the manual release over" "$WORK/agent.log"; }
in_grace() { ! grace_over; }
engine_asked() { grep -q "released by hand recently: not enforcing" "$WORK/agent.log"; }
# The bot resumes: it mails until the engine would enforce again (it logs that once), at most
# 20 messages. Nothing is enforced, so every message is delivered.
SENT=0
for n in $(seq 13 32); do
    bot_send $n "e2e-bot-after-release-$n"
    SENT=$((SENT + 1))
    engine_asked && break
done
check "the engine did ask again and the agent held off (agent log)" wait_for 10 engine_asked
check "bot's mail after the release is delivered ($SENT messages)" \
    test "$(mail_count "subject=e2e-bot-after-release-")" -eq "$SENT"
check "the running agent does not re-enforce during the grace period" not_enforced $BOT_MAC
status_shows_release() {
    in_ns "$NS_RTR" "$AGENT" status --config "$RDIR/agent.toml" | grep 'released by hand' >/dev/null
}
check "\`smtpguard-agent status\` shows the manual release" wait_for 10 status_shows_release
check "the checks above ran within the grace period (${GRACE_SECS} s, agent log)" in_grace
if wait_for $((GRACE_SECS + 20)) grace_over; then
    pass "the grace period ended (agent log)"
else
    fail "the grace period ended within $((GRACE_SECS + 20)) s"
fi
# The bot keeps spamming: it is enforced again (bounded: at most 20 messages, 60 s).
(
    end=$(($(date +%s) + 60))
    for n in $(seq 1 20); do
        [ "$(date +%s)" -ge "$end" ] && break
        nft_set_has blocked $BOT_MAC && break
        bot_send $(((n - 1) % DOMAINS + 1)) "e2e-bot-after-grace-$n"
    done
) &
BOT=$!
PIDS+=("$BOT")
if wait_for 70 nft_set_has blocked $BOT_MAC; then
    pass "a bot that keeps spamming after the grace period is blocked again"
else
    fail "a bot that keeps spamming after the grace period is blocked again within 70 s"
fi
kill "$BOT" 2>/dev/null
wait "$BOT" 2>/dev/null

# ---------------------------------------------------------------------------------------------
step "6b. the NOC releases the bot at the controller: a signed command lifts the block on the router"

RELEASE_JSON=$(api POST "/api/cpes/$CPE_ID/devices/$BOT_MAC/release")
echo "  | $RELEASE_JSON"
T_RELEASE=$(now)
COMMAND_ID=$(json "j.get('command_id')" <<<"$RELEASE_JSON" 2>/dev/null)
check "the controller signed and sent the release (command $COMMAND_ID)" \
    test "$(json "j.get('status')" <<<"$RELEASE_JSON" 2>/dev/null)" = sent
if wait_for 10 not_enforced $BOT_MAC; then
    pass "the router lifted the bot's block $(awk -v a="$T_RELEASE" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s after the release at the controller (limit 10 s)"
else
    fail "the router lifted the bot's block within 10 s of the release at the controller"
fi
command_status() {
    api GET "/api/cpes/$CPE_ID/commands" |
        json "next((c['status'] for c in j['commands'] if c['command_id'] == ${COMMAND_ID:-0}), '')"
}
command_applied() { [ "$(command_status)" = applied ]; }
check "the router's acknowledgement is visible at the controller (command $COMMAND_ID applied)" \
    wait_for 10 command_applied
controller_command_logged() {
    grep "controller command" "$WORK/agent.log" | grep "id=${COMMAND_ID:-0} " | grep -q "mac=$BOT_MAC"
}
check "the agent applied the controller's command $COMMAND_ID to the bot (agent log)" controller_command_logged

# ---------------------------------------------------------------------------------------------
step "7. a change of the local policy file reaches the table (no duplicate rules)"

RULES_BEFORE=$(rule_count)
sed -i "s|^allow_relays = .*|allow_relays = [\"198.51.100.0/24:465\"]|" "$RDIR/policy.toml"
if wait_for 15 bash -c "ip netns exec $NS_RTR nft list set inet smtpguard relays4 | grep -q '198.51.100.0/24 . 465'"; then
    pass "new allowlisted relay is in the table"
else
    fail "new allowlisted relay is in the table within 15 s"
fi
check "the ISP relay of the router's config is still there (no policy removes it)" \
    bash -c "ip netns exec $NS_RTR nft list set inet smtpguard relays4 | grep -q '$RELAY . 587'"
check "no duplicate rules after the policy change ($(rule_count) rules)" test "$(rule_count)" -eq "$RULES_BEFORE"
check "laptop still delivers through the relay" laptop_submit e2e-laptop-3

# ---------------------------------------------------------------------------------------------
step "shutdown"
kill -TERM "$AGENT_PID"
if wait_for 10 bash -c "! kill -0 $AGENT_PID 2>/dev/null"; then
    pass "agent exits on SIGTERM"
else
    fail "agent exits on SIGTERM within 10 s"
fi
wait "$AGENT_PID" 2>/dev/null
AGENT_RC=$?
AGENT_PID=
check "agent's exit status after SIGTERM is 0 (was $AGENT_RC)" test "$AGENT_RC" -eq 0
