//! X.509: CA certificates, X509-SVID issuance, CSR checks and CRLs.
//!
//! Profiles (SPIFFE X509-SVID spec + RFC 5280):
//! - root: self-signed, `CA:true` (critical), keyCertSign + cRLSign (critical),
//!   SKI, URI SAN `spiffe://<td>`; no name constraints (rustls-webpki rejects
//!   URI name constraints).
//! - intermediate: signed by the root, `CA:true, pathlen:0`, keyCertSign +
//!   cRLSign, SKI + AKI, URI SAN `spiffe://<td>`.
//! - leaf (X509-SVID): empty subject with a critical SAN holding exactly one
//!   URI (the SPIFFE ID), `CA:false` (critical), digitalSignature (plus
//!   keyEncipherment for RSA keys only), EKU serverAuth + clientAuth, SKI + AKI,
//!   a 127-bit random serial.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData,
    RevokedCertParams, SanType, SerialNumber, SigningKey,
};
use time::OffsetDateTime;
use x509_parser::der_parser::oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use credence_core::{RevocationReason, Serial, SpiffeId, TrustDomain};

use crate::CaError;
use crate::keys::{Signer, sha256_hex};

/// Upper bound on a CSR's size; a P-256 CSR is ~250 bytes, RSA-4096 ~1.7 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Adapts a [`Signer`] to rcgen's signing traits.
#[derive(Clone)]
pub struct RcgenKey(pub Arc<dyn Signer>);

impl PublicKeyData for RcgenKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for RcgenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign_x509(msg)
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

fn ca_name(td: &TrustDomain, what: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Credence");
    dn.push(DnType::CommonName, format!("Credence {what} {td}"));
    dn
}

fn ca_params(
    td: &TrustDomain,
    what: &str,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    constraint: BasicConstraints,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = ca_name(td, what);
    p.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    p.not_before = not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::Ca(constraint);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names =
        vec![SanType::URI(td.id_string().try_into().map_err(|_| {
            CaError::Signing("trust domain is not an IA5 string".into())
        })?)];
    p.key_identifier_method = KeyIdMethod::Sha256;
    Ok(p)
}

/// Creates a self-signed root CA certificate.
pub fn create_root(
    td: &TrustDomain,
    key: Arc<dyn Signer>,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    let p = ca_params(
        td,
        "Root CA",
        serial,
        not_before,
        not_after,
        BasicConstraints::Unconstrained,
    )?;
    let cert = p.self_signed(&RcgenKey(key))?;
    Ok(cert.der().to_vec())
}

/// Creates an intermediate (signing) CA certificate under `parent`.
pub fn create_intermediate(
    td: &TrustDomain,
    parent: &X509Issuer,
    key: &dyn Signer,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    let mut p = ca_params(
        td,
        "Intermediate CA",
        serial,
        not_before,
        not_after.min(parent.not_after),
        BasicConstraints::Constrained(0),
    )?;
    p.use_authority_key_identifier_extension = true;
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&key.public_key_spki())?;
    let cert = p.signed_by(&spki, &parent.issuer)?;
    Ok(cert.der().to_vec())
}

/// A CA certificate plus the key behind it, ready to sign leaves and CRLs.
pub struct X509Issuer {
    pub cert_der: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub subject_key_id: Vec<u8>,
    issuer: Issuer<'static, RcgenKey>,
}

