//! The command line of `smtpguard-agent`, parsed by hand.
//!
//! A derive-based parser cost about 150 KB of a 2 MB MIPS router binary for five
//! subcommands and six options; this module is the same interface in a few hundred lines:
//! `--name value`, `--name=value`, `-c value` for `--config`, `-h`/`--help` anywhere and
//! `-V`/`--version`. Errors name the argument and exit with status 2, like a usage error.

use std::ffi::OsString;
use std::path::PathBuf;

use smtpguard_protocol::MacAddr;

use crate::config;
use crate::replay::{OutputFormat, ReplayArgs};

/// One subcommand with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Live capture, detection, enforcement and uplink.
    Run {
        /// Agent configuration file.
        config: PathBuf,
    },
    /// Devices, verdicts and blocks of the running agent.
    Status {
        /// Agent configuration file.
        config: PathBuf,
    },
    /// Offline analysis of a capture.
    Replay(ReplayArgs),
    /// Lift one device's block by hand.
    Release {
        /// The device.
        mac: MacAddr,
        /// Agent configuration file.
        config: PathBuf,
    },
    /// Make (or with `show`, read) the router's signing key.
    Keygen {
        /// Key file; `None` for `agent.key` in the configured state directory, the file
        /// `run` uses (persistent storage, `/etc/smtpguard` on OpenWrt).
        key: Option<PathBuf>,
        /// Agent configuration file (for the default key path).
        config: PathBuf,
        /// Print the existing key's enrollment instead of making one.
        show: bool,
    },
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Run a subcommand.
    Command(Command),
    /// Print this help text and exit 0.
    Help(String),
    /// Print the version and exit 0.
    Version,
}

/// A command line that cannot be used; the message is for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}\n\n{usage}\n\nFor more information, try '--help'.")]
pub struct CliError {
    message: String,
    usage: &'static str,
}

const NAME: &str = "smtpguard-agent";

const USAGE: &str = "Usage: smtpguard-agent <COMMAND>";

const HELP: &str = "smtpguard edge agent for home routers

Usage: smtpguard-agent <COMMAND>

Commands:
  run      Run the agent: live capture on the LAN, detection, enforcement, uplink
  status   Show the running agent's devices, verdicts and the blocks in force in the kernel
  replay   Analyse a capture offline with the detection engine and print one report
  release  Lift the block or rate limit on one device by hand; the agent then leaves it
           alone for its release grace period (enforce.release_grace_secs)
  keygen   Create this router's signing key (mode 0600, never overwriting one) and print
           its CPE id and public key for enrollment on the controller
  help     Print this message or the help of the given command

Options:
  -h, --help     Print help
  -V, --version  Print version

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.";

const CONFIG_HELP: &str =
    "  -c, --config <FILE>  Agent configuration: TOML, or OpenWrt UCI (/etc/config/smtpguard)
                       [default: /etc/smtpguard/agent.toml]";

struct Sub {
    name: &'static str,
    usage: &'static str,
    about: &'static str,
    options: &'static str,
}

