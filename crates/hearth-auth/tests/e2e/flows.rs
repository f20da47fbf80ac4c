//! The ordinary flows: sign-up, sign-in, anonymous and linking, refresh,
//! sign-out, key rotation, persistence across restarts.

use hearth_auth::AuthService;
use serde_json::json;

use crate::common::{assert_error, start, test_config, token, within};

#[tokio::test]
async fn signup_returns_oauth_shaped_tokens_and_me_shows_the_user() {
    within(60, async {
        let s = start(test_config()).await;
        let t = s.sign_up("  Ada@Example.COM ", "correct horse").await;
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["expires_in"], 3600);
        assert_eq!(t["refresh_token"].as_str().unwrap().len(), 43);
        let uid = token(&t, "uid");
        let me = s.me(&token(&t, "access_token")).await;
        assert_eq!(me.status, 200);
        assert_eq!(me.body["uid"], uid.as_str());
        assert_eq!(me.body["email"], "ada@example.com", "normalized");
        assert_eq!(me.body["provider"], "password");
        assert_eq!(me.body["email_verified"], false);
        assert!(me.body.get("password_hash").is_none());
        let v = s.auth.verify(&token(&t, "access_token")).unwrap();
        assert_eq!(v.claims.sign_in_provider, "password");
        assert_eq!(v.claims.email.as_deref(), Some("ada@example.com"));
    })
    .await;
}

#[tokio::test]
async fn signup_with_a_taken_email_or_weak_password_is_refused() {
    within(60, async {
        let s = start(test_config()).await;
        s.sign_up("ada@example.com", "correct horse").await;
        let r = s
            .post(
                "/v1/auth/signup",
                None,
                json!({"email": "ADA@example.com", "password": "another one"}),
            )
            .await;
        assert_error(&r, 409, "already-exists");
        let r = s
            .post(
                "/v1/auth/signup",
                None,
                json!({"email": "bob@example.com", "password": "short"}),
            )
            .await;
        assert_error(&r, 400, "invalid-argument");
        let r = s
            .post(
                "/v1/auth/signup",
                None,
                json!({"email": "bob@example.com", "password": "x".repeat(1025)}),
            )
            .await;
        assert_error(&r, 400, "invalid-argument");
        let r = s
            .post(
                "/v1/auth/signup",
                None,
                json!({"email": "not-an-email", "password": "correct horse"}),
            )
            .await;
        assert_error(&r, 400, "invalid-argument");
        let r = s.post("/v1/auth/signup", None, json!({"email": 5})).await;
        assert_error(&r, 400, "invalid-argument");
    })
    .await;
}

#[tokio::test]
async fn concurrent_signups_with_one_email_make_exactly_one_account() {
    within(60, async {
        let s = start(test_config()).await;
        let attempts = (0..8).map(|_| {
            s.post(
                "/v1/auth/signup",
                None,
                json!({"email": "race@example.com", "password": "correct horse"}),
            )
        });
        let replies = futures_join_all(attempts).await;
        let ok = replies.iter().filter(|r| r.status == 200).count();
        let taken = replies.iter().filter(|r| r.status == 409).count();
        assert_eq!((ok, taken), (1, 7));
        let page = s
            .get("/v1/admin/users?q=race", Some(crate::common::ADMIN_KEY))
            .await;
        assert_eq!(page.body["users"].as_array().unwrap().len(), 1);
    })
    .await;
}

async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.collect();
    let mut out = Vec::new();
    // Poll them concurrently on this task.
    let mut pinned: Vec<_> = handles.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    for r in results {
        out.extend(r);
    }
    out
}

#[tokio::test]
async fn login_works_with_any_spelling_of_the_email() {
    within(60, async {
        let s = start(test_config()).await;
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let r = s.login("ADA@EXAMPLE.COM ", "correct horse").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["uid"], t["uid"]);
        let r = s.login("ada@example.com", "Correct horse").await;
        assert_error(&r, 401, "unauthenticated");
    })
    .await;
}

