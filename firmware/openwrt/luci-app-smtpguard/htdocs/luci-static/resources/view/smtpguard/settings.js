'use strict';
'require view';
'require form';

// The settings of smtpguard-agent in /etc/config/smtpguard. Every option here is one the
// agent reads (agent/src/config.rs); the agent refuses unknown options, so nothing else may
// be added. An emptied field is deleted from the file and the agent uses its default.
// Saving commits the config, and procd restarts the agent (procd_add_reload_trigger).
// No option depends on another: LuCI deletes options whose dependency is unmet when it saves,
// and switching the uplink off must not throw away the router's broker login.

return view.extend({
	render: function() {
		var m, s, o;

		m = new form.Map('smtpguard', _('smtpguard: settings'),
			_('Detection thresholds, the mode and the allowlists are policy: the ISP\'s controller sends them, or a local policy file holds them until it does.'));

		s = m.section(form.NamedSection, 'capture', 'capture', _('LAN capture'));
		o = s.option(form.Value, 'interface', _('LAN bridge'),
			_('The interface whose devices are watched.'));
		o.placeholder = 'br-lan';
		o.datatype = 'maxlength(15)';
		o = s.option(form.Value, 'leases_file', _('DHCP lease file'),
			_('dnsmasq lease file, for host names.'));
		o.placeholder = '/tmp/dhcp.leases';
		o = s.option(form.Value, 'oui_file', _('Vendor registry'),
			_('IEEE OUI registry (CSV) for vendor names; empty for none.'));
		o.optional = true;
		o = s.option(form.Value, 'device_capacity', _('Most devices tracked'),
			_('Memory stays bounded even under a flood of MAC addresses.'));
		o.datatype = 'range(1,65536)';
		o.placeholder = '1024';

		s = m.section(form.NamedSection, 'enforce', 'enforce', _('Enforcement'));
		o = s.option(form.ListValue, 'backend', _('Backend'));
		o.value('nftables', _('nftables: throttle and block (table inet smtpguard)'));
		o.value('none', _('none: report only'));
		o.default = 'nftables';
		o = s.option(form.DynamicList, 'mail_ports', _('Mail ports'),
			_('Ports read as mail and the only ones throttled or blocked (25 is direct to MX). Empty for the built-in set.'));
		o.datatype = 'port';
		o.optional = true;
		o = s.option(form.Value, 'release_grace_secs', _('Grace after a release (s)'),
			_('How long the agent leaves a device alone after it was released by hand.'));
		o.datatype = 'uinteger';
		o.placeholder = '3600';
		o = s.option(form.Value, 'nft', _('nft program'));
		o.placeholder = 'nft';
		o.optional = true;

		s = m.section(form.NamedSection, 'uplink', 'uplink', _('Controller uplink'),
			_('Off until the router is enrolled at the ISP: the agent then protects the household on its local policy alone.'));
		o = s.option(form.Flag, 'enabled', _('Connect to the controller'));
		o.rmempty = false;
		o = s.option(form.Value, 'broker_url', _('Broker'),
			_('MQTT broker of the ISP\'s controller, mqtts:// for TLS.'));
		o.placeholder = 'mqtts://controller.isp.example:8883';
		o = s.option(form.Value, 'username', _('User name'));
		o = s.option(form.Value, 'password', _('Password'));
		o.password = true;
		o = s.option(form.Value, 'controller_public_key', _('Controller public key'),
			_('Policy not signed with this key is refused.'));
		o.placeholder = 'ed25519:<64 hex digits>';
		o.validate = function(section_id, value) {
			return (value == '' || /^ed25519:[0-9a-fA-F]{64}$/.test(value))
				? true : _('Expecting ed25519: and 64 hexadecimal digits');
		};
		o = s.option(form.Value, 'tls_ca_file', _('CA bundle'),
			_('CA certificates for the broker\'s TLS certificate.'));
		o.placeholder = '/etc/ssl/certs/ca-certificates.crt';
		o = s.option(form.Value, 'policy_version_floor', _('Oldest policy version accepted'),
			_('An older, validly signed policy replayed on the broker is refused. 0 sets no floor.'));
		o.datatype = 'uinteger';
		o.optional = true;

		s = m.section(form.NamedSection, 'agent', 'agent', _('Agent'));
		o = s.option(form.Value, 'state_dir', _('State directory'),
			_('Device key, sequence numbers, alert queue and blocks; kept across sysupgrade.'));
		o.placeholder = '/etc/smtpguard';
		// Never deleted: the agent's own default (/var/lib/smtpguard) is not persistent on a
		// router, and the init script prepares /etc/smtpguard.
		o.rmempty = false;
		o.datatype = 'minlength(1)';
		o = s.option(form.Value, 'runtime_dir', _('Runtime directory'),
			_('Status file and release requests, in RAM (lost at reboot by design); empty for the state directory, which is flash.'));
		o.placeholder = '/var/run/smtpguard';
		o.optional = true;
		o = s.option(form.Value, 'policy_file', _('Local policy file'),
			_('TOML in the controller\'s policy schema, used until the controller sends a policy; empty for the built-in defaults.'));
		o.optional = true;
		o = s.option(form.DynamicList, 'isp_relays', _('ISP mail relays'),
			_('Relays no policy can remove or convict, as address:port or network (198.51.100.25:587, 198.51.100.0/24).'));
		o.optional = true;
		o = s.option(form.Value, 'cpe_id', _('Router id'),
			_('This router\'s id on the wire; empty to derive it from its key.'));
		o.optional = true;

		s = m.section(form.NamedSection, 'nat', 'nat', _('NAT translations'),
			_('Each mail connection\'s public address and port, so that the ISP can map an abuse report to the exact device.'));
		o = s.option(form.Flag, 'conntrack', _('Look up NAT translations'),
			_('Needs kmod-nf-conntrack-netlink.'));
		o.default = '1';
		o.rmempty = false;
		o = s.option(form.Value, 'wan_interface', _('WAN device'),
			_('Linux device behind the WAN (l3_device in ifstatus wan); empty: the source address of the default route.'));
		o.optional = true;

		s = m.section(form.NamedSection, 'led', 'led', _('Status LED'));
		o = s.option(form.Value, 'name', _('LED'),
			_('Name under /sys/class/leds; empty for none.'));
		o.optional = true;

		return m.render();
	}
});
