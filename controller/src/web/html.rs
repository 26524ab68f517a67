//! HTML building blocks: escaping, the page frame with its inline style sheet, badges.
//!
//! Everything that reaches a page goes through [`esc`] (text and attribute values): host
//! names, vendors, notes and report fields come from LANs and strangers.

use std::fmt::Write as _;

use smtpguard_protocol::{Action, Verdict};

use crate::abuse::date::format_utc;

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters from hostile host names are dropped, not rendered.
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path segment (CPE ids and MACs in links).
pub fn path_seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A link to a router's NOC page, its id as the text.
pub fn cpe_link(cpe_id: &str) -> String {
    format!(
        r#"<a class="mono" href="/noc/cpe/{}">{}</a>"#,
        path_seg(cpe_id),
        esc(cpe_id)
    )
}

/// A time as the UI writes it.
pub fn time(ms: u64) -> String {
    format_utc(ms)
}

/// A time zone the portal writes a household's times in.
#[derive(Debug, Clone)]
pub struct Zone {
    tz: jiff::tz::TimeZone,
    name: String,
}

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone {
            tz: jiff::tz::TimeZone::UTC,
            name: "UTC".into(),
        }
    }

    /// The zone of an IANA name (`Europe/Berlin`), if the system's database knows it.
    pub fn named(name: &str) -> Option<Zone> {
        jiff::tz::TimeZone::get(name).ok().map(|tz| Zone {
            tz,
            name: name.to_string(),
        })
    }

    /// The household's zone, else `fallback`'s, else UTC.
    pub fn pick(household: Option<&str>, fallback: &str) -> Zone {
        household
            .and_then(Zone::named)
            .or_else(|| Zone::named(fallback))
            .unwrap_or_else(Zone::utc)
    }

    /// Its IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `30 Nov 2026, 22:15 CET`: a time as a household reads it.
    pub fn time(&self, ms: u64) -> String {
        let Ok(ts) = jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        else {
            return time(ms);
        };
        ts.to_zoned(self.tz.clone())
            .strftime("%-d %b %Y, %H:%M %Z")
            .to_string()
    }
}

/// "5 minutes ago" style, relative to `now_ms`.
pub fn ago(ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => "just now".to_string(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A coloured verdict badge.
pub fn verdict_badge(v: Verdict) -> String {
    let (class, text) = match v {
        Verdict::Infected => ("bad", "Infected"),
        Verdict::Suspicious => ("warn", "Suspicious"),
        Verdict::Clean => ("ok", "Clean"),
    };
    format!(
        r#"<span class="badge {class}" data-verdict="{}">{text}</span>"#,
        v.as_str()
    )
}

/// After a history entry: how the controller learned of the change, when it was not the
/// router's alert.
pub fn change_source_note(source: crate::verdicts::ChangeSource) -> &'static str {
    match source {
        crate::verdicts::ChangeSource::Alert => "",
        crate::verdicts::ChangeSource::Telemetry => {
            r#" <span class="muted source" data-source="telemetry">(from the router's regular report; its alert did not arrive)</span>"#
        }
    }
}

/// An action badge with its end time.
pub fn action_badge(a: Action, until: Option<u64>) -> String {
    let until = until
        .map(|u| format!(" until {}", time(u)))
        .unwrap_or_default();
    match a {
        Action::Block => format!(
            r#"<span class="badge bad-soft">Mail blocked{}</span>"#,
            esc(&until)
        ),
        Action::RateLimit => format!(
            r#"<span class="badge warn-soft">Rate-limited{}</span>"#,
            esc(&until)
        ),
        Action::Monitor => r#"<span class="badge muted">Monitoring</span>"#.to_string(),
    }
}

/// The product's one name, in page titles.
pub const PRODUCT: &str = "smtpguard";

/// What subscribers see the portal called (header and title agree).
pub const PORTAL_NAME: &str = "smtpguard · Mail security";

/// The site's one script (`GET /static/ui.js`), served from this origin so the content
/// security policy needs only `script-src 'self'`; every page works without it.
/// - `data-refresh="SECONDS"`: the element is replaced, that often, by the same element of
///   a fresh copy of the page fetched in the background (not while the tab is hidden or a
///   field inside it has focus); `details` carrying a `data-key` stay open across a refresh;
/// - `data-show-for="ID"` on a checkbox: shows the password field `ID` as text while ticked;
/// - `data-tz-hint="ID"`: reveals a hint with the browser's time zone and a button that
///   puts it into the field `ID`.
pub const UI_JS: &str = r#"(function(){
document.querySelectorAll('[data-refresh]').forEach(function(el){
 var secs=Math.max(2,parseInt(el.getAttribute('data-refresh'),10)||30);
 setInterval(function(){
  if(document.hidden||el.contains(document.activeElement))return;
  fetch(location.href,{credentials:'same-origin',headers:{'X-Refresh':'1'}})
   .then(function(r){return r.ok?r.text():null})
   .then(function(t){
    if(!t)return;
    var doc=new DOMParser().parseFromString(t,'text/html');
    var fresh=el.id&&doc.getElementById(el.id);
    if(!fresh)return;
    var open=[];
    el.querySelectorAll('details[open][data-key]').forEach(function(d){open.push(d.getAttribute('data-key'));});
    el.innerHTML=fresh.innerHTML;
    el.querySelectorAll('details[data-key]').forEach(function(d){if(open.indexOf(d.getAttribute('data-key'))>=0)d.open=true;});
    el.setAttribute('data-refreshed',String(Date.now()));
   }).catch(function(){});
 },secs*1000);
});
document.querySelectorAll('[data-show-for]').forEach(function(box){
 var field=document.getElementById(box.getAttribute('data-show-for'));
 if(!field)return;
 var wrap=box.closest('[hidden]');if(wrap)wrap.hidden=false;
 box.addEventListener('change',function(){field.type=box.checked?'text':'password';});
});
document.querySelectorAll('[data-tz-hint]').forEach(function(hint){
 var field=document.getElementById(hint.getAttribute('data-tz-hint'));
 var zone='';
 try{zone=Intl.DateTimeFormat().resolvedOptions().timeZone||'';}catch(e){}
 if(!field||!zone)return;
 var name=hint.querySelector('b'),use=hint.querySelector('button');
 if(name)name.textContent=zone;
 if(use)use.addEventListener('click',function(){field.value=zone;});
 hint.hidden=false;
});
})();"#;

