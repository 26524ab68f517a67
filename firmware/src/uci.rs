//! A small, strict parser for OpenWrt's UCI configuration files (`/etc/config/*`).
//!
//! On OpenWrt the agent reads `/etc/config/smtpguard`; elsewhere it reads TOML with the same
//! field names. [`parse`] turns the text into a [`Package`] of [`Section`]s, each holding
//! options (one value) and lists (several values), in file order:
//!
//! ```text
//! package smtpguard                  # optional, first statement only
//!
//! config capture 'lan'               # section of type `capture` named `lan`
//!     option interface 'br-lan'      # option: one value
//!     list mail_ports '25'           # list: one value per line, in order
//!     list mail_ports '587'
//!
//! config led                         # anonymous section
//!     option name "green:wps"
//! ```
//!
//! Quoting follows UCI (and the shell): `'single'` quotes take everything literally up to the
//! next `'`; `"double"` quotes and bare words take a backslash as "the next character
//! literally"; adjacent pieces join into one word, so `uci export`'s `'it'\''s'` reads as
//! `it's`. Quoted values may span lines. A `#` after whitespace (or at the start of a line)
//! starts a comment.
//!
//! Strict where UCI is lenient, so that a typo is an error with a line number instead of a
//! silently ignored setting: unknown keywords, a statement with too few or too many words, an
//! option outside a section, a repeated section name or option, a name that both an `option`
//! and a `list` use, a `#` glued to a word, `;` statement separators and backslash line
//! continuations are all rejected.

use std::fmt;

/// Largest configuration text [`parse`] accepts, checked before anything is allocated.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

/// Why a UCI text was rejected. Every variant except [`UciError::TooLarge`] carries the 1-based
/// line where the problem starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UciError {
    /// The text is larger than [`MAX_INPUT_BYTES`].
    #[error("configuration is {size} bytes, more than the {max} bytes allowed")]
    TooLarge {
        /// Size of the text.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A quote opened on `line` is never closed.
    #[error("line {line}: unterminated {quote} quote")]
    UnterminatedQuote {
        /// Line of the opening quote.
        line: usize,
        /// The quote character.
        quote: char,
    },
    /// A backslash at the very end of the text escapes nothing.
    #[error("line {line}: backslash at end of input")]
    DanglingBackslash {
        /// Line of the backslash.
        line: usize,
    },
    /// Syntax that UCI has but this parser refuses (see the module docs).
    #[error("line {line}: {what} is not supported")]
    Unsupported {
        /// Line of the construct.
        line: usize,
        /// What was found.
        what: &'static str,
    },
    /// The first word of a statement is not `package`, `config`, `option` or `list`.
    #[error("line {line}: unknown keyword {keyword:?} (expected config, option or list)")]
    UnknownKeyword {
        /// Line of the statement.
        line: usize,
        /// The word found.
        keyword: String,
    },
    /// A statement has the wrong number of words.
    #[error("line {line}: {keyword} expects {expected}")]
    WrongArity {
        /// Line of the statement.
        line: usize,
        /// The statement's keyword.
        keyword: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// `option` or `list` before any `config` line.
    #[error("line {line}: {keyword} outside of a config section")]
    OutsideSection {
        /// Line of the statement.
        line: usize,
        /// `option` or `list`.
        keyword: &'static str,
    },
    /// `package` after other statements, or twice.
    #[error("line {line}: package must be the first statement, and appear once")]
    MisplacedPackage {
        /// Line of the statement.
        line: usize,
    },
    /// A package, section type, section name or option name with characters UCI does not allow.
    #[error("line {line}: invalid {what} {name:?} (letters, digits and '_'{dash} only)")]
    InvalidName {
        /// Line of the statement.
        line: usize,
        /// Which kind of name.
        what: &'static str,
        /// The name found.
        name: String,
        /// `", '-'"` where a dash is also allowed, empty otherwise.
        dash: &'static str,
    },
    /// Two sections with the same name.
    #[error("line {line}: section {name:?} is already defined on line {first}")]
    DuplicateSection {
        /// Line of the second definition.
        line: usize,
        /// The section name.
        name: String,
        /// Line of the first definition.
        first: usize,
    },
    /// The same option twice in a section.
    #[error("line {line}: option {name:?} is already set on line {first}")]
    DuplicateOption {
        /// Line of the second setting.
        line: usize,
        /// The option name.
        name: String,
        /// Line of the first setting.
        first: usize,
    },
    /// A name used both with `option` and with `list` in one section.
    #[error(
        "line {line}: {name:?} is used both as an option and as a list (first on line {first})"
    )]
    OptionListMix {
        /// Line of the conflicting statement.
        line: usize,
        /// The name.
        name: String,
        /// Line where the name was first used.
        first: usize,
    },
}

