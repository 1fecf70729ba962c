//! The README's Usage section is `tests/usage/quickstart.rs`, verbatim: this test
//! proves it compiles (it is a module of this test), serves, and takes what a client
//! naturally sends (`{"name":"x"}`, no made-up id), with problem details for bad
//! input, keyset pages, and no row of one tenant visible to another.

mod common;
#[path = "../usage/quickstart.rs"]
mod quickstart;

use axum::http::Method;
use common::*;
use serde_json::json;

#[test]
fn the_readme_shows_the_quickstart_verbatim() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let code = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/usage/quickstart.rs"))
        .expect("the quick start");
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README.md's Usage section must show tests/usage/quickstart.rs unchanged"
    );
    let migration = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/tenant/0001_projects.sql"
    ))
    .expect("the migration");
    assert!(
        readme.contains(&format!("```sql\n{migration}```")),
        "README.md must show the tenant migration the quick start uses"
    );
}

/// The README links the rest of the documentation; every relative link of the README
/// and of the documents it links resolves, and the sections that left the README are
/// where it says.
#[test]
fn the_readme_links_resolve_and_the_moved_sections_are_there() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut checked = 0;
    let mut pending = vec![root.join("README.md")];
    let mut seen = std::collections::HashSet::new();
    while let Some(doc) = pending.pop() {
        if !seen.insert(doc.clone()) {
            continue;
        }
        let text = read(&doc);
        let dir = doc.parent().unwrap();
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            // Web links, anchors and rustdoc's intra-doc links (`crate::Item`) aside.
            let is_file = target.contains('/') || target.ends_with(".md");
            if target.starts_with("http") || target.starts_with('#') || !is_file {
                continue;
            }
            let path = dir.join(target.split('#').next().unwrap());
            assert!(
                path.exists(),
                "{} links {target}, which does not exist",
                doc.display()
            );
            checked += 1;
            if target.ends_with(".md") {
                pending.push(path.canonicalize().unwrap());
            }
        }
    }
    assert!(checked >= 10, "only {checked} links checked");
    for (doc, must_hold) in [
        ("docs/CLI.md", "tenantry tenants move acme --to-strategy"),
        ("docs/CLI.md", "Exit status: 0 on success"),
        ("docs/QUICKSTART.md", "curl localhost:3000/metrics"),
        ("docs/QUICKSTART.md", "SAAS_USER_TOKENS"),
        ("docs/CITUS.md", "scripts/citus-cluster.sh start"),
        (
            "docs/FEATURES.md",
            "**Three isolation strategies, chosen per tenant**",
        ),
        ("docs/TESTING.md", "TENANTRY_REQUIRE_PGBOUNCER"),
        ("CHANGELOG.md", "## [Unreleased]"),
    ] {
        assert!(
            read(&root.join(doc)).contains(must_hold),
            "{doc} must hold `{must_hold}`"
        );
    }
    // The README itself stays one screen of text around its example.
    let readme = read(&root.join("README.md"));
    let before_example = &readme[..readme.find("## Example").expect("an Example section")];
    assert!(
        before_example.lines().count() <= 15,
        "the README must reach its example within 15 lines"
    );
}

#[tokio::test]
async fn the_quickstart_takes_a_name_and_pages_per_tenant() {
    let (_db, pool) = database().await;
    let (manager, app) = quickstart::app(pool).await.expect("the quick start builds");
    create(&manager, "acme").await;
    create(&manager, "globex").await;
    let acme = [("x-tenant-id", "acme")];

    // What a client sends: a name, nothing else; the response has the generated id.
    let made = send(
        &app,
        Method::POST,
        "/projects",
        &acme,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(made.status, 200, "{made:?}");
    assert_eq!(made.json["name"], "x");
    assert!(
        made.json["id"].as_i64().is_some_and(|id| id > 0),
        "{made:?}"
    );
    for name in ["y", "z"] {
        let r = send(
            &app,
            Method::POST,
            "/projects",
            &acme,
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    // Bad bodies are problem details, and nothing is written.
    let missing = send(&app, Method::POST, "/projects", &acme, Some(json!({}))).await;
    missing.assert_problem(422);
    assert!(
        missing.json["detail"].as_str().unwrap().contains("name"),
        "{missing:?}"
    );
    let wrong = send(
        &app,
        Method::POST,
        "/projects",
        &acme,
        Some(json!({"name": 5})),
    )
    .await;
    wrong.assert_problem(422);

    // Keyset pages with a Link to the next one.
    let first = send(&app, Method::GET, "/projects?limit=2", &acme, None).await;
    assert_eq!(first.status, 200, "{first:?}");
    let names: Vec<&str> = first
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x", "y"]);
    let link = first
        .headers
        .get("link")
        .expect("a next link")
        .to_str()
        .unwrap()
        .to_owned();
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    assert!(next.starts_with("/projects?after="), "{link}");
    let second = send(&app, Method::GET, &next, &acme, None).await;
    let names: Vec<&str> = second
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["z"]);
    assert!(
        second.headers.get("link").is_none(),
        "the last page links nowhere"
    );
    let bad_cursor = send(&app, Method::GET, "/projects?after=abc", &acme, None).await;
    bad_cursor.assert_problem(400);
    let bad_limit = send(&app, Method::GET, "/projects?limit=x", &acme, None).await;
    bad_limit.assert_problem(400);

    // Under a prefix (`Router::nest`) and with other parameters, the next link keeps
    // both: it leads where the request came.
    let nested = axum::Router::new().nest("/api", app.clone());
    let r = send(
        &nested,
        Method::GET,
        "/api/projects?limit=1&sort=x",
        &acme,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let link = r
        .headers
        .get("link")
        .expect("a next link")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(link.starts_with("</api/projects?sort=x&after="), "{link}");
    assert!(link.ends_with("&limit=1>; rel=\"next\""), "{link}");

    // Another tenant sees none of it.
    let other = Client::tenant(&app, "globex").get("/projects").await;
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(other.json, json!([]));
}
