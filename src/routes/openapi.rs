//! The OpenAPI 3 document, kept beside the code it describes; a test checks
//! that it names exactly the mounted routes.

use rocket::http::ContentType;
use rocket::{Route, get, routes};

pub const DOCUMENT: &str = include_str!("../openapi.json");

pub fn routes() -> Vec<Route> {
    routes![openapi]
}

#[get("/openapi.json")]
fn openapi() -> (ContentType, &'static str) {
    (ContentType::JSON, DOCUMENT)
}
