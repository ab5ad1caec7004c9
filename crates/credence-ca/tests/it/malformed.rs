//! Deterministic mutation tests: hostile bytes never panic the parsers and a
//! mutated CSR never passes the checks with a different key or identity.
//! (Coverage-guided fuzzing of the same parsers lives in `fuzz/`.)

use credence_ca::{check_csr, x509::csr_der_from_bytes};
use credence_core::SpiffeId;

/// xorshift64*: a small deterministic generator for reproducible mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (alg, uri) in [
        (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Some("spiffe://example.org/a"),
        ),
        (&rcgen::PKCS_ECDSA_P384_SHA384, None),
        (&rcgen::PKCS_ED25519, Some("spiffe://example.org/b/c")),
    ] {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut p = rcgen::CertificateParams::default();
        if let Some(u) = uri {
            p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
        }
        out.push(p.serialize_request(&kp).unwrap().der().to_vec());
    }
    out
}

#[test]
fn mutated_csrs_never_panic_and_never_change_identity() {
    let seeds = seeds();
    for s in &seeds {
        check_csr(s).unwrap();
    }
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut accepted = 0;
    for i in 0..20_000 {
        let seed = &seeds[i % seeds.len()];
        let original = check_csr(seed).unwrap();
        let mut m = seed.clone();
        match rng.below(5) {
            0 => {
                let at = rng.below(m.len());
                m[at] ^= 1 << rng.below(8);
            }
            1 => m.truncate(rng.below(m.len())),
            2 => {
                let at = rng.below(m.len());
                m.insert(at, rng.next() as u8);
            }
            3 => {
                let at = rng.below(m.len());
                m[at] = rng.next() as u8;
            }
            _ => {
                // splice a random chunk of another seed
                let other = &seeds[rng.below(seeds.len())];
                let a = rng.below(other.len());
                let b = a + rng.below(other.len() - a);
                let at = rng.below(m.len());
                m.splice(at..at, other[a..b].iter().copied());
            }
        }
        if let Ok(c) = check_csr(&m) {
            // Only changes that leave the signed content intact (e.g. a
            // redundant encoding) may pass; the key and identity cannot move.
            accepted += 1;
            assert_eq!(
                c.key.spki_der(),
                original.key.spki_der(),
                "mutation {i} changed the key"
            );
            assert_eq!(
                c.requested_id, original.requested_id,
                "mutation {i} changed the identity"
            );
        }
        let _ = csr_der_from_bytes(&m);
    }
    assert!(accepted < 200, "{accepted} mutated CSRs passed");
}

#[test]
fn random_text_never_panics_the_id_parser() {
    let alphabet: Vec<char> = "spiffe:/.-_aZ09?#%@:é \u{0}".chars().collect();
    let mut rng = Rng(42);
    for _ in 0..50_000 {
        let len = rng.below(40);
        let mut s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        if rng.below(2) == 0 {
            s.insert_str(0, "spiffe://");
        }
        if let Ok(id) = SpiffeId::parse(&s) {
            assert_eq!(id.as_str(), s);
            assert!(!id.path().contains("//") && !id.path().ends_with('/'));
            assert!(!id.as_str().contains(['?', '#', '%', '@', ' ']));
        }
    }
}

#[test]
fn garbage_pem_and_der_are_refused_with_reasons() {
    for (input, want) in [
        (&b""[..], "neither DER nor PEM"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "CERTIFICATE REQUEST",
        ),
        (b"\x30\x80", "malformed"),
    ] {
        let e = csr_der_from_bytes(input)
            .and_then(|d| check_csr(&d))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{input:?}: {e}");
    }
    let big = vec![0x30u8; 20_000];
    assert!(
        check_csr(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than")
    );
}
