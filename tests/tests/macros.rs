//! `#[tenant_scoped]` and `#[derive(TenantEntity)]` against a real PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use common::*;
use tenantry::{
    Error, NewTenant, Op, PoolConfig, TenantContext, TenantDb, TenantEntity, TenantId, TenantLayer,
    TenantManager, TenantTx, tenant_scoped,
};

async fn count_marks(manager: &TenantManager, tenant: &str) -> i64 {
    let schema = format!("tenant_{}", tenant.replace('-', "_"));
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.marks"
    )))
    .fetch_one(manager.admin().registry_pool())
    .await
    .unwrap()
}

async fn setup() -> (tenantry::testing::TestDatabase, TenantManager) {
    let (db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_marks.sql"),
        "CREATE TABLE marks (id bigserial PRIMARY KEY, label text NOT NULL);",
    )
    .unwrap();
    let manager = TenantManager::builder(pool)
        .migrations(
            tenantry::TenantMigrations::from_dir(dir.path())
                .await
                .unwrap(),
        )
        .build()
        .await
        .unwrap();
    for id in ["acme", "globex"] {
        create(&manager, id).await;
    }
    (db, manager)
}

/// Inserts, then succeeds or fails as asked.
#[tenant_scoped(transaction)]
async fn mark(mut tx: TenantTx, body: String) -> Result<&'static str, Error> {
    sqlx::query("INSERT INTO marks (label) VALUES ($1)")
        .bind(&body)
        .execute(&mut tx)
        .await?;
    match body.as_str() {
        "fail" => Err(Error::Validation("asked to fail".to_owned())),
        "panic" => panic!("asked to panic"),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok("late")
        }
        _ => Ok("ok"),
    }
}

/// Reports the tenant in the task-local scope and the one of the handle.
#[tenant_scoped(optional)]
async fn who(db: Option<TenantDb>) -> Result<String, Error> {
    Ok(match db {
        Some(db) => format!("{} {}", TenantContext::tenant_id().unwrap(), db.tenant().id),
        None => format!("nobody {:?}", TenantContext::tenant_id()),
    })
}

#[tokio::test]
async fn transaction_commits_on_ok_and_rolls_back_on_err_panic_and_cancel() {
    let (_db, manager) = setup().await;
    let app = Router::new()
        .route("/mark", post(mark))
        .layer(TenantLayer::new(manager.clone()));
    let req = |body: &str| {
        axum::http::Request::post("/mark")
            .header("x-tenant-id", "acme")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap()
    };

    let ok = tower::ServiceExt::oneshot(app.clone(), req("keep"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(count_marks(&manager, "acme").await, 1, "committed on Ok");

    let failed = tower::ServiceExt::oneshot(app.clone(), req("fail"))
        .await
        .unwrap();
    assert_eq!(failed.status(), 400);
    assert_eq!(count_marks(&manager, "acme").await, 1, "rolled back on Err");

    let app2 = app.clone();
    let panicked =
        tokio::spawn(async move { tower::ServiceExt::oneshot(app2, req("panic")).await }).await;
    assert!(panicked.unwrap_err().is_panic());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count_marks(&manager, "acme").await,
        1,
        "rolled back on panic"
    );

    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        tower::ServiceExt::oneshot(app.clone(), req("slow")),
    )
    .await;
    assert!(cancelled.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count_marks(&manager, "acme").await,
        1,
        "rolled back on cancellation"
    );

    // The pool is healthy afterwards, and globex saw none of it.
    let again = tower::ServiceExt::oneshot(app.clone(), req("again"))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(count_marks(&manager, "acme").await, 2);
    assert_eq!(count_marks(&manager, "globex").await, 0);
}

