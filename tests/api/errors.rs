//! Errors Rocket raises itself, headers, request ids and health endpoints.

use rocket::http::{Header, Status};
use serde_json::json;

use crate::helpers::{TestDb, client, figment, request, serve, shared_server};

#[rocket::async_test]
async fn a_wrong_method_on_a_known_path_is_405_with_allow() {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    let cases = [
        ("/create_user", rocket::http::Method::Get, "POST"),
        ("/get_user", rocket::http::Method::Post, "GET, HEAD"),
        ("/users", rocket::http::Method::Delete, "GET, HEAD, POST"),
        (
            "/users/1",
            rocket::http::Method::Post,
            "DELETE, GET, HEAD, PUT",
        ),
        ("/healthz", rocket::http::Method::Put, "GET, HEAD"),
    ];
    for (path, method, allow) in cases {
        let response = client.req(method, path).dispatch().await;
        assert_eq!(
            response.status(),
            Status::MethodNotAllowed,
            "{method} {path}"
        );
        assert_eq!(
            response.headers().get_one("Allow"),
            Some(allow),
            "{method} {path}"
        );
        let body: serde_json::Value = response.into_json().await.unwrap();
        assert_eq!(body["error"], "method_not_allowed");
    }
}

#[rocket::async_test]
async fn an_unknown_path_is_404_json() {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    for path in ["/", "/nope", "/users/1/extra", "/get_user/1"] {
        let response = client.get(path).dispatch().await;
        assert_eq!(response.status(), Status::NotFound, "{path}");
        let body: serde_json::Value = response.into_json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_echoed_or_generated() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let given = request(
        app.addr,
        "GET",
        "/healthz",
        &[("X-Request-Id", "trace-abc-123")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(given.header("x-request-id"), Some("trace-abc-123"));

    let generated = request(app.addr, "GET", "/nope", &[], None).await.unwrap();
    let id = generated.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let other = request(app.addr, "GET", "/nope", &[], None).await.unwrap();
    assert_ne!(other.header("x-request-id").unwrap(), id);

    let unsafe_id = request(
        app.addr,
        "GET",
        "/healthz",
        &[("X-Request-Id", "a b\"c")],
        None,
    )
    .await
    .unwrap();
    assert_ne!(unsafe_id.header("x-request-id"), Some("a b\"c"));
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_do_not_name_the_server() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let response = request(app.addr, "GET", "/healthz", &[], None)
        .await
        .unwrap();
    assert_eq!(response.header("server"), None);
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
}

#[rocket::async_test]
async fn health_and_readiness_answer_while_the_database_does() {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    let health = client.get("/healthz").dispatch().await;
    assert_eq!(health.status(), Status::Ok);
    assert_eq!(
        health.into_json::<serde_json::Value>().await,
        Some(json!({"status": "ok"}))
    );
    let ready = client.get("/readyz").dispatch().await;
    assert_eq!(ready.status(), Status::Ok);
    let head = client.head("/healthz").dispatch().await;
    assert_eq!(head.status(), Status::Ok);
    let with_id = client
        .get("/readyz")
        .header(Header::new("X-Request-Id", "r-1"))
        .dispatch()
        .await;
    assert_eq!(with_id.headers().get_one("X-Request-Id"), Some("r-1"));
}

/// Real MariaDB errors, mapped as the handlers map them: one worth a retry
/// is a 503 (`Retry-After`), a bug is a 500 and never a "retry shortly".
#[tokio::test(flavor = "multi_thread")]
async fn database_errors_are_503_only_when_worth_a_retry() {
    use user_api::db::DbError;
    use user_api::error::ApiError;

    let db = TestDb::create(shared_server()).await;
    let mut waiter = db.connect().await;
    let mut holder = db.connect().await;

    // 1146, no such table: a bug.
    let unknown = sqlx::query("SELECT * FROM no_such_table")
        .execute(&mut waiter)
        .await
        .unwrap_err();
    let error = ApiError::from(DbError::after_sending(&unknown));
    assert_eq!(
        (error.status().code, error.code().as_str()),
        (500, "internal")
    );

    // 1205, lock wait timeout: another transaction holds the row.
    for statement in [
        "CREATE TABLE locked (id INT PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO locked VALUES (1)",
        "BEGIN",
        "SELECT id FROM locked WHERE id = 1 FOR UPDATE",
    ] {
        sqlx::query(statement).execute(&mut holder).await.unwrap();
    }
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
        .execute(&mut waiter)
        .await
        .unwrap();
    let waited = sqlx::query("UPDATE locked SET id = 2 WHERE id = 1")
        .execute(&mut waiter)
        .await
        .unwrap_err();
    let number = waited
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    let error = ApiError::from(DbError::after_sending(&waited));
    assert_eq!(
        (error.status().code, error.code().as_str()),
        (503, "database_unavailable"),
        "{number:?}"
    );
}

/// Only a duplicate key is `user_exists`: any other error the database
/// raises for an insert is the server's fault (500), never a 409 that
/// tells the client the user is there.
#[rocket::async_test]
async fn a_failed_insert_that_is_no_duplicate_is_not_user_exists() {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    db.refuse_inserts().await;
    let response = client
        .post("/users")
        .json(&json!({"userid": 1, "username": "Ada"}))
        .dispatch()
        .await;
    assert_eq!(response.status(), Status::InternalServerError);
    let body: serde_json::Value = response.into_json().await.unwrap();
    assert_eq!(body["error"], "internal");
    assert_eq!(db.count().await, 0);
}
