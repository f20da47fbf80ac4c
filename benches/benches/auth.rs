//! Auth benchmarks (criterion, in-process).
//!
//! * `verify_access_token`: `AuthService::verify_access_token` of a valid
//!   EdDSA token that was verified before (the usual case: a client sends
//!   the same token on every request): SHA-256 of the token, verified-token
//!   cache hit, `exp` and revocation-set checks, claims to `Principal`.
//! * `verify_access_token_first_use`: `KeyRing::verify_uncached`, the full
//!   check a token's first use pays (header and claims decoding, cached
//!   decoding key by `kid`, Ed25519 signature, `exp`/`iss`/`aud`).
//! * `rules_typical_get`: one rules evaluation of the example chat rules'
//!   message read, whose condition makes one `get()` of the room document
//!   (`hearth_rules::bench_support::TypicalGetRule`, in-memory lookup).
//! * `argon2id_verify_default`: one password verification with the default
//!   parameters (m = 19456 KiB, t = 2, p = 1) on the bounded hashing pool.
//! * `sign_in`: `AuthService::sign_in` end to end (lookup, argon2id verify,
//!   session + refresh token commit in strict durability, token signing).
//!
//! Run: `cargo bench -p hearth-benches --bench auth`

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use hearth_auth::password::PasswordHasher;
use hearth_auth::{AuthConfig, AuthService, ClientInfo, PasswordConfig, RateLimitConfig};
use hearth_store::{Store, StoreConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn config() -> AuthConfig {
    AuthConfig {
        rate_limits: RateLimitConfig::disabled(),
        ..AuthConfig::default()
    }
}

fn bench_auth(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("data"))).unwrap();
    let auth = rt
        .block_on(AuthService::start(config(), store.clone()))
        .unwrap();
    let client = ClientInfo::new("127.0.0.1");
    let tokens = rt
        .block_on(auth.sign_up("bench@example.com", "correct horse battery", &client))
        .unwrap();

    c.bench_function("verify_access_token", |b| {
        b.iter(|| auth.verify_access_token(&tokens.access_token).unwrap())
    });

    let ring = hearth_auth::jwt::KeyRing::new(
        vec![hearth_auth::jwt::SigningKey::generate(0).unwrap()],
        "hearth",
        "hearth",
        30,
    )
    .unwrap();
    let claims = hearth_auth::jwt::AccessClaims {
        sub: "u1".into(),
        iat: 0,
        exp: i64::from(i32::MAX),
        iss: "hearth".into(),
        aud: "hearth".into(),
        sid: "s1".into(),
        sign_in_provider: "password".into(),
        email: Some("bench@example.com".into()),
        email_verified: false,
        custom: serde_json::Map::new(),
    };
    let token = ring.sign(&claims).unwrap();
    c.bench_function("verify_access_token_first_use", |b| {
        b.iter(|| ring.verify_uncached(&token).unwrap())
    });

    let rule = hearth_rules::bench_support::TypicalGetRule::new();
    c.bench_function("rules_typical_get", |b| {
        b.iter(|| assert!(rule.check_once()))
    });

    let hasher = PasswordHasher::new(&PasswordConfig::default()).unwrap();
    let phc = rt.block_on(hasher.hash("correct horse battery")).unwrap();
    let mut group = c.benchmark_group("password");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("argon2id_verify_default", |b| {
        b.to_async(&rt)
            .iter(|| async { assert!(hasher.verify("correct horse battery", &phc).await.unwrap()) })
    });
    group.bench_function("sign_in", |b| {
        b.to_async(&rt).iter(|| async {
            auth.sign_in("bench@example.com", "correct horse battery", &client)
                .await
                .unwrap()
        })
    });
    group.finish();
    drop(auth);
    rt.block_on(store.shutdown()).unwrap();
}

criterion_group!(benches, bench_auth);
criterion_main!(benches);
