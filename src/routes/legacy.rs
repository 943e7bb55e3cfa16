//! The original sample's calls, kept working verbatim:
//! `POST /create_user?userid=1&username=John`, `GET /get_user?userid=1`;
//! the same answers (and ETags) as the resource's.

use rocket::form;
use rocket::response::status::Created;
use rocket::serde::json::Json;
use rocket::{Route, get, post, routes};

use super::users::{create_user, read_user};
use crate::conditional::{IfNoneMatch, Tagged};
use crate::db::Db;
use crate::domain::{User, UserId, UserName};
use crate::error::ApiError;
use crate::guards::StrictQuery;

pub fn routes() -> Vec<Route> {
    routes![create_user_by_query, get_user]
}

#[post("/create_user?<userid>&<username>")]
async fn create_user_by_query(
    db: &Db,
    query: Result<StrictQuery, ApiError>,
    userid: form::Result<'_, UserId>,
    username: form::Result<'_, UserName>,
) -> Result<Created<Tagged<Json<User>>>, ApiError> {
    query?;
    let user = User {
        userid: ApiError::from_param("userid", userid)?,
        username: ApiError::from_param("username", username)?,
    };
    create_user(db, user).await
}

#[get("/get_user?<userid>")]
async fn get_user(
    db: &Db,
    query: Result<StrictQuery, ApiError>,
    userid: form::Result<'_, UserId>,
    if_none_match: Result<IfNoneMatch, ApiError>,
) -> Result<Tagged<Json<User>>, ApiError> {
    query?;
    let userid = ApiError::from_param("userid", userid)?;
    read_user(db, userid, &if_none_match?).await
}
