//! SMTP dialogue, as the router sees it: the client's commands and the server's replies of
//! one cleartext session, parsed line by line into [`Tell`]s and counts.
//!
//! - [`Stream`] turns one direction's TCP segments into lines: it follows sequence numbers
//!   (retransmissions are skipped, a gap drops the partial line and resynchronises at the
//!   next line end), splits at `\n`, and keeps at most [`LINE_MAX`] bytes of a line in a
//!   fixed buffer (longer lines are delivered cut). Nothing is allocated.
//! - [`Smtp`] is the per-session state machine: greeting, EHLO capabilities, a fixed queue
//!   of commands awaiting replies (so each reply is matched to its command even when the
//!   client pipelines), AUTH exchanges, DATA and BDAT bodies (only the header block of a
//!   message is looked at, and only for `Received: ... helo=`), and STARTTLS, after which
//!   nothing more is parsed.

use std::net::IpAddr;

use super::names;

/// Longest line kept; SMTP limits command lines to 512 bytes.
pub const LINE_MAX: usize = 512;
/// Commands awaiting replies that are tracked; beyond this replies are no longer matched.
const PENDING_MAX: usize = 32;
/// Header lines of each message scanned for `Received:`.
const HEADER_LINES_MAX: u16 = 64;

/// A dialogue anomaly that spam bots show and mail clients do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tell {
    /// EHLO with an address literal that is not the device's own address (bots announce
    /// the public address they looked up).
    EhloForeignIp,
    /// EHLO with a machine-generated name.
    EhloRandom,
    /// EHLO with some access line's reverse-DNS name.
    EhloRdnsLike,
    /// MAIL FROM domain unrelated to the EHLO domain, unauthenticated on port 25.
    MailFromMismatch,
    /// Many RCPT TO in one session.
    ManyRcpts,
    /// Commands sent before the server's greeting.
    BeforeGreeting,
    /// Commands pipelined to a server that did not offer PIPELINING.
    UnadvertisedPipelining,
    /// Commands out of sequence (the server answered 503).
    OutOfSequence,
    /// A message arriving with a `Received:` header whose helo is machine-generated.
    ForgedReceived,
}

impl Tell {
    /// Every tell, in evidence order.
    pub const ALL: [Tell; 9] = [
        Tell::EhloForeignIp,
        Tell::EhloRandom,
        Tell::ManyRcpts,
        Tell::BeforeGreeting,
        Tell::UnadvertisedPipelining,
        Tell::ForgedReceived,
        Tell::EhloRdnsLike,
        Tell::MailFromMismatch,
        Tell::OutOfSequence,
    ];

    /// Points towards the dialogue signal (100 counts in full).
    pub fn points(self) -> u32 {
        match self {
            Tell::EhloForeignIp => 100,
            Tell::EhloRandom => 80,
            Tell::ManyRcpts => 60,
            Tell::BeforeGreeting => 60,
            Tell::UnadvertisedPipelining => 40,
            Tell::ForgedReceived => 40,
            Tell::EhloRdnsLike => 40,
            Tell::MailFromMismatch => 20,
            Tell::OutOfSequence => 20,
        }
    }

    /// Index in per-device tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Bit in [`Events::tells`].
    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A fixed-capacity printable-ASCII string (other bytes become `?`).
#[derive(Clone, Copy)]
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Text {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> std::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> Text<N> {
    /// Replaces the contents with (at most `N` bytes of) `bytes`.
    pub fn set(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(N);
        for (d, &s) in self.buf.iter_mut().zip(&bytes[..n]) {
            *d = if (0x20..0x7f).contains(&s) { s } else { b'?' };
        }
        self.len = n;
    }

    /// Empties it.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The contents.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One direction of a TCP connection, cut into lines.
#[derive(Clone)]
pub struct Stream {
    next_seq: Option<u32>,
    line: [u8; LINE_MAX],
    len: usize,
    /// The line outgrew the buffer: deliver what was kept at its end.
    cut: bool,
    /// Data was lost: drop everything up to the next line end.
    discard: bool,
    /// Bytes to pass over without looking (BDAT chunks).
    skip: u64,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            next_seq: None,
            line: [0; LINE_MAX],
            len: 0,
            cut: false,
            discard: false,
            skip: 0,
        }
    }
}

impl Stream {
    /// Forgets everything (the slot is reused for another connection).
    pub fn reset(&mut self) {
        self.next_seq = None;
        self.len = 0;
        self.cut = false;
        self.discard = false;
        self.skip = 0;
    }

