//! The row strategy: shared tables with a tenant column under forced row-level
//! security, reached through connections that carry the tenant setting and log in as
//! a role without BYPASSRLS that owns no table.

mod common;

use common::*;
use sqlx::{Connection, PgConnection};
use tenantry::strategy::{RLS_POLICIES, install_rls, tables_missing_rls};
use tenantry::{NewTenant, PoolConfig, Strategy, TenantEntity, TenantId, TenantManager};

struct Setup {
    db: tenantry::testing::TestDatabase,
    pool: sqlx::PgPool,
    manager: TenantManager,
    role: String,
}

async fn setup() -> Setup {
    let (db, pool) = database().await;
    let role = format!("app_{}", db.name().rsplit('_').next().unwrap());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN NOBYPASSRLS;
         CREATE SCHEMA shared;
         CREATE TABLE shared.items (
             id bigserial PRIMARY KEY,
             tenant_id text NOT NULL,
             label text NOT NULL
         );
         CREATE INDEX items_tenant ON shared.items (tenant_id, id);
         CREATE TABLE shared.notes (tenant_id text NOT NULL, body text NOT NULL);
         GRANT USAGE ON SCHEMA shared TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shared TO {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA shared TO {role};"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    install_rls(&mut conn, "shared.items", "tenant_id")
        .await
        .unwrap();
    install_rls(&mut conn, "shared.notes", "tenant_id")
        .await
        .unwrap();
    drop(conn);
    let manager = TenantManager::builder(pool.clone())
        .pool_config(PoolConfig {
            row_schema: Some("shared".into()),
            row_user: Some(role.clone()),
            ..PoolConfig::default()
        })
        .build()
        .await
        .unwrap();
    for id in ["acme", "globex"] {
        let mut new = NewTenant::new(id.parse().unwrap(), id);
        new.strategy = Strategy::Row;
        let t = manager.create_tenant(new).await.unwrap();
        assert_eq!(t.strategy, Strategy::Row);
    }
    Setup {
        db,
        pool,
        manager,
        role,
    }
}

async fn db_for(m: &TenantManager, id: &str) -> tenantry::TenantDb {
    let t = m.resolve_tenant(&id.parse().unwrap()).await.unwrap();
    m.tenant_db(t).await.unwrap()
}

#[tokio::test]
async fn unfiltered_queries_see_only_their_tenant() {
    let s = setup().await;
    let mut acme = db_for(&s.manager, "acme").await;
    let mut globex = db_for(&s.manager, "globex").await;
    // Hand-written SQL without any tenant filter, through the tenant-bound handle.
    let insert =
        "INSERT INTO items (tenant_id, label) VALUES (current_setting('tenantry.tenant_id'), $1)";
    for label in ["a1", "a2"] {
        sqlx::query(insert)
            .bind(label)
            .execute(&mut acme)
            .await
            .unwrap();
    }
    sqlx::query(insert)
        .bind("g1")
        .execute(&mut globex)
        .await
        .unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT label FROM items ORDER BY label")
        .fetch_all(&mut acme)
        .await
        .unwrap();
    assert_eq!(seen, ["a1", "a2"]);
    let seen: Vec<String> = sqlx::query_scalar("SELECT label FROM items")
        .fetch_all(&mut globex)
        .await
        .unwrap();
    assert_eq!(seen, ["g1"]);
    // Writing another tenant's row is rejected (WITH CHECK); updating or deleting
    // another tenant's rows touches nothing (USING).
    let forged = sqlx::query("INSERT INTO items (tenant_id, label) VALUES ('globex', 'forged')")
        .execute(&mut acme)
        .await;
    assert_eq!(sqlstate(&forged), "42501", "{forged:?}");
    let moved = sqlx::query("UPDATE items SET tenant_id = 'globex'")
        .execute(&mut acme)
        .await;
    assert_eq!(
        sqlstate(&moved),
        "42501",
        "moving rows to another tenant is rejected: {moved:?}"
    );
    assert_eq!(
        sqlx::query("UPDATE items SET label = 'x' WHERE label = 'g1'")
            .execute(&mut acme)
            .await
            .unwrap()
            .rows_affected(),
        0
    );
    assert_eq!(
        sqlx::query("DELETE FROM items")
            .execute(&mut globex)
            .await
            .unwrap()
            .rows_affected(),
        1
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM shared.items")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(left, 2, "globex's delete took only its own row");
    // The handle cannot escape: it is not a superuser and cannot switch the setting's
    // meaning by changing roles.
    let escalate = sqlx::query("SET ROLE postgres").execute(&mut acme).await;
    assert_eq!(sqlstate(&escalate), "42501", "{escalate:?}");

    // With no tenant set (the app role, connected directly): nothing visible, writes rejected.
    let mut bare = PgConnection::connect_with(&s.db.connect_options().username(&s.role))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM shared.items")
        .fetch_one(&mut bare)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let insert =
        sqlx::query("INSERT INTO shared.items (tenant_id, label) VALUES ('acme', 'sneaky')")
            .execute(&mut bare)
            .await;
    assert_eq!(sqlstate(&insert), "42501", "{insert:?}");
    let _ = bare.close().await;
}

#[tokio::test]
async fn leaky_functions_never_see_another_tenants_rows() {
    let s = setup().await;
    sqlx::raw_sql(
        "INSERT INTO shared.items (tenant_id, label) VALUES ('acme', 'acme secret'), ('globex', 'globex secret 1'), ('globex', 'globex secret 2');",
    )
    .execute(&s.pool)
    .await
    .unwrap();
    let mut acme = db_for(&s.manager, "acme").await;
    // Like f_leak in PostgreSQL's row-security regression test: a cheap function that
    // records every value it is shown, used in a WHERE clause.
    sqlx::raw_sql(
        "CREATE TEMP TABLE leaked (v text);
         CREATE FUNCTION pg_temp.f_leak(t text) RETURNS bool COST 0.0000001 LANGUAGE plpgsql
             AS $$ BEGIN INSERT INTO pg_temp.leaked VALUES (t); RETURN true; END $$;",
    )
    .execute(&mut acme)
    .await
    .unwrap();
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT label FROM items WHERE pg_temp.f_leak(label)")
            .fetch_all(&mut acme)
            .await
            .unwrap();
    assert_eq!(rows, ["acme secret"]);
    let leaked: Vec<String> = sqlx::query_scalar("SELECT v FROM pg_temp.leaked")
        .fetch_all(&mut acme)
        .await
        .unwrap();
    assert_eq!(
        leaked,
        ["acme secret"],
        "the function saw only the tenant's rows"
    );
}

#[derive(Debug, TenantEntity)]
#[tenant(table = "items")]
struct Item {
    #[tenant(id, generated)]
    id: i64,
    #[tenant(tenant_column)]
    tenant_id: TenantId,
    label: String,
}

#[tokio::test]
async fn entities_fill_and_filter_the_tenant_column_under_rls() {
    let s = setup().await;
    let mut acme = db_for(&s.manager, "acme").await;
    let mut globex = db_for(&s.manager, "globex").await;
    let a = Item {
        id: 0,
        tenant_id: "globex".parse().unwrap(),
        label: "mine".into(),
    }
    .insert(&mut acme)
    .await
    .unwrap();
    assert_eq!(
        a.tenant_id.as_str(),
        "acme",
        "filled from the handle, not the value"
    );
    Item {
        id: 0,
        tenant_id: "acme".parse().unwrap(),
        label: "theirs".into(),
    }
    .insert(&mut globex)
    .await
    .unwrap();
    assert_eq!(Item::count(&mut acme).await.unwrap(), 1);
    assert_eq!(
        Item::select().fetch_all(&mut globex).await.unwrap()[0].label,
        "theirs"
    );
    assert!(Item::find(&mut globex, &a.id).await.unwrap().is_none());
}

#[tokio::test]
async fn every_tenant_table_has_rls_and_dropping_a_policy_is_caught() {
    let s = setup().await;
    let mut conn = s.pool.acquire().await.unwrap();
    assert!(
        tables_missing_rls(&mut conn, "tenantry")
            .await
            .unwrap()
            .is_empty()
    );
    for policy in RLS_POLICIES {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP POLICY {policy} ON shared.notes"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            tables_missing_rls(&mut conn, "tenantry").await.unwrap(),
            ["shared.notes"],
            "{policy}"
        );
        install_rls(&mut conn, "shared.notes", "tenant_id")
            .await
            .unwrap();
    }
    sqlx::query("ALTER TABLE shared.notes NO FORCE ROW LEVEL SECURITY")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        tables_missing_rls(&mut conn, "tenantry").await.unwrap(),
        ["shared.notes"]
    );
    sqlx::query("CREATE TABLE public.unprotected (tenant_id text)")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        tables_missing_rls(&mut conn, "tenantry").await.unwrap(),
        ["public.unprotected", "shared.notes"]
    );
}

