//! The API's errors: problem details (RFC 9457) like every tenantry error, with the
//! RealWorld spec's `errors` member beside them (`{"errors": {"body": ["..."]}}`), so
//! that a Conduit front end and a problem-details client both read them.

use std::collections::BTreeMap;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tenantry::{PROBLEM_JSON, Problem};

/// An error of a Conduit handler.
#[derive(Debug)]
pub enum ApiError {
    /// 401: no valid token where one is needed, or wrong credentials.
    Unauthorized(String),
    /// 403: the token is valid but its user may not do this (another's article).
    Forbidden(String),
    /// 404: no such article, profile or comment in this community.
    NotFound(String),
    /// 422: a field the spec's validation refuses (`field` -> `message`).
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong with it ("has already been taken", "can't be blank").
        message: String,
    },
    /// Whatever tenantry answered (a database error, a pool timeout, ...), with its
    /// own status.
    Tenantry(tenantry::Error),
}

impl ApiError {
    /// A 422 for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field,
            message: message.into(),
        }
    }

    fn parts(&self) -> (Problem, &str, String) {
        let plain = |status: StatusCode, detail: &str| Problem {
            type_: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: Problem::printable(detail),
        };
        match self {
            ApiError::Unauthorized(d) => (plain(StatusCode::UNAUTHORIZED, d), "body", d.clone()),
            ApiError::Forbidden(d) => (plain(StatusCode::FORBIDDEN, d), "body", d.clone()),
            ApiError::NotFound(d) => (plain(StatusCode::NOT_FOUND, d), "body", d.clone()),
            ApiError::Invalid { field, message } => (
                plain(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("{field} {message}"),
                ),
                field,
                message.clone(),
            ),
            ApiError::Tenantry(e) => {
                let problem = e.to_problem();
                let detail = problem.detail.clone();
                (problem, "body", detail)
            }
        }
    }
}

impl From<tenantry::Error> for ApiError {
    /// tenantry's error, but for the two database refusals the spec names otherwise:
    /// a unique key a racing request took first (422 on the field its constraint
    /// names), and a row that refers to a member deleted meanwhile (the token's user
    /// is gone: 401).
    fn from(e: tenantry::Error) -> Self {
        if let tenantry::Error::Database(sqlx::Error::Database(db)) = &e {
            let constraint = db.constraint().unwrap_or_default();
            if db.is_unique_violation() {
                let field = ["email", "username", "slug"]
                    .into_iter()
                    .find(|f| constraint.contains(f))
                    .unwrap_or("body");
                return ApiError::invalid(field, "has already been taken");
            }
            if db.is_foreign_key_violation()
                && ["author_id", "user_id", "follower_id"]
                    .iter()
                    .any(|c| constraint.contains(c))
            {
                return ApiError::Unauthorized("the token's user is gone".to_owned());
            }
        }
        ApiError::Tenantry(e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(tenantry::Error::from(e))
    }
}

#[derive(Serialize)]
struct Body {
    #[serde(flatten)]
    problem: Problem,
    errors: BTreeMap<String, Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Tenantry(e) = &self
            && e.status().is_server_error()
        {
            tracing::error!(error = %e, "request failed");
        }
        let (problem, field, message) = self.parts();
        let body = Body {
            problem,
            errors: BTreeMap::from([(field.to_owned(), vec![message])]),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let status =
            StatusCode::from_u16(body.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // tenantry's own response of the error chose its headers (`Retry-After` on a
        // 503 or 429): keep them, with this body.
        let mut headers = match self {
            ApiError::Tenantry(e) => e.into_response().into_parts().0.headers,
            _ => axum::http::HeaderMap::new(),
        };
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(PROBLEM_JSON),
        );
        (status, headers, json).into_response()
    }
}
