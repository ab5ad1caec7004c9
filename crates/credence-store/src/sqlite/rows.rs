//! Conversions between rows and the store's types. A malformed value is a
//! [`StoreError::Invalid`] naming the table and column.

use std::collections::BTreeMap;
use std::str::FromStr;

use credence_core::{
    Admin, AdminName, BundleEndpointUrl, BundleProfile, Delegation, DelegationId, FederatedBundle,
    Federation, Grantor, Hop, Identity, IdentityId, IdentityKind, IdentityStatus, JoinToken,
    Labels, Mandate, Node, NodeId, NodeStatus, Owner, RevocationReason, Scope, Selector, SpiffeId,
    TrustDomain,
};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Decode, Row, Type};
use time::OffsetDateTime;

use crate::{
    AuditRecord, CaRecord, CredentialKind, IssuedCredential, PolicySetRecord, RevokedEntry,
    StoreError,
};

pub(crate) const IDENTITY_COLS: &str = "id, spiffe_id, kind, owner, description, labels_json, \
     selectors_json, nodes_json, scopes_json, federates_with_json, max_ttl_seconds, status, created_at, updated_at, last_issued_at";

pub(crate) const CREDENTIAL_COLS: &str = "serial, kind, identity_id, spiffe_id, issuer, \
     not_before, not_after, key_fingerprint, node_id, revoked_at, revocation_reason";

pub(crate) const NODE_COLS: &str = "id, spiffe_id, attestation, token_id, status, agent_serial, \
     agent_not_after, created_at, updated_at";

pub(crate) const CA_COLS: &str =
    "id, role, cert_der, public_key_der, wrapped_key, not_before, not_after, active, created_at";

pub(crate) const AUDIT_COLS: &str = "idx, leaf";

/// Unix seconds of a timestamp (sub-second precision is dropped).
pub(crate) fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// A timestamp as it will read back from the database.
pub(crate) fn truncate_ts(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

pub(crate) fn corrupt(table: &str, column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("corrupt {table} row: column {column}: {why}"))
}

fn get<'r, T>(row: &'r SqliteRow, table: &str, column: &str) -> Result<T, StoreError>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get::<T, _>(column)
        .map_err(|e| corrupt(table, column, e))
}

fn parse<T>(row: &SqliteRow, table: &str, column: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let s: String = get(row, table, column)?;
    s.parse().map_err(|e| corrupt(table, column, e))
}

fn time_col(row: &SqliteRow, table: &str, column: &str) -> Result<OffsetDateTime, StoreError> {
    let v: i64 = get(row, table, column)?;
    OffsetDateTime::from_unix_timestamp(v).map_err(|e| corrupt(table, column, e))
}

fn opt_time_col(
    row: &SqliteRow,
    table: &str,
    column: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    let v: Option<i64> = get(row, table, column)?;
    v.map(|v| OffsetDateTime::from_unix_timestamp(v).map_err(|e| corrupt(table, column, e)))
        .transpose()
}

fn kind_col(row: &SqliteRow, table: &str, column: &str) -> Result<CredentialKind, StoreError> {
    let s: String = get(row, table, column)?;
    CredentialKind::parse(&s)
        .ok_or_else(|| corrupt(table, column, format!("unknown credential kind {s:?}")))
}

pub(crate) fn labels_json(labels: &Labels) -> Result<String, StoreError> {
    serde_json::to_string(labels.as_map())
        .map_err(|e| StoreError::Invalid(format!("cannot encode labels: {e}")))
}

pub(crate) fn selectors_json(selectors: &[Selector]) -> Result<String, StoreError> {
    let v: Vec<&str> = selectors.iter().map(Selector::as_str).collect();
    serde_json::to_string(&v)
        .map_err(|e| StoreError::Invalid(format!("cannot encode selectors: {e}")))
}

