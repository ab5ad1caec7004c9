//! Nodes and their agents: one-time join tokens, node attestation, the
//! agent's own X509-SVID (`spiffe://<td>/credence/agent/<node-id>`), what a
//! node's agent may fetch for its workloads, and eviction.
//!
//! A join token is shown once and stored only as its SHA-256. Redeeming it
//! and creating the node are one transaction, so a token cannot be used
//! twice even by racing agents. After attestation the agent authenticates
//! with its SVID over mTLS; every request checks that the node is active and
//! the presented certificate is not revoked, so eviction takes effect on the
//! next request. Evicting a node revokes every credential issued through it.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use credence_ca::sha256_hex;
use credence_ca::x509::CheckedCsr;
use credence_core::{
    Identity, IdentityId, IdentityStatus, JoinToken, Node, NodeId, NodeStatus, SpiffeId,
};
use credence_store::{IdentityFilter, Outcome, RevokedEntry, StoreError};

use crate::ServerError;
use crate::service::{Actor, JwtSvid, Service, Subject, X509Svid, audit};

/// Shortest and longest join token lifetimes.
pub const JOIN_TOKEN_MIN_TTL: Duration = Duration::seconds(10);
pub const JOIN_TOKEN_MAX_TTL: Duration = Duration::days(30);

/// A freshly created join token: the secret is shown here only.
#[derive(Clone, Debug, Serialize)]
pub struct NewJoinToken {
    pub id: String,
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// What an agent serves, as of one moment.
#[derive(Clone, Debug, Serialize)]
pub struct NodeEntry {
    pub id: IdentityId,
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<credence_core::Selector>,
    /// Foreign trust domains whose bundles its workloads receive.
    pub federates_with: Vec<credence_core::TrustDomain>,
    /// Changes whenever the identity does.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Service {
    fn node_actor(node: &Node, client_addr: Option<String>) -> Actor {
        Actor {
            name: node.spiffe_id.to_string(),
            method: if node.attestation == "in_process" {
                "in_process"
            } else {
                "x509_svid"
            },
            request_id: None,
            client_addr,
            principal: crate::authz::Principal::Node,
        }
    }

    /// Records a refused request; failures to record are logged.
    async fn record_refusal(&self, actor: &Actor, action: &str, target: &str, why: &str) {
        let mut rec = audit(actor, self.clock.now(), action, target, json!({}));
        rec.outcome = Outcome::Failure;
        rec.reason = Some(why.to_owned());
        if let Err(e) = self.store.append_audit(rec).await {
            tracing::error!(error = %e, "cannot record a refused request");
        }
    }

    /// The in-process agent of `credence dev`: a node that is never stored
    /// (id all zeros), serving identities not restricted to other nodes.
    pub fn local_node(&self) -> Result<Node, ServerError> {
        let id = NodeId::from_random([0; 16]);
        let now = self.clock.now();
        Ok(Node {
            spiffe_id: id.agent_spiffe_id(&self.trust_domain())?,
            id,
            attestation: "in_process".into(),
            token_id: None,
            status: NodeStatus::Active,
            agent_serial: None,
            agent_not_after: None,
            created_at: now,
            updated_at: now,
        })
    }

    /// Creates a one-time join token valid for `ttl`.
    pub async fn create_join_token(
        &self,
        actor: &Actor,
        ttl: Duration,
    ) -> Result<NewJoinToken, ServerError> {
        if !(JOIN_TOKEN_MIN_TTL..=JOIN_TOKEN_MAX_TTL).contains(&ttl) {
            return Err(ServerError::bad(
                "invalid_ttl",
                "a join token's ttl must be between 10s and 30d",
            ));
        }
        let mut secret = [0u8; 32];
        self.rng.fill(&mut secret);
        let id = hex::encode(&self.rng.bytes16()[..8]);
        // the id prefix lets operators match a token to its audit trail
        let token = format!("{id}.{}", URL_SAFE_NO_PAD.encode(secret));
        let now = self.clock.now();
        let record = JoinToken {
            id: id.clone(),
            hash: sha256_hex(token.as_bytes()),
            created_at: now,
            expires_at: now + ttl,
            used_at: None,
            node_id: None,
        };
        self.store
            .create_join_token(
                &record,
                audit(
                    actor,
                    now,
                    "node.token.create",
                    &id,
                    json!({"expires_at": record.expires_at.unix_timestamp()}),
                ),
            )
            .await?;
        Ok(NewJoinToken {
            id,
            token,
            expires_at: record.expires_at,
        })
    }

