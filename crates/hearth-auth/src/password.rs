//! Password hashing with argon2id on a bounded blocking pool.
//!
//! Hashing costs ~19 MiB and tens of milliseconds of one core by design. Every
//! hash therefore runs on tokio's blocking pool *behind a semaphore* sized by
//! `PasswordConfig::max_concurrent_hashes`: a storm of sign-ins queues here
//! instead of occupying every core and starving the realtime path.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), so a
//! hash records its own parameters and [`PasswordHasher::needs_rehash`] can
//! tell when the configured ones changed.
//!
//! To make sign-in with an unknown email cost the same as with a wrong
//! password, [`PasswordHasher::verify_dummy`] verifies against a hash made at
//! start with the current parameters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
use rand::rngs::OsRng;
use tokio::sync::Semaphore;

use crate::config::{PasswordConfig, MAX_PASSWORD_BYTES};
use crate::error::AuthError;

#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    min_length: usize,
    permits: Semaphore,
    dummy_hash: String,
    /// Hashes running now, and the most ever seen at once (observability and tests).
    active: AtomicUsize,
    peak: AtomicUsize,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.inner.params)
            .finish_non_exhaustive()
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_sync(params: &Params, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("argon2 hash: {e}")))
}

fn verify_sync(params: &Params, password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        // The parameters come from the PHC string itself, so old hashes keep
        // verifying after the configuration changes.
        Ok(parsed) => argon2(params)
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

impl PasswordHasher {
    /// Builds the hasher and its dummy hash (one hash, run here on the caller's thread).
    pub fn new(config: &PasswordConfig) -> Result<PasswordHasher, AuthError> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|e| AuthError::InvalidArgument(format!("invalid argon2 parameters: {e}")))?;
        let mut random = [0u8; 24];
        rand::RngCore::fill_bytes(&mut OsRng, &mut random);
        let dummy_hash = hash_sync(&params, &hex::encode(random))?;
        Ok(PasswordHasher {
            inner: Arc::new(Inner {
                params,
                min_length: config.min_length,
                permits: Semaphore::new(config.max_concurrent_hashes.max(1)),
                dummy_hash,
                active: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            }),
        })
    }

    /// Checks the password policy: at least `min_length` characters, at most
    /// [`MAX_PASSWORD_BYTES`] bytes.
    pub fn check_policy(&self, password: &str) -> Result<(), AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::WeakPassword(format!(
                "the password is longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        if password.chars().count() < self.inner.min_length {
            return Err(AuthError::WeakPassword(format!(
                "the password must have at least {} characters",
                self.inner.min_length
            )));
        }
        Ok(())
    }

    /// Hashes a password into a PHC string on the bounded pool.
    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let password = password.to_owned();
        self.run(move |inner| hash_sync(&inner.params, &password))
            .await?
    }

    /// Verifies a password against a PHC string on the bounded pool. A
    /// malformed stored hash verifies as false.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return self.verify_dummy().await.map(|_| false);
        }
        let password = password.to_owned();
        let phc = phc.to_owned();
        self.run(move |inner| verify_sync(&inner.params, &password, &phc))
            .await
    }

    /// Spends the same work as a real verification and returns nothing: used
    /// when the email is unknown so timing does not reveal it.
    pub async fn verify_dummy(&self) -> Result<(), AuthError> {
        self.run(|inner| {
            verify_sync(&inner.params, "not the password", &inner.dummy_hash);
        })
        .await
    }

    /// True when the stored hash was made with other parameters or another
    /// algorithm than the configured ones.
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return true;
        };
        if parsed.algorithm != Algorithm::Argon2id.ident() {
            return true;
        }
        match Params::try_from(&parsed) {
            Ok(p) => {
                p.m_cost() != self.inner.params.m_cost()
                    || p.t_cost() != self.inner.params.t_cost()
                    || p.p_cost() != self.inner.params.p_cost()
            }
            Err(_) => true,
        }
    }

    /// Hashes running right now on the blocking pool.
    pub fn in_flight(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// The most hashes that ever ran at once (never above the configured bound).
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Internal("hashing pool closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let now = inner.active.fetch_add(1, Ordering::SeqCst) + 1;
            inner.peak.fetch_max(now, Ordering::SeqCst);
            let out = work(&inner);
            inner.active.fetch_sub(1, Ordering::SeqCst);
            out
        })
        .await
        .map_err(|e| AuthError::Internal(format!("hashing task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap(min_length: usize) -> PasswordConfig {
        PasswordConfig {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            max_concurrent_hashes: 2,
            min_length,
        }
    }

    #[tokio::test]
    async fn hash_is_an_argon2id_phc_string_that_verifies() {
        let h = PasswordHasher::new(&cheap(8)).unwrap();
        let phc = h.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{phc}");
        assert!(h.verify("correct horse", &phc).await.unwrap());
        assert!(!h.verify("wrong horse", &phc).await.unwrap());
        assert!(!h.verify("x", "not a phc string").await.unwrap());
    }

    #[tokio::test]
    async fn changed_parameters_require_a_rehash_and_old_hashes_still_verify() {
        let old = PasswordHasher::new(&cheap(8)).unwrap();
        let phc = old.hash("correct horse").await.unwrap();
        let mut stronger = cheap(8);
        stronger.iterations = 2;
        let new = PasswordHasher::new(&stronger).unwrap();
        assert!(!old.needs_rehash(&phc));
        assert!(new.needs_rehash(&phc));
        assert!(new.verify("correct horse", &phc).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_storm_of_hashes_never_exceeds_the_pool_bound() {
        let mut config = cheap(8);
        config.max_concurrent_hashes = 1;
        let h = PasswordHasher::new(&config).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(&format!("password {i}")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(h.peak_in_flight(), 1);
        assert_eq!(h.in_flight(), 0);
    }

    #[test]
    fn default_hash_uses_owasp_parameters() {
        let h = PasswordHasher::new(&PasswordConfig::default()).unwrap();
        assert!(h
            .inner
            .dummy_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn policy_enforces_min_characters_and_max_bytes() {
        let h = PasswordHasher::new(&cheap(8)).unwrap();
        assert!(h.check_policy("short").is_err());
        assert!(
            h.check_policy("ééééééé").is_err(),
            "7 chars even if 14 bytes"
        );
        assert!(h.check_policy("long enough").is_ok());
        assert!(h.check_policy(&"a".repeat(1025)).is_err());
        assert!(h.check_policy(&"a".repeat(1024)).is_ok());
    }
}
