//! Every attribute of `#[derive(TenantEntity)]`.
use tenantry::{Op, TenantEntity, TenantId, TenantTx};

#[derive(Debug, TenantEntity)]
#[tenant(table = "app.line_items")]
struct LineItem {
    #[tenant(id)]
    sku: String,
    #[tenant(tenant_column)]
    tenant: TenantId,
    #[tenant(rename = "qty")]
    quantity: i32,
    #[tenant(generated)]
    created_at: Option<i64>,
    #[tenant(skip)]
    scratch: Vec<u8>,
    r#type: String,
}

#[derive(TenantEntity)]
struct Category {
    id: i64,
}

#[derive(TenantEntity)]
#[tenant(table = "projects", row_tenant_column, new)]
struct Project {
    #[tenant(id, generated)]
    id: i64,
    name: String,
}

#[derive(TenantEntity)]
#[tenant(row_tenant_column = "tenant_id")]
struct Label {
    id: i64,
}

async fn all(tx: &mut TenantTx) -> Result<(), tenantry::Error> {
    let _ = LineItem::select().filter_named("qty", Op::Ge, 2_i32).fetch_all(tx).await?;
    let _ = Category::list(tx, 10, 0).await?;
    Ok(())
}

fn main() {
    assert_eq!(LineItem::TABLE, "app.line_items");
    assert_eq!(LineItem::COLUMNS, &["sku", "tenant", "qty", "created_at", "type"]);
    assert_eq!(LineItem::PRIMARY_KEY, "sku");
    assert_eq!(LineItem::TENANT_COLUMN, Some("tenant"));
    assert_eq!(Category::TABLE, "categories");
    assert_eq!(Category::ROW_TENANT_COLUMN, None);
    assert_eq!(Project::ROW_TENANT_COLUMN, Some("tenant_id"));
    assert_eq!(Project::TENANT_COLUMN, None);
    assert_eq!(Label::ROW_TENANT_COLUMN, Some("tenant_id"));
    let _ = NewProject { name: String::new() };
    let _ = all;
}
