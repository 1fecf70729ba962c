//! Keyset (cursor) pagination (see [`Page`]).

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Rows per page when the request does not say.
pub const DEFAULT_PAGE_LIMIT: i64 = 50;

/// The most rows a page holds; a larger `limit` is clamped to it (old clients keep
/// working).
pub const MAX_PAGE_LIMIT: i64 = 500;

/// The most bytes of JSON a page's rows take in a response: past it the response holds
/// fewer rows (one at least), and its `Link` points after the last one it holds.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// Where a page starts and how long it is: `?after=<cursor>&limit=<n>` (both
/// optional), and the request's path for the next page's link. An axum extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The key of the last row of the previous page.
    pub after: Option<String>,
    /// Rows on this page: 1 to [`MAX_PAGE_LIMIT`], [`DEFAULT_PAGE_LIMIT`] by default.
    pub limit: i64,
    /// The path the request came to (before any `Router::nest` stripped a prefix).
    path: String,
    /// The request's other query parameters (filters), kept in the next link.
    keep: Vec<(String, String)>,
}

impl PageRequest {
    /// A request for the page after `after`, of `limit` rows (clamped to
    /// [`MAX_PAGE_LIMIT`]), whose next link points at `path`.
    ///
    /// ```
    /// let first = tenantry::PageRequest::new("/projects", None, 1_000);
    /// assert_eq!(first.limit, tenantry::MAX_PAGE_LIMIT);
    /// ```
    pub fn new(path: impl Into<String>, after: Option<String>, limit: i64) -> Self {
        Self {
            after,
            limit: limit.clamp(1, MAX_PAGE_LIMIT),
            path: path.into(),
            keep: Vec::new(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PageRequest {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let crate::extract::Query(q) =
            crate::extract::Query::<PageQuery>::from_request_parts(parts, state).await?;
        let limit = q.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if limit < 1 {
            return Err(Error::Validation(
                "`limit` must be a positive number of rows".to_owned(),
            ));
        }
        // The link must lead where this request came: the URI before nesting stripped
        // a prefix (`/t/acme/projects`, not `/projects`), with its other parameters.
        let original = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
        let keep: Vec<(String, String)> =
            serde_urlencoded::from_str::<Vec<(String, String)>>(original.query().unwrap_or(""))
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k != "after" && k != "limit")
                .collect();
        let mut request = Self::new(original.path(), q.after, limit);
        request.keep = keep;
        Ok(request)
    }
}

/// One page of rows, and the link to the next one: as a response, a JSON array
/// with `Link: <path?after=..&limit=..>; rel="next"` when there are more rows.
///
/// Keyset (cursor) pagination over any entity, in one line:
///
/// ```no_run
/// use tenantry::{Error, Page, PageRequest, TenantDb, TenantEntity, tenant_scoped};
///
/// #[derive(serde::Serialize, TenantEntity)]
/// #[tenant(table = "projects")]
/// struct Project {
///     #[tenant(id, generated)]
///     id: i64,
///     name: String,
/// }
///
/// /// `GET /projects?limit=50` answers the first 50 projects by id and, when there
/// /// are more, `Link: </projects?after=50&limit=50>; rel="next"`.
/// #[tenant_scoped]
/// async fn projects(mut db: TenantDb, page: PageRequest) -> Result<Page<Project>, Error> {
///     Project::select().page(&mut db, &page).await
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(projects);
/// ```
///
/// Pages follow the primary key (`WHERE id > $after ORDER BY id LIMIT n`), so a page
/// costs the same however deep it is, and rows inserted or deleted meanwhile neither
/// repeat nor vanish from the pages not yet read. The cursor is the last row's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<E> {
    /// The rows of this page, in key order. The response holds fewer when they take
    /// more than [`MAX_PAGE_BYTES`] of JSON.
    pub items: Vec<E>,
    /// The cursor of the next page (the last row's key), if there are more rows.
    pub next: Option<String>,
    next_link: Option<String>,
    /// Each row's key: the cursor of a response cut short by [`MAX_PAGE_BYTES`].
    keys: Vec<String>,
    request: PageRequest,
}

/// The `Link` header value of the page after `after`.
fn link(request: &PageRequest, after: &str) -> String {
    let limit = request.limit.to_string();
    let mut pairs: Vec<(&str, &str)> = request
        .keep
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.push(("after", after));
    pairs.push(("limit", &limit));
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    format!("<{}?{query}>; rel=\"next\"", request.path)
}

impl<E> Page<E> {
    pub(crate) fn new(
        items: Vec<E>,
        keys: Vec<String>,
        next: Option<String>,
        request: &PageRequest,
    ) -> Self {
        let next_link = next.as_ref().map(|after| link(request, after));
        Self {
            items,
            next,
            next_link,
            keys,
            request: request.clone(),
        }
    }

    /// The `Link` header value of the next page, if there is one.
    pub fn next_link(&self) -> Option<&str> {
        self.next_link.as_deref()
    }
}

impl<E: Serialize> IntoResponse for Page<E> {
    fn into_response(self) -> Response {
        // The rows, as a JSON array, up to MAX_PAGE_BYTES (one row at least).
        let mut body = vec![b'['];
        let mut held = 0;
        for item in &self.items {
            let row = match serde_json::to_vec(item) {
                Ok(row) => row,
                Err(e) => {
                    return Error::Internal(format!("cannot serialise a row: {e}")).into_response();
                }
            };
            if held > 0 && body.len() + row.len() + 2 > MAX_PAGE_BYTES {
                break;
            }
            if held > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&row);
            held += 1;
        }
        body.push(b']');
        let link = if held < self.items.len() {
            self.keys
                .get(held.wrapping_sub(1))
                .map(|k| link(&self.request, k))
        } else {
            self.next_link
        };
        let link = link.as_deref().and_then(|l| HeaderValue::from_str(l).ok());
        let mut response = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(link) = link {
            response.headers_mut().insert(header::LINK, link);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_over_its_byte_cap_holds_fewer_rows_and_links_after_the_last() {
        let request = PageRequest::new("/notes", None, 10);
        let items: Vec<String> = (0..5).map(|i| format!("{i}").repeat(300 * 1024)).collect();
        let keys = (1..=5).map(|k| k.to_string()).collect();
        let response = Page::new(items, keys, None, &request).into_response();
        let link = response.headers()[header::LINK]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(link, "</notes?after=3&limit=10>; rel=\"next\"");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(body.len() <= MAX_PAGE_BYTES, "{}", body.len());
        let rows: Vec<String> = serde_json::from_slice(&body).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[2].starts_with('2'));
    }

    #[tokio::test]
    async fn a_page_within_its_cap_is_whole_and_keeps_its_link() {
        let request = PageRequest::new("/notes", None, 2);
        let keys = vec!["1".to_owned(), "2".to_owned()];
        let page = Page::new(vec!["a", "b"], keys, Some("2".to_owned()), &request);
        let response = page.into_response();
        assert_eq!(
            response.headers()[header::LINK],
            "</notes?after=2&limit=2>; rel=\"next\""
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], b"[\"a\",\"b\"]");
    }
}
