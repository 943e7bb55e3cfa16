//! Request data becomes these types at the edge; handlers and the store only
//! ever see values that already obey the rules.

use std::borrow::Cow;
use std::fmt;

use rocket::form::{self, FromFormField, ValueField};
use rocket::request::FromParam;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error_code::ErrorCode;

/// A value that breaks a rule: which rule (the code) and a sentence for the
/// client. Where it was found decides the HTTP status (the `error` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl Invalid {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Carries the rule through Rocket's form machinery, so that a query
    /// parameter's own code and message reach the client.
    fn into_form_error<'v>(self) -> form::Errors<'v> {
        form::Error::custom(self).into()
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Invalid {}

/// A user id: a decimal integer in 1..=2147483647 (it fits `INT` on every
/// MySQL flavour and in a JavaScript number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UserId(u32);

impl UserId {
    pub const MAX: u32 = i32::MAX as u32;

    /// Only ASCII digits: no sign, space, exponent or hex prefix.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_userid());
        }
        let digits = text.trim_start_matches('0');
        if digits.len() > 10 {
            return Err(invalid_userid());
        }
        match digits.parse::<u64>() {
            Ok(n) if (1..=u64::from(Self::MAX)).contains(&n) => Ok(Self(n as u32)),
            _ => Err(invalid_userid()),
        }
    }

    fn from_json(value: &Value) -> Result<Self, Invalid> {
        match value.as_u64() {
            Some(n) if (1..=u64::from(Self::MAX)).contains(&n) => Ok(Self(n as u32)),
            _ => Err(invalid_userid()),
        }
    }

    /// For rows read back from the table, which only ever held parsed ids.
    pub fn from_stored(n: u32) -> Self {
        Self(n)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

fn invalid_userid() -> Invalid {
    Invalid::new(
        ErrorCode::InvalidUserid,
        "userid must be a decimal integer from 1 to 2147483647",
    )
}

impl<'a> FromParam<'a> for UserId {
    type Error = Invalid;

    fn from_param(param: &'a str) -> Result<Self, Self::Error> {
        Self::parse(param)
    }
}

#[rocket::async_trait]
impl<'v> FromFormField<'v> for UserId {
    fn from_value(field: ValueField<'v>) -> form::Result<'v, Self> {
        Self::parse(field.value).map_err(Invalid::into_form_error)
    }
}

/// A username: 1 to 64 Unicode characters, no control characters, not only
/// white space. Kept exactly as given: no trimming, no normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let chars = text.chars().count();
        let problem = if chars == 0 {
            Some("username must not be empty")
        } else if chars > Self::MAX_CHARS {
            Some("username must be at most 64 characters")
        } else if text.chars().any(char::is_control) {
            Some("username must not contain control characters")
        } else if text.chars().all(char::is_whitespace) {
            Some("username must not be only white space")
        } else {
            None
        };
        match problem {
            Some(message) => Err(Invalid::new(ErrorCode::InvalidUsername, message)),
            None => Ok(Self(text.to_owned())),
        }
    }

    fn from_json(value: &Value) -> Result<Self, Invalid> {
        match value {
            Value::String(text) => Self::parse(text),
            _ => Err(Invalid::new(
                ErrorCode::InvalidUsername,
                "username must be a JSON string",
            )),
        }
    }

    /// For rows read back from the table, which only ever held parsed names.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[rocket::async_trait]
impl<'v> FromFormField<'v> for UserName {
    fn from_value(field: ValueField<'v>) -> form::Result<'v, Self> {
        Self::parse(field.value).map_err(Invalid::into_form_error)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub userid: UserId,
    pub username: UserName,
}

/// A stored user's version: a new one with every write, never reused for the
/// same userid (migrations/20261205000000_users_version.sql says how).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(u64);

impl Version {
    pub fn from_stored(n: u64) -> Self {
        Self(n)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// A user as stored, with the version its representation is tagged with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub user: User,
    pub version: Version,
}

/// What a write requires of the stored version (a request's `If-Match` and
/// `If-None-Match`), decided by the database in the write itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionCondition {
    /// Only if the stored version is one of these; `None`: whatever it is.
    pub one_of: Option<Vec<Version>>,
    /// Only if the stored version is none of these.
    pub none_of: Vec<Version>,
    /// Only if nothing is stored (`If-None-Match: *`): never, for a write
    /// to an existing user.
    pub only_if_absent: bool,
}

/// A conditional write's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional<T> {
    Done(T),
    NotFound,
    /// The user is there, but its version is not what the condition asks.
    PreconditionFailed,
}

/// How many users one page of `GET /users` holds: 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u8);

impl PageSize {
    pub const DEFAULT: Self = Self(20);
    pub const MAX: u8 = 100;

    /// The same digits rule as a userid: only ASCII digits (no sign, space or
    /// exponent; `"+5".parse::<u8>()` alone would take a sign), and leading
    /// zeros are fine: `005` is 5, however many zeros lead.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let invalid = || {
            Invalid::new(
                ErrorCode::InvalidLimit,
                "limit must be an integer from 1 to 100",
            )
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        match text.parse::<u8>() {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(invalid()),
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

#[rocket::async_trait]
impl<'v> FromFormField<'v> for PageSize {
    fn from_value(field: ValueField<'v>) -> form::Result<'v, Self> {
        Self::parse(field.value).map_err(Invalid::into_form_error)
    }
}

/// A JSON request body that turns into a domain value. Syntax errors are the
/// data guard's business.
pub trait FromJson: Sized {
    fn from_json(body: Value) -> Result<Self, Invalid>;
}

fn object(body: Value) -> Result<Map<String, Value>, Invalid> {
    match body {
        Value::Object(fields) => Ok(fields),
        _ => Err(Invalid::new(
            ErrorCode::InvalidBody,
            "the request body must be a JSON object",
        )),
    }
}

fn required<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Invalid> {
    fields.get(name).ok_or_else(|| {
        Invalid::new(
            ErrorCode::MissingField,
            format!("the body needs a \"{name}\" field"),
        )
    })
}

impl FromJson for User {
    fn from_json(body: Value) -> Result<Self, Invalid> {
        let fields = object(body)?;
        Ok(Self {
            userid: UserId::from_json(required(&fields, "userid")?)?,
            username: UserName::from_json(required(&fields, "username")?)?,
        })
    }
}

/// The body of `PUT /users/<id>`.
#[derive(Debug)]
pub struct Rename {
    pub username: UserName,
}

impl FromJson for Rename {
    fn from_json(body: Value) -> Result<Self, Invalid> {
        let fields = object(body)?;
        Ok(Self {
            username: UserName::from_json(required(&fields, "username")?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_broken_rule_reads_as_its_code_and_message() {
        // What Rocket's form machinery and any log line show of it.
        let invalid = UserId::parse("0").unwrap_err();
        assert_eq!(
            invalid.to_string(),
            format!("invalid_userid: {}", invalid.message())
        );
    }

    #[test]
    fn userid_accepts_plain_decimal_in_range() {
        assert_eq!(UserId::parse("1").unwrap().get(), 1);
        assert_eq!(UserId::parse("2147483647").unwrap().get(), 2147483647);
        assert_eq!(UserId::parse("007").unwrap().get(), 7);
    }

    #[test]
    fn userid_rejects_everything_else() {
        for bad in [
            "",
            "0",
            "000",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1e3",
            "0x10",
            "1.0",
            "2147483648",
            "99999999999999999999",
            "١",
            "abc",
        ] {
            let err = UserId::parse(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidUserid, "{bad:?}");
        }
    }

    #[test]
    fn userid_in_json_must_be_an_integer_number() {
        assert!(UserId::from_json(&json!(5)).is_ok());
        for bad in [
            json!("5"),
            json!(5.5),
            json!(-5),
            json!(0),
            json!(2147483648u64),
            json!(null),
        ] {
            assert!(UserId::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_json_body_that_breaks_a_rule_says_which() {
        for (body, code) in [
            (json!({"userid": "1", "username": "x"}), "invalid_userid"),
            (json!({"userid": 1, "username": ""}), "invalid_username"),
            (json!({"userid": 1, "username": 7}), "invalid_username"),
            (json!({"userid": 1}), "missing_field"),
            (json!([1, "x"]), "invalid_body"),
        ] {
            let err = User::from_json(body.clone()).unwrap_err();
            assert_eq!(err.code().as_str(), code, "{body}");
        }
    }

    #[test]
    fn username_rules() {
        assert!(UserName::parse("John").is_ok());
        assert!(UserName::parse(" padded ").is_ok());
        assert!(UserName::parse(&"é".repeat(64)).is_ok());
        assert!(UserName::parse("🦀 漢字 Robert'); DROP TABLE users;--").is_ok());
        for bad in [
            "",
            "   ",
            "\t",
            "a\u{0}b",
            "line\nbreak",
            "bell\u{7}",
            "del\u{7f}",
        ] {
            assert_eq!(
                UserName::parse(bad).unwrap_err().code(),
                ErrorCode::InvalidUsername,
                "{bad:?}"
            );
        }
        assert!(UserName::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn page_size_rules() {
        assert_eq!(PageSize::parse("1").unwrap().get(), 1);
        assert_eq!(PageSize::parse("100").unwrap().get(), 100);
        // Leading zeros as for a userid, however many.
        assert_eq!(PageSize::parse("005").unwrap().get(), 5);
        assert_eq!(PageSize::parse("0005").unwrap().get(), 5);
        assert_eq!(PageSize::parse("0000000100").unwrap().get(), 100);
        for bad in [
            "0", "000", "0101", "101", "256", "1000", "-1", "+5", " 5", "5 ", "", "1e2", "0x5",
        ] {
            let err = PageSize::parse(bad).unwrap_err();
            assert_eq!(err.code().as_str(), "invalid_limit", "{bad:?}");
        }
    }
}
