//! CA material of the trust domain: the root, the active intermediate that
//! signs X509-SVIDs, older intermediates still needed for CRLs, and the JWT
//! signing key. Created on first start, loaded (and unwrapped with the
//! key-encryption key) afterwards, rotated when the intermediate has used up
//! two thirds of its life.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use credence_ca::x509::{create_intermediate, create_root, trust_domain_of};
use credence_ca::{JwtSigner, KeyWrapper, Signer, SoftwareKey, X509Issuer};
use credence_core::{Clock, Random, Serial, TrustDomain};
use credence_store::{AuditRecord, CaRecord, Store};

use crate::ServerError;

/// Lifetimes of CA material.
#[derive(Clone, Debug)]
pub struct CaLifetimes {
    pub root: Duration,
    pub intermediate: Duration,
    pub jwt_key: Duration,
}

impl Default for CaLifetimes {
    fn default() -> Self {
        Self {
            root: Duration::days(3650),
            intermediate: Duration::days(90),
            jwt_key: Duration::days(90),
        }
    }
}

/// A loaded set of CA material. Immutable; rotation builds a new one.
pub struct Authority {
    pub trust_domain: TrustDomain,
    pub root_id: String,
    pub root: X509Issuer,
    pub intermediate_id: String,
    pub intermediate: X509Issuer,
    /// Older, unexpired intermediates by id (for their CRLs).
    pub retired: BTreeMap<String, X509Issuer>,
    /// JWT signing keys, published in the JWKS and bundle: the one signing
    /// now, the next one (published before it signs) and retired ones
    /// (published until the tokens they signed have expired). By
    /// `not_before` (when a key starts signing).
    pub jwt_keys: Vec<JwtKey>,
    /// Bumped whenever the published bundle changes.
    pub sequence: u64,
    /// PEM of the root certificate(s), computed once.
    bundle_pem: String,
    /// PEM of the intermediate, sent after every leaf, computed once.
    chain_pem: String,
}

/// A JWT signing key and when it signs.
pub struct JwtKey {
    pub signer: JwtSigner,
    /// Signs from here ...
    pub not_before: OffsetDateTime,
    /// ... until here (or until a later key starts).
    pub not_after: OffsetDateTime,
}

/// How long a JWT key stays published after it stops signing: longer than
/// any token it signed can live (JWT-SVIDs and access tokens are capped at
/// hours).
pub const JWT_RETIRED_PUBLISHED: Duration = Duration::days(1);

impl Authority {
    /// The key that signs at `now`: of the keys whose window contains it,
    /// the one that started last (a rotated-in key takes over at its
    /// `not_before`).
    pub fn jwt_signer(&self, now: OffsetDateTime) -> Result<&JwtSigner, ServerError> {
        self.jwt_keys
            .iter()
            .rev()
            .find(|k| k.not_before <= now && now < k.not_after)
            // past every key's end (no reload since): the latest started
            .or_else(|| self.jwt_keys.iter().rev().find(|k| k.not_before <= now))
            .map(|k| &k.signer)
            .ok_or_else(|| ServerError::Internal("no JWT signing key is active".into()))
    }

    /// The PEM trust bundle (root certificates).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Chain to send after a leaf: the intermediate.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    pub fn issuer_by_id(&self, id: &str) -> Option<&X509Issuer> {
        if id == self.intermediate_id {
            Some(&self.intermediate)
        } else {
            self.retired.get(id)
        }
    }

    /// JWKS of the JWT signing keys (next, current and retired).
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self.jwt_keys.iter().map(|k| k.signer.jwk("sig")).collect();
        json!({ "keys": keys })
    }

    /// SPIFFE bundle (JWKS with `x509-svid` and `jwt-svid` keys).
    pub fn spiffe_bundle(&self, refresh_hint_secs: u64) -> Value {
        let mut keys = vec![credence_ca::jwt::x509_bundle_jwk(
            &self.root.cert_der,
            self.root.key().public_key_raw(),
        )];
        keys.extend(self.jwt_keys.iter().map(|k| k.signer.jwk("jwt-svid")));
        json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": refresh_hint_secs,
        })
    }
}

fn system_audit(now: OffsetDateTime, action: &str, target: &str, detail: Value) -> AuditRecord {
    let mut ev = AuditRecord::new(
        now,
        credence_store::AuditActor {
            id: "system".into(),
            auth: "internal".into(),
        },
        action,
        target,
        credence_store::Outcome::Success,
    );
    if let Value::Object(m) = detail {
        ev.details = m;
    }
    ev
}

