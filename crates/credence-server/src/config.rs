//! Configuration: the production config file (`credence server --config`) and
//! the dev-mode data directory. Both end up as [`runtime::Options`].
//!
//! [`runtime::Options`]: crate::runtime::Options

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use time::Duration;
use zeroize::Zeroizing;

use credence_core::{Random, SystemClock, TrustDomain};
use credence_store::Durability;

use crate::ServerError;
use crate::authority::CaLifetimes;
use crate::runtime::{Options, TlsFiles};
use crate::service::IssuancePolicy;

/// Largest config file accepted.
const MAX_CONFIG: u64 = 1024 * 1024;

/// The production config file (TOML). See `conf/server.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub trust_domain: TrustDomain,
    pub listen: SocketAddr,
    /// Address of the agent API (mTLS, for node agents); absent: off.
    #[serde(default)]
    pub agent_listen: Option<SocketAddr>,
    /// Externally visible base URL (JWT `iss`, OIDC discovery).
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    pub tls: TlsSection,
    #[serde(default)]
    pub database: DatabaseSection,
    pub ca: CaSection,
    #[serde(default)]
    pub issuance: IssuanceSection,
    pub admin: AdminSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub federation: FederationSection,
    #[serde(default)]
    pub oauth: OauthSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OauthSection {
    /// External OIDC issuers whose tokens trust rules (Cedar policies on
    /// `Credence::Action::"exchange_external_token"`) may exchange.
    #[serde(default)]
    pub external_issuers: Vec<crate::oidc::ExternalIssuer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// `spiffe_refresh_hint` of the served bundle (default: half the
    /// default X509-SVID lifetime).
    pub bundle_refresh_hint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// How often a checkpoint is signed while the log grows (default 1s).
    pub checkpoint_interval: Option<String>,
    /// One PDP allow in this many is audited (default 100; 0: none; 1:
    /// all). Every deny is audited.
    pub pdp_allow_sample: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// SQLite file; default `<data_dir>/credence.db`.
    pub path: Option<PathBuf>,
    /// `normal` (default) or `full`.
    pub durability: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// File holding the 32-byte key-encryption key, hex (64 characters).
    pub key_encryption_key_file: PathBuf,
    pub root_ttl: Option<String>,
    pub intermediate_ttl: Option<String>,
    pub jwt_key_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceSection {
    pub x509_default_ttl: Option<String>,
    pub x509_max_ttl: Option<String>,
    pub jwt_default_ttl: Option<String>,
    pub jwt_max_ttl: Option<String>,
    pub crl_lifetime: Option<String>,
    pub agent_svid_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// File holding the admin bearer token.
    pub token_file: PathBuf,
}

fn cfg_err(msg: impl Into<String>) -> ServerError {
    ServerError::bad("invalid_config", msg)
}

/// Parses `"90d"`, `"1h"`, `"10m"` into a duration.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, ServerError> {
    let d = humantime::parse_duration(s).map_err(|e| cfg_err(format!("{what} {s:?}: {e}")))?;
    let d = Duration::try_from(d).map_err(|_| cfg_err(format!("{what} {s:?} is too large")))?;
    if d <= Duration::ZERO {
        return Err(cfg_err(format!("{what} must be positive")));
    }
    Ok(d)
}

fn opt_duration(
    what: &str,
    s: &Option<String>,
    default: Duration,
) -> Result<Duration, ServerError> {
    match s {
        Some(s) => parse_duration(what, s),
        None => Ok(default),
    }
}

pub fn parse_durability(s: Option<&str>) -> Result<Durability, ServerError> {
    match s {
        None | Some("normal") => Ok(Durability::Normal),
        Some("full") => Ok(Durability::Full),
        Some(other) => Err(cfg_err(format!(
            "database.durability {other:?} must be \"normal\" or \"full\""
        ))),
    }
}

