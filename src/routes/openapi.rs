//! The OpenAPI 3 document, kept beside the code it describes; a test checks
//! that it names exactly the mounted routes.

use std::sync::OnceLock;

use rocket::http::ContentType;
use rocket::{Route, get, routes};

use crate::conditional::{EntityTag, IfNoneMatch, PUBLIC_FOR_AN_HOUR, Tagged};
use crate::error::ApiError;

pub const DOCUMENT: &str = include_str!("../openapi.json");

pub fn routes() -> Vec<Route> {
    routes![openapi]
}

#[get("/openapi.json")]
fn openapi(
    if_none_match: Result<IfNoneMatch, ApiError>,
) -> Result<Tagged<(ContentType, &'static str)>, ApiError> {
    static ETAG: OnceLock<EntityTag> = OnceLock::new();
    let etag = ETAG.get_or_init(|| EntityTag::of_bytes(DOCUMENT.as_bytes()));
    Ok(Tagged::new(
        etag.clone(),
        PUBLIC_FOR_AN_HOUR,
        (ContentType::JSON, DOCUMENT),
        &if_none_match?,
    ))
}