/// A new JWT signing key that signs from `starts` (published at once).
pub async fn new_jwt_key(
    store: &dyn Store,
    wrapper: &KeyWrapper,
    lifetimes: &CaLifetimes,
    now: OffsetDateTime,
    starts: OffsetDateTime,
    record: impl FnOnce(&str, Value) -> AuditRecord,
) -> Result<JwtKey, ServerError> {
    let sw = SoftwareKey::generate()?;
    let kid = credence_ca::jwt::thumbprint(sw.public_key_raw());
    let id = format!("jwt-{kid}");
    let wrapped = wrapper.wrap(&id, sw.pkcs8_der())?;
    let key: Arc<dyn Signer> = Arc::new(sw);
    let signer = JwtSigner::new(key.clone());
    let not_after = starts + lifetimes.jwt_key;
    store
        .save_ca(
            &CaRecord {
                id: id.clone(),
                role: "jwt".into(),
                cert_der: None,
                public_key_der: key.public_key_spki(),
                wrapped_key: wrapped,
                not_before: starts,
                not_after,
                active: true,
                created_at: now,
            },
            record(
                &id,
                json!({"role": "jwt", "kid": signer.kid(), "signs_from": starts.unix_timestamp()}),
            ),
        )
        .await?;
    tracing::info!(kid = signer.kid(), %starts, "created JWT signing key");
    Ok(JwtKey {
        signer,
        not_before: starts,
        not_after,
    })
}

/// Loads the CA material, creating or rotating what is missing or due.
pub async fn load_or_create(
    store: &dyn Store,
    wrapper: &KeyWrapper,
    td: &TrustDomain,
    lifetimes: &CaLifetimes,
    clock: &dyn Clock,
    rng: &dyn Random,
) -> Result<Authority, ServerError> {
    let now = clock.now();
    let records = store.list_cas().await?;
    let unwrap = |r: &CaRecord| -> Result<Arc<dyn Signer>, ServerError> {
        let der = wrapper.unwrap_key(&r.id, &r.wrapped_key)?;
        Ok(Arc::new(SoftwareKey::from_pkcs8(&der)?))
    };

    // root
    let root_rec = records
        .iter()
        .filter(|r| r.role == "root" && r.active && r.not_after > now)
        .max_by_key(|r| r.not_after);
    let (root_id, root) = match root_rec {
        Some(r) => {
            let der = r
                .cert_der
                .clone()
                .ok_or_else(|| ServerError::Internal("root CA record has no certificate".into()))?;
            if let Some(found) = trust_domain_of(&der)
                && found != td.as_str()
            {
                return Err(ServerError::bad(
                    "trust_domain_mismatch",
                    format!(
                        "this data belongs to trust domain {found:?}, not {:?}",
                        td.as_str()
                    ),
                ));
            }
            (r.id.clone(), X509Issuer::new(der, unwrap(r)?)?)
        }
        None => {
            let serial = Serial::from_random(rng.bytes16());
            let id = format!("root-{}", &serial.to_hex()[..16]);
            let (key, wrapped) = generate_wrapped(wrapper, &id)?;
            let der = create_root(td, key.clone(), &serial, now, now + lifetimes.root)?;
            let issuer = X509Issuer::new(der.clone(), key.clone())?;
            save(store, &id, "root", Some(der), &key, wrapped, &issuer, now).await?;
            tracing::info!(id, "created root CA");
            (id, issuer)
        }
    };

    // intermediates
    let mut ints: Vec<&CaRecord> = records
        .iter()
        .filter(|r| r.role == "intermediate" && r.not_after > now)
        .collect();
    ints.sort_by_key(|r| r.not_after);
    let mut retired = BTreeMap::new();
    let mut active = None;
    for r in ints {
        let der = r.cert_der.clone().ok_or_else(|| {
            ServerError::Internal(format!("CA record {} has no certificate", r.id))
        })?;
        let issuer = X509Issuer::new(der, unwrap(r)?)?;
        if r.active {
            if let Some((old_id, old)) = active.replace((r.id.clone(), issuer)) {
                retired.insert(old_id, old);
            }
        } else {
            retired.insert(r.id.clone(), issuer);
        }
    }
    let due = |i: &X509Issuer| {
        let life = i.not_after - i.not_before;
        i.not_after - now < life / 3
    };
    let (intermediate_id, intermediate) = match active {
        Some((id, i)) if !due(&i) => (id, i),
        previous => {
            let reason = if previous.is_some() {
                "rotation"
            } else {
                "first start"
            };
            let (id, issuer) =
                new_intermediate(store, wrapper, td, &root, lifetimes, now, rng).await?;
            if let Some((old_id, old)) = previous {
                store
                    .set_ca_active(
                        &old_id,
                        false,
                        system_audit(now, "ca.deactivate", &old_id, json!({"replaced_by": id})),
                    )
                    .await?;
                retired.insert(old_id, old);
            }
            tracing::info!(id, reason, "created intermediate CA");
            (id, issuer)
        }
    };

    // JWT keys: those still published, the one signing now (created if
    // none), and the next one once the current has a third of its life
    // left (published from then on, signing from the current one's end)
    let published =
        |r: &&CaRecord| r.role == "jwt" && r.active && now < r.not_after + JWT_RETIRED_PUBLISHED;
    let mut jwt_keys = Vec::new();
    for r in records.iter().filter(published) {
        jwt_keys.push(JwtKey {
            signer: JwtSigner::new(unwrap(r)?),
            not_before: r.not_before,
            not_after: r.not_after,
        });
    }
    let signing = |keys: &[JwtKey]| {
        keys.iter()
            .filter(|k| k.not_before <= now && now < k.not_after)
            .map(|k| k.not_after)
            .max()
    };
    let created = |id: &str, detail: Value| system_audit(now, "ca.create", id, detail);
    match signing(&jwt_keys) {
        None => jwt_keys.push(new_jwt_key(store, wrapper, lifetimes, now, now, created).await?),
        Some(ends) => {
            let has_next = jwt_keys.iter().any(|k| k.not_before > now);
            if !has_next && ends - now < lifetimes.jwt_key / 3 {
                jwt_keys.push(new_jwt_key(store, wrapper, lifetimes, now, ends, created).await?);
            }
        }
    }
    jwt_keys.sort_by_key(|k| k.not_before);

    let sequence = records.len() as u64 + 1;
    let bundle_pem = credence_ca::x509::certs_to_pem([root.cert_der.as_slice()]);
    let chain_pem = credence_ca::x509::certs_to_pem([intermediate.cert_der.as_slice()]);
    Ok(Authority {
        bundle_pem,
        chain_pem,
        trust_domain: td.clone(),
        root_id,
        root,
        intermediate_id,
        intermediate,
        retired,
        jwt_keys,
        sequence,
    })
}

