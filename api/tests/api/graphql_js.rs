//! The reference GraphQL implementation, graphql-js, as dashboard toolchains use it: the
//! version pinned in `api/tests/graphql-js/package-lock.json`, installed once per target
//! directory with `npm ci`, driven through `check.mjs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graphql-js");
const FILES: [&str; 3] = ["package.json", "package-lock.json", "check.mjs"];

/// The directory graphql-js is installed in (installing it the first time). Fails the
/// test, saying what is missing, when node or npm is not there: these tests are part of
/// the contract with dashboards and must not pass by being skipped.
fn installed() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graphql-js");
        std::fs::create_dir_all(&dir).expect("a directory for graphql-js");
        let mut changed = false;
        for file in FILES {
            let want = std::fs::read(Path::new(SOURCE).join(file)).expect("the committed file");
            if std::fs::read(dir.join(file)).ok().as_deref() != Some(&want[..]) {
                std::fs::write(dir.join(file), want).expect("a copy of the committed file");
                changed = true;
            }
        }
        if changed || !dir.join("node_modules/graphql/package.json").exists() {
            let status = Command::new("npm")
                .args([
                    "ci",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--prefer-offline",
                ])
                .current_dir(&dir)
                .status()
                .unwrap_or_else(|e| {
                    panic!("npm is needed to install graphql-js for the toolchain tests: {e}")
                });
            assert!(status.success(), "npm ci of graphql-js failed: {status}");
        }
        dir
    })
}

/// Runs `node check.mjs <args>`; returns what it prints.
fn check(args: &[&str]) -> String {
    let out = Command::new("node")
        .arg("check.mjs")
        .args(args)
        .current_dir(installed())
        .output()
        .unwrap_or_else(|e| panic!("node (v18 or later) is needed for the toolchain tests: {e}"));
    assert!(
        out.status.success(),
        "graphql-js check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from check.mjs")
}

/// The standard introspection query as graphql-js's `getIntrospectionQuery` writes it,
/// with every option turned on.
pub fn introspection_query() -> String {
    check(&["introspection-query"])
}

/// A client schema rebuilt from an introspection `answer`, and each of `operations`
/// (`[{ "name", "document" }]`) validated and typed against it: `{ types, sdl,
/// operations: [{ name, errors, variables, fields }] }`.
pub fn client_schema(answer: &Value, operations: &Value) -> Value {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("introspection-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let answer_file = dir.join("answer.json");
    let operations_file = dir.join("operations.json");
    std::fs::write(&answer_file, answer.to_string()).expect("the answer written");
    std::fs::write(&operations_file, operations.to_string()).expect("the operations written");
    let report = check(&[
        "client-schema",
        answer_file.to_str().expect("a utf-8 path"),
        operations_file.to_str().expect("a utf-8 path"),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_str(&report).expect("a JSON report")
}

/// The reference graphql-transport-ws client (graphql-ws) subscribed to `query` at the
/// service's `ws_url` with `token`, started now: a handle whose output is the first `count`
/// results as a JSON list, or `{"closed": code, "reason"}` when the server refused.
pub fn subscribe(
    ws_url: &str,
    token: &str,
    query: &str,
    variables: &Value,
    count: usize,
) -> std::process::Child {
    Command::new("node")
        .args(["check.mjs", "subscribe", ws_url, token, query])
        .arg(variables.to_string())
        .arg(count.to_string())
        .current_dir(installed())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node (v18 or later) is needed for the toolchain tests: {e}"))
}
