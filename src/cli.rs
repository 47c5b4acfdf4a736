//! The command line: `socp gen`, `socp node`, `socp client`. Parsing only;
//! each subcommand calls into the library.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// What `socp --version` says: the crate version and the commit it was
/// built from (`build.rs`; "unknown commit" when built outside a git checkout).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SOCP_COMMIT"), ")");

pub use crate::logging::LogFormat;

/// Secure Overlay Chat Protocol: a mesh of chat servers with end-to-end
/// encrypted messages, groups and files.
#[derive(Debug, Parser)]
#[command(name = "socp", version = VERSION, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text or as one JSON object per line (on stderr; levels
    /// from RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a server identity (id and RSA-4096 key) in the keys folder, or
    /// a self-signed TLS certificate for a test mesh.
    Gen(GenArgs),
    /// Run a server: the master (user directory, mailbox) or a local.
    Node(Box<NodeArgs>),
    /// Attach to a server as a user.
    Client(ClientArgs),
    /// Operate a node's database: print its users, servers or mailbox;
    /// make and list invites; list or add admitted servers; remove a user or
    /// reset a user's key; back it up and restore it; show running nodes.
    Admin(AdminArgs),
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// What `socp admin` does.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// The directory: user ids and their pinned keys (read-only; safe while
    /// the node runs).
    Users(DbArg),
    /// Servers of the mesh and their pinned keys (read-only).
    Servers(DbArg),
    /// Frames in custody by destination: the master's offline mailbox (read-only).
    Mailbox(DbArg),
    /// Make a one-use invite code for --registration invite (safe while the
    /// master runs).
    Invite(DbArg),
    /// List the invite codes and who used each.
    Invites(DbArg),
    /// List the servers an --admit file admits or, with ENTRY, add one: a
    /// server id or key fingerprint (as `socp gen` prints them).
    Admit(AdmitArgs),
    /// Remove a user from the directory (and its mailbox); the id becomes
    /// free. The node must be stopped.
    RemoveUser(UserArg),
    /// Forget a user's pinned key (for a lost key): the next hello pins a
    /// new one, whatever the registration policy. The node must be stopped.
    ResetKey(UserArg),
    /// Copy a node's database to FILE: one consistent snapshot, taken with
    /// SQLite's online backup API (safe while the node runs). The node's
    /// identity (keys/<role>.pem and .id) is not in it: back it up too.
    Backup(BackupArgs),
    /// Check a backup (integrity, schema version) and put it in place of a
    /// node's database, keeping the old one beside it. The node must be
    /// stopped.
    Restore(RestoreArgs),
    /// Show running nodes from their --metrics address: links, users
    /// online, custody and mailbox sizes, quotas in use.
    Status(StatusArgs),
}

/// Running nodes to ask.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A node's --metrics address, http://HOST:PORT (repeatable: one per
    /// node of the mesh).
    #[arg(long, required = true, num_args = 1..)]
    pub metrics: Vec<String>,
    /// Print JSON (an array, one object per node) instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// A database to back up, and where to.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The node's SQLite database.
    #[arg(long)]
    pub db: PathBuf,
    /// The backup file to write (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

/// A backup to restore, and where to.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (from socp admin backup).
    #[arg(long)]
    pub from: PathBuf,
    /// The node's SQLite database to replace (or create).
    #[arg(long)]
    pub db: PathBuf,
}

/// A node database.
#[derive(Debug, Args)]
pub struct DbArg {
    /// The node's SQLite database.
    #[arg(long)]
    pub db: PathBuf,
}

/// A user of a node database.
#[derive(Debug, Args)]
pub struct UserArg {
    /// The node's SQLite database.
    #[arg(long)]
    pub db: PathBuf,
    /// The user id.
    pub user: String,
}

/// An admit file and what to add to it.
#[derive(Debug, Args)]
pub struct AdmitArgs {
    /// The admit file the node reads (--admit); created if missing.
    #[arg(long)]
    pub file: PathBuf,
    /// A server id or key fingerprint to add.
    pub entry: Option<String>,
}

