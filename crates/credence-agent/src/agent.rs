//! The agent's cache of workload credentials, kept current from an
//! [`Upstream`], and served through the Workload API ([`Provider`]).
//!
//! - One X509-SVID per entry. Keys are generated here and never leave the
//!   node: the server signs CSRs. An SVID is replaced at half its lifetime,
//!   when its registration changes, and as soon as the server reports it
//!   revoked.
//! - The cache is refreshed at once on every change the server pushes, at
//!   the next renewal time, and at least every 30 s.
//! - While the server is unreachable, the cache keeps serving what it has
//!   (until each SVID expires) and retries with exponential backoff
//!   (250 ms doubling to 30 s).
//! - JWT-SVIDs are fetched on demand and cached per (SPIFFE ID, audience)
//!   until half their lifetime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use time::OffsetDateTime;
use tokio::sync::watch;

use credence_core::{Clock, Selector, SystemClock};

use crate::attest::matches;
use crate::upstream::{AgentError, EntrySpec, Upstream};
use crate::workload_api::{JwtMaterial, Provider, X509Material};

/// Longest wait between two refreshes.
const MAX_IDLE: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Most CSRs sent in one call.
const SIGN_BATCH: usize = 256;

#[derive(Clone)]
struct Svid {
    spec: EntrySpec,
    serial: String,
    not_after: OffsetDateTime,
    renew_at: OffsetDateTime,
    material: Arc<X509Material>,
}

#[derive(Default)]
struct State {
    trust_domain_id: String,
    bundle_der: Arc<Vec<u8>>,
    jwks: Vec<u8>,
    federated: std::collections::BTreeMap<String, crate::upstream::FederatedBundle>,
    svids: Vec<Svid>,
}

impl State {
    /// The foreign trust domains the workload's identities federate with.
    fn federated_for(&self, selectors: &[Selector], now: OffsetDateTime) -> Vec<&str> {
        let mut tds: Vec<&str> = self
            .svids
            .iter()
            .filter(|x| now < x.not_after && matches(&x.spec.selectors, selectors))
            .flat_map(|x| x.spec.federates_with.iter().map(String::as_str))
            .filter(|td| self.federated.contains_key(*td))
            .collect();
        tds.sort_unstable();
        tds.dedup();
        tds
    }
}

struct CachedJwt {
    token: String,
    renew_at: OffsetDateTime,
}

/// The agent cache; see the module docs.
pub struct Agent<U> {
    upstream: U,
    state: RwLock<State>,
    jwts: Mutex<HashMap<(String, Vec<String>), CachedJwt>>,
    tx: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
}

