//! `credence audit ...`: read, search, prove, export and verify the
//! tamper-evident audit log, live or offline from an evidence bundle.

use std::io::IsTerminal;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use serde_json::{Value, json};

use credence_audit::{
    Checkpoint, Hash, LogVerifier, Verifier, VerifyFailure, hash_leaf, root_of, verify_consistency,
    verify_inclusion,
};

use crate::client::{CliError, Client, enc};

/// Format tag of an evidence bundle.
pub const BUNDLE_FORMAT: &str = "credence-audit-bundle/1";

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Print the log's note verifier key (C2SP vkey)
    Key,
    /// Print the latest signed checkpoint
    Checkpoint,
    /// Print the newest entries
    Tail {
        /// How many
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        /// Keep printing new entries
        #[arg(long)]
        follow: bool,
    },
    /// Find entries (filters combine)
    Search {
        #[arg(long)]
        action: Option<String>,
        /// success or failure
        #[arg(long)]
        outcome: Option<String>,
        /// Entries about this identity
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// RFC 3339 time, inclusive
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time, exclusive
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Verify the whole log against its latest signed checkpoint (live), or
    /// an exported evidence bundle offline
    Verify {
        /// The log's verifier key; without it the key is fetched from the
        /// server (pin it for real assurance)
        #[arg(long)]
        log_key: Option<String>,
        /// Verify this evidence bundle offline instead of the live log
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// A checkpoint saved earlier: the log must be a consistent extension
        /// of it (detects rollback and forks)
        #[arg(long)]
        since_checkpoint: Option<PathBuf>,
    },
    /// Print and verify an inclusion proof of entry N
    Prove {
        #[arg(long)]
        index: u64,
        #[arg(long)]
        log_key: Option<String>,
    },
    /// Write a self-contained evidence bundle (entries, checkpoint, key)
    Export {
        #[arg(long)]
        out: PathBuf,
    },
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

async fn verifier(c: Option<&Client>, log_key: Option<&str>) -> Result<Verifier, CliError> {
    let vkey = match (log_key, c) {
        (Some(k), _) => k.trim().to_owned(),
        (None, Some(c)) => c.get_text("/v1/audit/key").await?,
        (None, None) => return Err(err("--log-key is required to verify a bundle")),
    };
    Verifier::from_vkey(vkey.trim()).map_err(|e| err(format!("log key: {e}")))
}

pub async fn fetch_leaves(c: &Client, size: u64, progress: bool) -> Result<Vec<Vec<u8>>, CliError> {
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while (out.len() as u64) < size {
        let start = out.len() as u64;
        let body = c
            .get_bytes(&format!("/v1/audit/leaves?start={start}&end={size}"))
            .await?;
        let before = out.len();
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let idx = out.len();
            if rest.len() < 4 {
                return Err(err(format!("truncated leaf stream at entry {idx}")));
            }
            let (len, tail) = rest.split_at(4);
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if tail.len() < len {
                return Err(err(format!("truncated leaf stream at entry {idx}")));
            }
            let (leaf, tail) = tail.split_at(len);
            out.push(leaf.to_vec());
            rest = tail;
        }
        if out.len() == before {
            // the log ends early: the verifier reports the missing entries
            break;
        }
        if progress {
            eprint!("\r  fetched {}/{size} entries", out.len());
        }
    }
    if progress {
        eprintln!();
    }
    Ok(out)
}

fn decode_hashes(v: &Value) -> Result<Vec<Hash>, CliError> {
    v["hashes"]
        .as_array()
        .ok_or_else(|| err("proof without hashes"))?
        .iter()
        .map(|h| {
            B64.decode(h.as_str().unwrap_or(""))
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| err("proof hash is not 32 bytes of base64"))
        })
        .collect()
}

