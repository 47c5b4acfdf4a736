//! Identifiers (PROTOCOL.md A2): which strings name a user, a group, a local
//! server or the master, and the wildcards allowed in `to`.

use std::fmt;

/// The longest user or group name we accept, in bytes.
pub const MAX_NAME_LEN: usize = 64;

pub const SERVER_PREFIX: &str = "server_";
pub const MASTER_PREFIX: &str = "master_server_";
pub const GROUP_PREFIX: &str = "group_";

/// `to` of a frame for the server at the other end of the connection.
pub const TO_SERVER: &str = "server_*";
/// `to` of a frame for the user at the other end of the connection.
pub const TO_USER: &str = "user_*";
/// `to` of a frame for every peer.
pub const TO_ALL: &str = "*";

/// What kind of thing an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    User,
    Group,
    LocalServer,
    Master,
}

/// Why a string is not a valid id of the kind expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {expected}: {why}")]
pub struct IdError {
    pub value: String,
    pub expected: &'static str,
    pub why: &'static str,
}

fn name_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_uuid_v4(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.get_version_num() == 4) && s.len() == 36
}

/// Classifies an id, or says why it is none.
pub fn classify(s: &str) -> Result<IdKind, IdError> {
    let err = |expected, why| IdError {
        value: truncate(s),
        expected,
        why,
    };
    if let Some(rest) = s.strip_prefix(MASTER_PREFIX) {
        return if is_uuid_v4(rest) {
            Ok(IdKind::Master)
        } else {
            Err(err("master server id", "expected master_server_<uuid4>"))
        };
    }
    if let Some(rest) = s.strip_prefix(SERVER_PREFIX) {
        return if is_uuid_v4(rest) {
            Ok(IdKind::LocalServer)
        } else {
            Err(err("server id", "expected server_<uuid4>"))
        };
    }
    if s.starts_with(GROUP_PREFIX) {
        return if name_chars_ok(s) {
            Ok(IdKind::Group)
        } else {
            Err(err("group id", "use 1-64 of A-Z a-z 0-9 . _ -"))
        };
    }
    if name_chars_ok(s) {
        Ok(IdKind::User)
    } else {
        Err(err("user id", "use 1-64 of A-Z a-z 0-9 . _ -"))
    }
}

/// Checks that `s` is a valid user id.
pub fn check_user(s: &str) -> Result<(), IdError> {
    match classify(s) {
        Ok(IdKind::User) => Ok(()),
        Ok(_) => Err(IdError {
            value: truncate(s),
            expected: "user id",
            why: "must not start with server_, master_server_ or group_",
        }),
        Err(e) => Err(IdError {
            expected: "user id",
            ..e
        }),
    }
}

/// Checks that `s` is a valid group id.
pub fn check_group(s: &str) -> Result<(), IdError> {
    match classify(s) {
        Ok(IdKind::Group) => Ok(()),
        _ => Err(IdError {
            value: truncate(s),
            expected: "group id",
            why: "expected group_<name> with 1-64 of A-Z a-z 0-9 . _ -",
        }),
    }
}

/// Checks that `s` is a server id (local or master).
pub fn check_server(s: &str) -> Result<IdKind, IdError> {
    match classify(s) {
        Ok(kind @ (IdKind::LocalServer | IdKind::Master)) => Ok(kind),
        _ => Err(IdError {
            value: truncate(s),
            expected: "server id",
            why: "expected server_<uuid4> or master_server_<uuid4>",
        }),
    }
}

/// A fresh local server id, `server_<uuid4>`.
pub fn new_local_server_id() -> String {
    format!("{SERVER_PREFIX}{}", uuid::Uuid::new_v4())
}

/// A fresh master id, `master_server_<uuid4>`.
pub fn new_master_id() -> String {
    format!("{MASTER_PREFIX}{}", uuid::Uuid::new_v4())
}

/// Error messages quote at most this much of a hostile id.
fn truncate(s: &str) -> String {
    const SHOWN: usize = 80;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::User => "user",
            IdKind::Group => "group",
            IdKind::LocalServer => "local server",
            IdKind::Master => "master server",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ids() {
        assert_eq!(classify("Alice").unwrap(), IdKind::User);
        assert_eq!(classify("a.b_c-9").unwrap(), IdKind::User);
        assert_eq!(classify("group_demo").unwrap(), IdKind::Group);
        assert_eq!(
            classify("server_6b404614-c9e3-44d2-b66d-50e5eb691287").unwrap(),
            IdKind::LocalServer
        );
        assert_eq!(classify(&new_master_id()).unwrap(), IdKind::Master);
        assert_eq!(
            classify(&new_local_server_id()).unwrap(),
            IdKind::LocalServer
        );
    }

    #[test]
    fn refuses_bad_ids() {
        for bad in [
            "",
            "a b",
            "é",
            "../x",
            "server_x",
            "master_server_1",
            &"a".repeat(65),
        ] {
            assert!(check_user(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_user("group_x").is_err());
        assert!(check_group("Alice").is_err());
        assert!(check_server("Alice").is_err());
        // uuid that is not version 4
        assert!(classify("server_6b404614-c9e3-14d2-b66d-50e5eb691287").is_err());
        assert_eq!(check_user(&"a".repeat(64)), Ok(()));
    }
}
