//! axum's `Json`, `Path` and `Query`, answering their rejections in
//! `application/problem+json` like every other tenantry error.
//!
//! axum's own extractors reject a malformed body or path in plain text; these
//! wrappers keep axum's rules (and status codes: 400, 413, 415, 422) and change only
//! the format, so an application has one error format without writing it:
//!
//! ```no_run
//! use tenantry::extract::{Json, Path, Query};
//!
//! #[derive(serde::Deserialize)]
//! struct Paging { limit: Option<i64> }
//!
//! async fn handler(
//!     Path(id): Path<i64>,
//!     Query(paging): Query<Paging>,
//!     Json(body): Json<serde_json::Value>,
//! ) -> Json<serde_json::Value> {
//!     Json(serde_json::json!({ "id": id, "limit": paging.limit, "body": body }))
//! }
//! # let _: axum::routing::MethodRouter = axum::routing::post(handler);
//! ```
//!
//! A rejection is [`Error::Rejected`]: the problem type
//! `https://tenantry.dev/problems/invalid-request`, axum's status, and axum's message
//! as the detail.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::error::Error;

/// `axum::Json` whose rejections are problem details; also a JSON response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(Error::Rejected {
                status: rejection.status(),
                detail: rejection.body_text(),
            }),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejections are problem details.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(Error::Rejected {
                status: rejection.status(),
                detail: rejection.body_text(),
            }),
        }
    }
}

/// `axum::extract::Query` whose rejections are problem details.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(Error::Rejected {
                status: rejection.status(),
                detail: rejection.body_text(),
            }),
        }
    }
}
