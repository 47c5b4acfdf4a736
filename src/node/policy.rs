//! Who may join the mesh: the servers an `--admit` file lists (PROTOCOL.md
//! C5) and the master's registration policy (C14): open, by invite or
//! closed, with bounded new ids per address and per local server per hour.
//! Parsing, invite codes and the policy tables live here; the router decides.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use aws_lc_rs::{constant_time, hmac, rand};
use rusqlite::{Connection, params};

use crate::crypto::{self, PublicKey};
use crate::wire::ids;

/// Who may register a new user id at the master.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Registration {
    /// Anyone, within the per-address and per-server rates.
    #[default]
    Open,
    /// Only a hello carrying an unused invite (`socp admin invite`).
    Invite,
    /// No new ids; known users still connect.
    Closed,
}

/// New ids one address may register per hour by default.
pub const DEFAULT_PER_ADDRESS_HOUR: u32 = 20;
/// New ids one local server may register at the master per hour by default.
pub const DEFAULT_PER_SERVER_HOUR: u32 = 1000;
/// The window the registration rates count in.
pub const RATE_WINDOW_MS: i64 = 3_600_000;

/// Admission settings of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Servers allowed to link (ids or key fingerprints), read at every
    /// link hello; None admits any server that proves its key.
    pub admit: Option<PathBuf>,
    /// Master: who may register new ids.
    pub registration: Registration,
    /// New ids per address per hour (0: unbounded). At a local it counts
    /// the unknown ids it asks the master to register.
    pub per_address_hour: u32,
    /// Master: new ids per local server per hour (0: unbounded).
    pub per_server_hour: u32,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            admit: None,
            registration: Registration::Open,
            per_address_hour: DEFAULT_PER_ADDRESS_HOUR,
            per_server_hour: DEFAULT_PER_SERVER_HOUR,
        }
    }
}

/// Why an admit file or entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("reading the admit file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} line {line}: {text:?} is neither a server id nor a key fingerprint (64 hex digits, as `socp gen` prints it)"
    )]
    Line {
        path: String,
        line: usize,
        text: String,
    },
}

/// One admitted server: by id, or by the SHA-256 of its key (SPKI DER).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AdmitEntry {
    Id(String),
    /// 64 lowercase hex digits.
    Fingerprint(String),
}

impl AdmitEntry {
    /// Reads one entry: a server id, or a fingerprint with or without the
    /// spaces (or colons) `socp gen` and `socp admin` print between groups.
    pub fn parse(text: &str) -> Option<AdmitEntry> {
        let text = text.trim();
        let hex: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(AdmitEntry::Fingerprint(hex));
        }
        ids::check_server(text)
            .is_ok()
            .then(|| AdmitEntry::Id(text.to_owned()))
    }

    /// The entry as a line of an admit file (fingerprints grouped by four).
    pub fn line(&self) -> String {
        match self {
            AdmitEntry::Id(id) => id.clone(),
            AdmitEntry::Fingerprint(hex) => grouped(hex),
        }
    }
}

fn grouped(hex: &str) -> String {
    hex.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A key's fingerprint as admit entries hold it: hex SHA-256 of its SPKI DER.
pub fn key_fingerprint(key: &PublicKey) -> String {
    key.fingerprint().replace(' ', "")
}

/// The servers an admit file lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmitList {
    pub entries: Vec<AdmitEntry>,
}

impl AdmitList {
    /// Parses an admit file's text: one entry per line, `#` starts a comment.
    pub fn parse(path: &str, text: &str) -> Result<AdmitList, AdmitError> {
        let mut entries = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let entry = AdmitEntry::parse(line).ok_or_else(|| AdmitError::Line {
                path: path.to_owned(),
                line: n + 1,
                text: line.chars().take(100).collect(),
            })?;
            entries.push(entry);
        }
        Ok(AdmitList { entries })
    }

    /// Reads and parses the admit file at `path`.
    pub fn load(path: &Path) -> Result<AdmitList, AdmitError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AdmitError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text)
    }

    /// True if the server `id` presenting `key` is listed.
    pub fn admits(&self, id: &str, key: &PublicKey) -> bool {
        let fingerprint = key_fingerprint(key);
        self.entries.iter().any(|e| match e {
            AdmitEntry::Id(listed) => listed == id,
            AdmitEntry::Fingerprint(listed) => *listed == fingerprint,
        })
    }
}

// ---- invites ----

/// Random bytes in an invite code, before its tag.
const INVITE_NONCE: usize = 16;
/// Bytes of HMAC-SHA256 tag an invite code keeps.
const INVITE_TAG: usize = 16;
/// What every invite code starts with.
const INVITE_PREFIX: &str = "inv-";

