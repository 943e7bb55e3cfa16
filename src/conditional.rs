//! Validators and conditional requests (RFC 9110, sections 8.8.3 and 13):
//! entity tags, `If-Match` / `If-None-Match`, `304 Not Modified`, and the
//! caching rule of every answer. Hand-written: no maintained crate parses
//! entity-tag lists for Rocket 0.5 (the `headers` crate types need hyper 1's
//! `HeaderValue`, and Rocket 0.5 does not expose them).

use std::io::Cursor;

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::{Header, Status};
use rocket::outcome::Outcome;
use rocket::request::{self, FromRequest, Request};
use rocket::response::{self, Responder, Response};
use sha2::{Digest, Sha256};

use crate::domain::{StoredUser, UserId, Version, VersionCondition};
use crate::error::ApiError;
use crate::error_code::ErrorCode;

/// User data: never stored by a shared cache (a CDN, a company proxy: it is
/// one account's record), and revalidated with its ETag before any reuse.
pub const PRIVATE_REVALIDATE: &str = "private, no-cache";
/// The OpenAPI document: the same for everyone, fine to keep for a while.
pub const PUBLIC_FOR_AN_HOUR: &str = "public, max-age=3600";
/// Swagger UI's files: the same for everyone, revalidated before each reuse
/// (a new release may serve other files under the same names).
pub const ALWAYS_REVALIDATE: &str = "no-cache";
/// Everything else (errors, health, metrics): never stored.
pub const NEVER_STORE: &str = "no-store";

/// One entity tag: `"opaque"` or weak `W/"opaque"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    weak: bool,
    opaque: String,
}

impl EntityTag {
    pub fn strong(opaque: impl Into<String>) -> Self {
        Self {
            weak: false,
            opaque: opaque.into(),
        }
    }

    /// A stored user's: its version.
    pub fn of_user(version: Version) -> Self {
        Self::strong(version.get().to_string())
    }

    /// A page of users as served: every user's id and version, and the
    /// cursor (a user added after the page's last changes `next_after`).
    pub fn of_page(users: &[StoredUser], next_after: Option<UserId>) -> Self {
        let mut hash = Sha256::new();
        for stored in users {
            hash.update(stored.user.userid.get().to_be_bytes());
            hash.update(stored.version.get().to_be_bytes());
        }
        hash.update(next_after.map_or(0, UserId::get).to_be_bytes());
        Self::strong(format!("p{}", hex(&hash.finalize()[..12])))
    }

    /// Fixed content: a digest of it.
    pub fn of_bytes(content: &[u8]) -> Self {
        Self::strong(format!("d{}", hex(&Sha256::digest(content)[..12])))
    }

    /// The version a user's tag names, if it is one of ours.
    fn version(&self) -> Option<Version> {
        // Character for character what `of_user` writes: a strong comparison
        // must not let "05" or "+5" match "5", as `u64::from_str` would.
        let digits = &self.opaque;
        if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Version::from_stored)
    }

    /// RFC 9110 8.8.3.2: weak comparison ignores `W/`.
    fn weakly_equals(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }
}