#[tokio::test]
async fn anonymous_user_links_to_email_and_keeps_its_uid() {
    within(60, async {
        let s = start(test_config()).await;
        let anon = s.post("/v1/auth/anonymous", None, json!({})).await;
        assert_eq!(anon.status, 200);
        let uid = token(&anon.body, "uid");
        let v = s.auth.verify(&token(&anon.body, "access_token")).unwrap();
        assert_eq!(v.claims.sign_in_provider, "anonymous");
        assert_eq!(v.claims.email, None);

        let linked = s
            .post(
                "/v1/auth/link",
                Some(&token(&anon.body, "access_token")),
                json!({"email": "ada@example.com", "password": "correct horse"}),
            )
            .await;
        assert_eq!(linked.status, 200, "{}", linked.body);
        assert_eq!(linked.body["uid"], uid.as_str());
        let me = s.me(&token(&linked.body, "access_token")).await;
        assert_eq!(me.body["provider"], "password");
        assert_eq!(me.body["email"], "ada@example.com");
        let login = s.login("ada@example.com", "correct horse").await;
        assert_eq!(login.body["uid"], uid.as_str(), "same uid after linking");

        // Linking twice, or linking to a taken email, is refused.
        let again = s
            .post(
                "/v1/auth/link",
                Some(&token(&linked.body, "access_token")),
                json!({"email": "other@example.com", "password": "correct horse"}),
            )
            .await;
        assert_error(&again, 412, "failed-precondition");
        let anon2 = s.post("/v1/auth/anonymous", None, json!({})).await;
        let taken = s
            .post(
                "/v1/auth/link",
                Some(&token(&anon2.body, "access_token")),
                json!({"email": "ada@example.com", "password": "correct horse"}),
            )
            .await;
        assert_error(&taken, 409, "already-exists");
    })
    .await;
}

#[tokio::test]
async fn sign_out_ends_this_session_and_everywhere_ends_all() {
    within(60, async {
        let s = start(test_config()).await;
        let a = s.sign_up("ada@example.com", "correct horse").await;
        let b = s.login("ada@example.com", "correct horse").await.body;
        let c = s.login("ada@example.com", "correct horse").await.body;

        let r = s
            .post(
                "/v1/auth/logout",
                Some(&token(&a, "access_token")),
                json!({}),
            )
            .await;
        assert_eq!(r.status, 204);
        assert_error(
            &s.me(&token(&a, "access_token")).await,
            401,
            "unauthenticated",
        );
        let refresh = s.refresh(token(&a, "refresh_token")).await;
        assert_error(&refresh, 401, "unauthenticated");
        assert_eq!(
            s.me(&token(&b, "access_token")).await.status,
            200,
            "other session untouched"
        );

        let r = s
            .post(
                "/v1/auth/logout",
                Some(&token(&b, "access_token")),
                json!({"everywhere": true}),
            )
            .await;
        assert_eq!(r.status, 204);
        for t in [&b, &c] {
            assert_error(
                &s.me(&token(t, "access_token")).await,
                401,
                "unauthenticated",
            );
            let refresh = s.refresh(token(t, "refresh_token")).await;
            assert_error(&refresh, 401, "unauthenticated");
        }
    })
    .await;
}

