//! Credential-level types: certificate serials and revocation reasons.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CoreError;

/// A certificate serial number: 1..=20 bytes, positive, no leading zero byte
/// unless needed (RFC 5280 4.1.2.2). Printed as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// Builds a serial from 16 random bytes: the top bit is cleared so the
    /// DER INTEGER is positive and exactly 16 bytes (>= 64 bits of entropy:
    /// 127 bits).
    pub fn from_random(mut bytes: [u8; 16]) -> Self {
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            // keep a minimal encoding of a fixed length
            bytes[0] = 0x01;
        }
        Self(bytes.to_vec())
    }

    /// Builds a 16-byte serial from a millisecond timestamp (48 bits) and 80
    /// bits of CSPRNG output. The randomness is what makes serials
    /// unpredictable (>= 64 bits, as CA/Browser Forum BR 7.1 asks); the time
    /// prefix makes storage index inserts append instead of landing on a
    /// random page, which matters at thousands of issuances per second.
    pub fn from_time_and_random(unix_ms: u64, random: [u8; 10]) -> Self {
        let mut b = [0u8; 16];
        // 47 bits of milliseconds last until the year 6429; the top bit stays
        // clear so the DER INTEGER is positive, and the first byte is nonzero
        // for any date after 1970-01-03, so the encoding is exactly 16 bytes.
        let ms = (unix_ms & 0x7fff_ffff_ffff).max(1 << 40);
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random);
        Self(b.to_vec())
    }

    /// Parses from the big-endian bytes of a DER INTEGER's content.
    pub fn from_der_bytes(b: &[u8]) -> Result<Self, CoreError> {
        let trimmed: &[u8] = {
            let mut s = b;
            while s.len() > 1 && s[0] == 0 {
                s = &s[1..];
            }
            s
        };
        if trimmed.is_empty() || trimmed.len() > 20 {
            return Err(CoreError::Invalid(
                "serial must be 1 to 20 bytes".to_owned(),
            ));
        }
        Ok(Self(trimmed.to_vec()))
    }

    pub fn parse_hex(s: &str) -> Result<Self, CoreError> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        if clean.is_empty() || clean.len() > 42 {
            return Err(CoreError::Invalid(format!(
                "serial {:?} must be 1 to 20 bytes of hex",
                crate::identity::truncate(s, 64)
            )));
        }
        let padded = if clean.len() % 2 == 1 {
            format!("0{clean}")
        } else {
            clean
        };
        let bytes = hex::decode(&padded).map_err(|_| {
            CoreError::Invalid(format!(
                "serial {:?} is not hex",
                crate::identity::truncate(s, 64)
            ))
        })?;
        Self::from_der_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}
impl FromStr for Serial {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_hex(s)
    }
}
impl Serialize for Serial {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Serial::parse_hex(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// RFC 5280 section 5.3.1 CRL reason codes that a Credence operator may give.
/// `certificateHold` and `removeFromCRL` are omitted: Credence revocation is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    pub const ALL: [RevocationReason; 7] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key_compromise",
            Self::CaCompromise => "ca_compromise",
            Self::AffiliationChanged => "affiliation_changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation_of_operation",
            Self::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    /// The RFC 5280 CRLReason code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::PrivilegeWithdrawn => 9,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // accept RFC 5280 camelCase spellings too
        let norm: String = s
            .chars()
            .flat_map(|c| {
                if c.is_ascii_uppercase() {
                    vec!['_', c.to_ascii_lowercase()]
                } else if c == '-' {
                    vec!['_']
                } else {
                    vec![c]
                }
            })
            .collect();
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == norm)
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "unknown revocation reason {s:?} (expected one of: unspecified, key_compromise, ca_compromise, affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_forms() {
        let s = Serial::from_random([0xff; 16]);
        assert_eq!(s.as_bytes()[0], 0x7f);
        assert_eq!(s.as_bytes().len(), 16);
        let z = Serial::from_random([0; 16]);
        assert_eq!(z.as_bytes().len(), 16);
        assert_eq!(Serial::parse_hex(&s.to_hex()).unwrap(), s);
        assert_eq!(Serial::parse_hex("0a:bc").unwrap().to_hex(), "0abc");
        assert!(Serial::parse_hex("zz").is_err());
        assert!(Serial::parse_hex("").is_err());
        assert!(Serial::parse_hex(&"ab".repeat(21)).is_err());
    }

    #[test]
    fn time_prefixed_serials_sort_by_time_and_stay_positive() {
        let a = Serial::from_time_and_random(1_800_000_000_000, [0xff; 10]);
        let b = Serial::from_time_and_random(1_800_000_000_001, [0x00; 10]);
        assert!(a.to_hex() < b.to_hex());
        assert_eq!(a.as_bytes().len(), 16);
        assert!(a.as_bytes()[0] != 0 && a.as_bytes()[0] < 0x80);
        assert_eq!(&a.as_bytes()[6..], &[0xff; 10]);
        let z = Serial::from_time_and_random(0, [1; 10]);
        assert_eq!(z.as_bytes().len(), 16);
        assert!(z.as_bytes()[0] != 0);
    }

    #[test]
    fn reasons() {
        assert_eq!(
            "keyCompromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(
            "key_compromise".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!("superseded".parse::<RevocationReason>().unwrap().code(), 4);
        assert!("bogus".parse::<RevocationReason>().is_err());
    }
}
