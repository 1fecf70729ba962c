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

/// The check is not a formality: a handle whose session was moved to another
/// tenant's schema (a planted leak) fails it, naming who saw whose rows.
#[tenantry::test(
    strategies(schema),
    tenants = 2,
    migrations = "fixtures/notes/migrations",
    shared = "fixtures/notes/shared.sql"
)]
#[should_panic(
    expected = "rows leaked across tenants (3 of them): schema-1 sees a row of schema-2"
)]
async fn the_isolation_check_catches_a_leak(t: TestTenants) {
    write_notes(&t).await;
    let mut handles = t.handles().await.unwrap();
    let other = t.tenants()[1].storage.clone();
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(&other)
        .execute(&mut handles[0])
        .await
        .unwrap();
    let _ = assert_isolated(&mut handles, "SELECT owner FROM notes").await;
}

/// Fan-out: every tenant's work under its own binding, bounded, with a timeout that
/// rolls the slow tenant back and leaves the others alone.
#[tenantry::test(
    tenants = 2,
    migrations = "fixtures/notes/migrations",
    shared = "fixtures/notes/shared.sql"
)]
async fn fan_out_runs_each_tenant_under_its_binding(t: TestTenants) {
    use futures::StreamExt;
    use std::time::Duration;
    use tenantry::{FanOut, Selection};

    let outcomes = t
        .manager()
        .fan_out(FanOut::default(), |tenant, mut tx| async move {
            sqlx::query("INSERT INTO notes (owner) VALUES ($1)")
                .bind(tenant.id.as_str())
                .execute(&mut tx)
                .await?;
            let owners: Vec<String> = sqlx::query_scalar("SELECT owner FROM notes")
                .fetch_all(&mut tx)
                .await?;
            Ok((owners, tx))
        })
        .await
        .unwrap();
    let outcomes: Vec<_> = outcomes.collect().await;
    assert_eq!(outcomes.len(), 6, "two tenants of each strategy");
    for o in &outcomes {
        let owners = o.result.as_ref().expect("every tenant succeeds");
        assert_eq!(owners, &[o.tenant.to_string()], "only its own note");
    }

    // One slow tenant: rolled back at its timeout; the other commits.
    let options = FanOut {
        selection: Selection::Ids(vec![
            "schema-1".parse().unwrap(),
            "schema-2".parse().unwrap(),
        ]),
        concurrency: 2,
        timeout: Duration::from_millis(300),
    };
    let outcomes: Vec<_> = t
        .manager()
        .fan_out(options, |tenant, mut tx| async move {
            sqlx::query("INSERT INTO notes (owner) VALUES ('late')")
                .execute(&mut tx)
                .await?;
            if tenant.id.as_str() == "schema-1" {
                sqlx::query("SELECT pg_sleep(5)").execute(&mut tx).await?;
            }
            Ok(((), tx))
        })
        .await
        .unwrap()
        .collect()
        .await;
    let slow = outcomes
        .iter()
        .find(|o| o.tenant.as_str() == "schema-1")
        .unwrap();
    assert!(slow.result.is_err(), "the slow tenant timed out");
    let fast = outcomes
        .iter()
        .find(|o| o.tenant.as_str() == "schema-2")
        .unwrap();
    assert!(fast.result.is_ok());
    for (id, expected) in [("schema-1", 0), ("schema-2", 1)] {
        let tenant = t
            .manager()
            .resolve_tenant(&id.parse().unwrap())
            .await
            .unwrap();
        let mut db = t.db(&tenant).await.unwrap();
        let late: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE owner = 'late'")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(late, expected, "{id}");
    }
}

/// Attribution: while a connection serves a tenant, `pg_stat_activity` names the
/// tenant (`tenantry:<id>`), for every strategy; once released and reset, the name
/// is the pool's own again.
#[tenantry::test(
    migrations = "fixtures/notes/migrations",
    shared = "fixtures/notes/shared.sql"
)]
async fn the_server_sees_which_tenant_runs_what(t: TestTenants) {
    for tenant in t.tenants() {
        let mut db = t.db(tenant).await.unwrap();
        let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(
            name,
            format!("tenantry:{}", tenant.id),
            "{:?}",
            tenant.strategy
        );
    }
}