/// The master's invite key, created by the schema (`policy_keys`).
pub fn invite_key(conn: &Connection) -> rusqlite::Result<Vec<u8>> {
    let hex: String = conn.query_row(
        "SELECT value FROM policy_keys WHERE name = 'invite'",
        [],
        |r| r.get(0),
    )?;
    Ok(from_hex(&hex).unwrap_or_default())
}

/// Makes an invite code: a random nonce and its HMAC under the invite key,
/// so the running master checks it without reading the database.
pub fn new_invite(key: &[u8]) -> String {
    let mut nonce = [0u8; INVITE_NONCE];
    // The system RNG does not fail on supported platforms; a zero nonce
    // would still be a valid (if guessable-once) code.
    let _ = rand::fill(&mut nonce);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &nonce);
    format!(
        "{INVITE_PREFIX}{}{}",
        crypto::hex(&nonce),
        crypto::hex(&tag.as_ref()[..INVITE_TAG])
    )
}

/// True if `code` was made with `key`.
pub fn invite_is_genuine(key: &[u8], code: &str) -> bool {
    let Some(hex) = code.strip_prefix(INVITE_PREFIX) else {
        return false;
    };
    let Some(bytes) = from_hex(hex) else {
        return false;
    };
    if key.is_empty() || bytes.len() != INVITE_NONCE + INVITE_TAG {
        return false;
    }
    let (nonce, tag) = bytes.split_at(INVITE_NONCE);
    let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), nonce);
    constant_time::verify_slices_are_equal(&expected.as_ref()[..INVITE_TAG], tag).is_ok()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// What the router needs from the policy tables at start.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyState {
    pub invite_key: Vec<u8>,
    pub used_invites: HashSet<String>,
    /// Ids whose key an operator reset: their next hello pins a new key.
    pub resets: HashSet<String>,
}

/// Reads the policy tables.
pub(crate) fn load(conn: &Connection) -> rusqlite::Result<PolicyState> {
    let invite_key = invite_key(conn)?;
    let mut stmt = conn.prepare("SELECT code FROM invites WHERE used_by IS NOT NULL")?;
    let used_invites = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare("SELECT user_id FROM key_resets")?;
    let resets = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(PolicyState {
        invite_key,
        used_invites,
        resets,
    })
}

/// Rows the router asks the store writer to change for the policy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PolicyOp {
    /// A new id was pinned: its invite is used, its key reset is done.
    Registered {
        user: String,
        invite: Option<String>,
        at_ms: i64,
    },
    /// A local learned from the master that an id's key changed (an
    /// operator reset it): the cached key is replaced.
    ReplaceKey { user: String, pubkey: String },
}

/// Applies one policy row change (called by the store writer).
pub(crate) fn apply(conn: &Connection, op: &PolicyOp) -> rusqlite::Result<()> {
    match op {
        PolicyOp::Registered {
            user,
            invite,
            at_ms,
        } => {
            conn.prepare_cached("DELETE FROM key_resets WHERE user_id = ?1")?
                .execute([user])?;
            if let Some(code) = invite {
                conn.prepare_cached(
                    "INSERT INTO invites (code, created_ms, used_by, used_ms) VALUES (?1, ?2, ?3, ?2)
                     ON CONFLICT (code) DO UPDATE SET used_by = excluded.used_by, used_ms = excluded.used_ms",
                )?
                .execute(params![code, at_ms, user])?;
            }
        }
        PolicyOp::ReplaceKey { user, pubkey } => {
            conn.prepare_cached("UPDATE users SET pubkey = ?2 WHERE user_id = ?1")?
                .execute(params![user, pubkey])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_file_lines() {
        let fp = "a1b2 c3d4 e5f6 0718 293a 4b5c 6d7e 8f90 a1b2 c3d4 e5f6 0718 293a 4b5c 6d7e 8f90";
        let text = format!(
            "# mesh\n\nserver_00000000-0000-4000-8000-000000000000  # l1\n{fp}\n{}\n",
            fp.replace(' ', ":").to_uppercase()
        );
        let list = AdmitList::parse("f", &text).unwrap();
        assert_eq!(list.entries.len(), 3);
        assert_eq!(list.entries[1], list.entries[2]);
        assert_eq!(list.entries[1].line(), fp);
        let err = AdmitList::parse("f", "ok\n").unwrap_err().to_string();
        assert!(err.contains("f line 1") && err.contains("\"ok\""), "{err}");
    }

    #[test]
    fn invite_codes_verify_only_under_their_key() {
        let code = new_invite(b"k1");
        assert!(invite_is_genuine(b"k1", &code));
        assert!(!invite_is_genuine(b"k2", &code));
        assert!(!invite_is_genuine(b"", &code));
        let mut forged = code.clone();
        forged.pop();
        forged.push(if code.ends_with('0') { '1' } else { '0' });
        assert!(!invite_is_genuine(b"k1", &forged));
        assert!(!invite_is_genuine(b"k1", "inv-zz"));
    }
}
