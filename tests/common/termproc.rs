//! `socp client` as a plain process for the terminal-client tests: any
//! flags, stdin kept open until the test closes it, stdout and stderr read
//! line by line (merged, in arrival order per stream), and the exit awaited
//! with a bound.
#![allow(dead_code)]

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::clientproc::client_command;
pub use super::clientproc::install_key;
use super::cluster::WAIT;

const BIN: &str = env!("CARGO_BIN_EXE_socp");

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// A running `socp client`.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<(Stream, String)>,
    /// Every line read so far.
    pub seen: Vec<(Stream, String)>,
    /// Lines read and not yet matched by an `expect`.
    unmatched: Vec<(Stream, String)>,
}

impl Proc {
    /// `socp client --user USER --server URL --keys DIR/keys --downloads
    /// DIR/downloads EXTRA...` with the fixture key.
    pub fn client(dir: &Path, user: &str, server: &str, extra: &[&str]) -> Proc {
        Self::spawn(client_command(dir, user, server, extra))
    }

    /// Runs `socp ARGS...`.
    pub fn socp(args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (stream, reader) in [
            (
                Stream::Out,
                Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            ),
            (Stream::Err, Box::new(err)),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            unmatched: Vec::new(),
        }
    }

    /// Types one line.
    pub async fn line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for a line (either stream) matching `pred`; returns it. Lines
    /// read before and not matched yet count first, each matched once.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(Stream, &str) -> bool) -> String {
        self.expect_within(WAIT, what, pred)
            .await
            .unwrap_or_else(|| panic!("no {what} within {WAIT:?}; saw {:#?}", self.seen))
    }

    /// Like [`Proc::expect`], None after `span`.
    pub async fn expect_within(
        &mut self,
        span: Duration,
        _what: &str,
        pred: impl Fn(Stream, &str) -> bool,
    ) -> Option<String> {
        if let Some(i) = self.unmatched.iter().position(|(s, l)| pred(*s, l)) {
            return Some(self.unmatched.remove(i).1);
        }
        let deadline = tokio::time::Instant::now() + span;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((s, l))) => {
                    self.seen.push((s, l.clone()));
                    if pred(s, &l) {
                        return Some(l);
                    }
                    self.unmatched.push((s, l));
                }
                _ => return None,
            }
        }
    }

    /// Waits for a JSON event on stdout matching `pred`.
    pub async fn expect_json(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let line = self
            .expect(what, |s, l| {
                s == Stream::Out && serde_json::from_str::<Value>(l).is_ok_and(|v| pred(&v))
            })
            .await;
        serde_json::from_str(&line).unwrap()
    }

    /// Lines read within `span` from now (kept in `seen` too).
    pub async fn collect_for(&mut self, span: Duration) -> Vec<(Stream, String)> {
        let deadline = tokio::time::Instant::now() + span;
        let mut got = Vec::new();
        while let Ok(Some(l)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            self.seen.push(l.clone());
            self.unmatched.push(l.clone());
            got.push(l);
        }
        got
    }

    /// The exit status if the process ends within `span` (stdin stays open).
    pub async fn exited_within(&mut self, span: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(span, self.child.wait())
            .await
            .ok()
            .map(|r| r.unwrap())
    }

    /// Closes stdin.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }
}
