//! `socp node --config FILE` through the real binary: a node listens where
//! its file says, a flag beats the file, a misspelt key is refused with its
//! name and line, and `--print-config` prints a file that reads back to the
//! settings the node runs with.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_socp");
/// How long a node may take to say it listens.
const START_WAIT: Duration = Duration::from_secs(30);

/// A node process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder with a master identity (a cached key: no RSA generation) in
/// `DIR/ids` and a config file `DIR/master.toml` holding `body` after the
/// `keys` and `db` settings.
fn master_dir(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids");
    std::fs::create_dir_all(&ids).unwrap();
    std::fs::copy(
        common::cluster::cached_key("server-0"),
        ids.join("master.pem"),
    )
    .unwrap();
    let file = dir.path().join("master.toml");
    std::fs::write(
        &file,
        format!("# the master\nrole = \"master\"\nkeys = \"ids\"\ndb = \"state/m.sqlite\"\n{body}"),
    )
    .unwrap();
    (dir, file)
}

/// Starts `socp node ARGS` in `dir`; returns it and the address its
/// "listening on ws://…" log line names.
fn start(dir: &Path, args: &[&str]) -> (Running, String) {
    let mut child = Command::new(BIN)
        .arg("node")
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some((_, rest)) = line.split_once("listening on ws://") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    return (running, addr);
                }
            }
            Err(e) => panic!("the node did not say it listens ({e}): {args:?}"),
        }
    }
}

/// `socp node ARGS` run to completion in `dir`: (success, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("node")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_node_listens_where_its_config_file_says() {
    // 127.0.0.2: an address no default names, so the log proves the file was read.
    let (dir, _) = master_dir("listen = \"127.0.0.2:0\"\n");
    let (_node, addr) = start(dir.path(), &["--config", "master.toml"]);
    assert!(addr.starts_with("127.0.0.2:"), "{addr}");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    std::net::TcpStream::connect(("127.0.0.2", port)).expect("the node accepts connections");
    assert!(
        dir.path().join("state/m.sqlite").exists(),
        "db from the file"
    );
    assert!(
        dir.path().join("ids/master.id").exists(),
        "keys from the file"
    );
}

#[test]
fn a_flag_overrides_the_config_file() {
    let (dir, _) = master_dir("listen = \"127.0.0.2:0\"\n");
    let (_node, addr) = start(
        dir.path(),
        &["--config", "master.toml", "--listen", "127.0.0.1:0"],
    );
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    // The file's other settings still hold.
    assert!(dir.path().join("state/m.sqlite").exists());
}

#[test]
fn an_unknown_key_is_refused_with_its_name_file_and_line() {
    let (dir, _) = master_dir("listen = \"127.0.0.1:0\"\nmailbox-max-frame = 10\n");
    let (ok, _, err) = run(dir.path(), &["--config", "master.toml"]);
    assert!(!ok);
    assert!(err.contains("master.toml"), "{err}");
    assert!(err.contains("line 6"), "{err}");
    assert!(err.contains("unknown field `mailbox-max-frame`"), "{err}");
    assert!(!dir.path().join("state").exists(), "nothing was started");
}

#[test]
fn print_config_reads_back_to_what_the_node_runs_with() {
    let (dir, _) = master_dir("listen = \"127.0.0.2:0\"\nmailbox-max-frames = 77\n");
    let (ok, printed, err) = run(
        dir.path(),
        &[
            "--config",
            "master.toml",
            "--print-config",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "ws://127.0.0.1:1",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        !dir.path().join("state").exists(),
        "--print-config starts nothing"
    );

    let table: toml::Table = toml::from_str(&printed).expect("the output is TOML");
    assert_eq!(table["listen"].as_str(), Some("127.0.0.1:0"), "the flag");
    assert_eq!(table["db"].as_str(), Some("state/m.sqlite"), "the file");
    assert_eq!(
        table["mailbox-max-frames"].as_integer(),
        Some(77),
        "the file"
    );
    assert_eq!(
        table["max-conns-per-ip"].as_integer(),
        Some(256),
        "a default"
    );
    assert_eq!(table["peers"].as_array().map(Vec::len), Some(1), "the flag");
    assert!(printed.contains("# tls-key = (not set)"), "{printed}");

    // Fed back, the printed file prints itself and runs the same node.
    std::fs::write(dir.path().join("printed.toml"), &printed).unwrap();
    let (ok, again, err) = run(dir.path(), &["--config", "printed.toml", "--print-config"]);
    assert!(ok, "{err}");
    let body = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("# socp node") && !l.starts_with("# config file"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(body(&again), body(&printed));
    let (_node, addr) = start(dir.path(), &["--config", "printed.toml"]);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(dir.path().join("state/m.sqlite").exists());
}

#[test]
fn print_config_checks_the_configuration() {
    let (dir, _) = master_dir("role = \"local\"\n");
    let (ok, _, err) = run(dir.path(), &["--config", "master.toml", "--print-config"]);
    assert!(!ok);
    // role twice: the file's own duplicate key is a TOML error with its line.
    assert!(err.contains("line 5"), "{err}");

    let (dir, file) = master_dir("");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("master\"", "local\"");
    std::fs::write(&file, text).unwrap();
    let (ok, _, err) = run(dir.path(), &["--config", "master.toml", "--print-config"]);
    assert!(!ok);
    assert!(err.contains("--master-url"), "{err}");
}