/// Which kind of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleArg {
    /// Holds the user directory, the server identities and the offline mailbox.
    Master,
    /// Serves users and links to the master.
    Local,
}

impl RoleArg {
    /// The file stem of this role's identity in the keys folder.
    pub fn name(self) -> &'static str {
        match self {
            RoleArg::Master => "master",
            RoleArg::Local => "local",
        }
    }
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// What to create: a master or local identity, a TLS certificate, shell
    /// completions or the man page.
    #[arg(value_enum)]
    pub what: GenWhat,
    /// completions: the shell to complete for.
    #[arg(value_enum, required_if_eq("what", "completions"))]
    pub shell: Option<clap_complete::Shell>,
    /// Folder for the identity files (<role>.pem, mode 0600, and <role>.id).
    #[arg(long, default_value = "keys")]
    pub keys: PathBuf,
    /// cert: folder for cert.pem and key.pem (default tls). man: write one
    /// page per command there (socp.1, socp-node.1, …) instead of printing
    /// socp.1.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cert: a host name or IP address the certificate is for (repeatable;
    /// default localhost and 127.0.0.1).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
}

/// What `socp gen` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenWhat {
    /// The master's identity.
    Master,
    /// A local server's identity.
    Local,
    /// A self-signed certificate and key (cert.pem, key.pem) for wss://.
    Cert,
    /// Shell completions for SHELL (bash, zsh, fish, elvish, powershell), on stdout.
    Completions,
    /// The man page (roff), on stdout.
    Man,
}

