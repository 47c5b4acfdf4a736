//! `/list [PREFIX]` and `/more`: who is online, a page at a time. The node
//! answers one bounded page with how many match (PROTOCOL.md C13); the
//! engine remembers the last query and where its page ended, so `/more`
//! asks for the page after it.

use super::Engine;
use crate::client::codes::ClientCode;
use crate::client::events::{Event, Frontend};
use crate::wire::ids;
use crate::wire::messages::{Message, UserList, UserListReq};

/// Users one `/list` page asks for.
pub const LIST_PAGE: u64 = 50;

/// The last `/list`: its prefix, the last id shown, and whether the node
/// said more followed.
#[derive(Debug, Default)]
pub(super) struct Listing {
    prefix: Option<String>,
    last: Option<String>,
    more: bool,
    /// A query was sent (its answer may be on its way).
    asked: bool,
}

impl<F: Frontend> Engine<F> {
    /// `/list [PREFIX]`: the first page.
    pub(super) async fn list_first(&mut self, prefix: Option<String>) {
        self.listing = Listing {
            prefix,
            asked: true,
            ..Listing::default()
        };
        self.ask_page(None).await;
    }

    /// `/more`: the page after the last one shown.
    pub(super) async fn list_more(&mut self) {
        if !self.listing.asked {
            return self.emit(Event::error(
                ClientCode::Usage,
                "nothing to continue: /list [PREFIX] first",
            ));
        }
        if !self.listing.more {
            return self.emit(Event::error(
                ClientCode::Usage,
                "the last /list showed everyone it matched",
            ));
        }
        let after = self.listing.last.clone();
        self.ask_page(after).await;
    }

    async fn ask_page(&mut self, after: Option<String>) {
        let req = UserListReq {
            prefix: self.listing.prefix.clone(),
            after,
            limit: Some(LIST_PAGE),
            ..Default::default()
        };
        self.send(ids::TO_SERVER, &Message::UserListReq(req)).await;
    }

    /// A page from the node. A reference node sends everyone, without
    /// counts: shown whole.
    pub(super) fn listed(&mut self, l: UserList) {
        if let Some(last) = l.users.last() {
            self.listing.last = Some(last.clone());
        }
        let more = l.truncated.unwrap_or(false);
        self.listing.more = more;
        self.emit(Event::List {
            users: l.users,
            prefix: self.listing.prefix.clone(),
            total: l.total,
            at_least: l.total_capped.unwrap_or(false),
            more,
        })
    }
}