#[tokio::test]
async fn deleting_a_row_tenant_removes_its_rows_only() {
    let s = setup().await;
    sqlx::raw_sql(
        "INSERT INTO shared.items (tenant_id, label) VALUES ('acme', 'a'), ('globex', 'g');
         INSERT INTO shared.notes (tenant_id, body) VALUES ('acme', 'n'), ('globex', 'n');",
    )
    .execute(&s.pool)
    .await
    .unwrap();
    let acme: TenantId = "acme".parse().unwrap();
    assert!(
        s.manager.delete_tenant(&acme).await.is_err(),
        "suspend first"
    );
    s.manager.suspend_tenant(&acme).await.unwrap();
    s.manager.delete_tenant(&acme).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM shared.items UNION ALL SELECT tenant_id FROM shared.notes",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(left, ["globex", "globex"]);
    assert!(s.manager.find_tenant(&acme).await.unwrap().is_none());
}

#[tokio::test]
async fn schema_and_row_tenants_side_by_side() {
    let s = setup().await;
    create(&s.manager, "schemaful").await;
    let mut schema_db = db_for(&s.manager, "schemaful").await;
    let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut schema_db)
        .await
        .unwrap();
    assert_eq!(
        path, "\"tenant_schemaful\", pg_temp",
        "only its own schema (temporary tables last)"
    );
    let setting: Option<String> =
        sqlx::query_scalar("SELECT current_setting('tenantry.tenant_id', true)")
            .fetch_one(&mut schema_db)
            .await
            .unwrap();
    assert!(
        setting.is_none_or(|v| v.is_empty()),
        "schema tenants carry no row setting"
    );
    let status = s.manager.migration_status().await.unwrap();
    assert_eq!(status.len(), 1, "only schema tenants are migrated");
}

