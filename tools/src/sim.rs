//! Household traffic simulator: a deterministic timeline of Ethernet frames as the
//! router's LAN side sees them — DHCP, DNS MX lookups and answers, TCP handshakes, SMTP
//! dialogues (cleartext, STARTTLS, implicit TLS) and unanswered SYNs — built with
//! `etherparse`'s `PacketBuilder`.
//!
//! Used by the scenario tests, the benchmarks, the big-capture generator and the demo.
//! Everything is a function of the seed: [`Rng`] is a small xorshift generator, so the same
//! calls give the same bytes on every platform.
//!
//! ```
//! use smtpguard_tools::sim::{Dialogue, Household};
//! let mut h = Household::new(7);
//! let laptop = h.device(5, Some("laptop"));
//! h.dhcp(1_000, &laptop);
//! let relay = "198.51.100.7".parse().unwrap();
//! h.smtp_session(2_000, &laptop, relay, 587, &Dialogue::mail_client("laptop.lan"));
//! let frames = h.into_frames();
//! assert!(frames.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
//! ```

use std::io::Write;
use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use smtpguard_protocol::MacAddr;

use crate::pcap_writer::PcapWriter;

/// A tiny deterministic PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (any seed, including 0).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A public-looking IPv4 address outside private and reserved ranges.
    pub fn public_ip(&mut self) -> Ipv4Addr {
        loop {
            let v = (self.next_u64() >> 32) as u32;
            let ip = Ipv4Addr::from(v);
            let o = ip.octets();
            if !(ip.is_private()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_unspecified()
                || ip.is_link_local()
                || o[0] == 0
                || o[0] >= 224
                || o[0] == 100)
            {
                return ip;
            }
        }
    }

    /// A machine-generated host name of the kind spam bots announce (`QZXKVBTR.club`).
    pub fn bot_name(&mut self) -> String {
        const CONSONANTS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
        const VOWELS: &[u8] = b"AEIOU";
        const TLDS: &[&str] = &["club", "top", "xyz", "info", "biz"];
        let mut s = String::new();
        for i in 0..8 {
            let set = if i == 2 { VOWELS } else { CONSONANTS };
            s.push(char::from(set[self.below(set.len() as u64) as usize]));
        }
        s.push('.');
        s.push_str(TLDS[self.below(TLDS.len() as u64) as usize]);
        s
    }

    /// A plausible lower-case word for names and addresses.
    pub fn word(&mut self) -> String {
        const SYLLABLES: &[&str] = &[
            "ma", "ri", "to", "ne", "la", "so", "ki", "de", "ro", "ban", "mel", "tor",
        ];
        let n = 2 + self.below(2);
        (0..n)
            .map(|_| SYLLABLES[self.below(SYLLABLES.len() as u64) as usize])
            .collect()
    }
}

/// One frame on the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Capture time, Unix ms.
    pub ts_ms: u64,
    /// The Ethernet frame.
    pub data: Vec<u8>,
}

/// A LAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its MAC (locally administered: `02:11:22:33:44:NN`).
    pub mac: MacAddr,
    /// Its LAN address (`192.168.1.(10+NN)`).
    pub ip: Ipv4Addr,
    /// Its DHCP host name.
    pub hostname: Option<String>,
}

/// What a client says in one SMTP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialogue {
    /// EHLO argument.
    pub ehlo: String,
    /// Switch to TLS right after EHLO (nothing after that is visible).
    pub starttls: bool,
    /// Authenticate (AUTH PLAIN) before sending.
    pub auth: bool,
    /// MAIL FROM address.
    pub mail_from: String,
    /// Recipients per message.
    pub rcpts: u32,
    /// Messages in the session.
    pub messages: u32,
    /// A server reply that refuses the first recipient (e.g. a blocklist rejection).
    pub reject: Option<String>,
    /// The server refuses the AUTH (535) and the client gives up (QUIT): nothing is sent.
    pub auth_refused: bool,
    /// The user name AUTH PLAIN sends (`None`: always the same one, `user`).
    pub auth_user: Option<String>,
}

