//! The audit log detects tampering: every kind of edit made to the stored
//! log behind the server's back is caught by `credence audit verify`, which
//! names the first bad index.

use sqlx::ConnectOptions;

use crate::support::Dev;

const K: i64 = 10;

/// A dev server's data dir holding a log of `n` entries, stopped cleanly (so
/// its final checkpoint covers everything); returns the saved checkpoint.
fn prepared() -> (tempfile::TempDir, String, i64) {
    let mut dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/a",
        "--kind",
        "bot",
        "--owner",
        "o",
    ]);
    for _ in 0..20 {
        dev.ok(&[
            "jwt",
            "mint",
            "--spiffe-id",
            "spiffe://example.org/a",
            "--audience",
            "x",
        ]);
    }
    assert!(dev.stop().success());
    let dir = std::mem::replace(&mut dev.dir, tempfile::tempdir().unwrap());
    drop(dev);
    let (n, note, rows) = sql(&dir, |mut c| async move {
        let row: (i64, String) =
            sqlx::query_as("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_one(&mut c)
                .await
                .unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
            .fetch_one(&mut c)
            .await
            .unwrap();
        (row.0, row.1, rows)
    });
    assert_eq!(n, rows, "the shutdown checkpoint covers every entry");
    assert!(n > K + 5, "log of {n} entries");
    (dir, note, n)
}

fn sql<T, F, Fut>(dir: &tempfile::TempDir, f: F) -> T
where
    F: FnOnce(sqlx::SqliteConnection) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("credence.db"))
            .connect()
            .await
            .unwrap();
        f(c).await
    })
}

async fn leaf(c: &mut sqlx::SqliteConnection, idx: i64) -> Vec<u8> {
    sqlx::query_scalar("SELECT leaf FROM audit_log WHERE idx = ?")
        .bind(idx)
        .fetch_one(&mut *c)
        .await
        .unwrap()
}

async fn set_leaf(c: &mut sqlx::SqliteConnection, idx: i64, leaf: &[u8]) {
    sqlx::query("UPDATE audit_log SET leaf = ? WHERE idx = ?")
        .bind(leaf)
        .bind(idx)
        .execute(&mut *c)
        .await
        .unwrap();
}

/// Shifts the indices of rows with idx >= from by `by` (through negative
/// values so the primary key never collides).
async fn shift(c: &mut sqlx::SqliteConnection, from: i64, by: i64) {
    sqlx::query("UPDATE audit_log SET idx = -idx - 1000000 WHERE idx >= ?")
        .bind(from)
        .execute(&mut *c)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET idx = -(idx + 1000000) + ? WHERE idx < 0")
        .bind(by)
        .execute(&mut *c)
        .await
        .unwrap();
}

/// Restarts on the tampered data and runs `audit verify`; returns stderr.
fn verify_fails(dir: tempfile::TempDir, extra: &[&str]) -> String {
    let dev = Dev::start_in(dir);
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let o = dev.cli(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "tampering went unnoticed: {err}");
    err
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in leaf");
    let mut out = hay[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&hay[at + from.len()..]);
    out
}