impl X509Issuer {
    pub fn new(cert_der: Vec<u8>, key: Arc<dyn Signer>) -> Result<Self, CaError> {
        let (rest, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CaError::Certificate(format!("cannot parse CA certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(CaError::Certificate(
                "trailing bytes after CA certificate".into(),
            ));
        }
        if cert.public_key().raw != key.public_key_spki().as_slice() {
            return Err(CaError::Certificate(
                "CA certificate does not match its key".into(),
            ));
        }
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let mut ski = Vec::new();
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectKeyIdentifier(k) = ext.parsed_extension() {
                ski = k.0.to_vec();
            }
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), RcgenKey(key))?;
        Ok(Self {
            cert_der,
            not_before,
            not_after,
            subject_key_id: ski,
            issuer,
        })
    }

    pub fn key(&self) -> &Arc<dyn Signer> {
        &self.issuer.key().0
    }

    /// Signs an X509-SVID for `spiffe_id` over the given subject key.
    pub fn issue_svid(
        &self,
        spiffe_id: &SpiffeId,
        subject_key: &LeafKey,
        serial: &Serial,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>, CaError> {
        if not_after > self.not_after {
            return Err(CaError::Refused(
                "certificate would outlive its signing CA".into(),
            ));
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        p.not_before = not_before.max(self.not_before);
        p.not_after = not_after;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = if subject_key.kind == LeafKeyKind::Rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.subject_alt_names =
            vec![SanType::URI(spiffe_id.as_str().try_into().map_err(
                |_| CaError::Refused("SPIFFE ID is not an IA5 string".into()),
            )?)];
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        let cert = p.signed_by(&subject_key.spki, &self.issuer)?;
        Ok(cert.der().to_vec())
    }

    /// Signs a CRL listing `revoked` (RFC 5280 section 5).
    pub fn sign_crl(
        &self,
        revoked: &[CrlEntry],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>, CaError> {
        let revoked_certs = revoked
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from_slice(e.serial.as_bytes()),
                revocation_time: e.revoked_at,
                reason_code: Some(crl_reason(e.reason)),
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(self.subject_key_id.clone()),
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// One revoked certificate on a CRL.
#[derive(Clone, Debug)]
pub struct CrlEntry {
    pub serial: Serial,
    pub revoked_at: OffsetDateTime,
    pub reason: RevocationReason,
}

fn crl_reason(r: RevocationReason) -> rcgen::RevocationReason {
    use rcgen::RevocationReason as R;
    match r {
        RevocationReason::Unspecified => R::Unspecified,
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKeyKind {
    EcP256,
    EcP384,
    Ed25519,
    Rsa,
}

/// A subject public key accepted for an X509-SVID.
#[derive(Clone, Debug)]
pub struct LeafKey {
    pub kind: LeafKeyKind,
    spki: rcgen::SubjectPublicKeyInfo,
    spki_der: Vec<u8>,
}

impl LeafKey {
    /// Checks a SubjectPublicKeyInfo: P-256, P-384, Ed25519 or RSA 2048..=8192.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CaError> {
        let bad = |m: String| CaError::InvalidCsr(m);
        let (rest, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| bad(format!("cannot parse subject public key: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after subject public key".into()));
        }
        let kind = match info.parsed() {
            Ok(PublicKey::EC(point)) => {
                let curve = info
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok());
                match curve {
                    Some(c) if c == oid!(1.2.840.10045.3.1.7) && point.key_size() == 256 => {
                        LeafKeyKind::EcP256
                    }
                    Some(c) if c == oid!(1.3.132.0.34) && point.key_size() == 384 => {
                        LeafKeyKind::EcP384
                    }
                    _ => {
                        return Err(bad("unsupported elliptic curve (use P-256 or P-384)".into()));
                    }
                }
            }
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if !(2048..=8192).contains(&bits) {
                    return Err(bad(format!(
                        "RSA key of {bits} bits is not accepted (2048 to 8192)"
                    )));
                }
                LeafKeyKind::Rsa
            }
            Ok(_) if info.algorithm.algorithm == oid!(1.3.101.112) => LeafKeyKind::Ed25519,
            Ok(_) => {
                return Err(bad(format!(
                    "unsupported public key algorithm {}",
                    info.algorithm.algorithm
                )));
            }
            Err(e) => return Err(bad(format!("malformed public key: {e}"))),
        };
        let spki = rcgen::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| bad(format!("unsupported public key: {e}")))?;
        Ok(Self {
            kind,
            spki,
            spki_der: der.to_vec(),
        })
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Lowercase hex SHA-256 of the SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.spki_der)
    }
}

/// What a CSR asks for, once it has been checked.
#[derive(Clone, Debug)]
pub struct CheckedCsr {
    pub key: LeafKey,
    /// The URI SAN the CSR asked for, if any.
    pub requested_id: Option<SpiffeId>,
}

/// Accepts PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or DER.
pub fn csr_der_from_bytes(bytes: &[u8]) -> Result<Vec<u8>, CaError> {
    if bytes.len() > MAX_CSR_BYTES {
        return Err(CaError::InvalidCsr(format!(
            "CSR is larger than {MAX_CSR_BYTES} bytes"
        )));
    }
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let p =
        pem::parse(bytes).map_err(|e| CaError::InvalidCsr(format!("neither DER nor PEM: {e}")))?;
    match p.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(p.into_contents()),
        other => Err(CaError::InvalidCsr(format!(
            "expected a PEM CERTIFICATE REQUEST, got {other:?}"
        ))),
    }
}

