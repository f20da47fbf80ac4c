//! # hearth-conformance
//!
//! Runs the language-neutral conformance scenarios of
//! `sdk-spec/conformance/scenarios/*.json` against a live Hearth server and
//! reports pass/fail per scenario. Every frame the server sends is also
//! validated against the protocol's JSON Schemas (`sdk-spec/schema/*.json`)
//! when that folder exists.
//!
//! The scenario format is specified in `sdk-spec/conformance/README.md`, so
//! that SDK authors in any language can write their own runner; this crate
//! is the reference runner, used by `hearth conformance` and by CI.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
mod matcher;
mod runner;
mod schema;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub use client::{run_client_checks, ClientRunOptions, CLIENT_CHECKS};
pub use matcher::{matches, substitute, Vars};
pub use schema::SchemaSet;

/// Upper bound for one scenario.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

/// What happened to one scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    /// Why it failed, and the last frames exchanged.
    Failed {
        reason: String,
        transcript: Vec<String>,
    },
    /// Why it was not run (a server capability it needs is missing).
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub name: String,
    pub file: PathBuf,
    pub outcome: Outcome,
    pub duration: Duration,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<ScenarioResult>,
    /// Frames checked against the JSON Schemas (0 when none were found).
    pub frames_validated: usize,
    /// Whose frames those are: `""` (the default) for the server's (the
    /// scenarios), `"client"` for the client checks (both directions).
    pub frames_direction: &'static str,
    /// Why schema validation was off, if it was.
    pub schema_note: Option<String>,
    /// A problem that prevented running at all (bad folder, unreadable file).
    pub setup_error: Option<String>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed { .. }))
            + usize::from(self.setup_error.is_some())
    }
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
    /// The names of the scenarios or checks that did not pass (failed or skipped).
    pub fn not_passed(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Passed))
            .map(|r| r.name.as_str())
            .collect()
    }
    /// `Ok` when the run got going and every one of `expected` checks or
    /// scenarios passed (none failed, none skipped); otherwise what did not.
    pub fn require_all_passed(&self, expected: usize) -> Result<(), String> {
        if let Some(e) = &self.setup_error {
            return Err(format!("the run could not start: {e}"));
        }
        let not_passed = self.not_passed();
        if !not_passed.is_empty() {
            return Err(format!("not passed: {not_passed:?}"));
        }
        if self.passed() != expected {
            return Err(format!("{} passed of {expected}", self.passed()));
        }
        Ok(())
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// True when nothing failed (skips do not fail a run).
    pub fn success(&self) -> bool {
        self.failed() == 0
    }

    /// `"N passed, N failed"` (plus `", N skipped"` when some were).
    pub fn summary_line(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed(), self.failed());
        if self.skipped() > 0 {
            line.push_str(&format!(", {} skipped", self.skipped()));
        }
        line
    }

    /// One line per scenario, failure details, then the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(e) = &self.setup_error {
            out.push_str(&format!("ERROR {e}\n"));
        }
        for r in &self.results {
            let ms = r.duration.as_millis();
            match &r.outcome {
                Outcome::Passed => out.push_str(&format!("PASS {} ({ms} ms)\n", r.name)),
                Outcome::Skipped(why) => out.push_str(&format!("SKIP {}: {why}\n", r.name)),
                Outcome::Failed { reason, transcript } => {
                    out.push_str(&format!("FAIL {} ({ms} ms): {reason}\n", r.name));
                    for line in transcript {
                        out.push_str(&format!("     | {line}\n"));
                    }
                }
            }
        }
        match &self.schema_note {
            Some(note) => out.push_str(&format!("schemas: {note}\n")),
            None => out.push_str(&format!(
                "schemas: {} {} frames validated\n",
                self.frames_validated,
                match self.frames_direction {
                    "" => "server",
                    "client" => "client and server",
                    other => other,
                }
            )),
        }
        out.push_str(&self.summary_line());
        out.push('\n');
        out
    }
}

