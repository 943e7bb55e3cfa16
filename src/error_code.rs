//! The closed list of error codes: a leaf every layer may name, so that no
//! layer below HTTP has to import the HTTP error type to say what went wrong.

use std::fmt;

use rocket::http::Status;

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
    InvalidEntityTag,
    UserNotFound,
    UserExists,
    PreconditionFailed,
    PreconditionRequired,
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
    /// `invalid_username`) is 422 rather than 400 (`ApiError::unprocessable`).
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
            | C::InvalidEntityTag
            | C::BadRequest
            | C::Other => Status::BadRequest,
            C::MissingField | C::InvalidBody | C::Unprocessable => Status::UnprocessableEntity,
            C::UnsupportedMediaType => Status::UnsupportedMediaType,
            C::PayloadTooLarge => Status::PayloadTooLarge,
            C::UserNotFound | C::NotFound => Status::NotFound,
            C::UserExists => Status::Conflict,
            C::PreconditionFailed => Status::PreconditionFailed,
            C::PreconditionRequired => Status::PreconditionRequired,
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
}
