//! The audit event schema and its canonical leaf encoding.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::AuditError;
use crate::hash::{Hash, hash_leaf};

/// The schema version this crate writes and reads.
pub const EVENT_VERSION: u32 = 1;

/// Largest leaf (encoded event) accepted or produced, in bytes (64 KiB).
pub const MAX_LEAF_BYTES: usize = 64 * 1024;

/// Largest magnitude of a number in an event: 2^53 − 1, so that every
/// number survives a round trip through an IEEE 754 double.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Deepest nesting of arrays and objects inside `details`.
pub const MAX_DETAILS_DEPTH: usize = 32;

/// Who did it, and how they proved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The actor's identity (admin name, SPIFFE ID, `system`, …). Non-empty.
    pub id: String,
    /// How the actor authenticated (`admin-token`, `mtls`, `jwt`, `none`, …).
    pub auth: String,
}

/// Whether the action took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did.
    Success,
    /// It was refused or failed.
    Failure,
}

/// What a credential issuance produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuance {
    /// Serial of the issued credential.
    pub serial: String,
    /// SPIFFE ID in the credential.
    pub spiffe_id: String,
    /// Lifetime in seconds (at most 2^53 − 1).
    pub ttl_seconds: u64,
    /// SHA-256 of the subject public key (SPKI DER), 64 lowercase hex digits.
    pub key_sha256: String,
}

/// One audit log entry (schema version 1). See the crate docs for the exact
/// leaf encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Schema version: [`EVENT_VERSION`].
    pub v: u32,
    /// When it happened, whole seconds, encoded in UTC.
    #[serde(with = "rfc3339_seconds")]
    pub time: OffsetDateTime,
    /// Who did it.
    pub actor: Actor,
    /// What was done, e.g. `identity.create`, `credential.issue`. Non-empty.
    pub action: String,
    /// What it was done to (an identity id, a serial, a CA id, …).
    pub target: String,
    /// Whether it took effect.
    pub outcome: Outcome,
    /// Why (the refusal reason for failures, a revocation reason, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The client's network address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// For credential issuance: what was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuance: Option<Issuance>,
    /// For policy decisions: the policies that decided, in decision order.
    pub policies: Vec<String>,
    /// Anything else, as JSON (integers only, no floats).
    pub details: Map<String, Value>,
}

impl AuditEvent {
    /// A version-1 event with no optional fields, its time cut to whole
    /// seconds and moved to UTC.
    pub fn new(
        time: OffsetDateTime,
        actor: Actor,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        let time = time.checked_to_offset(UtcOffset::UTC).unwrap_or(time);
        let time = time.replace_nanosecond(0).unwrap_or(time);
        Self {
            v: EVENT_VERSION,
            time,
            actor,
            action: action.into(),
            target: target.into(),
            outcome,
            reason: None,
            request_id: None,
            client_addr: None,
            issuance: None,
            policies: Vec::new(),
            details: Map::new(),
        }
    }

    fn validate(&self) -> Result<(), AuditError> {
        if self.v != EVENT_VERSION {
            return Err(AuditError::InvalidEvent(format!(
                "unsupported version {}",
                self.v
            )));
        }
        if self.actor.id.is_empty() {
            return Err(AuditError::InvalidEvent("empty actor id".into()));
        }
        if self.action.is_empty() {
            return Err(AuditError::InvalidEvent("empty action".into()));
        }
        if let Some(iss) = &self.issuance {
            let k = iss.key_sha256.as_bytes();
            if k.len() != 64 || !k.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(AuditError::InvalidEvent(
                    "key_sha256 is not 64 lowercase hex digits".into(),
                ));
            }
        }
        Ok(())
    }

    /// The canonical leaf encoding of the event (see the crate docs): the
    /// exact bytes that are hashed into the tree.
    pub fn leaf_bytes(&self) -> Result<Vec<u8>, AuditError> {
        self.validate()?;
        let value =
            serde_json::to_value(self).map_err(|e| AuditError::InvalidEvent(e.to_string()))?;
        let mut out = Vec::with_capacity(256);
        write_canonical(&mut out, &value, 0)?;
        if out.len() > MAX_LEAF_BYTES {
            return Err(AuditError::LeafTooLarge {
                len: out.len(),
                max: MAX_LEAF_BYTES,
            });
        }
        Ok(out)
    }

    /// The leaf hash of the event: `SHA-256(0x00 || leaf_bytes)`.
    pub fn leaf_hash(&self) -> Result<Hash, AuditError> {
        Ok(hash_leaf(&self.leaf_bytes()?))
    }

    /// Decodes leaf bytes, accepting only the canonical encoding: the bytes
    /// must be exactly what [`AuditEvent::leaf_bytes`] gives for the event.
    pub fn from_leaf_bytes(bytes: &[u8]) -> Result<Self, AuditError> {
        if bytes.len() > MAX_LEAF_BYTES {
            return Err(AuditError::LeafTooLarge {
                len: bytes.len(),
                max: MAX_LEAF_BYTES,
            });
        }
        let event: Self =
            serde_json::from_slice(bytes).map_err(|e| AuditError::LeafDecode(e.to_string()))?;
        let again = event.leaf_bytes()?;
        if again != bytes {
            return Err(AuditError::NonCanonicalLeaf);
        }
        Ok(event)
    }
}