/// Options beyond the server address.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The admin key (most scenarios need it for REST side effects).
    pub admin_key: Option<String>,
    /// Where the JSON Schemas are; default: `<scenarios>/../../schema`.
    pub schema_dir: Option<PathBuf>,
    /// Server capabilities beyond the defaults that this server offers (see
    /// the README: e.g. `tiny-retention`). Scenarios requiring others are skipped.
    pub capabilities: Vec<String>,
    /// Run only scenarios whose name contains this text.
    pub filter: Option<String>,
    /// Speak `hearth.v1.msgpack`: connections request it by default, and
    /// every frame is sent and read as MessagePack (the scenarios, written
    /// in JSON, are unchanged; schemas check the decoded frames).
    pub msgpack: bool,
}

/// Plays every scenario in `scenarios_dir` against the server at
/// `server_url` (`http://host:port` or `ws://host:port/v1/ws`).
pub async fn run(server_url: &str, admin_key: Option<&str>, scenarios_dir: &Path) -> Report {
    run_with(
        server_url,
        scenarios_dir,
        RunOptions {
            admin_key: admin_key.map(str::to_string),
            ..RunOptions::default()
        },
    )
    .await
}

/// `(http base URL, WebSocket URL)` for a server address.
pub fn server_urls(server_url: &str) -> (String, String) {
    let url = server_url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let host = rest.split('/').next().unwrap_or(rest);
    let (http, ws) = match scheme {
        "https" | "wss" => ("https", "wss"),
        _ => ("http", "ws"),
    };
    (format!("{http}://{host}"), format!("{ws}://{host}/v1/ws"))
}

pub async fn run_with(server_url: &str, scenarios_dir: &Path, options: RunOptions) -> Report {
    let mut report = Report::default();
    let (http_url, ws_url) = server_urls(server_url);
    let files = match scenario_files(scenarios_dir) {
        Ok(files) => files,
        Err(e) => {
            report.setup_error = Some(e);
            return report;
        }
    };
    let schema_dir = options
        .schema_dir
        .clone()
        .unwrap_or_else(|| scenarios_dir.join("..").join("..").join("schema"));
    let schemas = match SchemaSet::load(&schema_dir) {
        Ok(Some(set)) => Some(set),
        Ok(None) => {
            report.schema_note = Some(format!(
                "not validated ({} does not exist)",
                schema_dir.display()
            ));
            None
        }
        Err(e) => {
            report.setup_error = Some(format!("schemas: {e}"));
            return report;
        }
    };
    let http = match reqwest::Client::builder().build() {
        Ok(http) => http,
        Err(e) => {
            report.setup_error = Some(format!("HTTP client: {e}"));
            return report;
        }
    };
    let mut capabilities = options.capabilities.clone();
    if options.admin_key.is_some() {
        capabilities.push("admin".into());
    }
    for (index, file) in files.iter().enumerate() {
        let started = Instant::now();
        let scenario = match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Json>(&t).map_err(|e| format!("not JSON: {e}")))
        {
            Ok(s) => s,
            Err(e) => {
                report.results.push(ScenarioResult {
                    name: file.display().to_string(),
                    file: file.clone(),
                    outcome: Outcome::Failed {
                        reason: format!("cannot read the scenario: {e}"),
                        transcript: vec![],
                    },
                    duration: started.elapsed(),
                });
                continue;
            }
        };
        let name = scenario
            .get("name")
            .and_then(Json::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        if let Some(filter) = &options.filter {
            if !name.contains(filter.as_str()) {
                continue;
            }
        }
        let outcome = if let Some(missing) = missing_capability(&scenario, &capabilities) {
            Outcome::Skipped(missing)
        } else {
            let mut vars = Vars::new();
            vars.insert(
                "run".into(),
                Json::String(format!("r{:x}{index}", run_nonce())),
            );
            if let Some(key) = &options.admin_key {
                vars.insert("admin_key".into(), Json::String(key.clone()));
            }
            vars.insert("base_url".into(), Json::String(http_url.clone()));
            let mut runner = runner::Runner::new(
                ws_url.clone(),
                http_url.clone(),
                http.clone(),
                schemas.as_ref(),
                vars,
                options.msgpack,
            );
            let steps = scenario
                .get("steps")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            let result = tokio::time::timeout(SCENARIO_TIMEOUT, runner.run_steps(&steps)).await;
            runner.finish().await;
            report.frames_validated += runner.frames_validated;
            match result {
                Ok(Ok(())) => Outcome::Passed,
                Ok(Err(reason)) => Outcome::Failed {
                    reason,
                    transcript: runner.transcript(),
                },
                Err(_) => Outcome::Failed {
                    reason: format!("did not finish within {SCENARIO_TIMEOUT:?}"),
                    transcript: runner.transcript(),
                },
            }
        };
        report.results.push(ScenarioResult {
            name,
            file: file.clone(),
            outcome,
            duration: started.elapsed(),
        });
    }
    report
}

