//! Access tokens: Ed25519 signing keys, their rotation, JWKS, signing and
//! verification.
//!
//! * Algorithm: `EdDSA` (Ed25519) only. Verification builds its
//!   `Validation` with exactly that algorithm, so `alg: none`, `HS256` signed
//!   with the public key, or any other algorithm is refused before any key is
//!   touched.
//! * Every token carries a `kid`; an unknown `kid` is refused (no fallback key).
//! * Rotation: [`KeyRing::rotate`] makes a new key the signer and marks the
//!   previous one retired; retired keys keep verifying (and stay in the JWKS)
//!   until every token they signed has expired, then [`KeyRing::prune`] drops them.
//! * Decoding keys are built once per `kid` and cached, so verification is a
//!   hash-map lookup plus one signature check (see `benches/RESULTS.md`).
//! * **Verified-token cache.** The Ed25519 check is most of a verification's
//!   cost and a client sends the same access token on every request, so the
//!   claims of a token that passed the full check are kept, keyed by the
//!   SHA-256 of the exact token text ([`VERIFIED_CACHE_CAPACITY`] entries at
//!   most; when full it is emptied, not grown). Why this is safe:
//!   - a hit needs the identical bytes, so a tampered token (any change to
//!     header, payload or signature) misses and takes the full path; failed
//!     verifications are never cached;
//!   - what can change over a token's life is still checked on every hit:
//!     `exp` (with the same leeway as the full check) here, and revoked
//!     sessions and disabled users in `AuthService::verify` after this
//!     function, for hits and misses alike;
//!   - `iss`/`aud` are fixed for the ring's life; a pruned key empties the
//!     cache, so a token of a dropped key cannot outlive its key.
//!
//! Claims layout (documented in `sdk-spec/AUTH.md`): the registered claims
//! `sub`, `iat`, `exp`, `iss`, `aud`, then `sid` (session id),
//! `sign_in_provider` (`"password"` | `"anonymous"`), `email`,
//! `email_verified`, and the user's custom claims at the top level (as
//! Firebase does); custom claims may not use a reserved name.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// Claim names custom claims may not use.
pub const RESERVED_CLAIMS: &[&str] = &[
    "sub",
    "iat",
    "exp",
    "nbf",
    "iss",
    "aud",
    "jti",
    "sid",
    "kid",
    "sign_in_provider",
    "email",
    "email_verified",
    "uid",
    "auth_time",
    "firebase",
];

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub sid: String,
    pub sign_in_provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    /// Custom claims set by an administrator, flattened to the top level.
    #[serde(flatten)]
    pub custom: serde_json::Map<String, serde_json::Value>,
}

/// One Ed25519 key pair with its lifecycle timestamps (Unix seconds).
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    /// PKCS#8 v2 DER of the key pair. Secret.
    pub pkcs8: Vec<u8>,
    /// The raw 32-byte public key.
    pub public: Vec<u8>,
    pub created_at: i64,
    /// When it stopped signing; `None` for the key that signs.
    pub retired_at: Option<i64>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("pkcs8", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

impl SigningKey {
    /// A fresh random Ed25519 key with a random `kid`.
    pub fn generate(now: i64) -> Result<SigningKey, AuthError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| AuthError::Internal("ed25519 key generation failed".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| AuthError::Internal("ed25519 key parse failed".into()))?;
        Ok(SigningKey {
            kid: crate::tokens::random_id(12),
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
            created_at: now,
            retired_at: None,
        })
    }

    fn check(&self) -> Result<(), AuthError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.pkcs8)
            .map_err(|_| AuthError::Internal(format!("stored key {} is corrupt", self.kid)))?;
        if pair.public_key().as_ref() != self.public.as_slice() {
            return Err(AuthError::Internal(format!(
                "stored key {} has a mismatched public key",
                self.kid
            )));
        }
        Ok(())
    }

    /// The key's JWK (public part only).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

struct Verifier {
    key: Arc<DecodingKey>,
    meta: SigningKey,
}

struct State {
    signer_kid: String,
    signer: EncodingKey,
    verifiers: HashMap<String, Verifier>,
}

/// Most verified tokens kept (a few hundred bytes each).
pub const VERIFIED_CACHE_CAPACITY: usize = 10_000;