/// Writes `value` as canonical JSON: object members sorted by the bytes of
/// their keys, no whitespace, minimal string escapes, integers only.
fn write_canonical(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<(), AuditError> {
    // depth 0 is the event itself and 1 is `details`
    if depth > MAX_DETAILS_DEPTH + 1 {
        return Err(AuditError::InvalidEvent("details nest too deeply".into()));
    }
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let text = if let Some(u) = n.as_u64() {
                (u <= MAX_SAFE_INTEGER).then(|| u.to_string())
            } else if let Some(i) = n.as_i64() {
                (i.unsigned_abs() <= MAX_SAFE_INTEGER).then(|| i.to_string())
            } else {
                None
            };
            let Some(text) = text else {
                return Err(AuditError::InvalidEvent(format!(
                    "number {n} is not an integer within ±(2^53 − 1)"
                )));
            };
            out.extend_from_slice(text.as_bytes());
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, item, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Writes a JSON string with the minimal escapes: `\"`, `\\`, `\b`, `\f`,
/// `\n`, `\r`, `\t`, `\u00xx` (lowercase hex) for the other characters below
/// U+0020; everything else as raw UTF-8.
fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0x0f)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds, years
/// 0000–9999).
pub fn format_time(t: OffsetDateTime) -> Result<String, AuditError> {
    let utc = t
        .checked_to_offset(UtcOffset::UTC)
        .ok_or_else(|| AuditError::InvalidEvent("time out of range".into()))?;
    if utc.nanosecond() != 0 {
        return Err(AuditError::InvalidEvent(
            "time has a fraction of a second".into(),
        ));
    }
    if !(0..=9999).contains(&utc.year()) {
        return Err(AuditError::InvalidEvent(
            "time is outside years 0000-9999".into(),
        ));
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    ))
}

