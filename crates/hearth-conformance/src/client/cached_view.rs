//! `client-24-restart-shows-cached-view`: a client that keeps an offline
//! read cache (PROTOCOL.md §13, "An offline read cache") shows, after the
//! application was killed, the view it last saw before the server answers,
//! and resumes from the cached position: the server's first frame is the
//! `changes` since then, not the whole view again.
//!
//! The harness kills the driver with `SIGKILL` 1.5 s after the view settled
//! (a client saves a changed view within about a second), changes the
//! collection over REST while no client runs, and starts a new driver on
//! the same directory with the server's frames held back.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value as Json};

use super::driver::Driver;
use super::{kind, Check, SHORT};

impl Check {
    pub(super) async fn restart_shows_cached_view(&mut self) -> Result<(), String> {
        let dir = self.fresh_store_dir()?;
        let result = self.cached_view_in(&dir).await;
        self.proxy.hold(false);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn cached_view_in(&mut self, dir: &std::path::Path) -> Result<(), String> {
        let persist_dir = json!(dir.to_string_lossy());
        let (a, b, c, d) = (self.doc("a"), self.doc("b"), self.doc("c"), self.doc("d"));
        if let Err(unimplemented) = self.connect_persisted(&persist_dir, true).await? {
            self.skipped = Some(format!(
                "the driver keeps no offline view cache ({unimplemented})"
            ));
            return Ok(());
        }
        self.rest
            .batch(json!([
                {"op": "set", "path": a, "data": {"n": 1}},
                {"op": "set", "path": b, "data": {"n": 2}},
                {"op": "set", "path": c, "data": {"n": 3}},
            ]))
            .await?;
        let query = self.ordered_query();
        let target = json!({ "query": query });
        self.subscribe("q", target.clone()).await?;
        let seen = self
            .converge("q", &query, "`a`, `b`, `c` before the kill")
            .await?
            .contents();
        // Time to save the view (PROTOCOL.md §13: within about a second).
        self.driver.drain_for(Duration::from_millis(1500)).await;
        self.driver.kill_hard().await?;
        if let Some(v) = self.driver.violations.first() {
            return Err(format!("driver (first process): {v}"));
        }
        let first_tokens = self.tokens_sent_for(&target);
        if first_tokens.is_empty() {
            return Err("the server sent the first process no resume token for the query".into());
        }
        let frames_before_restart = self.proxy.frames().len();

        // The collection changes while no client runs.
        self.rest
            .batch(json!([{"op": "set", "path": b, "data": {"n": 20}}]))
            .await?;
        self.rest
            .batch(json!([{"op": "delete", "path": a}]))
            .await?;
        self.rest
            .batch(json!([{"op": "create", "path": d, "data": {"n": 4}}]))
            .await?;

        self.driver = Driver::spawn(&self.driver_command)?;
        match self.connect_persisted(&persist_dir, true).await? {
            Ok(()) => {}
            Err(e) => return Err(format!("the second process could not connect: {e}")),
        }
        self.proxy.hold(true);
        self.subscribe("r", target.clone()).await?;
        self.subscribe("z", json!({ "doc": self.doc("z") })).await?;
        let cached = self
            .driver
            .wait_snapshot(
                "r",
                SHORT,
                "the cached view while the server's frames are held",
                |_| true,
            )
            .await?;
        if cached.contents() != seen {
            return Err(format!(
                "with the server's frames held, the first snapshot of the query after the restart \
                 shows {:?}; the view last seen was {seen:?} (PROTOCOL.md §13: a cached view is \
                 shown at once)",
                cached.contents()
            ));
        }
        if cached.from_cache == Some(false) {
            return Err("the cached view was reported with `from_cache: false`".into());
        }
        self.driver.drain_for(Duration::from_millis(300)).await;
        if let Some(z) = self.driver.history("z").first() {
            return Err(format!(
                "a document never subscribed to before showed {:?} before the server answered: \
                 a cached view belongs to its own target",
                z.contents()
            ));
        }
        self.proxy.hold(false);
        self.converge("r", &query, "the server's `c`, `d`, `b` after the resume")
            .await?;

        // The resume: the query's `subscribe` carried a token of the first
        // process, and the server answered with the changes since.
        let after: Vec<_> = self
            .proxy
            .frames()
            .into_iter()
            .skip(frames_before_restart)
            .collect();
        let subscribe = after
            .iter()
            .find(|f| {
                f.from_client
                    && kind(&f.frame) == "subscribe"
                    && f.frame.get("target") == Some(&target)
            })
            .ok_or("the second process sent no `subscribe` for the query")?;
        let resume = subscribe.frame.get("resume").and_then(Json::as_str);
        match resume {
            Some(token) if first_tokens.contains(token) => {}
            Some(token) => {
                return Err(format!(
                "the query was resubscribed with `resume` {token:?}, which the server never sent \
                     the first process for it ({first_tokens:?})"
            ))
            }
            None => {
                return Err(
                    "the query was resubscribed without `resume`: a cached view must be resumed \
                     from its token (PROTOCOL.md §13)"
                        .into(),
                )
            }
        }
        let sub = subscribe.frame.get("sub").cloned().unwrap_or(Json::Null);
        let answer = after
            .iter()
            .find(|f| {
                !f.from_client
                    && f.conn == subscribe.conn
                    && f.frame.get("sub") == Some(&sub)
                    && matches!(kind(&f.frame), "changes" | "snapshot" | "error")
            })
            .ok_or("the server never answered the resumed subscription")?;
        if kind(&answer.frame) != "changes" {
            return Err(format!(
                "the server answered the resumed subscription with {}: expected `changes` (an \
                 unlimited query resumed from a token within retention)",
                answer.frame
            ));
        }
        Ok(())
    }

    /// Every `resume` token the server sent for subscriptions to `target`.
    fn tokens_sent_for(&self, target: &Json) -> BTreeSet<String> {
        let frames = self.proxy.frames();
        let subs: BTreeSet<(usize, String)> = frames
            .iter()
            .filter(|f| {
                f.from_client
                    && kind(&f.frame) == "subscribe"
                    && f.frame.get("target") == Some(target)
            })
            .filter_map(|f| Some((f.conn, f.frame.get("sub")?.as_str()?.to_string())))
            .collect();
        frames
            .iter()
            .filter(|f| !f.from_client)
            .filter(|f| {
                f.frame
                    .get("sub")
                    .and_then(Json::as_str)
                    .is_some_and(|s| subs.contains(&(f.conn, s.to_string())))
            })
            .filter_map(|f| {
                f.frame
                    .get("resume")
                    .and_then(Json::as_str)
                    .map(str::to_string)
            })
            .collect()
    }
}
