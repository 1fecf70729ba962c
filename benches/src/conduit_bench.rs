//! A Conduit workload over many communities: `examples/conduit` with N schema tenants
//! (default 1,000), against the same application with tenancy stripped out (one
//! community in one schema, plain axum + sqlx handlers issuing the same statements,
//! no tenantry, a pool with `test_before_acquire(false)`), in the same run.
//!
//! Each client request picks a community (uniformly, or Zipf(1.1) over all of them)
//! and a member, then one of: browse the newest articles (40%), read an article
//! (20%), read its comments (20%), favorite it (8%), comment on it (7%), post an
//! article (5%). Every community starts with 5 members, 20 articles of about 1 KB with
//! tags, 3 comments each, favorites and follows. Servers are interleaved in rounds;
//! figures are medians over rounds, ratios taken within each round.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! cargo run --release -p tenantry-benches --bin conduit_bench -- \
//!     [--tenants 1000] [--rounds 3] [--secs 5] [--concurrency 32] \
//!     [--strategy schema|row] [--statement-cache N] [--no-binding-free]
//! ```
//!
//! `--statement-cache` and `--no-binding-free` change tenantry's `PoolConfig`
//! (`statement_cache_capacity`, `binding_free_reads`), to see what limits it.
//!
//! Uses `DATABASE_URL` (a server with the default `max_connections` is what users
//! run), or else a throwaway PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenantry::{NewTenant, TenantId};
use tenantry_benches::{arg, median, percentile, serve, zipf_cdf, zipf_pick};

const MEMBERS: i64 = 5;
const ARTICLES: i64 = 20;

/// One community's starting data, in whatever schema is first on the path.
const SEED: &str = "
INSERT INTO users (email, username, password_hash)
  SELECT 'u' || g || '@example.com', 'u' || g, 'not a hash: the workload does not log in'
  FROM generate_series(1, 5) g;
INSERT INTO articles (slug, title, description, body, author_id, created_at, updated_at)
  SELECT 'article-' || g, 'Article ' || g, 'About ' || g, repeat('lorem ipsum ', 85),
         u.ids[1 + g % 5], now() - g * interval '1 minute', now() - g * interval '1 minute'
  FROM generate_series(1, 20) g, (SELECT array_agg(id ORDER BY id) ids FROM users) u;
INSERT INTO article_tags (article_id, tag)
  SELECT a.id, t FROM articles a, unnest(ARRAY['rust', 'tenancy', 'postgres']) t
  WHERE t = 'rust' OR a.id % 2 = 0;
INSERT INTO comments (article_id, author_id, body)
  SELECT a.id, u.ids[1 + (a.id + g) % 5], 'Comment ' || g
  FROM articles a, generate_series(1, 3) g, (SELECT array_agg(id ORDER BY id) ids FROM users) u;
INSERT INTO favorites (user_id, article_id)
  SELECT u.ids[1 + a.id % 5], a.id
  FROM articles a, (SELECT array_agg(id ORDER BY id) ids FROM users) u;
INSERT INTO follows (follower_id, followee_id)
  SELECT u.ids[x], u.ids[y]
  FROM (VALUES (1, 2), (2, 3), (3, 1), (4, 1), (5, 1)) v (x, y),
       (SELECT array_agg(id ORDER BY id) ids FROM users) u;
ANALYZE users, articles, article_tags, comments, favorites, follows;
";

// ------------------------------------------------------------ the stripped app

/// The plain server's state: one pool, one community, the same token checks.
#[derive(Clone)]
struct Plain {
    pool: PgPool,
    tokens: conduit::Tokens,
    community: TenantId,
}

type PlainResult = Result<(StatusCode, Json<Value>), (StatusCode, String)>;

