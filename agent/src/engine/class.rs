//! Device classes: what kind of thing a household device is, from what it says about itself
//! on the LAN (DHCP vendor class, host name, parameter request list) and from its MAC
//! vendor.
//!
//! A class is a prior, never a verdict: a camera, TV, printer or smart-home gadget does not
//! deliver mail straight to other people's mail servers, so when one does, its direct-to-MX
//! traffic weighs more (see `score`). A class alone scores nothing.
//!
//! The tables are short keyword lists (about a kilobyte in the binary), not a registry:
//! the vendor names come from the OUI file the operator installs (`oui`), the rest from the
//! device's own DHCP request. Names are matched as lower-case tokens (split at anything
//! that is not a letter or digit), so `LGwebOSTV` or `garage-cam` match and `tvheadend`
//! does not match `tv`.

/// What kind of device it is, as far as its own announcements tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// IP camera, doorbell, video recorder.
    Camera,
    /// Television or streaming stick.
    Tv,
    /// Printer or scanner.
    Printer,
    /// Smart plug, bulb, speaker or another small home gadget.
    SmartHome,
    /// A general-purpose computer (Windows, by its DHCP client).
    Computer,
    /// A phone (Android, by its DHCP client).
    Phone,
}

impl Class {
    /// Whether devices of this class never send mail straight to mail servers themselves.
    pub fn never_mails(self) -> bool {
        matches!(
            self,
            Class::Camera | Class::Tv | Class::Printer | Class::SmartHome
        )
    }

    /// The class in words, with its article ("a camera").
    pub fn words(self) -> &'static str {
        match self {
            Class::Camera => "a camera",
            Class::Tv => "a TV",
            Class::Printer => "a printer",
            Class::SmartHome => "a smart-home gadget",
            Class::Computer => "a computer",
            Class::Phone => "a phone",
        }
    }

    /// The plural for evidence ("cameras").
    pub fn plural(self) -> &'static str {
        match self {
            Class::Camera => "cameras",
            Class::Tv => "TVs",
            Class::Printer => "printers",
            Class::SmartHome => "smart-home gadgets",
            Class::Computer => "computers",
            Class::Phone => "phones",
        }
    }
}

/// Whole tokens that name a class.
const TOKENS: &[(&str, Class)] = &[
    ("cam", Class::Camera),
    ("ipcam", Class::Camera),
    ("camera", Class::Camera),
    ("ipc", Class::Camera),
    ("nvr", Class::Camera),
    ("dvr", Class::Camera),
    ("doorbell", Class::Camera),
    ("tv", Class::Tv),
    ("smarttv", Class::Tv),
    ("webostv", Class::Tv),
    ("lgwebostv", Class::Tv),
    ("androidtv", Class::Tv),
    ("firetv", Class::Tv),
    ("appletv", Class::Tv),
    ("printer", Class::Printer),
    ("hp", Class::Printer),
    ("plug", Class::SmartHome),
    ("bulb", Class::SmartHome),
    ("esp", Class::SmartHome),
];

/// Token prefixes (brands and product lines) that name a class.
const PREFIXES: &[(&str, Class)] = &[
    ("hikvision", Class::Camera),
    ("dahua", Class::Camera),
    ("reolink", Class::Camera),
    ("amcrest", Class::Camera),
    ("foscam", Class::Camera),
    ("wyze", Class::Camera),
    ("ezviz", Class::Camera),
    ("arlo", Class::Camera),
    ("roku", Class::Tv),
    ("bravia", Class::Tv),
    ("chromecast", Class::Tv),
    ("vizio", Class::Tv),
    ("epson", Class::Printer),
    ("brother", Class::Printer),
    ("canon", Class::Printer),
    ("lexmark", Class::Printer),
    ("kyocera", Class::Printer),
    ("officejet", Class::Printer),
    ("laserjet", Class::Printer),
    ("deskjet", Class::Printer),
    ("xerox", Class::Printer),
    ("espressif", Class::SmartHome),
    ("tasmota", Class::SmartHome),
    ("shelly", Class::SmartHome),
    ("sonoff", Class::SmartHome),
    ("tuya", Class::SmartHome),
    ("meross", Class::SmartHome),
    ("tapo", Class::SmartHome),
    ("wemo", Class::SmartHome),
    ("sonos", Class::SmartHome),
];

/// Vendor class identifiers (option 60) of general-purpose clients, by prefix.
const VENDOR_CLASSES: &[(&str, Class)] =
    &[("msft", Class::Computer), ("android-dhcp", Class::Phone)];

