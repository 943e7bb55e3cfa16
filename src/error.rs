//! One error type, one JSON shape: `{"error": "<code>", "message": "<text>"}`:
//! what the layers below report ([`Invalid`], [`DbError`]) becomes an HTTP
//! answer here, and so does every status Rocket raises by itself.

use std::borrow::Cow;
use std::fmt;
use std::io::Cursor;

use rocket::form;
use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::{Catcher, catch, catchers};
use serde::Serialize;

use crate::db::DbError;
use crate::domain::Invalid;
use crate::error_code::ErrorCode;
use crate::request_id::RequestId;

#[derive(Debug, Clone)]
pub struct ApiError {
    status: Status,
    code: ErrorCode,
    message: Cow<'static, str>,
    allow: Option<String>,
    /// What went wrong inside, for the log line of a 500; never sent.
    cause: Option<String>,
}

/// The code a request was answered with, when it was an error: left in the
/// request's cache for the metrics, which count answers by code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered(pub Option<ErrorCode>);

impl Answered {
    pub fn of(request: &Request<'_>) -> Option<ErrorCode> {
        request.local_cache(|| Answered(None)).0
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An answer with the code's own status.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
            allow: None,
            cause: None,
        }
    }

    /// The same complaint about a well-formed JSON body: 422 instead of 400.
    pub fn unprocessable(self) -> Self {
        Self {
            status: Status::UnprocessableEntity,
            ..self
        }
    }

    pub fn user_not_found() -> Self {
        Self::new(ErrorCode::UserNotFound, "no user has this userid")
    }

    pub fn user_exists() -> Self {
        Self::new(
            ErrorCode::UserExists,
            "a user with this userid already exists",
        )
    }

    /// RFC 9110 13.1.1: the user is there, but not in the version the
    /// client's `If-Match` names (or `If-None-Match` excludes).
    pub fn precondition_failed() -> Self {
        Self::new(
            ErrorCode::PreconditionFailed,
            "the user has changed since the version your If-Match names: read it again, then \
             retry with its new ETag",
        )
    }

    pub fn database_unavailable() -> Self {
        Self::new(
            ErrorCode::DatabaseUnavailable,
            "the database is not reachable right now; retry shortly",
        )
    }

    /// A statement was sent, then the database stopped answering (timeout
    /// or lost connection): unlike [`Self::database_unavailable`], a write
    /// may still have been applied.
    pub fn database_interrupted() -> Self {
        Self::new(
            ErrorCode::DatabaseInterrupted,
            "the database stopped answering during the request; a write may still have been \
             applied, so read before retrying it",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "the server failed to handle this request",
        )
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// Turns the outcome of a query-parameter guard into the domain value.
    pub fn from_param<T>(name: &'static str, parsed: form::Result<'_, T>) -> Result<T, Self> {
        Self::from_optional_param(name, parsed)?.ok_or_else(|| {
            Self::new(
                ErrorCode::MissingParameter,
                format!("the query needs a \"{name}\" parameter"),
            )
        })
    }

    /// Like [`Self::from_param`], for a parameter that may be left out.
    pub fn from_optional_param<T>(
        name: &'static str,
        parsed: form::Result<'_, T>,
    ) -> Result<Option<T>, Self> {
        let errors = match parsed {
            Ok(value) => return Ok(Some(value)),
            Err(errors) => errors,
        };
        for error in errors.iter() {
            match &error.kind {
                form::error::ErrorKind::Missing => return Ok(None),
                form::error::ErrorKind::Custom(_, inner) => {
                    if let Some(invalid) = inner.downcast_ref::<Invalid>() {
                        return Err(invalid.clone().into());
                    }
                }
                _ => {}
            }
        }
        Err(Self::new(
            ErrorCode::InvalidParameter,
            format!("the \"{name}\" parameter is invalid"),
        ))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A rule broken in a query or path parameter: the code's own status (400).
impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        Self::new(invalid.code(), invalid.message().to_owned())
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Unavailable => Self::database_unavailable(),
            DbError::Interrupted => Self::database_interrupted(),
            DbError::Failed(cause) => Self {
                cause: Some(cause),
                ..Self::internal()
            },
        }
    }
}

impl<'r> Responder<'r, 'static> for ApiError {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'static> {
        // Every error answer passes here, the catchers' too.
        request.local_cache(|| Answered(Some(self.code)));
        if let Some(cause) = &self.cause {
            tracing::error!(
                request_id = %RequestId::of(request).0,
                code = %self.code,
                cause = %cause,
                "request failed"
            );
        }
        let body = serde_json::to_string(&Body {
            error: self.code.as_str(),
            message: &self.message,
        })
        .map_err(|_| Status::InternalServerError)?;
        let mut response = Response::build();
        response
            .status(self.status)
            .header(ContentType::JSON)
            .sized_body(body.len(), Cursor::new(body));
        if let Some(allow) = self.allow {
            response.header(Header::new("Allow", allow));
        }
        if self.status == Status::ServiceUnavailable {
            response.header(Header::new("Retry-After", "1"));
        }
        Ok(response.finalize())
    }
}

/// Everything Rocket answers by itself (no route, a guard that failed, a
/// panic) still gets the JSON shape.
pub fn catchers() -> Vec<Catcher> {
    catchers![any_status]
}

