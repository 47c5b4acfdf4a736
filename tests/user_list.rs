//! `/list` against real nodes: a page at a time, a search by prefix, and
//! the rest with `/more`, through the `socp client --json` binary.

mod common;

use common::clientproc::ClientProc;
use common::cluster::{TestNode, WAIT, user_key};
use serde_json::{Value, json};
use socp::client::Session;
use socp::client::engine::LIST_PAGE;

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

/// Users `PREFIX000..` online at `url` (one key for all: an id binds to a
/// key, not a key to one id).
async fn crowd(url: &str, prefix: &str, n: usize) -> Vec<Session> {
    let mut sessions = Vec::new();
    for i in 0..n {
        let user = format!("{prefix}{i:03}");
        let s = Session::connect_retrying(url, &user, user_key("carol"), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
        sessions.push(s);
    }
    sessions
}

fn users(event: &Value) -> Vec<String> {
    serde_json::from_value(event["users"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_searches_by_prefix_and_pages_with_more() {
    let open = |c: &mut socp::node::NodeConfig| c.admission.per_address_hour = 0;
    let master = TestNode::master_with(open).await;
    let local = TestNode::local_with(&master.url(), open).await;
    master.wait_linked(1).await;
    // 60 users whose ids start with "al" on the local, 5 others on the master.
    let n = LIST_PAGE as usize + 10;
    let _al = crowd(&local.url(), "al", n).await;
    let _bo = crowd(&master.url(), "bo", 5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &master.url()).await;
    master.wait_online(&["al059", "alice", "bo004"]).await;

    // A search: the first page, how many match, and that more follow.
    alice.cmd("/list al").await;
    let page = alice.expect("list", is("list")).await;
    let expected: Vec<String> = (0..LIST_PAGE as usize)
        .map(|i| format!("al{i:03}"))
        .collect();
    assert_eq!(users(&page), expected);
    assert_eq!(page["prefix"], "al");
    // "alice" starts with "al" too.
    assert_eq!(page["total"], n + 1);
    assert_eq!(page["more"], true);
    // The rest of the search.
    alice.cmd("/more").await;
    let page = alice.expect("list", is("list")).await;
    let mut rest: Vec<String> = (LIST_PAGE as usize..n)
        .map(|i| format!("al{i:03}"))
        .collect();
    rest.push("alice".into());
    assert_eq!(users(&page), rest);
    assert!(page.get("more").is_none(), "{page}");
    alice.cmd("/more").await;
    let e = alice.expect("error", is("error")).await;
    assert_eq!(e["code"], "USAGE");

    // Another search, and everyone.
    alice.cmd("/list bo").await;
    let page = alice.expect("list", is("list")).await;
    assert_eq!(users(&page), ["bo000", "bo001", "bo002", "bo003", "bo004"]);
    assert_eq!((page["total"].clone(), page.get("more")), (json!(5), None));
    alice.cmd("/list zz").await;
    let page = alice.expect("list", is("list")).await;
    assert_eq!(
        (page["users"].clone(), page["total"].clone()),
        (json!([]), json!(0))
    );
    alice.cmd("/list").await;
    let page = alice.expect("list", is("list")).await;
    assert_eq!(users(&page).len(), LIST_PAGE as usize);
    assert_eq!(page["total"], n + 1 + 5);
    assert_eq!(page["more"], true);
    assert!(page.get("prefix").is_none());

    // A prefix that cannot start an id is a usage error.
    alice.cmd("/list a/b").await;
    let e = alice.expect("error", is("error")).await;
    assert_eq!(e["code"], "USAGE");
    assert!(
        e["detail"].as_str().unwrap().contains("/list [PREFIX]"),
        "{e}"
    );
}