pub(crate) fn identity(row: &SqliteRow) -> Result<Identity, StoreError> {
    const T: &str = "identities";
    let id: String = get(row, T, "id")?;
    let id = IdentityId::parse(&id).map_err(|e| corrupt(T, "id", e))?;
    let owner: String = get(row, T, "owner")?;
    let owner = Owner::new(&owner).map_err(|e| corrupt(T, "owner", e))?;
    let labels: String = get(row, T, "labels_json")?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|e| corrupt(T, "labels_json", e))?;
    let labels = Labels::new(labels).map_err(|e| corrupt(T, "labels_json", e))?;
    let selectors: String = get(row, T, "selectors_json")?;
    let selectors: Vec<String> =
        serde_json::from_str(&selectors).map_err(|e| corrupt(T, "selectors_json", e))?;
    let selectors = selectors
        .iter()
        .map(|s| Selector::parse(s).map_err(|e| corrupt(T, "selectors_json", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let nodes: String = get(row, T, "nodes_json")?;
    let nodes: Vec<NodeId> =
        serde_json::from_str(&nodes).map_err(|e| corrupt(T, "nodes_json", e))?;
    let scopes: String = get(row, T, "scopes_json")?;
    let scopes: Vec<String> =
        serde_json::from_str(&scopes).map_err(|e| corrupt(T, "scopes_json", e))?;
    let scopes = Scope::parse_list(scopes.iter().map(String::as_str))
        .map_err(|e| corrupt(T, "scopes_json", e))?;
    let federates: String = get(row, T, "federates_with_json")?;
    let federates: Vec<String> =
        serde_json::from_str(&federates).map_err(|e| corrupt(T, "federates_with_json", e))?;
    let federates_with = federates
        .iter()
        .map(|t| TrustDomain::new(t).map_err(|e| corrupt(T, "federates_with_json", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let max_ttl: Option<i64> = get(row, T, "max_ttl_seconds")?;
    let max_ttl_seconds = max_ttl
        .map(|v| u32::try_from(v).map_err(|e| corrupt(T, "max_ttl_seconds", e)))
        .transpose()?;
    Ok(Identity {
        id,
        spiffe_id: parse::<SpiffeId>(row, T, "spiffe_id")?,
        kind: parse::<IdentityKind>(row, T, "kind")?,
        owner,
        description: get(row, T, "description")?,
        labels,
        selectors,
        nodes,
        scopes,
        federates_with,
        max_ttl_seconds,
        status: parse::<IdentityStatus>(row, T, "status")?,
        created_at: time_col(row, T, "created_at")?,
        updated_at: time_col(row, T, "updated_at")?,
        last_issued_at: opt_time_col(row, T, "last_issued_at")?,
    })
}

/// A `credentials` row: the credential and, if revoked, its revocation.
pub(crate) fn credential(
    row: &SqliteRow,
) -> Result<(IssuedCredential, Option<RevokedEntry>), StoreError> {
    const T: &str = "credentials";
    let identity_id: String = get(row, T, "identity_id")?;
    let cred = IssuedCredential {
        kind: kind_col(row, T, "kind")?,
        serial: get(row, T, "serial")?,
        identity_id: IdentityId::parse(&identity_id).map_err(|e| corrupt(T, "identity_id", e))?,
        spiffe_id: parse::<SpiffeId>(row, T, "spiffe_id")?,
        issuer: get(row, T, "issuer")?,
        not_before: time_col(row, T, "not_before")?,
        not_after: time_col(row, T, "not_after")?,
        key_fingerprint: get(row, T, "key_fingerprint")?,
        node_id: opt_node_id(row, T, "node_id")?,
    };
    let revoked = match opt_time_col(row, T, "revoked_at")? {
        None => None,
        Some(revoked_at) => {
            let reason: Option<String> = get(row, T, "revocation_reason")?;
            let reason = reason.ok_or_else(|| {
                corrupt(T, "revocation_reason", "missing for a revoked credential")
            })?;
            let reason = RevocationReason::from_str(&reason)
                .map_err(|e| corrupt(T, "revocation_reason", e))?;
            Some(revoked_entry(&cred, revoked_at, reason))
        }
    };
    Ok((cred, revoked))
}

pub(crate) fn revoked_entry(
    cred: &IssuedCredential,
    revoked_at: OffsetDateTime,
    reason: RevocationReason,
) -> RevokedEntry {
    RevokedEntry {
        serial: cred.serial.clone(),
        kind: cred.kind.clone(),
        spiffe_id: cred.spiffe_id.clone(),
        revoked_at,
        reason,
        not_after: cred.not_after,
        issuer: cred.issuer.clone(),
    }
}

fn opt_node_id(row: &SqliteRow, table: &str, column: &str) -> Result<Option<NodeId>, StoreError> {
    let v: Option<String> = get(row, table, column)?;
    v.map(|v| NodeId::parse(&v).map_err(|e| corrupt(table, column, e)))
        .transpose()
}

pub(crate) fn node(row: &SqliteRow) -> Result<Node, StoreError> {
    const T: &str = "nodes";
    Ok(Node {
        id: parse::<NodeId>(row, T, "id")?,
        spiffe_id: parse::<SpiffeId>(row, T, "spiffe_id")?,
        attestation: get(row, T, "attestation")?,
        token_id: get(row, T, "token_id")?,
        status: parse::<NodeStatus>(row, T, "status")?,
        agent_serial: get(row, T, "agent_serial")?,
        agent_not_after: opt_time_col(row, T, "agent_not_after")?,
        created_at: time_col(row, T, "created_at")?,
        updated_at: time_col(row, T, "updated_at")?,
    })
}

pub(crate) fn join_token(row: &SqliteRow) -> Result<JoinToken, StoreError> {
    const T: &str = "join_tokens";
    Ok(JoinToken {
        id: get(row, T, "id")?,
        hash: get(row, T, "hash")?,
        created_at: time_col(row, T, "created_at")?,
        expires_at: time_col(row, T, "expires_at")?,
        used_at: opt_time_col(row, T, "used_at")?,
        node_id: opt_node_id(row, T, "node_id")?,
    })
}

pub(crate) fn scopes_json(scopes: &[Scope]) -> Result<String, StoreError> {
    serde_json::to_string(scopes).map_err(|e| StoreError::Invalid(format!("scopes: {e}")))
}

pub(crate) fn trust_domains_json(tds: &[TrustDomain]) -> Result<String, StoreError> {
    serde_json::to_string(tds).map_err(|e| StoreError::Invalid(format!("trust domains: {e}")))
}

pub(crate) const FEDERATION_COLS: &str = "trust_domain, bundle_endpoint, profile, \
     endpoint_spiffe_id, tls_roots_pem, created_at, created_by, bundle_document, bundle_sequence, \
     bundle_refresh_hint, bundle_fetched_at, last_error, last_attempt_at";

pub(crate) fn federation(row: &SqliteRow) -> Result<Federation, StoreError> {
    const T: &str = "federations";
    let profile: String = get(row, T, "profile")?;
    let endpoint_id: Option<String> = get(row, T, "endpoint_spiffe_id")?;
    let profile = match (profile.as_str(), endpoint_id) {
        ("https_web", _) => BundleProfile::HttpsWeb,
        ("https_spiffe", Some(id)) => BundleProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse(&id)
                .map_err(|e| corrupt(T, "endpoint_spiffe_id", e))?,
        },
        (other, _) => {
            return Err(corrupt(
                T,
                "profile",
                format!("unknown profile {other:?} or missing endpoint SPIFFE ID"),
            ));
        }
    };
    let document: Option<String> = get(row, T, "bundle_document")?;
    let unsigned = |col: &str| -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = get(row, T, col)?;
        v.map(|v| u64::try_from(v).map_err(|e| corrupt(T, col, e)))
            .transpose()
    };
    let bundle = match document {
        Some(document) => Some(FederatedBundle {
            document,
            sequence: unsigned("bundle_sequence")?,
            refresh_hint_seconds: unsigned("bundle_refresh_hint")?,
            fetched_at: time_col(row, T, "bundle_fetched_at")?,
        }),
        None => None,
    };
    Ok(Federation {
        trust_domain: parse::<TrustDomain>(row, T, "trust_domain")?,
        bundle_endpoint: parse::<BundleEndpointUrl>(row, T, "bundle_endpoint")?,
        profile,
        tls_roots_pem: get(row, T, "tls_roots_pem")?,
        created_at: time_col(row, T, "created_at")?,
        created_by: get(row, T, "created_by")?,
        bundle,
        last_error: get(row, T, "last_error")?,
        last_attempt_at: opt_time_col(row, T, "last_attempt_at")?,
    })
}

pub(crate) const ADMIN_COLS: &str =
    "name, teams_json, description, created_at, created_by, expires_at";

pub(crate) fn admin(row: &SqliteRow) -> Result<Admin, StoreError> {
    const T: &str = "admins";
    let teams: String = get(row, T, "teams_json")?;
    let teams: Vec<String> =
        serde_json::from_str(&teams).map_err(|e| corrupt(T, "teams_json", e))?;
    let teams = teams
        .iter()
        .map(|t| Owner::new(t).map_err(|e| corrupt(T, "teams_json", e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Admin {
        name: parse::<AdminName>(row, T, "name")?,
        teams,
        description: get(row, T, "description")?,
        created_at: time_col(row, T, "created_at")?,
        created_by: get(row, T, "created_by")?,
        expires_at: opt_time_col(row, T, "expires_at")?,
    })
}

pub(crate) fn nodes_json(nodes: &[NodeId]) -> Result<String, StoreError> {
    serde_json::to_string(nodes).map_err(|e| StoreError::Invalid(format!("nodes: {e}")))
}

pub(crate) const POLICY_COLS: &str =
    "version, namespace, schema, policies, note, created_at, created_by, active";

pub(crate) fn policy_set(row: &SqliteRow) -> Result<PolicySetRecord, StoreError> {
    const T: &str = "policy_sets";
    let version: i64 = get(row, T, "version")?;
    let active: i64 = get(row, T, "active")?;
    Ok(PolicySetRecord {
        version: u64::try_from(version).map_err(|e| corrupt(T, "version", e))?,
        namespace: get(row, T, "namespace")?,
        schema: get(row, T, "schema")?,
        policies: get(row, T, "policies")?,
        note: get(row, T, "note")?,
        created_at: time_col(row, T, "created_at")?,
        created_by: get(row, T, "created_by")?,
        active: active != 0,
    })
}

pub(crate) fn ca(row: &SqliteRow) -> Result<CaRecord, StoreError> {
    const T: &str = "cas";
    let active: i64 = get(row, T, "active")?;
    let active = match active {
        0 => false,
        1 => true,
        other => return Err(corrupt(T, "active", format!("{other} is not 0 or 1"))),
    };
    Ok(CaRecord {
        id: get(row, T, "id")?,
        role: get(row, T, "role")?,
        cert_der: get(row, T, "cert_der")?,
        public_key_der: get(row, T, "public_key_der")?,
        wrapped_key: get(row, T, "wrapped_key")?,
        not_before: time_col(row, T, "not_before")?,
        not_after: time_col(row, T, "not_after")?,
        active,
        created_at: time_col(row, T, "created_at")?,
    })
}

pub(crate) fn audit(row: &SqliteRow) -> Result<(u64, AuditRecord), StoreError> {
    const T: &str = "audit_log";
    let idx: i64 = get(row, T, "idx")?;
    let idx = u64::try_from(idx).map_err(|e| corrupt(T, "idx", e))?;
    let leaf: Vec<u8> = get(row, T, "leaf")?;
    let event = AuditRecord::from_leaf_bytes(&leaf).map_err(|e| corrupt(T, "leaf", e))?;
    Ok((idx, event))
}

pub(crate) const DELEGATION_COLS: &str = "id, parent_id, chain_json, principal_json, \
    grantor_json, grantee, scopes_json, audiences_json, max_token_ttl_seconds, max_depth, \
    not_before, expires_at, max_uses, uses, note, created_at, revoked_at, revocation_reason";

pub(crate) fn grantor_json(g: &Grantor) -> Result<String, StoreError> {
    serde_json::to_string(g).map_err(|e| StoreError::Invalid(e.to_string()))
}

pub(crate) fn delegation(row: &SqliteRow) -> Result<Delegation, StoreError> {
    const T: &str = "delegations";
    let json = |col: &str| -> Result<serde_json::Value, StoreError> {
        let s: String = get(row, T, col)?;
        serde_json::from_str(&s).map_err(|e| corrupt(T, col, e))
    };
    let grantor = |col: &str| -> Result<Grantor, StoreError> {
        serde_json::from_value(json(col)?).map_err(|e| corrupt(T, col, e))
    };
    let id_col = |col: &str| -> Result<Option<DelegationId>, StoreError> {
        let v: Option<String> = get(row, T, col)?;
        v.map(|v| DelegationId::parse(&v).map_err(|e| corrupt(T, col, e)))
            .transpose()
    };
    let unsigned = |col: &str| -> Result<u64, StoreError> {
        let v: i64 = get(row, T, col)?;
        u64::try_from(v).map_err(|e| corrupt(T, col, e))
    };
    let small = |col: &str| -> Result<u32, StoreError> {
        u32::try_from(unsigned(col)?).map_err(|e| corrupt(T, col, e))
    };
    let scopes: Vec<String> =
        serde_json::from_value(json("scopes_json")?).map_err(|e| corrupt(T, "scopes_json", e))?;
    let max_uses: Option<i64> = get(row, T, "max_uses")?;
    let grantee: String = get(row, T, "grantee")?;
    Ok(Delegation {
        id: id_col("id")?.ok_or_else(|| corrupt(T, "id", "missing"))?,
        parent: id_col("parent_id")?,
        chain: serde_json::from_value::<Vec<Hop>>(json("chain_json")?)
            .map_err(|e| corrupt(T, "chain_json", e))?,
        principal: grantor("principal_json")?,
        grantor: grantor("grantor_json")?,
        grantee: SpiffeId::parse(&grantee).map_err(|e| corrupt(T, "grantee", e))?,
        mandate: Mandate {
            scopes: Scope::parse_list(scopes.iter().map(String::as_str))
                .map_err(|e| corrupt(T, "scopes_json", e))?,
            audiences: serde_json::from_value(json("audiences_json")?)
                .map_err(|e| corrupt(T, "audiences_json", e))?,
            max_token_ttl_seconds: small("max_token_ttl_seconds")?,
            max_depth: small("max_depth")?,
            not_before: time_col(row, T, "not_before")?,
            expires_at: time_col(row, T, "expires_at")?,
            max_uses: max_uses
                .map(|u| u64::try_from(u).map_err(|e| corrupt(T, "max_uses", e)))
                .transpose()?,
        },
        uses: unsigned("uses")?,
        note: get(row, T, "note")?,
        created_at: time_col(row, T, "created_at")?,
        revoked_at: opt_time_col(row, T, "revoked_at")?,
        revocation_reason: get(row, T, "revocation_reason")?,
    })
}
