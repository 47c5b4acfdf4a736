//! `socp-bench`: measurements of a real mesh of `socp node` processes on
//! loopback. [`throughput`] drives a master and a local with sender and
//! receiver sessions (throughput, latency, CPU, memory, with and without
//! link sessions); [`attacks`] runs a probe alone and then under every
//! attack of issue 11; [`idle`] measures what idle users cost a node;
//! [`storm`] logs thousands of users in at once; [`mesh`] runs a master
//! and N locals; [`bigstate`] a master with a large directory and
//! mailbox. [`node_proc`] starts and stops the node processes; the
//! integration tests of `socp` use it too.

pub mod attacks;
pub mod bigstate;
pub mod idle;
mod idle_memory;
pub mod mesh;
pub mod node_proc;
pub mod pipe;
pub mod procfs;
pub mod storm;
pub mod throughput;

pub use attacks::{AttackConfig, run_attacks};
pub use bigstate::{BigStateConfig, run_big_state};
pub use idle::{IdleConfig, run_idle};
pub use mesh::{MeshConfig, run_mesh};
pub use node_proc::{NodeLog, NodeOptions, NodeProc};
pub use storm::{StormBinary, StormConfig, run_storm};
pub use throughput::{BenchConfig, run};

/// Prints a run's table and, if asked, writes its figures as JSON.
pub(crate) fn publish(
    table: &str,
    figures: &serde_json::Value,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    print!("{table}");
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_string_pretty(figures)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// The `p` quantile (0..=1) of sorted microseconds, in milliseconds.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}
