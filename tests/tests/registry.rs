//! The registry, the lifecycle rules and the manager: TenantManager, TenantService
//! and TenantRepository of the seed design (crate-internal now: reached through
//! `TenantManager` and `admin`).

mod common;

use std::time::Duration;

use common::*;
use sqlx::Row;
use tenantry::{Error, NewTenant, PoolConfig, TenantManager, TenantMigrations, TenantStatus};

async fn schema_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn registry_setup_is_idempotent_and_safe_under_concurrent_start() {
    let (_db, pool) = database().await;
    // Eight app instances starting at the same moment.
    let starts = (0..8).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { TenantManager::builder(pool).build().await })
    });
    for start in futures::future::join_all(starts).await {
        start.unwrap().expect("every instance starts");
    }
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantry.registry_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(versions, 11, "each of the eleven upgrades recorded once");
    // And once more, later.
    TenantManager::builder(pool.clone()).build().await.unwrap();
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'tenantry' AND table_name = 'tenants' ORDER BY ordinal_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for expected in [
        "id",
        "name",
        "domain",
        "strategy",
        "status",
        "schema_name",
        "server",
        "placement",
        "incarnation",
        "limits",
        "created_at",
        "updated_at",
    ] {
        assert!(
            columns.iter().any(|c| c == expected),
            "missing column {expected}"
        );
    }
}

#[tokio::test]
async fn control_schema_name_is_validated() {
    let (_db, pool) = database().await;
    for bad in ["", "Bad", "a-b", "x\"; drop", "1abc"] {
        let refused = TenantManager::builder(pool.clone())
            .control_schema(bad)
            .build()
            .await;
        assert!(matches!(refused, Err(Error::Validation(_))), "{bad}");
        assert!(!schema_exists(&pool, bad).await, "{bad}");
    }
    let m = TenantManager::builder(pool.clone())
        .control_schema("ops_registry")
        .build()
        .await
        .unwrap();
    create(&m, "acme").await;
    assert!(schema_exists(&pool, "ops_registry").await);
}

#[tokio::test]
async fn manager_lifecycle() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let pool = manager.admin().registry_pool().clone();
    let id: tenantry::TenantId = "acme".parse().unwrap();

    // The seed: create_tenant({"name": ..., "domain": ...}), get_tenant_by_id(...)
    let created = manager
        .create_tenant(NewTenant::new(id.clone(), "Example Tenant").with_domain("example.com"))
        .await
        .unwrap();
    assert_eq!(created.status, TenantStatus::Active);
    assert_eq!(created.storage, "tenant_acme");
    assert!(schema_exists(&pool, "tenant_acme").await);
    let got = manager.find_tenant(&id).await.unwrap().unwrap();
    assert_eq!(got.name, "Example Tenant");
    assert_eq!(got.domain.as_deref(), Some("example.com"));

    // The tenant migrations ran in its schema and were recorded.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'tenant_acme' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tables, ["data", "projects"]);
    let recorded: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM tenantry.tenant_migrations WHERE tenant_id = 'acme' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, [1, 2]);

    // Deleting is two-phase: an active tenant cannot be deleted.
    let err = manager.delete_tenant(&id).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    assert_eq!(err.status(), 409);
    assert!(schema_exists(&pool, "tenant_acme").await, "nothing dropped");

    let suspended = manager.suspend_tenant(&id).await.unwrap();
    assert_eq!(suspended.status, TenantStatus::Suspended);
    assert!(matches!(
        manager.resolve_tenant(&id).await,
        Err(Error::TenantNotActive { .. })
    ));
    let resumed = manager.resume_tenant(&id).await.unwrap();
    assert_eq!(resumed.status, TenantStatus::Active);
    assert!(manager.resolve_tenant(&id).await.is_ok());

    manager.suspend_tenant(&id).await.unwrap();
    let deleted = manager.delete_tenant(&id).await.unwrap();
    assert_eq!(deleted.status, TenantStatus::Deleted);
    assert!(!schema_exists(&pool, "tenant_acme").await, "schema dropped");
    assert!(manager.find_tenant(&id).await.unwrap().is_none());
    assert!(manager.list_tenants().await.unwrap().is_empty());
    assert!(matches!(
        manager.resume_tenant(&id).await,
        Err(Error::TenantNotFound(_))
    ));

    // The id can be used again, with a fresh, empty schema.
    manager
        .create_tenant(NewTenant::new(id.clone(), "Acme again"))
        .await
        .unwrap();
    let projects: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_acme.projects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(projects, 0);
}

