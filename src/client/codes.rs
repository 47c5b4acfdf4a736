//! The codes of failures the client finds itself, as its `error` events and
//! "not sent" events carry them. A node's refusals carry the node's codes
//! ([`crate::wire::ErrorCode`]) as the node wrote them.

use crate::wire::ErrorCode;

/// One kind of failure found by the client, not by a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientCode {
    /// A command typed wrong.
    Usage,
    /// The server cannot be reached or used, for good.
    Connect,
    /// The server welcomed us without a `mac-v1` session.
    NoSession,
    /// Not connected now.
    NotConnected,
    /// The keyring (SQLite) failed.
    Keyring,
    /// A user's directory key changed and waits for `/trust`.
    KeyChanged,
    /// No key to send with or to open with.
    NoKey,
    /// Only a group's owner may do that.
    NotOwner,
    /// Sealing or signing failed.
    Crypto,
    /// Content that does not open.
    Decrypt,
    /// A file transfer failed.
    File,
    /// Content too big for any node: the node's own code, found before
    /// sending.
    TooLarge,
    /// Dropped from the outbox by `/outbox drop`.
    Dropped,
}

impl ClientCode {
    /// The code as events show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCode::Usage => "USAGE",
            ClientCode::Connect => "CONNECT",
            ClientCode::NoSession => "NO_SESSION",
            ClientCode::NotConnected => "NOT_CONNECTED",
            ClientCode::Keyring => "KEYRING",
            ClientCode::KeyChanged => "KEY_CHANGED",
            ClientCode::NoKey => "NO_KEY",
            ClientCode::NotOwner => "NOT_OWNER",
            ClientCode::Crypto => "CRYPTO",
            ClientCode::Decrypt => "DECRYPT",
            ClientCode::File => "FILE",
            ClientCode::TooLarge => ErrorCode::TooLarge.as_str(),
            ClientCode::Dropped => "DROPPED",
        }
    }
}

impl std::fmt::Display for ClientCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