    /// First attestation of a node: spends the join token, creates the
    /// node and signs its agent's SVID over the CSR's key.
    pub async fn attest_with_join_token(
        &self,
        token: &str,
        csr: CheckedCsr,
        client_addr: Option<String>,
    ) -> Result<(Node, X509Svid), ServerError> {
        // checked before the token is spent: a refused CSR must not cost it
        no_requested_id(&csr)?;
        let now = self.clock.now();
        let id = NodeId::from_random(self.rng.bytes16());
        let node = self.new_node(
            &id,
            "join_token".to_owned(),
            token.split_once('.').map(|(i, _)| i.to_owned()),
        )?;
        let spiffe_id = node.spiffe_id.clone();
        let actor = Actor {
            name: "anonymous".into(),
            method: "join_token",
            request_id: None,
            client_addr,
            principal: crate::authz::Principal::Anonymous,
        };
        let hash = sha256_hex(token.as_bytes());
        let rec = audit(
            &actor,
            now,
            "node.attest",
            spiffe_id.as_str(),
            json!({"node": id, "method": "join_token", "token_id": node.token_id}),
        );
        match self.store.redeem_join_token(&hash, now, &node, rec).await {
            Ok(_) => {}
            Err(
                e
                @ (StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::BadArgument(_)),
            ) => {
                let why = e.to_string();
                let target = node.token_id.as_deref().unwrap_or("");
                self.record_refusal(&actor, "node.attest", target, &why)
                    .await;
                // one answer for unknown, spent and expired tokens
                return Err(ServerError::Forbidden(
                    "invalid_join_token",
                    "join token is unknown, already used or expired".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let actor = Self::node_actor(&node, actor.client_addr);
        let svid = self.sign_agent_svid(&actor, &node, &csr).await?;
        let node = self.get_node(&id).await?;
        Ok((node, svid))
    }

    /// Attests a node by a token of an external OIDC issuer (a CI runner, a
    /// Kubernetes pod): verified strictly, then a trust rule of the active
    /// policy set must permit `attest_node` (ADR 0007). The node is named
    /// by the issuer and its node claim (`sub` unless configured), so
    /// tokens naming the same machine attest the same node (an evicted one
    /// stays out).
    pub async fn attest_with_oidc_token(
        &self,
        token: &str,
        csr: CheckedCsr,
        client_addr: Option<String>,
    ) -> Result<(Node, X509Svid), ServerError> {
        no_requested_id(&csr)?;
        let actor = Actor {
            name: "anonymous".into(),
            method: "oidc_token",
            request_id: None,
            client_addr,
            principal: crate::authz::Principal::Anonymous,
        };
        let refused = |why: String| ServerError::Forbidden("attestation_refused", why);
        let verifier = self.external_issuers().for_token(token);
        let node_claim = verifier
            .as_ref()
            .and_then(|v| v.issuer().node_claim.clone());
        let verified = match verifier {
            None => Err("the token's issuer is not a configured external issuer".to_owned()),
            Some(v) => v
                .verify(token, self.clock.now())
                .await
                .map_err(|e| e.to_string()),
        };
        let verified = match verified {
            Ok(v) => v,
            Err(why) => {
                self.record_refusal(&actor, "node.attest", "oidc", &why)
                    .await;
                return Err(refused(why));
            }
        };
        let who = format!("{}:{}", verified.issuer_name, verified.subject);
        let decision = self.node_trust_rule(&verified);
        if !decision.allow {
            let why = format!("no trust rule lets {who} attest a node");
            self.record_refusal(&actor, "node.attest", &who, &why).await;
            return Err(refused(why));
        }
        // the node is what the issuer's node claim names (default: sub)
        let claim = node_claim.as_deref().unwrap_or("sub");
        let Some(machine) = verified.claims.get(claim).and_then(Value::as_str) else {
            let why = format!("the token has no string claim {claim:?} naming the node");
            self.record_refusal(&actor, "node.attest", &who, &why).await;
            return Err(refused(why));
        };
        let digest = credence_ca::keys::sha256(
            format!("{}\n{claim}\n{machine}", verified.issuer_name).as_bytes(),
        );
        let mut id_bytes = [0u8; 16];
        id_bytes.copy_from_slice(&digest[..16]);
        let id = NodeId::from_random(id_bytes);
        let now = self.clock.now();
        let node = self.new_node(&id, format!("oidc:{}", verified.issuer_name), None)?;
        let rec = audit(
            &actor,
            now,
            "node.attest",
            node.spiffe_id.as_str(),
            json!({"node": id, "method": "oidc", "issuer": verified.issuer_name,
                   "subject": verified.subject, "rules": decision.policies}),
        );
        let node = match self.store.attest_node(&node, rec).await {
            Ok(n) => n,
            Err(StoreError::Conflict(why)) => {
                self.record_refusal(&actor, "node.attest", &who, &why).await;
                return Err(refused(why));
            }
            Err(e) => return Err(e.into()),
        };
        let actor = Self::node_actor(&node, actor.client_addr);
        let svid = self.sign_agent_svid(&actor, &node, &csr).await?;
        let node = self.get_node(&id).await?;
        Ok((node, svid))
    }

    /// A node attested now, active, with no agent SVID yet.
    fn new_node(
        &self,
        id: &NodeId,
        attestation: String,
        token_id: Option<String>,
    ) -> Result<Node, ServerError> {
        let now = self.clock.now();
        Ok(Node {
            id: id.clone(),
            spiffe_id: id.agent_spiffe_id(&self.trust_domain())?,
            attestation,
            token_id,
            status: NodeStatus::Active,
            agent_serial: None,
            agent_not_after: None,
            created_at: now,
            updated_at: now,
        })
    }

    async fn sign_agent_svid(
        &self,
        actor: &Actor,
        node: &Node,
        csr: &CheckedCsr,
    ) -> Result<X509Svid, ServerError> {
        if let Some(asked) = &csr.requested_id
            && asked != &node.spiffe_id
        {
            return Err(ServerError::bad(
                "spiffe_id_mismatch",
                format!(
                    "the CSR asks for {asked} but this agent is {}",
                    node.spiffe_id
                ),
            ));
        }
        // agent SVIDs are recorded under the node's id
        let as_identity = IdentityId::parse(node.id.as_str())?;
        let ttl_cap = u32::try_from(self.policy.agent_svid_ttl.whole_seconds()).ok();
        let svid = self
            .sign_x509(
                actor,
                Subject {
                    identity: None,
                    identity_id: &as_identity,
                    spiffe_id: &node.spiffe_id,
                    max_ttl_seconds: ttl_cap,
                    node: Some(&node.id),
                },
                &csr.key,
                Some(self.policy.agent_svid_ttl),
            )
            .await?;
        self.store
            .set_node_svid(
                &node.id,
                &svid.serial.to_hex(),
                svid.not_after,
                self.clock.now(),
            )
            .await?;
        Ok(svid)
    }

    /// A new SVID for an authenticated agent (renewal before expiry).
    pub async fn renew_agent(
        &self,
        node: &Node,
        csr: CheckedCsr,
        client_addr: Option<String>,
    ) -> Result<X509Svid, ServerError> {
        let actor = Self::node_actor(node, client_addr);
        self.sign_agent_svid(&actor, node, &csr).await
    }

    /// The node an agent's certificate (leaf DER, chain already verified
    /// by TLS) speaks for, if it is active and the certificate is live.
    pub async fn authenticate_agent(&self, leaf_der: &[u8]) -> Result<Node, ServerError> {
        let refuse = |m: &str| ServerError::Forbidden("agent_refused", m.to_owned());
        let info = credence_ca::x509::svid_info(leaf_der)
            .map_err(|_| refuse("the client certificate is not an X509-SVID"))?;
        let td = self.trust_domain();
        let id = NodeId::from_agent_spiffe_id(&info.spiffe_id, &td).ok_or_else(|| {
            refuse("the client certificate is not an agent SVID of this trust domain")
        })?;
        let node = self
            .store
            .get_node(&id)
            .await?
            .ok_or_else(|| refuse("unknown node"))?;
        if node.status != NodeStatus::Active {
            return Err(refuse("this node has been evicted"));
        }
        if self.store.is_revoked(&info.serial).await? {
            return Err(refuse("the agent's certificate has been revoked"));
        }
        Ok(node)
    }

    pub async fn get_node(&self, id: &NodeId) -> Result<Node, ServerError> {
        self.store
            .get_node(id)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("node {id} not found")))
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, ServerError> {
        Ok(self.store.list_nodes().await?)
    }

    /// Evicts a node: its agent is refused from now on and every credential
    /// issued through it is revoked; connected agents hear of it at once.
    pub async fn evict_node(
        &self,
        actor: &Actor,
        id: &NodeId,
    ) -> Result<Vec<RevokedEntry>, ServerError> {
        let node = self.get_node(id).await?;
        let now = self.clock.now();
        let revoked = self
            .store
            .evict_node(
                id,
                now,
                audit(
                    actor,
                    now,
                    "node.evict",
                    node.spiffe_id.as_str(),
                    json!({"node": id}),
                ),
            )
            .await?;
        self.revocations_changed();
        Ok(revoked)
    }

    /// Identities the agent of `node` hands to workloads: active, with
    /// selectors, and not restricted to other nodes.
    pub async fn node_entries(&self, node: &NodeId) -> Result<Vec<NodeEntry>, ServerError> {
        let filter = IdentityFilter {
            status: Some(IdentityStatus::Active),
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_identities(&filter, cursor.as_deref(), 1000)
                .await?;
            out.extend(
                page.items
                    .into_iter()
                    .filter(|i| serves(i, node))
                    .map(|i| NodeEntry {
                        id: i.id,
                        spiffe_id: i.spiffe_id,
                        selectors: i.selectors,
                        federates_with: i.federates_with,
                        updated_at: i.updated_at,
                    }),
            );
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(out)
    }

    async fn servable(
        &self,
        node: &Node,
        spiffe_id: &SpiffeId,
    ) -> Result<Arc<Identity>, ServerError> {
        let identity = self.issuable(spiffe_id).await?;
        if !serves(&identity, &node.id) {
            return Err(ServerError::Forbidden(
                "not_for_this_node",
                format!("{spiffe_id} is not served by node {}", node.id),
            ));
        }
        Ok(identity)
    }

    /// An X509-SVID for a workload of `node`, over the key of `csr`.
    pub async fn node_x509(
        &self,
        node: &Node,
        spiffe_id: &SpiffeId,
        csr: CheckedCsr,
        client_addr: Option<String>,
    ) -> Result<X509Svid, ServerError> {
        let actor = Self::node_actor(node, client_addr);
        let identity = match self.servable(node, spiffe_id).await {
            Ok(i) => i,
            Err(e) => {
                self.record_refusal(&actor, "x509.issue", spiffe_id.as_str(), &e.to_string())
                    .await;
                return Err(e);
            }
        };
        if let Some(asked) = &csr.requested_id
            && asked != spiffe_id
        {
            return Err(ServerError::bad(
                "spiffe_id_mismatch",
                format!("the CSR asks for {asked} but the request is for {spiffe_id}"),
            ));
        }
        self.sign_x509(
            &actor,
            Subject::of(&identity, Some(&node.id)),
            &csr.key,
            None,
        )
        .await
    }

    /// A JWT-SVID for a workload of `node`.
    pub async fn node_jwt(
        &self,
        node: &Node,
        spiffe_id: &SpiffeId,
        audience: &[String],
        client_addr: Option<String>,
    ) -> Result<JwtSvid, ServerError> {
        let actor = Self::node_actor(node, client_addr);
        let identity = match self.servable(node, spiffe_id).await {
            Ok(i) => i,
            Err(e) => {
                self.record_refusal(&actor, "jwt.issue", spiffe_id.as_str(), &e.to_string())
                    .await;
                return Err(e);
            }
        };
        self.sign_jwt(
            &actor,
            Subject::of(&identity, Some(&node.id)),
            audience,
            &[],
            None,
        )
        .await
    }

    /// Which of `serials` are revoked (agents drop those credentials).
    pub async fn revoked_among(&self, serials: &[String]) -> Result<Vec<String>, ServerError> {
        Ok(self.store.revoked_among(serials).await?)
    }
}

/// Whether `identity` is served by the agent of `node`.
fn serves(identity: &Identity, node: &NodeId) -> bool {
    identity.status == IdentityStatus::Active
        && !identity.selectors.is_empty()
        && (identity.nodes.is_empty() || identity.nodes.contains(node))
}

/// An attesting agent's SPIFFE ID is the server's to assign.
fn no_requested_id(csr: &CheckedCsr) -> Result<(), ServerError> {
    match &csr.requested_id {
        Some(asked) => Err(ServerError::bad(
            "spiffe_id_mismatch",
            format!(
                "the CSR asks for {asked}, but an attesting agent's SPIFFE ID is assigned by the server: send a CSR without a URI SAN"
            ),
        )),
        None => Ok(()),
    }
}
