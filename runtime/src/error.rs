//! One error type for the runtime, mapped to HTTP problem details (RFC 9457) in one place.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::tenant::{InvalidTenantId, TenantId, TenantStatus};

/// Everything that can go wrong in tenantry.
///
/// Each variant maps to one HTTP status through [`Error::status`]; as an axum
/// response it becomes an `application/problem+json` body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request named no tenant where one is required.
    #[error("the request names no tenant: {hint}")]
    MissingTenant {
        /// How to name one (from the configured resolvers).
        hint: String,
    },
    /// A tenant id does not match the pattern.
    #[error("invalid tenant id `{value}`: {reason}")]
    InvalidTenantId {
        /// A short, escaped prefix of the offending value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// No such tenant in the registry (or it was deleted).
    #[error("tenant `{0}` does not exist")]
    TenantNotFound(TenantId),
    /// The tenant exists but is not being served.
    #[error("tenant `{id}` is {status}")]
    TenantNotActive {
        /// The tenant.
        id: TenantId,
        /// Its status.
        status: TenantStatus,
    },
    /// The caller may not act for this tenant (a tenant policy refused it).
    #[error("{0}")]
    Forbidden(String),
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthorized(String),
    /// A tenant with this id already exists.
    #[error("tenant `{0}` already exists")]
    TenantExists(TenantId),
    /// A lifecycle transition that the tenant's status does not allow.
    #[error("tenant `{id}` is {status}: {message}")]
    InvalidTransition {
        /// The tenant.
        id: TenantId,
        /// Its current status.
        status: TenantStatus,
        /// What to do instead.
        message: &'static str,
    },
    /// Something the request names does not exist (a 404 for application resources).
    #[error("{0}")]
    NotFound(String),
    /// Input that fails validation (other than the tenant id).
    #[error("{0}")]
    Validation(String),
    /// Code asked for the current tenant outside of a tenant scope.
    #[error("no tenant in scope: run this inside `TenantContext::scope` or behind `TenantLayer`")]
    NoTenantInScope,
    /// A tenant migration failed.
    #[error("tenant migration failed: {0}")]
    Migration(String),
    /// The registry holds something tenantry cannot read.
    #[error("registry: {0}")]
    Registry(String),
    /// The tenant is over one of its limits (request rate or concurrency): 429 with
    /// `Retry-After`. See [`crate::TenantLimitLayer`].
    #[error("tenant `{tenant}` is over its {limit}; retry in {retry_after} s")]
    TooManyRequests {
        /// The tenant.
        tenant: TenantId,
        /// Which limit: `request rate` or `concurrency`.
        limit: &'static str,
        /// Seconds after which a retry may pass.
        retry_after: u64,
    },
    /// An extractor refused the request (a malformed JSON body, path or query): the
    /// extractor's status (400, 413, 415, 422, ...) and its message. See
    /// [`crate::extract`].
    #[error("{detail}")]
    Rejected {
        /// The status the extractor chose.
        status: StatusCode,
        /// What was wrong with the request.
        detail: String,
    },
    /// A mistake on the server's side that the client cannot fix: a query built by
    /// code naming a column the entity does not have, a value that cannot be encoded,
    /// a tool (`pg_dump`) that failed. A 500; the detail goes to the log, not the client.
    #[error("internal error: {0}")]
    Internal(String),
    /// No tenant connection became free within the server's connection budget in
    /// time (503 with `Retry-After`).
    #[error("no database connection was free within the budget of {budget} after {waited:?}")]
    PoolExhausted {
        /// The server's connection budget.
        budget: u32,
        /// How long the request waited.
        waited: std::time::Duration,
    },
    /// The tenant changed (suspended, deleted, re-created, moved) while the request
    /// held a handle for it; retrying resolves it again (503 with `Retry-After`).
    #[error("tenant `{0}` changed while the request was in flight; retry")]
    TenantChanged(TenantId),
    /// A well-formed request whose content cannot be accepted (422), for example a
    /// tenant domain that is an IP address or `localhost`.
    #[error("{0}")]
    Unprocessable(String),
    /// Something the request would create exists already and is not its own (a
    /// database or schema of the tenant's name made by someone else): 409, and it is
    /// left untouched.
    #[error("{0}")]
    Conflict(String),
    /// The tenant still had requests using its connections when it was to be deleted;
    /// nothing was deleted (409; retry once they finished).
    #[error("tenant `{0}` still has requests in flight; nothing was deleted, retry")]
    TenantBusy(TenantId),
    /// The database answered with an error, or could not be reached.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // tenantry's own errors, carried through sqlx by a handle used as an executor.
            sqlx::Error::AnyDriverError(inner) => match inner.downcast::<Error>() {
                Ok(own) => *own,
                Err(other) => Error::Database(sqlx::Error::AnyDriverError(other)),
            },
            other => Error::Database(other),
        }
    }
}

