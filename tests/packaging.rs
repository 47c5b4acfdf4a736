//! What a packager takes from the binary: `socp --version` names the commit,
//! `socp gen completions SHELL` and `socp gen man` describe every
//! subcommand, the example config files in `contrib/` are ones the node
//! accepts, and the systemd units pass `systemd-analyze verify` (where it
//! is installed).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_socp");
const SUBCOMMANDS: [&str; 4] = ["gen", "node", "client", "admin"];

/// `socp ARGS`: (success, stdout, stderr).
fn socp(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_commit() {
    let (ok, out, err) = socp(&["--version"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(concat!("socp ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) => assert!(out.contains(&format!("(commit {head})")), "{out} at {head}"),
        None => assert!(out.contains("(unknown commit)"), "{out}"),
    }
    // Subcommands say the same.
    let (_, node, _) = socp(&["node", "--version"]);
    assert_eq!(
        node.trim_start_matches("socp-node"),
        out.trim_start_matches("socp")
    );
}

#[test]
fn completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (ok, out, err) = socp(&["gen", "completions", shell]);
        assert!(ok, "{shell}: {err}");
        for sub in SUBCOMMANDS {
            assert!(out.contains(sub), "{shell} completions lack {sub}");
        }
        assert!(out.contains("print-config"), "{shell}: node flags");
    }
    let (ok, _, err) = socp(&["gen", "completions"]);
    assert!(!ok && err.contains("<SHELL>"), "{err}");
}

#[test]
fn man_page_names_every_subcommand() {
    let (ok, out, err) = socp(&["gen", "man"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(".ie") || out.contains(".TH socp 1"),
        "{out}"
    );
    for sub in SUBCOMMANDS {
        assert!(out.contains(sub), "the man page lacks {sub}");
    }

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let (ok, _, err) = socp(&["gen", "man", "--out", out_dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let node = std::fs::read_to_string(out_dir.join("socp-node.1")).unwrap();
    assert!(node.contains("print\\-config"), "{node}");
    assert!(out_dir.join("socp.1").exists());
}

#[test]
fn gen_still_makes_identities_and_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let (ok, out, err) = socp(&["gen", "cert", "--out", tls.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("cert.pem"), "{out}");
    assert!(tls.join("key.pem").exists());
    let (ok, _, err) = Command::new(BIN)
        .args(["gen", "cert"])
        .current_dir(dir.path().join("tls"))
        .output()
        .map(|o| {
            (
                o.status.success(),
                (),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert!(ok, "{err}");
    assert!(
        dir.path().join("tls/tls/cert.pem").exists(),
        "default --out tls"
    );
}

#[test]
fn the_contrib_config_files_are_accepted() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    for (file, role) in [
        ("master.toml", "master"),
        ("local.toml", "local"),
        ("docker-master.toml", "master"),
    ] {
        let path = contrib.join(file);
        let (ok, out, err) = socp(&["node", "--config", path.to_str().unwrap(), "--print-config"]);
        assert!(ok, "{file}: {err}");
        assert!(out.contains(&format!("role = \"{role}\"")), "{out}");
        assert!(out.contains("db = \"/var/lib/socp/"), "{out}");
    }
}

#[test]
fn the_systemd_units_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the units were not verified");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists and that man:socp-node(1) opens:
    // point them at this build's binary and man pages.
    let man = dir.path().join("man");
    let (ok, _, err) = socp(&["gen", "man", "--out", man.join("man1").to_str().unwrap()]);
    assert!(ok, "{err}");
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let mut units = Vec::new();
    for unit in ["socp-master.service", "socp-local@.service"] {
        let text = std::fs::read_to_string(contrib.join(unit)).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/socp node --config /etc/socp/"));
        for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "User=socp"] {
            assert!(text.contains(hardening), "{unit} lacks {hardening}");
        }
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/socp", BIN)).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(".service"), "warnings about the units: {err}");
}
