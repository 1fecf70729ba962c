use tenantry::{TenantEntity, TenantId};

// A tenant column field filters every strategy already.
#[derive(TenantEntity)]
#[tenant(table = "items", row_tenant_column)]
struct Item {
    id: i64,
    #[tenant(tenant_column)]
    tenant_id: TenantId,
}

// The column is a field: it should be the tenant column field instead.
#[derive(TenantEntity)]
#[tenant(table = "notes", row_tenant_column)]
struct Note {
    id: i64,
    tenant_id: String,
}

// Another column: tenantry deletes and moves row tenants' rows by `tenant_id`.
#[derive(TenantEntity)]
#[tenant(table = "tags", row_tenant_column = "org")]
struct Tag {
    id: i64,
}

fn main() {}
