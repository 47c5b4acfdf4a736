//! The real `socp` binary: the master starts with no flags but the port,
//! creates its database and identity, and stops cleanly on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_socp");

fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line containing {needle:?}: {e}"),
        }
    }
}

/// Starts `socp node --role master` (defaults but the port) in `dir`;
/// returns it and its "listening on" log line.
fn start_master(dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(["node", "--role", "master", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = wait_for_line(&rx, "listening on ws://127.0.0.1:");
    (child, line)
}

#[test]
fn master_starts_with_defaults_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, line) = start_master(dir.path());
    assert!(line.contains("node master_server_"), "{line}");
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    assert_ne!(port, 0);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the node accepts connections");

    assert!(dir.path().join("data/master.sqlite").exists());
    assert!(dir.path().join("keys/master.pem").exists());
    let id = std::fs::read_to_string(dir.path().join("keys/master.id")).unwrap();
    assert!(line.contains(id.trim()));

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");

    // Migrations were applied.
    let conn = rusqlite::Connection::open(dir.path().join("data/master.sqlite")).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert!(version >= 1);
}

#[test]
fn local_without_master_url_says_what_to_do() {
    let out = Command::new(BIN)
        .args(["node", "--role", "local"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--master-url"), "{err}");
}

#[test]
fn help_explains_every_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["gen", "node", "client"] {
        assert!(text.contains(sub), "{text}");
    }
    let out = Command::new(BIN).args(["node", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--role",
        "--listen",
        "--db",
        "--keys",
        "--master-url",
        "--peers",
        "--allow-legacy-clients",
        "--admit",
        "--registration",
        "--registrations-per-address",
        "--registrations-per-server",
    ] {
        assert!(text.contains(flag), "{flag} missing from node --help");
    }
}

#[test]
fn admin_prints_the_tables_of_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start_master(dir.path());
    let db = dir.path().join("data/master.sqlite");
    for (table, header) in [
        ("users", "KEY FINGERPRINT"),
        ("servers", "ROLE"),
        ("mailbox", "DESTINATION"),
    ] {
        let out = Command::new(BIN)
            .args(["admin", table, "--db"])
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(header) && text.contains("(0 rows)"), "{text}");
    }
    let out = Command::new(BIN)
        .args(["admin", "users", "--db", "/nonexistent.sqlite"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let _ = child.kill();
    let _ = child.wait();
}

fn admin(args: &[&str], db: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("admin")
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_makes_invites_and_admits_servers_and_refuses_directory_edits_on_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start_master(dir.path());
    let db = dir.path().join("data/master.sqlite");
    let (ok, code, err) = admin(&["invite"], &db);
    assert!(ok, "{err}");
    let code = code.trim().to_owned();
    assert!(code.starts_with("inv-"), "{code}");
    let (ok, listed, err) = admin(&["invites"], &db);
    assert!(ok, "{err}");
    assert!(
        listed.contains(&code) && listed.contains("(unused)"),
        "{listed}"
    );
    // Removing a user while the node runs is refused, with the reason.
    let (ok, _, err) = admin(&["remove-user", "alice"], &db);
    assert!(!ok);
    assert!(
        err.contains("running") && err.contains("stop it first"),
        "{err}"
    );
    let _ = child.kill();
    let _ = child.wait();
    // Stopped: the user must exist.
    let (ok, _, err) = admin(&["reset-key", "alice"], &db);
    assert!(!ok && err.contains("no user \"alice\""), "{err}");

    // The admit file: add an id and a fingerprint as socp gen prints it; list.
    let file = dir.path().join("admit.txt");
    let id = std::fs::read_to_string(dir.path().join("keys/master.id")).unwrap();
    let fp = "a1b2 c3d4 e5f6 0718 293a 4b5c 6d7e 8f90 a1b2 c3d4 e5f6 0718 293a 4b5c 6d7e 8f90";
    for entry in [id.trim(), fp, "nonsense"] {
        let out = Command::new(BIN)
            .args(["admin", "admit", "--file"])
            .arg(&file)
            .arg(entry)
            .output()
            .unwrap();
        assert_eq!(out.status.success(), entry != "nonsense", "{entry}");
    }
    let out = Command::new(BIN)
        .args(["admin", "admit", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(id.trim()) && text.contains(fp), "{text}");
    assert!(text.contains("(2 servers admitted)"), "{text}");
}
