//! PKCS#10 CSRs from the network: PEM/DER detection and the full check
//! (parse, proof-of-possession verify, extension policy) must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(der) = credence_ca::x509::csr_der_from_bytes(data) {
        let _ = credence_ca::check_csr(&der);
    }
    let _ = credence_ca::check_csr(data);
    let _ = credence_ca::LeafKey::from_spki_der(data);
});