impl Dialogue {
    /// An ordinary mail client: its own name, AUTH, one message to one recipient.
    pub fn mail_client(ehlo: &str) -> Self {
        Dialogue {
            ehlo: ehlo.to_string(),
            starttls: false,
            auth: true,
            mail_from: "someone@example.org".into(),
            rcpts: 1,
            messages: 1,
            reject: None,
            auth_refused: false,
            auth_user: None,
        }
    }

    /// A spam bot delivering straight to an MX: random EHLO, unrelated sender domain,
    /// several recipients.
    pub fn bot(rng: &mut Rng) -> Self {
        Dialogue {
            ehlo: rng.bot_name(),
            starttls: false,
            auth: false,
            mail_from: format!("{}@{}.com", rng.word(), rng.word()),
            rcpts: 3 + rng.below(5) as u32,
            messages: 1,
            reject: None,
            auth_refused: false,
            auth_user: None,
        }
    }

    /// A careful sender delivering straight to an MX as itself: EHLO `mail.DOMAIN`, MAIL
    /// FROM in `DOMAIN`, one recipient (a self-hosted mail server, or a bot that imitates
    /// one).
    pub fn plausible_server(domain: &str, user: &str) -> Self {
        Dialogue {
            ehlo: format!("mail.{domain}"),
            starttls: false,
            auth: false,
            mail_from: format!("{user}@{domain}"),
            rcpts: 1,
            messages: 1,
            reject: None,
            auth_refused: false,
            auth_user: None,
        }
    }
}

const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

/// A household: the router plus devices, and the frames they exchange.
#[derive(Debug, Clone)]
pub struct Household {
    rng: Rng,
    frames: Vec<(u64, u64, Vec<u8>)>,
    order: u64,
    next_port: u16,
}

/// Endpoint of one TCP connection.
#[derive(Clone, Copy)]
struct End {
    mac: [u8; 6],
    ip: Ipv4Addr,
    port: u16,
}

impl Household {
    /// An empty timeline; `seed` fixes every random choice.
    pub fn new(seed: u64) -> Self {
        Household {
            rng: Rng::new(seed),
            frames: Vec::new(),
            order: 0,
            next_port: 40_000,
        }
    }

    /// The router's LAN MAC.
    pub fn router_mac() -> MacAddr {
        MacAddr(ROUTER_MAC)
    }

    /// The router's LAN address (gateway and DNS server).
    pub fn router_ip() -> Ipv4Addr {
        ROUTER_IP
    }

