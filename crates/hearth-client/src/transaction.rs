//! Transactions: read some documents, decide, write, all or nothing.
//!
//! The protocol's `transaction` frame (PROTOCOL.md §7) carries the version
//! of every document the transaction read (`null` for one it saw absent)
//! and its writes; the server commits the writes only if none of those
//! documents changed since, and answers `aborted` otherwise. So a
//! transaction here is optimistic, as in Firestore's client SDKs:
//! [`Client::run_transaction`] runs the application's function, which reads
//! through [`Transaction::get`] (the server's state, never the client's
//! own pending writes) and stages writes; then it sends one `transaction`
//! frame. On `aborted` it runs the function again with fresh reads, up to
//! [`MAX_TRANSACTION_ATTEMPTS`] times.
//!
//! The commit goes through the same queue as every write: it has a
//! mutation id, so if the connection breaks before the answer the same frame
//! is resent after reconnecting and applied at most once. A transaction's
//! writes are not shown in local views before the server commits them (it
//! may abort).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hearth_protocol::ws::TransactionRead;
use hearth_protocol::{DocPath, Document, ErrorCode, FieldPath, Map, Value, Write};

use crate::{Client, ClientError, QuerySnapshot, Target};

/// How many times [`Client::run_transaction`] runs the function before it
/// gives up on a transaction that keeps conflicting.
pub const MAX_TRANSACTION_ATTEMPTS: u32 = 5;

/// One attempt of a transaction: what it read and what it will write.
/// Cheap to clone (clones share the attempt).
#[derive(Debug, Clone)]
pub struct Transaction {
    client: Client,
    state: Arc<Mutex<Staged>>,
}

#[derive(Debug, Default)]
struct Staged {
    reads: BTreeMap<DocPath, Option<Document>>,
    writes: Vec<Write>,
}

impl Transaction {
    fn staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads a document as the server has it now (`None`: absent), and
    /// makes the commit depend on it being unchanged. All reads come
    /// before the first write, as in Firestore.
    pub async fn get(&self, path: &DocPath) -> Result<Option<Document>, ClientError> {
        {
            let staged = self.staged();
            if let Some(doc) = staged.reads.get(path) {
                return Ok(doc.clone());
            }
            if !staged.writes.is_empty() {
                return Err(ClientError::InvalidArgument(
                    "a transaction must do all its reads before its writes".into(),
                ));
            }
        }
        let doc = self.client.read_server(path).await?;
        self.staged().reads.insert(path.clone(), doc.clone());
        Ok(doc)
    }

    /// Stages any write (with preconditions or transforms).
    pub fn write(&self, write: Write) {
        self.staged().writes.push(write);
    }

    pub fn set(&self, path: DocPath, data: Map) {
        self.write(Write::set(path, data));
    }

    pub fn update(&self, path: DocPath, fields: BTreeMap<FieldPath, Value>) {
        self.write(Write::update(path, fields));
    }

    pub fn delete(&self, path: DocPath) {
        self.write(Write::delete(path));
    }
}

impl Client {
    /// A one-shot read of a document or query: the first snapshot that
    /// reflects the server (the client's own pending writes included, as in
    /// any snapshot). Waits while the client is offline.
    pub async fn get(&self, target: Target) -> Result<QuerySnapshot, ClientError> {
        let mut subscription = self.subscribe(target);
        while let Some(snapshot) = subscription.next().await {
            let snapshot = snapshot?;
            if !snapshot.from_cache {
                return Ok(snapshot);
            }
        }
        Err(ClientError::Closed)
    }

    /// The server's current version of one document, without the client's
    /// pending writes.
    async fn read_server(&self, path: &DocPath) -> Result<Option<Document>, ClientError> {
        let mut subscription = self.open_subscription(Target::Doc(path.clone()), true);
        match subscription.next().await {
            Some(snapshot) => Ok(snapshot?.docs.into_iter().next().map(|d| d.doc)),
            None => Err(ClientError::Closed),
        }
    }

    /// Runs `f` as a transaction: its reads ([`Transaction::get`]) and
    /// writes commit together only if no document it read changed in
    /// between; otherwise `f` runs again on fresh reads, up to
    /// [`MAX_TRANSACTION_ATTEMPTS`] times (then the `aborted` error is
    /// returned). An error from `f` ends the transaction without writing.
    /// `f` may run more than once, so it should only read and stage writes.
    ///
    /// ```no_run
    /// # async fn demo(client: hearth_client::Client) -> Result<(), hearth_client::ClientError> {
    /// use hearth_protocol::{DocPath, FieldPath, Value, Write};
    /// let path = DocPath::parse("counters/visits").unwrap();
    /// let next = client
    ///     .run_transaction(|tx| {
    ///         let path = path.clone();
    ///         async move {
    ///             let n = match tx.get(&path).await?.and_then(|d| d.fields.get("n").cloned()) {
    ///                 Some(Value::Integer(n)) => n,
    ///                 _ => 0,
    ///             };
    ///             let mut fields = std::collections::BTreeMap::new();
    ///             fields.insert(FieldPath::parse("n").unwrap(), Value::Integer(n + 1));
    ///             tx.write(Write::merge(path, fields));
    ///             Ok(n + 1)
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_transaction<T, F, Fut>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let state = Arc::new(Mutex::new(Staged::default()));
            let value = f(Transaction {
                client: self.clone(),
                state: state.clone(),
            })
            .await?;
            let staged = std::mem::take(&mut *state.lock().unwrap_or_else(|e| e.into_inner()));
            if staged.writes.is_empty() {
                return Ok(value);
            }
            let reads = staged
                .reads
                .into_iter()
                .map(|(path, doc)| TransactionRead {
                    path,
                    version: doc.map(|d| d.version),
                })
                .collect();
            match self.queue(staged.writes, Some(reads)).await {
                Ok(_) => return Ok(value),
                Err(e) if e.code() == ErrorCode::Aborted && attempt < MAX_TRANSACTION_ATTEMPTS => {
                    tracing::debug!(attempt, "transaction aborted by a conflict; retrying");
                    // A short, growing pause so two conflicting clients
                    // do not keep colliding in lockstep.
                    let pause = 10u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % pause)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
