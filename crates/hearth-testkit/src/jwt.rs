//! Forging JWTs for attack tests: read a token's claims, re-sign nothing.
//!
//! Each helper produces a token that a correct verifier must refuse (a
//! payload edited under the original signature, an unsigned `alg: none`
//! token), so tests can show that the server does.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// The decoded payload of a compact JWT (`Null` if it is not one).
pub fn claims(token: &str) -> Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// `token` with its payload edited by `edit` and the original header and
/// signature kept: a tampered token.
pub fn with_payload(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = claims(token);
    edit(&mut payload);
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    format!(
        "{}.{payload}.{}",
        parts.first().copied().unwrap_or_default(),
        parts.get(2).copied().unwrap_or_default()
    )
}

/// An unsigned token (`{"alg":"none"}`, empty signature) with these claims.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_edited_payload_keeps_header_and_signature() {
        let token = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode("{\"alg\":\"EdDSA\"}"),
            URL_SAFE_NO_PAD.encode("{\"sub\":\"a\"}")
        );
        let tampered = with_payload(&token, |c| c["sub"] = json!("b"));
        assert_eq!(claims(&tampered), json!({"sub": "b"}));
        assert!(tampered.ends_with(".sig"));
        assert_eq!(
            tampered.split('.').next(),
            token.split('.').next(),
            "header unchanged"
        );
        assert_eq!(claims(&unsigned(&json!({"sub": "x"}))), json!({"sub": "x"}));
    }
}
