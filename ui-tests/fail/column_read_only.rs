use tenantry::{TenantDb, TenantEntity, TenantId};

#[derive(TenantEntity)]
#[tenant(table = "shared.items")]
struct Item {
    id: i64,
    #[tenant(tenant_column)]
    tenant_id: TenantId,
    label: String,
}

async fn hand_over(db: &mut TenantDb) {
    // The tenant column filters, but cannot be set: no row moves to another tenant.
    let _ = Item::update_columns(db, &1, vec![Item::TENANT_ID.set("globex".parse::<TenantId>().unwrap())]).await;
}

fn main() {}
