//! The client side: a user's session with a node, the keyring, commands,
//! safe file reception, the engine, and the terminal and JSON front ends.

pub mod commands;
pub mod engine;
pub mod events;
pub mod files;
pub mod journal;
pub mod keyring;
pub mod session;

use std::path::PathBuf;

pub use engine::{ClientConfig, Engine};
pub use events::{Event, Frontend, JsonFrontend, TerminalFrontend};
pub use session::{HelloStyle, Session, SessionError};

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// Reads stdin line by line into a channel; closes it at end of input.
pub fn spawn_stdin() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Paths a client uses, from its flags.
pub fn config(
    user: &str,
    server: &str,
    keys: &std::path::Path,
    downloads: PathBuf,
    max_file_size: u64,
) -> ClientConfig {
    ClientConfig {
        user: user.to_owned(),
        server: server.to_owned(),
        key_path: keys.join(format!("{user}.pem")),
        keyring_path: keys.join(format!("{user}.sqlite")),
        downloads,
        max_file_size,
        tls: None,
        invite: None,
    }
}
