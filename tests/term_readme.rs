//! Issue 14 item 12: the README's terminal transcript is what the client
//! prints. The session it shows is run through the binary (plain-line
//! front end), and every `alice>` / `bob>` line of the README must be among
//! what that user saw, once times and message ids are set aside.

mod common;

use std::time::Duration;

use common::cluster::TestNode;
use common::termproc::{Proc, Stream};

/// A line with its time and short ids made generic.
fn normal(line: &str, downloads: &str) -> String {
    let line = line.replace(downloads, "downloads");
    let mut out = String::new();
    let mut rest = line.as_str();
    // HH:MM:SS at the start.
    if rest.len() >= 9 && rest.as_bytes()[2] == b':' && rest.as_bytes()[5] == b':' {
        out.push_str("HH:MM:SS");
        rest = &rest[8..];
    }
    // (0123abcd) ids.
    while let Some(i) = rest.find('(') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let id = tail
            .get(1..9)
            .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
        if id.is_some() && tail.as_bytes().get(9) == Some(&b')') {
            out.push_str("(ID)");
            rest = &tail[10..];
        } else {
            out.push('(');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The README's transcript: (user, line) pairs.
fn readme_transcript() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Two users in the terminal")
        .nth(1)
        .expect("the README has its terminal section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| {
            let (user, line) = l.split_once('>')?;
            matches!(user, "alice" | "bob").then(|| (user.to_owned(), line.trim_start().to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_transcript_is_what_the_client_prints() {
    let want = readme_transcript();
    assert!(want.len() >= 6, "{want:?}");
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Proc::client(&dir.path().join("bob"), "bob", &node.url(), &[]);
    bob.expect("connected", |_, l| l.contains("connected as bob"))
        .await;
    let mut alice = Proc::client(&dir.path().join("alice"), "alice", &node.url(), &[]);
    alice
        .expect("connected", |_, l| l.contains("connected as alice"))
        .await;
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "hi\n").unwrap();
    alice.line("/list").await;
    alice.expect("list", |_, l| l.contains("online:")).await;
    alice.line("/msg bob Hello Bob!").await;
    alice
        .expect("delivered", |_, l| l.contains("delivered ("))
        .await;
    alice.line("/gshare group_demo bob").await;
    bob.expect("key", |_, l| l.contains("shared the group key"))
        .await;
    alice.line("/gmsg group_demo hello team").await;
    bob.expect("group msg", |_, l| l.contains("hello team"))
        .await;
    alice.line(&format!("/file bob {}", notes.display())).await;
    bob.expect("file", |_, l| l.contains("[file from alice]"))
        .await;
    let mut seen = std::collections::HashMap::new();
    for (name, proc) in [("alice", &mut alice), ("bob", &mut bob)] {
        proc.collect_for(Duration::from_millis(500)).await;
        let downloads = dir
            .path()
            .join(name)
            .join("downloads")
            .display()
            .to_string();
        let lines: Vec<String> = proc
            .seen
            .iter()
            .filter(|(s, _)| *s == Stream::Out)
            .map(|(_, l)| normal(l, &downloads))
            .collect();
        seen.insert(name.to_owned(), lines);
    }
    for (user, line) in &want {
        let line = normal(line, "downloads");
        assert!(
            seen[user].contains(&line),
            "README line for {user} not printed: {line:?}\n{user} printed:\n{}",
            seen[user].join("\n")
        );
    }
}
