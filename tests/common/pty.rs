//! `socp client` on a pseudo-terminal, for the terminal UI: the child gets
//! the pty as its controlling terminal (stdin, stdout, stderr), keys are
//! written to the master side, and what it draws is fed to a vt100 screen
//! the test reads rows and the cursor from.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::WAIT;
use super::termproc::install_key;

pub const ROWS: u16 = 24;
pub const COLS: u16 = 100;

/// Keys as a terminal sends them.
pub const ENTER: &str = "\r";
pub const LEFT: &str = "\x1b[D";
pub const UP: &str = "\x1b[A";
pub const HOME: &str = "\x1b[H";
pub const END: &str = "\x1b[F";
pub const PAGE_UP: &str = "\x1b[5~";
pub const PAGE_DOWN: &str = "\x1b[6~";
pub const CTRL_U: &str = "\x15";

pub struct PtyClient {
    child: Child,
    master: File,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl PtyClient {
    /// Starts `socp client` (terminal front end) for `user` in `dir`.
    pub fn start(dir: &Path, user: &str, server: &str) -> PtyClient {
        Self::start_logging(dir, user, server, "error")
    }

    /// Starts it with `RUST_LOG` set to `rust_log`.
    pub fn start_logging(dir: &Path, user: &str, server: &str, rust_log: &str) -> PtyClient {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        install_key(dir, user);
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        rustix::termios::tcsetwinsize(
            &slave,
            rustix::termios::Winsize {
                ws_row: ROWS,
                ws_col: COLS,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_socp"));
        cmd.args(["client", "--user", user, "--server", server])
            .arg("--keys")
            .arg(dir.join("keys"))
            .arg("--downloads")
            .arg(dir.join("downloads"))
            .env("TERM", "xterm-256color")
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = File::from(master);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let mut reader = master.try_clone().unwrap();
        let feed = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        PtyClient {
            child,
            master,
            screen,
        }
    }

    /// Types `keys` (text and escape sequences) in one write, as a paste
    /// arrives.
    pub fn keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// The screen's rows, trailing blanks trimmed.
    pub fn rows(&self) -> Vec<String> {
        let p = self.screen.lock().unwrap();
        p.screen()
            .rows(0, COLS)
            .map(|r| r.trim_end().to_owned())
            .collect()
    }

    /// The cursor's (row, column).
    pub fn cursor(&self) -> (u16, u16) {
        self.screen.lock().unwrap().screen().cursor_position()
    }

    /// Waits until `pred` holds for the screen's rows.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if pred(&self.rows()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {what} on screen within {WAIT:?}:\n{}",
            self.rows().join("\n")
        );
    }

    /// Waits until the input line reads `line` with the cursor at `col`.
    pub async fn wait_input(&self, line: &str, col: u16) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.cursor() == (ROWS - 1, col) && self.input_line() == line {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the input line is {:?} with the cursor at {:?}, not {line:?} at column {col}",
            self.input_line(),
            self.cursor()
        );
    }

    /// The input line (the last row).
    pub fn input_line(&self) -> String {
        self.rows().last().cloned().unwrap_or_default()
    }

    /// The status line (the row above the input line).
    pub fn status_line(&self) -> String {
        let rows = self.rows();
        rows[rows.len() - 2].clone()
    }

    /// Waits up to `span` for the process to end.
    pub async fn exited_within(&mut self, span: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + span;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for PtyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pseudo-terminal for one stream of a child (stderr, say): the slave to
/// give the child, and everything the child writes to it.
pub fn capture_pty() -> (File, Arc<Mutex<Vec<u8>>>) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let mut reader = File::from(master);
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    (slave, out)
}
