//! Push webhooks as the forges send them: each fixture payload signed the
//! way its forge signs it goes through `parse_push` and comes out as the
//! same `Push`; and every way of sending a delivery without the secret is
//! refused, next to the same delivery accepted with it.

mod common;

use warren_forge as forge;

use common::fixture;
use forge::{parse_push, Delivery, Denial, Event, Forge, HookError, Push};
use http::{HeaderMap, HeaderName, HeaderValue};

const SECRET: &[u8] = b"It's a Secret to Everybody";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    map
}

/// The headers GitHub sends with `body`, signed with `secret`.
fn github(event: &str, body: &[u8], secret: &[u8]) -> HeaderMap {
    headers(&[
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-Hub-Signature-256", &forge::sign(secret, body)),
        ("Content-Type", "application/json"),
        ("User-Agent", "GitHub-Hookshot/044aadd"),
    ])
}

/// The headers Gitea sends: its own, and GitHub's and Gogs' for
/// compatibility (Gitea signs with the same HMAC in all of them).
fn gitea(event: &str, body: &[u8], secret: &[u8]) -> HeaderMap {
    let hex = forge::sign(secret, body)[7..].to_string();
    headers(&[
        ("X-Gitea-Event", event),
        ("X-Gitea-Event-Type", event),
        ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ("X-Gitea-Signature", &hex),
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ("X-Gogs-Event", event),
        ("X-Gogs-Signature", &hex),
        ("X-Hub-Signature-256", &format!("sha256={hex}")),
        ("Content-Type", "application/json"),
    ])
}

fn gitlab(event: &str, token: &str) -> HeaderMap {
    headers(&[
        ("X-Gitlab-Event", event),
        ("X-Gitlab-Token", token),
        (
            "X-Gitlab-Event-UUID",
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
        ),
        ("X-Gitlab-Instance", "https://gitlab.example.com"),
        ("Content-Type", "application/json"),
    ])
}

fn secret_text() -> &'static str {
    std::str::from_utf8(SECRET).expect("utf-8")
}

fn push_of(delivery: Delivery) -> Push {
    match delivery.event {
        Event::Push(push) => push,
        other => panic!("expected a push, got {other:?}"),
    }
}

fn subjects(push: &Push) -> Vec<&str> {
    push.commits
        .iter()
        .map(|c| c.subject.as_deref().unwrap_or(""))
        .collect()
}

#[test]
fn githubs_documented_signature_vector_is_accepted_and_checked_before_the_body() {
    let body = b"Hello, World!";
    let signed = headers(&[
        ("X-GitHub-Event", "push"),
        (
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ),
    ]);
    // Authentic, so the body is read, and it is no push payload: 400.
    let err = parse_push(&signed, body, SECRET).expect_err("not JSON");
    assert_eq!(err.http_status(), 400, "{err}");
    assert!(
        err.to_string().starts_with("malformed push payload"),
        "{err}"
    );
    // With another secret the body is never read: 401.
    let err = parse_push(&signed, body, b"another secret").expect_err("wrong secret");
    assert_eq!(err, HookError::Unauthorized(Denial::Mismatch));
}