impl UciError {
    /// The 1-based line the error points at (`None` for [`UciError::TooLarge`]).
    pub fn line(&self) -> Option<usize> {
        match self {
            UciError::TooLarge { .. } => None,
            UciError::UnterminatedQuote { line, .. }
            | UciError::DanglingBackslash { line }
            | UciError::Unsupported { line, .. }
            | UciError::UnknownKeyword { line, .. }
            | UciError::WrongArity { line, .. }
            | UciError::OutsideSection { line, .. }
            | UciError::MisplacedPackage { line }
            | UciError::InvalidName { line, .. }
            | UciError::DuplicateSection { line, .. }
            | UciError::DuplicateOption { line, .. }
            | UciError::OptionListMix { line, .. } => Some(*line),
        }
    }
}

/// The value of one option or list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Set by `option NAME VALUE`.
    Single(String),
    /// Built by one or more `list NAME VALUE` lines, in file order.
    List(Vec<String>),
}

/// One option or list of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    name: String,
    value: Value,
    line: usize,
}

impl Entry {
    /// The option or list name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The line where it was first set (for error messages of the code that maps it).
    pub fn line(&self) -> usize {
        self.line
    }
}

/// A `config TYPE [NAME]` section and its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    section_type: String,
    name: Option<String>,
    line: usize,
    entries: Vec<Entry>,
}

impl Section {
    /// The section type (`config agent ...` has type `agent`).
    pub fn section_type(&self) -> &str {
        &self.section_type
    }

    /// The section name, `None` for an anonymous section.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The line of the `config` statement.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The options and lists in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry called `name`, if set.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The value of the single-valued option `name` (`None` if absent or a list).
    pub fn option(&self, name: &str) -> Option<&str> {
        match self.entry(name).map(Entry::value) {
            Some(Value::Single(v)) => Some(v),
            _ => None,
        }
    }

    /// The values of the list `name` (`None` if absent or a single option).
    pub fn list(&self, name: &str) -> Option<&[String]> {
        match self.entry(name).map(Entry::value) {
            Some(Value::List(v)) => Some(v),
            _ => None,
        }
    }
}

/// A parsed UCI file: an optional package name and its sections in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Package {
    name: Option<String>,
    sections: Vec<Section>,
}

impl Package {
    /// The name from a `package` statement (files under `/etc/config` usually have none; the
    /// file name is the package name).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// All sections in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The section named `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
    }

    /// The sections of type `section_type`, named or anonymous, in file order (what UCI calls
    /// `@type[0]`, `@type[1]`, ...).
    pub fn sections_of_type<'a>(
        &'a self,
        section_type: &'a str,
    ) -> impl Iterator<Item = &'a Section> + 'a {
        self.sections
            .iter()
            .filter(move |s| s.section_type == section_type)
    }
}

/// Reads a UCI boolean the way OpenWrt tools do: `1`, `yes`, `on`, `true`, `enabled` are true;
/// `0`, `no`, `off`, `false`, `disabled` are false; anything else is `None`.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "yes" | "on" | "true" | "enabled" => Some(true),
        "0" | "no" | "off" | "false" | "disabled" => Some(false),
        _ => None,
    }
}

/// Parses the text of a UCI configuration file.
///
/// # Errors
/// A [`UciError`] naming the line of the first problem found; nothing is returned for a text
/// with any error.
pub fn parse(text: &str) -> Result<Package, UciError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(UciError::TooLarge {
            size: text.len(),
            max: MAX_INPUT_BYTES,
        });
    }
    let mut lexer = Lexer::new(text);
    let mut package = Package::default();
    let mut seen_statement = false;
    while let Some(stmt) = lexer.statement()? {
        let line = stmt.line;
        let mut words = stmt.words.into_iter();
        let keyword = words.next().unwrap_or_default();
        let args: Vec<String> = words.collect();
        match keyword.as_str() {
            "package" => {
                if seen_statement {
                    return Err(UciError::MisplacedPackage { line });
                }
                let [name] = exactly::<1>(args, line, "package", "a name")?;
                check_name(&name, line, "package name", false)?;
                package.name = Some(name);
            }
            "config" => {
                let (section_type, name) = match <[String; 2]>::try_from(args) {
                    Ok([t, n]) => (t, Some(n)),
                    Err(args) => match <[String; 1]>::try_from(args) {
                        Ok([t]) => (t, None),
                        Err(_) => {
                            return Err(UciError::WrongArity {
                                line,
                                keyword: "config",
                                expected: "a type and an optional name",
                            })
                        }
                    },
                };
                check_name(&section_type, line, "section type", true)?;
                if let Some(n) = &name {
                    check_name(n, line, "section name", false)?;
                    if let Some(first) = package.section(n) {
                        return Err(UciError::DuplicateSection {
                            line,
                            name: n.clone(),
                            first: first.line,
                        });
                    }
                }
                package.sections.push(Section {
                    section_type,
                    name,
                    line,
                    entries: Vec::new(),
                });
            }
            "option" | "list" => {
                let is_list = keyword == "list";
                let kw = if is_list { "list" } else { "option" };
                let section = package
                    .sections
                    .last_mut()
                    .ok_or(UciError::OutsideSection { line, keyword: kw })?;
                let [name, value] = exactly::<2>(args, line, kw, "a name and a value")?;
                check_name(&name, line, "option name", false)?;
                add_entry(section, name, value, is_list, line)?;
            }
            _ => return Err(UciError::UnknownKeyword { line, keyword }),
        }
        seen_statement = true;
    }
    Ok(package)
}

