//! JWT-SVIDs (SPIFFE JWT-SVID spec): compact JWS, ES256, signed through the
//! key-custody [`Signer`] so the key may live in an HSM. Verification is left
//! to standard JOSE libraries against the published JWKS.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;
use serde_json::{Value, json};

use credence_core::SpiffeId;

use crate::CaError;
use crate::keys::{Signer, sha256};

/// A JWT signing key and its stable key id (RFC 7638 thumbprint).
pub struct JwtSigner {
    key: Arc<dyn Signer>,
    kid: String,
    /// Pre-encoded protected header (it never changes for a key).
    header_b64: String,
}

/// The claims of a JWT-SVID.
#[derive(Clone, Debug, Serialize)]
pub struct JwtSvidClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    pub sub: &'a SpiffeId,
    /// One audience is written as a string, several as an array.
    pub aud: Audience<'a>,
    pub exp: i64,
    pub iat: i64,
    pub jti: &'a str,
    /// OAuth 2.0 scopes, space-separated (RFC 8693 §4.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a str>,
}

#[derive(Clone, Debug)]
pub struct Audience<'a>(pub &'a [String]);

impl Serialize for Audience<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl JwtSigner {
    pub fn new(key: Arc<dyn Signer>) -> Self {
        let kid = thumbprint(key.public_key_raw());
        let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        let header_b64 = B64.encode(header.to_string());
        Self {
            key,
            kid,
            header_b64,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn key(&self) -> &Arc<dyn Signer> {
        &self.key
    }

    /// Signs the claims into a compact JWS.
    pub fn sign(&self, claims: &JwtSvidClaims<'_>) -> Result<String, CaError> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| CaError::Signing(format!("cannot encode claims: {e}")))?;
        let mut out = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        B64.encode_string(&payload, &mut out);
        let sig = self.key.sign_jws(out.as_bytes())?;
        out.push('.');
        B64.encode_string(&sig, &mut out);
        Ok(out)
    }

    /// Signs any claims with a header of type `typ` (e.g. `at+jwt` for
    /// RFC 9068 access tokens, so they cannot pass for JWT-SVIDs).
    pub fn sign_typed(&self, typ: &str, claims: &impl Serialize) -> Result<String, CaError> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": typ});
        let payload = serde_json::to_vec(claims)
            .map_err(|e| CaError::Signing(format!("cannot encode claims: {e}")))?;
        let mut out = B64.encode(header.to_string());
        out.push('.');
        B64.encode_string(&payload, &mut out);
        let sig = self.key.sign_jws(out.as_bytes())?;
        out.push('.');
        B64.encode_string(&sig, &mut out);
        Ok(out)
    }

    /// The public key as a JWK (RFC 7517), for JWKS and SPIFFE bundles.
    pub fn jwk(&self, use_: &str) -> Value {
        let (x, y) = xy(self.key.public_key_raw());
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "kid": self.kid,
            "use": use_,
            "alg": "ES256",
        })
    }
}

fn xy(point: &[u8]) -> (String, String) {
    // uncompressed point: 0x04 || X(32) || Y(32)
    if point.len() == 65 {
        (B64.encode(&point[1..33]), B64.encode(&point[33..]))
    } else {
        (String::new(), String::new())
    }
}

/// RFC 7638 JWK thumbprint of a P-256 public key, base64url.
pub fn thumbprint(point: &[u8]) -> String {
    let (x, y) = xy(point);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    B64.encode(sha256(canonical.as_bytes()))
}

/// An `x509-svid` JWK for a SPIFFE bundle: the CA's key plus its certificate.
pub fn x509_bundle_jwk(cert_der: &[u8], point: &[u8]) -> Value {
    let (x, y) = xy(point);
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": x,
        "y": y,
        "use": "x509-svid",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SoftwareKey;

    #[test]
    fn signs_verifiable_es256() {
        let signer = JwtSigner::new(Arc::new(SoftwareKey::generate().unwrap()));
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let aud = vec!["api".to_string()];
        let now = 1_700_000_000;
        let tok = signer
            .sign(&JwtSvidClaims {
                iss: None,
                sub: &id,
                aud: Audience(&aud),
                exp: now + 300,
                iat: now,
                jti: "abc",
                scope: None,
            })
            .unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(signer.jwk("sig")).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["api"]);
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&tok, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "spiffe://example.org/w");
        assert_eq!(data.header.kid.as_deref(), Some(signer.kid()));
    }
}
