//! Generic handlers and a generic model keep their parameters and bounds.
use axum::extract::State;
use tenantry::{Error, TenantDb, TenantEntity, tenant_scoped};

#[tenant_scoped]
async fn handler<S>(State(state): State<S>, mut db: TenantDb) -> Result<String, Error>
where
    S: Clone + Send + Sync + std::fmt::Debug + 'static,
{
    let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut db).await?;
    Ok(format!("{state:?} {n}"))
}

#[derive(TenantEntity)]
struct Tagged<T> {
    id: i64,
    tag: T,
}

async fn use_generic(db: &mut TenantDb) -> Result<Option<Tagged<String>>, Error> {
    Tagged::<String>::find(db, &1).await
}

fn main() {
    let _router: axum::Router<u8> =
        axum::Router::new().route("/", axum::routing::get(handler::<u8>));
    let _ = use_generic;
}
