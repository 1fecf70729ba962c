use tenantry::TenantEntity;

#[derive(TenantEntity)]
struct Project {
    id: i64,
    name: String,
}

async fn plain_connection(mut conn: sqlx::PgConnection) {
    let _ = Project::count(&mut conn).await;
}

fn main() {}
