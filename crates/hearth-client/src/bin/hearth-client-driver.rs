//! The Rust SDK's driver for the client conformance checks.
//!
//! `hearth conformance --client-driver CMD` proves a client SDK by running a
//! small program written with it, the *driver*, and checking what the client
//! does on the wire and what it shows the application. This is that program
//! for `hearth-client`: it reads commands as JSON lines on stdin, performs
//! them with a [`Client`], and prints replies and subscription events as
//! JSON lines on stdout (logs go to stderr). The line protocol is specified
//! in `sdk-spec/conformance/CLIENT.md`; an SDK in another language writes
//! the same ~200 lines and runs the same checks.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use hearth_client::{
    Client, ClientConfig, ClientError, DocChangeKind, Encoding, QuerySnapshot, Target,
};
use hearth_protocol::{DocPath, FieldPath, Value, Write};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines to print on stdout, in order.
type Out = mpsc::UnboundedSender<Json>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (out, mut lines_out) = mpsc::unbounded_channel::<Json>();
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines_out.recv().await {
            let text = format!("{line}\n");
            if stdout.write_all(text.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let mut driver = Driver {
        out: out.clone(),
        client: None,
        subscriptions: HashMap::new(),
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let command: Json = match serde_json::from_str(&line) {
            Ok(command) => command,
            Err(e) => {
                let _ =
                    out.send(json!({"event": "driver_error", "message": format!("not JSON: {e}")}));
                continue;
            }
        };
        let id = command.get("id").cloned().unwrap_or(Json::Null);
        let cmd = command
            .get("cmd")
            .and_then(Json::as_str)
            .unwrap_or_default();
        if cmd == "close" {
            driver.close().await;
            let _ = out.send(json!({"id": id, "ok": {}}));
            break;
        }
        if let Err(e) = driver.handle(id.clone(), cmd, &command).await {
            let _ = out.send(reply_error(id, &e));
        }
    }
    driver.close().await;
    drop(driver);
    drop(out);
    let _ = printer.await;
}

struct Driver {
    out: Out,
    client: Option<Client>,
    /// The driver-side label of each subscription → the task forwarding its
    /// snapshots (aborting it drops the `Subscription`, which unsubscribes).
    subscriptions: HashMap<String, JoinHandle<()>>,
}

impl Driver {
    /// Performs one command. Commands that wait on the server (writes, token
    /// changes) reply from a task so that later commands are not held up.
    async fn handle(&mut self, id: Json, cmd: &str, command: &Json) -> Result<(), ClientError> {
        match cmd {
            "connect" => {
                let url = string_arg(command, "url")?;
                let mut config = ClientConfig::new(url).client_name("hearth-client-driver");
                if let Some(token) = command.get("token").and_then(Json::as_str) {
                    config = config.token(token);
                }
                if command.get("encoding").and_then(Json::as_str) == Some("msgpack") {
                    config = config.encoding(Encoding::MsgPack);
                }
                let cache_views = command.get("cache_views").and_then(Json::as_bool) == Some(true);
                match command.get("persist_dir").and_then(Json::as_str) {
                    // The harness asks for the view cache explicitly.
                    Some(dir) => config = config.persistence(dir).cache_views(cache_views),
                    None if cache_views => {
                        return Err(ClientError::Server {
                            code: hearth_protocol::ErrorCode::Unimplemented,
                            message: "cache_views needs persist_dir".into(),
                        })
                    }
                    None => {}
                }
                self.client = Some(Client::connect(config).await?);
                self.reply_ok(id, json!({}));
            }
            "subscribe" => {
                let label = string_arg(command, "sub")?.to_string();
                let target: Target = command
                    .get("target")
                    .cloned()
                    .ok_or_else(|| invalid("subscribe needs `target`"))
                    .and_then(|t| serde_json::from_value(t).map_err(|e| invalid(&e.to_string())))?;
                let mut subscription = self.client()?.subscribe(target);
                let out = self.out.clone();
                let sub = label.clone();
                let forward = tokio::spawn(async move {
                    while let Some(item) = subscription.next().await {
                        let event = match item {
                            Ok(snapshot) => snapshot_event(&sub, &snapshot),
                            Err(e) => {
                                json!({"event": "sub_error", "sub": sub, "code": e.code(), "message": e.to_string()})
                            }
                        };
                        if out.send(event).is_err() {
                            break;
                        }
                    }
                });
                if let Some(previous) = self.subscriptions.insert(label, forward) {
                    previous.abort();
                }
                self.reply_ok(id, json!({}));
            }
            "unsubscribe" => {
                let label = string_arg(command, "sub")?;
                if let Some(forward) = self.subscriptions.remove(label) {
                    forward.abort();
                }
                self.reply_ok(id, json!({}));
            }
            "write" => {
                let writes: Vec<Write> = command
                    .get("writes")
                    .cloned()
                    .ok_or_else(|| invalid("write needs `writes`"))
                    .and_then(|w| serde_json::from_value(w).map_err(|e| invalid(&e.to_string())))?;
                // Queued (and shown in local snapshots) before the next command.
                let pending = self.client()?.batch(writes);
                let out = self.out.clone();
                tokio::spawn(async move {
                    let line = match pending.await {
                        Ok(result) => json!({"id": id, "ok": {"result": result}}),
                        Err(e) => reply_error(id, &e),
                    };
                    let _ = out.send(line);
                });
            }
            "transaction_increment" => {
                let path = DocPath::parse(string_arg(command, "path")?)
                    .map_err(|e| invalid(&e.to_string()))?;
                let field = FieldPath::parse(string_arg(command, "field")?)
                    .map_err(|e| invalid(&e.to_string()))?;
                let client = self.client()?.clone();
                let out = self.out.clone();
                tokio::spawn(async move {
                    let outcome = client
                        .run_transaction(|tx| {
                            let (path, field) = (path.clone(), field.clone());
                            async move {
                                let doc = tx.get(&path).await?;
                                let next = match doc.as_ref().and_then(|d| d.get(&field)) {
                                    Some(Value::Integer(n)) => n + 1,
                                    _ => 1,
                                };
                                let mut fields = BTreeMap::new();
                                fields.insert(field, Value::Integer(next));
                                tx.write(Write::merge(path, fields));
                                Ok(next)
                            }
                        })
                        .await;
                    let line = match outcome {
                        Ok(value) => json!({"id": id, "ok": {"value": value}}),
                        Err(e) => reply_error(id, &e),
                    };
                    let _ = out.send(line);
                });
            }
            "set_token" => {
                let token = string_arg(command, "token")?.to_string();
                let client = self.client()?.clone();
                let out = self.out.clone();
                tokio::spawn(async move {
                    let line = match client.set_token(token).await {
                        Ok(()) => json!({"id": id, "ok": {}}),
                        Err(e) => reply_error(id, &e),
                    };
                    let _ = out.send(line);
                });
            }
            other => {
                return Err(ClientError::Server {
                    code: hearth_protocol::ErrorCode::Unimplemented,
                    message: format!("unknown command {other:?}"),
                })
            }
        }
        Ok(())
    }

    fn client(&self) -> Result<&Client, ClientError> {
        self.client
            .as_ref()
            .ok_or_else(|| invalid("send `connect` first"))
    }

    fn reply_ok(&self, id: Json, ok: Json) {
        let _ = self.out.send(json!({"id": id, "ok": ok}));
    }

    async fn close(&mut self) {
        for (_, forward) in self.subscriptions.drain() {
            forward.abort();
        }
        if let Some(client) = self.client.take() {
            client.shutdown().await;
        }
    }
}

fn string_arg<'a>(command: &'a Json, key: &str) -> Result<&'a str, ClientError> {
    command
        .get(key)
        .and_then(Json::as_str)
        .ok_or_else(|| invalid(&format!("missing string `{key}`")))
}

