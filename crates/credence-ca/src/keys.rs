//! Key custody: the [`Signer`] trait that every CA and JWT key sits behind, a
//! software implementation on aws-lc-rs, and at-rest wrapping of software keys.
//!
//! Issuance code never sees private key bytes: it asks a [`Signer`] to sign.
//! That keeps the door open for PKCS#11 (HSM) custody with no change above
//! this module.

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
};
use zeroize::Zeroizing;

use crate::CaError;

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Algorithms a Credence signing key may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
}

/// A private key held somewhere (memory, HSM) that can sign.
pub trait Signer: Send + Sync + 'static {
    fn algorithm(&self) -> KeyAlgorithm;
    /// The raw public key (for P-256: the 65-byte uncompressed point).
    fn public_key_raw(&self) -> &[u8];
    /// SubjectPublicKeyInfo DER.
    fn public_key_spki(&self) -> Vec<u8> {
        let mut v = P256_SPKI_PREFIX.to_vec();
        v.extend_from_slice(self.public_key_raw());
        v
    }
    /// Signs for X.509 (ASN.1 DER ECDSA-Sig-Value).
    fn sign_x509(&self, msg: &[u8]) -> Result<Vec<u8>, CaError>;
    /// Signs for JWS (fixed-width r || s).
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, CaError>;
}

/// A P-256 key in process memory. Not `Debug`; the PKCS#8 bytes are zeroized on drop.
pub struct SoftwareKey {
    asn1: EcdsaKeyPair,
    fixed: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl SoftwareKey {
    pub fn generate() -> Result<Self, CaError> {
        let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| CaError::Key("could not generate a P-256 key".into()))?;
        let doc = k
            .to_pkcs8v1()
            .map_err(|_| CaError::Key("could not export a P-256 key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CaError> {
        let asn1 = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map_err(|e| CaError::Key(format!("not a P-256 PKCS#8 key: {e}")))?;
        let fixed = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| CaError::Key(format!("not a P-256 PKCS#8 key: {e}")))?;
        Ok(Self {
            asn1,
            fixed,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// PKCS#8 PEM (`PRIVATE KEY`), zeroized on drop.
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.pkcs8.as_slice().to_vec(),
        )))
    }
}

impl Signer for SoftwareKey {
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::EcdsaP256
    }
    fn public_key_raw(&self) -> &[u8] {
        self.asn1.public_key().as_ref()
    }
    fn public_key_spki(&self) -> Vec<u8> {
        match self.asn1.public_key().as_der() {
            Ok(d) => d.as_ref().to_vec(),
            Err(_) => {
                let mut v = P256_SPKI_PREFIX.to_vec();
                v.extend_from_slice(self.public_key_raw());
                v
            }
        }
    }
    fn sign_x509(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.asn1
            .sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| CaError::Signing("ECDSA signing failed".into()))
    }
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.fixed
            .sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| CaError::Signing("ECDSA signing failed".into()))
    }
}

/// The CSPRNG of the crypto provider, as a [`credence_core::Random`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRandom;

impl credence_core::Random for SystemRandom {
    fn fill(&self, buf: &mut [u8]) {
        // aws-lc's RNG does not fail in practice; if it ever does, refuse to
        // continue with predictable bytes.
        if aws_lc_rs::rand::SystemRandom::new().fill(buf).is_err() {
            std::process::abort();
        }
    }
}

const WRAP_MAGIC: &[u8; 4] = b"CKW1";

/// Encrypts private keys at rest with AES-256-GCM under a key-encryption key
/// (KEK). The key id is bound as associated data, so a wrapped key cannot be
/// swapped between records. Format: `CKW1 || nonce(12) || ciphertext || tag`.
pub struct KeyWrapper {
    kek: RandomizedNonceKey,
}

impl KeyWrapper {
    pub const KEK_LEN: usize = 32;

    pub fn new(kek: &[u8]) -> Result<Self, CaError> {
        if kek.len() != Self::KEK_LEN {
            return Err(CaError::Key(format!(
                "key-encryption key must be {} bytes, got {}",
                Self::KEK_LEN,
                kek.len()
            )));
        }
        let kek = RandomizedNonceKey::new(&AES_256_GCM, kek)
            .map_err(|_| CaError::Key("invalid key-encryption key".into()))?;
        Ok(Self { kek })
    }

    pub fn wrap(&self, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, CaError> {
        let mut buf = plaintext.to_vec();
        let nonce = self
            .kek
            .seal_in_place_append_tag(Aad::from(key_id.as_bytes()), &mut buf)
            .map_err(|_| CaError::Key("key wrapping failed".into()))?;
        let mut out = Vec::with_capacity(4 + 12 + buf.len());
        out.extend_from_slice(WRAP_MAGIC);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(out)
    }

    pub fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CaError> {
        if wrapped.len() < 4 + 12 + 16 || &wrapped[..4] != WRAP_MAGIC {
            return Err(CaError::Key(format!(
                "wrapped key {key_id} has an unknown format"
            )));
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped[4..16])
            .map_err(|_| CaError::Key("bad nonce".into()))?;
        let mut buf = Zeroizing::new(wrapped[16..].to_vec());
        let n = self
            .kek
            .open_in_place(nonce, Aad::from(key_id.as_bytes()), &mut buf)
            .map_err(|_| {
                CaError::Key(format!(
                    "cannot decrypt key {key_id}: wrong key-encryption key or corrupted data"
                ))
            })?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// Incremental SHA-256 (for large inputs such as executables).
pub struct Sha256Stream(digest::Context);

impl Sha256Stream {
    pub fn new() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Self::new()
    }
}

/// Lowercase hex SHA-256 of some bytes (key fingerprints, token hashes).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_binding() {
        let w = KeyWrapper::new(&[7u8; 32]).unwrap();
        let k = SoftwareKey::generate().unwrap();
        let wrapped = w.wrap("int-1", k.pkcs8_der()).unwrap();
        let back = w.unwrap_key("int-1", &wrapped).unwrap();
        let k2 = SoftwareKey::from_pkcs8(&back).unwrap();
        assert_eq!(k.public_key_raw(), k2.public_key_raw());
        assert!(w.unwrap_key("int-2", &wrapped).is_err(), "key id is bound");
        let other = KeyWrapper::new(&[8u8; 32]).unwrap();
        assert!(other.unwrap_key("int-1", &wrapped).is_err());
        assert!(w.unwrap_key("int-1", b"garbage").is_err());
        assert!(KeyWrapper::new(&[0u8; 16]).is_err());
    }

    #[test]
    fn spki_forms_agree() {
        let k = SoftwareKey::generate().unwrap();
        let mut manual = P256_SPKI_PREFIX.to_vec();
        manual.extend_from_slice(k.public_key_raw());
        assert_eq!(k.public_key_spki(), manual);
    }
}
