//! Who is online anywhere in the mesh, as a sorted index: the users with a
//! session here and the users a link says are live elsewhere. `USER_LIST`
//! pages are ranges of it (from a prefix, after a cursor), so an answer
//! costs the size of the page, not the number of users online.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde_json::Map;

use super::Router;
use crate::wire::messages::{UserList, UserListReq};

/// Most bytes of user ids one `USER_LIST` carries (about 2,000 ids of
/// typical length; far below the 1 MiB frame limit). A reference client's
/// `{}` gets this much; a `socp` client asks for a page of a few dozen.
pub const USER_LIST_MAX_BYTES: usize = 64 << 10;
/// A search (`prefix`) counts its matches up to this many: the count costs
/// the number counted, and a user may ask once a second.
pub const LIST_COUNT_MAX: usize = 10_000;

/// A user has a session on this node.
pub(super) const HERE: u8 = 1;
/// A link says the user is live on another server.
pub(super) const REMOTE: u8 = 2;

/// Online users, each with where we know them from ([`HERE`], [`REMOTE`]).
#[derive(Debug, Default)]
pub(super) struct Online {
    users: BTreeMap<String, u8>,
}

/// One page of online users.
#[derive(Debug, PartialEq)]
pub(super) struct Page {
    pub users: Vec<String>,
    /// More users match after the last one listed.
    pub truncated: bool,
}

impl Online {
    /// Sets or clears one source of `user`'s presence.
    pub fn set(&mut self, user: &str, source: u8, on: bool) {
        if on {
            match self.users.get_mut(user) {
                Some(s) => *s |= source,
                None => {
                    self.users.insert(user.to_owned(), source);
                }
            }
        } else if let Some(s) = self.users.get_mut(user) {
            *s &= !source;
            if *s == 0 {
                self.users.remove(user);
            }
        }
    }

    /// Every online user, sorted.
    pub fn all(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// The users whose id starts with `prefix`, sorted, after `after`.
    fn matching<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'a String> + 'a {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        self.users
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(u, _)| u)
            .take_while(move |u| u.starts_with(prefix))
    }

    /// The first users matching `prefix` after `after`: at most `limit`
    /// ids and `max_bytes` of them (each id counted with its JSON quotes and
    /// comma).
    pub fn page(&self, prefix: &str, after: Option<&str>, limit: usize, max_bytes: usize) -> Page {
        let mut users = Vec::new();
        let mut bytes = 0;
        let mut truncated = false;
        for u in self.matching(prefix, after) {
            bytes += u.len() + 3;
            if users.len() >= limit || bytes > max_bytes {
                truncated = true;
                break;
            }
            users.push(u.clone());
        }
        Page { users, truncated }
    }

    /// How many users match `prefix`, counted up to `cap` (an empty prefix
    /// is counted exactly, at no cost). True if the count stopped at `cap`.
    pub fn count(&self, prefix: &str, cap: usize) -> (usize, bool) {
        if prefix.is_empty() {
            return (self.users.len(), false);
        }
        let n = self.matching(prefix, None).take(cap + 1).count();
        (n.min(cap), n > cap)
    }
}

impl Router {
    /// The `USER_LIST` answer to `req`: the page of online users it asks
    /// for, sorted, within [`USER_LIST_MAX_BYTES`] (PROTOCOL.md C13), with
    /// how many match and whether more follow. Costs the page and, for a
    /// search, the matches counted (at most [`LIST_COUNT_MAX`]); never a
    /// pass over everyone online.
    pub(super) fn user_list(&self, req: &UserListReq) -> UserList {
        let prefix = req.prefix.as_deref().unwrap_or_default();
        let limit = req
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let page = self
            .online
            .page(prefix, req.after.as_deref(), limit, USER_LIST_MAX_BYTES);
        let (total, capped) = self.online.count(prefix, LIST_COUNT_MAX);
        UserList {
            users: page.users,
            total: Some(total as u64),
            truncated: Some(page.truncated),
            total_capped: capped.then_some(true),
            extra: Map::new(),
        }
    }

    /// Test check: the index holds exactly the users with a session here
    /// or a live presence record.
    #[cfg(test)]
    pub(super) fn assert_online_index(&self) {
        let mut all: std::collections::BTreeSet<&String> = self.sessions.keys().collect();
        all.extend(self.presence.iter().filter(|(_, p)| p.live).map(|(u, _)| u));
        let all: Vec<String> = all.into_iter().cloned().collect();
        assert_eq!(self.online.all(), all, "the online index drifted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(users: &[&str]) -> Online {
        let mut o = Online::default();
        for u in users {
            o.set(u, REMOTE, true);
        }
        o
    }

    #[test]
    fn a_user_stays_online_while_one_source_says_so() {
        let mut o = Online::default();
        o.set("alice", HERE, true);
        o.set("alice", REMOTE, true);
        o.set("alice", HERE, false);
        assert_eq!(o.all(), ["alice"]);
        o.set("alice", REMOTE, false);
        assert!(o.all().is_empty());
        o.set("bob", REMOTE, false);
        assert!(o.all().is_empty());
    }

    #[test]
    fn pages_follow_the_prefix_and_the_cursor() {
        let o = index(&["al", "alice", "alina", "bob", "alex", "a"]);
        let p = o.page("al", None, 2, usize::MAX);
        assert_eq!(p.users, ["al", "alex"]);
        assert!(p.truncated);
        let p = o.page("al", Some("alex"), 2, usize::MAX);
        assert_eq!(p.users, ["alice", "alina"]);
        assert!(!p.truncated);
        // A cursor before the prefix starts at the prefix.
        let p = o.page("b", Some("a"), 10, usize::MAX);
        assert_eq!(p.users, ["bob"]);
        // A cursor past every match lists nothing.
        assert!(o.page("al", Some("am"), 10, usize::MAX).users.is_empty());
        assert_eq!(o.count("al", 100), (4, false));
        assert_eq!(o.count("al", 3), (3, true));
        assert_eq!(o.count("", 3), (6, false));
        let p = o.page("", None, 0, usize::MAX);
        assert!(p.users.is_empty() && p.truncated);
    }

    #[test]
    fn pages_stay_within_their_bytes() {
        let o = index(&["aaaa", "bbbb", "cccc"]);
        let p = o.page("", None, 10, 14);
        assert_eq!(p.users, ["aaaa", "bbbb"]);
        assert!(p.truncated);
    }
}