    /// A SYN with sequence number `seq` was seen in this direction.
    pub fn syn(&mut self, seq: u32) {
        self.next_seq = Some(seq.wrapping_add(1));
    }

    /// Feeds one segment; calls `on_line` for each complete line (without `\r\n`), which
    /// returns how many following bytes to pass over unparsed.
    pub fn feed(&mut self, seq: u32, payload: &[u8], mut on_line: impl FnMut(&[u8]) -> u64) {
        let len = payload.len() as u32;
        let data = match self.next_seq {
            None => {
                self.next_seq = Some(seq.wrapping_add(len));
                payload
            }
            Some(next) => {
                let d = seq.wrapping_sub(next) as i32;
                if d == 0 {
                    self.next_seq = Some(next.wrapping_add(len));
                    payload
                } else if d < 0 {
                    let overlap = d.unsigned_abs() as usize;
                    if overlap >= payload.len() {
                        return;
                    }
                    self.next_seq = Some(seq.wrapping_add(len));
                    &payload[overlap..]
                } else {
                    // Lost bytes: the partial line and any pending skip are meaningless now.
                    self.len = 0;
                    self.cut = false;
                    self.discard = true;
                    self.skip = 0;
                    self.next_seq = Some(seq.wrapping_add(len));
                    payload
                }
            }
        };
        let mut rest = data;
        while !rest.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(rest.len() as u64)) as usize;
                self.skip -= n as u64;
                rest = &rest[n..];
                continue;
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&rest[..i]);
                    rest = &rest[i + 1..];
                    if self.discard {
                        self.discard = false;
                    } else {
                        let mut end = self.len;
                        if end > 0 && self.line[end - 1] == b'\r' {
                            end -= 1;
                        }
                        self.skip = on_line(&self.line[..end]);
                    }
                    self.len = 0;
                    self.cut = false;
                }
                None => {
                    self.push(rest);
                    rest = &[];
                }
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.discard {
            return;
        }
        let room = LINE_MAX - self.len;
        let n = bytes.len().min(room);
        self.line[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        if n < bytes.len() {
            self.cut = true;
        }
    }
}

/// SASL mechanisms whose identity the parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mech {
    Plain,
    Login,
}

/// Longest decoded AUTH response read for its identity (longer ones are ignored).
const AUTH_DECODED_MAX: usize = 192;

/// Limits from policy that the dialogue parser needs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// RCPT commands in one session that count as many.
    pub many_rcpts: u32,
}

/// What one batch of lines changed, for the engine to apply to the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Tells that fired (bits of [`Tell::bit`]).
    pub tells: u16,
    /// RCPT TO commands.
    pub rcpts: u32,
    /// Messages ended (`.` after DATA, or `BDAT ... LAST`).
    pub messages: u32,
    /// AUTH succeeded.
    pub auth_ok: bool,
    /// AUTH was refused (a final 4xx/5xx such as 535): whatever the session does next,
    /// those credentials submitted nothing.
    pub auth_failed: bool,
    /// An EHLO/HELO name was announced (see [`Smtp::ehlo`]).
    pub ehlo: bool,
    /// A MAIL FROM domain was given (see [`Smtp::mail_domain`]).
    pub mail_from: bool,
    /// The server refused citing blocklists, spam, complaints or malware (see
    /// [`Smtp::rejection_text`]).
    pub rejection: bool,
    /// The session switched to TLS.
    pub starttls: bool,
    /// The client named the identity it authenticates as (see [`Smtp::auth_identity`]).
    pub auth_identity: bool,
}