/// Parses exactly the form [`format_time`] writes.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, AuditError> {
    let bad = || AuditError::InvalidEvent(format!("time {s:?} is not YYYY-MM-DDTHH:MM:SSZ"));
    let b = s.as_bytes();
    if b.len() != 20 {
        return Err(bad());
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        };
        if !ok {
            return Err(bad());
        }
    }
    let num = |from: usize, to: usize| -> u32 {
        b.get(from..to)
            .unwrap_or_default()
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let year = i32::try_from(num(0, 4)).map_err(|_| bad())?;
    let month = u8::try_from(num(5, 7)).map_err(|_| bad())?;
    let month = Month::try_from(month).map_err(|_| bad())?;
    let day = u8::try_from(num(8, 10)).map_err(|_| bad())?;
    let date = Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    let hour = u8::try_from(num(11, 13)).map_err(|_| bad())?;
    let minute = u8::try_from(num(14, 16)).map_err(|_| bad())?;
    let second = u8::try_from(num(17, 19)).map_err(|_| bad())?;
    let time = Time::from_hms(hour, minute, second).map_err(|_| bad())?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

mod rfc3339_seconds {
    use serde::{Deserialize, Deserializer, Serializer, de, ser};
    use time::OffsetDateTime;

    pub(super) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format_time(*t).map_err(ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_time(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample() -> AuditEvent {
        let mut e = AuditEvent::new(
            datetime!(2026-03-04 05:06:07.89 +02:00),
            Actor {
                id: "admin".into(),
                auth: "admin-token".into(),
            },
            "credential.issue",
            "id-123",
            Outcome::Success,
        );
        e.request_id = Some("req-1".into());
        e.issuance = Some(Issuance {
            serial: "01ab".into(),
            spiffe_id: "spiffe://example.org/svc".into(),
            ttl_seconds: 3600,
            key_sha256: "ab".repeat(32),
        });
        e.policies = vec!["p2".into(), "p1".into()];
        e.details.insert("zeta".into(), Value::from(-5));
        e.details.insert(
            "alpha".into(),
            serde_json::json!({"b": [1, "x\n\u{1}é"], "a": null}),
        );
        e
    }

    #[test]
    fn canonical_encoding_is_exact() {
        let e = sample();
        let bytes = e.leaf_bytes().unwrap();
        let want = concat!(
            r#"{"action":"credential.issue","actor":{"auth":"admin-token","id":"admin"},"#,
            r#""details":{"alpha":{"a":null,"b":[1,"x\n\u0001é"]},"zeta":-5},"#,
            r#""issuance":{"key_sha256":"abababababababababababababababababababababababababababababababab","#,
            r#""serial":"01ab","spiffe_id":"spiffe://example.org/svc","ttl_seconds":3600},"#,
            r#""outcome":"success","policies":["p2","p1"],"request_id":"req-1","#,
            r#""target":"id-123","time":"2026-03-04T03:06:07Z","v":1}"#
        );
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), want);
        let back = AuditEvent::from_leaf_bytes(&bytes).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.leaf_bytes().unwrap(), bytes);
    }

    #[test]
    fn minimal_event_has_empty_policies_and_details() {
        let e = AuditEvent::new(
            datetime!(2026-01-01 00:00:00 UTC),
            Actor {
                id: "system".into(),
                auth: "none".into(),
            },
            "ca.create",
            "",
            Outcome::Failure,
        );
        assert_eq!(
            String::from_utf8(e.leaf_bytes().unwrap()).unwrap(),
            r#"{"action":"ca.create","actor":{"auth":"none","id":"system"},"details":{},"outcome":"failure","policies":[],"target":"","time":"2026-01-01T00:00:00Z","v":1}"#
        );
    }

    #[test]
    fn non_canonical_inputs_are_refused() {
        let good = String::from_utf8(sample().leaf_bytes().unwrap()).unwrap();
        let variants = [
            good.replacen("{", "{ ", 1),
            format!("{good}\n"),
            good.replacen(r#""v":1"#, r#""v":1.0"#, 1),
            good.replacen(r#""v":1}"#, r#""v":1,"reason":null}"#, 1),
            good.replacen(r#""id":"admin""#, r#""id":"\u0061dmin""#, 1),
            good.replacen(r#""zeta":-5"#, r#""zeta":-5,"zeta":-5"#, 1),
            good.replacen("2026-03-04T03:06:07Z", "2026-03-04T03:06:07+00:00", 1),
            good.replacen("2026-03-04T03:06:07Z", "2026-03-04T03:06:07.0Z", 1),
            // keys out of order
            good.replacen(
                r#""auth":"admin-token","id":"admin""#,
                r#""id":"admin","auth":"admin-token""#,
                1,
            ),
        ];
        for v in variants {
            assert!(
                AuditEvent::from_leaf_bytes(v.as_bytes()).is_err(),
                "accepted {v}"
            );
        }
        let unknown = good.replacen(r#""v":1}"#, r#""v":1,"extra":1}"#, 1);
        assert!(matches!(
            AuditEvent::from_leaf_bytes(unknown.as_bytes()),
            Err(AuditError::LeafDecode(_))
        ));
        let v2 = good.replacen(r#""v":1}"#, r#""v":2}"#, 1);
        assert!(matches!(
            AuditEvent::from_leaf_bytes(v2.as_bytes()),
            Err(AuditError::InvalidEvent(_))
        ));
        assert!(AuditEvent::from_leaf_bytes(b"").is_err());
        assert!(AuditEvent::from_leaf_bytes(b"\xff").is_err());
        assert!(AuditEvent::from_leaf_bytes(&vec![b' '; MAX_LEAF_BYTES + 1]).is_err());
    }

    #[test]
    fn encoding_rules_are_enforced() {
        let mut e = sample();
        e.details.insert("f".into(), serde_json::json!(1.5));
        assert!(matches!(e.leaf_bytes(), Err(AuditError::InvalidEvent(_))));
        let mut e = sample();
        e.details
            .insert("big".into(), Value::from(MAX_SAFE_INTEGER + 1));
        assert!(e.leaf_bytes().is_err());
        e.details
            .insert("big".into(), Value::from(MAX_SAFE_INTEGER));
        assert!(e.leaf_bytes().is_ok());
        e.details
            .insert("big".into(), Value::from(-(MAX_SAFE_INTEGER as i64)));
        assert!(e.leaf_bytes().is_ok());
        let mut e = sample();
        e.time = datetime!(2026-01-01 00:00:00.5 UTC);
        assert!(e.leaf_bytes().is_err());
        let mut e = sample();
        e.v = 2;
        assert!(e.leaf_bytes().is_err());
        let mut e = sample();
        if let Some(i) = e.issuance.as_mut() {
            i.key_sha256 = "AB".repeat(32);
        }
        assert!(e.leaf_bytes().is_err());
        let mut e = sample();
        e.action.clear();
        assert!(e.leaf_bytes().is_err());
        let mut e = sample();
        let mut deep = Value::Null;
        for _ in 0..40 {
            deep = Value::Array(vec![deep]);
        }
        e.details.insert("deep".into(), deep);
        assert!(e.leaf_bytes().is_err());
        let mut e = sample();
        e.details
            .insert("huge".into(), Value::from("x".repeat(MAX_LEAF_BYTES)));
        assert!(matches!(
            e.leaf_bytes(),
            Err(AuditError::LeafTooLarge { .. })
        ));
    }

    #[test]
    fn time_format() {
        assert_eq!(
            format_time(datetime!(0000-01-01 00:00:00 UTC)).unwrap(),
            "0000-01-01T00:00:00Z"
        );
        assert_eq!(
            parse_time("2024-02-29T23:59:59Z").unwrap(),
            datetime!(2024-02-29 23:59:59 UTC)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01t00:00:00Z",
            "2024-01-01T00:00:00z",
            "+024-01-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert!(format_time(datetime!(-0001-01-01 00:00:00 UTC)).is_err());
    }
}
