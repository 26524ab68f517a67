//! The seeded data set behind the web tests, the screenshots and `smtpguard-demo --seeded`
//! (the demo itself, with live simulated routers, is in the tools crate).
//!
//! [`seed`] writes a small fleet through the same path the ingest uses
//! ([`Store::write_batch`] with protocol bodies): four households, two devices convicted by
//! the same spam campaign (shared EHLO name), one laptop relaying through the ISP's
//! submission server with stolen credentials, clean phones and TVs, one device whose DHCP
//! host name is an HTML injection attempt, SMTP connection logs with NAT ports and public
//! addresses for abuse-report mapping.

use std::net::IpAddr;
use std::path::Path;

use smtpguard_protocol::{
    Action, Alert, Body, ConnRecord, DeviceCounters, DeviceReport, Envelope, MacAddr, Observed,
    PolicyAck, PolicyScope, State, Status, Telemetry, Verdict,
};

use crate::households;
use crate::store::{Received, Store, StoreError};

/// A seeding step failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The product tables failed.
    #[error("web database: {0}")]
    Web(String),
    /// Accounts failed.
    #[error(transparent)]
    Household(#[from] households::HouseholdError),
}

/// One seeded household.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededHousehold {
    /// Display name.
    pub name: String,
    /// Its CPE.
    pub cpe_id: String,
    /// Its public address.
    pub public_ip: IpAddr,
    /// Login token.
    pub token: String,
    /// The short sign-in code printed on the household's letter.
    pub letter_code: String,
    /// The flagged device, if any: MAC and host name.
    pub flagged: Option<(MacAddr, String)>,
}

/// What [`seed`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Households in creation order: Müller (campaign bot), Schmidt (stolen credentials),
    /// Yilmaz (campaign bot + hostile host name), Novak (all clean).
    pub households: Vec<SeededHousehold>,
    /// When the campaign bot in the first household sent the connection an abuse report
    /// would cite (Unix ms), its NAT'd source port and the destination.
    pub abuse_example: (u64, u16, IpAddr),
}

fn mac(last: u8, hh: u8) -> MacAddr {
    MacAddr([0x02, 0x5e, 0x10, hh, 0x00, last])
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

struct Dev {
    mac: MacAddr,
    host: Option<&'static str>,
    vendor: Option<&'static str>,
    lan_ip: &'static str,
    verdict: Verdict,
    score: f32,
    action: Action,
    until_ms: Option<u64>,
    counters: DeviceCounters,
    evidence: Vec<String>,
}

impl Dev {
    fn report(&self) -> DeviceReport {
        DeviceReport {
            mac: self.mac,
            ips: vec![ip(self.lan_ip)],
            hostname: self.host.map(str::to_string),
            vendor: self.vendor.map(str::to_string),
            verdict: self.verdict,
            score: self.score,
            action: self.action,
            action_until_ms: self.until_ms,
            counters: self.counters.clone(),
            evidence: self.evidence.clone(),
        }
    }
}

fn clean(mac: MacAddr, host: &'static str, vendor: &'static str, lan_ip: &'static str) -> Dev {
    Dev {
        mac,
        host: Some(host),
        vendor: Some(vendor),
        lan_ip,
        verdict: Verdict::Clean,
        score: 0.02,
        action: Action::Monitor,
        until_ms: None,
        counters: DeviceCounters::default(),
        evidence: Vec::new(),
    }
}

struct Writer<'a> {
    store: &'a mut Store,
    cpe: String,
    seq: u64,
    batch: Vec<Received>,
}

impl Writer<'_> {
    fn push(&mut self, body: Body, at_ms: u64) {
        self.seq += 1;
        self.batch.push(Received {
            envelope: Envelope {
                version: smtpguard_protocol::PROTOCOL_VERSION,
                cpe_id: self.cpe.clone(),
                seq: self.seq,
                sent_at_ms: at_ms,
                body,
            },
            wire: Vec::new(),
            received_at_ms: at_ms,
        });
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut self.batch);
        self.store.write_batch(&batch, &[])?;
        Ok(())
    }
}

const CAMPAIGN_EHLO: &str = "COZOXORY.club";