impl Events {
    fn tell(&mut self, t: Tell) {
        self.tells |= t.bit();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Ehlo,
    Helo,
    Data,
    DataEnd,
    Auth,
    AuthLine,
    StartTls,
    Other,
}

/// Words in a 4xx/5xx reply that mean "your reputation is the problem".
const REPUTATION_WORDS: &[&[u8]] = &[
    b"blocklist",
    b"blacklist",
    b"block list",
    b"black list",
    b"blocked",
    b"denylist",
    b"spamhaus",
    b"spamcop",
    b"barracuda",
    b"sorbs",
    b"dnsbl",
    b"rbl",
    b"spam",
    b"complain",
    b"abuse",
    b"reputation",
    b"listed",
    b"virus",
    b"malware",
];

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fn starts_with_ci(hay: &[u8], prefix: &[u8]) -> bool {
    hay.len() >= prefix.len() && hay[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// The state of one SMTP session.
#[derive(Clone)]
pub struct Smtp {
    port: u16,
    dev_ip: Option<IpAddr>,
    saw_syn: bool,
    greeted: bool,
    tls: bool,
    pipelining: bool,
    in_auth: bool,
    /// The mechanism whose identity is still to come: PLAIN or LOGIN.
    auth_pending: Option<Mech>,
    auth_id: Option<u64>,
    authed: bool,
    in_data: bool,
    in_headers: bool,
    in_received: bool,
    header_lines: u16,
    pending: [Cmd; PENDING_MAX],
    pending_head: usize,
    pending_len: usize,
    pending_lost: bool,
    reply_flagged: bool,
    flagged: u16,
    rcpts: u32,
    messages: u32,
    ehlo: Text<64>,
    mail_domain: Text<64>,
    received_helo: Text<64>,
    rejection_text: Text<100>,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            port: 25,
            dev_ip: None,
            saw_syn: false,
            greeted: false,
            tls: false,
            pipelining: false,
            in_auth: false,
            auth_pending: None,
            auth_id: None,
            authed: false,
            in_data: false,
            in_headers: false,
            in_received: false,
            header_lines: 0,
            pending: [Cmd::Other; PENDING_MAX],
            pending_head: 0,
            pending_len: 0,
            pending_lost: false,
            reply_flagged: false,
            flagged: 0,
            rcpts: 0,
            messages: 0,
            ehlo: Text::default(),
            mail_domain: Text::default(),
            received_helo: Text::default(),
            rejection_text: Text::default(),
        }
    }
}

impl Smtp {
    /// A fresh session from `dev_ip` to server port `port`; `saw_syn` when its start was
    /// seen (so "commands before the greeting" can be judged).
    pub fn start(&mut self, port: u16, dev_ip: IpAddr, saw_syn: bool) {
        *self = Smtp {
            port,
            dev_ip: Some(dev_ip),
            saw_syn,
            ..Smtp::default()
        };
    }

    /// The EHLO/HELO name, if one was announced.
    pub fn ehlo(&self) -> &str {
        self.ehlo.as_str()
    }

    /// The domain of the last MAIL FROM, lower case.
    pub fn mail_domain(&self) -> &str {
        self.mail_domain.as_str()
    }

    /// The helo name of a forged `Received:` header.
    pub fn received_helo(&self) -> &str {
        self.received_helo.as_str()
    }

    /// The last reputation rejection, cut to 100 characters.
    pub fn rejection_text(&self) -> &str {
        self.rejection_text.as_str()
    }

    /// A hash of the identity the client last authenticated as (AUTH PLAIN's authentication
    /// identity or AUTH LOGIN's user name, case-folded), never the name or the password.
    pub fn auth_identity(&self) -> Option<u64> {
        self.auth_id
    }

    /// Reads the identity out of the base64 of AUTH PLAIN or AUTH LOGIN's user name.
    fn auth_identity_from(&mut self, mech: Mech, b64: &[u8], ev: &mut Events) {
        let mut buf = [0u8; AUTH_DECODED_MAX];
        let Some(n) = smtpguard_common::base64_decode_into(b64, &mut buf) else {
            return;
        };
        let raw = &buf[..n];
        let id = match mech {
            // authzid NUL authcid NUL password: the authentication identity.
            Mech::Plain => match raw.split(|b| *b == 0).nth(1) {
                Some(id) => id,
                None => return,
            },
            Mech::Login => raw,
        };
        if id.is_empty() {
            return;
        }
        // FNV-1a over the case-folded name.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in id {
            h ^= u64::from(b.to_ascii_lowercase());
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.auth_id = Some(h);
        ev.auth_identity = true;
    }

