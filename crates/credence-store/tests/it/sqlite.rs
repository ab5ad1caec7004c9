//! The conformance suite on [`SqliteStore`], plus SQLite-specific tests.

use std::path::PathBuf;

use credence_store::{Durability, SqliteStore, Store, StoreError};
use sqlx::Connection;

use crate::conformance::{self, Harness, conformance_suite};

pub struct SqliteHarness {
    dir: tempfile::TempDir,
    durability: Durability,
}

impl SqliteHarness {
    fn path(&self) -> PathBuf {
        self.dir.path().join("credence.db")
    }
}

#[async_trait::async_trait]
impl Harness for SqliteHarness {
    async fn open(&self) -> Box<dyn Store> {
        Box::new(
            SqliteStore::open(&self.path(), self.durability)
                .await
                .unwrap(),
        )
    }
}

async fn harness() -> SqliteHarness {
    SqliteHarness {
        dir: tempfile::tempdir().unwrap(),
        durability: Durability::Normal,
    }
}

conformance_suite! {
    harness;
    store: [
        identity_create_get_duplicate,
        identity_list_filters_and_pagination,
        identity_update,
        identity_delete,
        record_issued_concurrent_callers,
        record_issued_duplicate_serial_fails_only_its_caller,
        revoke_serial_idempotent,
        revoke_identity_credentials_only_live,
        list_revoked_drops_expired,
        prune_expired_removes_old_rows,
        ca_save_list_activate,
        next_crl_number_monotonic,
        audit_record_for_every_mutation,
        failed_mutation_writes_no_audit,
        closed_store_refuses,
        audit_log_is_a_verifiable_merkle_tree,
        audit_checkpoints_and_search,
        join_token_single_use_and_expiry,
        evict_node_revokes_its_credentials,
        identity_nodes_round_trip,
        identity_scopes_round_trip,
        identity_federates_with_round_trip,
        nodes_attested_without_join_token,
        federation_relationships_and_refreshes,
        delegation_chains_and_cascade_revocation,
        admins_create_find_delete,
        policy_sets_versions_and_activation,
    ];
    harness: [reopen_keeps_data],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_durability_opens_and_reopens() {
    let h = SqliteHarness {
        dir: tempfile::tempdir().unwrap(),
        durability: Durability::Full,
    };
    conformance::reopen_keeps_data(&h).await;
}

async fn raw(h: &SqliteHarness) -> sqlx::SqliteConnection {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(h.path());
    sqlx::ConnectOptions::connect(&opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pragmas_are_set() {
    let h = harness().await;
    let store = h.open().await;
    let mut c = raw(&h).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    c.close().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_invalid_naming_the_column() {
    let h = harness().await;
    let store = h.open().await;
    let a = conformance::identity(1);
    store
        .create_identity(&a, conformance::audit("identity.create", "a"))
        .await
        .unwrap();
    store
        .record_issued(vec![conformance::issue(conformance::cred(
            &a,
            "01",
            conformance::t(100),
        ))])
        .await
        .unwrap();

    let mut c = raw(&h).await;
    sqlx::query("UPDATE identities SET kind = 'robot'")
        .execute(&mut c)
        .await
        .unwrap();
    match store.get_identity(&a.id).await {
        Err(StoreError::Invalid(m)) => {
            assert!(m.contains("identities") && m.contains("kind"), "{m}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    sqlx::query("UPDATE identities SET kind = 'bot', labels_json = '{not json'")
        .execute(&mut c)
        .await
        .unwrap();
    match store.get_identity(&a.id).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("labels_json"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    sqlx::query("UPDATE credentials SET revoked_at = 5, revocation_reason = 'bogus'")
        .execute(&mut c)
        .await
        .unwrap();
    match store.get_credential("01").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("revocation_reason"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    sqlx::query("UPDATE credentials SET revocation_reason = 'superseded', not_after = 'soon'")
        .execute(&mut c)
        .await
        .unwrap();
    match store.get_credential("01").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("not_after"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    c.close().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_fails_cleanly_on_a_bad_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(&dir.path().join("missing/dir/x.db"), Durability::Normal)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}