#[test]
fn untouched_log_verifies_live_offline_and_against_saved_checkpoint() {
    let (dir, note, n) = prepared();
    let saved = dir.path().join("saved.note");
    std::fs::write(&saved, &note).unwrap();
    let dev = Dev::start_in(dir);
    dev.ok(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/a",
        "--audience",
        "x",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // next checkpoint
    let out = dev.ok(&[
        "audit",
        "verify",
        "--since-checkpoint",
        saved.to_str().unwrap(),
    ]);
    // the restart's agent API SVID and the mint
    assert!(out.contains(&format!("{} entries verify", n + 2)), "{out}");
    let key = dev.ok(&["audit", "key"]);
    let bundle = dev.path().join("evidence.json");
    dev.ok(&["audit", "export", "--out", bundle.to_str().unwrap()]);
    // offline: no server address at all
    let o = std::process::Command::new(crate::support::BIN)
        .args([
            "audit",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--log-key",
            key.trim(),
        ])
        .env_remove("CREDENCE_ADDR")
        .env_remove("CREDENCE_DATA_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // offline, the bundle is also checked against a checkpoint saved earlier
    let o = std::process::Command::new(crate::support::BIN)
        .args([
            "audit",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--log-key",
            key.trim(),
            "--since-checkpoint",
            saved.to_str().unwrap(),
        ])
        .env_remove("CREDENCE_ADDR")
        .env_remove("CREDENCE_DATA_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // a wrong key is refused
    let other = "example.org/credence/audit+00000000+AQ".to_owned() + &"A".repeat(43);
    let o = std::process::Command::new(crate::support::BIN)
        .args([
            "audit",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--log-key",
            &other,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // an edited bundle is refused
    let mut b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    b["entries"][3] = b["entries"][4].clone();
    std::fs::write(&bundle, serde_json::to_vec(&b).unwrap()).unwrap();
    let o = std::process::Command::new(crate::support::BIN)
        .args([
            "audit",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--log-key",
            key.trim(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // inclusion proofs print and verify
    let p: serde_json::Value =
        serde_json::from_str(&dev.ok(&["audit", "prove", "--index", "3"])).unwrap();
    assert_eq!(p["verified"], true);
}

#[test]
fn edited_entry_is_named() {
    let (dir, _, _) = prepared();
    sql(&dir, |mut c| async move {
        let l = leaf(&mut c, K).await;
        set_leaf(&mut c, K, &replace(&l, b"example.org/a", b"example.org/b")).await;
    });
    let err = verify_fails(dir, &[]);
    assert!(err.contains(&format!("first bad index is {K}")), "{err}");
    assert_eq!(err.matches("first bad index").count(), 1, "{err}");
    assert!(!err.contains("cannot be located"), "{err}");
}

#[test]
fn corrupted_byte_is_named() {
    let (dir, _, _) = prepared();
    sql(&dir, |mut c| async move {
        let mut l = leaf(&mut c, K).await;
        l[0] = b'X';
        set_leaf(&mut c, K, &l).await;
    });
    let err = verify_fails(dir, &[]);
    assert!(err.contains(&format!("first bad index is {K}")), "{err}");
}

#[test]
fn deleted_entry_is_named() {
    let (dir, _, _) = prepared();
    sql(&dir, |mut c| async move {
        sqlx::query("DELETE FROM audit_log WHERE idx = ?")
            .bind(K)
            .execute(&mut c)
            .await
            .unwrap();
        shift(&mut c, K + 1, -1).await;
    });
    let err = verify_fails(dir, &[]);
    assert!(err.contains(&format!("first bad index is {K}")), "{err}");
}

#[test]
fn inserted_entry_is_named() {
    let (dir, _, _) = prepared();
    sql(&dir, |mut c| async move {
        let forged = leaf(&mut c, 5).await;
        shift(&mut c, K, 1).await;
        sqlx::query(
            "INSERT INTO audit_log (idx, leaf, at, actor, action, target, outcome) \
             VALUES (?, ?, 0, 'admin', 'jwt.issue', 'x', 'success')",
        )
        .bind(K)
        .bind(forged)
        .execute(&mut c)
        .await
        .unwrap();
    });
    let err = verify_fails(dir, &[]);
    assert!(err.contains(&format!("first bad index is {K}")), "{err}");
}

#[test]
fn reordered_entries_are_named() {
    let (dir, _, _) = prepared();
    sql(&dir, |mut c| async move {
        let a = leaf(&mut c, K).await;
        let b = leaf(&mut c, K + 1).await;
        assert_ne!(a, b);
        set_leaf(&mut c, K, &b).await;
        set_leaf(&mut c, K + 1, &a).await;
    });
    let err = verify_fails(dir, &[]);
    assert!(err.contains(&format!("first bad index is {K}")), "{err}");
}

#[test]
fn rollback_is_caught_against_a_saved_checkpoint() {
    let (dir, note, n) = prepared();
    let saved = dir.path().join("saved.note");
    std::fs::write(&saved, &note).unwrap();
    let m = K + 5;
    // roll everything back to m entries: leaves, nodes and checkpoints
    sql(&dir, |mut c| async move {
        for q in [
            "DELETE FROM audit_log WHERE idx >= ?1",
            "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > ?1",
            "DELETE FROM audit_checkpoints WHERE size > ?1",
        ] {
            sqlx::query(q).bind(m).execute(&mut c).await.unwrap();
        }
    });
    assert!(n > m);
    let err = verify_fails(dir, &["--since-checkpoint", saved.to_str().unwrap()]);
    assert!(err.contains("rolled back"), "{err}");
    // the restarted server may sign a checkpoint over its own start-up
    // entries (its SVID) before the check: the log then ends a little
    // after m, and the report names where the current log ends
    let at: i64 = err
        .rsplit("first bad index is ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .expect("a first bad index");
    assert!((m..=m + 3).contains(&at), "{err}");
}