/// Parses and checks a PKCS#10 CSR: well-formed DER, version 1, a signature
/// that verifies with the enclosed key (proof of possession), an accepted key
/// type, at most one URI SAN that is a valid SPIFFE ID, no request to be a CA,
/// and no extensions or attributes beyond the ones an X509-SVID may carry.
pub fn check_csr(der: &[u8]) -> Result<CheckedCsr, CaError> {
    let bad = |m: String| CaError::InvalidCsr(m);
    if der.len() > MAX_CSR_BYTES {
        return Err(bad(format!("CSR is larger than {MAX_CSR_BYTES} bytes")));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| bad(format!("malformed DER: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the CSR".into()));
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(bad(format!("unsupported CSR version {}", info.version.0)));
    }
    let key = LeafKey::from_spki_der(info.subject_pki.raw)?;
    csr.verify_signature().map_err(|e| {
        bad(format!(
            "signature does not verify with the enclosed key (no proof of possession): {e}"
        ))
    })?;

    let mut requested_id = None;
    for attr in info.attributes() {
        use x509_parser::cri_attributes::ParsedCriAttribute;
        match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => {
                for ext in &req.extensions {
                    match ext.parsed_extension() {
                        ParsedExtension::SubjectAlternativeName(san) => {
                            for name in &san.general_names {
                                match name {
                                    GeneralName::URI(uri) => {
                                        if requested_id.is_some() {
                                            return Err(bad(
                                                "more than one URI SAN requested (an X509-SVID has exactly one)".into(),
                                            ));
                                        }
                                        let id = SpiffeId::parse(uri)
                                            .map_err(|e| bad(format!("requested URI SAN: {e}")))?;
                                        requested_id = Some(id);
                                    }
                                    other => {
                                        return Err(bad(format!(
                                            "unsupported subject alternative name {other}: only a SPIFFE ID URI is allowed"
                                        )));
                                    }
                                }
                            }
                        }
                        ParsedExtension::BasicConstraints(bc) => {
                            if bc.ca {
                                return Err(bad("CSR requests a CA certificate".into()));
                            }
                        }
                        // Credence sets key usages itself; requests for them are ignored.
                        ParsedExtension::KeyUsage(ku) => {
                            if ku.key_cert_sign() || ku.crl_sign() {
                                return Err(bad(
                                    "CSR requests CA key usages (keyCertSign/cRLSign)".into(),
                                ));
                            }
                        }
                        ParsedExtension::ExtendedKeyUsage(_) => {}
                        _ => {
                            return Err(bad(format!("unsupported extension {} in CSR", ext.oid)));
                        }
                    }
                }
            }
            ParsedCriAttribute::ChallengePassword(_) => {
                return Err(bad("challengePassword attribute is not supported".into()));
            }
            _ => {
                return Err(bad(format!("unsupported attribute {} in CSR", attr.oid)));
            }
        }
    }
    Ok(CheckedCsr { key, requested_id })
}

/// PEM-encodes DER certificates in order.
pub fn certs_to_pem<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.to_vec())))
        .collect()
}

/// The trust domain named by a CA certificate's `spiffe://<td>` URI SAN, if any.
pub fn trust_domain_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix("spiffe://").map(str::to_owned),
        _ => None,
    })
}

