//! An independent JWT implementation (PyJWT + cryptography) verifies our
//! access tokens against the JWKS endpoint.

use serde_json::json;

use crate::common::{start, test_config, token, within};

const SCRIPT: &str = r#"
import sys, jwt
url, token = sys.argv[1], sys.argv[2]
client = jwt.PyJWKClient(url)
key = client.get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=["EdDSA"], audience="hearth", issuer="hearth")
print(claims["sub"])
try:
    jwt.decode(token, key.key, algorithms=["EdDSA"], audience="someone-else", issuer="hearth")
    print("WRONG-AUDIENCE-ACCEPTED")
except jwt.InvalidAudienceError:
    pass
"#;

#[tokio::test]
async fn pyjwt_verifies_access_tokens_against_the_jwks() {
    within(120, async {
        if std::process::Command::new("python3").arg("--version").output().is_err() {
            eprintln!("\n!!!!!!!!!! SKIPPED pyjwt_verifies_access_tokens_against_the_jwks: python3 is missing !!!!!!!!!!\n");
            return;
        }
        let s = start(test_config()).await;
        let t = s.sign_up("ada@example.com", "correct horse").await;
        let jwks_url = format!("{}/.well-known/jwks.json", s.base);
        let check = |access: String| {
            let url = jwks_url.clone();
            async move {
                let out = tokio::process::Command::new("python3")
                    .args(["-c", SCRIPT, &url, &access])
                    .output()
                    .await
                    .expect("run python3");
                assert!(
                    out.status.success(),
                    "PyJWT failed (pip install pyjwt cryptography): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
        };
        assert_eq!(check(token(&t, "access_token")).await, token(&t, "uid"));
        // After a rotation the new kid is found in the JWKS as well.
        s.post("/v1/admin/keys/rotate", Some(crate::common::ADMIN_KEY), json!({})).await;
        let r = s.refresh(token(&t, "refresh_token")).await;
        assert_eq!(check(token(&r.body, "access_token")).await, token(&t, "uid"));
    })
    .await;
}
