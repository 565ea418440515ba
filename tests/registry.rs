//! Issue 15: the repository registry through `warren repo` and
//! `/api/repos` against a real dispatcher: writes need the token, bad
//! entries are refused naming the flag, `apply` is idempotent, entries
//! survive a restart, and `?repo=` filters jobs by a registered name.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const TOKEN: &str = "registry-token";

fn warren(server: &str, args: &[&str], token: bool) -> (i32, String, String) {
    let mut command = Command::new(WARREN);
    command
        .args(args)
        .env("WARREN_SERVER", server)
        .env_remove("WARREN_API_TOKEN");
    if token {
        command.env("WARREN_API_TOKEN", TOKEN);
    }
    let out = command.output().expect("run warren");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn names(api: &Api) -> Vec<String> {
    let repos = api.get_json("/api/repos").expect("repos");
    repos
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn repositories_are_registered_listed_applied_and_removed() {
    let ns = Namespace::new("registry");
    let scratch = Scratch::new();
    let env = [("WARREN_API_TOKEN", TOKEN)];
    let dispatcher = Dispatcher::start_with_env(&ns, &scratch, &[], &env);
    let server = dispatcher.url.clone();
    let api = dispatcher.api();

    let add = [
        "repo",
        "add",
        "app",
        "https://forge.example.org/me/app.git",
        "--branch",
        "main",
        "--branch",
        "release/*",
        "--poll",
        "30",
        "--webhook-secret-env",
        "APP_HOOK_SECRET",
        "--status-kind",
        "github",
        "--status-api",
        "https://api.github.com",
        "--status-repo",
        "me/app",
        "--status-token-env",
        "GITHUB_TOKEN",
    ];
    // A write needs the token.
    let (code, _, err) = warren(&server, &add, false);
    assert_ne!(code, 0);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    assert!(names(&api).is_empty());

    let (code, out, err) = warren(&server, &add, true);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered app"), "{out}");
    // The same entry again is harmless; other settings under the name are not.
    let (code, _, err) = warren(&server, &add, true);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = warren(
        &server,
        &["repo", "add", "app", "/srv/other.git", "--no-poll"],
        true,
    );
    assert_ne!(code, 0);
    assert!(err.contains("409") && err.contains("PUT"), "{err}");
    // One URL has one name.
    let (code, _, err) = warren(
        &server,
        &[
            "repo",
            "add",
            "app2",
            "https://forge.example.org/me/app.git",
        ],
        true,
    );
    assert_ne!(code, 0);
    assert!(err.contains("already registered as app"), "{err}");

    // Bad values: one line naming the flag, before anything is sent.
    for (args, flag) in [
        (vec!["repo", "add", "Bad", "/x"], "NAME"),
        (vec!["repo", "add", "a", "/x", "--poll", "0"], "--poll"),
        (
            vec!["repo", "add", "a", "/x", "--branch", "a..b"],
            "--branch",
        ),
        (
            vec![
                "repo",
                "add",
                "a",
                "/x",
                "--status-kind",
                "github",
                "--status-api",
                "ftp://x",
                "--status-repo",
                "me/a",
                "--status-token-env",
                "T",
            ],
            "--status-api",
        ),
        (
            vec!["repo", "add", "a", "/x", "--status-kind", "github"],
            "--status-api",
        ),
        (
            vec!["repo", "add", "a", "/x", "--poll", "5", "--no-poll"],
            "--no-poll",
        ),
    ] {
        let (code, _, err) = warren(&server, &args, true);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    assert_eq!(names(&api), ["app"]);

    let (code, table, _) = warren(&server, &["repo", "list"], false);
    assert_eq!(code, 0);
    assert!(
        table.contains("app")
            && table.contains("main,release/*")
            && table.contains("github me/app"),
        "{table}"
    );
    let (_, json, _) = warren(&server, &["repo", "list", "--json"], false);
    let listed: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(listed[0]["status"]["token_env"], "GITHUB_TOKEN");
    assert_eq!(listed[0]["poll_secs"], 30.0);

    // apply: registers, updates, and the second time changes nothing.
    let file = scratch.join("repos.toml");
    std::fs::write(
        &file,
        "[[repo]]\nname = \"app\"\nurl = \"https://forge.example.org/me/app.git\"\npoll = false\n\n\
         [[repo]]\nname = \"lib\"\nurl = \"/srv/git/lib.git\"\nbranch = [\"main\"]\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf8");
    let (code, out, err) = warren(&server, &["repo", "apply", file], true);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("app: updated") && out.contains("lib: registered"),
        "{out}"
    );
    let (code, out, err) = warren(&server, &["repo", "apply", file], true);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("app: unchanged") && out.contains("lib: unchanged"),
        "{out}"
    );
    let app = api.get_json("/api/repos/app").expect("app");
    assert_eq!(app["poll_secs"], Value::Null, "poll = false: {app}");

    // Entries live in the store: a restarted dispatcher has them.
    let data = dispatcher.data_dir.clone();
    drop(dispatcher);
    let dispatcher = Dispatcher::start_at(&ns, &scratch, data, &[], &env);
    let server = dispatcher.url.clone();
    let api = dispatcher.api();
    assert_eq!(names(&api), ["app", "lib"]);

    // The jobs filter by a registered name, and refuses an unknown one.
    let jobs = api.get_json("/api/jobs?repo=lib").expect("jobs of lib");
    assert_eq!(jobs, Value::Array(Vec::new()));
    let err = api.get_text("/api/jobs?repo=nope").expect_err("unknown");
    assert!(err.contains("404"), "{err}");

    let (code, _, err) = warren(&server, &["repo", "remove", "lib"], true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&api), ["app"]);
    let (code, _, err) = warren(&server, &["repo", "remove", "lib"], true);
    assert_ne!(code, 0);
    assert!(err.contains("404"), "{err}");
}
