//! What each subcommand does: the glue between the parsed command line and
//! the library, with `anyhow` context for the user.

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

use crate::cli::{AdminCommand, Cli, ClientArgs, Command, GenArgs, GenWhat, NodeArgs, RoleArg};
use crate::client;
use crate::node;

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> Result<()> {
    // A node logs what it does; a client only what goes wrong (its output is
    // the conversation).
    crate::logging::init(
        if matches!(cli.command, Command::Client(_)) {
            "warn"
        } else {
            "info"
        },
        cli.log_format,
    );
    match cli.command {
        Command::Gen(args) => gen_identity(args),
        Command::Node(args) => run_node(*args),
        Command::Client(args) => run_client(args),
        Command::Admin(args) => run_admin(args.command),
    }
}

fn run_admin(command: AdminCommand) -> Result<()> {
    use crate::admin::{self, Table};
    match command {
        AdminCommand::Users(a) => admin::show(&a.db, Table::Users),
        AdminCommand::Servers(a) => admin::show(&a.db, Table::Servers),
        AdminCommand::Mailbox(a) => admin::show(&a.db, Table::Mailbox),
        AdminCommand::Invite(a) => {
            let code = admin::make_invite(&a.db)?;
            println!("{code}");
            eprintln!(
                "one-use invite: the new user runs socp client --invite {code} (for a master with --registration invite)"
            );
            Ok(())
        }
        AdminCommand::Invites(a) => admin::show_invites(&a.db),
        AdminCommand::Admit(a) => admin::admit(&a.file, a.entry.as_deref()),
        AdminCommand::RemoveUser(a) => admin::remove_user(&a.db, &a.user),
        AdminCommand::ResetKey(a) => admin::reset_key(&a.db, &a.user),
        AdminCommand::Backup(a) => {
            let summary = admin::backup::backup(&a.db, &a.out)?;
            println!(
                "backed up {} to {} ({summary}); also keep a copy of the node's keys folder",
                a.db.display(),
                a.out.display()
            );
            Ok(())
        }
        AdminCommand::Status(a) => show_status(&a.metrics, a.json),
        AdminCommand::Restore(a) => {
            let done = admin::backup::restore(&a.from, &a.db)?;
            println!(
                "checked {} (integrity ok, {}) and restored it to {}",
                a.from.display(),
                done.summary,
                a.db.display()
            );
            match done.kept {
                Some(old) => println!("the database it replaced is kept as {}", old.display()),
                None => println!("there was no database at {} before", a.db.display()),
            }
            let latest = crate::store::Schema::Node.latest_version();
            if done.summary.version < latest {
                println!(
                    "the node migrates it from schema version {} to {latest} when it starts",
                    done.summary.version
                );
            }
            Ok(())
        }
    }
}

/// `socp admin status`: every node asked, the unreachable ones named.
fn show_status(urls: &[String], json: bool) -> Result<()> {
    let mut nodes = Vec::new();
    let mut failed = Vec::new();
    for url in urls {
        match crate::admin::status::status(url) {
            Ok(n) => nodes.push(n),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&nodes).context("writing JSON")?
        );
    } else {
        print!("{}", crate::admin::status::render(&nodes));
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn gen_identity(args: GenArgs) -> Result<()> {
    let role = match args.what {
        GenWhat::Completions => {
            let shell = args.shell.context(
                "socp gen completions needs a shell: bash, zsh, fish, elvish or powershell",
            )?;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "socp", &mut std::io::stdout());
            return Ok(());
        }
        GenWhat::Man => return gen_man(args.out.as_deref()),
        GenWhat::Cert => {
            let out = args.out.unwrap_or_else(|| std::path::PathBuf::from("tls"));
            let (cert, key) = crate::tls::generate(&out, &args.hosts)?;
            println!(
                "wrote {} and {}: serve with --tls-cert {} --tls-key {}; trust with --ca {}",
                cert.display(),
                key.display(),
                cert.display(),
                key.display(),
                cert.display()
            );
            return Ok(());
        }
        GenWhat::Master => RoleArg::Master,
        GenWhat::Local => RoleArg::Local,
    };
    let args = GenArgsResolved {
        role,
        keys: args.keys,
    };
    let master = args.role == RoleArg::Master;
    let (identity, created) =
        node::identity::load_or_create(&args.keys, master).with_context(|| {
            format!(
                "creating the {} identity in {}",
                args.role.name(),
                args.keys.display()
            )
        })?;
    let verb = if created {
        "created"
    } else {
        "already exists:"
    };
    println!(
        "{} identity {verb} {} (key fingerprint {})",
        args.role.name(),
        identity.id,
        identity.key.public().fingerprint()
    );
    Ok(())
}

/// `socp gen man`: socp.1 on stdout, or with `--out DIR` one page per
/// command in DIR (socp.1, socp-node.1, …) for `man -M`.
fn gen_man(out: Option<&std::path::Path>) -> Result<()> {
    let command = Cli::command();
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("writing the man pages to {}", dir.display()))?;
            println!("wrote the man pages to {}", dir.display());
        }
        None => clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .context("writing the man page")?,
    }
    Ok(())
}

fn run_node(args: NodeArgs) -> Result<()> {
    let args = crate::config::layer(args)?;
    let config = crate::config::node_config(&args)?;
    if args.print_config {
        print!("{}", crate::config::effective_toml(&args)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives while the node starts must
        // stop it cleanly, not kill it.
        let mut signals = StopSignals::install()?;
        let node = node::Node::start(config).await?;
        tokio::select! {
            signal = signals.wait() => {
                tracing::info!("{signal}: shutting down");
            }
            () = node.stopped() => {}
        }
        node.shutdown().await;
        Ok(())
    })
}

fn run_client(args: ClientArgs) -> Result<()> {
    if !(args.server.starts_with("ws://") || args.server.starts_with("wss://")) {
        bail!(
            "--server must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:9102 (got {:?})",
            args.server
        );
    }
    let mut config = client::config(
        &args.user,
        &args.server,
        &args.keys,
        args.downloads.clone(),
        args.max_file_size,
    );
    config.invite = args.invite.clone();
    if let Some(ca) = &args.ca {
        config.tls = Some(crate::tls::client_config(Some(ca)).context("loading --ca")?);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        if args.json {
            let input = client::spawn_stdin();
            client::Engine::open(config, client::JsonFrontend)
                .await?
                .run(input)
                .await?;
        } else {
            let banner = format!(
                "socp client: /help lists the commands; connecting to {} as {}",
                args.server, args.user
            );
            client::run_terminal(config, &banner).await?;
        }
        Ok(())
    })
}

struct GenArgsResolved {
    role: RoleArg,
    keys: std::path::PathBuf,
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the moment of install.
struct StopSignals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
                term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Resolves on the first signal, naming it.
    async fn wait(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
