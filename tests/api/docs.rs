//! Swagger UI at `/docs/` (src/routes/docs.rs), over real HTTP: on the API
//! and through nginx with the shipped configuration. The browser test
//! (tests/browser) proves the page works; these prove what it is served with.

use std::net::SocketAddr;

use crate::helpers::{HttpResponse, Nginx, Served, TestDb, figment, request, serve, shared_server};

const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

struct Docs {
    _db: TestDb,
    _app: Served,
    _nginx: Nginx,
    ways: [(&'static str, SocketAddr); 2],
}

impl Docs {
    async fn start(enabled: bool) -> Docs {
        let db = TestDb::create(shared_server()).await;
        let app = serve(figment(&db.url()).merge(("docs", enabled))).await;
        let addr = app.addr;
        let nginx = tokio::task::block_in_place(|| Nginx::start(addr, &[]));
        let ways = [("api", addr), ("nginx", nginx.public)];
        Docs {
            _db: db,
            _app: app,
            _nginx: nginx,
            ways,
        }
    }
}

/// GET, or HEAD for the icons: the test client reads bodies as text.
async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let method = if target.ends_with(".png") {
        "HEAD"
    } else {
        "GET"
    };
    request(addr, method, target, headers, None)
        .await
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// Every `src="..."` and `href="..."` of the page: the files it loads.
fn linked_files(html: &str) -> Vec<String> {
    let mut files = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let rest = &html[at + attribute.len()..];
            let link = &rest[..rest.find('"').unwrap()];
            files.push(link.trim_start_matches("./").to_owned());
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_and_every_file_it_loads_come_with_a_validator_and_the_page_policy() {
    let docs = Docs::start(true).await;
    for (way, addr) in docs.ways {
        let page = get(addr, "/docs/", &[]).await;
        assert_eq!(page.status, 200, "{way}: {}", page.body);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let files = linked_files(&page.body);
        for expected in [
            "swagger-ui-bundle.js",
            "swagger-initializer.js",
            "swagger-ui.css",
        ] {
            assert!(files.iter().any(|f| f == expected), "{way}: {files:?}");
        }
        for file in [String::new()].iter().chain(&files) {
            let target = format!("/docs/{file}");
            let answer = get(addr, &target, &[]).await;
            assert_eq!(answer.status, 200, "{way} {target}: {}", answer.body);
            assert_eq!(
                answer.header("content-security-policy"),
                Some(PAGE_POLICY),
                "{way} {target}"
            );
            assert_eq!(
                answer.header("cache-control"),
                Some("no-cache"),
                "{way} {target}"
            );
            assert_eq!(
                answer.header("x-content-type-options"),
                Some("nosniff"),
                "{way} {target}"
            );
            if way == "nginx" {
                assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{target}");
            }
            let etag = answer.header("etag").expect("an ETag").to_owned();
            let again = get(addr, &target, &[("If-None-Match", &etag)]).await;
            assert_eq!(again.status, 304, "{way} {target}");
            assert_eq!(again.body, "", "{way} {target}");
            assert_eq!(again.header("etag"), Some(etag.as_str()), "{way} {target}");
        }
        let script = get(addr, "/docs/swagger-ui-bundle.js", &[]).await;
        assert_eq!(
            script.header("content-type"),
            Some("text/javascript"),
            "{way}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_reads_this_apis_document_and_sends_it_nowhere_else() {
    let docs = Docs::start(true).await;
    for (way, addr) in docs.ways {
        let initializer = get(addr, "/docs/swagger-initializer.js", &[]).await;
        assert_eq!(initializer.status, 200, "{way}");
        let body = initializer.body.replace(char::is_whitespace, "");
        assert!(body.contains(r#""url":"/openapi.json""#), "{way}: {body}");
        // Swagger UI's default validator badge posts the document to
        // validator.swagger.io.
        assert!(body.contains(r#""validatorUrl":"none""#), "{way}: {body}");
        let document = get(addr, "/openapi.json", &[]).await;
        assert_eq!(document.status, 200, "{way}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docs_without_the_slash_redirects_keeping_the_query() {
    let docs = Docs::start(true).await;
    for (way, addr) in docs.ways {
        let answer = get(addr, "/docs", &[]).await;
        assert_eq!(answer.status, 308, "{way}: {}", answer.body);
        assert_eq!(answer.header("location"), Some("/docs/"), "{way}");
        let answer = get(addr, "/docs?filter=users", &[]).await;
        assert_eq!(
            answer.header("location"),
            Some("/docs/?filter=users"),
            "{way}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_files_and_other_methods_get_the_apis_json_errors() {
    let docs = Docs::start(true).await;
    for (way, addr) in docs.ways {
        for target in [
            "/docs/nothing.js",
            "/docs/a/b/c",
            "/docs/../openapi.json",
            "/docs/.env",
        ] {
            let answer = get(addr, target, &[]).await;
            assert_eq!(answer.status, 404, "{way} {target}: {}", answer.body);
            assert_eq!(answer.error_code(), "not_found", "{way} {target}");
            assert_eq!(
                answer.header("cache-control"),
                Some("no-store"),
                "{way} {target}"
            );
        }
        for target in ["/docs/", "/docs/index.html", "/docs/a/b"] {
            let answer = request(addr, "POST", target, &[], Some(b"{}"))
                .await
                .unwrap();
            assert_eq!(answer.status, 405, "{way} POST {target}: {}", answer.body);
            assert_eq!(answer.error_code(), "method_not_allowed", "{way} {target}");
            assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{way} {target}");
        }
        let answer = get(addr, "/docs/", &[("If-None-Match", "not a tag")]).await;
        assert_eq!(answer.status, 400, "{way}");
        assert_eq!(answer.error_code(), "invalid_entity_tag", "{way}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn turned_off_there_is_no_page() {
    let docs = Docs::start(false).await;
    for (way, addr) in docs.ways {
        for target in ["/docs", "/docs/", "/docs/swagger-ui-bundle.js"] {
            let answer = get(addr, target, &[]).await;
            assert_eq!(answer.status, 404, "{way} {target}: {}", answer.body);
            assert_eq!(answer.error_code(), "not_found", "{way} {target}");
        }
    }
}