/// The set of keys: one signer, any number of verifiers.
pub struct KeyRing {
    state: RwLock<State>,
    validation: Validation,
    /// SHA-256 of a token that passed the full check → its claims.
    verified: DashMap<[u8; 32], Arc<AccessClaims>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.read();
        f.debug_struct("KeyRing")
            .field("signer_kid", &state.signer_kid)
            .field("kids", &state.verifiers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Builds the ring from stored keys. The newest key without `retired_at`
    /// signs; there must be one.
    pub fn new(
        keys: Vec<SigningKey>,
        issuer: &str,
        audience: &str,
        leeway_secs: u64,
    ) -> Result<KeyRing, AuthError> {
        let signer = keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by_key(|k| (k.created_at, k.kid.clone()))
            .cloned()
            .ok_or_else(|| AuthError::Internal("no active signing key".into()))?;
        let mut verifiers = HashMap::new();
        for key in keys {
            key.check()?;
            verifiers.insert(key.kid.clone(), verifier(key));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        Ok(KeyRing {
            state: RwLock::new(State {
                signer_kid: signer.kid.clone(),
                signer: EncodingKey::from_ed_der(&signer.pkcs8),
                verifiers,
            }),
            validation,
            verified: DashMap::new(),
        })
    }

    pub fn signer_kid(&self) -> String {
        self.state.read().signer_kid.clone()
    }

    /// Signs claims with the current key; the header carries its `kid`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, AuthError> {
        let state = self.state.read();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(state.signer_kid.clone());
        jsonwebtoken::encode(&header, claims, &state.signer)
            .map_err(|e| AuthError::Internal(format!("jwt sign: {e}")))
    }

    /// Checks signature, algorithm, `kid`, `exp`, `iss` and `aud`; a token
    /// that passed before is answered from the verified-token cache after
    /// its `exp` is checked again (see the module docs).
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        self.verify_at(token, now_secs())
    }

    /// [`Self::verify`] with the clock for cache hits given (tests).
    fn verify_at(&self, token: &str, now: i64) -> Result<AccessClaims, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.verified.get(&digest).map(|c| Arc::clone(&c)) {
            if claims.exp < now.saturating_sub(self.validation.leeway as i64) {
                self.verified.remove(&digest);
                return Err(AuthError::InvalidToken(
                    "access token expired; refresh it".into(),
                ));
            }
            return Ok((*claims).clone());
        }
        let claims = self.verify_uncached(token)?;
        if self.verified.len() >= VERIFIED_CACHE_CAPACITY {
            self.verified.clear();
        }
        self.verified.insert(digest, Arc::new(claims.clone()));
        Ok(claims)
    }

    /// The full check, without the cache (what a first use of a token costs).
    pub fn verify_uncached(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::InvalidToken("malformed access token".into()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::InvalidToken(
                "access token uses an unsupported algorithm".into(),
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::InvalidToken("access token has no key id".into()))?;
        let key = {
            let state = self.state.read();
            match state.verifiers.get(&kid) {
                Some(v) => v.key.clone(),
                None => {
                    return Err(AuthError::InvalidToken(
                        "access token signed by an unknown key".into(),
                    ))
                }
            }
        };
        jsonwebtoken::decode::<AccessClaims>(token, &key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let message = match e.kind() {
                    ErrorKind::ExpiredSignature => "access token expired; refresh it",
                    ErrorKind::InvalidAudience => "access token has the wrong audience",
                    ErrorKind::InvalidIssuer => "access token has the wrong issuer",
                    ErrorKind::InvalidSignature => "access token signature is invalid",
                    ErrorKind::ImmatureSignature => "access token is not valid yet",
                    _ => "access token is invalid",
                };
                AuthError::InvalidToken(message.into())
            })
    }

    /// Makes `new` the signer and retires the previous signer at `now`.
    /// Returns the retired key (to persist its `retired_at`).
    pub fn rotate(&self, new: SigningKey, now: i64) -> Result<Option<SigningKey>, AuthError> {
        new.check()?;
        let mut state = self.state.write();
        let old_kid = std::mem::replace(&mut state.signer_kid, new.kid.clone());
        state.signer = EncodingKey::from_ed_der(&new.pkcs8);
        state.verifiers.insert(new.kid.clone(), verifier(new));
        let retired = state.verifiers.get_mut(&old_kid).map(|v| {
            v.meta.retired_at = Some(now);
            v.meta.clone()
        });
        Ok(retired)
    }

    /// Drops keys retired before `cutoff` (their tokens have all expired).
    /// Returns the dropped kids.
    pub fn prune(&self, cutoff: i64) -> Vec<String> {
        let mut state = self.state.write();
        let dropped: Vec<String> = state
            .verifiers
            .values()
            .filter(|v| v.meta.retired_at.is_some_and(|r| r < cutoff))
            .map(|v| v.meta.kid.clone())
            .collect();
        for kid in &dropped {
            state.verifiers.remove(kid);
        }
        if !dropped.is_empty() {
            // Tokens of a dropped key must take the full path (and fail).
            self.verified.clear();
        }
        dropped
    }

    /// All keys that still verify, newest first.
    pub fn keys(&self) -> Vec<SigningKey> {
        let state = self.state.read();
        let mut keys: Vec<SigningKey> = state.verifiers.values().map(|v| v.meta.clone()).collect();
        keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.kid.cmp(&a.kid)));
        keys
    }

    /// The JWKS document served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self.keys().iter().map(SigningKey::jwk).collect();
        serde_json::json!({ "keys": keys })
    }
}

