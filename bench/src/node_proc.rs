//! A `socp node` as a child process: started on a port the kernel picks,
//! ready once it logs where it listens, killed (SIGKILL) or stopped
//! (SIGTERM) on request and on drop. The benchmarks and the integration
//! tests that kill nodes share it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::procfs;

/// What becomes of the lines a node writes to stderr (its log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLog {
    /// Read and dropped (a benchmark's nodes log a line per connection).
    Drop,
    /// Kept for [`NodeProc::log_lines`], across restarts.
    Keep,
    /// Kept, and echoed to this process's stderr as `[node] LINE`.
    KeepAndEcho,
}

/// How a node process is started.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The `socp` binary.
    pub exe: PathBuf,
    /// `RUST_LOG` for the node.
    pub rust_log: String,
    pub log: NodeLog,
    /// SIGKILL the node when the thread that started it ends (Linux's
    /// parent-death signal): a benchmark's nodes die with it, however it
    /// ends. Tests restart nodes from other threads and stop them on drop.
    pub die_with_starter: bool,
    /// How long the node has to say where it listens.
    pub start_timeout: Duration,
}

impl NodeOptions {
    /// `exe` with `RUST_LOG=info`, the log kept, a 30 s start.
    pub fn new(exe: impl Into<PathBuf>) -> NodeOptions {
        NodeOptions {
            exe: exe.into(),
            rust_log: "info".into(),
            log: NodeLog::Keep,
            die_with_starter: false,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A running `socp node` process with its own folder.
pub struct NodeProc {
    /// The node's folder: `node.sqlite` and `keys/`.
    pub dir: PathBuf,
    /// The arguments after the binary, except `--listen`.
    pub args: Vec<String>,
    pub port: u16,
    /// The server id it logged (`server_…`), if any.
    pub id: String,
    /// `ws` or `wss`.
    pub scheme: &'static str,
    /// `http://ADDR` of `--metrics`, when the node serves it.
    pub metrics: Option<String>,
    opts: NodeOptions,
    log: Arc<Mutex<Vec<String>>>,
    child: Option<Child>,
}

impl NodeProc {
    /// Starts `socp node --role ROLE --db DIR/node.sqlite --keys DIR/keys
    /// FLAGS --listen 127.0.0.1:0` and waits until it listens. A node
    /// without a key in `DIR/keys` makes one.
    pub fn start(opts: NodeOptions, dir: &Path, role: &str, flags: &[String]) -> Result<NodeProc> {
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
        let mut args: Vec<String> = ["node", "--role", role, "--db"].map(String::from).into();
        args.push(dir.join("node.sqlite").display().to_string());
        args.push("--keys".into());
        args.push(keys.display().to_string());
        args.extend(flags.iter().cloned());
        let mut node = NodeProc {
            dir: dir.to_owned(),
            args,
            port: 0,
            id: String::new(),
            scheme: "ws",
            metrics: None,
            opts,
            log: Arc::default(),
            child: None,
        };
        node.spawn("127.0.0.1:0")?;
        Ok(node)
    }

    fn spawn(&mut self, listen: &str) -> Result<()> {
        let mut cmd = Command::new(&self.opts.exe);
        cmd.args(&self.args)
            .args(["--listen", listen])
            .env("RUST_LOG", &self.opts.rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.opts.die_with_starter {
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.opts.exe.display()))?;
        let stderr = child.stderr.take().context("the node's stderr")?;
        let (tx, rx) = mpsc::channel();
        let (log, keep) = (self.log.clone(), self.opts.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if keep == NodeLog::KeepAndEcho {
                    eprintln!("[node] {line}");
                }
                if keep != NodeLog::Drop
                    && let Ok(mut log) = log.lock()
                {
                    log.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + self.opts.start_timeout;
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
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("the node did not start: {:?}", self.args);
                }
            }
        };
        let listening = match Listening::parse(&line) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        (self.port, self.scheme, self.id) = (listening.port, listening.scheme, listening.id);
        self.child = Some(child);
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Ok(())
    }

    /// `ws://127.0.0.1:PORT` (or `wss://`).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The log so far, one line an entry (empty unless kept).
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

    /// The process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU time used so far, in milliseconds (from `/proc`).
    pub fn cpu_ms(&self) -> f64 {
        procfs::cpu_ms_of(&self.pid().to_string())
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
    pub fn status_kib(&self, field: &str) -> f64 {
        procfs::status_kib_of(self.pid(), field)
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the node is not running")?;
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: signals our own child, which has not been reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "cannot signal the node: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(child.wait()?)
    }

    /// Kills the node and starts it again with the same flags and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let listen = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port may linger for a moment after the kill.
        while std::net::TcpListener::bind(&listen).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(&listen)
    }
}

/// What a node's `listening on` line says.
#[derive(Debug, PartialEq, Eq)]
struct Listening {
    port: u16,
    scheme: &'static str,
    /// The server id (`server_…`, `master_server_…`), or empty.
    id: String,
}

impl Listening {
    /// Reads `… node ID listening on ws://HOST:PORT`, a text line or a
    /// JSON one (`--log-format json`).
    fn parse(line: &str) -> Result<Listening> {
        let url = line
            .split("listening on ")
            .nth(1)
            .and_then(|u| u.split(['"', ' ']).next())
            .with_context(|| format!("no address in {line:?}"))?;
        let port: String = url
            .rsplit_once(':')
            .map(|(_, p)| p.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_default();
        let port = port
            .parse()
            .with_context(|| format!("no port in {line:?}"))?;
        let scheme = if url.starts_with("wss://") {
            "wss"
        } else {
            "ws"
        };
        let id = line
            .split(|c: char| c.is_whitespace() || c == '"')
            .find(|w| w.contains("server_"))
            .unwrap_or_default()
            .to_owned();
        Ok(Listening { port, scheme, id })
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_line_says_port_scheme_and_id() {
        let line = "2026-01-01T00:00:00Z  INFO socp::node: node server_1b2c listening on ws://127.0.0.1:40125";
        let l = Listening::parse(line).unwrap();
        assert_eq!(
            l,
            Listening {
                port: 40125,
                scheme: "ws",
                id: "server_1b2c".into()
            }
        );
    }

    #[test]
    fn a_json_line_says_them_too() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"node master_server_9f listening on wss://127.0.0.1:443","target":"socp::node"}"#;
        let l = Listening::parse(line).unwrap();
        assert_eq!((l.port, l.scheme), (443, "wss"));
        assert_eq!(l.id, "master_server_9f");
    }

    #[test]
    fn a_line_without_a_port_is_an_error() {
        assert!(Listening::parse("listening on ws://127.0.0.1:").is_err());
        assert!(Listening::parse("starting").is_err());
    }
}
