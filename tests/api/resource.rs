//! The JSON resource `/users`, through Rocket's local client against a real
//! database.

use rocket::http::{ContentType, Status};
use rocket::local::asynchronous::{Client, LocalResponse};
use serde_json::{Value, json};

use crate::helpers::{TestDb, client, shared_server};

async fn body(response: LocalResponse<'_>) -> Value {
    let text = response.into_string().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

async fn error_of(response: LocalResponse<'_>) -> (u16, String) {
    let status = response.status().code;
    assert_eq!(response.content_type(), Some(ContentType::JSON));
    let body = body(response).await;
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, body["error"].as_str().unwrap().to_owned())
}

async fn create<'c>(client: &'c Client, user: &Value) -> LocalResponse<'c> {
    client
        .post("/users")
        .header(ContentType::JSON)
        .body(user.to_string())
        .dispatch()
        .await
}

async fn setup() -> (TestDb, Client) {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    (db, client)
}

#[rocket::async_test]
async fn create_read_update_delete() {
    let (db, client) = setup().await;

    let created = create(&client, &json!({"userid": 5, "username": "Grace"})).await;
    assert_eq!(created.status(), Status::Created);
    assert_eq!(created.headers().get_one("Location"), Some("/users/5"));
    assert_eq!(
        body(created).await,
        json!({"userid": 5, "username": "Grace"})
    );

    let read = client.get("/users/5").dispatch().await;
    assert_eq!(read.status(), Status::Ok);
    assert_eq!(body(read).await, json!({"userid": 5, "username": "Grace"}));

    let renamed = client
        .put("/users/5")
        .header(ContentType::JSON)
        .body(r#"{"username": "Grace Hopper"}"#)
        .dispatch()
        .await;
    assert_eq!(renamed.status(), Status::Ok);
    assert_eq!(
        body(renamed).await,
        json!({"userid": 5, "username": "Grace Hopper"})
    );
    assert_eq!(db.stored_name(5).await.as_deref(), Some("Grace Hopper"));

    // Renaming to the same name is still a success, not a 404.
    let same = client
        .put("/users/5")
        .header(ContentType::JSON)
        .body(r#"{"username": "Grace Hopper"}"#)
        .dispatch()
        .await;
    assert_eq!(same.status(), Status::Ok);

    let deleted = client.delete("/users/5").dispatch().await;
    assert_eq!(deleted.status(), Status::NoContent);
    assert_eq!(db.stored_name(5).await, None);

    let gone = client.get("/users/5").dispatch().await;
    assert_eq!(error_of(gone).await, (404, "user_not_found".into()));
    let again = client.delete("/users/5").dispatch().await;
    assert_eq!(error_of(again).await, (404, "user_not_found".into()));
    let rename_missing = client
        .put("/users/5")
        .header(ContentType::JSON)
        .body(r#"{"username": "x"}"#)
        .dispatch()
        .await;
    assert_eq!(
        error_of(rename_missing).await,
        (404, "user_not_found".into())
    );
}

#[rocket::async_test]
async fn utf8mb4_names_round_trip_byte_for_byte() {
    let (db, client) = setup().await;
    let names = [
        "🦀🚀👩‍👩‍👧‍👦",
        "漢字かなカナ한국어",
        "Robert'); DROP TABLE users;--",
        r#""quoted" \backslash\ %_ wildcards"#,
        " leading and trailing ",
        "John", // collation is binary: "john" below is another name
        "john",
        &"𝄞".repeat(64),
    ];
    for (i, name) in names.iter().enumerate() {
        let userid = 100 + i as u32;
        let created = create(&client, &json!({"userid": userid, "username": name})).await;
        assert_eq!(created.status(), Status::Created, "{name:?}");
        let read = body(client.get(format!("/users/{userid}")).dispatch().await).await;
        assert_eq!(read["username"], *name);
        assert_eq!(db.stored_name(userid).await.as_deref(), Some(*name));
    }
}

#[rocket::async_test]
async fn the_list_is_keyset_paginated() {
    let (_db, client) = setup().await;
    for userid in [30, 10, 50, 20, 40] {
        let created = create(
            &client,
            &json!({"userid": userid, "username": format!("u{userid}")}),
        )
        .await;
        assert_eq!(created.status(), Status::Created);
    }
    let first = body(client.get("/users?limit=2").dispatch().await).await;
    assert_eq!(
        first["users"],
        json!([{"userid": 10, "username": "u10"}, {"userid": 20, "username": "u20"}])
    );
    assert_eq!(first["next_after"], 20);
    let second = body(client.get("/users?limit=2&after=20").dispatch().await).await;
    assert_eq!(
        second["users"],
        json!([{"userid": 30, "username": "u30"}, {"userid": 40, "username": "u40"}])
    );
    assert_eq!(second["next_after"], 40);
    let last = body(client.get("/users?limit=2&after=40").dispatch().await).await;
    assert_eq!(last["users"], json!([{"userid": 50, "username": "u50"}]));
    assert_eq!(last["next_after"], Value::Null);
    let all = body(client.get("/users").dispatch().await).await;
    assert_eq!(all["users"].as_array().unwrap().len(), 5);
    assert_eq!(all["next_after"], Value::Null);
    let zero_padded = body(client.get("/users?limit=0002").dispatch().await).await;
    assert_eq!(
        zero_padded, first,
        "limit=0002 is limit=2, as userid=007 is 7"
    );
    let exact = body(client.get("/users?limit=5").dispatch().await).await;
    assert_eq!(
        exact["next_after"],
        Value::Null,
        "no empty page after a full last page"
    );
}

#[rocket::async_test]
async fn the_default_page_holds_twenty() {
    let (_db, client) = setup().await;
    for userid in 1..=21 {
        create(&client, &json!({"userid": userid, "username": "n"})).await;
    }
    let page = body(client.get("/users").dispatch().await).await;
    assert_eq!(page["users"].as_array().unwrap().len(), 20);
    assert_eq!(page["next_after"], 20);
}

#[rocket::async_test]
async fn bad_list_parameters_are_400() {
    let (_db, client) = setup().await;
    for (target, code) in [
        ("/users?limit=0", "invalid_limit"),
        ("/users?limit=101", "invalid_limit"),
        ("/users?limit=-5", "invalid_limit"),
        ("/users?limit=ten", "invalid_limit"),
        ("/users?limit=%2B5", "invalid_limit"),
        ("/users?limit=+5", "invalid_limit"),
        ("/users?limit=0101", "invalid_limit"),
        ("/users?after=x", "invalid_userid"),
        ("/users?after=-1", "invalid_userid"),
    ] {
        assert_eq!(
            error_of(client.get(target).dispatch().await).await,
            (400, code.into()),
            "{target}"
        );
    }
}

#[rocket::async_test]
async fn a_well_formed_body_that_breaks_a_rule_is_422() {
    let (db, client) = setup().await;
    let cases = [
        (json!({"username": "x"}), "missing_field"),
        (json!({"userid": 1}), "missing_field"),
        (json!([1, "x"]), "invalid_body"),
        (json!("text"), "invalid_body"),
        (json!({"userid": "1", "username": "x"}), "invalid_userid"),
        (json!({"userid": 1.5, "username": "x"}), "invalid_userid"),
        (json!({"userid": 0, "username": "x"}), "invalid_userid"),
        (json!({"userid": -3, "username": "x"}), "invalid_userid"),
        (
            json!({"userid": 2147483648u64, "username": "x"}),
            "invalid_userid",
        ),
        (json!({"userid": null, "username": "x"}), "invalid_userid"),
        (json!({"userid": 1, "username": ""}), "invalid_username"),
        (json!({"userid": 1, "username": " \t "}), "invalid_username"),
        (
            json!({"userid": 1, "username": "a\u{7}b"}),
            "invalid_username",
        ),
        (
            json!({"userid": 1, "username": "x".repeat(65)}),
            "invalid_username",
        ),
        (json!({"userid": 1, "username": 5}), "invalid_username"),
    ];
    for (payload, code) in cases {
        let response = create(&client, &payload).await;
        assert_eq!(error_of(response).await, (422, code.into()), "{payload}");
    }
    let rename = client
        .put("/users/1")
        .header(ContentType::JSON)
        .body(r#"{"name": "typo"}"#)
        .dispatch()
        .await;
    assert_eq!(error_of(rename).await, (422, "missing_field".into()));
    assert_eq!(db.count().await, 0);
}

#[rocket::async_test]
async fn bodies_are_checked_for_type_syntax_and_size() {
    let (db, client) = setup().await;
    let plain = client
        .post("/users")
        .header(ContentType::Plain)
        .body(r#"{"userid": 1, "username": "x"}"#)
        .dispatch()
        .await;
    assert_eq!(
        error_of(plain).await,
        (415, "unsupported_media_type".into())
    );
    let none = client
        .post("/users")
        .body(r#"{"userid": 1, "username": "x"}"#)
        .dispatch()
        .await;
    assert_eq!(error_of(none).await, (415, "unsupported_media_type".into()));

    for broken in [
        r#"{"userid": 1, "username": "x""#,
        "",
        "{userid: 1}",
        "[1,]",
    ] {
        let response = client
            .post("/users")
            .header(ContentType::JSON)
            .body(broken)
            .dispatch()
            .await;
        assert_eq!(
            error_of(response).await,
            (400, "malformed_json".into()),
            "{broken:?}"
        );
    }

    let huge = json!({"userid": 1, "username": "x".repeat(user_api::BODY_LIMIT_BYTES as usize)});
    assert_eq!(
        error_of(create(&client, &huge).await).await,
        (413, "payload_too_large".into())
    );

    for (top, sub) in [
        ("text", "json"),
        ("text", "vnd.api+json"),
        ("application", "xml"),
    ] {
        let response = client
            .post("/users")
            .header(ContentType::new(top, sub))
            .body(r#"{"userid": 2, "username": "x"}"#)
            .dispatch()
            .await;
        assert_eq!(
            error_of(response).await,
            (415, "unsupported_media_type".into()),
            "{top}/{sub}"
        );
    }

    let vendor = client
        .post("/users")
        .header(ContentType::new("application", "vnd.api+json"))
        .body(r#"{"userid": 3, "username": "x"}"#)
        .dispatch()
        .await;
    assert_eq!(vendor.status(), Status::Created);
    assert_eq!(db.stored_name(2).await, None, "no refused body was stored");
}

/// `{"userid": <userid>, "username": "x"}` padded with JSON white space to
/// exactly `len` bytes.
fn padded_body(userid: u32, len: usize) -> String {
    let body = json!({"userid": userid, "username": "x"}).to_string();
    assert!(body.len() <= len);
    format!("{body:len$}")
}

#[rocket::async_test]
async fn a_body_of_up_to_16_kib_is_read_whole() {
    let (db, client) = setup().await;
    // The limit README, nginx's client_max_body_size and the 413 message state.
    const LIMIT: usize = 16 * 1024;
    let send = |body: String| {
        client
            .post("/users")
            .header(ContentType::JSON)
            .body(body)
            .dispatch()
    };

    let mid = send(padded_body(1, 4 * 1024)).await;
    assert_eq!(mid.status(), Status::Created, "a 4 KiB body");
    let full = send(padded_body(2, LIMIT)).await;
    assert_eq!(full.status(), Status::Created, "a body of exactly 16 KiB");
    let over = send(padded_body(3, LIMIT + 1)).await;
    assert_eq!(error_of(over).await, (413, "payload_too_large".into()));

    assert_eq!(db.stored_name(1).await.as_deref(), Some("x"));
    assert_eq!(db.stored_name(2).await.as_deref(), Some("x"));
    assert_eq!(db.stored_name(3).await, None);
}

#[rocket::async_test]
async fn bad_path_ids_are_400() {
    let (_db, client) = setup().await;
    for target in [
        "/users/abc",
        "/users/0",
        "/users/-1",
        "/users/1e3",
        "/users/99999999999",
    ] {
        assert_eq!(
            error_of(client.get(target).dispatch().await).await,
            (400, "invalid_userid".into()),
            "{target}"
        );
    }
}