/// `socp node`'s flags. The same names, without the dashes, are the keys of
/// its `--config` file (`crate::config`): serde reads the file into this
/// struct, so a new flag is a config key too.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NodeArgs {
    /// Read the settings from this TOML file (keys are the flag names
    /// without the dashes, e.g. `master-url = "ws://…"`); flags given on
    /// the command line win over it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (flags over --config over the
    /// defaults) as a config file, check it, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// The flags given on the command line (their long names), which
    /// override the config file; filled by [`Cli::parse_with_sources`].
    #[arg(skip)]
    #[serde(skip)]
    pub given: BTreeSet<String>,
    /// Run as the master or as a local server.
    #[arg(long, value_enum, default_value = "master")]
    pub role: RoleArg,
    /// Address to listen on; port 0 picks a free port (the log says which).
    /// Default: 127.0.0.1:9101 for the master, 127.0.0.1:9102 for a local.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// SQLite database file, created with its folder if missing.
    /// Default: data/master.sqlite or data/local.sqlite.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Folder holding this server's identity (<role>.pem and <role>.id),
    /// created on first start.
    #[arg(long, default_value = "keys")]
    pub keys: PathBuf,
    /// WebSocket URL of the master (required for a local), e.g. ws://127.0.0.1:9101.
    #[arg(long)]
    pub master_url: Option<String>,
    /// WebSocket URLs of other servers to link to directly.
    #[arg(long, num_args = 1..)]
    pub peers: Vec<String>,
    /// The URL other servers dial this one at, announced by the master to
    /// the other locals (default: ws:// or wss:// and the --listen address;
    /// needed when listening on 0.0.0.0 or behind a proxy).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Admit reference (unsigned) clients: their hello carries no signature,
    /// so anyone can claim their name before they do.
    #[arg(long)]
    pub allow_legacy_clients: bool,
    /// Master: how long content for an offline user is kept, in seconds
    /// (default 7 days); older frames are dropped and counted.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub mailbox_max_age_secs: u64,
    /// Most frames kept waiting for one user (offline, or online and not
    /// acknowledging); beyond it senders get QUOTA_EXCEEDED.
    #[arg(long, default_value_t = 10_000)]
    pub mailbox_max_frames: usize,
    /// Most bytes kept waiting for one user, likewise.
    #[arg(long, default_value_t = 256 << 20)]
    pub mailbox_max_bytes: usize,
    /// Most bytes of content a node keeps waiting for all users together
    /// (on disk); beyond it senders get QUOTA_EXCEEDED.
    #[arg(long, default_value_t = 1 << 30)]
    pub custody_max_bytes: usize,
    /// Most frames a node keeps waiting from one sender, all recipients
    /// together; beyond it the sender gets QUOTA_EXCEEDED.
    #[arg(long, default_value_t = 20_000)]
    pub sender_max_frames: usize,
    /// Most bytes a node keeps waiting from one sender, likewise.
    #[arg(long, default_value_t = 256 << 20)]
    pub sender_max_bytes: usize,
    /// Do not use mac-v1 link sessions: sign every frame with RSA, as towards
    /// reference peers (for measurements).
    #[arg(long)]
    pub no_mac: bool,
    /// Frames per second one user connection may send; beyond it, RATE_LIMITED.
    #[arg(long, default_value_t = 1000.0)]
    pub user_rate: f64,
    /// Frames a user connection may send in one burst.
    #[arg(long, default_value_t = 2000.0)]
    pub user_burst: f64,
    /// Connections one IP address may hold open; more are refused with RATE_LIMITED.
    #[arg(long, default_value_t = 256)]
    pub max_conns_per_ip: usize,
    /// Members one group key share may name; more is refused with TOO_LARGE.
    #[arg(long, default_value_t = 1000)]
    pub max_group_members: usize,
    /// Largest file a transfer may announce, in bytes; more is refused with TOO_LARGE.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_file_size: u64,
    /// Seconds a new connection has to say hello before it is closed.
    #[arg(long, default_value_t = 10)]
    pub hello_timeout_secs: u64,
    /// Seconds a write may make no progress before the connection is closed
    /// (a peer that stops reading is disconnected).
    #[arg(long, default_value_t = 20)]
    pub write_timeout_secs: u64,
    /// Seconds a frame may take to arrive once its first bytes have (a peer
    /// trickling a frame cannot hold its buffer for good).
    #[arg(long, default_value_t = 30)]
    pub frame_timeout_secs: u64,
    /// Bytes of answers a user connection may leave unread in its queue;
    /// more closes it with QUOTA_EXCEEDED (content is sent again after).
    #[arg(long, default_value_t = 1 << 20)]
    pub user_queue_bytes: usize,
    /// At a local: hold the presence of at most this many remote users, those
    /// its users addressed most recently, asking the master on demand
    /// (presence-lookup-v1; at most 65536, the default). 0: hold everyone's,
    /// as a reference local does.
    #[arg(long, default_value_t = crate::node::PRESENCE_CACHE)]
    pub presence_cache: usize,
    /// Connections the node holds at once from all addresses; more are
    /// refused (RATE_LIMITED).
    #[arg(long, default_value_t = crate::node::MAX_CONNS)]
    pub max_conns: usize,
    /// Serve wss:// with this PEM certificate (chain); needs --tls-key.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// A PEM CA certificate to trust, besides the system's, when dialing wss:// servers.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9190).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Link only with the servers this file lists: server ids or key
    /// fingerprints, one per line, `#` comments (socp admin admit adds
    /// one). Read again at every link hello. Without it any server that
    /// proves its key may link. A local's own master needs no entry.
    #[arg(long)]
    pub admit: Option<PathBuf>,
    /// Master: who may register new user ids: anyone (open), a hello with an
    /// unused invite from socp admin invite (invite), or no one (closed).
    #[arg(long, value_enum, default_value = "open")]
    pub registration: crate::node::Registration,
    /// New user ids one IP address may register per hour (0: no bound);
    /// beyond it, RATE_LIMITED. A local counts the unknown ids it forwards.
    #[arg(long, default_value_t = crate::node::policy::DEFAULT_PER_ADDRESS_HOUR)]
    pub registrations_per_address: u32,
    /// Master: new user ids one local server may register per hour (0: no bound).
    #[arg(long, default_value_t = crate::node::policy::DEFAULT_PER_SERVER_HOUR)]
    pub registrations_per_server: u32,
    /// Serve the browser client at http(s)://LISTEN/ on the WebSocket port
    /// (off: WebSocket only; serve a copy of web/ you trust yourself).
    #[arg(long, value_enum, default_value = "on")]
    pub web: WebArg,
}

