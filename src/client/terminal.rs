//! The plain-line terminal front end: each event as one readable line (or a
//! few), with a time, colour only on a terminal, and a progress bar for
//! files on stderr when it is a terminal. The full-screen UI
//! ([`super::tui`]) shows the same lines.

use std::io::IsTerminal;

use super::display::escape as e;
use super::events::{Event, Frontend, UNDECRYPTABLE};

/// The terminal: readable lines with a time, colour only on a terminal, and
/// a progress bar for files on stderr.
pub struct TerminalFrontend {
    colour: bool,
    progress: bool,
    /// A progress bar is on stderr's last line, not ended yet: the next
    /// line ends it first (a transfer that fails never reaches 100%).
    bar_open: bool,
}

impl Default for TerminalFrontend {
    fn default() -> Self {
        TerminalFrontend {
            colour: std::io::stdout().is_terminal(),
            progress: std::io::stderr().is_terminal(),
            bar_open: false,
        }
    }
}

fn short(msg_id: &str) -> &str {
    msg_id.get(..8).unwrap_or(msg_id)
}

/// The time of day (UTC) a line is shown at.
pub(crate) fn clock() -> String {
    let secs = crate::wire::now_ms() / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

impl TerminalFrontend {
    /// Lines without colour and no progress bar (the terminal UI styles
    /// and shows them itself).
    pub fn plain() -> Self {
        TerminalFrontend {
            colour: false,
            progress: false,
            bar_open: false,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn mark(&self, verified: bool) -> String {
        if verified {
            self.paint("32", "✓")
        } else {
            self.paint("1;31", "⚠ UNVERIFIED")
        }
    }

    /// The line for an event, if it has one. Every string in it that came
    /// from outside (names, text, ids, errors a node wrote) goes through
    /// [`escape`]: one line per event, no control characters.
    pub fn render(&self, event: &Event) -> Option<String> {
        Some(match event {
            Event::Connected { user, server } => {
                format!("connected as {} to {}", e(user), e(server))
            }
            Event::Disconnected { reason } => {
                self.paint("33", &format!("disconnected: {}", e(reason)))
            }
            Event::Reconnecting {
                attempt,
                in_ms,
                reason,
            } => self.paint(
                "33",
                &format!(
                    "reconnecting in {:.1} s (attempt {attempt}): {}",
                    *in_ms as f64 / 1000.0,
                    e(reason)
                ),
            ),
            Event::List {
                users,
                prefix,
                total,
                at_least,
                more,
            } => list_line(users, prefix.as_deref(), *total, *at_least, *more),
            Event::Pubget {
                pubkey,
                fingerprint,
            } => format!("your key {fingerprint}\n{pubkey}"),
            Event::Pubkey {
                user,
                found: true,
                fingerprint,
            } => {
                format!(
                    "{}'s key: {}",
                    e(user),
                    e(fingerprint.as_deref().unwrap_or("?"))
                )
            }
            Event::Pubkey {
                user, found: false, ..
            } => format!("{} is not in the directory", e(user)),
            Event::Sent { kind, to, msg_id } => self.paint(
                "2",
                &format!(
                    "sent ({}) {kind} to {}: the server has it ✓",
                    e(short(msg_id)),
                    e(to)
                ),
            ),
            Event::Pending { msg_id, to, reason } => self.paint(
                "33",
                &format!(
                    "queued ({}) for {}: {}; it goes out when it can",
                    e(msg_id.as_deref().map_or("…", short)),
                    e(to),
                    e(reason)
                ),
            ),
            Event::NotSent {
                msg_id,
                to,
                code,
                detail,
                kept,
            } => self.paint(
                "1;31",
                &format!(
                    "NOT SENT ({}) to {}: {}: {}; {}",
                    e(short(msg_id)),
                    e(to),
                    e(code),
                    e(detail),
                    if *kept {
                        "kept in the outbox, tried again later (/outbox)"
                    } else {
                        "dropped from the outbox"
                    }
                ),
            ),
            Event::Outbox { entries } if entries.is_empty() => "the outbox is empty".to_owned(),
            Event::Outbox { entries } => {
                let mut out = format!("outbox: {} waiting", entries.len());
                for o in entries {
                    out.push_str(&format!(
                        "\n  {} {} to {}{}",
                        e(&o.msg_id),
                        e(&o.kind),
                        e(&o.to),
                        o.last_error
                            .as_deref()
                            .map(|r| format!(" (refused: {})", e(r)))
                            .unwrap_or_default()
                    ));
                }
                out
            }
            Event::Delivery {
                msg_id,
                status,
                to,
                file,
            } => {
                let named = to.is_some();
                let to = to.as_deref().map(e).unwrap_or("the recipient".into());
                match status.as_str() {
                    "queued" => self.paint(
                        "2",
                        &format!(
                            "stored ({}): {to} is offline; delivered when they connect",
                            e(short(msg_id))
                        ),
                    ),
                    "delivered" => self.paint(
                        "2",
                        &format!("delivered ({}) to {to} ✓✓", e(short(msg_id))),
                    ),
                    // Its recipient's client has it and could not decrypt
                    // it (DESIGN.md "Undecryptable content"): failed,
                    // never shown as delivered.
                    UNDECRYPTABLE => {
                        let who = if named { to.as_ref() } else { "USER" };
                        let what = match file {
                            Some(name) => format!(
                                "{to} could not read file {} (it did not decrypt or did not match its signed manifest)",
                                e(name)
                            ),
                            None => format!("{to} could not decrypt it"),
                        };
                        let again = if file.is_some() { "/file it" } else { "send it" };
                        self.paint(
                            "1;31",
                            &format!(
                                "failed ({}): {what}: their key may have changed; /dbget {who}, compare /fingerprint {who} with them, /trust {who}, then {again} again",
                                e(short(msg_id))
                            ),
                        )
                    }
                    // A status this client does not know: shown as it is,
                    // never as delivered.
                    other => self.paint(
                        "33",
                        &format!("{} ({}) to {to}", e(other), e(short(msg_id))),
                    ),
                }
            }
            Event::Dm {
                from,
                text,
                verified,
                ..
            } => {
                format!("[dm from {}] {} {}", e(from), self.mark(*verified), e(text))
            }
            Event::GroupKey {
                group,
                from,
                verified,
            } => {
                format!(
                    "[{}] {} shared the group key {}",
                    e(group),
                    e(from),
                    self.mark(*verified)
                )
            }
            Event::GroupKeyRefused {
                group,
                from,
                owner,
                reason,
            } => self.paint(
                "1;31",
                &format!(
                    "!!! [{}] a key share from {} was REFUSED: {}; the group's owner is {}",
                    e(group),
                    e(from),
                    e(reason),
                    e(owner)
                ),
            ),
            Event::GroupMsg {
                group,
                from,
                text,
                verified,
                ..
            } => {
                format!(
                    "[{}] {}: {} {}",
                    e(group),
                    e(from),
                    self.mark(*verified),
                    e(text)
                )
            }
            Event::File {
                from,
                name,
                path,
                size,
                verified,
                group,
                ..
            } => format!(
                "[file from {}{}] {} {} ({size} bytes) saved as {}",
                e(from.as_deref().unwrap_or("unknown sender")),
                group
                    .as_deref()
                    .map(|g| format!(" in {}", e(g)))
                    .unwrap_or_default(),
                self.mark(*verified),
                e(name),
                e(path)
            ),
            Event::Progress { .. } => return None,
            Event::KeyChanged { user, old, new } => {
                let (user, old, new) = (e(user), e(old), e(new));
                self.paint(
                    "1;31",
                    &format!(
                        "!!! {user}'s KEY CHANGED in the directory: pinned {old}, now {new}.\n\
                         !!! Messages from {user} will show as unverified and nothing is sent to {user}\n\
                         !!! until you check the new fingerprint with them and run /trust {user}."
                    ),
                )
            }
            Event::Dropped { from, reason } => self.paint(
                "33",
                &format!("dropped content from {}: {}", e(from), e(reason)),
            ),
            Event::Fingerprint {
                user,
                fingerprint,
                pending: None,
            } => format!("{}: {}", e(user), e(fingerprint)),
            Event::Fingerprint {
                user,
                fingerprint,
                pending: Some(new),
            } => self.paint(
                "1;31",
                &format!(
                    "{u}: {} (pinned); the directory now says {}: compare it with {u}, then /trust {u}",
                    e(fingerprint),
                    e(new),
                    u = e(user)
                ),
            ),
            Event::Trusted { user, fingerprint } => {
                format!("now trusting {}'s key {}", e(user), e(fingerprint))
            }
            Event::Help { text } => text.clone(),
            Event::Error { code, detail } => {
                self.paint("31", &format!("error {}: {}", e(code), e(detail)))
            }
        })
    }
}

impl Frontend for TerminalFrontend {
    fn emit(&mut self, event: &Event) {
        if let Event::Progress {
            direction,
            name,
            done,
            total,
        } = event
        {
            if self.progress {
                let width = 30usize;
                let filled = (*done as f64 / (*total).max(1) as f64 * width as f64) as usize;
                let bar = format!(
                    "{}{}",
                    "#".repeat(filled.min(width)),
                    "-".repeat(width - filled.min(width))
                );
                let end = if done >= total { "\n" } else { "" };
                self.bar_open = done < total;
                eprint!(
                    "\r{direction} {} [{bar}] {done}/{total} bytes{end}",
                    e(name)
                );
            }
            return;
        }
        if std::mem::take(&mut self.bar_open) {
            eprintln!();
        }
        if let Some(line) = self.render(event) {
            println!("{} {line}", self.paint("2", &clock()));
        }
    }
}

/// One `/list` page: `online: a, b`, with how many there are and how to see
/// the rest when the node listed only some.
fn list_line(
    users: &[String],
    prefix: Option<&str>,
    total: Option<u64>,
    at_least: bool,
    more: bool,
) -> String {
    let names = users.iter().map(|u| e(u)).collect::<Vec<_>>().join(", ");
    let head = match prefix {
        Some(p) if users.is_empty() => return format!("no one online matching {}", e(p)),
        Some(p) => format!("online matching {}: {names}", e(p)),
        None => format!("online: {names}"),
    };
    if !more {
        return head;
    }
    let page = crate::client::engine::LIST_PAGE;
    let count = match (total, prefix) {
        (Some(n), Some(_)) => format!("{n}{} match; ", if at_least { "+" } else { "" }),
        (Some(n), None) => format!("{n} online; "),
        (None, _) => String::new(),
    };
    format!("{head} ({count}/more lists the next {page})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(status: &str) -> String {
        TerminalFrontend::plain()
            .render(&Event::Delivery {
                msg_id: "0123456789".into(),
                status: status.into(),
                to: Some("bob".into()),
                file: None,
            })
            .unwrap()
    }

    #[test]
    fn a_file_that_failed_says_so_by_name() {
        let bad = TerminalFrontend::plain()
            .render(&Event::Delivery {
                msg_id: "0123456789".into(),
                status: UNDECRYPTABLE.into(),
                to: Some("bob".into()),
                file: Some("notes.txt".into()),
            })
            .unwrap();
        assert!(
            bad.starts_with("failed (01234567): bob could not read file notes.txt (")
                && bad.contains("/dbget bob")
                && bad.contains("/file it again")
                && !bad.contains('✓'),
            "{bad}"
        );
    }

    #[test]
    fn only_delivered_content_shows_two_ticks() {
        assert_eq!(delivery("delivered"), "delivered (01234567) to bob ✓✓");
        assert!(delivery("queued").starts_with("stored (01234567): bob is offline"));
        let bad = delivery(UNDECRYPTABLE);
        assert!(
            bad.starts_with("failed (01234567): bob could not decrypt it")
                && bad.contains("/dbget bob")
                && !bad.contains('✓'),
            "{bad}"
        );
        let unknown = delivery("lost-in-space");
        assert!(
            unknown.contains("lost-in-space") && !unknown.contains('✓'),
            "{unknown}"
        );
    }

    #[test]
    fn a_list_page_says_how_many_and_how_to_see_more() {
        let users = |n: &[&str]| n.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(
            list_line(&users(&["alice", "bob"]), None, Some(2), false, false),
            "online: alice, bob"
        );
        assert_eq!(
            list_line(&users(&["alice", "bob"]), None, Some(120), false, true),
            format!(
                "online: alice, bob (120 online; /more lists the next {})",
                crate::client::engine::LIST_PAGE
            )
        );
        assert!(
            list_line(&users(&["al1"]), Some("al"), Some(10000), true, true)
                .starts_with("online matching al: al1 (10000+ match; /more")
        );
        assert_eq!(
            list_line(&[], Some("zz"), Some(0), false, false),
            "no one online matching zz"
        );
    }
}