    /// The generator, for callers that want more random choices from the same seed.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Device number `n`: `02:11:22:33:44:nn` at `192.168.1.(10+n)`.
    pub fn device(&mut self, n: u8, hostname: Option<&str>) -> Host {
        Host {
            mac: MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, n]),
            ip: Ipv4Addr::new(192, 168, 1, 10u8.wrapping_add(n)),
            hostname: hostname.map(str::to_string),
        }
    }

    /// A device with an arbitrary MAC (floods); address from the low MAC bytes.
    pub fn device_with_mac(&mut self, mac: [u8; 6]) -> Host {
        Host {
            mac: MacAddr(mac),
            ip: Ipv4Addr::new(10, mac[3], mac[4], mac[5]),
            hostname: None,
        }
    }

    fn push(&mut self, ts_ms: u64, data: Vec<u8>) {
        self.frames.push((ts_ms, self.order, data));
        self.order += 1;
    }

    fn port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= 60_999 { 40_000 } else { p + 1 };
        p
    }

    fn udp(&mut self, ts: u64, src: End, dst: End, payload: &[u8]) {
        let b = PacketBuilder::ethernet2(src.mac, dst.mac)
            .ipv4(src.ip.octets(), dst.ip.octets(), 64)
            .udp(src.port, dst.port);
        let mut buf = Vec::with_capacity(b.size(payload.len()));
        if b.write(&mut buf, payload).is_ok() {
            self.push(ts, buf);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        ts: u64,
        src: End,
        dst: End,
        seq: u32,
        ack: Option<u32>,
        flags: u8,
        payload: &[u8],
    ) {
        let mut b = PacketBuilder::ethernet2(src.mac, dst.mac)
            .ipv4(src.ip.octets(), dst.ip.octets(), 64)
            .tcp(src.port, dst.port, seq, 64_240);
        if flags & SYN != 0 {
            b = b.syn();
        }
        if let Some(a) = ack {
            b = b.ack(a);
        }
        if !payload.is_empty() {
            b = b.psh();
        }
        if flags & FIN != 0 {
            b = b.fin();
        }
        let mut buf = Vec::with_capacity(b.size(payload.len()));
        if b.write(&mut buf, payload).is_ok() {
            self.push(ts, buf);
        }
    }

    /// A DHCP request carrying the host name, and the router's ACK.
    pub fn dhcp(&mut self, at_ms: u64, host: &Host) {
        self.dhcp_with_class(at_ms, host, None);
    }

    /// A DHCP request carrying the host name and, if given, a vendor class (option 60),
    /// and the router's ACK.
    pub fn dhcp_with_class(&mut self, at_ms: u64, host: &Host, vendor_class: Option<&str>) {
        let mut msg = vec![0u8; 240];
        msg[0] = 1;
        msg[1] = 1;
        msg[2] = 6;
        let xid = self.rng.next_u64() as u32;
        msg[4..8].copy_from_slice(&xid.to_be_bytes());
        msg[28..34].copy_from_slice(&host.mac.0);
        msg[236..240].copy_from_slice(&[99, 130, 83, 99]);
        msg.extend_from_slice(&[53, 1, 3, 50, 4]);
        msg.extend_from_slice(&host.ip.octets());
        if let Some(name) = &host.hostname {
            let n = name.len().min(63);
            msg.push(12);
            msg.push(n as u8);
            msg.extend_from_slice(&name.as_bytes()[..n]);
        }
        if let Some(vc) = vendor_class {
            let n = vc.len().min(255);
            msg.push(60);
            msg.push(n as u8);
            msg.extend_from_slice(&vc.as_bytes()[..n]);
        }
        msg.push(255);
        let client = End {
            mac: host.mac.0,
            ip: Ipv4Addr::UNSPECIFIED,
            port: 68,
        };
        let bcast = End {
            mac: [0xff; 6],
            ip: Ipv4Addr::BROADCAST,
            port: 67,
        };
        self.udp(at_ms, client, bcast, &msg);
        let mut ack = msg[..240].to_vec();
        ack[0] = 2;
        ack[16..20].copy_from_slice(&host.ip.octets());
        ack.extend_from_slice(&[53, 1, 5, 54, 4]);
        ack.extend_from_slice(&ROUTER_IP.octets());
        ack.push(255);
        let server = End {
            mac: ROUTER_MAC,
            ip: ROUTER_IP,
            port: 67,
        };
        let to = End {
            mac: host.mac.0,
            ip: host.ip,
            port: 68,
        };
        self.udp(at_ms + 2, server, to, &ack);
    }

    /// An MX query for `domain` and the router's answer naming `mx_host` with address
    /// `mx_ip` in the additional section.
    pub fn mx_lookup(
        &mut self,
        at_ms: u64,
        host: &Host,
        domain: &str,
        mx_host: &str,
        mx_ip: Ipv4Addr,
    ) {
        let id = self.rng.next_u64() as u16;
        let qname = encode_name(domain);
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(&qname);
        q.extend_from_slice(&[0, 15, 0, 1]);
        let sport = self.port();
        let client = End {
            mac: host.mac.0,
            ip: host.ip,
            port: sport,
        };
        let dns = End {
            mac: ROUTER_MAC,
            ip: ROUTER_IP,
            port: 53,
        };
        self.udp(at_ms, client, dns, &q);
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[6..8].copy_from_slice(&1u16.to_be_bytes());
        r[10..12].copy_from_slice(&1u16.to_be_bytes());
        let exchange = encode_name(mx_host);
        r.extend_from_slice(&[0xc0, 0x0c, 0, 15, 0, 1, 0, 0, 0x0e, 0x10]);
        r.extend_from_slice(&((exchange.len() + 2) as u16).to_be_bytes());
        r.extend_from_slice(&[0, 10]);
        let exchange_at = r.len() as u16;
        r.extend_from_slice(&exchange);
        r.extend_from_slice(&(0xc000 | exchange_at).to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
        r.extend_from_slice(&mx_ip.octets());
        self.udp(at_ms + 15, dns, client, &r);
    }

    /// A SYN to `server:port` that is never answered (retransmitted twice).
    pub fn syn_unanswered(&mut self, at_ms: u64, host: &Host, server: Ipv4Addr, port: u16) {
        let c = End {
            mac: host.mac.0,
            ip: host.ip,
            port: self.port(),
        };
        let s = End {
            mac: ROUTER_MAC,
            ip: server,
            port,
        };
        let isn = self.rng.next_u64() as u32;
        for (i, delay) in [0u64, 1000, 3000].into_iter().enumerate() {
            let _ = i;
            self.tcp(at_ms + delay, c, s, isn, None, SYN, &[]);
        }
    }

    /// A whole SMTP session from `host` to `server:port`; returns when it ended (Unix ms).
    /// Port 465 (implicit TLS) carries opaque bytes only.
    pub fn smtp_session(
        &mut self,
        at_ms: u64,
        host: &Host,
        server: Ipv4Addr,
        port: u16,
        d: &Dialogue,
    ) -> u64 {
        let c = End {
            mac: host.mac.0,
            ip: host.ip,
            port: self.port(),
        };
        let s = End {
            mac: ROUTER_MAC,
            ip: server,
            port,
        };
        let mut t = at_ms;
        let mut cseq = self.rng.next_u64() as u32;
        let mut sseq = self.rng.next_u64() as u32;
        self.tcp(t, c, s, cseq, None, SYN, &[]);
        cseq = cseq.wrapping_add(1);
        t += 20;
        self.tcp(t, s, c, sseq, Some(cseq), SYN, &[]);
        sseq = sseq.wrapping_add(1);
        t += 1;
        self.tcp(t, c, s, cseq, Some(sseq), 0, &[]);
        let mut conv = Conversation {
            h: self,
            c,
            s,
            cseq,
            sseq,
            t,
        };
        if port == 465 {
            conv.client(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
            conv.server(&[0x16, 0x03, 0x03, 0x00, 0x5a, 0x02, 0x00, 0x00, 0x56]);
            for _ in 0..d.messages.max(1) {
                conv.client(&[0x17, 0x03, 0x03, 0x04, 0x00, 0xde, 0xad, 0xbe, 0xef]);
                conv.server(&[0x17, 0x03, 0x03, 0x00, 0x20, 0x01, 0x02]);
            }
            return conv.close();
        }
        conv.server(b"220 mx.example.net ESMTP ready\r\n");
        conv.client(format!("EHLO {}\r\n", d.ehlo).as_bytes());
        conv.server(
            b"250-mx.example.net\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
        );
        if d.starttls {
            conv.client(b"STARTTLS\r\n");
            conv.server(b"220 2.0.0 Ready to start TLS\r\n");
            conv.client(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]);
            conv.server(&[0x16, 0x03, 0x03, 0x00, 0x5a, 0x02]);
            for _ in 0..d.messages {
                conv.client(&[0x17, 0x03, 0x03, 0x04, 0x00, 0x41, 0x42]);
                conv.server(&[0x17, 0x03, 0x03, 0x00, 0x20]);
            }
            return conv.close();
        }
        if d.auth {
            match &d.auth_user {
                Some(user) => {
                    let plain = base64(format!("\0{user}\0secret").as_bytes());
                    conv.client(format!("AUTH PLAIN {plain}\r\n").as_bytes());
                }
                None => conv.client(b"AUTH PLAIN AHVzZXIAcGFzc3dvcmQ=\r\n"),
            }
            if d.auth_refused {
                conv.server(b"535 5.7.8 Authentication credentials invalid\r\n");
                conv.client(b"QUIT\r\n");
                conv.server(b"221 2.0.0 Bye\r\n");
                return conv.close();
            }
            conv.server(b"235 2.7.0 Authentication successful\r\n");
        }
        for m in 0..d.messages {
            conv.client(format!("MAIL FROM:<{}>\r\n", d.mail_from).as_bytes());
            conv.server(b"250 2.1.0 Ok\r\n");
            for r in 0..d.rcpts {
                conv.client(format!("RCPT TO:<user{m}x{r}@example.com>\r\n").as_bytes());
                match (&d.reject, r) {
                    (Some(reject), 0) => conv.server(format!("{reject}\r\n").as_bytes()),
                    _ => conv.server(b"250 2.1.5 Ok\r\n"),
                }
            }
            conv.client(b"DATA\r\n");
            conv.server(b"354 End data with <CR><LF>.<CR><LF>\r\n");
            conv.client(
                format!(
                    "From: <{}>\r\nSubject: hello {m}\r\n\r\nHello.\r\n.\r\n",
                    d.mail_from
                )
                .as_bytes(),
            );
            conv.server(b"250 2.0.0 Ok: queued\r\n");
        }
        conv.client(b"QUIT\r\n");
        conv.server(b"221 2.0.0 Bye\r\n");
        conv.close()
    }

    /// The frames with times before `ts_ms`, in time order, removed from the timeline (for
    /// streaming generators that add events in start-time order).
    pub fn take_before(&mut self, ts_ms: u64) -> Vec<Frame> {
        self.frames.sort_by_key(|f| (f.0, f.1));
        let split = self.frames.partition_point(|f| f.0 < ts_ms);
        let rest = self.frames.split_off(split);
        let done = std::mem::replace(&mut self.frames, rest);
        done.into_iter()
            .map(|(ts_ms, _, data)| Frame { ts_ms, data })
            .collect()
    }

    /// Every frame, in time order.
    pub fn into_frames(mut self) -> Vec<Frame> {
        self.take_before(u64::MAX)
    }
}

const SYN: u8 = 1;
const FIN: u8 = 2;

struct Conversation<'a> {
    h: &'a mut Household,
    c: End,
    s: End,
    cseq: u32,
    sseq: u32,
    t: u64,
}

