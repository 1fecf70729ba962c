use tenantry::{Error, TenantDb, tenant_scoped};

struct Api;

impl Api {
    #[tenant_scoped]
    async fn handler(&self, db: TenantDb) -> Result<(), Error> {
        let _ = db;
        Ok(())
    }
}

fn main() {}