/// A table with the semantics screen readers and phones need: a caption, a `thead` of
/// `th scope="col"`, and a `data-label` on every cell so the phone layout (`table.cards`)
/// shows each row as a card with labelled fields.
#[derive(Debug)]
pub struct Table {
    html: String,
    labels: Vec<String>,
}

impl Table {
    /// A table with `caption` (text) and column headings (already-escaped HTML, e.g. sort
    /// links), plain labels for the phone cards from `labels`.
    pub fn new(id: &str, caption: &str, headings: &[(&str, String)]) -> Table {
        let mut html = String::new();
        let id_attr = if id.is_empty() {
            String::new()
        } else {
            format!(r#" id="{}""#, esc(id))
        };
        let _ = write!(
            html,
            r#"<table class="cards"{id_attr}><caption>{}</caption><thead><tr>"#,
            esc(caption)
        );
        for (_, h) in headings {
            let _ = write!(html, r#"<th scope="col">{h}</th>"#);
        }
        html.push_str("</tr></thead><tbody>");
        Table {
            html,
            labels: headings.iter().map(|(l, _)| esc(l)).collect(),
        }
    }

    /// A table whose headings are plain text.
    pub fn plain(id: &str, caption: &str, headings: &[&str]) -> Table {
        let h: Vec<(&str, String)> = headings.iter().map(|h| (*h, esc(h))).collect();
        Table::new(id, caption, &h)
    }

    /// Adds a row: `attrs` go on the `tr` (already escaped), cells are already-escaped HTML
    /// with an optional class each.
    pub fn row(&mut self, attrs: &str, cells: &[(&str, String)]) {
        let _ = write!(self.html, "<tr{attrs}>");
        for (i, (class, cell)) in cells.iter().enumerate() {
            let label = self.labels.get(i).map(String::as_str).unwrap_or("");
            let class = if class.is_empty() {
                String::new()
            } else {
                format!(r#" class="{class}""#)
            };
            let _ = write!(self.html, r#"<td data-label="{label}"{class}>{cell}</td>"#);
        }
        self.html.push_str("</tr>");
    }

    /// The finished table.
    pub fn finish(mut self) -> String {
        self.html.push_str("</tbody></table>");
        self.html
    }
}

const CSS: &str = r#"
:root{--bg:#f4f6f9;--card:#fff;--ink:#1b2430;--muted:#556070;--line:#e1e6ee;--brand:#1f5fbf;
--bad:#c62828;--bad-bg:#fdecec;--warn:#8a4f00;--warn-bg:#fff4e0;--ok:#2e7d32;--ok-bg:#e8f5e9}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Ubuntu,sans-serif;background:var(--bg);color:var(--ink)}
header.top{background:#12263f;color:#fff;padding:0 20px;display:flex;align-items:center;gap:24px;min-height:54px;flex-wrap:wrap}
header.top .logo{font-weight:700;letter-spacing:.3px;font-size:17px}
header.top .logo span{color:#7fb2ff}
header.top nav{display:flex;gap:4px;flex-wrap:wrap}
header.top nav a{color:#cfe0ff;text-decoration:none;padding:6px 10px;border-radius:6px}
header.top nav a[aria-current],header.top nav a:hover{background:#213b5e;color:#fff}
header.top .who{margin-left:auto;color:#dfe9f7;font-size:14px}
header.top form{margin-left:auto}
header.top .who+form{margin-left:0}
header.top button{background:transparent;border:1px solid #4a6384;color:#dfe9f7;padding:5px 12px;border-radius:6px;cursor:pointer}
main{max-width:1180px;margin:0 auto;padding:22px 20px 60px}
main.narrow{max-width:720px}
h1{font-size:24px;margin:4px 0 16px}
h2{font-size:18px;margin:26px 0 10px}
h3{font-size:16px;margin:0 0 6px}
.sub{color:var(--muted);margin:-10px 0 18px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.stat b{display:block;font-size:28px;line-height:1.2}
.stat span{color:var(--muted);font-size:13px}
.stat.bad b{color:var(--bad)} .stat.warn b{color:var(--warn)} .stat.ok b{color:var(--ok)}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:16px 18px;margin:12px 0}
.card.infected{border-left:6px solid var(--bad)}
.card.suspicious{border-left:6px solid var(--warn)}
.card.clean{border-left:6px solid var(--ok)}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden}
th,td{text-align:left;padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#f0f3f8;font-size:13px;color:var(--muted);font-weight:600}
tr:last-child td{border-bottom:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.badge{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12.5px;font-weight:600;white-space:nowrap}
.badge.bad{background:var(--bad);color:#fff} .badge.warn{background:#f0a020;color:#231600}
.badge.ok{background:var(--ok-bg);color:var(--ok)} .badge.muted{background:#eef1f5;color:var(--muted)}
.badge.bad-soft{background:var(--bad-bg);color:var(--bad)} .badge.warn-soft{background:var(--warn-bg);color:var(--warn)}
.muted{color:var(--muted)}
td.t{white-space:nowrap}
ul.ev{margin:6px 0 0;padding-left:20px} ul.ev li{margin:2px 0}
.what{font-size:16px;margin:8px 0}
.doing{background:var(--bad-bg);border-radius:8px;padding:10px 12px;margin:10px 0}
.doing.rl{background:var(--warn-bg)}
.steps{margin:8px 0;padding-left:22px} .steps li{margin:4px 0}
.btn{display:inline-block;background:var(--brand);color:#fff;border:0;border-radius:8px;padding:9px 16px;font-size:15px;cursor:pointer;text-decoration:none}
.btn.secondary{background:#e9eef6;color:var(--ink)}
.btn.danger{background:var(--bad)}
input[type=text],input[type=password],textarea,select{width:100%;padding:9px 10px;border:1px solid #c5cfdc;border-radius:8px;font:inherit;background:#fff}
textarea{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
label{display:block;font-weight:600;margin:10px 0 4px}
.flash{padding:10px 14px;border-radius:8px;margin:10px 0;background:var(--ok-bg);color:var(--ok)}
.flash.err{background:var(--bad-bg);color:var(--bad)}
.login{max-width:400px;margin:8vh auto;background:#fff;border:1px solid var(--line);border-radius:14px;padding:26px}
.login h1{margin-top:0}
.row{display:flex;gap:12px;align-items:center;flex-wrap:wrap}
.timeline{border-left:3px solid var(--line);margin:8px 0 0 6px;padding-left:16px}
.timeline div{margin:0 0 12px}
a{color:var(--brand)}
.skip{position:absolute;left:-9999px;top:0;background:#fff;color:var(--brand);padding:8px 12px;z-index:9}
.skip:focus{left:8px}
.stat{display:block;color:inherit;text-decoration:none}
a.stat:hover{border-color:var(--brand)}
caption{text-align:left;font-weight:600;padding:8px 10px;color:var(--ink)}
form.search{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:8px 12px;align-items:end;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;margin:0 0 14px}
form.search label{margin:0 0 4px;font-size:13px}
form.search .wide{grid-column:span 2}
nav.pages{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin:10px 0}
th a{color:inherit}
h1.id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:22px;word-break:break-all}
.wrap{overflow-wrap:anywhere}
dl.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:8px 16px;margin:0 0 12px;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
dl.facts dt{font-size:13px;color:var(--muted);font-weight:600}
dl.facts dd{margin:0}
label.inline{display:inline;font-weight:400;margin:0}
td form{margin:0 0 6px}
.links{gap:18px}
@media (max-width:600px){main{padding:14px 12px 40px}h1{font-size:21px}th,td{padding:7px 6px}.hide-sm{display:none}
form.search .wide{grid-column:auto}
table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:100%}
table.cards thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
table.cards tr{border-bottom:1px solid var(--line);padding:6px 0}
table.cards td{border:0;padding:3px 10px;overflow-wrap:anywhere}
table.cards td[data-label]::before{content:attr(data-label);display:block;font-size:12px;color:var(--muted);font-weight:600}
td.t{white-space:normal}
header.top{padding:6px 12px;gap:8px}}
"#;

/// Which navigation a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav<'a> {
    /// No navigation (login).
    None,
    /// NOC navigation, with the current section and who is signed in (name and role).
    Noc(&'static str, &'a str, &'a str),
    /// Subscriber portal.
    Portal,
}

/// A whole page. `body` is already-escaped HTML; `csrf` is needed for the logout button.
pub fn page(title: &str, nav: Nav<'_>, csrf: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + CSS.len() + 1024);
    let _ = write!(
        out,
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{} · {PRODUCT}</title><style>{CSS}</style><script src="/static/ui.js" defer></script></head><body><a class="skip" href="#main">Skip to content</a>"##,
        esc(title)
    );
    let logout = csrf
        .map(|c| {
            format!(
                r#"<form method="post" action="/logout"><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form>"#,
                esc(c)
            )
        })
        .unwrap_or_default();
    match nav {
        Nav::None => {}
        Nav::Noc(on, who, role) => {
            out.push_str(
                r#"<header class="top"><div class="logo">smtp<span>guard</span> NOC</div><nav aria-label="NOC sections">"#,
            );
            for (href, key, text) in [
                ("/noc", "fleet", "Fleet"),
                ("/noc/devices", "devices", "Devices"),
                ("/noc/campaigns", "campaigns", "Campaigns"),
                ("/noc/policy", "policy", "Policy"),
                ("/noc/abuse", "abuse", "Abuse reports"),
                ("/noc/releases", "releases", "Release requests"),
                ("/noc/senders", "senders", "Senders"),
                ("/noc/audit", "audit", "Audit log"),
            ] {
                let current = if key == on {
                    r#" aria-current="page""#
                } else {
                    ""
                };
                let _ = write!(out, r#"<a href="{href}"{current}>{text}</a>"#);
            }
            let _ = write!(
                out,
                r#"</nav><span class="who" id="signed-in">{} · {}</span>{logout}</header><main id="main">"#,
                esc(who),
                esc(role)
            );
        }
        Nav::Portal => {
            let _ = write!(
                out,
                r#"<header class="top"><div class="logo">{PORTAL_NAME}</div>{logout}</header><main class="narrow" id="main">"#
            );
        }
    }
    if nav == Nav::None {
        out.push_str(r#"<main id="main">"#);
    }
    out.push_str(body);
    out.push_str("</main></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_and_controls() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(esc("a\u{0}b\u{1b}[31m"), "ab[31m");
        assert_eq!(path_seg("cpe a/../x"), "cpe%20a%2F..%2Fx");
        assert_eq!(path_seg("02:00:00:00:00:66"), "02:00:00:00:00:66");
    }

    #[test]
    fn household_times_are_in_their_zone_with_summer_time() {
        let berlin = Zone::pick(Some("Europe/Berlin"), "UTC");
        // 2025-03-04 13:05 UTC (winter) and 2025-07-04 13:05 UTC (summer).
        assert_eq!(berlin.time(1_741_093_500_000), "4 Mar 2025, 14:05 CET");
        assert_eq!(berlin.time(1_751_634_300_000), "4 Jul 2025, 15:05 CEST");
        assert_eq!(Zone::pick(Some("Mars/Olympus"), "UTC").name(), "UTC");
        assert_eq!(Zone::utc().time(0), "1 Jan 1970, 00:00 UTC");
    }

    #[test]
    fn page_titles_are_escaped() {
        let p = page("<b>", Nav::Portal, Some("t\"k"), "");
        assert!(p.contains("&lt;b&gt; · smtpguard"));
        assert!(p.contains(r#"<main class="narrow" id="main">"#));
        assert!(p.contains(r#"value="t&quot;k""#));
    }
}
