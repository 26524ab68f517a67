//! The nftables backend against the real `nft` in a network namespace this test creates:
//! install (twice, no duplicate rules), element add / replace / delete / expiry, a failed
//! batch that changes nothing, and other tables left alone; then the rules on real forwarded
//! traffic. Needs root, nftables and netcat-openbsd (the README's test command runs as root
//! and installs them); it fails, never skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use smtpguard_agent::enforce::{
    EnforceError, Enforcer, LiveElement, NftEnforcer, Op, SetKind, TableSpec,
};
use smtpguard_protocol::MacAddr;

/// A network namespace removed on drop, also when the test fails.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("sgt-{tag}-{}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "cannot create network namespace {name}: this test needs root and iproute2 ({st:?})"
        );
        Netns(name)
    }

    fn nft(&self) -> NftEnforcer {
        NftEnforcer::with_command(
            ["ip", "netns", "exec", &self.0, "nft"]
                .map(String::from)
                .to_vec(),
        )
    }

    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn spec(relays: &[&str]) -> TableSpec {
    TableSpec {
        mail_ports: vec![25, 465, 587, 2525],
        rate_per_minute: 10,
        relays: relays.iter().map(|r| r.parse().unwrap()).collect(),
    }
}

/// Rules in the agent's table, from `nft -a list` (each rule line carries a handle).
fn rule_count(ns: &Netns) -> usize {
    ns.sh(&["nft", "-a", "list", "table", "inet", "smtpguard"])
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains("# handle")
                && !l.starts_with("table")
                && !l.starts_with("set")
                && !l.starts_with("chain")
        })
        .count()
}