impl From<InvalidTenantId> for Error {
    fn from(e: InvalidTenantId) -> Self {
        Error::InvalidTenantId {
            value: e.value,
            reason: e.reason,
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => Error::Database(e),
            other => Error::Migration(other.to_string()),
        }
    }
}

impl Error {
    /// The HTTP status this error maps to.
    ///
    /// A client's mistake is a 4xx; an unreachable database is 503; anything else 500.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::MissingTenant { .. } | Error::InvalidTenantId { .. } | Error::Validation(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::TenantNotFound(_) | Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::TenantNotActive { .. } | Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::TenantExists(_)
            | Error::InvalidTransition { .. }
            | Error::TenantBusy(_)
            | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Rejected { status, .. } => *status,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Database(e) if is_unavailable(e) || is_cancelled(e) || is_read_only(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::PoolExhausted { .. } | Error::TenantChanged(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Database(e) => {
                data_fault(e).map_or(StatusCode::INTERNAL_SERVER_ERROR, |f| f.status)
            }
            Error::NoTenantInScope
            | Error::Migration(_)
            | Error::Registry(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the database could not be reached (as opposed to answering with an error).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Database(e) if is_unavailable(e))
            || matches!(self, Error::PoolExhausted { .. })
    }

    /// The problem details for this error.
    pub fn to_problem(&self) -> Problem {
        let status = self.status();
        // A database error caused by the request's data (4xx), read once.
        let fault = match self {
            Error::Database(e) if !is_unavailable(e) => data_fault(e),
            _ => None,
        };
        let (kind, title) = match self {
            _ if fault.is_some() => fault
                .as_ref()
                .map_or(("internal", "Internal error"), |f| (f.kind, f.title)),
            Error::MissingTenant { .. } => ("missing-tenant", "Missing tenant"),
            Error::InvalidTenantId { .. } => ("invalid-tenant-id", "Invalid tenant id"),
            Error::TenantNotFound(_) => ("tenant-not-found", "Tenant not found"),
            Error::TenantNotActive { .. } => ("tenant-not-active", "Tenant not active"),
            Error::TenantExists(_) => ("tenant-exists", "Tenant already exists"),
            Error::NotFound(_) => ("not-found", "Not found"),
            Error::Forbidden(_) => ("forbidden", "Forbidden"),
            Error::Unauthorized(_) => ("unauthorized", "Unauthorized"),
            Error::InvalidTransition { .. } => ("invalid-transition", "Invalid tenant transition"),
            Error::Validation(_) => ("validation", "Invalid request"),
            Error::Unprocessable(_) => ("unprocessable", "Unprocessable content"),
            Error::Rejected { .. } => ("invalid-request", "Invalid request"),
            Error::TooManyRequests { .. } => ("too-many-requests", "Too many requests"),
            Error::PoolExhausted { .. } => ("database-busy", "Database busy"),
            Error::TenantChanged(_) => ("tenant-changed", "Tenant changed"),
            Error::TenantBusy(_) => ("tenant-busy", "Tenant busy"),
            Error::Conflict(_) => ("conflict", "Conflict"),
            Error::Database(e) if is_cancelled(e) => ("statement-timeout", "Statement cancelled"),
            Error::Database(e) if is_read_only(e) => ("writes-paused", "Writes paused"),
            Error::Database(_) if status == StatusCode::SERVICE_UNAVAILABLE => {
                ("database-unavailable", "Database unavailable")
            }
            _ => ("internal", "Internal error"),
        };
        // Internal details (SQL errors, registry contents) stay in the logs.
        let detail = if status.is_server_error() {
            match status {
                StatusCode::SERVICE_UNAVAILABLE if matches!(self, Error::PoolExhausted { .. }) => {
                    "every database connection is busy; retry later".to_owned()
                }
                StatusCode::SERVICE_UNAVAILABLE if matches!(self, Error::TenantChanged(_)) => {
                    "the tenant changed while the request was in flight; retry".to_owned()
                }
                StatusCode::SERVICE_UNAVAILABLE if matches!(self, Error::Database(e) if is_cancelled(e)) => {
                    "a statement ran longer than the tenant's statement timeout (or was \
                     cancelled by an operator); retry later"
                        .to_owned()
                }
                StatusCode::SERVICE_UNAVAILABLE if matches!(self, Error::Database(e) if is_read_only(e)) => {
                    "writes are paused for a moment (the tenant is being moved, or the server \
                     is read-only); nothing was written: retry shortly"
                        .to_owned()
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    "the database cannot be reached; retry later".to_owned()
                }
                _ => "an internal error occurred; see the server logs".to_owned(),
            }
        } else if let Some(fault) = fault {
            // What PostgreSQL says about the value or constraint, never SQL text.
            fault.detail
        } else {
            self.to_string()
        };
        Problem {
            type_: format!("https://tenantry.dev/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: Problem::printable(&detail),
        }
    }
}

/// A database error caused by the request's data: its status and what to tell the
/// client. Errors that are the handler's own bug (division by zero, a missing table)
/// stay 500.
struct DataFault {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
}

/// Maps the SQLSTATEs that values and constraints raise: data exceptions from values
/// (NUL or invalid bytes, numbers out of range, invalid text or datetime
/// representations, strings too long) -> 422; unique and exclusion violations -> 409;
/// foreign keys -> 409; not-null and check violations -> 422.
fn data_fault(e: &sqlx::Error) -> Option<DataFault> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let code = db.code()?;
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let column = pg.and_then(|p| p.column()).map(str::to_owned);
    let constraint = db.constraint().map(str::to_owned);
    let on = |what: &str| match (&constraint, &column) {
        (Some(c), _) => format!("{what} (constraint `{c}`)"),
        (None, Some(c)) => format!("{what} (column `{c}`)"),
        (None, None) => what.to_owned(),
    };
    let value = |reason: &str| DataFault {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        kind: "invalid-value",
        title: "Invalid value",
        detail: on(&format!("a value was refused by the database: {reason}")),
    };
    Some(match code.as_ref() {
        "22021" | "22P05" => value("it contains a NUL character or bytes invalid in the encoding"),
        "22003" => value("a number is out of range"),
        "22P02" => value("it is not valid for its type"),
        "22007" | "22008" => value("a date or time is invalid or out of range"),
        "22001" => value("a string is too long"),
        "23502" => DataFault {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "missing-value",
            title: "Missing value",
            detail: on("a required value is missing"),
        },
        "23514" => DataFault {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "check-violation",
            title: "Invalid value",
            detail: on("a value breaks a rule of the data"),
        },
        "23505" | "23P01" => DataFault {
            status: StatusCode::CONFLICT,
            kind: "conflict",
            title: "Conflict",
            detail: on("a row with the same unique value exists"),
        },
        "23503" => DataFault {
            status: StatusCode::CONFLICT,
            kind: "reference-conflict",
            title: "Conflict",
            detail: on("the row refers to a row that does not exist, or is still referred to"),
        },
        _ => return None,
    })
}

/// A statement the server cancelled: the tenant's statement timeout, or an operator's
/// `pg_cancel_backend` (SQLSTATE 57014).
fn is_cancelled(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// A write refused because writes are paused: the fence of a tenant being moved, or
/// a read-only server (SQLSTATE 25006). Nothing was written; a retry can pass.
fn is_read_only(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections;
        // class 08, connection exceptions: a Citus coordinator that cannot reach the
        // worker holding the tenant says 08006
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some("57P01" | "57P02" | "57P03" | "53300")
            ) || db.code().is_some_and(|c| c.starts_with("08"))
        }
        _ => false,
    }
}

/// A problem details object (RFC 9457), the body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence, and what to do.
    pub detail: String,
}

impl Problem {
    /// `text` with every control character (C0, DEL, C1: terminal escape sequences,
    /// line breaks, ...) written as `\u{..}`, so that a detail built from input (a table
    /// name from an import file, a header value) is safe to print on a terminal or in a
    /// log line. Every [`Error::to_problem`] detail goes through it.
    ///
    /// ```
    /// assert_eq!(tenantry::Problem::printable("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\u{a}c");
    /// assert_eq!(tenantry::Problem::printable("plain `text`"), "plain `text`");
    /// ```
    pub fn printable(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_control() {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// The media type of problem details bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "tenantry request failed");
        }
        let mut response = self.to_problem().into_response();
        if let Error::TooManyRequests { retry_after, .. } = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after.max(&1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `Result` with tenantry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_details_escape_control_characters_from_input() {
        let e = Error::Unprocessable("table `a\u{1b}]0;owned\u{7}b` does not exist here".into());
        let problem = e.to_problem();
        assert!(!problem.detail.chars().any(char::is_control), "{problem:?}");
        assert_eq!(
            problem.detail,
            "table `a\\u{1b}]0;owned\\u{7}b` does not exist here"
        );
    }
}
