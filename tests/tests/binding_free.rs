//! Binding-free reads: an entity read of a schema tenant names its schema and runs on
//! a clean connection as it is, bound to another tenant, with no binding statement,
//! but only where the server's catalog says a read of that table runs no code of the
//! tenant's (a view over a function that resolves names through the session's
//! `search_path` would read the other tenant's rows). Two schema tenants share one
//! connection (a budget of 1).

mod common;

use std::sync::Arc;

use common::*;
use sqlx::PgPool;
use tenantry::testing::TestDatabase;
use tenantry::{PoolConfig, Strategy, Tenant, TenantEntity, TenantManager};

/// A plain table: read without a binding.
#[derive(Debug, Clone, PartialEq, TenantEntity)]
#[tenant(table = "notes", new)]
struct Note {
    #[tenant(id, generated)]
    id: i64,
    body: String,
}

/// A view over a function that reads `notes` through the session's `search_path`:
/// read bound, or it would read whichever tenant the connection was bound to.
#[derive(Debug, Clone, PartialEq, TenantEntity)]
#[tenant(table = "note_view")]
struct NoteView {
    #[tenant(id, generated)]
    id: i64,
    body: String,
}

const TENANTS: [&str; 2] = ["alpha", "bravo"];

async fn setup(binding_free_reads: bool) -> (TestDatabase, PgPool, TenantManager) {
    let (db, admin) = database().await;
    saas::prepare_database(&admin).await.unwrap();
    let manager = saas_builder(&db, admin.clone())
        .pool_config(PoolConfig {
            max_connections: Some(1),
            binding_free_reads,
            ..saas::pool_config()
        })
        .build()
        .await
        .expect("build the manager");
    for id in TENANTS {
        create_with(&manager, id, Strategy::Schema).await;
        let s = format!("tenant_{id}");
        let sql = format!(
            "CREATE TABLE {s}.notes (id bigserial PRIMARY KEY, body text NOT NULL);
             INSERT INTO {s}.notes (body) VALUES ('{id}''s note');
             CREATE FUNCTION {s}.all_notes() RETURNS TABLE (id bigint, body text)
                 LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY SELECT n.id, n.body FROM notes n; END $$;
             CREATE VIEW {s}.note_view AS SELECT * FROM {s}.all_notes();"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    (db, admin, manager)
}

async fn tenant(manager: &TenantManager, id: &str) -> Arc<Tenant> {
    manager.resolve_tenant(&id.parse().unwrap()).await.unwrap()
}

async fn notes(manager: &TenantManager, id: &str) -> Vec<String> {
    let mut db = manager.tenant_db(tenant(manager, id).await).await.unwrap();
    Note::list(&mut db, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.body)
        .collect()
}

async fn view(manager: &TenantManager, id: &str) -> Vec<String> {
    let mut db = manager.tenant_db(tenant(manager, id).await).await.unwrap();
    NoteView::list(&mut db, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.body)
        .collect()
}

/// Whose `search_path` the shared connection has, as the tenant's own SQL sees it.
async fn path_seen_by(manager: &TenantManager, id: &str) -> String {
    let mut db = manager.tenant_db(tenant(manager, id).await).await.unwrap();
    sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tables_are_read_without_a_binding_and_each_tenant_reads_its_own() {
    let (_db, _admin, manager) = setup(true).await;
    // The view binds the connection to alpha (a read that must be bound)...
    assert_eq!(view(&manager, "alpha").await, ["alpha's note"]);
    let before = manager.pool_stats();
    // ... then bravo and alpha read the plain table on it, as it is, by turns.
    for _ in 0..3 {
        assert_eq!(notes(&manager, "bravo").await, ["bravo's note"]);
        assert_eq!(notes(&manager, "alpha").await, ["alpha's note"]);
    }
    let after = manager.pool_stats();
    assert!(
        after.binding_free > before.binding_free,
        "bravo's reads were bound: {after:?}"
    );
    assert_eq!(after.opened, 1, "one shared connection: {after:?}");
    // Each tenant's own SQL still runs in its own schema.
    assert!(
        path_seen_by(&manager, "bravo")
            .await
            .contains("tenant_bravo")
    );
    assert!(
        path_seen_by(&manager, "alpha")
            .await
            .contains("tenant_alpha")
    );
    // A write binds: the tenant's own rows, and the next read of the other one is
    // still its own.
    let mut db = manager
        .tenant_db(tenant(&manager, "bravo").await)
        .await
        .unwrap();
    NewNote {
        body: "bravo's second".to_owned(),
    }
    .insert(&mut db)
    .await
    .unwrap();
    drop(db);
    assert_eq!(notes(&manager, "alpha").await, ["alpha's note"]);
    assert_eq!(
        notes(&manager, "bravo").await,
        ["bravo's note", "bravo's second"]
    );
}

/// A handle's first read on a connection bound elsewhere is binding-free; a handle
/// that reads again binds once, and its reads (and those of a handle that finds the
/// connection bound to its tenant) use the statements every tenant shares. Each
/// tenant reads its own rows whichever form a read takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_that_reads_again_binds_once_and_reads_its_own() {
    let (_db, admin, manager) = setup(true).await;
    // Bravo has two notes, alpha one: every read below tells the tenants apart.
    sqlx::raw_sql("INSERT INTO tenant_bravo.notes (body) VALUES ('bravo''s second')")
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(view(&manager, "alpha").await, ["alpha's note"]);
    let rebound = |s: tenantry::PoolStats| s.rebound;
    let before = manager.pool_stats();
    let mut db = manager
        .tenant_db(tenant(&manager, "bravo").await)
        .await
        .unwrap();
    let first = Note::list(&mut db, 10, 0).await.unwrap();
    assert_eq!(
        rebound(manager.pool_stats()),
        rebound(before),
        "the first read binds nothing"
    );
    let second = Note::list(&mut db, 10, 0).await.unwrap();
    let third = Note::select().count(&mut db).await.unwrap();
    drop(db);
    assert_eq!(first, second);
    let bodies: Vec<&str> = second.iter().map(|n| n.body.as_str()).collect();
    assert_eq!(bodies, ["bravo's note", "bravo's second"]);
    assert_eq!(third, 2);
    assert_eq!(
        rebound(manager.pool_stats()),
        rebound(before) + 1,
        "the second read bound the connection, once: {:?}",
        manager.pool_stats()
    );
    // Bound to bravo now: bravo's next handle reads bound, alpha's binding-free.
    assert_eq!(
        notes(&manager, "bravo").await,
        ["bravo's note", "bravo's second"]
    );
    assert_eq!(notes(&manager, "alpha").await, ["alpha's note"]);
    assert_eq!(rebound(manager.pool_stats()), rebound(before) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_over_a_function_that_uses_the_search_path_is_read_bound() {
    let (_db, _admin, manager) = setup(true).await;
    // A transaction binds the connection to alpha, and leaves it clean.
    let mut tx = manager
        .tenant_tx(tenant(&manager, "alpha").await)
        .await
        .unwrap();
    assert_eq!(Note::count(&mut tx).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(
        view(&manager, "bravo").await,
        ["bravo's note"],
        "bravo's view read on alpha's binding"
    );
    for _ in 0..3 {
        assert_eq!(view(&manager, "alpha").await, ["alpha's note"]);
        assert_eq!(
            view(&manager, "bravo").await,
            ["bravo's note"],
            "bravo's view read on alpha's binding"
        );
        // A plain-table read in between leaves the connection bound to the other.
        assert_eq!(notes(&manager, "alpha").await, ["alpha's note"]);
        assert_eq!(view(&manager, "bravo").await, ["bravo's note"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_every_read_is_bound() {
    let (_db, _admin, manager) = setup(false).await;
    for _ in 0..2 {
        assert_eq!(notes(&manager, "bravo").await, ["bravo's note"]);
        assert_eq!(notes(&manager, "alpha").await, ["alpha's note"]);
    }
    let stats = manager.pool_stats();
    assert_eq!(stats.binding_free, 0, "{stats:?}");
    assert!(stats.rebound >= 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_bound_to_a_row_tenant_is_bound_before_a_schema_tenant_reads() {
    let (_db, _admin, manager) = setup(true).await;
    create_with(&manager, "charlie", Strategy::Row).await;
    for _ in 0..3 {
        // The row tenant's binding acts as the row role, which may not read a
        // tenant schema: alpha's read on it as it is would fail (or, with a role
        // that could, read as someone else).
        let mut db = manager
            .tenant_db(tenant(&manager, "charlie").await)
            .await
            .unwrap();
        assert!(
            saas::Project::list(&mut db, 10, 0)
                .await
                .unwrap()
                .is_empty()
        );
        drop(db);
        assert_eq!(notes(&manager, "alpha").await, ["alpha's note"]);
        assert_eq!(notes(&manager, "bravo").await, ["bravo's note"]);
    }
    let stats = manager.pool_stats();
    assert_eq!(stats.opened, 1, "one shared connection: {stats:?}");
    assert!(stats.binding_free >= 3, "bravo read after alpha: {stats:?}");
}
