//! What the NOC's server-side lists share: reading the query string ([`given`],
//! [`page_number`], [`direction`], [`per_page`]), LIKE patterns ([`like`]), links that keep
//! a list's filters ([`Links`]), sortable column headings ([`Links::sort_head`]) and the
//! pager with "page X of Y" ([`Links::pager`]).
//!
//! The fleet ([`super::fleet`]), campaign ([`super::campaign_page`]) and abuse
//! ([`super::abuse_desk`]) lists use them, so their links, wording and limits agree.

use std::fmt::Write as _;

use serde::Deserialize;

use super::html::{esc, path_seg};
use super::WebError;
use crate::verdicts::plural;

/// Rows the API returns per page unless asked (`per_page`).
pub const API_PER_PAGE: u32 = 50;
/// Most rows the API returns per page.
pub const API_PER_PAGE_MAX: u32 = 500;

/// A query-string value that was given: trimmed, not empty.
pub(crate) fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `%text%` for `LIKE ... ESCAPE '\'`, with the text's own wildcards escaped.
pub(crate) fn like(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The 1-based page asked for (1 when not given).
///
/// # Errors
/// [`WebError::BadRequest`] for anything but a number from 1.
pub(crate) fn page_number(v: &Option<String>) -> Result<u32, WebError> {
    match given(v) {
        None => Ok(1),
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| WebError::BadRequest("page must be a number from 1".into())),
    }
}

/// Whether the order is descending: `asc`, `desc`, or `default_desc` when not given.
///
/// # Errors
/// [`WebError::BadRequest`] for any other word.
pub(crate) fn direction(v: &Option<String>, default_desc: bool) -> Result<bool, WebError> {
    match given(v) {
        None => Ok(default_desc),
        Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(_) => Err(WebError::BadRequest("dir must be asc or desc".into())),
    }
}

/// Rows per page of an API list: [`API_PER_PAGE`] unless given, at most
/// [`API_PER_PAGE_MAX`].
///
/// # Errors
/// [`WebError::BadRequest`] for anything but a number from 1 to [`API_PER_PAGE_MAX`].
pub(crate) fn per_page(v: &Option<String>) -> Result<u32, WebError> {
    match given(v) {
        None => Ok(API_PER_PAGE),
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=API_PER_PAGE_MAX).contains(p))
            .ok_or_else(|| {
                WebError::BadRequest(format!(
                    "per_page must be a number from 1 to {API_PER_PAGE_MAX}"
                ))
            }),
    }
}

/// The order and page a list is asked for, the part of its query string every list shares
/// (flattened into each list's query struct).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Order {
    /// Sort key, one of the list's ([`SortKey::ALL`]).
    #[serde(default)]
    pub sort: Option<String>,
    /// `asc` or `desc`.
    #[serde(default)]
    pub dir: Option<String>,
    /// 1-based page.
    #[serde(default)]
    pub page: Option<String>,
    /// API only: rows per page ([`per_page`]).
    #[serde(default)]
    pub per_page: Option<String>,
}

impl Order {
    /// The list's links at `path#anchor` with `filters`, keeping this sort and direction.
    pub(crate) fn links<'a>(
        &'a self,
        path: &'static str,
        anchor: &'static str,
        filters: Vec<(&'static str, Option<&'a str>)>,
    ) -> Links<'a> {
        Links {
            path,
            anchor,
            filters,
            sort: given(&self.sort),
            dir: given(&self.dir),
        }
    }

    /// The sort asked for, or the list's default (the first of [`SortKey::ALL`]).
    ///
    /// # Errors
    /// [`WebError::BadRequest`] naming the keys there are.
    pub(crate) fn sort<S: SortKey>(&self) -> Result<S, WebError> {
        match given(&self.sort) {
            None => Ok(S::ALL[0].0),
            Some(k) => S::ALL
                .iter()
                .find(|(_, key)| *key == k)
                .map(|(s, _)| *s)
                .ok_or_else(|| {
                    let keys: Vec<&str> = S::ALL.iter().map(|(_, k)| *k).collect();
                    WebError::BadRequest(format!("sort must be one of {}", keys.join(", ")))
                }),
        }
    }

    /// Descending? ([`direction`]).
    ///
    /// # Errors
    /// As [`direction`].
    pub(crate) fn desc(&self, default_desc: bool) -> Result<bool, WebError> {
        direction(&self.dir, default_desc)
    }

    /// The page ([`page_number`]).
    ///
    /// # Errors
    /// As [`page_number`].
    pub(crate) fn page(&self) -> Result<u32, WebError> {
        page_number(&self.page)
    }

    /// Rows per API page ([`per_page`]).
    ///
    /// # Errors
    /// As [`per_page`].
    pub(crate) fn per_page(&self) -> Result<u32, WebError> {
        per_page(&self.per_page)
    }
}

