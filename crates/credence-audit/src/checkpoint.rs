//! Checkpoints in the C2SP `tlog-checkpoint` format.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::AuditError;
use crate::hash::Hash;
use crate::note::{NoteSigner, Verifier, open_note, sign_note};

/// A signed tree head: the log's origin, its size and its root hash, plus
/// optional (not recommended) extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Unique identity of the log; conventionally also the signing key name.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 9162 root of the first `size` leaves.
    pub root: Hash,
    /// Extra lines after the root, each non-empty, without newlines.
    pub extensions: Vec<String>,
}

fn check_line(line: &str, what: &'static str) -> Result<(), AuditError> {
    if line.is_empty() {
        return Err(AuditError::MalformedCheckpoint(what));
    }
    if line.chars().any(char::is_control) {
        return Err(AuditError::MalformedCheckpoint(
            "line holds a control character",
        ));
    }
    Ok(())
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Self {
        Self {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text: `<origin>\n<size>\n<base64 root>\n` followed by one
    /// line per extension. Fails on an empty origin or extension, or one
    /// holding a newline or other control character.
    pub fn to_body(&self) -> Result<String, AuditError> {
        check_line(&self.origin, "empty origin")?;
        for ext in &self.extensions {
            check_line(ext, "empty extension line")?;
        }
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for ext in &self.extensions {
            body.push_str(ext);
            body.push('\n');
        }
        Ok(body)
    }

    /// Parses a note text strictly: at least three non-empty lines, each
    /// ending in a newline; a decimal size without sign or leading zeros
    /// (except `0`) that fits in 64 bits; a root in standard padded base64
    /// of exactly 32 bytes; no control characters.
    pub fn parse_body(body: &str) -> Result<Self, AuditError> {
        let Some(content) = body.strip_suffix('\n') else {
            return Err(AuditError::MalformedCheckpoint(
                "text does not end with a newline",
            ));
        };
        let mut lines = content.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(AuditError::MalformedCheckpoint("fewer than three lines"));
        };
        check_line(origin, "empty origin")?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(AuditError::MalformedCheckpoint(
                "tree size is not a canonical decimal number",
            ));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| AuditError::MalformedCheckpoint("tree size does not fit 64 bits"))?;
        let root: Hash = STANDARD
            .decode(root)
            .map_err(|_| AuditError::MalformedCheckpoint("root hash is not standard base64"))?
            .try_into()
            .map_err(|_| AuditError::MalformedCheckpoint("root hash is not 32 bytes"))?;
        let mut extensions = Vec::new();
        for ext in lines {
            check_line(ext, "empty extension line")?;
            extensions.push(ext.to_owned());
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The signed note of this checkpoint.
    pub fn sign(&self, signer: &dyn NoteSigner) -> Result<String, AuditError> {
        sign_note(&self.to_body()?, signer)
    }

    /// Opens a signed checkpoint note; returns the checkpoint and the names
    /// of the keys whose signatures verified.
    pub fn open(note: &str, verifiers: &[Verifier]) -> Result<(Self, Vec<String>), AuditError> {
        let (body, names) = open_note(note, verifiers)?;
        Ok((Self::parse_body(&body)?, names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Ed25519NoteSigner;

    #[test]
    fn body_round_trip() {
        let mut cp = Checkpoint::new("example.com/log", 20852163, [7u8; 32]);
        let body = cp.to_body().unwrap();
        assert_eq!(
            body,
            "example.com/log\n20852163\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"
        );
        assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp);
        cp.extensions = vec!["ext one".into(), "two".into()];
        let body = cp.to_body().unwrap();
        assert!(body.ends_with("=\next one\ntwo\n"));
        assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp);
    }

    #[test]
    fn spec_example_body_parses() {
        let cp = Checkpoint::parse_body(
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        )
        .unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20852163);
        assert!(cp.extensions.is_empty());
    }

    #[test]
    fn strict_parse() {
        let root = STANDARD.encode([0u8; 32]);
        let ok = format!("o\n0\n{root}\n");
        assert!(Checkpoint::parse_body(&ok).is_ok());
        for bad in [
            format!("o\n0\n{root}"),
            format!("\n0\n{root}\n"),
            format!("o\n00\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            format!("o\n1\n{}\n", &root[..43]),
            format!("o\n1\n{}\n", STANDARD.encode([0u8; 31])),
            format!("o\n1\n{}\n", STANDARD.encode([0u8; 33])),
            format!("o\n1\n{root}\n\n"),
            format!("o\n1\n{root}\next\n\n"),
            format!("o\r\n1\n{root}\n"),
            "o\n1\n".to_owned(),
            String::new(),
        ] {
            assert!(
                matches!(
                    Checkpoint::parse_body(&bad),
                    Err(AuditError::MalformedCheckpoint(_))
                ),
                "{bad:?} should be rejected"
            );
        }
        // non-canonical base64 (non-zero trailing bits) is rejected
        let mut nc = root.clone().into_bytes();
        nc[42] = b'B';
        let nc = String::from_utf8(nc).unwrap();
        assert!(Checkpoint::parse_body(&format!("o\n1\n{nc}\n")).is_err());
    }

    #[test]
    fn to_body_refuses_lines_that_would_reframe() {
        let cp = Checkpoint::new("evil\n999", 1, [0; 32]);
        assert!(cp.to_body().is_err());
        let cp = Checkpoint::new("", 1, [0; 32]);
        assert!(cp.to_body().is_err());
        let mut cp = Checkpoint::new("o", 1, [0; 32]);
        cp.extensions.push(String::new());
        assert!(cp.to_body().is_err());
    }

    #[test]
    fn sign_and_open() {
        let signer = Ed25519NoteSigner::generate("credence.test/audit").unwrap();
        let cp = Checkpoint::new("credence.test/audit", 3, [9; 32]);
        let note = cp.sign(&signer).unwrap();
        let (got, names) = Checkpoint::open(&note, &[signer.verifier()]).unwrap();
        assert_eq!(got, cp);
        assert_eq!(names, vec!["credence.test/audit".to_owned()]);
    }
}
