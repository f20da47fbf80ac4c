//! The driver process: the client under test, behind CLIENT.md's line
//! protocol (commands as JSON lines on its stdin; replies and events as
//! JSON lines on its stdout).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Lines of the driver's stderr kept for a failure report.
const STDERR_TAIL: usize = 20;

/// What the driver printed on stdout.
enum Line {
    Json(Json),
    /// A line that is not JSON: a driver bug, reported as such.
    Garbage(String),
    Closed,
}

/// One `snapshot` event, as reported.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub docs: Vec<Json>,
    pub changes: Vec<Json>,
    pub has_pending_writes: bool,
    /// `from_cache` as reported (optional in the driver protocol).
    pub from_cache: Option<bool>,
}

impl Snapshot {
    pub fn paths(&self) -> Vec<String> {
        self.docs.iter().map(doc_path).collect()
    }

    /// `(path, fields)` of every document, in order.
    pub fn contents(&self) -> Vec<(String, Json)> {
        self.docs
            .iter()
            .map(|d| (doc_path(d), d.get("fields").cloned().unwrap_or(Json::Null)))
            .collect()
    }

    pub fn doc(&self, path: &str) -> Option<&Json> {
        self.docs.iter().find(|d| doc_path(d) == path)
    }
}

pub(crate) fn doc_path(doc: &Json) -> String {
    doc.get("path")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}