/// Parameter request lists (option 55) of general-purpose DHCP clients, exactly.
const FINGERPRINTS: &[(&[u8], Class)] = &[
    // Windows 10 and 11.
    (
        &[1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252],
        Class::Computer,
    ),
];

fn class_of_name(name: &str) -> Option<Class> {
    for token in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
    {
        let t = token.to_ascii_lowercase();
        // A trailing number is a unit number ("cam2", "esp_8266" splits already).
        let bare = t.trim_end_matches(|c: char| c.is_ascii_digit());
        if let Some(&(_, c)) = TOKENS.iter().find(|(w, _)| *w == t || *w == bare) {
            return Some(c);
        }
        if let Some(&(_, c)) = PREFIXES.iter().find(|(p, _)| t.starts_with(p)) {
            return Some(c);
        }
    }
    None
}

/// Where a class came from, for the evidence sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// DHCP option 60.
    VendorClass,
    /// DHCP option 55.
    Fingerprint,
    /// DHCP option 12 or the router's lease file.
    HostName,
    /// The MAC's OUI vendor.
    Vendor,
}

/// What a device says about itself; any part may be missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Announced<'a> {
    /// DHCP vendor class identifier.
    pub vendor_class: Option<&'a str>,
    /// DHCP parameter request list.
    pub params: Option<&'a [u8]>,
    /// Host name.
    pub hostname: Option<&'a str>,
    /// OUI vendor name.
    pub vendor: Option<&'a str>,
}

/// The device's class and what showed it. What the device's own DHCP client is (vendor
/// class, parameter list) outranks its name, and its name outranks the maker of its
/// network chip (an Espressif chip may sit in anything).
pub fn classify(a: &Announced<'_>) -> Option<(Class, Source)> {
    if let Some(vc) = a.vendor_class {
        let lower = vc.to_ascii_lowercase();
        if let Some(&(_, c)) = VENDOR_CLASSES.iter().find(|(p, _)| lower.starts_with(p)) {
            return Some((c, Source::VendorClass));
        }
        if let Some(c) = class_of_name(vc) {
            return Some((c, Source::VendorClass));
        }
    }
    if let Some(p) = a.params {
        if let Some(&(_, c)) = FINGERPRINTS.iter().find(|(f, _)| *f == p) {
            return Some((c, Source::Fingerprint));
        }
    }
    if let Some(c) = a.hostname.and_then(class_of_name) {
        return Some((c, Source::HostName));
    }
    a.vendor
        .and_then(class_of_name)
        .map(|c| (c, Source::Vendor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(n: &str) -> Option<Class> {
        classify(&Announced {
            hostname: Some(n),
            ..Announced::default()
        })
        .map(|(c, _)| c)
    }

    #[test]
    fn host_names() {
        assert_eq!(by_name("garage-cam"), Some(Class::Camera));
        assert_eq!(by_name("cam2"), Some(Class::Camera));
        assert_eq!(by_name("LGwebOSTV"), Some(Class::Tv));
        assert_eq!(by_name("living-room-tv"), Some(Class::Tv));
        assert_eq!(by_name("EPSON3F2A1C"), Some(Class::Printer));
        assert_eq!(by_name("HP-OfficeJet-Pro"), Some(Class::Printer));
        assert_eq!(by_name("tasmota-4A2B1C-2871"), Some(Class::SmartHome));
        assert_eq!(by_name("ESP_3A9F21"), Some(Class::SmartHome));
        // Not a whole token, or nothing known.
        assert_eq!(by_name("tvheadend"), None);
        assert_eq!(by_name("camilles-laptop"), None);
        assert_eq!(by_name("old-pc"), None);
    }

    #[test]
    fn dhcp_client_outranks_name_and_vendor() {
        let a = Announced {
            vendor_class: Some("MSFT 5.0"),
            hostname: Some("tv-room"),
            vendor: Some("Hangzhou Hikvision Digital Technology Co.,Ltd."),
            params: None,
        };
        assert_eq!(classify(&a), Some((Class::Computer, Source::VendorClass)));
        let win = [1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252];
        let a = Announced {
            params: Some(&win),
            hostname: Some("tv-room"),
            ..Announced::default()
        };
        assert_eq!(classify(&a), Some((Class::Computer, Source::Fingerprint)));
        let a = Announced {
            vendor: Some("Hangzhou Hikvision Digital Technology Co.,Ltd."),
            ..Announced::default()
        };
        assert_eq!(classify(&a), Some((Class::Camera, Source::Vendor)));
        assert!(Class::Camera.never_mails() && !Class::Computer.never_mails());
    }
}
