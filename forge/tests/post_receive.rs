//! Warren's own hook end to end on a real repository: git's `OLD NEW REF`
//! lines, the commits git lists for them, the signed notification, and
//! the dispatcher's parser reading back exactly those commits.

use forge::post_receive::{notification, parse_log, parse_ref_updates, RefUpdate};
use forge::{parse_push, Event, Forge, HookError, Push};
use git::Git;
use http::{HeaderMap, HeaderName, HeaderValue};
use warren_forge as forge;

const SECRET: &[u8] = b"repository secret";
const ZERO: &str = "0000000000000000000000000000000000000000";

async fn commit(git: &Git, subject: &str) -> String {
    git.run(&["commit", "--allow-empty", "-q", "-m", subject, "-m", "body"])
        .await
        .expect("commit");
    git.run(&["rev-parse", "HEAD"]).await.expect("rev-parse")
}

/// What `warren hook post-receive` does for one line of its input.
async fn notify(git: &Git, update: &RefUpdate) -> (HeaderMap, Vec<u8>) {
    let commits = match update.log_args() {
        Some(args) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            parse_log(&git.run(&args).await.expect("git log")).expect("log output")
        }
        None => Vec::new(),
    };
    let notification = notification(update, &commits, SECRET);
    let mut headers = HeaderMap::new();
    for (name, value) in &notification.headers() {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    (headers, notification.body)
}

fn push_of(headers: &HeaderMap, body: &[u8]) -> Push {
    let delivery = parse_push(headers, body, SECRET).expect("authentic");
    assert_eq!(delivery.forge, Forge::Warren);
    assert_eq!(delivery.id.as_deref().map(str::len), Some(32));
    match delivery.event {
        Event::Push(push) => push,
        other => panic!("expected a push, got {other:?}"),
    }
}

#[tokio::test]
async fn a_post_receive_notification_carries_exactly_the_pushed_commits() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let git = Git::new(dir.path());
    git.run(&["init", "-q", "-b", "main"]).await.expect("init");
    git.run(&["config", "user.name", "Ada Lovelace"])
        .await
        .expect("config");
    git.run(&["config", "user.email", "ada@example.com"])
        .await
        .expect("config");
    let first = commit(&git, "First").await;
    let second = commit(&git, "Second: the engine").await;
    let third = commit(&git, "Third").await;

    let input = format!(
        "{first} {third} refs/heads/main\n{ZERO} {third} refs/heads/feature/x\n{second} {ZERO} refs/heads/gone\n"
    );
    let updates = parse_ref_updates(&input).expect("git's input");
    assert_eq!(updates.len(), 3);

    // An update: the commits after `before`, oldest first.
    let (headers, body) = notify(&git, &updates[0]).await;
    let push = push_of(&headers, &body);
    assert_eq!(push.built_branch().map(|b| b.as_str()), Some("main"));
    let ids: Vec<&str> = push.commits.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [second.as_str(), third.as_str()]);
    assert_eq!(
        push.commits[0].subject.as_deref(),
        Some("Second: the engine")
    );
    assert_eq!(push.commits[0].author.as_deref(), Some("Ada Lovelace"));
    assert!(!push.truncated && !push.created);

    // A new branch: its head only.
    let (headers, body) = notify(&git, &updates[1]).await;
    let push = push_of(&headers, &body);
    assert!(push.created);
    assert_eq!(push.built_branch().map(|b| b.as_str()), Some("feature/x"));
    let ids: Vec<&str> = push.commits.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [third.as_str()]);

    // A deletion: nothing to build.
    let (headers, body) = notify(&git, &updates[2]).await;
    let push = push_of(&headers, &body);
    assert!(push.deleted && push.commits.is_empty());
    assert_eq!(push.built_branch(), None);

    // The same push notified again is the same delivery (deduplicated).
    let (again, _) = notify(&git, &updates[0]).await;
    let (first_time, _) = notify(&git, &updates[0]).await;
    assert_eq!(
        again.get("x-warren-delivery"),
        first_time.get("x-warren-delivery")
    );

    // Signed with the repository's secret: another secret is refused.
    let (headers, body) = notify(&git, &updates[0]).await;
    let err = parse_push(&headers, &body, b"another").expect_err("wrong secret");
    assert!(matches!(err, HookError::Unauthorized(_)));
}