/// Seeds the database at `path` (created if needed) with the demo fleet, relative to
/// `now_ms`. Returns the login tokens and the facts tests check against.
///
/// # Errors
/// [`DemoError`] when the database cannot be written.
pub fn seed(path: &Path, now_ms: u64) -> Result<Seeded, DemoError> {
    let mut store = Store::open(path)?;
    let db = store.db().clone();
    let window_secs = 600u32;
    let t0 = now_ms.saturating_sub(45 * 60 * 1000);
    let ttl = 3_600_000u64;
    let mut out = Vec::new();
    let mut abuse_example = (0, 0, ip("0.0.0.0"));
    let mx: Vec<IpAddr> = (1..=40).map(|i| IpAddr::from([198, 51, 100, i])).collect();

    let households: [(&str, &str, &str, u8); 4] = [
        ("The Müller family", "cpe-berlin-0042", "203.0.113.7", 1),
        ("Schmidt household", "cpe-hamburg-0107", "203.0.113.58", 2),
        ("Yilmaz household", "cpe-koeln-0311", "198.18.4.21", 3),
        ("Novak household", "cpe-wien-0815", "198.18.9.99", 4),
    ];
    for (name, cpe, public, hh) in households {
        let key = smtpguard_protocol::keys::generate();
        store.upsert_cpe(
            cpe,
            &smtpguard_protocol::keys::public_key_text(&key.verifying_key()),
            Some(name),
            t0,
        )?;
        let mut devices = vec![
            clean(mac(0x10, hh), "Pixel-8", "Google", "192.168.1.23"),
            clean(
                mac(0x11, hh),
                "LivingRoom-TV",
                "Samsung Electronics",
                "192.168.1.40",
            ),
        ];
        let mut flagged = None;
        let mut alerts: Vec<(u64, Alert)> = Vec::new();
        let mut conns: Vec<ConnRecord> = Vec::new();
        let bot_at = t0 + 12 * 60 * 1000 + u64::from(hh) * 60_000;
        match hh {
            1 | 3 => {
                let host = if hh == 1 {
                    "DESKTOP-7GQ2K"
                } else {
                    "yilmaz-pc"
                };
                let servers = if hh == 1 { 287 } else { 164 };
                let bot = Dev {
                    mac: mac(0x66, hh),
                    host: Some(host),
                    vendor: Some("Micro-Star International"),
                    lan_ip: "192.168.1.14",
                    verdict: Verdict::Infected,
                    score: 0.97,
                    action: Action::Block,
                    until_ms: Some(bot_at + ttl),
                    counters: DeviceCounters {
                        smtp_connections: servers + 25,
                        distinct_mail_servers: servers,
                        distinct_networks: servers * 2 / 3,
                        mx_lookups: servers + 40,
                        mx_followed: servers,
                        rcpt_commands: servers * 9,
                        remote_rejections: 14,
                        messages: servers,
                        ..DeviceCounters::default()
                    },
                    evidence: vec![
                        format!("{} connections to {servers} distinct mail servers on port 25 in 10 minutes", servers + 25),
                        format!("EHLO {CAMPAIGN_EHLO} (a random name, not this device's)"),
                        "14 remote rejections citing Spamhaus and complaints".to_string(),
                        format!("{} MX lookups followed by connections to the answers", servers),
                    ],
                };
                let mut observed = Observed {
                    ehlo_names: vec![CAMPAIGN_EHLO.to_string()],
                    mail_from_domains: vec!["shop-deals.example".to_string()],
                    mail_servers: mx
                        .iter()
                        .copied()
                        .take(if hh == 1 { 30 } else { 40 })
                        .skip(if hh == 1 { 0 } else { 10 })
                        .collect(),
                };
                observed.mail_servers.sort();
                alerts.push((
                    bot_at - 60_000,
                    Alert {
                        device: DeviceReport {
                            verdict: Verdict::Suspicious,
                            score: 0.55,
                            action: Action::RateLimit,
                            action_until_ms: Some(bot_at - 60_000 + ttl),
                            evidence: vec![format!("41 connections to 38 distinct mail servers on port 25 in 2 minutes")],
                            ..bot.report()
                        },
                        previous: Verdict::Clean,
                        at_ms: bot_at - 60_000,
                        observed: observed.clone(),
                    },
                ));
                alerts.push((
                    bot_at,
                    Alert {
                        device: bot.report(),
                        previous: Verdict::Suspicious,
                        at_ms: bot_at,
                        observed,
                    },
                ));
                for i in 0..60u16 {
                    conns.push(ConnRecord {
                        mac: bot.mac,
                        at_ms: bot_at - 90_000 + u64::from(i) * 1500,
                        src_port: 49_200 + i,
                        dst: mx[usize::from(i) % mx.len()],
                        dst_port: 25,
                        nat_port: Some(40_000 + i),
                        nat_ip: None,
                    });
                }
                if hh == 1 {
                    abuse_example = (bot_at - 90_000 + 7 * 1500, 40_007, mx[7]);
                }
                flagged = Some((bot.mac, host.to_string()));
                devices.insert(0, bot);
                if hh == 3 {
                    devices.push(clean(
                        mac(0x12, hh),
                        "<script>alert('owned')</script>",
                        "Espressif",
                        "192.168.1.77",
                    ));
                }
            }
            2 => {
                let laptop = Dev {
                    mac: mac(0x21, hh),
                    host: Some("ANNAS-LAPTOP"),
                    vendor: Some("Intel Corporate"),
                    lan_ip: "192.168.1.31",
                    verdict: Verdict::Infected,
                    score: 0.88,
                    action: Action::RateLimit,
                    until_ms: Some(bot_at + ttl),
                    counters: DeviceCounters {
                        submission_connections: 96,
                        messages: 412,
                        ..DeviceCounters::default()
                    },
                    evidence: vec![
                        "412 messages submitted through 198.51.100.7:587 in 10 minutes; this device's usual rate is 3 per hour".to_string(),
                        "EHLO [192.168.1.31] (an IP literal) with AUTH LOGIN".to_string(),
                    ],
                };
                alerts.push((
                    bot_at,
                    Alert {
                        device: laptop.report(),
                        previous: Verdict::Clean,
                        at_ms: bot_at,
                        observed: Observed {
                            ehlo_names: vec!["[192.168.1.31]".to_string()],
                            mail_from_domains: vec!["mail.example".to_string()],
                            mail_servers: vec![ip("198.51.100.7")],
                        },
                    },
                ));
                for i in 0..30u16 {
                    conns.push(ConnRecord {
                        mac: laptop.mac,
                        at_ms: bot_at - 60_000 + u64::from(i) * 2000,
                        src_port: 51_000 + i,
                        dst: ip("198.51.100.7"),
                        dst_port: 587,
                        nat_port: Some(33_000 + i),
                        nat_ip: None,
                    });
                }
                flagged = Some((laptop.mac, "ANNAS-LAPTOP".to_string()));
                devices.insert(0, laptop);
            }
            _ => {
                devices.push(clean(mac(0x13, hh), "novak-mac", "Apple", "192.168.1.50"));
            }
        }
        let mut w = Writer {
            store: &mut store,
            cpe: cpe.to_string(),
            seq: 0,
            batch: Vec::new(),
        };
        w.push(
            Body::State(State {
                status: if hh == 4 {
                    Status::Offline
                } else {
                    Status::Online
                },
                agent_version: "0.1.0".into(),
                fleet_policy_version: None,
                cpe_policy_version: None,
                public_ip: Some(ip(public)),
            }),
            t0,
        );
        // Four telemetry windows; flagged devices clean in the first ones, then as reported.
        for k in 0..4u64 {
            let start = t0 + k * u64::from(window_secs) * 1000;
            let end = start + u64::from(window_secs) * 1000;
            for (at, a) in &alerts {
                if *at >= start && *at < end {
                    w.push(Body::Alert(a.clone()), *at);
                }
            }
            let reports: Vec<DeviceReport> = devices
                .iter()
                .map(|d| {
                    let converted = alerts
                        .iter()
                        .any(|(at, a)| a.device.mac == d.mac && *at < end);
                    if d.verdict == Verdict::Clean || converted {
                        d.report()
                    } else {
                        clean(
                            d.mac,
                            d.host.unwrap_or(""),
                            d.vendor.unwrap_or(""),
                            d.lan_ip,
                        )
                        .report()
                    }
                })
                .collect();
            let connections: Vec<ConnRecord> = conns
                .iter()
                .filter(|c| c.at_ms >= start && c.at_ms < end)
                .cloned()
                .collect();
            w.push(
                Body::Telemetry(Telemetry {
                    window_start_ms: start,
                    window_secs,
                    public_ip: Some(ip(public)),
                    stats: Default::default(),
                    devices: reports,
                    connections,
                }),
                end,
            );
        }
        if hh != 4 {
            w.push(
                Body::PolicyAck(PolicyAck {
                    scope: PolicyScope::Fleet,
                    policy_version: 1,
                    outcome: if hh == 3 {
                        smtpguard_protocol::AckOutcome::Refused {
                            reason: "policy signature does not verify against the installed key"
                                .into(),
                        }
                    } else {
                        smtpguard_protocol::AckOutcome::Applied
                    },
                }),
                t0 + 1000,
            );
        }
        w.flush()?;
        let (id, token) = households::create(&*db, name, &[cpe], t0)?;
        let letter_code = households::add_letter_code(&*db, id, t0)?;
        out.push(SeededHousehold {
            name: name.to_string(),
            cpe_id: cpe.to_string(),
            public_ip: ip(public),
            token,
            letter_code,
            flagged,
        });
    }
    // A fleet policy v1 as the NOC would have published it.
    let policy = smtpguard_protocol::Policy {
        policy_version: 1,
        mode: smtpguard_protocol::Mode::Enforce,
        ..Default::default()
    };
    store.insert_policy(&crate::store::StoredPolicy {
        version: 1,
        scope: PolicyScope::Fleet,
        cpe_id: None,
        policy_json: serde_json::to_string(&policy).map_err(StoreError::from)?,
        wire: Vec::new(),
        created_ms: t0,
    })?;
    crate::audit::record(
        &*db,
        t0,
        "demo",
        "policy_publish",
        "fleet",
        "ok",
        "version 1: the demo's start-up policy (mode enforce)",
    )
    .map_err(StoreError::from)?;
    Ok(Seeded {
        households: out,
        abuse_example,
    })
}
