//! C2SP signed notes with Ed25519 keys (`c2sp.org/signed-note`), compatible
//! with `golang.org/x/mod/sumdb/note`.

use std::fmt;

use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::AuditError;

/// Largest signed note accepted or produced, in bytes (1 MiB).
pub const MAX_NOTE_BYTES: usize = 1 << 20;

/// Most signature lines accepted in one note.
pub const MAX_SIGNATURES: usize = 100;

/// Signature type byte of Ed25519 note keys.
pub const ALG_ED25519: u8 = 0x01;

/// Starts every signature line: an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Something that signs notes under a key name: a software key here, an HSM
/// or KMS later.
pub trait NoteSigner {
    /// The key name (non-empty, no spaces, no `+`).
    fn name(&self) -> &str;
    /// The Ed25519 public key.
    fn public_key(&self) -> [u8; 32];
    /// An Ed25519 signature of `msg`.
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], AuditError>;
}

/// Whether `name` can be a note key name: non-empty, with no Unicode white
/// space, no `+` and no control character.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// The note key id of an Ed25519 key: the first four bytes, big-endian, of
/// `SHA-256(name || 0x0A || 0x01 || public_key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut ctx = Context::new(&SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ALG_ED25519]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let mut id = [0u8; 4];
    for (o, i) in id.iter_mut().zip(digest.as_ref()) {
        *o = *i;
    }
    u32::from_be_bytes(id)
}

fn check_name(name: &str) -> Result<(), AuditError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(AuditError::InvalidKeyName(name.to_owned()))
    }
}

/// A software Ed25519 note signer (aws-lc-rs). Deliberately not `Debug`.
pub struct Ed25519NoteSigner {
    name: String,
    key_pair: Ed25519KeyPair,
    public_key: [u8; 32],
}

impl Ed25519NoteSigner {
    fn wrap(name: &str, key_pair: Ed25519KeyPair) -> Result<Self, AuditError> {
        check_name(name)?;
        let public_key: [u8; 32] = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| AuditError::Key("ed25519 public key is not 32 bytes"))?;
        Ok(Self {
            name: name.to_owned(),
            key_pair,
            public_key,
        })
    }

    /// A fresh random key.
    pub fn generate(name: &str) -> Result<Self, AuditError> {
        let key_pair = Ed25519KeyPair::generate()
            .map_err(|_| AuditError::Key("ed25519 key generation failed"))?;
        Self::wrap(name, key_pair)
    }

    /// A key from an unencrypted PKCS#8 (v1 or v2) DER document.
    pub fn from_pkcs8(name: &str, pkcs8_der: &[u8]) -> Result<Self, AuditError> {
        let key_pair = Ed25519KeyPair::from_pkcs8(pkcs8_der)
            .map_err(|_| AuditError::Key("not an ed25519 pkcs#8 private key"))?;
        Self::wrap(name, key_pair)
    }

    /// A key from its 32-byte RFC 8032 seed (the form inside Go's
    /// `PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>` strings).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, AuditError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| AuditError::Key("ed25519 seed rejected"))?;
        Self::wrap(name, key_pair)
    }

    /// The private key as a PKCS#8 v2 DER document, for storing.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, AuditError> {
        let doc = self
            .key_pair
            .to_pkcs8()
            .map_err(|_| AuditError::Key("ed25519 pkcs#8 export failed"))?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key_id: key_id(&self.name, &self.public_key),
            public_key: self.public_key,
        }
    }
}

impl NoteSigner for Ed25519NoteSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], AuditError> {
        let sig = self
            .key_pair
            .try_sign(msg)
            .map_err(|_| AuditError::Signing("ed25519 signing failed".into()))?;
        sig.as_ref()
            .try_into()
            .map_err(|_| AuditError::Signing("ed25519 signature is not 64 bytes".into()))
    }
}

