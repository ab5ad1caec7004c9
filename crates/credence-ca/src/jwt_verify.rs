//! JWT-SVID validation against JWT bundles (JWKS per trust domain), per the
//! SPIFFE JWT-SVID specification: `sub` names the trust domain whose bundle
//! holds the key `kid`; `aud` must contain the audience asked for; `exp`
//! must be in the future. Used by the agent's `ValidateJWTSVID` and by the
//! server to authenticate callers presenting a JWT-SVID.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use credence_core::SpiffeId;

/// Largest token accepted.
pub const MAX_TOKEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("malformed JWT-SVID: {0}")]
    Malformed(String),
    #[error("JWT-SVID algorithm {0:?} is not allowed")]
    Algorithm(Algorithm),
    #[error("no JWT bundle for trust domain {0}")]
    NoBundle(String),
    #[error("key {0:?} is not in the JWT bundle of {1}")]
    UnknownKey(String, String),
    #[error("invalid JWT-SVID: {0}")]
    Invalid(String),
}

/// Validates `token` for `audience` against `bundles` (JWKS documents by
/// trust domain ID, `spiffe://td`); returns its SPIFFE ID and claims.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundles: &HashMap<String, Vec<u8>>,
) -> Result<(SpiffeId, serde_json::Map<String, serde_json::Value>), JwtError> {
    validate(token, Some(audience), bundles, None)
}

/// Validates an OAuth access token of ours (RFC 9068: header `typ`
/// `at+jwt`, a SPIFFE ID as `sub`) against `bundles`, whatever its
/// audience; returns its subject and claims.
pub fn validate_access_token(
    token: &str,
    bundles: &HashMap<String, Vec<u8>>,
) -> Result<(SpiffeId, serde_json::Map<String, serde_json::Value>), JwtError> {
    validate(token, None, bundles, Some("at+jwt"))
}

/// Validates a token this server signed (`iss` aside): header `typ` must
/// be `typ`, the key one of `jwks` (the server's own JWKS), `exp` in the
/// future. For tokens whose `sub` is not a SPIFFE ID, such as delegated
/// tokens whose subject is a person (RFC 8693 `sub` with `act`).
pub fn validate_own(
    token: &str,
    typ: &str,
    jwks: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    if token.len() > MAX_TOKEN {
        return Err(JwtError::Malformed(format!(
            "longer than {MAX_TOKEN} bytes"
        )));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(JwtError::Algorithm(header.alg));
    }
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(typ))
    {
        return Err(JwtError::Invalid(format!("header typ is not {typ}")));
    }
    let kid = header
        .kid
        .ok_or_else(|| JwtError::Malformed("header has no kid".into()))?;
    let set: JwkSet =
        serde_json::from_slice(jwks).map_err(|e| JwtError::Invalid(format!("JWKS: {e}")))?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.clone(), "this server".into()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Invalid(e.to_string()))?;
    let mut v = Validation::new(header.alg);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub", "iss"]);
    v.leeway = 30;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map_err(|e| JwtError::Invalid(e.to_string()))?;
    match data.claims {
        serde_json::Value::Object(claims) => Ok(claims),
        _ => Err(JwtError::Malformed("claims are not an object".into())),
    }
}

fn validate(
    token: &str,
    audience: Option<&str>,
    bundles: &HashMap<String, Vec<u8>>,
    typ: Option<&str>,
) -> Result<(SpiffeId, serde_json::Map<String, serde_json::Value>), JwtError> {
    if token.len() > MAX_TOKEN {
        return Err(JwtError::Malformed(format!(
            "longer than {MAX_TOKEN} bytes"
        )));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
    // asymmetric algorithms only: an HMAC "signed" with a public key is a
    // classic forgery
    match header.alg {
        Algorithm::ES256
        | Algorithm::ES384
        | Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {}
        other => return Err(JwtError::Algorithm(other)),
    }
    match typ {
        Some(want) => {
            if !header
                .typ
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(want))
            {
                return Err(JwtError::Invalid(format!("header typ is not {want}")));
            }
        }
        // a JWT-SVID's typ, when present, is JWT or JOSE (SPIFFE JWT-SVID
        // spec §2): an access token (at+jwt) cannot pass for one
        None => {
            if let Some(t) = header.typ.as_deref()
                && !t.eq_ignore_ascii_case("JWT")
                && !t.eq_ignore_ascii_case("JOSE")
            {
                return Err(JwtError::Invalid(format!(
                    "header typ {t:?} is not a JWT-SVID's (JWT or JOSE)"
                )));
            }
        }
    }
    let kid = header
        .kid
        .ok_or_else(|| JwtError::Malformed("header has no kid".into()))?;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| JwtError::Malformed("not three parts".into()))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| JwtError::Malformed(format!("payload: {e}")))?;
    let unverified: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| JwtError::Malformed(format!("payload: {e}")))?;
    let sub = unverified
        .get("sub")
        .and_then(|s| s.as_str())
        .ok_or_else(|| JwtError::Malformed("no sub claim".into()))?;
    let sub = SpiffeId::parse(sub).map_err(|e| JwtError::Invalid(format!("sub: {e}")))?;
    let td = sub.trust_domain().id_string();
    let jwks = bundles
        .get(&td)
        .ok_or_else(|| JwtError::NoBundle(td.clone()))?;
    let set: JwkSet = serde_json::from_slice(jwks)
        .map_err(|e| JwtError::Invalid(format!("JWT bundle of {td}: {e}")))?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.clone(), td.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Invalid(e.to_string()))?;
    let mut v = Validation::new(header.alg);
    match audience {
        Some(a) => v.set_audience(&[a]),
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    v.leeway = 30;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map_err(|e| JwtError::Invalid(e.to_string()))?;
    match data.claims {
        serde_json::Value::Object(claims) => Ok((sub, claims)),
        _ => Err(JwtError::Malformed("claims are not an object".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn access_tokens_and_jwt_svids_do_not_stand_in_for_each_other() {
        let signer = crate::JwtSigner::new(Arc::new(crate::SoftwareKey::generate().unwrap()));
        let bundles = HashMap::from([(
            "spiffe://example.org".to_owned(),
            serde_json::json!({"keys": [signer.jwk("jwt-svid")]})
                .to_string()
                .into_bytes(),
        )]);
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 300;
        let claims = serde_json::json!({"sub": "spiffe://example.org/a", "aud": "svc", "exp": exp, "iat": exp - 300, "jti": "j"});
        let access = signer.sign_typed("at+jwt", &claims).unwrap();
        let svid = signer.sign_typed("JWT", &claims).unwrap();
        assert!(validate_access_token(&access, &bundles).is_ok());
        assert!(validate_jwt_svid(&svid, "svc", &bundles).is_ok());
        let e = validate_jwt_svid(&access, "svc", &bundles).unwrap_err();
        assert!(e.to_string().contains("at+jwt"), "{e}");
        let e = validate_access_token(&svid, &bundles).unwrap_err();
        assert!(e.to_string().contains("typ"), "{e}");
    }
}