impl ServerConfig {
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| cfg_err(format!("config file {}: {e}", path.display())))?;
        if meta.len() > MAX_CONFIG {
            return Err(cfg_err(format!(
                "config file {} is larger than 1 MiB",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| cfg_err(format!("config file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| cfg_err(format!("config file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| cfg_err(e.to_string().trim().to_owned()))
    }

    /// Resolves files and durations into runtime options.
    pub fn into_options(self) -> Result<Options, ServerError> {
        let kek = read_kek(&self.ca.key_encryption_key_file)?;
        let admin_token = read_secret_file(&self.admin.token_file, "admin token")?;
        let d = CaLifetimes::default();
        let lifetimes = CaLifetimes {
            root: opt_duration("ca.root_ttl", &self.ca.root_ttl, d.root)?,
            intermediate: opt_duration(
                "ca.intermediate_ttl",
                &self.ca.intermediate_ttl,
                d.intermediate,
            )?,
            jwt_key: opt_duration("ca.jwt_key_ttl", &self.ca.jwt_key_ttl, d.jwt_key)?,
        };
        let p = IssuancePolicy::default();
        let i = &self.issuance;
        let policy = IssuancePolicy {
            x509_default_ttl: opt_duration(
                "issuance.x509_default_ttl",
                &i.x509_default_ttl,
                p.x509_default_ttl,
            )?,
            x509_max_ttl: opt_duration("issuance.x509_max_ttl", &i.x509_max_ttl, p.x509_max_ttl)?,
            jwt_default_ttl: opt_duration(
                "issuance.jwt_default_ttl",
                &i.jwt_default_ttl,
                p.jwt_default_ttl,
            )?,
            jwt_max_ttl: opt_duration("issuance.jwt_max_ttl", &i.jwt_max_ttl, p.jwt_max_ttl)?,
            crl_lifetime: opt_duration("issuance.crl_lifetime", &i.crl_lifetime, p.crl_lifetime)?,
            backdate: p.backdate,
            agent_svid_ttl: opt_duration(
                "issuance.agent_svid_ttl",
                &i.agent_svid_ttl,
                p.agent_svid_ttl,
            )?,
        };
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| cfg_err(format!("data_dir {}: {e}", self.data_dir.display())))?;
        Ok(Options {
            trust_domain: self.trust_domain,
            listen: self.listen,
            agent_listen: self.agent_listen,
            db_path: self
                .database
                .path
                .clone()
                .unwrap_or_else(|| self.data_dir.join("credence.db")),
            durability: parse_durability(self.database.durability.as_deref())?,
            kek,
            admin_token,
            tls: Some(TlsFiles {
                cert_file: self.tls.cert_file,
                key_file: self.tls.key_file,
            }),
            public_url: self.public_url,
            lifetimes,
            policy,
            clock: Arc::new(SystemClock),
            rng: Arc::new(credence_ca::SystemRandom),
            checkpoint_interval: opt_duration(
                "audit.checkpoint_interval",
                &self.audit.checkpoint_interval,
                Duration::seconds(1),
            )?
            .unsigned_abs(),
            pdp_allow_sample: self
                .audit
                .pdp_allow_sample
                .unwrap_or(crate::authzen_api::ALLOW_SAMPLE),
            bundle_refresh_hint: match &self.federation.bundle_refresh_hint {
                Some(_) => Some(
                    opt_duration(
                        "federation.bundle_refresh_hint",
                        &self.federation.bundle_refresh_hint,
                        Duration::seconds(1),
                    )?
                    .max(Duration::seconds(1))
                    .unsigned_abs(),
                ),
                None => None,
            },
            external_issuers: self.oauth.external_issuers,
        })
    }
}

fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>, ServerError> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| cfg_err(format!("{what} file {}: {e}", path.display())))?;
    let t = s.trim();
    if t.len() < 16 {
        return Err(cfg_err(format!(
            "{what} in {} is shorter than 16 characters",
            path.display()
        )));
    }
    Ok(Zeroizing::new(t.to_owned()))
}

/// Reads a 32-byte key-encryption key stored as 64 hex characters.
pub fn read_kek(path: &Path) -> Result<Zeroizing<Vec<u8>>, ServerError> {
    let s = read_secret_file(path, "key-encryption key")?;
    let bytes = hex::decode(s.as_str()).map_err(|_| {
        cfg_err(format!(
            "key-encryption key in {} is not hex",
            path.display()
        ))
    })?;
    if bytes.len() != 32 {
        return Err(cfg_err(format!(
            "key-encryption key in {} must be 32 bytes (64 hex characters)",
            path.display()
        )));
    }
    Ok(Zeroizing::new(bytes))
}

/// Writes a file readable by its owner only, refusing to follow an existing file.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// The dev-mode data directory: `credence.db`, `admin.token`, `master.key`,
/// `bundle.pem`, `addr`, and later `agent.sock`.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn db(&self) -> PathBuf {
        self.path.join("credence.db")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.path.join("admin.token")
    }
    pub fn master_key(&self) -> PathBuf {
        self.path.join("master.key")
    }
    pub fn bundle(&self) -> PathBuf {
        self.path.join("bundle.pem")
    }
    pub fn addr(&self) -> PathBuf {
        self.path.join("addr")
    }
    pub fn agent_sock(&self) -> PathBuf {
        self.path.join("agent.sock")
    }

    /// Creates the directory (0700), the admin token and the key-encryption
    /// key on first use; returns them.
    pub fn prepare(
        &self,
        rng: &dyn Random,
    ) -> Result<(Zeroizing<String>, Zeroizing<Vec<u8>>), ServerError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            ServerError::bad("invalid_data_dir", format!("{what} {}: {e}", p.display()))
        };
        std::fs::create_dir_all(&self.path).map_err(|e| io("data dir", &self.path, e))?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("data dir", &self.path, e))?;
        let tok = self.admin_token();
        if !tok.exists() {
            let mut b = [0u8; 32];
            rng.fill(&mut b);
            let token = format!("cred_admin_{}", hex::encode(b));
            write_private(&tok, format!("{token}\n").as_bytes())
                .map_err(|e| io("admin token", &tok, e))?;
        }
        let mk = self.master_key();
        if !mk.exists() {
            let mut b = Zeroizing::new([0u8; 32]);
            rng.fill(b.as_mut());
            write_private(&mk, format!("{}\n", hex::encode(b.as_ref())).as_bytes())
                .map_err(|e| io("key-encryption key", &mk, e))?;
        }
        Ok((read_secret_file(&tok, "admin token")?, read_kek(&mk)?))
    }

    /// Writes `bundle.pem` and `addr` (replacing them atomically).
    pub fn publish(&self, bundle_pem: &str, base_url: &str) -> Result<(), ServerError> {
        for (path, body) in [(self.bundle(), bundle_pem), (self.addr(), base_url)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, body)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| ServerError::Internal(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_are_specific() {
        let e = ServerConfig::parse("trust_domain = \"Bad\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lowercase"), "{e}");
        let e = ServerConfig::parse("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        assert!(parse_duration("x", "banana").is_err());
        assert_eq!(parse_duration("x", "90s").unwrap(), Duration::seconds(90));
        assert!(parse_durability(Some("fast")).is_err());
    }

    #[test]
    fn shipped_example_config_parses() {
        let text = include_str!("../../../conf/server.toml");
        let cfg = ServerConfig::parse(text).unwrap();
        assert_eq!(cfg.trust_domain.as_str(), "example.org");
    }
}