/// `--web on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebArg {
    /// Serve the browser client.
    On,
    /// Do not: plain HTTP requests fail the WebSocket handshake.
    Off,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Your user id: 1-64 of A-Z a-z 0-9 . _ -
    #[arg(long)]
    pub user: String,
    /// WebSocket URL of the server to attach to, e.g. ws://127.0.0.1:9102.
    #[arg(long)]
    pub server: String,
    /// Folder holding your key (<user>.pem, created on first run) and keyring.
    #[arg(long, default_value = "keys")]
    pub keys: PathBuf,
    /// Folder received files are saved in.
    #[arg(long, default_value = "downloads")]
    pub downloads: PathBuf,
    /// Read commands from stdin and print one JSON event per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// A PEM CA certificate to trust, besides the system's, for a wss:// server.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Largest file to send or accept, in bytes.
    #[arg(long, default_value_t = crate::client::files::DEFAULT_MAX_FILE)]
    pub max_file_size: u64,
    /// An invite code (socp admin invite), for a first hello on a mesh that
    /// registers by invite.
    #[arg(long)]
    pub invite: Option<String>,
}

impl Cli {
    /// Parses the process's arguments like [`Parser::parse`] (exiting with
    /// clap's message on a bad one), and records which node flags were
    /// given on the command line.
    pub fn parse_with_sources() -> Cli {
        Self::from_matches(&Cli::command().get_matches()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_with_sources`] for the arguments given (the first is the
    /// program name).
    pub fn try_parse_with_sources<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::from_matches(&Cli::command().try_get_matches_from(args)?)
    }

    /// clap's `value_source` tells a value typed on the command line from a
    /// default: only the former overrides the config file.
    fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(matches)?;
        if let (Command::Node(args), Some(("node", sub))) = (&mut cli.command, matches.subcommand())
        {
            let command = Cli::command();
            let node = command.find_subcommand("node");
            args.given = node
                .into_iter()
                .flat_map(|c| c.get_arguments())
                .filter(|arg| {
                    sub.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
                })
                .filter_map(|arg| arg.get_long().map(str::to_owned))
                .collect();
        }
        Ok(cli)
    }
}

/// The defaults are clap's: one source of truth for the flags and the file.
impl Default for NodeArgs {
    fn default() -> Self {
        let command = NodeArgs::augment_args(clap::Command::new("node"));
        let parsed = command
            .try_get_matches_from(["node"])
            .and_then(|matches| NodeArgs::from_arg_matches(&matches));
        match parsed {
            Ok(args) => args,
            // No node flag is required, so no argument at all always parses:
            // `cli::tests::node_args_have_defaults` holds it.
            Err(e) => unreachable!("socp node without flags must parse: {e}"),
        }
    }
}

impl NodeArgs {
    /// The listen address, defaulted by role.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| match self.role {
            RoleArg::Master => SocketAddr::from(([127, 0, 0, 1], 9101)),
            RoleArg::Local => SocketAddr::from(([127, 0, 0, 1], 9102)),
        })
    }

    /// The database path, defaulted by role.
    pub fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("data/{}.sqlite", self.role.name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn master_needs_no_flags() {
        let cli = Cli::try_parse_from(["socp", "node", "--role", "master"]).unwrap();
        let Command::Node(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.listen_addr().to_string(), "127.0.0.1:9101");
        assert_eq!(args.db_path(), PathBuf::from("data/master.sqlite"));
    }

    #[test]
    fn node_args_have_defaults() {
        let args = NodeArgs::default();
        assert_eq!(args.role, RoleArg::Master);
        assert_eq!(args.keys, PathBuf::from("keys"));
        assert!(args.given.is_empty());
    }

    #[test]
    fn only_flags_typed_on_the_command_line_are_given() {
        let cli = Cli::try_parse_with_sources([
            "socp",
            "node",
            "--role",
            "master",
            "--listen",
            "127.0.0.1:0",
            "--no-mac",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!()
        };
        let given: Vec<&str> = args.given.iter().map(String::as_str).collect();
        assert_eq!(given, ["listen", "no-mac", "role"]);
    }
}