/// A list's orders, each with its query-string key.
pub(crate) trait SortKey: Copy + PartialEq + Sized + 'static {
    /// Every order and its key; the first is the default.
    const ALL: &'static [(Self, &'static str)];

    /// This order's key.
    fn key(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or(Self::ALL[0].1, |(_, k)| k)
    }
}

/// The row offset of a 1-based page.
pub(crate) fn offset(page: u32, per_page: u32) -> u64 {
    u64::from(page.saturating_sub(1)) * u64::from(per_page)
}

/// What a list is called, for its pager: element ids, the noun, the navigation label.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noun {
    /// Prefix of the pager's element ids (`{id}-count`).
    pub id: &'static str,
    /// One row, in words (`CPE`).
    pub one: &'static str,
    /// Several rows, in words (`CPEs`).
    pub many: &'static str,
}

/// The links of one list page: its path and anchor, the filters that were given (kept on
/// every link), and the current sort and direction as given.
#[derive(Debug, Clone)]
pub(crate) struct Links<'a> {
    /// `/noc`, `/noc/campaigns`, ...
    pub path: &'static str,
    /// The list's anchor (`cpes`), so a link lands on the list.
    pub anchor: &'static str,
    /// The filters, by their query-string names (sort and page aside).
    pub filters: Vec<(&'static str, Option<&'a str>)>,
    /// `sort` as given.
    pub sort: Option<&'a str>,
    /// `dir` as given.
    pub dir: Option<&'a str>,
}

impl Links<'_> {
    /// This list's link with `sort`, `dir` and `page` replaced (others kept).
    pub fn href(&self, sort: Option<&str>, dir: Option<&str>, page: Option<u32>) -> String {
        let page = page.map(|p| p.to_string());
        let mut parts = Vec::new();
        for (k, v) in self.filters.iter().copied().chain([
            ("sort", sort.or(self.sort)),
            ("dir", dir.or(self.dir)),
            ("page", page.as_deref()),
        ]) {
            if let Some(v) = v {
                parts.push(format!("{k}={}", path_seg(v)));
            }
        }
        if parts.is_empty() {
            format!("{}#{}", self.path, self.anchor)
        } else {
            format!("{}?{}#{}", self.path, parts.join("&"), self.anchor)
        }
    }

    /// The filters only, each as `&name=value`, for export links.
    pub fn filter_query(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.filters {
            if let Some(v) = v {
                let _ = write!(out, "&{k}={}", path_seg(v));
            }
        }
        out
    }

    /// A sortable column heading: a link that sorts by `key` (ascending first, or
    /// descending when `desc_first`; the other way when it is already the order), with an
    /// arrow and `aria-sort` on the current one. `current` is the key in force.
    pub fn sort_head(
        &self,
        label: &'static str,
        key: &str,
        current: &str,
        desc: bool,
        desc_first: bool,
    ) -> (&'static str, String) {
        let on = key == current;
        let (arrow, next, sort) = match (on, desc) {
            (true, true) => (" ↓", "asc", "descending"),
            (true, false) => (" ↑", "desc", "ascending"),
            (false, _) => ("", if desc_first { "desc" } else { "asc" }, "none"),
        };
        (
            label,
            format!(
                r#"<a href="{}" aria-sort="{sort}">{label}{arrow}</a>"#,
                esc(&self.href(Some(key), Some(next), Some(1)))
            ),
        )
    }

    /// "1–50 of 1234 CPEs", previous and next links that keep the filters and the order,
    /// "page X of Y".
    pub fn pager(&self, noun: Noun, page: u32, per_page: u32, total: u64) -> String {
        let rows = u64::from(per_page.max(1));
        let pages = total.div_ceil(rows).max(1);
        let page = u64::from(page);
        let first = (page - 1) * rows + 1;
        let last = (page * rows).min(total);
        let mut s = format!(
            r#"<nav class="pages" aria-label="Pages of {}">"#,
            esc(noun.many)
        );
        if total == 0 {
            let _ = write!(
                s,
                r#"<span id="{}-count">No {} matches.</span>"#,
                noun.id,
                esc(noun.one)
            );
        } else if first > total {
            let _ = write!(
                s,
                r#"<span id="{}-count">Past the end: {}</span>"#,
                noun.id,
                esc(&plural(total, noun.one, noun.many))
            );
        } else {
            let _ = write!(
                s,
                r#"<span id="{}-count">{first}–{last} of {}</span>"#,
                noun.id,
                esc(&plural(total, noun.one, noun.many))
            );
        }
        if page > 1 {
            let prev = (page - 1).min(pages);
            let _ = write!(
                s,
                r#"<a href="{}" rel="prev">← Previous</a>"#,
                esc(&self.href(None, None, u32::try_from(prev).ok()))
            );
        }
        if page < pages {
            let _ = write!(
                s,
                r#"<a href="{}" rel="next">Next →</a>"#,
                esc(&self.href(None, None, u32::try_from(page + 1).ok()))
            );
        }
        let _ = write!(
            s,
            r#"<span class="muted" id="{}-page">page {page} of {pages}</span></nav>"#,
            noun.id
        );
        s
    }

    /// "Export these ...: CSV · JSON" for `/api/export/{what}` with this list's filters.
    pub fn export_links(&self, what: &str, label: &str) -> String {
        let filters = esc(&self.filter_query());
        format!(
            r#"<p class="muted exports">Export {}: <a href="/api/export/{what}?format=csv{filters}">CSV</a> · <a href="/api/export/{what}?format=json{filters}">JSON</a></p>"#,
            esc(label)
        )
    }
}

