#!/usr/bin/env bash
# Tests luci-app-smtpguard without a router:
# 1. static: the menu and ACL JSON parse and agree with the views and the rpcd backend
#    (ubus object, methods, view paths); the backend's MAC check and status file paths;
#    the LuCI feed Makefile.
# 2. the views in headless Chromium (Debian's chromium) against a stub of LuCI's runtime and
#    JSON-RPC (tests/luci/): the status view shows each device of tests/luci/status.json with
#    host name, MAC, verdict, evidence and what the router does until when; its release
#    button calls `release` with that MAC and the row then shows the release; the settings
#    view shows only options the agent accepts (agent/src/config.rs) and every option of the
#    packaged config, with the packaged values.
# 3. with SMTPGUARD_HOST_AGENT: the real agent reads the fixture (`status`), so the fixture
#    is the agent's status file schema, not a guess.
# A screenshot of the status view goes to $SMTPGUARD_LUCI_SCREENSHOT if set (docs/ keeps one).
#
# Prints "luci: N passed, M failed"; exits non-zero on any failure, also when Chromium is
# missing (never skipped).
# Single-quoted $ strings below are for Python or an inner shell, not expansions here.
# shellcheck disable=SC2016
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
APP="$HERE/luci-app-smtpguard"
T="$HERE/tests/luci"
CONFIG="$HERE/smtpguard/files/smtpguard.config"
work="$(mktemp -d)"
server=""
cleanup() {
    [[ -z "$server" ]] || kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=firmware/openwrt/checks.sh
source "$HERE/checks.sh"
# py_checks NAME SCRIPT ARGS...: runs a Python script printing "ok: ..." / "FAIL: ..." lines.
py_checks() {
    local name="$1" script="$2" line
    shift 2
    while IFS= read -r line; do
        check "$name: ${line#*: }" test "${line%%: *}" == ok
    done < <(python3 -c "$script" "$@" 2>&1 || echo "FAIL: checker crashed")
}

# 1. Static.
py_checks static '
import json, os, re, sys
app, root = sys.argv[1:3]
def check(what, cond, detail=""):
    print(("ok: " if cond else "FAIL: ") + what + ("" if cond else f" ({detail})"))
menu = json.load(open(f"{app}/root/usr/share/luci/menu.d/luci-app-smtpguard.json"))
acl = json.load(open(f"{app}/root/usr/share/rpcd/acl.d/luci-app-smtpguard.json"))
uc = open(f"{app}/root/usr/share/rpcd/ucode/smtpguard.uc").read()
views = {v: open(f"{app}/htdocs/luci-static/resources/view/smtpguard/{v}.js").read() for v in ("status", "settings")}
for path, node in menu.items():
    action = node.get("action", {})
    if action.get("type") == "view":
        view = action["path"]
        f = f"{app}/htdocs/luci-static/resources/view/{view}.js"
        check(f"menu {path} names an existing view", os.path.exists(f), f)
check("menu depends on the ACL", menu["admin/services/smtpguard"]["depends"]["acl"] == ["luci-app-smtpguard"])
a = acl["luci-app-smtpguard"]
check("ACL: status is read", a["read"]["ubus"] == {"luci.smtpguard": ["status"]}, a["read"])
check("ACL: release is write", a["write"]["ubus"] == {"luci.smtpguard": ["release"]}, a["write"])
check("ACL: uci smtpguard read and write", a["read"]["uci"] == a["write"]["uci"] == ["smtpguard"])
check("backend exports luci.smtpguard", "return { \x27luci.smtpguard\x27: methods };" in uc)
check("backend: status and release methods", re.search(r"^\tstatus: \{", uc, re.M) and re.search(r"^\trelease: \{", uc, re.M))
check("backend: strict MAC pattern, case-insensitive",
      "regexp(\x27^[0-9a-f]{2}(:[0-9a-f]{2}){5}$\x27, \x27i\x27)" in uc)
check("backend: release checks the MAC before running anything",
      uc.index("match(mac, MAC)") < uc.index("popen("))
check("backend: runs smtpguard-agent release with the UCI config",
      "\x27%s release --config %s %s 2>&1\x27, AGENT, CONFIG, mac" in uc and "const CONFIG = \x27/etc/config/smtpguard\x27;" in uc)
check("backend: status in runtime_dir (default /var/run/smtpguard) first, then in the state dir",
      "[ runtime_dir + \x27/status.json\x27, state_dir + \x27/status.json\x27 ]" in uc
      and "const RUNTIME_DIR = \x27/var/run/smtpguard\x27;" in uc)
control = open(f"{root}/agent/src/enforce/control.rs").read()
heartbeat = int(re.search(r"STATUS_HEARTBEAT_SECS: u64 = (\d+);", control).group(1))
stale = int(re.search(r"STALE_AFTER_HEARTBEATS: u64 = (\d+);", control).group(1))
check("status.js calls the agent not running when the agent does",
      f"var STALE_MS = {heartbeat * stale * 1000};" in views["status"], (heartbeat, stale))
for v, src in views.items():
    check(f"{v}.js declares only luci.smtpguard methods the ACL grants",
          set(re.findall(r"method: \x27(\w+)\x27", src)) <= {"status", "release"})
check("status.js: release passes the MAC", "params: [ \x27mac\x27 ]" in views["status"])
check("settings.js: no option depends on another (LuCI would delete the hidden ones on save)",
      ".depends(" not in views["settings"])
mk = open(f"{app}/Makefile").read()
check("LuCI Makefile includes ../../luci.mk", "\ninclude ../../luci.mk\n" in mk)
check("LuCI Makefile depends on smtpguard and rpcd-mod-ucode", "+smtpguard" in mk and "+rpcd-mod-ucode" in mk)
check("LuCI Makefile: license and maintainer e-mail", "PKG_LICENSE:=Apache-2.0" in mk and re.search(r"PKG_MAINTAINER:=.+<[^@]+@[^>]+>", mk))
' "$APP" "$ROOT"

# 2. The views in Chromium.
check "chromium is installed (scripts/setup.sh)" command -v chromium >/dev/null
python3 "$T/serve.py" "$APP" "$T/status.json" "$CONFIG" "$work/port" "$work/calls" &
server=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
port="$(cat "$work/port")"
browse() {
    timeout 90 chromium --headless=new --no-sandbox --disable-gpu --no-first-run \
        --user-data-dir="$work/profile" --virtual-time-budget=15000 "$@" 2>>"$work/chromium.log"
}
result() {
    browse --dump-dom "http://127.0.0.1:$port/harness.html?$1" |
        sed -n 's|.*<pre id="result" hidden="">\(.*\)</pre>.*|\1|p' |
        python3 -c 'import html, sys; sys.stdout.write(html.unescape(sys.stdin.read()))'
}
# The screenshot first: the release below changes what the stub router reports.
if [[ -n "${SMTPGUARD_LUCI_SCREENSHOT:-}" ]]; then
    browse --window-size=1280,860 --hide-scrollbars --screenshot="$work/shot.png" \
        "http://127.0.0.1:$port/harness.html?view=status" >/dev/null
    check "screenshot is a PNG" bash -c 'head -c 8 "$1" | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a"' _ "$work/shot.png"
    cp "$work/shot.png" "$SMTPGUARD_LUCI_SCREENSHOT"
fi
: >"$work/calls"
result "view=status&release=1" >"$work/status.json"
cp "$work/calls" "$work/status-calls"
result "view=settings" >"$work/settings.json"

py_checks "status view" '
import json, sys
res = json.load(open(sys.argv[1]))
fixture = json.load(open(sys.argv[2]))
calls = [json.loads(l) for l in open(sys.argv[3])]
def check(what, cond, detail=""):
    print(("ok: " if cond else "FAIL: ") + what + ("" if cond else f" ({detail})"))
check("rendered without error", res.get("ok") is True, res.get("error"))
rows = {r["mac"]: r for r in res.get("rows", [])}
check("one row per device", sorted(rows) == sorted(d["mac"] for d in fixture["devices"]), sorted(rows))
check("infected first, clean last", [r["verdict"] for r in res["rows"]] == ["Infected", "Suspicious", "Clean"],
      [r["verdict"] for r in res["rows"]])
for d in fixture["devices"]:
    mac = d["mac"]
    r = rows.get(mac, {})
    check(f"{mac}: host name", r.get("host") == d["hostname"], r.get("host"))
    check(f"{mac}: verdict", r.get("verdict") == d["verdict"].capitalize(), r.get("verdict"))
    check(f"{mac}: evidence, line for line", r.get("evidence") == d["evidence"], r.get("evidence"))
bot, cam, laptop = "02:5b:00:00:00:0b", "02:5b:00:00:00:2c", "02:5b:00:00:00:1a"
check("blocked device: blocked, until when, time left",
      rows[bot]["action"].startswith("Mail blocked until ") and rows[bot]["action"].endswith("(45 min left)"), rows[bot]["action"])
check("throttled device: open-ended throttle", rows[cam]["action"] == "Mail throttled until the device behaves or is released", rows[cam]["action"])
check("clean device: no action", rows[laptop]["action"] == "Watching, no action", rows[laptop]["action"])
check("release buttons on the enforced devices only, each with its MAC",
      {m: r["release"] for m, r in rows.items()} == {bot: bot, cam: cam, laptop: None})
check("agent line: running, interface, policy, mode",
      "Agent running, capturing on br-lan; policy version 7, mode enforce." in res["text"], res["text"][:300])
check("clicked the first button (the infected device)", res.get("clicked") == bot, res.get("clicked"))
check("the browser called release once, with that MAC",
      [c for c in calls if c[1] == "release"] == [["luci.smtpguard", "release", {"mac": bot}]], calls)
check("status read again after the release", [c[1] for c in calls] == ["status", "release", "status"], calls)
check("the agent answer is shown", "02:5b:00:00:00:0b: block lifted" in res.get("notification", ""), res.get("notification"))
after = {r["mac"]: r for r in res.get("after", [])}
check("after the release: the row says so, no button",
      after.get(bot, {}).get("action", "").startswith("Released by hand: left alone until") and after[bot]["release"] is None,
      after.get(bot))
check("after the release: the other device still has its button", after.get(cam, {}).get("release") == cam)
' "$work/status.json" "$T/status.json" "$work/status-calls"

py_checks "settings view" '
import json, re, shlex, sys
res = json.load(open(sys.argv[1]))
config_rs, uci = open(sys.argv[2]).read(), sys.argv[3]
def check(what, cond, detail=""):
    print(("ok: " if cond else "FAIL: ") + what + ("" if cond else f" ({detail})"))
check("rendered without error", res.get("ok") is True, res.get("error"))
# The options the agent accepts: the fields of its config structs (section agent = the
# top-level keys, which are not tables).
structs = {"agent": "AgentConfig", "capture": "CaptureConfig", "uplink": "UplinkConfig",
           "enforce": "EnforceConfig", "led": "LedConfig", "nat": "NatConfig"}
known = set()
for section, name in structs.items():
    body = re.search(r"pub struct " + name + r" \{(.*?)\n\}", config_rs, re.S).group(1)
    for field in re.findall(r"^\s*pub (\w+):", body, re.M):
        if not (section == "agent" and field in structs):
            known.add(f"{section}.{field}")
shown = dict(res.get("options", []))
check("at least one option per section", {k.split(".")[0] for k in shown} == set(structs), sorted(shown))
check("only options the agent accepts", set(shown) <= known, sorted(set(shown) - known))
packaged = {}
section = None
for line in open(uci):
    w = shlex.split(line, comments=True)
    if w and w[0] == "config":
        section = w[2]
    elif w and w[0] == "option":
        packaged[f"{section}.{w[1]}"] = w[2]
check("every option of the packaged config is in the form", set(packaged) <= set(shown), sorted(set(packaged) - set(shown)))
for k, v in packaged.items():
    if k in shown and k != "uplink.password":
        check(f"{k} shows the packaged value", shown[k] == v, (shown[k], v))
print("ok: " + f"{len(shown)} options shown of {len(known)} the agent accepts")
' "$work/settings.json" "$ROOT/agent/src/config.rs" "$CONFIG"


# A router where the agent has not run yet: the page says so instead of a table.
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
rm -f "$work/port"
python3 "$T/serve.py" "$APP" - "$CONFIG" "$work/port" "$work/calls" &
server=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
port="$(cat "$work/port")"
result "view=status" >"$work/empty.json"
py_checks "status view, no status file" '
import json, sys
res = json.load(open(sys.argv[1]))
def check(what, cond, detail=""):
    print(("ok: " if cond else "FAIL: ") + what + ("" if cond else f" ({detail})"))
check("rendered without error", res.get("ok") is True, res.get("error"))
check("no device rows", res.get("rows") == [], res.get("rows"))
check("says the agent has not run", "no status file: the agent has not run yet" in res.get("text", ""), res.get("text"))
' "$work/empty.json"

# 3. The fixture is what the agent writes: the real agent reads it.
if [[ -n "${SMTPGUARD_HOST_AGENT:-}" ]]; then
    mkdir -p "$work/state"
    cp "$T/status.json" "$work/state/status.json"
    sed -e "s|'/etc/smtpguard'|'$work/state'|" -e "s|'/var/run/smtpguard'|'$work/state'|" \
        -e "s|option backend 'nftables'|option backend 'none'|" \
        "$CONFIG" >"$work/agent.config"
    check "the real agent reads the fixture" \
        bash -c '"$1" status --config "$2" >"$3" 2>&1' _ "$SMTPGUARD_HOST_AGENT" "$work/agent.config" "$work/agent-status.txt"
    for want in "02:5b:00:00:00:0b" "(DESKTOP-7KQ2M4)" "02:5b:00:00:00:2c" "(ipcam-garage)" "(anna-laptop)" "devices (3)"; do
        check "agent status shows $want" grep -qF -- "$want" "$work/agent-status.txt"
    done
fi

checks_summary luci
