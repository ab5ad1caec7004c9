//! `credence policy`: Cedar policy sets and the PDP.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{CliError, Client};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Check a policy set against its schema, offline (no server needed)
    Validate {
        /// Cedar schema (Cedar syntax, or JSON)
        #[arg(long)]
        schema: PathBuf,
        /// Cedar policies
        policies: PathBuf,
    },
    /// Store a new version of the policy set (validated by the server)
    Push {
        #[arg(long)]
        schema: PathBuf,
        policies: PathBuf,
        /// Cedar namespace of AuthZEN types and actions given without one
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        note: Option<String>,
        /// Make it the active version at once
        #[arg(long)]
        activate: bool,
    },
    /// Questions whose answer changes between two versions: the newest
    /// recorded decisions (from the audit log) replayed against both
    Diff {
        from: u64,
        to: u64,
        /// How many recorded questions to replay
        #[arg(long, default_value_t = 1000)]
        sample: u32,
        /// Also replay these AuthZEN evaluation requests (a JSON array or one object)
        #[arg(long)]
        requests: Option<PathBuf>,
    },
    /// List versions, newest first
    List,
    /// Show one version with its schema and policies
    // not named `version`: clap's own `--version` flag takes that id
    Show {
        #[arg(value_name = "VERSION")]
        number: u64,
    },
    /// Make a version active (also a rollback)
    Activate {
        #[arg(value_name = "VERSION")]
        number: u64,
    },
    /// The PDP's entity store (Cedar entities JSON)
    #[command(subcommand)]
    Entities(EntitiesCmd),
    /// Ask the PDP an AuthZEN evaluation request and show why it decided
    Test {
        /// AuthZEN evaluation request (JSON file)
        #[arg(long)]
        request: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum EntitiesCmd {
    /// Replace the entity store with FILE (checked against the active schema)
    Load { file: PathBuf },
    /// Print the entity store
    Show,
}

fn read(p: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(p).map_err(|e| CliError(format!("{}: {e}", p.display())))
}

fn json_file(p: &Path) -> Result<Value, CliError> {
    serde_json::from_str(&read(p)?).map_err(|e| CliError(format!("{}: {e}", p.display())))
}

/// Offline validation needs no server.
pub fn validate(schema: &Path, policies: &Path) -> Result<(), CliError> {
    match credence_policy::Engine::compile_with(
        credence_server::authz::builtin(),
        &read(schema)?,
        &read(policies)?,
    ) {
        Ok(e) => {
            let (builtin, own): (Vec<String>, Vec<String>) = e
                .policy_ids()
                .into_iter()
                .partition(|id| id.starts_with(credence_server::authz::builtin().reserved_prefix));
            println!(
                "valid: {} policies ({}), plus {} built-in",
                own.len(),
                own.join(", "),
                builtin.len()
            );
            Ok(())
        }
        Err(credence_policy::PolicyError::Invalid(list)) => Err(CliError(format!(
            "the policy set is invalid ({} problems):{}",
            list.len(),
            list.iter()
                .map(|m| format!("\n  - {m}"))
                .collect::<String>()
        ))),
        Err(e) => Err(CliError(e.to_string())),
    }
}

fn print_versions(v: &Value) {
    for p in v["items"].as_array().into_iter().flatten() {
        println!(
            "{:>5}  {:6}  {}  {}  {}",
            p["version"],
            if p["active"] == true { "active" } else { "" },
            p["created_at"].as_str().unwrap_or(""),
            p["namespace"].as_str().unwrap_or("-"),
            p["note"].as_str().unwrap_or("")
        );
    }
}

pub async fn run(c: &Client, cmd: PolicyCmd, json_mode: bool) -> Result<(), CliError> {
    let out = |v: &Value| {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    };
    match cmd {
        PolicyCmd::Validate { schema, policies } => validate(&schema, &policies)?,
        PolicyCmd::Push {
            schema,
            policies,
            namespace,
            note,
            activate,
        } => {
            let v = c
                .post(
                    "/v1/policies",
                    &json!({"schema": read(&schema)?, "policies": read(&policies)?,
                            "namespace": namespace, "note": note, "activate": activate}),
                )
                .await?;
            if json_mode {
                println!("{v}");
            } else {
                println!(
                    "stored policy set version {}{}",
                    v["version"],
                    if v["active"] == true { " (active)" } else { "" }
                );
            }
        }
        PolicyCmd::List => {
            let v = c.get("/v1/policies").await?;
            if json_mode {
                println!("{v}");
            } else {
                print_versions(&v);
            }
        }
        PolicyCmd::Show { number } => {
            let v = c.get(&format!("/v1/policies/{number}")).await?;
            if json_mode {
                println!("{v}");
            } else {
                println!(
                    "version {} {}",
                    v["version"],
                    if v["active"] == true { "(active)" } else { "" }
                );
                println!("-- schema\n{}", v["schema"].as_str().unwrap_or(""));
                println!("-- policies\n{}", v["policies"].as_str().unwrap_or(""));
            }
        }
        PolicyCmd::Activate { number } => {
            let v = c
                .post(&format!("/v1/policies/{number}/activate"), &json!({}))
                .await?;
            if json_mode {
                println!("{v}");
            } else {
                println!("policy set version {} is active", v["version"]);
            }
        }
        PolicyCmd::Entities(EntitiesCmd::Load { file }) => {
            let v = c.put("/v1/policies/entities", &json_file(&file)?).await?;
            if json_mode {
                println!("{v}");
            } else {
                println!("loaded {} entities", v["entities"]);
            }
        }
        PolicyCmd::Entities(EntitiesCmd::Show) => out(&c.get("/v1/policies/entities").await?),
        PolicyCmd::Diff {
            from,
            to,
            sample,
            requests,
        } => {
            let extra = match requests {
                None => Vec::new(),
                Some(p) => match json_file(&p)? {
                    Value::Array(a) => a,
                    one @ Value::Object(_) => vec![one],
                    _ => {
                        return Err(CliError(format!(
                            "{}: expected a JSON array of requests or one request",
                            p.display()
                        )));
                    }
                },
            };
            let v = c
                .post(
                    "/v1/policies/diff",
                    &json!({"from": from, "to": to, "sample": sample, "requests": extra}),
                )
                .await?;
            if json_mode {
                println!("{v}");
            } else {
                let changed = v["changed"].as_array().cloned().unwrap_or_default();
                println!(
                    "{} of {} questions change outcome from version {from} to {to}",
                    changed.len(),
                    v["compared"]
                );
                let word = |b: &Value| if b == true { "allow" } else { "deny" };
                let ids = |p: &Value| {
                    let l: Vec<&str> = p
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if l.is_empty() {
                        "default".to_owned()
                    } else {
                        l.join(",")
                    }
                };
                for c in &changed {
                    let r = &c["request"];
                    println!(
                        "  {}:{} {} {}:{}  {} ({}) -> {} ({})",
                        r["subject"]["type"].as_str().unwrap_or(""),
                        r["subject"]["id"].as_str().unwrap_or(""),
                        r["action"]["name"].as_str().unwrap_or(""),
                        r["resource"]["type"].as_str().unwrap_or(""),
                        r["resource"]["id"].as_str().unwrap_or(""),
                        word(&c["from"]["decision"]),
                        ids(&c["from"]["policies"]),
                        word(&c["to"]["decision"]),
                        ids(&c["to"]["policies"]),
                    );
                }
            }
        }
        PolicyCmd::Test { request } => {
            let mut req = json_file(&request)?;
            if let Some(ctx) = req.get_mut("context").and_then(Value::as_object_mut) {
                ctx.insert("explain".into(), json!(true));
            } else if let Some(m) = req.as_object_mut() {
                m.insert("context".into(), json!({"explain": true}));
            }
            let v = c.post("/access/v1/evaluation", &req).await?;
            if json_mode {
                println!("{v}");
            } else {
                let reason = &v["context"]["reason"];
                println!(
                    "decision: {}",
                    if v["decision"] == true {
                        "allow"
                    } else {
                        "deny"
                    }
                );
                let ids: Vec<&str> = reason["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "deciding policies: {}",
                    if ids.is_empty() {
                        "none (default deny)".to_owned()
                    } else {
                        ids.join(", ")
                    }
                );
                for e in reason["errors"].as_array().into_iter().flatten() {
                    println!("error: {}", e.as_str().unwrap_or(""));
                }
            }
        }
    }
    Ok(())
}