const SUBS: [Sub; 5] = [
    Sub {
        name: "run",
        usage: "Usage: smtpguard-agent run [OPTIONS]",
        about: "Run the agent: live capture on the LAN, detection, enforcement, uplink.",
        options: CONFIG_HELP,
    },
    Sub {
        name: "status",
        usage: "Usage: smtpguard-agent status [OPTIONS]",
        about: "Show the running agent's devices, verdicts and the blocks in force in the kernel.",
        options: CONFIG_HELP,
    },
    Sub {
        name: "replay",
        usage: "Usage: smtpguard-agent replay [OPTIONS] --pcap <FILE>",
        about: "Analyse a capture offline with the detection engine and print one report.",
        options: "      --pcap <FILE>      Capture file (pcap or pcapng): Ethernet, or Linux cooked
                         SLL/SLL2 as `tcpdump -i any` writes on the router
      --policy <FILE>    Policy as TOML (every field optional; defaults otherwise)
      --format <FORMAT>  Output format: json (one JSON document, the contract) or text
                         (for people) [default: json]
      --oui <FILE>       IEEE OUI registry (e.g. /usr/share/ieee-data/oui.csv) for
                         device vendors",
    },
    Sub {
        name: "release",
        usage: "Usage: smtpguard-agent release [OPTIONS] <MAC>",
        about: "Lift the block or rate limit on one device by hand; the agent then leaves it\n\
                alone for its release grace period (enforce.release_grace_secs).\n\n\
                Arguments:\n  <MAC>  The device's MAC address, e.g. 02:11:22:33:44:05",
        options: CONFIG_HELP,
    },
    Sub {
        name: "keygen",
        usage: "Usage: smtpguard-agent keygen [OPTIONS]",
        about: "Create this router's signing key (mode 0600, never overwriting one) and print\n\
                its CPE id and public key for enrollment on the controller.",
        options:
            "      --key <FILE>     Where to write the key [default: agent.key in the configured
                       state_dir, the file `run` uses]
      --show           Print the CPE id and public key of the key already there instead of
                       making one
  -c, --config <FILE>  Agent configuration file [default: /etc/config/smtpguard]",
    },
];

fn sub_help(sub: &Sub) -> String {
    format!(
        "{}\n\n{}\n\nOptions:\n{}\n  -h, --help  Print help",
        sub.about, sub.usage, sub.options
    )
}

/// One argument after the subcommand, split into option name and inline value.
enum Arg {
    /// `--name` or `--name=value` (the name without dashes); `-c` becomes `config`.
    Option(String, Option<String>),
    /// Anything else.
    Positional(String),
}