/// A P-256 key and a CSR for `spiffe_id` over it (PKCS#8 DER, CSR DER).
pub fn key_and_csr(spiffe_id: &str) -> Result<(Vec<u8>, Vec<u8>), AgentError> {
    let local = |e: rcgen::Error| AgentError::Local(format!("key generation: {e}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(local)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(local)?;
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(spiffe_id.try_into().map_err(|_| {
            AgentError::Local(format!("{spiffe_id} is not an IA5 string"))
        })?)];
    let csr = params.serialize_request(&key).map_err(local)?;
    Ok((key.serialize_der(), csr.der().to_vec()))
}

fn from_unix(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl<U: Upstream> Agent<U> {
    pub fn new(upstream: U) -> Arc<Self> {
        Self::with_clock(upstream, Arc::new(SystemClock))
    }

    /// With an injected clock (tests drive rotation without sleeping).
    pub fn with_clock(upstream: U, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            state: RwLock::new(State::default()),
            jwts: Mutex::new(HashMap::new()),
            tx: watch::channel(0).0,
            clock,
        })
    }

    pub fn upstream(&self) -> &U {
        &self.upstream
    }

    fn bump(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How many X509-SVIDs the cache holds.
    pub fn svid_count(&self) -> usize {
        self.state.read().map(|s| s.svids.len()).unwrap_or(0)
    }

    /// Drops every credential (the node was evicted); open streams end.
    pub fn clear(&self) {
        if let Ok(mut s) = self.state.write() {
            s.svids.clear();
        }
        if let Ok(mut j) = self.jwts.lock() {
            j.clear();
        }
        self.bump();
    }

    /// Keeps the cache current until `stop` fires or the server refuses
    /// this agent (then the cache is cleared and the error returned).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut changes = self.upstream.changes();
        let mut backoff = BACKOFF_MIN;
        loop {
            let wait = match self.refresh().await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    self.next_wake()
                }
                Err(AgentError::Refused(m)) => {
                    tracing::error!(reason = %m, "the server refused this agent; dropping every credential");
                    self.clear();
                    return Err(AgentError::Refused(m));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "refresh failed; serving the cache");
                    let w = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    w
                }
            };
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Ok(()) },
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    fn next_wake(&self) -> Duration {
        let now = self.clock.now();
        self.state
            .read()
            .ok()
            .and_then(|s| s.svids.iter().map(|x| x.renew_at).min())
            .map(|t| {
                Duration::try_from(t - now)
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_millis(100))
            })
            .unwrap_or(MAX_IDLE)
            .min(MAX_IDLE)
    }

    /// One sync with the server: new, changed, due and revoked SVIDs are
    /// (re)issued, the rest kept.
    pub async fn refresh(&self) -> Result<(), AgentError> {
        let held: Vec<String> = self
            .state
            .read()
            .map(|s| s.svids.iter().map(|x| x.serial.clone()).collect())
            .unwrap_or_default();
        let mut synced = self.upstream.sync(held).await?;
        let now = self.clock.now();
        let mut keep: HashMap<String, Svid> = HashMap::new();
        let mut bundle_changed = false;
        // a snapshot: the cache keeps serving while this refresh signs
        if let Ok(s) = self.state.read() {
            bundle_changed = *s.bundle_der != *synced.bundle_der
                || s.jwks != synced.jwks
                || s.federated != synced.federated;
            if !bundle_changed {
                // one shared copy of the bundle across all SVIDs
                synced.bundle_der = s.bundle_der.clone();
            }
            for x in &s.svids {
                keep.insert(x.spec.spiffe_id.clone(), x.clone());
            }
        }
        let revoked: HashSet<&str> = synced.revoked.iter().map(String::as_str).collect();
        let mut fresh = Vec::with_capacity(synced.entries.len());
        let mut due = Vec::new();
        let before = keep.len();
        for spec in &synced.entries {
            match keep.remove(&spec.spiffe_id) {
                Some(mut x)
                    if x.spec.revision == spec.revision
                        && now < x.renew_at
                        && !revoked.contains(x.serial.as_str()) =>
                {
                    // selectors may change without a new SVID
                    x.spec = spec.clone();
                    if bundle_changed {
                        let mut m = (*x.material).clone();
                        m.bundle_der = synced.bundle_der.clone();
                        x.material = Arc::new(m);
                    }
                    fresh.push(x);
                }
                Some(old) => due.push((spec.clone(), Some(old))),
                None => due.push((spec.clone(), None)),
            }
        }
        let removed = !keep.is_empty();
        let mut changed = removed || bundle_changed || !due.is_empty() || before != fresh.len();
        // an old SVID still valid and not revoked is served until its
        // replacement arrives; revoked and unregistered ones go at once
        let usable = |o: &Option<Svid>| {
            o.as_ref()
                .filter(|o| now < o.not_after && !revoked.contains(o.serial.as_str()))
                .cloned()
        };
        if !due.is_empty() {
            let mut interim = fresh.clone();
            interim.extend(due.iter().filter_map(|(_, o)| usable(o)));
            self.install(&synced, interim);
        }

        for (n, chunk) in due.chunks(SIGN_BATCH).enumerate() {
            let mut keys = Vec::with_capacity(chunk.len());
            let mut reqs = Vec::with_capacity(chunk.len());
            for (spec, _) in chunk {
                let (key, csr) = key_and_csr(&spec.spiffe_id)?;
                keys.push(key);
                reqs.push((spec.spiffe_id.clone(), csr));
            }
            let results = match self.upstream.sign(reqs).await {
                Ok(r) => r,
                Err(e) => {
                    // keep serving the still-valid old SVIDs not yet replaced
                    let rest = due.get(n * SIGN_BATCH..).unwrap_or_default();
                    fresh.extend(rest.iter().filter_map(|(_, o)| usable(o)));
                    self.install(&synced, fresh);
                    if changed {
                        self.bump();
                    }
                    return Err(e);
                }
            };
            for (((spec, _), key), result) in chunk.iter().zip(keys).zip(results) {
                match result {
                    Ok(signed) => {
                        let not_after = from_unix(signed.not_after);
                        let renew_at = now + (not_after - now) / 2;
                        fresh.push(Svid {
                            spec: spec.clone(),
                            serial: signed.serial,
                            not_after,
                            renew_at,
                            material: Arc::new(X509Material {
                                spiffe_id: spec.spiffe_id.clone(),
                                chain_der: signed.chain_der,
                                key_pkcs8: key,
                                bundle_der: synced.bundle_der.clone(),
                                hint: String::new(),
                            }),
                        });
                    }
                    Err(why) => {
                        changed = true;
                        tracing::warn!(spiffe_id = %spec.spiffe_id, %why, "the server did not sign");
                    }
                }
            }
        }
        self.install(&synced, fresh);
        if changed {
            self.bump();
        }
        Ok(())
    }

    fn install(&self, synced: &crate::upstream::Synced, svids: Vec<Svid>) {
        if let Ok(mut s) = self.state.write() {
            s.trust_domain_id = synced.trust_domain_id.clone();
            s.bundle_der = synced.bundle_der.clone();
            s.jwks = synced.jwks.clone();
            s.federated = synced.federated.clone();
            s.svids = svids;
        }
    }

    async fn jwt_for(
        &self,
        spiffe_id: String,
        audience: Vec<String>,
    ) -> Result<JwtMaterial, String> {
        let now = self.clock.now();
        let key = (spiffe_id.clone(), audience.clone());
        if let Some(hit) = self.jwts.lock().ok().and_then(|m| {
            m.get(&key)
                .filter(|c| now < c.renew_at)
                .map(|c| c.token.clone())
        }) {
            return Ok(JwtMaterial {
                spiffe_id,
                token: hit,
                hint: String::new(),
            });
        }
        let signed = self
            .upstream
            .jwt(spiffe_id.clone(), audience)
            .await
            .map_err(|e| e.to_string())?;
        let exp = from_unix(signed.expires_at);
        if let Ok(mut m) = self.jwts.lock() {
            m.retain(|_, c| now < c.renew_at);
            m.insert(
                key,
                CachedJwt {
                    token: signed.token.clone(),
                    renew_at: now + (exp - now) / 2,
                },
            );
        }
        Ok(JwtMaterial {
            spiffe_id,
            token: signed.token,
            hint: String::new(),
        })
    }
}

