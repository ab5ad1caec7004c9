//! JWT-SVID validation for `ValidateJWTSVID`: [`credence_ca::jwt_verify`]
//! against the JWT bundles the agent holds, with the claims as a protobuf
//! `Struct`.

use std::collections::HashMap;

use prost_types::value::Kind;

pub use credence_ca::jwt_verify::{JwtError, MAX_TOKEN};

/// Validates `token` for `audience`; returns its SPIFFE ID and claims.
pub fn validate(
    token: &str,
    audience: &str,
    bundles: &HashMap<String, Vec<u8>>,
) -> Result<(String, prost_types::Struct), JwtError> {
    let (sub, claims) = credence_ca::jwt_verify::validate_jwt_svid(token, audience, bundles)?;
    let fields = claims
        .into_iter()
        .map(|(k, v)| (k, json_to_prost(v)))
        .collect();
    Ok((sub.to_string(), prost_types::Struct { fields }))
}

fn json_to_prost(v: serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_prost).collect(),
        }),
        J::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