/// Parses the arguments after the program name.
///
/// # Errors
/// [`CliError`] naming the first argument that cannot be used.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Invocation, CliError> {
    let mut args = args.into_iter();
    let top_err = |message: String| CliError {
        message,
        usage: USAGE,
    };
    let Some(first) = args.next() else {
        return Err(top_err("a command is required".into()));
    };
    let first = utf8(first, USAGE)?;
    let sub = match first.as_str() {
        "-h" | "--help" => return Ok(Invocation::Help(HELP.into())),
        "-V" | "--version" => return Ok(Invocation::Version),
        "help" => {
            return match args.next().map(|a| utf8(a, USAGE)).transpose()? {
                None => Ok(Invocation::Help(HELP.into())),
                Some(name) => match SUBS.iter().find(|s| s.name == name) {
                    Some(sub) => Ok(Invocation::Help(sub_help(sub))),
                    None => Err(top_err(format!("unrecognized subcommand '{name}'"))),
                },
            }
        }
        name => match SUBS.iter().find(|s| s.name == name) {
            Some(sub) => sub,
            None if name.starts_with('-') => {
                return Err(top_err(format!("unexpected argument '{name}' found")))
            }
            None => return Err(top_err(format!("unrecognized subcommand '{name}'"))),
        },
    };
    let err = |message: String| CliError {
        message,
        usage: sub.usage,
    };

    // Collect options and positionals, then build the command.
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    let mut positionals: Vec<String> = Vec::new();
    let mut only_positionals = false;
    while let Some(raw) = args.next() {
        let raw = utf8(raw, sub.usage)?;
        let arg = if only_positionals {
            Arg::Positional(raw)
        } else if raw == "--" {
            only_positionals = true;
            continue;
        } else if raw == "-h" || raw == "--help" {
            return Ok(Invocation::Help(sub_help(sub)));
        } else if let Some(long) = raw.strip_prefix("--") {
            match long.split_once('=') {
                Some((name, value)) => Arg::Option(name.into(), Some(value.into())),
                None => Arg::Option(long.into(), None),
            }
        } else if raw == "-c" {
            Arg::Option("config".into(), None)
        } else if raw.starts_with('-') && raw.len() > 1 {
            return Err(err(format!("unexpected argument '{raw}' found")));
        } else {
            Arg::Positional(raw)
        };
        match arg {
            Arg::Positional(p) => positionals.push(p),
            Arg::Option(name, inline) => {
                let takes_value = name != "show";
                let value = match (takes_value, inline) {
                    (true, Some(v)) => Some(v),
                    (true, None) => match args.next() {
                        Some(v) => Some(utf8(v, sub.usage)?),
                        None => {
                            return Err(err(format!(
                                "a value is required for '--{name} <VALUE>' but none was supplied"
                            )))
                        }
                    },
                    (false, Some(_)) => {
                        return Err(err(format!("unexpected value for flag '--{name}'")))
                    }
                    (false, None) => None,
                };
                if options.iter().any(|(n, _)| *n == name) {
                    return Err(err(format!(
                        "the argument '--{name}' cannot be used multiple times"
                    )));
                }
                options.push((name, value));
            }
        }
    }

    let mut take = |name: &str| -> Option<Option<String>> {
        let i = options.iter().position(|(n, _)| n == name)?;
        Some(options.remove(i).1)
    };
    let config_path = |v: Option<Option<String>>| {
        v.flatten()
            .map_or_else(|| PathBuf::from(config::DEFAULT_PATH), PathBuf::from)
    };
    let command = match sub.name {
        "run" => Command::Run {
            config: config_path(take("config")),
        },
        "status" => Command::Status {
            config: config_path(take("config")),
        },
        "replay" => {
            let pcap = take("pcap").flatten().ok_or_else(|| {
                err("the following required arguments were not provided:\n  --pcap <FILE>".into())
            })?;
            let format = match take("format").flatten().as_deref() {
                None | Some("json") => OutputFormat::Json,
                Some("text") => OutputFormat::Text,
                Some(other) => {
                    return Err(err(format!(
                    "invalid value '{other}' for '--format <FORMAT>' (possible values: json, text)"
                )))
                }
            };
            Command::Replay(ReplayArgs {
                pcap: pcap.into(),
                policy: take("policy").flatten().map(PathBuf::from),
                format,
                oui: take("oui").flatten().map(PathBuf::from),
            })
        }
        "release" => {
            let config = config_path(take("config"));
            let mac = match positionals.first() {
                Some(text) => text
                    .parse::<MacAddr>()
                    .map_err(|e| err(format!("invalid value '{text}' for '<MAC>': {e}")))?,
                None => {
                    return Err(err(
                        "the following required arguments were not provided:\n  <MAC>".into(),
                    ))
                }
            };
            positionals.remove(0);
            Command::Release { mac, config }
        }
        _ => Command::Keygen {
            key: take("key").flatten().map(PathBuf::from),
            config: config_path(take("config")),
            show: take("show").is_some(),
        },
    };
    if let Some((name, _)) = options.first() {
        return Err(err(format!("unexpected argument '--{name}' found")));
    }
    if let Some(p) = positionals.first() {
        return Err(err(format!("unexpected argument '{p}' found")));
    }
    Ok(Invocation::Command(command))
}

fn utf8(arg: OsString, usage: &'static str) -> Result<String, CliError> {
    arg.into_string().map_err(|raw| CliError {
        message: format!("invalid UTF-8 in argument {}", raw.to_string_lossy()),
        usage,
    })
}

