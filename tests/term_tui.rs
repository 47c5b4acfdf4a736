//! Issue 14 item 6: the terminal UI on a pseudo-terminal — an input line
//! with editing and history, a message pane, the connection state in the
//! status line (and the unread count when scrolled back), a message
//! arriving while typing that does not touch the line being typed, a long
//! paste, warnings kept off the screen, and `/quit`.

mod common;

use std::time::Duration;

use common::cluster::TestNode;
use common::pty::{CTRL_U, END, ENTER, HOME, LEFT, PtyClient, UP};
use common::termproc::Proc;
use serde_json::Value;

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

const LONG: usize = 5003;

fn dm_text(v: &Value) -> String {
    v["text"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_ui_edits_keeps_history_and_is_not_split_by_incoming_lines() {
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Proc::client(&dir.path().join("b"), "bob", &node.url(), &["--json"]);
    bob.expect_json("connected", is("connected")).await;
    let mut alice = PtyClient::start(&dir.path().join("a"), "alice", &node.url());
    alice
        .wait_for("connected", |rows| {
            rows.iter().any(|r| r.contains("connected as alice"))
        })
        .await;
    let status = alice.status_line();
    assert!(
        status.contains("alice") && status.contains("connected to"),
        "{status}"
    );
    assert_eq!(alice.input_line(), ">", "{:?}", alice.rows());

    // Editing: Left twice, insert; Home, then Ctrl-U on a second line.
    alice.keys("/msg bob abc");
    alice.keys(LEFT);
    alice.keys(LEFT);
    alice.keys("X");
    alice
        .wait_for("the edited line", |r| {
            r.last().is_some_and(|l| l == "> /msg bob aXbc")
        })
        .await;
    alice.keys(ENTER);
    let dm = bob.expect_json("dm", is("dm")).await;
    assert_eq!(dm_text(&dm), "aXbc");
    alice
        .wait_for("the input line emptied", |r| {
            r.last().is_some_and(|l| l == ">")
        })
        .await;

    // A message arrives while Alice is typing: it goes to the pane, and the
    // line she is typing stays as it was, cursor at its end.
    alice.keys("/msg bob hel");
    alice
        .wait_for("the partial line", |r| {
            r.last().is_some_and(|l| l == "> /msg bob hel")
        })
        .await;
    bob.line("/msg alice interrupting you").await;
    alice
        .wait_for("the incoming DM in the pane", |rows| {
            rows.iter()
                .any(|r| r.contains("[dm from bob]") && r.contains("interrupting you"))
        })
        .await;
    assert_eq!(alice.input_line(), "> /msg bob hel");
    assert_eq!(
        alice.cursor(),
        (common::pty::ROWS - 1, "> /msg bob hel".len() as u16)
    );
    alice.keys("lo");
    alice.keys(ENTER);
    let dm = bob.expect_json("dm", is("dm")).await;
    assert_eq!(dm_text(&dm), "hello");

    // History: Up brings the last line back; it can be edited and sent.
    alice.keys(UP);
    alice
        .wait_for("history", |r| {
            r.last().is_some_and(|l| l == "> /msg bob hello")
        })
        .await;
    alice.keys(UP);
    alice
        .wait_for("older history", |r| {
            r.last().is_some_and(|l| l == "> /msg bob aXbc")
        })
        .await;
    alice.keys(" again");
    alice.keys(ENTER);
    let dm = bob.expect_json("dm", is("dm")).await;
    assert_eq!(dm_text(&dm), "aXbc again");

    // Ctrl-U clears what is before the cursor.
    alice.keys("junk");
    alice.keys(HOME);
    alice.keys("/help");
    alice.keys(CTRL_U);
    alice.wait_input("> junk", 2).await;
    alice.keys(END);
    alice.keys(CTRL_U);
    alice
        .wait_for("all cleared", |r| r.last().is_some_and(|l| l == ">"))
        .await;

    // A line longer than a terminal's 4,095-byte canonical limit arrives
    // whole (issue 14 item 1: never cut silently), pasted in one burst; the
    // status line says how long the line is once it is wider than the screen.
    let long: String = (0..LONG).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    alice.keys(&format!("/msg bob {long}"));
    let whole = format!("line {0}/{0}", LONG + "/msg bob ".len());
    alice
        .wait_for("the whole pasted line", |r| {
            r.last()
                .is_some_and(|l| l.ends_with(&long[long.len() - 40..]))
                && r[r.len() - 2].contains(&whole)
        })
        .await;
    alice.keys(ENTER);
    let got = bob
        .expect_within(common::cluster::WAIT, "the long dm", |_, l| {
            l.contains(&long[..100])
        })
        .await;
    let Some(line) = got else {
        panic!(
            "the long line did not arrive; alice's screen:\n{}",
            alice.rows().join("\n")
        );
    };
    let dm: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(dm_text(&dm), long);

    // Scrolled back, a new message counts as unread; PgDn shows it.
    alice.keys("/help");
    alice.keys(ENTER);
    alice.keys("/help");
    alice.keys(ENTER);
    alice
        .wait_for("two helps", |r| {
            r.iter().filter(|l| l.contains("/quit ")).count() >= 2
        })
        .await;
    alice.keys(common::pty::PAGE_UP);
    alice
        .wait_for("scrolled back", |r| {
            r[r.len() - 2].contains("scrolled back")
        })
        .await;
    bob.line("/msg alice while you were reading").await;
    alice
        .wait_for("1 unread", |r| r[r.len() - 2].contains("1 unread"))
        .await;
    assert!(
        alice
            .rows()
            .iter()
            .all(|r| !r.contains("while you were reading"))
    );
    alice.keys(common::pty::PAGE_DOWN);
    alice
        .wait_for("the new message", |r| {
            r.iter().any(|l| l.contains("while you were reading"))
                && !r[r.len() - 2].contains("unread")
        })
        .await;

    // What the screen looks like (for the README).
    eprintln!("{}", alice.rows().join("\n"));

    // /quit exits at once and puts the terminal back.
    alice.keys("/quit");
    alice.keys(ENTER);
    let Some(status) = alice.exited_within(Duration::from_secs(5)).await else {
        panic!(
            "the client is still running 5 s after /quit:\n{}",
            alice.rows().join("\n")
        );
    };
    assert!(status.success(), "{status:?}");
}

/// The client's warnings do not smear the screen: while the UI is up they
/// go to `KEYS/USER.log`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_go_to_a_log_file_not_over_the_screen() {
    let node = common::fakenode::FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = PtyClient::start_logging(dir.path(), "alice", &node.url, "warn");
    alice
        .wait_for("connected", |rows| {
            rows.iter().any(|r| r.contains("connected as alice"))
        })
        .await;
    // A receipt for content alice never sent: the client logs a warning.
    node.send(
        "RECEIPT",
        serde_json::json!({"user_id": "alice", "msg_ids": ["made-up-id"], "status": "delivered"}),
    );
    let log = dir.path().join("keys/alice.log");
    let deadline = std::time::Instant::now() + common::cluster::WAIT;
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ignored a receipt")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows = alice.rows();
    assert!(
        rows.iter()
            .all(|r| !r.contains("ignored a receipt") && !r.contains("WARN")),
        "{}",
        rows.join("\n")
    );
    assert!(
        rows.iter().any(|r| r.contains("warnings go to")),
        "{}",
        rows.join("\n")
    );
}