#[tokio::test]
async fn sign_out_with_only_a_refresh_token_ends_its_session() {
    within(60, async {
        let s = start(test_config()).await;
        let a = s.sign_up("ada@example.com", "correct horse").await;
        let r = s
            .post(
                "/v1/auth/logout",
                None,
                json!({"refresh_token": token(&a, "refresh_token")}),
            )
            .await;
        assert_eq!(r.status, 204);
        assert_error(
            &s.me(&token(&a, "access_token")).await,
            401,
            "unauthenticated",
        );
        let r = s.post("/v1/auth/logout", None, json!({})).await;
        assert_error(&r, 401, "unauthenticated");
    })
    .await;
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_kid() {
    within(60, async {
        let s = start(test_config()).await;
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let old_access = token(&t, "access_token");
        let old_kid = jsonwebtoken::decode_header(&old_access)
            .unwrap()
            .kid
            .unwrap();
        let r = s
            .post(
                "/v1/admin/keys/rotate",
                Some(crate::common::ADMIN_KEY),
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let new_kid = r.body["kid"].as_str().unwrap().to_string();
        assert_ne!(new_kid, old_kid);
        let jwks = s.get("/.well-known/jwks.json", None).await.body;
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert!(
            kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
            "{kids:?}"
        );
        assert_eq!(
            s.me(&old_access).await.status,
            200,
            "old token still verifies"
        );
        let refreshed = s.refresh(token(&t, "refresh_token")).await;
        let new_access = token(&refreshed.body, "access_token");
        assert_eq!(
            jsonwebtoken::decode_header(&new_access)
                .unwrap()
                .kid
                .unwrap(),
            new_kid
        );
        // A plain user may not rotate keys.
        let r = s
            .post("/v1/admin/keys/rotate", Some(&new_access), json!({}))
            .await;
        assert_error(&r, 403, "permission-denied");
    })
    .await;
}

#[tokio::test]
async fn keys_sessions_and_revocations_survive_a_restart() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let (access, revoked_access, refresh, kid) = {
            let store = hearth_store::Store::open(hearth_store::StoreConfig::new(&path)).unwrap();
            let auth = AuthService::start(test_config(), store.clone())
                .await
                .unwrap();
            let client = hearth_auth::ClientInfo::new("127.0.0.1");
            let a = auth
                .sign_up("ada@example.com", "correct horse", &client)
                .await
                .unwrap();
            let b = auth
                .sign_in("ada@example.com", "correct horse", &client)
                .await
                .unwrap();
            let vb = auth.verify(&b.access_token).unwrap();
            auth.sign_out(&vb, false).await.unwrap();
            let kid = jsonwebtoken::decode_header(&a.access_token)
                .unwrap()
                .kid
                .unwrap();
            drop(auth);
            store.shutdown().await.unwrap();
            (a.access_token, b.access_token, a.refresh_token, kid)
        };
        let store = hearth_store::Store::open(hearth_store::StoreConfig::new(&path)).unwrap();
        let auth = AuthService::start(test_config(), store).await.unwrap();
        assert_eq!(
            auth.verify(&access).unwrap().claims.email.as_deref(),
            Some("ada@example.com")
        );
        assert!(
            auth.verify(&revoked_access).is_err(),
            "revocation persisted"
        );
        assert_eq!(auth.jwks()["keys"][0]["kid"], kid.as_str());
        let client = hearth_auth::ClientInfo::new("127.0.0.1");
        assert!(auth.refresh(&refresh, &client).await.is_ok());
        assert!(auth
            .sign_in("ada@example.com", "correct horse", &client)
            .await
            .is_ok());
    })
    .await;
}

#[tokio::test]
async fn changed_argon2_parameters_rehash_on_next_sign_in() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let store = hearth_store::Store::open(hearth_store::StoreConfig::new(&path)).unwrap();
        let client = hearth_auth::ClientInfo::new("127.0.0.1");
        let auth = AuthService::start(test_config(), store.clone())
            .await
            .unwrap();
        let t = auth
            .sign_up("ada@example.com", "correct horse", &client)
            .await
            .unwrap();
        drop(auth);
        let mut stronger = test_config();
        stronger.password.iterations = 2;
        let auth = AuthService::start(stronger, store.clone()).await.unwrap();
        auth.sign_in("ada@example.com", "correct horse", &client)
            .await
            .unwrap();
        let doc = store
            .get(&hearth_auth::records::doc_path(hearth_auth::records::USERS, &t.uid).unwrap())
            .unwrap()
            .unwrap();
        let phc = doc.fields["password_hash"].as_str().unwrap();
        assert!(phc.contains("m=1024,t=2,p=1"), "{phc}");
        assert!(auth
            .sign_in("ada@example.com", "correct horse", &client)
            .await
            .is_ok());
    })
    .await;
}

#[tokio::test]
async fn jwks_serves_ed25519_public_keys_only() {
    within(60, async {
        let s = start(test_config()).await;
        let r = s.get("/.well-known/jwks.json", None).await;
        assert_eq!(r.status, 200);
        let key = &r.body["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert!(key.get("d").is_none(), "no private part");
        assert!(key["kid"].is_string());
    })
    .await;
}

#[tokio::test]
async fn keys_rotate_on_the_configured_interval() {
    within(60, async {
        let mut config = test_config();
        config.key_rotation_interval = Some(std::time::Duration::from_secs(1));
        let s = start(config).await;
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let first_kid = jsonwebtoken::decode_header(&token(&t, "access_token"))
            .unwrap()
            .kid
            .unwrap();
        let mut kids = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let jwks = s.get("/.well-known/jwks.json", None).await.body;
            kids = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect();
            if kids.len() >= 2 {
                break;
            }
        }
        assert!(kids.len() >= 2, "no rotation happened: {kids:?}");
        assert!(kids.contains(&first_kid), "the old key still verifies");
        assert_eq!(s.me(&token(&t, "access_token")).await.status, 200);
    })
    .await;
}
