//! The admin API: list and search with paging, get, create, update, delete,
//! revoke; admin key or a user with the `admin: true` claim.

use reqwest::Method;
use serde_json::json;

use crate::common::{assert_error, start, test_config, token, within, ADMIN_KEY};

#[tokio::test]
async fn admin_lists_and_searches_users_with_paging() {
    within(60, async {
        let s = start(test_config()).await;
        for name in ["amy", "ann", "bob", "anna", "carl"] {
            s.sign_up(&format!("{name}@example.com"), "correct horse")
                .await;
        }
        let all = s.get("/v1/admin/users?page_size=2", Some(ADMIN_KEY)).await;
        assert_eq!(all.status, 200, "{}", all.body);
        let mut seen = all.body["users"].as_array().unwrap().len();
        let mut next = all.body["next_page_token"].as_str().map(str::to_string);
        while let Some(t) = next {
            let page = s
                .get(
                    &format!("/v1/admin/users?page_size=2&page_token={t}"),
                    Some(ADMIN_KEY),
                )
                .await;
            seen += page.body["users"].as_array().unwrap().len();
            next = page.body["next_page_token"].as_str().map(str::to_string);
        }
        assert_eq!(seen, 5);

        let first = s
            .get("/v1/admin/users?q=AN&page_size=1", Some(ADMIN_KEY))
            .await;
        assert_eq!(first.body["users"][0]["email"], "ann@example.com");
        let t = first.body["next_page_token"].as_str().unwrap().to_string();
        let second = s
            .get(
                &format!("/v1/admin/users?q=an&page_size=1&page_token={t}"),
                Some(ADMIN_KEY),
            )
            .await;
        assert_eq!(second.body["users"][0]["email"], "anna@example.com");
        assert!(second.body["next_page_token"].is_null());
        let bad = s
            .get("/v1/admin/users?page_size=abc", Some(ADMIN_KEY))
            .await;
        assert_error(&bad, 400, "invalid-argument");
    })
    .await;
}

#[tokio::test]
async fn admin_creates_updates_and_deletes_users() {
    within(60, async {
        let s = start(test_config()).await;
        let created = s
            .post("/v1/admin/users", Some(ADMIN_KEY), json!({"email": "Ada@example.com", "password": "correct horse", "email_verified": true}))
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let uid = created.body["uid"].as_str().unwrap().to_string();
        assert_eq!(created.body["email_verified"], true);

        let got = s.get(&format!("/v1/admin/users/{uid}"), Some(ADMIN_KEY)).await;
        assert_eq!(got.body["email"], "ada@example.com");
        assert_error(&s.get("/v1/admin/users/nope", Some(ADMIN_KEY)).await, 404, "not-found");

        // Custom claims reach the next token, at the top level.
        let patched = s
            .send(Method::PATCH, &format!("/v1/admin/users/{uid}"), Some(ADMIN_KEY), Some(json!({"custom_claims": {"role": "editor", "admin": true}})))
            .await;
        assert_eq!(patched.status, 200, "{}", patched.body);
        let login = s.login("ada@example.com", "correct horse").await;
        let access = token(&login.body, "access_token");
        let v = s.auth.verify(&access).unwrap();
        assert_eq!(v.claims.custom["role"], "editor");
        match s.auth.verify_access_token(&access).unwrap() {
            hearth_rules::Principal::User { uid: u, claims } => {
                assert_eq!(u, uid);
                assert_eq!(claims["role"], hearth_protocol::Value::String("editor".into()));
                assert_eq!(claims["email"], hearth_protocol::Value::String("ada@example.com".into()));
            }
            other => panic!("{other:?}"),
        }
        // A user with the admin claim may use the admin API.
        assert_eq!(s.get("/v1/admin/users", Some(&access)).await.status, 200);
        let reserved = s
            .send(Method::PATCH, &format!("/v1/admin/users/{uid}"), Some(ADMIN_KEY), Some(json!({"custom_claims": {"sub": "x"}})))
            .await;
        assert_error(&reserved, 400, "invalid-argument");

        // Revoke ends the sessions.
        let r = s.post(&format!("/v1/admin/users/{uid}/revoke"), Some(ADMIN_KEY), json!({})).await;
        assert_eq!(r.status, 204);
        assert_error(&s.me(&access).await, 401, "unauthenticated");

        let del = s.send(Method::DELETE, &format!("/v1/admin/users/{uid}"), Some(ADMIN_KEY), None).await;
        assert_eq!(del.status, 204);
        assert_error(&s.get(&format!("/v1/admin/users/{uid}"), Some(ADMIN_KEY)).await, 404, "not-found");
        let login = s.login("ada@example.com", "correct horse").await;
        assert_error(&login, 401, "unauthenticated");
        // The email can be used again.
        s.sign_up("ada@example.com", "correct horse").await;
    })
    .await;
}

#[tokio::test]
async fn admin_api_refuses_plain_users_and_strangers() {
    within(60, async {
        let s = start(test_config()).await;
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let access = token(&t, "access_token");
        assert_error(
            &s.get("/v1/admin/users", Some(&access)).await,
            403,
            "permission-denied",
        );
        assert_error(
            &s.get("/v1/admin/users", None).await,
            401,
            "unauthenticated",
        );
        assert_error(
            &s.get("/v1/admin/users", Some("wrong-admin-key")).await,
            401,
            "unauthenticated",
        );
        let uid = token(&t, "uid");
        let r = s
            .send(
                Method::PATCH,
                &format!("/v1/admin/users/{uid}"),
                Some(&access),
                Some(json!({"custom_claims": {"admin": true}})),
            )
            .await;
        assert_error(&r, 403, "permission-denied");
    })
    .await;
}
