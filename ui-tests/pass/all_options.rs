//! Every option combination of `#[tenant_scoped]`.
use axum::routing::get;
use tenantry::{Error, TenantDb, TenantTx, tenant_scoped};

#[tenant_scoped]
async fn db_plain(db: TenantDb) -> Result<(), Error> { let _ = db; Ok(()) }

#[tenant_scoped]
async fn tx_plain(tx: TenantTx) -> Result<(), Error> { let _ = &tx; Ok(()) }

#[tenant_scoped(connection)]
async fn db_connection(db: TenantDb) -> Result<(), Error> { let _ = db; Ok(()) }

#[tenant_scoped(transaction)]
async fn tx_transaction(tx: TenantTx) -> Result<(), Error> { let _ = &tx; Ok(()) }

#[tenant_scoped(optional)]
async fn db_optional(db: Option<TenantDb>) -> Result<(), Error> { let _ = db; Ok(()) }

#[tenant_scoped(optional)]
async fn tx_optional(tx: Option<TenantTx>) -> Result<(), Error> { let _ = &tx; Ok(()) }

#[tenant_scoped(optional, connection)]
async fn db_optional_connection(db: Option<TenantDb>) -> Result<(), Error> { let _ = db; Ok(()) }

#[tenant_scoped(transaction, optional, crate = "tenantry")]
async fn tx_everything(tx: Option<TenantTx>) -> Result<(), Error> { let _ = &tx; Ok(()) }

/// A plain-connection handler may return anything that is a response.
#[tenant_scoped]
async fn db_any_response(db: TenantDb) -> &'static str { let _ = db; "ok" }

/// Your own error type works if it converts from `tenantry::Error`.
struct AppError;
impl From<Error> for AppError { fn from(_: Error) -> Self { AppError } }
impl axum::response::IntoResponse for AppError {
    fn into_response(self) -> axum::response::Response { axum::http::StatusCode::IM_A_TEAPOT.into_response() }
}
#[tenant_scoped(transaction)]
async fn tx_app_error(tx: TenantTx) -> Result<impl axum::response::IntoResponse, AppError> {
    let _ = &tx;
    if false { return Err(AppError); }
    Ok("fine")
}

fn main() {
    let _: axum::Router = axum::Router::new()
        .route("/1", get(db_plain))
        .route("/2", get(tx_plain))
        .route("/3", get(db_connection))
        .route("/4", get(tx_transaction))
        .route("/5", get(db_optional))
        .route("/6", get(tx_optional))
        .route("/7", get(db_optional_connection))
        .route("/8", get(tx_everything))
        .route("/9", get(db_any_response))
        .route("/10", get(tx_app_error));
}