impl Conversation<'_> {
    fn client(&mut self, data: &[u8]) {
        self.t += 5;
        self.h
            .tcp(self.t, self.c, self.s, self.cseq, Some(self.sseq), 0, data);
        self.cseq = self.cseq.wrapping_add(data.len() as u32);
    }

    fn server(&mut self, data: &[u8]) {
        self.t += 30;
        self.h
            .tcp(self.t, self.s, self.c, self.sseq, Some(self.cseq), 0, data);
        self.sseq = self.sseq.wrapping_add(data.len() as u32);
    }

    fn close(self) -> u64 {
        let t = self.t + 5;
        self.h
            .tcp(t, self.c, self.s, self.cseq, Some(self.sseq), FIN, &[]);
        self.h.tcp(
            t + 20,
            self.s,
            self.c,
            self.sseq,
            Some(self.cseq.wrapping_add(1)),
            FIN,
            &[],
        );
        self.h.tcp(
            t + 21,
            self.c,
            self.s,
            self.cseq.wrapping_add(1),
            Some(self.sseq.wrapping_add(1)),
            0,
            &[],
        );
        t + 21
    }
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// DNS wire form of a dotted name.
fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    out
}

/// Writes frames as a pcap file.
///
/// # Errors
/// Any error of the writer.
pub fn write_pcap<W: Write>(out: W, frames: &[Frame]) -> std::io::Result<W> {
    let mut w = PcapWriter::new(out)?;
    for f in frames {
        w.write_frame(f.ts_ms * 1000, &f.data)?;
    }
    w.finish()
}

