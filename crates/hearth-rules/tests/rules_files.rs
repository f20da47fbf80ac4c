//! The rules file (load, hot reload) and the rule-test runner, including
//! the shipped chat example.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hearth_rules::{
    run_rule_test_files, run_rule_tests, AccessControl, NoDocuments, RulesError, RulesFile,
};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn readable(access: &AccessControl, p: &str) -> bool {
    let d = doc(p, serde_json::json!({}));
    access
        .check_get(&alice(), &d.path, Some(&d), &NoDocuments)
        .is_ok()
}

async fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn hot_reload_installs_new_rules_and_keeps_old_ones_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hearth.rules");
    std::fs::write(&file, "match /a/{id} { allow get; }").unwrap();
    let access = AccessControl::new(RulesFile::load(&file).unwrap());
    let watcher = RulesFile::watch_every(&file, access.clone(), Duration::from_millis(20));
    assert!(readable(&access, "a/1"));
    assert!(!readable(&access, "b/1"));

    std::fs::write(&file, "match /b/{id} { allow get; }").unwrap();
    assert!(
        wait_until(|| readable(&access, "b/1")).await,
        "new rules were not installed"
    );
    assert!(!readable(&access, "a/1"));

    // A broken file keeps the previous rules.
    std::fs::write(&file, "match /c/{id} { allow get: if ; }").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(readable(&access, "b/1"));
    assert!(!readable(&access, "c/1"));

    // A deleted file keeps them too; fixing the file installs the fix.
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(readable(&access, "b/1"));
    std::fs::write(&file, "match /c/{id} { allow get; }").unwrap();
    assert!(
        wait_until(|| readable(&access, "c/1")).await,
        "fixed rules were not installed"
    );
    watcher.stop();
}

#[test]
fn loading_a_bad_file_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hearth.rules");
    std::fs::write(&file, "match /a/{id} {\n  allow read: if true\n}\n").unwrap();
    let err = RulesFile::load(&file).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3:1: expected ';' after allow condition, found '}}'",
            file.display()
        )
    );
}

#[test]
fn chat_example_rules_pass_their_tests() {
    let report = run_rule_test_files(
        &examples().join("chat.rules"),
        &examples().join("chat.tests.toml"),
    )
    .unwrap();
    let text = report.render();
    assert!(report.success(), "{text}");
    assert_eq!(report.failed, 0);
    assert_eq!(report.passed, 18, "{text}");
    assert!(
        text.contains("test a member posts as herself ... ok"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("rules: 18 passed, 0 failed"),
        "{text}"
    );
}

#[test]
fn failing_rule_tests_are_reported_with_the_reason() {
    let rules = "match /a/{id} { allow get: if resource.data.missing == 1; }";
    let tests = r#"
[[test]]
name = "should be allowed"
auth = { uid = "u" }
op = "get"
path = "a/1"
existing = { x = 1 }
expect = "allow"

[[test]]
name = "denied as expected"
op = "get"
path = "a/1"
expect = "deny"
"#;
    let report = run_rule_tests(rules, tests).unwrap();
    assert_eq!((report.passed, report.failed), (1, 1));
    let text = report.render();
    assert!(text.contains("test should be allowed ... FAILED"), "{text}");
    assert!(
        text.contains("expected allow, got deny (test at line 2)"),
        "{text}"
    );
    assert!(text.contains("map has no field \"missing\""), "{text}");
    assert!(text.contains("test denied as expected ... ok"), "{text}");
    assert!(text.contains("rules: 1 passed, 1 failed"), "{text}");
}

fn test_file_error(tests: &str) -> (u32, u32, String) {
    match run_rule_tests("match /a/{id} { allow read; }", tests) {
        Err(RulesError::Syntax {
            line,
            column,
            message,
            file,
        }) => {
            assert_eq!(file, "tests");
            (line, column, message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn test_file_errors_point_at_line_and_column() {
    let (l, _, m) = test_file_error(
        "[[test]]\nname = \"x\"\nop = \"get\"\npath = \"a/1\"\nexpect = \"allow\"\nextra = 1\n",
    );
    assert_eq!(l, 6, "{m}");
    assert!(m.contains("unknown field"), "{m}");
    let (l, c, m) = test_file_error(
        "[[test]]\nname = \"x\"\nop = \"fetch\"\npath = \"a/1\"\nexpect = \"allow\"\n",
    );
    assert_eq!((l, c), (3, 6), "{m}");
    assert!(m.contains("unknown op"), "{m}");
    let (l, c, m) =
        test_file_error("[[test]]\nname = \"x\"\nop = \"get\"\npath = \"a\"\nexpect = \"allow\"\n");
    assert_eq!((l, c), (4, 8), "{m}");
    assert!(m.contains("bad document path"), "{m}");
    let (l, _, m) = test_file_error(
        "[[test]]\nname = \"x\"\nop = \"get\"\npath = \"a/1\"\nexpect = \"maybe\"\n",
    );
    assert_eq!(l, 5, "{m}");
    let (l, _, m) = test_file_error("[[test]]\nname = \"x\nop = \"get\"\n");
    assert_eq!(l, 2, "{m}");
    let (_, _, m) = test_file_error("");
    assert!(m.contains("no [[test]]"), "{m}");
    // A rules error is reported against the rules.
    let err = run_rule_tests("match /a { allow nope; }", "[[test]]\n").unwrap_err();
    assert!(
        err.to_string().starts_with("rules:1:18: unknown method"),
        "{err}"
    );
}

#[test]
fn test_values_cover_timestamps_null_typed_values_and_time() {
    let rules = r#"
        match /a/{id} {
          allow create: if request.resource.data.at is timestamp
                        && request.resource.data.nothing == null
                        && request.resource.data.raw is bytes
                        && request.time > request.resource.data.at;
        }
    "#;
    let tests = r#"
[[test]]
name = "typed values"
auth = { uid = "u", token = { admin = true } }
op = "create"
path = "a/1"
time = 2030-01-01T00:00:00Z
data = { at = 2024-01-01T00:00:00Z, nothing = { "$null" = true }, raw = { "$bytes" = "aGk=" } }
expect = "allow"
"#;
    let report = run_rule_tests(rules, tests).unwrap();
    assert!(report.success(), "{}", report.render());
}
