//! Which command caused which event, for programs (`--json`): a command
//! given in the JSON form (`{"id": "c1", "command": "/msg bob hi"}`) has
//! its `id` echoed on every event it causes — at once (errors, answers),
//! and later: the key lookup it waited for, "sent" when the node takes the
//! content, receipts, refusals, and the answer to a `/dbget`.

use std::collections::{HashMap, VecDeque};

use super::{Deferred, Engine};
use crate::client::commands::Command;
use crate::client::events::{Event, Frontend};

/// The longest `id` a caller may give (longer ones are refused).
pub const MAX_ID_LEN: usize = 128;
/// How many `msg_id`s (and looked-up users) keep their command's id; past
/// this, later events of the oldest go without it.
pub const REMEMBERED: usize = 10_000;

/// The command being carried out and what earlier commands started.
#[derive(Default)]
pub(super) struct Tags {
    running: Option<String>,
    /// By `msg_id`, oldest first in `order` (receipts and refusals may
    /// come in any order, so none of them ends the tie).
    by_msg: HashMap<String, String>,
    order: VecDeque<String>,
    by_user: HashMap<String, String>,
}

impl Tags {
    /// The command carried out now (None: none, or one without an id).
    pub fn running(&mut self, id: Option<String>) {
        self.running = id;
    }

    pub fn current(&self) -> Option<String> {
        self.running.clone()
    }

    /// Content sent under `msg_id` belongs to the running command.
    pub fn content(&mut self, msg_id: &str) {
        let Some(id) = &self.running else { return };
        if self.by_msg.insert(msg_id.to_owned(), id.clone()).is_none() {
            self.order.push_back(msg_id.to_owned());
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.by_msg.remove(&old);
            }
        }
    }

    /// A `/dbget` of `user` by the running command.
    pub fn lookup(&mut self, user: &str) {
        if let Some(id) = &self.running
            && self.by_user.len() < REMEMBERED
        {
            self.by_user.insert(user.to_owned(), id.clone());
        }
    }

    /// The id to put on `event`: the running command's, else the one of the
    /// command whose content or lookup the event is about.
    pub fn id_for(&mut self, event: &Event) -> Option<String> {
        if let Some(id) = &self.running {
            if let Event::Pubkey { user, .. } = event {
                self.by_user.remove(user);
            }
            return Some(id.clone());
        }
        match event {
            Event::Sent { msg_id, .. }
            | Event::Pending {
                msg_id: Some(msg_id),
                ..
            }
            | Event::Delivery { msg_id, .. }
            | Event::NotSent { msg_id, .. } => self.by_msg.get(msg_id).cloned(),
            Event::Pubkey { user, .. } => self.by_user.remove(user),
            _ => None,
        }
    }
}

/// One input line in the JSON form: `{"id": ID, "command": LINE}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCommand {
    #[serde(default)]
    pub id: Option<String>,
    pub command: String,
}

/// Reads a line that starts with `{` as a JSON command.
pub fn parse_json(line: &str) -> Result<JsonCommand, String> {
    let cmd: JsonCommand = serde_json::from_str(line).map_err(|e| {
        format!(
            "a line starting with {{ is a JSON command {{\"id\": ID, \"command\": \"/...\"}}: {e}"
        )
    })?;
    if cmd.id.as_ref().is_some_and(|id| id.len() > MAX_ID_LEN) {
        return Err(format!("an id is at most {MAX_ID_LEN} bytes"));
    }
    Ok(cmd)
}

impl<F: Frontend> Engine<F> {
    /// `cmd`, to wait for a key lookup with the running command's id.
    pub(super) fn deferred(&self, cmd: Command) -> Deferred {
        Deferred::Cmd(cmd, self.tags.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_commands_parse_and_bad_ones_say_the_form() {
        let c = parse_json(r#"{"id":"c1","command":"/msg bob hi"}"#).unwrap();
        assert_eq!(
            (c.id.as_deref(), c.command.as_str()),
            (Some("c1"), "/msg bob hi")
        );
        assert!(parse_json(r#"{"command":"/list"}"#).unwrap().id.is_none());
        assert!(
            parse_json(r#"{"id":"c1"}"#)
                .unwrap_err()
                .contains("\"command\"")
        );
        assert!(parse_json(r#"{"id":"c1","command":"/list","x":1}"#).is_err());
        let long = format!(
            r#"{{"id":"{}","command":"/list"}}"#,
            "x".repeat(MAX_ID_LEN + 1)
        );
        assert!(parse_json(&long).is_err());
    }

    #[test]
    fn later_events_carry_the_id_of_their_command() {
        let mut t = Tags::default();
        t.running(Some("c1".into()));
        t.content("m1");
        t.running(None);
        let sent = Event::Sent {
            kind: "dm",
            to: "bob".into(),
            msg_id: "m1".into(),
        };
        assert_eq!(t.id_for(&sent).as_deref(), Some("c1"));
        let delivered = Event::Delivery {
            msg_id: "m1".into(),
            status: "delivered".into(),
            to: None,
            file: None,
        };
        assert_eq!(t.id_for(&delivered).as_deref(), Some("c1"));
        assert_eq!(t.id_for(&sent).as_deref(), Some("c1"), "in any order");
        t.running(Some("c2".into()));
        t.lookup("carol");
        t.running(None);
        let answer = Event::Pubkey {
            user: "carol".into(),
            found: false,
            fingerprint: None,
        };
        assert_eq!(t.id_for(&answer).as_deref(), Some("c2"));
        assert_eq!(
            t.id_for(&Event::Help {
                text: String::new()
            }),
            None
        );
    }

    #[test]
    fn the_oldest_ids_are_forgotten() {
        let mut t = Tags::default();
        t.running(Some("c".into()));
        for i in 0..=REMEMBERED {
            t.content(&i.to_string());
        }
        t.running(None);
        let sent = |id: &str| Event::Sent {
            kind: "dm",
            to: "bob".into(),
            msg_id: id.into(),
        };
        assert_eq!(t.id_for(&sent("0")), None);
        assert_eq!(t.id_for(&sent("1")).as_deref(), Some("c"));
        assert_eq!(t.by_msg.len(), REMEMBERED);
    }
}