fn exactly<const N: usize>(
    args: Vec<String>,
    line: usize,
    keyword: &'static str,
    expected: &'static str,
) -> Result<[String; N], UciError> {
    <[String; N]>::try_from(args).map_err(|_| UciError::WrongArity {
        line,
        keyword,
        expected,
    })
}

fn add_entry(
    section: &mut Section,
    name: String,
    value: String,
    is_list: bool,
    line: usize,
) -> Result<(), UciError> {
    match section.entries.iter_mut().find(|e| e.name == name) {
        None => {
            let value = if is_list {
                Value::List(vec![value])
            } else {
                Value::Single(value)
            };
            section.entries.push(Entry { name, value, line });
            Ok(())
        }
        Some(Entry {
            value: Value::List(values),
            ..
        }) if is_list => {
            values.push(value);
            Ok(())
        }
        Some(existing) if is_list => Err(UciError::OptionListMix {
            line,
            name,
            first: existing.line,
        }),
        Some(existing) => match existing.value {
            Value::Single(_) => Err(UciError::DuplicateOption {
                line,
                name,
                first: existing.line,
            }),
            Value::List(_) => Err(UciError::OptionListMix {
                line,
                name,
                first: existing.line,
            }),
        },
    }
}

/// UCI names: ASCII letters, digits and `_` (section types may also contain `-`).
fn check_name(name: &str, line: usize, what: &'static str, dash: bool) -> Result<(), UciError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dash && b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(UciError::InvalidName {
            line,
            what,
            name: name.to_owned(),
            dash: if dash { ", '-'" } else { "" },
        })
    }
}

