//! `#[tenantry::test]`: tenants of every strategy on a throwaway database, and the
//! reusable isolation check.

use tenantry::Strategy;
use tenantry::testing::{TestTenants, assert_isolated};

async fn write_notes(t: &TestTenants) {
    for tenant in t.tenants() {
        let mut db = t.db(tenant).await.unwrap();
        for _ in 0..3 {
            sqlx::query("INSERT INTO notes (owner) VALUES ($1)")
                .bind(tenant.id.as_str())
                .execute(&mut db)
                .await
                .unwrap();
        }
    }
}

#[tenantry::test(
    migrations = "fixtures/notes/migrations",
    shared = "fixtures/notes/shared.sql"
)]
async fn every_strategy_gets_a_tenant_and_each_sees_only_its_notes(t: TestTenants) {
    let strategies: Vec<Strategy> = t.tenants().iter().map(|t| t.strategy).collect();
    assert_eq!(
        strategies,
        [Strategy::Schema, Strategy::Row, Strategy::Database]
    );
    write_notes(&t).await;
    let mut handles = t.handles().await.unwrap();
    let seen = assert_isolated(&mut handles, "SELECT owner FROM notes")
        .await
        .unwrap();
    assert_eq!(seen, [3, 3, 3], "each tenant sees its own three notes");
}

#[tenantry::test(
    strategies(schema, row),
    tenants = 3,
    migrations = "fixtures/notes/migrations",
    shared = "fixtures/notes/shared.sql"
)]
async fn several_tenants_per_strategy(t: TestTenants) -> Result<(), tenantry::Error> {
    assert_eq!(t.of(Strategy::Schema).len(), 3);
    assert_eq!(t.of(Strategy::Row).len(), 3);
    assert!(t.of(Strategy::Database).is_empty());
    write_notes(&t).await;
    let mut handles = t.handles().await?;
    assert_eq!(
        assert_isolated(&mut handles, "SELECT owner FROM notes").await?,
        [3; 6]
    );
    Ok(())
}

/// The check is not a formality: a handle that reads another tenant's row fails it.
#[tenantry::test(strategies(schema), tenants = 2)]
#[should_panic(expected = "rows leaked across tenants")]
async fn the_isolation_check_catches_a_leak(t: TestTenants) {
    let mut handles = t.handles().await.unwrap();
    // A query that names another tenant's rows, as a leak would.
    let _ = assert_isolated(&mut handles, "SELECT 'schema-2'::text").await;
}