/// The current Unix time in seconds (the clock jsonwebtoken checks `exp` with).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn verifier(meta: SigningKey) -> Verifier {
    Verifier {
        key: Arc::new(DecodingKey::from_ed_der(&meta.public)),
        meta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64, exp: i64) -> AccessClaims {
        AccessClaims {
            sub: "u1".into(),
            iat: now,
            exp,
            iss: "hearth".into(),
            aud: "hearth".into(),
            sid: "s1".into(),
            sign_in_provider: "password".into(),
            email: Some("a@b.c".into()),
            email_verified: false,
            custom: serde_json::Map::new(),
        }
    }

    fn now() -> i64 {
        hearth_protocol::Timestamp::now().seconds()
    }

    fn ring() -> KeyRing {
        KeyRing::new(
            vec![SigningKey::generate(now()).unwrap()],
            "hearth",
            "hearth",
            0,
        )
        .unwrap()
    }

    #[test]
    fn signed_token_verifies_and_keeps_its_claims() {
        let ring = ring();
        let mut c = claims(now(), now() + 60);
        c.custom.insert("admin".into(), true.into());
        let token = ring.sign(&c).unwrap();
        assert_eq!(ring.verify(&token).unwrap(), c);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.unwrap(), ring.signer_kid());
    }

    #[test]
    fn rotated_out_key_still_verifies_until_pruned() {
        let ring = ring();
        let old_token = ring.sign(&claims(now(), now() + 60)).unwrap();
        let old_kid = ring.signer_kid();
        let retired = ring
            .rotate(SigningKey::generate(now()).unwrap(), now())
            .unwrap();
        assert_eq!(retired.unwrap().kid, old_kid);
        assert_ne!(ring.signer_kid(), old_kid);
        assert!(ring.verify(&old_token).is_ok());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
        assert_eq!(ring.prune(now() + 1), vec![old_kid]);
        assert!(ring.verify(&old_token).is_err());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_cached_token_is_refused_once_it_expires() {
        let ring = ring();
        let t0 = now();
        let token = ring.sign(&claims(t0, t0 + 60)).unwrap();
        assert!(ring.verify_at(&token, t0).is_ok());
        assert_eq!(ring.verified.len(), 1, "the verified token is cached");
        assert!(ring.verify_at(&token, t0 + 60).is_ok(), "exp is inclusive");
        assert!(matches!(
            ring.verify_at(&token, t0 + 61),
            Err(AuthError::InvalidToken(_))
        ));
        assert!(ring.verified.is_empty(), "the expired entry is dropped");
    }

    #[test]
    fn a_tampered_copy_of_a_cached_token_is_refused() {
        let ring = ring();
        let token = ring.sign(&claims(now(), now() + 60)).unwrap();
        assert!(ring.verify(&token).is_ok());
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        payload["sub"] = "someone-else".into();
        parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
        let tampered = parts.join(".");
        assert!(matches!(
            ring.verify(&tampered),
            Err(AuthError::InvalidToken(_))
        ));
        assert_eq!(ring.verified.len(), 1, "failures are not cached");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let ring = ring();
        let t0 = now();
        for i in 0..(VERIFIED_CACHE_CAPACITY + 5) as i64 {
            let token = ring.sign(&claims(t0, t0 + 60 + i)).unwrap();
            assert!(ring.verify(&token).is_ok());
            assert!(ring.verified.len() <= VERIFIED_CACHE_CAPACITY);
        }
    }

    #[test]
    fn token_from_another_ring_is_rejected() {
        let token = ring().sign(&claims(now(), now() + 60)).unwrap();
        assert!(matches!(
            ring().verify(&token),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn debug_output_redacts_private_key() {
        let key = SigningKey::generate(0).unwrap();
        let text = format!("{key:?}");
        assert!(text.contains("<redacted>"));
        assert!(!text.contains(&format!("{:?}", key.pkcs8)));
    }
}
