//! The JSON resource: `/users` and `/users/<id>`, each representation with
//! its ETag, reads conditional on `If-None-Match`, writes on `If-Match`.

use rocket::form;
use rocket::response::status::{Created, NoContent};
use rocket::serde::json::Json;
use rocket::{Route, delete, get, post, put, routes};
use serde::Serialize;

use crate::conditional::{EntityTag, IfNoneMatch, Tagged, WriteCondition};
use crate::db::Db;
use crate::domain::{Conditional, Invalid, PageSize, Rename, StoredUser, User, UserId, Version};
use crate::error::ApiError;
use crate::guards::{JsonBody, StrictQuery};

pub fn routes() -> Vec<Route> {
    routes![create, read, update, remove, list]
}

/// `201` with `Location` and the new user's ETag, or `409`.
pub(super) async fn create_user(
    db: &Db,
    user: User,
) -> Result<Created<Tagged<Json<User>>>, ApiError> {
    let version = db.create(&user).await?.ok_or_else(ApiError::user_exists)?;
    let location = format!("/users/{}", user.userid.get());
    Ok(Created::new(location).body(Tagged::written(EntityTag::of_user(version), Json(user))))
}

/// The user with its ETag, `304` if the client has it already, or `404`.
pub(super) async fn read_user(
    db: &Db,
    userid: UserId,
    if_none_match: &IfNoneMatch,
) -> Result<Tagged<Json<User>>, ApiError> {
    let StoredUser { user, version } = db
        .find(userid)
        .await?
        .ok_or_else(ApiError::user_not_found)?;
    Ok(Tagged::user_data(
        EntityTag::of_user(version),
        Json(user),
        if_none_match,
    ))
}

#[post("/users", data = "<body>")]
async fn create(
    db: &Db,
    body: Result<JsonBody<User>, ApiError>,
) -> Result<Created<Tagged<Json<User>>>, ApiError> {
    let JsonBody(user) = body?;
    create_user(db, user).await
}

#[get("/users/<userid>")]
async fn read(
    db: &Db,
    userid: Result<UserId, Invalid>,
    if_none_match: Result<IfNoneMatch, ApiError>,
) -> Result<Tagged<Json<User>>, ApiError> {
    read_user(db, userid?, &if_none_match?).await
}

#[put("/users/<userid>", data = "<body>")]
async fn update(
    db: &Db,
    userid: Result<UserId, Invalid>,
    body: Result<JsonBody<Rename>, ApiError>,
    condition: Result<WriteCondition, ApiError>,
) -> Result<Tagged<Json<User>>, ApiError> {
    let userid = userid?;
    let JsonBody(Rename { username }) = body?;
    let WriteCondition(condition) = condition?;
    let version: Version = done(db.rename(userid, &username, &condition).await?)?;
    Ok(Tagged::written(
        EntityTag::of_user(version),
        Json(User { userid, username }),
    ))
}

#[delete("/users/<userid>")]
async fn remove(
    db: &Db,
    userid: Result<UserId, Invalid>,
    condition: Result<WriteCondition, ApiError>,
) -> Result<NoContent, ApiError> {
    let userid = userid?;
    let WriteCondition(condition) = condition?;
    done(db.delete(userid, &condition).await?)?;
    Ok(NoContent)
}

fn done<T>(outcome: Conditional<T>) -> Result<T, ApiError> {
    match outcome {
        Conditional::Done(value) => Ok(value),
        Conditional::NotFound => Err(ApiError::user_not_found()),
        Conditional::PreconditionFailed => Err(ApiError::precondition_failed()),
    }
}

#[derive(Serialize)]
struct Page {
    users: Vec<User>,
    /// Pass as `after` to get the next page; `null` on the last one.
    next_after: Option<UserId>,
}

#[get("/users?<limit>&<after>")]
async fn list(
    db: &Db,
    query: Result<StrictQuery, ApiError>,
    limit: form::Result<'_, PageSize>,
    after: form::Result<'_, UserId>,
    if_none_match: Result<IfNoneMatch, ApiError>,
) -> Result<Tagged<Json<Page>>, ApiError> {
    query?;
    let size = ApiError::from_optional_param("limit", limit)?.unwrap_or(PageSize::DEFAULT);
    let after = ApiError::from_optional_param("after", after)?;
    let if_none_match = if_none_match?;
    let (stored, next_after) = db.list(after, size).await?;
    let etag = EntityTag::of_page(&stored, next_after);
    let users = stored.into_iter().map(|s| s.user).collect();
    Ok(Tagged::user_data(
        etag,
        Json(Page { users, next_after }),
        &if_none_match,
    ))
}
