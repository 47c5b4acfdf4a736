//! Issue 14 item 10: `scripts/reset.sh --dir` on the README's own folders,
//! and `.gitignore` keeping keys and those folders out of commits.

use std::path::Path;
use std::process::Command;

fn touch(root: &Path, paths: &[&str]) {
    for p in paths {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "x").unwrap();
    }
}

fn reset(root: &Path, args: &[&str]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reset.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .current_dir(root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn reset_dir_wipes_the_readme_folders_and_says_how_to_recover_a_user() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    touch(
        root,
        &[
            "m/master.sqlite",
            "m/master.sqlite-wal",
            "m/keys/master.pem",
            "m/keys/master.id",
            "m/admit.txt",
            "m/master.toml",
            "l1/local.sqlite",
            "l1/local.sqlite-shm",
            "l1/keys/local.pem",
            "l1/keys/local.id",
            "l1/admit.txt",
            "alice/keys/alice.pem",
            "alice/keys/alice.sqlite",
            "alice/keys/alice.shown",
            "alice/downloads/notes.txt",
        ],
    );
    let (ok, out) = reset(root, &["--dir", "l1"]);
    assert!(ok, "{out}");
    for gone in [
        "l1/local.sqlite",
        "l1/local.sqlite-shm",
        "l1/keys/local.pem",
        "l1/keys/local.id",
    ] {
        assert!(!root.join(gone).exists(), "{gone} kept: {out}");
    }
    assert!(root.join("l1/admit.txt").exists(), "config is kept");
    let (ok, out) = reset(root, &["--dir", "m"]);
    assert!(ok, "{out}");
    assert!(
        !root.join("m/master.sqlite").exists() && !root.join("m/master.sqlite-wal").exists(),
        "{out}"
    );
    for kept in [
        "m/keys/master.pem",
        "m/keys/master.id",
        "m/admit.txt",
        "m/master.toml",
    ] {
        assert!(root.join(kept).exists(), "{kept} removed: {out}");
    }
    assert!(out.contains("kept the master identity"), "{out}");
    let (ok, out) = reset(root, &["--dir", "alice"]);
    assert!(ok, "{out}");
    assert!(!root.join("alice/keys/alice.pem").exists() && !root.join("alice/downloads").exists());
    assert!(
        out.contains("socp admin reset-key") && out.contains("alice"),
        "{out}"
    );
    let (ok, out) = reset(root, &["--dir", "m", "--nuke-master"]);
    assert!(ok && !root.join("m/keys/master.pem").exists(), "{out}");
    let (ok, out) = reset(root, &["--dir", "nowhere"]);
    assert!(!ok && out.contains("not a folder"), "{out}");
}

#[test]
fn gitignore_covers_keys_and_the_readme_folders() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let inside = Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(repo)
        .output();
    if !inside.is_ok_and(|o| o.status.success()) {
        eprintln!("not a git checkout: nothing to check");
        return;
    }
    for path in [
        "server.pem",
        "some/where/alice.pem",
        "m/master.sqlite",
        "m/admit.txt",
        "l1/local.sqlite",
        "l2/keys/local.id",
        "alice/keys/alice.pem",
        "bob/downloads/notes.txt",
    ] {
        let ignored = Command::new("git")
            .args(["check-ignore", "-q", "--no-index", path])
            .current_dir(repo)
            .status()
            .unwrap();
        assert!(ignored.success(), "{path} is not ignored");
    }
}
