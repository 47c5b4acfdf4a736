//! The client's SQLite store: directory keys pinned on first use (C6), group
//! keys, and the ids of content already shown. Calls are short local
//! SQLite statements; the client runs them on its single engine task.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use crate::store::{self, Pool, Schema, StoreError};
use crate::wire::now_ms;

/// A pinned key and, if the directory now says otherwise, the new key
/// waiting for `/trust`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub pubkey: String,
    pub pending: Option<String>,
}

/// What learning a key from the directory changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// First time: now pinned.
    New,
    /// The pinned key again.
    Same,
    /// Another key: kept pending, the pinned one stays in use.
    Changed { old: String, new: String },
}

/// A group key this user holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    pub key: Vec<u8>,
    pub creator: String,
    pub members: Vec<String>,
}

/// The client database.
#[derive(Clone)]
pub struct Keyring {
    pool: Pool,
}

impl Keyring {
    /// Opens (creating and migrating) the keyring at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Keyring {
            pool: store::open(path, Schema::Client)?,
        })
    }

    /// The pinned key of `user`.
    pub fn get(&self, user: &str) -> Result<Option<Pinned>, StoreError> {
        let conn = self.pool.get()?;
        Ok(conn
            .query_row(
                "SELECT pubkey, pending_pubkey FROM keyring WHERE user_id = ?1",
                [user],
                |r| {
                    Ok(Pinned {
                        pubkey: r.get(0)?,
                        pending: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a key the directory gave for `user`: pins it the first time,
    /// keeps a different one pending.
    pub fn observe(&self, user: &str, pubkey: &str) -> Result<Observed, StoreError> {
        let conn = self.pool.get()?;
        let pinned: Option<String> = conn
            .query_row(
                "SELECT pubkey FROM keyring WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )
            .optional()?;
        match pinned {
            None => {
                conn.execute(
                    "INSERT INTO keyring (user_id, pubkey, pinned_ms) VALUES (?1, ?2, ?3)",
                    params![user, pubkey, now_ms()],
                )?;
                Ok(Observed::New)
            }
            Some(old) if old == pubkey => {
                conn.execute(
                    "UPDATE keyring SET pending_pubkey = NULL, pending_ms = NULL WHERE user_id = ?1",
                    [user],
                )?;
                Ok(Observed::Same)
            }
            Some(old) => {
                conn.execute(
                    "UPDATE keyring SET pending_pubkey = ?2, pending_ms = ?3 WHERE user_id = ?1",
                    params![user, pubkey, now_ms()],
                )?;
                Ok(Observed::Changed {
                    old,
                    new: pubkey.to_owned(),
                })
            }
        }
    }

    /// Accepts the pending key of `user`; returns (old, new) if there was one.
    pub fn trust(&self, user: &str) -> Result<Option<(String, String)>, StoreError> {
        let Some(p) = self.get(user)? else {
            return Ok(None);
        };
        let Some(new) = p.pending else {
            return Ok(None);
        };
        let conn = self.pool.get()?;
        conn.execute(
            "UPDATE keyring SET pubkey = ?2, pinned_ms = ?3, pending_pubkey = NULL, pending_ms = NULL
             WHERE user_id = ?1",
            params![user, new, now_ms()],
        )?;
        Ok(Some((p.pubkey, new)))
    }

    /// The current key of `group`.
    pub fn group_key(&self, group: &str) -> Result<Option<GroupKey>, StoreError> {
        let conn = self.pool.get()?;
        let row: Option<(Vec<u8>, String, String)> = conn
            .query_row(
                "SELECT key, creator, members FROM group_keys WHERE group_id = ?1",
                [group],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row.map(|(key, creator, members)| GroupKey {
            key,
            creator,
            members: serde_json::from_str(&members).unwrap_or_default(),
        }))
    }

    /// Sets (creates or rotates) the key of `group`.
    pub fn set_group_key(&self, group: &str, key: &GroupKey) -> Result<(), StoreError> {
        let conn = self.pool.get()?;
        let members = serde_json::Value::from(key.members.clone()).to_string();
        conn.execute(
            "INSERT INTO group_keys (group_id, key, creator, members, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (group_id) DO UPDATE SET key = excluded.key, creator = excluded.creator,
               members = excluded.members, updated_ms = excluded.updated_ms",
            params![group, key.key, key.creator, members, now_ms()],
        )?;
        Ok(())
    }

    /// True if `msg_id` was shown already.
    pub fn seen(&self, msg_id: &str) -> Result<bool, StoreError> {
        let conn = self.pool.get()?;
        Ok(conn
            .query_row(
                "SELECT 1 FROM seen_messages WHERE msg_id = ?1",
                [msg_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records many ids as shown, in one transaction.
    pub fn mark_seen(&self, msg_ids: &[String]) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO seen_messages (msg_id, seen_ms) VALUES (?1, ?2)",
            )?;
            for id in msg_ids {
                stmt.execute(params![id, now_ms()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// One frame waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub msg_id: String,
    pub to: String,
    pub kind: String,
    pub payload: serde_json::Map<String, serde_json::Value>,
}

impl Keyring {
    /// Keeps a frame until the node acknowledges it.
    pub fn outbox_add(&self, out: &Outgoing) -> Result<(), StoreError> {
        let conn = self.pool.get()?;
        let payload = serde_json::Value::Object(out.payload.clone()).to_string();
        conn.execute(
            "INSERT OR IGNORE INTO outbox (msg_id, to_id, kind, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![out.msg_id, out.to, out.kind, payload, now_ms()],
        )?;
        Ok(())
    }

    /// Everything not yet acknowledged, oldest first.
    pub fn outbox(&self) -> Result<Vec<Outgoing>, StoreError> {
        let conn = self.pool.get()?;
        let mut stmt =
            conn.prepare("SELECT msg_id, to_id, kind, payload FROM outbox ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            let payload: String = r.get(3)?;
            Ok(Outgoing {
                msg_id: r.get(0)?,
                to: r.get(1)?,
                kind: r.get(2)?,
                payload: serde_json::from_str(&payload).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The node acknowledged these.
    pub fn outbox_done(&self, msg_ids: &[String]) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        let tx = conn.transaction()?;
        for id in msg_ids {
            tx.execute("DELETE FROM outbox WHERE msg_id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// An outbox entry with what the node said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub out: Outgoing,
    /// Transient refusals so far.
    pub refusals: u32,
    pub last_error: Option<String>,
    /// Set aside: not sent again until the user asks (`/outbox retry`).
    pub held: bool,
}

fn waiting_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Waiting> {
    let payload: String = r.get(3)?;
    Ok(Waiting {
        out: Outgoing {
            msg_id: r.get(0)?,
            to: r.get(1)?,
            kind: r.get(2)?,
            payload: serde_json::from_str(&payload).unwrap_or_default(),
        },
        refusals: r.get(4)?,
        last_error: r.get(5)?,
        held: r.get::<_, i64>(6)? != 0,
    })
}

impl Keyring {
    /// Every entry of the outbox with its refusals, oldest first.
    pub fn outbox_waiting(&self) -> Result<Vec<Waiting>, StoreError> {
        let conn = self.pool.get()?;
        let mut stmt = conn.prepare(
            "SELECT msg_id, to_id, kind, payload, refusals, last_error, held FROM outbox ORDER BY seq",
        )?;
        let rows = stmt.query_map([], waiting_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One entry of the outbox.
    pub fn outbox_get(&self, msg_id: &str) -> Result<Option<Waiting>, StoreError> {
        let conn = self.pool.get()?;
        Ok(conn
            .query_row(
                "SELECT msg_id, to_id, kind, payload, refusals, last_error, held FROM outbox
                 WHERE msg_id = ?1",
                [msg_id],
                waiting_row,
            )
            .optional()?)
    }

    /// Records a transient refusal; the entry is held once it was refused
    /// `hold_after` times. Returns the entry as it is now.
    pub fn outbox_refused(
        &self,
        msg_id: &str,
        reason: &str,
        hold_after: u32,
    ) -> Result<Option<Waiting>, StoreError> {
        let conn = self.pool.get()?;
        conn.execute(
            "UPDATE outbox SET refusals = refusals + 1, last_error = ?2,
               held = (refusals + 1 >= ?3) WHERE msg_id = ?1",
            params![msg_id, reason, hold_after],
        )?;
        drop(conn);
        self.outbox_get(msg_id)
    }

    /// Clears an entry's refusals so it is sent again.
    pub fn outbox_release(&self, msg_id: &str) -> Result<bool, StoreError> {
        let conn = self.pool.get()?;
        Ok(conn.execute(
            "UPDATE outbox SET refusals = 0, held = 0 WHERE msg_id = ?1",
            [msg_id],
        )? > 0)
    }

    /// The group's pinned owner.
    pub fn group_owner(&self, group: &str) -> Result<Option<String>, StoreError> {
        let conn = self.pool.get()?;
        Ok(conn
            .query_row(
                "SELECT owner FROM group_owners WHERE group_id = ?1",
                [group],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Pins `owner` as the group's owner unless one is pinned; returns the
    /// owner pinned now.
    pub fn pin_group_owner(&self, group: &str, owner: &str) -> Result<String, StoreError> {
        let conn = self.pool.get()?;
        conn.execute(
            "INSERT OR IGNORE INTO group_owners (group_id, owner, pinned_ms) VALUES (?1, ?2, ?3)",
            params![group, owner, now_ms()],
        )?;
        drop(conn);
        Ok(self.group_owner(group)?.unwrap_or_else(|| owner.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    #[test]
    fn pins_on_first_use_and_holds_changes_until_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(&dir.path().join("k.sqlite")).unwrap();
        assert_eq!(ring.observe("bob", "K1").unwrap(), Observed::New);
        assert_eq!(ring.observe("bob", "K1").unwrap(), Observed::Same);
        assert_eq!(
            ring.observe("bob", "K2").unwrap(),
            Observed::Changed {
                old: "K1".into(),
                new: "K2".into()
            }
        );
        assert_eq!(ring.get("bob").unwrap().unwrap().pubkey, "K1");
        assert_eq!(ring.trust("bob").unwrap(), Some(("K1".into(), "K2".into())));
        assert_eq!(
            ring.get("bob").unwrap().unwrap(),
            Pinned {
                pubkey: "K2".into(),
                pending: None
            }
        );
        assert!(!ring.seen("m1").unwrap());
        ring.mark_seen(&["m1".to_owned(), "m1".to_owned()]).unwrap();
        assert!(ring.seen("m1").unwrap());
        let g = GroupKey {
            key: vec![1; 32],
            creator: "alice".into(),
            members: vec!["bob".into()],
        };
        ring.set_group_key("group_x", &g).unwrap();
        assert_eq!(ring.group_owner("group_x").unwrap(), None);
        assert_eq!(ring.pin_group_owner("group_x", "alice").unwrap(), "alice");
        assert_eq!(ring.pin_group_owner("group_x", "mallory").unwrap(), "alice");
        assert_eq!(ring.group_key("group_x").unwrap(), Some(g));
    }

    #[test]
    fn outbox_keeps_order_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(&dir.path().join("k.sqlite")).unwrap();
        for i in 0..3 {
            let out = Outgoing {
                msg_id: format!("m{i}"),
                to: "bob".into(),
                // Kept as given: the keyring does not read it.
                kind: "any frame type".into(),
                payload: Default::default(),
            };
            ring.outbox_add(&out).unwrap();
            ring.outbox_add(&out).unwrap();
        }
        ring.outbox_done(&["m1".into()]).unwrap();
        let (quota, storage) = (
            ErrorCode::QuotaExceeded.as_str(),
            ErrorCode::Storage.as_str(),
        );
        let w = ring.outbox_refused("m2", quota, 2).unwrap().unwrap();
        assert_eq!((w.refusals, w.held), (1, false));
        let w = ring.outbox_refused("m2", storage, 2).unwrap().unwrap();
        assert_eq!(
            (w.refusals, w.held, w.last_error.as_deref()),
            (2, true, Some(storage))
        );
        assert!(ring.outbox_release("m2").unwrap());
        assert!(!ring.outbox_get("m2").unwrap().unwrap().held);
        let left: Vec<String> = ring
            .outbox()
            .unwrap()
            .into_iter()
            .map(|o| o.msg_id)
            .collect();
        assert_eq!(left, ["m0", "m2"]);
    }
}
