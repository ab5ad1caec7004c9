//! The signed-note test vectors of golang.org/x/mod/sumdb/note
//! (`note_test.go`): the PeterNeumann and EnochRoot keys, the signature Go
//! produces for the Peter Neumann quote, and the malformed notes Go rejects.
//! Ed25519 is deterministic, so signing with the same seed must reproduce
//! Go's note byte for byte.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use credence_audit::{
    AuditError, Checkpoint, Ed25519NoteSigner, MAX_SIGNATURES, NoteSigner, Verifier, open_note,
    sign_note,
};

const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

fn peter() -> Verifier {
    Verifier::from_vkey(PETER_VKEY).unwrap()
}

fn enoch() -> Verifier {
    Verifier::from_vkey(ENOCH_VKEY).unwrap()
}

fn peter_signer() -> Ed25519NoteSigner {
    // PRIVATE+KEY+<name>+<id>+<base64(0x01 || 32-byte seed)>
    let parts: Vec<&str> = PETER_SKEY.splitn(5, '+').collect();
    assert_eq!(parts[..4], ["PRIVATE", "KEY", "PeterNeumann", "c74f20a3"]);
    let key = STANDARD.decode(parts[4]).unwrap();
    assert_eq!(key[0], 0x01);
    let seed: [u8; 32] = key[1..].try_into().unwrap();
    Ed25519NoteSigner::from_seed("PeterNeumann", &seed).unwrap()
}

#[test]
fn verifier_keys_parse_and_round_trip() {
    let p = peter();
    assert_eq!(p.name(), "PeterNeumann");
    assert_eq!(p.key_id(), 0xc74f20a3);
    assert_eq!(p.to_vkey(), PETER_VKEY);
    assert_eq!(p.to_string(), PETER_VKEY);
    assert_eq!(PETER_VKEY.parse::<Verifier>().unwrap(), p);
    assert_eq!(enoch().key_id(), 0xaf0cfe78);
    assert_eq!(enoch().to_vkey(), ENOCH_VKEY);
}

#[test]
fn mangled_verifier_keys_are_rejected() {
    let b = PETER_VKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            let s = std::str::from_utf8(&b[i..j]).unwrap();
            assert!(Verifier::from_vkey(s).is_err(), "accepted {s:?}");
        }
    }
    let mut m = b.to_vec();
    for i in 0..m.len() {
        m[i] += 1;
        let s = std::str::from_utf8(&m).unwrap();
        assert!(Verifier::from_vkey(s).is_err(), "accepted {s:?}");
        m[i] -= 1;
    }
    // wrong key length and unknown algorithm, each with a matching key id
    for bad in [
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ] {
        assert!(matches!(
            Verifier::from_vkey(bad),
            Err(AuditError::MalformedVerifierKey(_))
        ));
    }
}

#[test]
fn signing_reproduces_the_go_note() {
    let signer = peter_signer();
    assert_eq!(signer.verifier(), peter());
    assert_eq!(Verifier::for_signer(&signer).unwrap(), peter());
    let note = sign_note(TEXT, &signer).unwrap();
    assert_eq!(note, format!("{TEXT}\n{PETER_SIG}"));
    // a PKCS#8 round trip keeps the key
    let again = Ed25519NoteSigner::from_pkcs8("PeterNeumann", &signer.to_pkcs8().unwrap()).unwrap();
    assert_eq!(again.public_key(), *peter().public_key());
    assert_eq!(sign_note(TEXT, &again).unwrap(), note);
}

#[test]
fn open_accepts_known_and_ignores_unknown_signatures() {
    let note = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let (body, names) = open_note(&note, &[peter()]).unwrap();
    assert_eq!(body, TEXT);
    assert_eq!(names, vec!["PeterNeumann"]);

    let (_, names) = open_note(&note, &[peter(), enoch()]).unwrap();
    assert_eq!(names, vec!["PeterNeumann", "EnochRoot"]);

    assert_eq!(
        open_note(&note, &[]),
        Err(AuditError::NoVerifiableSignatures)
    );
    // an unknown-key-only note
    assert_eq!(
        open_note(&format!("{TEXT}\n{ENOCH_SIG}"), &[peter()]),
        Err(AuditError::NoVerifiableSignatures)
    );
}

#[test]
fn open_rejects_ambiguous_and_invalid_signatures() {
    let dup = [enoch(), peter(), enoch()];
    assert_eq!(
        open_note(&format!("{TEXT}\n{ENOCH_SIG}"), &dup),
        Err(AuditError::AmbiguousKey {
            name: "EnochRoot".into(),
            key_id: 0xaf0cfe78
        })
    );
    assert!(open_note(&format!("{TEXT}\n{PETER_SIG}"), &dup).is_ok());

    let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    assert_eq!(
        open_note(&bad, &[peter()]),
        Err(AuditError::InvalidSignature {
            name: "PeterNeumann".into(),
            key_id: 0xc74f20a3
        })
    );
    // a changed text fails under the known key
    let changed = format!("{TEXT}\n{PETER_SIG}").replace("cryptography", "cryptographY");
    assert!(matches!(
        open_note(&changed, &[peter()]),
        Err(AuditError::InvalidSignature { .. })
    ));

    // repeated verified signatures and a corrupt unknown one are fine
    let mixed = format!(
        "{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{}ABCD{}",
        &ENOCH_SIG[..60],
        &ENOCH_SIG[60..]
    );
    let (_, names) = open_note(&mixed, &[peter()]).unwrap();
    assert_eq!(names, vec!["PeterNeumann"]);
}

#[test]
fn open_rejects_malformed_notes() {
    let too_many = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1));
    assert!(matches!(
        open_note(&too_many, &[peter()]),
        Err(AuditError::MalformedNote(_))
    ));
    assert!(open_note(&format!("{TEXT}\n{}", PETER_SIG.repeat(16)), &[peter()]).is_ok());
    let bad_msgs = [
        TEXT.to_owned(),
        format!("{TEXT}\n"),
        format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
        format!("\u{1}{TEXT}\n{PETER_SIG}"),
        format!(
            "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
        ),
        format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
        // our own additions
        format!(
            "{TEXT}\n- PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        ),
        format!("{TEXT}\n— PeterNeumann\n"),
        format!("{TEXT}\n— PeterNeumann AAAA\n"),
        format!("{TEXT}\n— PeterNeumann not*base64\n"),
        format!("{TEXT}\n{PETER_SIG}\n"),
        format!("{TEXT}\r\n{PETER_SIG}"),
    ];
    for msg in bad_msgs {
        assert!(
            matches!(
                open_note(&msg, &[peter()]),
                Err(AuditError::MalformedNote(_))
            ),
            "accepted {msg:?}: {:?}",
            open_note(&msg, &[peter()])
        );
    }
}

#[test]
fn checkpoint_signed_with_the_go_key_opens() {
    let cp = Checkpoint::new("PeterNeumann", 8, [3; 32]);
    let note = cp.sign(&peter_signer()).unwrap();
    assert_eq!(Checkpoint::open(&note, &[peter()]).unwrap().0, cp);
    assert!(Checkpoint::open(&note, &[enoch()]).is_err());
}
