// A small stand-in for LuCI's JavaScript runtime, enough to load and render the views of
// luci-app-smtpguard in a browser without a router: L (bind, require-style loading of a view
// file), E, _, String.prototype.format, view, rpc (JSON-RPC over POST /ubus, like LuCI's),
// ui (notifications, handler functions), poll (records, does not run) and form (Map,
// NamedSection and the option classes the settings view uses, rendered as plain inputs
// filled from `uci get`). Not LuCI: it renders only what the tests check.
'use strict';

(function() {
	String.prototype.format = function() {
		var args = arguments, i = 0;
		return this.replace(/%(%|(0?)(\d*)(?:\.(\d+))?([dsf]))/g, function(m, all, zero, width, prec, conv) {
			if (all == '%')
				return '%';
			var v = args[i++], s;
			if (conv == 'd')
				s = String(Math.trunc(Number(v) || 0));
			else if (conv == 'f')
				s = (Number(v) || 0).toFixed(prec ? +prec : 6);
			else
				s = String(v);
			while (width && s.length < +width)
				s = (zero ? '0' : ' ') + s;
			return s;
		});
	};

	window._ = function(s) { return s; };

	function append(node, child) {
		if (child == null || child === '' || child === false)
			return;
		if (Array.isArray(child))
			return child.forEach(function(c) { append(node, c); });
		node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
	}

	window.E = function(tag, attrs, children) {
		var node = document.createElement(tag);
		if (attrs != null && (typeof attrs != 'object' || Array.isArray(attrs) || attrs instanceof Node)) {
			children = attrs;
			attrs = null;
		}
		Object.keys(attrs || {}).forEach(function(k) {
			var v = attrs[k];
			if (typeof v == 'function')
				node.addEventListener(k, v);
			else if (v != null)
				node.setAttribute(k, v);
		});
		append(node, children);
		return node;
	};

	var rpcCalls = [];
	var rpcId = 0;

	window.L = {
		bind: function(fn, self) {
			var bound = Array.prototype.slice.call(arguments, 2);
			return function() { return fn.apply(self, bound.concat(Array.prototype.slice.call(arguments))); };
		},
		rpcCalls: rpcCalls,
		// Loads a view file the way LuCI does: its 'require x' directives become arguments.
		loadView: function(url) {
			return fetch(url).then(function(r) { return r.text(); }).then(function(src) {
				var names = [], values = [];
				src.replace(/^\s*'require\s+([\w.]+)(?:\s+as\s+(\w+))?';/mg, function(m, mod, as) {
					var name = as || mod.split('.').pop();
					if (!L.modules[mod])
						throw new Error('luci-stub: no module ' + mod);
					names.push(name);
					values.push(L.modules[mod]);
				});
				var Class = new Function(names.join(','), src).apply(window, values);
				return new Class();
			});
		}
	};

	function Class(proto) {
		var C = function() { if (this.__init__) this.__init__.apply(this, arguments); };
		C.prototype = proto;
		return C;
	}

	var view = {
		extend: function(proto) {
			return Class(Object.assign({
				load: function() { return Promise.resolve(); }
			}, proto));
		}
	};

	function call(object, method, args) {
		var req = { jsonrpc: '2.0', id: ++rpcId, method: 'call', params: [ 'stub-session', object, method, args ] };
		rpcCalls.push([ object, method, args ]);
		return fetch('/ubus', { method: 'POST', body: JSON.stringify(req) })
			.then(function(r) { return r.json(); })
			.then(function(reply) {
				if (reply.error || !Array.isArray(reply.result) || reply.result[0] != 0)
					throw new Error('ubus ' + object + ' ' + method + ' failed');
				return reply.result[1];
			});
	}

	var rpc = {
		declare: function(d) {
			return function() {
				var args = {}, vals = arguments;
				(d.params || []).forEach(function(p, i) { args[p] = vals[i]; });
				return call(d.object, d.method, args).then(function(res) {
					var key = d.expect ? Object.keys(d.expect)[0] : null;
					if (key == null || key === '')
						return res;
					return (res && res[key] != null) ? res[key] : d.expect[key];
				});
			};
		}
	};

	var ui = {
		addNotification: function(title, body, cls) {
			var n = E('div', { 'class': 'alert-message notification ' + (cls || '') }, [ title ? E('h4', title) : '', body ]);
			document.querySelector('#notifications').appendChild(n);
			return n;
		},
		createHandlerFn: function(ctx, fn) {
			var bound = Array.prototype.slice.call(arguments, 2);
			return function(ev) {
				var f = typeof fn == 'string' ? ctx[fn] : fn;
				return Promise.resolve(f.apply(ctx, bound.concat([ ev ])));
			};
		}
	};

	var poll = {
		added: [],
		add: function(fn, interval) { poll.added.push(interval); }
	};

	// form: sections and options collect their settings; render() draws them as inputs.
	function Option(section, name, title, description) {
		this.section = section;
		this.option = name;
		this.title = title;
		this.description = description;
		this.values = [];
	}
	Option.prototype.value = function(k, label) { this.values.push([ k, label || k ]); };
	Option.prototype.depends = function() {};
	Option.prototype.renderInput = function(value) {
		var id = this.section.sid + '.' + this.option;
		var kind = this.kind;
		if (kind == 'list')
			return E('select', { 'id': id, 'data-option': id }, this.values.map(function(v) {
				var o = E('option', { 'value': v[0] }, v[1]);
				if (v[0] == value) o.setAttribute('selected', 'selected');
				return o;
			}));
		if (kind == 'flag') {
			var cb = E('input', { 'type': 'checkbox', 'id': id, 'data-option': id });
			cb.checked = value == '1';
			return cb;
		}
		if (kind == 'dynlist')
			return E('div', { 'id': id, 'data-option': id, 'class': 'dynlist' },
				(Array.isArray(value) ? value : value ? [ value ] : []).map(function(v) { return E('div', v); })
					.concat([ E('input', { 'type': 'text', 'placeholder': this.placeholder || '' }) ]));
		var input = E('input', { 'type': this.password ? 'password' : 'text', 'id': id, 'data-option': id,
			'placeholder': this.placeholder || '' });
		input.value = value == null ? '' : value;
		return input;
	};
	function optionClass(kind) {
		var C = function() { Option.apply(this, arguments); this.kind = kind; };
		C.prototype = Object.create(Option.prototype);
		return C;
	}

	function NamedSection(map, sid, type, title, description) {
		this.map = map;
		this.sid = sid;
		this.type = type;
		this.title = title;
		this.description = description;
		this.options = [];
	}
	NamedSection.prototype.option = function(C, name, title, description) {
		var o = new C(this, name, title, description);
		this.options.push(o);
		return o;
	};

	function Map(config, title, description) {
		this.config = config;
		this.title = title;
		this.description = description;
		this.sections = [];
	}
	Map.prototype.section = function(C) {
		var s = new (Function.prototype.bind.apply(C, [ null, this ].concat(Array.prototype.slice.call(arguments, 1))))();
		this.sections.push(s);
		return s;
	};
	Map.prototype.render = function() {
		var self = this;
		return call('uci', 'get', { config: this.config }).then(function(res) {
			var values = res.values || {};
			return E('div', { 'class': 'cbi-map', 'data-config': self.config }, [
				E('h2', self.title),
				E('div', { 'class': 'cbi-map-descr' }, self.description),
				self.sections.map(function(s) {
					var sv = values[s.sid] || {};
					return E('fieldset', { 'class': 'cbi-section', 'data-section': s.sid }, [
						E('legend', s.title),
						s.description ? E('div', { 'class': 'cbi-section-descr' }, s.description) : '',
						s.options.map(function(o) {
							return E('div', { 'class': 'cbi-value' }, [
								E('label', { 'class': 'cbi-value-title', 'for': s.sid + '.' + o.option }, o.title),
								E('div', { 'class': 'cbi-value-field' }, [
									o.renderInput(sv[o.option]),
									o.description ? E('div', { 'class': 'cbi-value-description' }, o.description) : ''
								])
							]);
						})
					]);
				})
			]);
		});
	};

	var form = {
		Map: Map,
		NamedSection: NamedSection,
		Value: optionClass('value'),
		ListValue: optionClass('list'),
		Flag: optionClass('flag'),
		DynamicList: optionClass('dynlist')
	};

	L.modules = { view: view, rpc: rpc, ui: ui, poll: poll, form: form };
})();
