//! The commands a user types, parsed into values; a usage error names the
//! right usage.

use std::path::PathBuf;

use crate::wire::ids;

/// How group names are made, for `/help` and usage errors.
pub const GROUP_RULES: &str = "GROUP is group_ then 1-64 of A-Z a-z 0-9 . _ - (e.g. group_team); \
a group has a key only once its owner ran /gshare, and only members can write to it";

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// `/list [PREFIX]`: the first page of who is online (whose id starts
    /// with PREFIX).
    List(Option<String>),
    /// `/more`: the next page of the last `/list`.
    More,
    Pubget,
    Dbget(String),
    Msg {
        to: String,
        text: String,
    },
    Gshare {
        group: String,
        members: Vec<String>,
    },
    Gmsg {
        group: String,
        text: String,
    },
    File {
        to: String,
        path: PathBuf,
    },
    Fingerprint(Option<String>),
    Trust(String),
    Outbox(OutboxCmd),
    Quit,
}

/// What `/outbox` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxCmd {
    /// List what waits for the node's acknowledgement.
    List,
    /// Forget an entry (full id or a unique prefix): it is never sent.
    Drop(String),
    /// Send a held entry again.
    Retry(String),
}

/// Every command with its usage, for `/help` and usage errors.
pub const USAGE: &[(&str, &str)] = &[
    ("/help", "show this help"),
    (
        "/list [PREFIX]",
        "who is online, a page at a time (ids starting with PREFIX)",
    ),
    ("/more", "the next page of the last /list"),
    ("/pubget", "your own public key and fingerprint"),
    (
        "/dbget USER",
        "look USER's key up in the directory (and pin it)",
    ),
    (
        "/msg USER TEXT",
        "send USER an end-to-end encrypted message",
    ),
    (
        "/gshare GROUP MEMBER...",
        "create or rotate GROUP's key and share it with the members",
    ),
    ("/gmsg GROUP TEXT", "send TEXT to GROUP"),
    ("/file USER|GROUP PATH", "send a file to a user or a group"),
    (
        "/fingerprint [USER]",
        "your key's fingerprint, or USER's pinned one",
    ),
    ("/trust USER", "accept USER's new key after a key change"),
    (
        "/outbox [drop|retry ID]",
        "what waits to be sent; drop an entry, or send a held one again",
    ),
    ("/quit", "leave"),
];

/// A command line that is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}; usage: {usage}")]
pub struct UsageError {
    pub problem: String,
    pub usage: String,
}

fn usage(cmd: &str, problem: impl Into<String>) -> UsageError {
    let usage = USAGE
        .iter()
        .find(|(u, _)| u.split_whitespace().next() == Some(cmd))
        .map(|(u, _)| (*u).to_owned())
        .unwrap_or_else(|| "/help".to_owned());
    UsageError {
        problem: problem.into(),
        usage,
    }
}

fn user_arg(cmd: &str, s: &str) -> Result<String, UsageError> {
    ids::check_user(s).map_err(|e| usage(cmd, e.to_string()))?;
    Ok(s.to_owned())
}

fn group_arg(cmd: &str, s: &str) -> Result<String, UsageError> {
    ids::check_group(s).map_err(|e| usage(cmd, format!("{e}; {GROUP_RULES}")))?;
    Ok(s.to_owned())
}

/// Splits off the first word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parses one line; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, UsageError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if !line.starts_with('/') {
        return Err(UsageError {
            problem: "commands start with /".into(),
            usage: "/msg USER TEXT, /gmsg GROUP TEXT, or /help".into(),
        });
    }
    let (cmd, rest) = word(line);
    let cmd = cmd.to_ascii_lowercase();
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(Some(c))
        } else {
            Err(usage(&cmd, format!("{cmd} takes no arguments")))
        }
    };
    match cmd.as_str() {
        "/help" => no_args(Command::Help),
        "/list" => list(&cmd, rest).map(Some),
        "/more" => no_args(Command::More),
        "/pubget" => no_args(Command::Pubget),
        "/quit" | "/exit" => no_args(Command::Quit),
        "/dbget" => Ok(Some(Command::Dbget(one_user(&cmd, rest)?))),
        "/trust" => Ok(Some(Command::Trust(one_user(&cmd, rest)?))),
        "/fingerprint" => {
            let (user, extra) = word(rest);
            if !extra.is_empty() {
                return Err(usage(&cmd, "name at most one user"));
            }
            let user = if user.is_empty() {
                None
            } else {
                Some(user_arg(&cmd, user)?)
            };
            Ok(Some(Command::Fingerprint(user)))
        }
        "/msg" => {
            let (to, text) = word(rest);
            if to.is_empty() || text.is_empty() {
                return Err(usage(&cmd, "name a user and a message"));
            }
            Ok(Some(Command::Msg {
                to: user_arg(&cmd, to)?,
                text: text.to_owned(),
            }))
        }
        // There is no group everyone is in: a group needs a key its owner
        // shares with the members.
        "/all" => Err(UsageError {
            problem: "there is no /all: a group needs a key, shared by its owner".into(),
            usage: "/gshare group_NAME MEMBER... to make one, then /gmsg group_NAME TEXT".into(),
        }),
        "/gmsg" => {
            let (group, text) = word(rest);
            if group.is_empty() || text.is_empty() {
                return Err(usage(&cmd, "name a group and a message"));
            }
            Ok(Some(Command::Gmsg {
                group: group_arg(&cmd, group)?,
                text: text.to_owned(),
            }))
        }
        "/gshare" => gshare(&cmd, rest).map(Some),
        "/file" => file(&cmd, rest).map(Some),
        "/outbox" => outbox(&cmd, rest).map(|c| Some(Command::Outbox(c))),
        other => Err(UsageError {
            problem: format!("unknown command {other}"),
            usage: "/help lists the commands".into(),
        }),
    }
}

