//! Tenants in background work: spawned tasks carry the tenant, jobs re-enter it, and
//! a task without a tenant cannot run a tenant-scoped query.

mod common;

use common::*;
use tenantry::{Error, PoolConfig, TenantContext, TenantEntity, TenantId};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Job {
    tenant: TenantId,
    value: String,
}

#[tokio::test]
async fn spawned_tasks_and_jobs_keep_their_tenant() {
    let (_db, manager) = manager(PoolConfig::default()).await;
    create(&manager, "acme").await;
    create(&manager, "globex").await;
    let acme = manager
        .resolve_tenant(&"acme".parse().unwrap())
        .await
        .unwrap();

    // Spawned with the helper: the task sees acme and queries acme's schema.
    let m = manager.clone();
    let seen = TenantContext::scope(acme.clone(), async move {
        TenantContext::spawn(async move {
            let mut db = m.db().await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
                .fetch_one(&mut db)
                .await?;
            let schema: String = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut db)
                .await?;
            Ok::<_, Error>((TenantContext::tenant_id().unwrap(), n, schema))
        })
        .await
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(seen.0.as_str(), "acme");
    assert_eq!(seen.2, "tenant_acme");

    // A plain tokio::spawn does not inherit the tenant and cannot get a tenant handle.
    let m = manager.clone();
    let orphan = TenantContext::scope(acme, async move {
        tokio::spawn(async move { m.db().await.map(|_| ()) })
            .await
            .unwrap()
    })
    .await;
    assert!(matches!(orphan, Err(Error::NoTenantInScope)), "{orphan:?}");

    // A job queue: the tenant id travels with the serialised job and is re-entered.
    let queue: Vec<String> = ["acme", "globex", "acme"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::to_string(&Job {
                tenant: t.parse().unwrap(),
                value: format!("job {i}"),
            })
            .unwrap()
        })
        .collect();
    for raw in queue {
        let job: Job = serde_json::from_str(&raw).unwrap();
        let m = manager.clone();
        manager
            .run_as(&job.tenant, async move {
                let mut db = m.db().await?;
                saas::DataRow {
                    id: 0,
                    value: job.value,
                }
                .insert(&mut db)
                .await?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap()
            .unwrap();
    }
    let count = |t: &'static str| {
        let m = manager.clone();
        async move {
            m.run_as(&t.parse().unwrap(), async {
                saas::DataRow::count(&mut m.db().await?).await
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    assert_eq!(count("acme").await, 2);
    assert_eq!(count("globex").await, 1);

    // A job for a tenant that cannot be served fails clearly.
    let bad: Result<Job, _> = serde_json::from_str(r#"{"tenant":"Not Valid","value":"x"}"#);
    assert!(
        bad.is_err(),
        "an invalid tenant id does not even deserialise"
    );
    manager
        .suspend_tenant(&"globex".parse().unwrap())
        .await
        .unwrap();
    let refused = manager.run_as(&"globex".parse().unwrap(), async {}).await;
    assert!(matches!(refused, Err(Error::TenantNotActive { .. })));
    let unknown = manager.run_as(&"ghost".parse().unwrap(), async {}).await;
    assert!(matches!(unknown, Err(Error::TenantNotFound(_))));
}
