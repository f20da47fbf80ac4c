//! Attack tests: forged and altered access tokens, refresh-token reuse,
//! rate limits, user enumeration, disabled users.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hearth_auth::jwt::{AccessClaims, KeyRing, SigningKey};
use hearth_auth::records::{key_from_doc, KEYS};
use hearth_auth::{AuthError, Rate, RevocationReason};
use hearth_protocol::CollectionPath;
use serde_json::json;

use crate::common::{assert_error, start, test_config, token, within, TestServer, ADMIN_KEY};

/// A key ring holding the server's real private keys, read from the store,
/// so the test can sign tokens that differ from valid ones in one respect.
fn server_keys(s: &TestServer, issuer: &str, audience: &str) -> KeyRing {
    let page = s
        .store
        .list(&CollectionPath::parse(KEYS).unwrap(), 100, None)
        .unwrap();
    let keys: Vec<SigningKey> = page.documents.iter().filter_map(key_from_doc).collect();
    KeyRing::new(keys, issuer, audience, 0).unwrap()
}

fn now() -> i64 {
    hearth_protocol::Timestamp::now().seconds()
}

fn claims_for(uid: &str, sid: &str) -> AccessClaims {
    AccessClaims {
        sub: uid.into(),
        iat: now(),
        exp: now() + 600,
        iss: "hearth".into(),
        aud: "hearth".into(),
        sid: sid.into(),
        sign_in_provider: "password".into(),
        email: None,
        email_verified: false,
        custom: serde_json::Map::new(),
    }
}

/// Asserts that both the HTTP layer and the verifier API refuse the token.
async fn assert_refused(s: &TestServer, token: &str) {
    let r = s.me(token).await;
    assert_error(&r, 401, "unauthenticated");
    assert!(s.auth.verify_access_token(token).is_err());
}

async fn valid_session(s: &TestServer) -> (String, String, String) {
    let t = s.sign_up("victim@example.com", "correct horse").await;
    let access = token(&t, "access_token");
    let v = s.auth.verify(&access).expect("valid token");
    (access, v.uid, v.session_id)
}

#[tokio::test]
async fn alg_none_token_is_refused() {
    within(60, async {
        let s = start(test_config()).await;
        let (access, uid, sid) = valid_session(&s).await;
        let kid = jsonwebtoken::decode_header(&access).unwrap().kid.unwrap();
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
        let mut c = claims_for(&uid, &sid);
        c.custom.insert("admin".into(), true.into());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_string(&c).unwrap());
        for forged in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_refused(&s, &forged).await;
        }
        // The admin API is not reachable with it either.
        let forged = format!("{header}.{payload}.");
        assert_error(
            &s.get("/v1/admin/users", Some(&forged)).await,
            401,
            "unauthenticated",
        );
    })
    .await;
}

#[tokio::test]
async fn hs256_token_signed_with_the_public_key_is_refused() {
    within(60, async {
        let s = start(test_config()).await;
        let (access, uid, sid) = valid_session(&s).await;
        let kid = jsonwebtoken::decode_header(&access).unwrap().kid.unwrap();
        let jwks = s.get("/.well-known/jwks.json", None).await.body;
        let x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
        let raw_public = URL_SAFE_NO_PAD.decode(&x).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid);
        let claims = claims_for(&uid, &sid);
        // Both spellings of "the public key" an attacker might try as the HMAC secret.
        for secret in [
            raw_public.clone(),
            x.as_bytes().to_vec(),
            jwks["keys"][0].to_string().into_bytes(),
        ] {
            let forged = jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(&secret),
            )
            .unwrap();
            assert_refused(&s, &forged).await;
        }
    })
    .await;
}

#[tokio::test]
async fn token_with_unknown_kid_is_refused() {
    within(60, async {
        let s = start(test_config()).await;
        let (_, uid, sid) = valid_session(&s).await;
        let foreign = KeyRing::new(
            vec![SigningKey::generate(now()).unwrap()],
            "hearth",
            "hearth",
            0,
        )
        .unwrap();
        assert_refused(&s, &foreign.sign(&claims_for(&uid, &sid)).unwrap()).await;
        // A token without any kid.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = None;
        let key = SigningKey::generate(now()).unwrap();
        let no_kid = jsonwebtoken::encode(
            &header,
            &claims_for(&uid, &sid),
            &jsonwebtoken::EncodingKey::from_ed_der(&key.pkcs8),
        )
        .unwrap();
        assert_refused(&s, &no_kid).await;
    })
    .await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    within(60, async {
        let s = start(test_config()).await;
        let (_, uid, sid) = valid_session(&s).await;
        let keys = server_keys(&s, "hearth", "hearth");
        let mut c = claims_for(&uid, &sid);
        // Past the configured 30 s clock skew.
        c.iat = now() - 7200;
        c.exp = now() - 3600;
        let expired = keys.sign(&c).unwrap();
        assert_refused(&s, &expired).await;
        // The same claims with a live exp verify: only exp made the difference.
        c.exp = now() + 600;
        assert!(s.auth.verify_access_token(&keys.sign(&c).unwrap()).is_ok());
    })
    .await;
}