fn fail(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Plain {
    fn user(&self, headers: &HeaderMap) -> Result<Option<i64>, (StatusCode, String)> {
        let Some(value) = headers.get("authorization") else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Token "))
            .ok_or((StatusCode::UNAUTHORIZED, "bad header".to_owned()))?;
        self.tokens
            .verify_for(&self.community, 0, token)
            .map(Some)
            .map_err(|_| (StatusCode::UNAUTHORIZED, "bad token".to_owned()))
    }

    /// The same statements as `conduit::api`'s rendering, in plain sqlx.
    async fn render(
        &self,
        viewer: Option<i64>,
        rows: Vec<ArticleRow>,
        with_body: bool,
    ) -> Result<Vec<Value>, (StatusCode, String)> {
        let ids: Vec<i64> = rows.iter().map(|a| a.0).collect();
        let mut tags: HashMap<i64, Vec<String>> = HashMap::new();
        for (id, article_id, tag) in sqlx::query_as::<_, (i64, i64, String)>(
            "SELECT id, article_id, tag FROM article_tags WHERE article_id = ANY ($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(fail)?
        {
            let _ = id;
            tags.entry(article_id).or_default().push(tag);
        }
        let counts: HashMap<i64, i64> = sqlx::query_as(
            "SELECT article_id, count(*) FROM favorites WHERE article_id = ANY ($1) GROUP BY article_id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(fail)?
        .into_iter()
        .collect();
        let mine: HashSet<i64> = match viewer {
            Some(v) => sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT id, user_id, article_id FROM favorites WHERE user_id = $1 AND article_id = ANY ($2) ORDER BY id",
            )
            .bind(v)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|f| f.2)
            .collect(),
            None => HashSet::new(),
        };
        let authors = self
            .profiles(viewer, rows.iter().map(|a| a.5).collect())
            .await?;
        Ok(rows
            .into_iter()
            .map(|a| {
                let mut tag_list = tags.remove(&a.0).unwrap_or_default();
                tag_list.sort();
                let mut article = json!({
                    "slug": a.1, "title": a.2, "description": a.3, "tagList": tag_list,
                    "createdAt": a.6.to_rfc3339(), "updatedAt": a.7.to_rfc3339(),
                    "favorited": mine.contains(&a.0),
                    "favoritesCount": counts.get(&a.0).copied().unwrap_or(0),
                    "author": authors.get(&a.5).cloned().unwrap_or(Value::Null),
                });
                if with_body {
                    article["body"] = Value::String(a.4);
                }
                article
            })
            .collect())
    }

    async fn profiles(
        &self,
        viewer: Option<i64>,
        ids: Vec<i64>,
    ) -> Result<HashMap<i64, Value>, (StatusCode, String)> {
        let ids: Vec<i64> = ids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let users: Vec<UserRow> =
            sqlx::query_as(
                "SELECT id, email, username, password_hash, bio, image FROM users WHERE id = ANY ($1) ORDER BY id",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
        let followed: HashSet<i64> = match viewer {
            Some(v) => sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT id, follower_id, followee_id FROM follows WHERE follower_id = $1 AND followee_id = ANY ($2) ORDER BY id",
            )
            .bind(v)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|f| f.2)
            .collect(),
            None => HashSet::new(),
        };
        Ok(users
            .into_iter()
            .map(|u| {
                let following = followed.contains(&u.0);
                (
                    u.0,
                    json!({"username": u.2, "bio": u.4, "image": u.5, "following": following}),
                )
            })
            .collect())
    }

    async fn article(&self, slug: &str) -> Result<ArticleRow, (StatusCode, String)> {
        sqlx::query_as(ARTICLE_BY_SLUG)
            .bind(slug)
            .fetch_optional(&self.pool)
            .await
            .map_err(fail)?
            .ok_or((StatusCode::NOT_FOUND, "no article".to_owned()))
    }
}

type UserRow = (i64, String, String, String, Option<String>, Option<String>);
type Stamp = chrono::DateTime<chrono::Utc>;
type CommentRow = (i64, i64, i64, String, Stamp, Stamp);
/// requests/s, ratio to plain, p50, p99, errors.
type RoundFigures = (f64, f64, Duration, Duration, usize);
type ArticleRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);
const ARTICLE_COLUMNS: &str =
    "id, slug, title, description, body, author_id, created_at, updated_at";
const ARTICLE_BY_SLUG: &str = "SELECT id, slug, title, description, body, author_id, created_at, updated_at FROM articles WHERE slug = $1 ORDER BY id LIMIT 1";

#[derive(serde::Deserialize)]
struct Window {
    limit: Option<i64>,
}

