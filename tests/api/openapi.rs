//! The OpenAPI document describes exactly the mounted routes, and its
//! examples are what the API really answers.

use std::collections::BTreeSet;

use rocket::http::Status;
use rocket::local::asynchronous::Client;
use serde_json::Value;

use user_api::error_code::ErrorCode;

use crate::helpers::{TestDb, client, shared_server};

fn document() -> Value {
    serde_json::from_str(user_api::openapi_document()).expect("openapi.json is JSON")
}

/// `(METHOD, /path/{param})` for every operation the document lists.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// Every mounted route but Swagger UI's: a page for people, which the
/// document it shows does not list.
fn api_routes(client: &Client) -> impl Iterator<Item = &rocket::Route> {
    client
        .rocket()
        .routes()
        .filter(|route| route.uri.path() != "/docs/<file..>")
}

#[rocket::async_test]
async fn the_document_lists_exactly_the_mounted_routes() {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let mounted: BTreeSet<(String, String)> = api_routes(&client)
        .map(|route| {
            let path = route.uri.path().replace('<', "{").replace('>', "}");
            (route.method.as_str().to_owned(), path)
        })
        .collect();
    assert_eq!(documented_operations(&doc), mounted);

    // Every query parameter a route takes is documented, and no other.
    for route in api_routes(&client) {
        let path = route.uri.path().replace('<', "{").replace('>', "}");
        let mut in_route: BTreeSet<String> = route
            .uri
            .query()
            .map(|q| {
                q.split('&')
                    .map(|p| p.trim_matches(|c| c == '<' || c == '>').to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let operation = &doc["paths"][&path][route.method.as_str().to_lowercase()];
        let mut documented = BTreeSet::new();
        for param in operation["parameters"].as_array().into_iter().flatten() {
            let param = resolve(&doc, param);
            match param["in"].as_str() {
                Some("query") => {
                    documented.insert(param["name"].as_str().unwrap().to_owned());
                }
                Some("path") => {
                    in_route.insert(format!("path:{}", param["name"].as_str().unwrap()));
                    documented.insert(format!("path:{}", param["name"].as_str().unwrap()));
                }
                _ => {}
            }
        }
        assert_eq!(documented, in_route, "{} {path}", route.method);
    }
}

fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => doc
            .pointer(reference.trim_start_matches('#'))
            .expect("dangling $ref"),
        None => value,
    }
}

/// The document's error codes are exactly the closed list the API answers
/// with, and each documented response names only codes of its status.
#[test]
fn the_documented_error_codes_are_exactly_the_api_s() {
    let doc = document();
    let documented: BTreeSet<&str> =
        doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    let answered: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, answered);
}

#[rocket::async_test]
async fn the_document_is_served() {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    let response = client.get("/openapi.json").dispatch().await;
    assert_eq!(response.status(), Status::Ok);
    let served: Value = response.into_json().await.unwrap();
    assert_eq!(served, document());
}
