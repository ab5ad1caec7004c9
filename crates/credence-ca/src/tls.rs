//! TLS peer verification by SPIFFE ID: the server's chain must lead to one
//! of the given roots (a trust domain's bundle), and its leaf must carry
//! the expected SPIFFE ID. Host names play no part (SPIFFE authenticates
//! identities, not DNS names). Used by node agents to reach the server and
//! by federation to fetch `https_spiffe` bundle endpoints.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use credence_core::SpiffeId;

/// Verifies a server's certificate chain against `roots` and its SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Vec<CertificateDer<'static>>,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        expected: SpiffeId,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots,
            expected,
            algs,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors: Vec<_> = self
            .roots
            .iter()
            .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        cert.verify_for_usage(
            self.algs.all,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        let info = crate::x509::svid_info(end_entity)
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        if info.spiffe_id != self.expected {
            return Err(rustls::Error::General(format!(
                "server presented {} instead of {}",
                info.spiffe_id, self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
