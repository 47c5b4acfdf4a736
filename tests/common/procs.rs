//! Nodes as real `socp` processes, for tests that kill them with SIGKILL.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::cluster::cached_key;

const BIN: &str = env!("CARGO_BIN_EXE_socp");

/// A `socp node` process with its own folder.
pub struct NodeProc {
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub port: u16,
    pub id: String,
    pub scheme: &'static str,
    /// `RUST_LOG` for the process (`info` unless started with another).
    pub rust_log: String,
    /// Every line the process wrote to stderr (its log), across restarts.
    pub log: Arc<Mutex<Vec<String>>>,
    /// `http://ADDR` of `--metrics`, when the node serves it.
    pub metrics: Option<String>,
    child: Option<Child>,
}

impl NodeProc {
    /// Starts a node; `role_args` are the role flags (`--role local --master-url …`).
    pub fn start(dir: PathBuf, role: &str, key: &str, extra: &[String]) -> NodeProc {
        Self::start_logging(dir, role, key, extra, "info")
    }

    /// Starts a node with this `RUST_LOG`.
    pub fn start_logging(
        dir: PathBuf,
        role: &str,
        key: &str,
        extra: &[String],
        rust_log: &str,
    ) -> NodeProc {
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let pem = keys.join(format!("{role}.pem"));
        if !pem.exists() {
            std::fs::copy(cached_key(key), &pem).unwrap();
        }
        let mut args = vec![
            "node".to_owned(),
            "--role".into(),
            role.into(),
            "--db".into(),
            dir.join("node.sqlite").display().to_string(),
            "--keys".into(),
            keys.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let mut p = NodeProc {
            dir,
            args,
            port: 0,
            id: String::new(),
            scheme: "ws",
            rust_log: rust_log.to_owned(),
            log: Arc::default(),
            metrics: None,
            child: None,
        };
        p.spawn("127.0.0.1:0");
        p
    }

    fn spawn(&mut self, listen: &str) {
        let mut child = Command::new(BIN)
            .args(&self.args)
            .args(["--listen", listen])
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SOCP_TEST_LOGS").is_some() {
                    eprintln!("[node] {line}");
                }
                if let Ok(mut log) = log.lock() {
                    log.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on ws") => break line,
                Ok(line) if line.contains("metrics on http://") => {
                    self.metrics = line
                        .split_whitespace()
                        .find(|w| w.starts_with("http://"))
                        .map(|w| w.trim_end_matches("/metrics").to_owned());
                }
                Ok(_) => {}
                Err(_) => panic!("node did not start: {:?}", self.args),
            }
        };
        // `listening on ws://HOST:PORT`, at the end of a text line or inside
        // a JSON one (`--log-format json`).
        let url = line.split("listening on ").nth(1).unwrap();
        let url = url.split(['"', ' ']).next().unwrap();
        let port: String = url
            .rsplit_once(':')
            .unwrap()
            .1
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        self.port = port.parse().unwrap();
        self.scheme = if line.contains("wss://") { "wss" } else { "ws" };
        self.id = line
            .split_whitespace()
            .find(|w| w.contains("server_"))
            .unwrap_or_default()
            .to_owned();
        self.child = Some(child);
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
    }

    /// A stand-in while a real node is being restarted elsewhere.
    pub fn placeholder() -> NodeProc {
        NodeProc {
            dir: PathBuf::new(),
            args: Vec::new(),
            port: 0,
            id: String::new(),
            scheme: "ws",
            rust_log: "info".into(),
            log: Arc::default(),
            metrics: None,
            child: None,
        }
    }

    /// The log so far, one line an entry.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The `--metrics` address the running process logged last (`HOST:PORT`).
    pub fn metrics_addr(&self) -> Option<String> {
        self.log_lines().iter().rev().find_map(|l| {
            let rest = l.split("metrics on http://").nth(1)?;
            Some(rest.split('/').next()?.to_owned())
        })
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    /// Starts again with the same flags and port.
    pub fn restart(&mut self) {
        self.kill9();
        let listen = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger for a moment after the kill.
            if std::net::TcpListener::bind(&listen).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(&listen);
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