/// The words of one statement and the line it starts on.
struct Statement {
    line: usize,
    words: Vec<String>,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl fmt::Debug for Lexer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lexer").field("line", &self.line).finish()
    }
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer {
            chars: text.chars().peekable(),
            line: 1,
        }
    }

    /// Next character, counting lines.
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next();
        if c == Some('\n') {
            self.line += 1;
        }
        c
    }

    /// The next non-empty statement, or `None` at the end of the text.
    fn statement(&mut self) -> Result<Option<Statement>, UciError> {
        let mut words = Vec::new();
        let mut first_line = self.line;
        loop {
            match self.chars.peek() {
                None => break,
                Some('\n') => {
                    self.bump();
                    if !words.is_empty() {
                        break;
                    }
                }
                Some(' ' | '\t' | '\r') => {
                    self.bump();
                }
                Some('#') => {
                    while self.chars.peek().is_some_and(|&c| c != '\n') {
                        self.bump();
                    }
                }
                Some(_) => {
                    if words.is_empty() {
                        first_line = self.line;
                    }
                    words.push(self.word()?);
                }
            }
        }
        Ok((!words.is_empty()).then_some(Statement {
            line: first_line,
            words,
        }))
    }

    /// One word: bare, quoted and escaped pieces joined until whitespace or a line end.
    fn word(&mut self) -> Result<String, UciError> {
        let mut word = String::new();
        loop {
            let line = self.line;
            match self.chars.peek().copied() {
                None | Some(' ' | '\t' | '\r' | '\n') => return Ok(word),
                Some('#') => {
                    return Err(UciError::Unsupported {
                        line,
                        what: "'#' inside a word (quote the value)",
                    })
                }
                Some(';') => {
                    return Err(UciError::Unsupported {
                        line,
                        what: "';' statement separator (put one statement per line)",
                    })
                }
                Some('\'') => {
                    self.bump();
                    loop {
                        match self.bump() {
                            None => return Err(UciError::UnterminatedQuote { line, quote: '\'' }),
                            Some('\'') => break,
                            Some(c) => word.push(c),
                        }
                    }
                }
                Some('"') => {
                    self.bump();
                    loop {
                        match self.bump() {
                            None => return Err(UciError::UnterminatedQuote { line, quote: '"' }),
                            Some('"') => break,
                            Some('\\') => word.push(self.escaped()?),
                            Some(c) => word.push(c),
                        }
                    }
                }
                Some('\\') => {
                    self.bump();
                    word.push(self.escaped()?);
                }
                Some(c) => {
                    self.bump();
                    word.push(c);
                }
            }
        }
    }

    /// The character after a backslash, taken literally.
    fn escaped(&mut self) -> Result<char, UciError> {
        let line = self.line;
        match self.chars.peek().copied() {
            None => Err(UciError::DanglingBackslash { line }),
            Some('\n' | '\r') => Err(UciError::Unsupported {
                line,
                what: "backslash line continuation",
            }),
            Some(c) => {
                self.bump();
                Ok(c)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# smtpguard configuration
package smtpguard

config agent 'main'
\toption interface 'br-lan'
\toption mode \"enforce\"   # trailing comment
\tlist allow_mac '00:11:22:33:44:55'
\tlist allow_mac 66:77:88:99:aa:bb

config controller 'controller'
\toption url 'mqtts://controller.isp.example:8883'
\toption password 'p#ss w0rd'
\toption empty ''

config relay
\toption host smtp.isp.example
config relay
\toption host 'relay2.isp.example'
";

    #[test]
    fn parses_sections_options_and_lists_in_order() {
        let pkg = parse(SAMPLE).unwrap();
        assert_eq!(pkg.name(), Some("smtpguard"));
        assert_eq!(pkg.sections().len(), 4);

        let main = pkg.section("main").unwrap();
        assert_eq!(main.section_type(), "agent");
        assert_eq!(main.line(), 4);
        assert_eq!(main.option("interface"), Some("br-lan"));
        assert_eq!(main.option("mode"), Some("enforce"));
        assert_eq!(
            main.list("allow_mac").unwrap(),
            ["00:11:22:33:44:55", "66:77:88:99:aa:bb"]
        );
        assert_eq!(main.option("allow_mac"), None, "a list is not an option");
        assert_eq!(main.entry("allow_mac").unwrap().line(), 7);
        let names: Vec<_> = main.entries().iter().map(Entry::name).collect();
        assert_eq!(names, ["interface", "mode", "allow_mac"]);

        let ctl = pkg.section("controller").unwrap();
        assert_eq!(ctl.option("password"), Some("p#ss w0rd"));
        assert_eq!(ctl.option("empty"), Some(""));
        assert_eq!(ctl.option("missing"), None);

        let relays: Vec<_> = pkg
            .sections_of_type("relay")
            .map(|s| (s.name(), s.option("host").unwrap()))
            .collect();
        assert_eq!(
            relays,
            [(None, "smtp.isp.example"), (None, "relay2.isp.example")]
        );
    }

    #[test]
    fn quoting_follows_uci_export() {
        // `uci export` writes a single quote inside a value as '\''.
        let pkg = parse(
            "config t 's'\n\
             option a 'it'\\''s'\n\
             option b \"say \\\"hi\\\" \\\\ 'x'\"\n\
             option c plain\\ word\n\
             option d 'multi\nline'\n\
             option e \"$HOME\"\n",
        )
        .unwrap();
        let s = pkg.section("s").unwrap();
        assert_eq!(s.option("a"), Some("it's"));
        assert_eq!(s.option("b"), Some("say \"hi\" \\ 'x'"));
        assert_eq!(s.option("c"), Some("plain word"));
        assert_eq!(s.option("d"), Some("multi\nline"));
        assert_eq!(s.option("e"), Some("$HOME"), "no variable expansion");
        assert_eq!(
            s.entry("e").unwrap().line(),
            7,
            "lines counted inside quotes"
        );
    }

    #[test]
    fn single_quotes_take_backslashes_literally() {
        let pkg = parse("config t 's'\noption re '^a\\d+$'\n").unwrap();
        assert_eq!(pkg.section("s").unwrap().option("re"), Some("^a\\d+$"));
    }

    #[test]
    fn empty_and_comment_only_files_have_no_sections() {
        for text in ["", "\n\n", "# nothing\n   # here\n", "\r\n\t\r\n"] {
            assert_eq!(parse(text).unwrap(), Package::default(), "{text:?}");
        }
    }

    #[test]
    fn windows_line_endings_are_accepted() {
        let pkg = parse("config t 's'\r\n\toption a 'b'\r\n").unwrap();
        assert_eq!(pkg.section("s").unwrap().option("a"), Some("b"));
    }

    /// Parses `text`, expecting an error, and returns its line and message.
    fn fail(text: &str) -> (Option<usize>, String) {
        let err = parse(text).unwrap_err();
        (err.line(), err.to_string())
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "config t 's'\noption a 'open\n\n",
                2,
                "unterminated ' quote",
            ),
            (
                "config t 's'\n\n  option a \"open\n",
                3,
                "unterminated \" quote",
            ),
            ("config t\noptoin a b\n", 2, "unknown keyword \"optoin\""),
            ("option a b\n", 1, "option outside of a config section"),
            ("\n\nlist a b\n", 3, "list outside of a config section"),
            (
                "config t 's'\noption a\n",
                2,
                "option expects a name and a value",
            ),
            (
                "config t 's'\noption a b c\n",
                2,
                "option expects a name and a value",
            ),
            ("config t 's'\nlist a\n", 2, "list expects"),
            ("config\n", 1, "config expects a type"),
            ("config t a b\n", 1, "config expects a type"),
            (
                "config t 's'\noption a b\npackage p\n",
                3,
                "package must be the first",
            ),
            ("package p\npackage p\n", 2, "package must be the first"),
            ("package 'p q'\n", 1, "invalid package name"),
            ("config 'bad type'\n", 1, "invalid section type"),
            ("config t 'bad-name'\n", 1, "invalid section name"),
            ("config t ''\n", 1, "invalid section name"),
            ("config t 's'\noption 'a.b' c\n", 2, "invalid option name"),
            (
                "config t 'x'\nconfig u 'x'\n",
                2,
                "already defined on line 1",
            ),
            (
                "config t 's'\noption a 1\n\noption a 2\n",
                4,
                "already set on line 2",
            ),
            (
                "config t 's'\noption a 1\nlist a 2\n",
                3,
                "both as an option and as a list",
            ),
            (
                "config t 's'\nlist a 1\noption a 2\n",
                3,
                "both as an option and as a list",
            ),
            ("config t 's'\noption a b#c\n", 2, "'#' inside a word"),
            ("config t 's'; option a b\n", 1, "';' statement separator"),
            ("config t 's'\noption a b\\\nc\n", 2, "line continuation"),
            (
                "config t 's'\noption a \"b\\\nc\"\n",
                2,
                "line continuation",
            ),
            ("config t 's'\noption a b\\", 2, "backslash at end of input"),
        ];
        for &(text, line, message) in cases {
            let (got_line, got) = fail(text);
            assert_eq!(got_line, Some(line), "{text:?}: {got}");
            assert!(
                got.starts_with(&format!("line {line}: ")),
                "{text:?}: {got}"
            );
            assert!(got.contains(message), "{text:?}: {got:?} lacks {message:?}");
        }
    }

    #[test]
    fn section_types_may_contain_dashes() {
        let pkg = parse("config wifi-iface 'w0'\n").unwrap();
        assert_eq!(pkg.sections_of_type("wifi-iface").count(), 1);
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing() {
        let text = "#".repeat(MAX_INPUT_BYTES + 1);
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err,
            UciError::TooLarge {
                size: MAX_INPUT_BYTES + 1,
                max: MAX_INPUT_BYTES
            }
        );
        assert_eq!(err.line(), None);
        assert!(parse(&"#".repeat(MAX_INPUT_BYTES)).is_ok());
    }

    #[test]
    fn booleans_follow_openwrt_spelling() {
        for t in ["1", "yes", "on", "true", "enabled"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "no", "off", "false", "disabled"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for junk in ["", "2", "True", "y"] {
            assert_eq!(parse_bool(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_shipped_openwrt_config_parses() {
        let text = include_str!("../openwrt/smtpguard/files/smtpguard.config");
        let pkg = parse(text).unwrap();
        let capture = pkg.section("capture").unwrap();
        assert_eq!(capture.option("interface"), Some("br-lan"));
        assert!(pkg.section("agent").unwrap().option("state_dir").is_some());
        let uplink = pkg.section("uplink").unwrap();
        for field in [
            "broker_url",
            "username",
            "password",
            "controller_public_key",
        ] {
            assert!(uplink.option(field).is_some(), "uplink.{field}");
        }
        assert_eq!(
            pkg.section("enforce").unwrap().option("backend"),
            Some("nftables")
        );
    }
}
