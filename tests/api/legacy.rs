//! The original sample's calls, verbatim, over a real TCP listener.

use serde_json::json;

use crate::helpers::{TestDb, figment, get, request, serve, shared_server};

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_journey_works_verbatim() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;

    let created = request(
        app.addr,
        "POST",
        "/create_user?userid=1&username=John",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(created.header("location"), Some("/users/1"));
    assert_eq!(created.json(), json!({"userid": 1, "username": "John"}));

    let fetched = get(app.addr, "/get_user?userid=1").await.unwrap();
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), json!({"userid": 1, "username": "John"}));
    assert_eq!(db.stored_name(1).await.as_deref(), Some("John"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_userid_is_a_conflict_and_the_row_is_untouched() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let first = request(
        app.addr,
        "POST",
        "/create_user?userid=7&username=First",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(first.status, 201);

    let again = request(
        app.addr,
        "POST",
        "/create_user?userid=7&username=Second",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "user_exists");
    assert_eq!(db.stored_name(7).await.as_deref(), Some("First"));
}

#[tokio::test(flavor = "multi_thread")]
async fn query_values_are_percent_decoded_exactly() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    // "Zoë 🦀 O'Brien; DROP TABLE users" with a literal '+' kept as a space.
    let target = "/create_user?userid=2&username=Zo%C3%AB+%F0%9F%A6%80%20O%27Brien%3B%20DROP%20TABLE%20users";
    let created = request(app.addr, "POST", target, &[], None).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let expected = "Zoë 🦀 O'Brien; DROP TABLE users";
    assert_eq!(db.stored_name(2).await.as_deref(), Some(expected));
    let fetched = get(app.addr, "/get_user?userid=2").await.unwrap();
    assert_eq!(fetched.json()["username"], expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_query_parameters_are_400_with_a_reason() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let cases = [
        ("POST", "/create_user?username=John", "missing_parameter"),
        ("POST", "/create_user?userid=1", "missing_parameter"),
        ("POST", "/create_user", "missing_parameter"),
        (
            "POST",
            "/create_user?userid=abc&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=-1&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=%2B1&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=1e3&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=0x10&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=%201&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=0&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=2147483648&username=John",
            "invalid_userid",
        ),
        (
            "POST",
            "/create_user?userid=1&username=",
            "invalid_username",
        ),
        (
            "POST",
            "/create_user?userid=1&username=%20%20",
            "invalid_username",
        ),
        (
            "POST",
            "/create_user?userid=1&username=a%00b",
            "invalid_username",
        ),
        (
            "POST",
            "/create_user?userid=1&username=a%0Ab",
            "invalid_username",
        ),
        (
            "POST",
            "/create_user?userid=1&username=%FF%FE",
            "invalid_encoding",
        ),
        (
            "POST",
            "/create_user?userid=1&userid=2&username=John",
            "duplicate_parameter",
        ),
        ("GET", "/get_user", "missing_parameter"),
        ("GET", "/get_user?userid=", "invalid_userid"),
        ("GET", "/get_user?userid=1.5", "invalid_userid"),
    ];
    for (method, target, code) in cases {
        let response = request(app.addr, method, target, &[], None).await.unwrap();
        assert_eq!(response.status, 400, "{method} {target}: {}", response.body);
        assert_eq!(response.error_code(), code, "{method} {target}");
    }
    let long_name = format!("/create_user?userid=1&username={}", "x".repeat(65));
    let response = request(app.addr, "POST", &long_name, &[], None)
        .await
        .unwrap();
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (400, "invalid_username")
    );
    assert_eq!(db.count().await, 0, "nothing invalid was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_user_is_404() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let response = get(app.addr, "/get_user?userid=2147483647").await.unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), "user_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_creates_of_one_id_yield_exactly_one_201() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let attempts = (0..48).map(|i| {
        let addr = app.addr;
        tokio::spawn(async move {
            let target = format!("/create_user?userid=42&username=racer{i}");
            (i, request(addr, "POST", &target, &[], None).await.unwrap())
        })
    });
    let mut winners = Vec::new();
    for attempt in attempts {
        let (i, response) = attempt.await.unwrap();
        match response.status {
            201 => winners.push(i),
            409 => assert_eq!(response.error_code(), "user_exists"),
            other => panic!("unexpected {other}: {}", response.body),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let expected = format!("racer{}", winners[0]);
    assert_eq!(db.stored_name(42).await, Some(expected));
    assert_eq!(db.count().await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_through_rest_reads_through_legacy_and_back() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let created =
        crate::helpers::post_json(app.addr, "/users", &json!({"userid": 9, "username": "Ada"}))
            .await
            .unwrap();
    assert_eq!(created.status, 201);
    let legacy = get(app.addr, "/get_user?userid=9").await.unwrap();
    assert_eq!(legacy.json(), json!({"userid": 9, "username": "Ada"}));
}