#[tokio::test]
async fn optional_handle_and_task_local_scope() {
    let (_db, manager) = setup().await;
    let app = Router::new()
        .route("/who", get(who))
        .layer(TenantLayer::new(manager.clone()).optional());
    let body = |r: axum::response::Response| async {
        String::from_utf8(
            http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    let with = tower::ServiceExt::oneshot(
        app.clone(),
        axum::http::Request::get("/who")
            .header("x-tenant-id", "globex")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(body(with).await, "globex globex");
    let without = tower::ServiceExt::oneshot(
        app.clone(),
        axum::http::Request::get("/who")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(body(without).await, "nobody None");
}

/// A model in each tenant's schema.
#[derive(Debug, Clone, PartialEq, TenantEntity)]
#[tenant(table = "marks")]
struct Mark {
    #[tenant(id, generated)]
    id: i64,
    label: String,
    #[tenant(skip)]
    note: Option<String>,
}

#[tokio::test]
async fn entity_operations_in_schema_tenants() {
    let (_db, manager) = setup().await;
    let acme = manager
        .resolve_tenant(&"acme".parse().unwrap())
        .await
        .unwrap();
    let globex = manager
        .resolve_tenant(&"globex".parse().unwrap())
        .await
        .unwrap();
    let mut a = manager.tenant_db(acme).await.unwrap();
    let mut g = manager.tenant_db(globex).await.unwrap();

    let mut saved = Vec::new();
    for label in ["alpha", "beta", "gamma", "delta"] {
        saved.push(
            Mark {
                id: 0,
                label: label.into(),
                note: Some("x".into()),
            }
            .insert(&mut a)
            .await
            .unwrap(),
        );
    }
    assert_eq!(saved[0].label, "alpha");
    assert_eq!(saved[0].note, None, "skipped fields are not stored");
    let other = Mark {
        id: 0,
        label: "globex-only".into(),
        note: None,
    }
    .insert(&mut g)
    .await
    .unwrap();

    assert_eq!(Mark::count(&mut a).await.unwrap(), 4);
    assert_eq!(Mark::count(&mut g).await.unwrap(), 1);
    let page = Mark::list(&mut a, 2, 1).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.label.as_str()).collect::<Vec<_>>(),
        ["beta", "gamma"]
    );
    assert!(Mark::list(&mut a, -1, 0).await.is_err());

    let found = Mark::find(&mut a, &saved[1].id).await.unwrap().unwrap();
    assert_eq!(found.label, "beta");
    // Ids overlap between schemas; globex's row 1 is its own.
    assert_eq!(
        Mark::find(&mut g, &other.id).await.unwrap().unwrap().label,
        "globex-only"
    );
    assert!(Mark::find(&mut g, &saved[3].id).await.unwrap().is_none());

    let mut changed = found.clone();
    changed.label = "BETA".into();
    assert_eq!(changed.update(&mut a).await.unwrap().unwrap().label, "BETA");
    let ghost = Mark {
        id: 999,
        label: "nope".into(),
        note: None,
    };
    assert!(ghost.update(&mut a).await.unwrap().is_none());

    let filtered = Mark::select()
        .filter_named("label", Op::Like, "%a")
        .filter_named("id", Op::Gt, 1_i64)
        .sort_named("label", true)
        .fetch_all(&mut a)
        .await
        .unwrap();
    assert_eq!(
        filtered
            .iter()
            .map(|m| m.label.as_str())
            .collect::<Vec<_>>(),
        ["gamma", "delta"]
    );
    assert_eq!(
        Mark::select()
            .filter_named("label", Op::Eq, "alpha")
            .count(&mut a)
            .await
            .unwrap(),
        1
    );
    let hostile = Mark::select()
        .filter_named("label; DROP TABLE marks", Op::Eq, "x")
        .fetch_all(&mut a)
        .await;
    // Columns are named by the program, not the client: an unknown one is the
    // server's mistake, refused before any SQL, and answered as a 500 (logged).
    match hostile {
        Err(e @ Error::Internal(_)) => {
            assert_eq!(e.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR)
        }
        other => panic!("unknown columns are refused as a server mistake: {other:?}"),
    }
    assert!(
        Mark::select()
            .filter_named("label", Op::Eq, "'; DROP TABLE marks; --")
            .fetch_optional(&mut a)
            .await
            .unwrap()
            .is_none()
    );

    assert!(Mark::delete(&mut a, &saved[0].id).await.unwrap());
    assert!(!Mark::delete(&mut a, &saved[0].id).await.unwrap());
    assert_eq!(Mark::count(&mut a).await.unwrap(), 3);
    assert_eq!(Mark::count(&mut g).await.unwrap(), 1, "globex untouched");
}

/// A model of a table shared by all tenants, separated by its tenant column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, TenantEntity)]
#[tenant(table = "shared.items", new)]
struct Item {
    id: i64,
    #[tenant(tenant_column)]
    tenant_id: TenantId,
    label: String,
}

#[tokio::test]
async fn tenant_column_is_filled_and_filtered_by_every_statement() {
    let (_db, pool) = database().await;
    sqlx::raw_sql(
        "CREATE SCHEMA shared;
         CREATE TABLE shared.items (id bigint, tenant_id text NOT NULL, label text NOT NULL, PRIMARY KEY (tenant_id, id));",
    )
    .execute(&pool)
    .await
    .unwrap();
    let manager = TenantManager::builder(pool.clone())
        .pool_config(PoolConfig {
            shared_schema: Some("shared".into()),
            ..PoolConfig::default()
        })
        .build()
        .await
        .unwrap();
    for id in ["acme", "globex"] {
        manager
            .create_tenant(NewTenant::new(id.parse().unwrap(), id))
            .await
            .unwrap();
    }
    let acme = manager
        .resolve_tenant(&"acme".parse().unwrap())
        .await
        .unwrap();
    let globex = manager
        .resolve_tenant(&"globex".parse().unwrap())
        .await
        .unwrap();
    let mut a = manager.tenant_db(Arc::clone(&acme)).await.unwrap();
    let mut g = manager.tenant_db(globex).await.unwrap();

    // The tenant column is filled from the handle, whatever the value says.
    let forged = Item {
        id: 1,
        tenant_id: "globex".parse().unwrap(),
        label: "acme's".into(),
    };
    let stored = forged.insert(&mut a).await.unwrap();
    assert_eq!(stored.tenant_id.as_str(), "acme");
    Item {
        id: 1,
        tenant_id: "globex".parse().unwrap(),
        label: "globex's".into(),
    }
    .insert(&mut g)
    .await
    .unwrap();
    Item {
        id: 2,
        tenant_id: "globex".parse().unwrap(),
        label: "globex's 2".into(),
    }
    .insert(&mut g)
    .await
    .unwrap();

    assert_eq!(Item::count(&mut a).await.unwrap(), 1);
    assert_eq!(Item::count(&mut g).await.unwrap(), 2);
    assert_eq!(
        Item::find(&mut a, &1).await.unwrap().unwrap().label,
        "acme's"
    );
    assert!(
        Item::find(&mut a, &2).await.unwrap().is_none(),
        "globex's row 2 is invisible to acme"
    );
    assert_eq!(Item::list(&mut a, 10, 0).await.unwrap().len(), 1);
    assert_eq!(Item::select().fetch_all(&mut a).await.unwrap().len(), 1);
    assert_eq!(
        Item::select()
            .filter_named("label", Op::Like, "%")
            .count(&mut g)
            .await
            .unwrap(),
        2
    );
    let victim = Item {
        id: 2,
        tenant_id: "acme".parse().unwrap(),
        label: "hijacked".into(),
    };
    assert!(
        victim.update(&mut a).await.unwrap().is_none(),
        "acme cannot update globex's row"
    );
    assert!(
        !Item::delete(&mut a, &2).await.unwrap(),
        "acme cannot delete globex's row"
    );
    assert_eq!(
        Item::find(&mut g, &2).await.unwrap().unwrap().label,
        "globex's 2"
    );
    let all: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, label FROM shared.items ORDER BY tenant_id, id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        all,
        [
            ("acme".into(), "acme's".into()),
            ("globex".into(), "globex's".into()),
            ("globex".into(), "globex's 2".into())
        ]
    );
}

/// `New<Model>` inserts with the tenant column filled from the handle; typed columns
/// filter, order, update and page, always within the handle's tenant.
#[tokio::test]
async fn new_entities_typed_columns_and_pages_stay_in_the_tenant() {
    let (_db, pool) = database().await;
    sqlx::raw_sql(
        "CREATE SCHEMA shared;
         CREATE TABLE shared.items (id bigint, tenant_id text NOT NULL, label text NOT NULL, PRIMARY KEY (tenant_id, id));",
    )
    .execute(&pool)
    .await
    .unwrap();
    let manager = TenantManager::builder(pool.clone())
        .pool_config(PoolConfig {
            shared_schema: Some("shared".into()),
            ..PoolConfig::default()
        })
        .build()
        .await
        .unwrap();
    for id in ["acme", "globex"] {
        manager
            .create_tenant(NewTenant::new(id.parse().unwrap(), id))
            .await
            .unwrap();
    }
    let acme = manager
        .resolve_tenant(&"acme".parse().unwrap())
        .await
        .unwrap();
    let globex = manager
        .resolve_tenant(&"globex".parse().unwrap())
        .await
        .unwrap();
    let mut a = manager.tenant_db(acme).await.unwrap();
    let mut g = manager.tenant_db(globex).await.unwrap();

    // A client's body has no tenant column at all: `{"id":..,"label":..}`.
    let body: NewItem = serde_json::from_str(r#"{"id":1,"label":"acme one"}"#).unwrap();
    let stored = body.insert(&mut a).await.unwrap();
    assert_eq!(stored.tenant_id.as_str(), "acme");
    // A body that names another tenant: the field is not the model's (ignored), and
    // the row is acme's.
    let forged: NewItem =
        serde_json::from_str(r#"{"id":9,"label":"forged","tenant_id":"globex"}"#).unwrap();
    let stored = forged.insert(&mut a).await.unwrap();
    assert_eq!(
        stored.tenant_id.as_str(),
        "acme",
        "a tenant id in the body never reaches the insert"
    );
    assert!(Item::find(&mut g, &9).await.unwrap().is_none());
    assert!(Item::delete(&mut a, &9).await.unwrap());
    for (id, label) in [(1, "globex one"), (2, "globex two"), (3, "globex three")] {
        NewItem {
            id,
            label: label.into(),
        }
        .insert(&mut g)
        .await
        .unwrap();
    }

    // Typed filters and ordering.
    let mine = Item::select()
        .filter_by(Item::LABEL.like("globex%"))
        .count(&mut a)
        .await
        .unwrap();
    assert_eq!(mine, 0, "acme's filter sees none of globex's rows");
    let ids: Vec<i64> = Item::select()
        .sort_by(Item::ID.desc())
        .fetch_all(&mut g)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, [3, 2, 1]);
    let two = Item::select()
        .filter_by(Item::ID.ge(2))
        .filter_by(Item::LABEL.ne("globex three"))
        .fetch_all(&mut g)
        .await
        .unwrap();
    assert_eq!(two.len(), 1);
    assert_eq!(two[0].label, "globex two");

    // Typed updates of single columns, within the tenant only.
    assert!(
        Item::update_columns(&mut a, &2, vec![Item::LABEL.set("hijacked")])
            .await
            .unwrap()
            .is_none(),
        "acme cannot update globex's row 2"
    );
    let renamed = Item::update_columns(&mut g, &2, vec![Item::LABEL.set("renamed")])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.label, "renamed");
    assert_eq!(renamed.tenant_id.as_str(), "globex");
    assert_eq!(
        Item::find(&mut a, &1).await.unwrap().unwrap().label,
        "acme one"
    );

    // Keyset pages over the tenant's rows.
    let request = tenantry::PageRequest::new("/items", None, 2);
    let first = Item::select().page(&mut g, &request).await.unwrap();
    assert_eq!(first.items.iter().map(|i| i.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(first.next.as_deref(), Some("2"));
    assert_eq!(
        first.next_link(),
        Some("</items?after=2&limit=2>; rel=\"next\"")
    );
    let rest = tenantry::PageRequest::new("/items", first.next.clone(), 2);
    let second = Item::select().page(&mut g, &rest).await.unwrap();
    assert_eq!(second.items.iter().map(|i| i.id).collect::<Vec<_>>(), [3]);
    assert!(second.next.is_none());
    let acme_page = Item::select().page(&mut a, &request).await.unwrap();
    assert_eq!(
        acme_page.items.len(),
        1,
        "acme's pages hold only acme's rows"
    );
}

/// `Col::any`, `Select::count_by`, `Select::exists`, `Select::delete` and
/// `insert_or_ignore` over a table two tenants share with no row-level security: the
/// tenant filter tenantry writes is all that separates them, and it holds in each.
#[tokio::test]
async fn lists_of_values_grouped_counts_deletes_and_ignored_conflicts_stay_in_the_tenant() {
    let (_db, pool) = database().await;
    sqlx::raw_sql(
        "CREATE SCHEMA shared;
         CREATE TABLE shared.items (id bigint, tenant_id text NOT NULL, label text NOT NULL, PRIMARY KEY (tenant_id, id));",
    )
    .execute(&pool)
    .await
    .unwrap();
    let manager = TenantManager::builder(pool.clone())
        .pool_config(PoolConfig {
            shared_schema: Some("shared".into()),
            ..PoolConfig::default()
        })
        .build()
        .await
        .unwrap();
    for id in ["acme", "globex"] {
        manager
            .create_tenant(NewTenant::new(id.parse().unwrap(), id))
            .await
            .unwrap();
    }
    let tenant = |id: &'static str| {
        let manager = manager.clone();
        async move {
            let t = manager.resolve_tenant(&id.parse().unwrap()).await.unwrap();
            manager.tenant_db(t).await.unwrap()
        }
    };
    let mut a = tenant("acme").await;
    let mut g = tenant("globex").await;
    // The same keys in both tenants: 1..=4, labels "x" x3 and "y" in each.
    for db in [&mut a, &mut g] {
        for (id, label) in [(1, "x"), (2, "x"), (3, "x"), (4, "y")] {
            NewItem {
                id,
                label: label.into(),
            }
            .insert(db)
            .await
            .unwrap();
        }
    }

    // `= ANY`: one statement for a list of keys; an empty list matches nothing.
    let some = Item::select()
        .filter_by(Item::ID.any([1, 3, 99]))
        .fetch_all(&mut a)
        .await
        .unwrap();
    assert_eq!(some.iter().map(|i| i.id).collect::<Vec<_>>(), [1, 3]);
    assert!(some.iter().all(|i| i.tenant_id.as_str() == "acme"));
    let none = Item::select()
        .filter_by(Item::ID.any(Vec::<i64>::new()))
        .count(&mut a)
        .await
        .unwrap();
    assert_eq!(none, 0);
    let by_string = Item::select()
        .filter_named("label", Op::Any, vec!["y".to_owned()])
        .fetch_all(&mut a)
        .await
        .unwrap();
    assert_eq!(by_string.len(), 1);

    // Counts per value: the tenant's rows only (globex has the same labels).
    let mut counts = Item::select().count_by(Item::LABEL, &mut a).await.unwrap();
    counts.sort();
    assert_eq!(counts, [("x".to_owned(), 3), ("y".to_owned(), 1)]);
    let mut some_counts = Item::select()
        .filter_by(Item::ID.any([1, 4]))
        .count_by(Item::LABEL, &mut g)
        .await
        .unwrap();
    some_counts.sort();
    assert_eq!(some_counts, [("x".to_owned(), 1), ("y".to_owned(), 1)]);

    // exists.
    assert!(
        Item::select()
            .filter_by(Item::LABEL.eq("y"))
            .exists(&mut a)
            .await
            .unwrap()
    );
    assert!(
        !Item::select()
            .filter_by(Item::LABEL.eq("z"))
            .exists(&mut a)
            .await
            .unwrap()
    );

    // delete: acme's "x" rows go; globex's, with the same labels and keys, stay.
    let gone = Item::select()
        .filter_by(Item::LABEL.eq("x"))
        .delete(&mut a)
        .await
        .unwrap();
    assert_eq!(gone, 3);
    assert_eq!(Item::count(&mut a).await.unwrap(), 1);
    assert_eq!(
        Item::count(&mut g).await.unwrap(),
        4,
        "globex lost rows to acme's delete"
    );
    // An unfiltered delete is the tenant's rows, all and only.
    assert_eq!(Item::select().delete(&mut a).await.unwrap(), 1);
    assert_eq!(Item::count(&mut g).await.unwrap(), 4);
    let refused = Item::select().limit(1).delete(&mut g).await;
    assert!(matches!(refused, Err(Error::Internal(_))), "{refused:?}");
    assert_eq!(Item::count(&mut g).await.unwrap(), 4);

    // insert_or_ignore: a key the tenant has is left alone (None); the same key is
    // free in the other tenant.
    let again = NewItem {
        id: 1,
        label: "replaced?".into(),
    };
    assert!(again.insert_or_ignore(&mut g).await.unwrap().is_none());
    assert_eq!(Item::find(&mut g, &1).await.unwrap().unwrap().label, "x");
    let stored = again.insert_or_ignore(&mut a).await.unwrap().unwrap();
    assert_eq!(stored.tenant_id.as_str(), "acme");
    assert_eq!(stored.label, "replaced?");
}
