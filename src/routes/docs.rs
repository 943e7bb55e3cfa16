//! Swagger UI for `/openapi.json` at `/docs/`: utoipa-swagger-ui's files,
//! compiled into the binary, each with an ETag and a Content-Security-Policy
//! that allows exactly what the page loads. Not part of the OpenAPI document:
//! a page for people, not an operation of the API.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use rocket::http::uri::{Origin, Segments, fmt};
use rocket::http::{ContentType, Header};
use rocket::response::{self, Redirect, Responder};
use rocket::{Either, Request, Route, get, routes};
use utoipa_swagger_ui::Config;

use crate::conditional::{ALWAYS_REVALIDATE, EntityTag, IfNoneMatch, Tagged};
use crate::error::ApiError;

pub fn routes() -> Vec<Route> {
    routes![docs]
}

/// The page's own files (script, styles, icons) and the document it reads,
/// nothing from another origin, no inline script. One inline style, by its
/// digest: the colours of Swagger UI's logo (`.logo_small_svg__cls-2{fill:#fff}
/// .logo_small_svg__cls-3{fill:#85ea2d}`, a `<style>` in its SVG); another
/// Swagger UI release that changes it shows up as a CSP violation in
/// tests/browser. `data:` images are its inline SVG icons.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `/docs` redirects to `/docs/` (the page loads its files by relative
/// paths); `/docs/<file>` serves the file, a JSON 404 when there is none.
#[get("/docs/<file..>")]
fn docs(
    file: Segments<'_, fmt::Path>,
    uri: &Origin<'_>,
    if_none_match: Result<IfNoneMatch, ApiError>,
) -> Result<Either<Redirect, Option<DocsFile>>, ApiError> {
    if !uri.path().ends_with('/') && file.is_empty() {
        let target = match uri.query() {
            Some(query) => format!("/docs/?{query}"),
            None => "/docs/".to_owned(),
        };
        return Ok(Either::Left(Redirect::permanent(target)));
    }
    let if_none_match = if_none_match?;
    Ok(Either::Right(
        asset(&file.collect::<Vec<_>>().join("/")).map(|asset| {
            DocsFile(Tagged::new(
                asset.etag.clone(),
                ALWAYS_REVALIDATE,
                (asset.content_type.clone(), asset.bytes),
                &if_none_match,
            ))
        }),
    ))
}

struct Asset {
    bytes: &'static [u8],
    content_type: ContentType,
    etag: EntityTag,
}

/// The file at `path` under Swagger UI's root, prepared once: its digest is
/// computed on first request and kept, as is the initializer, which
/// utoipa-swagger-ui writes out of the config on every call. Leaked on
/// purpose: the set of files is fixed at build time, so this holds at most
/// one copy of each for the life of the process.
fn asset(path: &str) -> Option<&'static Asset> {
    static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
        // No validator badge: Swagger UI would send the document to
        // validator.swagger.io.
        Arc::new(Config::new(["/openapi.json"]).validator_url("none"))
    });
    static PREPARED: LazyLock<Mutex<HashMap<String, &'static Asset>>> =
        LazyLock::new(Mutex::default);

    let mut prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(asset) = prepared.get(path) {
        return Some(asset);
    }
    // `serve` fails only when the initializer template is not UTF-8 or the
    // config does not serialize: both fixed at build time, and covered by
    // the tests that load the page.
    let file = utoipa_swagger_ui::serve(path, CONFIG.clone()).ok()??;
    let bytes: &'static [u8] = match file.bytes {
        Cow::Borrowed(bytes) => bytes,
        Cow::Owned(bytes) => Vec::leak(bytes),
    };
    // Rocket's own table, which names the charset of text types
    // (`text/html; charset=utf-8`); "" is the index, `index.html`.
    let extension = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("html");
    let asset: &'static Asset = Box::leak(Box::new(Asset {
        bytes,
        content_type: ContentType::from_extension(extension).unwrap_or(ContentType::Binary),
        etag: EntityTag::of_bytes(bytes),
    }));
    prepared.insert(path.to_owned(), asset);
    Some(asset)
}

/// A Swagger UI file with its validator and the page's Content-Security-Policy.
struct DocsFile(Tagged<(ContentType, &'static [u8])>);

impl<'r> Responder<'r, 'static> for DocsFile {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'static> {
        let mut response = self.0.respond_to(request)?;
        response.set_header(Header::new(
            "Content-Security-Policy",
            CONTENT_SECURITY_POLICY,
        ));
        Ok(response)
    }
}
