//! What a node runs with: its config file (`socp node --config FILE`), TOML
//! whose keys are the `socp node` flags without their dashes, laid under the
//! flags typed on the command line, over clap's defaults; and the settings
//! that result, checked and mapped to the library's [`NodeConfig`] (the node
//! itself knows nothing of flags).
//!
//! The file is read into [`NodeArgs`] itself (serde, `deny_unknown_fields`),
//! so every flag is a key, a misspelt key is refused with its line, and a new
//! flag needs no code here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, NodeArgs, RoleArg, WebArg};
use crate::node::{Admission, Limits, MailboxLimits, NodeConfig};

/// Flags that are about the file itself, not settings: not keys of it.
const NOT_KEYS: &[&str] = &["config", "print-config"];

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message (the source) names the line and column, shows the
    /// line, and for an unknown key names it and the keys there are.
    #[error("config file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("laying the command line over the config file: {0}")]
    Layer(String),
    #[error("a local node needs --master-url ws://HOST:PORT (the master's address)")]
    NoMasterUrl,
    #[error("--master-url is for local nodes; the master is the directory itself")]
    MasterUrlOnMaster,
    #[error("--tls-cert and --tls-key go together: give both (socp gen cert makes a pair)")]
    HalfTls,
}

/// The node's configuration from its (layered) flags, checked: a local
/// needs its master's URL, the master has none, TLS needs both files.
pub fn node_config(args: &NodeArgs) -> Result<NodeConfig, ConfigError> {
    let master = args.role == RoleArg::Master;
    match (master, &args.master_url) {
        (false, None) => return Err(ConfigError::NoMasterUrl),
        (true, Some(_)) => return Err(ConfigError::MasterUrlOnMaster),
        _ => {}
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        _ => return Err(ConfigError::HalfTls),
    };
    Ok(NodeConfig {
        master,
        listen: args.listen_addr(),
        db: args.db_path(),
        keys: args.keys.clone(),
        master_url: args.master_url.clone(),
        peers: args.peers.clone(),
        advertise_url: args.advertise_url.clone(),
        allow_legacy_clients: args.allow_legacy_clients,
        mailbox: MailboxLimits {
            max_age_ms: (args.mailbox_max_age_secs as i64).saturating_mul(1000),
            max_frames: args.mailbox_max_frames,
            max_bytes: args.mailbox_max_bytes,
            max_total_bytes: args.custody_max_bytes,
            max_sender_frames: args.sender_max_frames,
            max_sender_bytes: args.sender_max_bytes,
        },
        mac: !args.no_mac,
        limits: Limits {
            user_rate: args.user_rate,
            user_burst: args.user_burst,
            max_conns_per_ip: args.max_conns_per_ip,
            max_group_members: args.max_group_members,
            max_file_size: args.max_file_size,
            hello_timeout: Duration::from_secs(args.hello_timeout_secs.max(1)),
            write_timeout: Duration::from_secs(args.write_timeout_secs.max(1)),
            max_conns: args.max_conns.max(1),
            frame_timeout: Duration::from_secs(args.frame_timeout_secs.max(1)),
            user_queue_bytes: args.user_queue_bytes,
            presence_cache: args.presence_cache,
        },
        metrics: args.metrics,
        tls,
        ca: args.ca.clone(),
        admission: Admission {
            admit: args.admit.clone(),
            registration: args.registration,
            per_address_hour: args.registrations_per_address,
            per_server_hour: args.registrations_per_server,
        },
        web: args.web == WebArg::On,
    })
}

/// `args` with the settings of its `--config` file (if any) filled in, for
/// every flag that was not typed on the command line (`args.given`).
pub fn layer(args: NodeArgs) -> Result<NodeArgs, ConfigError> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let file = parse(&path, &text)?;
    let mut merged = toml::Table::try_from(&args).map_err(|e| ConfigError::Layer(e.to_string()))?;
    for (key, value) in file {
        if !args.given.contains(&key) {
            merged.insert(key, value);
        }
    }
    let mut layered: NodeArgs = merged
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Layer(e.to_string()))?;
    layered.config = args.config;
    layered.print_config = args.print_config;
    layered.given = args.given;
    Ok(layered)
}

/// The file's keys and values, checked against [`NodeArgs`]: an unknown key
/// or a value of the wrong type is an error naming its line.
fn parse(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let error = |source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    };
    toml::from_str::<NodeArgs>(text).map_err(error)?;
    toml::from_str::<toml::Table>(text).map_err(error)
}

