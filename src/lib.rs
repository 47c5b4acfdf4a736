//! `socp`: a Secure Overlay Chat Protocol node and client.
//!
//! Module map: [`wire`] is the format on the wire, [`crypto`] the keys and
//! ciphers, [`store`] the SQLite databases, [`cli`] the command line,
//! [`config`] the node's config file, [`logging`] the shape of log lines.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod content;
pub mod crypto;
pub mod logging;
pub mod node;
pub mod store;
pub mod tls;
pub mod wire;
