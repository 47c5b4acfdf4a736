//! Rebuild when a migration or the browser client in `web/` changes (they
//! are embedded with `include_dir!`),
//! and name the commit the binary is built from in `SOCP_COMMIT` for
//! `socp --version`: "commit 1a2b3c4d5e6f", or "unknown commit" when there is
//! no git checkout (a source tarball, `cargo install` from a registry) or no
//! `git` on the PATH. A packager building outside the checkout (the
//! Dockerfile) names it with `SOCP_COMMIT=1a2b3c4d5e6f`. Never fails the build.

use std::path::Path;
use std::process::Command;

/// Hex digits of the commit id shown: enough to be unique in this repository.
const COMMIT_DIGITS: usize = 12;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=web");
    println!("cargo:rerun-if-env-changed=GIT_DIR");
    println!("cargo:rerun-if-env-changed=SOCP_COMMIT");
    let given = std::env::var("SOCP_COMMIT")
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty());
    if let Some(id) = given {
        println!("cargo:rustc-env=SOCP_COMMIT=commit {id}");
        return;
    }
    let commit = match own_checkout()
        .then(|| git(&["rev-parse", &format!("--short={COMMIT_DIGITS}"), "HEAD"]))
        .flatten()
    {
        Some(id) => {
            watch_head();
            format!("commit {id}")
        }
        None => "unknown commit".to_owned(),
    };
    println!("cargo:rustc-env=SOCP_COMMIT={commit}");
}

/// Whether the source is the top of a git checkout: a tarball unpacked inside
/// some other repository must not take that repository's commit.
fn own_checkout() -> bool {
    let Some(top) = git(&["rev-parse", "--show-toplevel"]) else {
        return false;
    };
    let Ok(manifest_dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return false;
    };
    match (
        std::fs::canonicalize(top),
        std::fs::canonicalize(manifest_dir),
    ) {
        (Ok(top), Ok(dir)) => top == dir,
        _ => false,
    }
}

/// Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points
/// at (a commit) and packed-refs (a `git gc`). `--git-path` finds them in a
/// worktree too, where `.git` is a file.
fn watch_head() {
    let mut paths = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(branch);
    }
    for path in paths {
        if let Some(found) = git(&["rev-parse", "--git-path", &path])
            && Path::new(&found).exists()
        {
            println!("cargo:rerun-if-changed={found}");
        }
    }
}

/// The trimmed output of a successful `git` command, or None.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
