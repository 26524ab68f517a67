'use strict';
'require view';
'require poll';
'require rpc';
'require ui';

// The devices smtpguard-agent watches: verdict, evidence, what the router does about each
// and until when, and a release button for each device the router throttles or blocks.
// Data: ubus luci.smtpguard status (root/usr/share/rpcd/ucode/smtpguard.uc), which passes the
// agent's status.json through unchanged (agent/src/enforce/control.rs, StatusFile).

var callStatus = rpc.declare({
	object: 'luci.smtpguard',
	method: 'status',
	expect: { '': {} }
});

var callRelease = rpc.declare({
	object: 'luci.smtpguard',
	method: 'release',
	params: [ 'mac' ],
	expect: { '': {} }
});

// The agent rewrites an unchanged status file every 10 s (STATUS_HEARTBEAT_SECS); a file 3
// heartbeats old means it is not running (agent/src/enforce/control.rs, running_at).
var STALE_MS = 30000;

var VERDICTS = {
	clean: [ _('Clean'), '#2e7d32' ],
	suspicious: [ _('Suspicious'), '#b26a00' ],
	infected: [ _('Infected'), '#c62828' ]
};

var ACTIONS = {
	monitor: _('Watching, no action'),
	'rate-limit': _('Mail throttled'),
	block: _('Mail blocked')
};

function duration(ms) {
	var s = Math.max(0, Math.ceil(ms / 1000));
	if (s < 120)
		return _('%d s').format(s);
	if (s < 7200)
		return _('%d min').format(Math.round(s / 60));
	return _('%d h').format(Math.round(s / 3600));
}

function clock(ms) {
	var d = new Date(ms);
	return '%02d:%02d'.format(d.getHours(), d.getMinutes());
}

// What the router does about one device, in words, with its end.
function routerAction(dev, entry, release, now) {
	if (release)
		return _('Released by hand: left alone until %s (%s left)')
			.format(clock(release.until_ms), duration(release.until_ms - now));
	var action = entry ? entry.action : dev.action;
	var text = ACTIONS[action] || action;
	if (action == 'monitor')
		return text;
	if (entry && entry.open_ended)
		return _('%s until the device behaves or is released').format(text);
	var until = entry ? entry.until_ms : dev.action_until_ms;
	if (until)
		return _('%s until %s (%s left)').format(text, clock(until), duration(until - now));
	return text;
}

function byMac(list) {
	var map = {};
	(list || []).forEach(function(e) { map[e.mac] = e; });
	return map;
}

