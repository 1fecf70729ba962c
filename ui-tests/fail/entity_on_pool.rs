use tenantry::TenantEntity;

#[derive(TenantEntity)]
struct Project {
    id: i64,
    name: String,
}

async fn forgot_the_scope(pool: sqlx::PgPool) {
    let mut pool = pool;
    let _ = Project::find(&mut pool, &1).await;
}

fn main() {}
