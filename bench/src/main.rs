//! The `socp-bench` binary: parse the command line, run a benchmark against
//! `socp node` processes, print the error chain and exit non-zero on failure.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use socp::logging::LogFormat;
use socp_bench::{AttackConfig, BenchConfig, BigStateConfig, IdleConfig, StormBinary, StormConfig};

/// The same allocator as `socp`: the load generator's figures (CPU per DM)
/// are compared between versions.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure a master and a local on loopback: throughput, latency, CPU,
/// memory, with and without link sessions.
#[derive(Debug, Parser)]
#[command(name = "socp-bench", version)]
struct BenchArgs {
    /// Write the figures as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds each measured run lasts (after a one-second warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Sender/receiver session pairs.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Idle connections for the memory-per-connection figure.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Instead: RSS per idle authenticated user on one node at each of
    /// these numbers of users (e.g. 1000,10000,50000), for `--socp` and
    /// `--baseline` in the same run.
    #[arg(long, value_delimiter = ',')]
    idle_scale: Vec<usize>,
    /// With --idle-scale, --storm or --mesh: another `socp` binary
    /// measured in the same run (today's main, say), for comparison.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// With --idle-scale: each user also asks for `USER_LIST` right after
    /// its hello, as the `socp` client's acceptance probe does.
    #[arg(long)]
    idle_probe: bool,
    /// With --idle-scale: the users log in at a local of a master that has
    /// a second local; also reports what each user costs the master and
    /// the other local (the presence they hold).
    #[arg(long)]
    idle_remote: bool,
    /// A flag for the nodes of the binary under test only, not the
    /// baseline's (repeat it; e.g. `--new-flag=--presence-cache=65536`).
    #[arg(long, allow_hyphen_values = true)]
    new_flag: Vec<String>,
    /// With --idle-scale: `memory` also measures, first, a node of this
    /// build inside socp-bench with its users over in-memory pipes, at
    /// every level (past the open-files limit); the socket runs keep to
    /// the levels that fit.
    #[arg(long, value_parser = ["socket", "memory"], default_value = "socket")]
    transport: String,
    /// Instead: a master and two locals with small bounds, a probe user's
    /// DMs alone and then under every attack of issue 11 at once (--seconds
    /// per phase): probe latency, node RSS, what the nodes answered.
    #[arg(long)]
    attacks: bool,
    /// With --attacks: the memory budget each node's peak RSS is held
    /// against, in MiB.
    #[arg(long, default_value_t = 256)]
    rss_bound_mib: u64,
    /// Instead: a login storm of this many users on one local (new ids at
    /// once, then all reconnecting at once after the local restarts):
    /// seconds until all are welcomed, node CPU per login.
    #[arg(long, value_name = "N")]
    storm: Option<usize>,
    /// With --storm: the baseline's users log in as the new client does
    /// (hello only) instead of as today's client (hello, then a
    /// `USER_LIST_REQ` probe), to compare the nodes alone.
    #[arg(long)]
    storm_same_client: bool,
    /// Instead: a master and N locals (given only the master's URL), users
    /// spread over the locals, saturated cross-local DMs: DMs/s and each
    /// process's CPU per DM (--pairs pairs, --seconds per run).
    #[arg(long, value_name = "N")]
    mesh: Option<usize>,
    /// With --mesh: measure each binary this many times, alternating, and
    /// report the median run.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Instead: a master with a directory of N users and a mailbox of N
    /// frames written straight into its database: start time, RSS,
    /// lookup latency, drain rate, and one sender filling an offline
    /// mailbox (issue 13).
    #[arg(long, value_name = "N")]
    big_state: Option<usize>,
    /// With --big-state: users in the directory [default: N; 0 skips it].
    #[arg(long)]
    big_users: Option<usize>,
    /// With --big-state: frames in the mailbox [default: N; 0 skips it].
    #[arg(long)]
    big_frames: Option<usize>,
    /// With --big-state: recipients the mailbox is spread over.
    #[arg(long, default_value_t = 100)]
    big_recipients: usize,
    /// With --big-state: seconds one sender fills an offline mailbox (0 skips it).
    #[arg(long, default_value_t = 5)]
    fill_seconds: u64,
    /// The `socp` binary the nodes run [default: `socp` beside this binary,
    /// as `cargo build --release --workspace` leaves it].
    #[arg(long)]
    socp: Option<PathBuf>,
    /// Log lines as text or as one JSON object per line (on stderr; levels
    /// from RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("socp-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: BenchArgs) -> Result<()> {
    // With a node in this process (`--transport memory`), its own logs
    // are left out, as the socket runs drop the nodes' logs.
    let logs = if args.transport == "memory" {
        "info,socp::node=warn"
    } else {
        "info"
    };
    socp::logging::init(logs, args.log_format);
    let socp = match args.socp {
        Some(path) => path,
        None => beside_this_binary()?,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if let Some(users) = args.storm {
        let mut binaries = vec![StormBinary {
            label: "new".into(),
            socp,
            probe: false,
        }];
        if let Some(base) = args.baseline {
            binaries.push(StormBinary {
                label: "baseline".into(),
                socp: base,
                probe: !args.storm_same_client,
            });
        }
        let cfg = StormConfig {
            binaries,
            users,
            out: args.out,
        };
        return runtime.block_on(socp_bench::run_storm(cfg)).map(|_| ());
    }
    if args.attacks {
        let cfg = AttackConfig {
            socp,
            seconds: args.seconds,
            rss_bound_mib: args.rss_bound_mib,
            out: args.out,
            keys: None,
        };
        return runtime.block_on(socp_bench::run_attacks(cfg)).map(|_| ());
    }
    if !args.idle_scale.is_empty() {
        let cfg = IdleConfig {
            socp,
            baseline: args.baseline,
            levels: args.idle_scale,
            probe: args.idle_probe,
            remote: args.idle_remote,
            new_flags: args.new_flag,
            memory: args.transport == "memory",
            out: args.out,
        };
        return runtime.block_on(socp_bench::run_idle(cfg)).map(|_| ());
    }
    if let Some(locals) = args.mesh {
        let cfg = socp_bench::MeshConfig {
            socp,
            baseline: args.baseline,
            locals,
            pairs: args.pairs,
            seconds: args.seconds,
            rounds: args.rounds,
            new_flags: args.new_flag,
            out: args.out,
        };
        return runtime.block_on(socp_bench::run_mesh(cfg)).map(|_| ());
    }
    if let Some(n) = args.big_state {
        let cfg = BigStateConfig {
            socp,
            users: args.big_users.unwrap_or(n),
            frames: args.big_frames.unwrap_or(n),
            recipients: args.big_recipients.max(1),
            fill_seconds: args.fill_seconds,
            lookups: 2_000,
            out: args.out,
        };
        return runtime.block_on(socp_bench::run_big_state(cfg)).map(|_| ());
    }
    let cfg = BenchConfig {
        socp,
        seconds: args.seconds,
        pairs: args.pairs,
        idle: args.idle,
        out: args.out,
    };
    runtime.block_on(socp_bench::run(cfg)).map(|_| ())
}

/// `socp` in this binary's folder, where cargo builds both.
fn beside_this_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let socp = exe.with_file_name("socp");
    if !socp.is_file() {
        anyhow::bail!(
            "no socp binary at {} (build it with `cargo build --release --workspace`, or pass --socp PATH)",
            socp.display()
        );
    }
    Ok(socp)
}