    /// Whether the client authenticated.
    pub fn authed(&self) -> bool {
        self.authed
    }

    /// Whether the session switched to TLS (nothing after that is visible).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// RCPT commands so far.
    pub fn rcpts(&self) -> u32 {
        self.rcpts
    }

    /// Messages sent so far.
    pub fn messages(&self) -> u32 {
        self.messages
    }

    fn tell_once(&mut self, t: Tell, ev: &mut Events) {
        if self.flagged & t.bit() == 0 {
            self.flagged |= t.bit();
            ev.tell(t);
        }
    }

    fn push(&mut self, cmd: Cmd) {
        if self.pending_len == PENDING_MAX {
            self.pending_lost = true;
            return;
        }
        let at = (self.pending_head + self.pending_len) % PENDING_MAX;
        self.pending[at] = cmd;
        self.pending_len += 1;
    }

    fn pop(&mut self) -> Option<Cmd> {
        if self.pending_len == 0 {
            return None;
        }
        let cmd = self.pending[self.pending_head];
        self.pending_head = (self.pending_head + 1) % PENDING_MAX;
        self.pending_len -= 1;
        Some(cmd)
    }

    fn front(&self) -> Option<Cmd> {
        (self.pending_len > 0).then(|| self.pending[self.pending_head])
    }

    /// One line from the client; returns how many bytes that follow are a BDAT chunk.
    pub fn client_line(&mut self, line: &[u8], limits: &Limits, ev: &mut Events) -> u64 {
        if self.tls {
            return 0;
        }
        if self.in_data {
            if line == b"." {
                self.in_data = false;
                self.in_headers = false;
                self.messages += 1;
                ev.messages += 1;
                self.push(Cmd::DataEnd);
            } else if self.in_headers {
                self.header_line(line, ev);
            }
            return 0;
        }
        if self.in_auth {
            if let Some(mech) = self.auth_pending.take() {
                self.auth_identity_from(mech, trim(line), ev);
            }
            self.push(Cmd::AuthLine);
            return 0;
        }
        let line = trim(line);
        if line.is_empty() {
            return 0;
        }
        if !self.greeted && self.saw_syn {
            self.tell_once(Tell::BeforeGreeting, ev);
        } else if self.pending_len > 0 && !self.pipelining && !self.pending_lost {
            self.tell_once(Tell::UnadvertisedPipelining, ev);
        }
        let (verb, arg) = match line.iter().position(|b| *b == b' ') {
            Some(i) => (&line[..i], trim(&line[i + 1..])),
            None => (line, &line[line.len()..]),
        };
        let upper = |v: &[u8], w: &[u8]| v.eq_ignore_ascii_case(w);
        if upper(verb, b"EHLO") || upper(verb, b"HELO") {
            let name = arg.split(|b| *b == b' ').next().unwrap_or(&[]);
            self.ehlo.set(name);
            ev.ehlo = true;
            self.check_ehlo(ev);
            self.push(if upper(verb, b"EHLO") {
                Cmd::Ehlo
            } else {
                Cmd::Helo
            });
        } else if upper(verb, b"MAIL") {
            self.mail_from(arg, ev);
            self.push(Cmd::Other);
        } else if upper(verb, b"RCPT") {
            self.rcpts += 1;
            ev.rcpts += 1;
            if self.rcpts >= limits.many_rcpts {
                self.tell_once(Tell::ManyRcpts, ev);
            }
            self.push(Cmd::Other);
        } else if upper(verb, b"DATA") {
            self.push(Cmd::Data);
        } else if upper(verb, b"BDAT") {
            let mut words = arg.split(|b| *b == b' ').filter(|w| !w.is_empty());
            let size = words
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if words.next().is_some_and(|w| upper(w, b"LAST")) {
                self.messages += 1;
                ev.messages += 1;
            }
            self.push(Cmd::Other);
            return size;
        } else if upper(verb, b"AUTH") {
            self.in_auth = true;
            let mut words = arg.split(|b| *b == b' ').filter(|w| !w.is_empty());
            let mech = match words.next() {
                Some(m) if upper(m, b"PLAIN") => Some(Mech::Plain),
                Some(m) if upper(m, b"LOGIN") => Some(Mech::Login),
                _ => None,
            };
            self.auth_pending = None;
            if let Some(mech) = mech {
                match words.next() {
                    Some(initial) => self.auth_identity_from(mech, initial, ev),
                    None => self.auth_pending = Some(mech),
                }
            }
            self.push(Cmd::Auth);
        } else if upper(verb, b"STARTTLS") {
            self.push(Cmd::StartTls);
        } else {
            self.push(Cmd::Other);
        }
        0
    }

