//! `client-21-restart-with-pending-writes`: a client that keeps its queue
//! of pending writes on disk (PROTOCOL.md §13, "Surviving a restart")
//! must resend, after the application was killed, every write it had not
//! seen answered, under the mutation ids and with the writes of the first
//! process, so that each is applied once.
//!
//! The harness kills the driver with `SIGKILL` (no chance to save
//! anything on the way out) while one write is in doubt (the server applied
//! it, the answer was lost) and two were made offline, then starts a new
//! driver process on the same directory.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::driver::Driver;
use super::{Check, SETTLE, SHORT};

impl Check {
    pub(super) async fn restart_with_pending_writes(&mut self) -> Result<(), String> {
        let dir = self.fresh_store_dir()?;
        let result = self.restart_in(&dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// An empty directory of this check's own, for a driver's `persist_dir`
    /// (the caller removes it).
    pub(super) fn fresh_store_dir(&self) -> Result<std::path::PathBuf, String> {
        let dir = std::env::temp_dir().join(format!("hearth-{}-store", self.collection));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(dir)
    }

    async fn restart_in(&mut self, dir: &std::path::Path) -> Result<(), String> {
        let persist_dir = json!(dir.to_string_lossy());
        let counter = self.doc("counter");
        let (a, b) = (self.doc("a"), self.doc("b"));
        self.rest
            .batch(json!([{"op": "set", "path": counter, "data": {"n": 0}}]))
            .await?;
        match self.connect_persisted(&persist_dir, false).await? {
            Ok(()) => {}
            Err(unimplemented) => {
                self.skipped = Some(format!(
                    "the driver does not persist pending writes ({unimplemented})"
                ));
                return Ok(());
            }
        }
        let query = self.ordered_query();
        self.subscribe("q", json!({ "query": query })).await?;
        self.converge("q", &query, "the counter at 0").await?;

        // One write the server applies but whose answer is lost; the proxy
        // then refuses every new connection.
        self.proxy.refuse(true);
        self.proxy.lose_answers(true);
        let increment = json!([{"op": "merge", "path": counter,
            "transforms": [{"field": "n", "transform": "increment", "value": 1}]}]);
        self.driver
            .send("write", json!({ "writes": increment }))
            .await?;
        self.server_eventually(&counter, "the increment applied by the server", |doc| {
            doc.pointer("/fields/n") == Some(&json!(1))
        })
        .await?;
        self.proxy.lose_answers(false);
        for (path, n) in [(&a, 1), (&b, 2)] {
            let create = json!([{"op": "create", "path": path, "data": {"n": n}}]);
            self.driver
                .send("write", json!({ "writes": create }))
                .await?;
        }
        self.driver
            .wait_snapshot("q", SHORT, "`a` and `b` shown as pending", |s| {
                [&a, &b].iter().all(|p| {
                    s.doc(p)
                        .is_some_and(|d| d.get("pending") == Some(&json!(true)))
                })
            })
            .await?;

        // The application dies. Its driver's own conduct so far still counts.
        self.driver.kill_hard().await?;
        if let Some(v) = self.driver.violations.first() {
            return Err(format!("driver (first process): {v}"));
        }
        let first_process_ids = self.mutations_sent();
        self.driver = Driver::spawn(&self.driver_command)?;
        self.proxy.refuse(false);
        // The answers to the resent writes come late, so the subscription
        // below gets its first snapshot (which already holds the increment)
        // while the increment still looks unanswered.
        self.proxy.hold_write_answers(true);
        match self.connect_persisted(&persist_dir, false).await? {
            Ok(()) => {}
            Err(e) => return Err(format!("the second process could not connect: {e}")),
        }
        for (path, what) in [
            (&a, "`a`, written offline before the kill"),
            (&b, "`b`, written offline before the kill"),
        ] {
            self.server_eventually(path, what, |doc| doc.get("fields").is_some())
                .await
                .map_err(|e| format!("{e}: a write the first process queued was lost"))?;
        }
        self.subscribe("r", json!({ "query": query })).await?;
        self.driver.drain_for(Duration::from_millis(500)).await;
        self.proxy.hold_write_answers(false);
        self.converge("r", &query, "the second process's view of the server")
            .await?;

        let stored = self.rest.get(&counter).await?;
        if stored.pointer("/fields/n") != Some(&json!(1)) {
            return Err(format!(
                "the increment whose answer was lost is now {stored}: resent after the restart it \
                 must keep its mutation id and be applied once"
            ));
        }
        let sent = self.mutations_sent();
        if sent.len() != 3 {
            return Err(format!(
                "3 writes were made, the two processes used {} mutation ids {:?}: a stored write \
                 must be resent under its original mutation id",
                sent.len(),
                sent.keys().collect::<Vec<_>>()
            ));
        }
        for (id, copies) in &sent {
            if copies.iter().any(|w| w != &copies[0]) {
                return Err(format!("mutation {id} was resent with different writes"));
            }
        }
        let increment_id = first_process_ids
            .iter()
            .find(|(_, copies)| copies[0].to_string().contains(&counter))
            .map(|(id, _)| id)
            .ok_or("the first process never sent the increment")?;
        if sent.get(increment_id).map_or(0, Vec::len) < 2 {
            return Err(format!(
                "the increment in doubt ({increment_id}) was not resent by the second process"
            ));
        }
        // The second process's first view may already contain the increment
        // (the server applied it before the kill): showing the stored write
        // on top of it counts it twice.
        if let Some(bad) = self
            .driver
            .history("r")
            .iter()
            .find(|s| s.doc(&counter).and_then(|d| d.pointer("/fields/n")) == Some(&json!(2)))
        {
            return Err(format!(
                "the second process showed the counter at 2 ({:?}): the restored increment was \
                 counted twice (PROTOCOL.md §13: a stored write that had been sent is in doubt)",
                bad.contents()
            ));
        }
        Ok(())
    }

    /// `connect` with `persist_dir` (and `cache_views: true` if asked):
    /// `Ok(Err(message))` when the driver answers `unimplemented` (its SDK
    /// does not persist, or keeps no view cache).
    pub(super) async fn connect_persisted(
        &mut self,
        persist_dir: &Json,
        cache_views: bool,
    ) -> Result<Result<(), String>, String> {
        let key = self.admin_key.clone();
        let mut args = self.connect_args(Some(&key));
        args["persist_dir"] = persist_dir.clone();
        if cache_views {
            args["cache_views"] = json!(true);
        }
        let id = self.driver.send("connect", args).await?;
        match self.driver.reply(id, Duration::from_secs(20)).await? {
            Ok(_) => Ok(Ok(())),
            Err(error) if error.get("code") == Some(&json!("unimplemented")) => Ok(Err(error
                .get("message")
                .and_then(Json::as_str)
                .unwrap_or("unimplemented")
                .to_string())),
            Err(error) => Err(format!("`connect` with `persist_dir` failed: {error}")),
        }
    }

    /// Polls the server's document at `path` until `accept` holds.
    pub(super) async fn server_eventually(
        &self,
        path: &str,
        what: &str,
        accept: impl Fn(&Json) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let last = self.rest.get(path).await;
            if last.as_ref().is_ok_and(&accept) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server did not show {what} within {SETTLE:?} (last: {last:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
