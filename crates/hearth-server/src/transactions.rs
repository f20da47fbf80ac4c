//! Server-side transactions for REST clients.
//!
//! `POST /v1/transactions` opens a store [`hearth_store::Transaction`] and
//! keeps it here under a random id; `get`/`query` calls record their reads in
//! it; `commit` validates those reads against concurrent commits (the store
//! answers `aborted` on a conflict) and removes it; `DELETE` discards it. A
//! transaction not committed within its time-to-live is dropped by a reaper
//! task, and the number open at once is bounded, so abandoned transactions
//! cannot pile up. Only the principal that opened a transaction can use it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hearth_protocol::ErrorCode;
use tokio::sync::Mutex;

use crate::error::ApiError;

/// Default time a transaction may stay open.
pub const DEFAULT_TRANSACTION_TTL: Duration = Duration::from_secs(30);
/// Default bound on transactions open at once.
pub const DEFAULT_MAX_OPEN_TRANSACTIONS: usize = 10_000;

pub struct OpenTransaction {
    pub owner: String,
    pub expires_at: Instant,
    /// `None` once committed or discarded.
    pub tx: Mutex<Option<hearth_store::Transaction>>,
}

/// The registry of open transactions.
#[derive(Clone)]
pub struct Transactions {
    open: Arc<DashMap<String, Arc<OpenTransaction>>>,
    ttl: Duration,
    max_open: usize,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("open", &self.open.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Transactions {
    pub fn new(ttl: Duration, max_open: usize) -> Transactions {
        Transactions {
            open: Arc::new(DashMap::new()),
            ttl,
            max_open,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Registers a new transaction and returns its id.
    pub fn insert(&self, owner: String, tx: hearth_store::Transaction) -> Result<String, ApiError> {
        if self.open.len() >= self.max_open {
            self.reap();
            if self.open.len() >= self.max_open {
                return Err(ApiError::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "too many open transactions ({}); commit or delete some",
                        self.max_open
                    ),
                ));
            }
        }
        let id = hearth_protocol::path::document_id_from_random(rand::random());
        self.open.insert(
            id.clone(),
            Arc::new(OpenTransaction {
                owner,
                expires_at: Instant::now() + self.ttl,
                tx: Mutex::new(Some(tx)),
            }),
        );
        Ok(id)
    }

    /// The open transaction `id` if it belongs to `owner` and has not expired.
    pub fn lookup(&self, id: &str, owner: &str) -> Result<Arc<OpenTransaction>, ApiError> {
        let missing = || {
            ApiError::not_found(format!(
                "transaction {id} does not exist (it expired, was committed or was deleted)"
            ))
        };
        let entry = self
            .open
            .get(id)
            .map(|e| e.value().clone())
            .ok_or_else(missing)?;
        if entry.expires_at <= Instant::now() {
            self.open.remove(id);
            return Err(missing());
        }
        // Someone else's transaction id is answered exactly like an unknown one.
        if entry.owner != owner {
            return Err(missing());
        }
        Ok(entry)
    }

    pub fn remove(&self, id: &str) -> Option<Arc<OpenTransaction>> {
        self.open.remove(id).map(|(_, v)| v)
    }

    /// Drops expired transactions.
    pub fn reap(&self) {
        let now = Instant::now();
        self.open.retain(|_, t| t.expires_at > now);
    }

    /// Runs [`Self::reap`] every second until the registry is dropped.
    pub fn spawn_reaper(&self) {
        let weak = Arc::downgrade(&self.open);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(open) = weak.upgrade() else { break };
                let now = Instant::now();
                open.retain(|_, t| t.expires_at > now);
            }
        });
    }
}
