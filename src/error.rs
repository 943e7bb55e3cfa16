//! One error type, one JSON shape: `{"error": "<code>", "message": "<text>"}`.

use std::borrow::Cow;
use std::fmt;
use std::io::Cursor;

use rocket::form;
use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::{Catcher, catch, catchers};
use serde::Serialize;

use crate::log;
use crate::metrics::Metrics;

/// Every code the API can answer with: the `error` field of the JSON body,
/// the `code` label of `user_api_errors_total`, and the enum of the OpenAPI
/// document's `Error` schema (a test checks that the document lists exactly
/// [`ErrorCode::ALL`]). A closed type, so that none of the three can name a
/// code the others do not know.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::VariantArray,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    InvalidUserid,
    InvalidUsername,
    InvalidLimit,
    MissingParameter,
    DuplicateParameter,
    InvalidParameter,
    InvalidEncoding,
    MissingField,
    InvalidBody,
    MalformedJson,
    UnreadableBody,
    UnsupportedMediaType,
    PayloadTooLarge,
    UserNotFound,
    UserExists,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    Unprocessable,
    DatabaseUnavailable,
    DatabaseInterrupted,
    Internal,
    /// A status Rocket raised by itself that no other code describes; the
    /// answer keeps Rocket's status.
    #[strum(serialize = "error")]
    Other,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = <Self as strum::VariantArray>::VARIANTS;

    /// The snake_case code sent to clients.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The status this code is answered with. The one exception: a value
    /// rule broken inside a well-formed JSON body (`invalid_userid`,
    /// `invalid_username`) is 422 rather than 400, see [`ApiError::unprocessable`].
    pub fn status(self) -> Status {
        use ErrorCode as C;
        match self {
            C::InvalidUserid
            | C::InvalidUsername
            | C::InvalidLimit
            | C::MissingParameter
            | C::DuplicateParameter
            | C::InvalidParameter
            | C::InvalidEncoding
            | C::MalformedJson
            | C::UnreadableBody
            | C::BadRequest
            | C::Other => Status::BadRequest,
            C::MissingField | C::InvalidBody | C::Unprocessable => Status::UnprocessableEntity,
            C::UnsupportedMediaType => Status::UnsupportedMediaType,
            C::PayloadTooLarge => Status::PayloadTooLarge,
            C::UserNotFound | C::NotFound => Status::NotFound,
            C::UserExists => Status::Conflict,
            C::MethodNotAllowed => Status::MethodNotAllowed,
            C::DatabaseUnavailable | C::DatabaseInterrupted => Status::ServiceUnavailable,
            C::Internal => Status::InternalServerError,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    status: Status,
    code: ErrorCode,
    message: Cow<'static, str>,
    allow: Option<String>,
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

    /// The connection failed under a statement already sent.
    pub fn is_interruption(error: &sqlx::Error) -> bool {
        use sqlx::Error as E;
        match error {
            E::Io(_) | E::Tls(_) | E::Protocol(_) | E::WorkerCrashed => true,
            E::Database(db) => db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| matches!(e.number(), 1053 | 1927 | 2006 | 2013)),
            _ => false,
        }
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

    /// Carries the error through Rocket's form machinery so that a query
    /// parameter's own message and code reach the client.
    pub fn into_form_error<'v>(self) -> form::Errors<'v> {
        form::Error::custom(self).into()
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
                    if let Some(api) = inner.downcast_ref::<ApiError>() {
                        return Err(api.clone());
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

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::database_unavailable()
            }
            E::Database(db)
                if db
                    .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|e| is_transient_server_error(e.number())) =>
            {
                Self::database_unavailable()
            }
            _ => {
                log::error(&format!("database error: {error}"));
                Self::internal()
            }
        }
    }
}

/// MySQL/MariaDB error numbers that mean "try again", not "bug".
fn is_transient_server_error(number: u16) -> bool {
    matches!(
        number,
        1040 // too many connections
            | 1053 // server shutdown in progress
            | 1205 // lock wait timeout
            | 1213 // deadlock
            | 1927 // connection killed
            | 2006 // server has gone away
            | 2013 // lost connection
    )
}

impl<'r> Responder<'r, 'static> for ApiError {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'static> {
        // Every error answer passes here, the catchers' too: counted once.
        if let Some(metrics) = request.rocket().state::<Metrics>() {
            metrics.error(self.code);
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
    if methods.is_empty() {
        return None;
    }
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods.sort_unstable();
    methods.dedup();
    Some(methods.join(", "))
}

fn route_matches_path(pattern: &str, path: &[&str]) -> bool {
    let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    pattern.len() == path.len() && pattern.iter().zip(path).all(|(p, s)| segment_matches(p, s))
}

fn segment_matches(pattern: &str, segment: &str) -> bool {
    (pattern.starts_with('<') && pattern.ends_with('>')) || pattern == segment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_snake_case_unique_and_round_trips() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(
                !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text:?}"
            );
            assert!(seen.insert(text), "{text} twice");
            assert_eq!(text.parse::<ErrorCode>(), Ok(code));
            assert!(code.status().code >= 400, "{text}");
        }
    }

    /// The metrics index their per-code counters by `code as usize`.
    #[test]
    fn all_is_in_declaration_order() {
        for (i, &code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code as usize, i, "{code}");
        }
    }

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
    fn only_transient_server_errors_mean_try_again() {
        for retry in [1040, 1053, 1205, 1213, 1927, 2006, 2013] {
            assert!(is_transient_server_error(retry), "{retry}");
        }
        // Duplicate key, syntax error, unknown table, access denied: bugs or
        // configuration, not worth a retry.
        for bug in [1062, 1064, 1146, 1045] {
            assert!(!is_transient_server_error(bug), "{bug}");
        }
    }

    #[test]
    fn a_lost_connection_under_a_sent_statement_is_an_interruption() {
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(ApiError::is_interruption(&sqlx::Error::Io(lost)));
        assert!(ApiError::is_interruption(&sqlx::Error::Protocol(
            "packet out of order".into()
        )));
        assert!(ApiError::is_interruption(&sqlx::Error::WorkerCrashed));
        // Never sent, or answered: not an interruption.
        assert!(!ApiError::is_interruption(&sqlx::Error::PoolTimedOut));
        assert!(!ApiError::is_interruption(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn display_is_code_then_message() {
        let error = ApiError::new(ErrorCode::InvalidLimit, "limit must be an integer");
        assert_eq!(error.to_string(), "invalid_limit: limit must be an integer");
    }

    #[test]
    fn sqlx_errors_map_to_503_or_500() {
        for gone in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
        ] {
            assert_eq!(ApiError::from(gone).code(), ErrorCode::DatabaseUnavailable);
        }
        let bug = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(
            (bug.status(), bug.code()),
            (Status::InternalServerError, ErrorCode::Internal)
        );
    }
}
