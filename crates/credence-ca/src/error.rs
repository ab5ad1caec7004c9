use thiserror::Error;

/// Errors from key custody, issuance and CSR checks.
#[derive(Debug, Error)]
pub enum CaError {
    /// The CSR (or other outside input) is malformed or not acceptable.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// A request that is well formed but refused by issuance rules.
    #[error("{0}")]
    Refused(String),
    /// Key material could not be decrypted or parsed.
    #[error("key error: {0}")]
    Key(String),
    /// Signing or encoding failed (an internal error).
    #[error("signing failed: {0}")]
    Signing(String),
    /// A certificate (ours) could not be parsed.
    #[error("certificate error: {0}")]
    Certificate(String),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Signing(e.to_string())
    }
}
