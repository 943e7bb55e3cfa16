//! ETags, conditional requests and caching rules (src/README.md,
//! "Conditional requests"), over real HTTP: on the API itself and through
//! nginx with the shipped configuration, which must pass them unchanged.

use std::net::SocketAddr;

use serde_json::json;

use crate::helpers::{
    HttpResponse, Nginx, Served, TestDb, figment, post_json, request, serve, shared_server,
};

/// The API served on a real port, and the same API behind nginx.
struct Stack {
    db: TestDb,
    app: Served,
    nginx: Nginx,
}

impl Stack {
    async fn start() -> Stack {
        let db = TestDb::create(shared_server()).await;
        let app = serve(figment(&db.url())).await;
        let addr = app.addr;
        let nginx = tokio::task::block_in_place(|| Nginx::start(addr, &[]));
        Stack { db, app, nginx }
    }

    /// Both ways in: the API's own port, and nginx's.
    fn targets(&self) -> [(&'static str, Target); 2] {
        [
            ("api", Target(self.app.addr)),
            ("nginx", Target(self.nginx.public)),
        ]
    }
}

#[derive(Clone, Copy)]
struct Target(SocketAddr);

impl Target {
    async fn send(
        self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        let mut all = headers.to_vec();
        if body.is_some() {
            all.push(("Content-Type", "application/json"));
        }
        request(self.0, method, path, &all, body.map(str::as_bytes))
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn create(self, userid: u32, username: &str) -> String {
        let created = post_json(
            self.0,
            "/users",
            &json!({"userid": userid, "username": username}),
        )
        .await
        .unwrap();
        assert_eq!(created.status, 201, "{}", created.body);
        etag(&created)
    }

    async fn get(self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.send("GET", path, headers, None).await
    }

    async fn rename(self, userid: u32, username: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let body = json!({ "username": username }).to_string();
        self.send("PUT", &format!("/users/{userid}"), headers, Some(&body))
            .await
    }

    async fn delete(self, userid: u32, headers: &[(&str, &str)]) -> HttpResponse {
        self.send("DELETE", &format!("/users/{userid}"), headers, None)
            .await
    }
}

fn etag(response: &HttpResponse) -> String {
    response
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag on a {}: {}", response.status, response.body))
        .to_owned()
}

fn cache_control(response: &HttpResponse) -> &str {
    response.header("cache-control").unwrap_or_else(|| {
        panic!(
            "no Cache-Control on a {}: {}",
            response.status, response.body
        )
    })
}

/// A user representation: a strong ETag and `private, no-cache`.
fn assert_user_data(response: &HttpResponse, status: u16) -> String {
    assert_eq!(response.status, status, "{}", response.body);
    assert_eq!(cache_control(response), "private, no-cache");
    let tag = etag(response);
    assert!(
        tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2,
        "not a strong entity tag: {tag}"
    );
    tag
}

/// An error: the JSON shape, never stored, no validator.
fn assert_error(response: &HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.body);
    assert_eq!(response.error_code(), code);
    assert_eq!(cache_control(response), "no-store");
    assert_eq!(response.header("etag"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_representation_states_its_validator_and_caching_rule() {
    let stack = Stack::start().await;
    for (way, target) in stack.targets() {
        let id = if way == "api" { 1 } else { 2 };
        let created = post_json(
            target.0,
            "/users",
            &json!({"userid": id, "username": "Ada"}),
        )
        .await
        .unwrap();
        let tag = assert_user_data(&created, 201);
        let read = target.get(&format!("/users/{id}"), &[]).await;
        assert_eq!(assert_user_data(&read, 200), tag, "{way}");
        let legacy = target.get(&format!("/get_user?userid={id}"), &[]).await;
        assert_eq!(assert_user_data(&legacy, 200), tag, "{way}");
        assert_eq!(legacy.body, read.body, "{way}");

        let page = target.get("/users", &[]).await;
        let page_tag = assert_user_data(&page, 200);
        assert!(page_tag.starts_with("\"p"), "{way}: {page_tag}");

        let document = target.get("/openapi.json", &[]).await;
        assert_eq!(document.status, 200, "{way}");
        assert_eq!(cache_control(&document), "public, max-age=3600", "{way}");
        etag(&document);

        assert_error(&target.get("/users/999", &[]).await, 404, "user_not_found");
        assert_error(&target.get("/nowhere", &[]).await, 404, "not_found");
        let healthz = target.get("/healthz", &[]).await;
        assert_eq!(
            (healthz.status, cache_control(&healthz)),
            (200, "no-store"),
            "{way}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_the_client_already_has_is_a_304_without_a_body() {
    let stack = Stack::start().await;
    for (way, target) in stack.targets() {
        let id = if way == "api" { 1 } else { 2 };
        let tag = target.create(id, "Ada").await;
        let weak = format!("W/{tag}");
        for (path, wanted) in [
            (format!("/users/{id}"), tag.clone()),
            (format!("/get_user?userid={id}"), tag.clone()),
            (format!("/users/{id}"), weak.clone()),
            (format!("/users/{id}"), "*".to_owned()),
            (format!("/users/{id}"), format!("\"nope\", {tag}")),
        ] {
            let unchanged = target.get(&path, &[("If-None-Match", &wanted)]).await;
            assert_eq!(
                assert_user_data(&unchanged, 304),
                tag,
                "{way} {path} {wanted}"
            );
            assert!(
                unchanged.body.is_empty(),
                "{way} {path}: {}",
                unchanged.body
            );
        }
        // A header sent twice counts as one list (RFC 9110 5.3).
        let twice = target
            .get(
                &format!("/users/{id}"),
                &[("If-None-Match", "\"nope\""), ("If-None-Match", &tag)],
            )
            .await;
        if way == "api" {
            assert_eq!(twice.status, 304, "{}", twice.body);
        } else {
            // nginx refuses a repeated If-None-Match / If-Match line itself
            // (it keeps these headers unique): its JSON 400.
            assert_error(&twice, 400, "bad_request");
        }
        // Another tag: the full representation.
        let other = target
            .get(&format!("/users/{id}"), &[("If-None-Match", "\"1\"")])
            .await;
        assert_eq!(assert_user_data(&other, 200), tag, "{way}");
        assert_eq!(other.json()["username"], "Ada");

        let page = target.get("/users", &[]).await;
        let page_tag = etag(&page);
        let unchanged = target.get("/users", &[("If-None-Match", &page_tag)]).await;
        assert_eq!(unchanged.status, 304, "{way}");
        let document = target.get("/openapi.json", &[]).await;
        let unchanged = target
            .get("/openapi.json", &[("If-None-Match", &etag(&document))])
            .await;
        assert_eq!(unchanged.status, 304, "{way}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_lets_a_write_through_only_on_the_version_it_names() {
    let stack = Stack::start().await;
    for (way, target) in stack.targets() {
        let id = if way == "api" { 1 } else { 2 };
        let first = target.create(id, "Ada").await;

        let renamed = target.rename(id, "Ada L.", &[("If-Match", &first)]).await;
        let second = assert_user_data(&renamed, 200);
        assert_ne!(second, first, "{way}: a write changes the ETag");
        assert_eq!(renamed.json()["username"], "Ada L.");
        let read = target.get(&format!("/users/{id}"), &[]).await;
        assert_eq!(etag(&read), second, "{way}: PUT answers the new ETag");

        // The version read before: refused, nothing changed.
        let stale = target.rename(id, "Mallory", &[("If-Match", &first)]).await;
        assert_error(&stale, 412, "precondition_failed");
        // A weak tag never matches for a write (strong comparison).
        let weak = target
            .rename(id, "Mallory", &[("If-Match", &format!("W/{second}"))])
            .await;
        assert_error(&weak, 412, "precondition_failed");
        // `If-None-Match: *` on an existing user: refused too.
        let absent_only = target
            .rename(id, "Mallory", &[("If-None-Match", "*")])
            .await;
        assert_error(&absent_only, 412, "precondition_failed");
        let after = target.get(&format!("/users/{id}"), &[]).await;
        assert_eq!(
            (after.json()["username"].clone(), etag(&after)),
            (json!("Ada L."), second.clone()),
            "{way}"
        );

        // `*` and a list holding the current tag let it through; the same
        // name again is still a write, with a new version.
        let any = target.rename(id, "Ada L.", &[("If-Match", "*")]).await;
        let third = assert_user_data(&any, 200);
        assert_ne!(third, second, "{way}");
        let listed = target
            .rename(id, "Ada", &[("If-Match", &format!("\"0\", {third}"))])
            .await;
        let fourth = assert_user_data(&listed, 200);

        // No such user: 404, whatever the condition (RFC 9110 13.2.1).
        let missing = target.rename(999, "x", &[("If-Match", &fourth)]).await;
        assert_error(&missing, 404, "user_not_found");
        assert_error(
            &target.delete(999, &[("If-Match", "*")]).await,
            404,
            "user_not_found",
        );

        assert_error(
            &target.delete(id, &[("If-Match", &third)]).await,
            412,
            "precondition_failed",
        );
        let deleted = target.delete(id, &[("If-Match", &fourth)]).await;
        assert_eq!(deleted.status, 204, "{way}: {}", deleted.body);
        // Created anew: a version never handed out before for this id.
        let reborn = target.create(id, "Ada").await;
        for old in [&first, &second, &third, &fourth] {
            assert_ne!(&reborn, old, "{way}");
        }
        assert_error(
            &target.rename(id, "x", &[("If-Match", &first)]).await,
            412,
            "precondition_failed",
        );
        // Without conditions, writes behave as they always did.
        assert_eq!(target.rename(id, "Ada", &[]).await.status, 200, "{way}");
        assert_eq!(target.delete(id, &[]).await.status, 204, "{way}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_precondition_is_a_400_never_a_500() {
    let stack = Stack::start().await;
    for (way, target) in stack.targets() {
        let id = if way == "api" { 1 } else { 2 };
        target.create(id, "Ada").await;
        let path = format!("/users/{id}");
        for bad in ["abc", "\"unterminated", "*, \"1\"", "W/x", "\"a\" \"b\""] {
            assert_error(
                &target.get(&path, &[("If-None-Match", bad)]).await,
                400,
                "invalid_entity_tag",
            );
            assert_error(
                &target.rename(id, "x", &[("If-Match", bad)]).await,
                400,
                "invalid_entity_tag",
            );
            assert_error(
                &target.delete(id, &[("If-Match", bad)]).await,
                400,
                "invalid_entity_tag",
            );
        }
        // An empty value is an empty list: it names nothing.
        let read = target.get(&path, &[("If-None-Match", "")]).await;
        assert_eq!(read.status, 200, "{way}: {}", read.body);
        assert_error(
            &target.rename(id, "x", &[("If-Match", "")]).await,
            412,
            "precondition_failed",
        );
        assert_eq!(read.json()["username"], "Ada", "{way}: nothing changed");
    }
}

/// Lost-update protection under contention: the condition is decided by
/// the database in the UPDATE itself, so of 20 writers that read the same
/// version exactly one wins.
#[tokio::test(flavor = "multi_thread")]
async fn of_twenty_concurrent_puts_with_the_same_if_match_exactly_one_wins() {
    let stack = Stack::start().await;
    let target = Target(stack.app.addr);
    let read = target.create(1, "Ada").await;
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let read = read.clone();
            tokio::spawn(async move {
                let name = format!("writer {i}");
                let answer = target.rename(1, &name, &[("If-Match", &read)]).await;
                (name, answer)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refused = 0;
    for writer in writers {
        let (name, answer) = writer.await.unwrap();
        match answer.status {
            200 => winners.push(name),
            412 => {
                assert_eq!(answer.error_code(), "precondition_failed");
                refused += 1;
            }
            other => panic!("{name}: {other} {}", answer.body),
        }
    }
    assert_eq!((winners.len(), refused), (1, 19), "{winners:?}");
    assert_eq!(stack.db.stored_name(1).await.as_deref(), Some(&*winners[0]));
}

/// Rows stored before the version column existed (a backup from before the
/// migration, restored) start at version 1 and take conditions as any other.
#[tokio::test(flavor = "multi_thread")]
async fn rows_from_before_the_version_column_start_at_version_1() {
    let db = TestDb::create(shared_server()).await;
    let mut admin = db.connect().await;
    let first = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/20261128000000_create_users.sql"
    ))
    .unwrap();
    sqlx::raw_sql(&first).execute(&mut admin).await.unwrap();
    sqlx::query("INSERT INTO users (userid, username) VALUES (7, 'old')")
        .execute(&mut admin)
        .await
        .unwrap();
    let app = serve(figment(&db.url())).await;
    let target = Target(app.addr);
    let read = target.get("/users/7", &[]).await;
    assert_eq!(assert_user_data(&read, 200), "\"1\"");
    let renamed = target.rename(7, "new", &[("If-Match", "\"1\"")]).await;
    assert_ne!(assert_user_data(&renamed, 200), "\"1\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_require_if_match_a_write_without_it_is_a_428() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url()).merge(("require_if_match", true))).await;
    let target = Target(app.addr);
    let tag = target.create(1, "Ada").await;
    assert_error(
        &target.rename(1, "x", &[]).await,
        428,
        "precondition_required",
    );
    assert_error(&target.delete(1, &[]).await, 428, "precondition_required");
    assert_eq!(db.stored_name(1).await.as_deref(), Some("Ada"));
    let renamed = target.rename(1, "x", &[("If-Match", &tag)]).await;
    assert_user_data(&renamed, 200);
    assert_eq!(target.delete(1, &[("If-Match", "*")]).await.status, 204);
}