fn invalid(message: &str) -> ClientError {
    ClientError::InvalidArgument(message.to_string())
}

fn reply_error(id: Json, error: &ClientError) -> Json {
    json!({"id": id, "error": {"code": error.code(), "message": error.to_string()}})
}

/// A snapshot as CLIENT.md's `snapshot` event.
fn snapshot_event(sub: &str, snapshot: &QuerySnapshot) -> Json {
    let docs: Vec<Json> = snapshot
        .docs
        .iter()
        .map(|d| {
            let mut doc = serde_json::to_value(&d.doc).unwrap_or(Json::Null);
            if let Some(fields) = doc.as_object_mut() {
                fields.insert("pending".into(), Json::Bool(d.pending));
            }
            doc
        })
        .collect();
    let changes: Vec<Json> = snapshot
        .changes
        .iter()
        .map(|c| {
            json!({
                "kind": match c.kind {
                    DocChangeKind::Added => "added",
                    DocChangeKind::Modified => "modified",
                    DocChangeKind::Removed => "removed",
                },
                "path": c.doc.path,
                "old_index": c.old_index,
                "new_index": c.new_index,
                "pending": c.pending,
            })
        })
        .collect();
    json!({
        "event": "snapshot",
        "sub": sub,
        "docs": docs,
        "changes": changes,
        "from_cache": snapshot.from_cache,
        "has_pending_writes": snapshot.has_pending_writes,
        "reset": snapshot.reset,
    })
}
