//! Nodes as real `socp` processes, for tests that kill them with SIGKILL:
//! `socp_bench::NodeProc` (one process handle for the tests and the
//! benchmarks) started with a cached server key and the log kept.
#![allow(dead_code)]

use std::path::PathBuf;

pub use socp_bench::NodeProc;
use socp_bench::{NodeLog, NodeOptions};

use super::cluster::cached_key;

const BIN: &str = env!("CARGO_BIN_EXE_socp");

/// Starts `socp node --role ROLE` in `dir` with the cached server key `key`
/// and these further flags (`--master-url …`), logging at `info`.
pub fn start_node(dir: PathBuf, role: &str, key: &str, flags: &[String]) -> NodeProc {
    start_node_logging(dir, role, key, flags, "info")
}

/// Starts a node with this `RUST_LOG` (its log lines are echoed when
/// `SOCP_TEST_LOGS` is set).
pub fn start_node_logging(
    dir: PathBuf,
    role: &str,
    key: &str,
    flags: &[String],
    rust_log: &str,
) -> NodeProc {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let pem = keys.join(format!("{role}.pem"));
    if !pem.exists() {
        std::fs::copy(cached_key(key), &pem).unwrap();
    }
    let opts = NodeOptions {
        rust_log: rust_log.to_owned(),
        log: if std::env::var_os("SOCP_TEST_LOGS").is_some() {
            NodeLog::KeepAndEcho
        } else {
            NodeLog::Keep
        },
        ..NodeOptions::new(BIN)
    };
    NodeProc::start(opts, &dir, role, flags)
        .unwrap_or_else(|e| panic!("{role} node in {}: {e:#}", dir.display()))
}