#[test]
fn a_github_push_gives_its_commits_oldest_first_with_subjects_and_authors() {
    let body = fixture("github_push.json");
    let delivery = parse_push(&github("push", &body, SECRET), &body, SECRET).expect("valid");
    assert_eq!(delivery.forge, Forge::GitHub);
    assert_eq!(
        delivery.id.as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    let push = push_of(delivery);
    assert_eq!(push.git_ref, "refs/heads/main");
    assert_eq!(push.branch.as_ref().map(|b| b.as_str()), Some("main"));
    assert_eq!(push.built_branch(), push.branch.as_ref());
    assert!(!push.tag && !push.deleted && !push.created && !push.truncated);
    assert_eq!(
        subjects(&push),
        [
            "Add a greeting",
            "Fix the greeting's typo",
            "Mention the licence"
        ]
    );
    assert_eq!(push.commits[1].author.as_deref(), Some("Monalisa Octocat"));
    assert_eq!(push.commits[2].id, push.after, "the newest is the head");
}

#[test]
fn a_ping_and_other_events_queue_nothing() {
    let body = fixture("github_ping.json");
    let delivery = parse_push(&github("ping", &body, SECRET), &body, SECRET).expect("valid");
    assert_eq!(delivery.event, Event::Ping);
    let delivery = parse_push(&github("issues", &body, SECRET), &body, SECRET).expect("valid");
    assert_eq!(delivery.event, Event::Other("issues".into()));
    let delivery =
        parse_push(&gitlab("Merge Request Hook", secret_text()), b"{}", SECRET).expect("valid");
    assert_eq!(delivery.event, Event::Other("Merge Request Hook".into()));
}

#[test]
fn a_branch_deletion_and_tag_pushes_build_nothing() {
    let body = fixture("github_delete.json");
    let push = push_of(parse_push(&github("push", &body, SECRET), &body, SECRET).expect("valid"));
    assert!(push.deleted);
    assert_eq!(
        push.branch.as_ref().map(|b| b.as_str()),
        Some("feature/old")
    );
    assert_eq!(push.built_branch(), None);
    assert!(push.commits.is_empty());

    let body = fixture("github_tag.json");
    let push = push_of(parse_push(&github("push", &body, SECRET), &body, SECRET).expect("valid"));
    assert!(push.tag && push.created && !push.deleted);
    assert_eq!(push.branch, None);
    assert_eq!(push.built_branch(), None);

    let body = fixture("gitlab_tag_push.json");
    let push =
        push_of(parse_push(&gitlab("Tag Push Hook", secret_text()), &body, SECRET).expect("valid"));
    assert_eq!(push.git_ref, "refs/tags/v1.0.0");
    assert!(push.tag);
    assert_eq!(push.built_branch(), None);
}

#[test]
fn gitea_lists_newest_first_and_comes_out_oldest_first() {
    let body = fixture("gitea_push.json");
    let delivery = parse_push(&gitea("push", &body, SECRET), &body, SECRET).expect("valid");
    assert_eq!(delivery.forge, Forge::Gitea, "Gitea's own header wins");
    assert_eq!(
        delivery.id.as_deref(),
        Some("f6266f16-1bf3-46a5-9ea4-602e06ead473")
    );
    let push = push_of(delivery);
    assert_eq!(push.branch.as_ref().map(|b| b.as_str()), Some("develop"));
    assert_eq!(
        subjects(&push),
        ["Webhooks step 1", "Webhooks step 2", "Webhooks step 3"]
    );
    assert!(!push.truncated, "total_commits equals the listed count");

    let body = fixture("gitea_push_truncated.json");
    let push = push_of(parse_push(&gitea("push", &body, SECRET), &body, SECRET).expect("valid"));
    assert!(push.truncated, "7 pushed, 5 listed");
    assert_eq!(
        subjects(&push),
        ["Step 13", "Step 14", "Step 15", "Step 16", "Step 17"]
    );
}

#[test]
fn gitlab_pushes_and_a_truncated_one() {
    let body = fixture("gitlab_push.json");
    let delivery = parse_push(&gitlab("Push Hook", secret_text()), &body, SECRET).expect("valid");
    assert_eq!(delivery.forge, Forge::GitLab);
    assert_eq!(
        delivery.id.as_deref(),
        Some("13792a34-cac6-4fda-95a8-c58e00a3954e")
    );
    let push = push_of(delivery);
    assert_eq!(push.branch.as_ref().map(|b| b.as_str()), Some("master"));
    assert_eq!(
        subjects(&push),
        ["Update Catalan translation to e38cb41.", "fixed readme"]
    );
    assert_eq!(push.commits[1].author.as_deref(), Some("GitLab dev user"));
    assert!(!push.truncated);

    // GitLab 17.4 and later: the key that stays the same on retries wins.
    let mut retried = gitlab("Push Hook", secret_text());
    retried.insert(
        "idempotency-key",
        HeaderValue::from_static("908a6d9e-45fd-46c8-97e6-c4f350f219dd"),
    );
    let delivery = parse_push(&retried, &body, SECRET).expect("valid");
    assert_eq!(
        delivery.id.as_deref(),
        Some("908a6d9e-45fd-46c8-97e6-c4f350f219dd")
    );

    let body = fixture("gitlab_push_truncated.json");
    let push =
        push_of(parse_push(&gitlab("Push Hook", secret_text()), &body, SECRET).expect("valid"));
    assert!(push.truncated, "23 pushed, 20 listed");
    assert_eq!(push.commits.len(), 20);
    assert_eq!(subjects(&push)[0], "Change number 104");
    assert_eq!(push.commits[19].id, push.after);
}

/// Each forge's delivery, and a way to forge it without the secret: the
/// forged one is refused while the genuine one, differing only there, is
/// accepted.
#[test]
fn deliveries_without_the_secret_are_refused_with_no_detail() {
    let gh_body = fixture("github_push.json");
    let gt_body = fixture("gitea_push.json");
    let gl_body = fixture("gitlab_push.json");
    let mut tampered = gh_body.clone();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b' ' { b'\t' } else { b' ' };

    let genuine: Vec<(&str, HeaderMap, &[u8])> = vec![
        ("github", github("push", &gh_body, SECRET), &gh_body),
        ("gitea", gitea("push", &gt_body, SECRET), &gt_body),
        ("gitlab", gitlab("Push Hook", secret_text()), &gl_body),
    ];
    for (name, headers, body) in &genuine {
        assert!(parse_push(headers, body, SECRET).is_ok(), "genuine {name}");
    }

    let without = |headers: &HeaderMap, name: &str| {
        let mut headers = headers.clone();
        headers.remove(name);
        headers
    };
    let forged: Vec<(&str, HeaderMap, &[u8], Denial)> = vec![
        (
            "github, signed with another secret",
            github("push", &gh_body, b"guess"),
            &gh_body,
            Denial::Mismatch,
        ),
        (
            "github, body changed after signing",
            github("push", &gh_body, SECRET),
            &tampered,
            Denial::Mismatch,
        ),
        (
            "github, unsigned",
            without(&github("push", &gh_body, SECRET), "x-hub-signature-256"),
            &gh_body,
            Denial::Missing,
        ),
        (
            "github, old SHA-1 signature only",
            {
                let mut h = without(&github("push", &gh_body, SECRET), "x-hub-signature-256");
                h.insert("x-hub-signature", HeaderValue::from_static("sha1=00"));
                h
            },
            &gh_body,
            Denial::Missing,
        ),
        (
            "github, the hex without its sha256= prefix",
            {
                let hex = forge::sign(SECRET, &gh_body)[7..].to_string();
                let mut h = github("push", &gh_body, SECRET);
                h.insert(
                    "x-hub-signature-256",
                    HeaderValue::from_str(&hex).expect("hex"),
                );
                h
            },
            &gh_body,
            Denial::Mismatch,
        ),
        (
            // Gitea's headers win: a valid GitHub-style signature does not
            // stand in for a wrong Gitea one.
            "gitea, wrong X-Gitea-Signature beside a valid X-Hub-Signature-256",
            {
                let mut h = gitea("push", &gt_body, SECRET);
                h.insert("x-gitea-signature", HeaderValue::from_static("00"));
                h
            },
            &gt_body,
            Denial::Mismatch,
        ),
        (
            "gitea, unsigned",
            without(&gitea("push", &gt_body, SECRET), "x-gitea-signature"),
            &gt_body,
            Denial::Missing,
        ),
        (
            "gitlab, wrong token",
            gitlab("Push Hook", "It's a Secret to Everybod"),
            &gl_body,
            Denial::Mismatch,
        ),
        (
            "gitlab, the token with a trailing space",
            gitlab("Push Hook", "It's a Secret to Everybody "),
            &gl_body,
            Denial::Mismatch,
        ),
        (
            "gitlab, no token",
            without(&gitlab("Push Hook", secret_text()), "x-gitlab-token"),
            &gl_body,
            Denial::Missing,
        ),
        (
            // Ping and other events are checked too.
            "github ping with another secret",
            github("ping", &gh_body, b"guess"),
            &gh_body,
            Denial::Mismatch,
        ),
    ];
    for (what, headers, body, why) in forged {
        let err = parse_push(&headers, body, SECRET).expect_err(what);
        assert_eq!(err, HookError::Unauthorized(why), "{what}");
        assert_eq!(err.http_status(), 401, "{what}");
        assert_eq!(err.to_string(), "unauthorized", "{what}: no detail");
    }
}

#[test]
fn a_repository_without_a_secret_accepts_nothing() {
    // Signed with the empty key, as someone who guessed "no secret" would.
    let body = fixture("github_push.json");
    let err = parse_push(&github("push", &body, b""), &body, b"").expect_err("no secret");
    assert_eq!(err, HookError::Unauthorized(Denial::NoSecret));
    let err = parse_push(&gitlab("Push Hook", ""), &body, b"").expect_err("no secret");
    assert_eq!(err, HookError::Unauthorized(Denial::NoSecret));
}

#[test]
fn unreadable_deliveries_get_400_with_the_reason_and_big_ones_413() {
    let body = br#"{"ref": "refs/heads/main", "before": 1}"#;
    let err = parse_push(&github("push", body, SECRET), body, SECRET).expect_err("bad");
    assert_eq!(err.http_status(), 400);
    assert!(err.to_string().contains("malformed push payload"), "{err}");

    let bad_commit = br#"{"ref": "refs/heads/main", "before": "--upload-pack=x", "after": "0000000000000000000000000000000000000000"}"#;
    let err = parse_push(&github("push", bad_commit, SECRET), bad_commit, SECRET).expect_err("bad");
    assert!(
        err.to_string().starts_with("before: expected 40 or 64"),
        "{err}"
    );

    let bad_branch = format!(
        r#"{{"ref": "refs/heads/-x", "before": "{z}", "after": "{z}"}}"#,
        z = "0".repeat(40)
    );
    let err = parse_push(
        &github("push", bad_branch.as_bytes(), SECRET),
        bad_branch.as_bytes(),
        SECRET,
    )
    .expect_err("bad");
    assert!(
        err.to_string().starts_with("ref: must not start with '-'"),
        "{err}"
    );

    let body = fixture("github_push.json");
    let mut form = github("push", &body, SECRET);
    form.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let err = parse_push(&form, &body, SECRET).expect_err("form");
    assert!(
        err.to_string()
            .contains("set its content type to application/json"),
        "{err}"
    );

    let err = parse_push(&headers(&[("X-Other-Event", "push")]), &body, SECRET).expect_err("?");
    assert_eq!(err.http_status(), 400);
    assert!(err.to_string().contains("X-GitHub-Event"), "{err}");

    let big = vec![b' '; forge::MAX_BODY_BYTES + 1];
    let err = parse_push(&github("push", &big, SECRET), &big, SECRET).expect_err("big");
    assert_eq!(err, HookError::TooLarge);
    assert_eq!(err.http_status(), 413);
}

#[test]
fn huge_subjects_and_names_are_cut() {
    let message = format!("{}\n\nbody", "é".repeat(2000));
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "before": "1".repeat(40),
        "after": "2".repeat(40),
        "commits": [{"id": "2".repeat(40), "message": message,
                     "author": {"name": "n".repeat(1000), "email": "x@y"}}],
    })
    .to_string();
    let push = push_of(
        parse_push(
            &github("push", body.as_bytes(), SECRET),
            body.as_bytes(),
            SECRET,
        )
        .expect("valid"),
    );
    let subject = push.commits[0].subject.as_deref().expect("subject");
    assert!(subject.len() <= forge::MAX_SUBJECT_BYTES && subject.len() > 1000);
    assert!(subject.chars().all(|c| c == 'é'));
    assert_eq!(
        push.commits[0].author.as_deref().map(str::len),
        Some(forge::MAX_AUTHOR_BYTES)
    );
}

#[test]
fn a_github_push_listing_20_commits_or_more_may_be_cut_short() {
    // GitHub gives no total: a list as long as its documented cap may
    // have been cut, so the dispatcher lists the range from the repository.
    let push_listing = |n: usize| {
        let commits: Vec<_> = (1..=n)
            .map(|i| serde_json::json!({"id": format!("{i:040x}"), "message": format!("c{i}")}))
            .collect();
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "before": format!("{:040x}", 0xfff),
            "after": format!("{n:040x}"),
            "commits": commits,
        })
        .to_string();
        push_of(
            parse_push(
                &github("push", body.as_bytes(), SECRET),
                body.as_bytes(),
                SECRET,
            )
            .expect("valid"),
        )
    };
    assert!(!push_listing(19).truncated);
    assert!(push_listing(20).truncated);
    assert!(push_listing(2048).truncated);
}
