//! Rule unit tests for app developers: `hearth rules test FILE --rules R`.
//!
//! A test file is TOML. Each `[[test]]` describes one request and the
//! expected decision; no server is needed, so it runs in any CI:
//!
//! ```toml
//! # Documents that get()/exists() can see in every test (optional).
//! [docs]
//! "rooms/r1" = { members = ["alice", "bob"] }
//!
//! [[test]]
//! name = "a member can read her room"
//! auth = { uid = "alice", token = { email = "alice@example.com", email_verified = true } }
//! op = "get"                      # get | list | create | update | delete
//! path = "rooms/r1"
//! existing = { members = ["alice", "bob"] }   # resource.data; omit if the document does not exist
//! expect = "allow"                # allow | deny
//!
//! [[test]]
//! name = "nobody posts as someone else"
//! auth = { uid = "bob" }
//! op = "create"
//! path = "rooms/r1/messages/m1"
//! data = { author = "alice", text = "hi" }    # request.resource.data (create/update)
//! docs = { "rooms/r2" = { members = [] } }    # more documents for this test only
//! time = 2024-05-01T12:00:00Z                 # request.time (optional; default now)
//! expect = "deny"
//! ```
//!
//! `auth` is `"none"` (the default: unauthenticated), `"admin"` (bypasses
//! rules), or `{ uid = "...", token = { ...claims } }`. Values are TOML
//! values; TOML datetimes become timestamps, and the typed JSON forms of
//! Hearth values work too (`{ "$bytes" = "aGk=" }`, `{ "$timestamp" = "..." }`),
//! plus `{ "$null" = true }` for null, which TOML cannot spell. For an
//! `update`, `data` defaults to the existing fields.
//!
//! Errors in the file (bad TOML, unknown keys, a bad path or op) point at
//! line and column. The report prints one `ok`/`FAILED` line per test and
//! a closing `rules: N passed, N failed` line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hearth_protocol::{DocPath, Document, Map, Timestamp, Value};
use serde::Deserialize;
use toml::Spanned;

use crate::ast::Method;
use crate::error::RulesError;
use crate::ruleset::{Principal, RuleRequest, Ruleset};
use crate::MemoryLookup;

/// The outcome of a test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestReport {
    pub passed: usize,
    pub failed: usize,
    pub results: Vec<TestResult>,
}

/// One test's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    /// Line of the test's `[[test]]` entry in the test file.
    pub line: u32,
    pub expected_allow: bool,
    pub actual_allow: bool,
    /// Errors met while evaluating matching rules (`line:col: message` in the rules file).
    pub errors: Vec<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.expected_allow == self.actual_allow
    }
}

fn word(allow: bool) -> &'static str {
    if allow {
        "allow"
    } else {
        "deny"
    }
}

impl TestReport {
    /// True when every test passed.
    pub fn success(&self) -> bool {
        self.failed == 0
    }

    /// Test-runner output: one line per test, details under failures, and
    /// a `rules: N passed, N failed` summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            let status = if r.passed() { "ok" } else { "FAILED" };
            let _ = writeln!(out, "test {} ... {status}", r.name);
            if !r.passed() {
                let _ = writeln!(
                    out,
                    "    expected {}, got {} (test at line {})",
                    word(r.expected_allow),
                    word(r.actual_allow),
                    r.line
                );
                for e in &r.errors {
                    let _ = writeln!(out, "    rule error at {e}");
                }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "rules: {} passed, {} failed", self.passed, self.failed);
        out
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    docs: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    test: Vec<Spanned<TestCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default)]
    auth: Option<Spanned<toml::Value>>,
    op: Spanned<String>,
    path: Spanned<String>,
    #[serde(default)]
    existing: Option<Spanned<toml::Value>>,
    #[serde(default)]
    data: Option<Spanned<toml::Value>>,
    #[serde(default)]
    docs: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    time: Option<Spanned<toml::Value>>,
    expect: Spanned<String>,
}