/// Creates and stores a new active intermediate signed by `root`.
pub async fn new_intermediate(
    store: &dyn Store,
    wrapper: &KeyWrapper,
    td: &TrustDomain,
    root: &X509Issuer,
    lifetimes: &CaLifetimes,
    now: OffsetDateTime,
    rng: &dyn Random,
) -> Result<(String, X509Issuer), ServerError> {
    let serial = Serial::from_random(rng.bytes16());
    let id = format!("int-{}", &serial.to_hex()[..16]);
    let (key, wrapped) = generate_wrapped(wrapper, &id)?;
    let der = create_intermediate(
        td,
        root,
        key.as_ref(),
        &serial,
        now,
        now + lifetimes.intermediate,
    )?;
    let issuer = X509Issuer::new(der.clone(), key.clone())?;
    save(
        store,
        &id,
        "intermediate",
        Some(der),
        &key,
        wrapped,
        &issuer,
        now,
    )
    .await?;
    Ok((id, issuer))
}

/// Generates a software key and wraps it for storage under record `id`.
fn generate_wrapped(
    wrapper: &KeyWrapper,
    id: &str,
) -> Result<(Arc<dyn Signer>, Vec<u8>), ServerError> {
    let key = SoftwareKey::generate()?;
    let wrapped = wrapper.wrap(id, key.pkcs8_der())?;
    Ok((Arc::new(key), wrapped))
}

#[allow(clippy::too_many_arguments)]
async fn save(
    store: &dyn Store,
    id: &str,
    role: &str,
    cert_der: Option<Vec<u8>>,
    key: &Arc<dyn Signer>,
    wrapped: Vec<u8>,
    issuer: &X509Issuer,
    now: OffsetDateTime,
) -> Result<(), ServerError> {
    store
        .save_ca(
            &CaRecord {
                id: id.to_owned(),
                role: role.to_owned(),
                cert_der,
                public_key_der: key.public_key_spki(),
                wrapped_key: wrapped,
                not_before: issuer.not_before,
                not_after: issuer.not_after,
                active: true,
                created_at: now,
            },
            system_audit(
                now,
                "ca.create",
                id,
                json!({"role": role, "not_after": issuer.not_after.unix_timestamp()}),
            ),
        )
        .await?;
    Ok(())
}
