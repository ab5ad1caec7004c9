//! Named administrators: each has its own token (shown once, only its
//! SHA-256 stored) and belongs to teams; policies decide what each may do
//! (see [`crate::authz`]). Creating and deleting them is audited.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::Duration;

use credence_ca::sha256_hex;
use credence_core::{Admin, AdminName, Owner};

use crate::ServerError;
use crate::authz::AdminPrincipal;
use crate::service::{Actor, Service, audit};

/// Every named administrator's token starts with this, so secret scanners
/// can recognise a leaked one.
pub const TOKEN_PREFIX: &str = "cadm_";

/// Longest lifetime of an administrator's token.
pub const MAX_TTL: Duration = Duration::days(366);

/// A new administrator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAdmin {
    pub name: AdminName,
    #[serde(default)]
    pub teams: Vec<Owner>,
    #[serde(default)]
    pub description: Option<String>,
    /// Lifetime of the token in seconds (default: no expiry).
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// A created administrator and its token (shown once).
#[derive(Serialize)]
pub struct CreatedAdmin {
    #[serde(flatten)]
    pub admin: Admin,
    pub token: String,
}

/// What a presented administrator token turned out to be.
#[derive(Debug)]
pub enum TokenLookup {
    Admin(AdminPrincipal),
    Unknown,
    Expired,
}

impl Service {
    pub async fn create_admin(
        &self,
        actor: &Actor,
        new: NewAdmin,
    ) -> Result<CreatedAdmin, ServerError> {
        if new.name.is_root() {
            return Err(ServerError::bad(
                "reserved_name",
                "the name root belongs to the configured admin token",
            ));
        }
        if new.teams.len() > Admin::MAX_TEAMS {
            return Err(ServerError::bad(
                "invalid_request",
                format!("an administrator has at most {} teams", Admin::MAX_TEAMS),
            ));
        }
        let description = new.description.unwrap_or_default();
        if description.len() > 4096 {
            return Err(ServerError::bad(
                "invalid_request",
                "description is longer than 4096 bytes",
            ));
        }
        let now = self.clock.now();
        let expires_at = match new.ttl_seconds {
            None => None,
            Some(s) if s > 0 && Duration::seconds(s) <= MAX_TTL => Some(now + Duration::seconds(s)),
            Some(_) => {
                return Err(ServerError::bad(
                    "invalid_ttl",
                    "an administrator token's ttl must be between 1s and 366d",
                ));
            }
        };
        let mut teams: Vec<Owner> = Vec::new();
        for t in new.teams {
            if !teams.contains(&t) {
                teams.push(t);
            }
        }
        let admin = Admin {
            name: new.name,
            teams,
            description,
            created_at: now,
            created_by: actor.name.clone(),
            expires_at,
        };
        let mut secret = [0u8; 32];
        self.rng.fill(&mut secret);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        self.store
            .create_admin(
                &admin,
                &sha256_hex(token.as_bytes()),
                audit(
                    actor,
                    now,
                    "admin.create",
                    admin.name.as_str(),
                    json!({"teams": admin.teams, "expires_at": expires_at.map(|t| t.unix_timestamp())}),
                ),
            )
            .await?;
        Ok(CreatedAdmin { admin, token })
    }

    pub async fn list_admins(&self) -> Result<Vec<Admin>, ServerError> {
        Ok(self.store.list_admins().await?)
    }

    pub async fn get_admin(&self, name: &AdminName) -> Result<Admin, ServerError> {
        self.store
            .get_admin(name)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("admin {name} not found")))
    }

    pub async fn delete_admin(&self, actor: &Actor, name: &AdminName) -> Result<(), ServerError> {
        self.store
            .delete_admin(
                name,
                audit(
                    actor,
                    self.clock.now(),
                    "admin.delete",
                    name.as_str(),
                    json!({}),
                ),
            )
            .await?;
        Ok(())
    }

    /// The administrator holding `token`, if any and unexpired; `Err`
    /// only when the store cannot answer.
    pub async fn admin_by_token(&self, token: &str) -> Result<TokenLookup, ServerError> {
        let Some(a) = self
            .store
            .admin_by_token_hash(&sha256_hex(token.as_bytes()))
            .await?
        else {
            return Ok(TokenLookup::Unknown);
        };
        if a.expires_at.is_some_and(|e| e <= self.clock.now()) {
            return Ok(TokenLookup::Expired);
        }
        Ok(TokenLookup::Admin(AdminPrincipal {
            name: a.name,
            teams: a.teams.iter().map(|t| t.as_str().to_owned()).collect(),
        }))
    }
}