#[tokio::test]
async fn duplicate_ids_and_domains_conflict_even_when_racing() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    let races = (0..6).map(|i| {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .create_tenant(NewTenant::new("acme".parse().unwrap(), format!("Acme {i}")))
                .await
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(races)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|r| r.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    for err in outcomes.into_iter().filter_map(Result::err) {
        assert!(matches!(err, Error::TenantExists(_)), "{err}");
        assert_eq!(err.status(), 409);
    }
    manager
        .create_tenant(
            NewTenant::new("one".parse().unwrap(), "One").with_domain("shop.example.com"),
        )
        .await
        .unwrap();
    let err = manager
        .create_tenant(
            NewTenant::new("two".parse().unwrap(), "Two").with_domain("shop.example.com"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    assert!(
        manager
            .find_tenant(&"two".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn failed_provisioning_leaves_nothing_and_can_be_retried() {
    let (_db, pool) = database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_ok.sql"),
        "CREATE TABLE things (id int PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("0002_broken.sql"),
        "CREATE TABLE more (id int); INSERT INTO no_such_table VALUES (1);",
    )
    .unwrap();
    let broken = TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir.path()).await.unwrap())
        .build()
        .await
        .unwrap();
    let id: tenantry::TenantId = "acme".parse().unwrap();
    let err = broken
        .create_tenant(NewTenant::new(id.clone(), "Acme"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("migration 2"), "{err}");
    assert!(
        !schema_exists(&pool, "tenant_acme").await,
        "no schema left behind"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantry.tenants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "no registry row left behind");
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM tenantry.tenant_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(records, 0);

    // Fix the cause; the same id can now be created.
    std::fs::write(
        dir.path().join("0002_broken.sql"),
        "CREATE TABLE more (id int);",
    )
    .unwrap();
    let fixed = TenantManager::builder(pool.clone())
        .migrations(TenantMigrations::from_dir(dir.path()).await.unwrap())
        .build()
        .await
        .unwrap();
    let tenant = fixed
        .create_tenant(NewTenant::new(id.clone(), "Acme"))
        .await
        .unwrap();
    assert_eq!(tenant.status, TenantStatus::Active);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'tenant_acme' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tables, ["more", "things"]);
}

#[tokio::test]
async fn cache_is_invalidated_by_changes_and_expires_for_changes_made_elsewhere() {
    let (_db, pool) = database().await;
    // `a` hears no change notifications: only the entry's expiry can show it what
    // `b` changes.
    let a = TenantManager::builder(pool.clone())
        .cache_ttl(Duration::from_millis(1000))
        .listen_for_changes(false)
        .build()
        .await
        .unwrap();
    let b = TenantManager::builder(pool.clone())
        .cache_ttl(Duration::from_millis(1000))
        .build()
        .await
        .unwrap();
    create(&a, "acme").await;
    let id: tenantry::TenantId = "acme".parse().unwrap();

    // Cached: a second lookup does not go to the registry.
    a.resolve_tenant(&id).await.unwrap();
    let lookups = a.registry_lookups();
    a.resolve_tenant(&id).await.unwrap();
    assert_eq!(a.registry_lookups(), lookups, "served from the cache");

    // A change through the same manager takes effect at once.
    a.suspend_tenant(&id).await.unwrap();
    assert!(matches!(
        a.resolve_tenant(&id).await,
        Err(Error::TenantNotActive { .. })
    ));
    a.resume_tenant(&id).await.unwrap();
    a.resolve_tenant(&id).await.unwrap();

    // A change through another instance is seen once the entry expires (and not
    // before: `a` still has the active record cached).
    a.resolve_tenant(&id).await.unwrap();
    b.suspend_tenant(&id).await.unwrap();
    a.resolve_tenant(&id)
        .await
        .expect("served from the cache until it expires");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(matches!(
        a.resolve_tenant(&id).await,
        Err(Error::TenantNotActive { .. })
    ));
}

#[tokio::test]
async fn name_and_domain_are_validated() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    for new in [
        NewTenant::new("a".parse().unwrap(), ""),
        NewTenant::new("a".parse().unwrap(), "x".repeat(201)),
        NewTenant::new("a".parse().unwrap(), "bell\u{7}"),
        // (Upper case is normalised since the hardening issue, see hardening.rs.)
        NewTenant::new("a".parse().unwrap(), "A").with_domain("a..b"),
        NewTenant::new("a".parse().unwrap(), "A").with_domain("x'; drop"),
    ] {
        let err = manager.create_tenant(new.clone()).await.unwrap_err();
        assert_eq!(err.status(), 400, "{new:?}: {err}");
    }
    let row = sqlx::query("SELECT count(*) AS n FROM tenantry.tenants")
        .fetch_one(manager.admin().registry_pool())
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 0);
}

/// Expired cache entries are confirmed by one sweep of the registry per TTL, not a
/// lookup each, and every kind of change made behind the instance's back (no
/// notification) is still seen within the TTL: status, limits, a domain, a migration
/// version, a deletion and re-creation under the same id.
#[tokio::test]
async fn expired_entries_are_confirmed_by_one_sweep_and_changes_elsewhere_still_show() {
    let (_db, pool) = database().await;
    let ttl = Duration::from_millis(300);
    let deaf = TenantManager::builder(pool.clone())
        .cache_ttl(ttl)
        .listen_for_changes(false)
        .build()
        .await
        .unwrap();
    let ids: Vec<tenantry::TenantId> = (0..40)
        .map(|i| format!("t{i:02}").parse().unwrap())
        .collect();
    for id in &ids {
        create(&deaf, id.as_str()).await;
    }
    for id in &ids {
        deaf.resolve_tenant(id).await.unwrap();
    }
    // Several TTLs later, every tenant looked up again: one sweep per TTL.
    for _ in 0..3 {
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        let before = deaf.registry_lookups();
        for id in &ids {
            deaf.resolve_tenant(id).await.unwrap();
        }
        let queries = deaf.registry_lookups() - before;
        assert_eq!(
            queries, 1,
            "one sweep for 40 expired entries, not 40 lookups"
        );
    }

    // Changes made directly in the registry, which this instance hears nothing of.
    let changes = [
        (
            "t01",
            "UPDATE tenantry.tenants SET status = 'suspended' WHERE id = 't01'",
        ),
        (
            "t02",
            "UPDATE tenantry.tenants SET limits = '{\"rate\": 7}' WHERE id = 't02'",
        ),
        (
            "t03",
            "INSERT INTO tenantry.tenant_domains (domain, tenant_id) VALUES ('t03.example.com', 't03')",
        ),
        (
            "t04",
            "INSERT INTO tenantry.tenant_migrations (tenant_id, version, description, checksum) \
             VALUES ('t04', 99, 'by hand', '\\x00')",
        ),
        (
            "t05",
            "UPDATE tenantry.tenants SET incarnation = nextval('tenantry.incarnations') WHERE id = 't05'",
        ),
    ];
    let before: Vec<_> = changes
        .iter()
        .map(|(id, _)| {
            let id: tenantry::TenantId = id.parse().unwrap();
            id
        })
        .collect();
    let mut old = Vec::new();
    for id in &before {
        old.push(deaf.find_tenant(id).await.unwrap().unwrap());
    }
    for (_, sql) in &changes {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let now: Vec<_> = {
        let mut v = Vec::new();
        for id in &before {
            v.push(deaf.find_tenant(id).await.unwrap().unwrap());
        }
        v
    };
    assert_eq!(now[0].status, tenantry::TenantStatus::Suspended);
    assert_ne!(now[1].limits, old[1].limits, "limits");
    assert!(
        now[2].domains.iter().any(|d| d == "t03.example.com"),
        "domains: {:?}",
        now[2].domains
    );
    assert_eq!(now[3].schema_version, Some(99), "migration version");
    assert_ne!(now[4].incarnation, old[4].incarnation, "incarnation");
    // The unchanged ones are the same records, confirmed, not re-read.
    let unchanged: tenantry::TenantId = "t20".parse().unwrap();
    let a = deaf.find_tenant(&unchanged).await.unwrap().unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let b = deaf.find_tenant(&unchanged).await.unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "confirmed, not re-read");
}

/// A test database takes the databases made under its prefix with it, and only those:
/// another test database's (alive, with its own random tag) stay.
#[tokio::test]
async fn a_test_database_drops_the_databases_under_its_prefix_and_no_others() {
    let (mine, pool) = database().await;
    let (other, _other_pool) = database().await;
    assert_ne!(mine.tag(), other.tag());
    let made = format!("{}tenant_db", mine.database_prefix());
    let kept = format!("{}tenant_db", other.database_prefix());
    for name in [&made, &kept] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&pool)
            .await
            .unwrap();
    }
    let exists = |name: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(exists(made.clone()).await && exists(kept.clone()).await);
    let probe = sqlx::PgPool::connect(other.url()).await.unwrap();
    pool.close().await;
    drop(mine);
    let gone: bool =
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&made)
            .fetch_one(&probe)
            .await
            .unwrap();
    let still: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&kept)
            .fetch_one(&probe)
            .await
            .unwrap();
    assert!(gone, "{made} outlived its test database");
    assert!(still, "{kept} belongs to another test database");
    probe.close().await;
}