#[test]
fn nft_backend_in_a_fresh_namespace() {
    let ns = Netns::new("nft");
    let mut nft = ns.nft();
    // Somebody else's table (as fw4 on OpenWrt): must survive everything below.
    ns.sh(&[
        "nft",
        "add table inet fw4; add chain inet fw4 forward { type filter hook forward priority filter; policy accept; }; add rule inet fw4 forward counter accept",
    ]);

    nft.install(&spec(&["203.0.113.25:587"])).unwrap();
    assert_eq!(nft.list().unwrap(), vec![]);
    let rules = rule_count(&ns);
    assert_eq!(rules, 5, "{}", ns.sh(&["nft", "list", "ruleset"]));

    let bot = mac("02:5b:00:00:00:0b");
    let laptop = mac("02:5b:00:00:00:1a");
    nft.apply(&[
        Op::Limit {
            mac: laptop,
            ttl_secs: 600,
        },
        Op::Block {
            mac: bot,
            ttl_secs: 600,
        },
    ])
    .unwrap();
    let live = nft.list().unwrap();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live
        .iter()
        .any(|e| e.mac == bot && e.set == SetKind::Blocked && e.expires_secs.unwrap() > 590));
    assert!(live
        .iter()
        .any(|e| e.mac == laptop && e.set == SetKind::Limited));

    // Reinstall (agent restart, or a policy change with other relays): same rules once,
    // elements kept, relay set replaced.
    nft.install(&spec(&["198.51.100.0/24:465", "2001:db8::/32"]))
        .unwrap();
    assert_eq!(rule_count(&ns), rules);
    assert_eq!(nft.list().unwrap().len(), 2);
    let relays = ns.sh(&["nft", "list", "set", "inet", "smtpguard", "relays4"]);
    assert!(relays.contains("198.51.100.0/24 . 465"), "{relays}");
    assert!(!relays.contains("203.0.113.25"), "{relays}");

    // Replacing an element changes its timeout; removing absent elements is no error.
    nft.apply(&[Op::Block {
        mac: bot,
        ttl_secs: 2,
    }])
    .unwrap();
    nft.apply(&[
        Op::Unlimit { mac: laptop },
        Op::Unlimit { mac: laptop },
        Op::Unblock {
            mac: mac("02:5b:00:00:00:99"),
        },
    ])
    .unwrap();
    let live = nft.list().unwrap();
    assert_eq!(
        live,
        vec![LiveElement {
            set: SetKind::Blocked,
            mac: bot,
            expires_secs: live[0].expires_secs,
        }]
    );
    assert!(live[0].expires_secs.unwrap() <= 2, "{live:?}");

    // The kernel expires the block by itself (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nft.list().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "block did not expire");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A failed batch changes nothing and says why.
    let before = ns.sh(&["nft", "list", "table", "inet", "smtpguard"]);
    let failed_before = nft.stats().batches_failed;
    let err = nft
        .run_batch(
            "add element inet smtpguard blocked { 02:5b:00:00:00:0b timeout 60s }\n\
             add element inet smtpguard no_such_set { 02:5b:00:00:00:0b }\n",
        )
        .unwrap_err();
    match &err {
        EnforceError::Rejected { stderr, .. } => {
            assert!(stderr.contains("no_such_set"), "{stderr}")
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(nft.stats().batches_failed, failed_before + 1);
    assert_eq!(
        ns.sh(&["nft", "list", "table", "inet", "smtpguard"]),
        before
    );
    assert!(nft.list().unwrap().is_empty());

    // A table of another shape (an older agent's) is replaced on install.
    nft.uninstall().unwrap();
    ns.sh(&[
        "nft",
        "add table inet smtpguard; add set inet smtpguard blocked { type ipv4_addr; }",
    ]);
    nft.install(&spec(&[])).unwrap();
    assert_eq!(rule_count(&ns), rules);

    nft.uninstall().unwrap();
    let ruleset = ns.sh(&["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("smtpguard"), "{ruleset}");
    assert!(ruleset.contains("table inet fw4"), "{ruleset}");
    assert!(
        ruleset.contains("counter"),
        "fw4's rule was touched: {ruleset}"
    );
}

/// A listener in a namespace, killed on drop.
struct Listener(std::process::Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TCP connection from namespace `ns` to `addr` `port` opens within 2 s.
fn connects(ns: &Netns, addr: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &ns.0, "nc", "-z", "-w", "2", addr])
        .arg(port.to_string())
        .status()
        .unwrap()
        .success()
}

#[test]
fn rules_act_on_forwarded_traffic() {
    // client (bot MAC) ── router (the agent's table) ── server with listeners on 25, 587, 80
    let client = Netns::new("cl");
    let router = Netns::new("rt");
    let server = Netns::new("sv");
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&[
        "link",
        "add",
        "name",
        "eth0",
        "netns",
        &client.0,
        "address",
        "02:5b:00:00:00:0b",
        "type",
        "veth",
        "peer",
        "name",
        "lan0",
        "netns",
        &router.0,
    ]);
    ip(&[
        "link", "add", "name", "wan0", "netns", &router.0, "type", "veth", "peer", "name", "eth0",
        "netns", &server.0,
    ]);
    for (ns, cmds) in [
        (
            &client,
            vec![
                "ip link set lo up",
                "ip addr add 10.9.0.2/24 dev eth0",
                "ip link set eth0 up",
                "ip route add default via 10.9.0.1",
            ],
        ),
        (
            &router,
            vec![
                "ip addr add 10.9.0.1/24 dev lan0",
                "ip link set lan0 up",
                "ip addr add 10.9.1.1/24 dev wan0",
                "ip link set wan0 up",
            ],
        ),
        (
            &server,
            vec![
                "ip link set lo up",
                "ip addr add 10.9.1.2/24 dev eth0",
                "ip addr add 10.9.1.25/32 dev lo",
                "ip link set eth0 up",
                "ip route add default via 10.9.1.1",
            ],
        ),
    ] {
        for cmd in cmds {
            ns.sh(&cmd.split(' ').collect::<Vec<_>>());
        }
    }
    // Per-namespace, and without needing procps' sysctl.
    router.sh(&["sh", "-c", "echo 1 >/proc/sys/net/ipv4/ip_forward"]);
    let _listeners: Vec<Listener> = [25u16, 587, 80]
        .iter()
        .map(|port| {
            Listener(
                Command::new("ip")
                    .args(["netns", "exec", &server.0, "nc", "-lk", "0.0.0.0"])
                    .arg(port.to_string())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Bounded wait for the listeners.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(connects(&client, "10.9.1.2", 25)
        && connects(&client, "10.9.1.2", 587)
        && connects(&client, "10.9.1.2", 80))
    {
        assert!(Instant::now() < deadline, "listeners did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut nft = router.nft();
    nft.install(&TableSpec {
        mail_ports: vec![25, 465, 587, 2525],
        rate_per_minute: 2,
        relays: vec!["10.9.1.25:587".parse().unwrap()],
    })
    .unwrap();
    let bot = mac("02:5b:00:00:00:0b");
    assert!(connects(&client, "10.9.1.2", 25), "no element: mail flows");

    nft.apply(&[Op::Block {
        mac: bot,
        ttl_secs: 600,
    }])
    .unwrap();
    assert!(
        !connects(&client, "10.9.1.2", 25),
        "blocked: port 25 dropped"
    );
    assert!(
        !connects(&client, "10.9.1.2", 587),
        "blocked: port 587 dropped"
    );
    assert!(
        connects(&client, "10.9.1.2", 80),
        "blocked: web still works"
    );
    assert!(
        connects(&client, "10.9.1.25", 587),
        "blocked: the allowlisted relay still works"
    );

    nft.apply(&[
        Op::Unblock { mac: bot },
        Op::Limit {
            mac: bot,
            ttl_secs: 600,
        },
    ])
    .unwrap();
    // 2 per minute with a burst of 2: of six quick connections, the later ones are dropped.
    let opened = (0..6).filter(|_| connects(&client, "10.9.1.2", 25)).count();
    assert!((1..=3).contains(&opened), "{opened} of 6 opened");
    let check = router.sh(&["nft", "list", "chain", "inet", "smtpguard", "mail_check"]);
    let rl_line = check.lines().find(|l| l.contains("@rl")).unwrap();
    assert!(!rl_line.contains("packets 0 "), "{rl_line}");
    assert!(connects(&client, "10.9.1.2", 80), "limited: web unaffected");

    nft.apply(&[Op::Unlimit { mac: bot }]).unwrap();
    router.sh(&["nft", "flush", "set", "inet", "smtpguard", "rl"]);
    assert!(connects(&client, "10.9.1.2", 25), "released: mail flows");
}
