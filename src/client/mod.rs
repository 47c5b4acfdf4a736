//! The client side: a user's session with a node (and, with the client
//! issue, the keyring, commands and front ends).

pub mod session;

pub use session::{HelloStyle, Session, SessionError};