/// Base time of generated timelines: 2024-01-01 00:00:00 UTC.
pub const EPOCH_MS: u64 = 1_704_067_200_000;

/// A mixed household for benchmarks and demos: `clean` devices sending a few messages an
/// hour through the provider's relay (`198.51.100.7`, port 587, STARTTLS) with MX-less DNS
/// noise, and `bots` devices bursting direct-to-MX spam (MX lookup, then a session with a
/// random EHLO) about `bot_rate_per_hour` times an hour, for `hours` hours.
pub fn mixed_household(
    seed: u64,
    clean: u8,
    bots: u8,
    bot_rate_per_hour: u32,
    hours: u32,
) -> Vec<Frame> {
    let mut h = Household::new(seed);
    let relay = Ipv4Addr::new(198, 51, 100, 7);
    let end = EPOCH_MS + u64::from(hours) * 3_600_000;
    let hosts: Vec<Host> = (0..clean.saturating_add(bots))
        .map(|i| {
            let name = format!("device-{i}");
            h.device(i + 1, Some(&name))
        })
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        h.dhcp(EPOCH_MS + i as u64 * 100, host);
    }
    for (i, host) in hosts.iter().enumerate() {
        if i < usize::from(clean) {
            let mut t = EPOCH_MS + 60_000 + h.rng().below(600_000);
            while t < end {
                let d = Dialogue {
                    starttls: true,
                    ..Dialogue::mail_client(&format!("device-{i}.lan"))
                };
                h.smtp_session(t, host, relay, 587, &d);
                t += 900_000 + h.rng().below(1_800_000);
            }
        } else {
            let gap = 3_600_000 / u64::from(bot_rate_per_hour.max(1));
            let mut t = EPOCH_MS + 120_000;
            while t < end {
                let mx_ip = h.rng().public_ip();
                let domain = format!("{}.com", h.rng().word());
                let mx_host = format!("mx.{domain}");
                h.mx_lookup(t, host, &domain, &mx_host, mx_ip);
                let d = Dialogue::bot(h.rng());
                h.smtp_session(t + 40, host, mx_ip, 25, &d);
                t += gap / 2 + h.rng().below(gap);
            }
        }
    }
    h.into_frames()
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_agent::packet::{decode, Transport};

    #[test]
    fn deterministic_for_a_seed() {
        let a = mixed_household(3, 2, 1, 100, 1);
        let b = mixed_household(3, 2, 1, 100, 1);
        assert_eq!(a, b);
        assert_ne!(a, mixed_household(4, 2, 1, 100, 1));
    }

    #[test]
    fn frames_decode_and_are_ordered() {
        let frames = mixed_household(1, 2, 1, 60, 1);
        assert!(frames.len() > 100);
        assert!(frames.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        let mut smtp = 0;
        for f in &frames {
            let p = decode(&f.data).unwrap().unwrap();
            if let Transport::Tcp(t) = p.transport {
                if t.dst_port == 25 && t.syn {
                    smtp += 1;
                }
            }
        }
        assert!(smtp > 30, "{smtp}");
    }

    #[test]
    fn pcap_round_trip() {
        let frames = mixed_household(2, 1, 0, 1, 1);
        let bytes = write_pcap(Vec::new(), &frames).unwrap();
        let mut r = smtpguard_agent::pcap::CaptureReader::new(&bytes[..]).unwrap();
        let mut n = 0;
        while let Some(rec) = r.next_packet().unwrap() {
            assert_eq!(rec.ts_ms(), frames[n].ts_ms);
            assert_eq!(rec.data, &frames[n].data[..]);
            n += 1;
        }
        assert_eq!(n, frames.len());
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn bot_names_look_random_to_the_engine() {
        let mut rng = Rng::new(9);
        for _ in 0..50 {
            let name = rng.bot_name();
            assert!(
                smtpguard_agent::engine::names::looks_random(&name),
                "{name}"
            );
        }
    }
}
