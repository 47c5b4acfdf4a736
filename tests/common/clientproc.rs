//! `socp client --json` as a real process: commands on stdin, events read
//! from stdout as JSON, every wait bounded.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::cluster::WAIT;

const BIN: &str = env!("CARGO_BIN_EXE_socp");

pub struct ClientProc {
    pub user: String,
    pub dir: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    /// Events read but not yet matched by `expect`.
    pub seen: Vec<Value>,
}

/// `socp client --user USER --server URL --keys DIR/keys --downloads
/// DIR/downloads EXTRA...` with `RUST_LOG=warn`, after putting `user`'s
/// fixture key in `DIR/keys` (unless one is there).
pub fn client_command(dir: &Path, user: &str, server: &str, extra: &[&str]) -> Command {
    install_key(dir, user);
    let mut cmd = Command::new(BIN);
    cmd.args(["client", "--user", user, "--server", server])
        .arg("--keys")
        .arg(dir.join("keys"))
        .arg("--downloads")
        .arg(dir.join("downloads"))
        .args(extra)
        .env("RUST_LOG", "warn");
    cmd
}

/// Puts `user`'s fixture key in `dir/keys` (unless one is there).
pub fn install_key(dir: &Path, user: &str) {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let pem = keys.join(format!("{user}.pem"));
    if !pem.exists() {
        std::fs::copy(fixture_pem(user), &pem).unwrap();
    }
}

/// Fixture key files by user name.
pub fn fixture_pem(user: &str) -> PathBuf {
    let rel = match user {
        "alice" => "keys/alice.pem",
        "bob" => "keys/bob.pem",
        "carol" => "keys/carol.pem",
        "dave" => "reference-run/Alice.pem",
        other => panic!("no fixture key for {other}"),
    };
    super::vectors_dir().join(rel)
}

impl ClientProc {
    /// Starts a client whose folder is `dir` (keys/, downloads/), with the
    /// user's fixture key.
    pub async fn start(dir: &Path, user: &str, server: &str) -> ClientProc {
        Self::start_with(dir, user, server, &[]).await
    }

    /// Starts a client with extra flags; waits for it to connect unless it
    /// is expected to fail (`expect_connect` false).
    pub async fn start_with(dir: &Path, user: &str, server: &str, extra: &[&str]) -> ClientProc {
        let mut c = Self::spawn(dir, user, server, extra);
        c.expect("connected", |e| e["event"] == "connected").await;
        c
    }

    /// Starts a client without waiting for anything.
    pub fn spawn(dir: &Path, user: &str, server: &str, extra: &[&str]) -> ClientProc {
        let mut child = client_command(dir, user, server, &[&["--json"], extra].concat())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        ClientProc {
            user: user.to_owned(),
            dir: dir.to_owned(),
            child,
            stdin,
            events,
            seen: Vec::new(),
        }
    }

    pub fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    pub async fn cmd(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for an event matching `pred` (earlier unmatched events first).
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let found = tokio::time::timeout(WAIT, async {
            while let Some(ev) = self.events.recv().await {
                if pred(&ev) {
                    return Some(ev);
                }
                self.seen.push(ev);
            }
            None
        })
        .await;
        match found {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!(
                "{}: client exited while waiting for {what}; saw {:?}",
                self.user, self.seen
            ),
            Err(_) => panic!(
                "{}: no {what} within {WAIT:?}; saw {:?}",
                self.user, self.seen
            ),
        }
    }

    /// Events that arrive within `quiet`.
    pub async fn drain(&mut self, quiet: std::time::Duration) -> Vec<Value> {
        let mut out = std::mem::take(&mut self.seen);
        while let Ok(Some(ev)) = tokio::time::timeout(quiet, self.events.recv()).await {
            out.push(ev);
        }
        out
    }

    /// Events that arrive within the next `span` (however busy the stream).
    pub async fn collect_for(&mut self, span: std::time::Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + span;
        let mut out = std::mem::take(&mut self.seen);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            out.push(ev);
        }
        out
    }

    /// SIGKILL: no goodbye, no flush. Events it printed can still be read.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Every event left, until the process's stdout is closed.
    pub async fn rest(&mut self) -> Vec<Value> {
        let mut out = std::mem::take(&mut self.seen);
        while let Ok(Some(ev)) = tokio::time::timeout(WAIT, self.events.recv()).await {
            out.push(ev);
        }
        out
    }

    /// Closes stdin (end of input means /quit) and waits for the exit.
    pub async fn quit(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("client exits at end of input")
            .unwrap()
    }
}

/// `socp client` with the terminal front end (no `--json`): what a user
/// reads, line by line (stdout is a pipe, so without colour).
pub struct TermProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl TermProc {
    /// Starts a terminal client and waits until it says it is connected.
    pub async fn start(dir: &Path, user: &str, server: &str) -> TermProc {
        let mut child = client_command(dir, user, server, &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut t = TermProc {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        t.expect_line("connected", |l| l.contains(" connected as "))
            .await;
        t
    }

    pub async fn cmd(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for a line matching `pred`; every line read is kept in `seen`.
    pub async fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        found
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no {what} line within {WAIT:?}; saw {:?}", self.seen))
    }

    /// Lines printed within `quiet` from now.
    pub async fn drain(&mut self, quiet: std::time::Duration) -> Vec<String> {
        while let Ok(Some(line)) = tokio::time::timeout(quiet, self.lines.recv()).await {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    pub async fn quit(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}