/// The same model for schema and row tenants: no tenant field, the row tenants'
/// column named on the struct.
#[derive(Debug, Clone, PartialEq, Eq, TenantEntity)]
#[tenant(table = "items", row_tenant_column)]
struct Label {
    #[tenant(id, generated)]
    id: i64,
    label: String,
}

/// A row tenant's statements of a `row_tenant_column` entity fill and filter
/// `tenant_id` next to every other placeholder: conditions, the tenant, limit and
/// offset, keys, assignments, in the order the statements number them.
#[tokio::test]
async fn a_row_tenant_column_entity_fills_and_filters_with_every_kind_of_statement() {
    let s = setup().await;
    let mut acme = db_for(&s.manager, "acme").await;
    let mut globex = db_for(&s.manager, "globex").await;
    let mut mine = Vec::new();
    for n in 0..5 {
        let row = Label {
            id: 0,
            label: format!("a{n}"),
        }
        .insert(&mut acme)
        .await
        .unwrap();
        mine.push(row);
    }
    let theirs = Label {
        id: 0,
        label: "a-globex".into(),
    }
    .insert(&mut globex)
    .await
    .unwrap();
    let owners: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM shared.items ORDER BY id")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert_eq!(owners.len(), 6);
    assert!(owners[..5].iter().all(|(_, t)| t == "acme"), "{owners:?}");
    assert_eq!(owners[5], (theirs.id, "globex".to_owned()));

    // Condition ($1), tenant ($2), limit ($3), offset ($4).
    let page = Label::select()
        .filter_named("label", tenantry::Op::Like, "a%")
        .filter_named("id", tenantry::Op::Gt, mine[0].id)
        .sort_named("id", false)
        .limit(2)
        .offset(1)
        .fetch_all(&mut acme)
        .await
        .unwrap();
    assert_eq!(page, mine[2..4]);
    let text = Label::select()
        .filter_named("label", tenantry::Op::Like, "a%")
        .limit(2)
        .offset(1)
        .sql(Strategy::Row);
    assert_eq!(
        text,
        r#"SELECT "id", "label" FROM "items" WHERE "label" LIKE $1 AND "tenant_id" = $2 ORDER BY "id" LIMIT $3 OFFSET $4"#
    );
    // The names before `_named`/`_by` still build the same statements for a release.
    #[allow(deprecated)]
    let (old, old_typed) = (
        Label::select()
            .filter("label", tenantry::Op::Like, "a%")
            .order_by("id", true)
            .sql(Strategy::Row),
        Label::select().order(Label::ID.desc()).sql(Strategy::Row),
    );
    assert_eq!(
        old,
        Label::select()
            .filter_named("label", tenantry::Op::Like, "a%")
            .sort_named("id", true)
            .sql(Strategy::Row)
    );
    assert_eq!(
        old_typed,
        Label::select().sort_by(Label::ID.desc()).sql(Strategy::Row)
    );
    assert!(old.ends_with(r#"ORDER BY "id" DESC"#), "{old}");
    assert_eq!(
        Label::select()
            .filter_named("label", tenantry::Op::Like, "a%")
            .count(&mut acme)
            .await
            .unwrap(),
        5
    );
    assert_eq!(Label::count(&mut globex).await.unwrap(), 1);
    assert_eq!(Label::list(&mut acme, 2, 3).await.unwrap(), mine[3..5]);
    let first = Label::select()
        .filter_named("label", tenantry::Op::Eq, "a4")
        .fetch_optional(&mut acme)
        .await
        .unwrap();
    assert_eq!(first.as_ref(), Some(&mine[4]));

    // Keys of another tenant are not found, updated or deleted.
    assert!(Label::find(&mut acme, &theirs.id).await.unwrap().is_none());
    let renamed = Label::update_columns(&mut acme, &theirs.id, vec![]).await;
    assert!(renamed.unwrap().is_none());
    let mut stolen = theirs.clone();
    stolen.label = "stolen".into();
    assert!(stolen.update(&mut acme).await.unwrap().is_none());
    assert!(!Label::delete(&mut acme, &theirs.id).await.unwrap());
    assert_eq!(
        Label::find(&mut globex, &theirs.id).await.unwrap(),
        Some(theirs.clone())
    );

    // Its own: updated and deleted.
    let mut changed = mine[1].clone();
    changed.label = "b1".into();
    assert_eq!(
        changed.update(&mut acme).await.unwrap(),
        Some(changed.clone())
    );
    assert!(Label::delete(&mut acme, &mine[0].id).await.unwrap());
    assert_eq!(Label::count(&mut acme).await.unwrap(), 4);
}

/// The SQLSTATE of a statement's failure ("ok" if it succeeded, "none" if the failure
/// was not the server's): a refusal by row-level security or privileges is 42501.
fn sqlstate<T>(result: &Result<T, sqlx::Error>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(sqlx::Error::Database(e)) => e.code().map_or("none".to_owned(), |c| c.into_owned()),
        Err(_) => "none".to_owned(),
    }
}

/// Two registries in one database, each with its row tenants in its own row schema:
/// deleting row tenant `acme` in one never touches the rows `acme` has in the other's
/// tables, and neither registry's export carries the other's tables.
#[tokio::test]
async fn registries_sharing_a_database_never_act_on_each_others_tables() {
    let (_db, pool) = database().await;
    let mut managers = Vec::new();
    for side in ["a", "b"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA shared_{side};
             CREATE TABLE shared_{side}.notes (
                 id bigserial, tenant_id text NOT NULL, body text NOT NULL,
                 PRIMARY KEY (tenant_id, id));
             {}",
            tenantry::strategy::rls_sql(&format!("shared_{side}.notes"), "tenant_id").unwrap()
        )))
        .execute(&pool)
        .await
        .unwrap();
        let manager = tenantry::TenantManager::builder(pool.clone())
            .control_schema(format!("registry_{side}"))
            .pool_config(PoolConfig {
                row_schema: Some(format!("shared_{side}")),
                ..PoolConfig::default()
            })
            .listen_for_changes(false)
            .build()
            .await
            .unwrap();
        create_with(&manager, "acme", Strategy::Row).await;
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('tenantry.tenant_id', 'acme', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO shared_{side}.notes (tenant_id, body) VALUES ('acme', 'of {side}')"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        managers.push(manager);
    }
    let acme: tenantry::TenantId = "acme".parse().unwrap();
    let export = String::from_utf8(managers[0].admin().export(&acme).await.unwrap()).unwrap();
    assert!(
        export.contains("of a") && !export.contains("of b"),
        "{export}"
    );
    managers[0].suspend_tenant(&acme).await.unwrap();
    managers[0].delete_tenant(&acme).await.unwrap();
    let count = |side: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT set_config('tenantry.tenant_id', 'acme', true)")
                .execute(&mut *tx)
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM shared_{side}.notes"
            )))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            n
        }
    };
    assert_eq!(
        count("a").await,
        0,
        "registry a deleted its own acme's rows"
    );
    assert_eq!(count("b").await, 1, "registry b's acme keeps its rows");
}