/// `/list [PREFIX]`: a prefix is the start of a user id (its characters).
fn list(cmd: &str, rest: &str) -> Result<Command, UsageError> {
    let (prefix, extra) = word(rest);
    if !extra.is_empty() {
        return Err(usage(cmd, "give at most one prefix"));
    }
    if prefix.is_empty() {
        return Ok(Command::List(None));
    }
    let ok = prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(usage(
            cmd,
            "a prefix is the start of a user id: 1-64 of A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(Command::List(Some(prefix.to_owned())))
}

/// The one user `/dbget` and `/trust` name.
fn one_user(cmd: &str, rest: &str) -> Result<String, UsageError> {
    let (user, extra) = word(rest);
    if user.is_empty() || !extra.is_empty() {
        return Err(usage(cmd, "name exactly one user"));
    }
    user_arg(cmd, user)
}

/// `/gshare GROUP MEMBER...`: members once each, at least one.
fn gshare(cmd: &str, rest: &str) -> Result<Command, UsageError> {
    let mut words = rest.split_whitespace();
    let group = words
        .next()
        .ok_or_else(|| usage(cmd, "name a group and its members"))?;
    let group = group_arg(cmd, group)?;
    let mut members = Vec::new();
    for m in words {
        let m = user_arg(cmd, m)?;
        if !members.contains(&m) {
            members.push(m);
        }
    }
    if members.is_empty() {
        return Err(usage(cmd, "name at least one member"));
    }
    Ok(Command::Gshare { group, members })
}

/// `/file USER|GROUP PATH`.
fn file(cmd: &str, rest: &str) -> Result<Command, UsageError> {
    let (to, path) = word(rest);
    if to.is_empty() || path.is_empty() {
        return Err(usage(cmd, "name a user or group and a file"));
    }
    ids::classify(to)
        .ok()
        .filter(|k| matches!(k, ids::IdKind::User | ids::IdKind::Group))
        .ok_or_else(|| usage(cmd, format!("{to:?} is not a user or group id")))?;
    Ok(Command::File {
        to: to.to_owned(),
        path: PathBuf::from(path),
    })
}

/// `/outbox`, `/outbox drop ID`, `/outbox retry ID`.
fn outbox(cmd: &str, rest: &str) -> Result<OutboxCmd, UsageError> {
    let (action, rest) = word(rest);
    let (id, extra) = word(rest);
    match (action, id.is_empty(), extra.is_empty()) {
        ("", _, _) => Ok(OutboxCmd::List),
        ("drop", false, true) => Ok(OutboxCmd::Drop(id.to_owned())),
        ("retry", false, true) => Ok(OutboxCmd::Retry(id.to_owned())),
        _ => Err(usage(cmd, "say drop ID or retry ID, or nothing to list")),
    }
}

/// The help text: the commands, then how names are made.
pub fn help() -> String {
    let width = USAGE.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
    let mut lines: Vec<String> = USAGE
        .iter()
        .map(|(u, what)| format!("  {u:width$}  {what}"))
        .collect();
    lines.push(format!("  {GROUP_RULES}"));
    lines.push("  USER is 1-64 of A-Z a-z 0-9 . _ -".into());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("  ").unwrap(), None);
        assert_eq!(parse("/list").unwrap(), Some(Command::List(None)));
        assert_eq!(
            parse("/list al").unwrap(),
            Some(Command::List(Some("al".into())))
        );
        assert_eq!(parse("/more").unwrap(), Some(Command::More));
        assert_eq!(
            parse("/msg Bob hello  there ").unwrap(),
            Some(Command::Msg {
                to: "Bob".into(),
                text: "hello  there".into()
            })
        );
        assert!(parse("/all hi").unwrap_err().usage.contains("/gshare"));
        assert_eq!(
            parse("/gshare group_x bob carol bob").unwrap(),
            Some(Command::Gshare {
                group: "group_x".into(),
                members: vec!["bob".into(), "carol".into()]
            })
        );
        assert_eq!(
            parse("/file group_x /tmp/a b.txt").unwrap(),
            Some(Command::File {
                to: "group_x".into(),
                path: "/tmp/a b.txt".into()
            })
        );
        assert_eq!(
            parse("/fingerprint").unwrap(),
            Some(Command::Fingerprint(None))
        );
        assert_eq!(
            parse("/outbox").unwrap(),
            Some(Command::Outbox(OutboxCmd::List))
        );
        assert_eq!(
            parse("/outbox drop 1a2b").unwrap(),
            Some(Command::Outbox(OutboxCmd::Drop("1a2b".into())))
        );
        assert!(parse("/outbox drop").is_err());
        assert!(parse("/outbox shred x").is_err());
    }

    #[test]
    fn usage_errors_name_the_usage() {
        let e = parse("/msg Bob").unwrap_err();
        assert_eq!(e.usage, "/msg USER TEXT");
        assert_eq!(
            parse("/gmsg notagroup hi").unwrap_err().usage,
            "/gmsg GROUP TEXT"
        );
        assert_eq!(
            parse("/gshare group_x").unwrap_err().usage,
            "/gshare GROUP MEMBER..."
        );
        assert!(parse("hello").unwrap_err().to_string().contains("/help"));
        assert!(
            parse("/nope")
                .unwrap_err()
                .problem
                .contains("unknown command")
        );
        assert!(parse("/dbget ../x").is_err());
        assert_eq!(parse("/list a b").unwrap_err().usage, "/list [PREFIX]");
        assert!(parse("/list a/b").is_err());
        assert!(parse("/more please").is_err());
    }
}