pub(crate) struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Line>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    next_id: u64,
    replies: HashMap<u64, Json>,
    /// Every snapshot of each subscription label, in order.
    pub snapshots: BTreeMap<String, Vec<Snapshot>>,
    /// `sub_error` events by label: `(code, message)`.
    pub sub_errors: BTreeMap<String, (String, String)>,
    /// Protocol violations of the driver itself (non-JSON lines, bad events,
    /// inconsistent changes).
    pub violations: Vec<String>,
    exited: bool,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Driver {
    /// Starts `command` with `sh -c` (so it may carry arguments and
    /// environment assignments).
    pub fn spawn(command: &str) -> Result<Driver, String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that `kill_hard` reaches the
            // driver itself and not only the shell that started it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not start the driver `{command}`: {e}"))?;
        let stdin = child.stdin.take().ok_or("driver has no stdin")?;
        let stdout = child.stdout.take().ok_or("driver has no stdout")?;
        let stderr = child.stderr.take().ok_or("driver has no stderr")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                let parsed = match serde_json::from_str::<Json>(&line) {
                    Ok(json) if json.is_object() => Line::Json(json),
                    _ => Line::Garbage(line),
                };
                if tx.send(parsed).is_err() {
                    return;
                }
            }
            let _ = tx.send(Line::Closed);
        });
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Driver {
            child,
            stdin,
            lines,
            stderr_tail,
            next_id: 0,
            replies: HashMap::new(),
            snapshots: BTreeMap::new(),
            sub_errors: BTreeMap::new(),
            violations: Vec::new(),
            exited: false,
        })
    }

    /// Every snapshot reported for `sub` so far (empty if none).
    pub fn history(&self, sub: &str) -> &[Snapshot] {
        self.snapshots.get(sub).map_or(&[], Vec::as_slice)
    }

    /// The last lines the driver wrote to stderr.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Sends a command (`cmd` plus `args`' fields); returns its id.
    pub async fn send(&mut self, cmd: &str, args: Json) -> Result<u64, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "cmd": cmd});
        if let (Some(command), Json::Object(args)) = (command.as_object_mut(), args) {
            command.extend(args);
        }
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("writing to the driver: {e}"))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| format!("writing to the driver: {e}"))?;
        Ok(id)
    }

    /// Sends a command and waits for its reply: `Ok(ok)` or `Err` with the
    /// reply's error (or why none came).
    pub async fn request(
        &mut self,
        cmd: &str,
        args: Json,
        timeout: Duration,
    ) -> Result<Json, String> {
        let id = self.send(cmd, args).await?;
        self.reply(id, timeout)
            .await?
            .map_err(|e| format!("`{cmd}` failed: {e}"))
    }

    /// Waits for the reply to command `id`: `Ok(Ok(ok))` or `Ok(Err(error))`;
    /// `Err` when none came in time.
    pub async fn reply(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> Result<Result<Json, Json>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = self.replies.remove(&id) {
                return match (reply.get("ok"), reply.get("error")) {
                    (Some(ok), None) => Ok(Ok(ok.clone())),
                    (None, Some(error)) => Ok(Err(error.clone())),
                    _ => Err(format!(
                        "reply to command {id} has neither `ok` nor `error` (or both): {reply}"
                    )),
                };
            }
            if !self.pump_until(deadline).await {
                return Err(format!("no reply to command {id} within {timeout:?}"));
            }
        }
    }

    /// True when the reply to `id` has arrived (without waiting).
    pub fn has_reply(&self, id: u64) -> bool {
        self.replies.contains_key(&id)
    }

    /// Reads whatever the driver prints until `deadline`.
    pub async fn drain_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while self.pump_until(deadline).await {}
    }

    /// Waits until the newest snapshot of `sub` satisfies `accept`; returns it.
    pub async fn wait_snapshot(
        &mut self,
        sub: &str,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(last) = self.snapshots.get(sub).and_then(|s| s.last()) {
                if accept(last) {
                    return Ok(last.clone());
                }
            }
            if let Some((code, message)) = self.sub_errors.get(sub) {
                return Err(format!("subscription {sub} failed with {code}: {message}"));
            }
            if !self.pump_until(deadline).await {
                let last = self
                    .snapshots
                    .get(sub)
                    .and_then(|s| s.last())
                    .map(|s| format!("{:?}", s.contents()))
                    .unwrap_or_else(|| "no snapshot".into());
                return Err(format!(
                    "waited {timeout:?} for {what} on subscription {sub}; its last snapshot: {last}"
                ));
            }
        }
    }

    /// Handles one line, waiting at most until `deadline`; false on timeout
    /// or when the driver's stdout closed.
    async fn pump_until(&mut self, deadline: Instant) -> bool {
        if self.exited {
            return false;
        }
        let line = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Line::Closed)) => {
                self.exited = true;
                self.violations.push("the driver's stdout closed".into());
                return false;
            }
            Ok(Some(line)) => line,
        };
        match line {
            Line::Garbage(text) => self.violations.push(format!(
                "the driver printed a line that is not a JSON object: {text:?}"
            )),
            Line::Json(json) => self.handle(json),
            Line::Closed => {}
        }
        true
    }

    fn handle(&mut self, line: Json) {
        if let Some(id) = line.get("id").and_then(Json::as_u64) {
            self.replies.insert(id, line);
            return;
        }
        let sub = line
            .get("sub")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        match line.get("event").and_then(Json::as_str) {
            Some("snapshot") => match parse_snapshot(&line) {
                Ok(snapshot) => {
                    let history = self.snapshots.entry(sub.clone()).or_default();
                    let previous = history.last().map(|s| s.docs.as_slice()).unwrap_or(&[]);
                    if let Err(e) = check_changes(previous, &snapshot) {
                        self.violations
                            .push(format!("snapshot {} of {sub}: {e}", history.len() + 1));
                    }
                    history.push(snapshot);
                }
                Err(e) => self
                    .violations
                    .push(format!("bad snapshot event: {e}: {line}")),
            },
            Some("sub_error") => {
                let field = |k: &str| {
                    line.get(k)
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                self.sub_errors
                    .insert(sub, (field("code"), field("message")));
            }
            Some("log") | Some("driver_error") => {}
            _ => self.violations.push(format!("unknown driver line: {line}")),
        }
    }

    /// Kills the driver's whole process group with `SIGKILL` (the SDK gets
    /// no chance to save anything: an application killed by the OS) and
    /// waits for it to be gone.
    pub async fn kill_hard(&mut self) -> Result<(), String> {
        let pid = self.child.id().ok_or("the driver has already exited")?;
        let pid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| format!("cannot kill the driver's process group {pid}: {e}"))?;
        tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .map_err(|_| "the killed driver did not exit within 5 s".to_string())?
            .map_err(|e| format!("waiting for the killed driver: {e}"))?;
        self.exited = true;
        Ok(())
    }

    /// Asks the driver to close and waits (briefly) for it to exit.
    pub async fn close(&mut self) {
        if let Ok(id) = self.send("close", json!({})).await {
            let _ = self.reply(id, Duration::from_secs(5)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.start_kill();
    }
}

fn parse_snapshot(line: &Json) -> Result<Snapshot, String> {
    let docs = line
        .get("docs")
        .and_then(Json::as_array)
        .ok_or("`docs` must be an array")?
        .clone();
    if docs
        .iter()
        .any(|d| d.get("path").and_then(Json::as_str).is_none())
    {
        return Err("every document needs a string `path`".into());
    }
    let changes = line
        .get("changes")
        .and_then(Json::as_array)
        .ok_or("`changes` must be an array")?
        .clone();
    let flag = |k: &str| line.get(k).and_then(Json::as_bool).unwrap_or(false);
    Ok(Snapshot {
        docs,
        changes,
        has_pending_writes: flag("has_pending_writes"),
        from_cache: line.get("from_cache").and_then(Json::as_bool),
    })
}

/// A snapshot's `changes` must turn the previous snapshot's documents into
/// this one's: removed paths leave, added paths arrive, every document whose
/// state changed is reported, and each index points at that path (old
/// indexes in the previous list, new ones in this list).
fn check_changes(previous: &[Json], snapshot: &Snapshot) -> Result<(), String> {
    let at = |list: &[Json], index: Option<u64>| -> Option<String> {
        list.get(usize::try_from(index?).ok()?).map(doc_path)
    };
    let before: HashMap<String, &Json> = previous.iter().map(|d| (doc_path(d), d)).collect();
    let after: HashMap<String, &Json> = snapshot.docs.iter().map(|d| (doc_path(d), d)).collect();
    let mut reported: HashMap<String, &str> = HashMap::new();
    for change in &snapshot.changes {
        let path = change
            .get("path")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = change
            .get("kind")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let old_index = change.get("old_index").and_then(Json::as_u64);
        let new_index = change.get("new_index").and_then(Json::as_u64);
        let ok = match kind {
            "added" => {
                !before.contains_key(&path) && at(&snapshot.docs, new_index).as_ref() == Some(&path)
            }
            "removed" => {
                !after.contains_key(&path) && at(previous, old_index).as_ref() == Some(&path)
            }
            "modified" => {
                at(previous, old_index).as_ref() == Some(&path)
                    && at(&snapshot.docs, new_index).as_ref() == Some(&path)
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "change {change} does not match the documents before and after it"
            ));
        }
        if reported.insert(path.clone(), kind).is_some() {
            return Err(format!("{path} is reported twice"));
        }
    }
    for (path, doc) in &after {
        match before.get(path) {
            None if reported.get(path) != Some(&"added") => {
                return Err(format!("{path} appeared without an `added` change"))
            }
            Some(old)
                if old.get("fields") != doc.get("fields")
                    && reported.get(path) != Some(&"modified") =>
            {
                return Err(format!("{path} changed without a `modified` change"))
            }
            _ => {}
        }
    }
    for path in before.keys() {
        if !after.contains_key(path) && reported.get(path) != Some(&"removed") {
            return Err(format!("{path} disappeared without a `removed` change"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(path: &str, n: i64) -> Json {
        json!({"path": path, "fields": {"n": n}, "pending": false})
    }

    fn snapshot(docs: Vec<Json>, changes: Vec<Json>) -> Snapshot {
        Snapshot {
            docs,
            changes,
            has_pending_writes: false,
            from_cache: None,
        }
    }

    #[test]
    fn consistent_changes_pass() {
        let before = vec![doc("c/a", 1), doc("c/b", 2)];
        let after = snapshot(
            vec![doc("c/b", 3), doc("c/d", 4)],
            vec![
                json!({"kind": "removed", "path": "c/a", "old_index": 0, "new_index": null}),
                json!({"kind": "modified", "path": "c/b", "old_index": 1, "new_index": 0}),
                json!({"kind": "added", "path": "c/d", "old_index": null, "new_index": 1}),
            ],
        );
        assert_eq!(check_changes(&before, &after), Ok(()));
    }

    #[test]
    fn missing_duplicate_or_misplaced_changes_are_caught() {
        let before = vec![doc("c/a", 1)];
        // c/b arrives silently.
        let silent = snapshot(vec![doc("c/a", 1), doc("c/b", 2)], vec![]);
        assert!(check_changes(&before, &silent).is_err());
        // c/a is reported as added although it was there: a duplicate.
        let duplicate = snapshot(
            vec![doc("c/a", 1)],
            vec![json!({"kind": "added", "path": "c/a", "new_index": 0})],
        );
        assert!(check_changes(&before, &duplicate).is_err());
        // A wrong index.
        let misplaced = snapshot(
            vec![doc("c/a", 1), doc("c/b", 2)],
            vec![json!({"kind": "added", "path": "c/b", "new_index": 0})],
        );
        assert!(check_changes(&before, &misplaced).is_err());
        // A modification without a change.
        let modified = snapshot(vec![doc("c/a", 9)], vec![]);
        assert!(check_changes(&before, &modified).is_err());
    }
}
