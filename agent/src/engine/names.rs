//! Heuristics over host names seen in SMTP dialogue (EHLO/HELO, `Received: ... helo=`) and
//! mail domains. Integer arithmetic only, so every platform decides alike.
//!
//! - [`ip_literal`]: `[192.0.2.1]`, `[IPv6:2001:db8::1]` or a bare address.
//! - [`random_points`] / [`looks_random`]: machine-generated names such as
//!   `OAZQJFLN.club` or `COZOXORY.club`. Each non-TLD label scores points for long consonant
//!   runs (5+ consonants in a row), a vowel share under 25 %, two or more distinct rare letters
//!   (q, x, z, j), three or more letter/digit alternations, mixed case changing twice or more,
//!   and six or more letters all in capitals; the name scores its best label plus one for a
//!   TLD often abused by spam campaigns. Three points or more is "random-looking". Names
//!   without a dot (machine names like `DESKTOP-4K7JQ2M`), names under LAN suffixes
//!   (`.lan`, `.home`, `.local`, `fritz.box`) and Windows default host names are never
//!   random-looking.
//! - [`looks_like_rdns`]: a name that embeds an IPv4 address the way ISPs name dynamic
//!   hosts (`173-66-46-112.wash.fios.verizon.net`): a client behind the router claiming
//!   some access line's reverse-DNS name.
//! - [`registrable`]: the part of a domain a person registers (`example.co.uk`), to compare
//!   MAIL FROM with EHLO.

use std::net::IpAddr;

/// TLDs that spam campaigns favour for throw-away EHLO names.
const UNUSUAL_TLDS: &[&str] = &[
    "bid", "biz", "buzz", "cf", "cfd", "click", "club", "cyou", "date", "download", "fun", "ga",
    "gq", "icu", "info", "link", "live", "loan", "ml", "monster", "online", "party", "pw",
    "racing", "rest", "review", "sbs", "science", "shop", "site", "space", "stream", "su", "tk",
    "top", "trade", "vip", "website", "win", "work", "xyz",
];

/// Suffixes of names that only exist inside a home network.
const LAN_TLDS: &[&str] = &[
    "arpa",
    "box",
    "home",
    "internal",
    "lan",
    "local",
    "localdomain",
];

/// Windows' default host names carry a random tail by design.
const WINDOWS_DEFAULT_PREFIXES: &[&str] = &["desktop-", "laptop-", "win-"];

/// Points at or above which a name looks machine-generated.
pub const RANDOM_POINTS: u8 = 3;