impl<U: Upstream> Provider for Agent<U> {
    fn x509_svids(&self, selectors: &[Selector]) -> Vec<X509Material> {
        let now = self.clock.now();
        self.state
            .read()
            .map(|s| {
                s.svids
                    .iter()
                    .filter(|x| now < x.not_after && matches(&x.spec.selectors, selectors))
                    .map(|x| x.material.as_ref().clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn x509_bundles(&self, selectors: &[Selector]) -> HashMap<String, Vec<u8>> {
        let now = self.clock.now();
        self.state
            .read()
            .map(|s| {
                let mut out = HashMap::from([(s.trust_domain_id.clone(), s.bundle_der.to_vec())]);
                for td in s.federated_for(selectors, now) {
                    if let Some(b) = s.federated.get(td) {
                        out.insert(td.to_owned(), b.x509_der.to_vec());
                    }
                }
                out
            })
            .unwrap_or_default()
    }

    fn jwt_bundles(&self, selectors: &[Selector]) -> HashMap<String, Vec<u8>> {
        let now = self.clock.now();
        self.state
            .read()
            .map(|s| {
                let mut out = HashMap::from([(s.trust_domain_id.clone(), s.jwks.clone())]);
                for td in s.federated_for(selectors, now) {
                    if let Some(b) = s.federated.get(td) {
                        out.insert(td.to_owned(), b.jwks.clone());
                    }
                }
                out
            })
            .unwrap_or_default()
    }

    fn trust_domain_id(&self) -> String {
        self.state
            .read()
            .map(|s| s.trust_domain_id.clone())
            .unwrap_or_default()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    fn jwt_svids(
        &self,
        selectors: Vec<Selector>,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<JwtMaterial>, String>> {
        Box::pin(async move {
            let ids: Vec<String> = self
                .x509_svids(&selectors)
                .into_iter()
                .map(|m| m.spiffe_id)
                .filter(|id| spiffe_id.as_ref().is_none_or(|want| want == id))
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.jwt_for(id, audience.clone()).await?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Signed, SignedJwt, Synced};
    use credence_core::ManualClock;

    /// An upstream whose entries, revocations and failures the test sets;
    /// it "signs" by numbering serials.
    struct Fake {
        clock: Arc<ManualClock>,
        entries: Mutex<Vec<EntrySpec>>,
        revoked: Mutex<Vec<String>>,
        fail_sign: Mutex<bool>,
        next: Mutex<u32>,
        tx: watch::Sender<u64>,
        federated: Mutex<std::collections::BTreeMap<String, crate::upstream::FederatedBundle>>,
    }

    impl Upstream for Arc<Fake> {
        fn sync(&self, _held: Vec<String>) -> BoxFuture<'_, Result<Synced, AgentError>> {
            Box::pin(async move {
                Ok(Synced {
                    trust_domain_id: "spiffe://example.org".into(),
                    entries: self.entries.lock().unwrap().clone(),
                    bundle_der: Arc::new(vec![1, 2, 3]),
                    jwks: b"{}".to_vec(),
                    revoked: self.revoked.lock().unwrap().clone(),
                    federated: self.federated.lock().unwrap().clone(),
                })
            })
        }
        fn sign(
            &self,
            requests: Vec<(String, Vec<u8>)>,
        ) -> BoxFuture<'_, Result<Vec<Result<Signed, String>>, AgentError>> {
            Box::pin(async move {
                if *self.fail_sign.lock().unwrap() {
                    return Err(AgentError::Unavailable("down".into()));
                }
                let exp = (self.clock.now() + time::Duration::hours(1)).unix_timestamp();
                Ok(requests
                    .into_iter()
                    .map(|(id, _)| {
                        let mut n = self.next.lock().unwrap();
                        *n += 1;
                        Ok(Signed {
                            spiffe_id: id,
                            serial: format!("s{n}"),
                            not_after: exp,
                            chain_der: vec![0x30],
                        })
                    })
                    .collect())
            })
        }
        fn jwt(&self, _: String, _: Vec<String>) -> BoxFuture<'_, Result<SignedJwt, AgentError>> {
            Box::pin(async { Err(AgentError::Unavailable("no".into())) })
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.tx.subscribe()
        }
    }

    fn spec(id: &str, rev: &str) -> EntrySpec {
        EntrySpec {
            spiffe_id: format!("spiffe://example.org/{id}"),
            selectors: vec![Selector::parse("unix:uid:1").unwrap()],
            revision: rev.into(),
            federates_with: vec![],
        }
    }

    fn serials<U: Upstream>(a: &Agent<U>) -> Vec<String> {
        let mut v: Vec<String> = a
            .state
            .read()
            .unwrap()
            .svids
            .iter()
            .map(|x| x.serial.clone())
            .collect();
        v.sort();
        v
    }

    /// A foreign bundle goes only to workloads whose identities federate
    /// with its trust domain, and a changed foreign bundle is a change.
    #[tokio::test]
    async fn federated_bundles_reach_only_workloads_that_federate() {
        let clock = ManualClock::new(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
        let mut a = spec("a", "1");
        a.federates_with = vec!["spiffe://partner.example".into()];
        let mut b = spec("b", "1");
        b.selectors = vec![Selector::parse("unix:uid:2").unwrap()];
        let bundle = |n: u8| crate::upstream::FederatedBundle {
            x509_der: Arc::new(vec![n]),
            jwks: format!("{{\"keys\":[],\"n\":{n}}}").into_bytes(),
        };
        let fake = Arc::new(Fake {
            clock: clock.clone(),
            entries: Mutex::new(vec![a, b]),
            revoked: Mutex::new(vec![]),
            fail_sign: Mutex::new(false),
            next: Mutex::new(0),
            tx: watch::channel(0).0,
            federated: Mutex::new(
                [
                    ("spiffe://partner.example".to_owned(), bundle(1)),
                    ("spiffe://other.example".to_owned(), bundle(9)),
                ]
                .into(),
            ),
        });
        let agent = Agent::with_clock(fake.clone(), clock.clone());
        agent.refresh().await.unwrap();
        let uid1 = [Selector::parse("unix:uid:1").unwrap()];
        let uid2 = [Selector::parse("unix:uid:2").unwrap()];
        let got = agent.x509_bundles(&uid1);
        assert_eq!(got.len(), 2);
        assert_eq!(got["spiffe://partner.example"], vec![1]);
        assert!(got.contains_key("spiffe://example.org"));
        assert_eq!(agent.jwt_bundles(&uid1).len(), 2);
        // b federates with nothing; nobody federates with other.example
        assert_eq!(agent.x509_bundles(&uid2).len(), 1);
        assert_eq!(agent.trust_domain_id(), "spiffe://example.org");

        let mut changes = agent.changes();
        changes.borrow_and_update();
        fake.federated
            .lock()
            .unwrap()
            .insert("spiffe://partner.example".to_owned(), bundle(2));
        agent.refresh().await.unwrap();
        assert!(changes.has_changed().unwrap());
        assert_eq!(
            agent.x509_bundles(&uid1)["spiffe://partner.example"],
            vec![2]
        );
        // no SVID was re-signed for a bundle change
        assert_eq!(serials(&agent), ["s1", "s2"]);
    }

    #[tokio::test]
    async fn rotates_at_half_life_replaces_revoked_and_survives_outages() {
        let clock = ManualClock::new(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
        let fake = Arc::new(Fake {
            clock: clock.clone(),
            entries: Mutex::new(vec![spec("a", "1"), spec("b", "1")]),
            revoked: Mutex::new(vec![]),
            fail_sign: Mutex::new(false),
            next: Mutex::new(0),
            tx: watch::channel(0).0,
            federated: Mutex::default(),
        });
        let agent = Agent::with_clock(fake.clone(), clock.clone());
        let me = [Selector::parse("unix:uid:1").unwrap()];
        agent.refresh().await.unwrap();
        assert_eq!(serials(&agent), ["s1", "s2"]);
        assert_eq!(agent.x509_svids(&me).len(), 2);

        // before half-life nothing changes; after it, both are re-signed
        clock.advance(time::Duration::minutes(29));
        agent.refresh().await.unwrap();
        assert_eq!(serials(&agent), ["s1", "s2"]);
        clock.advance(time::Duration::minutes(2));
        agent.refresh().await.unwrap();
        assert_eq!(serials(&agent), ["s3", "s4"]);

        // a revoked serial is replaced; a changed registration is re-signed
        fake.revoked.lock().unwrap().push("s3".into());
        *fake.entries.lock().unwrap() = vec![spec("a", "1"), spec("b", "2")];
        agent.refresh().await.unwrap();
        assert_eq!(serials(&agent), ["s5", "s6"]);

        // the server cannot sign: valid old SVIDs stay served
        fake.revoked.lock().unwrap().clear();
        *fake.fail_sign.lock().unwrap() = true;
        clock.advance(time::Duration::minutes(31));
        assert!(agent.refresh().await.is_err());
        assert_eq!(serials(&agent), ["s5", "s6"]);
        // ... until they expire
        clock.advance(time::Duration::minutes(30));
        assert!(agent.x509_svids(&me).is_empty());
        *fake.fail_sign.lock().unwrap() = false;
        agent.refresh().await.unwrap();
        assert_eq!(agent.x509_svids(&me).len(), 2);

        // unregistered: gone at once; other workloads see nothing
        *fake.entries.lock().unwrap() = vec![spec("a", "1")];
        agent.refresh().await.unwrap();
        assert_eq!(agent.x509_svids(&me).len(), 1);
        assert!(
            agent
                .x509_svids(&[Selector::parse("unix:uid:2").unwrap()])
                .is_empty()
        );
        agent.clear();
        assert!(agent.x509_svids(&me).is_empty());
    }
}