/// Byte offset → (line, column in characters), 1-based.
fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() as u32 + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
    (line, col)
}

struct Ctx<'t> {
    text: &'t str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Result<T, RulesError> {
        let (line, column) = line_col(self.text, span.start);
        Err(RulesError::Syntax {
            file: "tests".into(),
            line,
            column,
            message: message.into(),
        })
    }

    fn value(&self, v: &Spanned<toml::Value>) -> Result<Value, RulesError> {
        let json = toml_to_json(v.get_ref());
        Value::from_json(&json).or_else(|e| self.err(v.span(), e.message))
    }

    fn fields(&self, v: &Spanned<toml::Value>) -> Result<Map, RulesError> {
        match self.value(v)? {
            Value::Map(m) => Ok(m),
            other => self.err(
                v.span(),
                format!("expected a table of fields, got {}", other.type_name()),
            ),
        }
    }

    fn doc_path(&self, text: &str, span: std::ops::Range<usize>) -> Result<DocPath, RulesError> {
        DocPath::parse(text).or_else(|e| self.err(span, format!("bad document path: {e}")))
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| {
                let name = if f.is_nan() {
                    "NaN"
                } else if *f > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                };
                serde_json::json!({ "$double": name })
            }),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::json!({ "$timestamp": d.to_string() }),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            if t.len() == 1 && t.get("$null").is_some() {
                return serde_json::Value::Null;
            }
            serde_json::Value::Object(
                t.iter()
                    .map(|(k, v)| (k.clone(), toml_to_json(v)))
                    .collect(),
            )
        }
    }
}

fn document(path: DocPath, fields: Map, time: Timestamp) -> Document {
    Document {
        path,
        fields,
        create_time: time,
        update_time: time,
        version: 1,
    }
}

/// Runs the tests in `tests_text` against the rules in `rules_text`.
/// Errors name `rules` or `tests` as the file; see [`run_rule_test_files`]
/// for real file names.
pub fn run_rule_tests(rules_text: &str, tests_text: &str) -> Result<TestReport, RulesError> {
    let rules = Ruleset::parse(rules_text)?;
    let ctx = Ctx { text: tests_text };
    let file: TestFile = toml::from_str(tests_text).or_else(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(span, e.message().trim().to_string())
    })?;
    let mut shared = Vec::new();
    for (path, fields) in &file.docs {
        let p = ctx.doc_path(path, fields.span())?;
        shared.push((p, ctx.fields(fields)?));
    }
    let mut report = TestReport {
        passed: 0,
        failed: 0,
        results: Vec::new(),
    };
    for case in &file.test {
        let line = line_col(tests_text, case.span().start).0;
        let result = run_case(&ctx, &rules, case.get_ref(), &shared, line)?;
        if result.passed() {
            report.passed += 1;
        } else {
            report.failed += 1;
        }
        report.results.push(result);
    }
    if file.test.is_empty() {
        return ctx.err(0..0, "no [[test]] entries in the test file");
    }
    Ok(report)
}