return view.extend({
	load: function() {
		return callStatus();
	},

	handleRelease: function(mac, ev) {
		var button = ev.currentTarget;
		button.disabled = true;
		return callRelease(mac).then(L.bind(function(res) {
			if (res && res.ok)
				ui.addNotification(null, E('p', res.output || _('%s released').format(mac)), 'info');
			else
				ui.addNotification(null, E('p', _('Release of %s failed: %s')
					.format(mac, (res && (res.error || res.output)) || _('no answer'))), 'danger');
			return this.refresh();
		}, this)).catch(function(err) {
			button.disabled = false;
			ui.addNotification(null, E('p', _('Release of %s failed: %s').format(mac, err.message)), 'danger');
		});
	},

	refresh: function() {
		return callStatus().then(L.bind(function(reply) {
			var body = document.querySelector('#smtpguard-status');
			if (body)
				body.parentNode.replaceChild(this.renderStatus(reply), body);
		}, this));
	},

	renderAgent: function(reply) {
		var s = reply.status;
		var age = reply.now_ms - s.updated_ms;
		var state;
		if (s.stopped)
			state = _('stopped');
		else if (age > STALE_MS)
			state = _('not running (status is %s old)').format(duration(age));
		else
			state = _('running');
		return E('p', { 'class': 'smtpguard-agent' }, [
			_('Agent %s, capturing on %s; policy version %d, mode %s.').format(
				state, s.interface || '-', s.policy_version || 0, s.mode || '-'),
			' ',
			_('%d packets seen, %d devices.').format((s.stats && s.stats.packets) || 0,
				(s.devices || []).length)
		]);
	},

	renderDevice: function(dev, entries, releases, now) {
		var entry = entries[dev.mac];
		var release = releases[dev.mac];
		var verdict = VERDICTS[dev.verdict] || [ dev.verdict, '#555' ];
		var enforced = !!entry || dev.action == 'block' || dev.action == 'rate-limit';

		return E('tr', { 'class': 'tr', 'data-mac': dev.mac, 'data-verdict': dev.verdict }, [
			E('td', { 'class': 'td', 'data-title': _('Device') }, [
				E('strong', { 'class': 'smtpguard-host' }, dev.hostname || _('(no host name)')),
				E('br'),
				E('code', { 'class': 'smtpguard-mac' }, dev.mac),
				E('br'),
				E('small', [ (dev.ips || []).join(', ') || '-', dev.vendor ? ' · ' + dev.vendor : '' ])
			]),
			E('td', { 'class': 'td smtpguard-verdict', 'data-title': _('Verdict') }, [
				E('span', { 'style': 'font-weight:bold;color:' + verdict[1] }, verdict[0]),
				E('br'),
				E('small', _('score %.2f').format(dev.score))
			]),
			E('td', { 'class': 'td smtpguard-evidence', 'data-title': _('Evidence') },
				(dev.evidence && dev.evidence.length)
					? E('ul', dev.evidence.map(function(line) { return E('li', line); }))
					: E('em', _('nothing stands out'))),
			E('td', { 'class': 'td smtpguard-action', 'data-title': _('Router action') },
				routerAction(dev, entry, release, now)),
			E('td', { 'class': 'td cbi-section-actions' }, enforced && !release
				? E('button', {
					'class': 'btn cbi-button cbi-button-negative smtpguard-release',
					'data-mac': dev.mac,
					'title': _('Lift the block or throttle now; the agent then leaves the device alone for its grace period'),
					'click': ui.createHandlerFn(this, 'handleRelease', dev.mac)
				}, _('Release'))
				: '')
		]);
	},

	renderStatus: function(reply) {
		if (!reply || !reply.status)
			return E('div', { 'id': 'smtpguard-status' }, [
				E('p', { 'class': 'alert-message warning' },
					(reply && reply.error) || _('No answer from the router.'))
			]);

		var s = reply.status;
		var entries = byMac(s.enforcement);
		var releases = byMac(s.manual_releases);
		var rank = { infected: 0, suspicious: 1, clean: 2 };
		var devices = (s.devices || []).slice().sort(function(a, b) {
			return (rank[a.verdict] - rank[b.verdict]) || (b.score - a.score);
		});

		var rows = devices.map(L.bind(function(dev) {
			return this.renderDevice(dev, entries, releases, reply.now_ms);
		}, this));
		if (!rows.length)
			rows = [ E('tr', { 'class': 'tr placeholder' }, [
				E('td', { 'class': 'td', 'colspan': 5 }, E('em', _('No device has sent mail yet.')))
			]) ];

		return E('div', { 'id': 'smtpguard-status' }, [
			this.renderAgent(reply),
			E('table', { 'class': 'table cbi-section-table', 'id': 'smtpguard-devices' }, [
				E('tr', { 'class': 'tr table-titles' }, [
					E('th', { 'class': 'th' }, _('Device')),
					E('th', { 'class': 'th' }, _('Verdict')),
					E('th', { 'class': 'th' }, _('Evidence')),
					E('th', { 'class': 'th' }, _('Router action')),
					E('th', { 'class': 'th cbi-section-actions' }, '')
				])
			].concat(rows))
		]);
	},

	render: function(reply) {
		poll.add(L.bind(this.refresh, this), 5);
		return E('div', { 'class': 'cbi-map' }, [
			E('h2', _('smtpguard: devices')),
			E('div', { 'class': 'cbi-map-descr' },
				_('Devices on the LAN that send mail, what smtpguard concluded about each, and what the router does about it.')),
			E('div', { 'class': 'cbi-section' }, this.renderStatus(reply))
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
