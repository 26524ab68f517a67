// SPDX-License-Identifier: Apache-2.0
//
// ubus object `luci.smtpguard` for luci-app-smtpguard (rpcd ucode plugin).
//
//   status  -> { path, now_ms, status }: the agent's status file as it wrote it (schema:
//              StatusFile in agent/src/enforce/control.rs), where it was read, and the
//              router's clock; or { error } when there is none.
//   release { mac } -> { ok, output }: runs `smtpguard-agent release MAC`.
//
// Kept minimal on purpose: no reshaping of the status file, the view reads the agent's own
// field names.

'use strict';

import { readfile, popen } from 'fs';
import { cursor } from 'uci';

const AGENT = '/usr/sbin/smtpguard-agent';
const CONFIG = '/etc/config/smtpguard';
// Where the agent writes status.json: agent.runtime_dir (RAM, /var/run/smtpguard on
// OpenWrt), else agent.state_dir (what an agent without runtime_dir uses).
const RUNTIME_DIR = '/var/run/smtpguard';
const STATE_DIR = '/etc/smtpguard';
const MAC = regexp('^[0-9a-f]{2}(:[0-9a-f]{2}){5}$', 'i');

function status_paths() {
	let uci = cursor();
	let runtime_dir = uci.get('smtpguard', 'agent', 'runtime_dir') || RUNTIME_DIR;
	let state_dir = uci.get('smtpguard', 'agent', 'state_dir') || STATE_DIR;
	return [ runtime_dir + '/status.json', state_dir + '/status.json' ];
}

const methods = {
	status: {
		call: function() {
			for (let path in status_paths()) {
				let text = readfile(path);
				if (text == null)
					continue;
				let status;
				try {
					status = json(text);
				}
				catch (e) {
					status = null;
				}
				// The agent replaces the file atomically, so a bad one is not a torn write.
				if (type(status) != 'object')
					return { error: 'status file is not a JSON object: ' + path };
				return { path, now_ms: time() * 1000, status };
			}
			return { error: 'no status file: the agent has not run yet' };
		}
	},

	release: {
		args: { mac: 'mac' },
		call: function(req) {
			let mac = req.args?.mac;
			if (type(mac) != 'string' || !match(mac, MAC))
				return { ok: false, error: 'not a MAC address (aa:bb:cc:dd:ee:ff)' };
			mac = lc(mac);
			// mac is 17 characters of [0-9a-f:] now: nothing for the shell to interpret.
			let p = popen(sprintf('%s release --config %s %s 2>&1', AGENT, CONFIG, mac), 'r');
			if (!p)
				return { ok: false, error: 'cannot run ' + AGENT };
			let output = p.read('all');
			let code = p.close();
			return { ok: code == 0, output: trim(output ?? '') };
		}
	}
};

return { 'luci.smtpguard': methods };