/// The configuration `args` runs with, as a config file: the role's default
/// address and database written out, and a comment for each key left unset.
///
/// Nothing is redacted because no setting is a secret: the private keys
/// (`keys`, `tls-key`) are named by path and never read here.
pub fn effective_toml(args: &NodeArgs) -> Result<String, ConfigError> {
    let mut resolved = args.clone();
    resolved.listen = Some(args.listen_addr());
    resolved.db = Some(args.db_path());
    let table = toml::Table::try_from(&resolved).map_err(|e| ConfigError::Layer(e.to_string()))?;
    let mut out = String::from(
        "# socp node: the effective configuration (flags over --config over defaults)\n",
    );
    if let Some(path) = &args.config {
        out.push_str(&format!("# config file: {}\n", path.display()));
    }
    // From the struct, not the table: the keys in the order of `--help`.
    out.push_str(&toml::to_string(&resolved).map_err(|e| ConfigError::Layer(e.to_string()))?);
    for key in keys() {
        if !table.contains_key(&key) {
            out.push_str(&format!("# {key} = (not set)\n"));
        }
    }
    Ok(out)
}

/// Every config key: the long names of `socp node`'s flags, in help order.
pub fn keys() -> Vec<String> {
    let command = Cli::command();
    command
        .find_subcommand("node")
        .into_iter()
        .flat_map(|node| node.get_arguments())
        .filter_map(|arg| arg.get_long())
        .filter(|long| !NOT_KEYS.contains(long) && !["help", "version"].contains(long))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn node_args(argv: &[&str]) -> NodeArgs {
        let cli = Cli::try_parse_with_sources(["socp", "node"].iter().chain(argv)).unwrap();
        match cli.command {
            crate::cli::Command::Node(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_flag_is_a_key_of_the_printed_file() {
        let printed = effective_toml(&NodeArgs::default()).unwrap();
        let keys = keys();
        assert!(keys.len() > 20, "{keys:?}");
        for key in keys {
            assert!(
                printed.contains(&format!("\n{key} = "))
                    || printed.contains(&format!("# {key} = ")),
                "{key} missing from\n{printed}"
            );
        }
    }

    #[test]
    fn the_file_fills_what_the_command_line_does_not_say() {
        let (_dir, path) = file(
            "role = \"local\"\nmaster-url = \"ws://m:9101\"\nlisten = \"127.0.0.1:7000\"\n\
             peers = [\"ws://a:1\", \"ws://b:2\"]\nuser-rate = 5\nno-mac = true\n\
             registration = \"invite\"\n",
        );
        let args = node_args(&[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        let args = layer(args).unwrap();
        assert_eq!(args.role, crate::cli::RoleArg::Local);
        assert_eq!(args.master_url.as_deref(), Some("ws://m:9101"));
        assert_eq!(args.listen_addr().to_string(), "127.0.0.1:0");
        assert_eq!(args.peers, ["ws://a:1", "ws://b:2"]);
        assert_eq!(args.user_rate, 5.0);
        assert!(args.no_mac);
        assert_eq!(args.registration, crate::node::Registration::Invite);
        assert_eq!(args.mailbox_max_frames, 10_000, "a default stays");
    }

    #[test]
    fn a_bad_value_is_refused_with_its_key_and_line() {
        let (_dir, path) = file("role = \"master\"\n\nmax-conns = \"many\"\n");
        let err = layer(node_args(&["--config", path.to_str().unwrap()])).unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(
            text.contains("line 3") && text.contains("max-conns"),
            "{text}"
        );
        assert!(text.contains("node.toml"), "{text}");
    }

    #[test]
    fn the_flags_about_the_file_are_not_keys() {
        let (_dir, path) = file("config = \"other.toml\"\n");
        let err = layer(node_args(&["--config", path.to_str().unwrap()])).unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("unknown field `config`"), "{text}");
    }

    #[test]
    fn the_flags_map_to_the_node_config() {
        let config = node_config(&node_args(&[
            "--role",
            "local",
            "--master-url",
            "ws://m:1",
            "--mailbox-max-age-secs",
            "60",
            "--hello-timeout-secs",
            "0",
            "--no-mac",
        ]))
        .unwrap();
        assert!(!config.master && !config.mac);
        assert_eq!(config.master_url.as_deref(), Some("ws://m:1"));
        assert_eq!(config.mailbox.max_age_ms, 60_000);
        assert_eq!(
            config.limits.hello_timeout,
            Duration::from_secs(1),
            "at least 1 s"
        );
        assert!(config.tls.is_none());
    }

    #[test]
    fn inconsistent_flags_are_refused() {
        let refused = |argv: &[&str]| node_config(&node_args(argv)).unwrap_err().to_string();
        assert!(refused(&["--role", "local"]).contains("needs --master-url"));
        assert!(refused(&["--master-url", "ws://m:1"]).contains("for local nodes"));
        assert!(refused(&["--tls-cert", "c.pem"]).contains("go together"));
    }

    #[test]
    fn the_printed_file_reads_back_to_the_same_settings() {
        let args = node_args(&[
            "--role",
            "local",
            "--master-url",
            "ws://m:1",
            "--peers",
            "ws://p:2",
        ]);
        let printed = effective_toml(&args).unwrap();
        let (_dir, path) = file(&printed);
        let again = layer(node_args(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(
            effective_toml(&again)
                .unwrap()
                .lines()
                .skip(2)
                .collect::<Vec<_>>(),
            printed.lines().skip(1).collect::<Vec<_>>()
        );
    }
}
