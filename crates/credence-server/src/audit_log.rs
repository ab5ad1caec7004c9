//! The server side of the audit log: the log's Ed25519 note key (wrapped
//! under the key-encryption key like the CA keys) and signed checkpoints.
//!
//! Events are appended by the store in the transactions of the changes they
//! describe; this module only signs what is committed. A checkpoint is
//! signed whenever the log grew since the last one, at most once per
//! interval (default 1 s), and once more on shutdown.

use credence_audit::{Checkpoint, Ed25519NoteSigner, NoteSigner, Verifier};
use credence_ca::KeyWrapper;
use credence_core::{Clock, TrustDomain};
use credence_store::{CaRecord, Store};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::ServerError;

/// The log key and checkpointing state.
pub struct AuditLog {
    origin: String,
    signer: Ed25519NoteSigner,
    verifier: Verifier,
    /// Serializes checkpoint signing (one signer at a time).
    last_signed: Mutex<u64>,
}

fn audit_err(e: credence_audit::AuditError) -> ServerError {
    ServerError::Internal(format!("audit log: {e}"))
}

impl AuditLog {
    /// The log's origin line (and key name): `<trust domain>/credence/audit`.
    pub fn origin_for(td: &TrustDomain) -> String {
        format!("{td}/credence/audit")
    }

    /// Loads the log key, creating it on first start.
    pub async fn load_or_create(
        store: &dyn Store,
        wrapper: &KeyWrapper,
        td: &TrustDomain,
        clock: &dyn Clock,
    ) -> Result<Self, ServerError> {
        let origin = Self::origin_for(td);
        let records = store.list_cas().await?;
        let signer = match records.iter().find(|r| r.role == "audit" && r.active) {
            Some(r) => {
                let der = wrapper.unwrap_key(&r.id, &r.wrapped_key)?;
                Ed25519NoteSigner::from_pkcs8(&origin, &der).map_err(audit_err)?
            }
            None => {
                let signer = Ed25519NoteSigner::generate(&origin).map_err(audit_err)?;
                let verifier = signer.verifier();
                let id = format!("audit-{:08x}", verifier.key_id());
                let now = clock.now();
                let wrapped = wrapper.wrap(&id, &signer.to_pkcs8().map_err(audit_err)?)?;
                let mut ev = credence_store::AuditRecord::new(
                    now,
                    credence_store::AuditActor {
                        id: "system".into(),
                        auth: "internal".into(),
                    },
                    "ca.create",
                    id.as_str(),
                    credence_store::Outcome::Success,
                );
                if let serde_json::Value::Object(m) =
                    json!({"role": "audit", "vkey": verifier.to_vkey()})
                {
                    ev.details = m;
                }
                store
                    .save_ca(
                        &CaRecord {
                            id: id.clone(),
                            role: "audit".into(),
                            cert_der: None,
                            public_key_der: signer.public_key().to_vec(),
                            wrapped_key: wrapped,
                            not_before: now,
                            // the log key has no expiry; rotation is an explicit act
                            not_after: OffsetDateTime::from_unix_timestamp(253_402_300_799)
                                .unwrap_or(now),
                            active: true,
                            created_at: now,
                        },
                        ev,
                    )
                    .await?;
                tracing::info!(vkey = %verifier.to_vkey(), "created audit log key");
                signer
            }
        };
        let verifier = signer.verifier();
        let last = store
            .latest_checkpoint()
            .await?
            .map(|(n, _)| n)
            .unwrap_or(0);
        Ok(Self {
            origin,
            signer,
            verifier,
            last_signed: Mutex::new(last),
        })
    }

    /// The note verifier key (C2SP `vkey`).
    pub fn vkey(&self) -> String {
        self.verifier.to_vkey()
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Signs and stores a checkpoint of the committed log if it grew since
    /// the last one (or none exists yet). Returns the size signed, if any.
    pub async fn checkpoint(
        &self,
        store: &dyn Store,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, ServerError> {
        let mut last = self.last_signed.lock().await;
        let (size, root) = store.audit_head().await?;
        let have_any = store.latest_checkpoint().await?.is_some();
        if size == *last && have_any {
            return Ok(None);
        }
        let note = Checkpoint::new(self.origin.clone(), size, root)
            .sign(&self.signer)
            .map_err(audit_err)?;
        store.save_checkpoint(size, &note, now).await?;
        *last = size;
        Ok(Some(size))
    }
}
