//! Communities share nothing: the suite's flows run in a schema, a row and a database
//! tenant of one server, and every cross-check says each sees only its own users,
//! articles, tags, favorites, follows, comments and tokens.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tenantry::Strategy;
use tenantry::testing::TestDatabase;
use tower::ServiceExt;

struct Api {
    app: Router,
    manager: tenantry::TenantManager,
}

impl Api {
    async fn start() -> (Self, TestDatabase) {
        let db = TestDatabase::create().await.expect("a test database");
        let pool = sqlx::PgPool::connect(db.url()).await.expect("connect");
        // Database tenants' databases get this test's own prefix: tests (and other
        // registries) may share the server.
        let prefix = db.database_prefix();
        let manager = conduit::manager_for(pool, conduit::pool_config(), &prefix)
            .await
            .expect("the manager");
        let tokens = conduit::Tokens::new(&[7u8; 32]).unwrap();
        let state = conduit::AppState {
            manager: manager.clone(),
            tokens,
        };
        let app = conduit::router(state, "localhost");
        (Self { app, manager }, db)
    }

    async fn tenant(&self, id: &str, strategy: Strategy) {
        assert!(
            conduit::ensure_tenant(&self.manager, id, strategy)
                .await
                .unwrap()
        );
    }

    /// `method uri` with an optional token, JSON body and `Host`.
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        host: Option<&str>,
    ) -> (StatusCode, Value, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Token {token}"));
        }
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{method} {uri}: not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, value, content_type)
    }

    async fn ok(&self, method: &str, uri: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (status, value, _) = self.call(method, uri, token, body, None).await;
        assert!(status.is_success(), "{method} {uri}: {status} {value}");
        value
    }

    async fn status(&self, method: &str, uri: &str, token: Option<&str>) -> StatusCode {
        self.call(method, uri, token, None, None).await.0
    }

    /// Registers `name` in `tenant`; its token.
    async fn register(&self, tenant: &str, name: &str, password: &str) -> String {
        let user = json!({"user": {"username": name, "email": format!("{name}@example.com"), "password": password}});
        let (status, body, _) = self
            .call(
                "POST",
                &format!("/t/{tenant}/api/users"),
                None,
                Some(user),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["user"]["token"].as_str().unwrap().to_owned()
    }
}

fn ids() -> (String, String, String) {
    let n = std::process::id();
    (format!("ca-{n}"), format!("cb-{n}"), format!("cc-{n}"))
}