/// The address in an EHLO argument that is an address literal (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`) or a bare address.
pub fn ip_literal(name: &str) -> Option<IpAddr> {
    let inner = name
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(name);
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

fn is_rare(c: u8) -> bool {
    matches!(c, b'q' | b'x' | b'z' | b'j')
}

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

fn label_points(label: &str) -> u8 {
    let bytes = label.as_bytes();
    let mut letters = 0u32;
    let mut vowels = 0u32;
    let mut run = 0u32;
    let mut max_run = 0u32;
    let mut seen: u32 = 0;
    let mut rare: u32 = 0;
    let mut transitions = 0u32;
    let mut case_changes = 0u32;
    let mut upper = 0u32;
    let mut prev_kind = 0u8; // 0 none, 1 letter, 2 digit
    let mut prev_upper: Option<bool> = None;
    for &b in bytes {
        if b.is_ascii_alphabetic() {
            let lower = b.to_ascii_lowercase();
            letters += 1;
            seen |= 1 << (lower - b'a');
            if is_rare(lower) {
                rare |= 1 << (lower - b'a');
            }
            if b.is_ascii_uppercase() {
                upper += 1;
            }
            if let Some(p) = prev_upper {
                if p != b.is_ascii_uppercase() {
                    case_changes += 1;
                }
            }
            prev_upper = Some(b.is_ascii_uppercase());
            if is_vowel(lower) {
                vowels += 1;
                run = 0;
            } else {
                run += 1;
                max_run = max_run.max(run);
            }
            if prev_kind == 2 {
                transitions += 1;
            }
            prev_kind = 1;
        } else if b.is_ascii_digit() {
            run = 0;
            if prev_kind == 1 {
                transitions += 1;
            }
            prev_kind = 2;
        } else {
            run = 0;
        }
    }
    let mut points = 0u8;
    if letters >= 5 && seen.count_ones() >= 4 {
        if max_run >= 5 {
            points += 1;
        }
        if vowels * 4 < letters {
            points += 1;
        }
    }
    if rare.count_ones() >= 2 {
        points += 1;
    }
    if transitions >= 3 {
        points += 1;
    }
    if case_changes >= 2 && upper < letters {
        points += 1;
    }
    if letters >= 6 && upper == letters {
        points += 1;
    }
    points
}

/// How machine-generated a host name looks (see the module documentation).
pub fn random_points(name: &str) -> u8 {
    let name = name.trim_end_matches('.');
    if !name.contains('.') || ip_literal(name).is_some() {
        return 0;
    }
    let lower_first = name.split('.').next().unwrap_or("").to_ascii_lowercase();
    if WINDOWS_DEFAULT_PREFIXES
        .iter()
        .any(|p| lower_first.starts_with(p))
    {
        return 0;
    }
    let mut labels = name.rsplit('.');
    let tld = labels.next().unwrap_or("").to_ascii_lowercase();
    if LAN_TLDS.contains(&tld.as_str()) {
        return 0;
    }
    let best = labels.map(label_points).max().unwrap_or(0);
    best + u8::from(UNUSUAL_TLDS.contains(&tld.as_str()))
}

/// Whether a host name looks machine-generated.
pub fn looks_random(name: &str) -> bool {
    random_points(name) >= RANDOM_POINTS
}

/// Whether a name embeds an IPv4 address in its leading labels, as ISPs name access lines.
pub fn looks_like_rdns(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 3 {
        return false;
    }
    let mut groups = 0;
    for label in labels.iter().take(4) {
        let mut run = 0;
        let mut had_digit = false;
        for b in label.bytes().chain(std::iter::once(b'-')) {
            if b.is_ascii_digit() {
                run += 1;
                had_digit = true;
            } else {
                if (1..=3).contains(&run) {
                    groups += 1;
                }
                run = 0;
            }
        }
        if !had_digit {
            break;
        }
    }
    groups >= 4
}

/// The registrable part of a domain: the last two labels, or three under a two-letter
/// country code whose second level is a short generic label (`co.uk`, `com.au`).
pub fn registrable(domain: &str) -> &str {
    let domain = domain.trim_end_matches('.');
    let dots: Vec<usize> = domain.match_indices('.').map(|(i, _)| i).collect();
    let n = dots.len();
    if n == 0 {
        return domain;
    }
    let tld = &domain[dots[n - 1] + 1..];
    let second_start = if n >= 2 { dots[n - 2] + 1 } else { 0 };
    let second = &domain[second_start..dots[n - 1]];
    let take_three = tld.len() == 2 && second.len() <= 3 && n >= 2;
    if take_three {
        if n >= 3 {
            &domain[dots[n - 3] + 1..]
        } else {
            domain
        }
    } else if n >= 2 {
        &domain[dots[n - 2] + 1..]
    } else {
        domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals() {
        assert_eq!(ip_literal("[173.66.46.97]"), "173.66.46.97".parse().ok());
        assert_eq!(ip_literal("[IPv6:2001:db8::1]"), "2001:db8::1".parse().ok());
        assert_eq!(ip_literal("10.0.0.1"), "10.0.0.1".parse().ok());
        assert_eq!(ip_literal("mail.example.com"), None);
        assert_eq!(ip_literal("[bogus]"), None);
    }

    #[test]
    fn bot_names_look_random() {
        for name in [
            "OAZQJFLN.club",
            "COZOXORY.club",
            "xkqzvbtr.example.com",
            "aB3dE9fG2h.xyz",
        ] {
            assert!(looks_random(name), "{name}: {}", random_points(name));
        }
    }

    #[test]
    fn ordinary_names_do_not() {
        for name in [
            "xxxxxxxxxxxxx.xxx.com",
            "173-66-46-112.wash.fios.verizon.net",
            "mail.example.com",
            "mx.google.com",
            "smtp.gmx.net",
            "localhost",
            "GP",
            "DESKTOP-4K7JQ2M",
            "desktop-4k7jq2m.fritz.box",
            "MacBook-Pro.local",
            "strengths.co.uk",
            "[192.168.133.100]",
            "mail.schwarzwald-express.de",
        ] {
            assert!(!looks_random(name), "{name}: {}", random_points(name));
        }
    }

    #[test]
    fn rdns_like_names() {
        assert!(looks_like_rdns("173-66-46-112.wash.fios.verizon.net"));
        assert!(looks_like_rdns("c-73-12-1-2.hsd1.ma.comcast.net"));
        assert!(looks_like_rdns("1.2.3.4.dynamic.isp.net"));
        assert!(!looks_like_rdns("mail2.example.com"));
        assert!(!looks_like_rdns("OAZQJFLN.club"));
        assert!(!looks_like_rdns("10-0-0-1.lan"));
    }

    #[test]
    fn registrable_domains() {
        assert_eq!(registrable("gezydb01.apis.dhl.com"), "dhl.com");
        assert_eq!(
            registrable("173-66-46-112.wash.fios.verizon.net"),
            "verizon.net"
        );
        assert_eq!(registrable("mail.example.co.uk"), "example.co.uk");
        assert_eq!(registrable("example.de"), "example.de");
        assert_eq!(registrable("localhost"), "localhost");
        assert_eq!(registrable("co.uk"), "co.uk");
    }
}