/// `smtpguard-agent 0.1.0`.
pub fn version() -> String {
    format!("{NAME} {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Invocation, CliError> {
        parse(line.split_whitespace().map(OsString::from))
    }

    fn command(line: &str) -> Command {
        match parse_str(line) {
            Ok(Invocation::Command(c)) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        parse_str(line).unwrap_err().to_string()
    }

    #[test]
    fn subcommands_with_defaults_and_every_option_form() {
        assert_eq!(
            command("run"),
            Command::Run {
                config: config::DEFAULT_PATH.into()
            }
        );
        for line in [
            "status --config /etc/config/smtpguard",
            "status --config=/etc/config/smtpguard",
            "status -c /etc/config/smtpguard",
        ] {
            assert_eq!(
                command(line),
                Command::Status {
                    config: "/etc/config/smtpguard".into()
                },
                "{line}"
            );
        }
        assert_eq!(
            command("replay --format text --pcap a.pcap --oui o.csv --policy p.toml"),
            Command::Replay(ReplayArgs {
                pcap: "a.pcap".into(),
                policy: Some("p.toml".into()),
                format: OutputFormat::Text,
                oui: Some("o.csv".into()),
            })
        );
        assert_eq!(
            command("replay --pcap a.pcap"),
            Command::Replay(ReplayArgs {
                pcap: "a.pcap".into(),
                policy: None,
                format: OutputFormat::Json,
                oui: None,
            })
        );
        assert_eq!(
            command("release 02:11:22:33:44:05 -c x.toml"),
            Command::Release {
                mac: "02:11:22:33:44:05".parse().unwrap(),
                config: "x.toml".into()
            }
        );
        assert_eq!(
            command("keygen --show --key k"),
            Command::Keygen {
                key: Some("k".into()),
                config: crate::config::DEFAULT_PATH.into(),
                show: true
            }
        );
        assert_eq!(
            command("keygen"),
            Command::Keygen {
                key: None,
                config: crate::config::DEFAULT_PATH.into(),
                show: false
            }
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_str("--version").unwrap(), Invocation::Version);
        assert_eq!(parse_str("-V").unwrap(), Invocation::Version);
        assert!(version().starts_with("smtpguard-agent "));
        let Ok(Invocation::Help(top)) = parse_str("--help") else {
            panic!("no help")
        };
        for sub in SUBS {
            assert!(top.contains(&format!("  {}", sub.name)), "{}", sub.name);
            let Ok(Invocation::Help(h)) = parse_str(&format!("{} --help", sub.name)) else {
                panic!("no help for {}", sub.name)
            };
            assert!(h.contains(sub.usage));
            assert_eq!(
                parse_str(&format!("help {}", sub.name)),
                Ok(Invocation::Help(h))
            );
        }
        let Ok(Invocation::Help(h)) = parse_str("replay --pcap x -h") else {
            panic!("no help")
        };
        assert!(h.contains("--format <FORMAT>"));
    }

    #[test]
    fn replay_help_names_the_link_types_it_reads() {
        let Ok(Invocation::Help(h)) = parse_str("replay -h") else {
            panic!("no help");
        };
        assert!(h.contains("Ethernet"), "{h}");
        assert!(h.contains("tcpdump -i any"), "{h}");
    }

    #[test]
    fn unusable_command_lines_are_named() {
        for (line, wanted) in [
            ("", "a command is required"),
            ("--bogus", "unexpected argument '--bogus'"),
            ("frobnicate", "unrecognized subcommand 'frobnicate'"),
            ("run --bogus x", "unexpected argument '--bogus'"),
            ("run -x", "unexpected argument '-x'"),
            ("run extra", "unexpected argument 'extra'"),
            ("run --config", "a value is required for '--config <VALUE>'"),
            ("run -c a -c b", "cannot be used multiple times"),
            ("replay", "--pcap <FILE>"),
            (
                "replay --pcap a --format xml",
                "invalid value 'xml' for '--format",
            ),
            ("release", "<MAC>"),
            ("release not-a-mac", "invalid value 'not-a-mac' for '<MAC>'"),
            ("keygen --show=yes", "unexpected value for flag '--show'"),
            ("keygen --pcap x", "unexpected argument '--pcap'"),
            ("help nothing", "unrecognized subcommand 'nothing'"),
        ] {
            let e = error(line);
            assert!(e.contains(wanted), "{line:?}: {e}");
            assert!(e.contains("Usage: smtpguard-agent"), "{line:?}: {e}");
        }
    }
}
