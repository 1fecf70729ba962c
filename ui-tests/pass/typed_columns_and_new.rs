use tenantry::{Error, TenantDb, TenantEntity, TenantTx, extract::Json, tenant_scoped};

#[derive(serde::Serialize, serde::Deserialize, TenantEntity)]
#[tenant(table = "projects", new)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    #[tenant(id, generated)]
    pub id: i64,
    pub display_name: String,
    pub done: bool,
}

#[tenant_scoped(transaction)]
async fn add(mut tx: TenantTx, Json(new): Json<NewProject>) -> Result<Json<Project>, Error> {
    Ok(Json(new.insert(&mut tx).await?))
}

#[tenant_scoped]
async fn open(mut db: TenantDb) -> Result<Json<Vec<Project>>, Error> {
    let rows = Project::select()
        .filter_by(Project::DONE.eq(false))
        .filter_by(Project::DISPLAY_NAME.ilike("a%"))
        .sort_by(Project::ID.desc())
        .fetch_all(&mut db)
        .await?;
    Project::update_columns(&mut db, &1, vec![Project::DONE.set(true)]).await?;
    Ok(Json(rows))
}

fn main() {
    // `NewProject` takes the model's serde attributes: `{"displayName":..,"done":..}`.
    let new: NewProject = serde_json::from_str(r#"{"displayName":"a","done":false}"#).unwrap();
    assert_eq!(new.display_name, "a");
    let _: axum::Router = axum::Router::new()
        .route("/p", axum::routing::post(add))
        .route("/open", axum::routing::get(open));
}
