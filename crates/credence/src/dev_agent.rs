//! The in-process agent of `credence dev`: serves the SPIFFE Workload API at
//! `DIR/agent.sock` straight from the control plane in the same process.
//!
//! It keeps one X509-SVID per registered identity that has selectors, minted
//! through the normal issuance path (so each one is audited), re-mints at
//! half of its lifetime, and refreshes at once when the control plane
//! signals a change (identity created, changed, disabled or deleted,
//! credential revoked, CA rotated). Workloads see the change on their open
//! stream. The standalone agent (node attestation, mTLS to the server) is a
//! separate process and not built yet.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use time::OffsetDateTime;
use tokio::sync::watch;

use credence_agent::attest::matches;
use credence_agent::workload_api::{Provider, X509Material};
use credence_core::{IdentityStatus, Selector};
use credence_server::service::{Actor, Service};
use credence_store::IdentityFilter;

struct Entry {
    spiffe_id: String,
    selectors: Vec<Selector>,
    updated_at: OffsetDateTime,
    serial: String,
    renew_at: OffsetDateTime,
    material: X509Material,
}

/// Workload API provider backed by the in-process control plane.
pub struct DevAgent {
    svc: Arc<Service>,
    entries: RwLock<Vec<Entry>>,
    tx: watch::Sender<u64>,
}

fn pem_blocks_der(pem_text: &str) -> Vec<u8> {
    pem::parse_many(pem_text.as_bytes())
        .map(|blocks| blocks.into_iter().flat_map(|b| b.into_contents()).collect())
        .unwrap_or_default()
}

impl DevAgent {
    pub fn new(svc: Arc<Service>) -> Arc<Self> {
        Arc::new(Self {
            svc,
            entries: RwLock::new(Vec::new()),
            tx: watch::channel(0).0,
        })
    }

    fn actor(&self) -> Actor {
        Actor {
            name: format!("spiffe://{}/credence/agent/dev", self.svc.trust_domain()),
            method: "in_process",
            request_id: None,
            client_addr: None,
        }
    }

    /// Keeps the cache current until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.svc.subscribe();
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "dev agent refresh failed");
            }
            let now = self.svc.clock.now();
            let next = self
                .entries
                .read()
                .ok()
                .and_then(|e| e.iter().map(|x| x.renew_at).min())
                .map(|t| (t - now).max(time::Duration::seconds(1)))
                .unwrap_or(time::Duration::seconds(30))
                .min(time::Duration::seconds(30));
            let wait =
                StdDuration::from_millis(u64::try_from(next.whole_milliseconds()).unwrap_or(1000));
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn refresh(&self) -> Result<(), credence_server::ServerError> {
        let now = self.svc.clock.now();
        let filter = IdentityFilter {
            status: Some(IdentityStatus::Active),
            ..Default::default()
        };
        let mut identities = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .svc
                .list_identities(&filter, cursor.as_deref(), 1000)
                .await?;
            identities.extend(page.items.into_iter().filter(|i| !i.selectors.is_empty()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let old: HashMap<String, (OffsetDateTime, String, OffsetDateTime, X509Material)> = self
            .entries
            .read()
            .map(|e| {
                e.iter()
                    .map(|x| {
                        (
                            x.spiffe_id.clone(),
                            (
                                x.updated_at,
                                x.serial.clone(),
                                x.renew_at,
                                x.material.clone(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let bundle_der = pem_blocks_der(self.svc.authority().bundle_pem());
        let mut fresh = Vec::with_capacity(identities.len());
        let mut changed = identities.len() != old.len();
        for ident in identities {
            let id = ident.spiffe_id.to_string();
            if let Some((updated, serial, renew_at, material)) = old.get(&id)
                && *updated == ident.updated_at
                && now < *renew_at
                && !self.svc.is_revoked(serial).await?
            {
                fresh.push(Entry {
                    spiffe_id: id,
                    selectors: ident.selectors,
                    updated_at: *updated,
                    serial: serial.clone(),
                    renew_at: *renew_at,
                    material: material.clone(),
                });
                continue;
            }
            changed = true;
            let (svid, key_pem) = self
                .svc
                .mint_x509(&self.actor(), &ident.spiffe_id, None)
                .await?;
            let renew_at = svid.not_before + (svid.not_after - svid.not_before) / 2;
            fresh.push(Entry {
                spiffe_id: id.clone(),
                selectors: ident.selectors,
                updated_at: ident.updated_at,
                serial: svid.serial.to_hex(),
                renew_at,
                material: X509Material {
                    spiffe_id: id,
                    chain_der: pem_blocks_der(&svid.chain_pem),
                    key_pkcs8: pem_blocks_der(&key_pem),
                    bundle_der: bundle_der.clone(),
                    hint: String::new(),
                },
            });
        }
        if let Ok(mut e) = self.entries.write() {
            *e = fresh;
        }
        if changed {
            self.tx.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }
}

impl Provider for DevAgent {
    fn x509_svids(&self, selectors: &[Selector]) -> Vec<X509Material> {
        self.entries
            .read()
            .map(|e| {
                e.iter()
                    .filter(|x| matches(&x.selectors, selectors))
                    .map(|x| x.material.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn x509_bundles(&self) -> HashMap<String, Vec<u8>> {
        let auth = self.svc.authority();
        HashMap::from([(
            auth.trust_domain.id_string(),
            pem_blocks_der(auth.bundle_pem()),
        )])
    }

    fn jwt_bundles(&self) -> HashMap<String, Vec<u8>> {
        let auth = self.svc.authority();
        HashMap::from([(
            auth.trust_domain.id_string(),
            auth.jwks().to_string().into_bytes(),
        )])
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