    fn check_ehlo(&mut self, ev: &mut Events) {
        let name = self.ehlo.as_str();
        if let Some(ip) = names::ip_literal(name) {
            if Some(ip) != self.dev_ip {
                self.tell_once(Tell::EhloForeignIp, ev);
            }
        } else if names::looks_random(name) {
            self.tell_once(Tell::EhloRandom, ev);
        } else if names::looks_like_rdns(name) {
            self.tell_once(Tell::EhloRdnsLike, ev);
        }
    }

    fn mail_from(&mut self, arg: &[u8], ev: &mut Events) {
        // "FROM:<a@b> SIZE=..." or "FROM: <a@b>"
        let Some(colon) = arg.iter().position(|b| *b == b':') else {
            return;
        };
        let addr = trim(&arg[colon + 1..]);
        let addr = addr.strip_prefix(b"<").unwrap_or(addr);
        let end = addr
            .iter()
            .position(|b| matches!(b, b'>' | b' '))
            .unwrap_or(addr.len());
        let addr = &addr[..end];
        let Some(at) = addr.iter().rposition(|b| *b == b'@') else {
            self.mail_domain.clear();
            return;
        };
        let mut lower = [0u8; 64];
        let domain = &addr[at + 1..];
        let n = domain.len().min(64);
        for (d, s) in lower.iter_mut().zip(&domain[..n]) {
            *d = s.to_ascii_lowercase();
        }
        self.mail_domain.set(&lower[..n]);
        if self.mail_domain.is_empty() {
            return;
        }
        ev.mail_from = true;
        let ehlo = self.ehlo.as_str();
        if self.port == 25
            && !self.authed
            && ehlo.contains('.')
            && names::ip_literal(ehlo).is_none()
        {
            let a = names::registrable(self.mail_domain.as_str());
            let b = names::registrable(ehlo);
            if !a.eq_ignore_ascii_case(b) {
                self.tell_once(Tell::MailFromMismatch, ev);
            }
        }
    }