fn run_case(
    ctx: &Ctx<'_>,
    rules: &Ruleset,
    case: &TestCase,
    shared: &[(DocPath, Map)],
    line: u32,
) -> Result<TestResult, RulesError> {
    let principal = match &case.auth {
        None => Principal::Unauthenticated,
        Some(a) => match a.get_ref() {
            toml::Value::String(s) if s == "none" => Principal::Unauthenticated,
            toml::Value::String(s) if s == "admin" => Principal::Admin,
            toml::Value::Table(t) => {
                let Some(toml::Value::String(uid)) = t.get("uid") else {
                    return ctx.err(
                        a.span(),
                        "auth needs a string uid: auth = { uid = \"alice\" }",
                    );
                };
                if let Some(k) = t.keys().find(|k| *k != "uid" && *k != "token") {
                    return ctx.err(
                        a.span(),
                        format!("unknown key {k:?} in auth; use uid and token"),
                    );
                }
                let claims = match t.get("token") {
                    None => BTreeMap::new(),
                    Some(token) => match Value::from_json(&toml_to_json(token)) {
                        Ok(Value::Map(m)) => m,
                        Ok(_) => return ctx.err(a.span(), "auth.token must be a table of claims"),
                        Err(e) => return ctx.err(a.span(), e.message),
                    },
                };
                Principal::User {
                    uid: uid.clone(),
                    claims,
                }
            }
            _ => {
                return ctx.err(
                    a.span(),
                    "auth must be \"none\", \"admin\" or { uid = ..., token = {...} }",
                )
            }
        },
    };
    let Some(method) = Method::parse(case.op.get_ref()) else {
        return ctx.err(
            case.op.span(),
            format!(
                "unknown op {:?}; use get, list, create, update or delete",
                case.op.get_ref()
            ),
        );
    };
    let expected_allow = match case.expect.get_ref().as_str() {
        "allow" => true,
        "deny" => false,
        other => {
            return ctx.err(
                case.expect.span(),
                format!("expect must be \"allow\" or \"deny\", not {other:?}"),
            )
        }
    };
    let path = ctx.doc_path(case.path.get_ref(), case.path.span())?;
    let time = match &case.time {
        None => Timestamp::now(),
        Some(t) => match ctx.value(t)? {
            Value::Timestamp(ts) => ts,
            Value::String(s) => {
                Timestamp::parse_rfc3339(&s).or_else(|e| ctx.err(t.span(), e.message))?
            }
            _ => return ctx.err(t.span(), "time must be an RFC 3339 datetime"),
        },
    };
    let mut lookup = MemoryLookup::new();
    for (p, fields) in shared {
        lookup.insert(document(p.clone(), fields.clone(), time));
    }
    for (p, fields) in &case.docs {
        let dp = ctx.doc_path(p, fields.span())?;
        lookup.insert(document(dp, ctx.fields(fields)?, time));
    }
    let existing = match &case.existing {
        Some(e) => {
            let doc = document(path.clone(), ctx.fields(e)?, time);
            lookup.insert(doc.clone());
            Some(doc)
        }
        None => None,
    };
    let new_data = match (&case.data, method) {
        (Some(d), Method::Create | Method::Update) => Some(ctx.fields(d)?),
        (Some(d), _) => {
            return ctx.err(
                d.span(),
                format!("data is only used by create and update, not {method}"),
            )
        }
        (None, Method::Create) => Some(Map::new()),
        (None, Method::Update) => Some(
            existing
                .as_ref()
                .map(|d| d.fields.clone())
                .unwrap_or_default(),
        ),
        (None, _) => None,
    };
    let (actual_allow, errors) = if path.is_system() && !principal.is_admin() {
        (false, vec![])
    } else {
        let eval = rules.evaluate(
            &RuleRequest {
                principal: &principal,
                method,
                path: &path,
                resource: existing.as_ref(),
                new_data: new_data.as_ref(),
                time,
            },
            &lookup,
        );
        (eval.allowed, eval.errors)
    };
    Ok(TestResult {
        name: case.name.clone(),
        line,
        expected_allow,
        actual_allow,
        errors,
    })
}

/// [`run_rule_tests`] on files; errors carry the files' names.
pub fn run_rule_test_files(rules_path: &Path, tests_path: &Path) -> Result<TestReport, RulesError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| RulesError::Io {
            file: p.display().to_string(),
            message: e.to_string(),
        })
    };
    let rules_text = read(rules_path)?;
    let tests_text = read(tests_path)?;
    Ruleset::parse(&rules_text).map_err(|e| e.with_file(rules_path.display().to_string()))?;
    run_rule_tests(&rules_text, &tests_text)
        .map_err(|e| e.with_file(tests_path.display().to_string()))
}