/// Unique enough to keep runs against one server apart.
pub(crate) fn run_nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ u64::from(std::process::id()).rotate_left(32)) & 0xffff_ffff_ffff
}

fn missing_capability(scenario: &Json, capabilities: &[String]) -> Option<String> {
    let requires = scenario.get("requires")?.as_array()?;
    let missing: Vec<&str> = requires
        .iter()
        .filter_map(Json::as_str)
        .filter(|r| !capabilities.iter().any(|c| c == r))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut why = format!("needs server capability {}", missing.join(", "));
    if let Some(note) = scenario.get("requires_note").and_then(Json::as_str) {
        why.push_str(&format!(" ({note})"));
    }
    Some(why)
}

fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("scenarios folder {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.json scenarios in {}", dir.display()));
    }
    Ok(files)
}

/// The `hearth conformance` command: plays the scenarios, prints the report
/// and returns the process exit code (0 only if nothing failed). `scenarios`
/// defaults to `sdk-spec/conformance/scenarios` under the current directory.
pub async fn cli(server: &str, scenarios: Option<&Path>, options: RunOptions) -> i32 {
    let default_dir = PathBuf::from("sdk-spec/conformance/scenarios");
    let dir = scenarios.unwrap_or(&default_dir);
    let report = run_with(server, dir, options).await;
    print!("{}", report.render());
    if report.success() {
        0
    } else {
        1
    }
}

/// `hearth conformance --client-driver CMD`: runs the client checks with
/// the driver `CMD`, prints the report, returns the exit code.
pub async fn cli_client(server: &str, mut options: ClientRunOptions) -> i32 {
    if options.schema_dir.is_none() {
        options.schema_dir = Some(PathBuf::from("sdk-spec/schema"));
    }
    let report = run_client_checks(server, options).await;
    print!("{}", report.render());
    if report.success() {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_map_to_rest_and_socket_urls() {
        assert_eq!(
            server_urls("http://127.0.0.1:8080/"),
            (
                "http://127.0.0.1:8080".into(),
                "ws://127.0.0.1:8080/v1/ws".into()
            )
        );
        assert_eq!(
            server_urls("ws://h:1/v1/ws"),
            ("http://h:1".into(), "ws://h:1/v1/ws".into())
        );
        assert_eq!(
            server_urls("127.0.0.1:9"),
            ("http://127.0.0.1:9".into(), "ws://127.0.0.1:9/v1/ws".into())
        );
    }

    #[test]
    fn the_summary_line_is_the_plain_closing_line() {
        let mut report = Report::default();
        report.results.push(ScenarioResult {
            name: "a".into(),
            file: PathBuf::new(),
            outcome: Outcome::Passed,
            duration: Duration::ZERO,
        });
        report.results.push(ScenarioResult {
            name: "b".into(),
            file: PathBuf::new(),
            outcome: Outcome::Skipped("x".into()),
            duration: Duration::ZERO,
        });
        assert_eq!(report.summary_line(), "1 passed, 0 failed, 1 skipped");
        assert!(report.success());
    }
}