    fn header_line(&mut self, line: &[u8], ev: &mut Events) {
        if line.is_empty() {
            self.in_headers = false;
            return;
        }
        if self.header_lines >= HEADER_LINES_MAX {
            return;
        }
        self.header_lines += 1;
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            self.in_received = starts_with_ci(line, b"received:");
        }
        if !self.in_received {
            return;
        }
        let Some(i) = line
            .windows(5)
            .position(|w| w.eq_ignore_ascii_case(b"helo="))
        else {
            return;
        };
        let rest = &line[i + 5..];
        let end = rest
            .iter()
            .position(|b| matches!(b, b')' | b' ' | b';' | b'\t'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        let mut text = Text::<64>::default();
        text.set(name);
        if names::looks_random(text.as_str()) {
            self.received_helo = text;
            self.tell_once(Tell::ForgedReceived, ev);
        }
    }

    /// One line from the server.
    pub fn server_line(&mut self, line: &[u8], ev: &mut Events) {
        if self.tls || line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return;
        }
        let code = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        let last = line.get(3) != Some(&b'-');
        let text = line.get(4..).unwrap_or(&[]);
        if code >= 400
            && !self.reply_flagged
            && REPUTATION_WORDS.iter().any(|w| contains_ci(text, w))
        {
            self.reply_flagged = true;
            self.rejection_text.set(line);
            ev.rejection = true;
        }
        if self.greeted
            && self.front() == Some(Cmd::Ehlo)
            && starts_with_ci(trim(text), b"PIPELINING")
        {
            self.pipelining = true;
        }
        if !last {
            return;
        }
        self.reply_flagged = false;
        if !self.greeted {
            // The greeting (or a refusal in its place) answers no command.
            if code == 220 || code >= 400 {
                self.greeted = true;
                if code == 220 {
                    return;
                }
            } else {
                self.greeted = true;
            }
        }
        if code == 503 {
            self.tell_once(Tell::OutOfSequence, ev);
        }
        match self.pop() {
            Some(Cmd::Data) if code == 354 => {
                self.in_data = true;
                self.in_headers = true;
                self.in_received = false;
                self.header_lines = 0;
            }
            Some(Cmd::StartTls) if code == 220 => {
                self.tls = true;
                ev.starttls = true;
            }
            Some(Cmd::Auth | Cmd::AuthLine) => {
                if code != 334 {
                    self.in_auth = false;
                    self.auth_pending = None;
                    if code == 235 {
                        self.authed = true;
                        ev.auth_ok = true;
                    } else if code >= 400 {
                        ev.auth_failed = true;
                    }
                }
            }
            Some(Cmd::Ehlo | Cmd::Helo | Cmd::DataEnd | Cmd::Other | Cmd::Data | Cmd::StartTls)
            | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { many_rcpts: 3 };

    fn dialogue(port: u16, script: &[(bool, &str)]) -> (Smtp, Events) {
        let mut s = Smtp::default();
        s.start(port, "10.0.0.5".parse().unwrap(), true);
        let mut ev = Events::default();
        let mut client = Stream::default();
        let mut server = Stream::default();
        let (mut cseq, mut sseq) = (1000u32, 5000u32);
        for (from_client, text) in script {
            if *from_client {
                client.feed(cseq, text.as_bytes(), |l| {
                    s.client_line(l, &LIMITS, &mut ev)
                });
                cseq = cseq.wrapping_add(text.len() as u32);
            } else {
                server.feed(sseq, text.as_bytes(), |l| {
                    s.server_line(l, &mut ev);
                    0
                });
                sseq = sseq.wrapping_add(text.len() as u32);
            }
        }
        (s, ev)
    }

    #[test]
    fn clean_dialogue_has_no_tells() {
        let (s, ev) = dialogue(
            587,
            &[
                (false, "220 mx ESMTP\r\n"),
                (true, "EHLO [10.0.0.5]\r\n"),
                (false, "250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n"),
                (true, "AUTH PLAIN AGEAYg==\r\n"),
                (false, "235 ok\r\n"),
                (true, "MAIL FROM:<a@example.org>\r\n"),
                (false, "250 ok\r\n"),
                (true, "RCPT TO:<b@example.net>\r\n"),
                (false, "250 ok\r\n"),
                (true, "DATA\r\n"),
                (false, "354 go\r\n"),
                (
                    true,
                    "Subject: hi\r\n\r\nReceived: from x (helo=OAZQJFLN.club)\r\n.\r\n",
                ),
                (false, "250 queued\r\n"),
                (true, "QUIT\r\n"),
            ],
        );
        assert_eq!(ev.tells, 0, "{:?}", ev);
        assert!(s.authed());
        assert_eq!((s.rcpts(), s.messages()), (1, 1));
        assert_eq!(s.mail_domain(), "example.org");
    }

    #[test]
    fn malspam_tells() {
        // Lines from the corpus capture bot-malspam-direct-to-mx.pcap.
        let (s, ev) = dialogue(
            25,
            &[
                (false, "220 tux319.loginserver.ch ESMTP Sendmail\r\n"),
                (true, "EHLO 173-66-46-112.wash.fios.verizon.net\r\n"),
                (false, "250-tux319.loginserver.ch Hello\r\n250-PIPELINING\r\n250 HELP\r\n"),
                (true, "MAIL FROM: <splotchiestzg0@gezydb01.apis.dhl.com> \r\nRCPT TO:<mirjam@abrakadabra.ch>\r\nDATA\r\n"),
                (false, "553 5.1.8 Domain of sender address does not exist\r\n503 5.0.0 Need MAIL before RCPT\r\n503 5.0.0 Need MAIL command\r\n"),
                (true, "RSET\r\n"),
                (false, "250 2.0.0 Reset state\r\n"),
                (true, "MAIL FROM: <uprootedx38@gateway2c.dhl.com> \r\nRCPT TO:<mirjam@abrakadabra.ch>\r\nDATA\r\n"),
                (false, "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 Enter mail\r\n"),
                (true, "Received: from [65.201.218.30] (helo=COZOXORY.club)\r\n\tby 173-66-46-112.wash.fios.verizon.net\r\nSubject: x\r\n\r\nbody\r\n.\r\n"),
                (false, "554 5.7.1 Message contains virus: rejected.\r\n"),
            ],
        );
        for t in [
            Tell::EhloRdnsLike,
            Tell::MailFromMismatch,
            Tell::OutOfSequence,
            Tell::ForgedReceived,
        ] {
            assert!(ev.tells & t.bit() != 0, "{t:?} missing: {ev:?}");
        }
        assert_eq!(ev.tells & Tell::UnadvertisedPipelining.bit(), 0);
        assert!(ev.rejection);
        assert_eq!(
            s.rejection_text(),
            "554 5.7.1 Message contains virus: rejected."
        );
        assert_eq!(s.received_helo(), "COZOXORY.club");
        assert_eq!(s.messages(), 1);
    }

    #[test]
    fn refused_auth_is_an_auth_failure() {
        // AUTH LOGIN with its two 334 challenges, then 535 (the emotet capture's shape).
        let (s, ev) = dialogue(
            587,
            &[
                (false, "220 mx\r\n"),
                (true, "EHLO [10.0.0.5]\r\n"),
                (false, "250-mx\r\n250 AUTH LOGIN PLAIN\r\n"),
                (true, "AUTH LOGIN\r\n"),
                (false, "334 VXNlcm5hbWU6\r\n"),
                (true, "dXNlcg==\r\n"),
                (false, "334 UGFzc3dvcmQ6\r\n"),
                (true, "cGFzcw==\r\n"),
                (false, "535 5.7.8 Error: authentication failed\r\n"),
                (true, "QUIT\r\n"),
            ],
        );
        assert!(ev.auth_failed && !ev.auth_ok, "{ev:?}");
        assert!(!s.authed());
        assert_eq!(s.messages(), 0);
        // A 334 alone is not a failure; a later 235 is a success.
        let (s, ev) = dialogue(
            587,
            &[
                (false, "220 mx\r\n"),
                (true, "EHLO [10.0.0.5]\r\n"),
                (false, "250 mx\r\n"),
                (true, "AUTH PLAIN\r\n"),
                (false, "334 \r\n"),
                (true, "AGEAYg==\r\n"),
                (false, "235 ok\r\n"),
            ],
        );
        assert!(ev.auth_ok && !ev.auth_failed && s.authed(), "{ev:?}");
    }

    #[test]
    fn auth_identity_is_the_user_not_the_password() {
        let id = |lines: &[(bool, &str)]| dialogue(587, lines).0.auth_identity();
        let greet = [
            (false, "220 mx\r\n"),
            (true, "EHLO pc\r\n"),
            (false, "250 mx\r\n"),
        ];
        // AUTH PLAIN "\0user\0pass" and "\0USER\0other" (same user), with the response
        // inline or after a 334; AUTH LOGIN "user" the same.
        let plain = id(&[&greet[..], &[(true, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n")]].concat());
        let plain2 = id(&[
            &greet[..],
            &[
                (true, "AUTH PLAIN\r\n"),
                (false, "334 \r\n"),
                (true, "AFVTRVIAb3RoZXI=\r\n"),
            ],
        ]
        .concat());
        let login = id(&[
            &greet[..],
            &[
                (true, "AUTH LOGIN\r\n"),
                (false, "334 VXNlcm5hbWU6\r\n"),
                (true, "dXNlcg==\r\n"),
                (false, "334 UGFzc3dvcmQ6\r\n"),
                (true, "cGFzcw==\r\n"),
            ],
        ]
        .concat());
        assert!(plain.is_some());
        assert_eq!(plain, plain2);
        assert_eq!(plain, login);
        // Another user differs; garbage names nobody.
        let other = id(&[&greet[..], &[(true, "AUTH PLAIN AGJvYgBwYXNz\r\n")]].concat());
        assert!(other.is_some() && other != plain);
        assert_eq!(
            id(&[&greet[..], &[(true, "AUTH PLAIN !!notbase64\r\n")]].concat()),
            None
        );
    }

    #[test]
    fn foreign_literal_random_name_and_pipelining_abuse() {
        let (_, ev) = dialogue(
            587,
            &[
                (false, "220 mx\r\n"),
                (true, "EHLO [173.66.46.97]\r\n"),
                (false, "250 mx\r\n"),
                (true, "MAIL FROM:<a@b.c>\r\nRCPT TO:<1@x>\r\n"),
            ],
        );
        assert!(ev.tells & Tell::EhloForeignIp.bit() != 0);
        assert!(ev.tells & Tell::UnadvertisedPipelining.bit() != 0);
        let (_, ev) = dialogue(
            25,
            &[
                (true, "EHLO OAZQJFLN.club\r\n"),
                (false, "220 mx\r\n"),
                (false, "250 mx\r\n"),
                (true, "MAIL FROM:<x@y.z>\r\n"),
                (false, "250 ok\r\n"),
                (true, "RCPT TO:<1@x>\r\n"),
                (false, "250 ok\r\n"),
                (true, "RCPT TO:<2@x>\r\n"),
                (false, "250 ok\r\n"),
                (true, "RCPT TO:<3@x>\r\n"),
                (
                    false,
                    "550 5.7.1 Service unavailable; client host blocked using Spamhaus\r\n",
                ),
            ],
        );
        for t in [
            Tell::BeforeGreeting,
            Tell::EhloRandom,
            Tell::ManyRcpts,
            Tell::MailFromMismatch,
        ] {
            assert!(ev.tells & t.bit() != 0, "{t:?}: {ev:?}");
        }
        assert!(ev.rejection);
    }

    #[test]
    fn commands_split_across_segments_and_retransmissions() {
        let mut s = Smtp::default();
        s.start(25, "10.0.0.5".parse().unwrap(), true);
        let mut ev = Events::default();
        let mut c = Stream::default();
        c.syn(99);
        let mut srv = Stream::default();
        srv.feed(1, b"220 hi\r\n", |l| {
            s.server_line(l, &mut ev);
            0
        });
        c.feed(100, b"EHL", |l| s.client_line(l, &LIMITS, &mut ev));
        c.feed(103, b"O OAZQ", |l| s.client_line(l, &LIMITS, &mut ev));
        // A retransmission of bytes already seen changes nothing.
        c.feed(100, b"EHLO OAZQ", |l| s.client_line(l, &LIMITS, &mut ev));
        c.feed(109, b"JFLN.club\r\n", |l| {
            s.client_line(l, &LIMITS, &mut ev)
        });
        assert_eq!(s.ehlo(), "OAZQJFLN.club");
        assert!(ev.tells & Tell::EhloRandom.bit() != 0);
    }

    #[test]
    fn gaps_resynchronise_and_long_lines_are_cut() {
        let mut lines = Vec::new();
        let mut st = Stream::default();
        st.feed(0, b"HELLO\r\npart", |l| {
            lines.push(l.to_vec());
            0
        });
        // 10 bytes lost: "part..." is dropped up to the next line end.
        st.feed(21, b"tail\r\nNEXT\r\n", |l| {
            lines.push(l.to_vec());
            0
        });
        assert_eq!(lines, vec![b"HELLO".to_vec(), b"NEXT".to_vec()]);
        let mut st = Stream::default();
        let long = vec![b'a'; 3000];
        let mut got = Vec::new();
        st.feed(0, &long, |l| {
            got.push(l.len());
            0
        });
        st.feed(3000, b"\r\nok\r\n", |l| {
            got.push(l.len());
            0
        });
        assert_eq!(got, vec![LINE_MAX, 2]);
    }

    #[test]
    fn bdat_chunks_are_skipped_and_starttls_stops_parsing() {
        let (s, ev) = dialogue(
            25,
            &[
                (false, "220 mx\r\n"),
                (true, "EHLO mail.example.org\r\n"),
                (false, "250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n"),
                (true, "BDAT 14 LAST\r\nEHLO [1.2.3.4]"),
                (false, "250 ok\r\n"),
                (true, "STARTTLS\r\n"),
                (false, "220 go ahead\r\n"),
                (true, "EHLO [9.9.9.9]\r\n"),
            ],
        );
        assert_eq!(s.messages(), 1);
        assert!(s.is_tls());
        assert_eq!(ev.tells & Tell::EhloForeignIp.bit(), 0, "{ev:?}");
    }
}