/// A note verifier: a key name and Ed25519 public key, with its key id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Verifier {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl Verifier {
    /// A verifier for an Ed25519 public key under `name`.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, AuditError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, &public_key),
            public_key,
        })
    }

    /// The verifier of a signer's key.
    pub fn for_signer(signer: &dyn NoteSigner) -> Result<Self, AuditError> {
        Self::new(signer.name(), signer.public_key())
    }

    /// Parses a verifier key string `<name>+<8 hex key id>+<base64(0x01 ||
    /// 32-byte Ed25519 public key)>`, checking the key id against the key.
    pub fn from_vkey(vkey: &str) -> Result<Self, AuditError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuditError::MalformedVerifierKey(
                "expected <name>+<key id>+<key>",
            ));
        };
        if !is_valid_key_name(name) {
            return Err(AuditError::MalformedVerifierKey("invalid key name"));
        }
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuditError::MalformedVerifierKey(
                "key id is not 8 hex digits",
            ));
        }
        let id = u32::from_str_radix(id_hex, 16)
            .map_err(|_| AuditError::MalformedVerifierKey("key id is not 8 hex digits"))?;
        let key = STANDARD
            .decode(key_b64)
            .map_err(|_| AuditError::MalformedVerifierKey("key is not standard base64"))?;
        let Some((&alg, public_key)) = key.split_first() else {
            return Err(AuditError::MalformedVerifierKey("key is empty"));
        };
        if alg != ALG_ED25519 {
            return Err(AuditError::MalformedVerifierKey(
                "unknown signature algorithm",
            ));
        }
        let public_key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| AuditError::MalformedVerifierKey("ed25519 key is not 32 bytes"))?;
        let verifier = Self::new(name, public_key)
            .map_err(|_| AuditError::MalformedVerifierKey("invalid key name"))?;
        if verifier.key_id != id {
            return Err(AuditError::MalformedVerifierKey(
                "key id does not match the key",
            ));
        }
        Ok(verifier)
    }

    /// The verifier key string (`vkey`):
    /// `<name>+<8 lowercase hex key id>+<base64(0x01 || public key)>`.
    pub fn to_vkey(&self) -> String {
        let mut key = Vec::with_capacity(33);
        key.push(ALG_ED25519);
        key.extend_from_slice(&self.public_key);
        format!("{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(key))
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Whether `sig` is a valid Ed25519 signature of `msg` by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_vkey())
    }
}

impl std::str::FromStr for Verifier {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_vkey(s)
    }
}

/// Checks the note rules that apply to the whole text: size, no control
/// characters other than newline.
fn check_note_chars(text: &str) -> Result<(), AuditError> {
    if text.len() > MAX_NOTE_BYTES {
        return Err(AuditError::NoteTooLarge {
            len: text.len(),
            max: MAX_NOTE_BYTES,
        });
    }
    if text.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(AuditError::MalformedNote(
            "control character other than newline",
        ));
    }
    Ok(())
}

/// Signs `body` (the note text, ending in a newline) and returns the signed
/// note: `body`, a blank line, and the line
/// `— <name> <base64(4-byte big-endian key id || 64-byte signature)>\n`.
///
/// The signature is checked against the signer's public key before it is
/// used, so a faulty HSM cannot produce an unverifiable note.
pub fn sign_note(body: &str, signer: &dyn NoteSigner) -> Result<String, AuditError> {
    check_note_chars(body)?;
    if !body.ends_with('\n') {
        return Err(AuditError::MalformedNote(
            "text does not end with a newline",
        ));
    }
    let name = signer.name();
    check_name(name)?;
    let verifier = Verifier::new(name, signer.public_key())?;
    let sig = signer.sign(body.as_bytes())?;
    if !verifier.verify(body.as_bytes(), &sig) {
        return Err(AuditError::Signing(
            "signer returned a signature its public key rejects".into(),
        ));
    }
    let mut blob = Vec::with_capacity(68);
    blob.extend_from_slice(&verifier.key_id.to_be_bytes());
    blob.extend_from_slice(&sig);
    let note = format!("{body}\n{SIG_PREFIX}{name} {}\n", STANDARD.encode(blob));
    if note.len() > MAX_NOTE_BYTES {
        return Err(AuditError::NoteTooLarge {
            len: note.len(),
            max: MAX_NOTE_BYTES,
        });
    }
    Ok(note)
}