impl std::fmt::Display for EntityTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let weak = if self.weak { "W/" } else { "" };
        write!(f, "{weak}\"{}\"", self.opaque)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of an `If-Match` or `If-None-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tags {
    Any,
    List(Vec<EntityTag>),
}

impl Tags {
    /// `"*"` or a comma-separated list of entity tags, empty elements and
    /// an empty list allowed (RFC 9110 5.6.1). A header sent more than once arrives here joined by
    /// commas, as RFC 9110 5.3 combines field lines.
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        if value.trim_matches([' ', '\t']) == "*" {
            return Ok(Self::Any);
        }
        let mut tags = Vec::new();
        let mut rest = value;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let (weak, quoted) = match rest.strip_prefix("W/") {
                Some(after) => (true, after),
                None => (false, rest),
            };
            let body = quoted.strip_prefix('"').ok_or_else(malformed)?;
            let end = body.find('"').ok_or_else(malformed)?;
            let opaque = &body[..end];
            // etagc: %x21 / %x23-7E / obs-text; no space, quote or control.
            if !opaque
                .chars()
                .all(|c| c == '!' || ('#'..='~').contains(&c) || c >= '\u{80}')
            {
                return Err(malformed());
            }
            tags.push(EntityTag {
                weak,
                opaque: opaque.to_owned(),
            });
            rest = &body[end + 1..];
            let next = rest.trim_start_matches([' ', '\t']);
            if !(next.is_empty() || next.starts_with(',')) {
                return Err(malformed());
            }
        }
        // An empty value is an empty list (RFC 9110 5.6.1 allows zero
        // elements): it names nothing, so If-None-Match holds, If-Match fails.
        Ok(Self::List(tags))
    }

    /// `If-None-Match` against a current tag: weak comparison.
    pub fn any_weakly_matches(&self, current: &EntityTag) -> bool {
        match self {
            Self::Any => true,
            Self::List(tags) => tags.iter().any(|t| t.weakly_equals(current)),
        }
    }
}

fn malformed() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidEntityTag,
        "If-Match and If-None-Match take \"*\" or a list of entity tags, e.g. \"42\", W/\"42\"",
    )
}

/// Every value of a header, joined as RFC 9110 5.3 combines repeated lines.
fn header_tags(request: &Request<'_>, name: &str) -> Result<Option<Tags>, ApiError> {
    let values: Vec<&str> = request.headers().get(name).collect();
    if values.is_empty() {
        return Ok(None);
    }
    Tags::parse(&values.join(", ")).map(Some)
}

/// A read's `If-None-Match`.
pub struct IfNoneMatch(Option<Tags>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for IfNoneMatch {
    type Error = ApiError;

    async fn from_request(request: &'r Request<'_>) -> request::Outcome<Self, Self::Error> {
        match header_tags(request, "If-None-Match") {
            Ok(tags) => Outcome::Success(Self(tags)),
            Err(error) => Outcome::Error((error.status(), error)),
        }
    }
}

/// Whether writes must say which version they replace (`If-Match`), else
/// 428: the `require_if_match` setting, managed by `build()`.
#[derive(Debug, Clone, Copy)]
pub struct RequireIfMatch(pub bool);

/// A write's `If-Match` and `If-None-Match`, as the condition the database
/// applies in the write itself.
pub struct WriteCondition(pub VersionCondition);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for WriteCondition {
    type Error = ApiError;

    async fn from_request(request: &'r Request<'_>) -> request::Outcome<Self, Self::Error> {
        match write_condition(request) {
            Ok(condition) => Outcome::Success(Self(condition)),
            Err(error) => Outcome::Error((error.status(), error)),
        }
    }
}

fn write_condition(request: &Request<'_>) -> Result<VersionCondition, ApiError> {
    let if_match = header_tags(request, "If-Match")?;
    let if_none_match = header_tags(request, "If-None-Match")?;
    let required = request
        .rocket()
        .state::<RequireIfMatch>()
        .is_some_and(|r| r.0);
    if required && if_match.is_none() {
        return Err(ApiError::new(
            ErrorCode::PreconditionRequired,
            "this server requires If-Match on writes: send the ETag you read",
        ));
    }
    Ok(condition(if_match, if_none_match))
}

/// Only our own user tags can name a version: any other tag matches none.
/// `If-Match` compares strongly (a weak tag never matches), `If-None-Match`
/// weakly.
fn condition(if_match: Option<Tags>, if_none_match: Option<Tags>) -> VersionCondition {
    let versions = |tags: &[EntityTag], strong_only: bool| -> Vec<Version> {
        tags.iter()
            .filter(|t| !(strong_only && t.weak))
            .filter_map(EntityTag::version)
            .collect()
    };
    let mut condition = VersionCondition::default();
    if let Some(Tags::List(tags)) = &if_match {
        condition.one_of = Some(versions(tags, true));
    }
    match &if_none_match {
        Some(Tags::Any) => condition.only_if_absent = true,
        Some(Tags::List(tags)) => condition.none_of = versions(tags, false),
        None => {}
    }
    condition
}

/// A representation with its validator and caching rule, or `304 Not
/// Modified` when the client's `If-None-Match` already names it.
pub struct Tagged<R> {
    etag: EntityTag,
    cache_control: &'static str,
    body: Option<R>,
}

impl<R> Tagged<R> {
    /// User data: `private, no-cache`.
    pub fn user_data(etag: EntityTag, body: R, if_none_match: &IfNoneMatch) -> Self {
        Self::new(etag, PRIVATE_REVALIDATE, body, if_none_match)
    }

    pub fn new(
        etag: EntityTag,
        cache_control: &'static str,
        body: R,
        if_none_match: &IfNoneMatch,
    ) -> Self {
        let unchanged = if_none_match
            .0
            .as_ref()
            .is_some_and(|tags| tags.any_weakly_matches(&etag));
        Self {
            etag,
            cache_control,
            body: (!unchanged).then_some(body),
        }
    }

    /// A representation just written: no condition to check.
    pub fn written(etag: EntityTag, body: R) -> Self {
        Self {
            etag,
            cache_control: PRIVATE_REVALIDATE,
            body: Some(body),
        }
    }
}