/// Finds the first entry that does not belong to the signed tree: the
/// smallest m whose recomputed prefix root fails the server's consistency
/// proof (m, size) against the signed root; the bad index is m - 1. Proofs
/// come from the server's stored nodes, which were fixed when each entry was
/// appended, so an edited, deleted, inserted or moved entry shows up here.
async fn locate(c: &Client, leaves: &[Vec<u8>], cp: &Checkpoint) -> Result<Option<u64>, CliError> {
    let hashes: Vec<Hash> = leaves.iter().map(|l| hash_leaf(l)).collect();
    let n = (hashes.len() as u64).min(cp.size);
    let consistent = |m: u64, proof: Vec<Hash>| {
        let root_m = root_of(&hashes[..m as usize]);
        if m == cp.size {
            return root_m == cp.root;
        }
        verify_consistency(m, cp.size, &root_m, &cp.root, &proof).is_ok()
    };
    let check = |m: u64| async move {
        if m == cp.size {
            return Ok::<bool, CliError>(consistent(m, vec![]));
        }
        let v = c
            .get(&format!(
                "/v1/audit/proof/consistency?from={m}&to={}",
                cp.size
            ))
            .await?;
        Ok(consistent(m, decode_hashes(&v)?))
    };
    // prefixes [0, m): good for small m, bad from the first bad entry on
    let (mut lo, mut hi) = (0u64, n);
    if n == 0 || check(n).await? {
        return Ok(if n < cp.size { Some(n) } else { None });
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if check(mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(hi - 1))
}

fn failure_message(f: VerifyFailure, located: Option<u64>) -> String {
    // put the located index into the failure, so it is named exactly once
    let f = match (f, located) {
        (
            VerifyFailure::MissingEntries {
                size, available, ..
            },
            Some(i),
        ) => VerifyFailure::MissingEntries {
            size,
            available,
            first_bad_index: i,
        },
        (VerifyFailure::RootMismatch { size, .. }, Some(i)) => VerifyFailure::RootMismatch {
            size,
            first_bad_index: Some(i),
        },
        (f, _) => f,
    };
    match &f {
        VerifyFailure::BadEntry { index, .. } => {
            format!("audit log does not verify: {f}; first bad index is {index}")
        }
        _ => format!("audit log does not verify: {f}"),
    }
}

async fn check_since(
    c: Option<&Client>,
    saved: &PathBuf,
    v: &Verifier,
    current: &Checkpoint,
    leaves: &[Vec<u8>],
) -> Result<(), CliError> {
    let note = std::fs::read_to_string(saved)
        .map_err(|e| err(format!("cannot read {}: {e}", saved.display())))?;
    let (old, _) = Checkpoint::open(&note, std::slice::from_ref(v))
        .map_err(|e| err(format!("saved checkpoint {}: {e}", saved.display())))?;
    if old.size > current.size {
        return Err(err(format!(
            "audit log was rolled back: the saved checkpoint has {} entries, the log now {}; first bad index is {}",
            old.size, current.size, current.size
        )));
    }
    if old.size == current.size {
        if old.root != current.root {
            return Err(err(format!(
                "audit log forked: same size {} with a different root",
                old.size
            )));
        }
        return Ok(());
    }
    let proof = match c {
        Some(c) => decode_hashes(
            &c.get(&format!(
                "/v1/audit/proof/consistency?from={}&to={}",
                old.size, current.size
            ))
            .await?,
        )?,
        None => {
            // offline: the entries were just verified against the current
            // checkpoint, so the saved root must be the root of their prefix
            let n = usize::try_from(old.size).unwrap_or(usize::MAX);
            let prefix: Vec<Hash> = leaves.iter().take(n).map(|l| hash_leaf(l)).collect();
            if prefix.len() == n && root_of(&prefix) == old.root {
                return Ok(());
            }
            return Err(err(format!(
                "audit log is not an extension of the saved checkpoint of size {}",
                old.size
            )));
        }
    };
    verify_consistency(old.size, current.size, &old.root, &current.root, &proof).map_err(|e| {
        err(format!(
            "audit log is not an extension of the saved checkpoint of size {}: {e}",
            old.size
        ))
    })
}

pub async fn run(c: Option<&Client>, cmd: AuditCmd, json_mode: bool) -> Result<(), CliError> {
    let need = || c.ok_or_else(|| err("no server address"));
    match cmd {
        AuditCmd::Key => println!("{}", need()?.get_text("/v1/audit/key").await?.trim()),
        AuditCmd::Checkpoint => print!("{}", need()?.get_text("/v1/audit/checkpoint").await?),
        AuditCmd::Tail { lines, follow } => {
            let c = need()?;
            let note = c.get_text("/v1/audit/checkpoint").await?;
            let size = note
                .lines()
                .nth(1)
                .and_then(|l| l.parse::<u64>().ok())
                .unwrap_or(0);
            let mut next = size.saturating_sub(lines);
            loop {
                let v = c
                    .get(&format!(
                        "/v1/audit/entries?start={next}&end={}",
                        next + 1000
                    ))
                    .await?;
                let entries = v["entries"].as_array().cloned().unwrap_or_default();
                for e in &entries {
                    print_entry(e, json_mode);
                    next = e["index"].as_u64().map_or(next, |i| i + 1);
                }
                if entries.is_empty() {
                    if !follow {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        AuditCmd::Search {
            action,
            outcome,
            spiffe_id,
            target,
            since,
            until,
            limit,
        } => {
            let c = need()?;
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [
                ("action", action),
                ("outcome", outcome),
                ("spiffe_id", spiffe_id),
                ("target", target),
                ("since", since),
                ("until", until),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            let v = c.get(&format!("/v1/audit/search?{}", q.join("&"))).await?;
            if json_mode {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for e in v["entries"].as_array().into_iter().flatten() {
                    print_entry(e, false);
                }
            }
        }
        AuditCmd::Prove { index, log_key } => {
            let c = need()?;
            let v = verifier(Some(c), log_key.as_deref()).await?;
            let note = c.get_text("/v1/audit/checkpoint").await?;
            let (cp, _) = Checkpoint::open(&note, std::slice::from_ref(&v)).map_err(err)?;
            if index >= cp.size {
                return Err(err(format!(
                    "entry {index} is not covered by the latest checkpoint (size {})",
                    cp.size
                )));
            }
            let e = c
                .get(&format!(
                    "/v1/audit/entries?start={index}&end={}",
                    index + 1
                ))
                .await?;
            let leaf = B64
                .decode(e["entries"][0]["leaf"].as_str().unwrap_or(""))
                .map_err(|_| err(format!("entry {index} is missing")))?;
            let p = c
                .get(&format!(
                    "/v1/audit/proof/inclusion?index={index}&tree_size={}",
                    cp.size
                ))
                .await?;
            let hashes = decode_hashes(&p)?;
            verify_inclusion(&hash_leaf(&leaf), index, cp.size, &hashes, &cp.root).map_err(
                |e| {
                    err(format!(
                        "inclusion proof of entry {index} does not verify: {e}"
                    ))
                },
            )?;
            let out = json!({
                "leaf_index": index,
                "tree_size": cp.size,
                "root": B64.encode(cp.root),
                "leaf": B64.encode(&leaf),
                "hashes": p["hashes"],
                "verified": true,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        AuditCmd::Export { out } => {
            let c = need()?;
            let vkey = c.get_text("/v1/audit/key").await?;
            let note = c.get_text("/v1/audit/checkpoint").await?;
            let v = verifier(None, Some(&vkey)).await?;
            let (cp, _) = Checkpoint::open(&note, std::slice::from_ref(&v)).map_err(err)?;
            let leaves = fetch_leaves(c, cp.size, std::io::stderr().is_terminal()).await?;
            let bundle = json!({
                "format": BUNDLE_FORMAT,
                "log_key": vkey.trim(),
                "checkpoint": note,
                "entries": leaves.iter().map(|l| B64.encode(l)).collect::<Vec<_>>(),
            });
            std::fs::write(&out, serde_json::to_vec(&bundle).map_err(err)?)
                .map_err(|e| err(format!("cannot write {}: {e}", out.display())))?;
            eprintln!("exported {} entries to {}", leaves.len(), out.display());
        }
        AuditCmd::Verify {
            log_key,
            bundle,
            since_checkpoint,
        } => {
            let progress = std::io::stderr().is_terminal();
            let (v, note, leaves) = match &bundle {
                Some(path) => {
                    let text = std::fs::read(path)
                        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
                    let b: Value = serde_json::from_slice(&text)
                        .map_err(|e| err(format!("{}: not a bundle: {e}", path.display())))?;
                    if b["format"] != BUNDLE_FORMAT {
                        return Err(err(format!(
                            "{}: unknown bundle format {}",
                            path.display(),
                            b["format"]
                        )));
                    }
                    let key = log_key
                        .as_deref()
                        .ok_or_else(|| err("--log-key is required to verify a bundle offline"))?;
                    let v = verifier(None, Some(key)).await?;
                    let note = b["checkpoint"].as_str().unwrap_or("").to_owned();
                    let mut leaves = Vec::new();
                    for (i, e) in b["entries"].as_array().into_iter().flatten().enumerate() {
                        leaves.push(B64.decode(e.as_str().unwrap_or("")).map_err(|_| {
                            err(format!(
                                "bundle entry {i} is not base64; first bad index is {i}"
                            ))
                        })?);
                    }
                    (v, note, leaves)
                }
                None => {
                    let c = need()?;
                    if log_key.is_none() {
                        eprintln!(
                            "note: using the log key served by the server; pin it with --log-key"
                        );
                    }
                    let v = verifier(Some(c), log_key.as_deref()).await?;
                    let note = c.get_text("/v1/audit/checkpoint").await?;
                    let (cp, _) = Checkpoint::open(&note, std::slice::from_ref(&v))
                        .map_err(|e| err(format!("latest checkpoint does not verify: {e}")))?;
                    let leaves = fetch_leaves(c, cp.size, progress).await?;
                    (v, note, leaves)
                }
            };
            let mut lv = LogVerifier::new(&note, std::slice::from_ref(&v))
                .map_err(|f| err(failure_message(f, None)))?;
            let result = lv.push_many(&leaves).and_then(|()| lv.finish());
            let (cp, _) = Checkpoint::open(&note, std::slice::from_ref(&v)).map_err(err)?;
            match result {
                Ok(ok) => {
                    if let Some(saved) = &since_checkpoint {
                        check_since(
                            if bundle.is_some() { None } else { c },
                            saved,
                            &v,
                            &cp,
                            &leaves,
                        )
                        .await?;
                    }
                    println!(
                        "ok: {} entries verify against the checkpoint signed by {}",
                        ok.checkpoint.size,
                        v.name()
                    );
                }
                Err(f) => {
                    // an undecodable entry names itself; anything else is
                    // located by consistency proofs against the signed root
                    let located = match (&f, &bundle, c) {
                        (VerifyFailure::BadEntry { .. }, _, _) => None,
                        (_, None, Some(c)) => locate(c, &leaves, &cp).await.unwrap_or(None),
                        _ => None,
                    };
                    return Err(err(failure_message(f, located)));
                }
            }
        }
    }
    Ok(())
}

fn print_entry(e: &Value, json_mode: bool) {
    if json_mode {
        println!("{e}");
        return;
    }
    let ev = &e["event"];
    println!(
        "{:>8}  {}  {:<8} {:<22} {:<24} {}",
        e["index"],
        ev["time"].as_str().unwrap_or(""),
        ev["outcome"].as_str().unwrap_or(""),
        ev["action"].as_str().unwrap_or(""),
        ev["actor"]["id"].as_str().unwrap_or(""),
        ev["target"].as_str().unwrap_or(""),
    );
}