async fn plain_list(
    State(app): State<Plain>,
    headers: HeaderMap,
    Query(w): Query<Window>,
) -> PlainResult {
    let viewer = app.user(&headers)?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM articles")
        .fetch_one(&app.pool)
        .await
        .map_err(fail)?;
    let rows: Vec<ArticleRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTICLE_COLUMNS} FROM articles ORDER BY created_at DESC LIMIT $1 OFFSET $2"
    )))
    .bind(w.limit.unwrap_or(20))
    .bind(0_i64)
    .fetch_all(&app.pool)
    .await
    .map_err(fail)?;
    let articles = app.render(viewer, rows, false).await?;
    Ok((
        StatusCode::OK,
        Json(json!({"articles": articles, "articlesCount": count})),
    ))
}

async fn plain_article(
    State(app): State<Plain>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> PlainResult {
    let viewer = app.user(&headers)?;
    let row = app.article(&slug).await?;
    let mut out = app.render(viewer, vec![row], true).await?;
    Ok((StatusCode::OK, Json(json!({"article": out.pop()}))))
}

async fn plain_comments(
    State(app): State<Plain>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> PlainResult {
    let viewer = app.user(&headers)?;
    let article = app.article(&slug).await?;
    let comments: Vec<CommentRow> =
        sqlx::query_as(
            "SELECT id, article_id, author_id, body, created_at, updated_at FROM comments WHERE article_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(article.0)
        .bind(500_i64)
        .fetch_all(&app.pool)
        .await
        .map_err(fail)?;
    let authors = app
        .profiles(viewer, comments.iter().map(|c| c.2).collect())
        .await?;
    let out: Vec<Value> = comments
        .into_iter()
        .map(|c| json!({"id": c.0, "body": c.3, "createdAt": c.4.to_rfc3339(), "updatedAt": c.5.to_rfc3339(), "author": authors.get(&c.2)}))
        .collect();
    Ok((StatusCode::OK, Json(json!({"comments": out}))))
}

async fn plain_favorite(
    State(app): State<Plain>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> PlainResult {
    let me = app
        .user(&headers)?
        .ok_or((StatusCode::UNAUTHORIZED, "sign in".to_owned()))?;
    let article = app.article(&slug).await?;
    sqlx::query("INSERT INTO favorites (user_id, article_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id, user_id, article_id")
        .bind(me)
        .bind(article.0)
        .fetch_optional(&app.pool)
        .await
        .map_err(fail)?;
    let mut out = app.render(Some(me), vec![article], true).await?;
    Ok((StatusCode::OK, Json(json!({"article": out.pop()}))))
}

#[derive(serde::Deserialize)]
struct CommentIn {
    comment: Text,
}
#[derive(serde::Deserialize)]
struct Text {
    body: String,
}

async fn plain_comment(
    State(app): State<Plain>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    Json(body): Json<CommentIn>,
) -> PlainResult {
    let me = app
        .user(&headers)?
        .ok_or((StatusCode::UNAUTHORIZED, "sign in".to_owned()))?;
    let mut tx = app.pool.begin().await.map_err(fail)?;
    let article: ArticleRow = sqlx::query_as(ARTICLE_BY_SLUG)
        .bind(&slug)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?
        .ok_or((StatusCode::NOT_FOUND, "no article".to_owned()))?;
    let now = chrono::Utc::now();
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO comments (article_id, author_id, body, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(article.0)
    .bind(me)
    .bind(&body.comment.body)
    .bind(now)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    let authors = app.profiles(Some(me), vec![me]).await?;
    Ok((
        StatusCode::OK,
        Json(json!({"comment": {"id": id, "body": body.comment.body, "author": authors.get(&me)}})),
    ))
}

#[derive(serde::Deserialize)]
struct ArticleIn {
    article: NewArticle,
}
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewArticle {
    title: String,
    description: String,
    body: String,
    tag_list: Vec<String>,
}

async fn plain_post(
    State(app): State<Plain>,
    headers: HeaderMap,
    Json(body): Json<ArticleIn>,
) -> PlainResult {
    let me = app
        .user(&headers)?
        .ok_or((StatusCode::UNAUTHORIZED, "sign in".to_owned()))?;
    let a = body.article;
    let now = chrono::Utc::now();
    let slug = format!(
        "{}-{:08x}",
        a.title.to_lowercase().replace(' ', "-"),
        rand::rng().random::<u32>()
    );
    let mut tx = app.pool.begin().await.map_err(fail)?;
    let row: ArticleRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO articles (slug, title, description, body, author_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ARTICLE_COLUMNS}"
    )))
    .bind(&slug)
    .bind(&a.title)
    .bind(&a.description)
    .bind(&a.body)
    .bind(me)
    .bind(now)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(fail)?;
    for tag in &a.tag_list {
        sqlx::query("INSERT INTO article_tags (article_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id, article_id, tag")
            .bind(row.0)
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    let mut out = app.render(Some(me), vec![row], true).await?;
    Ok((StatusCode::CREATED, Json(json!({"article": out.pop()}))))
}

fn plain_router(state: Plain) -> Router {
    Router::new()
        .route("/api/articles", get(plain_list).post(plain_post))
        .route("/api/articles/{slug}", get(plain_article))
        .route(
            "/api/articles/{slug}/comments",
            get(plain_comments).post(plain_comment),
        )
        .route("/api/articles/{slug}/favorite", post(plain_favorite))
        .with_state(state)
}

// ------------------------------------------------------------ the load

/// Which community each request names: uniform, or Zipf(s) by a cumulative table.
#[derive(Clone)]
struct Traffic {
    /// For each community: its API prefix and its members' tokens.
    communities: Arc<Vec<(String, Vec<String>)>>,
    cdf: Option<Arc<Vec<f64>>>,
}

impl Traffic {
    fn zipf(communities: Arc<Vec<(String, Vec<String>)>>, s: f64) -> Self {
        let cdf = zipf_cdf(communities.len(), s);
        Traffic {
            communities,
            cdf: Some(Arc::new(cdf)),
        }
    }

    fn pick(&self, rng: &mut StdRng) -> &(String, Vec<String>) {
        let n = self.communities.len();
        let i = match &self.cdf {
            None => rng.random_range(0..n),
            Some(cdf) => {
                let u: f64 = rng.random_range(0.0..1.0);
                zipf_pick(cdf, u)
            }
        };
        &self.communities[i]
    }
}

struct Figures {
    rps: f64,
    errors: usize,
    p50: Duration,
    p99: Duration,
}

/// One request of the mix, for `prefix` (`http://addr/t/x/api` or `http://addr/api`).
fn request(rng: &mut StdRng, prefix: &str, token: &str) -> hyper::Request<Full<Bytes>> {
    let article = rng.random_range(1..=ARTICLES);
    let roll = rng.random_range(0..100);
    let (method, path, body) = match roll {
        0..40 => ("GET", "/articles?limit=10".to_owned(), None),
        40..60 => ("GET", format!("/articles/article-{article}"), None),
        60..80 => ("GET", format!("/articles/article-{article}/comments"), None),
        80..88 => (
            "POST",
            format!("/articles/article-{article}/favorite"),
            None,
        ),
        88..95 => (
            "POST",
            format!("/articles/article-{article}/comments"),
            Some(json!({"comment": {"body": "Thank you so much!"}})),
        ),
        _ => (
            "POST",
            "/articles".to_owned(),
            Some(
                json!({"article": {"title": "How to train your dragon", "description": "Ever wonder how?", "body": "Very carefully.", "tagList": ["training", "dragons"]}}),
            ),
        ),
    };
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header("authorization", format!("Token {token}"));
    let body = match body {
        Some(b) => {
            builder = builder.header("content-type", "application/json");
            Full::new(Bytes::from(b.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    builder.body(body).expect("a valid request")
}

async fn drive(traffic: &Traffic, concurrency: usize, secs: f64) -> Figures {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let tasks = (0..concurrency).map(|c| {
        let client = client.clone();
        let traffic = traffic.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0xc0d + c as u64);
            let (mut ok, mut errors, mut times) = (0usize, 0usize, Vec::new());
            while Instant::now() < deadline {
                let (prefix, tokens) = traffic.pick(&mut rng);
                let token = &tokens[rng.random_range(0..tokens.len())];
                let req = request(&mut rng, prefix, token);
                let t0 = Instant::now();
                match client.request(req).await {
                    Ok(response) => {
                        let success = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        times.push(t0.elapsed());
                        if success {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (ok, errors, times)
        })
    });
    let (mut ok, mut errors, mut times) = (0, 0, Vec::new());
    for r in futures::future::join_all(tasks).await {
        let (o, e, t) = r.expect("a load task");
        ok += o;
        errors += e;
        times.extend(t);
    }
    times.sort();
    Figures {
        rps: ok as f64 / started.elapsed().as_secs_f64(),
        errors,
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("conduit_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let tenants = arg("--tenants", 1000)?.max(1);
    let strategy = match tenantry_benches::arg_text("--strategy").as_deref() {
        None | Some("schema") => tenantry::Strategy::Schema,
        Some("row") => tenantry::Strategy::Row,
        Some(other) => return Err(format!("--strategy `{other}`: schema or row").into()),
    };
    let rounds = arg("--rounds", 3)?.max(1);
    let secs = arg("--secs", 5)?.max(1) as f64;
    let concurrency = arg("--concurrency", 32)?.max(1);
    let db = tenantry::testing::TestDatabase::create().await?;
    let admin = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await?;
    let server_max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&admin)
        .await?;
    let tokens = conduit::Tokens::new(&[42u8; 32])?;

    // The tenantry app and its communities.
    let defaults = conduit::pool_config();
    let config = tenantry::PoolConfig {
        statement_cache_capacity: arg("--statement-cache", defaults.statement_cache_capacity)?,
        binding_free_reads: !std::env::args().any(|a| a == "--no-binding-free"),
        ..defaults
    };
    eprintln!(
        "tenantry: statement cache {} per connection, binding-free reads {}",
        config.statement_cache_capacity, config.binding_free_reads
    );
    let manager = conduit::manager_with(admin.clone(), config).await?;
    let started = Instant::now();
    let made: Vec<Result<_, tenantry::Error>> = futures::stream::iter(0..tenants)
        .map(|i| {
            let m = manager.clone();
            async move {
                m.create_tenant(
                    NewTenant::new(format!("c{i:05}").parse()?, "community")
                        .with_strategy(strategy),
                )
                .await
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for r in made {
        r?;
    }
    let provisioned = started.elapsed().as_secs_f64();
    // Row communities are seeded as the row role, so that row-level security keeps
    // each one's statements to its own rows (and `ANALYZE`, not theirs, is skipped).
    let seed = if strategy == tenantry::Strategy::Row {
        SEED.replace("ANALYZE", "-- ANALYZE")
    } else {
        SEED.to_owned()
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $outer$ DECLARE t record; n int := 0; BEGIN
           FOR t IN SELECT id, strategy, schema_name FROM tenantry.tenants ORDER BY id LOOP
             IF t.strategy = 'row' THEN
               PERFORM set_config('search_path', '{row_schema}', true);
               PERFORM set_config('tenantry.tenant_id', t.id, true);
               PERFORM set_config('role', '{row_role}', true);
             ELSE
               PERFORM set_config('search_path', t.schema_name, true);
             END IF;
             EXECUTE $seed${seed}$seed$;
             PERFORM set_config('role', 'none', true);
             n := n + 1;
             IF n % 100 = 0 THEN COMMIT; END IF;
           END LOOP; END $outer$",
        row_schema = conduit::ROW_SCHEMA,
        row_role = conduit::ROW_ROLE,
    )))
    .execute(&admin)
    .await?;
    if strategy == tenantry::Strategy::Row {
        sqlx::raw_sql("ANALYZE conduit.users, conduit.articles, conduit.article_tags, conduit.comments, conduit.favorites, conduit.follows")
            .execute(&admin)
            .await?;
    }
    eprintln!(
        "provisioned {tenants} {strategy:?} communities in {provisioned:.1} s (server max_connections {server_max})"
    );

    // The stripped app: one community in schema `plain`, its own pool (the same size
    // as tenantry's budget), no ping before each use.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA plain; SET search_path TO plain; {}; {SEED}; RESET search_path;",
        include_str!("../../examples/conduit/migrations/tenant/0001_conduit.sql")
    )))
    .execute(&admin)
    .await?;
    let budget = manager
        .pool_stats_by_server()
        .first()
        .map_or(8, |s| s.budget)
        .max(1);
    let options: PgConnectOptions = db
        .url()
        .parse::<PgConnectOptions>()?
        .options([("search_path", "plain")]);
    let plain_pool = PgPoolOptions::new()
        .max_connections(budget)
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    let plain_state = Plain {
        pool: plain_pool,
        tokens: tokens.clone(),
        community: "plain".parse()?,
    };
    let plain_addr = serve(plain_router(plain_state.clone())).await?;
    let tenantry_addr = serve(conduit::router(
        conduit::AppState {
            manager: manager.clone(),
            tokens: tokens.clone(),
        },
        "localhost",
    ))
    .await?;

    // Members' ids: 1..=5 in each schema community; from the shared sequence in row
    // communities.
    let mut members: HashMap<String, Vec<i64>> = HashMap::new();
    if strategy == tenantry::Strategy::Row {
        for (tenant, id) in sqlx::query_as::<_, (String, i64)>(
            "SELECT tenant_id, id FROM conduit.users ORDER BY tenant_id, id",
        )
        .fetch_all(&admin)
        .await?
        {
            members.entry(tenant).or_default().push(id);
        }
    }
    let incarnations: HashMap<String, i64> = manager
        .list_tenants()
        .await?
        .into_iter()
        .map(|t| (t.id.as_str().to_owned(), t.incarnation))
        .collect();
    let member_tokens = |tenant: &str| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let id: TenantId = tenant.parse()?;
        let incarnation = incarnations.get(tenant).copied().unwrap_or(0);
        let ids = members
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| (1..=MEMBERS).collect());
        ids.into_iter()
            .map(|u| {
                tokens
                    .issue_for(&id, incarnation, u)
                    .map_err(|e| format!("{e:?}").into())
            })
            .collect()
    };
    let plain_traffic = Traffic {
        communities: Arc::new(vec![(
            format!("http://{plain_addr}/api"),
            member_tokens("plain")?,
        )]),
        cdf: None,
    };
    let mut communities = Vec::with_capacity(tenants);
    for i in 0..tenants {
        let id = format!("c{i:05}");
        communities.push((
            format!("http://{tenantry_addr}/t/{id}/api"),
            member_tokens(&id)?,
        ));
    }
    let communities = Arc::new(communities);
    let cases = [
        (
            format!("tenantry, uniform over {tenants} {strategy:?} communities"),
            Traffic {
                communities: communities.clone(),
                cdf: None,
            },
        ),
        (
            format!("tenantry, Zipf(1.1) over {tenants} {strategy:?} communities"),
            Traffic::zipf(communities.clone(), 1.1),
        ),
    ];

    // Warm up both, then rounds: plain, then each case, ratios within the round.
    let _ = drive(&plain_traffic, concurrency, 1.0).await;
    for (_, traffic) in &cases {
        let _ = drive(traffic, concurrency, 1.0).await;
    }
    let mut plain_rps = Vec::new();
    let mut results: Vec<Vec<RoundFigures>> = vec![Vec::new(); cases.len()];
    let mut plain_lat = Vec::new();
    for round in 0..rounds {
        let p = drive(&plain_traffic, concurrency, secs).await;
        eprintln!(
            "round {round}: plain {:.0} req/s ({} errors)",
            p.rps, p.errors
        );
        plain_rps.push(p.rps);
        plain_lat.push((p.p50, p.p99));
        for (i, (name, traffic)) in cases.iter().enumerate() {
            let f = drive(traffic, concurrency, secs).await;
            eprintln!(
                "round {round}: {name} {:.0} req/s ({} errors)",
                f.rps, f.errors
            );
            results[i].push((f.rps, f.rps / p.rps, f.p50, f.p99, f.errors));
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\nConduit workload, {concurrency} clients, {rounds} rounds of {secs:.0} s, tenantry budget {budget} connections, plain pool {budget}"
    );
    println!(
        "| server | requests/s (median) | vs plain (median of rounds) | p50 ms | p99 ms | errors |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| plain axum + sqlx, one community, no ping | {:.0} | 1.00 | {:.2} | {:.2} | 0 |",
        median(plain_rps),
        median(plain_lat.iter().map(|l| ms(l.0)).collect()),
        median(plain_lat.iter().map(|l| ms(l.1)).collect()),
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        let r = &results[i];
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            median(r.iter().map(|x| x.0).collect()),
            median(r.iter().map(|x| x.1).collect()),
            median(r.iter().map(|x| ms(x.2)).collect()),
            median(r.iter().map(|x| ms(x.3)).collect()),
            r.iter().map(|x| x.4).sum::<usize>(),
        );
    }
    Ok(())
}
