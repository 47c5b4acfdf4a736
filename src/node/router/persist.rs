//! What the router does when the store could not write (PROTOCOL.md C14):
//! memory forgets what the disk does not hold, and whoever was waiting for
//! an acknowledgement is told `STORAGE` instead, so a resend is taken and
//! written afresh and nothing acknowledged is ever lost.

use super::{Router, StoreFailure, StoreOp};
use crate::node::state::PendingAck;
use crate::wire::ErrorCode;
use crate::wire::messages::{ErrorBody, Message};

impl Router {
    pub(super) fn store_failed(&mut self, f: StoreFailure) {
        if !f.custody.is_empty() {
            // Not on disk: out of custody, so that a resend is not matched
            // against them (and acknowledged without a write). What was in
            // flight may still be acknowledged by its hop; that ack finds
            // nothing to release. The release tells the store thread the
            // router has forgotten them.
            self.custody.release(&f.custody);
            self.persist(StoreOp::Release(f.custody));
        }
        for user in f.users {
            // A pin that is not on disk does not bind the id: forget it,
            // and end a session that was welcomed on it (the user connects
            // again once there is room, and is pinned then).
            self.users.remove(&user);
            if let Some(conn) = self.sessions.get(&user).map(|s| s.conn) {
                self.refuse(
                    conn,
                    &user,
                    ErrorCode::Storage,
                    "this server could not store your registration (its disk is full?); try again later",
                );
            }
        }
        for PendingAck { conn, to, msg_id } in f.acks {
            let detail = format!(
                "this server could not store {msg_id} ({}); it was not taken: send it again later",
                f.error
            );
            let error = ErrorBody::about(ErrorCode::Storage, detail, Some(&msg_id));
            self.send(conn, &to, Message::Error(error));
        }
    }
}