/// Checks that `der` is one X.509 certificate of a CA (basic constraints
/// `cA` true), as an X.509 authority of a SPIFFE bundle must be.
pub fn check_ca_certificate(der: &[u8]) -> Result<(), CaError> {
    let bad = |why: String| CaError::Certificate(why);
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| bad(format!("not a DER certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(bad(format!(
            "{} is not a CA certificate (basic constraints cA is not true)",
            cert.subject()
        ))),
        Err(e) => Err(bad(format!("basic constraints: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SoftwareKey;
    use time::Duration;

    fn ca() -> (X509Issuer, X509Issuer) {
        let td = TrustDomain::new("example.org").unwrap();
        let now = OffsetDateTime::now_utc();
        let rk: Arc<dyn Signer> = Arc::new(SoftwareKey::generate().unwrap());
        let root_der = create_root(
            &td,
            rk.clone(),
            &Serial::from_random([1; 16]),
            now,
            now + Duration::days(3650),
        )
        .unwrap();
        let root = X509Issuer::new(root_der, rk).unwrap();
        let ik: Arc<dyn Signer> = Arc::new(SoftwareKey::generate().unwrap());
        let int_der = create_intermediate(
            &td,
            &root,
            ik.as_ref(),
            &Serial::from_random([2; 16]),
            now,
            now + Duration::days(90),
        )
        .unwrap();
        (root, X509Issuer::new(int_der, ik).unwrap())
    }

    fn csr_for(uri: Option<&str>, is_ca: bool) -> (Vec<u8>, rcgen::KeyPair) {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        if let Some(u) = uri {
            p.subject_alt_names = vec![SanType::URI(u.try_into().unwrap())];
        }
        if is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let csr = p.serialize_request(&kp).unwrap();
        (csr.der().to_vec(), kp)
    }

    #[test]
    fn issues_svid_with_spiffe_profile() {
        let (root, int) = ca();
        let (csr, _) = csr_for(Some("spiffe://example.org/web"), false);
        let checked = check_csr(&csr).unwrap();
        assert_eq!(
            checked.requested_id.as_ref().unwrap().as_str(),
            "spiffe://example.org/web"
        );
        let now = OffsetDateTime::now_utc();
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let der = int
            .issue_svid(
                &id,
                &checked.key,
                &Serial::from_random([3; 16]),
                now,
                now + Duration::hours(1),
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.subject().iter().next().is_none(), "empty subject");
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        assert_eq!(san.value.general_names.len(), 1);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.value.digital_signature() && !ku.value.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert_eq!(cert.raw_serial().len(), 16);
        // chain verifies: leaf by intermediate, intermediate by root
        let (_, ic) = X509Certificate::from_der(&int.cert_der).unwrap();
        let (_, rc) = X509Certificate::from_der(&root.cert_der).unwrap();
        cert.verify_signature(Some(ic.public_key())).unwrap();
        ic.verify_signature(Some(rc.public_key())).unwrap();
    }

    #[test]
    fn refuses_bad_csrs() {
        let (csr, _) = csr_for(Some("spiffe://example.org/x"), true);
        assert!(check_csr(&csr).unwrap_err().to_string().contains("CA"));
        let (csr, _) = csr_for(Some("spiffe://Example.org/x"), false);
        assert!(
            check_csr(&csr)
                .unwrap_err()
                .to_string()
                .contains("lowercase")
        );
        assert!(
            check_csr(b"\x30\x03\x02\x01\x00")
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        // flip a byte in the signature: proof of possession fails
        let (mut csr, _) = csr_for(None, false);
        let n = csr.len();
        csr[n - 5] ^= 0x01;
        let e = check_csr(&csr).unwrap_err().to_string();
        assert!(e.contains("signature") || e.contains("malformed"), "{e}");
        assert!(csr_der_from_bytes(b"garbage").is_err());
    }

    #[test]
    fn crl_is_signed_by_issuer() {
        let (_, int) = ca();
        let now = OffsetDateTime::now_utc();
        let crl = int
            .sign_crl(
                &[CrlEntry {
                    serial: Serial::from_random([9; 16]),
                    revoked_at: now,
                    reason: RevocationReason::KeyCompromise,
                }],
                7,
                now,
                now + Duration::hours(1),
            )
            .unwrap();
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).unwrap();
        assert_eq!(parsed.iter_revoked_certificates().count(), 1);
        assert_eq!(parsed.crl_number().unwrap().to_u64_digits(), vec![7]);
        let (_, ic) = X509Certificate::from_der(&int.cert_der).unwrap();
        parsed.verify_signature(ic.public_key()).unwrap();
    }
}

/// What an X509-SVID leaf (DER) says about itself.
#[derive(Clone, Debug)]
pub struct SvidInfo {
    pub spiffe_id: SpiffeId,
    /// Lowercase hex, as [`Serial::to_hex`] writes it.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Reads the SPIFFE ID (its one URI SAN), serial and expiry of an
/// X509-SVID. Does not verify anything: callers verify the chain first.
pub fn svid_info(leaf_der: &[u8]) -> Result<SvidInfo, CaError> {
    let bad = |m: String| CaError::Certificate(m);
    let (rest, cert) =
        X509Certificate::from_der(leaf_der).map_err(|e| bad(format!("malformed DER: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subject alternative name: {e}")))?
        .ok_or_else(|| bad("no subject alternative name".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(bad("an X509-SVID has exactly one URI SAN".into()));
    };
    let spiffe_id = SpiffeId::parse(uri).map_err(|e| bad(e.to_string()))?;
    let raw = cert.raw_serial();
    let trimmed = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| bad(format!("notAfter: {e}")))?;
    let not_before = OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp())
        .map_err(|e| bad(format!("notBefore: {e}")))?;
    Ok(SvidInfo {
        spiffe_id,
        serial: hex::encode(trimmed),
        not_before,
        not_after,
    })
}
