#!/usr/bin/env python3
"""Serves luci-app-smtpguard's views with the LuCI stub for test-luci.sh, on 127.0.0.1 and an
ephemeral port (written to PORT_FILE), until killed.

    serve.py APP_DIR STATUS_JSON UCI_CONFIG PORT_FILE CALLS_LOG

POST /ubus answers the JSON-RPC calls the views make, in the shape the router would:
- luci.smtpguard status: what root/usr/share/rpcd/ucode/smtpguard.uc returns,
  { path, now_ms, status } with STATUS_JSON as the status (the agent's own file), or { error } for "-";
- luci.smtpguard release { mac }: the backend's MAC check, then what the agent does (the
  device's enforcement entry is replaced by a manual release), { ok, output };
- uci get { config }: the sections of UCI_CONFIG, { values: { section: { option: value } } }.
Every ubus call is appended to CALLS_LOG as one JSON line.
"""
import json
import os
import re
import shlex
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

APP, STATUS, CONFIG, PORT_FILE, CALLS = sys.argv[1:6]
HERE = os.path.dirname(os.path.abspath(__file__))
HTDOCS = os.path.join(APP, "htdocs")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.I)

# STATUS_JSON "-": no status file on the router (the agent has not run yet).
status = json.load(open(STATUS)) if STATUS != "-" else None
now_ms = (status["updated_ms"] if status else 0) + 1000


def uci_values(path):
    values, section = {}, None
    for line in open(path):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "config":
            section = values.setdefault(words[2], {".type": words[1]})
        elif words[0] == "option":
            section[words[1]] = words[2]
        elif words[0] == "list":
            section.setdefault(words[1], []).append(words[2])
    return values


def ubus(obj, method, args):
    if (obj, method) == ("luci.smtpguard", "status"):
        if status is None:
            return {"error": "no status file: the agent has not run yet"}
        return {"path": "/var/run/smtpguard/status.json", "now_ms": now_ms, "status": status}
    if (obj, method) == ("luci.smtpguard", "release"):
        mac = args.get("mac")
        if not isinstance(mac, str) or not MAC.match(mac):
            return {"ok": False, "error": "not a MAC address (aa:bb:cc:dd:ee:ff)"}
        mac = mac.lower()
        held = [e for e in status["enforcement"] if e["mac"] == mac]
        status["enforcement"] = [e for e in status["enforcement"] if e["mac"] != mac]
        status["manual_releases"].append({"mac": mac, "until_ms": now_ms + 3600 * 1000})
        what = "block lifted" if any(e["action"] == "block" for e in held) else "rate limit lifted"
        return {"ok": True, "output": f"{mac}: {what}; the agent leaves it alone for its release grace period"}
    if (obj, method) == ("uci", "get"):
        return {"values": uci_values(CONFIG)}
    return None


class Handler(SimpleHTTPRequestHandler):
    def translate_path(self, path):
        path = path.split("?", 1)[0]
        if path.startswith("/luci-static/"):
            return os.path.join(HTDOCS, path.lstrip("/"))
        return os.path.join(HERE, os.path.basename(path))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _sid, obj, method, args = body["params"]
        with open(CALLS, "a") as log:
            log.write(json.dumps([obj, method, args]) + "\n")
        result = ubus(obj, method, args)
        reply = {"jsonrpc": "2.0", "id": body["id"]}
        if result is None:
            reply["result"] = [3]  # UBUS_STATUS_METHOD_NOT_FOUND
        else:
            reply["result"] = [0, result]
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