/// A select of a search form: "any" and the given values, `current` selected.
pub(crate) fn options(
    name: &str,
    label: &str,
    current: Option<&str>,
    values: &[(&str, &str)],
) -> String {
    let mut s = format!(
        r#"<div><label for="f-{name}">{label}</label><select id="f-{name}" name="{name}"><option value="">any</option>"#
    );
    for (v, text) in values {
        let sel = if current == Some(*v) { " selected" } else { "" };
        let _ = write!(
            s,
            r#"<option value="{}"{sel}>{}</option>"#,
            esc(v),
            esc(text)
        );
    }
    s.push_str("</select></div>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }

    #[test]
    fn paging_values_are_checked() {
        assert_eq!(page_number(&None).unwrap(), 1);
        assert_eq!(page_number(&Some(" 7 ".into())).unwrap(), 7);
        assert!(page_number(&Some("0".into())).is_err());
        assert!(direction(&Some("up".into()), false).is_err());
        assert!(direction(&None, true).unwrap());
        assert_eq!(per_page(&None).unwrap(), API_PER_PAGE);
        assert_eq!(per_page(&Some("500".into())).unwrap(), 500);
        assert!(per_page(&Some("501".into())).is_err());
        assert_eq!(offset(3, 50), 100);
    }

    #[test]
    fn the_pager_keeps_the_filters_and_counts_pages() {
        let links = Links {
            path: "/noc/abuse",
            anchor: "reports",
            filters: vec![("q", Some("203.0.113.7")), ("status", None)],
            sort: Some("time"),
            dir: None,
        };
        let noun = Noun {
            id: "report",
            one: "report",
            many: "reports",
        };
        let p = links.pager(noun, 2, 50, 120);
        assert!(p.contains("51–100 of 120 reports"), "{p}");
        assert!(p.contains("page 2 of 3"), "{p}");
        assert!(
            p.contains(
                r#"href="/noc/abuse?q=203.0.113.7&amp;sort=time&amp;page=3#reports" rel="next""#
            ),
            "{p}"
        );
        assert!(links.pager(noun, 1, 50, 0).contains("No report matches."));
        assert!(links.pager(noun, 1, 50, 1).contains("1–1 of 1 report<"));
        assert_eq!(links.filter_query(), "&q=203.0.113.7");
    }
}