impl<'r, R: Responder<'r, 'static>> Responder<'r, 'static> for Tagged<R> {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'static> {
        let mut response = match self.body {
            Some(body) => body.respond_to(request)?,
            None => Response::build()
                .status(Status::NotModified)
                .sized_body(0, Cursor::new(Vec::new()))
                .finalize(),
        };
        response.set_header(Header::new("ETag", self.etag.to_string()));
        response.set_header(Header::new("Cache-Control", self.cache_control));
        Ok(response)
    }
}

/// Every answer states its caching rule: the ones without (errors, health,
/// metrics, whatever a future route forgets) get `no-store`.
pub struct CachingRules;

#[rocket::async_trait]
impl Fairing for CachingRules {
    fn info(&self) -> Info {
        Info {
            name: "Cache-Control: no-store unless said otherwise",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, _: &'r Request<'_>, response: &mut Response<'r>) {
        if !response.headers().contains("Cache-Control") {
            response.set_header(Header::new("Cache-Control", NEVER_STORE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(text: &str) -> EntityTag {
        match Tags::parse(text).unwrap() {
            Tags::List(mut tags) if tags.len() == 1 => tags.remove(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entity_tag_lists_parse_as_rfc_9110_writes_them() {
        assert_eq!(Tags::parse("*").unwrap(), Tags::Any);
        assert_eq!(
            Tags::parse(r#""1", W/"2",,  "x!#~""#).unwrap(),
            Tags::List(vec![
                EntityTag::strong("1"),
                EntityTag {
                    weak: true,
                    opaque: "2".into()
                },
                EntityTag::strong("x!#~"),
            ])
        );
        assert_eq!(tag(r#""""#), EntityTag::strong(""));
        for empty in ["", " ", ",", " , ,"] {
            assert_eq!(Tags::parse(empty).unwrap(), Tags::List(vec![]), "{empty:?}");
        }
        for bad in [
            "1",
            "\"1",
            "\"1\" \"2\"",
            "W/1",
            "w/\"1\"",
            "\"a b\"",
            "*, \"1\"",
            "\"1\", *",
            "\"\t\"",
        ] {
            assert!(Tags::parse(bad).is_err(), "{bad:?}");
        }
        let error = Tags::parse("nope").unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (Status::BadRequest, ErrorCode::InvalidEntityTag)
        );
    }

    #[test]
    fn if_none_match_compares_weakly_and_if_match_strongly() {
        let current = EntityTag::of_user(Version::from_stored(7));
        assert_eq!(current.to_string(), "\"7\"");
        assert!(Tags::parse("W/\"7\"").unwrap().any_weakly_matches(&current));
        assert!(
            Tags::parse("\"6\", \"7\"")
                .unwrap()
                .any_weakly_matches(&current)
        );
        assert!(!Tags::parse("\"6\"").unwrap().any_weakly_matches(&current));
        assert!(Tags::Any.any_weakly_matches(&current));
        // If-Match: a weak tag never names a version (strong comparison).
        let weak_only = condition(Some(Tags::parse("W/\"7\"").unwrap()), None);
        assert_eq!(weak_only.one_of, Some(vec![]));
    }

    #[test]
    fn conditions_name_only_our_own_versions() {
        let parse = |text: &str| Some(Tags::parse(text).unwrap());
        let v = Version::from_stored;
        let c = condition(parse("\"5\", W/\"6\", \"p00\""), parse("W/\"8\""));
        assert_eq!(
            c.one_of,
            Some(vec![v(5)]),
            "weak and foreign tags never match"
        );
        assert_eq!(c.none_of, vec![v(8)]);
        assert!(!c.only_if_absent);
        let any = condition(parse("*"), parse("*"));
        assert_eq!((any.one_of, any.only_if_absent), (None, true));
        assert_eq!(condition(None, None), VersionCondition::default());
        // Only the exact text of a version names it.
        for other_text in ["\"05\"", "\"+5\"", "\"\"", "\"5a\"", "\"0\""] {
            let c = condition(parse(other_text), None);
            assert_eq!(c.one_of, Some(vec![]), "{other_text}");
        }
    }

    #[test]
    fn a_page_tag_changes_with_any_version_or_the_cursor() {
        let user = |id, version| StoredUser {
            user: crate::domain::User {
                userid: UserId::from_stored(id),
                username: crate::domain::UserName::from_stored("x".into()),
            },
            version: Version::from_stored(version),
        };
        let page = EntityTag::of_page(&[user(1, 1), user(2, 5)], None);
        assert_eq!(page, EntityTag::of_page(&[user(1, 1), user(2, 5)], None));
        assert_ne!(page, EntityTag::of_page(&[user(1, 1), user(2, 6)], None));
        assert_ne!(
            page,
            EntityTag::of_page(&[user(1, 1), user(2, 5)], Some(UserId::from_stored(2)))
        );
        assert!(page.to_string().starts_with("\"p"));
    }
}
