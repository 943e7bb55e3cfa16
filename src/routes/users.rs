//! The JSON resource: `/users` and `/users/<id>`.

use rocket::form;
use rocket::response::status::{Created, NoContent};
use rocket::serde::json::Json;
use rocket::{Route, delete, get, post, put, routes};
use serde::Serialize;

use crate::db::Db;
use crate::domain::{Invalid, PageSize, Rename, User, UserId};
use crate::error::ApiError;
use crate::guards::{JsonBody, StrictQuery};

pub fn routes() -> Vec<Route> {
    routes![create, read, update, remove, list]
}

pub(super) fn created(user: User) -> Created<Json<User>> {
    Created::new(format!("/users/{}", user.userid.get())).body(Json(user))
}

#[post("/users", data = "<body>")]
async fn create(
    db: &Db,
    body: Result<JsonBody<User>, ApiError>,
) -> Result<Created<Json<User>>, ApiError> {
    let JsonBody(user) = body?;
    if !db.create(&user).await? {
        return Err(ApiError::user_exists());
    }
    Ok(created(user))
}

#[get("/users/<userid>")]
async fn read(db: &Db, userid: Result<UserId, Invalid>) -> Result<Json<User>, ApiError> {
    db.find(userid?)
        .await?
        .map(Json)
        .ok_or_else(ApiError::user_not_found)
}

#[put("/users/<userid>", data = "<body>")]
async fn update(
    db: &Db,
    userid: Result<UserId, Invalid>,
    body: Result<JsonBody<Rename>, ApiError>,
) -> Result<Json<User>, ApiError> {
    let userid = userid?;
    let JsonBody(Rename { username }) = body?;
    if db.rename(userid, &username).await? {
        Ok(Json(User { userid, username }))
    } else {
        Err(ApiError::user_not_found())
    }
}

#[delete("/users/<userid>")]
async fn remove(db: &Db, userid: Result<UserId, Invalid>) -> Result<NoContent, ApiError> {
    if db.delete(userid?).await? {
        Ok(NoContent)
    } else {
        Err(ApiError::user_not_found())
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
) -> Result<Json<Page>, ApiError> {
    query?;
    let size = ApiError::from_optional_param("limit", limit)?.unwrap_or(PageSize::DEFAULT);
    let after = ApiError::from_optional_param("after", after)?;
    let (users, next_after) = db.list(after, size).await?;
    Ok(Json(Page { users, next_after }))
}
