//! A TLS mesh end to end: `socp gen cert` makes the certificate, the master
//! serves wss://, the local dials it verifying against `--ca`, clients attach
//! over wss:// with `--ca`; without it, the self-signed certificate is refused.

mod common;

use std::process::Command;

use common::clientproc::ClientProc;
use common::procs::start_node;

const BIN: &str = env!("CARGO_BIN_EXE_socp");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_mesh_carries_dms_and_refuses_unknown_certificates() {
    let root = tempfile::tempdir().unwrap();
    let tls = root.path().join("tls");
    let out = Command::new(BIN)
        .args([
            "gen",
            "cert",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--out",
        ])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key, ca) = (
        tls.join("cert.pem"),
        tls.join("key.pem"),
        tls.join("cert.pem"),
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let tls_args: Vec<String> = vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--ca".into(),
        ca.display().to_string(),
    ];
    let master = start_node(root.path().join("m"), "master", "server-0", &tls_args);
    assert!(master.url().starts_with("wss://"), "{}", master.url());
    let mut local_args = tls_args.clone();
    local_args.extend(["--master-url".to_owned(), master.url()]);
    let local = start_node(root.path().join("l"), "local", "server-1", &local_args);
    assert!(local.url().starts_with("wss://"));

    let ca_flag = ["--ca", ca.to_str().unwrap()];
    let mut alice =
        ClientProc::start_with(&root.path().join("a"), "alice", &local.url(), &ca_flag).await;
    let mut bob =
        ClientProc::start_with(&root.path().join("b"), "bob", &master.url(), &ca_flag).await;
    alice.cmd("/msg bob over TLS").await;
    let dm = bob.expect("dm", |e| e["event"] == "dm").await;
    assert_eq!(
        (dm["text"].as_str(), dm["verified"].as_bool()),
        (Some("over TLS"), Some(true))
    );

    // Without --ca the self-signed certificate is not trusted: a clear
    // error, and the client gives up instead of retrying forever.
    let mut carol = ClientProc::spawn(&root.path().join("c"), "carol", &master.url(), &[]);
    let err = carol.expect("error", |e| e["event"] == "error").await;
    assert!(
        err["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{err}"
    );
    let _ = carol.quit().await;
}