#[catch(default)]
fn any_status(status: Status, request: &Request<'_>) -> ApiError {
    match status.code {
        404 => match allowed_methods(request) {
            Some(allow) => ApiError {
                allow: Some(allow),
                ..ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    format!("{} is not allowed on this path", request.method()),
                )
            },
            None => ApiError::new(ErrorCode::NotFound, "no such path"),
        },
        400 => ApiError::new(ErrorCode::BadRequest, "the request could not be understood"),
        413 => ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large"),
        415 => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
        ),
        422 => ApiError::new(
            ErrorCode::Unprocessable,
            "the request could not be processed",
        ),
        503 => ApiError::database_unavailable(),
        500..=599 => ApiError::internal(),
        _ => ApiError {
            status,
            ..ApiError::new(ErrorCode::Other, status.reason_lossy().to_owned())
        },
    }
}

/// Rocket answers 404 when no route has the request's method; when another
/// method would have matched the path, the right answer is 405 + `Allow`.
/// Derived from the mounted routes, so it never drifts from them.
fn allowed_methods(request: &Request<'_>) -> Option<String> {
    let path: Vec<&str> = request.uri().path().segments().collect();
    let mut methods: Vec<&str> = request
        .rocket()
        .routes()
        .filter(|route| route_matches_path(route.uri.path(), &path))
        .map(|route| route.method.as_str())
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    // None, or the route for this very method answered 404 itself (a file
    // that Swagger UI does not have): the path is not there.
    if methods.is_empty() || methods.contains(&request.method().as_str()) {
        return None;
    }
    methods.sort_unstable();
    methods.dedup();
    Some(methods.join(", "))
}

fn route_matches_path(pattern: &str, path: &[&str]) -> bool {
    let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let prefix_matches =
        |prefix: &[&str]| prefix.iter().zip(path).all(|(p, s)| segment_matches(p, s));
    match pattern.split_last() {
        // `<name..>` takes whatever follows, nothing included.
        Some((last, before)) if last.ends_with("..>") => {
            path.len() >= before.len() && prefix_matches(before)
        }
        _ => pattern.len() == path.len() && prefix_matches(&pattern),
    }
}

fn segment_matches(pattern: &str, segment: &str) -> bool {
    (pattern.starts_with('<') && pattern.ends_with('>')) || pattern == segment
}

#[cfg(test)]
mod tests {
    use super::*;

    use rocket::local::blocking::Client;
    use rocket::{get, routes};

    /// A handler that answers a bare status, as Rocket does itself for a
    /// failed guard, an oversized form or a panic: the catcher answers.
    #[get("/status/<code>")]
    fn bare(code: u16) -> Status {
        Status::from_code(code).unwrap()
    }

    #[test]
    fn statuses_rocket_raises_itself_get_the_json_shape() {
        let rocket = rocket::custom(rocket::Config::debug_default())
            .mount("/", routes![bare])
            .register("/", catchers());
        let client = Client::untracked(rocket).unwrap();
        for (raised, status, code) in [
            (400, 400, "bad_request"),
            (413, 413, "payload_too_large"),
            (415, 415, "unsupported_media_type"),
            (422, 422, "unprocessable"),
            (500, 500, "internal"),
            // No upstream behind the API: any other 5xx is its own failure.
            (502, 500, "internal"),
            (503, 503, "database_unavailable"),
            (418, 418, "error"),
        ] {
            let response = client.get(format!("/status/{raised}")).dispatch();
            assert_eq!(response.status().code, status, "{raised}");
            assert_eq!(response.content_type(), Some(ContentType::JSON));
            let retry_after = response.headers().get_one("Retry-After").map(str::to_owned);
            assert_eq!(
                retry_after.as_deref(),
                (status == 503).then_some("1"),
                "{raised}"
            );
            let body: serde_json::Value = response.into_json().unwrap();
            assert_eq!(body["error"], code, "{raised}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{raised}"
            );
        }
    }

    #[test]
    fn the_body_carries_the_code_and_the_status_follows_it() {
        let error = ApiError::new(ErrorCode::UserExists, "taken");
        assert_eq!(error.status(), Status::Conflict);
        assert_eq!(error.to_string(), "user_exists: taken");
        let in_body = ApiError::new(ErrorCode::InvalidUserid, "bad").unprocessable();
        assert_eq!(in_body.status(), Status::UnprocessableEntity);
        assert_eq!(in_body.code(), ErrorCode::InvalidUserid);
    }

    #[test]
    fn database_failures_are_503_only_when_worth_a_retry() {
        for (failure, status, code) in [
            (DbError::Unavailable, 503, "database_unavailable"),
            (DbError::Interrupted, 503, "database_interrupted"),
            (DbError::Failed("no such table".into()), 500, "internal"),
        ] {
            let error = ApiError::from(failure);
            assert_eq!((error.status().code, error.code().as_str()), (status, code));
        }
        // The cause is for the log only.
        let error = ApiError::from(DbError::Failed("Table 'x' doesn't exist".into()));
        assert!(!error.to_string().contains("Table"), "{error}");
    }

    #[test]
    fn a_rule_broken_in_a_parameter_is_a_400_with_the_rules_own_code() {
        let error = ApiError::from(Invalid::new(ErrorCode::InvalidUsername, "too long"));
        assert_eq!(error.status(), Status::BadRequest);
        assert_eq!(error.to_string(), "invalid_username: too long");
    }

    #[test]
    fn display_is_code_then_message() {
        let error = ApiError::new(ErrorCode::InvalidLimit, "limit must be an integer");
        assert_eq!(error.to_string(), "invalid_limit: limit must be an integer");
    }
}
