//! Request and data guards that turn raw HTTP into domain values or a JSON
//! error. Handlers take `Result<Guard, ApiError>` and use `?`.

use rocket::data::{self, Data, FromData, ToByteUnit};
use rocket::http::RawStr;
use rocket::outcome::Outcome;
use rocket::request::{self, FromRequest, Request};

use crate::domain::{FromJson, Invalid};
use crate::error::ApiError;
use crate::error_code::ErrorCode;

/// The API takes tiny bodies; nginx's `client_max_body_size` matches.
pub const BODY_LIMIT_BYTES: u64 = 16 * 1024;

/// A JSON body parsed into `T`: 415 for another media type, 413 past the
/// limit, 400 for malformed JSON, 422 for a well-formed body that breaks a
/// rule (the same rule broken in a query parameter is a 400).
pub struct JsonBody<T>(pub T);

#[rocket::async_trait]
impl<'r, T: FromJson> FromData<'r> for JsonBody<T> {
    type Error = ApiError;

    async fn from_data(request: &'r Request<'_>, data: Data<'r>) -> data::Outcome<'r, Self> {
        match parse(request, data).await {
            Ok(value) => Outcome::Success(JsonBody(value)),
            Err(error) => Outcome::Error((error.status(), error)),
        }
    }
}

async fn parse<T: FromJson>(request: &Request<'_>, data: Data<'_>) -> Result<T, ApiError> {
    let is_json = request.content_type().is_some_and(|ct| {
        ct.top() == "application"
            && (ct.sub() == "json" || ct.sub().as_str().to_ascii_lowercase().ends_with("+json"))
    });
    if !is_json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be sent as Content-Type: application/json",
        ));
    }
    let bytes = data
        .open(BODY_LIMIT_BYTES.bytes())
        .into_bytes()
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::UnreadableBody,
                "the request body could not be read",
            )
        })?;
    if !bytes.is_complete() {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body must be at most {BODY_LIMIT_BYTES} bytes"),
        ));
    }
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    T::from_json(value).map_err(broken_in_body)
}

fn broken_in_body(invalid: Invalid) -> ApiError {
    ApiError::from(invalid).unprocessable()
}

/// Checks what Rocket's query parsing lets through: it decodes lossily (bad
/// UTF-8 would become U+FFFD, and a name must be stored exactly as sent) and
/// silently keeps the first of repeated parameters (ambiguous: refused).
pub struct StrictQuery;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for StrictQuery {
    type Error = ApiError;

    async fn from_request(request: &'r Request<'_>) -> request::Outcome<Self, Self::Error> {
        match check_query(request) {
            Ok(()) => Outcome::Success(StrictQuery),
            Err(error) => Outcome::Error((error.status(), error)),
        }
    }
}

fn check_query(request: &Request<'_>) -> Result<(), ApiError> {
    let Some(query) = request.uri().query() else {
        return Ok(());
    };
    let mut seen = Vec::new();
    for pair in query.raw().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.as_str().split_once('=').unwrap_or((pair.as_str(), ""));
        let decode = |part: &str| RawStr::new(part).url_decode().map(|d| d.into_owned());
        let (Ok(name), Ok(_)) = (decode(name), decode(value)) else {
            return Err(ApiError::new(
                ErrorCode::InvalidEncoding,
                "the query string is not valid percent-encoded UTF-8",
            ));
        };
        if seen.contains(&name) {
            return Err(ApiError::new(
                ErrorCode::DuplicateParameter,
                format!("the query gives \"{name}\" more than once"),
            ));
        }
        seen.push(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{User, UserName};
    use rocket::http::Status;
    use serde_json::json;

    #[test]
    fn a_json_body_that_breaks_a_rule_is_422_and_says_which() {
        for (body, code) in [
            (json!({"userid": "1", "username": "x"}), "invalid_userid"),
            (json!({"userid": 1, "username": ""}), "invalid_username"),
            (json!({"userid": 1}), "missing_field"),
            (json!([1, "x"]), "invalid_body"),
        ] {
            let err = broken_in_body(User::from_json(body.clone()).unwrap_err());
            assert_eq!(
                (err.status(), err.code().as_str()),
                (Status::UnprocessableEntity, code),
                "{body}"
            );
        }
        // The same rule in a query parameter is a 400.
        let err = ApiError::from(UserName::parse("").unwrap_err());
        assert_eq!(err.status(), Status::BadRequest);
    }
}