#[tokio::test]
async fn communities_share_no_users_articles_or_tokens() {
    let (api, _db) = Api::start().await;
    let (a, b, c) = ids();
    api.tenant(&a, Strategy::Schema).await;
    api.tenant(&b, Strategy::Row).await;
    api.tenant(&c, Strategy::Database).await;

    // The same user name and email in two communities: two different members.
    let token_a = api.register(&a, "jake", "secret-a").await;
    let token_b = api.register(&b, "jake", "secret-b").await;
    let me = api
        .ok("GET", &format!("/t/{a}/api/user"), Some(&token_a), None)
        .await;
    assert_eq!(me["user"]["username"], "jake");

    // A's token is refused by B and C (401), and B's by A, though "jake" exists there.
    for (token, tenant) in [(&token_a, &b), (&token_a, &c), (&token_b, &a)] {
        for uri in [
            format!("/t/{tenant}/api/user"),
            format!("/t/{tenant}/api/articles"),
        ] {
            let (status, body, content_type) = api.call("GET", &uri, Some(token), None, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
            assert_eq!(content_type, "application/problem+json");
        }
    }
    // A's password does not open B's "jake", and C has no "jake" at all.
    let login =
        |password: &str| json!({"user": {"email": "jake@example.com", "password": password}});
    let (status, ..) = api
        .call(
            "POST",
            &format!("/t/{b}/api/users/login"),
            None,
            Some(login("secret-a")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, ..) = api
        .call(
            "POST",
            &format!("/t/{c}/api/users/login"),
            None,
            Some(login("secret-a")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.status("GET", &format!("/t/{c}/api/profiles/jake"), None)
            .await,
        StatusCode::NOT_FOUND
    );

    // A's article, tags, favorite and comment.
    let article = json!({"article": {"title": "How to train your dragon", "description": "d", "body": "b", "tagList": ["training", "dragons"]}});
    let created = api
        .ok(
            "POST",
            &format!("/t/{a}/api/articles"),
            Some(&token_a),
            Some(article.clone()),
        )
        .await;
    let slug_a = created["article"]["slug"].as_str().unwrap().to_owned();
    assert_eq!(
        created["article"]["tagList"],
        json!(["dragons", "training"])
    );
    api.ok(
        "POST",
        &format!("/t/{a}/api/articles/{slug_a}/favorite"),
        Some(&token_a),
        None,
    )
    .await;
    api.ok(
        "POST",
        &format!("/t/{a}/api/articles/{slug_a}/comments"),
        Some(&token_a),
        Some(json!({"comment": {"body": "mine"}})),
    )
    .await;

    // B sees none of it: not in lists, not by slug, not in tags or by favoriter.
    for tenant in [&b, &c] {
        let list = api
            .ok("GET", &format!("/t/{tenant}/api/articles"), None, None)
            .await;
        assert_eq!(list["articlesCount"], 0, "{tenant}: {list}");
        let tags = api
            .ok("GET", &format!("/t/{tenant}/api/tags"), None, None)
            .await;
        assert_eq!(tags["tags"], json!([]), "{tenant}");
        let by_tag = api
            .ok(
                "GET",
                &format!("/t/{tenant}/api/articles?tag=dragons"),
                None,
                None,
            )
            .await;
        assert_eq!(by_tag["articlesCount"], 0);
        for uri in [
            format!("/t/{tenant}/api/articles/{slug_a}"),
            format!("/t/{tenant}/api/articles/{slug_a}/comments"),
        ] {
            assert_eq!(
                api.status("GET", &uri, None).await,
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
    }
    assert_eq!(
        api.status(
            "POST",
            &format!("/t/{b}/api/articles/{slug_a}/favorite"),
            Some(&token_b)
        )
        .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.status(
            "DELETE",
            &format!("/t/{b}/api/articles/{slug_a}"),
            Some(&token_b)
        )
        .await,
        StatusCode::NOT_FOUND
    );

    // B's own article of the same title: A still counts one article, one favorite.
    let created_b = api
        .ok(
            "POST",
            &format!("/t/{b}/api/articles"),
            Some(&token_b),
            Some(article),
        )
        .await;
    assert_ne!(created_b["article"]["slug"], slug_a);
    api.ok(
        "POST",
        &format!(
            "/t/{b}/api/articles/{}/favorite",
            created_b["article"]["slug"].as_str().unwrap()
        ),
        Some(&token_b),
        None,
    )
    .await;
    let list_a = api
        .ok(
            "GET",
            &format!("/t/{a}/api/articles?favorited=jake"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(list_a["articlesCount"], 1, "{list_a}");
    assert_eq!(list_a["articles"][0]["slug"], slug_a.as_str());
    assert_eq!(list_a["articles"][0]["favoritesCount"], 1);
    assert_eq!(list_a["articles"][0]["favorited"], true);
    let tags_a = api.ok("GET", &format!("/t/{a}/api/tags"), None, None).await;
    assert_eq!(tags_a["tags"], json!(["dragons", "training"]));

    // Follows stay in their community: B's "celeb" is not in A.
    api.register(&b, "celeb", "x").await;
    assert_eq!(
        api.status(
            "POST",
            &format!("/t/{a}/api/profiles/celeb/follow"),
            Some(&token_a)
        )
        .await,
        StatusCode::NOT_FOUND
    );
    let followed = api
        .ok(
            "POST",
            &format!("/t/{b}/api/profiles/celeb/follow"),
            Some(&token_b),
            None,
        )
        .await;
    assert_eq!(followed["profile"]["following"], true);
    let feed_a = api
        .ok(
            "GET",
            &format!("/t/{a}/api/articles/feed"),
            Some(&token_a),
            None,
        )
        .await;
    assert_eq!(feed_a["articlesCount"], 0);

    // By host: `/api` on `{tenant}.localhost` is the same community.
    let (status, by_host, _) = api
        .call(
            "GET",
            "/api/articles",
            None,
            None,
            Some(&format!("{a}.localhost")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_host["articles"][0]["slug"], slug_a.as_str());
    assert_eq!(by_host["articlesCount"], 1);
}

#[tokio::test]
async fn errors_are_problem_details_with_the_specs_errors_member() {
    let (api, _db) = Api::start().await;
    let t = format!("ce-{}", std::process::id());
    api.tenant(&t, Strategy::Row).await;
    let token = api.register(&t, "ann", "pw").await;
    let other = api.register(&t, "bob", "pw").await;

    // 422: blank and taken fields, named in `errors`.
    let blank = json!({"user": {"username": " ", "email": "x@example.com", "password": "pw"}});
    let (status, body, content_type) = api
        .call(
            "POST",
            &format!("/t/{t}/api/users"),
            None,
            Some(blank),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["errors"]["username"], json!(["can't be blank"]));
    assert_eq!(body["status"], 422);
    let taken = json!({"user": {"username": "ann", "email": "new@example.com", "password": "pw"}});
    let (status, body, _) = api
        .call(
            "POST",
            &format!("/t/{t}/api/users"),
            None,
            Some(taken),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"]["username"],
        json!(["has already been taken"])
    );
    // A body that is not the spec's shape: 422 from the extractor, as problem details.
    let (status, _, content_type) = api
        .call(
            "POST",
            &format!("/t/{t}/api/users"),
            None,
            Some(json!({"nope": 1})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(content_type, "application/problem+json");

    // 401 without a token, with a malformed one and with a garbage one.
    assert_eq!(
        api.status("GET", &format!("/t/{t}/api/user"), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.status("GET", &format!("/t/{t}/api/user"), Some("not.a.jwt"))
            .await,
        StatusCode::UNAUTHORIZED
    );
    let (status, body, _) = api
        .call(
            "GET",
            &format!("/t/{t}/api/articles/feed"),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["errors"]["body"][0].is_string(), "{body}");

    // 403: another member's article or comment; 404: no such article or comment.
    let made = api
        .ok(
            "POST",
            &format!("/t/{t}/api/articles"),
            Some(&token),
            Some(json!({"article": {"title": "t", "description": "d", "body": "b"}})),
        )
        .await;
    let slug = made["article"]["slug"].as_str().unwrap();
    assert_eq!(
        api.status(
            "DELETE",
            &format!("/t/{t}/api/articles/{slug}"),
            Some(&other)
        )
        .await,
        StatusCode::FORBIDDEN
    );
    let comment = api
        .ok(
            "POST",
            &format!("/t/{t}/api/articles/{slug}/comments"),
            Some(&token),
            Some(json!({"comment": {"body": "c"}})),
        )
        .await;
    let id = comment["comment"]["id"].as_i64().unwrap();
    assert_eq!(
        api.status(
            "DELETE",
            &format!("/t/{t}/api/articles/{slug}/comments/{id}"),
            Some(&other)
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.status(
            "DELETE",
            &format!("/t/{t}/api/articles/{slug}/comments/999999"),
            Some(&token)
        )
        .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.status("GET", &format!("/t/{t}/api/articles/no-such-slug"), None)
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.status("GET", &format!("/t/{t}/api/articles?limit=0"), None)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // The author deletes: 204, and the comment went with the article.
    assert_eq!(
        api.status(
            "DELETE",
            &format!("/t/{t}/api/articles/{slug}"),
            Some(&token)
        )
        .await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.status("GET", &format!("/t/{t}/api/articles/{slug}/comments"), None)
            .await,
        StatusCode::NOT_FOUND
    );
    // An unknown community: tenantry's 404, before any handler.
    assert_eq!(
        api.status("GET", "/t/no-such-community/api/articles", None)
            .await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_community_deleted_and_created_again_refuses_the_old_ones_tokens() {
    let (api, _db) = Api::start().await;
    let t = format!("cr-{}", std::process::id());
    api.tenant(&t, Strategy::Schema).await;
    let old = api.register(&t, "alice", "pw-alice").await;
    let id: tenantry::TenantId = t.parse().unwrap();
    api.manager.suspend_tenant(&id).await.unwrap();
    api.manager.delete_tenant(&id).await.unwrap();
    api.tenant(&t, Strategy::Schema).await;
    // The new community's first member gets id 1 again, as alice had.
    let new = api.register(&t, "victim", "pw-victim").await;
    let me = api
        .ok("GET", &format!("/t/{t}/api/user"), Some(&new), None)
        .await;
    assert_eq!(me["user"]["username"], "victim");
    for (method, uri) in [("GET", "/user"), ("PUT", "/user")] {
        let body = (method == "PUT").then(|| json!({"user": {"email": "attacker@example.com"}}));
        let (status, body, _) = api
            .call(method, &format!("/t/{t}/api{uri}"), Some(&old), body, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
    }
    let me = api
        .ok("GET", &format!("/t/{t}/api/user"), Some(&new), None)
        .await;
    assert_eq!(me["user"]["email"], "victim@example.com");
}

#[tokio::test]
async fn input_is_normalised_and_bounded() {
    let (api, _db) = Api::start().await;
    let t = format!("cn-{}", std::process::id());
    api.tenant(&t, Strategy::Row).await;
    let token = api.register(&t, "Alice", "pw").await;
    let users = format!("/t/{t}/api/users");
    let register = |name: &str, email: &str| json!({"user": {"username": name, "email": email, "password": "pw"}});
    // Emails and usernames are one account whatever their case.
    for (body, field) in [
        (register("bob", "ALICE@example.com"), "email"),
        (register("alice", "other@example.com"), "username"),
        (register("..", "dots@example.com"), "username"),
        (register("a/b", "slash@example.com"), "username"),
        (register("ali\u{200b}ce", "zw@example.com"), "username"),
        (register("carol", "not-an-email"), "email"),
    ] {
        let (status, answer, content_type) = api
            .call("POST", &users, None, Some(body.clone()), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(answer["errors"][field].is_array(), "{body}: {answer}");
        assert_eq!(content_type, "application/problem+json");
    }
    let login = json!({"user": {"email": "ALICE@Example.com", "password": "pw"}});
    api.ok(
        "POST",
        &format!("/t/{t}/api/users/login"),
        None,
        Some(login),
    )
    .await;
    // A bio or image over the bounds, or an image that is not a web URL: 422.
    for (change, field) in [
        (json!({"bio": "x".repeat(2_001)}), "bio"),
        (json!({"image": "javascript:alert(1)"}), "image"),
        (
            json!({"image": format!("https://example.com/{}", "x".repeat(2_000))}),
            "image",
        ),
    ] {
        let (status, answer, _) = api
            .call(
                "PUT",
                &format!("/t/{t}/api/user"),
                Some(&token),
                Some(json!({"user": change})),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert!(answer["errors"][field].is_array(), "{answer}");
    }
    let fine = json!({"user": {"bio": "hi", "image": "https://example.com/a.png"}});
    let me = api
        .ok("PUT", &format!("/t/{t}/api/user"), Some(&token), Some(fine))
        .await;
    assert_eq!(me["user"]["image"], "https://example.com/a.png");
    // Following yourself: 422.
    assert_eq!(
        api.status(
            "POST",
            &format!("/t/{t}/api/profiles/Alice/follow"),
            Some(&token)
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // A 404 echoes at most 64 characters of what was asked for.
    let long = "x".repeat(5_000);
    let (status, answer, _) = api
        .call(
            "GET",
            &format!("/t/{t}/api/profiles/{long}"),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["detail"].as_str().unwrap().len() < 200, "{answer}");
    // Unknown routes and methods: problem details too.
    for (method, uri, expected) in [
        ("GET", format!("/t/{t}/api/nope"), StatusCode::NOT_FOUND),
        ("GET", "/nope".to_owned(), StatusCode::NOT_FOUND),
        (
            "PATCH",
            format!("/t/{t}/api/user"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let (status, _, content_type) = api.call(method, &uri, None, None, None).await;
        assert_eq!(status, expected, "{method} {uri}");
        assert_eq!(content_type, "application/problem+json", "{method} {uri}");
    }
    // A member deleted meanwhile: their token's writes are 401, not a conflict.
    let gone = api.register(&t, "gone", "pw").await;
    let tenant = api
        .manager
        .resolve_tenant(&t.parse().unwrap())
        .await
        .unwrap();
    let mut db = api.manager.tenant_db(tenant).await.unwrap();
    sqlx::query("DELETE FROM users WHERE username = 'gone'")
        .execute(&mut db)
        .await
        .unwrap();
    drop(db);
    let article = json!({"article": {"title": "t", "description": "d", "body": "b"}});
    let (status, answer, _) = api
        .call(
            "POST",
            &format!("/t/{t}/api/articles"),
            Some(&gone),
            Some(article),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
}