#[tokio::test]
async fn wrong_audience_or_issuer_is_refused() {
    within(60, async {
        let s = start(test_config()).await;
        let (_, uid, sid) = valid_session(&s).await;
        let keys = server_keys(&s, "hearth", "hearth");
        let mut wrong_aud = claims_for(&uid, &sid);
        wrong_aud.aud = "another-service".into();
        assert_refused(&s, &keys.sign(&wrong_aud).unwrap()).await;
        let mut wrong_iss = claims_for(&uid, &sid);
        wrong_iss.iss = "https://evil.example".into();
        assert_refused(&s, &keys.sign(&wrong_iss).unwrap()).await;
    })
    .await;
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    within(60, async {
        let s = start(test_config()).await;
        let (access, _, _) = valid_session(&s).await;
        let parts: Vec<&str> = access.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["admin"] = json!(true);
        payload["sub"] = json!("someone-else");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        );
        assert_refused(&s, &tampered).await;
        // Flipping one signature character is refused too.
        let mut sig = parts[2].to_string();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, flipped);
        assert_refused(&s, &format!("{}.{}.{}", parts[0], parts[1], sig)).await;
        // And the original still works.
        assert_eq!(s.me(&access).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_whole_session_family() {
    within(60, async {
        let s = start(test_config()).await;
        let mut revocations = s.auth.subscribe_revocations();
        let first = s.sign_up("ada@example.com", "correct horse").await;
        let r1 = token(&first, "refresh_token");
        let second = s.refresh(&r1).await;
        assert_eq!(second.status, 200, "{}", second.body);
        let r2 = token(&second.body, "refresh_token");
        let a2 = token(&second.body, "access_token");
        assert_ne!(r1, r2, "refresh tokens rotate on every use");
        assert_eq!(s.me(&a2).await.status, 200);

        // The attacker replays the already-used r1.
        let replay = s.refresh(&r1).await;
        assert_error(&replay, 401, "unauthenticated");
        // The whole family is dead: the legitimate r2 and the access tokens.
        let legit = s.refresh(r2).await;
        assert_error(&legit, 401, "unauthenticated");
        assert_error(&s.me(&a2).await, 401, "unauthenticated");
        assert_error(
            &s.me(&token(&first, "access_token")).await,
            401,
            "unauthenticated",
        );
        let rev = revocations.try_recv().expect("a revocation was broadcast");
        assert_eq!(rev.reason, RevocationReason::RefreshTokenReuse);
        assert_eq!(rev.uid, token(&first, "uid"));
        assert!(rev.session_id.is_some());

        // Another session of the same user is unaffected.
        let other = s.login("ada@example.com", "correct horse").await;
        assert_eq!(s.me(&token(&other.body, "access_token")).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn garbage_refresh_tokens_are_refused() {
    within(60, async {
        let s = start(test_config()).await;
        for bad in ["", "short", &"A".repeat(43), &"é".repeat(30)] {
            let r = s.refresh(bad).await;
            assert_error(&r, 401, "unauthenticated");
        }
    })
    .await;
}

#[tokio::test]
async fn login_rate_limit_trips_with_retry_after() {
    within(60, async {
        let mut config = test_config();
        config.rate_limits.login_per_ip = Some(Rate::new(3, Duration::from_secs(60)));
        let s = start(config).await;
        s.sign_up("ada@example.com", "correct horse").await;
        for _ in 0..3 {
            let r = s.login("ada@example.com", "wrong password").await;
            assert_eq!(r.status, 401);
        }
        // Even the right password is refused while limited.
        let r = s.login("ada@example.com", "correct horse").await;
        assert_error(&r, 429, "resource-exhausted");
        let retry: u64 = r.retry_after.expect("Retry-After header").parse().unwrap();
        assert!((1..=20).contains(&retry), "retry after {retry}");
    })
    .await;
}

#[tokio::test]
async fn per_account_limit_trips_across_ips_for_one_email() {
    within(60, async {
        let mut config = test_config();
        config.rate_limits.login_per_account = Some(Rate::new(2, Duration::from_secs(60)));
        let s = start(config).await;
        for _ in 0..2 {
            let r = s.login("Target@Example.com", "wrong password").await;
            assert_eq!(r.status, 401);
        }
        // Normalization: another spelling of the same address shares the bucket.
        let r = s.login(" target@example.COM", "x").await;
        assert_error(&r, 429, "resource-exhausted");
        assert!(r.retry_after.is_some());
        // Another account is not limited.
        let r = s.login("other@example.com", "wrong password").await;
        assert_eq!(r.status, 401);
    })
    .await;
}

#[tokio::test]
async fn signup_refresh_and_reset_are_rate_limited_too() {
    within(60, async {
        let mut config = test_config();
        config.rate_limits.signup_per_ip = Some(Rate::new(1, Duration::from_secs(3600)));
        config.rate_limits.refresh_per_ip = Some(Rate::new(1, Duration::from_secs(3600)));
        config.rate_limits.reset_per_ip = Some(Rate::new(1, Duration::from_secs(3600)));
        let s = start(config).await;
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let r = s
            .post(
                "/v1/auth/signup",
                None,
                json!({"email": "bob@example.com", "password": "correct horse"}),
            )
            .await;
        assert_error(&r, 429, "resource-exhausted");
        let r1 = s.refresh(token(&t, "refresh_token")).await;
        assert_eq!(r1.status, 200);
        let r2 = s.refresh(token(&r1.body, "refresh_token")).await;
        assert_error(&r2, 429, "resource-exhausted");
        let p1 = s
            .post(
                "/v1/auth/password-reset/send",
                None,
                json!({"email": "ada@example.com"}),
            )
            .await;
        assert_eq!(p1.status, 202);
        let p2 = s
            .post(
                "/v1/auth/password-reset/send",
                None,
                json!({"email": "ada@example.com"}),
            )
            .await;
        assert_error(&p2, 429, "resource-exhausted");
    })
    .await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_are_indistinguishable() {
    within(120, async {
        let mut config = test_config();
        // Enough hashing work that it dominates the request time.
        config.password.memory_kib = 8192;
        config.password.iterations = 2;
        let s = start(config).await;
        s.sign_up("known@example.com", "correct horse").await;
        let attempt = |email: &'static str| {
            let s = &s;
            async move {
                let started = Instant::now();
                let r = s.login(email, "wrong password").await;
                (r, started.elapsed())
            }
        };
        let (known, _) = attempt("known@example.com").await;
        let (unknown, _) = attempt("nobody@example.com").await;
        assert_eq!(known.status, 401);
        assert_eq!(known.status, unknown.status);
        assert_eq!(known.body, unknown.body, "same body for both");
        // Timing: medians within a loose bound (both do one argon2 verification).
        let mut known_times = Vec::new();
        let mut unknown_times = Vec::new();
        for _ in 0..7 {
            known_times.push(attempt("known@example.com").await.1);
            unknown_times.push(attempt("nobody@example.com").await.1);
        }
        known_times.sort();
        unknown_times.sort();
        let (k, u) = (known_times[3], unknown_times[3]);
        let ratio = k.as_secs_f64().max(u.as_secs_f64()) / k.as_secs_f64().min(u.as_secs_f64());
        assert!(ratio < 2.0, "median known {k:?} vs unknown {u:?}");
    })
    .await;
}

#[tokio::test]
async fn disabled_user_cannot_refresh_and_is_revoked() {
    within(60, async {
        let s = start(test_config()).await;
        let mut revocations = s.auth.subscribe_revocations();
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let uid = token(&t, "uid");
        let access = token(&t, "access_token");
        let r = s
            .send(
                reqwest::Method::PATCH,
                &format!("/v1/admin/users/{uid}"),
                Some(ADMIN_KEY),
                Some(json!({"disabled": true})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["disabled"], true);
        let refresh = s.refresh(token(&t, "refresh_token")).await;
        assert_error(&refresh, 401, "unauthenticated");
        assert_error(&s.me(&access).await, 401, "unauthenticated");
        assert!(matches!(
            s.auth.verify_access_token(&access),
            Err(AuthError::UserDisabled | AuthError::InvalidToken(_))
        ));
        let login = s.login("ada@example.com", "correct horse").await;
        assert_error(&login, 401, "unauthenticated");
        let rev = revocations
            .try_recv()
            .expect("revocation broadcast for the gateway");
        assert_eq!(rev.uid, uid);
        assert_eq!(rev.session_id, None);
        assert_eq!(rev.reason, RevocationReason::UserDisabled);

        // Re-enabled: a new sign-in works; the old sessions stay revoked.
        let r = s
            .send(
                reqwest::Method::PATCH,
                &format!("/v1/admin/users/{uid}"),
                Some(ADMIN_KEY),
                Some(json!({"disabled": false})),
            )
            .await;
        assert_eq!(r.status, 200);
        let login = s.login("ada@example.com", "correct horse").await;
        assert_eq!(login.status, 200);
        assert_error(&s.me(&access).await, 401, "unauthenticated");
    })
    .await;
}