/// Opens a signed note: checks its format and signatures and returns the
/// text (ending in a newline) with the names of the keys whose signatures
/// verified (each once, in order of appearance).
///
/// Signatures from keys not in `verifiers` (by name *and* key id) are
/// ignored, as the spec requires; a signature from a known key that fails
/// is an error, and so is a note with no verified signature.
pub fn open_note(text: &str, verifiers: &[Verifier]) -> Result<(String, Vec<String>), AuditError> {
    check_note_chars(text)?;
    // the text ends at the last blank line; signatures follow it
    let Some(split) = text.rfind("\n\n") else {
        return Err(AuditError::MalformedNote("no blank line before signatures"));
    };
    let (body, sigs) = (&text[..=split], &text[split + 2..]);
    if sigs.is_empty() {
        return Err(AuditError::MalformedNote("no signature lines"));
    }
    let Some(sigs) = sigs.strip_suffix('\n') else {
        return Err(AuditError::MalformedNote(
            "signature line does not end with a newline",
        ));
    };
    let mut verified: Vec<(String, u32)> = Vec::new();
    for (count, line) in sigs.split('\n').enumerate() {
        if count >= MAX_SIGNATURES {
            return Err(AuditError::MalformedNote("too many signatures"));
        }
        let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
            return Err(AuditError::MalformedNote(
                "signature line does not start with an em dash and a space",
            ));
        };
        let Some((name, b64)) = rest.split_once(' ') else {
            return Err(AuditError::MalformedNote("signature line has no signature"));
        };
        if !is_valid_key_name(name) {
            return Err(AuditError::MalformedNote("invalid key name in signature"));
        }
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| AuditError::MalformedNote("signature is not standard base64"))?;
        let (id_bytes, sig) = match blob.split_first_chunk::<4>() {
            Some((id, sig)) if !sig.is_empty() => (id, sig),
            _ => return Err(AuditError::MalformedNote("signature is too short")),
        };
        let id = u32::from_be_bytes(*id_bytes);
        let mut known = verifiers
            .iter()
            .filter(|v| v.name == name && v.key_id == id);
        let Some(verifier) = known.next() else {
            continue;
        };
        if known.next().is_some() {
            return Err(AuditError::AmbiguousKey {
                name: name.to_owned(),
                key_id: id,
            });
        }
        if !verifier.verify(body.as_bytes(), sig) {
            return Err(AuditError::InvalidSignature {
                name: name.to_owned(),
                key_id: id,
            });
        }
        if !verified.iter().any(|(n, i)| n == name && *i == id) {
            verified.push((name.to_owned(), id));
        }
    }
    if verified.is_empty() {
        return Err(AuditError::NoVerifiableSignatures);
    }
    Ok((
        body.to_owned(),
        verified.into_iter().map(|(n, _)| n).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_open_round_trip() {
        let signer = Ed25519NoteSigner::generate("log.example/audit").unwrap();
        let v = signer.verifier();
        assert_eq!(Verifier::from_vkey(&v.to_vkey()).unwrap(), v);
        assert_eq!(Verifier::for_signer(&signer).unwrap(), v);
        let note = sign_note("hello\nworld\n", &signer).unwrap();
        let (body, names) = open_note(&note, std::slice::from_ref(&v)).unwrap();
        assert_eq!(body, "hello\nworld\n");
        assert_eq!(names, vec!["log.example/audit".to_owned()]);

        // the text may itself hold blank lines: the last one separates
        let note = sign_note("a\n\nb\n", &signer).unwrap();
        assert_eq!(
            open_note(&note, std::slice::from_ref(&v)).unwrap().0,
            "a\n\nb\n"
        );
    }

    #[test]
    fn pkcs8_round_trip() {
        let signer = Ed25519NoteSigner::generate("k").unwrap();
        let der = signer.to_pkcs8().unwrap();
        let again = Ed25519NoteSigner::from_pkcs8("k", &der).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert!(Ed25519NoteSigner::from_pkcs8("k", b"junk").is_err());
        assert!(matches!(
            Ed25519NoteSigner::from_pkcs8("bad name", &der),
            Err(AuditError::InvalidKeyName(_))
        ));
    }

    #[test]
    fn sign_rejects_bad_bodies() {
        let signer = Ed25519NoteSigner::generate("k").unwrap();
        assert!(matches!(
            sign_note("no newline", &signer),
            Err(AuditError::MalformedNote(_))
        ));
        assert!(matches!(
            sign_note("", &signer),
            Err(AuditError::MalformedNote(_))
        ));
        assert!(matches!(
            sign_note("tab\there\n", &signer),
            Err(AuditError::MalformedNote(_))
        ));
        let big = "a".repeat(MAX_NOTE_BYTES) + "\n";
        assert!(matches!(
            sign_note(&big, &signer),
            Err(AuditError::NoteTooLarge { .. })
        ));
    }

    struct LyingSigner(Ed25519NoteSigner);

    impl NoteSigner for LyingSigner {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn public_key(&self) -> [u8; 32] {
            self.0.public_key()
        }
        fn sign(&self, msg: &[u8]) -> Result<[u8; 64], AuditError> {
            let mut sig = self.0.sign(msg)?;
            sig[0] ^= 1;
            Ok(sig)
        }
    }

    #[test]
    fn a_signer_that_returns_bad_signatures_is_refused() {
        let s = LyingSigner(Ed25519NoteSigner::generate("k").unwrap());
        assert!(matches!(sign_note("x\n", &s), Err(AuditError::Signing(_))));
    }

    #[test]
    fn open_rejects_oversized_notes() {
        let text = "a".repeat(MAX_NOTE_BYTES + 1);
        assert!(matches!(
            open_note(&text, &[]),
            Err(AuditError::NoteTooLarge { .. })
        ));
    }
}
